//! Maintenance windows (issue 25, part 2), on SQLite and PostgreSQL: a window holds the actions
//! it matches while the others flow past them (the plain claim and the limited pick), the dry
//! run picks what the claim picks, a payload-field matcher holds only its value, a recurring
//! window opens and closes with the store's shifted clock in its time zone, a held action's
//! deadline still sends it to the DLQ, and the CLI and `/api/windows` round trips refuse bad
//! input by name.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::StatusCode;
use chrono::{DateTime, Timelike, Utc};
use orchestrator::model::Clock;
use orchestrator::queue;
use orchestrator::store::{Claimer, Store, WindowEnd};
use orchestrator::windows::{Matcher, Recurrence, WindowSpec};
use serde_json::{Value, json};

use crate::backend_tests;
use crate::support::TestDb;
use crate::support::api::{admin, call, config, state};
use crate::support::limits::{action, enqueue, spec, types};
use crate::support::{bin, json, run, stderr, stdout};

backend_tests!(
    a_window_holds_webhook_while_noop_flows,
    the_limited_pick_leaves_held_rows_out,
    a_payload_field_matcher_holds_only_its_value,
    a_recurring_window_opens_and_closes_with_the_clock,
    a_held_action_still_expires_to_the_dlq,
    the_cli_adds_lists_and_ends_windows,
    the_api_adds_lists_and_ends_windows,
    a_deploy_window_holds_webhook_across_ticks_and_the_tick_says_so,
    a_breaker_rule_opens_a_capped_window_fenced,
    another_process_s_window_holds_from_the_next_claim,
    the_config_s_recurring_windows_are_written_and_replaced,
    run_writes_the_config_s_windows_at_start,
    work_a_window_holds_is_not_saturation,
    work_a_window_holds_is_not_counted_as_held_back_by_a_limit,
);

async fn claimer(store: &Store) -> Claimer {
    crate::support::worker(store, "w", Duration::from_secs(30)).await
}

fn window(types: &[&str], field: Option<(&str, &str)>, starts_at: DateTime<Utc>, lasts: Duration) -> WindowSpec {
    WindowSpec {
        matcher: Matcher {
            types: types.iter().map(|t| t.to_string()).collect(),
            field: field.map(|(p, v)| orchestrator::windows::field_match(p, v).unwrap()),
        },
        starts_at,
        ends_at: Some(orchestrator::model::later(starts_at, lasts).unwrap()),
        recurrence: None,
        reason: "deploy".into(),
        opened_by: "test".into(),
    }
}

async fn a_window_holds_webhook_while_noop_flows(db: &TestDb) {
    // WEBHOOK first in claim order: a held backlog ahead of NOOP must not block it.
    enqueue(&db.store, "WEBHOOK", 5, 10, |i| json!({"i": i})).await;
    enqueue(&db.store, "NOOP", 5, 0, |i| json!({"i": i})).await;
    let w =
        db.store.windows().add(&window(&["WEBHOOK"], None, db.store.now(), Duration::from_secs(1800))).await.unwrap();
    assert_eq!(db.store.windows().open_now().await.unwrap().len(), 1);
    let c = claimer(&db.store).await;
    let preview = db.store.actions().pick(&c, 3, None).await.unwrap();
    assert!(preview.iter().all(|a| a.action_type == "NOOP"), "the dry run picks what the claim picks: {preview:?}");
    let got = db.store.actions().claim(&c, 3).await.unwrap();
    assert_eq!(types(&got), BTreeMap::from([("NOOP".into(), 3)]));
    assert_eq!(preview.iter().map(|a| a.id).collect::<Vec<_>>(), got.iter().map(|c| c.action.id).collect::<Vec<_>>());
    let got = db.store.actions().claim(&c, 10).await.unwrap();
    assert_eq!(types(&got), BTreeMap::from([("NOOP".into(), 2)]), "NOOP drains; WEBHOOK waits");
    assert!(matches!(db.store.windows().end(w.id).await.unwrap(), WindowEnd::Ended(_)));
    assert!(matches!(db.store.windows().end(w.id).await.unwrap(), WindowEnd::AlreadyOver(_)));
    assert_eq!(db.store.windows().end(w.id + 100).await.unwrap(), WindowEnd::NotFound);
    let got = db.store.actions().claim(&c, 10).await.unwrap();
    assert_eq!(types(&got), BTreeMap::from([("WEBHOOK".into(), 5)]), "ended: WEBHOOK is claimed again");
    // Waiting in a window is not an attempt.
    assert!(got.iter().all(|c| c.attempt == 1));
}

async fn the_limited_pick_leaves_held_rows_out(db: &TestDb) {
    db.store.limits().set_limit("WEBHOOK", &spec("{max_running: '1', partition_by: payload.partner}")).await.unwrap();
    enqueue(&db.store, "WEBHOOK", 6, 10, |i| json!({"partner": format!("p{}", i % 3)})).await;
    enqueue(&db.store, "NOOP", 4, 0, |i| json!({"i": i})).await;
    let held = window(&["WEBHOOK"], Some(("payload.partner", "p0")), db.store.now(), Duration::from_secs(600));
    db.store.windows().add(&held).await.unwrap();
    let c = claimer(&db.store).await;
    let preview = db.store.actions().pick(&c, 20, None).await.unwrap();
    let got = db.store.actions().claim(&c, 20).await.unwrap();
    assert_eq!(
        preview.iter().map(|a| a.id).collect::<Vec<_>>(),
        got.iter().map(|c| c.action.id).collect::<Vec<_>>(),
        "the dry run picks what the limited claim picks"
    );
    let partners: Vec<&str> =
        got.iter().filter_map(|c| c.action.payload.get("partner").and_then(Value::as_str)).collect();
    assert_eq!(types(&got), BTreeMap::from([("NOOP".into(), 4), ("WEBHOOK".into(), 2)]), "{partners:?}");
    assert!(!partners.contains(&"p0"), "p0 is held: {partners:?}");
}

async fn a_payload_field_matcher_holds_only_its_value(db: &TestDb) {
    // A value with a quote, a backslash and a placeholder-looking text is matched as itself.
    for (i, partner) in ["o'brien \\' {n} $1", "acme", "o'brien \\' {n} $1"].iter().enumerate() {
        let a = action("WEBHOOK", &format!("k{i}"), 0, json!({"partner": partner}));
        queue::enqueue(&db.store, &a, 3).await.unwrap();
    }
    queue::enqueue(&db.store, &action("WEBHOOK", "num", 0, json!({"partner": 7})), 3).await.unwrap();
    let spec =
        window(&["WEBHOOK"], Some(("payload.partner", "o'brien \\' {n} $1")), db.store.now(), Duration::from_secs(60));
    db.store.windows().add(&spec).await.unwrap();
    let seven = window(&["WEBHOOK"], Some(("payload.partner", "7")), db.store.now(), Duration::from_secs(60));
    db.store.windows().add(&seven).await.unwrap();
    let got = db.store.actions().claim(&claimer(&db.store).await, 10).await.unwrap();
    let partners: Vec<Value> = got.iter().map(|c| c.action.payload["partner"].clone()).collect();
    assert_eq!(partners, vec![json!("acme")], "a number is matched by its text, like partition_by");
}

/// `t` moved forward to the next `minute` past an hour.
fn at_minute(t: DateTime<Utc>, minute: u32) -> chrono::Duration {
    let base = t.with_minute(minute).unwrap().with_second(0).unwrap().with_nanosecond(0).unwrap();
    let target = if base > t { base } else { base + chrono::Duration::hours(1) };
    target - t
}

async fn a_recurring_window_opens_and_closes_with_the_clock(db: &TestDb) {
    enqueue(&db.store, "WEBHOOK", 3, 0, |i| json!({"i": i})).await;
    enqueue(&db.store, "NOOP", 30, 0, |i| json!({"i": i})).await;
    let clock = Clock::shifted();
    let shifted = db.store.clone().with_clock(clock.clone());
    // Open for 20 minutes from each hour's :00, read in Madrid (an hour is an hour in any zone;
    // the zone is parsed and carried).
    let every = Recurrence::parse("0 * * * *", Duration::from_secs(1200), "Europe/Madrid").unwrap();
    let start = db.store.now() - chrono::Duration::days(1);
    let spec =
        WindowSpec { ends_at: None, recurrence: Some(every), ..window(&["WEBHOOK"], None, start, Duration::ZERO) };
    db.store.windows().add(&spec).await.unwrap();
    // :05 past an hour: open.
    clock.advance(at_minute(shifted.now(), 5));
    // Registered on the shifted clock after each move, so its heartbeat is live by it.
    let c = crate::support::worker(&shifted, "w5", Duration::from_secs(30)).await;
    let got = shifted.actions().claim(&c, 2).await.unwrap();
    assert_eq!(types(&got), BTreeMap::from([("NOOP".into(), 2)]), "open at {}", shifted.now());
    assert_eq!(shifted.windows().open_now().await.unwrap().len(), 1);
    // :25: closed until the next hour.
    clock.advance(at_minute(shifted.now(), 25));
    let c = crate::support::worker(&shifted, "w25", Duration::from_secs(30)).await;
    let got = shifted.actions().claim(&c, 2).await.unwrap();
    assert_eq!(types(&got).get("WEBHOOK"), Some(&2), "closed at {}: {:?}", shifted.now(), types(&got));
    assert!(shifted.windows().open_now().await.unwrap().is_empty());
    // The next hour's :01: open again.
    clock.advance(at_minute(shifted.now(), 1));
    let c = crate::support::worker(&shifted, "w61", Duration::from_secs(30)).await;
    let got = shifted.actions().claim(&c, 5).await.unwrap();
    assert_eq!(types(&got), BTreeMap::from([("NOOP".into(), 5)]), "open again at {}", shifted.now());
}

async fn a_held_action_still_expires_to_the_dlq(db: &TestDb) {
    let mut a = action("WEBHOOK", "deadline", 0, json!({}));
    a.expires_at = Some(db.store.now() + chrono::Duration::minutes(10));
    let id = queue::enqueue(&db.store, &a, 3).await.unwrap().id;
    db.store.windows().add(&window(&["WEBHOOK"], None, db.store.now(), Duration::from_secs(7200))).await.unwrap();
    let clock = Clock::shifted();
    let shifted = db.store.clone().with_clock(clock.clone());
    let term = crate::support::hold(&shifted, "me").await;
    assert!(shifted.actions().claim(&claimer(&shifted).await, 5).await.unwrap().is_empty());
    clock.advance(chrono::Duration::minutes(11));
    let expired = shifted.actions().expire_due(&term.lease_name, term.epoch, None).await.unwrap();
    assert_eq!(expired, vec![id], "the window holds it; its deadline still applies");
    let row = db.store.actions().action(id).await.unwrap().unwrap();
    assert_eq!(row.status.as_str(), "DLQ");
}

fn orch(db: &TestDb, args: &[&str]) -> std::process::Output {
    run(bin(db.dir.path()).arg("--database-url").arg(&db.url).args(args))
}

async fn the_cli_adds_lists_and_ends_windows(db: &TestDb) {
    let o = orch(db, &["windows", "add", "--type", "WEBHOOK", "--for", "30m", "--reason", "deploy", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let w = json(&o);
    assert_eq!((w["open"].clone(), w["matcher"]["types"].clone()), (json!(true), json!(["WEBHOOK"])));
    let id = w["id"].as_i64().unwrap();
    // A tick that only the window holds says so, and `status` prints its notes under it.
    assert_eq!(orch(db, &["enqueue", "WEBHOOK", "--payload", r#"{"target":"hook"}"#]).status.code(), Some(0));
    assert_eq!(orch(db, &["run-once"]).status.code(), Some(0));
    let status = stdout(&orch(db, &["status"]));
    assert!(status.contains("THROTTLED") && status.contains("held by windows: window"), "{status}");
    let o = orch(
        db,
        &[
            "windows",
            "add",
            "--type",
            "POST_SOCIAL",
            "--field",
            "payload.partner=acme",
            "--cron",
            "0 2 * * SUN",
            "--duration",
            "2h",
            "--tz",
            "Europe/Madrid",
            "--reason",
            "weekly",
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r = json(&o);
    assert_eq!(r["recurrence"], json!({"cron": "0 2 * * SUN", "duration_seconds": 7200, "time_zone": "Europe/Madrid"}));
    assert_eq!(r["matcher"]["field"], json!({"path": "payload.partner", "value": "acme"}));
    let list = json(&orch(db, &["windows", "list", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 2);
    let o = orch(db, &["windows", "end", &id.to_string(), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(json(&orch(db, &["windows", "list", "--json"])).as_array().unwrap().len(), 1);
    assert_eq!(json(&orch(db, &["windows", "list", "--all", "--json"])).as_array().unwrap().len(), 2);
    let o = orch(db, &["windows", "end", &id.to_string()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("already over"), "{}", stderr(&o));
    // Bad input, refused by name before anything is written.
    for (args, named) in [
        (vec!["--type", "WEBHOOK", "--cron", "0 2 * *", "--duration", "1h", "--reason", "x"], "cron"),
        (
            vec!["--type", "WEBHOOK", "--cron", "0 2 * * *", "--duration", "1h", "--tz", "Mars/Base", "--reason", "x"],
            "--tz",
        ),
        (vec!["--type", "bad type", "--for", "1h", "--reason", "x"], "--type"),
        (vec!["--type", "WEBHOOK", "--field", "partner=acme", "--for", "1h", "--reason", "x"], "--field"),
        (vec!["--type", "WEBHOOK", "--reason", "x"], "--until"),
        (vec!["--type", "WEBHOOK", "--for", "1h", "--reason", " "], "--reason"),
        (vec!["--type", "WEBHOOK", "--from", "yesterday", "--for", "1h", "--reason", "x"], "--from"),
    ] {
        let mut all = vec!["windows", "add"];
        all.extend(args.iter());
        let o = orch(db, &all);
        assert_eq!(o.status.code(), Some(2), "{all:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(named), "{all:?} should name {named}: {}", stderr(&o));
    }
    assert_eq!(json(&orch(db, &["windows", "list", "--all", "--json"])).as_array().unwrap().len(), 2);
}

async fn the_api_adds_lists_and_ends_windows(db: &TestDb) {
    let engine = db.engine(config(db, true));
    let st = state(&engine);
    let body = r#"{"types": ["WEBHOOK"], "for": "30m", "reason": "deploy"}"#;
    assert_eq!(call(&st, "POST", "/api/windows", None, Some(body)).await.status, StatusCode::UNAUTHORIZED);
    let a = admin(&st, "POST", "/api/windows", Some(body)).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let w = a.json();
    assert_eq!(w["opened_by"], "api:tester");
    let id = w["id"].as_i64().unwrap();
    let list = admin(&st, "GET", "/api/windows", None).await.json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    for (body, named) in [
        (r#"{"types": [], "for": "1h", "reason": "x"}"#, "`types`"),
        (r#"{"types": ["WEBHOOK"], "cron": "0 2 * *", "duration": "1h", "reason": "x"}"#, "`cron`"),
        (
            r#"{"types": ["WEBHOOK"], "cron": "0 2 * * *", "duration": "1h", "time_zone": "Nowhere", "reason": "x"}"#,
            "`time_zone`",
        ),
        (r#"{"types": ["WEBHOOK"], "field": "payload.p", "for": "1h", "reason": "x"}"#, "`value`"),
        (r#"{"types": ["WEBHOOK"], "for": "1h", "reason": "x", "extra": 1}"#, "extra"),
        (r#"{"types": ["WEBHOOK"], "reason": "x"}"#, "needs an end"),
    ] {
        let a = admin(&st, "POST", "/api/windows", Some(body)).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {}", a.body);
        assert!(a.error().contains(named), "{body} should name {named}: {}", a.error());
    }
    let a = admin(&st, "POST", &format!("/api/windows/{id}/end"), None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(admin(&st, "POST", &format!("/api/windows/{id}/end"), None).await.status, StatusCode::CONFLICT);
    assert_eq!(admin(&st, "POST", "/api/windows/999/end", None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(admin(&st, "GET", "/api/windows?all=true", None).await.json().as_array().unwrap().len(), 1);
    assert_eq!(admin(&st, "GET", "/api/windows", None).await.json().as_array().unwrap().len(), 0);
}

/// The deploy window, ticked by the real Engine with the shipped rules: NOOP keeps flowing
/// while WEBHOOK (ahead of it in claim order) waits; the tick left with only held work says so
/// (`THROTTLED`, `held by windows: ...`) and is work-conserving.
async fn a_deploy_window_holds_webhook_across_ticks_and_the_tick_says_so(db: &TestDb) {
    use orchestrator::model::TickStatus;
    enqueue(&db.store, "WEBHOOK", 4, 5, |i| json!({"i": i})).await;
    enqueue(&db.store, "NOOP", 150, 0, |i| json!({"i": i})).await;
    let w =
        db.store.windows().add(&window(&["WEBHOOK"], None, db.store.now(), Duration::from_secs(1800))).await.unwrap();
    let mut config = db.config();
    config.rules_dir = crate::support::fixtures::shipped_rules();
    let engine = db.engine(config);
    engine.decider().load_rules().unwrap();
    let first = crate::support::ran(&engine).await;
    crate::support::fixtures::assert_conserving(&first);
    assert_eq!(first.attempted, 100, "a full tick of NOOP: {first:?}");
    let second = crate::support::ran(&engine).await;
    crate::support::fixtures::assert_conserving(&second);
    assert_eq!(second.attempted, 50, "the rest of the NOOP: {second:?}");
    let held = crate::support::ran(&engine).await;
    crate::support::fixtures::assert_conserving(&held);
    assert_eq!((held.status, held.attempted), (TickStatus::Throttled, 0), "{held:?}");
    let note = format!("held by windows: window {} WEBHOOK (4 waiting)", w.id);
    assert!(held.notes.contains(&note), "{}", held.notes);
    assert!(!held.notes.contains("held by limits"), "{}", held.notes);
}

/// A breaker: a rule that sees no open window (`snap.windows`) opens one holding WEBHOOK for
/// 30 minutes. The tick applies it (fenced) before it executes, so WEBHOOK waits and NOOP runs;
/// the next tick sees the window and opens no other. A deposed holder's window is refused.
async fn a_breaker_rule_opens_a_capped_window_fenced(db: &TestDb) {
    let rules = db.dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("breaker.rhai"),
        "if snap.windows.len() == 0 && snap.queue.pending > 0 { [open_window(\"WEBHOOK\", 1800, \"peer down\")] } else { [] }",
    )
    .unwrap();
    enqueue(&db.store, "WEBHOOK", 2, 5, |i| json!({"i": i})).await;
    enqueue(&db.store, "NOOP", 3, 0, |i| json!({"i": i})).await;
    let mut config = db.config();
    config.rules_dir = rules;
    let engine = db.engine(config);
    assert_eq!(engine.decider().load_rules().unwrap(), 1);
    let first = crate::support::ran(&engine).await;
    assert_eq!(first.attempted, 3, "NOOP runs, WEBHOOK waits: {first:?}");
    assert!(first.notes.contains("open_window window:WEBHOOK for 1800s"), "{}", first.notes);
    let open = db.store.windows().open_now().await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].spec.opened_by, "rule breaker");
    assert_eq!(open[0].spec.reason, "peer down");
    let lasts = open[0].spec.ends_at.unwrap() - open[0].spec.starts_at;
    assert_eq!(lasts.num_seconds(), 1800);
    let second = crate::support::ran(&engine).await;
    assert!(second.notes.contains("held by windows"), "{}", second.notes);
    assert_eq!(db.store.windows().list(true).await.unwrap().len(), 1, "the rule saw its window in snap.windows");
    let snap = second.snapshot.as_ref().unwrap();
    assert_eq!(snap.windows.len(), 1);
    assert_eq!(snap.windows[0].types, vec!["WEBHOOK".to_string()]);
    // Fenced: a window from an epoch that no longer holds the lease is refused.
    let stale = orchestrator::store::Fence { lease_name: "orchestrator".into(), epoch: 999_999, tick_id: None };
    let spec = window(&["NOOP"], None, db.store.now(), Duration::from_secs(60));
    let refused = db.store.windows().add_fenced(&stale, &spec).await;
    assert!(matches!(refused, Err(orchestrator::store::StoreError::Refused(_))), "{refused:?}");
    assert_eq!(db.store.windows().list(true).await.unwrap().len(), 1);
}

/// A claimer in another process (its own pool, its own cache of windows) sees a window opened
/// or ended elsewhere at its next claim, and one that closes by time as soon as it closes.
async fn another_process_s_window_holds_from_the_next_claim(db: &TestDb) {
    enqueue(&db.store, "WEBHOOK", 20, 5, |i| json!({"i": i})).await;
    let other = db.another_store().await;
    let clock = Clock::shifted();
    let other = other.with_clock(clock.clone());
    let c = claimer(&other).await;
    assert_eq!(types(&other.actions().claim(&c, 1).await.unwrap()), BTreeMap::from([("WEBHOOK".into(), 1)]));
    let w = db.store.windows().add(&window(&["WEBHOOK"], None, db.store.now(), Duration::from_secs(60))).await.unwrap();
    assert!(other.actions().claim(&c, 1).await.unwrap().is_empty(), "opened elsewhere: held at the next claim");
    assert!(other.actions().claim(&c, 1).await.unwrap().is_empty(), "and at the one after (cached)");
    db.store.windows().end(w.id).await.unwrap();
    assert_eq!(other.actions().claim(&c, 1).await.unwrap().len(), 1, "ended elsewhere: claimed at the next claim");
    db.store.windows().add(&window(&["WEBHOOK"], None, db.store.now(), Duration::from_secs(60))).await.unwrap();
    assert!(other.actions().claim(&c, 1).await.unwrap().is_empty());
    // Past its end by the claimer's clock: claimed again, with nothing written.
    clock.advance(chrono::Duration::seconds(61));
    let c = crate::support::worker(&other, "w-later", Duration::from_secs(30)).await;
    assert_eq!(other.actions().claim(&c, 1).await.unwrap().len(), 1, "closed by time");
    other.close().await.ok();
}

/// The claim's cost with windows, for BENCHMARKS.md (ignored: a figure, not a check): 300
/// claims of one from 3,000 NOOP, with no window, then with 1,000 defined (500 one-off ones
/// open on WEBHOOK, 10 of them on a payload field, and 500 recurring ones on POST_SOCIAL, shut).
/// `cargo nextest run --run-ignored only --no-capture -E 'test(/claim_cost_with_windows/)'`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn claim_cost_with_windows() {
    for backend in ["sqlite", "postgres"] {
        let db = match backend {
            "sqlite" => TestDb::sqlite().await,
            _ => match TestDb::postgres().await {
                Some(d) => d,
                None => continue,
            },
        };
        enqueue(&db.store, "NOOP", 3000, 0, |i| json!({"i": i})).await;
        let c = claimer(&db.store).await;
        let per_claim = || async {
            let t = std::time::Instant::now();
            for _ in 0..300 {
                db.store.actions().claim(&c, 1).await.unwrap();
            }
            t.elapsed().as_secs_f64() * 1e6 / 300.0
        };
        let none = per_claim().await;
        let now = db.store.now();
        for i in 0..500 {
            let mut spec = window(&["WEBHOOK"], None, now, Duration::from_secs(3600));
            if i % 50 == 0 {
                spec.matcher.field = Some(orchestrator::windows::field_match("payload.p", &format!("v{i}")).unwrap());
            }
            db.store.windows().add(&spec).await.unwrap();
            let every = Recurrence::parse("0 2 * * *", Duration::from_secs(600), "Europe/Madrid").unwrap();
            let spec = WindowSpec {
                ends_at: None,
                recurrence: Some(every),
                ..window(&["POST_SOCIAL"], None, now, Duration::ZERO)
            };
            db.store.windows().add(&spec).await.unwrap();
        }
        let many = per_claim().await;
        eprintln!("{backend}: {none:.0} µs per claim without windows, {many:.0} µs with 1,000 (500 open)");
        db.cleanup().await;
    }
}

fn config_from(db: &TestDb, yaml: &str) -> Result<orchestrator::config::Config, String> {
    let path = db.dir.path().join("windows.yaml");
    std::fs::write(&path, yaml).unwrap();
    let none = |_: &str| None;
    orchestrator::config::Config::load_from(orchestrator::config::Inputs {
        config_file: Some(&path),
        env: &none,
        env_names: &[],
        overrides: Default::default(),
    })
    .map_err(|e| e.to_string())
}

/// `windows:` in the config: checked by name when read; written by `run` at start as windows
/// opened by `config <name>`, kept when unchanged, replaced when changed, ended when gone.
async fn the_config_s_recurring_windows_are_written_and_replaced(db: &TestDb) {
    let yaml = "windows:\n  deploys:\n    types: [WEBHOOK]\n    cron: \"0 2 * * SUN\"\n    duration_seconds: 7200\n    \
                time_zone: Europe/Madrid\n    reason: weekly\n";
    let config = config_from(db, yaml).unwrap();
    assert_eq!(db.store.windows().replace_config(&config.windows).await.unwrap(), (1, 0));
    let first = db.store.windows().list(false).await.unwrap();
    assert_eq!((first.len(), first[0].spec.opened_by.as_str()), (1, "config deploys"));
    assert_eq!(first[0].spec.recurrence.as_ref().unwrap().cron(), "0 2 * * SUN");
    assert_eq!(db.store.windows().replace_config(&config.windows).await.unwrap(), (0, 0), "unchanged: kept");
    let changed = config_from(db, &yaml.replace("weekly", "weekly, longer")).unwrap();
    assert_eq!(db.store.windows().replace_config(&changed.windows).await.unwrap(), (1, 1), "changed: replaced");
    let none = config_from(db, "tick_interval_seconds: 5\n").unwrap();
    assert_eq!(db.store.windows().replace_config(&none.windows).await.unwrap(), (0, 1), "gone: ended");
    assert!(db.store.windows().list(false).await.unwrap().is_empty());
    // An operator's window is never the config's to end.
    db.store.windows().add(&window(&["NOOP"], None, db.store.now(), Duration::from_secs(60))).await.unwrap();
    assert_eq!(db.store.windows().replace_config(&none.windows).await.unwrap(), (0, 0));
    for (bad, named) in [
        (yaml.replace("0 2 * * SUN", "0 2 * *"), "windows.deploys"),
        (yaml.replace("Europe/Madrid", "Mars/Base"), "time_zone"),
        (yaml.replace("[WEBHOOK]", "[\"bad type\"]"), "windows.deploys"),
        (yaml.replace("    reason: weekly\n", ""), "reason"),
        (yaml.replace("cron:", "crn:"), "crn"),
    ] {
        let e = config_from(db, &bad).unwrap_err();
        assert!(e.contains(named), "{bad} should name {named}: {e}");
    }
}

/// `orchestrator run` writes its config's windows before its first tick.
async fn run_writes_the_config_s_windows_at_start(db: &TestDb) {
    let yaml = "tick_interval_seconds: 1\nwindows:\n  nightly:\n    types: [WEBHOOK]\n    cron: \"0 2 * * *\"\n    \
                duration_seconds: 3600\n    reason: nightly backups\n";
    std::fs::write(db.dir.path().join("o.yaml"), yaml).unwrap();
    let _daemon = crate::support::process::Server(crate::support::daemon::spawn(db, &["run", "--no-http"]));
    let start = std::time::Instant::now();
    let found = loop {
        let list = db.store.windows().list(false).await.unwrap();
        if !list.is_empty() {
            break list;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "run never wrote the config's window");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(found[0].spec.opened_by, "config nightly");
    assert_eq!(found[0].spec.reason, "nightly backups");
}

/// 60 WEBHOOK pending (over the default 50 of `saturated_pending`): saturation, until a window
/// holds them; then the tick's snapshot and `status` count only what is free to run.
async fn work_a_window_holds_is_not_saturation(db: &TestDb) {
    enqueue(&db.store, "WEBHOOK", 60, 0, |i| json!({"i": i})).await;
    let saturated = |reasons: &str| reasons.contains("queue saturated");
    let status = || json(&orch(db, &["--json", "status"]))["workload"]["reasons"].to_string();
    assert!(saturated(&status()), "{}", status());
    let w =
        db.store.windows().add(&window(&["WEBHOOK"], None, db.store.now(), Duration::from_secs(1800))).await.unwrap();
    assert!(!saturated(&status()), "held by the window: {}", status());
    let engine = db.engine(db.config());
    let held = crate::support::ran(&engine).await;
    let health = &held.snapshot.as_ref().unwrap().health;
    assert!(!health.reasons.iter().any(|r| saturated(r)), "{health:?}");
    assert_eq!(held.attempted, 0);
    db.store.windows().end(w.id).await.unwrap();
    assert!(saturated(&status()), "ended: {}", status());
}

/// A type at its `max_running` with due work counts each claim that held it back; while a window
/// holds that work, the limit holds nothing back and the counter stays.
async fn work_a_window_holds_is_not_counted_as_held_back_by_a_limit(db: &TestDb) {
    db.store.limits().set_limit("WEBHOOK", &spec("{max_running: '1'}")).await.unwrap();
    enqueue(&db.store, "WEBHOOK", 3, 0, |i| json!({"i": i})).await;
    let c = claimer(&db.store).await;
    assert_eq!(db.store.actions().claim(&c, 10).await.unwrap().len(), 1, "one runs; max_running holds the rest");
    let blocked = || async {
        let usage = db.store.limits().limit_usage().await.unwrap();
        usage.iter().find(|u| u.action_type == "WEBHOOK").map(|u| u.blocked_running).unwrap()
    };
    let before = blocked().await;
    assert!(db.store.actions().claim(&c, 10).await.unwrap().is_empty());
    assert_eq!(blocked().await, before + 1, "the full limit held back due work");
    db.store.windows().add(&window(&["WEBHOOK"], None, db.store.now(), Duration::from_secs(600))).await.unwrap();
    assert!(db.store.actions().claim(&c, 10).await.unwrap().is_empty());
    assert_eq!(blocked().await, before + 1, "the window holds it, not the limit");
}
