//! Where an operator sees and steers the per-type limits (issue 14): `orchestrator limits
//! list|set|clear|override` through the real binary, `/api/limits` through the router (the
//! token, and a 400 naming the field of each bad body), `status` and `/status`, and the four
//! limit metrics on `/metrics`, on SQLite and PostgreSQL. Ending one override early
//! (`store.limits().clear_limit_override`, `limits override TYPE FIELD --end`, `DELETE
//! /api/limits/TYPE/override/FIELD`) lets the claims it held back flow.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};

use orchestrator::limits::LimitSource;
use orchestrator::limits::{LimitField, LimitValue};
use orchestrator::store::{Claimer, Store, StoreError};

use crate::backend_tests;
use crate::support::api::{BEARER, admin, call, config, get, sample, state};
use crate::support::limits::{enqueue, spec};
use crate::support::{TestDb, bin, json, run, stderr, stdout};

backend_tests!(
    the_cli_sets_lists_overrides_and_clears_limits,
    the_api_sets_lists_overrides_and_clears_limits,
    the_api_refuses_bad_limit_bodies_naming_the_field,
    metrics_and_status_show_each_limited_type,
    ending_one_override_lets_the_claims_it_held_flow,
    the_cli_ends_one_override,
    the_api_ends_one_override,
    an_override_set_while_the_last_one_ends_is_kept,
);

fn orch(db: &TestDb, args: &[&str]) -> std::process::Output {
    run(bin(db.dir.path()).arg("--database-url").arg(&db.url).args(args))
}

/// Runs a command that must succeed and prints JSON; returns it.
fn ok_json(db: &TestDb, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let o = orch(db, &all);
    assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
    json(&o)
}

async fn the_cli_sets_lists_overrides_and_clears_limits(db: &TestDb) {
    assert_eq!(ok_json(db, &["limits", "list"]), json!([]));
    assert!(stdout(&orch(db, &["limits", "list"])).contains("no limits set"));

    let l = ok_json(db, &["limits", "set", "POST_SOCIAL", "--max-running", "2", "--rate", "300/1h"]);
    assert_eq!(
        l["base"],
        json!({"max_running": 2, "rate": "300/1h", "daily_budget": null, "partition_by": null, "allowed_hours": null})
    );
    assert_eq!(l["source"], "operator");
    // `set` merges: the fields not given keep their value.
    let l = ok_json(db, &["limits", "set", "POST_SOCIAL", "--daily-budget", "2000"]);
    assert_eq!(
        l["base"],
        json!({"max_running": 2, "rate": "300/1h", "daily_budget": 2000, "partition_by": null, "allowed_hours": null})
    );

    let before = db.store.db_now().await.unwrap();
    let l = ok_json(
        db,
        &["limits", "override", "POST_SOCIAL", "max_running", "1", "--for", "10m", "--reason", "partner asked"],
    );
    assert_eq!((l["base"]["max_running"].as_u64(), l["effective"]["max_running"].as_u64()), (Some(2), Some(1)));
    let o = &l["overrides"][0];
    assert_eq!(
        (o["field"].as_str(), o["value"].as_str(), o["set_by"].as_str()),
        (Some("max_running"), Some("1"), Some("operator"))
    );
    assert_eq!(o["reason"], "partner asked");
    let until: chrono::DateTime<chrono::Utc> = o["expires_at"].as_str().unwrap().parse().unwrap();
    let lasts = (until - before).num_seconds();
    assert!((595..=605).contains(&lasts), "expires in 10 minutes: {lasts}s");

    enqueue(&db.store, "POST_SOCIAL", 2, 0, |i| json!({"platform": "x", "content": i, "audience": "all"})).await;
    let list = ok_json(db, &["limits", "list"]);
    let u = &list[0];
    assert_eq!(u["action_type"], "POST_SOCIAL");
    assert_eq!((u["running"].as_u64(), u["waiting"].as_u64()), (Some(0), Some(2)));
    assert_eq!(
        (u["running_remaining"].as_u64(), u["rate_remaining"].as_u64(), u["budget_remaining"].as_u64()),
        (Some(1), Some(300), Some(2000))
    );
    let text = stdout(&orch(db, &["limits", "list"]));
    for needle in
        ["POST_SOCIAL", " 1* ", "300/1h", "2000", "operator", "override max_running = 1 until", "partner asked"]
    {
        assert!(text.contains(needle), "{needle:?} in\n{text}");
    }

    // status shows the type, as text and as JSON (exit 4: no tick has run, so unhealthy).
    let o = orch(db, &["status", "--json"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let s = json(&o);
    assert_eq!(s["limits"][0]["action_type"], "POST_SOCIAL");
    assert_eq!(s["limits"][0]["waiting"].as_u64(), Some(2));
    let text = stdout(&orch(db, &["status"]));
    assert!(
        text.contains(
            "limits:  POST_SOCIAL: running 0/1, waiting 2, rate 300/300 left per 1h, budget 2000/2000 left today"
        ),
        "{text}"
    );
    assert!(text.contains("override max_running = 1 until"), "{text}");

    // clear TYPE FIELD removes one field of the base; never the last one.
    let l = ok_json(db, &["limits", "clear", "POST_SOCIAL", "rate"]);
    assert_eq!(
        l["base"],
        json!({"max_running": 2, "rate": null, "daily_budget": 2000, "partition_by": null, "allowed_hours": null})
    );
    assert_eq!(l["overrides"].as_array().unwrap().len(), 1, "the override stays");
    ok_json(db, &["limits", "clear", "POST_SOCIAL", "max_running"]);
    let o = orch(db, &["limits", "clear", "POST_SOCIAL", "daily_budget"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("would leave POST_SOCIAL with no limit"), "{}", stderr(&o));
    let o = orch(db, &["limits", "clear", "POST_SOCIAL", "rate"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("POST_SOCIAL has no base rate"), "{}", stderr(&o));
    let o = orch(db, &["limits", "clear", "NOPE", "rate"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("NOPE has no limits"), "{}", stderr(&o));

    // clear TYPE removes the limits and the overrides.
    assert_eq!(
        ok_json(db, &["limits", "clear", "POST_SOCIAL"]),
        json!({"action_type": "POST_SOCIAL", "cleared": true})
    );
    assert_eq!(ok_json(db, &["limits", "clear", "POST_SOCIAL"])["cleared"], false);
    assert_eq!(ok_json(db, &["limits", "list"]), json!([]));
    assert!(db.store.limits().list().await.unwrap().is_empty());

    // An override on a type with no limits gives it one until it lapses.
    let l = ok_json(db, &["limits", "override", "COMMAND", "rate", "5/1m", "--for", "1h", "--reason", "slow down"]);
    assert_eq!((l["source"].as_str(), l["effective"]["rate"].as_str()), (Some("override"), Some("5/1m")));
}

#[test]
fn the_cli_refuses_bad_limit_input_with_the_usage_code() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: &[(&[&str], &str)] = &[
        (&["limits", "set", "X", "--rate", "300"], "rate '300' has no '/'"),
        (&["limits", "set", "X", "--rate", "0/1h"], "must allow 1 to"),
        (&["limits", "set", "X", "--max-running", "-1"], "max_running -1 must be from 0"),
        (&["limits", "set", "X", "--daily-budget", "lots"], "daily_budget 'lots' is not a whole number"),
        (&["limits", "set", "X", "--partition-by", "partner"], "is not a payload path"),
        (&["limits", "set", "X"], "required arguments were not provided"),
        (&["limits", "set", "bad type!", "--max-running", "1"], "contains ' '"),
        (&["limits", "set", "X", "--partition-by", "payload.p"], "X would have no limit"),
        (&["limits", "clear", "X", "max"], "invalid value 'max'"),
        (&["limits", "override", "X", "max", "1", "--for", "1m", "--reason", "r"], "'max' is not a limit field"),
        (&["limits", "override", "X", "rate", "5", "--for", "1m", "--reason", "r"], "VALUE: rate '5' has no '/'"),
        (&["limits", "override", "X", "max_running", "-2", "--for", "1m", "--reason", "r"], "max_running -2 must be"),
        (&["limits", "override", "X", "max_running", "1", "--for", "0s", "--reason", "r"], "from 1s to 30 days"),
        (&["limits", "override", "X", "max_running", "1", "--for", "31d", "--reason", "r"], "from 1s to 30 days"),
        (&["limits", "override", "X", "max_running", "1", "--for", "1m", "--reason", " "], "reason must be 1 to 500"),
        (&["limits", "override", "X", "max_running", "1", "--reason", "r"], "--for <DURATION>"),
        (&["limits", "override", "X", "max_running"], "<FIELD> --end"),
        (&["limits", "override", "X", "max_running", "1", "--end"], "'[VALUE]' cannot be used with '--end'"),
        (&["limits", "override", "X", "max_running", "--end", "--for", "1m"], "cannot be used with '--for"),
        (&["limits", "override", "X", "max_running", "--end", "--reason", "r"], "cannot be used with '--reason"),
        (&["limits", "override", "X", "max", "--end"], "'max' is not a limit field"),
        (&["limits", "override", "bad type!", "rate", "--end"], "contains ' '"),
    ];
    for (args, needle) in cases {
        let o = run(bin(d).args(*args));
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: expected {needle:?} in {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    let o = run(bin(d).args(["limits", "list", "--json"]));
    assert_eq!(json(&o), json!([]), "nothing was written");
}

async fn the_api_sets_lists_overrides_and_clears_limits(db: &TestDb) {
    let engine = db.engine(config(db, true));
    let st = state(&engine);
    assert_eq!(admin(&st, "GET", "/api/limits", None).await.json(), json!([]));

    let body = r#"{"max_running": 10, "rate": "50/1s", "partition_by": "payload.partner"}"#;
    let a = admin(&st, "PUT", "/api/limits/WEBHOOK", Some(body)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let l = a.json();
    assert_eq!(
        l["base"],
        json!({"max_running": 10, "rate": "50/1s", "daily_budget": null, "partition_by": "payload.partner", "allowed_hours": null})
    );
    assert_eq!(l["source"], "operator");
    // PUT replaces the base: what the body leaves out is no longer limited.
    let l = admin(&st, "PUT", "/api/limits/WEBHOOK", Some(r#"{"daily_budget": 100}"#)).await.json();
    assert_eq!(
        l["base"],
        json!({"max_running": null, "rate": null, "daily_budget": 100, "partition_by": null, "allowed_hours": null})
    );
    let stored = db.store.limits().list().await.unwrap();
    assert_eq!(stored[0].base, spec("daily_budget: '100'"));

    let over = r#"{"field": "max_running", "value": 0, "seconds": 60, "reason": "partner down"}"#;
    let a = admin(&st, "POST", "/api/limits/WEBHOOK/override", Some(over)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let l = a.json();
    assert_eq!(l["effective"]["max_running"].as_u64(), Some(0));
    assert_eq!(l["overrides"][0]["set_by"], "operator:tester", "the token's name says who");
    let over = r#"{"field": "rate", "value": "5/1m", "seconds": 60, "reason": "easy"}"#;
    let l = admin(&st, "POST", "/api/limits/WEBHOOK/override", Some(over)).await.json();
    assert_eq!(l["effective"]["rate"], "5/1m");

    enqueue(&db.store, "WEBHOOK", 3, 0, |i| json!({"partner": "acme", "i": i})).await;
    let list = admin(&st, "GET", "/api/limits", None).await.json();
    assert_eq!(list[0]["action_type"], "WEBHOOK");
    assert_eq!(list[0]["limit"]["overrides"].as_array().unwrap().len(), 2);
    assert_eq!((list[0]["waiting"].as_u64(), list[0]["running_remaining"].as_u64()), (Some(3), Some(0)));

    let a = admin(&st, "DELETE", "/api/limits/WEBHOOK", None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.json(), json!({"action_type": "WEBHOOK", "cleared": true}));
    assert!(db.store.limits().list().await.unwrap().is_empty());
    let a = admin(&st, "DELETE", "/api/limits/WEBHOOK", None).await;
    assert_eq!((a.status, a.error().as_str()), (StatusCode::NOT_FOUND, "no limits for WEBHOOK"));
}

async fn the_api_refuses_bad_limit_bodies_naming_the_field(db: &TestDb) {
    let st = state(&db.engine(config(db, true)));
    let routes = [
        ("GET", "/api/limits", None),
        ("PUT", "/api/limits/NOOP", Some(r#"{"max_running": 1}"#)),
        ("DELETE", "/api/limits/NOOP", None),
        (
            "POST",
            "/api/limits/NOOP/override",
            Some(r#"{"field": "rate", "value": "1/1s", "seconds": 9, "reason": "r"}"#),
        ),
        ("DELETE", "/api/limits/NOOP/override/rate", None),
    ];
    let disabled = state(&db.engine(config(db, false)));
    for (method, uri, body) in routes {
        let a = call(&st, method, uri, None, body).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{method} {uri}: {}", a.body);
        let a = call(&st, method, uri, Some("Bearer 0123456789abcdef-tesT"), body).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{method} {uri}: {}", a.body);
        let a = call(&disabled, method, uri, Some(BEARER), body).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{method} {uri}: {}", a.body);
    }
    assert!(db.store.limits().list().await.unwrap().is_empty(), "nothing was written without the token");

    let puts: &[(&str, &str)] = &[
        (r#"{"max_running": -1}"#, "body field `max_running`: max_running -1 must be from 0 to"),
        (r#"{"max_running": "2"}"#, "body field `max_running`: invalid type"),
        (r#"{"max_running": 1.5}"#, "body field `max_running`"),
        (r#"{"daily_budget": 2000000000}"#, "body field `daily_budget`: daily_budget 2000000000 must be from 0 to"),
        (r#"{"rate": "300"}"#, "body field `rate`: rate '300' has no '/'"),
        (r#"{"rate": "3/2d"}"#, "body field `rate`"),
        (
            r#"{"max_running": 1, "partition_by": "partner"}"#,
            "body field `partition_by`: partition_by 'partner' is not a payload path",
        ),
        (r#"{"partition_by": "payload.p"}"#, "body: names no limit"),
        ("{}", "body: names no limit"),
        (r#"{"max": 1}"#, "unknown field `max`"),
        ("[1]", "body: expected a JSON object, got an array"),
        ("", "expected a JSON object"),
    ];
    for (body, needle) in puts {
        let a = admin(&st, "PUT", "/api/limits/NOOP", Some(body)).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {}", a.body);
        assert!(a.error().contains(needle), "{body}: expected {needle:?} in {}", a.body);
    }
    let a = admin(&st, "PUT", "/api/limits/bad%20type", Some(r#"{"max_running": 1}"#)).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    assert!(a.error().starts_with("path: action type"), "{}", a.body);

    let overrides: &[(&str, &str)] = &[
        (
            r#"{"field": "max", "value": 1, "seconds": 60, "reason": "r"}"#,
            "body field `field`: 'max' is not a limit field",
        ),
        (
            r#"{"field": "max_running", "value": true, "seconds": 60, "reason": "r"}"#,
            "body field `value`: expected a whole number",
        ),
        (
            r#"{"field": "max_running", "value": -1, "seconds": 60, "reason": "r"}"#,
            "body field `value`: max_running -1",
        ),
        (r#"{"field": "rate", "value": 5, "seconds": 60, "reason": "r"}"#, "body field `value`: rate '5' has no '/'"),
        (
            r#"{"field": "rate", "value": "5/1m", "seconds": 0, "reason": "r"}"#,
            "body field `seconds`: an override lasts from 1s",
        ),
        (r#"{"field": "rate", "value": "5/1m", "seconds": -5, "reason": "r"}"#, "body field `seconds`"),
        (
            r#"{"field": "rate", "value": "5/1m", "seconds": 60, "reason": ""}"#,
            "body field `reason`: the reason must be",
        ),
        (r#"{"field": "rate", "value": "5/1m", "seconds": 60}"#, "missing field `reason`"),
        (r#"{"field": "rate", "value": "5/1m", "seconds": 60, "reason": "r", "by": "me"}"#, "unknown field `by`"),
    ];
    for (body, needle) in overrides {
        let a = admin(&st, "POST", "/api/limits/NOOP/override", Some(body)).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {}", a.body);
        assert!(a.error().contains(needle), "{body}: expected {needle:?} in {}", a.body);
    }
    assert!(db.store.limits().list().await.unwrap().is_empty(), "no bad body wrote anything");
}

async fn metrics_and_status_show_each_limited_type(db: &TestDb) {
    let st = state(&db.engine(config(db, true)));
    let m = get(&st, "/metrics").await.body;
    assert!(
        !m.contains("orchestrator_limit_") && !m.contains("orchestrator_budget_remaining"),
        "no limits, no series: {m}"
    );

    db.store.limits().set_limit("SLOW", &spec("{max_running: '1', daily_budget: '5'}")).await.unwrap();
    db.store.limits().set_limit("COMMAND", &spec("max_running: '1'")).await.unwrap();
    enqueue(&db.store, "SLOW", 3, 0, |i| json!({"i": i})).await;
    let w = crate::support::worker(&db.store, "w", Duration::from_secs(30)).await;
    assert_eq!(db.store.actions().claim(&w, 3).await.unwrap().len(), 1, "max_running 1");
    assert!(db.store.actions().claim(&w, 3).await.unwrap().is_empty(), "still full");

    let m = get(&st, "/metrics").await.body;
    assert_eq!(sample(&m, "orchestrator_limit_running{type=\"SLOW\"}"), 1.0);
    assert_eq!(sample(&m, "orchestrator_limit_waiting{type=\"SLOW\"}"), 2.0);
    assert_eq!(sample(&m, "orchestrator_budget_remaining{type=\"SLOW\"}"), 4.0);
    assert!(sample(&m, "orchestrator_limit_blocked_total{limit=\"max_running\",type=\"SLOW\"}") >= 1.0, "{m}");
    assert_eq!(sample(&m, "orchestrator_limit_blocked_total{limit=\"daily_budget\",type=\"SLOW\"}"), 0.0);
    assert_eq!(sample(&m, "orchestrator_limit_running{type=\"COMMAND\"}"), 0.0);
    assert!(!m.contains("orchestrator_budget_remaining{type=\"COMMAND\"}"), "no budget, no gauge: {m}");
    assert!(m.contains("# TYPE orchestrator_limit_blocked_total counter"), "{m}");
    if crate::support::daemon::promtool().is_some() {
        let out = crate::support::daemon::promtool_ok(&["check", "metrics"], Some(&m));
        assert!(out.trim().is_empty(), "promtool check metrics reports nothing: {out}");
    }

    let s = call(&st, "GET", "/status", Some(BEARER), None).await;
    assert_eq!(s.status, StatusCode::OK, "{}", s.body);
    let limits = s.json()["limits"].clone();
    let slow = limits.as_array().unwrap().iter().find(|u| u["action_type"] == "SLOW").unwrap().clone();
    assert_eq!((slow["running"].as_u64(), slow["waiting"].as_u64()), (Some(1), Some(2)));
    assert_eq!(slow["limit"]["effective"]["max_running"].as_u64(), Some(1));
    assert!(slow["blocked_running"].as_u64().unwrap() >= 1, "{slow}");
    assert_eq!(limits.as_array().unwrap().len(), 2);
}

/// Claims `n` of whatever is due and returns how many it got.
async fn claimed(store: &Store, w: &Claimer, n: u64) -> usize {
    store.actions().claim(w, n).await.unwrap().len()
}

/// An override for ten minutes, as a rule's `set_limit` or an operator writes it.
async fn narrow(store: &Store, t: &str, field: LimitField, value: LimitValue, set_by: &str) {
    let until = store.db_now().await.unwrap() + chrono::Duration::minutes(10);
    store.limits().set_limit_override(None, t, field, value, until, "breaker open", set_by).await.unwrap();
}

async fn ending_one_override_lets_the_claims_it_held_flow(db: &TestDb) {
    let s = &db.store;
    let w = crate::support::worker(s, "w", Duration::from_secs(30)).await;
    s.limits().set_limit("SLOW", &spec("{max_running: '2', daily_budget: '100'}")).await.unwrap();
    narrow(s, "SLOW", LimitField::MaxRunning, LimitValue::Count(0), "rule platform_breaker").await;
    narrow(s, "SLOW", LimitField::DailyBudget, LimitValue::Count(50), "operator").await;
    enqueue(s, "SLOW", 3, 0, |i| json!({"i": i})).await;
    assert_eq!(claimed(s, &w, 3).await, 0, "the override holds the type");

    // Ending one override leaves the base and the other override as they were.
    assert!(s.limits().clear_limit_override("SLOW", LimitField::MaxRunning).await.unwrap());
    let l = s.limits().list().await.unwrap();
    assert_eq!(l.len(), 1);
    assert_eq!(
        (l[0].source, l[0].base.clone()),
        (LimitSource::Operator, spec("{max_running: '2', daily_budget: '100'}"))
    );
    assert_eq!(l[0].effective, spec("{max_running: '2', daily_budget: '50'}"));
    assert_eq!(l[0].overrides.iter().map(|o| o.field).collect::<Vec<_>>(), [LimitField::DailyBudget]);
    assert_eq!(claimed(s, &w, 3).await, 2, "the base max_running holds again");
    assert!(!s.limits().clear_limit_override("SLOW", LimitField::MaxRunning).await.unwrap(), "nothing left to end");
    assert!(!s.limits().clear_limit_override("SLOW", LimitField::Rate).await.unwrap(), "never overridden");

    // A type with only overrides keeps its row while one is in force, and loses it with the last.
    narrow(s, "COMMAND", LimitField::MaxRunning, LimitValue::Count(0), "rule platform_breaker").await;
    narrow(s, "COMMAND", LimitField::Rate, LimitValue::Rate("5/1m".parse().unwrap()), "operator").await;
    enqueue(s, "COMMAND", 2, 0, |i| json!({"i": i})).await;
    assert_eq!(claimed(s, &w, 2).await, 0);
    assert!(s.limits().clear_limit_override("COMMAND", LimitField::MaxRunning).await.unwrap());
    let command = |l: Vec<orchestrator::limits::TypeLimit>| l.into_iter().find(|l| l.action_type == "COMMAND");
    let c = command(s.limits().list().await.unwrap()).expect("the rate override keeps the row");
    assert_eq!((c.source, c.overrides.len()), (LimitSource::Override, 1));
    assert!(s.limits().clear_limit_override("COMMAND", LimitField::Rate).await.unwrap());
    assert!(command(s.limits().list().await.unwrap()).is_none(), "no empty type left behind");
    assert!(s.limits().limit_usage().await.unwrap().iter().all(|u| u.action_type != "COMMAND"));
    assert_eq!(claimed(s, &w, 2).await, 2, "unlimited now");

    // An override past its expiry is not in force: there is nothing to end, and an override-only
    // type whose last override lapsed goes with it.
    let past = s.db_now().await.unwrap() - chrono::Duration::seconds(5);
    s.limits()
        .set_limit_override(None, "GONE", LimitField::MaxRunning, LimitValue::Count(0), past, "old", "operator")
        .await
        .unwrap();
    assert!(!s.limits().clear_limit_override("GONE", LimitField::MaxRunning).await.unwrap());
    assert!(s.limits().list().await.unwrap().iter().all(|l| l.action_type != "GONE"));

    // A type that is not a checked name is the caller's fault.
    let e = s.limits().clear_limit_override("bad type", LimitField::Rate).await.unwrap_err();
    assert!(matches!(e, StoreError::Invalid(_)), "{e}");
}

async fn the_cli_ends_one_override(db: &TestDb) {
    let w = crate::support::worker(&db.store, "w", Duration::from_secs(30)).await;
    ok_json(db, &["limits", "set", "POST_SOCIAL", "--max-running", "2"]);
    ok_json(db, &["limits", "override", "POST_SOCIAL", "max_running", "0", "--for", "1h", "--reason", "outage"]);
    enqueue(&db.store, "POST_SOCIAL", 3, 0, |i| json!({"platform": "x", "content": i, "audience": "all"})).await;
    assert_eq!(claimed(&db.store, &w, 3).await, 0, "held by the override");

    let e = ok_json(db, &["limits", "override", "POST_SOCIAL", "max_running", "--end"]);
    assert_eq!(
        (e["action_type"].as_str(), e["field"].as_str(), e["ended"].as_bool()),
        (Some("POST_SOCIAL"), Some("max_running"), Some(true))
    );
    assert_eq!(e["limit"]["effective"]["max_running"].as_u64(), Some(2));
    assert_eq!(e["limit"]["overrides"], json!([]));
    assert_eq!(claimed(&db.store, &w, 3).await, 2, "the base holds again");

    // Nothing in force to end is said, not failed (a script may end what just lapsed).
    let e = ok_json(db, &["limits", "override", "POST_SOCIAL", "max_running", "--end"]);
    assert_eq!(e["ended"], false);
    let o = orch(db, &["limits", "override", "POST_SOCIAL", "rate", "--end"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("POST_SOCIAL has no rate override in force; nothing ended"), "{}", stdout(&o));

    // Text: what was ended and what the type now has; an override-only type is gone.
    ok_json(db, &["limits", "override", "POST_SOCIAL", "rate", "1/1h", "--for", "1h", "--reason", "slow"]);
    let o = orch(db, &["limits", "override", "POST_SOCIAL", "rate", "--end"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("ended the rate override of POST_SOCIAL: max_running 2"), "{}", stdout(&o));
    ok_json(db, &["limits", "override", "COMMAND", "max_running", "0", "--for", "1h", "--reason", "outage"]);
    let o = orch(db, &["limits", "override", "COMMAND", "max_running", "--end"]);
    assert!(stdout(&o).contains("ended the max_running override of COMMAND; it has no limits now"), "{}", stdout(&o));
    let list = ok_json(db, &["limits", "list"]);
    assert_eq!(
        list.as_array().map(|l| l.iter().map(|u| u["action_type"].clone()).collect::<Vec<_>>()),
        Some(vec![json!("POST_SOCIAL")])
    );
}

async fn the_api_ends_one_override(db: &TestDb) {
    let st = state(&db.engine(config(db, true)));
    let w = crate::support::worker(&db.store, "w", Duration::from_secs(30)).await;
    admin(&st, "PUT", "/api/limits/WEBHOOK", Some(r#"{"max_running": 2}"#)).await;
    let over = r#"{"field": "max_running", "value": 0, "seconds": 600, "reason": "partner down"}"#;
    let a = admin(&st, "POST", "/api/limits/WEBHOOK/override", Some(over)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    enqueue(&db.store, "WEBHOOK", 3, 0, |i| json!({"i": i})).await;
    assert_eq!(claimed(&db.store, &w, 3).await, 0, "held by the override");

    let a = admin(&st, "DELETE", "/api/limits/WEBHOOK/override/max_running", None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let e = a.json();
    assert_eq!(
        (e["action_type"].as_str(), e["field"].as_str(), e["ended"].as_bool()),
        (Some("WEBHOOK"), Some("max_running"), Some(true))
    );
    assert_eq!(
        (e["limit"]["effective"]["max_running"].as_u64(), e["limit"]["overrides"].clone()),
        (Some(2), json!([]))
    );
    assert_eq!(claimed(&db.store, &w, 3).await, 2, "the base holds again");

    let a = admin(&st, "DELETE", "/api/limits/WEBHOOK/override/max_running", None).await;
    assert_eq!((a.status, a.error().as_str()), (StatusCode::NOT_FOUND, "no max_running override of WEBHOOK in force"));
    let a = admin(&st, "DELETE", "/api/limits/NOPE/override/rate", None).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.body);
    let a = admin(&st, "DELETE", "/api/limits/WEBHOOK/override/max", None).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    assert!(a.error().starts_with("path: 'max' is not a limit field"), "{}", a.body);
    let a = admin(&st, "DELETE", "/api/limits/bad%20type/override/rate", None).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    assert!(a.error().starts_with("path: action type"), "{}", a.body);

    // An override-only type's last override takes the type with it: `limit` is null.
    let over = r#"{"field": "rate", "value": "1/1h", "seconds": 600, "reason": "slow"}"#;
    admin(&st, "POST", "/api/limits/COMMAND/override", Some(over)).await;
    let e = admin(&st, "DELETE", "/api/limits/COMMAND/override/rate", None).await.json();
    assert_eq!((e["ended"].as_bool(), e["limit"].clone()), (Some(true), Value::Null));
    let list = admin(&st, "GET", "/api/limits", None).await.json();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "only WEBHOOK: {list}");
}

/// A rule sets an override of a type that has only overrides while an operator ends its last
/// one: the new override must keep the type's row (the override is read through it), whichever
/// commits first. On PostgreSQL both lock the row; on SQLite writes take turns anyway.
async fn an_override_set_while_the_last_one_ends_is_kept(db: &TestDb) {
    let s = &db.store;
    for round in 0..40 {
        s.limits().clear_limit("RACE").await.unwrap();
        narrow(s, "RACE", LimitField::MaxRunning, LimitValue::Count(0), "operator").await;
        let rate = LimitValue::Rate("5/1m".parse().unwrap());
        let (ended, ()) = tokio::join!(s.limits().clear_limit_override("RACE", LimitField::MaxRunning), async {
            narrow(s, "RACE", LimitField::Rate, rate, "rule platform_breaker").await;
        });
        assert!(ended.unwrap(), "round {round}");
        let l = s.limits().list().await.unwrap().into_iter().find(|l| l.action_type == "RACE");
        let fields = l.map(|l| l.overrides.iter().map(|o| o.field).collect::<Vec<_>>());
        assert_eq!(fields, Some(vec![LimitField::Rate]), "round {round}: the rule's override is in force");
    }
}
