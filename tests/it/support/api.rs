//! The HTTP API in process: a config with or without tokens, the app state of an engine, and
//! requests through the router (as a user, as an admin), with the answer read back.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use orchestrator::config::{AdminTokens, Config};
use orchestrator::http::{AppState, router};
use orchestrator::tick::Engine;
use serde_json::Value;
use tower::ServiceExt;

use crate::support::TestDb;

pub const TOKEN: &str = "0123456789abcdef-test";

pub fn config(db: &TestDb, tokens: bool) -> Config {
    let mut c = db.config();
    if tokens {
        c.admin_tokens = AdminTokens::parse(&format!("tester:{TOKEN}")).unwrap();
    }
    c
}

pub fn state(engine: &Engine) -> AppState {
    AppState::new(engine.clone(), true)
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_else(|| panic!("no error in {}", self.body)).to_string()
    }
}

pub async fn call(st: &AppState, method: &str, uri: &str, auth: Option<&str>, body: Option<&str>) -> Answer {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let req = req.body(body.map_or_else(Body::empty, |b| Body::from(b.to_string()))).unwrap();
    let res = router(st.clone()).oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = axum::body::to_bytes(res.into_body(), 10 << 20).await.unwrap();
    Answer { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() }
}

pub async fn get(st: &AppState, uri: &str) -> Answer {
    call(st, "GET", uri, None, None).await
}

pub const BEARER: &str = "Bearer 0123456789abcdef-test";

pub async fn admin(st: &AppState, method: &str, uri: &str, body: Option<&str>) -> Answer {
    call(st, method, uri, Some(BEARER), body).await
}

/// The value of an unlabelled sample (or one with exactly these labels) in Prometheus text.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}
