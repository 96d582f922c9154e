//! MONITOR: one immutable [`Snapshot`] of the queue, the lease, the flags and the ledger, built
//! at the start of every tick with a fixed number of index-backed queries.
//!
//! Its cost does not grow with finished history: counts cover only the open statuses (a
//! partial index), and the ledger is read by primary key from the top. It decides nothing.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::lease::Term;
use crate::model::{self, ActionStatus, Flags, TickStatus};
use crate::store::{Store, StoreError};

/// The state a tick decides on.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub now: DateTime<Utc>,
    pub tick_id: Option<i64>,
    pub flags: Flags,
    pub lease: LeaseView,
    pub queue: QueueView,
    pub last_tick: Option<LastTick>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LeaseView {
    pub owner: String,
    pub epoch: i64,
    pub ttl_seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct QueueView {
    pub pending: i64,
    pub running: i64,
    pub retry: i64,
    pub dlq: i64,
    pub due_now: i64,
    pub oldest_pending_age_seconds: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LastTick {
    pub id: i64,
    pub status: TickStatus,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Builds the snapshot for the tick `tick_id` run under `term`.
pub async fn build(store: &Store, term: &Term, flags: Flags, tick_id: Option<i64>) -> Result<Snapshot, StoreError> {
    let now = model::now();
    let counts = store.open_counts().await?;
    let count = |s: ActionStatus| counts.get(&s).copied().unwrap_or(0);
    let oldest = store.oldest_pending().await?;
    let due_now = store.due_count().await?;
    let last_tick = store.recent_ticks(2).await?.into_iter().find(|t| Some(t.id) != tick_id).map(|t| LastTick {
        id: t.id,
        status: t.status,
        finished_at: t.finished_at,
    });
    Ok(Snapshot {
        now,
        tick_id,
        flags,
        lease: LeaseView {
            owner: term.owner.clone(),
            epoch: term.epoch,
            ttl_seconds: seconds_between(now, term.expires_at).max(0.0),
        },
        queue: QueueView {
            pending: count(ActionStatus::Pending),
            running: count(ActionStatus::Running),
            retry: count(ActionStatus::Retry),
            dlq: count(ActionStatus::Dlq),
            due_now,
            oldest_pending_age_seconds: oldest.map(|t| seconds_between(t, now).max(0.0)),
        },
        last_tick,
    })
}

/// `b - a` in seconds.
pub fn seconds_between(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (b - a).num_milliseconds() as f64 / 1000.0
}
