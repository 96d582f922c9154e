//! Queries over the `actions` table: idempotent inserts, the atomic claim, fenced completions,
//! rescue of orphaned claims, operator edits (requeue, cancel, purge) and counts.
//!
//! Every write about a claimed action is fenced: it lands only while the row is still
//! `RUNNING` under the claimer's epoch and attempt number, and while the lease still carries
//! that epoch. A zombie holder's late write therefore changes nothing, and says so.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Value,
};

use super::entities::{self, actions};
use super::{Backend, Context, Store, StoreError};
use crate::model::{Action, ActionStatus, LogLevel, NewLog};

/// A validated action ready to insert (see `queue::enqueue` for the validation).
#[derive(Clone, Debug)]
pub struct NewAction {
    pub action_type: String,
    /// Canonical JSON text of an object.
    pub payload_json: String,
    pub idempotency_key: String,
    pub priority: i32,
    pub not_before: DateTime<Utc>,
    pub max_attempts: i32,
    /// The deadline (`None`: none): never started after it, moved to `DLQ` as `expired`.
    pub expires_at: Option<DateTime<Utc>>,
}

/// What an enqueue did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EnqueueOutcome {
    pub id: i64,
    /// True when the key already existed: nothing was created.
    pub duplicate: bool,
    pub status: ActionStatus,
}

/// An action claimed by this instance: it is `RUNNING` under `epoch`, attempt `attempt`.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub action: Action,
    pub epoch: i64,
    /// The value of `attempts` after the claim: the attempt this run is.
    pub attempt: i32,
}

/// The fenced end of one claimed attempt.
#[derive(Clone, Debug)]
pub struct Completion {
    pub action_id: i64,
    pub epoch: i64,
    pub attempt: i32,
    pub outcome: CompletionOutcome,
    pub logs: Vec<NewLog>,
}

/// Where a completed attempt leaves its action.
#[derive(Clone, Debug)]
pub enum CompletionOutcome {
    Success,
    Retry {
        not_before: DateTime<Utc>,
        error: String,
    },
    Dlq {
        error: String,
    },
    /// Never started (the tick deadline came first): back to `PENDING`, the attempt uncounted.
    Unstarted,
}

/// Which completions landed and which the fence rejected.
#[derive(Clone, Debug, Default)]
pub struct CompletionReport {
    pub applied: Vec<i64>,
    pub rejected: Vec<i64>,
}

/// An action returned to `RETRY` or `DLQ` by rescue.
#[derive(Clone, Debug)]
pub struct Rescued {
    pub id: i64,
    pub status: ActionStatus,
    pub claimed_epoch: Option<i64>,
    pub attempts: i32,
}

/// Filters for listing actions.
#[derive(Clone, Debug, Default)]
pub struct ActionFilter {
    pub status: Option<ActionStatus>,
    pub action_type: Option<String>,
    pub limit: u64,
}

const OPEN: &str = "status IN ('PENDING', 'RUNNING', 'RETRY', 'DLQ')";

const CLAIM_PG: &str = "\
UPDATE actions SET status = 'RUNNING', attempts = attempts + 1, claimed_epoch = $1,
       claimed_at = now(), updated_at = now()
WHERE id IN (SELECT id FROM actions
             WHERE status IN ('PENDING', 'RETRY') AND not_before <= now()
               AND (expires_at IS NULL OR expires_at > now())
             ORDER BY priority DESC, not_before, id
             LIMIT $2 FOR UPDATE SKIP LOCKED)
  AND EXISTS (SELECT 1 FROM leases WHERE name = $3 AND owner = $4 AND epoch = $1 AND expires_at > now())
RETURNING *";

const CLAIM_SQLITE: &str = "\
UPDATE actions SET status = 'RUNNING', attempts = attempts + 1, claimed_epoch = $1,
       claimed_at = $5, updated_at = $5
WHERE id IN (SELECT id FROM actions
             WHERE status IN ('PENDING', 'RETRY') AND not_before <= $5
               AND (expires_at IS NULL OR expires_at > $5)
             ORDER BY priority DESC, not_before, id
             LIMIT $2)
  AND EXISTS (SELECT 1 FROM leases WHERE name = $3 AND owner = $4 AND epoch = $1 AND expires_at > $5)
RETURNING *";

/// Rows per bulk INSERT statement.
const INSERT_CHUNK: usize = 5000;

// Bulk inserts: `$1` is a JSON array of [key, type, payload, priority, not_before, max_attempts,
// expires_at] rows, `$2` the creation time. `WHERE true` lets SQLite parse the upsert after a SELECT.
const INSERT_JSON_SQLITE: &str = "\
INSERT INTO actions (idempotency_key, action_type, payload_json, status, priority, not_before, attempts,
                     max_attempts, created_at, updated_at, expires_at)
SELECT value ->> 0, value ->> 1, value ->> 2, 'PENDING', value ->> 3, value ->> 4, 0, value ->> 5, $2, $2,
       value ->> 6
FROM json_each(jsonb($1)) WHERE true
ON CONFLICT (idempotency_key) DO NOTHING";

const INSERT_JSON_PG: &str = "\
INSERT INTO actions (idempotency_key, action_type, payload_json, status, priority, not_before, attempts,
                     max_attempts, created_at, updated_at, expires_at)
SELECT r ->> 0, r ->> 1, r ->> 2, 'PENDING', (r ->> 3)::integer, (r ->> 4)::timestamptz, 0,
       (r ->> 5)::integer, $2, $2, (r ->> 6)::timestamptz
FROM json_array_elements($1::json) AS r
ON CONFLICT (idempotency_key) DO NOTHING";

/// Completions per fenced UPDATE statement, and log rows per INSERT (each chunk is one JSON
/// parameter).
const COMPLETE_CHUNK: usize = 1000;
const LOG_CHUNK: usize = 1000;

impl Store {
    /// Inserts one action unless its key exists; either way returns the row's id and status.
    pub async fn insert_action(&self, new: &NewAction) -> Result<EnqueueOutcome, StoreError> {
        let now = self.now();
        let inserted = actions::Entity::insert(active(new, now))
            .on_conflict(OnConflict::column(actions::Column::IdempotencyKey).do_nothing().to_owned())
            .exec_without_returning(&self.db)
            .await
            .doing("inserting an action")?;
        let row = actions::Entity::find()
            .filter(actions::Column::IdempotencyKey.eq(&new.idempotency_key))
            .one(&self.db)
            .await
            .doing("reading the enqueued action")?
            .ok_or_else(|| {
                StoreError::Refused(format!("action with key '{}' vanished after insert", new.idempotency_key))
            })?;
        let status =
            row.status.parse().map_err(|reason| StoreError::Corrupt { table: "actions", id: row.id, reason })?;
        Ok(EnqueueOutcome { id: row.id, duplicate: inserted == 0, status })
    }

    /// Inserts a batch in one transaction; keys that exist are skipped. Returns how many rows
    /// were created. Nothing of the batch is written if any statement fails.
    ///
    /// The rows travel as one JSON array per statement, unpacked by the database
    /// (`json_each`, `json_array_elements`): one bound value instead of ten per row, and one
    /// statement text whatever the batch size, so it is prepared once.
    pub async fn insert_actions(&self, batch: &[NewAction]) -> Result<u64, StoreError> {
        if batch.is_empty() {
            return Ok(0);
        }
        let now = self.now();
        let sql = match self.backend {
            Backend::Sqlite => INSERT_JSON_SQLITE,
            Backend::Postgres => INSERT_JSON_PG,
        };
        let txn = self.begin_write().await?;
        if self.backend == Backend::Sqlite {
            // A bulk import touches pages all over the key index (derived keys are hashes): a
            // 64 MiB cache keeps them from spilling mid-transaction, and a longer WAL between
            // checkpoints stops the import from copying the same pages back over and over.
            // Per connection; only `enqueue --file`, a short-lived process, inserts in bulk.
            for pragma in ["PRAGMA cache_size = -65536", "PRAGMA wal_autocheckpoint = 20000"] {
                txn.execute_unprepared(pragma).await.doing("sizing the cache for a bulk insert")?;
            }
        }
        let mut created = 0;
        for chunk in batch.chunks(INSERT_CHUNK) {
            #[allow(clippy::type_complexity)]
            let rows: Vec<(&str, &str, &str, i32, String, i32, Option<String>)> = chunk
                .iter()
                .map(|n| {
                    (
                        n.idempotency_key.as_str(),
                        n.action_type.as_str(),
                        n.payload_json.as_str(),
                        n.priority,
                        timestamp_text(n.not_before),
                        n.max_attempts,
                        n.expires_at.map(timestamp_text),
                    )
                })
                .collect();
            let rows = serde_json::to_string(&rows)
                .map_err(|e| StoreError::Refused(format!("cannot encode a batch of actions: {e}")))?;
            created += txn
                .execute_raw(self.stmt(sql, [rows.into(), now.into()]))
                .await
                .doing("inserting a batch of actions")?
                .rows_affected();
        }
        txn.commit().await.doing("committing a batch of actions")?;
        Ok(created)
    }

    pub async fn action(&self, id: i64) -> Result<Option<Action>, StoreError> {
        let row = actions::Entity::find_by_id(id).one(&self.db).await.doing("reading an action")?;
        row.map(Action::try_from).transpose()
    }

    /// Actions matching the filter, newest first.
    pub async fn list_actions(&self, filter: &ActionFilter) -> Result<Vec<Action>, StoreError> {
        let mut q = actions::Entity::find();
        if let Some(s) = filter.status {
            q = q.filter(actions::Column::Status.eq(s.as_str()));
        }
        if let Some(t) = &filter.action_type {
            q = q.filter(actions::Column::ActionType.eq(t.as_str()));
        }
        let rows =
            q.order_by_desc(actions::Column::Id).limit(filter.limit).all(&self.db).await.doing("listing actions")?;
        entities::convert_all(rows)
    }

    /// Claims up to `n` due actions for the holder of `lease_name` at `epoch`: one statement,
    /// so two claimers can never take the same row. Returns them in dispatch order.
    pub async fn claim(&self, lease_name: &str, owner: &str, epoch: i64, n: u64) -> Result<Vec<Claimed>, StoreError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let stmt = match self.backend {
            Backend::Postgres => self.stmt(CLAIM_PG, [epoch.into(), n.into(), lease_name.into(), owner.into()]),
            Backend::Sqlite => {
                self.stmt(CLAIM_SQLITE, [epoch.into(), n.into(), lease_name.into(), owner.into(), self.now().into()])
            }
        };
        let rows = actions::Entity::find().from_raw_sql(stmt).all(&self.db).await.doing("claiming actions")?;
        let mut claimed: Vec<Claimed> = entities::convert_all::<_, Action>(rows)?
            .into_iter()
            .map(|action| Claimed { epoch, attempt: action.attempts, action })
            .collect();
        claimed.sort_by(|a, b| {
            b.action
                .priority
                .cmp(&a.action.priority)
                .then(a.action.not_before.cmp(&b.action.not_before))
                .then(a.action.id.cmp(&b.action.id))
        });
        Ok(claimed)
    }

    /// Writes a batch of completions and their log rows in one transaction: one fenced UPDATE
    /// per chunk of rows (each row checked against its own epoch and attempt), then the log
    /// rows of the ones that landed.
    pub async fn complete(
        &self,
        lease_name: &str,
        tick_id: Option<i64>,
        batch: &[Completion],
    ) -> Result<CompletionReport, StoreError> {
        let mut report = CompletionReport::default();
        if batch.is_empty() {
            return Ok(report);
        }
        let now = self.now();
        let txn = self.begin_write().await?;
        let mut applied = std::collections::HashSet::new();
        for chunk in batch.chunks(COMPLETE_CHUNK) {
            let stmt = self.complete_stmt(lease_name, now, chunk);
            for id in returned_ids(&txn, stmt, "recording action outcomes").await? {
                applied.insert(id);
            }
        }
        let mut logs = Vec::new();
        for c in batch {
            if applied.contains(&c.action_id) {
                report.applied.push(c.action_id);
                logs.extend(c.logs.iter().cloned());
            } else {
                report.rejected.push(c.action_id);
            }
        }
        insert_logs(&txn, tick_id, &logs, now).await?;
        txn.commit().await.doing("committing action outcomes")?;
        Ok(report)
    }

    fn complete_stmt(&self, lease_name: &str, now: DateTime<Utc>, chunk: &[Completion]) -> sea_orm::Statement {
        let rows: Vec<serde_json::Value> = chunk
            .iter()
            .map(|c| {
                let (status, not_before, error, unstart) = match &c.outcome {
                    CompletionOutcome::Success => ("SUCCESS", None, None, 0),
                    CompletionOutcome::Retry { not_before, error } => {
                        ("RETRY", Some(timestamp_text(*not_before)), Some(db_text(error)), 0)
                    }
                    CompletionOutcome::Dlq { error } => ("DLQ", None, Some(db_text(error)), 0),
                    CompletionOutcome::Unstarted => ("PENDING", None, None, 1),
                };
                serde_json::json!({
                    "id": c.action_id, "epoch": c.epoch, "attempt": c.attempt, "status": status,
                    "not_before": not_before, "err": error, "unstart": unstart,
                })
            })
            .collect();
        let v = match self.backend {
            Backend::Sqlite => {
                "SELECT value ->> 'id' AS id, value ->> 'epoch' AS epoch, value ->> 'attempt' AS attempt, \
                 value ->> 'status' AS status, value ->> 'not_before' AS not_before, value ->> 'err' AS err, \
                 value ->> 'unstart' AS unstart FROM json_each($1)"
            }
            Backend::Postgres => {
                "SELECT * FROM json_to_recordset($1::json) AS x(id BIGINT, epoch BIGINT, attempt INTEGER, \
                 status TEXT, not_before TIMESTAMPTZ, err TEXT, unstart INTEGER)"
            }
        };
        let sql = format!(
            "WITH v AS ({v}) \
             UPDATE actions SET status = v.status, attempts = actions.attempts - v.unstart, \
               not_before = COALESCE(v.not_before, actions.not_before), \
               last_error = COALESCE(v.err, actions.last_error), \
               claimed_epoch = CASE WHEN v.unstart = 1 THEN NULL ELSE actions.claimed_epoch END, \
               claimed_at = CASE WHEN v.unstart = 1 THEN NULL ELSE actions.claimed_at END, \
               updated_at = $2, \
               finished_at = CASE WHEN v.status IN ('SUCCESS', 'DLQ') THEN $2 ELSE actions.finished_at END \
             FROM v \
             WHERE actions.id = v.id AND actions.status = 'RUNNING' AND actions.claimed_epoch = v.epoch \
               AND actions.attempts = v.attempt \
               AND EXISTS (SELECT 1 FROM leases WHERE leases.name = $3 AND leases.epoch = v.epoch) \
             RETURNING actions.id"
        );
        self.stmt(&sql, [serde_json::Value::Array(rows).to_string().into(), now.into(), lease_name.into()])
    }

    /// Returns to `RETRY` (or `DLQ` when out of attempts) every `RUNNING` action claimed under
    /// an epoch older than `epoch`, or claimed before `timeout` ago, and logs each. Only the
    /// live holder of `lease_name` at `epoch` can do this.
    pub async fn rescue(
        &self,
        lease_name: &str,
        owner: &str,
        epoch: i64,
        timeout: std::time::Duration,
        tick_id: Option<i64>,
    ) -> Result<Vec<Rescued>, StoreError> {
        let set = "status = CASE WHEN attempts >= max_attempts THEN 'DLQ' ELSE 'RETRY' END, \
                   last_error = 'rescued: the claim was orphaned (its instance stopped, or lost the lease, before finishing)', \
                   finished_at = CASE WHEN attempts >= max_attempts THEN {now} ELSE NULL END, \
                   not_before = {now}, updated_at = {now}";
        let cond = "WHERE status = 'RUNNING' AND (claimed_epoch IS NULL OR claimed_epoch < $1 OR claimed_at < {cutoff}) \
                    AND EXISTS (SELECT 1 FROM leases WHERE name = $2 AND owner = $3 AND epoch = $1 AND expires_at > {now}) \
                    RETURNING id, status, claimed_epoch, attempts";
        let secs = timeout.as_secs_f64();
        let (sql, values): (String, Vec<Value>) = match self.backend {
            Backend::Postgres => (
                format!("UPDATE actions SET {set} {cond}")
                    .replace("{now}", "now()")
                    .replace("{cutoff}", "now() - $4 * interval '1 second'"),
                vec![epoch.into(), lease_name.into(), owner.into(), secs.into()],
            ),
            Backend::Sqlite => {
                let now = self.now();
                let cutoff = now - chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX);
                (
                    format!("UPDATE actions SET {set} {cond}").replace("{now}", "$4").replace("{cutoff}", "$5"),
                    vec![epoch.into(), lease_name.into(), owner.into(), now.into(), cutoff.into()],
                )
            }
        };
        let txn = self.begin_write().await?;
        let rows = txn.query_all_raw(self.stmt(&sql, values)).await.doing("rescuing orphaned actions")?;
        let mut rescued = Vec::with_capacity(rows.len());
        for r in rows {
            let id: i64 = r.try_get("", "id").doing("reading rescued actions")?;
            let status: String = r.try_get("", "status").doing("reading rescued actions")?;
            let status = status.parse().map_err(|reason| StoreError::Corrupt { table: "actions", id, reason })?;
            rescued.push(Rescued {
                id,
                status,
                claimed_epoch: r.try_get("", "claimed_epoch").doing("reading rescued actions")?,
                attempts: r.try_get("", "attempts").doing("reading rescued actions")?,
            });
        }
        let logs: Vec<NewLog> = rescued
            .iter()
            .map(|r| {
                let epoch_text = r.claimed_epoch.map_or("no epoch".to_string(), |e| format!("epoch {e}"));
                NewLog::new(
                    r.id,
                    LogLevel::Warning,
                    format!(
                        "rescued orphaned claim (attempt {} under {epoch_text}; now epoch {epoch}) -> {}",
                        r.attempts, r.status
                    ),
                )
            })
            .collect();
        insert_logs(&txn, tick_id, &logs, self.now()).await?;
        txn.commit().await.doing("committing rescued actions")?;
        Ok(rescued)
    }

    /// `expire`: every waiting action (`PENDING` or `RETRY`) whose deadline has passed goes to
    /// `DLQ` with the error `expired`, and a log row each, in one transaction. The claim never
    /// starts such an action (it skips expired rows), so this only has to make the outcome
    /// visible; the tick runs it before its snapshot. Fenced by the lease epoch. Returns the
    /// ids expired.
    pub async fn expire_due(&self, lease_name: &str, epoch: i64, tick_id: Option<i64>) -> Result<Vec<i64>, StoreError> {
        let now = self.now();
        let sql = "UPDATE actions SET status = 'DLQ', last_error = 'expired', finished_at = $1, updated_at = $1 \
                   WHERE status IN ('PENDING', 'RETRY') AND expires_at IS NOT NULL AND expires_at <= $1 \
                   AND EXISTS (SELECT 1 FROM leases WHERE name = $2 AND epoch = $3) RETURNING id";
        let txn = self.begin_write().await?;
        let ids = returned_ids(&txn, self.stmt(sql, [now.into(), lease_name.into(), epoch.into()]), "expiring actions")
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

    /// `DLQ` -> `PENDING` with attempts reset. `None` requeues every DLQ action. Returns the
    /// ids requeued.
    pub async fn requeue(&self, id: Option<i64>) -> Result<Vec<i64>, StoreError> {
        let now = self.now();
        // A deadline that has passed is dropped: the operator asked for another run.
        let mut sql = "UPDATE actions SET status = 'PENDING', attempts = 0, not_before = $1, updated_at = $1, \
                       finished_at = NULL, claimed_epoch = NULL, claimed_at = NULL, \
                       expires_at = CASE WHEN expires_at <= $1 THEN NULL ELSE expires_at END WHERE status = 'DLQ'"
            .to_string();
        let mut values: Vec<Value> = vec![now.into()];
        if let Some(id) = id {
            sql.push_str(" AND id = $2");
            values.push(id.into());
        }
        sql.push_str(" RETURNING id");
        let txn = self.begin_write().await?;
        let ids = returned_ids(&txn, self.stmt(&sql, values), "requeueing actions").await?;
        if let (Some(id), true) = (id, ids.is_empty()) {
            drop(txn);
            return Err(self.explain_refusal(id, "requeue", "only DLQ actions can be requeued").await);
        }
        let logs: Vec<NewLog> = ids
            .iter()
            .map(|&i| NewLog::new(i, LogLevel::Info, "requeued by operator: DLQ -> PENDING, attempts reset"))
            .collect();
        insert_logs(&txn, None, &logs, now).await?;
        txn.commit().await.doing("committing the requeue")?;
        Ok(ids)
    }

    /// Cancels an action that has not finished and is not running.
    pub async fn cancel(&self, id: i64) -> Result<(), StoreError> {
        let now = self.now();
        let sql = "UPDATE actions SET status = 'CANCELLED', updated_at = $1, finished_at = $1 \
                   WHERE id = $2 AND status IN ('PENDING', 'RETRY', 'DLQ') RETURNING id";
        let txn = self.begin_write().await?;
        let ids = returned_ids(&txn, self.stmt(sql, [now.into(), id.into()]), "cancelling an action").await?;
        if ids.is_empty() {
            drop(txn);
            return Err(self
                .explain_refusal(
                    id,
                    "cancel",
                    "only PENDING, RETRY or DLQ actions can be cancelled; a RUNNING one must finish its attempt first",
                )
                .await);
        }
        insert_logs(&txn, None, &[NewLog::new(id, LogLevel::Info, "cancelled by operator")], now).await?;
        txn.commit().await.doing("committing the cancel")
    }

    async fn explain_refusal(&self, id: i64, verb: &str, rule: &str) -> StoreError {
        match self.action(id).await {
            Ok(Some(a)) => StoreError::Refused(format!("cannot {verb} action {id}: it is {}; {rule}", a.status)),
            Ok(None) => StoreError::NotFound(id),
            Err(e) => e,
        }
    }

    /// Deletes `SUCCESS` and `CANCELLED` actions (and their logs) finished before `before`, in
    /// small batches so that no transaction holds the write lock for long. `DLQ` is never
    /// deleted. Returns how many were deleted.
    pub async fn purge(&self, before: DateTime<Utc>, batch: u64) -> Result<u64, StoreError> {
        let sql = "DELETE FROM actions WHERE id IN (SELECT id FROM actions \
                   WHERE status IN ('SUCCESS', 'CANCELLED') AND finished_at < $1 LIMIT $2)";
        let batch = i64::try_from(batch.max(1)).unwrap_or(i64::MAX);
        let mut total = 0;
        loop {
            // Their execution logs go by ON DELETE CASCADE.
            let txn = self.begin_write().await?;
            let n = txn
                .execute_raw(self.stmt(sql, [before.into(), batch.into()]))
                .await
                .doing("purging finished actions")?
                .rows_affected();
            txn.commit().await.doing("committing a purge batch")?;
            total += n;
            if n < batch as u64 {
                return Ok(total);
            }
        }
    }

    /// Count of every status (all history; for `status`, not for the tick's hot path).
    pub async fn count_by_status(&self) -> Result<BTreeMap<ActionStatus, i64>, StoreError> {
        self.grouped_counts("SELECT status, COUNT(*) AS n FROM actions GROUP BY status").await
    }

    /// Counts of the open statuses only, served by the partial index: cost independent of
    /// finished history.
    pub async fn open_counts(&self) -> Result<BTreeMap<ActionStatus, i64>, StoreError> {
        self.grouped_counts(&format!("SELECT status, COUNT(*) AS n FROM actions WHERE {OPEN} GROUP BY status")).await
    }

    async fn grouped_counts(&self, sql: &str) -> Result<BTreeMap<ActionStatus, i64>, StoreError> {
        let rows = self.db.query_all_raw(self.stmt(sql, [])).await.doing("counting actions")?;
        let mut counts: BTreeMap<ActionStatus, i64> = ActionStatus::ALL.iter().map(|s| (*s, 0)).collect();
        for r in rows {
            let status: String = r.try_get("", "status").doing("counting actions")?;
            let n: i64 = r.try_get("", "n").doing("counting actions")?;
            if let Ok(s) = status.parse::<ActionStatus>() {
                counts.insert(s, n);
            }
        }
        Ok(counts)
    }

    /// When the oldest `PENDING` action was created, if any.
    pub async fn oldest_pending(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let sql = format!("SELECT MIN(created_at) AS t FROM actions WHERE {OPEN} AND status = 'PENDING'");
        let row = self.db.query_one_raw(self.stmt(&sql, [])).await.doing("finding the oldest pending action")?;
        match row {
            Some(r) => r.try_get::<Option<DateTime<Utc>>>("", "t").doing("finding the oldest pending action"),
            None => Ok(None),
        }
    }

    /// How many actions are due now (`PENDING` or `RETRY` with `not_before` passed).
    pub async fn due_count(&self) -> Result<i64, StoreError> {
        let sql = "SELECT COUNT(*) AS n FROM actions WHERE status IN ('PENDING', 'RETRY') AND not_before <= $1 \
                   AND (expires_at IS NULL OR expires_at > $1)";
        let row = self.db.query_one_raw(self.stmt(sql, [self.now().into()])).await.doing("counting due actions")?;
        match row {
            Some(r) => r.try_get("", "n").doing("counting due actions"),
            None => Ok(0),
        }
    }
}

fn active(n: &NewAction, now: DateTime<Utc>) -> actions::ActiveModel {
    actions::ActiveModel {
        id: NotSet,
        idempotency_key: Set(n.idempotency_key.clone()),
        action_type: Set(n.action_type.clone()),
        payload_json: Set(n.payload_json.clone()),
        status: Set(ActionStatus::Pending.as_str().to_string()),
        priority: Set(n.priority),
        not_before: Set(n.not_before),
        attempts: Set(0),
        max_attempts: Set(n.max_attempts),
        last_error: Set(None),
        claimed_epoch: Set(None),
        claimed_at: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        finished_at: Set(None),
        expires_at: Set(n.expires_at),
    }
}

async fn returned_ids(
    txn: &DatabaseTransaction,
    stmt: sea_orm::Statement,
    doing: &'static str,
) -> Result<Vec<i64>, StoreError> {
    let rows = txn.query_all_raw(stmt).await.doing(doing)?;
    rows.iter().map(|r| r.try_get::<i64>("", "id").doing(doing)).collect()
}

/// Inserts log rows inside the caller's transaction.
pub(super) async fn insert_logs(
    txn: &DatabaseTransaction,
    tick_id: Option<i64>,
    logs: &[NewLog],
    ts: DateTime<Utc>,
) -> Result<(), StoreError> {
    let rows_from = match txn.get_database_backend() {
        DbBackend::Postgres => {
            "json_to_recordset($1::json) AS x(action_id BIGINT, level TEXT, message TEXT, artifact_ref TEXT, \
             artifact_sha256 TEXT)"
        }
        _ => {
            "(SELECT value ->> 'action_id' AS action_id, value ->> 'level' AS level, value ->> 'message' AS message, \
             value ->> 'artifact_ref' AS artifact_ref, value ->> 'artifact_sha256' AS artifact_sha256 FROM json_each($1))"
        }
    };
    let sql = format!(
        "INSERT INTO execution_logs (action_id, tick_id, ts, level, message, artifact_ref, artifact_sha256) \
         SELECT action_id, $2, $3, level, message, artifact_ref, artifact_sha256 FROM {rows_from}"
    );
    for chunk in logs.chunks(LOG_CHUNK) {
        let rows: Vec<serde_json::Value> = chunk
            .iter()
            .map(|l| {
                serde_json::json!({
                    "action_id": l.action_id, "level": l.level.as_str(), "message": db_text(&l.message),
                    "artifact_ref": l.artifact_ref.as_deref().map(db_text),
                    "artifact_sha256": l.artifact_sha256,
                })
            })
            .collect();
        let values: [Value; 3] = [serde_json::Value::Array(rows).to_string().into(), tick_id.into(), ts.into()];
        txn.execute_raw(sea_orm::Statement::from_sql_and_values(txn.get_database_backend(), &sql, values))
            .await
            .doing("writing execution logs")?;
    }
    Ok(())
}

/// A timestamp as sqlx writes one to SQLite (which compares timestamps as text); PostgreSQL
/// parses the same text.
fn timestamp_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
}

/// Text as the database can store it: PostgreSQL text cannot hold NUL, and an adapter's output
/// or error may carry one; it becomes U+FFFD rather than failing the write that records it.
pub(super) fn db_text(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') { std::borrow::Cow::Owned(s.replace('\0', "\u{FFFD}")) } else { std::borrow::Cow::Borrowed(s) }
}
