//! The main flows through the real `orchestrator` binary: exit codes, JSON shapes, errors.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{TestDb, bin, json, run, stderr, stdout};

/// Runs the binary against `url` from `dir`.
fn orch(dir: &std::path::Path, url: &str, args: &[&str]) -> std::process::Output {
    run(bin(dir).arg("--database-url").arg(url).args(args))
}

async fn main_flow(db: &TestDb) {
    let dir = db.dir.path();
    let url = db.url.as_str();
    let o = orch(
        dir,
        url,
        &[
            "enqueue",
            "POST_SOCIAL",
            "--payload",
            r#"{"platform":"x","content":"hi","audience":"all"}"#,
            "--key",
            "post-1",
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let e = json(&o);
    assert_eq!(e["duplicate"], Value::Bool(false));
    assert_eq!(e["status"], "PENDING");
    let id = e["id"].as_i64().unwrap();
    let o = orch(
        dir,
        url,
        &[
            "enqueue",
            "POST_SOCIAL",
            "--payload",
            r#"{"platform":"x","content":"hi","audience":"all"}"#,
            "--key",
            "post-1",
            "--json",
        ],
    );
    assert_eq!(json(&o)["duplicate"], Value::Bool(true));
    assert_eq!(json(&o)["id"].as_i64(), Some(id));

    let o = orch(dir, url, &["run-once", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let t = json(&o);
    for k in ["tick_id", "status", "attempted", "succeeded", "failed", "duration_ms", "notes"] {
        assert!(t.get(k).is_some(), "run-once --json has {k}: {t}");
    }
    assert_eq!(
        (t["status"].as_str(), t["attempted"].as_u64(), t["succeeded"].as_u64()),
        (Some("SUCCESS"), Some(1), Some(1))
    );

    let o = orch(dir, url, &["actions", "show", &id.to_string(), "--json"]);
    let a = json(&o);
    assert_eq!(a["status"], "SUCCESS");
    assert_eq!(a["payload"]["platform"], "x");
    assert_eq!(a["idempotency_key"], "post-1");
    let logs = a["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 1);
    let artifact = dir.join(logs[0]["artifact_ref"].as_str().unwrap());
    assert!(artifact.exists(), "artifact at {artifact:?}");
    assert_eq!(logs[0]["artifact_sha256"].as_str().unwrap().len(), 64);

    let o = orch(dir, url, &["status", "--json"]);
    let s = json(&o);
    for k in ["liveness", "health", "flags", "lease", "queue", "last_tick"] {
        assert!(s.get(k).is_some(), "status --json has {k}: {s}");
    }
    assert_eq!(s["queue"]["SUCCESS"], 1);
    assert_eq!(s["flags"]["proof_mode"], true);
    assert_eq!(s["lease"]["name"], "orchestrator");
    assert_eq!(s["last_tick"]["status"], "SUCCESS");

    let o = orch(dir, url, &["actions", "list", "--status", "success", "--json"]);
    let list = json(&o);
    assert_eq!(list.as_array().unwrap().len(), 1);
    for k in [
        "id",
        "idempotency_key",
        "action_type",
        "payload",
        "status",
        "priority",
        "not_before",
        "attempts",
        "max_attempts",
        "last_error",
        "claimed_epoch",
        "claimed_at",
        "created_at",
        "updated_at",
        "finished_at",
    ] {
        assert!(list[0].get(k).is_some(), "actions list --json has {k}");
    }

    let o = orch(dir, url, &["ticks", "--json"]);
    assert_eq!(json(&o).as_array().unwrap().len(), 1);
    let o = orch(dir, url, &["logs", "--action", &id.to_string(), "--json"]);
    assert_eq!(json(&o).as_array().unwrap().len(), 1);
}

async fn flags_lease_and_exit_codes(db: &TestDb) {
    let dir = db.dir.path();
    let url = db.url.as_str();
    assert_eq!(json(&orch(dir, url, &["pause", "--json"]))["paused"], true);
    let o = orch(dir, url, &["run-once", "--json"]);
    assert_eq!(json(&o)["status"], "PAUSED");
    assert_eq!(json(&orch(dir, url, &["kill", "--json"]))["killed"], true);
    let o = orch(dir, url, &["status"]);
    assert_eq!(o.status.code(), Some(4), "killed is unhealthy: {}", stdout(&o));
    assert!(stdout(&o).contains("killed flag is set"));
    let f = json(&orch(dir, url, &["resume", "--json"]));
    assert_eq!((f["paused"].as_bool(), f["killed"].as_bool()), (Some(false), Some(false)));
    assert_eq!(json(&orch(dir, url, &["proof", "off", "--json"]))["proof_mode"], false);
    assert_eq!(json(&orch(dir, url, &["proof", "on", "--json"]))["proof_mode"], true);

    // Another instance holds the lease: run-once exits 3 and says who.
    let holder =
        orchestrator::lease::Lease::new(db.store.clone(), "orchestrator", "other-host:1:abc", Duration::from_secs(60));
    holder.acquire().await.unwrap();
    let o = orch(dir, url, &["run-once"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("held by other-host:1:abc"), "{}", stderr(&o));
    let o = orch(dir, url, &["lease", "release"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("use --force"), "{}", stderr(&o));
    let o = orch(dir, url, &["lease", "release", "--force", "--json"]);
    assert_eq!(json(&o)["released"], true);
    let o = orch(dir, url, &["lease", "show", "--json"]);
    let l = json(&o);
    assert_eq!(l["live"], false);
    assert_eq!(l["owner"], "other-host:1:abc");
    assert_eq!(orch(dir, url, &["run-once"]).status.code(), Some(0));
    assert_eq!(
        json(&orch(dir, url, &["lease", "show", "--json"]))["epoch"],
        3,
        "run-once (1), the other holder (2), this run-once (3)"
    );
}

async fn bulk_file_and_requeue(db: &TestDb) {
    let dir = db.dir.path();
    let url = db.url.as_str();
    let file = dir.join("actions.jsonl");
    std::fs::write(
        &file,
        "{\"action_type\":\"TELEPORT\",\"payload\":{\"to\":\"mars\"}}\n{\"action_type\":\"NOOP\",\"payload\":{\"i\":1},\"priority\":5}\n",
    )
    .unwrap();
    let o = orch(dir, url, &["enqueue", "--file", file.to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(json(&o)["created"], 2);

    // stdin, with a bad line: exit 1, the line named, nothing written.
    let mut child = bin(dir)
        .args(["--database-url", url, "enqueue", "--file", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"{\"action_type\":\"NOOP\",\"payload\":{\"i\":2}}\nnot json\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.starts_with("error: stdin: line 2: not a valid action"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line on stderr");

    orch(dir, url, &["run-once"]);
    let dlq = json(&orch(dir, url, &["actions", "list", "--status", "DLQ", "--json"]));
    assert_eq!(dlq.as_array().unwrap().len(), 1);
    assert_eq!(dlq[0]["last_error"], "no adapter for action type TELEPORT");
    let o = orch(dir, url, &["actions", "requeue", "--all-dlq", "--json"]);
    assert_eq!(json(&o)["requeued"].as_array().unwrap().len(), 1);
    let id = dlq[0]["id"].as_i64().unwrap().to_string();
    let o = orch(dir, url, &["actions", "cancel", &id]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = orch(dir, url, &["actions", "purge", "--older-than", "0s", "--json"]);
    assert_eq!(json(&o)["purged"], 2);
}

crate::backend_tests!(main_flow, flags_lease_and_exit_codes, bulk_file_and_requeue);

#[test]
fn run_once_on_a_fresh_directory_creates_the_default_sqlite_database() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(bin(dir.path()).arg("run-once"));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("IDLE"), "{}", stdout(&o));
    assert!(dir.path().join("orchestrator.db").exists());
    let o = run(bin(dir.path()).args(["status", "--json"]));
    assert_eq!(json(&o)["last_tick"]["status"], "IDLE");
}

/// `--version`: the version, the commit this checkout is at (build.rs asked git; `unknown`
/// without one) and the features, on one line.
#[test]
fn version_names_the_commit_and_the_features() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(bin(dir.path()).arg("--version"));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let git = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(|| "unknown".to_string(), |o| stdout(&o).trim().to_string());
    // The crate's one feature, `otel`, is a default; `--no-default-features` builds without it.
    let features = if cfg!(feature = "otel") { "otel" } else { "none" };
    assert_eq!(
        stdout(&o),
        format!("orchestrator {} (commit {git}, features: {features})\n", env!("CARGO_PKG_VERSION"))
    );
}

/// What cargo sets for `cargo run` and `cargo test` from the build script (its `rustc-env`
/// lines) is no config to the binary: the README's `cargo run --release -- run-once` gets it
/// all, and a name the binary read as `ORCHESTRATOR_<KEY>` would be refused as an unknown key.
#[test]
fn the_build_scripts_variables_are_not_config() {
    for name in ["BUILD_GIT_COMMIT", "BUILD_FEATURES"] {
        assert!(std::env::var(name).is_ok(), "cargo sets {name} for the tests as for `cargo run`");
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = bin(dir.path());
    cmd.env("BUILD_GIT_COMMIT", env!("BUILD_GIT_COMMIT")).env("BUILD_FEATURES", env!("BUILD_FEATURES"));
    let o = run(cmd.arg("run-once"));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn bad_inputs_give_one_clear_line_and_the_right_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: &[(&[&str], i32, &str)] = &[
        (&["enqueue", "NOOP", "--payload", "[1,2]"], 1, "--payload: payload must be a JSON object, got an array"),
        (&["enqueue", "NOOP", "--payload", "{"], 1, "--payload: payload is not valid JSON"),
        (&["enqueue", "NOOP", "--key", "../../etc/passwd"], 1, "looks like a path"),
        (&["enqueue", "bad type!"], 1, "action type \"bad type!\" contains ' '"),
        (&["enqueue", "NOOP", "--delay", "soon"], 2, "not a duration"),
        (&["enqueue", "NOOP", "--max-attempts", "0"], 2, "max-attempts"),
        (&["actions", "list", "--status", "DONE"], 2, "unknown ActionStatus 'DONE'"),
        (&["actions", "show", "424242"], 1, "action 424242 not found"),
        (&["actions", "requeue"], 2, "required"),
        (&["frobnicate"], 2, "unrecognized subcommand"),
        (&["--database-url", "mysql://root@localhost/x", "status"], 1, "unsupported scheme 'mysql'"),
        (&["--config", "missing.yaml", "status"], 1, "config file missing.yaml"),
    ];
    for (args, code, needle) in cases {
        let o = run(bin(d).args(*args));
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(*code), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: expected {needle:?} in {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        if *code == 1 {
            assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: one line: {err}");
        }
    }
    // None of the refused enqueues wrote anything.
    let o = run(bin(d).args(["actions", "list", "--json"]));
    assert_eq!(json(&o), serde_json::json!([]));
}

#[test]
fn config_errors_name_key_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases = [
        ("tick_interval_seconds: 5\nmax_atempts: 3\n", "orchestrator.yaml:2:1: unknown field `max_atempts`"),
        ("max_attempts: many\n", "orchestrator.yaml:1:15: max_attempts: invalid type"),
        (
            "heartbeat_seconds: 30\nlease_ttl_seconds: 30\n",
            "orchestrator.yaml:2:20: lease_ttl_seconds (30) must be longer than heartbeat_seconds (30)",
        ),
        ("max_tick_seconds: -5\n", "orchestrator.yaml:1:19: max_tick_seconds must not be negative"),
    ];
    for (yaml, needle) in cases {
        std::fs::write(d.join("orchestrator.yaml"), yaml).unwrap();
        let o = run(bin(d).arg("status"));
        assert_eq!(o.status.code(), Some(1), "{yaml}");
        assert!(stderr(&o).contains(needle), "{yaml}: expected {needle:?} in {}", stderr(&o));
    }
    std::fs::write(d.join("orchestrator.yaml"), "tick_interval_seconds: 0\n").unwrap();
    let o = run(bin(d).arg("run-once"));
    assert_eq!(o.status.code(), Some(0), "interval 0 is allowed: {}", stderr(&o));
    let o = run(bin(d).arg("status").env("ORCHESTRATOR_MAX_ATTEMPTS", "-1"));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("environment variable ORCHESTRATOR_MAX_ATTEMPTS"), "{}", stderr(&o));
}

#[test]
fn kill_stops_a_running_daemon_and_sigterm_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_eq!(run(bin(d).arg("migrate")).status.code(), Some(0));
    let mut daemon =
        bin(d).args(["run", "--interval", "0.1", "--listen", "127.0.0.1:0"]).stderr(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(run(bin(d).arg("kill")).status.code(), Some(0));
    let status = wait_exit(&mut daemon, Duration::from_secs(10)).expect("the daemon exits after kill");
    assert_eq!(status.code(), Some(0));
    let t = json(&run(bin(d).args(["ticks", "--limit", "1", "--json"])));
    assert_eq!(t[0]["status"], "KILLED");

    // SIGTERM: finish the tick, release the lease, exit 0.
    run(bin(d).arg("resume"));
    let mut daemon =
        bin(d).args(["run", "--interval", "0.1", "--listen", "127.0.0.1:0"]).stderr(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let pid = daemon.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = wait_exit(&mut daemon, Duration::from_secs(10)).expect("the daemon exits after SIGTERM");
    assert_eq!(status.code(), Some(0));
    let l = json(&run(bin(d).args(["lease", "show", "--json"])));
    assert_eq!(l["live"], false, "the lease was released: {l}");
}

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    None
}
