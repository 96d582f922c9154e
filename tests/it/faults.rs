//! Database faults under a running daemon (the real binary), each ending with every action
//! SUCCESS after exactly one attempt (nothing lost, nothing run twice) and the same process
//! still running:
//! - a SQLite file held by another writer in `BEGIN IMMEDIATE` for 10 s (the write that meets
//!   the lock is logged and retried);
//! - SQLite on a full disk (a 16 MB tmpfs filled by another file; skipped where mounting is not
//!   allowed): enqueue fails saying the disk is full, and after the tmpfs is grown everything
//!   carries on; and the daemon's completion commit meeting the full disk 20 times under load
//!   (each time the outcomes land once space is back and the next tick succeeds; no connection
//!   is left holding the write lock);
//! - a private PostgreSQL cluster (the machine's binaries, run as `postgres` on a free port, so
//!   the shared server is untouched) stopped for 20 s: /health is 503, the outage logged once.
//!
//! (Killing PostgreSQL backends with `pg_terminate_backend` is in `http_live.rs`.)

use std::time::{Duration, Instant};

use orchestrator::model::{ActionStatus, TickStatus};
use orchestrator::store::{ActionFilter, FlagChange, Store, StoreOptions};

use crate::support::TestDb;
use crate::support::daemon::daemon;
use crate::support::disk::Tmpfs;
use crate::support::http::{get, wait_for};
use crate::support::process::{spawn_server, terminate};

const LOCK_CONFIG: &str = "tick_interval_seconds: 0.2\nmax_actions_per_tick: 4\ndispatch_concurrency: 2\n\
                           backoff_base_seconds: 0\nbackoff_max_seconds: 0\nlease_ttl_seconds: 30\nheartbeat_seconds: 1\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_writer_lock_for_10s_is_survived_without_loss_or_duplicates() {
    let db = TestDb::sqlite().await;
    let dir = db.dir.path();
    std::fs::write(dir.join("orchestrator.yaml"), LOCK_CONFIG).unwrap();
    db.store.flags().set_flags(FlagChange { proof_mode: Some(false), ..Default::default() }).await.unwrap();
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
    while db.store.actions().count_by_status().await.unwrap()[&ActionStatus::Success] < 10 {
        assert!(start.elapsed() < Duration::from_secs(30), "the daemon is not working");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Another writer: one connection that holds the write lock for 10 s.
    let holder = Store::open(&db.url, &StoreOptions { max_connections: 1, ..StoreOptions::default() }).await.unwrap();
    holder.execute_unprepared("BEGIN IMMEDIATE").await.unwrap();
    let locked_at = Instant::now();
    let done_at_lock = db.store.actions().count_by_status().await.unwrap()[&ActionStatus::Success];
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
        let c = db.store.actions().count_by_status().await.unwrap();
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

    let all = db.store.actions().list_actions(&ActionFilter { limit: 1000, ..Default::default() }).await.unwrap();
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

/// One bulk line of a NOOP whose payload is about `bytes` long.
fn big_line(key: &str, bytes: usize) -> String {
    format!(
        "{{\"action_type\":\"NOOP\",\"payload\":{{\"pad\":\"{}\"}},\"idempotency_key\":\"{key}\"}}\n",
        "x".repeat(bytes)
    )
}

fn enqueue_line(dir: &std::path::Path, url: &str, line: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = crate::support::bin(dir)
        .args(["--database-url", url, "enqueue", "--file", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(line.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// SQLite on a full disk (a small tmpfs, since `PRAGMA max_page_count` lasts only as long as
/// the connection that sets it): enqueues fail with a clear error and write nothing, the daemon
/// survives, and once the disk is grown it carries on without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_on_a_full_disk_fails_clearly_and_recovers_without_restart() {
    let scratch = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&scratch.path().join("disk"), "16m") else { return };
    let dir = scratch.path();
    let url = format!("sqlite:{}", disk.0.join("o.db").display());
    std::fs::write(dir.join("orchestrator.yaml"), LOCK_CONFIG).unwrap();
    let store = Store::open(&url, &StoreOptions::default()).await.unwrap();
    store.flags().set_flags(FlagChange { proof_mode: Some(false), ..Default::default() }).await.unwrap();
    let o = enqueue_line(dir, &url, &big_line("before", 100));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let (mut child, mut logs, addr) = spawn_server(&mut daemon(dir, &url, &[]));
    wait_for(addr, "/health", Duration::from_secs(30), |r| r.status == 200);
    // The daemon has run what was due before the disk fills: this test is about the enqueues
    // and the idle daemon; the completion commit on a full disk is the next tests' subject.
    let start = Instant::now();
    while store.actions().count_by_status().await.unwrap()[&ActionStatus::Success] < 1 {
        assert!(start.elapsed() < Duration::from_secs(30), "the first action never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Fill the disk to the last byte with another file.
    {
        use std::io::Write;
        let mut filler = std::fs::File::create(disk.0.join("filler")).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while filler.write_all(&chunk).is_ok() {}
        filler.write_all(&[0u8; 1]).ok();
    }
    let rows_before = store.actions().count_by_status().await.unwrap().values().sum::<i64>();
    let mut refused = None;
    for i in 0..10 {
        let o = enqueue_line(dir, &url, &big_line(&format!("full-{i}"), 900_000));
        if !o.status.success() {
            refused = Some(String::from_utf8_lossy(&o.stderr).into_owned());
            break;
        }
    }
    let refused = refused.expect("an enqueue on a full disk fails");
    assert!(refused.contains("full"), "the error says the disk is full: {refused}");
    assert!(!refused.contains("panicked"), "{refused}");
    let rows_full = store.actions().count_by_status().await.unwrap().values().sum::<i64>();
    // Let the daemon tick against the full disk for a while.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(child.0.try_wait().unwrap().is_none(), "the daemon survived the full disk");
    assert_eq!(get(addr, "/health/live").status, 200);

    // Grow the disk: the same process carries on.
    disk.resize("256m");
    // The daemon's writes that failed on the full disk may hold the write lock a little longer
    // than the CLI's busy timeout while they unwind: the CLI may meet "database is locked"
    // (a clear error, nothing written) before it gets through, within seconds.
    let start = Instant::now();
    loop {
        let o = enqueue_line(dir, &url, &big_line("after", 100));
        if o.status.success() {
            break;
        }
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(err.contains("database is locked"), "enqueue works again: {err}");
        if start.elapsed() > Duration::from_secs(60) {
            let tail = logs.drain().iter().rev().take(40).rev().cloned().collect::<Vec<_>>().join("\n");
            panic!("enqueue still locked out 60 s after the disk grew: {err}\nthe daemon's last log lines:\n{tail}");
        }
    }
    let start = Instant::now();
    loop {
        let c = store.actions().count_by_status().await.unwrap();
        let open = c[&ActionStatus::Pending] + c[&ActionStatus::Running] + c[&ActionStatus::Retry];
        if open == 0 {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let tail = logs.drain().iter().rev().take(30).rev().cloned().collect::<Vec<_>>().join("\n");
            panic!("not drained after the disk grew: {c:?}; the daemon's last log lines:\n{tail}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for(addr, "/health", Duration::from_secs(30), |r| r.status == 200);
    assert!(child.0.try_wait().unwrap().is_none(), "no restart");
    assert_eq!(terminate(&mut child, Duration::from_secs(25)).code(), Some(0));
    let lines = logs.drain().to_vec();
    let all = store.actions().list_actions(&ActionFilter { limit: 1000, ..Default::default() }).await.unwrap();
    assert!(all.iter().all(|a| a.status == ActionStatus::Success && a.attempts == 1), "{all:?}");
    assert_eq!(store.sqlite_pragma("integrity_check").await.unwrap().as_deref(), Some("ok"));
    let full_errors = lines.iter().filter(|l| l.contains("full")).count();
    eprintln!(
        "sqlite full disk: {} enqueue(s) landed before the disk filled, then refused with: {}; \
         daemon survived ({full_errors} log line(s) about the full disk), {} action(s) all SUCCESS after the disk grew",
        rows_full - rows_before,
        refused.lines().next().unwrap_or(""),
        all.len()
    );
    store.close().await.ok();
}

/// A private PostgreSQL cluster on its own port, run by the `postgres` user with the
/// machine's binaries, so stopping it touches no other test. Stopped on drop.
struct PrivateCluster {
    bin: std::path::PathBuf,
    data: std::path::PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PrivateCluster {
    /// `None` (after printing why) without PostgreSQL's binaries or the rights to use them.
    fn start() -> Option<PrivateCluster> {
        let skip = |why: String| {
            crate::support::db::not_run(&format!("{why}, so the PostgreSQL stop/start test did not run"));
            None
        };
        let Some(bin) = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| d.flatten().map(|e| e.path().join("bin")).filter(|p| p.join("pg_ctl").exists()).max())
        else {
            return skip("no /usr/lib/postgresql/*/bin/pg_ctl".into());
        };
        let dir = tempfile::tempdir().unwrap();
        let o = std::process::Command::new("chown").args(["postgres:"]).arg(dir.path()).output();
        if !o.as_ref().is_ok_and(|o| o.status.success()) {
            return skip("cannot hand a directory to the postgres user (not root?)".into());
        }
        let data = dir.path().join("data");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let c = PrivateCluster { bin, data, port, _dir: dir };
        let init = c.as_postgres("initdb", &["-D", &c.data.display().to_string(), "-A", "trust", "-U", "postgres"]);
        if !init.status.success() {
            return skip(format!("initdb failed: {}", String::from_utf8_lossy(&init.stderr).trim()));
        }
        c.ctl("start");
        Some(c)
    }

    fn as_postgres(&self, tool: &str, args: &[&str]) -> std::process::Output {
        std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(tool))
            .args(args)
            .output()
            .unwrap()
    }

    fn ctl(&self, verb: &str) {
        let data = self.data.display().to_string();
        let opts = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self._dir.path().display());
        let log = self._dir.path().join("pg.log").display().to_string();
        let args: Vec<&str> = match verb {
            "start" => vec!["-D", &data, "-o", &opts, "-l", &log, "-w", "start"],
            _ => vec!["-D", &data, "-m", "fast", "-w", "stop"],
        };
        let o = self.as_postgres("pg_ctl", &args);
        assert!(
            o.status.success(),
            "pg_ctl {verb}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let data = self.data.display().to_string();
        self.as_postgres("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }
}

/// The PostgreSQL cluster stopped for 20 s under a working daemon: /health says 503 and the
/// outage is logged once; when the cluster is back the same process carries on, and every
/// action ends SUCCESS with nothing lost and nothing run twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cluster_stopped_for_20s_is_survived() {
    let Some(cluster) = PrivateCluster::start() else { return };
    let url = cluster.url();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("orchestrator.yaml"), LOCK_CONFIG).unwrap();
    let store = Store::open(&url, &StoreOptions::default()).await.unwrap();
    store.flags().set_flags(FlagChange { proof_mode: Some(false), ..Default::default() }).await.unwrap();
    let n = 150;
    let lines: String = (0..n)
        .map(|i| {
            format!("{{\"action_type\":\"NOOP\",\"payload\":{{\"sleep_ms\":40}},\"idempotency_key\":\"pg-{i}\"}}\n")
        })
        .collect();
    orchestrator::queue::enqueue_jsonl(&store, lines.as_bytes(), 3).await.unwrap();
    store.close().await.ok();

    let (mut child, mut logs, addr) = spawn_server(&mut daemon(dir.path(), &url, &[]));
    wait_for(addr, "/health", Duration::from_secs(30), |r| r.status == 200);
    logs.wait_for("\"attempted\":4", Duration::from_secs(30));

    cluster.ctl("stop");
    let stopped_at = Instant::now();
    let down = wait_for(addr, "/health", Duration::from_secs(30), |r| r.status == 503);
    assert!(down.body.contains("database unreachable"), "{}", down.body);
    assert_eq!(get(addr, "/health/live").status, 200);
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(stopped_at.elapsed())).await;
    cluster.ctl("start");
    let outage = stopped_at.elapsed();

    let up = wait_for(addr, "/health", Duration::from_secs(60), |r| r.status == 200);
    let back_after = stopped_at.elapsed() - outage;
    assert_eq!(up.json()["status"], "healthy", "{}", up.body);
    let store = Store::open(&url, &StoreOptions::default()).await.unwrap();
    let start = Instant::now();
    loop {
        let c = store.actions().count_by_status().await.unwrap();
        if c[&ActionStatus::Success] == n {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "not drained after the outage: {c:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(child.0.try_wait().unwrap().is_none(), "the same process carried on");
    assert_eq!(terminate(&mut child, Duration::from_secs(25)).code(), Some(0));
    let lines = logs.drain().to_vec();
    let outages = lines.iter().filter(|l| l.contains("retrying with backoff")).count();
    assert!(outages <= 1, "the outage is logged once, not once per tick: {lines:#?}");
    let all = store.actions().list_actions(&ActionFilter { limit: 1000, ..Default::default() }).await.unwrap();
    assert_eq!(all.len(), n as usize, "nothing lost");
    let reruns: Vec<_> = all.iter().filter(|a| a.attempts != 1).map(|a| (a.id, a.attempts)).collect();
    assert!(reruns.is_empty(), "actions run more than once: {reruns:?}");
    eprintln!(
        "postgres stopped: cluster down {:.1}s; /health 503 during it; healthy {:.1}s after the restart; \
         {n}/{n} SUCCESS, 0 run twice, {outages} outage log line(s)",
        outage.as_secs_f64(),
        back_after.as_secs_f64()
    );
    store.close().await.ok();
}

/// Fills `dir`'s filesystem to the last byte with one file, `dir/filler`.
fn fill(dir: &std::path::Path) {
    use std::io::Write;
    let mut filler = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while filler.write_all(&chunk).is_ok() {}
    filler.write_all(&[0u8; 1]).ok();
}

/// Empties the WAL file (`wal_checkpoint(TRUNCATE)`), so that the next commit must grow it: on a
/// full disk it then fails at once instead of writing into space the file already had.
async fn empty_the_wal(store: &Store) {
    store.execute_unprepared("PRAGMA wal_checkpoint(TRUNCATE)").await.unwrap();
}

/// Store level, on a full disk, 20 times: a transaction whose COMMIT fails leaves no connection
/// of the pool inside a transaction. Before, the driver kept counting the failed transaction as
/// open: the next transaction on that connection became a savepoint inside one that never
/// committed, so writes "succeeded" on a full disk and every other writer got "database is
/// locked" (18 times in 20 here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_fails_on_a_full_disk_leaves_no_transaction_open() {
    let scratch = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&scratch.path().join("disk"), "16m") else { return };
    let url = format!("sqlite:{}", disk.0.join("o.db").display());
    let store = Store::open(&url, &StoreOptions::default()).await.unwrap();
    let other_options =
        StoreOptions { busy_timeout: Duration::from_millis(500), max_connections: 1, ..Default::default() };
    for round in 0..20 {
        empty_the_wal(&store).await;
        fill(&disk.0);
        let full = store.flags().set_flags(FlagChange { paused: Some(round % 2 == 0), ..Default::default() }).await;
        let e = full.expect_err("a commit on a full disk fails (it is not nested in an older transaction)");
        assert!(e.to_string().contains("database or disk is full"), "round {round}: {e}");
        std::fs::remove_file(disk.0.join("filler")).unwrap();
        // Another writer gets the lock at once, and this store writes for real again.
        let other = Store::open(&url, &other_options).await.unwrap();
        other.flags().set_flags(FlagChange { paused: Some(true), ..Default::default() }).await.unwrap_or_else(|e| {
            panic!("round {round}: another writer after the failed commit: {e}");
        });
        other.close().await.ok();
        let flags = store.flags().set_flags(FlagChange { paused: Some(false), ..Default::default() }).await.unwrap();
        assert!(!flags.paused);
    }
    store.close().await.ok();
}

/// The daemon's completion commit meets a full disk, under load, at least 20 times (a small
/// tmpfs filled while an attempt runs, its WAL emptied first so that the commit must grow it).
/// Each time, once the space is back, the retried outcomes land, the next tick starts within
/// one interval of the stuck one and does not fail, and at the end every action is SUCCESS
/// after exactly one attempt. Size: `FULL_DISK_ROUNDS` (20 by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_completion_commit_meeting_a_full_disk_20_times_loses_nothing_and_holds_no_lock() {
    let rounds: usize = std::env::var("FULL_DISK_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let scratch = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&scratch.path().join("disk"), "16m") else { return };
    let dir = scratch.path();
    let url = format!("sqlite:{}", disk.0.join("o.db").display());
    let interval = Duration::from_millis(200);
    std::fs::write(dir.join("orchestrator.yaml"), LOCK_CONFIG).unwrap();
    let store = Store::open(&url, &StoreOptions::default()).await.unwrap();
    store.flags().set_flags(FlagChange { proof_mode: Some(false), ..Default::default() }).await.unwrap();
    let (mut child, mut logs, addr) = spawn_server(&mut daemon(dir, &url, &[]));
    wait_for(addr, "/health", Duration::from_secs(30), |r| r.status == 200);

    let mut hits = 0;
    let mut tries = 0;
    let mut gaps = Vec::new();
    let mut enqueued = 0;
    let mut closed = 0;
    while hits < rounds {
        tries += 1;
        assert!(tries <= rounds * 2, "the completion commit met the full disk only {hits} times in {tries} tries");
        closed += logs.drain().iter().filter(|l| l.contains("left inside a transaction")).count();
        logs.seen.clear();
        // Load: four attempts in one tick, two at a time, finishing at different moments; the
        // disk fills while the long one runs, so its completion (and maybe others') meets it.
        let mut ids = Vec::new();
        for (i, ms) in [500, 80, 150, 250].into_iter().enumerate() {
            let req = orchestrator::queue::EnqueueRequest {
                payload: serde_json::json!({ "sleep_ms": ms }),
                ..crate::support::noop(&format!("r{tries}-{i}"))
            };
            let done = orchestrator::queue::enqueue(&store, &req, 3).await;
            ids.push(done.unwrap_or_else(|e| panic!("round {tries}: enqueue once the space is back: {e}")).id);
        }
        enqueued += ids.len();
        let long = ids[0];
        let start = Instant::now();
        while store.actions().action(long).await.unwrap().unwrap().status != ActionStatus::Running {
            assert!(start.elapsed() < Duration::from_secs(30), "the long action never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        empty_the_wal(&store).await;
        fill(&disk.0);
        let met = wait_line(&mut logs, "could not record outcomes yet", Duration::from_secs(5));
        std::fs::remove_file(disk.0.join("filler")).unwrap();
        let back_at = chrono::Utc::now();
        let start = Instant::now();
        loop {
            let open = store.actions().list_actions(&ActionFilter { limit: 1000, ..Default::default() }).await.unwrap();
            if ids.iter().all(|id| open.iter().any(|a| a.id == *id && a.status == ActionStatus::Success)) {
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let tail = logs.drain().iter().rev().take(30).rev().cloned().collect::<Vec<_>>().join("\n");
                panic!("round {tries}: not recorded 30 s after the space came back: {open:?}\n{tail}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !met {
            continue;
        }
        hits += 1;
        // The tick that was stuck on the full disk and the one after it.
        let (stuck, next) = loop {
            let ticks = store.ledger().recent_ticks(20).await.unwrap();
            let stuck = ticks.iter().filter(|t| t.started_at < back_at).max_by_key(|t| t.id).cloned();
            let next = ticks.iter().filter(|t| t.started_at >= back_at && t.finished_at.is_some()).min_by_key(|t| t.id);
            if let (Some(stuck), Some(next)) = (stuck, next)
                && stuck.finished_at.is_some()
            {
                break (stuck, next.clone());
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "round {tries}: no tick after the space came back: {ticks:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_ne!(next.status, TickStatus::Fail, "round {tries}: the first tick once space is back failed: {next:?}");
        let gap = (next.started_at - stuck.finished_at.unwrap()).to_std().unwrap_or_default();
        assert!(
            gap <= interval + Duration::from_millis(500),
            "round {tries}: the next tick started {gap:?} after the stuck one closed (interval {interval:?}): {stuck:?} {next:?}"
        );
        gaps.push(gap.as_millis());
    }

    closed += logs.drain().iter().filter(|l| l.contains("left inside a transaction")).count();
    assert!(child.0.try_wait().unwrap().is_none(), "no restart");
    assert_eq!(get(addr, "/health").status, 200);
    assert_eq!(terminate(&mut child, Duration::from_secs(25)).code(), Some(0));
    let all = store.actions().list_actions(&ActionFilter { limit: 1000, ..Default::default() }).await.unwrap();
    assert_eq!(all.len(), enqueued, "nothing lost");
    let wrong: Vec<_> = all
        .iter()
        .filter(|a| a.status != ActionStatus::Success || a.attempts != 1)
        .map(|a| (a.id, a.status, a.attempts))
        .collect();
    assert!(wrong.is_empty(), "each action SUCCESS after one attempt: {wrong:?}");
    assert_eq!(store.sqlite_pragma("integrity_check").await.unwrap().as_deref(), Some("ok"));
    eprintln!(
        "sqlite full disk at the completion commit: met {hits} times in {tries} tries ({enqueued} actions); each time \
         the outcomes landed once space was back and the next tick succeeded, {} ms after the stuck tick closed at most \
         (interval {} ms); {closed} connection(s) closed for being left inside a transaction; all SUCCESS after one attempt",
        gaps.iter().max().copied().unwrap_or(0),
        interval.as_millis()
    );
    store.close().await.ok();
}

/// Whether a line containing `needle` arrives within `limit` (without panicking).
fn wait_line(logs: &mut crate::support::process::LogLines, needle: &str, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if logs.drain().iter().any(|l| l.contains(needle)) {
            return true;
        }
    }
    false
}
