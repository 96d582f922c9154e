//! The `run` loop: ticks back to back at the configured interval until told to stop.
//!
//! It stops after `--ticks N`, when a tick finds the `killed` flag (that tick released the
//! lease), or on SIGTERM/SIGINT after the current tick finishes; every exit releases the lease.
//! A failing database is logged once per change of state and retried with a backoff from 1 s
//! doubling to 30 s, without a restart. It never busy-loops. Once an hour, after a tick it ran as
//! the holder, it starts the pruner in the background; at start, the pruner removes leftover
//! artifact files. Between ticks it keeps the lease and its executor's registration renewed,
//! and runs new work as soon as it arrives (`Engine::between_ticks`): an enqueue does not wait
//! for the next tick.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::heartbeat::Heartbeat;
use crate::model::TickStatus;
use crate::services::pruner::{Hourly, Pruner};
use crate::services::registration::KeepAlive;
use crate::store::StoreError;
use crate::tick::{Engine, TickOutcome, TickReport};

/// How long an idle daemon with `tick_interval_seconds: 0` waits before looking again.
pub const IDLE_POLL: Duration = Duration::from_millis(500);
/// A follower never polls more often than this.
const FOLLOWER_MIN_POLL: Duration = Duration::from_millis(50);
/// How long after the holder's expiry a follower looks again.
const FOLLOWER_MARGIN: Duration = Duration::from_millis(10);
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Why the loop stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    TicksDone,
    Killed,
    Signal,
}

/// What a run did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunSummary {
    pub ticks: u64,
    pub stopped_by: StopReason,
}

/// Runs ticks until a stop condition; `shutdown` turning true asks for a clean stop.
pub async fn run(engine: &Engine, max_ticks: Option<u64>, mut shutdown: watch::Receiver<bool>) -> RunSummary {
    let mut state = Loop::default();
    let pruner = Pruner::new(engine.store().clone(), Arc::new(engine.config().clone()), engine.metrics().clone());
    pruner.remove_stale_tmp().await;
    let mut waiter = engine.store().notify().waiter().await;
    let stopped_by = loop {
        if *shutdown.borrow() {
            break StopReason::Signal;
        }
        let outcome = engine.tick().await;
        state.ticks += 1;
        // Renews the lease (and this executor's registration) while the daemon waits for its
        // next tick (dropped when the wait ends), so that an interval longer than the TTL does
        // not hand leadership to another instance, or to a new epoch of this one, every tick.
        let mut holding: Option<(i64, Heartbeat, KeepAlive)> = None;
        let wait = match outcome {
            Ok(TickOutcome::Ran(r)) => {
                if r.status == TickStatus::Killed {
                    state.ran(engine, &r);
                    break StopReason::Killed;
                }
                state.hourly.start_if_due(&pruner);
                holding = Some((r.epoch, engine.hold_lease_between_ticks(r.epoch), engine.keep_registration_alive()));
                state.ran(engine, &r)
            }
            Ok(TickOutcome::NotLeader { owner, expires_at, .. }) => state.following(engine, owner, expires_at),
            Err(e) => state.failed(engine, &e),
        };
        if max_ticks.is_some_and(|n| state.ticks >= n) {
            break StopReason::TicksDone;
        }
        match &holding {
            Some((epoch, lease, _)) => {
                let picked = engine.between_ticks(wait, *epoch, lease, &mut waiter, &mut shutdown).await;
                if picked.attempted > 0 {
                    tracing::info!(
                        attempted = picked.attempted,
                        succeeded = picked.succeeded,
                        "ran new work between ticks"
                    );
                }
            }
            None => {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    };
    state.hourly.stop().await;
    engine.metrics().instance_lease_held.set(0);
    match engine.release().await {
        Ok(true) => tracing::info!("lease released"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "could not release the lease; it expires by itself"),
    }
    RunSummary { ticks: state.ticks, stopped_by }
}

/// What the loop remembers between ticks, so that each change of state is logged once.
#[derive(Default)]
struct Loop {
    ticks: u64,
    /// The backoff of a failing database, while it fails.
    failing: Option<Duration>,
    /// The holder this instance follows, while another holds the lease.
    following: Option<String>,
    hourly: Hourly,
}

impl Loop {
    /// A tick this instance ran as the holder; how long to wait for the next.
    fn ran(&mut self, engine: &Engine, r: &TickReport) -> Duration {
        if self.failing.take().is_some() {
            tracing::info!("database reachable again; ticking resumed");
        }
        if self.following.take().is_some() {
            tracing::info!(epoch = r.epoch, "acquired the lease; now the active instance");
        }
        tracing::info!(
            tick_id = r.tick_id,
            status = %r.status,
            duration_ms = r.duration_ms,
            attempted = r.attempted,
            succeeded = r.succeeded,
            failed = r.failed,
            notes = %r.notes,
            "tick"
        );
        if r.status == TickStatus::Killed {
            return Duration::ZERO;
        }
        engine.metrics().instance_lease_held.set(1);
        // Work-conserving between ticks too: a tick that stopped on its budget leaves work due,
        // so the next one starts now; the interval paces an idle queue.
        if r.budget_spent {
            Duration::ZERO
        } else if engine.interval().is_zero() && r.attempted == 0 {
            IDLE_POLL
        } else {
            engine.interval()
        }
    }

    /// Another instance holds the lease until `expires_at`.
    fn following(&mut self, engine: &Engine, owner: String, expires_at: DateTime<Utc>) -> Duration {
        engine.metrics().instance_lease_held.set(0);
        if self.failing.take().is_some() {
            tracing::info!("database reachable again");
        }
        if self.following.as_deref() != Some(owner.as_str()) {
            tracing::info!(holder = %owner, until = %expires_at.to_rfc3339(), "lease held by another instance; following");
            self.following = Some(owner);
        }
        let wait = if engine.interval().is_zero() { IDLE_POLL } else { engine.interval() };
        // Look again just after the holder's lease would expire, not up to a whole interval
        // later. The floor keeps a clock far behind the database's from polling in a tight loop.
        let until = (expires_at - crate::model::now()).to_std().unwrap_or_default();
        wait.min(until.max(FOLLOWER_MIN_POLL) + FOLLOWER_MARGIN)
    }

    /// A tick that failed; the backoff before the next.
    fn failed(&mut self, engine: &Engine, e: &StoreError) -> Duration {
        engine.metrics().instance_lease_held.set(0);
        let next = match self.failing {
            None => {
                // An outage is the database not answering; any other failed tick is in the
                // ledger and the logs, not counted as one.
                if e.is_unavailable() {
                    engine.metrics().database_outages_total.inc();
                    tracing::error!(error = %e, "tick failed: database unavailable; retrying with backoff until it answers");
                } else {
                    tracing::error!(error = %e, "tick failed; retrying with backoff");
                }
                BACKOFF_START
            }
            Some(prev) => (prev * 2).min(BACKOFF_MAX),
        };
        self.failing = Some(next);
        next
    }
}
