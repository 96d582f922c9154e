//! Start-up before the database, through the real binary:
//! - `run`, `worker` and `serve` started before their PostgreSQL database exists wait for it
//!   (one log line per try), and once it is created within `startup_timeout_seconds` they
//!   migrate it and do their work: `run` and `worker` run an action, `serve` answers ready;
//! - a database that never answers is given up after `startup_timeout_seconds`: exit 69
//!   (unavailable), having logged each try;
//! - what waiting cannot cure (a malformed URL, a bad config, a SQLite path that cannot be
//!   opened, a role PostgreSQL refuses, a bad `--listen` or `--types`, a public address without
//!   a token) fails at once with exit 1 or 2, as every other command does.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use orchestrator::model::ActionStatus;
use orchestrator::store::{Store, StoreOptions};

use crate::support::db::LateDatabase;
use crate::support::http::wait_for;
use crate::support::process::{LogLines, Server, terminate};
use crate::support::{PG_ENV, bin, stderr};

const WAITING: &str = "database not reachable yet; waiting for it";

/// `orchestrator <command>` on `url` with the config in `dir`, logging JSON at info.
fn command(dir: &Path, url: &str, command: &str, extra: &[&str]) -> Command {
    let mut cmd = bin(dir);
    cmd.args(["--database-url", url, "--log-format", "json", command]).args(extra).env("RUST_LOG", "info");
    cmd
}

/// `cmd` started with its stderr read line by line.
fn spawn_logged(mut cmd: Command) -> (Server, LogLines) {
    let mut child = Server(cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap());
    let logs = LogLines::new(child.stderr.take().unwrap());
    (child, logs)
}

fn waits_logged(o: &Output) -> usize {
    stderr(o).lines().filter(|l| l.contains(WAITING)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_worker_and_serve_wait_for_a_database_created_after_they_start() {
    for cmd in ["run", "worker", "serve"] {
        let Some(db) = LateDatabase::new(cmd).await else { return };
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("orchestrator.yaml"),
            "startup_timeout_seconds: 60\ntick_interval_seconds: 0.2\nworkers:\n  poll_seconds: 0.2\n",
        )
        .unwrap();
        let (mut child, mut logs) = spawn_logged(command(dir.path(), &db.url, cmd, &["--listen", "127.0.0.1:0"]));
        // It waits: three tries logged, each saying why, and the process still there.
        let third = logs.wait_for("\"attempt\":3", Duration::from_secs(30));
        assert!(third.contains(WAITING) && third.contains("does not exist"), "{cmd}: {third}");
        assert!(child.try_wait().unwrap().is_none(), "{cmd} is still waiting");
        let created = Instant::now();
        db.create().await;

        let line = logs.wait_for("HTTP server listening", Duration::from_secs(30));
        let up_after = created.elapsed();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let addr: std::net::SocketAddr = v["fields"]["addr"].as_str().unwrap().parse().unwrap();
        let reachable = logs.wait_for("database reachable; starting", Duration::from_secs(5));
        let store = Store::open(&db.url, &StoreOptions::default()).await.unwrap();
        if cmd == "serve" {
            let ready = wait_for(addr, "/health/ready", Duration::from_secs(30), |r| r.status == 200);
            assert_eq!(ready.json()["status"], "ready", "{}", ready.body);
        } else {
            let line = "{\"action_type\":\"NOOP\",\"payload\":{},\"idempotency_key\":\"late\"}\n";
            orchestrator::queue::enqueue_jsonl(&store, line.as_bytes(), 3).await.unwrap();
            let start = Instant::now();
            while store.actions().count_by_status().await.unwrap()[&ActionStatus::Success] < 1 {
                assert!(start.elapsed() < Duration::from_secs(30), "{cmd} never ran the action");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        store.close().await.ok();
        assert_eq!(terminate(&mut child, Duration::from_secs(30)).code(), Some(0), "{cmd} stops cleanly");
        let tries = logs.drain().iter().filter(|l| l.contains(WAITING)).count();
        eprintln!(
            "{cmd}: {tries} tries logged while the database did not exist; serving {:.1}s after CREATE DATABASE ({reachable})",
            up_after.as_secs_f64()
        );
        db.cleanup().await;
    }
}

/// Without `RUST_LOG`, `run`, `worker` and `serve` log at info: a worker that logged its waits
/// for the database also says when it reached it, and where it serves HTTP.
#[test]
fn run_worker_and_serve_log_their_start_at_info_by_default() {
    for cmd in ["run", "worker", "serve"] {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd_line = bin(dir.path());
        cmd_line.args(["--log-format", "json", cmd, "--listen", "127.0.0.1:0"]);
        let (mut child, mut logs) = spawn_logged(cmd_line);
        let line = logs.wait_for("HTTP server listening", Duration::from_secs(30));
        assert!(line.contains("\"level\":\"INFO\""), "{cmd}: {line}");
        assert_eq!(terminate(&mut child, Duration::from_secs(30)).code(), Some(0), "{cmd} stops cleanly");
    }
}

#[test]
fn a_database_that_never_answers_is_given_up_after_startup_timeout_with_exit_69() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("orchestrator.yaml"), "startup_timeout_seconds: 2\n").unwrap();
    for cmd in ["run", "worker", "serve"] {
        let started = Instant::now();
        let o = command(dir.path(), "postgres://postgres@127.0.0.1:1/nope", cmd, &["--listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        let took = started.elapsed();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(69), "{cmd}: {err}");
        let last = err.lines().last().unwrap_or("");
        assert!(
            last.starts_with("error: database still not reachable after 2s")
                && last.contains("(startup_timeout_seconds: 2)")
                && last.contains("Connection refused"),
            "{cmd}: {last}"
        );
        assert!(waits_logged(&o) >= 2, "{cmd} logs each try: {err}");
        assert!(took >= Duration::from_secs(2), "{cmd} waited the timeout: {took:?}");
        eprintln!("{cmd}: gave up after {:.1}s and {} logged tries", took.as_secs_f64(), waits_logged(&o));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_waiting_cannot_cure_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("orchestrator.yaml"), "startup_timeout_seconds: 60\n").unwrap();
    let mut cases = vec![
        ("mysql://u@h/db".to_string(), "unsupported scheme 'mysql'"),
        ("sqlite:/nonexistent-dir/x.db".to_string(), "unable to open database file"),
    ];
    if let Ok(base) = std::env::var(PG_ENV) {
        // A role the server does not know: an answer, not an absence.
        let (scheme, rest) = base.split_once("://").unwrap();
        let host = rest.split_once('@').map_or(rest, |(_, h)| h);
        cases.push((format!("{scheme}://no_such_role_here@{host}"), "no_such_role_here"));
    } else {
        crate::support::db::not_run(&format!("{PG_ENV} is not set, so the refused-role case did not run"));
    }
    for (url, says) in &cases {
        for cmd in ["run", "worker", "serve"] {
            let o = command(d, url, cmd, &["--listen", "127.0.0.1:0"]).output().unwrap();
            assert_eq!(o.status.code(), Some(1), "{cmd} {url}: {}", stderr(&o));
            assert!(stderr(&o).contains(says), "{cmd} {url}: {}", stderr(&o));
            assert_eq!(waits_logged(&o), 0, "{cmd} {url} did not wait: {}", stderr(&o));
        }
    }
    // What the command line or the config says wrong is refused before any database is tried.
    let down = "postgres://postgres@127.0.0.1:1/nope";
    for (args, code, says) in [
        (&["worker", "--listen", "nonsense"][..], 2, "--listen 'nonsense' is not an address"),
        (&["worker", "--types", "bad type"][..], 2, "--types"),
        (&["run", "--listen", "0.0.0.0:0"][..], 1, "refusing to listen on 0.0.0.0:0 without an admin token"),
        (&["serve", "--listen", "0.0.0.0:0"][..], 1, "refusing to listen on 0.0.0.0:0 without an admin token"),
    ] {
        let o = command(d, down, args[0], &args[1..]).output().unwrap();
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
        assert_eq!(waits_logged(&o), 0, "{args:?} did not wait: {}", stderr(&o));
    }
    // A bad config is refused before any database is tried.
    std::fs::write(d.join("orchestrator.yaml"), "startup_timeout_seconds: -1\n").unwrap();
    let o = command(d, "postgres://postgres@127.0.0.1:1/nope", "run", &[]).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("startup_timeout_seconds must not be negative"), "{}", stderr(&o));
    assert_eq!(waits_logged(&o), 0);
}
