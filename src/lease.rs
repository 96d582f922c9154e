//! The lease that lets one instance act at a time: acquire or renew, heartbeat, release, and
//! the fencing epoch that every write about a claimed action carries.
//!
//! The atomicity lives in one conditional statement in the store; this module decides when to
//! call it and what a lost renewal means (stop dispatching at once). It does not touch actions.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::heartbeat::{Renewal, WhenLost};
use crate::model::LeaseRow;
use crate::store::{Acquired, Begun, Store, StoreError};

/// The name of the one lease of a database. One database is one queue with one leader: the
/// actions, claims, snapshot, limits and workers are the database's, so instances that should
/// not share a queue use separate databases (a SQLite file, a PostgreSQL database or schema),
/// never separate lease names. (`lease_name` was a config key once; it is refused now.)
pub const LEASE_NAME: &str = "orchestrator";

/// A new owner id: `hostname:pid:<random>`, unique per process start.
pub fn new_owner_id() -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let host = if host.is_empty() { "unknown-host".to_string() } else { host };
    format!("{host}:{}:{:08x}", std::process::id(), fastrand::u32(..))
}

/// This instance's term as the holder: the fencing token its writes carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    pub lease_name: String,
    pub owner: String,
    pub epoch: i64,
    pub expires_at: DateTime<Utc>,
}

impl From<LeaseRow> for Term {
    fn from(row: LeaseRow) -> Term {
        Term { lease_name: row.name, owner: row.owner, epoch: row.epoch, expires_at: row.expires_at }
    }
}

/// What an acquire attempt found.
#[derive(Clone, Debug)]
pub enum LeaseState {
    Held(Term),
    HeldByOther(LeaseRow),
}

/// One instance's handle on the named lease.
#[derive(Clone, Debug)]
pub struct Lease {
    store: Store,
    name: String,
    owner: String,
    ttl: Duration,
}

impl Lease {
    pub fn new(store: Store, name: impl Into<String>, owner: impl Into<String>, ttl: Duration) -> Self {
        Lease { store, name: name.into(), owner: owner.into(), ttl }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Acquires or renews, in one atomic statement.
    pub async fn acquire(&self) -> Result<LeaseState, StoreError> {
        Ok(match self.store.lease().acquire_lease(&self.name, &self.owner, self.ttl).await? {
            Acquired::Held(row) => LeaseState::Held(row.into()),
            Acquired::HeldByOther(row) => LeaseState::HeldByOther(row),
        })
    }

    /// Acquires or renews and, while held, opens a tick's ledger row (see
    /// `store.ledger().begin_tick` for how the two writes are committed). Returns the term and the
    /// row's id, or the row of the owner who holds the lease.
    pub async fn begin_tick(&self, started_at: DateTime<Utc>) -> Result<Result<(Term, i64), LeaseRow>, StoreError> {
        Ok(match self.store.ledger().begin_tick(&self.name, &self.owner, self.ttl, started_at).await? {
            Begun::Held { lease, tick_id } => Ok((lease.into(), tick_id)),
            Begun::HeldByOther(row) => Err(row),
        })
    }

    /// Gives the lease up now, if this instance holds it.
    pub async fn release(&self) -> Result<bool, StoreError> {
        self.store.lease().release_lease(&self.name, Some(&self.owner)).await
    }

    /// Starts renewing every `every` while a tick runs. The returned guard's flag turns true,
    /// and stays true, as soon as the term is lost: another epoch or owner took over, or
    /// renewals failed for so long that the lease may have lapsed. Dropping the guard stops it.
    pub fn heartbeat(&self, term: &Term, every: Duration) -> Heartbeat {
        let lease = self.clone();
        let epoch = term.epoch;
        let grace = self.ttl.saturating_sub(every);
        let lost = Arc::new(AtomicBool::new(false));
        Heartbeat::start("the lease (stopping dispatch)", every, grace, WhenLost::Stop, lost, move || {
            let lease = lease.clone();
            async move {
                match lease.acquire().await {
                    Ok(LeaseState::Held(t)) if t.epoch == epoch => Renewal::Renewed,
                    Ok(LeaseState::Held(t)) => {
                        tracing::warn!(
                            old_epoch = epoch,
                            new_epoch = t.epoch,
                            "lease lapsed and was re-taken under a new epoch; stopping dispatch for this tick"
                        );
                        Renewal::Lost
                    }
                    Ok(LeaseState::HeldByOther(row)) => {
                        tracing::warn!(epoch, holder = %row.owner, holder_epoch = row.epoch, "lease lost to another instance; stopping dispatch");
                        Renewal::Lost
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "lease renewal failed");
                        Renewal::Failed
                    }
                }
            }
        })
    }
}

/// A running heartbeat of a term; see [`Lease::heartbeat`].
pub use crate::heartbeat::Heartbeat;
