//! The lease and fencing against real databases; through the real binary, a lease row deleted
//! by hand under a live and a frozen daemon.

use std::time::Duration;

use orchestrator::lease::{Lease, LeaseState};
use orchestrator::model::ActionStatus;
use orchestrator::queue;
use orchestrator::store::{Authority, Completion, CompletionOutcome};

use crate::backend_tests;
use crate::support::noop;
use crate::support::{TestDb, fence, worker};

backend_tests!(
    renew_keeps_epoch_release_and_takeover_bump_it,
    takeover_fences_the_old_holders_late_writes,
    a_new_leader_leaves_live_workers_attempts_alone,
    crashed_running_action_is_rescued,
    concurrent_acquirers_elect_one_holder,
    the_daemon_keeps_its_lease_and_epoch_between_ticks_longer_than_the_ttl,
    a_deleted_lease_row_brings_no_old_epoch_back,
    deleting_the_lease_row_under_a_live_and_a_frozen_daemon_keeps_the_zombie_fenced,
    an_existing_database_carries_its_epochs_on_upwards,
);

fn held(s: LeaseState) -> orchestrator::lease::Term {
    match s {
        LeaseState::Held(t) => t,
        LeaseState::HeldByOther(r) => panic!("expected to hold the lease, {} does", r.owner),
    }
}

async fn renew_keeps_epoch_release_and_takeover_bump_it(db: &TestDb) {
    let a = Lease::new(db.store.clone(), "orchestrator", "a", Duration::from_secs(30));
    let b = Lease::new(db.store.clone(), "orchestrator", "b", Duration::from_secs(30));
    let t1 = held(a.acquire().await.unwrap());
    assert_eq!(t1.epoch, 1);
    let t2 = held(a.acquire().await.unwrap());
    assert_eq!(t2.epoch, 1, "renewing a live lease keeps the epoch");
    assert!(t2.expires_at >= t1.expires_at);
    match b.acquire().await.unwrap() {
        LeaseState::HeldByOther(row) => {
            assert_eq!(row.owner, "a");
            assert_eq!(row.epoch, 1);
        }
        LeaseState::Held(_) => panic!("b took a live lease"),
    }
    assert!(!b.release().await.unwrap(), "b cannot release a's lease");
    assert!(a.release().await.unwrap());
    let t3 = held(b.acquire().await.unwrap());
    assert_eq!(t3.epoch, 2, "taking over a released lease bumps the epoch");
    assert_eq!(t3.owner, "b");
    // Forced release by an operator, then a re-take: the epoch still only goes up.
    assert!(db.store.lease().release_lease("orchestrator", None).await.unwrap());
    let t4 = held(a.acquire().await.unwrap());
    assert_eq!(t4.epoch, 3);
}

async fn takeover_fences_the_old_holders_late_writes(db: &TestDb) {
    // Claims are fenced by their own token, not by the lease: a change of leader leaves a live
    // worker's attempt alone, and only a rescue takes it back.
    let old = Lease::new(db.store.clone(), "orchestrator", "old", Duration::from_millis(300));
    let new = Lease::new(db.store.clone(), "orchestrator", "new", Duration::from_secs(30));
    let id = queue::enqueue(&db.store, &noop("x"), 3).await.unwrap().id;
    let t_old = held(old.acquire().await.unwrap());
    let zombie = worker(&db.store, "zombie", Duration::from_millis(300)).await;
    let claimed = db.store.actions().claim(&zombie, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let old_token = claimed[0].token;

    // The old holder and its worker stall past their TTLs; the new leader takes over and
    // rescues the dead worker's claim.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let t_new = held(new.acquire().await.unwrap());
    assert_eq!(t_new.epoch, t_old.epoch + 1);
    let rescued = db.store.actions().rescue(&fence(&t_new), "new", Duration::from_millis(300), None).await.unwrap();
    assert_eq!(rescued.len(), 1);
    assert_eq!(rescued[0].status, ActionStatus::Retry);
    assert_eq!(rescued[0].worker.as_deref(), Some("zombie"));

    // The zombie wakes up: its completion, its claims and its heartbeat all fail.
    let late =
        Completion { action_id: id, token: old_token, attempt: 1, outcome: CompletionOutcome::Success, logs: vec![] };
    let report = db.store.actions().complete(None, std::slice::from_ref(&late)).await.unwrap();
    assert_eq!(report.rejected, vec![id], "the stale write is rejected");
    assert!(report.applied.is_empty());
    let a = db.store.actions().action(id).await.unwrap().unwrap();
    assert_eq!(a.status, ActionStatus::Retry, "the rescue stands");
    assert!(db.store.actions().claim(&zombie, 10).await.unwrap().is_empty(), "a dead registration claims nothing");
    let beat = orchestrator::store::Beat::default();
    assert!(!db.store.workers().worker_heartbeat("zombie", Duration::from_millis(300), beat).await.unwrap());
    assert!(matches!(old.acquire().await.unwrap(), LeaseState::HeldByOther(_)));

    // Even with the action RUNNING again under a new claim, the old token cannot write.
    let fresh = worker(&db.store, "fresh", Duration::from_secs(30)).await;
    let again = db.store.actions().claim(&fresh, 10).await.unwrap();
    assert_eq!(again[0].attempt, 2);
    assert!(again[0].token > old_token, "tokens only grow");
    let late = Completion { attempt: 2, ..late };
    assert_eq!(db.store.actions().complete(None, &[late]).await.unwrap().rejected, vec![id]);
    let good = Completion {
        action_id: id,
        token: again[0].token,
        attempt: 2,
        outcome: CompletionOutcome::Success,
        logs: vec![],
    };
    assert_eq!(db.store.actions().complete(None, &[good]).await.unwrap().applied, vec![id]);
    assert_eq!(db.store.actions().action(id).await.unwrap().unwrap().status, ActionStatus::Success);
}

async fn a_new_leader_leaves_live_workers_attempts_alone(db: &TestDb) {
    let old = Lease::new(db.store.clone(), "orchestrator", "old", Duration::from_millis(200));
    let id = queue::enqueue(&db.store, &noop("busy"), 3).await.unwrap().id;
    let t_old = held(old.acquire().await.unwrap());
    let w = worker(&db.store, "steady", Duration::from_secs(30)).await;
    let claimed = db.store.actions().claim(&w, 10).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let heir = Lease::new(db.store.clone(), "orchestrator", "heir", Duration::from_secs(30));
    let t_new = held(heir.acquire().await.unwrap());
    assert!(t_new.epoch > t_old.epoch);
    assert!(
        db.store.actions().rescue(&fence(&t_new), "heir", Duration::from_secs(30), None).await.unwrap().is_empty(),
        "the worker still beats: its attempt is not rescued by a change of leader"
    );
    let done = Completion {
        action_id: id,
        token: claimed[0].token,
        attempt: 1,
        outcome: CompletionOutcome::Success,
        logs: vec![],
    };
    assert_eq!(db.store.actions().complete(None, &[done]).await.unwrap().applied, vec![id]);
}

async fn crashed_running_action_is_rescued(db: &TestDb) {
    let mut one_try = noop("last-chance");
    one_try.max_attempts = Some(1);
    let retry_id = queue::enqueue(&db.store, &noop("again"), 3).await.unwrap().id;
    let dlq_id = queue::enqueue(&db.store, &one_try, 3).await.unwrap().id;
    let leader = Lease::new(db.store.clone(), "orchestrator", "leader", Duration::from_secs(30));
    let t = held(leader.acquire().await.unwrap());
    let crashed = worker(&db.store, "crashed", Duration::from_millis(200)).await;
    assert_eq!(db.store.actions().claim(&crashed, 10).await.unwrap().len(), 2);
    // The worker still beats and the deadline is far: nothing to rescue.
    assert!(
        db.store.actions().rescue(&fence(&t), "leader", Duration::from_millis(200), None).await.unwrap().is_empty()
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    let tick = orchestrator::store::Fence { tick_id: Some(1), ..fence(&t) };
    let mut rescued = db.store.actions().rescue(&tick, "leader", Duration::from_millis(200), Some(1)).await.unwrap();
    rescued.sort_by_key(|r| r.id);
    assert_eq!(
        rescued.iter().map(|r| (r.id, r.status)).collect::<Vec<_>>(),
        vec![(retry_id, ActionStatus::Retry), (dlq_id, ActionStatus::Dlq)]
    );
    let a = db.store.actions().action(retry_id).await.unwrap().unwrap();
    assert_eq!(a.attempts, 1);
    assert!(a.last_error.unwrap().contains("rescued"));
    let d = db.store.actions().action(dlq_id).await.unwrap().unwrap();
    assert!(d.finished_at.is_some(), "out of attempts: DLQ, finished");
    let logs = db.store.history().logs(Some(retry_id), 10).await.unwrap();
    assert!(logs[0].message.contains("rescued attempt 1: worker crashed is gone"), "{}", logs[0].message);
    assert_eq!(logs[0].tick_id, Some(1));

    // A claim past its deadline is rescued even though its worker still beats.
    let mut hasty = worker(&db.store, "hasty", Duration::from_secs(30)).await;
    hasty.default_timeout = Duration::from_millis(10);
    let c = db.store.actions().claim(&hasty, 10).await.unwrap();
    assert_eq!(c.len(), 1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = db.store.actions().rescue(&fence(&t), "leader", Duration::from_secs(30), None).await.unwrap();
    assert_eq!(r.len(), 1);
    let logs = db.store.history().logs(Some(retry_id), 10).await.unwrap();
    assert!(logs[0].message.contains("worker hasty's claim passed its deadline"), "{}", logs[0].message);
    // Only the live holder can rescue.
    let stale = orchestrator::store::Fence { epoch: t.epoch - 1, ..fence(&t) };
    assert!(db.store.actions().rescue(&stale, "leader", Duration::ZERO, None).await.unwrap().is_empty());
}

async fn concurrent_acquirers_elect_one_holder(db: &TestDb) {
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = db.another_store().await;
        tasks.push(tokio::spawn(async move {
            Lease::new(store, "orchestrator", format!("o{i}"), Duration::from_secs(30)).acquire().await.unwrap()
        }));
    }
    let mut holders = Vec::new();
    for t in tasks {
        if let LeaseState::Held(term) = t.await.unwrap() {
            holders.push(term);
        }
    }
    assert_eq!(holders.len(), 1, "exactly one of eight concurrent acquirers holds the lease");
    assert_eq!(holders[0].epoch, 1);
}

/// A tick interval longer than the lease TTL must not cost the daemon its lease between ticks:
/// every tick runs under the first epoch, and another instance that tries in a gap is refused.
async fn the_daemon_keeps_its_lease_and_epoch_between_ticks_longer_than_the_ttl(db: &TestDb) {
    let mut config = db.config();
    config.tick_interval = Duration::from_millis(700);
    config.lease_ttl = Duration::from_millis(400);
    config.heartbeat = Duration::from_millis(100);
    let engine = db.engine(config);
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let daemon = tokio::spawn({
        let engine = engine.clone();
        async move { orchestrator::runtime::daemon::run(&engine, Some(4), rx).await }
    });
    // Mid-gap, well past the TTL after the first tick: another instance must be refused.
    tokio::time::sleep(Duration::from_millis(550)).await;
    let other = Lease::new(db.store.clone(), "orchestrator", "other", Duration::from_secs(5));
    assert!(matches!(other.acquire().await.unwrap(), LeaseState::HeldByOther(_)), "the lease lapsed between ticks");
    let summary = daemon.await.unwrap();
    assert_eq!(summary.ticks, 4);
    let ticks = db.store.ledger().recent_ticks(10).await.unwrap();
    assert_eq!(ticks.len(), 4);
    assert!(
        ticks.iter().all(|t| t.epoch == ticks[0].epoch),
        "one epoch for every tick: {:?}",
        ticks.iter().map(|t| t.epoch).collect::<Vec<_>>()
    );
}

/// An operator deletes the lease row (an older runbook's way to clear a stuck lease): the lease
/// is free, and the next holder's epoch is still above every epoch granted before, so a
/// deposed holder stays fenced. The counter of epochs cannot be deleted itself.
async fn a_deleted_lease_row_brings_no_old_epoch_back(db: &TestDb) {
    let old = Lease::new(db.store.clone(), "orchestrator", "old", Duration::from_millis(200));
    let heir = Lease::new(db.store.clone(), "orchestrator", "heir", Duration::from_secs(30));
    let t_old = held(old.acquire().await.unwrap());
    assert_eq!(t_old.epoch, 1);
    let pending = queue::enqueue(&db.store, &noop("victim"), 3).await.unwrap().id;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t_heir = held(heir.acquire().await.unwrap());
    assert_eq!(t_heir.epoch, 2);

    let mut last = t_heir.epoch;
    for round in 0..3 {
        db.store.execute_unprepared("DELETE FROM leases").await.unwrap();
        assert!(db.store.lease().get("orchestrator").await.unwrap().is_none());
        let t = held(heir.acquire().await.unwrap());
        assert!(t.epoch > last, "round {round}: epoch {} after the delete, {last} before", t.epoch);
        last = t.epoch;
        // The deposed holder's epoch never comes back: its fenced writes are refused.
        let stale = fence(&t_old);
        assert!(
            !db.store.lease().fence_holds(&stale).await.unwrap(),
            "round {round}: epoch {} is live again",
            t_old.epoch
        );
        let e = db.store.actions().cancel(Authority::Lease(&stale), pending, Some("zombie")).await.unwrap_err();
        assert!(e.to_string().contains("fenced"), "{e}");
    }
    assert_eq!(db.store.actions().action(pending).await.unwrap().unwrap().status, ActionStatus::Pending);
    // A renewal keeps the epoch, as before.
    assert_eq!(held(heir.acquire().await.unwrap()).epoch, last);
    // The counter refuses to be deleted, and says what to do instead.
    let e = db.store.execute_unprepared("DELETE FROM lease_epochs").await.unwrap_err().to_string();
    assert!(e.contains("lease release --force"), "{e}");
    // A hand edit that raised the row's epoch is followed by the counter, and survives a delete.
    db.store.execute_unprepared("UPDATE leases SET epoch = 40").await.unwrap();
    assert!(db.store.lease().release_lease("orchestrator", None).await.unwrap());
    db.store.execute_unprepared("DELETE FROM leases").await.unwrap();
    assert_eq!(held(old.acquire().await.unwrap()).epoch, 41);
}

/// Two real daemons and a hand `DELETE FROM leases` (an older runbook's way to clear a stuck
/// lease). The leader is frozen (SIGSTOP) with claims in flight and the lease row deleted at
/// once; the follower takes the lease under an epoch above every epoch stamped so far (before,
/// it started again at 1: the frozen leader's own epoch, so two owners shared it), rescues the
/// frozen claims once their worker's heartbeat is stale, and runs everything. The zombie,
/// resumed, has every late write rejected, steps down and runs no tick. Nothing is stranded
/// `RUNNING`, and only rescued attempts ran twice.
async fn deleting_the_lease_row_under_a_live_and_a_frozen_daemon_keeps_the_zombie_fenced(db: &TestDb) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    use orchestrator::store::{ActionFilter, FlagChange, LogFilter, Store, StoreOptions};
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Instant;

    let signal = |pid: u32, sig: Signal| kill(Pid::from_raw(pid as i32), sig).unwrap();
    let dir = db.dir.path();
    std::fs::write(
        dir.join("orchestrator.yaml"),
        "tick_interval_seconds: 0.1\nlease_ttl_seconds: 2\nheartbeat_seconds: 0.5\nmax_actions_per_tick: 2\n\
         dispatch_concurrency: 2\nmax_attempts: 5\nbackoff_base_seconds: 0\nbackoff_max_seconds: 0\n\
         action_timeout_seconds: 30\nworkers:\n  heartbeat_seconds: 0.5\n  ttl_seconds: 2\n",
    )
    .unwrap();
    db.store.flags().set_flags(FlagChange { proof_mode: Some(false), ..Default::default() }).await.unwrap();
    let n = 16;
    for i in 0..n {
        let req = queue::EnqueueRequest { payload: serde_json::json!({ "sleep_ms": 400 }), ..noop(&format!("d-{i}")) };
        queue::enqueue(&db.store, &req, 5).await.unwrap();
    }
    let spawn = |name: &str| {
        let log = dir.join(format!("{name}.log"));
        let child = crate::support::bin(dir)
            .args(["--database-url", &db.url, "run", "--no-http"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        (crate::support::process::Server(child), log)
    };
    let text = |log: &std::path::Path| std::fs::read_to_string(log).unwrap_or_default();
    let running = || async {
        let filter = ActionFilter { status: Some(ActionStatus::Running), limit: 100, ..Default::default() };
        db.store.actions().list_actions(&filter).await.unwrap()
    };
    let wait = |what: &str, start: Instant| assert!(start.elapsed() < Duration::from_secs(30), "{what}");

    let (mut zombie, zombie_log) = spawn("zombie");
    let start = Instant::now();
    let z_lease = loop {
        if let Some(l) = db.store.lease().get("orchestrator").await.unwrap() {
            break l;
        }
        wait("the first daemon never took the lease", start);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(z_lease.owner.contains(&format!(":{}:", zombie.id())));
    let (mut live, live_log) = spawn("live");
    let start = Instant::now();
    while !text(&live_log).contains("lease held by another instance; following") {
        wait("the second daemon never followed", start);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Freeze the leader in the middle of its attempts (not inside a transaction: the lease row
    // must be deletable at once), then delete the lease row.
    let probe_options =
        StoreOptions { busy_timeout: Duration::from_millis(300), max_connections: 1, ..Default::default() };
    let probe = Store::connect(&db.url, &probe_options).await.unwrap();
    if db.store.backend() == orchestrator::store::Backend::Postgres {
        probe.execute_unprepared("SET lock_timeout = '300ms'").await.unwrap();
    }
    let start = Instant::now();
    let (frozen, stamped_before) = loop {
        wait("could not freeze the leader with claims in flight", start);
        if running().await.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        signal(zombie.id(), Signal::SIGSTOP);
        let frozen: BTreeMap<i64, i32> = running().await.iter().map(|a| (a.id, a.attempts)).collect();
        let stamped = db.store.ledger().recent_ticks(1000).await.unwrap().iter().map(|t| t.epoch).max().unwrap_or(0);
        if !frozen.is_empty() && probe.execute_unprepared("DELETE FROM leases").await.is_ok() {
            break (frozen, stamped);
        }
        signal(zombie.id(), Signal::SIGCONT);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    probe.close().await.ok();
    let frozen_ids: BTreeSet<i64> = frozen.keys().copied().collect();

    // The live daemon takes the lease under a new epoch, above every epoch stamped so far.
    let start = Instant::now();
    let heir = loop {
        if let Some(l) = db.store.lease().get("orchestrator").await.unwrap() {
            break l;
        }
        wait("nobody took the deleted lease", start);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(heir.owner.contains(&format!(":{}:", live.id())), "the live daemon holds it: {heir:?}");
    assert!(
        heir.epoch > stamped_before && heir.epoch > z_lease.epoch,
        "the new epoch {} is above every epoch stamped before the delete ({stamped_before}) and the zombie's ({})",
        heir.epoch,
        z_lease.epoch
    );
    // The frozen claims are rescued (their worker's heartbeat goes stale) and run again.
    let start = Instant::now();
    loop {
        let mut done = true;
        for id in &frozen_ids {
            done &= db.store.actions().action(*id).await.unwrap().unwrap().status == ActionStatus::Success;
        }
        if done {
            break;
        }
        wait("the frozen claims were not rescued and run", start);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resumed_at = chrono::Utc::now();
    signal(zombie.id(), Signal::SIGCONT);
    let start = Instant::now();
    loop {
        let t = text(&zombie_log);
        let rejected = frozen_ids
            .iter()
            .all(|id| t.lines().any(|l| l.contains("fenced write rejected") && l.contains(&format!("action_id={id}"))));
        if rejected && t.contains("lease held by another instance; following") {
            break;
        }
        wait(&format!("the zombie did not report its rejected writes and step down:\n{t}"), start);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let start = Instant::now();
    while db
        .store
        .actions()
        .list_actions(&ActionFilter { limit: 1000, ..Default::default() })
        .await
        .unwrap()
        .iter()
        .any(|a| a.status != ActionStatus::Success)
    {
        wait("not drained", start);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(zombie.try_wait().unwrap().is_none() && live.try_wait().unwrap().is_none(), "both daemons alive");
    for d in [&mut zombie, &mut live] {
        signal(d.id(), Signal::SIGTERM);
        d.wait().unwrap();
    }

    // Nothing stranded, and only the rescued attempts ran twice.
    let all = db.store.actions().list_actions(&ActionFilter { limit: 1000, ..Default::default() }).await.unwrap();
    assert_eq!(all.len(), n);
    for a in &all {
        let rescued = db
            .store
            .history()
            .logs_filtered(&LogFilter { action_id: Some(a.id), ..Default::default() }, 100)
            .await
            .unwrap()
            .iter()
            .filter(|l| l.message.starts_with("rescued attempt"))
            .count() as i32;
        assert_eq!(a.status, ActionStatus::Success, "{a:?}");
        assert_eq!(a.attempts, 1 + rescued, "action {}: attempts beyond the first are rescues: {a:?}", a.id);
        assert_eq!(rescued > 0, frozen_ids.contains(&a.id), "action {}: rescued iff the zombie held it", a.id);
        if let Some(before) = frozen.get(&a.id) {
            assert_eq!(a.attempts, before + 1, "action {}: the zombie's attempt, then the heir's", a.id);
        }
    }
    // The ledger: one owner per epoch, epochs never back in id order, no zombie tick after it
    // resumed.
    let mut ticks = db.store.ledger().recent_ticks(10_000).await.unwrap();
    ticks.sort_by_key(|t| t.id);
    let mut owners: BTreeMap<i64, BTreeSet<&str>> = BTreeMap::new();
    for t in &ticks {
        owners.entry(t.epoch).or_default().insert(t.owner.as_str());
    }
    assert!(owners.values().all(|o| o.len() == 1), "an epoch with two owners: {owners:?}");
    assert!(ticks.windows(2).all(|w| w[0].epoch <= w[1].epoch), "ledger epochs went back");
    assert!(
        ticks.iter().filter(|t| t.owner == z_lease.owner).all(|t| t.started_at < resumed_at),
        "the zombie ran a tick after it resumed"
    );
    eprintln!(
        "lease row deleted under a live and a frozen daemon [{:?}]: zombie epoch {} -> new epoch {} (highest stamped \
         before: {stamped_before}); {} frozen claim(s) rescued and run again, their late writes rejected; {n} SUCCESS",
        db.store.backend(),
        z_lease.epoch,
        heir.epoch,
        frozen_ids.len()
    );
}

/// The migration that brings `lease_epochs` starts it at the highest epoch an existing database
/// stamped anywhere (the lease row, the ledger, the claims), so a delete right after upgrading
/// brings no old epoch back either.
async fn an_existing_database_carries_its_epochs_on_upwards(db: &TestDb) {
    let a = Lease::new(db.store.clone(), "orchestrator", "a", Duration::from_secs(30));
    held(a.acquire().await.unwrap());
    db.store.ledger().begin_tick("orchestrator", "a", Duration::from_secs(30), db.store.now()).await.unwrap();
    let id = queue::enqueue(&db.store, &noop("old"), 3).await.unwrap().id;
    // The database as the previous version left it: no counter, epochs stamped up to 9.
    let undo: &[&str] = match db.store.backend() {
        orchestrator::store::Backend::Postgres => &[
            "DROP TRIGGER lease_epochs_follow_insert ON leases",
            "DROP TRIGGER lease_epochs_follow_update ON leases",
            "DROP TABLE lease_epochs",
            "DROP FUNCTION lease_epochs_follow()",
            "DROP FUNCTION lease_epochs_kept()",
        ],
        orchestrator::store::Backend::Sqlite => &[
            "DROP TRIGGER lease_epochs_follow_insert",
            "DROP TRIGGER lease_epochs_follow_update",
            "DROP TABLE lease_epochs",
        ],
    };
    for sql in undo {
        db.store.execute_unprepared(sql).await.unwrap();
    }
    db.store
        .execute_unprepared("DELETE FROM seaql_migrations WHERE version = 'm20261203_000010_lease_epochs'")
        .await
        .unwrap();
    db.store.execute_unprepared("UPDATE leases SET epoch = 5").await.unwrap();
    db.store.execute_unprepared("UPDATE tick_ledger SET epoch = 7").await.unwrap();
    db.store.execute_unprepared(&format!("UPDATE actions SET claimed_epoch = 9 WHERE id = {id}")).await.unwrap();
    assert_eq!(db.store.pending_migrations().await.unwrap(), 1);

    db.store.migrate().await.unwrap();
    db.store.execute_unprepared("DELETE FROM leases").await.unwrap();
    assert_eq!(held(a.acquire().await.unwrap()).epoch, 10, "one above the highest epoch stamped (a claim's 9)");
}
