//! Approvals: an action that needs one waits in `AWAITING_APPROVAL` until an operator approves
//! it (-> `PENDING`), rejects it (-> `CANCELLED`) or its approval deadline passes (-> `CANCELLED`,
//! `expire_approval`). While it waits, the lease holder records once what it will send
//! (`preview`: the proof-mode rendering and its sha256); an approval records that digest, and
//! the real attempt runs only if the request still renders to it (the executor checks).
//!
//! Approve and reject are an operator's (the CLI, the admin API, the page); they name who and
//! why in the row and in a log row, in the same transaction. The preview and the expiry are the
//! lease holder's, fenced by its epoch. It must not render anything: the executor's rendering
//! is passed in.

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Value};

use super::super::entities::actions;
use super::super::{Context, Fence, StoreError};
use super::{Op, Refusal, db_text, fence_sql, insert_logs, returned_ids};
use crate::model::{Action, ActionStatus, LogLevel, NewLog};

/// The error an action whose approval deadline passed is cancelled with.
pub const APPROVAL_EXPIRED: &str = "approval expired: nobody approved it before its approval deadline";

/// What an operator's approval landed on: the digest approved.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Approved {
    pub id: i64,
    pub sha256: String,
}

impl crate::store::handles::Actions<'_> {
    /// The waiting actions whose request is not rendered yet, oldest first, at most `limit`.
    pub async fn awaiting_preview(self, limit: u64) -> Result<Vec<Action>, StoreError> {
        let rows = actions::Entity::find()
            .filter(actions::Column::Status.eq(ActionStatus::AwaitingApproval.as_str()))
            .filter(actions::Column::ApprovalPreviewSha256.is_null())
            .order_by_asc(actions::Column::Id)
            .limit(limit)
            .all(&self.store.db)
            .await
            .doing("reading actions awaiting a preview")?;
        rows.into_iter().map(Action::try_from).collect()
    }

    /// How many actions await an approval, and when the oldest was enqueued (the metrics').
    pub async fn awaiting_approval(self) -> Result<(i64, Option<DateTime<Utc>>), StoreError> {
        let sql = "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM actions WHERE status = 'AWAITING_APPROVAL'";
        let row = self.store.db.query_one_raw(self.store.stmt(sql, [])).await.doing("counting awaiting approvals")?;
        let Some(row) = row else { return Ok((0, None)) };
        let n: i64 = row.try_get("", "n").doing("counting awaiting approvals")?;
        let oldest: Option<DateTime<Utc>> = row.try_get("", "oldest").doing("counting awaiting approvals")?;
        Ok((n, oldest))
    }

    /// `preview`: records what a waiting action will send (`preview`, lossy UTF-8 for display)
    /// and the sha256 of its exact bytes, once: a row that has one keeps it. `artifact` is the
    /// file it was also written to, named in the log row.
    pub async fn record_preview(
        self,
        fence: &Fence,
        id: i64,
        preview: &str,
        sha256: &str,
        artifact: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = self.store.now();
        let sql = format!(
            "UPDATE actions SET approval_preview = $4, approval_preview_sha256 = $5, updated_at = $1 \
             WHERE id = $6 AND {} AND approval_preview_sha256 IS NULL AND {} RETURNING id",
            Op::Preview.status_in(),
            fence_sql(2, 3),
        );
        let values: Vec<Value> = vec![
            now.into(),
            fence.lease_name.as_str().into(),
            fence.epoch.into(),
            db_text(preview).into_owned().into(),
            sha256.into(),
            id.into(),
        ];
        let txn = self.store.begin_write().await?;
        let ids = returned_ids(&txn, self.store.stmt(&sql, values), "recording an approval preview").await?;
        if ids.is_empty() {
            drop(txn);
            return Err(self.store.approval_refusal(Op::Preview, id, Some(fence), None).await?.into());
        }
        let mut log = NewLog::new(id, LogLevel::Info, format!("awaiting approval: the request is sha256 {sha256}"));
        log.artifact_ref = artifact.map(str::to_string);
        log.artifact_sha256 = Some(sha256.to_string());
        insert_logs(&txn, fence.tick_id, &[log], now).await?;
        txn.commit().await.doing("committing an approval preview")
    }

    /// `approve`: AWAITING_APPROVAL -> PENDING, by an operator, once its request is rendered.
    /// The digest of that rendering is what is approved; with `expected` given (what the
    /// approver saw), a preview with another digest is refused.
    pub async fn approve(
        self,
        id: i64,
        by: &str,
        reason: Option<&str>,
        expected: Option<&str>,
    ) -> Result<Approved, StoreError> {
        let now = self.store.now();
        let sql = format!(
            "UPDATE actions SET status = 'PENDING', approval_sha256 = approval_preview_sha256, approval_by = $2, \
             approval_reason = $3, updated_at = $1 \
             WHERE id = $4 AND {} AND approval_preview_sha256 IS NOT NULL \
             AND ($5 = '' OR approval_preview_sha256 = $5) RETURNING approval_sha256",
            Op::Approve.status_in(),
        );
        let values: Vec<Value> = vec![
            now.into(),
            db_text(by).into_owned().into(),
            reason.map(|r| db_text(r).into_owned()).into(),
            id.into(),
            expected.unwrap_or("").into(),
        ];
        let txn = self.store.begin_write().await?;
        let row = txn.query_one_raw(self.store.stmt(&sql, values)).await.doing("approving an action")?;
        let Some(row) = row else {
            drop(txn);
            return Err(self.store.approval_refusal(Op::Approve, id, None, expected).await?.into());
        };
        let sha256: String = row.try_get("", "approval_sha256").doing("approving an action")?;
        let why = reason.map(|r| format!(" ({r})")).unwrap_or_default();
        let mut log = NewLog::new(
            id,
            LogLevel::Info,
            format!(
                "approved by {by}{why}: AWAITING_APPROVAL -> PENDING; only the request with sha256 {sha256} may be sent"
            ),
        );
        log.artifact_sha256 = Some(sha256.clone());
        insert_logs(&txn, None, &[log], now).await?;
        txn.commit().await.doing("committing an approval")?;
        Ok(Approved { id, sha256 })
    }

    /// `reject`: AWAITING_APPROVAL -> CANCELLED, by an operator, who must say why.
    pub async fn reject(self, id: i64, by: &str, reason: &str) -> Result<(), StoreError> {
        if reason.trim().is_empty() {
            return Err(StoreError::Invalid("a rejection needs a reason".to_string()));
        }
        let now = self.store.now();
        let error = format!("rejected by {by}: {reason}");
        let sql = format!(
            "UPDATE actions SET status = 'CANCELLED', last_error = $2, approval_by = $3, approval_reason = $4, \
             finished_at = $1, updated_at = $1 WHERE id = $5 AND {} RETURNING id",
            Op::Reject.status_in(),
        );
        let values: Vec<Value> = vec![
            now.into(),
            db_text(&error).into_owned().into(),
            db_text(by).into_owned().into(),
            db_text(reason).into_owned().into(),
            id.into(),
        ];
        let txn = self.store.begin_write().await?;
        let ids = returned_ids(&txn, self.store.stmt(&sql, values), "rejecting an action").await?;
        if ids.is_empty() {
            drop(txn);
            return Err(self.store.approval_refusal(Op::Reject, id, None, None).await?.into());
        }
        let log = NewLog::new(id, LogLevel::Warning, format!("{error}: AWAITING_APPROVAL -> CANCELLED"));
        insert_logs(&txn, None, &[log], now).await?;
        txn.commit().await.doing("committing a rejection")
    }

    /// `expire_approval`: every action still awaiting approval past its approval deadline is
    /// cancelled with [`APPROVAL_EXPIRED`], a log row each, in one transaction. Fenced by the
    /// lease epoch; returns the ids.
    pub async fn expire_approvals(self, fence: &Fence) -> Result<Vec<i64>, StoreError> {
        let now = self.store.now();
        let sql = format!(
            "UPDATE actions SET status = 'CANCELLED', last_error = '{APPROVAL_EXPIRED}', finished_at = $1, \
             updated_at = $1 WHERE {} AND approval_expires_at IS NOT NULL AND approval_expires_at <= $1 AND {} \
             RETURNING id",
            Op::ExpireApproval.status_in(),
            fence_sql(2, 3),
        );
        let values: Vec<Value> = vec![now.into(), fence.lease_name.as_str().into(), fence.epoch.into()];
        let txn = self.store.begin_write().await?;
        let ids = returned_ids(&txn, self.store.stmt(&sql, values), "expiring approvals").await?;
        if ids.is_empty() {
            return Ok(ids);
        }
        let logs: Vec<NewLog> = ids
            .iter()
            .map(|&id| {
                NewLog::new(id, LogLevel::Warning, format!("{APPROVAL_EXPIRED}: AWAITING_APPROVAL -> CANCELLED"))
            })
            .collect();
        insert_logs(&txn, fence.tick_id, &logs, now).await?;
        txn.commit().await.doing("committing expired approvals")?;
        Ok(ids)
    }
}

impl super::super::Store {
    /// Why an approval operation on `id` did not land: the fence, a missing row, its status,
    /// a request not rendered yet, or a preview other than the one the approver saw.
    async fn approval_refusal(
        &self,
        op: Op,
        id: i64,
        fence: Option<&Fence>,
        expected: Option<&str>,
    ) -> Result<Refusal, StoreError> {
        if let Some(fence) = fence
            && !self.lease().fence_holds(fence).await?
        {
            return Ok(Refusal::Fenced(fence.epoch));
        }
        let Some(row) = actions::Entity::find_by_id(id).one(&self.db).await.doing("reading an action")? else {
            return Ok(Refusal::NotFound(id));
        };
        let found: ActionStatus =
            row.status.parse().map_err(|reason| StoreError::Corrupt { table: "actions", id, reason })?;
        Ok(match (op, row.approval_preview_sha256) {
            _ if !op.from().contains(&found) => Refusal::Status { op, id, found },
            (Op::Approve, None) => Refusal::NotRendered(id),
            (Op::Approve, Some(now)) => {
                Refusal::PreviewChanged { id, expected: expected.unwrap_or_default().to_string(), found: now }
            }
            // A preview already recorded: it is rendered once, and kept.
            (_, _) => Refusal::Rendered(id),
        })
    }
}
