//! `/api/schedules`: the schedules the leader fires, as `orchestrator schedules` shows and edits
//! them: list, add, remove, pause, resume, run-now. Mounted by `admin.rs` behind its bearer
//! token; bodies are parsed by its parser (unknown fields, wrong types and duplicate keys are
//! 400 naming the field), and a definition is checked as a config entry is
//! (`crate::schedules`), its fault named. Every change is logged with the token's name.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::admin::{Who, parse_body};
use super::{ApiError, AppState};
use crate::model;
use crate::schedules::{DEFAULT_GRACE, Misfire, ScheduleSpec, view};
use crate::services::scheduler;
use crate::store::Authority;

/// `POST /api/schedules`: a schedule as `schedules add` takes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ScheduleBody {
    name: String,
    cron: String,
    #[serde(default = "utc")]
    timezone: String,
    #[serde(rename = "type")]
    action_type: String,
    #[serde(default = "empty_object")]
    payload: serde_json::Value,
    #[serde(default)]
    priority: i32,
    max_attempts: Option<u32>,
    deadline_seconds: Option<u64>,
    #[serde(default)]
    misfire: Option<String>,
    #[serde(default)]
    catch_up_cap: Option<u32>,
    misfire_grace_seconds: Option<u64>,
}

fn utc() -> String {
    "UTC".into()
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

/// `POST /api/schedules/{name}/pause`: why (optional; an empty body is no reason).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PauseBody {
    reason: Option<String>,
}

pub(super) async fn list(State(st): State<AppState>) -> Result<Response, ApiError> {
    let views: Vec<_> = st.store.schedules().list().await?.into_iter().map(view).collect();
    Ok(axum::Json(views).into_response())
}

pub(super) async fn add(
    State(st): State<AppState>,
    axum::Extension(who): axum::Extension<Who>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let b = parse_body::<ScheduleBody>(body)?;
    let misfire = match &b.misfire {
        Some(m) => m.parse::<Misfire>().map_err(|e| ApiError::bad_request(format!("misfire: {e}")))?,
        None => Misfire::default(),
    };
    let spec = ScheduleSpec {
        cron: b.cron,
        timezone: b.timezone,
        action_type: b.action_type,
        payload: b.payload,
        priority: b.priority,
        max_attempts: b.max_attempts,
        deadline: b.deadline_seconds.map(std::time::Duration::from_secs),
        misfire,
        catch_up_cap: b.catch_up_cap.unwrap_or(ScheduleSpec::default().catch_up_cap),
        misfire_grace: b.misfire_grace_seconds.map_or(DEFAULT_GRACE, std::time::Duration::from_secs),
        enabled: true,
    };
    let def = scheduler::stored(&b.name, &spec, st.config.max_attempts).map_err(ApiError::bad_request)?;
    let row = st.store.schedules().add(&def).await?;
    tracing::info!(who = %who.0, at = %model::now().to_rfc3339(), schedule = %b.name, "admin API: schedule added");
    Ok((StatusCode::CREATED, axum::Json(view(row))).into_response())
}

pub(super) async fn remove(
    State(st): State<AppState>,
    axum::Extension(who): axum::Extension<Who>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    st.store.schedules().remove(&name).await?;
    tracing::info!(who = %who.0, at = %model::now().to_rfc3339(), schedule = %name, "admin API: schedule removed");
    Ok(axum::Json(serde_json::json!({ "name": name, "removed": true })).into_response())
}

pub(super) async fn pause(
    State(st): State<AppState>,
    axum::Extension(who): axum::Extension<Who>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let given = body.as_ref().is_ok_and(|b| !b.iter().all(u8::is_ascii_whitespace));
    let b = if given { parse_body::<PauseBody>(body)? } else { PauseBody::default() };
    let changed = st.store.schedules().set_paused(Authority::Operator, &name, true, b.reason.as_deref()).await?;
    tracing::info!(who = %who.0, at = %model::now().to_rfc3339(), schedule = %name, changed, "admin API: schedule paused");
    Ok(axum::Json(serde_json::json!({ "name": name, "paused": true, "changed": changed })).into_response())
}

pub(super) async fn resume(
    State(st): State<AppState>,
    axum::Extension(who): axum::Extension<Who>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let changed = st.store.schedules().set_paused(Authority::Operator, &name, false, None).await?;
    tracing::info!(who = %who.0, at = %model::now().to_rfc3339(), schedule = %name, changed, "admin API: schedule resumed");
    Ok(axum::Json(serde_json::json!({ "name": name, "paused": false, "changed": changed })).into_response())
}

pub(super) async fn run_now(
    State(st): State<AppState>,
    axum::Extension(who): axum::Extension<Who>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let done = scheduler::run_now(&st.store, &name, &st.config.enqueue_defaults()).await?;
    tracing::info!(who = %who.0, at = %model::now().to_rfc3339(), schedule = %name, action_id = done.id, "admin API: schedule run now");
    Ok((StatusCode::CREATED, axum::Json(done)).into_response())
}
