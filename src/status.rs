//! The operator's view of the whole system: the service's liveness with its reasons, the
//! workload score, flags, lease, queue counts and the last tick, read from the database
//! (another instance may be the leader). This module gathers the facts; every judgement of
//! them is `health`'s.
//!
//! Shared by `orchestrator status` and the HTTP endpoints (`/health`, `/status`, `/metrics`).
//! It reads; it never writes.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::health::HealthThresholds;
use crate::health::{self, InstanceFacts, Judgement, LeaseSeen, LivenessPolicy, TickFault, WorkerSeen, WorkloadHealth};
use crate::limits::LimitUsage;
use crate::model::{self, ActionStatus, Flags, TickRow, seconds_between};
use crate::store::{Store, StoreError};

/// Why `proof off` is refused by an instance with `proof_mode: enforced` (CLI, API, page).
pub const PROOF_ENFORCED_REFUSAL: &str = "proof mode is enforced on this instance (proof_mode: enforced, \
     ORCHESTRATOR_PROOF_MODE=enforced or --proof-enforced): it cannot be turned off here";

#[derive(Clone, Debug, Serialize)]
pub struct LeaseStatus {
    pub name: String,
    pub owner: String,
    pub epoch: i64,
    pub expires_at: DateTime<Utc>,
    /// Seconds until expiry; 0 when expired.
    pub ttl_seconds: f64,
    pub live: bool,
}

/// `status --json` (and `/status`). `liveness` and `reasons` are the service's liveness (and
/// `health`, its old name, the same value for one release); `workload` is the workload score
/// the rules see.
#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    #[serde(flatten, serialize_with = "liveness_fields")]
    pub liveness: Judgement,
    pub workload: WorkloadHealth,
    pub flags: Flags,
    pub lease: Option<LeaseStatus>,
    /// Counts by status: every status over all history for `status` and `/status`; the open
    /// statuses only (SUCCESS and CANCELLED absent) for `/health` and `/metrics`.
    pub queue: BTreeMap<ActionStatus, i64>,
    pub oldest_pending: Option<DateTime<Utc>>,
    pub last_tick: Option<TickRow>,
    /// Registered executors: live (heartbeat within `workers.ttl_seconds`) and dead.
    pub workers: WorkerCounts,
    /// This process enforces proof mode (`proof_mode: enforced`): every attempt it runs is in
    /// proof mode whatever `flags.proof_mode` says. Set by the caller, which knows its config.
    pub proof_enforced: bool,
    /// Each limited type with what is running, waiting and left (`store.limits().limit_usage`), read
    /// once here: the workload score leaves out the work it holds.
    pub limits: Vec<LimitUsage>,
}

/// The liveness as `status --json` and `/status` give it: `liveness`, `reasons`, and `health`,
/// the old name of `liveness` with the same value, kept for one release (docs/upgrading.md).
fn liveness_fields<S: Serializer>(j: &Judgement, s: S) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(3))?;
    map.serialize_entry("liveness", &j.status)?;
    map.serialize_entry("reasons", &j.reasons)?;
    map.serialize_entry("health", &j.status)?;
    map.end()
}

/// Registered executors by liveness.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WorkerCounts {
    pub live: i64,
    pub dead: i64,
}

/// How much to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counts {
    /// Every status, a GROUP BY over all history: for an operator's `status`.
    AllHistory,
    /// Open statuses only, through the partial index: a cost that does not grow with history,
    /// for scrapes and probes.
    OpenOnly,
}

/// Reads everything and judges liveness and the workload score. `tick_fault` is the answering
/// process's own last tick that failed on storage, which the ledger may not show.
pub async fn read(
    store: &Store,
    lease_name: &str,
    policy: &LivenessPolicy,
    thresholds: &HealthThresholds,
    counts: Counts,
    worker_ttl: std::time::Duration,
    tick_fault: Option<&TickFault>,
) -> Result<StatusReport, StoreError> {
    let flags = store.flags().get().await?;
    let now = store.db_now().await?;
    let lease = store.lease().get(lease_name).await?.map(|l| {
        let ttl = seconds_between(now, l.expires_at).max(0.0);
        LeaseStatus {
            name: l.name,
            owner: l.owner,
            epoch: l.epoch,
            expires_at: l.expires_at,
            ttl_seconds: ttl,
            live: ttl > 0.0,
        }
    });
    let queue = match counts {
        Counts::AllHistory => store.actions().count_by_status().await?,
        Counts::OpenOnly => store.actions().open_counts().await?,
    };
    let oldest_pending = store.actions().oldest_pending().await?;
    let last_tick = store.ledger().recent_ticks(1).await?.into_iter().next();
    let registered = store.workers().list(worker_ttl).await?;
    let workers: Vec<WorkerSeen> =
        registered.iter().map(|w| WorkerSeen { live: w.live, types: w.types.clone() }).collect();
    let due_types = if health::due_types_matter(&workers) { store.actions().due_types(20).await? } else { Vec::new() };
    let clock = model::now();
    let liveness = health::instance(
        &InstanceFacts {
            flags: &flags,
            lease: lease.as_ref().map(|l| LeaseSeen { live: l.live }),
            last_tick: last_tick.as_ref(),
            workers: &workers,
            due_types: &due_types,
            tick_fault,
            now: clock,
        },
        policy,
    );
    let limits = store.limits().limit_usage().await?;
    let workload = workload(store, &queue, &limits, oldest_pending, clock, thresholds).await?;
    let live = workers.iter().filter(|w| w.live).count() as i64;
    Ok(StatusReport {
        workers: WorkerCounts { live, dead: workers.len() as i64 - live },
        liveness,
        workload,
        flags,
        lease,
        queue,
        oldest_pending,
        last_tick,
        proof_enforced: false,
        limits,
    })
}

/// The workload score from the open counts and two windowed reads (the tick's own snapshot
/// computes the same from its fuller view).
async fn workload(
    store: &Store,
    counts: &BTreeMap<ActionStatus, i64>,
    limits: &[LimitUsage],
    oldest_pending: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    thresholds: &HealthThresholds,
) -> Result<WorkloadHealth, StoreError> {
    let hour_ago = now - chrono::Duration::hours(1);
    // As the snapshot does: work a limit or a window holds back waits by design and is not
    // saturation.
    let open = store.windows().open_now().await?;
    let by_windows = store.windows().held_count(&open, &crate::limits::held_types(limits)).await?;
    let held = crate::limits::held_waiting(limits).saturating_add(by_windows);
    let mut facts = health::WorkloadFacts {
        pending: (counts.get(&ActionStatus::Pending).copied().unwrap_or(0) - held).max(0),
        oldest_pending_age_seconds: oldest_pending.map(|t| seconds_between(t, now).max(0.0)),
        ..health::WorkloadFacts::default()
    };
    for w in store.actions().windowed_counts(hour_ago, now - chrono::Duration::minutes(15)).await? {
        if matches!(w.status, ActionStatus::Retry | ActionStatus::Dlq) {
            facts.failures_1h += w.n_1h;
        }
    }
    facts.failed_ticks_1h = store.ledger().ledger_stats(None, hour_ago, 1).await?.failed_ticks_1h;
    Ok(health::workload(&facts, thresholds))
}
