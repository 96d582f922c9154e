//! Edits of the actions an operator or a rule names: requeue, retry now, dlq, cancel,
//! force run, reprioritize, postpone; one at a time (with a typed refusal saying why it did not
//! land) or by a list of ids an operator saw (the page sends the ids it showed, so a row that
//! arrived since is never touched).
//!
//! Each edit starts only from its operation's statuses ([`Op::from`]); under a lease it is
//! fenced by the epoch. It must not claim, complete or sweep.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, EntityTrait, Value};

use super::super::entities::actions;
use super::super::{Context, Fence, Store, StoreError};
use super::{Authority, Op, Refusal, db_text, fence_sql, insert_logs, returned_ids, status_in};
use crate::model::{ActionStatus, LogLevel, NewLog};

/// `requeue`'s assignments (DLQ -> PENDING, attempts reset, the old claim forgotten); `{now}` is
/// the statement's time. `retry_now` of a DLQ action makes the same change.
/// A deadline that has passed is dropped: someone asked for another run.
const REQUEUE_SET: &str = "status = 'PENDING', attempts = 0, not_before = {now}, updated_at = {now}, \
     finished_at = NULL, claimed_epoch = NULL, claimed_at = NULL, claim_token = NULL, claimed_by = NULL, \
     claim_deadline = NULL, claim_proof = NULL, part_key = NULL, part_overflow = NULL, \
     expires_at = CASE WHEN expires_at <= {now} THEN NULL ELSE expires_at END";

impl Store {
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
            && !self.lease().fence_holds(fence).await?
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
}

impl crate::store::handles::Actions<'_> {
    /// `requeue`: DLQ -> PENDING with attempts reset and the old claim forgotten. Returns the
    /// id requeued.
    pub async fn requeue(self, auth: Authority<'_>, id: i64) -> Result<(), StoreError> {
        let log = match auth {
            Authority::Operator => "requeued by operator: DLQ -> PENDING, attempts reset".to_string(),
            Authority::Lease(_) => "requeued: DLQ -> PENDING, attempts reset".to_string(),
        };
        self.store.transition_one(auth, Op::Requeue, id, REQUEUE_SET, vec![], &log).await
    }

    /// `requeue` of every DLQ action, by an operator. Returns the ids requeued.
    pub async fn requeue_all(self) -> Result<Vec<i64>, StoreError> {
        let now = self.store.now();
        let sql = format!(
            "UPDATE actions SET {} WHERE {} RETURNING id",
            REQUEUE_SET.replace("{now}", "$1"),
            Op::Requeue.status_in()
        );
        let txn = self.store.begin_write().await?;
        let ids = returned_ids(&txn, self.store.stmt(&sql, [now.into()]), "requeueing actions").await?;
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
    pub async fn retry_now(self, auth: Authority<'_>, id: i64, why: &str) -> Result<(), StoreError> {
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
                   not_before = {now}, updated_at = {now}, part_key = NULL, part_overflow = NULL";
        let log = format!("retry decided ({why}): due now (DLQ is requeued, RUNNING returned to RETRY)");
        let error = format!("running too long: returned by {why}");
        self.store.transition_one(auth, Op::RetryNow, id, set, vec![error.into()], &log).await
    }

    /// `dlq`: PENDING or RETRY -> DLQ, its last error saying who moved it and why.
    pub async fn dlq(self, auth: Authority<'_>, id: i64, why: &str) -> Result<(), StoreError> {
        let log = format!("dlq decided ({why})");
        let error = format!("moved to DLQ by {why}");
        self.store
            .transition_one(
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
    pub async fn cancel(self, auth: Authority<'_>, id: i64, why: Option<&str>) -> Result<(), StoreError> {
        let log = match (auth, why) {
            (_, Some(why)) => format!("cancel decided ({why})"),
            (Authority::Operator, None) => "cancelled by operator".to_string(),
            (Authority::Lease(_), None) => "cancelled".to_string(),
        };
        self.store
            .transition_one(
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
    pub async fn force_run(self, auth: Authority<'_>, id: i64, bump: i32, why: &str) -> Result<(), StoreError> {
        let log = format!("force_run decided ({why}): due now, priority +{bump}");
        self.store
            .transition_one(
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
    pub async fn reprioritize(self, auth: Authority<'_>, id: i64, to: i32, why: &str) -> Result<(), StoreError> {
        let log = format!("reprioritize decided ({why}): priority {to}");
        self.store
            .transition_one(auth, Op::Reprioritize, id, "priority = $5, updated_at = {now}", vec![to.into()], &log)
            .await
    }

    /// `postpone`: a PENDING or RETRY action is not claimed before `until`; its priority and
    /// attempts are kept. Never brings an action forward: a later `not_before` stays.
    pub async fn postpone(
        self,
        auth: Authority<'_>,
        id: i64,
        until: DateTime<Utc>,
        why: &str,
    ) -> Result<(), StoreError> {
        let log = format!("postpone decided ({why}): not before {}", until.to_rfc3339());
        let set = "not_before = CASE WHEN not_before > $5 THEN not_before ELSE $5 END, updated_at = {now}";
        self.store.transition_one(auth, Op::Postpone, id, set, vec![until.into()], &log).await
    }
}

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

impl crate::store::handles::Actions<'_> {
    /// `requeue` of the given ids only (the ids an operator saw): `requeue`'s change, with a log
    /// row each, in one transaction; rows no longer in DLQ are skipped.
    pub async fn requeue_ids(self, ids: &[i64]) -> Result<BulkOutcome, StoreError> {
        let now = self.store.now();
        self.store
            .bulk_edit(
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
    pub async fn cancel_ids(self, ids: &[i64], from: &[ActionStatus]) -> Result<BulkOutcome, StoreError> {
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
        self.store.bulk_edit(ids, &sql, "cancelled by operator", self.store.now(), "cancelling actions").await
    }

    /// The ids of every `DLQ` action, oldest first (for `actions cancel --all-dlq`).
    pub async fn dlq_ids(self) -> Result<Vec<i64>, StoreError> {
        let rows = self
            .store
            .db
            .query_all_raw(self.store.stmt("SELECT id FROM actions WHERE status = 'DLQ' ORDER BY id", []))
            .await
            .doing("listing DLQ actions")?;
        rows.iter().map(|r| r.try_get::<i64>("", "id").doing("listing DLQ actions")).collect()
    }
}
