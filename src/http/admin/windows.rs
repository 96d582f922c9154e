//! `/api/windows`: the maintenance windows, as `orchestrator windows list|add|end` has them.
//! `GET /api/windows[?all=true]` lists, `POST /api/windows` opens one, `POST
//! /api/windows/{id}/end` ends one. Behind the admin token like every `/api/` route; a bad
//! field is a 400 naming it, and each write is logged with the token's name.
//!
//! It holds no rule of its own: every field is checked by `crate::windows`, as the CLI checks it.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{ApiError, AppState, Who, only_params, parse_body};
use crate::model;
use crate::store::WindowEnd;
use crate::windows::{self, Matcher, Recurrence, WindowSpec};

/// A window as `POST /api/windows` takes it: `until` or `for`, or `cron` with `duration`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WindowBody {
    types: Vec<String>,
    /// `payload.FIELD`, with `value`.
    field: Option<String>,
    value: Option<String>,
    from: Option<String>,
    until: Option<String>,
    #[serde(rename = "for")]
    lasts: Option<String>,
    cron: Option<String>,
    duration: Option<String>,
    time_zone: Option<String>,
    reason: String,
}

fn bad(name: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("body field `{name}`: {e}"))
}

fn time(name: &str, text: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    text.map(|t| DateTime::parse_from_rfc3339(t.trim()).map(|t| t.with_timezone(&Utc)).map_err(|e| bad(name, e)))
        .transpose()
}

impl WindowBody {
    fn spec(self, now: DateTime<Utc>, opened_by: String) -> Result<WindowSpec, ApiError> {
        windows::check_types(&self.types).map_err(|e| bad("types", e))?;
        let field = match (&self.field, &self.value) {
            (Some(f), Some(v)) => Some(windows::field_match(f, v).map_err(|e| bad("field", e))?),
            (None, None) => None,
            (Some(_), None) => return Err(bad("value", "missing: `field` needs `value`")),
            (None, Some(_)) => return Err(bad("field", "missing: `value` needs `field`")),
        };
        let starts_at = time("from", self.from.as_deref())?.unwrap_or(now);
        let mut ends_at = time("until", self.until.as_deref())?;
        if let Some(l) = &self.lasts {
            if ends_at.is_some() {
                return Err(bad("for", "give `until` or `for`, not both"));
            }
            let d = crate::config::parse_duration(l).map_err(|e| bad("for", e))?;
            ends_at = Some(model::later(starts_at, d).map_err(|e| bad("for", e))?);
        }
        let recurrence = match (&self.cron, &self.duration) {
            (Some(c), Some(d)) => {
                let d = crate::config::parse_duration(d).map_err(|e| bad("duration", e))?;
                let tz = self.time_zone.as_deref().unwrap_or("UTC");
                Some(Recurrence::parse(c, d, tz).map_err(|e| {
                    let name = e.split_whitespace().next().unwrap_or("cron").to_string();
                    bad(&name, e)
                })?)
            }
            (None, None) if self.time_zone.is_some() => return Err(bad("time_zone", "only with `cron`")),
            (None, None) => None,
            (Some(_), None) => return Err(bad("duration", "missing: `cron` needs `duration`")),
            (None, Some(_)) => return Err(bad("cron", "missing: `duration` needs `cron`")),
        };
        let reason = windows::check_reason(&self.reason).map_err(|e| bad("reason", e))?;
        let spec = WindowSpec {
            matcher: Matcher { types: self.types, field },
            starts_at,
            ends_at,
            recurrence,
            reason,
            opened_by,
        };
        spec.check().map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
        Ok(spec)
    }
}

/// `GET /api/windows[?all=true]`: `windows list --json`.
pub(super) async fn list(
    State(st): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    only_params(&q, &["all"])?;
    let all = match q.get("all").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => return Err(ApiError::bad_request(format!("query parameter all must be true or false, got '{v}'"))),
    };
    let now = st.store.now();
    let list: Vec<_> = st.store.windows().list(all).await?.into_iter().map(|w| w.view(now)).collect();
    Ok(axum::Json(list).into_response())
}

/// `POST /api/windows {...}`: opens a window, recorded as opened by `api:<token name>`.
pub(super) async fn add(
    State(st): State<AppState>,
    axum::Extension(who): axum::Extension<Who>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let spec = parse_body::<WindowBody>(body)?.spec(st.store.now(), format!("api:{}", who.0))?;
    let w = st.store.windows().add(&spec).await?;
    tracing::info!(who = %who.0, at = %model::now().to_rfc3339(), window = w.id, "admin API: window opened");
    Ok((StatusCode::CREATED, axum::Json(w.view(st.store.now()))).into_response())
}

/// `POST /api/windows/{id}/end`: ends it now; 404 for no such window, 409 when already over.
pub(super) async fn end(
    State(st): State<AppState>,
    axum::Extension(who): axum::Extension<Who>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = id
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::bad_request(format!("path: window id must be a positive integer, got '{id}'")))?;
    match st.store.windows().end(id).await? {
        WindowEnd::Ended(w) => {
            tracing::info!(who = %who.0, at = %model::now().to_rfc3339(), window = id, "admin API: window ended");
            Ok(axum::Json(w.view(st.store.now())).into_response())
        }
        WindowEnd::AlreadyOver(_) => Err(ApiError::new(StatusCode::CONFLICT, format!("window {id} is already over"))),
        WindowEnd::NotFound => Err(ApiError::new(StatusCode::NOT_FOUND, format!("no window has id {id}"))),
    }
}
