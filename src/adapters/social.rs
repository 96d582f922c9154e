//! `POST_SOCIAL`: a post to a social platform, as the seed defined it.
//!
//! The payload needs `platform`, `content` and `audience` (strings); a missing or mistyped one
//! is a permanent error naming the field. The proof is a text artifact under `proof_social/`
//! holding exactly what would be posted. Real delivery is not configured in this build, so
//! real mode fails retryably with "real run unconfigured": retried, then DLQ.

use super::{Adapter, AdapterError, ExecContext, Outcome, Proof};
use crate::model::Action;

pub struct PostSocial;

/// The message real mode fails with while no delivery is configured.
pub const REAL_RUN_UNCONFIGURED: &str = "real run unconfigured";

struct Post<'a> {
    platform: &'a str,
    content: &'a str,
    audience: &'a str,
}

fn parse(action: &Action) -> Result<Post<'_>, AdapterError> {
    let field = |name: &str| -> Result<&str, AdapterError> {
        match action.payload.get(name) {
            None => Err(AdapterError::permanent(format!("POST_SOCIAL payload is missing the field '{name}'"))),
            Some(v) => v
                .as_str()
                .ok_or_else(|| AdapterError::permanent(format!("POST_SOCIAL payload field '{name}' must be a string"))),
        }
    };
    Ok(Post { platform: field("platform")?, content: field("content")?, audience: field("audience")? })
}

#[async_trait::async_trait]
impl Adapter for PostSocial {
    fn action_type(&self) -> &str {
        "POST_SOCIAL"
    }

    fn render_proof(&self, action: &Action) -> Result<Option<Proof>, AdapterError> {
        let post = parse(action)?;
        let body = format!(
            "PROOF POST_SOCIAL\nidempotency_key: {}\naction_id: {}\nplatform: {}\naudience: {}\n\n{}\n",
            action.idempotency_key, action.id, post.platform, post.audience, post.content
        );
        Ok(Some(Proof { subdir: "proof_social".into(), extension: "txt".into(), body: body.into_bytes() }))
    }

    async fn execute(&self, _ctx: &ExecContext, action: &Action) -> Result<Outcome, AdapterError> {
        let post = parse(action)?;
        Err(AdapterError::retryable(format!(
            "{REAL_RUN_UNCONFIGURED}: no delivery is configured for platform '{}'",
            post.platform
        )))
    }
}
