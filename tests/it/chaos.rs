//! Crash chaos: `orchestrator run` (real mode) is killed with SIGKILL at random moments and
//! restarted, over a queue of NOOP actions that each take 30 ms, so that kills land mid-attempt.
//! At the end every action is SUCCESS, none is stuck RUNNING or over its attempts, ledger epochs
//! never decrease, SQLite's integrity check passes, and re-executions (attempts beyond the first:
//! each attempt runs the adapter once) are at most the number of kills, each one an action that
//! was in flight when its process died (a rescued claim).
//!
//! CI runs a small round on both backends. The full suite:
//! `CHAOS_ACTIONS=2000 CHAOS_KILLS=30 cargo test --release --test it chaos -- --nocapture`

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use orchestrator::model::ActionStatus;
use orchestrator::store::{ActionFilter, FlagChange};

use crate::backend_tests;
use crate::support::{TestDb, bin};

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Back-to-back ticks of one action each (a claim counts an attempt, so a bigger claim would
/// charge attempts that never ran); sequential dispatch, so each kill has at most one action in
/// flight; a
/// 1 s lease so that a restarted instance takes over quickly.
const CONFIG: &str = "tick_interval_seconds: 0\nmax_actions_per_tick: 1\nlease_ttl_seconds: 1\n\
                      heartbeat_seconds: 0.25\ndispatch_concurrency: 1\nmax_attempts: 5\naction_timeout_seconds: 30\n";

fn spawn_run(dir: &std::path::Path, url: &str) -> Child {
    bin(dir)
        .args(["--database-url", url, "run"])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn orchestrator run")
}

async fn enqueue_all(db: &TestDb, n: usize) {
    db.store.set_flags(FlagChange { proof_mode: Some(false), ..Default::default() }).await.unwrap();
    let lines: String = (0..n)
        .map(|i| format!("{{\"action_type\":\"NOOP\",\"payload\":{{\"i\":{i},\"sleep_ms\":30}},\"idempotency_key\":\"chaos-{i}\"}}\n"))
        .collect();
    let r = orchestrator::queue::enqueue_jsonl(&db.store, lines.as_bytes(), 5).await.unwrap();
    assert_eq!(r.created, n as u64);
}

/// Waits until nothing is open, then kills the daemon cleanly through the flag.
async fn drain(db: &TestDb, mut child: Child, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let open = db.store.open_counts().await.unwrap();
        let busy: i64 =
            [ActionStatus::Pending, ActionStatus::Running, ActionStatus::Retry].iter().map(|s| open[s]).sum();
        if busy == 0 {
            break;
        }
        assert!(start.elapsed() < limit, "not drained within {limit:?}: {open:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = start.elapsed();
    db.store.set_flags(FlagChange { killed: Some(true), ..Default::default() }).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the daemon did not stop on the killed flag");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    db.store.set_flags(FlagChange { killed: Some(false), ..Default::default() }).await.unwrap();
    took
}

backend_tests!(sigkill_chaos_loses_nothing);

async fn sigkill_chaos_loses_nothing(db: &TestDb) {
    let n = env_num("CHAOS_ACTIONS", 120);
    let kills_wanted = env_num("CHAOS_KILLS", 4);
    let dir = db.dir.path();
    std::fs::write(dir.join("orchestrator.yaml"), CONFIG).unwrap();

    // Baseline: the same work, uninterrupted, on a fresh database of the same backend.
    let baseline = {
        let base = if db.store.backend() == orchestrator::store::Backend::Sqlite {
            TestDb::sqlite().await
        } else {
            TestDb::postgres().await.expect("PostgreSQL is configured")
        };
        std::fs::write(base.dir.path().join("orchestrator.yaml"), CONFIG).unwrap();
        enqueue_all(&base, n).await;
        let child = spawn_run(base.dir.path(), &base.url);
        let t = drain(&base, child, Duration::from_secs(600)).await;
        base.cleanup().await;
        t
    };

    enqueue_all(db, n).await;
    let start = Instant::now();
    let mut kills = 0;
    while kills < kills_wanted {
        let mut child = spawn_run(dir, &db.url);
        // A restarted instance waits out the dead one's 1 s lease; kill it while it works.
        let ms = if kills == 0 { 100 } else { 1000 } + fastrand::u64(0..400);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        kills += 1;
    }
    let child = spawn_run(dir, &db.url);
    drain(db, child, Duration::from_secs(600)).await;
    let chaos_time = start.elapsed();

    let counts = db.store.count_by_status().await.unwrap();
    assert_eq!(counts[&ActionStatus::Success], n as i64, "every action is SUCCESS: {counts:?}");
    assert_eq!(counts[&ActionStatus::Running], 0);
    let all = db.store.list_actions(&ActionFilter { limit: n as u64 + 10, ..Default::default() }).await.unwrap();
    assert!(all.iter().all(|a| a.attempts <= a.max_attempts), "no attempt count over its max");

    let mut ticks = db.store.recent_ticks(1_000_000).await.unwrap();
    ticks.reverse();
    assert!(ticks.windows(2).all(|w| w[0].epoch <= w[1].epoch), "ledger epochs never decrease");
    let epochs = ticks.last().map_or(0, |t| t.epoch);
    if let Some(check) = db.store.sqlite_pragma("integrity_check").await.unwrap() {
        assert_eq!(check, "ok");
    }

    // Every attempt runs the adapter once; attempts beyond one per action are re-executions.
    let reexecuted: usize = all.iter().map(|a| a.attempts as usize - 1).sum();
    assert!(reexecuted <= kills, "{reexecuted} re-executions for {kills} kills");
    // Each is explained: the action was in flight when its process died, and was rescued.
    let logs = db.store.logs(None, 1_000_000).await.unwrap();
    let rescued = logs.iter().filter(|l| l.message.starts_with("rescued orphaned claim")).count();
    assert_eq!(reexecuted, rescued, "every re-execution follows a rescue of an in-flight claim");
    let duplicates = reexecuted;
    eprintln!(
        "chaos[{:?}]: {n} actions, {kills} SIGKILLs, {duplicates} re-executed (duplicate side effects), {rescued} rescued in-flight attempts, \
         epochs 1..{epochs}; drained in {:.1}s (uninterrupted: {:.1}s)",
        db.store.backend(),
        chaos_time.as_secs_f64(),
        baseline.as_secs_f64()
    );
}
