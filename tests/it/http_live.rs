//! The real binary serving HTTP on an ephemeral port: the endpoints and the admin API over a
//! socket, the bind safety check, `serve`, SIGTERM in the middle of a tick, a PostgreSQL outage
//! made with `pg_terminate_backend`, and promtool on the shipped Prometheus files and a live
//! `/metrics`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use orchestrator::model::{ActionStatus, TickStatus};
use orchestrator::queue;
use orchestrator::store::{FlagChange, Store, StoreOptions};
use serde_json::json;

use crate::backend_tests;
use crate::support::daemon::{BEARER, TOKEN, daemon, promtool, promtool_ok};
use crate::support::http::{get, request, wait_for};
use crate::support::noop;
use crate::support::process::{spawn_server, terminate};
use crate::support::{PG_ENV, TestDb, bin, run, stderr};

#[test]
fn the_daemon_serves_http_and_the_admin_api_on_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = format!("sqlite:{}", d.join("o.db").display());
    let (mut child, mut logs, addr) =
        spawn_server(daemon(d, &url, &["--interval", "0.2"]).env("ORCHESTRATOR_ADMIN_TOKEN", TOKEN));
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");

    let h = wait_for(addr, "/health", Duration::from_secs(30), |r| r.status == 200);
    assert_eq!(h.json()["status"], "healthy", "{}", h.body);
    assert_eq!(get(addr, "/status").status, 401, "a token is set, so /status needs it");
    let s = request(addr, "GET", "/status", &[("Authorization", BEARER)], None).unwrap().json();
    assert_eq!(s["server"]["ticking"], true);
    assert_eq!(s["server"]["admin_api"], true);
    assert_eq!(s["lease"]["live"], true);
    assert!(get(addr, "/").body.contains("id=\"btn-pause\""));
    // The tick counter is incremented just after the ledger row that made /health healthy.
    let m = wait_for(addr, "/metrics", Duration::from_secs(10), |r| {
        r.body.contains("orchestrator_ticks_total{status=\"IDLE\"}")
    });
    assert_eq!(m.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));

    let r = request(addr, "POST", "/api/flags", &[], Some(r#"{"paused":true}"#)).unwrap();
    assert_eq!(r.status, 401, "{}", r.body);
    let r = request(addr, "POST", "/api/flags", &[("Authorization", BEARER)], Some(r#"{"paused":true}"#)).unwrap();
    assert_eq!((r.status, r.json()["paused"].as_bool()), (200, Some(true)), "{}", r.body);
    let line = logs.wait_for("admin API: flags changed", Duration::from_secs(10));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["fields"]["who"], "tester", "{line}");
    assert!(v["fields"]["at"].as_str().is_some_and(|t| t.starts_with("20")), "{line}");
    logs.wait_for("\"status\":\"PAUSED\"", Duration::from_secs(10));
    let body = json!({"action_type": "NOOP", "payload": {}, "idempotency_key": "live-1"}).to_string();
    let r = request(addr, "POST", "/api/actions", &[("Authorization", BEARER)], Some(&body)).unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let r = request(addr, "GET", "/api/actions?status=PENDING", &[("Authorization", BEARER)], None).unwrap();
    assert_eq!(r.json()[0]["idempotency_key"], "live-1");

    let status = terminate(&mut child, Duration::from_secs(25));
    assert_eq!(status.code(), Some(0), "{}", logs.drain().join("\n"));
    assert!(logs.drain().iter().any(|l| l.contains("HTTP server stopped")));
    assert!(request(addr, "GET", "/health/live", &[], None).is_err(), "the socket is closed after exit");

    // A non-loopback address without a token is refused, saying why.
    let o = run(bin(d).args(["--database-url", &url, "run", "--listen", "0.0.0.0:0", "--ticks", "1"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("refusing to listen on 0.0.0.0:0 without an admin token"), "{}", stderr(&o));
    assert!(stderr(&o).contains("ORCHESTRATOR_ADMIN_TOKEN"), "{}", stderr(&o));
    let o = run(bin(d).args(["--database-url", &url, "run", "--listen", "nowhere", "--ticks", "1"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("flag --listen: http.listen 'nowhere'"), "{}", stderr(&o));
    // --no-http: ticks without a server.
    let o = run(bin(d).args(["--database-url", &url, "run", "--no-http", "--ticks", "1", "--interval", "0"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("HTTP server listening"));

    // `serve`: the same endpoints, no ticking.
    let mut cmd = bin(d);
    cmd.args(["--database-url", &url, "--log-format", "json", "serve", "--listen", "127.0.0.1:0"]);
    let (mut child, mut logs, addr) = spawn_server(&mut cmd);
    let s = get(addr, "/status").json();
    assert_eq!(s["server"]["ticking"], false);
    assert_eq!(s["flags"]["paused"], true, "it shows the database's state");
    let before = s["ticks"][0]["id"].clone();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(get(addr, "/status").json()["ticks"][0]["id"], before, "serve does not tick");
    let r = request(addr, "POST", "/api/run-once", &[], None).unwrap();
    assert_eq!((r.status, r.json()["error"].as_str().map(|e| e.starts_with("admin API disabled"))), (403, Some(true)));
    assert_eq!(terminate(&mut child, Duration::from_secs(10)).code(), Some(0), "{}", logs.drain().join("\n"));
}

backend_tests!(sigterm_mid_tick_finishes_the_tick_and_releases_the_lease);

async fn sigterm_mid_tick_finishes_the_tick_and_releases_the_lease(db: &TestDb) {
    // Real mode: NOOP's sleep_ms makes the attempt take 1.5 s.
    db.store.flags().set_flags(FlagChange { proof_mode: Some(false), ..Default::default() }).await.unwrap();
    let mut slow = noop("slow");
    slow.payload = json!({"sleep_ms": 1500});
    let id = queue::enqueue(&db.store, &slow, 3).await.unwrap().id;
    let (mut child, mut logs, addr) = spawn_server(&mut daemon(db.dir.path(), &db.url, &["--interval", "0.2"]));
    let start = Instant::now();
    while db.store.actions().action(id).await.unwrap().unwrap().status != ActionStatus::Running {
        assert!(start.elapsed() < Duration::from_secs(30), "the action never started: {:?}", logs.drain());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(addr, "/status").json()["queue"]["RUNNING"], 1, "/status sees the tick in flight");
    let sent = Instant::now();
    let status = tokio::task::spawn_blocking(move || terminate(&mut child, Duration::from_secs(20))).await.unwrap();
    let took = sent.elapsed();
    assert_eq!(status.code(), Some(0), "{}", logs.drain().join("\n"));
    assert!(took < Duration::from_secs(20), "exit within max_tick_seconds: {took:?}");

    let a = db.store.actions().action(id).await.unwrap().unwrap();
    assert_eq!((a.status, a.attempts), (ActionStatus::Success, 1), "the tick in flight was finished");
    let ticks = db.store.ledger().recent_ticks(100).await.unwrap();
    let t = ticks.iter().find(|t| t.actions_attempted == 1).expect("the tick that ran the action");
    assert_eq!((t.status, t.actions_succeeded), (TickStatus::Success, 1));
    assert!(t.finished_at.is_some(), "the ledger row is closed");
    assert!(ticks.iter().all(|t| t.finished_at.is_some()), "no ledger row is left open");
    let lease = db.store.lease().get("orchestrator").await.unwrap().unwrap();
    assert!(lease.expires_at <= db.store.db_now().await.unwrap(), "the lease was released");
    let lines = logs.drain();
    assert!(lines.iter().any(|l| l.contains("signal received")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("lease released")), "{lines:?}");
}

/// PostgreSQL goes away under a running daemon (its backends terminated and new connections
/// refused), then comes back: /health turns 503 and then 200 again, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_turns_health_503_then_200_without_a_restart() {
    let Some(base) = crate::support::db::pg_url("the PostgreSQL outage test") else { return };
    // A database of its own, so that terminating its backends touches no other test.
    let name = format!("it_outage_{:012x}", fastrand::u64(..) & 0xffff_ffff_ffff);
    let admin = Store::connect(&base, &StoreOptions::default()).await.unwrap();
    admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await.unwrap();
    let url = match base.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => panic!("{PG_ENV} must end in /DATABASE"),
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut child, mut logs, addr) = spawn_server(&mut daemon(dir.path(), &url, &["--interval", "0.2"]));
    wait_for(addr, "/health", Duration::from_secs(30), |r| r.status == 200);
    let pid = child.id();

    admin.execute_unprepared(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")).await.unwrap();
    let terminate_all = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    );
    admin.execute_unprepared(&terminate_all).await.unwrap();
    let down = wait_for(addr, "/health", Duration::from_secs(30), |r| r.status == 503);
    assert!(down.body.contains("database unreachable"), "{}", down.body);
    assert_eq!(get(addr, "/health/ready").status, 503);
    assert_eq!(get(addr, "/health/live").status, 200);
    logs.wait_for("retrying with backoff", Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(2)).await;

    admin.execute_unprepared(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).await.unwrap();
    let up = wait_for(addr, "/health", Duration::from_secs(60), |r| r.status == 200);
    assert_eq!(up.json()["status"], "healthy", "{}", up.body);
    logs.wait_for("database reachable again", Duration::from_secs(30));
    assert_eq!(child.id(), pid);
    assert!(child.try_wait().unwrap().is_none(), "the same process carried on");
    let metrics = get(addr, "/metrics").body;
    assert!(metrics.contains("orchestrator_database_outages_total 1"), "counted once: {metrics}");
    assert_eq!(terminate(&mut child, Duration::from_secs(25)).code(), Some(0));
    let lines = logs.drain();
    let errors = lines.iter().filter(|l| l.contains("retrying with backoff")).count();
    assert_eq!(errors, 1, "the outage is logged once, not once per tick: {lines:?}");

    admin.execute_unprepared(&format!("DROP DATABASE {name} WITH (FORCE)")).await.unwrap();
    admin.close().await.ok();
}

#[test]
fn promtool_accepts_the_shipped_files_and_a_live_metrics_page() {
    if promtool().is_none() {
        return;
    }
    promtool_ok(&["check", "config", "examples/prometheus/prometheus.yml"], None);
    let out = promtool_ok(&["check", "rules", "examples/prometheus/alerts.yml"], None);
    assert!(out.contains("SUCCESS: 5 rules found"), "{out}");
    let out = promtool_ok(&["test", "rules", "examples/prometheus/alerts_test.yml"], None);
    assert!(out.contains("SUCCESS"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = format!("sqlite:{}", d.join("o.db").display());
    assert_eq!(
        run(bin(d).args(["--database-url", &url, "enqueue", "TELEPORT", "--payload", "{}"])).status.code(),
        Some(0)
    );
    let (mut child, mut logs, addr) = spawn_server(&mut daemon(d, &url, &["--interval", "0.2"]));
    let dlq = "orchestrator_actions_total{outcome=\"dlq\",type=\"TELEPORT\"} 1";
    let metrics = wait_for(addr, "/metrics", Duration::from_secs(30), |r| r.body.contains(dlq)).body;
    let out = promtool_ok(&["check", "metrics"], Some(&metrics));
    assert!(out.trim().is_empty(), "promtool check metrics reports nothing: {out}");
    assert_eq!(terminate(&mut child, Duration::from_secs(25)).code(), Some(0), "{}", logs.drain().join("\n"));
}

#[test]
fn the_systemd_units_restart_on_failure_are_hardened_and_verify() {
    check_unit("orchestrator.service", "ExecStart=/usr/local/bin/orchestrator --log-format json run");
    check_unit(
        "orchestrator-worker.service",
        "ExecStart=/usr/local/bin/orchestrator --log-format json worker --concurrency 16",
    );
}

fn check_unit(file: &str, exec: &str) {
    let unit =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/systemd").join(file)).unwrap();
    assert!(unit.lines().any(|l| l == exec), "{file} has {exec}");
    for line in [
        // Not `always`: `orchestrator kill` exits 0, and that stop must stay a stop.
        "Restart=on-failure",
        "RestartSec=5s",
        // No start limit: a database down for ten minutes at boot is waited for by the process
        // (startup_timeout_seconds, then exit 69) and by systemd's restarts, never given up on.
        "StartLimitIntervalSec=0",
        // The off switch (ORCHESTRATOR_ENABLED=false) and usage errors exit 2: no restart loop.
        "RestartPreventExitStatus=2",
        "Type=exec",
        "#MemoryMax=512M",
        "#CPUQuota=100%",
        "KillSignal=SIGTERM",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
    ] {
        assert!(unit.lines().any(|l| l == line), "{file} has {line}");
    }
    assert!(!unit.lines().any(|l| l.starts_with("StartLimitBurst=")), "{file} sets no start burst");
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("skipped: systemd-analyze is not installed, so the unit was not verified");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(file);
    std::fs::write(&path, unit.replace("/usr/local/bin/orchestrator", env!("CARGO_BIN_EXE_orchestrator"))).unwrap();
    let o = Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success() && out.trim().is_empty(), "systemd-analyze verify: {out}");
}
