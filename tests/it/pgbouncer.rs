//! The leader and two workers through PgBouncer, a real one (the machine's `pgbouncer`, started
//! by the test with its own ini file on a free loopback port, pointed at the PostgreSQL of
//! `ORCHESTRATOR_TEST_PG_URL`, stopped at the end), in the two pool modes docs/SCALING.md
//! describes:
//! - session mode: the queue drains and `LISTEN` works (the workers poll once a minute, so only
//!   a notification can start them within the test's limit);
//! - transaction mode, with PgBouncer 1.21 or later and `max_prepared_statements` set: the
//!   queue drains on the workers' polls (notifications do not hold there) and no statement
//!   breaks. Debian 12 ships 1.18, so `.ci/pgbouncer` builds 1.24 from Debian 13's source and
//!   `.ci/run` names it in `ORCHESTRATOR_TEST_PGBOUNCER`;
//! - transaction mode with Debian 12's 1.18: the driver's prepared statements collide, and
//!   every command that meets it fails with an error that says so and names the fix.
//!
//! PostgreSQL only. With `ORCHESTRATOR_TEST_PG_URL` set, a missing `pgbouncer` (or no 1.21 or
//! later for transaction mode) fails the test: `.ci/run` installs and builds them.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use orchestrator::model::ActionStatus;
use orchestrator::store::{ActionFilter, Store, StoreOptions};

use crate::support::daemon::{Procs, signal};
use crate::support::{PG_ENV, bin, run, stderr};

const CONFIG: &str = "\
tick_interval_seconds: 0.2
workers:
  heartbeat_seconds: 0.3
  ttl_seconds: 3
  poll_seconds: POLL
adapters:
  command:
    allow:
      nap:
        program: /bin/sleep
        args: [\"0.1\"]
";

/// A database of its own (PgBouncer pools by database; a schema chosen through the `options`
/// startup parameter would not pass through it) and a running PgBouncer in front of it.
struct Bounced {
    dir: tempfile::TempDir,
    /// Through PgBouncer.
    url: String,
    /// Straight to PostgreSQL, for the test's own reads.
    direct: Store,
    admin_url: String,
    name: String,
    bouncer: Child,
    version: (u32, u32),
}

impl Drop for Bounced {
    fn drop(&mut self) {
        let _ = self.bouncer.kill();
        let _ = self.bouncer.wait();
    }
}

/// Debian's package: 1.18 on Debian 12.
fn system_pgbouncer() -> PathBuf {
    let candidates = [PathBuf::from("/usr/sbin/pgbouncer"), PathBuf::from("/usr/bin/pgbouncer")];
    candidates.into_iter().find(|p| p.exists()).unwrap_or_else(|| {
        panic!("{PG_ENV} is set but pgbouncer is not installed (apt-get install pgbouncer; .ci/run does)")
    })
}

/// A PgBouncer that passes prepared statements through a transaction pool (1.21 or later):
/// `ORCHESTRATOR_TEST_PGBOUNCER` when set (`.ci/pgbouncer` builds 1.24 and `.ci/run` sets it),
/// else the system's when it is recent enough.
fn pgbouncer_with_prepared_statements() -> PathBuf {
    let binary = match std::env::var_os(PGBOUNCER_ENV) {
        Some(path) => PathBuf::from(path),
        None => system_pgbouncer(),
    };
    assert!(binary.exists(), "{PGBOUNCER_ENV}={} does not exist", binary.display());
    let version = version_of(&binary);
    assert!(
        version >= (1, 21),
        "{} is PgBouncer {}.{}: transaction mode needs 1.21 or later; run .ci/pgbouncer and set {PGBOUNCER_ENV} \
         to the path it prints",
        binary.display(),
        version.0,
        version.1
    );
    binary
}

const PGBOUNCER_ENV: &str = "ORCHESTRATOR_TEST_PGBOUNCER";

/// `(major, minor)` from `pgbouncer --version` (`PgBouncer 1.18.0`).
fn version_of(binary: &Path) -> (u32, u32) {
    let o = std::process::Command::new(binary).arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let v = text.lines().next().and_then(|l| l.strip_prefix("PgBouncer ")).unwrap_or_else(|| panic!("{text}"));
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or_else(|_| panic!("{text}")));
    (parts.next().unwrap(), parts.next().unwrap())
}

/// Starts PgBouncer (`binary`) in `mode` in front of a fresh database, with `max_prepared_statements`
/// where the version knows it (1.21 and later); `None` when no PostgreSQL is set.
async fn bounced(mode: &str, poll: &str, binary: fn() -> PathBuf) -> Option<Bounced> {
    let base = crate::support::db::pg_url("this PgBouncer test")?;
    let binary = binary();
    let version = version_of(&binary);
    let extra = if version >= (1, 21) { "max_prepared_statements = 200\n" } else { "" };
    // In transaction mode fewer server connections than the three processes hold, so that each
    // serves several of theirs in turn (what the prepared statements must survive).
    let pool_size = if mode == "transaction" { 3 } else { 60 };
    // postgres://USER[:PASSWORD]@HOST:PORT/DB
    let rest = base.split_once("://").map(|(_, r)| r).unwrap_or_else(|| panic!("{PG_ENV}: {base}"));
    let (auth, host_db) = rest.split_once('@').unwrap_or_else(|| panic!("{PG_ENV} names no user: {base}"));
    let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
    let host_port = host_db.split(['/', '?']).next().unwrap();
    let (host, server_port) = host_port.split_once(':').unwrap_or((host_port, "5432"));

    let name = format!("pgb_{:016x}", fastrand::u64(..));
    let admin = Store::connect(&base, &StoreOptions::default()).await.expect("connect to PostgreSQL");
    admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await.unwrap();
    // What SCALING.md says to set on the server, since PgBouncer drops the `options` parameter.
    admin.execute_unprepared(&format!("ALTER DATABASE {name} SET max_parallel_workers_per_gather = 0")).await.unwrap();
    admin.close().await.ok();
    let admin_url = base.clone();

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // PgBouncer will not run as root: it switches to the `postgres` user, who must read these.
    let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
    if root {
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(d.join("users.txt"), format!("\"{user}\" \"{password}\"\n")).unwrap();
    std::fs::write(
        d.join("pgbouncer.ini"),
        format!(
            "[databases]\n* = host={host} port={server_port}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
             listen_port = {port}\nunix_socket_dir =\nauth_type = trust\nauth_file = {}\npool_mode = {mode}\n\
             ignore_startup_parameters = extra_float_digits, options\nmax_client_conn = 500\n\
             default_pool_size = {pool_size}\n{extra}",
            d.join("users.txt").display()
        ),
    )
    .unwrap();
    for f in ["users.txt", "pgbouncer.ini"] {
        std::fs::set_permissions(d.join(f), std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    }
    let log = std::fs::File::create(d.join("pgbouncer.log")).unwrap();
    let mut cmd = std::process::Command::new(&binary);
    if root {
        cmd.args(["-u", "postgres"]);
    }
    let bouncer = cmd.arg(d.join("pgbouncer.ini")).stdout(Stdio::null()).stderr(log).spawn().unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "pgbouncer did not listen on {port}: {}",
            std::fs::read_to_string(d.join("pgbouncer.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let direct_url = format!("postgres://{auth}@{host_port}/{name}");
    let direct = Store::connect(&direct_url, &StoreOptions::default()).await.unwrap();
    // Transaction pooling keeps no session: a LISTEN would stay on a pooled server connection
    // and its notifications reach other clients mid-query (docs/SCALING.md).
    let listen = if mode == "transaction" { "postgres_listen: false\n" } else { "" };
    std::fs::write(d.join("o.yaml"), format!("{listen}{}", CONFIG.replace("POLL", poll))).unwrap();
    let url = format!("postgres://{auth}@127.0.0.1:{port}/{name}");
    Some(Bounced { dir, url, direct, admin_url, name, bouncer, version })
}

impl Bounced {
    fn orch(&self) -> std::process::Command {
        let mut cmd = bin(self.dir.path());
        cmd.args(["--database-url", &self.url, "--config", "o.yaml"]);
        cmd
    }

    /// `orchestrator <args>` through PgBouncer, its stderr in `<name>.log`.
    fn spawn(&self, name: &str, args: &[&str]) -> Child {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        self.orch().args(args).stdout(Stdio::null()).stderr(log).spawn().unwrap()
    }

    /// The processes' logs, and PgBouncer's with `bouncer`.
    fn logs_of(&self, bouncer: bool) -> String {
        let mut all = String::new();
        for name in ["leader", "worker-1", "worker-2", "pgbouncer"].into_iter().filter(|n| bouncer || *n != "pgbouncer")
        {
            let text = std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default();
            all.push_str(&format!("--- {name}.log\n{text}\n"));
        }
        all
    }

    fn logs(&self) -> String {
        self.logs_of(true)
    }

    fn enqueue_naps(&self, n: usize) {
        let mut f = std::fs::File::create(self.dir.path().join("naps.jsonl")).unwrap();
        for i in 0..n {
            writeln!(
                f,
                "{{\"action_type\":\"COMMAND\",\"payload\":{{\"command\":\"nap\"}},\"idempotency_key\":\"n{i}\"}}"
            )
            .unwrap();
        }
        let o = run(self.orch().args(["enqueue", "--file", "naps.jsonl"]));
        assert!(o.status.success(), "{}", stderr(&o));
    }

    /// The leader (`--no-execute`) and two workers, through PgBouncer; waits until both workers
    /// are registered and a leader's tick is recorded.
    async fn start_leader_and_two_workers(&self) -> Procs {
        let o = run(self.orch().args(["proof", "off"]));
        assert!(o.status.success(), "{}", stderr(&o));
        let procs = Procs(vec![
            self.spawn("leader", &["run", "--no-execute", "--no-http"]),
            self.spawn("worker-1", &["worker", "--concurrency", "4", "--no-http"]),
            self.spawn("worker-2", &["worker", "--concurrency", "4", "--no-http"]),
        ]);
        let start = Instant::now();
        while self.direct.workers().list(Duration::from_secs(30)).await.unwrap().len() < 2
            || self.direct.ledger().recent_ticks(1).await.unwrap().is_empty()
        {
            assert!(start.elapsed() < Duration::from_secs(30), "not started:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        procs
    }

    /// Waits until all `n` actions succeeded, each in one attempt on a worker.
    async fn wait_drained(&self, n: usize, limit: Duration) {
        let start = Instant::now();
        loop {
            let all = self
                .direct
                .actions()
                .list_actions(&ActionFilter { limit: 10_000, ..Default::default() })
                .await
                .unwrap();
            if all.len() == n && all.iter().all(|a| a.status == ActionStatus::Success) {
                assert!(all.iter().all(|a| a.attempts == 1), "{all:?}");
                break;
            }
            assert!(start.elapsed() < limit, "not drained within {limit:?}:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let logs = self.direct.history().logs(None, 10_000).await.unwrap();
        let ok: Vec<_> = logs.iter().filter(|l| l.message.contains("succeeded")).collect();
        assert_eq!(ok.len(), n, "{logs:?}");
        assert!(ok.iter().all(|l| l.message.contains("[worker ")), "every attempt ran on a worker: {logs:?}");
    }

    /// SIGTERM to each process: each exits 0, and nothing it logged is an error.
    fn stop(&self, mut procs: Procs) {
        for p in &mut procs.0 {
            signal(p, "-TERM");
        }
        for p in &mut procs.0 {
            let start = Instant::now();
            let status = loop {
                if let Some(s) = p.try_wait().unwrap() {
                    break s;
                }
                assert!(start.elapsed() < Duration::from_secs(20), "no exit on SIGTERM:\n{}", self.logs());
                std::thread::sleep(Duration::from_millis(50));
            };
            assert_eq!(status.code(), Some(0), "{}", self.logs());
        }
        let logs = self.logs_of(false);
        assert!(!logs.contains("prepared statement"), "{logs}");
        assert!(!logs.contains(" ERROR "), "{logs}");
    }

    async fn cleanup(self) {
        self.direct.clone().close().await.ok();
        if let Ok(admin) = Store::connect(&self.admin_url, &StoreOptions::default()).await {
            admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)).await.ok();
            admin.close().await.ok();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_and_workers_through_pgbouncer_in_session_mode_wake_on_notify() {
    // The workers poll once a minute: only a notification starts them within the limit below.
    let Some(b) = bounced("session", "60", system_pgbouncer).await else { return };
    let procs = b.start_leader_and_two_workers().await;
    // Idle first, so that the workers are waiting on their LISTEN when the work comes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.enqueue_naps(40);
    b.wait_drained(40, Duration::from_secs(30)).await;
    b.stop(procs);
    let version = b.version;
    b.cleanup().await;
    eprintln!(
        "PgBouncer {}.{} in session mode: 40 actions drained by two workers woken by NOTIFY",
        version.0, version.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_and_workers_through_pgbouncer_in_transaction_mode() {
    let Some(b) = bounced("transaction", "0.1", pgbouncer_with_prepared_statements).await else { return };
    let procs = b.start_leader_and_two_workers().await;
    let start = Instant::now();
    b.enqueue_naps(40);
    b.wait_drained(40, Duration::from_secs(60)).await;
    let drained = start.elapsed();
    b.stop(procs);
    // The commands an operator runs go through the same pool.
    for args in [&["status"][..], &["actions", "list"], &["ticks"], &["workers"], &["enqueue", "NOOP", "--key", "a"]] {
        let o = run(b.orch().args(args));
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    }
    let version = b.version;
    b.cleanup().await;
    eprintln!(
        "PgBouncer {}.{} in transaction mode: 40 actions drained on the workers' polls in {drained:.1?}",
        version.0, version.1
    );
}

/// Debian 12's PgBouncer (1.18) in transaction mode: the driver's per-connection prepared
/// statement names collide on the shared server connections, and every command that meets it
/// fails with an error that says so and names the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_before_1_21_in_transaction_mode_names_the_fix() {
    if std::env::var(PG_ENV).is_ok() && version_of(&system_pgbouncer()) >= (1, 21) {
        eprintln!("skipped: the system's PgBouncer is 1.21 or later; nothing older to check the hint against");
        return;
    }
    let Some(b) = bounced("transaction", "0.1", system_pgbouncer).await else { return };
    let mut failed = 0;
    for args in [&["migrate"][..], &["status"], &["enqueue", "NOOP", "--key", "a"], &["actions", "list"]] {
        let o = run(b.orch().args(args));
        if !o.status.success() {
            failed += 1;
            let e = stderr(&o);
            assert!(
                e.contains("prepared statements were mixed up")
                    && e.contains("max_prepared_statements")
                    && e.contains("docs/SCALING.md"),
                "{args:?}: {e}"
            );
        }
    }
    assert!(failed > 0, "PgBouncer {:?} in transaction mode broke nothing: SCALING.md is wrong", b.version);
    let version = b.version;
    b.cleanup().await;
    eprintln!(
        "PgBouncer {}.{} in transaction mode: {failed} of 4 commands failed on colliding prepared statements, \
         each naming the fix",
        version.0, version.1
    );
}
