//! `ALERT`: the sink for alerts (the rules' `alert` decisions, or any enqueued `ALERT`).
//!
//! The payload is `{"severity": "info" | "warning" | "critical", "message": "...", ...}`
//! (`severity` defaults to `warning`; other fields travel along). Real mode writes the alert to
//! the log; when `adapters.alert.target` names a webhook target it sends the whole payload there
//! as JSON, and when `adapters.alert.alertmanager.url` is set it posts the alert to
//! Alertmanager's API v2 ([`alertmanager`]). The proof shows each under `alert/`.
//!
//! Delivery is all this does: an Alertmanager silence mutes notifications, never the queue.

use std::sync::Arc;
use std::time::Duration;

pub mod alertmanager;
pub mod config;

use super::http::{self, Http};
use super::{Adapter, AdapterError, AdaptersConfig, ExecContext, Outcome, Proof, Section, WebhookTarget};
use crate::model::{Action, Severity};
use alertmanager::Alertmanager;

/// `adapters.alert`, and the `ALERT` adapter built from it (through a webhook target and
/// Alertmanager).
pub const SECTION: Section = Section {
    name: "alert",
    action_type: "ALERT",
    keys: config::KEYS,
    timeout: |a| a.alert.timeout,
    build: |a, http| Arc::new(Alert::new(a, http.clone())),
};

pub struct Alert {
    target: Option<WebhookTarget>,
    alertmanager: Option<Alertmanager>,
    http: Arc<Http>,
    timeout: Duration,
}

impl Alert {
    pub fn new(config: &AdaptersConfig, http: Arc<Http>) -> Self {
        let target = config.alert.target.as_ref().and_then(|t| config.webhook.targets.get(t)).cloned();
        let alertmanager = config.alert.alertmanager.clone().map(Alertmanager::new);
        Alert { target, alertmanager, http, timeout: config.alert.timeout }
    }
}

fn parse(action: &Action) -> Result<(Severity, &str), AdapterError> {
    let p = &action.payload;
    let message = p
        .get("message")
        .and_then(|v| v.as_str())
        .ok_or_else(|| AdapterError::permanent("ALERT payload needs a string field 'message'"))?;
    let severity = match p.get("severity") {
        None => Severity::Warning,
        Some(v) => v
            .as_str()
            .ok_or_else(|| "severity must be a string".to_string())
            .and_then(str::parse)
            .map_err(|e| AdapterError::permanent(format!("ALERT payload field 'severity': {e}")))?,
    };
    Ok((severity, message))
}

fn body(action: &Action) -> Vec<u8> {
    action.payload.to_string().into_bytes()
}

#[async_trait::async_trait]
impl Adapter for Alert {
    fn action_type(&self) -> &str {
        "ALERT"
    }

    fn render_proof(&self, action: &Action) -> Result<Option<Proof>, AdapterError> {
        let (severity, message) = parse(action)?;
        let mut text = format!(
            "PROOF ALERT\nidempotency_key: {}\naction_id: {}\nseverity: {severity}\n\n{message}\n\n--- would log it",
            action.idempotency_key, action.id
        );
        match &self.target {
            Some(t) => {
                text.push_str(&format!(" and send it to webhook target '{}' ---\n", t.name));
                text.push_str(&http::render_request(t, &action.idempotency_key, &body(action)));
            }
            None => text.push_str(" (no adapters.alert.target) ---\n"),
        }
        if let Some(am) = &self.alertmanager {
            // As if sent when it was enqueued: a proof reads no clock, and shows the times' shape.
            let request = am.request(action, None, severity, message, action.created_at)?;
            text.push_str("\n--- would post it to Alertmanager ---\n");
            text.push_str(&http::render_request(am.target(), &action.idempotency_key, &request));
        }
        Ok(Some(Proof { subdir: "alert".into(), extension: "txt".into(), body: text.into_bytes() }))
    }

    async fn execute(&self, ctx: &ExecContext, action: &Action) -> Result<Outcome, AdapterError> {
        let (severity, message) = parse(action)?;
        // Checked before anything is logged or sent: a payload Alertmanager cannot take fails whole.
        let am_request = match &self.alertmanager {
            Some(am) => Some(am.request(action, ctx.tick_id, severity, message, chrono::Utc::now())?),
            None => None,
        };
        let key = action.idempotency_key.as_str();
        let level = severity.as_str();
        match severity {
            Severity::Critical => {
                tracing::error!(action_id = action.id, key, severity = level, alert = message, "ALERT")
            }
            Severity::Warning => tracing::warn!(action_id = action.id, key, severity = level, alert = message, "ALERT"),
            Severity::Info => tracing::info!(action_id = action.id, key, severity = level, alert = message, "ALERT"),
        }
        let mut done = format!("alert ({severity}) logged");
        if let Some(t) = &self.target {
            let sent = self.http.send(t, key, body(action), self.timeout, ctx.traceparent.as_deref()).await?;
            done.push_str(&format!(" and sent: {sent}"));
        }
        if let (Some(am), Some(request)) = (&self.alertmanager, am_request) {
            let sent = self.http.send(am.target(), key, request, self.timeout, ctx.traceparent.as_deref()).await?;
            done.push_str(&format!("; Alertmanager: {sent}"));
        }
        Ok(Outcome { message: done })
    }
}
