//! Operator edits of many actions named by id: requeue DLQ rows, cancel rows. The page sends
//! the ids it showed, so a row that arrived since is never touched.
//!
//! Each is the single-row edit of `actions.rs` (`requeue`, `cancel`) with `id IN (...)` in place
//! of `id = $n`: the same `from -> to`, the same columns, a log row per changed action in the
//! same transaction. Rows that are no longer in a `from` status are left alone and reported as
//! skipped. Kept apart so that they can move with the other transitions into one module.

use sea_orm::{ConnectionTrait, DatabaseTransaction, Value};

use super::actions::insert_logs;
use super::{Context, Store, StoreError};
use crate::model::{ActionStatus, LogLevel, NewLog};

/// Ids per statement (each id is one bound parameter).
const IDS_CHUNK: usize = 500;
/// Ids per call: a bulk edit is an operator's, not a migration.
pub const MAX_BULK_IDS: usize = 10_000;

/// What a bulk edit did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct BulkOutcome {
    /// Ids changed, ascending.
    pub changed: Vec<i64>,
    /// Ids given but not changed (not found, or no longer in a status the edit applies to).
    pub skipped: Vec<i64>,
}

impl Store {
    /// `DLQ` -> `PENDING` with attempts reset, for the given ids only.
    pub async fn requeue_ids(&self, ids: &[i64]) -> Result<BulkOutcome, StoreError> {
        let now = self.now();
        self.bulk_edit(
            ids,
            "UPDATE actions SET status = 'PENDING', attempts = 0, not_before = $1, updated_at = $1, \
             finished_at = NULL, claimed_epoch = NULL, claimed_at = NULL WHERE status = 'DLQ'",
            "requeued by operator: DLQ -> PENDING, attempts reset",
            now,
            "requeueing actions",
        )
        .await
    }

    /// Cancels the given ids among those in `from` (each one of `PENDING`, `RETRY`, `DLQ`; a
    /// `RUNNING` action must finish its attempt first).
    pub async fn cancel_ids(&self, ids: &[i64], from: &[ActionStatus]) -> Result<BulkOutcome, StoreError> {
        let allowed = [ActionStatus::Pending, ActionStatus::Retry, ActionStatus::Dlq];
        if from.is_empty() || from.iter().any(|s| !allowed.contains(s)) {
            return Err(StoreError::Invalid(
                "only PENDING, RETRY or DLQ actions can be cancelled; a RUNNING one must finish its attempt first"
                    .to_string(),
            ));
        }
        let statuses: Vec<String> = from.iter().map(|s| format!("'{}'", s.as_str())).collect();
        let sql = format!(
            "UPDATE actions SET status = 'CANCELLED', updated_at = $1, finished_at = $1 WHERE status IN ({})",
            statuses.join(", ")
        );
        self.bulk_edit(ids, &sql, "cancelled by operator", self.now(), "cancelling actions").await
    }

    /// The ids of every `DLQ` action, oldest first (for `actions cancel --all-dlq`).
    pub async fn dlq_ids(&self) -> Result<Vec<i64>, StoreError> {
        let rows = self
            .db
            .query_all_raw(self.stmt("SELECT id FROM actions WHERE status = 'DLQ' ORDER BY id", []))
            .await
            .doing("listing DLQ actions")?;
        rows.iter().map(|r| r.try_get::<i64>("", "id").doing("listing DLQ actions")).collect()
    }

    /// Runs `update` (which ends in its status condition) for `ids` in chunks, in one
    /// transaction with a log row per changed action.
    async fn bulk_edit(
        &self,
        ids: &[i64],
        update: &str,
        message: &str,
        now: chrono::DateTime<chrono::Utc>,
        doing: &'static str,
    ) -> Result<BulkOutcome, StoreError> {
        if ids.len() > MAX_BULK_IDS {
            return Err(StoreError::Invalid(format!("at most {MAX_BULK_IDS} ids per request, got {}", ids.len())));
        }
        let mut wanted: Vec<i64> = ids.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        if wanted.is_empty() {
            return Ok(BulkOutcome::default());
        }
        let txn = self.begin_write().await?;
        let mut changed = Vec::new();
        for chunk in wanted.chunks(IDS_CHUNK) {
            let marks: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!("{update} AND id IN ({}) RETURNING id", marks.join(", "));
            let mut values: Vec<Value> = vec![now.into()];
            values.extend(chunk.iter().map(|&id| Value::from(id)));
            changed.extend(ids_of(&txn, self.stmt(&sql, values), doing).await?);
        }
        changed.sort_unstable();
        let logs: Vec<NewLog> = changed.iter().map(|&i| NewLog::new(i, LogLevel::Info, message)).collect();
        insert_logs(&txn, None, &logs, now).await?;
        txn.commit().await.doing("committing a bulk edit")?;
        let skipped = wanted.into_iter().filter(|id| changed.binary_search(id).is_err()).collect();
        Ok(BulkOutcome { changed, skipped })
    }
}

async fn ids_of(
    txn: &DatabaseTransaction,
    stmt: sea_orm::Statement,
    doing: &'static str,
) -> Result<Vec<i64>, StoreError> {
    let rows = txn.query_all_raw(stmt).await.doing(doing)?;
    rows.iter().map(|r| r.try_get::<i64>("", "id").doing(doing)).collect()
}
