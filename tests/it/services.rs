//! Each service on its own, on both backends: what it changes, what it says in the ledger
//! note, what it counts. The tick's tests run them together; these pin each one's contract.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestrator::lease::Lease;
use orchestrator::limits::LimitSpec;
use orchestrator::metrics::Metrics;
use orchestrator::model::ActionStatus;
use orchestrator::queue::{self, EnqueueRequest};
use orchestrator::services::expirer::Expirer;
use orchestrator::services::notifier::Notifier;
use orchestrator::services::pruner::{self, Pruner};
use orchestrator::services::registration::Registration;
use orchestrator::services::rescuer::Rescuer;
use orchestrator::services::{limits_writer, pruner::STALE_TMP_AGE};
use orchestrator::store::{Authority, ConfigLimits, Store, StoreOptions};

use crate::backend_tests;
use crate::support::TestDb;
use crate::support::db::{LateDatabase, due, fence, worker};
use crate::support::fixtures::{hold, noop};

backend_tests!(
    rescuer_returns_a_dead_workers_claims_and_counts_them,
    expirer_moves_what_passed_its_deadline_to_the_dlq,
    decider_keeps_its_rules_when_a_reload_is_rejected_and_a_dry_decide_writes_nothing,
    dispatcher_runs_what_its_preview_lists_within_the_budget,
    dispatcher_tells_work_held_by_a_limit_from_work_left_idle,
    dispatcher_picks_up_new_work_as_it_arrives_and_holds_to_the_brakes,
    registration_registers_renews_and_deregisters,
    pruner_removes_leftover_artifact_files_and_finished_history,
    limits_writer_fills_or_replaces_as_asked,
);

async fn rescuer_returns_a_dead_workers_claims_and_counts_them(db: &TestDb) {
    let term = hold(&db.store, "leader").await;
    let ttl = Duration::from_millis(200);
    let claimer = worker(&db.store, "gone", ttl).await;
    let id = queue::enqueue(&db.store, &noop("orphan"), 3).await.unwrap().id;
    assert_eq!(db.store.actions().claim(&claimer, 1).await.unwrap().len(), 1);
    let metrics = Arc::new(Metrics::new());
    let rescuer = Rescuer::new(db.store.clone(), metrics.clone(), ttl);
    assert_eq!(rescuer.run(&fence(&term), "leader").await.unwrap(), None, "a live worker's claim stays");
    tokio::time::sleep(ttl * 2).await;
    let note = rescuer.run(&fence(&term), "leader").await.unwrap();
    assert_eq!(note.as_deref(), Some("rescued 1 orphaned action(s)"));
    assert_ne!(db.store.actions().action(id).await.unwrap().unwrap().status, ActionStatus::Running);
    assert_eq!(metrics.rescued_actions_total.get(), 1);
    assert_eq!(rescuer.run(&fence(&term), "leader").await.unwrap(), None, "nothing is rescued twice");
}

async fn expirer_moves_what_passed_its_deadline_to_the_dlq(db: &TestDb) {
    let term = hold(&db.store, "leader").await;
    let past = db.store.now() - chrono::Duration::hours(2);
    let req = EnqueueRequest { expires_at: Some(past + chrono::Duration::hours(1)), ..noop("stale") };
    let stale = db
        .store
        .actions()
        .enqueue(Authority::Operator, &queue::prepare(&req, &3.into(), past).unwrap())
        .await
        .unwrap()
        .id;
    let fresh = queue::enqueue(&db.store, &noop("fresh"), 3).await.unwrap().id;
    let metrics = Arc::new(Metrics::new());
    let expirer = Expirer::new(db.store.clone(), metrics.clone());
    let note = expirer.run(&fence(&term)).await.unwrap();
    assert_eq!(note.as_deref(), Some("1 expired action(s) moved to DLQ"));
    assert_eq!(db.store.actions().action(stale).await.unwrap().unwrap().status, ActionStatus::Dlq);
    assert_eq!(db.store.actions().action(fresh).await.unwrap().unwrap().status, ActionStatus::Pending);
    assert_eq!(metrics.expired_actions_total.get(), 1);
    assert_eq!(expirer.run(&fence(&term)).await.unwrap(), None);
}

/// On a database of its own: notifications go to every listener of the database, so another
/// test's enqueue on the shared one would wake this listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifier_wakes_listening_workers_only_when_work_is_due() {
    let sqlite = TestDb::sqlite().await;
    assert!(sqlite.store.notify().work_listener().await.unwrap().is_none(), "SQLite workers poll: no notifications");
    Notifier::new(sqlite.store.clone()).wake_if_due(1).await;
    sqlite.cleanup().await;

    let Some(own) = LateDatabase::new("notifier").await else { return };
    own.create().await;
    let store = Store::open(&own.url, &StoreOptions::default()).await.unwrap();
    let notifier = Notifier::new(store.clone());
    let mut listener = store.notify().work_listener().await.unwrap().expect("PostgreSQL listens for work");
    notifier.wake_if_due(0).await;
    assert!(!listener.wait(Duration::from_millis(300)).await, "nothing due wakes no one");
    notifier.wake_if_due(3).await;
    assert!(listener.wait(Duration::from_secs(5)).await, "due work wakes the listener");
    drop(listener);
    store.close().await.ok();
    own.cleanup().await;
}

async fn decider_keeps_its_rules_when_a_reload_is_rejected_and_a_dry_decide_writes_nothing(db: &TestDb) {
    let dir = db.dir.path().join("rules");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hold.rhai"), r#"[pause("maintenance")]"#).unwrap();
    let mut config = db.config();
    config.rules_dir = dir.clone();
    let engine = db.engine(config);
    let decider = engine.decider();
    assert_eq!(decider.load_rules().unwrap(), 1);
    let digest = decider.rules().digest().to_string();

    std::fs::write(dir.join("broken.rhai"), "[pause(").unwrap();
    assert!(decider.load_rules().is_err());
    assert_eq!(decider.rules().digest(), digest, "the rejected set is not used");
    let rejected = decider.diagnostics().rejected_load;
    assert!(rejected.iter().any(|d| d.file.ends_with("broken.rhai")), "{rejected:?}");
    assert_eq!(decider.metrics().reload_success.get(), 0);

    let (snap, _) = engine.snapshot_now().await.unwrap();
    let decided = decider.decide(&snap, None).await.unwrap();
    assert!(decided.paused, "the rule would pause");
    assert!(!db.store.flags().get().await.unwrap().paused, "a decide without a fence writes nothing");
    assert!(decider.diagnostics().last_tick.is_empty(), "a dry decide leaves the tick's diagnostics alone");

    std::fs::remove_file(dir.join("broken.rhai")).unwrap();
    assert_eq!(decider.load_rules().unwrap(), 1);
    assert!(decider.diagnostics().rejected_load.is_empty(), "a good reload clears the rejection");
}

async fn dispatcher_runs_what_its_preview_lists_within_the_budget(db: &TestDb) {
    let engine = db.engine(db.config());
    let mut ids = Vec::new();
    for p in [3, 1, 2] {
        let req = EnqueueRequest { priority: p, ..noop(&format!("p{p}")) };
        ids.push(queue::enqueue(&db.store, &req, 3).await.unwrap().id);
    }
    let preview: Vec<i64> = engine.dispatcher().preview(10, None).await.unwrap().iter().map(|a| a.id).collect();
    assert_eq!(preview, [ids[0], ids[2], ids[1]], "claim order: priority first");
    assert_eq!(preview, due(&db.store, 10).await.iter().map(|a| a.id).collect::<Vec<_>>());

    let term = hold(&db.store, "leader").await;
    let lease = Lease::new(db.store.clone(), "orchestrator", "leader", Duration::from_secs(30));
    let beat = lease.heartbeat(&term, Duration::from_secs(1));
    let deadline = Instant::now() + Duration::from_secs(30);
    let drained = engine.dispatcher().drain(2, deadline, Some(0), term.epoch, &beat, false).await.unwrap();
    assert_eq!((drained.attempted, drained.succeeded, drained.remaining), (2, 2, 0));
    assert!(drained.store_error.is_none());
    for (id, want) in
        [(preview[0], ActionStatus::Success), (preview[1], ActionStatus::Success), (preview[2], ActionStatus::Pending)]
    {
        assert_eq!(db.store.actions().action(id).await.unwrap().unwrap().status, want, "action {id}");
    }
}

/// Between ticks, an enqueue by another process (only the database can tell: `NOTIFY`, or the
/// newest id) and one by this process (the in-memory wake) each run without a tick; a pause
/// holds what arrives after it; nothing runs after `stop`.
async fn dispatcher_picks_up_new_work_as_it_arrives_and_holds_to_the_brakes(db: &TestDb) {
    let engine = db.engine(db.config());
    let term = hold(&db.store, "leader").await;
    let lease = Lease::new(db.store.clone(), "orchestrator", "leader", Duration::from_secs(30));
    let beat = lease.heartbeat(&term, Duration::from_secs(1));
    let other = Store::open(&db.url, &StoreOptions::default()).await.unwrap();
    let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
    let dispatcher = engine.dispatcher().clone();
    let mut waiter = db.store.notify().waiter().await;
    let epoch = term.epoch;
    let picking = tokio::spawn(async move {
        let until = Instant::now() + Duration::from_secs(120);
        dispatcher.pick_up(until, epoch, &beat, &mut waiter, 100, &mut stop).await
    });
    let settled = |id: i64| {
        let store = db.store.clone();
        async move {
            let start = Instant::now();
            loop {
                let status = store.actions().action(id).await.unwrap().unwrap().status;
                let open = [ActionStatus::Pending, ActionStatus::Running].contains(&status);
                if !open || start.elapsed() > Duration::from_secs(20) {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let from_other = queue::enqueue(&other, &noop("from-other"), 3).await.unwrap().id;
    assert_eq!(settled(from_other).await, ActionStatus::Success, "another process's enqueue ran");
    let from_own = queue::enqueue(&db.store, &noop("from-own"), 3).await.unwrap().id;
    assert_eq!(settled(from_own).await, ActionStatus::Success, "this process's enqueue ran");
    let logs = db.store.history().logs(Some(from_other), 10).await.unwrap();
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert_eq!(logs[0].tick_id, None, "run between ticks: no tick's");

    let pause = orchestrator::store::FlagChange { paused: Some(true), ..Default::default() };
    db.store.flags().set_flags(pause).await.unwrap();
    let held = queue::enqueue(&other, &noop("held"), 3).await.unwrap().id;
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop_tx.send(true).unwrap();
    let drained = picking.await.unwrap();
    assert_eq!((drained.attempted, drained.succeeded), (2, 2));
    assert_eq!(db.store.actions().action(held).await.unwrap().unwrap().status, ActionStatus::Pending, "paused");
    other.close().await.ok();
}

async fn dispatcher_tells_work_held_by_a_limit_from_work_left_idle(db: &TestDb) {
    let engine = db.engine(db.config());
    assert_eq!(engine.dispatcher().left_idle().await.unwrap().unheld, 0, "nothing due, nothing idle");
    queue::enqueue(&db.store, &noop("one"), 3).await.unwrap();
    db.store.limits().set_limit("NOOP", &LimitSpec { max_running: Some(0), ..LimitSpec::default() }).await.unwrap();
    let held = engine.dispatcher().left_idle().await.unwrap();
    assert_eq!((held.held, held.unheld), (1, 0));
    assert_eq!(held.held_by, ["NOOP max_running 0 (1 waiting)"]);
    db.store.limits().clear_limit("NOOP").await.unwrap();
    let idle = engine.dispatcher().left_idle().await.unwrap();
    assert_eq!((idle.held, idle.unheld), (0, 1), "due work nothing holds is left idle");
}

async fn registration_registers_renews_and_deregisters(db: &TestDb) {
    let ttl = Duration::from_secs(30);
    let registration = Registration::new(db.store.clone(), ttl, 4, vec!["NOOP".into()]);
    assert!(!registration.renew().await.unwrap(), "nothing to renew before the first ensure");
    let id = registration.ensure().await.unwrap();
    assert_eq!(registration.ensure().await.unwrap(), id, "a live registration is renewed, not replaced");
    let listed = db.store.workers().list(ttl).await.unwrap();
    assert!(listed.iter().any(|w| w.id == id && w.types == ["NOOP"]), "{listed:?}");
    assert_eq!(registration.seen().id.as_deref(), Some(id.as_str()));
    registration.deregister().await.unwrap();
    assert!(registration.id().is_none());
    assert!(!db.store.workers().list(ttl).await.unwrap().iter().any(|w| w.id == id), "deregistered");
}

async fn pruner_removes_leftover_artifact_files_and_finished_history(db: &TestDb) {
    let mut config = db.config();
    config.retention_days = 0;
    std::fs::create_dir_all(&config.artifacts_dir).unwrap();
    let old = config.artifacts_dir.join(".tmp-old");
    let new = config.artifacts_dir.join(".tmp-new");
    for f in [&old, &new] {
        std::fs::write(f, "partial").unwrap();
    }
    let long_ago = std::time::SystemTime::now() - STALE_TMP_AGE - Duration::from_secs(60);
    std::fs::File::options().write(true).open(&old).unwrap().set_modified(long_ago).unwrap();
    let metrics = Arc::new(Metrics::new());
    let pruner = Pruner::new(db.store.clone(), Arc::new(config.clone()), metrics.clone());
    pruner.remove_stale_tmp().await;
    assert!(!old.exists() && new.exists(), "only the leftover older than an hour goes");
    assert_eq!(metrics.artifact_tmp_removed_total.get(), 1);

    // A finished action past a zero-day retention goes; one still waiting stays.
    let engine = db.engine(config.clone());
    let done = queue::enqueue(&db.store, &noop("done"), 3).await.unwrap().id;
    crate::support::fixtures::ran(&engine).await;
    let waiting = queue::enqueue(&db.store, &noop("waiting"), 3).await.unwrap().id;
    tokio::time::sleep(Duration::from_millis(20)).await;
    pruner.run().await;
    assert!(db.store.actions().action(done).await.unwrap().is_none(), "the finished action was purged");
    assert!(
        db.store.actions().action(waiting).await.unwrap().is_some(),
        "an action that can still run is never purged"
    );
    let cutoffs = pruner::history_cutoffs(&config);
    assert!(cutoffs.ledger < orchestrator::model::now());
}

async fn limits_writer_fills_or_replaces_as_asked(db: &TestDb) {
    let two = LimitSpec { max_running: Some(2), ..LimitSpec::default() };
    let mut config = db.config();
    config.limits = Some(BTreeMap::from([("NOOP".to_string(), two.clone())]));
    let registry = orchestrator::adapters::Registry::builtin();
    let base = |limits: Vec<orchestrator::limits::TypeLimit>| {
        limits.into_iter().find(|l| l.action_type == "NOOP").map(|l| l.base)
    };

    limits_writer::write(&db.store, &config, &registry, ConfigLimits::Fill).await.unwrap();
    assert_eq!(base(db.store.limits().list().await.unwrap()), Some(two.clone()), "fills a type with no limit");
    let five = LimitSpec { max_running: Some(5), ..LimitSpec::default() };
    db.store.limits().set_limit("NOOP", &five).await.unwrap();
    limits_writer::write(&db.store, &config, &registry, ConfigLimits::Fill).await.unwrap();
    assert_eq!(base(db.store.limits().list().await.unwrap()), Some(five.clone()), "fill leaves the operator's limit");
    limits_writer::rewrite(&db.store, || Err::<orchestrator::config::Config, _>("bad yaml")).await;
    assert_eq!(base(db.store.limits().list().await.unwrap()), Some(five), "a rejected reload changes nothing");
    limits_writer::write(&db.store, &config, &registry, ConfigLimits::Replace).await.unwrap();
    assert_eq!(base(db.store.limits().list().await.unwrap()), Some(two), "replace puts the config's back");
}
