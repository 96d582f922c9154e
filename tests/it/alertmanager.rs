//! Alerts through a real Alertmanager (Debian's `prometheus-alertmanager`, 0.25), driven through
//! the real binary: a rule's critical alert shows firing in `/api/v2/alerts` with its labels
//! and the tick's explain as `generatorURL`, the shipped example routes it to its pager
//! receiver, a resolved `ALERT` resolves it there, and a silence mutes the notification while
//! the queue keeps running every action. The receivers are a recording peer in this process.
//!
//! Alertmanager missing is a skip that says so, or a failure under
//! `ORCHESTRATOR_TEST_REQUIRE_PG=1` (`.ci/run`, which installs the package).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::db::not_run;
use crate::support::http::{get, request, wait_for};
use crate::support::peer::{Peer, Reply};
use crate::support::process::Server;
use crate::support::{bin, json, run, stderr};

/// The shipped example, read as users copy it.
const EXAMPLE: &str = include_str!("../../examples/alertmanager/alertmanager.yml");

/// Where the orchestrator says its explain lives (nothing listens there: the URL is only checked).
const GENERATOR_BASE: &str = "http://orchestrator.test:9464";

/// The Alertmanager binary and its `amtool`, or why they cannot run.
fn tools() -> Option<(PathBuf, PathBuf)> {
    let works = |name: &str| {
        Command::new(name).arg("--version").output().ok().filter(|o| o.status.success()).map(|_| PathBuf::from(name))
    };
    match (works("prometheus-alertmanager").or_else(|| works("alertmanager")), works("amtool")) {
        (Some(am), Some(amtool)) => Some((am, amtool)),
        _ => {
            not_run(
                "prometheus-alertmanager and amtool are not installed (Debian package prometheus-alertmanager), \
                 so the Alertmanager test did not run",
            );
            None
        }
    }
}

/// `text` with `from` replaced by `to`; `from` must be there (the example changed otherwise).
fn replaced(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the shipped alertmanager.yml no longer has {from:?}");
    text.replace(from, to)
}

/// The orchestrator binary in `dir` on `url` with `o.yaml`; its output, which must be exit 0.
fn orch(dir: &Path, url: &str, args: &[&str]) -> std::process::Output {
    let o = run(bin(dir).args(["--database-url", url, "--config", "o.yaml"]).args(args));
    assert_eq!(o.status.code(), Some(0), "orchestrator {args:?}: {}", stderr(&o));
    o
}

/// Runs ticks until the action with `key` has finished, and returns it (`actions show --json`).
fn tick_until_done(dir: &Path, url: &str, key: &str) -> Value {
    for _ in 0..5 {
        orch(dir, url, &["run-once"]);
        let list = json(&orch(dir, url, &["actions", "list", "--json"]));
        let found = list.as_array().and_then(|a| a.iter().find(|a| a["idempotency_key"] == key)).cloned();
        if let Some(a) = found.filter(|a| a["status"] != "PENDING" && a["status"] != "RETRY") {
            return a;
        }
    }
    panic!("the action {key} did not finish in five ticks");
}

/// The alerts Alertmanager lists (active, silenced and inhibited ones; resolved ones are not
/// listed) whose `key` label is `key`.
fn alerts(am: SocketAddr, key: &str) -> Vec<Value> {
    let r = get(am, "/api/v2/alerts");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json().as_array().unwrap().iter().filter(|a| a["labels"]["key"] == key).cloned().collect()
}

/// The statuses (`firing`, `resolved`) of the notifications the receiver at `path` was sent
/// for the alert keyed `key`, from Alertmanager's webhook bodies.
fn notified(peer: &Peer, path: &str, key: &str) -> Vec<String> {
    peer.requests()
        .iter()
        .filter(|r| r.path == path)
        .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
        .flat_map(|v| v["alerts"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["labels"]["key"] == key)
        .map(|a| a["status"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Waits until `ok` holds; panics with `what` after `limit`.
fn eventually(limit: Duration, what: &str, ok: impl Fn() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running Alertmanager with the shipped example's routes, its receivers pointed at `receiver`.
struct Alertmanager {
    addr: SocketAddr,
    _process: Server,
}

fn start_alertmanager(am_bin: &Path, amtool: &Path, dir: &Path, receiver: &Peer) -> Alertmanager {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/alertmanager/alertmanager.yml");
    let o = Command::new(amtool).args(["check-config", example]).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "amtool check-config {example}: {said}");
    // The example as shipped, but for where the receivers are and waits cut to a second.
    let mut config = replaced(EXAMPLE, "http://127.0.0.1:5001/page", &receiver.url("/page"));
    config = replaced(&config, "http://127.0.0.1:5001/chat", &receiver.url("/chat"));
    config = replaced(&config, "group_wait: 30s", "group_wait: 1s");
    config = replaced(&config, "group_wait: 10s", "group_wait: 1s");
    config = replaced(&config, "group_interval: 5m", "group_interval: 1s");
    std::fs::write(dir.join("alertmanager.yml"), config).unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let process = Server(
        Command::new(am_bin)
            .arg(format!("--config.file={}", dir.join("alertmanager.yml").display()))
            .arg(format!("--storage.path={}", dir.join("am-data").display()))
            .arg(format!("--web.listen-address={addr}"))
            // No cluster: it would listen on 9094 and wait for peers.
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus-alertmanager"),
    );
    wait_for(addr, "/-/ready", Duration::from_secs(30), |r| r.status == 200);
    Alertmanager { addr, _process: process }
}

/// An orchestrator in `dir` whose rule `disk` raises a critical alert keyed `disk_full`, enqueued
/// as ALERT and posted to `am`; in real mode. Returns its database URL.
fn orchestrator(dir: &Path, am: SocketAddr) -> String {
    std::fs::create_dir(dir.join("rules")).unwrap();
    std::fs::write(dir.join("rules/disk.rhai"), "[alert(\"critical\", \"disk is full\", \"disk_full\")]\n").unwrap();
    std::fs::write(
        dir.join("o.yaml"),
        format!(
            "rules_dir: rules\nrules:\n  alert_action_type: ALERT\nadapters:\n  alert:\n    alertmanager:\n      \
             url: http://{am}\n      generator_base_url: {GENERATOR_BASE}\n      labels: {{env: test}}\n"
        ),
    )
    .unwrap();
    let url = format!("sqlite:{}", dir.join("o.db").display());
    orch(dir, &url, &["proof", "off"]);
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_fire_resolve_and_leave_the_queue_running_under_a_silence_in_a_real_alertmanager() {
    let Some((am_bin, amtool)) = tools() else { return };
    // The receivers answer on this runtime; the scenario blocks on processes and polls.
    let receiver = Peer::answering(Reply::status(200)).await;
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let am = start_alertmanager(&am_bin, &amtool, dir.path(), &receiver);
        let url = orchestrator(dir.path(), am.addr);
        fires_with_labels_and_the_ticks_explain(dir.path(), &url, am.addr, &receiver);
        resolves(dir.path(), &url, am.addr, &receiver);
        a_silence_mutes_the_pager_not_the_queue(dir.path(), &url, am.addr, &receiver);
    })
    .await
    .unwrap();
}

/// The rule's alert: firing in Alertmanager with the rule's labels, the key, the severity and
/// the deciding tick's explain; routed by the example to the pager, which is notified.
fn fires_with_labels_and_the_ticks_explain(dir: &Path, url: &str, am: SocketAddr, receiver: &Peer) {
    orch(dir, url, &["run-once"]);
    let list = json(&orch(dir, url, &["actions", "list", "--json"]));
    let alert = list.as_array().unwrap().iter().find(|a| a["action_type"] == "ALERT").expect("the rule's ALERT");
    let action = tick_until_done(dir, url, alert["idempotency_key"].as_str().unwrap());
    assert_eq!(action["status"], "SUCCESS", "{action}");
    let tick = action["payload"]["tick_id"].as_i64().expect("the rule's alert names its tick");

    let firing = alerts(am, "disk_full");
    assert_eq!(firing.len(), 1, "{firing:?}");
    let a = &firing[0];
    assert_eq!(
        a["labels"],
        json!({"alertname": "disk", "severity": "critical", "key": "disk_full", "rule": "disk", "env": "test"})
    );
    assert_eq!(a["status"]["state"], "active", "{a}");
    assert_eq!(a["annotations"]["summary"], "disk is full");
    assert_eq!(a["generatorURL"], format!("{GENERATOR_BASE}/api/ticks/{tick}/explain"));
    assert_eq!(a["receivers"], json!([{"name": "pager"}]), "severity=critical routes to the pager: {a}");
    let explain = json(&orch(dir, url, &["explain", "--tick", &tick.to_string(), "--json"]));
    assert!(
        explain["decisions"].as_array().unwrap().iter().any(|x| x["rule"] == "disk" && x["kind"] == "alert"),
        "the generatorURL's tick is the one that decided the alert: {explain}"
    );
    eventually(Duration::from_secs(20), "the pager is notified that disk_full fires", || {
        notified(receiver, "/page", "disk_full").contains(&"firing".to_string())
    });
}

/// An ALERT with `"resolved": true` and the same labels: no longer listed, the pager told.
fn resolves(dir: &Path, url: &str, am: SocketAddr, receiver: &Peer) {
    let payload =
        r#"{"severity":"critical","message":"disk has room again","key":"disk_full","rule":"disk","resolved":true}"#;
    orch(dir, url, &["enqueue", "ALERT", "--payload", payload, "--key", "disk-resolved"]);
    let action = tick_until_done(dir, url, "disk-resolved");
    assert_eq!(action["status"], "SUCCESS", "{action}");
    let listed = alerts(am, "disk_full");
    assert!(listed.is_empty(), "a resolved alert is no longer listed: {listed:?}");
    eventually(Duration::from_secs(20), "the pager is notified that disk_full resolved", || {
        notified(receiver, "/page", "disk_full").contains(&"resolved".to_string())
    });
    assert!(notified(receiver, "/chat", "disk_full").is_empty(), "a critical alert does not go to the chat");
}

/// A silence on every critical alert: the next one is delivered and listed as suppressed,
/// nobody is paged, and the queue runs every action all the same.
fn a_silence_mutes_the_pager_not_the_queue(dir: &Path, url: &str, am: SocketAddr, receiver: &Peer) {
    let now = chrono::Utc::now();
    let silence = json!({
        "matchers": [{"name": "severity", "value": "critical", "isRegex": false, "isEqual": true}],
        "startsAt": now.to_rfc3339(), "endsAt": (now + chrono::Duration::hours(1)).to_rfc3339(),
        "createdBy": "the test", "comment": "maintenance"
    });
    let r = request(am, "POST", "/api/v2/silences", &[], Some(&silence.to_string())).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let silence_id = r.json()["silenceID"].as_str().unwrap().to_string();

    let payload = r#"{"severity":"critical","message":"the database is down","key":"db_down"}"#;
    orch(dir, url, &["enqueue", "ALERT", "--payload", payload, "--key", "db-down"]);
    for i in 0..3 {
        orch(dir, url, &["enqueue", "NOOP", "--key", &format!("work-{i}")]);
    }
    let db_down = tick_until_done(dir, url, "db-down");
    assert_eq!(db_down["status"], "SUCCESS", "Alertmanager took the alert under the silence: {db_down}");
    for i in 0..3 {
        let n = tick_until_done(dir, url, &format!("work-{i}"));
        assert_eq!(n["status"], "SUCCESS", "a silence does not hold the queue: {n}");
    }
    let listed = alerts(am, "db_down");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["status"]["state"], "suppressed", "{}", listed[0]);
    assert_eq!(listed[0]["status"]["silencedBy"], json!([silence_id]), "{}", listed[0]);
    assert_eq!(listed[0]["labels"]["alertname"], "orchestrator", "an enqueued ALERT names no rule");
    // Past the group wait (1 s) and then some, nobody was paged for it.
    std::thread::sleep(Duration::from_secs(3));
    assert!(notified(receiver, "/page", "db_down").is_empty(), "a silenced alert pages nobody");
}
