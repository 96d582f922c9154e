//! The expirer: actions past their deadline (`expires_at`) move to the DLQ, under the lease
//! holder's fence.
//!
//! The claim never starts an expired action whatever this does; here they become visible as
//! DLQ rows, so the rules and `status` count them. It runs once per tick, before the snapshot.

use std::sync::Arc;

use crate::metrics::Metrics;
use crate::store::{Fence, Store, StoreError};

/// Moves expired actions to the DLQ, counting them in `orchestrator_expired_actions_total`.
#[derive(Clone, Debug)]
pub struct Expirer {
    store: Store,
    metrics: Arc<Metrics>,
}

impl Expirer {
    pub fn new(store: Store, metrics: Arc<Metrics>) -> Self {
        Expirer { store, metrics }
    }

    /// Expires under `fence`; the ledger note when any expired.
    pub async fn run(&self, fence: &Fence) -> Result<Option<String>, StoreError> {
        let expired = self.store.actions().expire_due(&fence.lease_name, fence.epoch, fence.tick_id).await?;
        if expired.is_empty() {
            return Ok(None);
        }
        self.metrics.expired_actions_total.inc_by(expired.len() as u64);
        tracing::warn!(count = expired.len(), "expired actions moved to DLQ");
        Ok(Some(format!("{} expired action(s) moved to DLQ", expired.len())))
    }
}
