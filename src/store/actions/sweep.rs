//! Sweeps over the whole queue, each one statement over many rows: `rescue` (abandoned
//! attempts back to `RETRY` or `DLQ`), `expire_due` (waiting actions past their deadline to
//! `DLQ`), `boost` (rebalance's aging) and `purge` (finished history deleted in batches).
//!
//! The lease holder's sweeps are fenced by its epoch. It must not pick which rows to sweep by
//! anything but their state and the clock: no rule logic here.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, Value};

use super::super::{Backend, Context, Fence, StoreError};
use super::{Op, Refusal, fence_sql, ids_in_json, insert_logs, returned_ids};
use crate::model::{self, ActionStatus, LogLevel, NewLog};

/// An action returned to `RETRY` or `DLQ` by rescue.
#[derive(Clone, Debug)]
pub struct Rescued {
    pub id: i64,
    pub status: ActionStatus,
    /// The worker whose claim was abandoned (`None`: a claim without a worker, from before
    /// claims had tokens).
    pub worker: Option<String>,
    pub attempts: i32,
}

/// The assignments that end an abandoned attempt in `rescue`: `RETRY` due now, or `DLQ` when
/// out of attempts. The claim columns stay as evidence of what was rescued (the log row names
/// the epoch); the attempt's late completion is refused anyway, since the row is no longer
/// `RUNNING` under that claim. `retry_now` of a RUNNING action makes the same change and also
/// clears the claim.
const ABANDON_SET: &str = "status = CASE WHEN attempts >= max_attempts THEN 'DLQ' ELSE 'RETRY' END, \
     last_error = {error}, \
     finished_at = CASE WHEN attempts >= max_attempts THEN {now} ELSE NULL END, \
     not_before = {now}, updated_at = {now}, part_key = NULL, part_overflow = NULL";

/// The error a rescued attempt is left with.
pub const RESCUED_ERROR: &str =
    "rescued: the claim was orphaned (its worker stopped or lost its heartbeat, or the deadline of its claim passed)";

impl crate::store::handles::Actions<'_> {
    /// `rescue`: returns to `RETRY` (or `DLQ` when out of attempts) every `RUNNING` action
    /// whose claim's deadline has passed, or whose worker is gone (no registration, or a
    /// heartbeat older than `worker_ttl`), and logs each with the worker it names. Only the
    /// live holder of the lease (the fence) can do this. A leader that changes does not touch
    /// attempts in flight: their workers still beat.
    pub async fn rescue(
        self,
        fence: &Fence,
        owner: &str,
        worker_ttl: std::time::Duration,
        tick_id: Option<i64>,
    ) -> Result<Vec<Rescued>, StoreError> {
        let cond = "WHERE status = 'RUNNING' AND (claim_deadline IS NULL OR claim_deadline < {now} \
                      OR NOT EXISTS (SELECT 1 FROM workers w WHERE w.id = actions.claimed_by AND w.heartbeat_at > {live_after})) \
                    AND EXISTS (SELECT 1 FROM leases WHERE name = $2 AND owner = $3 AND epoch = $1 AND expires_at > {now}) \
                    RETURNING id, status, claimed_by, attempts, claim_deadline";
        let set = ABANDON_SET.replace("{error}", &format!("'{RESCUED_ERROR}'"));
        let (sql, values): (String, Vec<Value>) = match self.store.backend {
            Backend::Postgres => (
                format!("UPDATE actions SET {set} {cond}")
                    .replace("{now}", "now()")
                    .replace("{live_after}", "now() - $4 * interval '1 second'"),
                vec![
                    fence.epoch.into(),
                    fence.lease_name.as_str().into(),
                    owner.into(),
                    worker_ttl.as_secs_f64().into(),
                ],
            ),
            Backend::Sqlite => {
                let now = self.store.now();
                let live_after = model::earlier_saturating(now, worker_ttl);
                (
                    format!("UPDATE actions SET {set} {cond}").replace("{now}", "$4").replace("{live_after}", "$5"),
                    vec![
                        fence.epoch.into(),
                        fence.lease_name.as_str().into(),
                        owner.into(),
                        now.into(),
                        live_after.into(),
                    ],
                )
            }
        };
        let txn = self.store.begin_write().await?;
        let rows = txn.query_all_raw(self.store.stmt(&sql, values)).await.doing("rescuing orphaned actions")?;
        let mut rescued = Vec::with_capacity(rows.len());
        let mut logs = Vec::with_capacity(rows.len());
        let now = self.store.now();
        for r in rows {
            let id: i64 = r.try_get("", "id").doing("reading rescued actions")?;
            let status: String = r.try_get("", "status").doing("reading rescued actions")?;
            let status = status.parse().map_err(|reason| StoreError::Corrupt { table: "actions", id, reason })?;
            let worker: Option<String> = r.try_get("", "claimed_by").doing("reading rescued actions")?;
            let deadline: Option<DateTime<Utc>> = r.try_get("", "claim_deadline").doing("reading rescued actions")?;
            let attempts: i32 = r.try_get("", "attempts").doing("reading rescued actions")?;
            let why = match (&worker, deadline) {
                (None, _) => "a claim with no worker".to_string(),
                (Some(w), Some(d)) if d < now => format!("worker {w}'s claim passed its deadline {}", d.to_rfc3339()),
                (Some(w), _) => format!("worker {w} is gone (no heartbeat within the TTL)"),
            };
            logs.push(NewLog::new(id, LogLevel::Warning, format!("rescued attempt {attempts}: {why} -> {status}")));
            rescued.push(Rescued { id, status, worker, attempts });
        }
        insert_logs(&txn, tick_id, &logs, now).await?;
        txn.commit().await.doing("committing rescued actions")?;
        Ok(rescued)
    }

    /// `boost` (rebalance's aging): every waiting action (`PENDING` or `RETRY`) created before
    /// `old_before` gains one priority step (never past 1,000,000), so old work is claimed
    /// first and nothing starves behind a stream of fresh work. It defers nothing and takes
    /// nothing out of the queue: the only change is the claim order. Fenced; returns how many
    /// were boosted.
    pub async fn boost(self, fence: &Fence, old_before: DateTime<Utc>) -> Result<u64, StoreError> {
        let now = self.store.now();
        let boost = format!(
            "UPDATE actions SET priority = priority + 1, updated_at = $1 WHERE {} \
             AND created_at < $2 AND priority < 1000000 AND {}",
            Op::Boost.status_in(),
            fence_sql(3, 4),
        );
        let boosted =
            self.store
                .db
                .execute_raw(self.store.stmt(
                    &boost,
                    [now.into(), old_before.into(), fence.lease_name.as_str().into(), fence.epoch.into()],
                ))
                .await
                .doing("rebalancing: boosting old actions")?
                .rows_affected();
        if boosted == 0 && !self.store.lease().fence_holds(fence).await? {
            return Err(Refusal::Fenced(fence.epoch).into());
        }
        Ok(boosted)
    }

    /// `expire`: every waiting action (`PENDING` or `RETRY`) whose deadline has passed goes to
    /// `DLQ` with the error `expired`, and a log row each, in one transaction. The claim never
    /// starts such an action (it skips expired rows), so this only has to make the outcome
    /// visible; the tick runs it before its snapshot. Fenced by the lease epoch. Returns the
    /// ids expired.
    pub async fn expire_due(self, lease_name: &str, epoch: i64, tick_id: Option<i64>) -> Result<Vec<i64>, StoreError> {
        let now = self.store.now();
        let sql = format!(
            "UPDATE actions SET status = 'DLQ', last_error = 'expired', finished_at = $1, updated_at = $1 \
             WHERE {} AND expires_at IS NOT NULL AND expires_at <= $1 AND {} RETURNING id",
            Op::Expire.status_in(),
            fence_sql(2, 3),
        );
        let txn = self.store.begin_write().await?;
        let ids = returned_ids(
            &txn,
            self.store.stmt(&sql, [now.into(), lease_name.into(), epoch.into()]),
            "expiring actions",
        )
        .await?;
        if ids.is_empty() {
            return Ok(ids);
        }
        let logs: Vec<NewLog> = ids
            .iter()
            .map(|&id| NewLog::new(id, LogLevel::Warning, "expired: its deadline passed before it could start -> DLQ"))
            .collect();
        insert_logs(&txn, tick_id, &logs, now).await?;
        txn.commit().await.doing("committing expired actions")?;
        Ok(ids)
    }

    /// `purge`: deletes `SUCCESS` and `CANCELLED` actions (and their logs) finished before
    /// `before`, in small batches so that no transaction holds the write lock for long. `DLQ` is
    /// never deleted. Returns how many were deleted.
    pub async fn purge(self, before: DateTime<Utc>, batch: u64) -> Result<u64, StoreError> {
        let sql = format!(
            "DELETE FROM actions WHERE id IN (SELECT id FROM actions WHERE {} AND finished_at < $1 LIMIT $2) RETURNING id",
            Op::Purge.status_in()
        );
        // Their log rows go in the same transaction: on PostgreSQL no foreign key cascades to
        // them (migration `m20261208_000019_log_rows_unreferenced`).
        let logs = format!("DELETE FROM execution_logs WHERE action_id IN ({})", ids_in_json(self.store.backend, "$1"));
        let batch = i64::try_from(batch.max(1)).unwrap_or(i64::MAX);
        let mut total = 0;
        loop {
            let txn = self.store.begin_write().await?;
            let stmt = self.store.stmt(&sql, [before.into(), batch.into()]);
            let ids = returned_ids(&txn, stmt, "purging finished actions").await?;
            let n = ids.len() as u64;
            if n > 0 {
                let ids = serde_json::Value::from(ids).to_string();
                txn.execute_raw(self.store.stmt(&logs, [ids.into()])).await.doing("purging their log rows")?;
            }
            txn.commit().await.doing("committing a purge batch")?;
            total += n;
            if n < batch as u64 {
                return Ok(total);
            }
        }
    }
}
