//! `WEBHOOK`: sends a JSON body to a target named in the config.
//!
//! The payload is `{"target": "<name>", "body": <any JSON>}`. With
//! `adapters.webhook.allow_raw_urls: true` a payload may instead carry `{"url": "...",
//! "method": "POST", "body": ...}` (unsigned, no configured headers). The proof is the request,
//! secrets redacted, under `webhook/`. Sending, signing and classifying live in [`super::http`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub mod config;

use super::http::{self, Http};
use super::{Adapter, AdapterError, ExecContext, Outcome, Proof, Section};
use crate::model::Action;
use config::{METHODS, WebhookConfig, WebhookTarget, check_url};

/// `adapters.webhook`, and the `WEBHOOK` adapter built from it.
pub const SECTION: Section = Section {
    name: "webhook",
    action_type: "WEBHOOK",
    keys: config::KEYS,
    timeout: |a| a.webhook.timeout,
    build: |a, http| {
        for t in a.webhook.targets.values() {
            if let (Some(var), None) = (&t.secret_env, &t.secret) {
                tracing::warn!(
                    webhook_target = t.name.as_str(),
                    variable = var.as_str(),
                    "secret_env names an unset variable: real requests to this target fail (retryably) until it is set"
                );
            }
        }
        Arc::new(Webhook::new(&a.webhook, http.clone()))
    },
};

pub struct Webhook {
    targets: BTreeMap<String, WebhookTarget>,
    allow_raw_urls: bool,
    timeout: Duration,
    http: Arc<Http>,
}

impl Webhook {
    pub fn new(config: &WebhookConfig, http: Arc<Http>) -> Self {
        Webhook {
            targets: config.targets.clone(),
            allow_raw_urls: config.allow_raw_urls,
            timeout: config.timeout,
            http,
        }
    }

    /// The target and the exact body bytes the payload asks for.
    fn plan(&self, action: &Action) -> Result<(WebhookTarget, Vec<u8>), AdapterError> {
        let p = &action.payload;
        let Some(body) = p.get("body") else {
            return Err(AdapterError::permanent("WEBHOOK payload is missing the field 'body'"));
        };
        if let Some(extra) =
            p.as_object().and_then(|m| m.keys().find(|k| !["target", "url", "method", "body"].contains(&k.as_str())))
        {
            return Err(AdapterError::permanent(format!("WEBHOOK payload has an unknown field '{extra}'")));
        }
        let bytes = serde_json::to_vec(body)
            .map_err(|e| AdapterError::permanent(format!("WEBHOOK payload field 'body' cannot be encoded: {e}")))?;
        let target = match (p.get("target"), p.get("url")) {
            (Some(_), Some(_)) => {
                return Err(AdapterError::permanent("WEBHOOK payload has both 'target' and 'url'; give one"));
            }
            (Some(t), None) => {
                let name = t
                    .as_str()
                    .ok_or_else(|| AdapterError::permanent("WEBHOOK payload field 'target' must be a string"))?;
                if p.get("method").is_some() {
                    return Err(AdapterError::permanent(
                        "WEBHOOK payload field 'method' is only for raw URLs; a target's method is configured",
                    ));
                }
                self.targets.get(name).cloned().ok_or_else(|| {
                    AdapterError::permanent(format!(
                        "WEBHOOK target '{name}' is not configured under adapters.webhook.targets"
                    ))
                })?
            }
            (None, Some(u)) => {
                if !self.allow_raw_urls {
                    return Err(AdapterError::permanent(
                        "WEBHOOK payload field 'url' is refused: raw URLs need adapters.webhook.allow_raw_urls: true; name a configured target instead",
                    ));
                }
                let url = u
                    .as_str()
                    .ok_or_else(|| AdapterError::permanent("WEBHOOK payload field 'url' must be a string"))?;
                check_url(url).map_err(|m| AdapterError::permanent(format!("WEBHOOK payload field 'url': {m}")))?;
                let method = match p.get("method") {
                    None => "POST".to_string(),
                    Some(m) => {
                        m.as_str().map(str::to_ascii_uppercase).filter(|m| METHODS.contains(&m.as_str())).ok_or_else(
                            || {
                                AdapterError::permanent(format!(
                                    "WEBHOOK payload field 'method' must be one of {}",
                                    METHODS.join(", ")
                                ))
                            },
                        )?
                    }
                };
                WebhookTarget {
                    name: "(raw url)".into(),
                    url: url.to_string(),
                    method,
                    headers: BTreeMap::new(),
                    secret_env: None,
                    secret: None,
                    timeout: None,
                }
            }
            (None, None) => {
                return Err(AdapterError::permanent("WEBHOOK payload needs a 'target' (a configured target's name)"));
            }
        };
        Ok((target, bytes))
    }
}

#[async_trait::async_trait]
impl Adapter for Webhook {
    fn action_type(&self) -> &str {
        "WEBHOOK"
    }

    fn render_proof(&self, action: &Action) -> Result<Option<Proof>, AdapterError> {
        let (target, body) = self.plan(action)?;
        let text = format!(
            "PROOF WEBHOOK\nidempotency_key: {}\naction_id: {}\ntarget: {}\n\n{}",
            action.idempotency_key,
            action.id,
            target.name,
            http::render_request(&target, &action.idempotency_key, &body)
        );
        Ok(Some(Proof { subdir: "webhook".into(), extension: "http".into(), body: text.into_bytes() }))
    }

    async fn execute(&self, ctx: &ExecContext, action: &Action) -> Result<Outcome, AdapterError> {
        let (target, body) = self.plan(action)?;
        let trace = ctx.traceparent.as_deref();
        let message = self.http.send(&target, &action.idempotency_key, body, self.timeout, trace).await?;
        Ok(Outcome { message })
    }
}
