//! Enqueue: a new action enters the queue as `PENDING` (or `AWAITING_APPROVAL` when it needs
//! an approval), one at a time (an operator's or a
//! rule's, fenced) or in bulk; an idempotency key that exists is not inserted again.
//!
//! It must not change an action that exists: every other transition is another family's.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Value,
};

use super::super::entities::actions;
use super::super::{Backend, Context, StoreError};
use super::{Authority, Refusal, fence_sql, timestamp_text};
use crate::model::ActionStatus::{self, AwaitingApproval, Pending};

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
    /// The W3C `traceparent` it is enqueued under, checked ([`crate::model::TraceParent`]).
    pub traceparent: Option<String>,
    /// `Some`: the action needs an approval and waits in `AWAITING_APPROVAL` until this time
    /// (then it is cancelled); `None`: it enters as `PENDING`.
    pub approval_expires_at: Option<DateTime<Utc>>,
}

impl NewAction {
    /// The status it enters the queue in.
    pub fn status(&self) -> ActionStatus {
        if self.approval_expires_at.is_some() { AwaitingApproval } else { Pending }
    }
}

/// What an enqueue did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EnqueueOutcome {
    pub id: i64,
    /// True when the key already existed: nothing was created.
    pub duplicate: bool,
    pub status: ActionStatus,
}

/// Inserts `new` on `conn` (the pool, or a transaction it joins) unless its key exists, only
/// while the lease still carries `fence`'s epoch. Rows created: 0 for a key that exists or a
/// fence that no longer holds (the caller tells which).
pub(in crate::store) async fn insert_fenced<C: ConnectionTrait>(
    store: &crate::store::Store,
    conn: &C,
    fence: &crate::store::Fence,
    new: &NewAction,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let sql = format!(
        "INSERT INTO actions (idempotency_key, action_type, payload_json, status, priority, not_before, \
         attempts, max_attempts, created_at, updated_at, expires_at, traceparent, approval_expires_at) \
         SELECT $1, $2, $3, $12, $4, $5, 0, $6, $7, $7, $10, $11, $13 WHERE {} \
         ON CONFLICT (idempotency_key) DO NOTHING",
        fence_sql(8, 9)
    );
    let values: [Value; 13] = [
        new.idempotency_key.as_str().into(),
        new.action_type.as_str().into(),
        new.payload_json.as_str().into(),
        new.priority.into(),
        new.not_before.into(),
        new.max_attempts.into(),
        now.into(),
        fence.lease_name.as_str().into(),
        fence.epoch.into(),
        new.expires_at.into(),
        new.traceparent.clone().into(),
        new.status().as_str().into(),
        new.approval_expires_at.into(),
    ];
    Ok(conn.execute_raw(store.stmt(&sql, values)).await.doing("enqueueing under the lease")?.rows_affected())
}

/// Rows per bulk INSERT statement.
const INSERT_CHUNK: usize = 5000;

// Bulk inserts: `$1` is a JSON array of [key, type, payload, priority, not_before, max_attempts,
// expires_at, traceparent, status, approval_expires_at] rows, `$2` the creation time. `WHERE true` lets SQLite parse the upsert after a SELECT.
const INSERT_JSON_SQLITE: &str = "\
INSERT INTO actions (idempotency_key, action_type, payload_json, status, priority, not_before, attempts,
                     max_attempts, created_at, updated_at, expires_at, traceparent, approval_expires_at)
SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 8, value ->> 3, value ->> 4, 0, value ->> 5, $2, $2,
       value ->> 6, value ->> 7, value ->> 9
FROM json_each(jsonb($1)) WHERE true
ON CONFLICT (idempotency_key) DO NOTHING";

const INSERT_JSON_PG: &str = "\
INSERT INTO actions (idempotency_key, action_type, payload_json, status, priority, not_before, attempts,
                     max_attempts, created_at, updated_at, expires_at, traceparent, approval_expires_at)
SELECT r ->> 0, r ->> 1, r ->> 2, r ->> 8, (r ->> 3)::integer, (r ->> 4)::timestamptz, 0,
       (r ->> 5)::integer, $2, $2, (r ->> 6)::timestamptz, r ->> 7, (r ->> 9)::timestamptz
FROM json_array_elements($1::json) AS r
ON CONFLICT (idempotency_key) DO NOTHING";

impl crate::store::handles::Actions<'_> {
    /// `enqueue`: inserts one action unless its key exists; either way returns the row's id and
    /// status. Under a lease fence (a rule's `enqueue`) nothing is written once the lease has
    /// moved on.
    pub async fn enqueue(self, auth: Authority<'_>, new: &NewAction) -> Result<EnqueueOutcome, StoreError> {
        let now = self.store.now();
        let inserted = match auth {
            Authority::Operator => actions::Entity::insert(active(new, now))
                .on_conflict(OnConflict::column(actions::Column::IdempotencyKey).do_nothing().to_owned())
                .exec_without_returning(&self.store.db)
                .await
                .doing("inserting an action")?,
            Authority::Lease(fence) => {
                let n = insert_fenced(self.store, &self.store.db, fence, new, now).await?;
                if n == 0 && !self.store.lease().fence_holds(fence).await? {
                    return Err(Refusal::Fenced(fence.epoch).into());
                }
                n
            }
        };
        let row = actions::Entity::find()
            .filter(actions::Column::IdempotencyKey.eq(&new.idempotency_key))
            .one(&self.store.db)
            .await
            .doing("reading the enqueued action")?
            .ok_or_else(|| {
                StoreError::Internal(format!("action with key '{}' vanished after insert", new.idempotency_key))
            })?;
        let status =
            row.status.parse().map_err(|reason| StoreError::Corrupt { table: "actions", id: row.id, reason })?;
        if inserted > 0 {
            self.store.wake_claimers().await;
        }
        Ok(EnqueueOutcome { id: row.id, duplicate: inserted == 0, status })
    }

    /// `enqueue` of a batch, by an operator, in one transaction; keys that exist are skipped.
    /// Returns how many rows were created. Nothing of the batch is written if any statement
    /// fails.
    ///
    /// The rows travel as one JSON array per statement, unpacked by the database
    /// (`json_each`, `json_array_elements`): one bound value instead of ten per row, and one
    /// statement text whatever the batch size, so it is prepared once.
    pub async fn enqueue_many(self, batch: &[NewAction]) -> Result<u64, StoreError> {
        if batch.is_empty() {
            return Ok(0);
        }
        let now = self.store.now();
        let sql = match self.store.backend {
            Backend::Sqlite => INSERT_JSON_SQLITE,
            Backend::Postgres => INSERT_JSON_PG,
        };
        let txn = self.store.begin_write().await?;
        if self.store.backend == Backend::Sqlite {
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
            let rows: Vec<(
                &str,
                &str,
                &str,
                i32,
                String,
                i32,
                Option<String>,
                Option<&str>,
                &str,
                Option<String>,
            )> = chunk
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
                        n.traceparent.as_deref(),
                        n.status().as_str(),
                        n.approval_expires_at.map(timestamp_text),
                    )
                })
                .collect();
            let rows = serde_json::to_string(&rows)
                .map_err(|e| StoreError::Internal(format!("cannot encode a batch of actions: {e}")))?;
            created += txn
                .execute_raw(self.store.stmt(sql, [rows.into(), now.into()]))
                .await
                .doing("inserting a batch of actions")?
                .rows_affected();
        }
        txn.commit().await.doing("committing a batch of actions")?;
        if created > 0 {
            self.store.wake_claimers().await;
        }
        Ok(created)
    }
}

fn active(n: &NewAction, now: DateTime<Utc>) -> actions::ActiveModel {
    actions::ActiveModel {
        id: NotSet,
        idempotency_key: Set(n.idempotency_key.clone()),
        action_type: Set(n.action_type.clone()),
        payload_json: Set(n.payload_json.clone()),
        status: Set(n.status().as_str().to_string()),
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
        claim_token: Set(None),
        claimed_by: Set(None),
        claim_deadline: Set(None),
        claim_proof: Set(None),
        traceparent: Set(n.traceparent.clone()),
        approval_expires_at: Set(n.approval_expires_at),
        approval_preview: Set(None),
        approval_preview_sha256: Set(None),
        approval_sha256: Set(None),
        approval_by: Set(None),
        approval_reason: Set(None),
    }
}
