//! The admin API's approvals, behind the same bearer token as every `/api/*` route: approve or
//! reject one action (`POST /api/actions/{id}/approve`, `/reject`), or many by id
//! (`POST /api/approvals/approve`, `/reject`, `{"ids": [...], "reason": ...}`). The token's name
//! is who decided (`api:<name>`), recorded with the decision and in the log.
//!
//! It judges nothing: the state machine's `approve` and `reject` do; a refusal is a 409 naming
//! the state found, a missing action a 404, a malformed body or id a 400 naming the field.

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;

use super::admin::{Who, parse_body, parse_id};
use super::{ApiError, AppState};
use crate::model;
use crate::store::StoreError;

/// The routes, merged into the admin API's (under its token).
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/actions/{id}/approve", post(approve_one))
        .route("/api/actions/{id}/reject", post(reject_one))
        .route("/api/approvals/approve", post(approve_many))
        .route("/api/approvals/reject", post(reject_many))
}

/// A decision's body: `reason` (required to reject), `sha256` (the request reviewed; one
/// action only), and for the bulk routes `ids`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    #[serde(default)]
    ids: Option<Vec<i64>>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    sha256: Option<String>,
}

/// The body, which approving one action may leave out.
fn body(raw: Result<Bytes, BytesRejection>, optional: bool) -> Result<DecisionBody, ApiError> {
    if optional && raw.as_ref().is_ok_and(|b| b.iter().all(u8::is_ascii_whitespace)) {
        return Ok(DecisionBody::default());
    }
    parse_body(raw)
}

fn reason_needed(b: &DecisionBody) -> Result<String, ApiError> {
    match b.reason.as_deref().map(str::trim) {
        Some(r) if !r.is_empty() => Ok(r.to_string()),
        _ => Err(ApiError::bad_request("body field `reason`: a rejection needs a reason")),
    }
}

fn ids_of(b: &DecisionBody, single: bool) -> Result<Vec<i64>, ApiError> {
    match (&b.ids, single) {
        (Some(_), true) => Err(ApiError::bad_request("body field `ids`: this route decides the action in its path")),
        (None, false) => Err(ApiError::bad_request("body field `ids`: give at least one action id")),
        (None, true) => Ok(Vec::new()),
        (Some(ids), false) => {
            if ids.is_empty() || ids.len() > crate::store::MAX_BULK_IDS {
                return Err(ApiError::bad_request(format!(
                    "body field `ids`: give 1 to {} action ids, got {}",
                    crate::store::MAX_BULK_IDS,
                    ids.len()
                )));
            }
            if let Some(bad) = ids.iter().find(|id| **id <= 0) {
                return Err(ApiError::bad_request(format!(
                    "body field `ids`: action ids are positive integers, got {bad}"
                )));
            }
            if b.sha256.is_some() {
                return Err(ApiError::bad_request("body field `sha256`: names one request; approve that action alone"));
            }
            Ok(ids.clone())
        }
    }
}

async fn approve_one(
    State(st): State<AppState>,
    axum::Extension(who): axum::Extension<Who>,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let b = body(raw, true)?;
    ids_of(&b, true)?;
    let by = format!("api:{}", who.0);
    let done = st.store.actions().approve(id, &by, b.reason.as_deref(), b.sha256.as_deref()).await?;
    tracing::info!(who = %by, reason = b.reason.as_deref().unwrap_or(""), action_id = id, sha256 = %done.sha256,
        at = %model::now().to_rfc3339(), "admin API: action approved");
    Ok(axum::Json(serde_json::json!({ "approved": [done] })).into_response())
}

async fn reject_one(
    State(st): State<AppState>,
    axum::Extension(who): axum::Extension<Who>,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let b = body(raw, false)?;
    ids_of(&b, true)?;
    let reason = reason_needed(&b)?;
    let by = format!("api:{}", who.0);
    st.store.actions().reject(id, &by, &reason).await?;
    tracing::info!(who = %by, reason = %reason, action_id = id, at = %model::now().to_rfc3339(),
        "admin API: action rejected");
    Ok(axum::Json(serde_json::json!({ "rejected": [id] })).into_response())
}

/// A refusal of one id among many: reported, the others still decided.
#[derive(serde::Serialize)]
struct Refused {
    id: i64,
    why: String,
}

async fn approve_many(
    State(st): State<AppState>,
    axum::Extension(who): axum::Extension<Who>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let b = body(raw, false)?;
    let ids = ids_of(&b, false)?;
    let by = format!("api:{}", who.0);
    let (mut approved, mut refused) = (Vec::new(), Vec::new());
    for id in ids {
        match st.store.actions().approve(id, &by, b.reason.as_deref(), None).await {
            Ok(done) => approved.push(done),
            Err(StoreError::Refused(why)) => refused.push(Refused { id, why: why.to_string() }),
            Err(e) => return Err(e.into()),
        }
    }
    tracing::info!(who = %by, reason = b.reason.as_deref().unwrap_or(""), approved = approved.len(),
        refused = refused.len(), at = %model::now().to_rfc3339(), "admin API: actions approved");
    Ok(axum::Json(serde_json::json!({ "approved": approved, "refused": refused })).into_response())
}

async fn reject_many(
    State(st): State<AppState>,
    axum::Extension(who): axum::Extension<Who>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let b = body(raw, false)?;
    let ids = ids_of(&b, false)?;
    let reason = reason_needed(&b)?;
    let by = format!("api:{}", who.0);
    let (mut rejected, mut refused) = (Vec::new(), Vec::new());
    for id in ids {
        match st.store.actions().reject(id, &by, &reason).await {
            Ok(()) => rejected.push(id),
            Err(StoreError::Refused(why)) => refused.push(Refused { id, why: why.to_string() }),
            Err(e) => return Err(e.into()),
        }
    }
    tracing::info!(who = %by, reason = %reason, rejected = rejected.len(), refused = refused.len(),
        at = %model::now().to_rfc3339(), "admin API: actions rejected");
    Ok(axum::Json(serde_json::json!({ "rejected": rejected, "refused": refused })).into_response())
}
