//! sea-orm entities, one per table, and their conversion into the domain types of `model`.
//!
//! The schema itself is owned by the `migrations` crate. These mirror, column for column, the
//! tables read or written through the ORM; the others (`decisions`, `rule_state`,
//! `rule_cooldowns`) are read and written with hand-written SQL only.

use crate::model::{self, ActionStatus, LogLevel, TickStatus};

use super::StoreError;

pub mod control_flags {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "control_flags")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i32,
        pub paused: bool,
        pub killed: bool,
        pub proof_mode: bool,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod leases {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "leases")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        pub owner: String,
        pub epoch: i64,
        pub acquired_at: DateTimeUtc,
        pub renewed_at: DateTimeUtc,
        pub expires_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod actions {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "actions")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        #[sea_orm(unique)]
        pub idempotency_key: String,
        pub action_type: String,
        #[sea_orm(column_type = "Text")]
        pub payload_json: String,
        pub status: String,
        pub priority: i32,
        pub not_before: DateTimeUtc,
        pub attempts: i32,
        pub max_attempts: i32,
        #[sea_orm(column_type = "Text", nullable)]
        pub last_error: Option<String>,
        pub claimed_epoch: Option<i64>,
        pub claimed_at: Option<DateTimeUtc>,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
        pub finished_at: Option<DateTimeUtc>,
        pub expires_at: Option<DateTimeUtc>,
        pub claim_token: Option<i64>,
        pub claimed_by: Option<String>,
        pub claim_deadline: Option<DateTimeUtc>,
        pub claim_proof: Option<bool>,
        pub traceparent: Option<String>,
        pub approval_expires_at: Option<DateTimeUtc>,
        #[sea_orm(column_type = "Text", nullable)]
        pub approval_preview: Option<String>,
        pub approval_preview_sha256: Option<String>,
        pub approval_sha256: Option<String>,
        pub approval_by: Option<String>,
        #[sea_orm(column_type = "Text", nullable)]
        pub approval_reason: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod tick_ledger {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "tick_ledger")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub started_at: DateTimeUtc,
        pub finished_at: Option<DateTimeUtc>,
        pub status: String,
        pub owner: String,
        pub epoch: i64,
        pub actions_attempted: i32,
        pub actions_succeeded: i32,
        #[sea_orm(column_type = "Text", nullable)]
        pub notes: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod execution_logs {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "execution_logs")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub action_id: i64,
        pub tick_id: Option<i64>,
        pub ts: DateTimeUtc,
        pub level: String,
        #[sea_orm(column_type = "Text")]
        pub message: String,
        #[sea_orm(column_type = "Text", nullable)]
        pub artifact_ref: Option<String>,
        pub artifact_sha256: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

fn corrupt(table: &'static str, id: i64, reason: String) -> StoreError {
    StoreError::Corrupt { table, id, reason }
}

/// An action's approval columns as one value; `None` when none was ever asked for.
fn approval(
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    preview: Option<String>,
    preview_sha256: Option<String>,
    approved_sha256: Option<String>,
    decided_by: Option<String>,
    reason: Option<String>,
) -> Option<model::Approval> {
    let any = expires_at.is_some() || preview.is_some() || approved_sha256.is_some() || decided_by.is_some();
    any.then_some(model::Approval { expires_at, preview, preview_sha256, approved_sha256, decided_by, reason })
}

impl TryFrom<actions::Model> for model::Action {
    type Error = StoreError;

    fn try_from(m: actions::Model) -> Result<Self, StoreError> {
        let status: ActionStatus = m.status.parse().map_err(|e| corrupt("actions", m.id, e))?;
        // A payload that cannot be read does not fail the listing, the snapshot or the claim
        // that reads it: the row carries the error instead, and the executor quarantines it.
        let (payload, decode_error) = match serde_json::from_str(&m.payload_json) {
            Ok(v) => (v, None),
            Err(e) => (serde_json::Value::Null, Some(format!("payload_json cannot be read: {e}"))),
        };
        Ok(model::Action {
            id: m.id,
            idempotency_key: m.idempotency_key,
            action_type: m.action_type,
            payload,
            status,
            priority: m.priority,
            not_before: m.not_before,
            attempts: m.attempts,
            max_attempts: m.max_attempts,
            last_error: m.last_error,
            claimed_epoch: m.claimed_epoch,
            claimed_at: m.claimed_at,
            created_at: m.created_at,
            updated_at: m.updated_at,
            finished_at: m.finished_at,
            decode_error,
            expires_at: m.expires_at,
            claim: match (m.claim_token, m.claimed_by, m.claim_deadline) {
                (Some(token), Some(worker), Some(deadline)) => {
                    Some(model::ClaimInfo { token, worker, deadline, proof: m.claim_proof.unwrap_or(true) })
                }
                _ => None,
            },
            traceparent: m.traceparent,
            approval: approval(
                m.approval_expires_at,
                m.approval_preview,
                m.approval_preview_sha256,
                m.approval_sha256,
                m.approval_by,
                m.approval_reason,
            ),
        })
    }
}

impl TryFrom<tick_ledger::Model> for model::TickRow {
    type Error = StoreError;

    fn try_from(m: tick_ledger::Model) -> Result<Self, StoreError> {
        let status: TickStatus = m.status.parse().map_err(|e| corrupt("tick_ledger", m.id, e))?;
        Ok(model::TickRow {
            id: m.id,
            started_at: m.started_at,
            finished_at: m.finished_at,
            status,
            owner: m.owner,
            epoch: m.epoch,
            actions_attempted: m.actions_attempted,
            actions_succeeded: m.actions_succeeded,
            notes: m.notes,
        })
    }
}

impl TryFrom<execution_logs::Model> for model::LogRow {
    type Error = StoreError;

    fn try_from(m: execution_logs::Model) -> Result<Self, StoreError> {
        let level: LogLevel = m.level.parse().map_err(|e| corrupt("execution_logs", m.id, e))?;
        Ok(model::LogRow {
            id: m.id,
            action_id: m.action_id,
            tick_id: m.tick_id,
            ts: m.ts,
            level,
            message: m.message,
            artifact_ref: m.artifact_ref,
            artifact_sha256: m.artifact_sha256,
        })
    }
}

impl From<leases::Model> for model::LeaseRow {
    fn from(m: leases::Model) -> Self {
        model::LeaseRow {
            name: m.name,
            owner: m.owner,
            epoch: m.epoch,
            acquired_at: m.acquired_at,
            renewed_at: m.renewed_at,
            expires_at: m.expires_at,
        }
    }
}

/// Converts a list of rows, failing on the first corrupt one.
pub(super) fn convert_all<M, T>(rows: Vec<M>) -> Result<Vec<T>, StoreError>
where
    T: TryFrom<M, Error = StoreError>,
{
    rows.into_iter().map(T::try_from).collect()
}
