//! Liveness that says so when the process cannot work, through the real binary:
//! - a worker that cannot renew its registration answers `/health` 503 within a TTL of its
//!   last renewal, and stays 503: its PostgreSQL database dropped under it, or (SQLite)
//!   another writer holding the write lock, after which it registers anew and is healthy again;
//! - a `run` whose tick fails on storage (SQLite on a full disk) answers `/health` degraded at
//!   once, saying why, although the last tick in the ledger is fresh; healthy again once the
//!   disk has room;
//! - liveness judges the process only: an action in DLQ leaves `/health` and `status`'s
//!   `liveness` healthy while the workload score and the metrics count it, and a worker's
//!   `/health` is the same judgement, in the same body, as an instance's.

use std::time::{Duration, Instant};

use orchestrator::store::{Store, StoreOptions};

use crate::support::daemon::daemon;
use crate::support::db::LateDatabase;
use crate::support::disk::Tmpfs;
use crate::support::http::{Reply, get, wait_for};
use crate::support::process::{LogLines, Server, spawn_server, terminate};
use crate::support::{TestDb, bin, json, run};

/// A short TTL, renewed every second.
const WORKER_CONFIG: &str = "workers:\n  ttl_seconds: 3\n  heartbeat_seconds: 1\n  poll_seconds: 0.2\n";
const TTL: Duration = Duration::from_secs(3);

fn spawn_worker(dir: &std::path::Path, url: &str) -> (Server, LogLines, std::net::SocketAddr) {
    std::fs::write(dir.join("orchestrator.yaml"), WORKER_CONFIG).unwrap();
    spawn_server(
        bin(dir)
            .args(["--database-url", url, "--log-format", "json", "worker", "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info"),
    )
}

/// Polls the worker's `/health` until it is 503; returns that reply and how long it took.
fn until_unhealthy(addr: std::net::SocketAddr) -> (Reply, Duration) {
    let start = Instant::now();
    // Three TTLs is room enough: the code under test says so one TTL after the last renewal.
    let r = wait_for(addr, "/health", 3 * TTL + Duration::from_secs(5), |r| r.status == 503);
    (r, start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_database_is_dropped_is_unhealthy_within_a_ttl() {
    let Some(db) = LateDatabase::new("live").await else { return };
    db.create().await;
    let dir = tempfile::tempdir().unwrap();
    let (_child, mut logs, addr) = spawn_worker(dir.path(), &db.url);
    let h = wait_for(addr, "/health", Duration::from_secs(30), |r| r.status == 200);
    assert_eq!(h.json()["status"], "healthy", "{}", h.body);

    db.drop_now().await;
    let (r, after) = until_unhealthy(addr);
    let reason = r.json()["reasons"][0].as_str().unwrap_or("").to_string();
    assert!(reason.starts_with("registration not renewed for"), "{}", r.body);
    // And it stays so while the database is gone, although the worker keeps its id to retry.
    tokio::time::sleep(2 * TTL).await;
    let later = get(addr, "/health");
    assert_eq!(later.status, 503, "{}", later.body);
    let logged = logs.wait_for("cannot register the worker", Duration::from_secs(10));
    eprintln!(
        "worker, PostgreSQL database dropped: /health 503 {:.1}s after the drop (TTL {:.0}s): {reason}; \
         still 503 {:.0}s later; its log: {}",
        after.as_secs_f64(),
        TTL.as_secs_f64(),
        2.0 * TTL.as_secs_f64(),
        logged.contains("cannot register")
    );
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_cannot_renew_for_a_held_lock_is_unhealthy_then_recovers() {
    let db = TestDb::sqlite().await;
    let (mut child, mut logs, addr) = spawn_worker(db.dir.path(), &db.url);
    wait_for(addr, "/health", Duration::from_secs(30), |r| r.status == 200);

    // Another writer holds the write lock: every heartbeat waits out the busy timeout and fails.
    let holder = Store::open(&db.url, &StoreOptions { max_connections: 1, ..StoreOptions::default() }).await.unwrap();
    holder.execute_unprepared("BEGIN IMMEDIATE").await.unwrap();
    let (r, after) = until_unhealthy(addr);
    assert!(r.json()["reasons"][0].as_str().unwrap_or("").starts_with("registration not renewed for"), "{}", r.body);
    logs.wait_for("database is locked", Duration::from_secs(15));
    holder.execute_unprepared("COMMIT").await.unwrap();
    holder.close().await.ok();

    // The lapsed registration is replaced by a new one, and the worker is healthy again.
    let back = wait_for(addr, "/health", Duration::from_secs(30), |r| r.status == 200);
    let before = worker_id(&r);
    assert_ne!(worker_id(&back), before, "a new id after the lapse: {} then {}", r.body, back.body);
    assert_eq!(terminate(&mut child, Duration::from_secs(30)).code(), Some(0));
    eprintln!(
        "worker, SQLite write lock held: /health 503 {:.1}s after the lock (TTL 3s); 200 again under a new id once released",
        after.as_secs_f64()
    );
    db.cleanup().await;
}

fn worker_id(r: &Reply) -> String {
    r.json()["worker"].as_str().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_that_fails_on_storage_makes_health_degraded_at_once() {
    let scratch = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&scratch.path().join("disk"), "16m") else { return };
    let dir = scratch.path();
    let url = format!("sqlite:{}", disk.path().join("o.db").display());
    std::fs::write(dir.join("orchestrator.yaml"), "tick_interval_seconds: 0.2\n").unwrap();
    let (mut child, mut logs, addr) = spawn_server(&mut daemon(dir, &url, &[]));
    let h = wait_for(addr, "/health", Duration::from_secs(30), |r| r.status == 200);
    assert_eq!(h.json()["status"], "healthy", "{}", h.body);

    disk.fill();
    let failed = logs.wait_for("tick failed", Duration::from_secs(60));
    let seen = Instant::now();
    // The ledger's last tick is seconds old: without the process's own word /health would say
    // healthy for a minute.
    let r = wait_for(addr, "/health", Duration::from_secs(10), |r| r.json()["status"] == "degraded");
    let after = seen.elapsed();
    assert_eq!(r.status, 200, "degraded, not unhealthy: {}", r.body);
    let reasons = r.json()["reasons"].to_string();
    assert!(reasons.contains("this instance's last tick failed on storage (disk full)"), "{reasons}");
    assert!(!reasons.contains("code: 13"), "the public /health quotes no error text: {reasons}");

    disk.resize("256m");
    let back = wait_for(addr, "/health", Duration::from_secs(60), |r| r.json()["status"] == "healthy");
    assert_eq!(back.status, 200);
    assert_eq!(terminate(&mut child, Duration::from_secs(25)).code(), Some(0));
    eprintln!(
        "run, SQLite disk full: /health degraded {:.2}s after the first failed tick was logged ({}), healthy again once the disk grew",
        after.as_secs_f64(),
        failed.chars().take(200).collect::<String>()
    );
}

crate::backend_tests!(an_action_in_dlq_leaves_liveness_healthy_while_the_workload_counts_it);

/// An action in DLQ says nothing about whether the process can work: `/health` and `status`
/// (under `liveness` and its old name `health`) stay healthy, while the workload score loses
/// its 10 points for the failure and `/metrics` counts the row. A worker's `/health` beside the
/// daemon has the very same fields.
async fn an_action_in_dlq_leaves_liveness_healthy_while_the_workload_counts_it(db: &TestDb) {
    let mut teleport = crate::support::noop("nowhere");
    teleport.action_type = "TELEPORT".into();
    orchestrator::queue::enqueue(&db.store, &teleport, 3).await.unwrap();
    let dir = db.dir.path();
    let (mut child, mut logs, addr) = spawn_server(&mut daemon(dir, &db.url, &["--interval", "0.2"]));
    let dlq = "orchestrator_queue_actions{status=\"DLQ\"} 1";
    wait_for(addr, "/metrics", Duration::from_secs(30), |r| r.body.contains(dlq));
    // A tick after the one that moved it (that one was PARTIAL, a workload fact too).
    let h = wait_for(addr, "/health", Duration::from_secs(30), |r| r.status == 200);
    assert_eq!(h.json()["status"], "healthy", "the DLQ row does not degrade /health: {}", h.body);
    assert_eq!(h.json()["reasons"], serde_json::json!([]), "{}", h.body);
    let metrics = get(addr, "/metrics").body;
    assert!(metrics.contains("orchestrator_health_score 90"), "the score counts the failure: {metrics}");

    let o = run(bin(dir).args(["--database-url", &db.url, "--json", "status"]));
    assert_eq!(o.status.code(), Some(0), "not unhealthy");
    let s = json(&o);
    assert_eq!(s["queue"]["DLQ"], 1, "{s}");
    assert_eq!(s["liveness"], "healthy", "{s}");
    assert_eq!(s["health"], s["liveness"], "the old name, the same value for a release: {s}");
    assert!(!s["reasons"].to_string().contains("DLQ"), "{s}");
    assert_eq!(s["workload"]["score"], 90, "{s}");
    assert!(s["workload"]["reasons"].to_string().contains("1 failure(s) in the last hour (-10)"), "{s}");

    // A worker's /health: the same judgement's body, field for field.
    let worker_dir = tempfile::tempdir().unwrap();
    let (mut worker, _worker_logs, worker_addr) = spawn_worker(worker_dir.path(), &db.url);
    let w = wait_for(worker_addr, "/health", Duration::from_secs(30), |r| r.status == 200);
    let fields = |v: &serde_json::Value| -> Vec<String> {
        v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
    };
    let (instance, worker_body) = (get(addr, "/health").json(), w.json());
    assert_eq!(fields(&instance), fields(&worker_body), "{instance} against {worker_body}");
    assert_eq!((instance["of"].as_str(), worker_body["of"].as_str()), (Some("liveness"), Some("liveness")));
    assert_eq!(
        (worker_body["status"].as_str(), worker_body["reasons"].clone()),
        (Some("healthy"), serde_json::json!([]))
    );
    assert!(worker_body["checked_at"].as_str().is_some_and(|t| t.starts_with("20")), "{worker_body}");
    assert!(worker_body["worker"].as_str().is_some_and(|id| id.contains(':')), "{worker_body}");
    assert!(instance["worker"].is_null(), "an instance's /health names no worker: {instance}");

    assert_eq!(terminate(&mut worker, Duration::from_secs(25)).code(), Some(0));
    assert_eq!(terminate(&mut child, Duration::from_secs(25)).code(), Some(0), "{}", logs.drain().join("\n"));
}
