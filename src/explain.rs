//! What one tick did and why: its ledger row, the snapshot its rules saw, the rules digest and
//! each decision with its outcome. Shared by `orchestrator explain` and the operator page's tick
//! view (`GET /api/ticks/{id}/explain`), so both tell the same story. Reads only.

use serde::Serialize;

use crate::model::TickRow;
use crate::store::{DecisionRow, Store, StoreError};

/// One tick, explained.
#[derive(Clone, Debug, Serialize)]
pub struct Explain {
    pub tick: TickRow,
    /// The recorded snapshot (JSON), if the tick reached its decide stage.
    pub snapshot: Option<serde_json::Value>,
    pub rules_digest: Option<String>,
    /// In the order written.
    pub decisions: Vec<DecisionRow>,
}

/// `None` when the ledger has no such tick.
pub async fn explain(store: &Store, tick_id: i64) -> Result<Option<Explain>, StoreError> {
    let Some(tick) = store.ledger().tick(tick_id).await? else { return Ok(None) };
    let decide = store.ledger().tick_decide(tick_id).await?;
    let decisions = store.decisions().list(tick_id).await?;
    let snapshot = decide.as_ref().and_then(|d| d.snapshot_json.as_deref()).and_then(|t| serde_json::from_str(t).ok());
    let rules_digest = decide.and_then(|d| d.rules_digest);
    Ok(Some(Explain { tick, snapshot, rules_digest, decisions }))
}
