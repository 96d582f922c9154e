//! The HTTP router through `tower::ServiceExt::oneshot` (no socket), on SQLite and PostgreSQL:
//! every endpoint, and every error the admin API can answer.

use axum::http::StatusCode;
use orchestrator::model::{ActionStatus, TickStatus};
use orchestrator::queue;
use orchestrator::rules::RuleSet;
use orchestrator::store::FlagChange;
use orchestrator::tick::Engine;

use crate::backend_tests;
use crate::support::TestDb;
use crate::support::api::{BEARER, admin, call, config, get, sample, state};
use crate::support::noop;
use crate::support::ran;

backend_tests!(
    read_endpoints_show_the_database,
    health_turns_503_for_each_reason,
    admin_api_refuses_without_a_valid_token,
    admin_api_changes_state_and_validates_input,
    database_loss_is_503_not_a_panic,
    decisions_are_listed_and_shown_on_status,
    enforced_proof_mode_refuses_proof_off_and_says_so,
);

async fn read_endpoints_show_the_database(db: &TestDb) {
    let engine = db.engine(config(db, false));
    let st = state(&engine);

    let page = get(&st, "/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("<title>orchestrator</title>") && !page.body.contains("http://cdn"), "self-contained");
    assert!(page.headers["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));

    assert_eq!(get(&st, "/health/live").await.json()["status"], "live");
    let ready = get(&st, "/health/ready").await;
    assert_eq!((ready.status, ready.json()["status"].as_str()), (StatusCode::OK, Some("ready")));

    let h = get(&st, "/health").await;
    assert_eq!(h.status, StatusCode::SERVICE_UNAVAILABLE, "no tick yet: {}", h.body);
    assert!(h.json()["reasons"].to_string().contains("no tick recorded yet"), "{}", h.body);

    let mut social = noop("a");
    social.action_type = "POST_SOCIAL".into();
    social.payload = serde_json::json!({"platform": "mastodon", "content": "hi", "audience": "all"});
    queue::enqueue(&db.store, &social, 3).await.unwrap();
    let mut bad = noop("dead");
    bad.action_type = "TELEPORT".into();
    let dead = queue::enqueue(&db.store, &bad, 3).await.unwrap().id;
    let r = ran(&engine).await;
    assert_eq!(r.status, TickStatus::Partial);
    queue::enqueue(&db.store, &noop("b"), 3).await.unwrap();

    let h = get(&st, "/health").await;
    assert_eq!(h.status, StatusCode::OK, "{}", h.body);
    // A DLQ row and a PARTIAL tick are workload facts (counted by the score and the metrics
    // below), not liveness: the process that ran the tick works. They used to degrade /health.
    assert_eq!(h.json()["status"], "healthy", "neither the DLQ row nor the PARTIAL tick degrades: {}", h.body);

    let s = get(&st, "/status").await;
    assert_eq!(s.status, StatusCode::OK);
    let s = s.json();
    assert_eq!(s["mode"], "PROOF");
    assert_eq!(s["flags"]["paused"], false);
    assert_eq!(s["lease"]["owner"], engine.lease().owner());
    assert_eq!(s["lease"]["live"], true);
    assert_eq!(s["queue"]["PENDING"].as_i64(), Some(1));
    assert!(s["queue"].get("SUCCESS").is_none(), "open statuses only: {}", s["queue"]);
    assert_eq!(s["finished_last_24h"]["SUCCESS"].as_i64(), Some(1), "{}", s["finished_last_24h"]);
    assert_eq!(s["ticks"].as_array().unwrap().len(), 1);
    assert_eq!(s["ticks"][0]["id"].as_i64(), Some(r.tick_id));
    assert_eq!(s["last_tick"]["id"].as_i64(), Some(r.tick_id));
    assert_eq!(s["logs"].as_array().unwrap().len(), 2);
    let shas: Vec<&str> = s["logs"].as_array().unwrap().iter().filter_map(|l| l["artifact_sha256"].as_str()).collect();
    assert_eq!(shas.len(), 1, "the proof artifact's sha256 is listed: {}", s["logs"]);
    assert_eq!(shas[0].len(), 64);
    assert_eq!(s["dlq"][0]["id"].as_i64(), Some(dead));
    assert_eq!(s["dlq"][0]["last_error"], "no adapter for action type TELEPORT");
    assert!(s["dlq"][0].get("payload").is_none(), "the page's DLQ rows carry no payload");
    assert_eq!(s["server"]["admin_api"], false);
    // Liveness, under its name and under the old one for a release: healthy (the DLQ row is the
    // workload's: see `workload` below). It used to be degraded by the DLQ row.
    assert_eq!((s["liveness"].as_str(), s["health"].as_str()), (Some("healthy"), Some("healthy")), "{s}");
    assert_eq!(s["workload"]["score"].as_i64(), Some(90), "{}", s["workload"]);

    assert_eq!(get(&st, "/status?ticks=0").await.status, StatusCode::BAD_REQUEST);
    let e = get(&st, "/status?tick=3").await;
    assert_eq!(e.status, StatusCode::BAD_REQUEST);
    assert!(e.error().contains("tick"), "{}", e.body);
    let nf = get(&st, "/nope").await;
    assert_eq!((nf.status, nf.error().as_str()), (StatusCode::NOT_FOUND, "no such endpoint"));

    let m = get(&st, "/metrics").await;
    assert_eq!(m.status, StatusCode::OK);
    assert!(m.headers["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let t = &m.body;
    assert_eq!(sample(t, "orchestrator_queue_actions{status=\"PENDING\"}"), 1.0);
    assert_eq!(sample(t, "orchestrator_queue_actions{status=\"DLQ\"}"), 1.0);
    assert!(!t.contains("orchestrator_queue_actions{status=\"SUCCESS\"}"), "finished history is not counted on scrape");
    assert!(sample(t, "orchestrator_queue_oldest_pending_age_seconds") >= 0.0);
    assert_eq!(sample(t, "orchestrator_lease_held"), 1.0);
    assert_eq!(sample(t, "orchestrator_lease_epoch"), 1.0);
    assert!(sample(t, "orchestrator_lease_ttl_seconds") > 0.0);
    assert_eq!(sample(t, "orchestrator_flag{flag=\"proof_mode\"}"), 1.0);
    assert_eq!(sample(t, "orchestrator_flag{flag=\"paused\"}"), 0.0);
    // The snapshot's 0-100 score: 100, less 10 for the failure (TELEPORT to DLQ) in the last hour.
    assert_eq!(sample(t, "orchestrator_health_score"), 90.0);
    let last = sample(t, "orchestrator_last_tick_timestamp_seconds");
    assert!((chrono::Utc::now().timestamp() as f64 - last).abs() < 60.0, "{last}");
    assert_eq!(sample(t, "orchestrator_database_up"), 1.0);
    assert_eq!(sample(t, "orchestrator_ticks_total{status=\"PARTIAL\"}"), 1.0);
    assert!(t.contains("orchestrator_tick_duration_seconds_bucket"));
    assert!(t.contains("orchestrator_actions_total{outcome=\"dlq\",type=\"TELEPORT\"} 1"), "{t}");
    assert!(t.contains("orchestrator_action_duration_seconds_bucket{type=\"POST_SOCIAL\""));
    assert_eq!(sample(t, "orchestrator_fenced_writes_rejected_total"), 0.0);
    assert!(t.contains(&format!("orchestrator_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))));

    // Another instance's state shows too: flags flipped by SQL appear on the next scrape.
    db.store.execute_unprepared("UPDATE control_flags SET paused = true WHERE id = 1").await.unwrap();
    assert_eq!(sample(&get(&st, "/metrics").await.body, "orchestrator_flag{flag=\"paused\"}"), 1.0);
}

async fn health_turns_503_for_each_reason(db: &TestDb) {
    let engine = db.engine(config(db, false));
    let st = state(&engine);
    ran(&engine).await;
    assert_eq!(get(&st, "/health").await.status, StatusCode::OK);

    // No live lease while not paused.
    engine.release().await.unwrap();
    let h = get(&st, "/health").await;
    assert_eq!(h.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h.json()["reasons"][0], "no instance holds a live lease");
    // Paused: no lease needed; degraded but serving.
    db.store.flags().set_flags(FlagChange { paused: Some(true), ..Default::default() }).await.unwrap();
    let h = get(&st, "/health").await;
    assert_eq!((h.status, h.json()["status"].as_str()), (StatusCode::OK, Some("degraded")));
    // Killed.
    db.store.flags().set_flags(FlagChange { killed: Some(true), ..Default::default() }).await.unwrap();
    let h = get(&st, "/health").await;
    assert_eq!(h.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(h.body.contains("killed flag is set"), "{}", h.body);
    db.store
        .flags()
        .set_flags(FlagChange { paused: Some(false), killed: Some(false), ..Default::default() })
        .await
        .unwrap();
    // A stale last tick: older than liveness.stale_unhealthy_seconds (300 s, or 10 intervals).
    ran(&engine).await;
    db.store
        .execute_unprepared(
            "UPDATE tick_ledger SET started_at = '2020-01-01T00:00:00Z', finished_at = '2020-01-01T00:00:01Z'",
        )
        .await
        .unwrap();
    let h = get(&st, "/health").await;
    assert_eq!(h.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(h.body.contains("(unhealthy after 300s)"), "{}", h.body);
    // A failed last tick: the public /health says so without quoting its notes (they can hold
    // errors and rule output); /status, behind the token once one is set, quotes them.
    ran(&engine).await;
    db.store
        .execute_unprepared(
            "UPDATE tick_ledger SET status = 'FAIL', notes = 'peer said: token=do-not-quote' \
             WHERE id = (SELECT MAX(id) FROM tick_ledger)",
        )
        .await
        .unwrap();
    let h = get(&st, "/health").await;
    assert_eq!(h.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(h.body.contains("failed (its notes are in /status and the ledger)"), "{}", h.body);
    assert!(!h.body.contains("do-not-quote"), "{}", h.body);
    assert!(get(&st, "/status").await.body.contains("do-not-quote"));
}

async fn admin_api_refuses_without_a_valid_token(db: &TestDb) {
    let disabled = state(&db.engine(config(db, false)));
    let enabled = state(&db.engine(config(db, true)));
    let endpoints = [
        ("POST", "/api/flags"),
        ("POST", "/api/run-once"),
        ("POST", "/api/actions"),
        ("GET", "/api/actions"),
        ("POST", "/api/actions/1/requeue"),
        ("POST", "/api/actions/1/cancel"),
        ("GET", "/api/ticks"),
        ("GET", "/api/decisions"),
        ("GET", "/api/decisions?tick=1"),
    ];
    for (method, uri) in endpoints {
        let a = call(&disabled, method, uri, Some(BEARER), Some("{}")).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{method} {uri}");
        assert!(a.error().starts_with("admin API disabled"), "{method} {uri}: {}", a.body);

        let a = call(&enabled, method, uri, None, Some("{}")).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{method} {uri}");
        assert_eq!(a.headers["www-authenticate"], "Bearer");
        assert!(a.error().contains("missing Authorization"), "{}", a.body);
        let a = call(&enabled, method, uri, Some("Bearer 0123456789abcdef-tesT"), Some("{}")).await;
        assert_eq!((a.status, a.error().as_str()), (StatusCode::UNAUTHORIZED, "invalid token"), "{method} {uri}");
        let a = call(&enabled, method, uri, Some("Basic dGVzdGVyOnRlc3Q="), Some("{}")).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{method} {uri}");
    }
    assert!(!db.store.flags().get().await.unwrap().paused, "nothing changed");

    // The access model (docs/operations.md, Security): once a token is set, /status (it quotes logs, errors
    // and samples) needs it; /health*, /metrics and the page stay public. Without a token
    // (loopback only) /status is open.
    let a = call(&enabled, "GET", "/status", None, None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.body);
    assert_eq!(a.headers["www-authenticate"], "Bearer");
    let a = call(&enabled, "GET", "/status", Some("Bearer 0123456789abcdef-tesT"), None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(call(&enabled, "GET", "/status", Some(BEARER), None).await.status, StatusCode::OK);
    assert_eq!(call(&disabled, "GET", "/status", None, None).await.status, StatusCode::OK);
    for public in ["/health", "/health/live", "/health/ready", "/metrics", "/"] {
        let a = call(&enabled, "GET", public, None, None).await;
        assert!(a.status != StatusCode::UNAUTHORIZED && a.status != StatusCode::FORBIDDEN, "{public}: {}", a.status);
    }
}

async fn admin_api_changes_state_and_validates_input(db: &TestDb) {
    let engine = db.engine(config(db, true));
    let st = state(&engine);

    // Flags.
    let a = admin(&st, "POST", "/api/flags", Some(r#"{"paused": true}"#)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.json()["paused"], true);
    assert!(db.store.flags().get().await.unwrap().paused, "the flag is set in the database");
    let cases: &[(&str, StatusCode, &str)] = &[
        (
            r#"{"paused": "yes"}"#,
            StatusCode::BAD_REQUEST,
            "body field `paused`: invalid type: string \"yes\", expected a boolean",
        ),
        (r#"{"pause": true}"#, StatusCode::BAD_REQUEST, "unknown field `pause`"),
        ("{}", StatusCode::BAD_REQUEST, "at least one of `paused`, `killed`, `proof_mode`"),
        ("", StatusCode::BAD_REQUEST, "expected a JSON object"),
        ("[true, null, null]", StatusCode::BAD_REQUEST, "body: expected a JSON object, got an array"),
        ("{\"paused\": tru", StatusCode::BAD_REQUEST, "body: not valid JSON"),
    ];
    for (body, code, needle) in cases {
        let a = admin(&st, "POST", "/api/flags", Some(body)).await;
        assert_eq!(a.status, *code, "{body}: {}", a.body);
        assert!(a.error().contains(needle), "{body}: expected {needle:?} in {}", a.body);
    }
    let a = admin(&st, "POST", "/api/flags", Some(r#"{"paused": false, "proof_mode": true}"#)).await;
    assert_eq!(a.json()["paused"], false);

    // Enqueue.
    let body = r#"{"action_type": "NOOP", "payload": {"n": 1}, "idempotency_key": "api-1", "priority": 5}"#;
    let a = admin(&st, "POST", "/api/actions", Some(body)).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let id = a.json()["id"].as_i64().unwrap();
    assert_eq!(a.json()["duplicate"], false);
    let a = admin(&st, "POST", "/api/actions", Some(body)).await;
    assert_eq!((a.status, a.json()["duplicate"].as_bool()), (StatusCode::OK, Some(true)));
    let cases: &[(&str, &str)] = &[
        (r#"{"payload": {}}"#, "missing field `action_type`"),
        (r#"{"action_type": "NOOP", "payload": {}, "colour": 1}"#, "unknown field `colour`"),
        (r#"{"action_type": "NOOP", "payload": {}, "priority": "high"}"#, "body field `priority`: invalid type"),
        (r#"{"action_type": "NOOP", "payload": {}, "not_before": "soon"}"#, "body field `not_before`"),
        (r#"{"action_type": "NOOP", "payload": [1]}"#, "payload"),
        (r#"{"action_type": "", "payload": {}}"#, "action type"),
    ];
    for (body, needle) in cases {
        let a = admin(&st, "POST", "/api/actions", Some(body)).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {}", a.body);
        assert!(a.error().to_lowercase().contains(&needle.to_lowercase()), "{body}: expected {needle:?} in {}", a.body);
    }
    let huge = format!(r#"{{"action_type": "NOOP", "payload": {{"x": "{}"}}}}"#, "a".repeat(2 << 20));
    let a = admin(&st, "POST", "/api/actions", Some(&huge)).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", a.body);
    assert!(a.error().starts_with("body:"), "{}", a.body);

    // List.
    let a = admin(&st, "GET", "/api/actions?status=pending&type=NOOP&limit=5", None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let list = a.json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!((list[0]["id"].as_i64(), list[0]["payload"]["n"].as_i64()), (Some(id), Some(1)));
    for (uri, needle) in [
        ("/api/actions?status=DONE", "unknown ActionStatus 'DONE'"),
        ("/api/actions?limit=0", "limit must be an integer from 1 to 1000"),
        ("/api/actions?limit=many", "limit"),
        ("/api/actions?colour=red", "unknown query parameter 'colour'"),
        ("/api/ticks?limit=100000", "limit"),
    ] {
        let a = admin(&st, "GET", uri, None).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{uri}");
        assert!(a.error().contains(needle), "{uri}: {}", a.body);
    }

    // Requeue and cancel: refusals first.
    let a = admin(&st, "POST", &format!("/api/actions/{id}/requeue"), None).await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.body);
    assert!(a.error().contains("only DLQ actions can be requeued"), "{}", a.body);
    let a = admin(&st, "POST", "/api/actions/999999/requeue", None).await;
    assert_eq!((a.status, a.error().as_str()), (StatusCode::NOT_FOUND, "action 999999 not found"));
    let a = admin(&st, "POST", "/api/actions/abc/cancel", None).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.error().contains("positive integer, got 'abc'"), "{}", a.body);
    let a = admin(&st, "POST", &format!("/api/actions/{id}/cancel"), None).await;
    assert_eq!((a.status, a.json()["cancelled"].as_i64()), (StatusCode::OK, Some(id)));
    assert_eq!(db.store.actions().action(id).await.unwrap().unwrap().status, ActionStatus::Cancelled);
    let a = admin(&st, "POST", &format!("/api/actions/{id}/cancel"), None).await;
    assert_eq!(a.status, StatusCode::CONFLICT);

    // A DLQ action is requeued.
    let dead = admin(&st, "POST", "/api/actions", Some(r#"{"action_type": "TELEPORT", "payload": {}}"#)).await;
    let dead = dead.json()["id"].as_i64().unwrap();

    // Run-once.
    let a = admin(&st, "POST", "/api/run-once", None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let t = a.json();
    assert_eq!((t["status"].as_str(), t["attempted"].as_u64()), (Some("PARTIAL"), Some(1)));
    assert_eq!(db.store.actions().action(dead).await.unwrap().unwrap().status, ActionStatus::Dlq);
    let a = admin(&st, "POST", &format!("/api/actions/{dead}/requeue"), None).await;
    assert_eq!((a.status, a.json()["requeued"][0].as_i64()), (StatusCode::OK, Some(dead)));
    assert_eq!(db.store.actions().action(dead).await.unwrap().unwrap().status, ActionStatus::Pending);

    // Ticks.
    let a = admin(&st, "GET", "/api/ticks?limit=1", None).await;
    assert_eq!(a.json()[0]["id"], t["tick_id"]);

    // Another instance holds the lease: run-once is refused and says who.
    let other = state(&db.engine(config(db, true)));
    let a = admin(&other, "POST", "/api/run-once", None).await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.body);
    assert!(a.error().contains(engine.lease().owner()), "{}", a.body);
}

async fn database_loss_is_503_not_a_panic(db: &TestDb) {
    // A store of its own, closed under the router: every query now fails.
    let store = db.another_store().await;
    let engine = Engine::new(store.clone(), config(db, true), orchestrator::adapters::Registry::builtin());
    let st = state(&engine);
    ran(&engine).await;
    assert_eq!(get(&st, "/health/ready").await.status, StatusCode::OK);
    store.close().await.unwrap();

    let h = get(&st, "/health").await;
    assert_eq!(h.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h.json()["reasons"][0], "database unreachable");
    let r = get(&st, "/health/ready").await;
    assert_eq!(
        (r.status, r.json()["reason"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("database unreachable"))
    );
    assert_eq!(get(&st, "/health/live").await.status, StatusCode::OK, "the process is still live");
    let m = get(&st, "/metrics").await;
    assert_eq!(m.status, StatusCode::OK, "a scrape still answers with the process metrics");
    assert_eq!(sample(&m.body, "orchestrator_database_up"), 0.0);
    assert!(!m.body.contains("orchestrator_health_score"));
    let s = admin(&st, "GET", "/status", None).await;
    assert!(s.status.is_server_error(), "{}", s.status);
    assert!(!s.error().is_empty());
    let a = admin(&st, "POST", "/api/flags", Some(r#"{"paused": true}"#)).await;
    assert!(a.status.is_server_error(), "{}", a.status);
}

async fn decisions_are_listed_and_shown_on_status(db: &TestDb) {
    let rules_dir = tempfile::tempdir().unwrap();
    let mut c = config(db, true);
    c.rules_dir = rules_dir.path().to_path_buf();
    let sources = [
        ("beacon", "state.n = (state.n ?? 0) + 1; [alert(\"info\", `beacon ${state.n}`, `beacon ${state.n}`)]"),
        ("broken", "throw \"boom\";"),
    ]
    .iter()
    .map(|(n, src)| (std::path::PathBuf::from(format!("rules/{n}.rhai")), src.to_string()))
    .collect();
    let set = RuleSet::from_sources(sources, &c.rules).unwrap_or_else(|d| panic!("rules do not compile: {d:?}"));
    let engine = db.engine(c);
    engine.decider().set_rules(set);
    let st = state(&engine);
    let first = ran(&engine).await.tick_id;
    let second = ran(&engine).await.tick_id;

    // One tick's decisions, as written.
    let a = admin(&st, "GET", &format!("/api/decisions?tick={first}"), None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let rows = a.json();
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    let d = &rows[0];
    assert_eq!(
        (d["tick_id"].as_i64(), d["rule"].as_str(), d["kind"].as_str()),
        (Some(first), Some("beacon"), Some("alert"))
    );
    assert_eq!((d["target"].as_str(), d["outcome"].as_str()), (Some("beacon 1"), Some("applied")));
    assert!(d["priority"].is_i64() && d["reason"].is_string() && d["created_at"].is_string(), "{d}");

    // The most recent, newest first, with a limit.
    let all = admin(&st, "GET", "/api/decisions", None).await.json();
    let targets: Vec<&str> = all.as_array().unwrap().iter().map(|d| d["target"].as_str().unwrap()).collect();
    assert_eq!(targets, ["beacon 2", "beacon 1"]);
    assert_eq!(all[0]["tick_id"].as_i64(), Some(second));
    let one = admin(&st, "GET", "/api/decisions?limit=1", None).await.json();
    assert_eq!(one.as_array().unwrap().len(), 1);
    assert_eq!(one[0]["target"], "beacon 2");

    // Errors name what was wrong.
    let a = admin(&st, "GET", &format!("/api/decisions?tick={}", second + 1000), None).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.body);
    assert!(a.error().contains(&format!("no tick {}", second + 1000)), "{}", a.body);
    for (uri, names) in [
        ("/api/decisions?tick=abc", "tick"),
        ("/api/decisions?tick=0", "tick"),
        ("/api/decisions?tick=-3", "tick"),
        ("/api/decisions?tick=", "tick"),
        ("/api/decisions?limit=0", "limit"),
        ("/api/decisions?tick=1&limit=x", "limit"),
        ("/api/decisions?ticks=1", "ticks"),
    ] {
        let a = admin(&st, "GET", uri, None).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{uri}: {}", a.body);
        assert!(a.error().contains(names), "{uri}: {}", a.body);
    }

    // /status: the loaded rules, the last tick's rule failure, the recent decisions.
    let s = admin(&st, "GET", "/status", None).await.json();
    assert_eq!(s["rules"]["loaded"], serde_json::json!(["beacon", "broken"]));
    assert_eq!(s["rules"]["digest"], engine.decider().rules().digest());
    assert_eq!(s["rules"]["dir"], rules_dir.path().display().to_string());
    assert_eq!(s["rules"]["diagnostics"]["rejected_load"], serde_json::json!([]));
    let failed = &s["rules"]["diagnostics"]["last_tick"];
    assert_eq!(failed.as_array().unwrap().len(), 1, "{failed}");
    assert_eq!(failed[0]["rule"], "broken");
    assert!(failed[0]["message"].as_str().unwrap().contains("boom"), "{failed}");
    assert_eq!(s["decisions"].as_array().unwrap().len(), 2);
    assert_eq!(
        (s["decisions"][0]["target"].as_str(), s["decisions"][0]["rule"].as_str()),
        (Some("beacon 2"), Some("beacon"))
    );

    // A rejected reload keeps the active set and says why, in the file and line.
    std::fs::write(rules_dir.path().join("typo.rhai"), "let x = ;\n").unwrap();
    assert!(engine.decider().load_rules().is_err());
    let s = admin(&st, "GET", "/status", None).await.json();
    assert_eq!(s["rules"]["loaded"], serde_json::json!(["beacon", "broken"]), "the previous set stays active");
    let rejected = &s["rules"]["diagnostics"]["rejected_load"];
    assert_eq!((rejected[0]["rule"].as_str(), rejected[0]["line"].as_u64()), (Some("typo"), Some(1)), "{rejected}");
    std::fs::remove_file(rules_dir.path().join("typo.rhai")).unwrap();
    assert_eq!(engine.decider().load_rules().unwrap(), 0);
    let s = admin(&st, "GET", "/status", None).await.json();
    assert_eq!(s["rules"]["loaded"], serde_json::json!([]));
    assert_eq!(s["rules"]["diagnostics"]["rejected_load"], serde_json::json!([]), "a good load clears the rejection");
}

async fn enforced_proof_mode_refuses_proof_off_and_says_so(db: &TestDb) {
    let mut c = config(db, true);
    c.proof_enforced = true;
    let engine = db.engine(c);
    let st = state(&engine);
    let r = admin(&st, "POST", "/api/flags", Some(r#"{"proof_mode": false}"#)).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert!(r.error().contains("proof mode is enforced on this instance"), "{}", r.body);
    assert!(db.store.flags().get().await.unwrap().proof_mode, "nothing changed");
    let r = admin(&st, "POST", "/api/flags", Some(r#"{"proof_mode": true, "paused": true}"#)).await;
    assert_eq!(r.status, StatusCode::OK, "proof on (and other flags) stay allowed: {}", r.body);

    // Even with the database flag off, /status says PROOF and that it is enforced.
    db.store.flags().set_flags(FlagChange { proof_mode: Some(false), ..Default::default() }).await.unwrap();
    let s = admin(&st, "GET", "/status", None).await.json();
    assert_eq!((s["mode"].as_str(), s["proof_enforced"].as_bool()), (Some("PROOF"), Some(true)), "{s}");
    let page = get(&st, "/").await.body;
    assert!(page.contains("proof-enforced") && page.contains("refused: "), "the page shows enforcement and refusals");

    // A deadline through the API.
    let at = (db.store.now() + chrono::Duration::hours(2)).to_rfc3339();
    let body = format!(r#"{{"action_type": "NOOP", "payload": {{}}, "expires_at": "{at}"}}"#);
    let r = admin(&st, "POST", "/api/actions", Some(&body)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.json()["id"].as_i64().unwrap();
    let listed = admin(&st, "GET", "/api/actions?limit=5", None).await.json();
    let row = listed.as_array().unwrap().iter().find(|a| a["id"] == id).unwrap().clone();
    assert!(row["expires_at"].is_string(), "{row}");
    let past = r#"{"action_type": "NOOP", "payload": {"x": 1}, "expires_at": "2001-01-01T00:00:00Z"}"#;
    let r = admin(&st, "POST", "/api/actions", Some(past)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.error().contains("not in the future"), "{}", r.body);
}
