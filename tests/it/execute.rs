//! Real mode against real peers, through whole ticks: WEBHOOK, POST_SOCIAL and ALERT talk to an
//! HTTP server on 127.0.0.1 (see `peer.rs`), COMMAND runs real processes. Covers signatures,
//! retry classification, `Retry-After`, timeouts, proof mode touching nothing, and secrets
//! staying out of logs, ledger notes, errors and artifacts.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use hmac::{Hmac, Mac};
use orchestrator::adapters::Registry;
use orchestrator::adapters::{CommandSpec, NonzeroExit, Secret, WebhookTarget};
use orchestrator::config::{AdaptersConfig, Config};
use orchestrator::model::{ActionStatus, TickStatus};
use orchestrator::queue::{self, EnqueueRequest};
use orchestrator::store::{ActionFilter, FlagChange};
use orchestrator::tick::Engine;
use serde_json::json;

use crate::backend_tests;
use crate::support::peer::{Peer, Reply};
use crate::support::ran;
use crate::support::{TestDb, artifacts_under};

backend_tests!(
    webhook_body_and_signature_arrive_as_sent,
    a_peer_that_echoes_the_request_is_quoted_without_any_secret_of_its_target,
    the_binary_quotes_no_secret_a_peer_echoes,
    webhook_5xx_is_retried_then_succeeds,
    webhook_retry_after_sets_not_before,
    webhook_4xx_goes_to_dlq_at_once,
    webhook_slow_peer_times_out_and_is_retried,
    webhook_refused_connection_is_retryable,
    raw_urls_need_allow_raw_urls,
    social_and_alert_deliver_through_their_targets,
    proof_mode_opens_no_connection_and_spawns_no_process,
    command_output_is_recorded_and_nonzero_exit_classified,
    executor_enforces_the_type_timeout,
);

pub const SECRET: &str = "s3cret-hmac-key-do-not-leak";
pub const TOKEN: &str = "tok-bearer-do-not-leak";
/// Values a peer echoes under header names that are always redacted (issue 16): the engine does
/// not know them as secrets, it redacts them by name.
pub const ECHOED_BASIC: &str = "dXNlcjpwZWVyLWJhc2lj";
pub const ECHOED_COOKIE: &str = "peer-cookie-do-not-leak";
/// Configured values the engine knows as a target's and a peer echoes back (issue 22): a query
/// value of the URL, and a header whose name does not look secret.
pub const QUERY_SECRET: &str = "query-api-key-do-not-leak";
pub const PARTNER_SECRET: &str = "partner-header-do-not-leak";

pub fn target(name: &str, url: String) -> WebhookTarget {
    WebhookTarget {
        name: name.into(),
        url,
        method: "POST".into(),
        headers: BTreeMap::from([("Authorization".to_string(), format!("Bearer {TOKEN}"))]),
        secret_env: Some("HOOK_SECRET".into()),
        secret: Some(Secret::new(SECRET)),
        timeout: None,
    }
}

fn with_target(t: WebhookTarget) -> AdaptersConfig {
    let mut a = AdaptersConfig::default();
    a.webhook.targets.insert(t.name.clone(), t);
    a
}

fn engine(db: &TestDb, adapters: AdaptersConfig) -> Engine {
    let mut c: Config = db.config();
    c.adapters = adapters;
    let registry = Registry::from_config(&c).unwrap();
    Engine::new(db.store.clone(), c, registry)
}

/// One tick by a fresh engine that then lets the lease go, so another config can run next.
async fn tick_once(db: &TestDb, adapters: AdaptersConfig) {
    let e = engine(db, adapters);
    ran(&e).await;
    e.release().await.unwrap();
}

async fn real_mode(db: &TestDb) {
    db.store.flags().set_flags(FlagChange { proof_mode: Some(false), ..Default::default() }).await.unwrap();
}

fn req(action_type: &str, key: &str, payload: serde_json::Value) -> EnqueueRequest {
    EnqueueRequest {
        action_type: action_type.into(),
        payload,
        idempotency_key: Some(key.into()),
        priority: 0,
        not_before: None,
        max_attempts: None,
        expires_at: None,
        traceparent: None,
        require_approval: false,
    }
}

fn hmac_hex(body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// No secret in any log row, action error, ledger note or artifact.
async fn assert_no_secrets(db: &TestDb) {
    let mut texts: Vec<String> = Vec::new();
    for l in db.store.history().logs(None, 10_000).await.unwrap() {
        texts.push(l.message);
    }
    let all = ActionFilter { status: None, action_type: None, limit: 10_000 };
    for a in db.store.actions().list_actions(&all).await.unwrap() {
        texts.extend(a.last_error);
    }
    for t in db.store.ledger().recent_ticks(10_000).await.unwrap() {
        texts.extend(t.notes);
    }
    for p in artifacts_under(&db.dir.path().join("artifacts")) {
        texts.push(String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned());
    }
    for d in db.store.decisions().recent_decisions(10_000).await.unwrap() {
        texts.push(d.reason);
    }
    // What /status shows (its logs, DLQ errors and samples), as served.
    texts.push(status_body(db).await);
    assert!(!texts.is_empty());
    for t in &texts {
        for secret in [SECRET, TOKEN, ECHOED_BASIC, ECHOED_COOKIE, QUERY_SECRET, PARTNER_SECRET] {
            assert!(!t.contains(secret), "a secret ({secret}) leaked into: {t}");
        }
    }
}

async fn status_body(db: &TestDb) -> String {
    use tower::ServiceExt;
    let st = orchestrator::http::AppState::new(db.engine(db.config()), false);
    let req = axum::http::Request::builder().uri("/status").body(axum::body::Body::empty()).unwrap();
    let res = orchestrator::http::router(st).oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let bytes = axum::body::to_bytes(res.into_body(), 10 << 20).await.unwrap();
    String::from_utf8_lossy(&bytes).into_owned()
}

async fn webhook_body_and_signature_arrive_as_sent(db: &TestDb) {
    real_mode(db).await;
    // A peer that echoes what it got must not get a secret into the log.
    let echo = format!(
        "{{\"accepted\":true}} echo: Bearer {TOKEN} {SECRET}\r\nAuthorization: Basic {ECHOED_BASIC}\r\n\
         Set-Cookie: sid={ECHOED_COOKIE}; HttpOnly\r\n{{\"x-api-key\": \"{ECHOED_COOKIE}\"}}"
    );
    let peer = Peer::start(vec![Reply::status(201).body(&echo)]).await;
    let engine = engine(db, with_target(target("hook", peer.url("/hook?x=1"))));
    let body = json!({"text": "héllo ✓", "n": [1, 2, {"deep": null}]});
    let id = queue::enqueue(&db.store, &req("WEBHOOK", "wh-1", json!({"target": "hook", "body": body})), 3)
        .await
        .unwrap()
        .id;
    let r = ran(&engine).await;
    assert_eq!((r.status, r.succeeded), (TickStatus::Success, 1), "{}", r.notes);
    let got = peer.requests();
    assert_eq!(got.len(), 1);
    let g = &got[0];
    assert_eq!((g.method.as_str(), g.path.as_str()), ("POST", "/hook?x=1"));
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&g.body).unwrap(), body);
    assert_eq!(g.header("x-orchestrator-signature"), Some(hmac_hex(&g.body).as_str()), "verifiable signature");
    assert_eq!(g.header("x-orchestrator-idempotency-key"), Some("wh-1"));
    assert_eq!(g.header("authorization"), Some(format!("Bearer {TOKEN}").as_str()));
    assert_eq!(g.header("content-type"), Some("application/json"));
    assert_eq!(db.store.actions().action(id).await.unwrap().unwrap().status, ActionStatus::Success);
    let log = &db.store.history().logs(Some(id), 10).await.unwrap()[0];
    assert!(log.message.contains("201") && log.message.contains("{\"accepted\":true}"), "{}", log.message);
    assert!(!log.message.contains("x=1"), "the query string is not logged: {}", log.message);
    assert!(log.message.contains("echo: <redacted> <redacted>"), "{}", log.message);
    assert_no_secrets(db).await;
}

/// The target of the echo tests: every kind of configured secret, the URL's query included.
fn echoed_target(peer: &Peer) -> WebhookTarget {
    let mut t = target("hook", peer.url(&format!("/hook?api_key={QUERY_SECRET}&x=1")));
    t.headers.insert("X-Partner".into(), PARTNER_SECRET.into());
    t
}

async fn a_peer_that_echoes_the_request_is_quoted_without_any_secret_of_its_target(db: &TestDb) {
    real_mode(db).await;
    let peer = Peer::start(vec![Reply::status(500).body("rejected: ").echo()]).await;
    let engine = engine(db, with_target(echoed_target(&peer)));
    let id = queue::enqueue(&db.store, &req("WEBHOOK", "wh-echo", json!({"target": "hook", "body": {"a": 1}})), 3)
        .await
        .unwrap()
        .id;
    ran(&engine).await;
    let got = peer.requests();
    assert_eq!(got[0].path, format!("/hook?api_key={QUERY_SECRET}&x=1"), "the peer did get the secrets");
    assert_eq!(got[0].header("x-partner"), Some(PARTNER_SECRET));
    let a = db.store.actions().action(id).await.unwrap().unwrap();
    assert_eq!(a.status, ActionStatus::Retry);
    let err = a.last_error.unwrap();
    for want in ["rejected: POST /hook?api_key=<redacted>&x=1 HTTP/1.1", "x-partner: <redacted>", "{\"a\":1}"] {
        assert!(err.contains(want), "{want} in {err}");
    }
    assert_no_secrets(db).await;
}

/// Issue 22 through the binary: what `run-once` logs, what `actions show`, `logs` and
/// `status` print hold none of the secrets a peer echoes back.
async fn the_binary_quotes_no_secret_a_peer_echoes(db: &TestDb) {
    let peer = Peer::start_then(Vec::new(), Reply::status(500).body("rejected: ").echo()).await;
    let dir = db.dir.path().to_path_buf();
    let config = format!(
        "adapters:\n  webhook:\n    targets:\n      hook:\n        url: '{}'\n        secret_env: HOOK_SECRET\n        \
         headers: {{Authorization: 'Bearer {TOKEN}', X-Partner: '{PARTNER_SECRET}'}}\n",
        peer.url(&format!("/hook?api_key={QUERY_SECRET}"))
    );
    std::fs::write(dir.join("orchestrator.yaml"), config).unwrap();
    let url = db.url.clone();
    let outputs = tokio::task::spawn_blocking(move || {
        let orch = |args: &[&str]| {
            let o = crate::support::run(
                crate::support::bin(&dir)
                    .env("HOOK_SECRET", SECRET)
                    .env("RUST_LOG", "debug")
                    .arg("--database-url")
                    .arg(&url)
                    .args(args),
            );
            format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
        };
        orch(&["proof", "off"]);
        orch(&["enqueue", "WEBHOOK", "--payload", r#"{"target":"hook","body":{"a":1}}"#]);
        vec![
            orch(&["run-once"]),
            orch(&["actions", "show", "1", "--json"]),
            orch(&["logs"]),
            orch(&["status", "--json"]),
        ]
    })
    .await
    .unwrap();
    assert_eq!(peer.requests().len(), 1, "the peer was sent the request: {outputs:?}");
    assert!(outputs[1].contains("api_key=<redacted>"), "the echo is quoted, redacted: {}", outputs[1]);
    for text in &outputs {
        for secret in [SECRET, TOKEN, QUERY_SECRET, PARTNER_SECRET] {
            assert!(!text.contains(secret), "a secret ({secret}) leaked into: {text}");
        }
    }
    assert_no_secrets(db).await;
}

async fn webhook_5xx_is_retried_then_succeeds(db: &TestDb) {
    real_mode(db).await;
    let peer = Peer::start(vec![Reply::status(500).body("boom")]).await;
    let engine = engine(db, with_target(target("hook", peer.url("/h"))));
    let id = queue::enqueue(&db.store, &req("WEBHOOK", "wh-5xx", json!({"target": "hook", "body": {"a": 1}})), 3)
        .await
        .unwrap()
        .id;
    ran(&engine).await;
    let a = db.store.actions().action(id).await.unwrap().unwrap();
    assert_eq!((a.status, a.attempts), (ActionStatus::Retry, 1));
    let err = a.last_error.unwrap();
    assert!(err.contains("500") && err.contains("boom"), "{err}");
    let r = ran(&engine).await;
    assert_eq!(r.succeeded, 1);
    let a = db.store.actions().action(id).await.unwrap().unwrap();
    assert_eq!((a.status, a.attempts), (ActionStatus::Success, 2));
    let got = peer.requests();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|g| g.header("x-orchestrator-idempotency-key") == Some("wh-5xx")), "same key each try");
    assert_no_secrets(db).await;
}

async fn webhook_retry_after_sets_not_before(db: &TestDb) {
    real_mode(db).await;
    let date = (chrono::Utc::now() + chrono::Duration::seconds(300)).format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    let peer = Peer::start(vec![
        Reply::status(429).header("Retry-After", "120"),
        Reply::status(503).header("Retry-After", &date),
    ])
    .await;
    let engine = engine(db, with_target(target("hook", peer.url("/h"))));
    let a = queue::enqueue(&db.store, &req("WEBHOOK", "ra-secs", json!({"target": "hook", "body": 1})), 3)
        .await
        .unwrap()
        .id;
    let before = chrono::Utc::now();
    ran(&engine).await;
    let row = db.store.actions().action(a).await.unwrap().unwrap();
    assert_eq!(row.status, ActionStatus::Retry);
    let wait = (row.not_before - before).num_seconds();
    assert!((118..=125).contains(&wait), "Retry-After: 120 -> not_before in {wait}s");

    let b = queue::enqueue(&db.store, &req("WEBHOOK", "ra-date", json!({"target": "hook", "body": 2})), 3)
        .await
        .unwrap()
        .id;
    ran(&engine).await;
    let row = db.store.actions().action(b).await.unwrap().unwrap();
    assert_eq!(row.status, ActionStatus::Retry);
    let wait = (row.not_before - before).num_seconds();
    assert!((295..=305).contains(&wait), "Retry-After as an HTTP date -> not_before in {wait}s");
    assert_eq!(peer.requests().len(), 2, "neither was retried early");
}

async fn webhook_4xx_goes_to_dlq_at_once(db: &TestDb) {
    real_mode(db).await;
    let long = format!("no such hook {}", "x".repeat(5000));
    let peer = Peer::start(vec![Reply::status(404).body(&long)]).await;
    let engine = engine(db, with_target(target("hook", peer.url("/missing"))));
    let id = queue::enqueue(&db.store, &req("WEBHOOK", "wh-404", json!({"target": "hook", "body": {}})), 5)
        .await
        .unwrap()
        .id;
    ran(&engine).await;
    let a = db.store.actions().action(id).await.unwrap().unwrap();
    assert_eq!((a.status, a.attempts), (ActionStatus::Dlq, 1), "a 404 is not retried");
    let err = a.last_error.unwrap();
    assert!(err.contains("404") && err.contains("no such hook"), "{err}");
    assert!(err.len() < 1024 + 200, "only the first KB of the response is kept: {} bytes", err.len());
    assert_eq!(ran(&engine).await.status, TickStatus::Idle);
    assert_eq!(peer.requests().len(), 1);
}

async fn webhook_slow_peer_times_out_and_is_retried(db: &TestDb) {
    real_mode(db).await;
    let peer = Peer::start(vec![Reply::status(200).delay(Duration::from_secs(5))]).await;
    let mut t = target("hook", peer.url("/slow"));
    t.timeout = Some(Duration::from_millis(300));
    let engine = engine(db, with_target(t));
    let id = queue::enqueue(&db.store, &req("WEBHOOK", "wh-slow", json!({"target": "hook", "body": {}})), 3)
        .await
        .unwrap()
        .id;
    let started = std::time::Instant::now();
    ran(&engine).await;
    assert!(started.elapsed() < Duration::from_secs(4), "the tick did not wait for the slow peer");
    let a = db.store.actions().action(id).await.unwrap().unwrap();
    assert_eq!(a.status, ActionStatus::Retry);
    assert!(a.last_error.as_deref().unwrap().contains("timed out after 0.3s"), "{:?}", a.last_error);
    ran(&engine).await;
    assert_eq!(
        db.store.actions().action(id).await.unwrap().unwrap().status,
        ActionStatus::Success,
        "the retry got through"
    );
}

async fn webhook_refused_connection_is_retryable(db: &TestDb) {
    real_mode(db).await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let engine = engine(db, with_target(target("hook", format!("http://127.0.0.1:{port}/gone"))));
    let id = queue::enqueue(&db.store, &req("WEBHOOK", "wh-refused", json!({"target": "hook", "body": {}})), 3)
        .await
        .unwrap()
        .id;
    ran(&engine).await;
    let a = db.store.actions().action(id).await.unwrap().unwrap();
    assert_eq!(a.status, ActionStatus::Retry, "{:?}", a.last_error);
    assert_no_secrets(db).await;
}

async fn raw_urls_need_allow_raw_urls(db: &TestDb) {
    real_mode(db).await;
    let peer = Peer::start(vec![]).await;
    let payload = json!({"url": peer.url("/raw"), "method": "put", "body": {"k": "v"}});
    let refused = queue::enqueue(&db.store, &req("WEBHOOK", "raw-1", payload.clone()), 3).await.unwrap().id;
    tick_once(db, AdaptersConfig::default()).await;
    let a = db.store.actions().action(refused).await.unwrap().unwrap();
    assert_eq!(a.status, ActionStatus::Dlq);
    assert!(a.last_error.unwrap().contains("allow_raw_urls"));
    assert_eq!(peer.connections(), 0);

    let mut allowed = AdaptersConfig::default();
    allowed.webhook.allow_raw_urls = true;
    let ok = queue::enqueue(&db.store, &req("WEBHOOK", "raw-2", payload), 3).await.unwrap().id;
    tick_once(db, allowed).await;
    assert_eq!(db.store.actions().action(ok).await.unwrap().unwrap().status, ActionStatus::Success);
    let got = peer.requests();
    assert_eq!((got.len(), got[0].method.as_str()), (1, "PUT"));
    assert_eq!(got[0].header("x-orchestrator-signature"), None, "raw URLs are unsigned");
    let unknown =
        queue::enqueue(&db.store, &req("WEBHOOK", "raw-3", json!({"target": "nope", "body": 1})), 3).await.unwrap().id;
    tick_once(db, AdaptersConfig::default()).await;
    let a = db.store.actions().action(unknown).await.unwrap().unwrap();
    assert_eq!(a.status, ActionStatus::Dlq);
    assert!(a.last_error.unwrap().contains("'nope' is not configured"));
}

async fn social_and_alert_deliver_through_their_targets(db: &TestDb) {
    real_mode(db).await;
    let peer = Peer::start(vec![]).await;
    let mut adapters = with_target(target("social-hook", peer.url("/social")));
    adapters.webhook.targets.insert("ops".into(), target("ops", peer.url("/alerts")));
    adapters.social.platforms.insert("mastodon".into(), "social-hook".into());
    adapters.alert.target = Some("ops".into());
    let engine = engine(db, adapters);
    let post = json!({"platform": "mastodon", "content": "hello fediverse", "audience": "all"});
    let p = queue::enqueue(&db.store, &req("POST_SOCIAL", "post-1", post), 3).await.unwrap().id;
    let other = json!({"platform": "myspace", "content": "x", "audience": "all"});
    let u = queue::enqueue(&db.store, &req("POST_SOCIAL", "post-2", other), 3).await.unwrap().id;
    let alert = json!({"severity": "critical", "message": "queue is on fire", "rule": "fire"});
    let al = queue::enqueue(&db.store, &req("ALERT", "alert-1", alert.clone()), 3).await.unwrap().id;
    ran(&engine).await;
    assert_eq!(db.store.actions().action(p).await.unwrap().unwrap().status, ActionStatus::Success);
    assert_eq!(db.store.actions().action(al).await.unwrap().unwrap().status, ActionStatus::Success);
    let un = db.store.actions().action(u).await.unwrap().unwrap();
    assert_eq!(un.status, ActionStatus::Retry);
    assert!(
        un.last_error.unwrap().starts_with("real run unconfigured"),
        "an unconfigured platform keeps the seed's error"
    );
    let got = peer.requests();
    let social = got.iter().find(|g| g.path == "/social").expect("the post was delivered");
    let sent: serde_json::Value = serde_json::from_slice(&social.body).unwrap();
    assert_eq!(sent, json!({"platform": "mastodon", "content": "hello fediverse", "audience": "all"}));
    assert_eq!(social.header("x-orchestrator-signature"), Some(hmac_hex(&social.body).as_str()));
    let alerted = got.iter().find(|g| g.path == "/alerts").expect("the alert was sent");
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&alerted.body).unwrap(), alert);
    assert_no_secrets(db).await;
}

fn touch_spec(dir: &Path) -> CommandSpec {
    let _ = dir;
    CommandSpec {
        name: "touch".into(),
        program: "/usr/bin/touch".into(),
        args: vec!["{path}".into()],
        timeout: None,
        env: BTreeMap::new(),
        nonzero_exit: NonzeroExit::Retryable,
        allow_dash: vec![],
    }
}

async fn proof_mode_opens_no_connection_and_spawns_no_process(db: &TestDb) {
    let peer = Peer::start(vec![]).await;
    let mut adapters = with_target(target("hook", peer.url("/h")));
    adapters.social.platforms.insert("mastodon".into(), "hook".into());
    adapters.alert.target = Some("hook".into());
    adapters.command.allow.insert("touch".into(), touch_spec(db.dir.path()));
    let engine = engine(db, adapters);
    let marker = db.dir.path().join("created-by-touch");
    let path = marker.display().to_string();
    let payloads = [
        ("WEBHOOK", json!({"target": "hook", "body": {"would": "send"}})),
        ("POST_SOCIAL", json!({"platform": "mastodon", "content": "would post", "audience": "all"})),
        ("ALERT", json!({"message": "would alert"})),
        ("COMMAND", json!({"command": "touch", "args": {"path": path}})),
    ];
    for (i, (t, p)) in payloads.iter().enumerate() {
        queue::enqueue(&db.store, &req(t, &format!("proof-{i}"), p.clone()), 3).await.unwrap();
    }
    let r = ran(&engine).await;
    assert_eq!((r.status, r.succeeded), (TickStatus::Success, 4), "{}", r.notes);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(peer.connections(), 0, "proof mode opened no connection");
    assert!(!marker.exists(), "proof mode spawned no process");

    let root = db.dir.path().join("artifacts");
    let mut dirs: Vec<String> = artifacts_under(&root)
        .iter()
        .map(|p| p.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert_eq!(dirs, ["alert", "command", "proof_social", "webhook"]);
    let webhook = artifacts_under(&root.join("webhook")).pop().unwrap();
    let text = std::fs::read_to_string(&webhook).unwrap();
    for want in ["POST http://127.0.0.1:", "X-Orchestrator-Idempotency-Key: proof-0", "Authorization: <redacted>"] {
        assert!(text.contains(want), "{want} in {text}");
    }
    assert!(
        text.contains("X-Orchestrator-Signature: sha256=<redacted") && text.contains("{\"would\":\"send\"}"),
        "{text}"
    );
    let command = std::fs::read_to_string(artifacts_under(&root.join("command")).pop().unwrap()).unwrap();
    assert!(command.contains("program: /usr/bin/touch") && command.contains(&path), "{command}");
    assert_no_secrets(db).await;

    // The same actions in real mode do reach the world: the checks above could fail.
    real_mode(db).await;
    queue::enqueue(&db.store, &req("COMMAND", "real-touch", payloads[3].1.clone()), 3).await.unwrap();
    queue::enqueue(&db.store, &req("WEBHOOK", "real-hook", payloads[0].1.clone()), 3).await.unwrap();
    assert_eq!(ran(&engine).await.succeeded, 2);
    assert!(marker.exists());
    assert_eq!(peer.requests().len(), 1);
}

async fn command_output_is_recorded_and_nonzero_exit_classified(db: &TestDb) {
    real_mode(db).await;
    let mut adapters = AdaptersConfig::default();
    let spec = |name: &str, program: &str, args: &[&str], nonzero_exit| CommandSpec {
        name: name.into(),
        program: program.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        timeout: None,
        env: BTreeMap::from([("GREETING".to_string(), "hi".to_string())]),
        nonzero_exit,
        allow_dash: vec![],
    };
    let script = "echo \"$GREETING $0\"; echo oops >&2; exit \"$1\"";
    adapters
        .command
        .allow
        .insert("say".into(), spec("say", "/bin/sh", &["-c", script, "{who}", "{code}"], NonzeroExit::Retryable));
    adapters
        .command
        .allow
        .insert("strict".into(), spec("strict", "/bin/sh", &["-c", script, "{who}", "{code}"], NonzeroExit::Permanent));
    let engine = engine(db, adapters);
    let ok = queue::enqueue(
        &db.store,
        &req("COMMAND", "c-ok", json!({"command": "say", "args": {"who": "world; rm -rf /", "code": 0}})),
        3,
    )
    .await
    .unwrap()
    .id;
    let retry = queue::enqueue(
        &db.store,
        &req("COMMAND", "c-retry", json!({"command": "say", "args": {"who": "a", "code": 3}})),
        3,
    )
    .await
    .unwrap()
    .id;
    let dlq = queue::enqueue(
        &db.store,
        &req("COMMAND", "c-dlq", json!({"command": "strict", "args": {"who": "a", "code": 4}})),
        3,
    )
    .await
    .unwrap()
    .id;
    let shell =
        queue::enqueue(&db.store, &req("COMMAND", "c-sh", json!({"command": "sh", "args": {}})), 3).await.unwrap().id;
    ran(&engine).await;

    assert_eq!(db.store.actions().action(ok).await.unwrap().unwrap().status, ActionStatus::Success);
    let log = &db.store.history().logs(Some(ok), 10).await.unwrap()[0];
    assert!(log.message.contains("hi world; rm -rf /"), "the value is one argument, never shell text: {}", log.message);
    let record = std::fs::read_to_string(log.artifact_ref.as_deref().expect("output recorded")).unwrap();
    assert!(record.contains("exit status 0") && record.contains("--- stdout") && record.contains("oops"), "{record}");
    assert_eq!(log.artifact_sha256.as_deref(), Some(orchestrator::artifacts::sha256_hex(record.as_bytes()).as_str()));

    let r = db.store.actions().action(retry).await.unwrap().unwrap();
    assert_eq!(r.status, ActionStatus::Retry);
    assert!(r.last_error.as_deref().unwrap().contains("exit status 3; stderr: oops"), "{:?}", r.last_error);
    assert!(
        db.store.history().logs(Some(retry), 10).await.unwrap()[0].artifact_ref.is_some(),
        "a failure's output is kept too"
    );
    let d = db.store.actions().action(dlq).await.unwrap().unwrap();
    assert_eq!((d.status, d.attempts), (ActionStatus::Dlq, 1), "nonzero_exit: permanent");
    let s = db.store.actions().action(shell).await.unwrap().unwrap();
    assert_eq!(s.status, ActionStatus::Dlq);
    assert!(s.last_error.unwrap().contains("'sh' is not allowlisted"));
}

async fn executor_enforces_the_type_timeout(db: &TestDb) {
    real_mode(db).await;
    let mut adapters = AdaptersConfig::default();
    // Room for the shell to start and write its pids even on a loaded machine.
    adapters.command.timeout = Duration::from_secs(1);
    let pidfile = db.dir.path().join("pids");
    adapters.command.allow.insert(
        "hang".into(),
        CommandSpec {
            name: "hang".into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "sleep 30 & echo $! > \"$0\"; echo $$ >> \"$0\"; wait".into(), "{pidfile}".into()],
            // Longer than the type's timeout: the executor's timeout fires first and cancels.
            timeout: Some(Duration::from_secs(60)),
            env: BTreeMap::new(),
            nonzero_exit: NonzeroExit::Retryable,
            allow_dash: vec![],
        },
    );
    let engine = engine(db, adapters);
    let pf = pidfile.display().to_string();
    let id = queue::enqueue(&db.store, &req("COMMAND", "hang", json!({"command": "hang", "args": {"pidfile": pf}})), 3)
        .await
        .unwrap()
        .id;
    ran(&engine).await;
    let a = db.store.actions().action(id).await.unwrap().unwrap();
    assert_eq!(a.status, ActionStatus::Retry);
    assert_eq!(a.last_error.as_deref(), Some("timed out after 1.0s (adapters.command.timeout_seconds)"));
    crate::support::command::assert_pids_gone(&pidfile).await;
}
