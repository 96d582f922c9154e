//! Nothing configured through the environment is silently ignored, through the real binary:
//! one test per earlier system's variable translated or refused, the `ORCHESTRATOR_*` names that
//! set no key, and the payload field `social_platform` (docs/upgrading.md has the table).

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{bin, json, run, stderr};

/// Runs the binary in `dir` with `vars` set; a command that should have been refused but runs
/// on (`run`, `worker`) is killed after a minute, and the test then fails on its exit code.
fn orch(dir: &std::path::Path, vars: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = bin(dir);
    cmd.args(args).envs(vars.iter().copied()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

fn enqueue_noop(dir: &std::path::Path, key: &str) {
    let o = run(bin(dir).args(["enqueue", "NOOP", "--key", key]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// The statuses of every action, oldest first.
fn statuses(dir: &std::path::Path) -> Vec<String> {
    let o = run(bin(dir).args(["actions", "list", "--json"]));
    let mut rows: Vec<(i64, String)> = json(&o)
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["id"].as_i64().unwrap(), a["status"].as_str().unwrap().to_string()))
        .collect();
    rows.sort();
    rows.into_iter().map(|(_, s)| s).collect()
}

fn ticks(dir: &std::path::Path) -> usize {
    json(&run(bin(dir).args(["ticks", "--json"]))).as_array().unwrap().len()
}

/// Asserts a refusal: exit `code`, every needle on stderr, nothing done.
fn refused(o: &Output, code: i32, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "{err}");
    for n in needles {
        assert!(err.contains(n), "expected {n:?} in {err}");
    }
}

/// The `interval_s` the daemon logged at start (`run --ticks 1 --no-http --log-format json`).
fn logged_interval(o: &Output) -> f64 {
    let err = stderr(o);
    let line = err.lines().find(|l| l.contains("orchestrator running")).unwrap_or_else(|| panic!("{err}"));
    let v: Value = serde_json::from_str(line).unwrap();
    v["fields"]["interval_s"].as_f64().unwrap()
}

const RUN_ONE_TICK: &[&str] = &["run", "--ticks", "1", "--no-http", "--log-format", "json"];

#[test]
fn orchestrator_enabled_false_never_acts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    enqueue_noop(d, "a");
    let off = [("ORCHESTRATOR_ENABLED", "false")];
    let why = "ORCHESTRATOR_ENABLED=false: this process never acts";
    for args in [&["run-once"][..], &["run", "--ticks", "1", "--no-http"], &["worker", "--no-http"]] {
        refused(&orch(d, &off, args), 2, &[why, "ORCHESTRATOR_ENABLED is deprecated"]);
    }
    let o = orch(d, &off, &["run-once", "--dry-run"]);
    assert_eq!(o.status.code(), Some(0), "a dry run changes nothing: {}", stderr(&o));
    assert_eq!((statuses(d), ticks(d)), (vec!["PENDING".to_string()], 0), "nothing acted");
    // Unset, the same command acts: the refusal above was the variable's doing.
    let o = orch(d, &[], &["run-once"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(statuses(d), ["SUCCESS"]);
}

#[test]
fn orchestrator_enabled_true_acts_with_a_deprecation_warning() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    enqueue_noop(d, "a");
    let o = orch(d, &[("ORCHESTRATOR_ENABLED", "true")], &["run-once"]);
    refused(&o, 0, &["ORCHESTRATOR_ENABLED is deprecated (the Stakazo name)"]);
    assert_eq!(statuses(d), ["SUCCESS"]);
    refused(&orch(d, &[("ORCHESTRATOR_ENABLED", "maybe")], &["status"]), 1, &["'maybe' is not true or false"]);
}

#[test]
fn orchestrator_interval_seconds_is_the_tick_interval() {
    let dir = tempfile::tempdir().unwrap();
    let o = orch(dir.path(), &[("ORCHESTRATOR_INTERVAL_SECONDS", "2")], RUN_ONE_TICK);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(logged_interval(&o), 2.0);
    assert!(stderr(&o).contains("set ORCHESTRATOR_TICK_INTERVAL_SECONDS instead"), "{}", stderr(&o));
}

#[test]
fn orchestrator_mode_manual_lets_only_run_once_act() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    enqueue_noop(d, "a");
    let manual = [("ORCHESTRATOR_MODE", "MANUAL")];
    for args in [&["run", "--ticks", "1", "--no-http"][..], &["worker", "--no-http"]] {
        refused(&orch(d, &manual, args), 2, &["ORCHESTRATOR_MODE=MANUAL: only a tick asked for acts"]);
    }
    assert_eq!(statuses(d), ["PENDING"]);
    let o = orch(d, &manual, &["run-once"]);
    refused(&o, 0, &["ORCHESTRATOR_MODE is deprecated (the NANO-OS name): MANUAL is honoured"]);
    assert_eq!(statuses(d), ["SUCCESS"]);
}

#[test]
fn orchestrator_mode_paused_sets_the_paused_flag() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    enqueue_noop(d, "a");
    let o = orch(d, &[("ORCHESTRATOR_MODE", "paused")], &["run-once", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(json(&o)["status"], "PAUSED");
    assert_eq!(statuses(d), ["PENDING"]);
    assert_eq!(json(&run(bin(d).args(["status", "--json"])))["flags"]["paused"], true);
    // The flag is the shared one: `resume` clears it and the next tick acts.
    assert_eq!(run(bin(d).arg("resume")).status.code(), Some(0));
    assert_eq!(run(bin(d).arg("run-once")).status.code(), Some(0));
    assert_eq!(statuses(d), ["SUCCESS"]);
}

#[test]
fn orchestrator_mode_continuous_and_scheduled_are_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (i, mode) in ["CONTINUOUS", "SCHEDULED"].into_iter().enumerate() {
        enqueue_noop(d, mode);
        let o = orch(d, &[("ORCHESTRATOR_MODE", mode)], RUN_ONE_TICK);
        assert_eq!(o.status.code(), Some(0), "{mode}: {}", stderr(&o));
        assert!(stderr(&o).contains(&format!("{mode} is `orchestrator run`")), "{}", stderr(&o));
        assert_eq!(statuses(d), vec!["SUCCESS".to_string(); i + 1]);
    }
    refused(
        &orch(d, &[("ORCHESTRATOR_MODE", "SOMETIMES")], &["status"]),
        1,
        &["MANUAL, SCHEDULED, CONTINUOUS or PAUSED"],
    );
}

#[test]
fn orchestrator_default_name_is_refused_naming_a_separate_database() {
    let dir = tempfile::tempdir().unwrap();
    let o = orch(dir.path(), &[("ORCHESTRATOR_DEFAULT_NAME", "default")], &["status"]);
    refused(&o, 1, &["environment variable ORCHESTRATOR_DEFAULT_NAME", "a separate database"]);
}

#[test]
fn aol_tick_interval_seconds_is_the_tick_interval() {
    let dir = tempfile::tempdir().unwrap();
    let o = orch(dir.path(), &[("AOL_TICK_INTERVAL_SECONDS", "3")], RUN_ONE_TICK);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(logged_interval(&o), 3.0);
    assert!(stderr(&o).contains("AOL_TICK_INTERVAL_SECONDS is deprecated (the AOL name)"), "{}", stderr(&o));
    let both = [("AOL_TICK_INTERVAL_SECONDS", "3"), ("ORCHESTRATOR_TICK_INTERVAL_SECONDS", "4")];
    refused(&orch(dir.path(), &both, &["status"]), 1, &["tick_interval_seconds is set twice"]);
}

#[test]
fn aol_max_actions_per_tick_caps_a_tick() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    enqueue_noop(d, "a");
    enqueue_noop(d, "b");
    let o = orch(d, &[("AOL_MAX_ACTIONS_PER_TICK", "1")], &["run-once", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(json(&o)["attempted"], 1);
    assert!(stderr(&o).contains("set ORCHESTRATOR_MAX_ACTIONS_PER_TICK instead"), "{}", stderr(&o));
}

#[test]
fn aol_max_tick_seconds_is_max_tick_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = orch(d, &[("AOL_MAX_TICK_SECONDS", "0")], &["status"]);
    refused(&o, 1, &["environment variable AOL_MAX_TICK_SECONDS: max_tick_seconds must be greater than 0"]);
    let o = orch(d, &[("AOL_MAX_TICK_SECONDS", "20")], &["run-once"]);
    refused(&o, 0, &["read as `max_tick_seconds`; set ORCHESTRATOR_MAX_TICK_SECONDS instead"]);
}

#[test]
fn aol_proof_mode_on_enforces_proof_and_off_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for on in ["1", "true"] {
        let o = orch(d, &[("AOL_PROOF_MODE", on)], &["status", "--json"]);
        assert_eq!(o.status.code(), Some(4), "no tick yet: unhealthy, and read: {}", stderr(&o));
        assert_eq!(json(&o)["proof_enforced"], true, "{on}");
        assert!(stderr(&o).contains("read as `proof_mode: enforced`"), "{}", stderr(&o));
    }
    for off in ["0", "false"] {
        let o = orch(d, &[("AOL_PROOF_MODE", off)], &["run-once"]);
        refused(&o, 1, &["environment variable AOL_PROOF_MODE", "orchestrator proof off"]);
    }
    assert_eq!(ticks(d), 0);
}

#[test]
fn aol_max_ticks_is_refused_naming_run_ticks() {
    let dir = tempfile::tempdir().unwrap();
    let o = orch(dir.path(), &[("AOL_MAX_TICKS", "1")], &["run", "--no-http"]);
    refused(&o, 1, &["environment variable AOL_MAX_TICKS", "`orchestrator run --ticks N`"]);
    assert_eq!(ticks(dir.path()), 0);
}

#[test]
fn variables_that_set_nothing_are_refused_naming_the_closest_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    enqueue_noop(d, "a");
    let cases: &[(&str, &str, &str)] = &[
        ("ORCHESTRATOR_MAX_ACTION_PER_TICK", "1", "the closest is ORCHESTRATOR_MAX_ACTIONS_PER_TICK"),
        ("ORCHESTRATOR_LIMITS", "{NOOP: {max_running: 0}}", "`limits` is file only"),
        ("ORCHESTRATOR_ADAPTERS", "{command: {timeout_seconds: 1}}", "`adapters` is file only"),
        ("ORCHESTRATOR_HTTP_LISTEN", "127.0.0.1:1", "`http.listen` is set through ORCHESTRATOR_HTTP"),
        ("AOL_TICK_INTERVAL", "1", "the closest is AOL_TICK_INTERVAL_SECONDS"),
    ];
    for (name, value, needle) in cases {
        let o = orch(d, &[(name, value)], &["run-once"]);
        refused(&o, 1, &[&format!("environment variable {name}: "), needle]);
    }
    assert_eq!((statuses(d), ticks(d)), (vec!["PENDING".to_string()], 0), "nothing ran");
    // The test suite's own variables and the names the binary reads besides keys start it.
    let ours = [("ORCHESTRATOR_TEST_PG_URL", "postgres://nowhere/x"), ("ORCHESTRATOR_CONFIG", "o.yaml")];
    std::fs::write(d.join("o.yaml"), "max_attempts: 2\n").unwrap();
    let o = orch(d, &ours, &["run-once"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn post_social_reads_the_aol_social_platform_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let payloads = [
        r#"{"social_platform":"twitter","content":"Hello, World!","audience":"general"}"#,
        r#"{"platform":"x","social_platform":"twitter","content":"c","audience":"a"}"#,
    ];
    for (key, payload) in ["aol", "both"].iter().zip(payloads) {
        let o = run(bin(d).args(["enqueue", "POST_SOCIAL", "--key", key, "--payload", payload]));
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    assert_eq!(run(bin(d).arg("run-once")).status.code(), Some(0));
    assert_eq!(statuses(d), ["SUCCESS", "DLQ"], "the AOL field is read; two that disagree are refused");
    let o = run(bin(d).args(["actions", "show", "1", "--json"]));
    let artifact = d.join(json(&o)["logs"][0]["artifact_ref"].as_str().unwrap());
    assert!(std::fs::read_to_string(artifact).unwrap().contains("platform: twitter"));
}

#[test]
fn the_aol_statuses_are_refused_with_their_mapping() {
    let dir = tempfile::tempdir().unwrap();
    for (old, new) in [("READY", "is PENDING here"), ("failed", "is DLQ here")] {
        let o = run(bin(dir.path()).args(["actions", "list", "--status", old]));
        refused(&o, 2, &[&format!("{} (an earlier system's status) {new}", old.to_ascii_uppercase())]);
    }
}

#[tokio::test]
async fn the_admin_api_run_once_honours_the_switches() {
    use crate::support::api::{admin, config, state};
    use orchestrator::config::Acting;
    let db = crate::support::TestDb::sqlite().await;
    for (acting, code) in [(Acting::Disabled, 409), (Acting::Manual, 200), (Acting::Any, 200)] {
        let mut c = config(&db, true);
        c.acting = acting;
        let engine = db.engine(c);
        let r = admin(&state(&engine), "POST", "/api/run-once", None).await;
        assert_eq!(r.status.as_u16(), code, "{acting:?}: {}", r.body);
        if code == 409 {
            assert!(r.error().contains("ORCHESTRATOR_ENABLED=false"), "{}", r.body);
            assert!(db.store.ledger().recent_ticks(10).await.unwrap().is_empty(), "nothing ran");
        }
        engine.release().await.unwrap();
    }
    db.cleanup().await;
}
