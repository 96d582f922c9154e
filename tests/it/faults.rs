//! Database faults under a running daemon (the real binary): a SQLite file held by another
//! writer in `BEGIN IMMEDIATE` for 10 s. The daemon survives, logs the failed tick once, and
//! recovers by itself when the lock goes; every action ends SUCCESS after exactly one attempt
//! (nothing lost, nothing run twice).
//!
//! (The PostgreSQL outage made with `pg_terminate_backend` is in `http_live.rs`.)

use std::time::{Duration, Instant};

use orchestrator::model::ActionStatus;
use orchestrator::store::{ActionFilter, FlagChange, Store, StoreOptions};

use crate::http_client::{get, spawn_server, terminate, wait_for};
use crate::http_live::daemon;
use crate::support::TestDb;

const LOCK_CONFIG: &str = "tick_interval_seconds: 0.2\nmax_actions_per_tick: 4\ndispatch_concurrency: 2\n\
                           backoff_base_seconds: 0\nbackoff_max_seconds: 0\nlease_ttl_seconds: 30\nheartbeat_seconds: 1\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_writer_lock_for_10s_is_survived_without_loss_or_duplicates() {
    let db = TestDb::sqlite().await;
    let dir = db.dir.path();
    std::fs::write(dir.join("orchestrator.yaml"), LOCK_CONFIG).unwrap();
    db.store.set_flags(FlagChange { proof_mode: Some(false), ..Default::default() }).await.unwrap();
    let n = 150;
    let lines: String = (0..n)
        .map(|i| {
            format!("{{\"action_type\":\"NOOP\",\"payload\":{{\"sleep_ms\":40}},\"idempotency_key\":\"lock-{i}\"}}\n")
        })
        .collect();
    orchestrator::queue::enqueue_jsonl(&db.store, lines.as_bytes(), 3).await.unwrap();

    let (mut child, mut logs, addr) = spawn_server(&mut daemon(dir, &db.url, &[]));
    wait_for(addr, "/health", Duration::from_secs(30), |r| r.status == 200);
    // Let it work a little, so that the lock lands in the middle of the drain.
    let start = Instant::now();
    while db.store.count_by_status().await.unwrap()[&ActionStatus::Success] < 10 {
        assert!(start.elapsed() < Duration::from_secs(30), "the daemon is not working");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Another writer: one connection that holds the write lock for 10 s.
    let holder = Store::open(&db.url, &StoreOptions { max_connections: 1, ..StoreOptions::default() }).await.unwrap();
    holder.execute_unprepared("BEGIN IMMEDIATE").await.unwrap();
    let locked_at = Instant::now();
    let done_at_lock = db.store.count_by_status().await.unwrap()[&ActionStatus::Success];
    // A write fails after the 5 s busy timeout and says why; the daemon retries it.
    let failed = logs.wait_for("database is locked", Duration::from_secs(15));
    assert!(failed.contains("retrying"), "the failure says it is retried: {failed}");
    let during = get(addr, "/health");
    let sleep = Duration::from_secs(10).saturating_sub(locked_at.elapsed());
    tokio::time::sleep(sleep).await;
    holder.execute_unprepared("COMMIT").await.unwrap();
    holder.close().await.ok();
    let held = locked_at.elapsed();

    let start = Instant::now();
    loop {
        let c = db.store.count_by_status().await.unwrap();
        if c[&ActionStatus::Success] == n {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "not drained after the lock: {c:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovered = locked_at.elapsed();
    assert!(child.0.try_wait().unwrap().is_none(), "the daemon survived");
    assert_eq!(terminate(&mut child, Duration::from_secs(25)).code(), Some(0));
    let lines = logs.drain().to_vec();
    let errors = lines.iter().filter(|l| l.contains("\"level\":\"ERROR\"")).count();
    let warnings = lines.iter().filter(|l| l.contains("database is locked")).count();
    assert!(warnings >= 1 && errors <= 1, "the lock is logged, and not once per try: {lines:#?}");
    assert!(
        lines.iter().any(|l| l.contains("outcomes recorded after retrying") || l.contains("database reachable again")),
        "the recovery is logged: {lines:#?}"
    );

    let all = db.store.list_actions(&ActionFilter { limit: 1000, ..Default::default() }).await.unwrap();
    assert_eq!(all.len(), n as usize, "nothing lost");
    let reruns: Vec<_> = all.iter().filter(|a| a.attempts != 1).map(|a| (a.id, a.attempts)).collect();
    assert!(reruns.is_empty(), "actions run more than once: {reruns:?}");
    assert_eq!(db.store.sqlite_pragma("integrity_check").await.unwrap().as_deref(), Some("ok"));
    eprintln!(
        "sqlite lock: write lock held {:.1}s with {done_at_lock}/{n} done; /health during it: {}; \
         drained {n}/{n} {:.1}s after the lock began, 0 run twice; {warnings} lock warning(s), {errors} error(s) logged",
        held.as_secs_f64(),
        during.status,
        recovered.as_secs_f64()
    );
    db.cleanup().await;
}
