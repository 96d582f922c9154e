//! `examples/grafana/orchestrator.json` against a real Prometheus scraping a real daemon: after a
//! short scenario (enqueues, successes, failures into DLQ, a rule error, decisions) and two
//! scrapes, every panel's PromQL, with Grafana's variables substituted, runs through
//! Prometheus' HTTP query API without error and returns series. Skips, saying why, when
//! `prometheus` is not installed (`.ci/run` installs it).

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::daemon::daemon;
use crate::support::http::{get, wait_for};
use crate::support::process::{Server, spawn_server, terminate};
use crate::support::{bin, run, stderr};

/// Grafana's built-in variables and the dashboard's own, as the test fills them in.
fn substitute(expr: &str, job: &str) -> String {
    expr.replace("$__rate_interval", "20s")
        .replace("${__rate_interval}", "20s")
        .replace("$__interval", "2s")
        .replace("$__range", "5m")
        .replace("${job}", job)
        .replace("$job", job)
        .replace("${instance}", ".*")
        .replace("$instance", ".*")
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn query(prom: SocketAddr, expr: &str) -> Value {
    let r = get(prom, &format!("/api/v1/query?query={}", percent_encode(expr)));
    let v = r.json();
    assert_eq!((r.status, v["status"].as_str()), (200, Some("success")), "{expr}: {}", r.body);
    v
}

#[test]
fn every_dashboard_panel_returns_series_from_a_real_prometheus() {
    if Command::new("prometheus").arg("--version").output().is_err() {
        eprintln!(
            "skipped: prometheus is not installed (Debian package prometheus), so the Grafana dashboard was not checked"
        );
        return;
    }
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/grafana/orchestrator.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = format!("sqlite:{}", d.join("o.db").display());

    // The scenario: NOOP successes, an unknown type that fails into the DLQ (max 1 attempt), a
    // rule that decides every tick, and one that fails once the DLQ is not empty (it passes
    // the start-up check, which runs on an empty snapshot).
    std::fs::create_dir(d.join("rules")).unwrap();
    std::fs::write(d.join("rules/beacon.rhai"), "[alert(\"info\", `dlq ${snap.queue.dlq}`)]\n").unwrap();
    std::fs::write(d.join("rules/fragile.rhai"), "if snap.queue.dlq > 0 { throw \"fragile: DLQ seen\"; }\n[]\n")
        .unwrap();
    for i in 0..5 {
        let o = run(bin(d).args(["--database-url", &url, "enqueue", "NOOP", "--payload", &format!("{{\"n\":{i}}}")]));
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    for i in 0..2 {
        let o = run(bin(d).args([
            "--database-url",
            &url,
            "enqueue",
            "TELEPORT",
            "--payload",
            &format!("{{\"n\":{i}}}"),
            "--max-attempts",
            "1",
        ]));
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    let (mut orch, _logs, addr) = spawn_server(&mut daemon(d, &url, &["--interval", "0.2"]));
    wait_for(addr, "/metrics", Duration::from_secs(30), |r| {
        r.body.contains("orchestrator_rule_errors_total{rule=\"fragile\"}")
            && r.body.contains("orchestrator_actions_total{outcome=\"dlq\"")
            && r.body.contains("orchestrator_actions_total{outcome=\"success\"")
    });

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let prom: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let job = "orchestrator";
    std::fs::write(
        d.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: {job}\n    \
             static_configs:\n      - targets: ['{addr}']\n"
        ),
    )
    .unwrap();
    let mut prometheus = Server(
        Command::new("prometheus")
            .arg(format!("--config.file={}", d.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", d.join("tsdb").display()))
            .arg(format!("--web.listen-address={prom}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    wait_for(prom, "/-/ready", Duration::from_secs(60), |r| r.status == 200);
    // At least two scrapes, so that rates have two samples: wait for the third.
    let start = Instant::now();
    loop {
        let v = query(prom, &format!("count_over_time(up{{job=\"{job}\"}}[1m])"));
        let n = v["data"]["result"][0]["value"][1].as_str().and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
        if n >= 3.0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "Prometheus did not scrape the daemon: {v}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let up = query(prom, &format!("up{{job=\"{job}\"}}"));
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "the daemon is up: {up}");

    let mut checked = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or("?");
        for target in panel["targets"].as_array().unwrap_or(&Vec::new()) {
            let raw = target["expr"].as_str().unwrap_or_else(|| panic!("{title}: a target without expr"));
            let expr = substitute(raw, job);
            assert!(!expr.contains('$'), "{title}: a variable the test does not know: {expr}");
            let v = query(prom, &expr);
            let series = v["data"]["result"].as_array().map_or(0, Vec::len);
            assert!(series > 0, "{title}: `{expr}` returned no series");
            eprintln!("{title}: {series} series from {expr}");
            checked += 1;
        }
    }
    assert!(checked >= 9, "every panel of the issue is there: {checked} queries");
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    assert_eq!(terminate(&mut orch, Duration::from_secs(25)).code(), Some(0));
}
