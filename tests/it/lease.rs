//! The lease and fencing against real databases.

use std::time::Duration;

use orchestrator::lease::{Lease, LeaseState};
use orchestrator::model::ActionStatus;
use orchestrator::queue;
use orchestrator::store::{Completion, CompletionOutcome};

use crate::backend_tests;
use crate::queue::noop;
use crate::support::{TestDb, fence, worker};

backend_tests!(
    renew_keeps_epoch_release_and_takeover_bump_it,
    takeover_fences_the_old_holders_late_writes,
    a_new_leader_leaves_live_workers_attempts_alone,
    crashed_running_action_is_rescued,
    concurrent_acquirers_elect_one_holder,
    the_daemon_keeps_its_lease_and_epoch_between_ticks_longer_than_the_ttl,
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
    assert!(db.store.release_lease("orchestrator", None).await.unwrap());
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
    let claimed = db.store.claim(&zombie, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let old_token = claimed[0].token;

    // The old holder and its worker stall past their TTLs; the new leader takes over and
    // rescues the dead worker's claim.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let t_new = held(new.acquire().await.unwrap());
    assert_eq!(t_new.epoch, t_old.epoch + 1);
    let rescued = db.store.rescue(&fence(&t_new), "new", Duration::from_millis(300), None).await.unwrap();
    assert_eq!(rescued.len(), 1);
    assert_eq!(rescued[0].status, ActionStatus::Retry);
    assert_eq!(rescued[0].worker.as_deref(), Some("zombie"));

    // The zombie wakes up: its completion, its claims and its heartbeat all fail.
    let late =
        Completion { action_id: id, token: old_token, attempt: 1, outcome: CompletionOutcome::Success, logs: vec![] };
    let report = db.store.complete(None, std::slice::from_ref(&late)).await.unwrap();
    assert_eq!(report.rejected, vec![id], "the stale write is rejected");
    assert!(report.applied.is_empty());
    let a = db.store.action(id).await.unwrap().unwrap();
    assert_eq!(a.status, ActionStatus::Retry, "the rescue stands");
    assert!(db.store.claim(&zombie, 10).await.unwrap().is_empty(), "a dead registration claims nothing");
    let beat = orchestrator::store::Beat::default();
    assert!(!db.store.worker_heartbeat("zombie", Duration::from_millis(300), beat).await.unwrap());
    assert!(matches!(old.acquire().await.unwrap(), LeaseState::HeldByOther(_)));

    // Even with the action RUNNING again under a new claim, the old token cannot write.
    let fresh = worker(&db.store, "fresh", Duration::from_secs(30)).await;
    let again = db.store.claim(&fresh, 10).await.unwrap();
    assert_eq!(again[0].attempt, 2);
    assert!(again[0].token > old_token, "tokens only grow");
    let late = Completion { attempt: 2, ..late };
    assert_eq!(db.store.complete(None, &[late]).await.unwrap().rejected, vec![id]);
    let good = Completion {
        action_id: id,
        token: again[0].token,
        attempt: 2,
        outcome: CompletionOutcome::Success,
        logs: vec![],
    };
    assert_eq!(db.store.complete(None, &[good]).await.unwrap().applied, vec![id]);
    assert_eq!(db.store.action(id).await.unwrap().unwrap().status, ActionStatus::Success);
}

async fn a_new_leader_leaves_live_workers_attempts_alone(db: &TestDb) {
    let old = Lease::new(db.store.clone(), "orchestrator", "old", Duration::from_millis(200));
    let id = queue::enqueue(&db.store, &noop("busy"), 3).await.unwrap().id;
    let t_old = held(old.acquire().await.unwrap());
    let w = worker(&db.store, "steady", Duration::from_secs(30)).await;
    let claimed = db.store.claim(&w, 10).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let heir = Lease::new(db.store.clone(), "orchestrator", "heir", Duration::from_secs(30));
    let t_new = held(heir.acquire().await.unwrap());
    assert!(t_new.epoch > t_old.epoch);
    assert!(
        db.store.rescue(&fence(&t_new), "heir", Duration::from_secs(30), None).await.unwrap().is_empty(),
        "the worker still beats: its attempt is not rescued by a change of leader"
    );
    let done = Completion {
        action_id: id,
        token: claimed[0].token,
        attempt: 1,
        outcome: CompletionOutcome::Success,
        logs: vec![],
    };
    assert_eq!(db.store.complete(None, &[done]).await.unwrap().applied, vec![id]);
}

async fn crashed_running_action_is_rescued(db: &TestDb) {
    let mut one_try = noop("last-chance");
    one_try.max_attempts = Some(1);
    let retry_id = queue::enqueue(&db.store, &noop("again"), 3).await.unwrap().id;
    let dlq_id = queue::enqueue(&db.store, &one_try, 3).await.unwrap().id;
    let leader = Lease::new(db.store.clone(), "orchestrator", "leader", Duration::from_secs(30));
    let t = held(leader.acquire().await.unwrap());
    let crashed = worker(&db.store, "crashed", Duration::from_millis(200)).await;
    assert_eq!(db.store.claim(&crashed, 10).await.unwrap().len(), 2);
    // The worker still beats and the deadline is far: nothing to rescue.
    assert!(db.store.rescue(&fence(&t), "leader", Duration::from_millis(200), None).await.unwrap().is_empty());

    tokio::time::sleep(Duration::from_millis(300)).await;
    let tick = orchestrator::store::Fence { tick_id: Some(1), ..fence(&t) };
    let mut rescued = db.store.rescue(&tick, "leader", Duration::from_millis(200), Some(1)).await.unwrap();
    rescued.sort_by_key(|r| r.id);
    assert_eq!(
        rescued.iter().map(|r| (r.id, r.status)).collect::<Vec<_>>(),
        vec![(retry_id, ActionStatus::Retry), (dlq_id, ActionStatus::Dlq)]
    );
    let a = db.store.action(retry_id).await.unwrap().unwrap();
    assert_eq!(a.attempts, 1);
    assert!(a.last_error.unwrap().contains("rescued"));
    let d = db.store.action(dlq_id).await.unwrap().unwrap();
    assert!(d.finished_at.is_some(), "out of attempts: DLQ, finished");
    let logs = db.store.logs(Some(retry_id), 10).await.unwrap();
    assert!(logs[0].message.contains("rescued attempt 1: worker crashed is gone"), "{}", logs[0].message);
    assert_eq!(logs[0].tick_id, Some(1));

    // A claim past its deadline is rescued even though its worker still beats.
    let mut hasty = worker(&db.store, "hasty", Duration::from_secs(30)).await;
    hasty.default_timeout = Duration::from_millis(10);
    let c = db.store.claim(&hasty, 10).await.unwrap();
    assert_eq!(c.len(), 1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = db.store.rescue(&fence(&t), "leader", Duration::from_secs(30), None).await.unwrap();
    assert_eq!(r.len(), 1);
    let logs = db.store.logs(Some(retry_id), 10).await.unwrap();
    assert!(logs[0].message.contains("worker hasty's claim passed its deadline"), "{}", logs[0].message);
    // Only the live holder can rescue.
    let stale = orchestrator::store::Fence { epoch: t.epoch - 1, ..fence(&t) };
    assert!(db.store.rescue(&stale, "leader", Duration::ZERO, None).await.unwrap().is_empty());
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
        async move { orchestrator::daemon::run(&engine, Some(4), rx).await }
    });
    // Mid-gap, well past the TTL after the first tick: another instance must be refused.
    tokio::time::sleep(Duration::from_millis(550)).await;
    let other = Lease::new(db.store.clone(), "orchestrator", "other", Duration::from_secs(5));
    assert!(matches!(other.acquire().await.unwrap(), LeaseState::HeldByOther(_)), "the lease lapsed between ticks");
    let summary = daemon.await.unwrap();
    assert_eq!(summary.ticks, 4);
    let ticks = db.store.recent_ticks(10).await.unwrap();
    assert_eq!(ticks.len(), 4);
    assert!(
        ticks.iter().all(|t| t.epoch == ticks[0].epoch),
        "one epoch for every tick: {:?}",
        ticks.iter().map(|t| t.epoch).collect::<Vec<_>>()
    );
}
