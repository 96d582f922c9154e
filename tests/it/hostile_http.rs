//! The hostile HTTP corpus: cases kept as data in `tests/hostile/http/*.yaml`, each sent through
//! the router (`tower::ServiceExt::oneshot`) on SQLite and PostgreSQL with an admin token set.
//! Every case must answer its 4xx status with a clear error, must not panic, and must leave the
//! database exactly as it was.

use axum::body::Body;
use axum::http::Request;
use orchestrator::config::AdminTokens;
use orchestrator::http::{AppState, router};
use serde::Deserialize;
use tower::ServiceExt;

use crate::backend_tests;
use crate::support::TestDb;
use crate::support::hostile::{expand, hex, visible_state};
use crate::support::noop;

const TOKEN: &str = "0123456789abcdef-hostile";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    method: String,
    path: String,
    auth: String,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    body_hex: Option<String>,
    status: u16,
    error: String,
}

fn load() -> Vec<Case> {
    crate::support::hostile::load_cases::<Case>("hostile/http").into_iter().map(|(_, c)| c).collect()
}

backend_tests!(every_hostile_request_gets_a_4xx_and_changes_nothing);

async fn every_hostile_request_gets_a_4xx_and_changes_nothing(db: &TestDb) {
    let cases = load();
    assert!(cases.len() >= 25, "the HTTP corpus has {} cases", cases.len());
    let mut config = db.config();
    config.admin_tokens = AdminTokens::parse(&format!("tester:{TOKEN}")).unwrap();
    let engine = db.engine(config);
    let st = AppState::new(engine, true);
    // One PENDING action (id 1) for the routes that name an action.
    let first = orchestrator::queue::enqueue(&db.store, &noop("resident"), 3).await.unwrap();
    assert_eq!(first.id, 1);

    let mut failures = Vec::new();
    for case in &cases {
        let before = visible_state(&db.store).await;
        let mut req = Request::builder().method(case.method.as_str()).uri(case.path.as_str());
        match case.auth.as_str() {
            "none" => {}
            "good" => req = req.header("authorization", format!("Bearer {TOKEN}")),
            "wrong" => req = req.header("authorization", "Bearer not-the-token-at-all"),
            other => req = req.header("authorization", other),
        }
        let body = match (&case.body, &case.body_hex) {
            (Some(b), _) => expand(b).into_bytes(),
            (None, Some(h)) => hex(h),
            (None, None) => Vec::new(),
        };
        if !body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        let res = router(st.clone()).oneshot(req.body(Body::from(body)).unwrap()).await.unwrap();
        let status = res.status().as_u16();
        let bytes = axum::body::to_bytes(res.into_body(), 10 << 20).await.unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let after = visible_state(&db.store).await;
        if status != case.status || !(400..500).contains(&status) {
            failures.push(format!("{}: status {status}, expected {}: {text}", case.name, case.status));
        } else if !text.contains(&case.error) {
            failures.push(format!("{}: error {text:?} does not mention {:?}", case.name, case.error));
        } else if text.contains("panicked") {
            failures.push(format!("{}: {text}", case.name));
        } else if before != after {
            failures.push(format!("{}: the database changed", case.name));
        }
    }
    assert!(failures.is_empty(), "{} of {} HTTP cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
    eprintln!(
        "hostile HTTP[{:?}]: {} cases, each a 4xx, no panic, database unchanged",
        db.store.backend(),
        cases.len()
    );
}
