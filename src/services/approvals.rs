//! The approvals service, run by the lease holder once per tick: renders, once, what each
//! action awaiting approval will send (the executor's own proof-mode rendering, so the approver
//! sees byte for byte what the real attempt would send), records it with its sha256 (and as an
//! artifact file), and cancels the actions whose approval deadline passed.
//!
//! It never approves or rejects: an operator does (the CLI, the admin API, the page).

use std::path::PathBuf;
use std::sync::Arc;

use crate::adapters::Registry;
use crate::artifacts;
use crate::executor::approval_rendering;
use crate::metrics::Metrics;
use crate::store::{Fence, Store, StoreError};

/// Waiting actions rendered per tick: the rest wait for the next.
const PREVIEWS_PER_TICK: u64 = 100;

/// Previews and the expiry of waiting approvals.
#[derive(Clone, Debug)]
pub struct Approvals {
    store: Store,
    registry: Arc<Registry>,
    artifacts_dir: PathBuf,
    metrics: Arc<Metrics>,
}

impl Approvals {
    pub fn new(store: Store, registry: Arc<Registry>, artifacts_dir: PathBuf, metrics: Arc<Metrics>) -> Self {
        Approvals { store, registry, artifacts_dir, metrics }
    }

    /// Renders the waiting actions not rendered yet and expires the overdue ones, under
    /// `fence`; the ledger notes.
    pub async fn run(&self, fence: &Fence) -> Result<Vec<String>, StoreError> {
        let mut notes = Vec::new();
        // One read through the waiting rows' partial index: with nothing waiting (the usual
        // case) the tick takes no write lock for approvals.
        if self.store.actions().awaiting_approval().await?.0 == 0 {
            return Ok(notes);
        }
        let expired = self.store.actions().expire_approvals(fence).await?;
        if !expired.is_empty() {
            self.metrics.approvals_expired_total.inc_by(expired.len() as u64);
            tracing::warn!(count = expired.len(), "approvals expired: actions cancelled");
            notes.push(format!("{} approval(s) expired: cancelled", expired.len()));
        }
        let mut rendered = 0;
        for action in self.store.actions().awaiting_preview(PREVIEWS_PER_TICK).await? {
            let Some(adapter) = self.registry.get(&action.action_type) else {
                tracing::warn!(action_id = action.id, action_type = %action.action_type, "no adapter to render an approval preview");
                continue;
            };
            let (body, sha256) = match approval_rendering(adapter.as_ref(), &action) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(action_id = action.id, error = %e, "cannot render an approval preview");
                    continue;
                }
            };
            let path = artifacts::artifact_path(
                &self.artifacts_dir,
                "approvals",
                &action.idempotency_key,
                "preview",
                self.store.now(),
            );
            let bytes = body.clone();
            let written = tokio::task::spawn_blocking(move || artifacts::write_atomic(&path, &bytes)).await;
            let artifact = match written {
                Ok(Ok(a)) => Some(a.path.display().to_string()),
                Ok(Err(e)) => {
                    tracing::warn!(action_id = action.id, error = %e, "cannot write an approval preview's artifact");
                    None
                }
                Err(e) => {
                    tracing::warn!(action_id = action.id, error = %e, "the preview writer failed");
                    None
                }
            };
            let text = String::from_utf8_lossy(&body);
            self.store.actions().record_preview(fence, action.id, &text, &sha256, artifact.as_deref()).await?;
            rendered += 1;
        }
        if rendered > 0 {
            notes.push(format!("{rendered} approval preview(s) rendered"));
        }
        Ok(notes)
    }
}
