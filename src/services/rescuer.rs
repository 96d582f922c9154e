//! The rescuer: RUNNING actions whose worker stopped renewing its registration (or whose own
//! attempt timeout ran out) go back to the queue, under the lease holder's fence.
//!
//! It runs once per tick, before the snapshot, so the rules see the rescued actions as due. It
//! decides nothing about them: the state machine's `rescue` operation says where each goes.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;
use crate::store::{Fence, Store, StoreError};

/// Puts orphaned RUNNING actions back, counting them in `orchestrator_rescued_actions_total`.
#[derive(Clone, Debug)]
pub struct Rescuer {
    store: Store,
    metrics: Arc<Metrics>,
    /// How long a worker's registration lives without a heartbeat.
    worker_ttl: Duration,
}

impl Rescuer {
    pub fn new(store: Store, metrics: Arc<Metrics>, worker_ttl: Duration) -> Self {
        Rescuer { store, metrics, worker_ttl }
    }

    /// Rescues under `fence` (held by `owner`); the ledger note when it rescued any.
    pub async fn run(&self, fence: &Fence, owner: &str) -> Result<Option<String>, StoreError> {
        let rescued = self.store.actions().rescue(fence, owner, self.worker_ttl, fence.tick_id).await?;
        if rescued.is_empty() {
            return Ok(None);
        }
        self.metrics.rescued_actions_total.inc_by(rescued.len() as u64);
        let mut workers: Vec<&str> = rescued.iter().filter_map(|r| r.worker.as_deref()).collect();
        workers.sort_unstable();
        workers.dedup();
        tracing::warn!(count = rescued.len(), workers = %workers.join(", "), "rescued orphaned RUNNING actions");
        Ok(Some(format!("rescued {} orphaned action(s)", rescued.len())))
    }
}
