//! The lease and fencing against real databases.

use std::time::Duration;

use orchestrator::lease::{Lease, LeaseState};
use orchestrator::model::ActionStatus;
use orchestrator::queue;
use orchestrator::store::{Completion, CompletionOutcome};

use crate::backend_tests;
use crate::queue::noop;
use crate::support::TestDb;

backend_tests!(
    renew_keeps_epoch_release_and_takeover_bump_it,
    takeover_fences_the_old_holders_late_writes,
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
    let old = Lease::new(db.store.clone(), "orchestrator", "old", Duration::from_millis(300));
    let new = Lease::new(db.store.clone(), "orchestrator", "new", Duration::from_secs(30));
    let id = queue::enqueue(&db.store, &noop("x"), 3).await.unwrap().id;
    let t_old = held(old.acquire().await.unwrap());
    let claimed = db.store.claim("orchestrator", "old", t_old.epoch, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);

    // The old holder stalls past its TTL; the new one takes over and rescues.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let t_new = held(new.acquire().await.unwrap());
    assert_eq!(t_new.epoch, t_old.epoch + 1);
    let rescued = db.store.rescue("orchestrator", "new", t_new.epoch, Duration::from_secs(60), None).await.unwrap();
    assert_eq!(rescued.len(), 1);
    assert_eq!(rescued[0].status, ActionStatus::Retry);

    // The zombie wakes up: its completion, its claims and its renewal all fail.
    let late =
        Completion { action_id: id, epoch: t_old.epoch, attempt: 1, outcome: CompletionOutcome::Success, logs: vec![] };
    let report = db.store.complete("orchestrator", None, &[late]).await.unwrap();
    assert_eq!(report.rejected, vec![id], "the stale write is rejected");
    assert!(report.applied.is_empty());
    let a = db.store.action(id).await.unwrap().unwrap();
    assert_eq!(a.status, ActionStatus::Retry, "the new holder's state stands");
    assert!(db.store.claim("orchestrator", "old", t_old.epoch, 10).await.unwrap().is_empty());
    assert!(matches!(old.acquire().await.unwrap(), LeaseState::HeldByOther(_)));

    // Even with the action RUNNING again under the new epoch, the old epoch cannot write.
    let again = db.store.claim("orchestrator", "new", t_new.epoch, 10).await.unwrap();
    assert_eq!(again[0].attempt, 2);
    let late =
        Completion { action_id: id, epoch: t_old.epoch, attempt: 2, outcome: CompletionOutcome::Success, logs: vec![] };
    assert_eq!(db.store.complete("orchestrator", None, &[late]).await.unwrap().rejected, vec![id]);
    let good =
        Completion { action_id: id, epoch: t_new.epoch, attempt: 2, outcome: CompletionOutcome::Success, logs: vec![] };
    assert_eq!(db.store.complete("orchestrator", None, &[good]).await.unwrap().applied, vec![id]);
    assert_eq!(db.store.action(id).await.unwrap().unwrap().status, ActionStatus::Success);
}

async fn crashed_running_action_is_rescued(db: &TestDb) {
    let crashed = Lease::new(db.store.clone(), "orchestrator", "crashed", Duration::from_millis(200));
    let mut one_try = noop("last-chance");
    one_try.max_attempts = Some(1);
    let retry_id = queue::enqueue(&db.store, &noop("again"), 3).await.unwrap().id;
    let dlq_id = queue::enqueue(&db.store, &one_try, 3).await.unwrap().id;
    let t = held(crashed.acquire().await.unwrap());
    assert_eq!(db.store.claim("orchestrator", "crashed", t.epoch, 10).await.unwrap().len(), 2);
    // Same epoch, not yet timed out: nothing to rescue.
    assert!(
        db.store.rescue("orchestrator", "crashed", t.epoch, Duration::from_secs(60), None).await.unwrap().is_empty()
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    let heir = Lease::new(db.store.clone(), "orchestrator", "heir", Duration::from_secs(30));
    let t2 = held(heir.acquire().await.unwrap());
    let mut rescued =
        db.store.rescue("orchestrator", "heir", t2.epoch, Duration::from_secs(60), Some(1)).await.unwrap();
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
    assert!(logs[0].message.contains("rescued orphaned claim"), "{}", logs[0].message);
    assert_eq!(logs[0].tick_id, Some(1));

    // A claim older than the action timeout is rescued even under the current epoch.
    let c = db.store.claim("orchestrator", "heir", t2.epoch, 10).await.unwrap();
    assert_eq!(c.len(), 1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = db.store.rescue("orchestrator", "heir", t2.epoch, Duration::from_millis(10), None).await.unwrap();
    assert_eq!(r.len(), 1);
    // Only the live holder can rescue.
    assert!(db.store.rescue("orchestrator", "crashed", t.epoch, Duration::ZERO, None).await.unwrap().is_empty());
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
