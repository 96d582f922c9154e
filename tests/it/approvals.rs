//! Approvals (issue 25, part 3), on both backends: an action that needs one waits in
//! `AWAITING_APPROVAL`, is rendered once in proof mode while it waits, and after an approval
//! sends exactly that request; a payload or a target changed after the approval is refused and
//! says why; a rejection and an expiry cancel it with the reason; a claimer never takes a
//! waiting action; the CLI and the admin API (token required, bad ids refused by name) decide
//! one or many; the metrics count what waits.

use std::collections::BTreeMap;
use std::time::Duration;

use orchestrator::adapters::{Registry, Secret, WebhookTarget};
use orchestrator::config::{AdaptersConfig, Config};
use orchestrator::model::ActionStatus;
use orchestrator::queue::{self, EnqueueRequest};
use orchestrator::store::{FlagChange, Refusal, StoreError};
use orchestrator::tick::Engine;
use serde_json::json;

use crate::backend_tests;
use crate::support::peer::{Peer, Reply};
use crate::support::{TestDb, api, ran};

const SECRET: &str = "approval-hmac-key-do-not-leak";

fn hook(url: String) -> AdaptersConfig {
    let mut a = AdaptersConfig::default();
    let t = WebhookTarget {
        name: "hook".into(),
        url,
        method: "POST".into(),
        headers: BTreeMap::new(),
        secret_env: Some("HOOK_SECRET".into()),
        secret: Some(Secret::new(SECRET)),
        timeout: None,
    };
    a.webhook.targets.insert(t.name.clone(), t);
    a
}

fn config(db: &TestDb, adapters: AdaptersConfig) -> Config {
    let mut c = db.config();
    c.adapters = adapters;
    c
}

fn engine(db: &TestDb, c: Config) -> Engine {
    let registry = Registry::from_config(&c).unwrap();
    Engine::new(db.store.clone(), c, registry)
}

/// One tick by a fresh engine that then lets the lease go, so another config can run next.
async fn tick_once(db: &TestDb, c: Config) {
    let e = engine(db, c);
    ran(&e).await;
    e.release().await.unwrap();
}

async fn real_mode(db: &TestDb) {
    db.store.flags().set_flags(FlagChange { proof_mode: Some(false), ..Default::default() }).await.unwrap();
}

fn webhook(key: &str, approval: bool) -> EnqueueRequest {
    EnqueueRequest {
        action_type: "WEBHOOK".into(),
        payload: json!({"target": "hook", "body": {"post": key}}),
        idempotency_key: Some(key.into()),
        priority: 0,
        not_before: None,
        max_attempts: Some(1),
        expires_at: None,
        traceparent: None,
        require_approval: approval,
    }
}

async fn status(db: &TestDb, id: i64) -> orchestrator::model::Action {
    db.store.actions().action(id).await.unwrap().unwrap()
}

async fn logs(db: &TestDb, id: i64) -> String {
    let rows = db.store.history().logs(Some(id), 100).await.unwrap();
    rows.iter().map(|l| l.message.clone()).collect::<Vec<_>>().join("\n")
}

/// Waits, is previewed once, is approved, then sends exactly the previewed request.
async fn an_approved_action_sends_the_request_it_was_approved_with(db: &TestDb) {
    real_mode(db).await;
    let peer = Peer::answering(Reply::status(200)).await;
    let c = config(db, hook(peer.url("/in")));
    let id = queue::enqueue(&db.store, &webhook("ap-1", true), c.enqueue_defaults()).await.unwrap().id;
    assert_eq!(status(db, id).await.status, ActionStatus::AwaitingApproval);

    // Not rendered yet: an approval is refused and says so.
    let e = db.store.actions().approve(id, "op", None, None).await.unwrap_err();
    assert!(matches!(e, StoreError::Refused(Refusal::NotRendered(x)) if x == id), "{e}");

    tick_once(db, c.clone()).await;
    tick_once(db, c.clone()).await;
    assert_eq!(peer.connections(), 0, "nothing is sent while it waits");
    let a = status(db, id).await;
    assert_eq!(a.status, ActionStatus::AwaitingApproval);
    let ap = a.approval.clone().expect("approval shown");
    let preview = ap.preview.expect("rendered while it waits");
    let sha = ap.preview_sha256.expect("its digest");
    assert!(preview.contains(&peer.url("/in")) && preview.contains("\"post\":\"ap-1\""), "{preview}");
    assert!(!preview.contains(SECRET), "{preview}");
    assert_eq!(orchestrator::artifacts::sha256_hex(preview.as_bytes()), sha);
    assert_eq!(logs(db, id).await.matches("awaiting approval: the request is sha256").count(), 1, "rendered once");

    // The approver names the digest reviewed: another one is refused.
    let wrong = "f".repeat(64);
    let e = db.store.actions().approve(id, "op", None, Some(&wrong)).await.unwrap_err();
    assert!(matches!(e, StoreError::Refused(Refusal::PreviewChanged { .. })), "{e}");
    let done = db.store.actions().approve(id, "alice", Some("reviewed"), Some(&sha)).await.unwrap();
    assert_eq!(done.sha256, sha);
    let a = status(db, id).await;
    assert_eq!(a.status, ActionStatus::Pending);
    let ap = a.approval.unwrap();
    assert_eq!((ap.decided_by.as_deref(), ap.reason.as_deref()), (Some("alice"), Some("reviewed")));
    assert_eq!(ap.approved_sha256.as_deref(), Some(sha.as_str()));
    assert!(logs(db, id).await.contains("approved by alice (reviewed)"), "{}", logs(db, id).await);

    tick_once(db, c).await;
    assert_eq!(status(db, id).await.status, ActionStatus::Success, "{}", logs(db, id).await);
    let got = peer.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, br#"{"post":"ap-1"}"#);
    // A second approval of the same action is refused by its status.
    let e = db.store.actions().approve(id, "op", None, None).await.unwrap_err();
    assert!(matches!(e, StoreError::Refused(Refusal::Status { .. })), "{e}");
}

/// Approved against one target, run against another: refused, nothing sent, the reason given.
async fn a_target_changed_after_approval_is_refused(db: &TestDb) {
    real_mode(db).await;
    let (first, second) = (Peer::answering(Reply::status(200)).await, Peer::answering(Reply::status(200)).await);
    let c = config(db, hook(first.url("/a")));
    let id = queue::enqueue(&db.store, &webhook("ap-target", true), c.enqueue_defaults()).await.unwrap().id;
    tick_once(db, c).await;
    db.store.actions().approve(id, "op", None, None).await.unwrap();
    tick_once(db, config(db, hook(second.url("/b")))).await;
    let a = status(db, id).await;
    assert_eq!(a.status, ActionStatus::Dlq);
    let e = a.last_error.unwrap();
    assert!(e.starts_with("refused: the request differs from the one approved"), "{e}");
    assert!(e.contains("changed after approval"), "{e}");
    assert_eq!((first.connections(), second.connections()), (0, 0), "nothing sent");
}

/// Approved, then its payload edited by hand: refused, nothing sent.
async fn a_payload_changed_after_approval_is_refused(db: &TestDb) {
    real_mode(db).await;
    let peer = Peer::answering(Reply::status(200)).await;
    let c = config(db, hook(peer.url("/in")));
    let id = queue::enqueue(&db.store, &webhook("ap-payload", true), c.enqueue_defaults()).await.unwrap().id;
    tick_once(db, c.clone()).await;
    db.store.actions().approve(id, "op", None, None).await.unwrap();
    let edited = r#"{"target":"hook","body":{"post":"something else"}}"#;
    db.store
        .execute_unprepared(&format!("UPDATE actions SET payload_json = '{edited}' WHERE id = {id}"))
        .await
        .unwrap();
    tick_once(db, c).await;
    let a = status(db, id).await;
    assert_eq!(a.status, ActionStatus::Dlq);
    assert!(a.last_error.unwrap().contains("differs from the one approved"));
    assert_eq!(peer.connections(), 0);
}

/// A rejection and an expiry cancel the action with the reason; neither is ever sent.
async fn rejected_and_expired_approvals_are_cancelled_with_the_reason(db: &TestDb) {
    real_mode(db).await;
    let peer = Peer::answering(Reply::status(200)).await;
    let mut c = config(db, hook(peer.url("/in")));
    let rejected = queue::enqueue(&db.store, &webhook("ap-rej", true), c.enqueue_defaults()).await.unwrap().id;
    let e = db.store.actions().reject(rejected, "bob", " ").await.unwrap_err();
    assert!(e.to_string().contains("needs a reason"), "{e}");
    db.store.actions().reject(rejected, "bob", "wrong audience").await.unwrap();
    let a = status(db, rejected).await;
    assert_eq!(a.status, ActionStatus::Cancelled);
    assert_eq!(a.last_error.as_deref(), Some("rejected by bob: wrong audience"));
    assert!(logs(db, rejected).await.contains("rejected by bob: wrong audience"));

    c.approvals.expire_after = Duration::from_millis(50);
    let expired = queue::enqueue(&db.store, &webhook("ap-exp", true), c.enqueue_defaults()).await.unwrap().id;
    let kept = queue::enqueue(&db.store, &webhook("ap-kept", true), db.config().enqueue_defaults()).await.unwrap().id;
    tokio::time::sleep(Duration::from_millis(120)).await;
    tick_once(db, c).await;
    let a = status(db, expired).await;
    assert_eq!(a.status, ActionStatus::Cancelled);
    assert_eq!(a.last_error.as_deref(), Some(orchestrator::store::APPROVAL_EXPIRED));
    assert_eq!(status(db, kept).await.status, ActionStatus::AwaitingApproval, "24 h by default");
    assert_eq!(peer.connections(), 0);
}

/// No claimer takes a waiting action, whatever its priority; once approved it is claimed.
async fn a_claimer_never_takes_an_awaiting_action(db: &TestDb) {
    let mut req = crate::support::noop("ap-claim");
    req.require_approval = true;
    req.priority = 1000;
    let id = queue::enqueue(&db.store, &req, 3).await.unwrap().id;
    let w = crate::support::worker(&db.store, "approvals-w", Duration::from_secs(60)).await;
    assert!(db.store.actions().claim(&w, 10).await.unwrap().is_empty());
    // The config's types need an approval too, for every enqueue path.
    let mut c = db.config();
    c.approvals.types.insert("NOOP".into());
    let typed = queue::enqueue(&db.store, &crate::support::noop("ap-typed"), c.enqueue_defaults()).await.unwrap();
    assert_eq!(typed.status, ActionStatus::AwaitingApproval);
    let batch = [crate::support::noop("ap-bulk")];
    let lines: String = batch.iter().map(|r| format!("{}\n", bulk_line(r))).collect();
    queue::enqueue_jsonl(&db.store, lines.as_bytes(), c.enqueue_defaults()).await.unwrap();
    let listed = db
        .store
        .actions()
        .list_actions(&orchestrator::store::ActionFilter {
            status: Some(ActionStatus::AwaitingApproval),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(db.store.actions().claim(&w, 10).await.unwrap().is_empty());
    // A NOOP renders nothing: its preview is empty, and is what is approved.
    let e = engine(db, db.config());
    ran(&e).await;
    e.release().await.unwrap();
    db.store.actions().approve(id, "op", None, None).await.unwrap();
    let claimed = db.store.actions().claim(&w, 10).await.unwrap();
    assert_eq!(claimed.iter().map(|c| c.action.id).collect::<Vec<_>>(), vec![id]);
}

fn bulk_line(r: &EnqueueRequest) -> String {
    json!({"action_type": r.action_type, "payload": r.payload, "idempotency_key": r.idempotency_key}).to_string()
}

/// The admin API: the token is required, bad ids and bodies are refused by name, one action
/// or many are decided, and the metrics count what waits.
async fn the_api_approves_and_rejects_under_the_token(db: &TestDb) {
    let c = api::config(db, true);
    let e = engine(db, c.clone());
    let st = api::state(&e);
    let mut ids = Vec::new();
    for k in ["api-1", "api-2", "api-3"] {
        let mut req = crate::support::noop(k);
        req.require_approval = true;
        ids.push(queue::enqueue(&db.store, &req, 3).await.unwrap().id);
    }
    let metrics = api::get(&st, "/metrics").await.body;
    assert_eq!(api::sample(&metrics, "orchestrator_actions_awaiting_approval"), 3.0);
    assert!(api::sample(&metrics, "orchestrator_approval_oldest_waiting_seconds") >= 0.0);

    let open = api::call(&st, "POST", &format!("/api/actions/{}/approve", ids[0]), None, None).await;
    assert_eq!(open.status, 401);
    let bad = api::admin(&st, "POST", "/api/actions/abc/approve", None).await;
    assert_eq!(bad.status, 400);
    assert!(bad.error().contains("'abc'"), "{}", bad.body);
    let early = api::admin(&st, "POST", &format!("/api/actions/{}/approve", ids[0]), None).await;
    assert_eq!(early.status, 409, "not rendered yet: {}", early.body);
    ran(&e).await;

    let one = api::admin(&st, "POST", &format!("/api/actions/{}/approve", ids[0]), Some(r#"{"reason":"ok"}"#)).await;
    assert_eq!(one.status, 200, "{}", one.body);
    let a = status(db, ids[0]).await;
    assert_eq!(a.status, ActionStatus::Pending);
    assert_eq!(a.approval.unwrap().decided_by.as_deref(), Some("api:tester"));

    let no_reason = api::admin(&st, "POST", &format!("/api/actions/{}/reject", ids[1]), Some("{}")).await;
    assert_eq!(no_reason.status, 400);
    assert!(no_reason.error().contains("reason"), "{}", no_reason.body);
    let unknown = api::admin(&st, "POST", "/api/approvals/approve", Some(r#"{"ids":[1],"why":"x"}"#)).await;
    assert_eq!(unknown.status, 400);
    assert!(unknown.error().contains("why"), "{}", unknown.body);
    let missing = api::admin(&st, "POST", "/api/actions/987654/approve", None).await;
    assert_eq!(missing.status, 404, "{}", missing.body);

    let body = format!(r#"{{"ids":[{},{},987654],"reason":"batch"}}"#, ids[1], ids[0]);
    let many = api::admin(&st, "POST", "/api/approvals/approve", Some(&body)).await;
    assert_eq!(many.status, 200, "{}", many.body);
    let j = many.json();
    assert_eq!(j["approved"].as_array().unwrap().len(), 1, "{j}");
    assert_eq!(j["refused"].as_array().unwrap().len(), 2, "{j}");
    let body = format!(r#"{{"ids":[{}],"reason":"not this one"}}"#, ids[2]);
    let rej = api::admin(&st, "POST", "/api/approvals/reject", Some(&body)).await;
    assert_eq!(rej.status, 200, "{}", rej.body);
    assert_eq!(status(db, ids[2]).await.status, ActionStatus::Cancelled);
    let metrics = api::get(&st, "/metrics").await.body;
    assert_eq!(api::sample(&metrics, "orchestrator_actions_awaiting_approval"), 0.0);
    e.release().await.unwrap();
}

/// A rule's enqueue asks for an approval two ways: `enqueue_for_approval`, or `approval: true`
/// on an `enqueue` decision; either action waits. A non-boolean `approval` is the rule's error.
async fn a_rules_enqueue_can_wait_for_approval(db: &TestDb) {
    let dir = db.dir.path().join("rules");
    std::fs::create_dir_all(&dir).unwrap();
    let rule = r#"
        let d = enqueue("NOOP", #{n: 2}, "rule-map", "by map");
        d.approval = true;
        [enqueue_for_approval("NOOP", #{n: 1}, "rule-fn", "needs review"), d]
    "#;
    std::fs::write(dir.join("ask.rhai"), rule).unwrap();
    let mut c = db.config();
    c.rules_dir = dir;
    let e = engine(db, c);
    assert_eq!(e.decider().load_rules().unwrap(), 1);
    // The first tick enqueues (after its approvals step); the second renders what they send.
    ran(&e).await;
    ran(&e).await;
    e.release().await.unwrap();
    let waiting = db
        .store
        .actions()
        .list_actions(&orchestrator::store::ActionFilter {
            status: Some(ActionStatus::AwaitingApproval),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut keys: Vec<&str> = waiting.iter().map(|a| a.idempotency_key.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["rule-fn", "rule-map"]);
    assert!(waiting.iter().all(|a| a.approval.as_ref().is_some_and(|ap| ap.preview_sha256.is_some())));
    let bad = json!({"kind": "enqueue", "type": "NOOP", "key": "k", "reason": "r", "approval": "yes"});
    let e = orchestrator::rules::decision_from_json("r", &bad).unwrap_err();
    assert!(e.contains("`approval` must be true or false"), "{e}");
}

/// Leader `run --no-execute` and a `worker` process on PostgreSQL: the worker runs the work
/// beside an action awaiting approval and never claims that one; once approved (after the
/// leader rendered it), the worker runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_postgres_never_claims_an_awaiting_action() {
    use crate::support::daemon::{Procs, spawn};
    let Some(db) = TestDb::postgres().await else { return };
    std::fs::write(db.dir.path().join("o.yaml"), "tick_interval_seconds: 0.5\nworkers:\n  poll_seconds: 0.2\n")
        .unwrap();
    let mut waiting = crate::support::noop("pg-waits");
    waiting.require_approval = true;
    waiting.priority = 100;
    let held = queue::enqueue(&db.store, &waiting, 3).await.unwrap().id;
    for i in 0..5 {
        queue::enqueue(&db.store, &crate::support::noop(&format!("pg-free-{i}")), 3).await.unwrap();
    }
    let _procs = Procs(vec![spawn(&db, &["run", "--no-execute", "--no-http"]), spawn(&db, &["worker"])]);
    let start = std::time::Instant::now();
    loop {
        let counts = db.store.actions().count_by_status().await.unwrap();
        if counts[&ActionStatus::Success] == 5 && status(&db, held).await.approval.unwrap().preview_sha256.is_some() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the free work never ran: {counts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let a = status(&db, held).await;
    assert_eq!((a.status, a.attempts), (ActionStatus::AwaitingApproval, 0), "never claimed");
    db.store.actions().approve(held, "op", None, None).await.unwrap();
    while status(&db, held).await.status != ActionStatus::Success {
        assert!(start.elapsed() < Duration::from_secs(60), "the approved action never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ran_by = status(&db, held).await.claim.unwrap().worker;
    let workers = db.store.workers().list(Duration::from_secs(30)).await.unwrap();
    assert!(workers.iter().any(|w| w.id == ran_by), "{ran_by} is a registered worker: {workers:?}");
    drop(_procs);
    db.cleanup().await;
}

fn orch(db: &TestDb, args: &[&str]) -> std::process::Output {
    crate::support::run(crate::support::bin(db.dir.path()).arg("--database-url").arg(&db.url).args(args))
}

/// The CLI: `enqueue --require-approval`, `actions show` with the request, `actions approve`
/// and `reject` of one or many ids (bad ids refused by name, refusals on stderr, exit 1).
async fn the_cli_shows_approves_and_rejects(db: &TestDb) {
    for k in ["cli-1", "cli-2", "cli-3"] {
        let o = orch(db, &["enqueue", "NOOP", "--key", k, "--payload", r#"{"n":1}"#, "--require-approval"]);
        assert_eq!(o.status.code(), Some(0), "{}", crate::support::stderr(&o));
        assert!(crate::support::stdout(&o).contains("AWAITING_APPROVAL"), "{}", crate::support::stdout(&o));
    }
    let o = orch(db, &["actions", "approve", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(crate::support::stderr(&o).contains("not rendered yet"), "{}", crate::support::stderr(&o));
    let o = orch(db, &["run-once"]);
    assert_eq!(o.status.code(), Some(0), "{}", crate::support::stderr(&o));
    let shown = crate::support::stdout(&orch(db, &["actions", "show", "1"]));
    assert!(shown.contains("AWAITING_APPROVAL") && shown.contains("request sha256:"), "{shown}");
    let o = orch(db, &["actions", "approve", "1", "x2"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(crate::support::stderr(&o).contains("'x2'"), "{}", crate::support::stderr(&o));
    let o = orch(db, &["actions", "reject", "3"]);
    assert_eq!(o.status.code(), Some(2), "a rejection needs --reason");
    let o = orch(db, &["actions", "approve", "1", "2", "999999", "--reason", "looks right", "--by", "carol"]);
    assert_eq!(o.status.code(), Some(1));
    let (out, err) = (crate::support::stdout(&o), crate::support::stderr(&o));
    assert!(out.contains("action 1: approved") && out.contains("action 2: approved"), "{out}");
    assert!(err.contains("1 of 3 action(s) not approved") && err.contains("action 999999 not found"), "{err}");
    let o = orch(db, &["--json", "actions", "reject", "3", "--reason", "wrong channel"]);
    assert_eq!(o.status.code(), Some(0), "{}", crate::support::stderr(&o));
    assert_eq!(crate::support::json(&o)["rejected"][0]["id"], 3);
    let a = status(db, 1).await;
    assert_eq!(a.status, ActionStatus::Pending);
    let ap = a.approval.unwrap();
    assert_eq!((ap.decided_by.as_deref(), ap.reason.as_deref()), (Some("carol"), Some("looks right")));
    let expected = format!("rejected by cli:{}: wrong channel", whoami());
    assert_eq!(status(db, 3).await.last_error.as_deref(), Some(expected.as_str()));
}

fn whoami() -> String {
    std::env::var("USER").unwrap_or_else(|_| "unknown".to_string())
}

backend_tests!(
    a_rules_enqueue_can_wait_for_approval,
    the_cli_shows_approves_and_rejects,
    an_approved_action_sends_the_request_it_was_approved_with,
    a_target_changed_after_approval_is_refused,
    a_payload_changed_after_approval_is_refused,
    rejected_and_expired_approvals_are_cancelled_with_the_reason,
    a_claimer_never_takes_an_awaiting_action,
    the_api_approves_and_rejects_under_the_token
);
