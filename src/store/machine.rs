//! The action state machine: every change of an action's status, and every write that moves
//! an action in the queue, is one named operation here. The CLI, the HTTP API, the rules and
//! the executor all call these; nobody else writes to `actions`.
//!
//! Each operation names the statuses it may start from ([`Op::from`]), takes an [`Authority`]
//! (an operator, or the lease holder's [`Fence`]) or the fence of one claimed attempt, and
//! either applies or fails with [`StoreError::Refused`] carrying a typed [`Refusal`]: the
//! state it found, a missing row, or a fence that no longer holds. ARCHITECTURE.md carries the
//! table of every `from -> to`; `tests/it/machine.rs` walks every (operation, status) pair on
//! both backends against that table.
//!
//! It does not decide which action to move or when: that is the rules' and the executor's
//! business.

use std::collections::HashSet;
use std::fmt;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter, Value,
};

use super::actions::{db_text, insert_logs, timestamp_text};
use super::entities::{self, actions};
use super::{Backend, Context, Fence, Store, StoreError};
use crate::model::{self, Action, ActionStatus, LogLevel, NewLog};

use ActionStatus::{Cancelled, Dlq, Pending, Retry, Running, Success};

/// Every operation of the state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Enqueue,
    Claim,
    Unstart,
    Complete,
    Rescue,
    Requeue,
    RetryNow,
    Dlq,
    Cancel,
    ForceRun,
    Reprioritize,
    Postpone,
    Boost,
    Purge,
    Quarantine,
    Expire,
}

impl Op {
    pub const ALL: &'static [Op] = &[
        Op::Enqueue,
        Op::Claim,
        Op::Unstart,
        Op::Complete,
        Op::Rescue,
        Op::Requeue,
        Op::RetryNow,
        Op::Dlq,
        Op::Cancel,
        Op::ForceRun,
        Op::Reprioritize,
        Op::Postpone,
        Op::Boost,
        Op::Purge,
        Op::Quarantine,
        Op::Expire,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Enqueue => "enqueue",
            Op::Claim => "claim",
            Op::Unstart => "unstart",
            Op::Complete => "complete",
            Op::Rescue => "rescue",
            Op::Requeue => "requeue",
            Op::RetryNow => "retry_now",
            Op::Dlq => "dlq",
            Op::Cancel => "cancel",
            Op::ForceRun => "force_run",
            Op::Reprioritize => "reprioritize",
            Op::Postpone => "postpone",
            Op::Boost => "boost",
            Op::Purge => "purge",
            Op::Quarantine => "quarantine",
            Op::Expire => "expire",
        }
    }

    /// The statuses this operation may start from (empty for `enqueue`, which makes a row).
    pub fn from(self) -> &'static [ActionStatus] {
        match self {
            Op::Enqueue => &[],
            Op::Claim => &[Pending, Retry],
            Op::Unstart | Op::Complete | Op::Rescue | Op::Quarantine => &[Running],
            Op::Requeue => &[Dlq],
            Op::RetryNow => &[Retry, Dlq, Running],
            Op::Dlq => &[Pending, Retry],
            Op::Cancel => &[Pending, Retry, Dlq],
            Op::ForceRun | Op::Postpone | Op::Expire => &[Pending, Retry],
            Op::Reprioritize => &[Pending, Retry, Dlq],
            Op::Boost => &[Pending, Retry],
            Op::Purge => &[Success, Cancelled],
        }
    }

    /// The sentence a refusal quotes: what this operation needs.
    fn needs(self) -> String {
        match self {
            Op::Requeue => "only DLQ actions can be requeued".to_string(),
            Op::Cancel => {
                "only PENDING, RETRY or DLQ actions can be cancelled; a RUNNING one must finish its attempt first"
                    .to_string()
            }
            op => {
                let from: Vec<&str> = op.from().iter().map(|s| s.as_str()).collect();
                format!("{} needs {}", op.as_str(), from.join(" or "))
            }
        }
    }

    /// `status IN ('A', 'B')` for this operation's starting statuses.
    fn status_in(self) -> String {
        status_in(self.from())
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `status IN (...)` over `statuses`: the one place a status list becomes SQL.
pub(super) fn status_in(statuses: &[ActionStatus]) -> String {
    let list: Vec<String> = statuses.iter().map(|s| format!("'{}'", s.as_str())).collect();
    format!("status IN ({})", list.join(", "))
}

/// Who asks for a transition.
#[derive(Clone, Copy, Debug)]
pub enum Authority<'a> {
    /// An operator, through the CLI or the admin API: no lease needed.
    Operator,
    /// The lease holder applying a rule's decision: the write lands only while the lease still
    /// carries the fence's epoch.
    Lease(&'a Fence),
}

impl Authority<'_> {
    fn tick_id(&self) -> Option<i64> {
        match self {
            Authority::Operator => None,
            Authority::Lease(f) => f.tick_id,
        }
    }
}

/// Why an operation did not apply: the state it found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("action {0} not found")]
    NotFound(i64),
    #[error("cannot {op} action {id}: it is {found}; {}", .op.needs())]
    Status { op: Op, id: i64, found: ActionStatus },
    #[error("fenced: the lease is no longer at epoch {0}")]
    Fenced(i64),
}

impl From<Refusal> for StoreError {
    fn from(r: Refusal) -> Self {
        StoreError::Refused(r)
    }
}

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

/// Who claims, and on what terms.
#[derive(Clone, Debug)]
pub struct Claimer {
    /// The registered worker that runs the attempts: the claim lands only while its
    /// registration is live (heartbeat younger than `worker_ttl`, by the database's clock).
    pub worker: String,
    pub worker_ttl: std::time::Duration,
    /// The action types it serves; empty: every type.
    pub types: Vec<String>,
    /// Each attempt's deadline from its claim: `start_within` (how long a claimed attempt may
    /// wait for a free slot) plus the type's timeout, else `default_timeout` (each already
    /// capped by `action_timeout_seconds`).
    pub type_timeouts: Vec<(String, std::time::Duration)>,
    pub default_timeout: std::time::Duration,
    pub start_within: std::time::Duration,
    /// This claimer's config enforces proof mode: every attempt it claims runs in proof.
    pub proof_enforced: bool,
    /// The lease epoch when the claimer is the lease holder's own executor (kept in
    /// `claimed_epoch` for the record; fencing uses the token).
    pub epoch: Option<i64>,
    /// Per partitioned limit, how many partition values are tracked (`limit_partitions`).
    pub limit_partitions: usize,
}

impl Claimer {
    /// True when it claims actions of `action_type`.
    pub fn serves(&self, action_type: &str) -> bool {
        self.types.is_empty() || self.types.iter().any(|t| t == action_type)
    }
}

/// An action claimed by a worker: it is `RUNNING` under `token`, attempt `attempt`.
#[derive(Clone, Debug)]
pub struct Claimed {
    /// The row as claimed. Its `decode_error` is set when a stored value could not be read;
    /// such a claim goes to [`Store::quarantine`] instead of an adapter.
    pub action: Action,
    /// The claim token: every write about this attempt is fenced by it.
    pub token: i64,
    /// The value of `attempts` after the claim: the attempt this run is.
    pub attempt: i32,
    /// The mode this attempt runs in, read atomically with the claim: true for proof.
    pub proof: bool,
}

/// The fenced end of one claimed attempt.
#[derive(Clone, Debug)]
pub struct Completion {
    pub action_id: i64,
    /// The claim's token: the write lands only while the row is `RUNNING` under it.
    pub token: i64,
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
    /// `unstart`: never started (the tick deadline came first): back to `PENDING`, the attempt
    /// uncounted.
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
    /// The worker whose claim was abandoned (`None`: a claim without a worker, from before
    /// claims had tokens).
    pub worker: Option<String>,
    pub attempts: i32,
}

/// The claim, with `{pick}` the rows to claim ([`PICK_DUE`], or the ids a limited claim picked),
/// `{from}` the claimable statuses, `{deadline}` the per-type deadline and `{now}` the
/// statement's time. It lands only while the
/// worker's registration is live and no brake (paused, killed) is set; the mode is read from
/// the flags in the same statement.
const CLAIM: &str = "\
UPDATE actions SET status = 'RUNNING', attempts = attempts + 1, claimed_epoch = $1, claimed_at = {now},
       updated_at = {now}, claim_token = $2, claimed_by = $3, claim_deadline = {deadline},
       claim_proof = (SELECT proof_mode FROM control_flags WHERE id = 1) OR $4
WHERE id IN ({pick}) AND {from}
  AND EXISTS (SELECT 1 FROM workers WHERE id = $3 AND heartbeat_at > {live_after})
  AND NOT EXISTS (SELECT 1 FROM control_flags WHERE paused OR killed)
RETURNING *";

/// The due rows an unlimited claim takes, `{n}` of them, with `{due}` the due condition,
/// `{types}` the type filter (or nothing) and `{order}` the claim order. The claim and the dry
/// run both pick with it.
const PICK_DUE: &str = "SELECT id FROM actions WHERE {due}{types} ORDER BY {order} LIMIT {n}{lock}";

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

/// Completions per fenced UPDATE statement (each chunk is one JSON parameter).
const COMPLETE_CHUNK: usize = 1000;

/// `requeue`'s assignments (DLQ -> PENDING, attempts reset, the old claim forgotten); `{now}` is
/// the statement's time. `retry_now` of a DLQ action makes the same change.
/// A deadline that has passed is dropped: someone asked for another run.
const REQUEUE_SET: &str = "status = 'PENDING', attempts = 0, not_before = {now}, updated_at = {now}, \
     finished_at = NULL, claimed_epoch = NULL, claimed_at = NULL, claim_token = NULL, claimed_by = NULL, \
     claim_deadline = NULL, claim_proof = NULL, \
     expires_at = CASE WHEN expires_at <= {now} THEN NULL ELSE expires_at END";

/// The assignments that end an abandoned attempt in `rescue`: `RETRY` due now, or `DLQ` when
/// out of attempts. The claim columns stay as evidence of what was rescued (the log row names
/// the epoch); the attempt's late completion is refused anyway, since the row is no longer
/// `RUNNING` under that claim. `retry_now` of a RUNNING action makes the same change and also
/// clears the claim.
const ABANDON_SET: &str = "status = CASE WHEN attempts >= max_attempts THEN 'DLQ' ELSE 'RETRY' END, \
     last_error = {error}, \
     finished_at = CASE WHEN attempts >= max_attempts THEN {now} ELSE NULL END, \
     not_before = {now}, updated_at = {now}";

/// The error a rescued attempt is left with.
pub const RESCUED_ERROR: &str =
    "rescued: the claim was orphaned (its worker stopped or lost its heartbeat, or the deadline of its claim passed)";

/// `CASE action_type <whens> ELSE <default> END`, or just `default` when there is no `WHEN`.
fn case_of_type(whens: &str, default: &str) -> String {
    if whens.is_empty() { default.to_string() } else { format!("CASE action_type{whens} ELSE {default} END") }
}

fn fence_sql(name: usize, epoch: usize) -> String {
    format!("EXISTS (SELECT 1 FROM leases WHERE name = ${name} AND epoch = ${epoch})")
}

impl Store {
    // ---- enqueue ---------------------------------------------------------------------------

    /// `enqueue`: inserts one action unless its key exists; either way returns the row's id and
    /// status. Under a lease fence (a rule's `enqueue`) nothing is written once the lease has
    /// moved on.
    pub async fn enqueue(&self, auth: Authority<'_>, new: &NewAction) -> Result<EnqueueOutcome, StoreError> {
        let now = self.now();
        let inserted = match auth {
            Authority::Operator => actions::Entity::insert(active(new, now))
                .on_conflict(OnConflict::column(actions::Column::IdempotencyKey).do_nothing().to_owned())
                .exec_without_returning(&self.db)
                .await
                .doing("inserting an action")?,
            Authority::Lease(fence) => {
                let sql = format!(
                    "INSERT INTO actions (idempotency_key, action_type, payload_json, status, priority, not_before, \
                     attempts, max_attempts, created_at, updated_at, expires_at) \
                     SELECT $1, $2, $3, 'PENDING', $4, $5, 0, $6, $7, $7, $10 WHERE {} \
                     ON CONFLICT (idempotency_key) DO NOTHING",
                    fence_sql(8, 9)
                );
                let values: [Value; 10] = [
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
                ];
                let n =
                    self.db.execute_raw(self.stmt(&sql, values)).await.doing("enqueueing for a rule")?.rows_affected();
                if n == 0 && !self.fence_holds(fence).await? {
                    return Err(Refusal::Fenced(fence.epoch).into());
                }
                n
            }
        };
        let row = actions::Entity::find()
            .filter(actions::Column::IdempotencyKey.eq(&new.idempotency_key))
            .one(&self.db)
            .await
            .doing("reading the enqueued action")?
            .ok_or_else(|| {
                StoreError::Internal(format!("action with key '{}' vanished after insert", new.idempotency_key))
            })?;
        let status =
            row.status.parse().map_err(|reason| StoreError::Corrupt { table: "actions", id: row.id, reason })?;
        if inserted > 0 {
            self.wake_claimers().await;
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
    pub async fn enqueue_many(&self, batch: &[NewAction]) -> Result<u64, StoreError> {
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
                .map_err(|e| StoreError::Internal(format!("cannot encode a batch of actions: {e}")))?;
            created += txn
                .execute_raw(self.stmt(sql, [rows.into(), now.into()]))
                .await
                .doing("inserting a batch of actions")?
                .rows_affected();
        }
        txn.commit().await.doing("committing a batch of actions")?;
        if created > 0 {
            self.wake_claimers().await;
        }
        Ok(created)
    }

    // ---- claim, complete, unstart, quarantine, rescue ----------------------------------------

    /// A claim token unique for all time: PostgreSQL's `claim_tokens` sequence, or SQLite's
    /// counter row (one writer, so the increment is atomic).
    async fn next_claim_token(&self) -> Result<i64, StoreError> {
        let sql = match self.backend {
            Backend::Postgres => "SELECT nextval('claim_tokens') AS token",
            Backend::Sqlite => "UPDATE claim_tokens SET last = last + 1 RETURNING last AS token",
        };
        let row = self.db.query_one_raw(self.stmt(sql, [])).await.doing("taking a claim token")?;
        let row = row.ok_or_else(|| StoreError::Internal("the claim token sequence returned nothing".into()))?;
        row.try_get::<i64>("", "token").doing("taking a claim token")
    }

    /// `claim`: up to `n` due actions for `claimer`, in one statement under one fresh claim
    /// token, so two claimers can never take the same row. Each row is stamped with the token,
    /// the worker, its deadline and the mode it runs in. Nothing is claimed while paused or
    /// killed, or once the worker's registration is dead. Returns them in dispatch order.
    /// A row whose stored values cannot be read is claimed like any other, with its
    /// `decode_error` set, so that the caller can quarantine it.
    pub async fn claim(&self, claimer: &Claimer, n: u64) -> Result<Vec<Claimed>, StoreError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let Some(granted) = self.take_throttle(n).await? else {
            return self.claim_up_to(claimer, n).await;
        };
        if granted == 0 {
            return Ok(Vec::new());
        }
        let claimed = self.claim_up_to(claimer, granted).await;
        // What the throttle granted and the claim did not use goes back to it.
        let used = claimed.as_ref().map_or(0, |c| c.len() as u64);
        self.give_back_throttle(granted - used).await?;
        claimed
    }

    /// Takes up to `n` starts from the throttle in force; `None` when there is none.
    async fn take_throttle(&self, n: u64) -> Result<Option<u64>, StoreError> {
        let want = i64::try_from(n).unwrap_or(i64::MAX);
        match self.backend {
            Backend::Postgres => {
                // The row lock serializes claimers only while a throttle is in force.
                let sql = "WITH old AS (SELECT throttle_remaining AS r FROM control_flags \
                             WHERE id = 1 AND throttle_until > now() AND throttle_remaining IS NOT NULL FOR UPDATE) \
                           UPDATE control_flags SET throttle_remaining = GREATEST(old.r - $1, 0) FROM old \
                           WHERE control_flags.id = 1 RETURNING LEAST(old.r, $1) AS granted";
                let row =
                    self.db.query_one_raw(self.stmt(sql, [want.into()])).await.doing("taking from the throttle")?;
                match row {
                    None => Ok(None),
                    Some(r) => Ok(Some(
                        u64::try_from(r.try_get::<i64>("", "granted").doing("taking from the throttle")?).unwrap_or(0),
                    )),
                }
            }
            Backend::Sqlite => {
                let now = self.now();
                let read = "SELECT throttle_remaining AS r FROM control_flags \
                            WHERE id = 1 AND throttle_until > $1 AND throttle_remaining IS NOT NULL";
                let quick = self.db.query_one_raw(self.stmt(read, [now.into()])).await.doing("reading the throttle")?;
                if quick.is_none() {
                    return Ok(None);
                }
                // One writer: read and take under the write lock.
                let txn = self.begin_write().await?;
                let row = txn.query_one_raw(self.stmt(read, [now.into()])).await.doing("reading the throttle")?;
                let Some(row) = row else {
                    txn.commit().await.doing("reading the throttle")?;
                    return Ok(None);
                };
                let left: i64 = row.try_get::<i64>("", "r").doing("reading the throttle")?.max(0);
                let granted = left.min(want);
                txn.execute_raw(
                    self.stmt(
                        "UPDATE control_flags SET throttle_remaining = $1 WHERE id = 1",
                        [(left - granted).into()],
                    ),
                )
                .await
                .doing("taking from the throttle")?;
                txn.commit().await.doing("taking from the throttle")?;
                Ok(Some(u64::try_from(granted).unwrap_or(0)))
            }
        }
    }

    /// Returns `n` unused starts to the throttle still in force.
    async fn give_back_throttle(&self, n: u64) -> Result<(), StoreError> {
        if n == 0 {
            return Ok(());
        }
        let now = match self.backend {
            Backend::Postgres => "now()".to_string(),
            Backend::Sqlite => "$2".to_string(),
        };
        let sql = format!(
            "UPDATE control_flags SET throttle_remaining = throttle_remaining + $1 \
             WHERE id = 1 AND throttle_until > {now} AND throttle_remaining IS NOT NULL"
        );
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let values: Vec<Value> = match self.backend {
            Backend::Postgres => vec![n.into()],
            Backend::Sqlite => vec![n.into(), self.now().into()],
        };
        self.db.execute_raw(self.stmt(&sql, values)).await.doing("giving back to the throttle")?;
        Ok(())
    }

    /// Up to `n` due actions under one fresh token: the one-statement claim when none of the
    /// types the claimer serves is limited, else the limited claim (`limits.rs`). In dispatch
    /// order.
    async fn claim_up_to(&self, claimer: &Claimer, n: u64) -> Result<Vec<Claimed>, StoreError> {
        let token = self.next_claim_token().await?;
        let mut limits = self.limits_in_force().await?;
        limits.retain(|l| claimer.serves(&l.action_type));
        let mut claimed = if limits.is_empty() {
            let (sql, values) = self.claim_sql(claimer, token, Pick::Due(n));
            claimed_rows(self, &self.db, token, sql, values).await?
        } else {
            self.claim_limited(claimer, n, token, &limits, claimer.limit_partitions).await?
        };
        claimed.sort_by_key(|c| super::claim_rank(c.action.priority.into(), c.action.not_before, c.action.id));
        Ok(claimed)
    }

    /// Sets the partition key (`part_key`, `expr` computing it from the payload) of the waiting
    /// rows of `action_type` that have none, or of all of them with `all` (the type's
    /// `partition_by` changed); how many were keyed. Not a status change, but a write to
    /// `actions`, so it is here with the others: the limited claim calls it under the type's
    /// gate.
    pub(super) async fn key_waiting_rows(
        &self,
        txn: &DatabaseTransaction,
        action_type: &str,
        expr: &str,
        all: bool,
    ) -> Result<u64, StoreError> {
        let which = if all { "" } else { " AND part_key IS NULL" };
        // The rows without a key are found through the index, not among all the type's.
        let hint = if self.backend == Backend::Sqlite { " INDEXED BY ix_actions_due_part" } else { "" };
        let sql = format!(
            "UPDATE actions{hint} SET part_key = {expr} WHERE action_type = $1 AND {}{which}",
            Op::Claim.status_in()
        );
        Ok(txn
            .execute_raw(self.stmt(&sql, [action_type.into()]))
            .await
            .doing("computing partition keys")?
            .rows_affected())
    }

    /// The claim statement for `claimer` under `token`, of what `pick` says.
    pub(super) fn claim_sql(&self, claimer: &Claimer, token: i64, pick: Pick<'_>) -> (String, Vec<Value>) {
        let n = match pick {
            Pick::Due(n) => i64::try_from(n).unwrap_or(i64::MAX),
            Pick::Ids(_) => 0,
        };
        let mut values: Vec<Value> = vec![
            claimer.epoch.into(),
            token.into(),
            claimer.worker.as_str().into(),
            claimer.proof_enforced.into(),
            n.into(),
        ];
        let mut bind = |v: Value| {
            values.push(v);
            format!("${}", values.len())
        };
        let types = types_filter(claimer, &mut bind);
        let pick = match pick {
            Pick::Due(_) => {
                PICK_DUE.replace("{due}", &super::due_sql("{now}")).replace("{order}", super::CLAIM_ORDER_SQL)
            }
            Pick::Ids(json) => ids_in_json(self.backend, &bind(json.to_string().into())),
        };
        let sql = match self.backend {
            Backend::Postgres => {
                let secs = |d: std::time::Duration| d.as_secs_f64();
                let mut whens = String::new();
                for (t, d) in &claimer.type_timeouts {
                    let (t, d) = (bind(t.as_str().into()), bind(secs(claimer.start_within.saturating_add(*d)).into()));
                    whens.push_str(&format!(" WHEN {t} THEN {d}"));
                }
                let default = bind(secs(claimer.start_within.saturating_add(claimer.default_timeout)).into());
                let deadline = format!("now() + ({}) * interval '1 second'", case_of_type(&whens, &default));
                let live_after = format!("now() - {} * interval '1 second'", bind(secs(claimer.worker_ttl).into()));
                CLAIM
                    .replace("{pick}", &pick)
                    .replace("{deadline}", &deadline)
                    .replace("{live_after}", &live_after)
                    .replace("{now}", "now()")
                    .replace("{lock}", " FOR UPDATE SKIP LOCKED")
            }
            Backend::Sqlite => {
                let now = self.now();
                let at = |d: std::time::Duration| model::later_saturating(now, claimer.start_within.saturating_add(d));
                let mut whens = String::new();
                for (t, d) in &claimer.type_timeouts {
                    let (t, d) = (bind(t.as_str().into()), bind(at(*d).into()));
                    whens.push_str(&format!(" WHEN {t} THEN {d}"));
                }
                let default = bind(at(claimer.default_timeout).into());
                let deadline = case_of_type(&whens, &default);
                let live_after = bind(model::earlier_saturating(now, claimer.worker_ttl).into());
                let now = bind(now.into());
                CLAIM
                    .replace("{pick}", &pick)
                    .replace("{deadline}", &deadline)
                    .replace("{live_after}", &live_after)
                    .replace("{now}", &now)
                    .replace("{lock}", "")
            }
        }
        .replace("{from}", &Op::Claim.status_in())
        .replace("{types}", &types)
        .replace("{n}", "$5");
        (sql, values)
    }

    /// The rows `claim(claimer, n)` would take now, in claim order, claiming nothing: the
    /// claim's own pick ([`PICK_DUE`], or the limited pick), in a transaction that is rolled
    /// back (the limited pick takes its types' gates and computes new rows' partition keys
    /// there). `config_limits` are filled in first where the database holds no base limit, as
    /// a claiming process does with its config's before its first claim. What the claim checks
    /// besides (the worker's registration, the paused and killed flags, a stored throttle) is
    /// the caller's to apply. `run-once --dry-run` lists these.
    pub async fn pick(
        &self,
        claimer: &Claimer,
        n: u64,
        config_limits: Option<&std::collections::BTreeMap<String, crate::limits::LimitSpec>>,
    ) -> Result<Vec<Action>, StoreError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let txn = self.begin_write().await?;
        if let Some(limits) = config_limits {
            self.write_config_limits_in(&txn, limits, super::ConfigLimits::Fill).await?;
        }
        let mut limits = super::limits::read_limits(self, &txn, self.now()).await?;
        limits.retain(|l| l.enforced() && claimer.serves(&l.action_type));
        let ids: Vec<i64> = if limits.is_empty() {
            let mut values: Vec<Value> = vec![i64::try_from(n).unwrap_or(i64::MAX).into()];
            let mut bind = |v: Value| {
                values.push(v);
                format!("${}", values.len())
            };
            let types = types_filter(claimer, &mut bind);
            let now = match self.backend {
                Backend::Postgres => "now()".to_string(),
                Backend::Sqlite => bind(self.now().into()),
            };
            let sql = PICK_DUE
                .replace("{due}", &super::due_sql(&now))
                .replace("{order}", super::CLAIM_ORDER_SQL)
                .replace("{types}", &types)
                .replace("{n}", "$1")
                .replace("{lock}", "");
            let rows = txn.query_all_raw(self.stmt(&sql, values)).await.doing("picking due actions")?;
            rows.iter().map(|r| r.try_get::<i64>("", "id")).collect::<Result<_, _>>().doing("picking due actions")?
        } else {
            let mut refs: Vec<&super::TypeLimit> = limits.iter().collect();
            refs.sort_by(|a, b| a.action_type.cmp(&b.action_type));
            let picked = self.pick_limited(&txn, claimer, n, &refs, claimer.limit_partitions).await?;
            picked.chosen.into_iter().map(|(id, _, _)| id).collect()
        };
        let ids = serde_json::Value::from(ids).to_string();
        let sql = format!(
            "SELECT * FROM actions WHERE id IN ({}) ORDER BY {}",
            ids_in_json(self.backend, "$1"),
            super::CLAIM_ORDER_SQL
        );
        let rows = actions::Entity::find()
            .from_raw_sql(self.stmt(&sql, [ids.into()]))
            .all(&txn)
            .await
            .doing("reading the picked actions")?;
        txn.rollback().await.doing("ending a dry pick")?;
        entities::convert_all(rows)
    }

    /// `complete` (SUCCESS, RETRY or DLQ) and `unstart` (back to PENDING, the attempt
    /// uncounted) of a batch of claimed attempts, with their log rows, in one transaction: one
    /// fenced UPDATE per chunk of rows (each row still `RUNNING` under its own claim token),
    /// then the log rows of the ones that landed.
    pub async fn complete(&self, tick_id: Option<i64>, batch: &[Completion]) -> Result<CompletionReport, StoreError> {
        let mut report = CompletionReport::default();
        if batch.is_empty() {
            return Ok(report);
        }
        let now = self.now();
        let txn = self.begin_write().await?;
        let mut applied = HashSet::new();
        for chunk in batch.chunks(COMPLETE_CHUNK) {
            let stmt = self.complete_stmt(now, chunk);
            for id in returned_ids(&txn, stmt, "recording action outcomes").await? {
                applied.insert(id);
            }
        }
        let unstarted: Vec<(i64, i64)> = batch
            .iter()
            .filter(|c| matches!(c.outcome, CompletionOutcome::Unstarted) && applied.contains(&c.action_id))
            .map(|c| (c.action_id, c.token))
            .collect();
        self.give_back_starts(&txn, &unstarted, now).await?;
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

    fn complete_stmt(&self, now: DateTime<Utc>, chunk: &[Completion]) -> sea_orm::Statement {
        let rows: Vec<serde_json::Value> = chunk
            .iter()
            .map(|c| {
                let (status, not_before, error, unstart) = match &c.outcome {
                    CompletionOutcome::Success => (Success, None, None, 0),
                    CompletionOutcome::Retry { not_before, error } => {
                        (Retry, Some(timestamp_text(*not_before)), Some(db_text(error)), 0)
                    }
                    CompletionOutcome::Dlq { error } => (Dlq, None, Some(db_text(error)), 0),
                    CompletionOutcome::Unstarted => (Pending, None, None, 1),
                };
                serde_json::json!({
                    "id": c.action_id, "token": c.token, "status": status.as_str(),
                    "not_before": not_before, "err": error, "unstart": unstart,
                })
            })
            .collect();
        let v = match self.backend {
            Backend::Sqlite => {
                "SELECT value ->> 'id' AS id, value ->> 'token' AS token, \
                 value ->> 'status' AS status, value ->> 'not_before' AS not_before, value ->> 'err' AS err, \
                 value ->> 'unstart' AS unstart FROM json_each($1)"
            }
            Backend::Postgres => {
                "SELECT * FROM json_to_recordset($1::json) AS x(id BIGINT, token BIGINT, \
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
               claim_token = CASE WHEN v.unstart = 1 THEN NULL ELSE actions.claim_token END, \
               claimed_by = CASE WHEN v.unstart = 1 THEN NULL ELSE actions.claimed_by END, \
               claim_deadline = CASE WHEN v.unstart = 1 THEN NULL ELSE actions.claim_deadline END, \
               claim_proof = CASE WHEN v.unstart = 1 THEN NULL ELSE actions.claim_proof END, \
               updated_at = $2, \
               finished_at = CASE WHEN v.status IN ('SUCCESS', 'DLQ') THEN $2 ELSE actions.finished_at END \
             FROM v \
             WHERE actions.id = v.id AND actions.status = 'RUNNING' AND actions.claim_token = v.token \
             RETURNING actions.id"
        );
        self.stmt(&sql, [serde_json::Value::Array(rows).to_string().into(), now.into()])
    }

    /// `rescue`: returns to `RETRY` (or `DLQ` when out of attempts) every `RUNNING` action
    /// whose claim's deadline has passed, or whose worker is gone (no registration, or a
    /// heartbeat older than `worker_ttl`), and logs each with the worker it names. Only the
    /// live holder of the lease (the fence) can do this. A leader that changes does not touch
    /// attempts in flight: their workers still beat.
    pub async fn rescue(
        &self,
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
        let (sql, values): (String, Vec<Value>) = match self.backend {
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
                let now = self.now();
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
        let txn = self.begin_write().await?;
        let rows = txn.query_all_raw(self.stmt(&sql, values)).await.doing("rescuing orphaned actions")?;
        let mut rescued = Vec::with_capacity(rows.len());
        let mut logs = Vec::with_capacity(rows.len());
        let now = self.now();
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

    // ---- operator and rule edits of one action ----------------------------------------------

    /// `requeue`: DLQ -> PENDING with attempts reset and the old claim forgotten. Returns the
    /// id requeued.
    pub async fn requeue(&self, auth: Authority<'_>, id: i64) -> Result<(), StoreError> {
        let log = match auth {
            Authority::Operator => "requeued by operator: DLQ -> PENDING, attempts reset".to_string(),
            Authority::Lease(_) => "requeued: DLQ -> PENDING, attempts reset".to_string(),
        };
        self.transition_one(auth, Op::Requeue, id, REQUEUE_SET, vec![], &log).await
    }

    /// `requeue` of every DLQ action, by an operator. Returns the ids requeued.
    pub async fn requeue_all(&self) -> Result<Vec<i64>, StoreError> {
        let now = self.now();
        let sql = format!(
            "UPDATE actions SET {} WHERE {} RETURNING id",
            REQUEUE_SET.replace("{now}", "$1"),
            Op::Requeue.status_in()
        );
        let txn = self.begin_write().await?;
        let ids = returned_ids(&txn, self.stmt(&sql, [now.into()]), "requeueing actions").await?;
        let logs: Vec<NewLog> = ids
            .iter()
            .map(|&i| NewLog::new(i, LogLevel::Info, "requeued by operator: DLQ -> PENDING, attempts reset"))
            .collect();
        insert_logs(&txn, None, &logs, now).await?;
        txn.commit().await.doing("committing the requeue")?;
        Ok(ids)
    }

    /// `retry_now`, one operation over three starting states, in one statement:
    /// - RETRY: due now;
    /// - DLQ: `requeue`'s change (PENDING, attempts reset, claim forgotten);
    /// - RUNNING (a rule gave up on an attempt): the attempt is abandoned as a rescue would,
    ///   to RETRY due now (or DLQ when out of attempts), the claim cleared so its late
    ///   completion is refused.
    pub async fn retry_now(&self, auth: Authority<'_>, id: i64, why: &str) -> Result<(), StoreError> {
        // Every right-hand side reads the row as it was, on both backends.
        let set = "status = CASE WHEN status = 'DLQ' THEN 'PENDING' \
                        WHEN status = 'RUNNING' AND attempts >= max_attempts THEN 'DLQ' \
                        WHEN status = 'RUNNING' THEN 'RETRY' ELSE status END, \
                   attempts = CASE WHEN status = 'DLQ' THEN 0 ELSE attempts END, \
                   last_error = CASE WHEN status = 'RUNNING' THEN $5 ELSE last_error END, \
                   finished_at = CASE WHEN status = 'RUNNING' AND attempts >= max_attempts THEN {now} ELSE NULL END, \
                   claimed_epoch = CASE WHEN status IN ('DLQ', 'RUNNING') THEN NULL ELSE claimed_epoch END, \
                   claimed_at = CASE WHEN status IN ('DLQ', 'RUNNING') THEN NULL ELSE claimed_at END, \
                   claim_token = CASE WHEN status IN ('DLQ', 'RUNNING') THEN NULL ELSE claim_token END, \
                   claimed_by = CASE WHEN status IN ('DLQ', 'RUNNING') THEN NULL ELSE claimed_by END, \
                   claim_deadline = CASE WHEN status IN ('DLQ', 'RUNNING') THEN NULL ELSE claim_deadline END, \
                   claim_proof = CASE WHEN status IN ('DLQ', 'RUNNING') THEN NULL ELSE claim_proof END, \
                   expires_at = CASE WHEN status = 'DLQ' AND expires_at <= {now} THEN NULL ELSE expires_at END, \
                   not_before = {now}, updated_at = {now}";
        let log = format!("retry decided ({why}): due now (DLQ is requeued, RUNNING returned to RETRY)");
        let error = format!("running too long: returned by {why}");
        self.transition_one(auth, Op::RetryNow, id, set, vec![error.into()], &log).await
    }

    /// `dlq`: PENDING or RETRY -> DLQ, its last error saying who moved it and why.
    pub async fn dlq(&self, auth: Authority<'_>, id: i64, why: &str) -> Result<(), StoreError> {
        let log = format!("dlq decided ({why})");
        let error = format!("moved to DLQ by {why}");
        self.transition_one(
            auth,
            Op::Dlq,
            id,
            "status = 'DLQ', last_error = $5, finished_at = {now}, updated_at = {now}",
            vec![db_text(&error).into_owned().into()],
            &log,
        )
        .await
    }

    /// `cancel`: PENDING, RETRY or DLQ -> CANCELLED.
    pub async fn cancel(&self, auth: Authority<'_>, id: i64, why: Option<&str>) -> Result<(), StoreError> {
        let log = match (auth, why) {
            (_, Some(why)) => format!("cancel decided ({why})"),
            (Authority::Operator, None) => "cancelled by operator".to_string(),
            (Authority::Lease(_), None) => "cancelled".to_string(),
        };
        self.transition_one(
            auth,
            Op::Cancel,
            id,
            "status = 'CANCELLED', finished_at = {now}, updated_at = {now}",
            vec![],
            &log,
        )
        .await
    }

    /// `force_run`: a PENDING or RETRY action is due now, `bump` priority steps higher (never
    /// past 1,000,000).
    pub async fn force_run(&self, auth: Authority<'_>, id: i64, bump: i32, why: &str) -> Result<(), StoreError> {
        let log = format!("force_run decided ({why}): due now, priority +{bump}");
        self.transition_one(
            auth,
            Op::ForceRun,
            id,
            "not_before = {now}, updated_at = {now}, \
             priority = CASE WHEN priority > 999000 THEN priority ELSE priority + $5 END",
            vec![bump.into()],
            &log,
        )
        .await
    }

    /// `reprioritize`: a PENDING, RETRY or DLQ action's priority becomes `to`.
    pub async fn reprioritize(&self, auth: Authority<'_>, id: i64, to: i32, why: &str) -> Result<(), StoreError> {
        let log = format!("reprioritize decided ({why}): priority {to}");
        self.transition_one(auth, Op::Reprioritize, id, "priority = $5, updated_at = {now}", vec![to.into()], &log)
            .await
    }

    /// `postpone`: a PENDING or RETRY action is not claimed before `until`; its priority and
    /// attempts are kept. Never brings an action forward: a later `not_before` stays.
    pub async fn postpone(
        &self,
        auth: Authority<'_>,
        id: i64,
        until: DateTime<Utc>,
        why: &str,
    ) -> Result<(), StoreError> {
        let log = format!("postpone decided ({why}): not before {}", until.to_rfc3339());
        let set = "not_before = CASE WHEN not_before > $5 THEN not_before ELSE $5 END, updated_at = {now}";
        self.transition_one(auth, Op::Postpone, id, set, vec![until.into()], &log).await
    }

    /// One fenced (or operator) update of one action in one of `op`'s starting statuses, with a
    /// log row in the same transaction. `set` may use `{now}` and `$5`.. for `extra`.
    async fn transition_one(
        &self,
        auth: Authority<'_>,
        op: Op,
        id: i64,
        set: &str,
        extra: Vec<Value>,
        log: &str,
    ) -> Result<(), StoreError> {
        let now = self.now();
        // One statement text for both authorities: an operator passes no lease name.
        let (name, epoch) = match auth {
            Authority::Operator => (String::new(), 0),
            Authority::Lease(f) => (f.lease_name.clone(), f.epoch),
        };
        let sql = format!(
            "UPDATE actions SET {} WHERE id = $1 AND {} AND ($2 = '' OR {}) RETURNING id",
            set.replace("{now}", "$4"),
            op.status_in(),
            fence_sql(2, 3),
        );
        let values: Vec<Value> = [id.into(), name.into(), epoch.into(), now.into()].into_iter().chain(extra).collect();
        let txn = self.begin_write().await?;
        let rows = txn.query_all_raw(self.stmt(&sql, values)).await.doing("changing an action's state")?;
        if rows.is_empty() {
            drop(txn);
            let fence = match auth {
                Authority::Operator => None,
                Authority::Lease(f) => Some(f),
            };
            return Err(self.refusal(op, id, fence).await?.into());
        }
        insert_logs(&txn, auth.tick_id(), &[NewLog::new(id, LogLevel::Info, log)], now).await?;
        txn.commit().await.doing("committing an action's state change")
    }

    /// Why `op` on `id` did not land: the fence, a missing row, or the status it found.
    async fn refusal(&self, op: Op, id: i64, fence: Option<&Fence>) -> Result<Refusal, StoreError> {
        if let Some(fence) = fence
            && !self.fence_holds(fence).await?
        {
            return Ok(Refusal::Fenced(fence.epoch));
        }
        let row = actions::Entity::find_by_id(id).one(&self.db).await.doing("reading an action")?;
        Ok(match row {
            None => Refusal::NotFound(id),
            Some(r) => match r.status.parse() {
                Ok(found) => Refusal::Status { op, id, found },
                Err(reason) => return Err(StoreError::Corrupt { table: "actions", id, reason }),
            },
        })
    }

    // ---- the whole queue: boost, purge ------------------------------------------------------

    /// `boost` (rebalance's aging): every waiting action (`PENDING` or `RETRY`) created before
    /// `old_before` gains one priority step (never past 1,000,000), so old work is claimed
    /// first and nothing starves behind a stream of fresh work. It defers nothing and takes
    /// nothing out of the queue: the only change is the claim order. Fenced; returns how many
    /// were boosted.
    pub async fn boost(&self, fence: &Fence, old_before: DateTime<Utc>) -> Result<u64, StoreError> {
        let now = self.now();
        let boost = format!(
            "UPDATE actions SET priority = priority + 1, updated_at = $1 WHERE {} \
             AND created_at < $2 AND priority < 1000000 AND {}",
            Op::Boost.status_in(),
            fence_sql(3, 4),
        );
        let boosted =
            self.db
                .execute_raw(self.stmt(
                    &boost,
                    [now.into(), old_before.into(), fence.lease_name.as_str().into(), fence.epoch.into()],
                ))
                .await
                .doing("rebalancing: boosting old actions")?
                .rows_affected();
        if boosted == 0 && !self.fence_holds(fence).await? {
            return Err(Refusal::Fenced(fence.epoch).into());
        }
        Ok(boosted)
    }

    /// `expire`: every waiting action (`PENDING` or `RETRY`) whose deadline has passed goes to
    /// `DLQ` with the error `expired`, and a log row each, in one transaction. The claim never
    /// starts such an action (it skips expired rows), so this only has to make the outcome
    /// visible; the tick runs it before its snapshot. Fenced by the lease epoch. Returns the
    /// ids expired.
    pub async fn expire_due(&self, lease_name: &str, epoch: i64, tick_id: Option<i64>) -> Result<Vec<i64>, StoreError> {
        let now = self.now();
        let sql = format!(
            "UPDATE actions SET status = 'DLQ', last_error = 'expired', finished_at = $1, updated_at = $1 \
             WHERE {} AND expires_at IS NOT NULL AND expires_at <= $1 AND {} RETURNING id",
            Op::Expire.status_in(),
            fence_sql(2, 3),
        );
        let txn = self.begin_write().await?;
        let ids =
            returned_ids(&txn, self.stmt(&sql, [now.into(), lease_name.into(), epoch.into()]), "expiring actions")
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
    pub async fn purge(&self, before: DateTime<Utc>, batch: u64) -> Result<u64, StoreError> {
        let sql = format!(
            "DELETE FROM actions WHERE id IN (SELECT id FROM actions WHERE {} AND finished_at < $1 LIMIT $2)",
            Op::Purge.status_in()
        );
        let batch = i64::try_from(batch.max(1)).unwrap_or(i64::MAX);
        let mut total = 0;
        loop {
            // Their execution logs go by ON DELETE CASCADE.
            let txn = self.begin_write().await?;
            let n = txn
                .execute_raw(self.stmt(&sql, [before.into(), batch.into()]))
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
}

// ---- operator edits of many actions named by id (the page sends the ids it showed, so a row
// that arrived since is never touched) ----

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
    /// `requeue` of the given ids only (the ids an operator saw): `requeue`'s change, with a log
    /// row each, in one transaction; rows no longer in DLQ are skipped.
    pub async fn requeue_ids(&self, ids: &[i64]) -> Result<BulkOutcome, StoreError> {
        let now = self.now();
        self.bulk_edit(
            ids,
            &format!("UPDATE actions SET {} WHERE {}", REQUEUE_SET.replace("{now}", "$1"), Op::Requeue.status_in()),
            "requeued by operator: DLQ -> PENDING, attempts reset",
            now,
            "requeueing actions",
        )
        .await
    }

    /// `cancel` of the given ids among those in `from` (a subset of `cancel`'s starting
    /// statuses; a `RUNNING` action must finish its attempt first).
    pub async fn cancel_ids(&self, ids: &[i64], from: &[ActionStatus]) -> Result<BulkOutcome, StoreError> {
        if from.is_empty() || from.iter().any(|s| !Op::Cancel.from().contains(s)) {
            return Err(StoreError::Invalid(
                "only PENDING, RETRY or DLQ actions can be cancelled; a RUNNING one must finish its attempt first"
                    .to_string(),
            ));
        }
        let sql = format!(
            "UPDATE actions SET status = 'CANCELLED', updated_at = $1, finished_at = $1 WHERE {}",
            status_in(from)
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
            changed.extend(returned_ids(&txn, self.stmt(&sql, values), doing).await?);
        }
        changed.sort_unstable();
        let logs: Vec<NewLog> = changed.iter().map(|&i| NewLog::new(i, LogLevel::Info, message)).collect();
        insert_logs(&txn, None, &logs, now).await?;
        txn.commit().await.doing("committing a bulk edit")?;
        let skipped = wanted.into_iter().filter(|id| changed.binary_search(id).is_err()).collect();
        Ok(BulkOutcome { changed, skipped })
    }
}

/// `quarantine`: the completion of a claimed attempt whose row cannot be decoded. It goes
/// through [`Store::complete`]'s group commit like any completion, fenced by its claim: RUNNING
/// -> DLQ, with an error naming what could not be read and a log row. The attempt was counted
/// at the claim; nothing ran.
/// What a claim statement takes.
pub(super) enum Pick<'a> {
    /// Up to this many due rows, in claim order.
    Due(u64),
    /// Exactly these ids (a JSON array), picked by a limited claim.
    Ids(&'a str),
}

/// `SELECT` of the ids in the JSON array bound at `at` (e.g. `$5`).
/// The claimer's type filter (` AND action_type IN (...)`, or nothing), its names bound by `bind`.
fn types_filter(claimer: &Claimer, bind: &mut impl FnMut(Value) -> String) -> String {
    if claimer.types.is_empty() {
        return String::new();
    }
    let list: Vec<String> = claimer.types.iter().map(|t| bind(t.as_str().into())).collect();
    format!(" AND action_type IN ({})", list.join(", "))
}

pub(super) fn ids_in_json(backend: Backend, at: &str) -> String {
    match backend {
        Backend::Postgres => format!("SELECT (json_array_elements_text({at}::json))::bigint"),
        Backend::Sqlite => format!("SELECT value FROM json_each({at})"),
    }
}

/// Runs a claim statement and reads what it claimed.
pub(super) async fn claimed_rows<C: ConnectionTrait>(
    store: &Store,
    conn: &C,
    token: i64,
    sql: String,
    values: Vec<Value>,
) -> Result<Vec<Claimed>, StoreError> {
    let rows =
        actions::Entity::find().from_raw_sql(store.stmt(&sql, values)).all(conn).await.doing("claiming actions")?;
    Ok(entities::convert_all::<_, Action>(rows)?
        .into_iter()
        .map(|action| Claimed {
            token,
            attempt: action.attempts,
            proof: action.claim.as_ref().is_none_or(|c| c.proof),
            action,
        })
        .collect())
}

pub fn quarantine(claim: &Claimed, error: &str) -> Completion {
    let error = format!("quarantined: {error}");
    Completion {
        action_id: claim.action.id,
        token: claim.token,
        attempt: claim.attempt,
        logs: vec![NewLog::new(claim.action.id, LogLevel::Error, format!("{error} -> DLQ (nothing ran)"))],
        outcome: CompletionOutcome::Dlq { error },
    }
}

fn active(n: &NewAction, now: DateTime<Utc>) -> actions::ActiveModel {
    actions::ActiveModel {
        id: NotSet,
        idempotency_key: Set(n.idempotency_key.clone()),
        action_type: Set(n.action_type.clone()),
        payload_json: Set(n.payload_json.clone()),
        status: Set(Pending.as_str().to_string()),
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
