//! The admin API under `/api/`: flags, run-once, enqueue, list, requeue, cancel (one, or the
//! DLQ rows a page showed, by id), ticks and a tick's explain, decisions, the live snapshot,
//! the actions summary, the per-type limits (list with usage, set, clear, override, end an
//! override), and the schedules (`schedules.rs`).
//!
//! Every route, reads included (actions carry payloads, which can hold secrets), needs
//! `Authorization: Bearer <token>` matching one of `ORCHESTRATOR_ADMIN_TOKEN`'s tokens,
//! compared in constant time; with no token configured every route answers 403 "admin API
//! disabled". Bodies are size-limited JSON; unknown fields, wrong types, missing fields and a
//! key given twice in one object (at any depth) are 400 naming the field or the key. Every change is logged with the token's name and the time. Validation
//! of actions is the queue's (`queue::enqueue`), not repeated here.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};
use crate::limits::{self, LimitField, LimitSpec, LimitValue};
use crate::model::{self, ActionStatus};
use crate::queue::{self, EnqueueRequest, QueueError};
use crate::store::{ActionFilter, Authority, FlagChange};
use crate::tick::TickOutcome;

mod windows;

/// The name of the token a request was authorised by.
#[derive(Clone, Debug)]
pub(super) struct Who(pub(super) String);

pub(super) fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/api/flags", post(flags))
        .route("/api/run-once", post(run_once))
        .route("/api/actions", post(enqueue).get(list_actions))
        .route("/api/actions/{id}/requeue", post(requeue))
        .route("/api/actions/{id}/cancel", post(cancel))
        .route("/api/dlq/requeue", post(dlq_requeue))
        .route("/api/dlq/cancel", post(dlq_cancel))
        .route("/api/ticks", get(ticks))
        .route("/api/ticks/{id}/explain", get(explain))
        .route("/api/decisions", get(decisions))
        .route("/api/snapshot", get(snapshot))
        .route("/api/summary", get(summary))
        .route("/api/workers", get(workers))
        .route("/api/limits", get(list_limits))
        .route("/api/limits/{type}", put(put_limit).delete(delete_limit))
        .route("/api/limits/{type}/override", post(override_limit))
        .route("/api/limits/{type}/override/{field}", delete(end_override))
        .route("/api/schedules", get(super::schedules::list).post(super::schedules::add))
        .route("/api/schedules/{name}", delete(super::schedules::remove))
        .route("/api/schedules/{name}/pause", post(super::schedules::pause))
        .route("/api/schedules/{name}/resume", post(super::schedules::resume))
        .route("/api/schedules/{name}/run-now", post(super::schedules::run_now))
        .merge(super::approvals::routes())
        .route("/api/windows", get(windows::list).post(windows::add))
        .route("/api/windows/{id}/end", post(windows::end))
        .route_layer(middleware::from_fn_with_state(state, require_token))
}

async fn require_token(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    match authorise(&st, req.headers()) {
        Ok(who) => {
            req.extensions_mut().insert(who);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// The guard of reads that quote log text, errors, payloads or samples (`/status`): open while
/// no token is configured (then only loopback can be served, see `check_bind`), else the same
/// bearer token as the admin API.
pub(super) async fn require_token_once_set(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if st.tokens.is_empty() {
        return next.run(req).await;
    }
    require_token(State(st), req, next).await
}

/// Which token the request carries; 403 when the API is disabled, 401 (with a `Bearer`
/// challenge) when the token is missing or wrong.
fn authorise(st: &AppState, headers: &HeaderMap) -> Result<Who, ApiError> {
    if st.tokens.is_empty() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("admin API disabled: set {} to enable it", crate::config::ADMIN_TOKEN_ENV),
        ));
    }
    let unauthorised = |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, message);
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorised("missing Authorization: Bearer <token>"));
    };
    let given = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let Some(given) = given else {
        return Err(unauthorised("the Authorization header must be 'Bearer <token>'"));
    };
    // Hashing first makes the comparison fixed-length; every token is compared, match or not.
    let given = Sha256::digest(given.as_bytes());
    let mut found: Option<&str> = None;
    for (name, token) in st.tokens.entries() {
        let expected = Sha256::digest(token.as_bytes());
        if bool::from(expected[..].ct_eq(&given[..])) && found.is_none() {
            found = Some(name);
        }
    }
    match found {
        Some(name) => Ok(Who(name.to_string())),
        None => {
            tracing::warn!("admin API: request with an invalid token refused");
            Err(unauthorised("invalid token"))
        }
    }
}

/// Parses a JSON body into `T`, naming the field that is wrong.
pub(super) fn parse_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| ApiError::new(e.status(), format!("body: {}", e.body_text())))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("body: expected a JSON object, got nothing"));
    }
    let value = serde_json::from_slice::<Unambiguous>(&bytes)
        .map_err(|e| ApiError::bad_request(format!("body: not valid JSON: {e}")))?
        .0;
    if !value.is_object() {
        let kind = match value {
            serde_json::Value::Array(_) => "an array",
            serde_json::Value::String(_) => "a string",
            serde_json::Value::Number(_) => "a number",
            serde_json::Value::Bool(_) => "a boolean",
            _ => "null",
        };
        return Err(ApiError::bad_request(format!("body: expected a JSON object, got {kind}")));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path.is_empty() {
            ApiError::bad_request(format!("body: {}", e.inner()))
        } else {
            ApiError::bad_request(format!("body field `{path}`: {}", e.inner()))
        }
    })
}

/// The most of a duplicate key an error quotes, in characters.
const QUOTED_KEY_CHARS: usize = 64;

/// A JSON value in which no object has a key twice, at any depth: `{"a":1,"a":2}` is refused
/// naming the key, where `serde_json::Value` would keep the last value and the sender's intent
/// would be a guess.
struct Unambiguous(serde_json::Value);

impl<'de> Deserialize<'de> for Unambiguous {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UnambiguousVisitor)
    }
}

struct UnambiguousVisitor;

impl<'de> serde::de::Visitor<'de> for UnambiguousVisitor {
    type Value = Unambiguous;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Unambiguous, E> {
        Ok(Unambiguous(v.into()))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Unambiguous, E> {
        Ok(Unambiguous(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Unambiguous, E> {
        Ok(Unambiguous(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Unambiguous, E> {
        // JSON has no NaN or infinity, so every number it reads is one `Value` can hold.
        Ok(Unambiguous(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, serde_json::Value::Number)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Unambiguous, E> {
        Ok(Unambiguous(v.into()))
    }

    fn visit_string<E>(self, v: String) -> Result<Unambiguous, E> {
        Ok(Unambiguous(v.into()))
    }

    fn visit_unit<E>(self) -> Result<Unambiguous, E> {
        Ok(Unambiguous(serde_json::Value::Null))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Unambiguous, A::Error> {
        let mut out = Vec::new();
        while let Some(Unambiguous(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Unambiguous(serde_json::Value::Array(out)))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Unambiguous, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                let mut shown: String =
                    key.chars().take(QUOTED_KEY_CHARS).collect::<String>().escape_debug().to_string();
                if key.chars().count() > QUOTED_KEY_CHARS {
                    shown.push('…');
                }
                return Err(serde::de::Error::custom(format!("duplicate key `{shown}`")));
            }
            let Unambiguous(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Unambiguous(serde_json::Value::Object(out)))
    }
}

pub(super) fn parse_id(text: &str) -> Result<i64, ApiError> {
    text.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::bad_request(format!("path: action id must be a positive integer, got '{text}'")))
}

fn parse_limit(q: &HashMap<String, String>, default: u64, max: u64) -> Result<u64, ApiError> {
    match q.get("limit") {
        None => Ok(default),
        Some(v) => v.parse::<u64>().ok().filter(|n| (1..=max).contains(n)).ok_or_else(|| {
            ApiError::bad_request(format!("query parameter limit must be an integer from 1 to {max}, got '{v}'"))
        }),
    }
}

fn only_params(q: &HashMap<String, String>, allowed: &[&str]) -> Result<(), ApiError> {
    let mut unknown: Vec<&str> = q.keys().map(String::as_str).filter(|k| !allowed.contains(k)).collect();
    unknown.sort_unstable();
    match unknown.first() {
        None => Ok(()),
        Some(k) => {
            Err(ApiError::bad_request(format!("unknown query parameter '{k}' (expected: {})", allowed.join(", "))))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlagsBody {
    paused: Option<bool>,
    killed: Option<bool>,
    proof_mode: Option<bool>,
}

async fn flags(
    State(st): State<AppState>,
    axum::Extension(who): axum::Extension<Who>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let b: FlagsBody = parse_body(body)?;
    if b.paused.is_none() && b.killed.is_none() && b.proof_mode.is_none() {
        return Err(ApiError::bad_request("body: give at least one of `paused`, `killed`, `proof_mode`"));
    }
    if b.proof_mode == Some(false) && st.config.proof_enforced {
        return Err(ApiError::new(StatusCode::CONFLICT, crate::status::PROOF_ENFORCED_REFUSAL));
    }
    let flags =
        st.store.flags().set_flags(FlagChange { paused: b.paused, killed: b.killed, proof_mode: b.proof_mode }).await?;
    tracing::info!(
        who = %who.0,
        at = %model::now().to_rfc3339(),
        paused = ?b.paused,
        killed = ?b.killed,
        proof_mode = ?b.proof_mode,
        "admin API: flags changed"
    );
    Ok(axum::Json(flags).into_response())
}

async fn run_once(
    State(st): State<AppState>,
    axum::Extension(who): axum::Extension<Who>,
) -> Result<Response, ApiError> {
    tracing::info!(who = %who.0, at = %model::now().to_rfc3339(), "admin API: run-once requested");
    if let Some(why) = st.config.acting.refusal(true) {
        return Err(ApiError::new(StatusCode::CONFLICT, why));
    }
    match st.engine.tick().await? {
        TickOutcome::Ran(report) => {
            if !st.ticking
                && let Err(e) = st.engine.release().await
            {
                tracing::warn!(error = %e, "could not release the lease after run-once; it expires by itself");
            }
            Ok(axum::Json(report).into_response())
        }
        TickOutcome::NotLeader { owner, epoch, expires_at } => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "lease '{}' is held by {owner} (epoch {epoch}) until {}; nothing done",
                crate::lease::LEASE_NAME,
                expires_at.to_rfc3339()
            ),
        )),
    }
}

async fn enqueue(
    State(st): State<AppState>,
    axum::Extension(who): axum::Extension<Who>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let mut req: EnqueueRequest = parse_body(body)?;
    req.traceparent = traceparent(&headers, req.traceparent)?;
    let outcome = queue::enqueue(&st.store, &req, st.config.enqueue_defaults()).await.map_err(|e| match e {
        QueueError::Invalid(m) => ApiError::bad_request(m),
        QueueError::Store(e) => e.into(),
    })?;
    tracing::info!(
        who = %who.0,
        at = %model::now().to_rfc3339(),
        action_id = outcome.id,
        action_type = %req.action_type,
        duplicate = outcome.duplicate,
        "admin API: action enqueued"
    );
    let code = if outcome.duplicate { StatusCode::OK } else { StatusCode::CREATED };
    Ok((code, axum::Json(outcome)).into_response())
}

/// The trace context of an enqueue: the W3C `traceparent` header (checked here, so a bad one
/// is named as the header), or the body's `traceparent`; both must agree when both are given.
fn traceparent(headers: &HeaderMap, body: Option<String>) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all("traceparent").iter();
    let Some(value) = values.next() else { return Ok(body) };
    if values.next().is_some() {
        return Err(ApiError::bad_request("header traceparent: given more than once".to_string()));
    }
    let text =
        value.to_str().map_err(|_| ApiError::bad_request("header traceparent: not visible ASCII".to_string()))?;
    let tp = text.trim().parse::<model::TraceParent>().map_err(|e| ApiError::bad_request(format!("header {e}")))?;
    match body {
        Some(b) if b != tp.to_string() => Err(ApiError::bad_request(format!(
            "header traceparent ({tp}) and the body's traceparent ({b:?}) differ; give one"
        ))),
        _ => Ok(Some(tp.to_string())),
    }
}

async fn list_actions(
    State(st): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    only_params(&q, &["status", "type", "limit"])?;
    let status = match q.get("status").filter(|s| !s.is_empty()) {
        Some(s) => {
            Some(s.parse::<ActionStatus>().map_err(|e| ApiError::bad_request(format!("query parameter status: {e}")))?)
        }
        None => None,
    };
    let action_type = q.get("type").filter(|s| !s.is_empty()).cloned();
    let limit = parse_limit(&q, 50, 1000)?;
    let list = st.store.actions().list_actions(&ActionFilter { status, action_type, limit }).await?;
    Ok(axum::Json(list).into_response())
}

async fn requeue(
    State(st): State<AppState>,
    axum::Extension(who): axum::Extension<Who>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    st.store.actions().requeue(Authority::Operator, id).await?;
    let ids = vec![id];
    tracing::info!(who = %who.0, at = %model::now().to_rfc3339(), action_id = id, "admin API: action requeued");
    Ok(axum::Json(serde_json::json!({ "requeued": ids })).into_response())
}

async fn cancel(
    State(st): State<AppState>,
    axum::Extension(who): axum::Extension<Who>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    st.store.actions().cancel(Authority::Operator, id, None).await?;
    tracing::info!(who = %who.0, at = %model::now().to_rfc3339(), action_id = id, "admin API: action cancelled");
    Ok(axum::Json(serde_json::json!({ "cancelled": id })).into_response())
}

async fn ticks(State(st): State<AppState>, Query(q): Query<HashMap<String, String>>) -> Result<Response, ApiError> {
    only_params(&q, &["limit"])?;
    let limit = parse_limit(&q, 20, 1000)?;
    Ok(axum::Json(st.store.ledger().recent_ticks(limit).await?).into_response())
}

/// `GET /api/decisions?tick=N`: that tick's decisions in the order written (404 if there is no
/// such tick); without `tick`, the last `limit` decisions of any tick, newest first.
async fn decisions(State(st): State<AppState>, Query(q): Query<HashMap<String, String>>) -> Result<Response, ApiError> {
    only_params(&q, &["tick", "limit"])?;
    let Some(tick) = q.get("tick") else {
        let limit = parse_limit(&q, 50, 1000)?;
        return Ok(axum::Json(st.store.decisions().recent_decisions(limit).await?).into_response());
    };
    let tick_id = tick.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
        ApiError::bad_request(format!("query parameter tick must be a positive integer (a tick id), got '{tick}'"))
    })?;
    let limit = parse_limit(&q, u64::MAX, 1000)?;
    let mut rows = st.store.decisions().list(tick_id).await?;
    if rows.is_empty() && st.store.ledger().tick_decide(tick_id).await?.is_none() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no tick {tick_id} in the ledger")));
    }
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    Ok(axum::Json(rows).into_response())
}

/// A bulk edit's body: the ids the page showed. Rows not among them are never touched.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdsBody {
    ids: Vec<i64>,
}

fn parse_ids(body: Result<Bytes, BytesRejection>) -> Result<Vec<i64>, ApiError> {
    let b: IdsBody = parse_body(body)?;
    if b.ids.is_empty() {
        return Err(ApiError::bad_request("body field `ids`: give at least one action id"));
    }
    if b.ids.len() > crate::store::MAX_BULK_IDS {
        return Err(ApiError::bad_request(format!(
            "body field `ids`: at most {} ids per request, got {}",
            crate::store::MAX_BULK_IDS,
            b.ids.len()
        )));
    }
    if let Some(bad) = b.ids.iter().find(|id| **id <= 0) {
        return Err(ApiError::bad_request(format!("body field `ids`: action ids are positive integers, got {bad}")));
    }
    Ok(b.ids)
}

/// `POST /api/dlq/requeue {"ids": [...]}`: those of the ids still in DLQ go back to PENDING.
async fn dlq_requeue(
    State(st): State<AppState>,
    axum::Extension(who): axum::Extension<Who>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let ids = parse_ids(body)?;
    let done = st.store.actions().requeue_ids(&ids).await?;
    tracing::info!(
        who = %who.0,
        at = %model::now().to_rfc3339(),
        requeued = done.changed.len(),
        skipped = done.skipped.len(),
        "admin API: DLQ actions requeued"
    );
    Ok(axum::Json(serde_json::json!({ "requeued": done.changed, "skipped": done.skipped })).into_response())
}

/// `POST /api/dlq/cancel {"ids": [...]}`: those of the ids still in DLQ are cancelled.
async fn dlq_cancel(
    State(st): State<AppState>,
    axum::Extension(who): axum::Extension<Who>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let ids = parse_ids(body)?;
    let done = st.store.actions().cancel_ids(&ids, &[ActionStatus::Dlq]).await?;
    tracing::info!(
        who = %who.0,
        at = %model::now().to_rfc3339(),
        cancelled = done.changed.len(),
        skipped = done.skipped.len(),
        "admin API: DLQ actions cancelled"
    );
    Ok(axum::Json(serde_json::json!({ "cancelled": done.changed, "skipped": done.skipped })).into_response())
}

/// `GET /api/ticks/{id}/explain`: `orchestrator explain --tick N --json`.
async fn explain(State(st): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let tick_id = id
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::bad_request(format!("path: tick id must be a positive integer, got '{id}'")))?;
    match crate::explain::explain(&st.store, tick_id).await? {
        Some(e) => Ok(axum::Json(e).into_response()),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, format!("no tick {tick_id} in the ledger"))),
    }
}

/// `GET /api/snapshot`: the snapshot the rules would see now, computed on demand (the shape of
/// `run-once --dry-run --json`'s `snapshot`). Read-only; behind the token because its samples
/// quote errors.
async fn snapshot(State(st): State<AppState>) -> Result<Response, ApiError> {
    let (snap, _) = st.engine.snapshot_now().await?;
    Ok(axum::Json(snap).into_response())
}

/// `GET /api/summary`: `orchestrator actions summary --json`.
async fn workers(State(st): State<AppState>) -> Result<Response, ApiError> {
    Ok(axum::Json(st.store.workers().list(st.config.workers.ttl).await?).into_response())
}

async fn summary(State(st): State<AppState>) -> Result<Response, ApiError> {
    Ok(axum::Json(st.store.actions().actions_summary().await?).into_response())
}

/// `GET /api/limits`: `orchestrator limits list --json`, every limited type with its usage.
async fn list_limits(State(st): State<AppState>) -> Result<Response, ApiError> {
    Ok(axum::Json(st.store.limits().limit_usage().await?).into_response())
}

fn parse_type(text: &str) -> Result<&str, ApiError> {
    queue::validate_type(text).map_err(|e| ApiError::bad_request(format!("path: {e}")))?;
    Ok(text)
}

/// A type's base limits as `PUT /api/limits/{type}` takes them; a field left out is no limit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitBody {
    max_running: Option<i64>,
    rate: Option<String>,
    daily_budget: Option<i64>,
    partition_by: Option<String>,
    allowed_hours: Option<String>,
}

impl LimitBody {
    fn spec(self) -> Result<LimitSpec, ApiError> {
        let field = |name: &str, e: String| ApiError::bad_request(format!("body field `{name}`: {e}"));
        let count = |f: LimitField, v: Option<i64>| -> Result<Option<u64>, ApiError> {
            v.map(|n| limits::whole(f, &n.to_string()).map_err(|e| field(f.as_str(), e))).transpose()
        };
        let spec = LimitSpec {
            max_running: count(LimitField::MaxRunning, self.max_running)?,
            rate: self.rate.map(|r| r.parse().map_err(|e| field("rate", e))).transpose()?,
            daily_budget: count(LimitField::DailyBudget, self.daily_budget)?,
            partition_by: self.partition_by.map(|p| p.parse().map_err(|e| field("partition_by", e))).transpose()?,
            allowed_hours: self.allowed_hours.map(|h| h.parse().map_err(|e| field("allowed_hours", e))).transpose()?,
        };
        spec.validate().map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
        Ok(spec)
    }
}

/// The type's limits as they now stand (after a write).
async fn limit_of(st: &AppState, action_type: &str) -> Result<Response, ApiError> {
    match st.store.limits().list().await?.into_iter().find(|l| l.action_type == action_type) {
        Some(l) => Ok(axum::Json(l).into_response()),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, format!("no limits for {action_type}"))),
    }
}

/// `PUT /api/limits/{type} {"max_running"?, "rate"?, "daily_budget"?, "partition_by"?,
/// "allowed_hours"?}`:
/// replaces the type's base limits (overrides in force stay); answers the type's limits.
async fn put_limit(
    State(st): State<AppState>,
    axum::Extension(who): axum::Extension<Who>,
    Path(action_type): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let t = parse_type(&action_type)?;
    let spec = parse_body::<LimitBody>(body)?.spec()?;
    st.store.limits().set_limit(t, &spec).await?;
    tracing::info!(
        who = %who.0,
        at = %model::now().to_rfc3339(),
        action_type = t,
        limits = ?spec,
        "admin API: limits set"
    );
    limit_of(&st, t).await
}

/// `DELETE /api/limits/{type}`: removes the type's limits and overrides; 404 when it had none.
async fn delete_limit(
    State(st): State<AppState>,
    axum::Extension(who): axum::Extension<Who>,
    Path(action_type): Path<String>,
) -> Result<Response, ApiError> {
    let t = parse_type(&action_type)?;
    if !st.store.limits().clear_limit(t).await? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no limits for {t}")));
    }
    tracing::info!(who = %who.0, at = %model::now().to_rfc3339(), action_type = t, "admin API: limits cleared");
    Ok(axum::Json(serde_json::json!({ "action_type": t, "cleared": true })).into_response())
}

/// An operator's override: `value` is a whole number, or `N/PERIOD` for `rate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideBody {
    field: String,
    value: serde_json::Value,
    seconds: u64,
    reason: String,
}

/// `POST /api/limits/{type}/override {"field", "value", "seconds", "reason"}`: one field of the
/// type's limits holds `value` for `seconds`, recorded as set by `operator:<token name>`.
async fn override_limit(
    State(st): State<AppState>,
    axum::Extension(who): axum::Extension<Who>,
    Path(action_type): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let t = parse_type(&action_type)?;
    let b: OverrideBody = parse_body(body)?;
    let bad = |name: &str, e: String| ApiError::bad_request(format!("body field `{name}`: {e}"));
    let field: LimitField = b.field.parse().map_err(|e| bad("field", e))?;
    let value = LimitValue::from_json(field, Some(&b.value)).map_err(|e| bad("value", e))?;
    let lasts =
        limits::check_override_lasts(std::time::Duration::from_secs(b.seconds)).map_err(|e| bad("seconds", e))?;
    let reason = limits::check_override_reason(&b.reason).map_err(|e| bad("reason", e))?;
    let until = model::later(st.store.db_now().await?, lasts).map_err(|e| bad("seconds", e))?;
    let set_by = format!("operator:{}", who.0);
    st.store.limits().set_limit_override(None, t, field, value, until, &reason, &set_by).await?;
    tracing::info!(
        who = %who.0,
        at = %model::now().to_rfc3339(),
        action_type = t,
        field = %field,
        value = %value,
        until = %until.to_rfc3339(),
        "admin API: limit overridden"
    );
    limit_of(&st, t).await
}

/// `DELETE /api/limits/{type}/override/{field}`: ends the override of one field now, whoever set
/// it; answers `{"action_type", "field", "ended": true, "limit"}` (`limit`: the type's limits as
/// they now stand, `null` when none are left). 404 when the field had no override in force.
async fn end_override(
    State(st): State<AppState>,
    axum::Extension(who): axum::Extension<Who>,
    Path((action_type, field)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let t = parse_type(&action_type)?;
    let field: LimitField = field.parse().map_err(|e| ApiError::bad_request(format!("path: {e}")))?;
    if !st.store.limits().clear_limit_override(t, field).await? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no {field} override of {t} in force")));
    }
    tracing::info!(
        who = %who.0,
        at = %model::now().to_rfc3339(),
        action_type = t,
        field = %field,
        "admin API: limit override ended"
    );
    let now = st.store.limits().list().await?.into_iter().find(|l| l.action_type == t);
    Ok(axum::Json(serde_json::json!({ "action_type": t, "field": field, "ended": true, "limit": now })).into_response())
}
