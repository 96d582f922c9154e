//! `POST_SOCIAL`: a post to a social platform, as the seed defined it.
//!
//! The payload needs `platform`, `content` and `audience` (strings); a missing or mistyped one
//! is a permanent error naming the field. The AOL daemon's spelling `social_platform` is read as
//! `platform` (both given must agree). The proof is a text artifact under `proof_social/`
//! holding exactly what would be posted (the directory the operators' runbooks name). Real mode
//! delivers through the webhook target configured for the platform
//! (`adapters.social.platforms.<platform>: <target>`), as the JSON body
//! `{"platform", "audience", "content"}`; a platform with no target fails retryably with
//! "real run unconfigured": retried, then DLQ.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub mod config;

use super::http::{self, Http};
use super::{Adapter, AdapterError, AdaptersConfig, ExecContext, Outcome, Proof, Section, WebhookTarget};
use crate::model::Action;

/// `adapters.social`, and the `POST_SOCIAL` adapter built from it (through webhook targets).
pub const SECTION: Section = Section {
    name: "social",
    action_type: "POST_SOCIAL",
    keys: config::KEYS,
    timeout: |a| a.social.timeout,
    build: |a, http| Arc::new(PostSocial::new(a, http.clone())),
};

/// Delivery per platform; none configured means every real run fails as unconfigured.
pub struct PostSocial {
    routes: BTreeMap<String, WebhookTarget>,
    http: Option<Arc<Http>>,
    timeout: Duration,
}

/// The message real mode fails with while no delivery is configured.
pub const REAL_RUN_UNCONFIGURED: &str = "real run unconfigured";

struct Post<'a> {
    platform: &'a str,
    content: &'a str,
    audience: &'a str,
}

/// The AOL daemon's name for `platform`, read as it.
const AOL_PLATFORM: &str = "social_platform";

fn parse(action: &Action) -> Result<Post<'_>, AdapterError> {
    let field = |name: &str| -> Result<&str, AdapterError> {
        match action.payload.get(name) {
            None => Err(AdapterError::permanent(format!("POST_SOCIAL payload is missing the field '{name}'"))),
            Some(v) => v
                .as_str()
                .ok_or_else(|| AdapterError::permanent(format!("POST_SOCIAL payload field '{name}' must be a string"))),
        }
    };
    let platform = match (action.payload.get("platform"), action.payload.get(AOL_PLATFORM)) {
        (None, Some(_)) => field(AOL_PLATFORM)?,
        (Some(new), Some(old)) if new != old => {
            return Err(AdapterError::permanent(format!(
                "POST_SOCIAL payload gives 'platform' and '{AOL_PLATFORM}' (its AOL name) different values"
            )));
        }
        _ => field("platform")?,
    };
    Ok(Post { platform, content: field("content")?, audience: field("audience")? })
}

fn body(post: &Post<'_>) -> Vec<u8> {
    serde_json::json!({"platform": post.platform, "audience": post.audience, "content": post.content})
        .to_string()
        .into_bytes()
}

impl PostSocial {
    /// No platform configured: real mode always fails as unconfigured.
    pub fn unconfigured() -> Self {
        PostSocial { routes: BTreeMap::new(), http: None, timeout: AdaptersConfig::default().social.timeout }
    }

    /// Platforms routed to the webhook targets the config names for them.
    pub fn new(config: &AdaptersConfig, http: Arc<Http>) -> Self {
        let routes = config
            .social
            .platforms
            .iter()
            .filter_map(|(platform, target)| config.webhook.targets.get(target).map(|t| (platform.clone(), t.clone())))
            .collect();
        PostSocial { routes, http: Some(http), timeout: config.social.timeout }
    }
}

#[async_trait::async_trait]
impl Adapter for PostSocial {
    fn action_type(&self) -> &str {
        "POST_SOCIAL"
    }

    fn render_proof(&self, action: &Action) -> Result<Option<Proof>, AdapterError> {
        let post = parse(action)?;
        let mut text = format!(
            "PROOF POST_SOCIAL\nidempotency_key: {}\naction_id: {}\nplatform: {}\naudience: {}\n\n{}\n",
            action.idempotency_key, action.id, post.platform, post.audience, post.content
        );
        match self.routes.get(post.platform) {
            Some(target) => {
                text.push_str(&format!("\n--- delivery: webhook target '{}' ---\n", target.name));
                text.push_str(&http::render_request(target, &action.idempotency_key, &body(&post)));
            }
            None => text.push_str(&format!(
                "\n--- delivery: none configured for '{}' (a real run fails: {REAL_RUN_UNCONFIGURED}) ---\n",
                post.platform
            )),
        }
        Ok(Some(Proof { subdir: "proof_social".into(), extension: "txt".into(), body: text.into_bytes() }))
    }

    async fn execute(&self, ctx: &ExecContext, action: &Action) -> Result<Outcome, AdapterError> {
        let post = parse(action)?;
        let (Some(target), Some(http)) = (self.routes.get(post.platform), &self.http) else {
            return Err(AdapterError::retryable(format!(
                "{REAL_RUN_UNCONFIGURED}: no delivery is configured for platform '{}'",
                post.platform
            )));
        };
        let message =
            http.send(target, &action.idempotency_key, body(&post), self.timeout, ctx.traceparent.as_deref()).await?;
        Ok(Outcome { message })
    }
}
