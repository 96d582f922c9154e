//! Completion: the fenced end of claimed attempts, in groups: `SUCCESS`, `RETRY` or `DLQ`, an
//! `unstart` (back to `PENDING`, the attempt uncounted, its limit starts given back) and a
//! quarantine (a row that cannot be decoded goes to `DLQ`), with their log rows.
//!
//! Every write here is fenced by the attempt's claim token: a completion that has lost its
//! claim changes nothing. It must not touch a row that is not `RUNNING`.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use super::super::{Backend, Context, Store, StoreError};
use super::{Claimed, Dlq, Pending, Retry, Success, db_text, insert_logs, returned_ids, timestamp_text};
use crate::model::{LogLevel, NewLog};

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

/// Completions per fenced UPDATE statement (each chunk is one JSON parameter).
const COMPLETE_CHUNK: usize = 1000;

impl Store {
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
               part_key = CASE WHEN v.status IN ('PENDING', 'RETRY') THEN actions.part_key END, \
               part_overflow = CASE WHEN v.status IN ('PENDING', 'RETRY') THEN actions.part_overflow END, \
               finished_at = CASE WHEN v.status IN ('SUCCESS', 'DLQ') THEN $2 ELSE actions.finished_at END \
             FROM v \
             WHERE actions.id = v.id AND actions.status = 'RUNNING' AND actions.claim_token = v.token \
             RETURNING actions.id"
        );
        self.stmt(&sql, [serde_json::Value::Array(rows).to_string().into(), now.into()])
    }
}

impl crate::store::handles::Actions<'_> {
    /// `complete` (SUCCESS, RETRY or DLQ) and `unstart` (back to PENDING, the attempt
    /// uncounted) of a batch of claimed attempts, with their log rows, in one transaction: one
    /// fenced UPDATE per chunk of rows (each row still `RUNNING` under its own claim token),
    /// then the log rows of the ones that landed.
    pub async fn complete(self, tick_id: Option<i64>, batch: &[Completion]) -> Result<CompletionReport, StoreError> {
        let mut report = CompletionReport::default();
        if batch.is_empty() {
            return Ok(report);
        }
        let now = self.store.now();
        let txn = self.store.begin_write().await?;
        let mut applied = HashSet::new();
        for chunk in batch.chunks(COMPLETE_CHUNK) {
            let stmt = self.store.complete_stmt(now, chunk);
            for id in returned_ids(&txn, stmt, "recording action outcomes").await? {
                applied.insert(id);
            }
        }
        let unstarted: Vec<(i64, i64)> = batch
            .iter()
            .filter(|c| matches!(c.outcome, CompletionOutcome::Unstarted) && applied.contains(&c.action_id))
            .map(|c| (c.action_id, c.token))
            .collect();
        self.store.give_back_starts(&txn, &unstarted, now).await?;
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
}

/// `quarantine`: the completion of a claimed attempt whose row cannot be decoded. It goes
/// through `store.actions().complete`'s group commit like any completion, fenced by its claim: RUNNING
/// -> DLQ, with an error naming what could not be read and a log row. The attempt was counted
/// at the claim; nothing ran.
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
