//! Whole ticks against real databases: dispatch, proof artifacts, real-mode retry to DLQ,
//! flags set by SQL, kill, deadlines, panics and timeouts.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use orchestrator::adapters::{Adapter, AdapterError, ExecContext, Outcome, Proof, Registry};
use orchestrator::artifacts::sha256_hex;
use orchestrator::model::{Action, ActionStatus, LogLevel, TickStatus};
use orchestrator::queue::{self, EnqueueRequest};
use orchestrator::runtime::daemon::{self, StopReason};
use orchestrator::store::FlagChange;
use orchestrator::tick::{Engine, TickOutcome};
use serde_json::json;

use crate::backend_tests;
use crate::support::TestDb;
use crate::support::noop;
use crate::support::ran;

backend_tests!(
    enqueue_then_tick_succeeds_and_records_everything,
    proof_artifact_sha256_matches_its_bytes,
    real_mode_retries_then_dlq_with_error_kept,
    pause_set_by_sql_is_honoured,
    kill_stops_run_and_releases_the_lease,
    unknown_type_goes_to_dlq,
    panics_and_timeouts_are_retryable_failures,
    deadline_returns_unstarted_claims_uncounted,
    follower_does_nothing,
    daemon_prunes_history_past_retention,
    a_tick_that_dies_midway_leaves_its_row_as_fail,
    ticks_on_one_engine_never_overlap,
    claims_taken_ahead_start_nothing_past_the_deadline,
);

/// The ledger row is opened first: a tick whose process stops before it closes the row shows as
/// `FAIL` "did not finish", and the next tick gets a row of its own.
async fn a_tick_that_dies_midway_leaves_its_row_as_fail(db: &TestDb) {
    let engine = db.engine(db.config());
    let (_, tick_id) = engine.lease().begin_tick(db.store.now()).await.unwrap().expect("the lease is free");
    let row = db.store.ledger().recent_ticks(1).await.unwrap().remove(0);
    assert_eq!((row.id, row.status), (tick_id, TickStatus::Fail));
    assert_eq!(row.notes.as_deref(), Some(orchestrator::store::UNFINISHED_NOTE));
    let next = ran(&engine).await;
    assert_eq!(next.tick_id, tick_id + 1);
    let rows = db.store.ledger().recent_ticks(2).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.status).collect::<Vec<_>>(), [next.status, TickStatus::Fail]);
}

/// An API `run-once` and the daemon's tick on the same engine: the second waits for the first,
/// so their rows never overlap in time.
async fn ticks_on_one_engine_never_overlap(db: &TestDb) {
    let engine = db.engine(db.config());
    for i in 0..20 {
        queue::enqueue(&db.store, &noop(&format!("n{i}")), 3).await.unwrap();
    }
    let (a, b) = tokio::join!(engine.tick(), engine.tick());
    for outcome in [a, b] {
        assert!(matches!(outcome.unwrap(), TickOutcome::Ran(_)));
    }
    let mut rows = db.store.ledger().recent_ticks(2).await.unwrap();
    rows.sort_by_key(|r| r.id);
    let first_end = rows[0].finished_at.expect("closed");
    assert!(rows[1].started_at >= first_end, "tick {} started before tick {} ended: {rows:?}", rows[1].id, rows[0].id);
}

fn social(key: &str) -> EnqueueRequest {
    EnqueueRequest {
        action_type: "POST_SOCIAL".into(),
        payload: json!({"platform": "mastodon", "content": "hello world", "audience": "all"}),
        idempotency_key: Some(key.into()),
        priority: 0,
        not_before: None,
        max_attempts: None,
        expires_at: None,
        traceparent: None,
        require_approval: false,
    }
}

async fn enqueue_then_tick_succeeds_and_records_everything(db: &TestDb) {
    let engine = db.engine(db.config());
    let idle = ran(&engine).await;
    assert_eq!(idle.status, TickStatus::Idle);
    let id = queue::enqueue(&db.store, &noop("one"), 3).await.unwrap().id;
    let r = ran(&engine).await;
    assert_eq!((r.status, r.attempted, r.succeeded, r.failed), (TickStatus::Success, 1, 1, 0));
    let a = db.store.actions().action(id).await.unwrap().unwrap();
    assert_eq!(a.status, ActionStatus::Success);
    assert_eq!(a.attempts, 1);
    assert!(a.finished_at.is_some());
    let ticks = db.store.ledger().recent_ticks(10).await.unwrap();
    assert_eq!(ticks.len(), 2, "one ledger row per tick");
    let t = &ticks[0];
    assert_eq!((t.id, t.status, t.actions_attempted, t.actions_succeeded), (r.tick_id, TickStatus::Success, 1, 1));
    assert!(t.finished_at.is_some());
    assert_eq!(t.owner, engine.lease().owner());
    let logs = db.store.history().logs(Some(id), 10).await.unwrap();
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].tick_id, Some(r.tick_id));
    assert_eq!(logs[0].level, LogLevel::Info);
    let metrics = engine.metrics().render();
    assert!(metrics.contains("orchestrator_ticks_total{status=\"SUCCESS\"} 1"), "{metrics}");
    assert!(metrics.contains("orchestrator_ticks_total{status=\"IDLE\"} 1"), "{metrics}");
    assert!(metrics.contains("orchestrator_actions_total{outcome=\"success\",type=\"NOOP\"} 1"), "{metrics}");
    let snap = r.snapshot.expect("snapshot");
    assert_eq!(snap.queue.pending, 1);
    assert_eq!(snap.queue.due_now, 1);
    assert_eq!(snap.last_tick.map(|t| t.status), Some(TickStatus::Idle));
}

async fn proof_artifact_sha256_matches_its_bytes(db: &TestDb) {
    let engine = db.engine(db.config());
    let id = queue::enqueue(&db.store, &social("../../etc/passwd"), 3).await;
    assert!(id.is_err(), "a path-like key is refused at enqueue");
    let id = queue::enqueue(&db.store, &social("post:42 ✓"), 3).await.unwrap().id;
    let mut missing = social("bad");
    missing.payload = json!({"platform": "x", "content": "y"});
    let bad = queue::enqueue(&db.store, &missing, 3).await.unwrap().id;
    let r = ran(&engine).await;
    assert_eq!((r.status, r.attempted, r.succeeded), (TickStatus::Partial, 2, 1));

    let log = &db.store.history().logs(Some(id), 10).await.unwrap()[0];
    let path = std::path::PathBuf::from(log.artifact_ref.as_deref().expect("artifact recorded"));
    assert!(path.starts_with(db.dir.path().join("artifacts").join("proof_social")), "{path:?}");
    let bytes = std::fs::read(&path).expect("artifact exists");
    assert_eq!(log.artifact_sha256.as_deref(), Some(sha256_hex(&bytes).as_str()));
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.contains("hello world") && text.contains("mastodon"), "{text}");
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(name.contains("_post_42__-"), "sanitized key in the name: {name}");

    let b = db.store.actions().action(bad).await.unwrap().unwrap();
    assert_eq!(b.status, ActionStatus::Dlq, "a missing field is permanent");
    assert_eq!(b.last_error.as_deref(), Some("POST_SOCIAL payload is missing the field 'audience'"));
    assert_eq!(b.attempts, 1);
}

async fn real_mode_retries_then_dlq_with_error_kept(db: &TestDb) {
    db.store.flags().set_flags(FlagChange { proof_mode: Some(false), ..Default::default() }).await.unwrap();
    let engine = db.engine(db.config());
    let id = queue::enqueue(&db.store, &social("real"), 3).await.unwrap().id;
    for attempt in 1..=3 {
        let r = ran(&engine).await;
        assert_eq!((r.status, r.attempted, r.failed), (TickStatus::Partial, 1, 1), "attempt {attempt}");
        let a = db.store.actions().action(id).await.unwrap().unwrap();
        assert_eq!(a.attempts, attempt);
        let expected = if attempt < 3 { ActionStatus::Retry } else { ActionStatus::Dlq };
        assert_eq!(a.status, expected);
        assert!(a.last_error.as_deref().unwrap().starts_with("real run unconfigured"), "{:?}", a.last_error);
    }
    assert_eq!(ran(&engine).await.status, TickStatus::Idle, "DLQ is not retried");
    let logs = db.store.history().logs(Some(id), 10).await.unwrap();
    assert_eq!(logs.len(), 3);
    assert_eq!(logs[0].level, LogLevel::Error);
    assert!(logs[0].message.contains("out of attempts -> DLQ"), "{}", logs[0].message);
    assert!(orchestrator::artifacts::sha256_hex(b"").len() == 64);
    assert!(super::support::artifacts_under(&db.dir.path().join("artifacts")).is_empty(), "real mode writes no proof");
}

async fn pause_set_by_sql_is_honoured(db: &TestDb) {
    let engine = db.engine(db.config());
    let id = queue::enqueue(&db.store, &noop("p"), 3).await.unwrap().id;
    db.store.execute_unprepared("UPDATE control_flags SET paused = true WHERE id = 1").await.unwrap();
    let r = ran(&engine).await;
    assert_eq!((r.status, r.attempted), (TickStatus::Paused, 0));
    assert_eq!(db.store.actions().action(id).await.unwrap().unwrap().status, ActionStatus::Pending);
    db.store.execute_unprepared("UPDATE control_flags SET paused = false WHERE id = 1").await.unwrap();
    assert_eq!(ran(&engine).await.status, TickStatus::Success);
}

async fn kill_stops_run_and_releases_the_lease(db: &TestDb) {
    let mut config = db.config();
    config.tick_interval = Duration::from_millis(50);
    let engine = db.engine(config);
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let runner = tokio::spawn({
        let engine = engine.clone();
        async move { daemon::run(&engine, None, rx).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    db.store.flags().set_flags(FlagChange { killed: Some(true), ..Default::default() }).await.unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(10), runner).await.expect("run stops").unwrap();
    assert_eq!(summary.stopped_by, StopReason::Killed);
    assert!(summary.ticks >= 2);
    let last = &db.store.ledger().recent_ticks(1).await.unwrap()[0];
    assert_eq!(last.status, TickStatus::Killed);
    let lease = db.store.lease().get("orchestrator").await.unwrap().unwrap();
    assert!(lease.expires_at <= orchestrator::model::now(), "the lease was released");
}

async fn unknown_type_goes_to_dlq(db: &TestDb) {
    let engine = db.engine(db.config());
    let mut r = noop("u");
    r.action_type = "TELEPORT".into();
    let id = queue::enqueue(&db.store, &r, 3).await.unwrap().id;
    ran(&engine).await;
    let a = db.store.actions().action(id).await.unwrap().unwrap();
    assert_eq!(a.status, ActionStatus::Dlq);
    assert_eq!(a.last_error.as_deref(), Some("no adapter for action type TELEPORT"));
}

struct Flaky {
    calls: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl Adapter for Flaky {
    fn action_type(&self) -> &str {
        "FLAKY"
    }
    fn render_proof(&self, _a: &Action) -> Result<Option<Proof>, AdapterError> {
        Ok(None)
    }
    async fn execute(&self, _ctx: &ExecContext, a: &Action) -> Result<Outcome, AdapterError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match a.payload["mode"].as_str() {
            Some("panic") => panic!("flaky adapter exploded"),
            Some("hang") => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(Outcome { message: "never".into() })
            }
            _ => Ok(Outcome { message: "fine".into() }),
        }
    }
}

async fn panics_and_timeouts_are_retryable_failures(db: &TestDb) {
    db.store.flags().set_flags(FlagChange { proof_mode: Some(false), ..Default::default() }).await.unwrap();
    let mut config = db.config();
    // Long enough for a panic hook that prints a backtrace (RUST_BACKTRACE=1) to finish.
    config.action_timeout = Duration::from_secs(2);
    let calls = Arc::new(AtomicUsize::new(0));
    let mut registry = Registry::builtin();
    registry.register(Flaky { calls: calls.clone() });
    let engine = Engine::new(db.store.clone(), config, registry);
    let enq = |key: &str, mode: &str| EnqueueRequest {
        action_type: "FLAKY".into(),
        payload: json!({"mode": mode}),
        idempotency_key: Some(key.into()),
        priority: 0,
        not_before: None,
        max_attempts: None,
        expires_at: None,
        traceparent: None,
        require_approval: false,
    };
    let p = queue::enqueue(&db.store, &enq("p", "panic"), 3).await.unwrap().id;
    let h = queue::enqueue(&db.store, &enq("h", "hang"), 3).await.unwrap().id;
    let f = queue::enqueue(&db.store, &enq("f", "fine"), 3).await.unwrap().id;
    let r = ran(&engine).await;
    assert_eq!((r.status, r.attempted, r.succeeded, r.failed), (TickStatus::Partial, 3, 1, 2));
    assert_eq!(calls.load(Ordering::SeqCst), 3, "the panic stopped neither the tick nor the others");
    let pa = db.store.actions().action(p).await.unwrap().unwrap();
    assert_eq!(pa.status, ActionStatus::Retry);
    assert_eq!(pa.last_error.as_deref(), Some("adapter panicked: flaky adapter exploded"));
    let ha = db.store.actions().action(h).await.unwrap().unwrap();
    assert_eq!(ha.status, ActionStatus::Retry);
    assert!(ha.last_error.as_deref().unwrap().starts_with("timed out after 2.0s"), "{:?}", ha.last_error);
    assert_eq!(db.store.actions().action(f).await.unwrap().unwrap().status, ActionStatus::Success);
}

async fn deadline_returns_unstarted_claims_uncounted(db: &TestDb) {
    // Real mode: NOOP's sleep_ms only runs in execute (proof mode calls render_proof alone).
    db.store.flags().set_flags(FlagChange { proof_mode: Some(false), ..Default::default() }).await.unwrap();
    let mut config = db.config();
    config.max_tick = Duration::from_millis(300);
    config.dispatch_concurrency = 1;
    let engine = db.engine(config);
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut r = noop(&format!("slow{i}"));
        r.payload = json!({"sleep_ms": 200, "i": i});
        ids.push(queue::enqueue(&db.store, &r, 3).await.unwrap().id);
    }
    let r = ran(&engine).await;
    assert_eq!(r.status, TickStatus::Success);
    assert!(r.attempted >= 1 && r.attempted <= 3, "only what fits before the deadline starts: {}", r.attempted);
    assert!(r.notes.contains("returned to PENDING unstarted"), "{}", r.notes);
    let mut pending = 0;
    for id in ids {
        let a = db.store.actions().action(id).await.unwrap().unwrap();
        match a.status {
            ActionStatus::Success => assert_eq!(a.attempts, 1),
            ActionStatus::Pending => {
                assert_eq!(a.attempts, 0, "an unstarted claim costs no attempt");
                assert!(a.claimed_epoch.is_none());
                pending += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(pending as u32, 5 - r.attempted);
}

async fn follower_does_nothing(db: &TestDb) {
    let leader = db.engine(db.config());
    let follower = db.engine(db.config());
    ran(&leader).await;
    queue::enqueue(&db.store, &noop("f"), 3).await.unwrap();
    match follower.tick().await.unwrap() {
        TickOutcome::NotLeader { owner, epoch, .. } => {
            assert_eq!(owner, leader.lease().owner());
            assert_eq!(epoch, 1);
        }
        TickOutcome::Ran(_) => panic!("the follower ran a tick"),
    }
    assert_eq!(db.store.ledger().recent_ticks(10).await.unwrap().len(), 1, "a follower writes no ledger row");
    assert_eq!(db.store.actions().due_count().await.unwrap(), 1);
}

async fn daemon_prunes_history_past_retention(db: &TestDb) {
    let engine = db.engine(db.config());
    let old = queue::enqueue(&db.store, &noop("old"), 3).await.unwrap().id;
    let recent = queue::enqueue(&db.store, &noop("recent"), 3).await.unwrap().id;
    ran(&engine).await;
    let long_ago = match db.store.backend() {
        orchestrator::store::Backend::Sqlite => "'2020-01-01T00:00:00+00:00'",
        orchestrator::store::Backend::Postgres => "TIMESTAMPTZ '2020-01-01 00:00:00+00'",
    };
    db.store
        .execute_unprepared(&format!("UPDATE actions SET finished_at = {long_ago} WHERE id = {old}"))
        .await
        .unwrap();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let summary = daemon::run(&engine, Some(1), rx).await;
    assert_eq!(summary.stopped_by, StopReason::TicksDone);
    assert!(db.store.actions().action(old).await.unwrap().is_none(), "finished past the retention: purged");
    assert_eq!(
        db.store.actions().action(recent).await.unwrap().unwrap().status,
        ActionStatus::Success,
        "within the retention: kept"
    );
}

/// Counts its calls; every call waits until `go` is true.
struct Gated {
    started: Arc<AtomicUsize>,
    go: tokio::sync::watch::Receiver<bool>,
}

#[async_trait::async_trait]
impl Adapter for Gated {
    fn action_type(&self) -> &str {
        "GATED"
    }
    fn render_proof(&self, _a: &Action) -> Result<Option<Proof>, AdapterError> {
        Ok(None)
    }
    async fn execute(&self, _ctx: &ExecContext, _a: &Action) -> Result<Outcome, AdapterError> {
        self.started.fetch_add(1, Ordering::SeqCst);
        let mut go = self.go.clone();
        go.wait_for(|g| *g).await.map_err(|_| AdapterError::retryable("gate dropped"))?;
        Ok(Outcome { message: "through the gate".into() })
    }
}

async fn wait_for_count(n: &AtomicUsize, want: usize) {
    let start = std::time::Instant::now();
    while n.load(Ordering::SeqCst) < want {
        assert!(start.elapsed() < Duration::from_secs(20), "only {} of {want} started", n.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// At most `dispatch_concurrency` attempts run at once, and at most `max_unrecorded` are started
/// while their outcomes cannot be committed (another writer holds SQLite's write lock): that
/// window is what one crash could make run twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_runs_concurrency_at_once_and_starts_at_most_max_unrecorded_unrecorded() {
    let db = TestDb::sqlite().await;
    db.store.flags().set_flags(FlagChange { proof_mode: Some(false), ..Default::default() }).await.unwrap();
    let mut config = db.config();
    config.dispatch_concurrency = 2;
    config.max_unrecorded = 5;
    config.max_actions_per_tick = 20;
    let started = Arc::new(AtomicUsize::new(0));
    let (go_tx, go) = tokio::sync::watch::channel(false);
    let mut registry = Registry::builtin();
    registry.register(Gated { started: started.clone(), go });
    let engine = Engine::new(db.store.clone(), config, registry);
    for i in 0..20 {
        let mut r = noop(&format!("gated-{i}"));
        r.action_type = "GATED".into();
        queue::enqueue(&db.store, &r, 3).await.unwrap();
    }
    let tick = tokio::spawn({
        let engine = engine.clone();
        async move { ran(&engine).await }
    });

    wait_for_count(&started, 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(started.load(Ordering::SeqCst), 2, "two run at once (dispatch_concurrency)");

    // Nothing can be committed now; let the adapters finish and see how many more start.
    let holder = orchestrator::store::Store::open(
        &db.url,
        &orchestrator::store::StoreOptions { max_connections: 1, ..Default::default() },
    )
    .await
    .unwrap();
    holder.execute_unprepared("BEGIN IMMEDIATE").await.unwrap();
    go_tx.send(true).unwrap();
    wait_for_count(&started, 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(started.load(Ordering::SeqCst), 5, "no more than max_unrecorded start while nothing is recorded");
    holder.execute_unprepared("COMMIT").await.unwrap();
    holder.close().await.ok();

    let r = tick.await.unwrap();
    assert_eq!((r.status, r.attempted, r.succeeded), (TickStatus::Success, 20, 20));
    assert_eq!(started.load(Ordering::SeqCst), 20, "each ran once");
    let counts = db.store.actions().count_by_status().await.unwrap();
    assert_eq!(counts[&ActionStatus::Success], 20);
}

/// On PostgreSQL the next batch is claimed while the one before it runs; on SQLite only once it
/// is done. Either way, past the tick's deadline nothing claimed starts: the rest of the running
/// batch and the batch claimed ahead go back to PENDING uncounted, and no row is left RUNNING.
async fn claims_taken_ahead_start_nothing_past_the_deadline(db: &TestDb) {
    db.store.flags().set_flags(FlagChange { proof_mode: Some(false), ..Default::default() }).await.unwrap();
    let mut config = db.config();
    config.dispatch_concurrency = 1;
    config.max_actions_per_tick = 1000;
    config.max_tick = Duration::from_secs(4);
    let started = Arc::new(AtomicUsize::new(0));
    let (go_tx, go) = tokio::sync::watch::channel(false);
    let mut registry = Registry::builtin();
    registry.register(Gated { started: started.clone(), go });
    let engine = Engine::new(db.store.clone(), config, registry);
    let lines: String =
        (0..600).map(|i| format!("{{\"action_type\":\"GATED\",\"payload\":{{\"i\":{i}}}}}\n")).collect();
    queue::enqueue_jsonl(&db.store, lines.as_bytes(), 3).await.unwrap();
    let begun = std::time::Instant::now();
    let tick = tokio::spawn({
        let engine = engine.clone();
        async move { ran(&engine).await }
    });

    wait_for_count(&started, 1).await;
    let ahead = db.store.backend() == orchestrator::store::Backend::Postgres;
    let want = if ahead { 600 } else { 512 };
    let running = || async { db.store.actions().count_by_status().await.unwrap()[&ActionStatus::Running] };
    for _ in 0..40 {
        if running().await >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(running().await, want, "a batch of 512, and on PostgreSQL the rest claimed ahead");

    // Past the tick's deadline (the tick began after `begun`): only then may the first attempt end.
    tokio::time::sleep(Duration::from_millis(4200).saturating_sub(begun.elapsed())).await;
    go_tx.send(true).unwrap();
    let r = tick.await.unwrap();
    assert_eq!((r.status, r.attempted, r.succeeded), (TickStatus::Success, 1, 1), "{}", r.notes);
    assert_eq!(started.load(Ordering::SeqCst), 1, "nothing started past the deadline");
    let counts = db.store.actions().count_by_status().await.unwrap();
    assert_eq!(counts[&ActionStatus::Running], 0, "nothing is left claimed: {counts:?}");
    assert_eq!((counts[&ActionStatus::Success], counts[&ActionStatus::Pending]), (1, 599));
    let waiting = db.store.actions().list_actions(&orchestrator::store::ActionFilter {
        status: Some(ActionStatus::Pending),
        action_type: None,
        limit: 1000,
    });
    assert!(
        waiting.await.unwrap().iter().all(|a| a.attempts == 0 && a.claimed_epoch.is_none()),
        "unstarted: uncounted"
    );
}
