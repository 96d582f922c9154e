//! The operator's day (issue 15) on SQLite and PostgreSQL: `logs --follow` and `ticks --follow`
//! seeing rows land, `actions summary`, bulk DLQ edits by id, `/api/snapshot`, history pruned
//! past its retention (and a million old ledger rows pruned while the daemon ticks), plus
//! colour only on a terminal, shell completions and the man page; `status --json` naming the
//! service's liveness `liveness` (and `health`, its old name, for a release).

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chrono::Utc;
use orchestrator::config::AdminTokens;
use orchestrator::model::{ActionStatus, DecisionKind, DecisionOutcome};
use orchestrator::queue::{self, EnqueueRequest};
use orchestrator::store::{Authority, DecideRecord, DecisionRow, Fence, PruneCutoffs};
use serde_json::{Value, json};

use crate::backend_tests;
use crate::support::hold;
use crate::support::ran;
use crate::support::{TestDb, bin, json as json_out, run, stderr, stdout};

backend_tests!(
    follow_prints_rows_as_they_land,
    summary_counts_types_priorities_and_the_oldest_due,
    bulk_dlq_edits_touch_only_the_ids_given,
    snapshot_api_has_the_dry_run_shape,
    history_is_pruned_but_explain_keeps_its_rows,
    a_million_old_ledger_rows_are_pruned_while_the_daemon_ticks,
    status_json_names_liveness_and_keeps_health_for_a_release,
);

fn req(action_type: &str, key: &str, priority: i32) -> EnqueueRequest {
    EnqueueRequest {
        action_type: action_type.into(),
        payload: json!({"k": key}),
        idempotency_key: Some(key.into()),
        priority,
        not_before: None,
        max_attempts: None,
        expires_at: None,
        traceparent: None,
        require_approval: false,
    }
}

async fn enqueue(db: &TestDb, action_type: &str, key: &str, priority: i32) -> i64 {
    queue::enqueue(&db.store, &req(action_type, key, priority), 3).await.unwrap().id
}

async fn to_dlq(db: &TestDb, ids: &[i64]) {
    let list: Vec<String> = ids.iter().map(i64::to_string).collect();
    db.store
        .execute_unprepared(&format!("UPDATE actions SET status = 'DLQ' WHERE id IN ({})", list.join(", ")))
        .await
        .unwrap();
}

/// A child whose stdout lines arrive on a channel.
struct Follower {
    child: Child,
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Follower {
    fn start(db: &TestDb, args: &[&str]) -> Follower {
        let mut child = bin(db.dir.path())
            .args(["--database-url", &db.url])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn a follow");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Follower { child, rx, seen: Vec::new() }
    }

    fn wait_for(&mut self, needle: &str) -> String {
        let start = Instant::now();
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(line) = self.rx.recv_timeout(Duration::from_millis(100)) {
                self.seen.push(line.clone());
                if line.contains(needle) {
                    return line;
                }
            }
        }
        panic!("no line with {needle:?} within 20 s; got:\n{}", self.seen.join("\n"));
    }

    /// Ctrl-C, then the exit code.
    fn interrupt(mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("a follow did not stop within 10 s of SIGINT");
    }
}

async fn follow_prints_rows_as_they_land(db: &TestDb) {
    let before = enqueue(db, "KEEP", "before", 0).await;
    db.store.actions().cancel(Authority::Operator, before, None).await.unwrap();
    let engine = db.engine(db.config());
    ran(&engine).await;

    let mut logs = Follower::start(db, &["logs", "--follow", "--limit", "5"]);
    let mut typed = Follower::start(db, &["--json", "logs", "--follow", "--type", "KEEP", "--level", "info"]);
    let mut ticks = Follower::start(db, &["ticks", "--follow", "--limit", "1"]);
    // The last rows first, like tail -f.
    logs.wait_for(&format!("action {before:<6}"));
    ticks.wait_for("IDLE");

    let other = enqueue(db, "SKIP", "other", 0).await;
    db.store.actions().cancel(Authority::Operator, other, None).await.unwrap();
    let keep = enqueue(db, "KEEP", "after", 0).await;
    db.store.actions().cancel(Authority::Operator, keep, None).await.unwrap();
    let line = logs.wait_for(&format!("action {keep:<6}"));
    assert!(line.contains("cancelled by operator"), "{line}");
    logs.wait_for(&format!("action {other:<6}"));
    let line = typed.wait_for(&format!("\"action_id\":{keep}"));
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("one JSON object per line ({e}): {line}"));
    assert_eq!(v["message"], "cancelled by operator");
    assert!(
        !typed.seen.iter().any(|l| l.contains(&format!("\"action_id\":{other}"))),
        "--type KEEP never shows a SKIP action's log: {:?}",
        typed.seen
    );

    let r = ran(&engine).await;
    ticks.wait_for(&format!("#{:<7}", r.tick_id));
    for f in [logs, typed, ticks] {
        assert_eq!(f.interrupt(), Some(0), "Ctrl-C ends a follow cleanly");
    }
}

async fn summary_counts_types_priorities_and_the_oldest_due(db: &TestDb) {
    let a = enqueue(db, "ALPHA", "a1", -5).await;
    enqueue(db, "ALPHA", "a2", 0).await;
    enqueue(db, "ALPHA", "a3", 3).await;
    let b = enqueue(db, "BETA", "b1", 12).await;
    enqueue(db, "BETA", "b2", 12).await;
    to_dlq(db, &[b]).await;
    let mut later = req("BETA", "b3", 0);
    later.not_before = Some(Utc::now() + chrono::Duration::hours(1));
    queue::enqueue(&db.store, &later, 3).await.unwrap();

    let o = run(bin(db.dir.path()).args(["--database-url", &db.url, "--json", "actions", "summary"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let s = json_out(&o);
    let count = |t: &str, st: &str| {
        s["by_type_status"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["action_type"] == t && c["status"] == st)
            .map_or(0, |c| c["count"].as_i64().unwrap())
    };
    assert_eq!((count("ALPHA", "PENDING"), count("BETA", "PENDING"), count("BETA", "DLQ")), (3, 2, 1), "{s}");
    assert_eq!(s["waiting_by_type"], json!({"ALPHA": 3, "BETA": 2}));
    assert_eq!(s["open_by_priority"], json!({"negative": 1, "0": 2, "1-9": 1, "10+": 1}), "DLQ is not open");
    let oldest: Vec<(String, i64)> = s["oldest_due"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["action_type"].as_str().unwrap().to_string(), o["id"].as_i64().unwrap()))
        .collect();
    assert_eq!(oldest[0], ("ALPHA".to_string(), a), "{oldest:?}");
    assert_eq!(oldest.len(), 2, "BETA's due row counts, its future one does not: {oldest:?}");

    let o = run(bin(db.dir.path()).args(["--database-url", &db.url, "actions", "summary"]));
    let text = stdout(&o);
    assert!(text.contains("ALPHA") && text.contains("by priority: negative: 1  0: 2  1-9: 1  10+: 1"), "{text}");
}

async fn bulk_dlq_edits_touch_only_the_ids_given(db: &TestDb) {
    let ids: Vec<i64> =
        [enqueue(db, "X", "d1", 0).await, enqueue(db, "X", "d2", 0).await, enqueue(db, "X", "d3", 0).await].to_vec();
    let pending = enqueue(db, "X", "p1", 0).await;
    to_dlq(db, &ids).await;

    let done = db.store.actions().requeue_ids(&[ids[0], pending, 999_999]).await.unwrap();
    assert_eq!((done.changed, done.skipped), (vec![ids[0]], vec![pending, 999_999]), "only DLQ rows are requeued");
    let done = db.store.actions().cancel_ids(&[ids[1], pending], &[ActionStatus::Dlq]).await.unwrap();
    assert_eq!((done.changed, done.skipped), (vec![ids[1]], vec![pending]), "a DLQ bulk cancel leaves PENDING alone");
    let status = |a: Option<orchestrator::model::Action>| a.unwrap().status;
    assert_eq!(status(db.store.actions().action(ids[0]).await.unwrap()), ActionStatus::Pending);
    assert_eq!(status(db.store.actions().action(ids[1]).await.unwrap()), ActionStatus::Cancelled);
    assert_eq!(
        status(db.store.actions().action(ids[2]).await.unwrap()),
        ActionStatus::Dlq,
        "not among the ids: untouched"
    );
    let logs = db.store.history().logs(Some(ids[1]), 10).await.unwrap();
    assert_eq!(logs[0].message, "cancelled by operator", "a log row per changed action");

    let o = run(bin(db.dir.path()).args(["--database-url", &db.url, "--json", "actions", "cancel", "--all-dlq"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(json_out(&o)["cancelled"], json!([ids[2]]));
    assert_eq!(status(db.store.actions().action(pending).await.unwrap()), ActionStatus::Pending);
    let o = run(bin(db.dir.path()).args(["--database-url", &db.url, "actions", "cancel"]));
    assert_eq!(o.status.code(), Some(2), "an id or --all-dlq is required: {}", stderr(&o));
}

async fn snapshot_api_has_the_dry_run_shape(db: &TestDb) {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    enqueue(db, "NOOP", "s1", 0).await;
    let mut config = db.config();
    config.admin_tokens = AdminTokens::parse("tester:0123456789abcdef-snap").unwrap();
    let engine = db.engine(config);
    let st = orchestrator::http::AppState::new(engine, false);
    let call = |auth: Option<&'static str>| {
        let mut r = Request::builder().uri("/api/snapshot");
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        orchestrator::http::router(st.clone()).oneshot(r.body(Body::empty()).unwrap())
    };
    assert_eq!(call(None).await.unwrap().status(), 401, "the snapshot quotes errors: it needs the token");
    let res = call(Some("Bearer 0123456789abcdef-snap")).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
    let live: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(live["queue"]["pending"], 1, "{live}");

    let o = run(bin(db.dir.path()).args(["--database-url", &db.url, "--json", "run-once", "--dry-run"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let dry = json_out(&o)["snapshot"].clone();
    fn shape(v: &Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
            Value::Array(_) => json!("array"),
            Value::Null => json!("null"),
            _ => json!("scalar"),
        }
    }
    assert_eq!(shape(&live), shape(&dry), "GET /api/snapshot has run-once --dry-run's snapshot shape");
}

fn decision(tick_id: i64, at: chrono::DateTime<Utc>) -> DecisionRow {
    DecisionRow {
        tick_id,
        rule: "r".into(),
        kind: DecisionKind::Alert,
        target: format!("t{tick_id}"),
        priority: 0,
        reason: "test".into(),
        outcome: DecisionOutcome::Applied,
        created_at: at,
    }
}

async fn history_is_pruned_but_explain_keeps_its_rows(db: &TestDb) {
    let now = orchestrator::model::now();
    let days = |n: i64| now - chrono::Duration::days(n);
    let term = hold(&db.store, "pruner").await;
    // Ledger rows opened at given times, by the lease holder.
    let open_tick = |at| async move {
        match db.store.ledger().begin_tick("orchestrator", "pruner", Duration::from_secs(300), at).await.unwrap() {
            orchestrator::store::Begun::Held { tick_id, .. } => tick_id,
            orchestrator::store::Begun::HeldByOther(row) => panic!("lease held by {}", row.owner),
        }
    };
    let old = open_tick(days(30)).await;
    let kept = open_tick(days(5)).await;
    let fresh = open_tick(now).await;
    let fence = Fence { lease_name: "orchestrator".into(), epoch: term.epoch, tick_id: None };
    let rec = DecideRecord {
        decisions: vec![decision(old, days(30)), decision(kept, days(5)), decision(fresh, now)],
        cooldowns: vec![("r".into(), "alert".into(), "old".into()), ("r".into(), "alert".into(), "new".into())],
        ..Default::default()
    };
    db.store.decisions().record_decide(&fence, &rec).await.unwrap();
    db.store
        .execute_unprepared("UPDATE rule_cooldowns SET applied_at = '2000-01-01 00:00:00+00:00' WHERE target = 'old'")
        .await
        .unwrap();

    // Decisions are kept for 1 day, the ledger for 14: the 5-day-old tick keeps its decisions.
    let mut config = db.config();
    config.ledger_retention_days = 14;
    config.decisions_retention_days = 1;
    config.cooldown_retention_days = 1;
    let pruned = orchestrator::services::pruner::prune_history(&db.store, &config, orchestrator::store::Pace::FLAT_OUT)
        .await
        .unwrap();
    assert_eq!((pruned.ledger, pruned.decisions, pruned.cooldowns), (1, 1, 1), "{pruned:?}");
    assert!(db.store.ledger().tick(old).await.unwrap().is_none());
    for id in [kept, fresh] {
        let e = orchestrator::explain::explain(&db.store, id).await.unwrap().expect("tick still in the ledger");
        assert_eq!(e.decisions.len(), 1, "tick {id} keeps the decisions explain shows");
    }
    let cooldowns = db.store.decisions().cooldowns_since(days(1)).await.unwrap();
    assert_eq!(cooldowns.len(), 1, "{cooldowns:?}");

    // A cutoff in the future for decisions never goes past the ledger's.
    let cut = PruneCutoffs { ledger: days(10), decisions: now + chrono::Duration::days(1), cooldowns: days(1) };
    let pruned = db.store.history().prune_history(cut, 100, orchestrator::store::Pace::FLAT_OUT).await.unwrap();
    assert_eq!(pruned.total(), 0, "{pruned:?}");

    // `actions purge` prunes history too.
    let o = run(bin(db.dir.path()).args(["--database-url", &db.url, "--json", "actions", "purge"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(json_out(&o)["history"], json!({"ledger": 0, "decisions": 0, "cooldowns": 0}));
}

/// Rows seeded in one statement: old enough for any retention.
const OLD_ROWS: i64 = 1_000_000;

async fn a_million_old_ledger_rows_are_pruned_while_the_daemon_ticks(db: &TestDb) {
    let seed = Instant::now();
    let sql = match db.store.backend() {
        orchestrator::store::Backend::Sqlite => format!(
            "INSERT INTO tick_ledger (started_at, finished_at, status, owner, epoch, actions_attempted, \
             actions_succeeded) WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {OLD_ROWS}) \
             SELECT '2000-01-01 00:00:00+00:00', '2000-01-01 00:00:01+00:00', 'IDLE', 'old', 1, 0, 0 FROM n"
        ),
        orchestrator::store::Backend::Postgres => format!(
            "INSERT INTO tick_ledger (started_at, finished_at, status, owner, epoch, actions_attempted, \
             actions_succeeded) SELECT TIMESTAMPTZ '2000-01-01 00:00:00+00', TIMESTAMPTZ '2000-01-01 00:00:01+00', \
             'IDLE', 'old', 1, 0, 0 FROM generate_series(1, {OLD_ROWS})"
        ),
    };
    assert_eq!(db.store.execute_unprepared(&sql).await.unwrap(), OLD_ROWS as u64);
    let seeded_in = seed.elapsed();

    let mut config = db.config();
    config.tick_interval = Duration::from_millis(50);
    let engine = db.engine(config);
    for _ in 0..30 {
        ran(&engine).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last_before = ran(&engine).await.tick_id;

    // The daemon's first tick starts the hourly purge in the background; it goes on ticking.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let daemon_engine = engine.clone();
    let daemon = tokio::spawn(async move { orchestrator::runtime::daemon::run(&daemon_engine, None, stopped).await });
    let start = Instant::now();
    while db.store.ledger().tick(OLD_ROWS).await.unwrap().is_some() {
        assert!(start.elapsed() < Duration::from_secs(600), "the purge did not finish in 10 minutes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pruned_in = start.elapsed();
    // The same daemon goes on ticking once the purge is done: the baseline for "during" (ticks
    // run by hand before it are not run the way the daemon runs them).
    let last_during = db.store.ledger().recent_ticks(1).await.unwrap()[0].id;
    while db.store.ledger().recent_ticks(1).await.unwrap()[0].id < last_during + 60 {
        assert!(start.elapsed() < Duration::from_secs(900), "the daemon stopped ticking after the purge");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(true).unwrap();
    let summary = daemon.await.unwrap();
    assert!(db.store.ledger().tick(1).await.unwrap().is_none(), "every old row is gone");

    // Tick time as the ledger records it (finished - started), before and while the purge ran.
    let ms = |t: &orchestrator::model::TickRow| {
        t.finished_at.map(|f| (f - t.started_at).num_microseconds().unwrap_or(0) as f64 / 1000.0)
    };
    let ticks = db.store.ledger().recent_ticks(100_000).await.unwrap();
    let before: Vec<f64> = ticks.iter().filter(|t| t.id > OLD_ROWS && t.id <= last_before).filter_map(ms).collect();
    let during: Vec<f64> = ticks.iter().filter(|t| t.id > last_before && t.id <= last_during).filter_map(ms).collect();
    let after: Vec<f64> = ticks.iter().filter(|t| t.id > last_during).filter_map(ms).collect();
    assert!(during.len() >= 5, "the daemon kept ticking while the purge ran: {} ticks", during.len());
    let stats = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        format!("median {:.2} ms, p95 {:.2} ms, max {:.2} ms (n={})", at(0.5), at(0.95), at(1.0), v.len())
    };
    eprintln!(
        "{:?}: seeded {OLD_ROWS} old ledger rows in {seeded_in:.1?}; pruned them in {pruned_in:.1?} while the daemon ran \
         {} ticks\n  tick time by hand before: {}\n  daemon's tick time during: {}\n  daemon's tick time after:  {}",
        db.store.backend(),
        summary.ticks,
        stats(&before),
        stats(&during),
        stats(&after)
    );
}

#[test]
fn log_lines_are_coloured_only_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = format!("sqlite:{}", d.join("o.db").display());
    let args = ["--database-url", url.as_str(), "run", "--ticks", "1", "--no-http", "--interval", "0"];
    let o = run(bin(d).args(args));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("orchestrator running"), "{}", stderr(&o));
    assert!(!stderr(&o).contains('\x1b'), "a pipe gets no colour codes: {:?}", stderr(&o));
    let o = run(bin(d).args(["--log-format", "json"]).args(args));
    assert!(!stderr(&o).contains('\x1b'), "JSON is never coloured");

    // On a terminal (script(1) gives the command one): colour, unless NO_COLOR says otherwise.
    if std::process::Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: script(1) (util-linux) is not installed, so the terminal half did not run");
        return;
    }
    let tty = |e: Option<(&str, &str)>, j: bool| -> String {
        let mut line = format!("{} --database-url {url}", env!("CARGO_BIN_EXE_orchestrator"));
        if j {
            line.push_str(" --log-format json");
        }
        line.push_str(" run --ticks 1 --no-http --interval 0");
        let mut cmd = std::process::Command::new("script");
        cmd.current_dir(d).env_remove("NO_COLOR").env_remove("RUST_LOG").env("TERM", "xterm");
        // As `bin` does: no ORCHESTRATOR_* of the test's own environment reaches the daemon.
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("ORCHESTRATOR_")) {
            cmd.env_remove(k);
        }
        if let Some((k, v)) = e {
            cmd.env(k, v);
        }
        let o = run(cmd.args(["-qec", &line, "/dev/null"]));
        format!("{}{}", stdout(&o), stderr(&o))
    };
    let coloured = tty(None, false);
    assert!(coloured.contains("orchestrator running") && coloured.contains("\x1b["), "{coloured:?}");
    let plain = tty(Some(("NO_COLOR", "1")), false);
    assert!(plain.contains("orchestrator running") && !plain.contains("\x1b["), "NO_COLOR is honoured: {plain:?}");
    let json = tty(None, true);
    assert!(json.contains("orchestrator running") && !json.contains("\x1b["), "JSON on a terminal: {json:?}");
}

#[test]
fn completions_and_the_man_page_are_generated() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for shell in ["bash", "zsh", "fish"] {
        let o = run(bin(d).args(["completions", shell]));
        assert_eq!(o.status.code(), Some(0), "{shell}: {}", stderr(&o));
        let text = stdout(&o);
        assert!(text.contains("orchestrator") && text.contains("summary") && text.contains("--follow"), "{shell}");
        let file = d.join(format!("orchestrator.{shell}"));
        std::fs::write(&file, &text).unwrap();
        if shell == "bash" {
            let check = run(std::process::Command::new("bash").arg("-n").arg(&file));
            assert!(check.status.success(), "bash -n refuses the completion script: {}", stderr(&check));
        }
    }
    let o = run(bin(d).args(["manpage"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let man = stdout(&o);
    assert!(man.starts_with(".ie") || man.contains(".TH orchestrator"), "{}", &man[..man.len().min(200)]);
    assert!(man.contains("completions") && man.contains("manpage"), "the subcommands are listed");
    // A broken config file does not stop them: they need neither it nor a database.
    std::fs::write(d.join("orchestrator.yaml"), "max_atempts: 3\n").unwrap();
    assert_eq!(run(bin(d).args(["completions", "bash"])).status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftover_tmp_artifacts_are_removed_at_start_and_counted() {
    let db = TestDb::sqlite().await;
    let config = db.config();
    let sub = config.artifacts_dir.join("proof_social");
    std::fs::create_dir_all(&sub).unwrap();
    let (old, fresh) = (sub.join(".tmp-00000000000000aa"), sub.join(".tmp-00000000000000bb"));
    for p in [&old, &fresh] {
        std::fs::write(p, b"half a proof").unwrap();
    }
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    std::fs::File::options().write(true).open(&old).unwrap().set_modified(two_hours_ago).unwrap();
    let engine = db.engine(config);
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    orchestrator::runtime::daemon::run(&engine, Some(1), stopped).await;
    assert!(!old.exists(), "an hour-old .tmp-* file is a leftover: removed");
    assert!(fresh.exists(), "a young one may be a write in flight: kept");
    let metrics = engine.metrics().render();
    assert!(metrics.contains("orchestrator_artifact_tmp_removed_total 1"), "{metrics}");
    assert!(metrics.contains("orchestrator_instance_lease_held 0"), "released on the way out: {metrics}");
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_and_explain_routes_validate_and_need_the_token() {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    let db = TestDb::sqlite().await;
    let mut config = db.config();
    config.admin_tokens = AdminTokens::parse("tester:0123456789abcdef-bulk").unwrap();
    let st = orchestrator::http::AppState::new(db.engine(config), false);
    let call = |method: &str, uri: &str, auth: bool, body: &str| {
        let mut r = Request::builder().method(method).uri(uri);
        if auth {
            r = r.header("authorization", "Bearer 0123456789abcdef-bulk");
        }
        let body = if body.is_empty() { Body::empty() } else { Body::from(body.to_string()) };
        let res = orchestrator::http::router(st.clone()).oneshot(r.body(body).unwrap());
        async move {
            let res = res.await.unwrap();
            let status = res.status().as_u16();
            let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
            (status, serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null))
        }
    };
    let dead = enqueue(&db, "X", "dead", 0).await;
    to_dlq(&db, &[dead]).await;
    for (uri, body, status, error) in [
        ("/api/dlq/requeue", r#"{"ids": []}"#, 400, "give at least one action id"),
        ("/api/dlq/requeue", r#"{"ids": [-1]}"#, 400, "positive integers"),
        ("/api/dlq/cancel", r#"{"ids": [1], "all": true}"#, 400, "unknown field `all`"),
        ("/api/dlq/cancel", r#"{"ids": "1"}"#, 400, "body field `ids`"),
    ] {
        let (got, v) = call("POST", uri, true, body).await;
        assert_eq!(got, status, "{uri} {body}: {v}");
        assert!(v["error"].as_str().unwrap_or_default().contains(error), "{uri} {body}: {v}");
    }
    let (got, _) = call("POST", "/api/dlq/cancel", false, &format!(r#"{{"ids": [{dead}]}}"#)).await;
    assert_eq!(got, 401, "writes need the token");
    let (got, v) = call("POST", "/api/dlq/cancel", true, &format!(r#"{{"ids": [{dead}, 424242]}}"#)).await;
    assert_eq!((got, v.clone()), (200, json!({"cancelled": [dead], "skipped": [424242]})));
    let (got, _) = call("GET", "/api/ticks/1/explain", false, "").await;
    assert_eq!(got, 401, "explain shows a snapshot: it needs the token");
    let (got, v) = call("GET", "/api/ticks/77/explain", true, "").await;
    assert_eq!(got, 404, "{v}");
    let (got, v) = call("GET", "/api/ticks/x/explain", true, "").await;
    assert_eq!(got, 400, "{v}");
    let r = ran(&db.engine(db.config())).await;
    let (got, v) = call("GET", &format!("/api/ticks/{}/explain", r.tick_id), true, "").await;
    assert_eq!((got, v["tick"]["id"].as_i64()), (200, Some(r.tick_id)), "{v}");
    let (got, v) = call("GET", "/api/summary", true, "").await;
    assert_eq!((got, v["by_type_status"][0]["status"].as_str()), (200, Some("CANCELLED")), "{v}");
    db.cleanup().await;
}

/// `status --json` says `liveness`; `health`, the old name, carries the same value for one
/// release (docs/upgrading.md), whatever the verdict.
async fn status_json_names_liveness_and_keeps_health_for_a_release(db: &TestDb) {
    let status = || run(bin(db.dir.path()).args(["--database-url", &db.url, "--json", "status"]));
    let o = status();
    assert_eq!(o.status.code(), Some(4), "unhealthy: {}", stderr(&o));
    let s = json_out(&o);
    assert_eq!((s["liveness"].as_str(), s["health"].as_str()), (Some("unhealthy"), Some("unhealthy")), "{s}");
    assert_eq!(s["reasons"], json!(["no tick recorded yet", "no instance holds a live lease"]), "the worst first: {s}");
    assert!(s["workload"]["score"].is_i64(), "the workload score is its own field: {s}");

    // A tick, then no live lease (run-once releases it): degraded in `status`.
    let o = run(bin(db.dir.path()).args(["--database-url", &db.url, "run-once"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = status();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let s = json_out(&o);
    assert_eq!((s["liveness"].as_str(), s["health"].as_str()), (Some("degraded"), Some("degraded")), "{s}");
    assert_eq!(s["reasons"], json!(["no instance holds a live lease"]), "{s}");
    let text = stdout(&run(bin(db.dir.path()).args(["--database-url", &db.url, "status"])));
    assert!(text.contains("liveness: degraded"), "{text}");
}
