//! Workers on PostgreSQL, as processes: a leader started with `--no-execute` beside
//! `orchestrator worker` processes that claim and run everything, a worker killed with
//! `kill -9` mid-drain whose claims the leader rescues, and a SIGTERM that lets attempts in
//! flight finish and deregisters. Small sizes here; the figures are in RELIABILITY.md.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use orchestrator::model::ActionStatus;
use orchestrator::store::ActionFilter;

use crate::support::{PG_ENV, TestDb, bin, json, run, stderr};

const CONFIG: &str = "\
tick_interval_seconds: 0.2
workers:
  heartbeat_seconds: 0.3
  ttl_seconds: 1.5
  poll_seconds: 0.1
  shutdown_grace_seconds: 10
adapters:
  command:
    allow:
      nap:
        program: /bin/sleep
        args: [\"0.2\"]
";

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(db: &TestDb, args: &[&str]) -> Child {
    bin(db.dir.path())
        .args(["--database-url", &db.url, "--config", "o.yaml"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn orchestrator")
}

fn signal(child: &Child, sig: &str) {
    let pid = child.id().to_string();
    assert!(Command::new("kill").args([sig, &pid]).status().unwrap().success());
}

async fn counts(db: &TestDb) -> Vec<(ActionStatus, usize)> {
    let all = db.store.list_actions(&ActionFilter { limit: 10_000, ..Default::default() }).await.unwrap();
    ActionStatus::ALL
        .iter()
        .map(|s| (*s, all.iter().filter(|a| a.status == *s).count()))
        .filter(|(_, n)| *n > 0)
        .collect()
}

async fn wait_until_done(db: &TestDb, n: usize, limit: Duration) {
    let start = Instant::now();
    loop {
        let c = counts(db).await;
        if c == vec![(ActionStatus::Success, n)] {
            return;
        }
        assert!(start.elapsed() < limit, "not drained within {limit:?}: {c:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn pg() -> Option<TestDb> {
    if std::env::var(PG_ENV).is_err() {
        eprintln!("skipped: {PG_ENV} is not set, so this PostgreSQL test did not run");
        return None;
    }
    let db = TestDb::postgres().await.expect("PostgreSQL is configured");
    std::fs::write(db.dir.path().join("o.yaml"), CONFIG).unwrap();
    Some(db)
}

fn enqueue_naps(db: &TestDb, n: usize) {
    let lines: String = (0..n)
        .map(|i| {
            format!(
                "{{\"action_type\":\"COMMAND\",\"payload\":{{\"command\":\"nap\"}},\"idempotency_key\":\"n{i}\"}}\n"
            )
        })
        .collect();
    std::fs::write(db.dir.path().join("naps.jsonl"), lines).unwrap();
    let args = ["--database-url", &db.url, "--config", "o.yaml", "enqueue", "--file", "naps.jsonl"];
    let o = run(bin(db.dir.path()).args(args));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(bin(db.dir.path()).args(["--database-url", &db.url, "proof", "off"]));
    assert!(o.status.success(), "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_drain_beside_a_leader_that_does_not_execute() {
    let Some(db) = pg().await else { return };
    enqueue_naps(&db, 60);
    let mut procs = Procs(vec![spawn(&db, &["run", "--no-execute", "--no-http"])]);
    for _ in 0..2 {
        procs.0.push(spawn(&db, &["worker", "--concurrency", "4"]));
    }
    wait_until_done(&db, 60, Duration::from_secs(60)).await;

    // Every attempt ran on a worker, none in the leader's ticks.
    let ticks = db.store.recent_ticks(10_000).await.unwrap();
    assert!(!ticks.is_empty(), "the leader ticked");
    assert_eq!(ticks.iter().map(|t| t.actions_attempted).sum::<i32>(), 0, "the leader executed nothing");
    let o = run(bin(db.dir.path()).args(["--database-url", &db.url, "--config", "o.yaml", "--json", "workers"]));
    let listed = json(&o);
    let rows = listed.as_array().unwrap();
    assert_eq!(rows.iter().filter(|w| w["live"] == true).count(), 2, "{listed}");
    let done: i64 = rows.iter().map(|w| w["done"].as_i64().unwrap()).sum();
    assert!(done >= 50, "the workers report what they ran (written with each heartbeat): {listed}");
    let logs = db.store.logs(None, 1000).await.unwrap();
    assert!(
        logs.iter().filter(|l| l.message.contains("succeeded")).all(|l| l.message.contains("[worker ")),
        "{logs:?}"
    );

    // SIGTERM: each worker finishes, deregisters and exits 0.
    for w in &mut procs.0[1..] {
        signal(w, "-TERM");
        let start = Instant::now();
        let status = loop {
            if let Some(s) = w.try_wait().unwrap() {
                break s;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "a worker did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(status.code(), Some(0));
    }
    let left = db.store.workers(Duration::from_secs(30)).await.unwrap();
    assert!(left.is_empty(), "stopped workers deregistered: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_claims_are_rescued_and_nothing_is_lost() {
    let Some(db) = pg().await else { return };
    enqueue_naps(&db, 80);
    let mut procs = Procs(vec![spawn(&db, &["run", "--no-execute", "--no-http"])]);
    procs.0.push(spawn(&db, &["worker", "--concurrency", "4"]));
    procs.0.push(spawn(&db, &["worker", "--concurrency", "4"]));
    // Let the first worker take claims, then kill it mid-attempt.
    let start = Instant::now();
    let victim = loop {
        let live = db.store.workers(Duration::from_secs(30)).await.unwrap();
        let busy = db
            .store
            .list_actions(&ActionFilter { status: Some(ActionStatus::Running), limit: 100, ..Default::default() })
            .await
            .unwrap();
        if live.len() == 2 && busy.len() >= 4 {
            break busy[0].claim.as_ref().unwrap().worker.clone();
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the workers never got busy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let pid: u32 = victim.split(':').nth(1).unwrap().parse().unwrap();
    let idx = procs.0.iter().position(|c| c.id() == pid).expect("the victim is one of ours");
    signal(&procs.0[idx], "-KILL");
    let _ = procs.0[idx].wait();
    procs.0.push(spawn(&db, &["worker", "--concurrency", "4"]));

    wait_until_done(&db, 80, Duration::from_secs(90)).await;
    let logs = db.store.logs(None, 10_000).await.unwrap();
    let rescued: Vec<_> = logs.iter().filter(|l| l.message.contains(&format!("worker {victim} is gone"))).collect();
    assert!(!rescued.is_empty(), "the leader rescued the killed worker's claims, naming it");
    let listed = db.store.workers(Duration::from_secs(1)).await.unwrap();
    assert!(listed.iter().any(|w| w.id == victim && !w.live), "the killed worker shows as dead: {listed:?}");
}
