//! The action state machine: every change of an action's status, and every write that moves
//! an action in the queue, is one named operation of this folder. The CLI, the HTTP API, the
//! rules and the executor all call these; nobody else writes to `actions`.
//!
//! Each operation names the statuses it may start from ([`Op::from`]), takes an [`Authority`]
//! (an operator, or the lease holder's [`Fence`]) or the fence of one claimed attempt, and
//! either applies or fails with [`StoreError::Refused`] carrying a typed [`Refusal`]: the
//! state it found, a missing row, or a fence that no longer holds. The [`Op`] table here is the
//! one source of every `from -> to`; ARCHITECTURE.md carries it, and `tests/it/machine.rs`
//! walks every (operation, status) pair on both backends against that table.
//!
//! The operations are grouped by family, one file each: `enqueue`, `claim` (and the dry pick),
//! `complete` (completion, unstart, quarantine), `edit` (an operator's or a rule's edits of
//! actions it names), `sweep` (rescue, expiry, boost, purge over the whole queue) and
//! `approval` (preview, approve, reject, the expiry of a waiting approval). `read`
//! holds the reads of `actions` and the log-row writer they share; it changes no action.
//!
//! It does not decide which action to move or when: that is the rules' and the executor's
//! business.

mod approval;
mod claim;
mod complete;
mod edit;
mod enqueue;
mod read;
mod sweep;

pub use approval::{APPROVAL_EXPIRED, Approved};
pub use claim::{Claimed, Claimer};
pub(in crate::store) use claim::{Pick, claimed_rows, ids_in_json};
pub use complete::{Completion, CompletionOutcome, CompletionReport, quarantine};
pub use edit::{BulkOutcome, MAX_BULK_IDS};
pub(in crate::store) use enqueue::insert_fenced;
pub use enqueue::{EnqueueOutcome, NewAction};
pub use read::ActionFilter;
pub(in crate::store) use read::{db_text, insert_logs, timestamp_text};
pub use sweep::{RESCUED_ERROR, Rescued};

use std::fmt;

use sea_orm::{ConnectionTrait, DatabaseTransaction};

use super::{Context, Fence, StoreError};
use crate::model::ActionStatus;

use ActionStatus::{AwaitingApproval, Cancelled, Dlq, Pending, Retry, Running, Success};

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
    Preview,
    Approve,
    Reject,
    ExpireApproval,
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
        Op::Preview,
        Op::Approve,
        Op::Reject,
        Op::ExpireApproval,
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
            Op::Preview => "preview",
            Op::Approve => "approve",
            Op::Reject => "reject",
            Op::ExpireApproval => "expire_approval",
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
            Op::Preview | Op::Approve | Op::Reject | Op::ExpireApproval => &[AwaitingApproval],
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
pub(in crate::store) fn status_in(statuses: &[ActionStatus]) -> String {
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
    /// No schedule of that name.
    #[error("schedule '{0}' not found")]
    NoSchedule(String),
    /// A schedule's state or origin does not allow the change (the message says which).
    #[error("{0}")]
    Schedule(String),
    #[error(
        "cannot approve action {0}: the request it will send is not rendered yet (the leader renders it at its next tick); \
         approve it once `actions show {0}` shows it"
    )]
    NotRendered(i64),
    #[error("cannot approve action {id}: its request is sha256 {found}, not the {expected} given")]
    PreviewChanged { id: i64, expected: String, found: String },
    #[error("action {0} already has its preview: it is rendered once")]
    Rendered(i64),
}

impl From<Refusal> for StoreError {
    fn from(r: Refusal) -> Self {
        StoreError::Refused(r)
    }
}

pub(in crate::store) fn fence_sql(name: usize, epoch: usize) -> String {
    format!("EXISTS (SELECT 1 FROM leases WHERE name = ${name} AND epoch = ${epoch})")
}

async fn returned_ids(
    txn: &DatabaseTransaction,
    stmt: sea_orm::Statement,
    doing: &'static str,
) -> Result<Vec<i64>, StoreError> {
    let rows = txn.query_all_raw(stmt).await.doing(doing)?;
    rows.iter().map(|r| r.try_get::<i64>("", "id").doing(doing)).collect()
}
