//! The operator's view of the whole system: health with its reasons, flags, lease, queue
//! counts and the last tick, read from the database (another instance may be the leader).
//!
//! Shared by `orchestrator status` and the HTTP endpoints (`/health`, `/status`, `/metrics`).
//! It reads; it never writes.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::model::{self, ActionStatus, Flags, TickRow, TickStatus};
use crate::snapshot::seconds_between;
use crate::store::{Store, StoreError};

/// A last tick is never called stale sooner than this: a busy tick legitimately runs for
/// `max_tick_seconds` (20 s) and its last attempts a while longer, and with the 5 s default
/// interval three intervals would call such a tick dead while it works.
pub const MIN_STALE_AFTER: Duration = Duration::from_secs(60);

/// Why `proof off` is refused by an instance with `proof_mode: enforced` (CLI, API, page).
pub const PROOF_ENFORCED_REFUSAL: &str = "proof mode is enforced on this instance (proof_mode: enforced, \
     ORCHESTRATOR_PROOF_MODE=enforced or --proof-enforced): it cannot be turned off here";

/// Overall health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy,
    Degraded,
    Unhealthy,
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Unhealthy => "unhealthy",
        })
    }
}

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

/// `status --json`.
#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    pub health: Health,
    pub reasons: Vec<String>,
    pub flags: Flags,
    pub lease: Option<LeaseStatus>,
    pub queue: BTreeMap<ActionStatus, i64>,
    pub last_tick: Option<TickRow>,
    /// This process enforces proof mode (`proof_mode: enforced`): every attempt it runs is in
    /// proof mode whatever `flags.proof_mode` says. Set by the caller, which knows its config.
    pub proof_enforced: bool,
}

/// The thresholds health is judged by.
#[derive(Clone, Debug)]
pub struct HealthPolicy {
    /// A last tick older than this is stale.
    pub stale_after: Duration,
    /// No live lease while not paused is unhealthy (the daemon's `/health`) rather than
    /// degraded (`orchestrator status`, often run while no daemon is up).
    pub lease_required: bool,
}

impl HealthPolicy {
    /// Stale after three intervals (at least 10 s, so that back-to-back ticking is not judged
    /// by a zero interval).
    pub fn from_interval(interval: Duration) -> Self {
        HealthPolicy { stale_after: (interval * 3).max(MIN_STALE_AFTER), lease_required: false }
    }

    /// The policy of `/health`: stale after `http.stale_tick_intervals` intervals (at least
    /// [`MIN_STALE_AFTER`]), and a live lease required unless paused.
    pub fn for_http(interval: Duration, stale_tick_intervals: u32) -> Self {
        HealthPolicy { stale_after: (interval * stale_tick_intervals).max(MIN_STALE_AFTER), lease_required: true }
    }
}

impl Health {
    /// `orchestrator_health_score`: 1 healthy, 0.5 degraded, 0 unhealthy.
    pub fn score(self) -> f64 {
        match self {
            Health::Healthy => 1.0,
            Health::Degraded => 0.5,
            Health::Unhealthy => 0.0,
        }
    }
}

/// Reads everything and judges health.
pub async fn read(store: &Store, lease_name: &str, policy: &HealthPolicy) -> Result<StatusReport, StoreError> {
    let flags = store.flags().await?;
    let now = store.db_now().await?;
    let lease = store.lease(lease_name).await?.map(|l| {
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
    let queue = store.count_by_status().await?;
    let last_tick = store.recent_ticks(1).await?.into_iter().next();
    let (health, reasons) = judge(&flags, lease.as_ref(), &queue, last_tick.as_ref(), policy, model::now());
    Ok(StatusReport { health, reasons, flags, lease, queue, last_tick, proof_enforced: false })
}

/// The health rules, pure so that they can be tested on their own.
pub fn judge(
    flags: &Flags,
    lease: Option<&LeaseStatus>,
    queue: &BTreeMap<ActionStatus, i64>,
    last_tick: Option<&TickRow>,
    policy: &HealthPolicy,
    now: DateTime<Utc>,
) -> (Health, Vec<String>) {
    let mut unhealthy = Vec::new();
    let mut degraded = Vec::new();
    if flags.killed {
        unhealthy.push("killed flag is set".to_string());
    }
    match last_tick {
        None => unhealthy.push("no tick recorded yet".to_string()),
        Some(t) => {
            let age = seconds_between(t.finished_at.unwrap_or(t.started_at), now);
            if age > policy.stale_after.as_secs_f64() {
                unhealthy.push(format!(
                    "last tick #{} was {:.0}s ago (stale after {:.0}s)",
                    t.id,
                    age,
                    policy.stale_after.as_secs_f64()
                ));
            }
            // A row still open is a tick in flight (it reads FAIL until closed); a tick that
            // died open is caught by the staleness rule above.
            match t.status {
                TickStatus::Fail if t.finished_at.is_some() => {
                    unhealthy.push(format!("last tick #{} failed: {}", t.id, t.notes.as_deref().unwrap_or("")))
                }
                TickStatus::Partial => degraded.push(format!("last tick #{} had failures", t.id)),
                _ => {}
            }
        }
    }
    if flags.paused {
        degraded.push("paused flag is set".to_string());
    }
    if !lease.is_some_and(|l| l.live) && !flags.paused && !flags.killed {
        let reason = "no instance holds a live lease".to_string();
        if policy.lease_required { unhealthy.push(reason) } else { degraded.push(reason) }
    }
    let dlq = queue.get(&ActionStatus::Dlq).copied().unwrap_or(0);
    if dlq > 0 {
        degraded.push(format!("{dlq} action(s) in DLQ"));
    }
    let health = if !unhealthy.is_empty() {
        Health::Unhealthy
    } else if !degraded.is_empty() {
        Health::Degraded
    } else {
        Health::Healthy
    };
    unhealthy.extend(degraded);
    (health, unhealthy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(status: TickStatus, age_s: i64) -> TickRow {
        let t = model::now() - chrono::Duration::seconds(age_s);
        TickRow {
            id: 7,
            started_at: t,
            finished_at: Some(t),
            status,
            owner: "o".into(),
            epoch: 1,
            actions_attempted: 0,
            actions_succeeded: 0,
            notes: None,
        }
    }

    fn lease(live: bool) -> LeaseStatus {
        LeaseStatus {
            name: "orchestrator".into(),
            owner: "o".into(),
            epoch: 1,
            expires_at: model::now(),
            ttl_seconds: if live { 10.0 } else { 0.0 },
            live,
        }
    }

    const OK_FLAGS: Flags = Flags { paused: false, killed: false, proof_mode: true };

    #[test]
    fn health_rules() {
        let p = HealthPolicy::from_interval(Duration::from_secs(30));
        let q = BTreeMap::new();
        let now = model::now();
        let fresh = tick(TickStatus::Success, 5);
        assert_eq!(judge(&OK_FLAGS, Some(&lease(true)), &q, Some(&fresh), &p, now).0, Health::Healthy);
        let mut in_flight = tick(TickStatus::Fail, 1);
        in_flight.finished_at = None;
        assert_eq!(judge(&OK_FLAGS, Some(&lease(true)), &q, Some(&in_flight), &p, now).0, Health::Healthy);
        assert_eq!(
            judge(&OK_FLAGS, Some(&lease(true)), &q, Some(&tick(TickStatus::Fail, 1)), &p, now).0,
            Health::Unhealthy
        );
        let (h, r) = judge(&OK_FLAGS, Some(&lease(true)), &q, Some(&tick(TickStatus::Success, 200)), &p, now);
        assert_eq!(h, Health::Unhealthy);
        assert!(r[0].contains("stale after 90s"), "{r:?}");
        assert_eq!(judge(&OK_FLAGS, Some(&lease(true)), &q, None, &p, now).0, Health::Unhealthy);
        let killed = Flags { killed: true, ..OK_FLAGS };
        assert_eq!(judge(&killed, None, &q, Some(&fresh), &p, now).0, Health::Unhealthy);
        let paused = Flags { paused: true, ..OK_FLAGS };
        assert_eq!(judge(&paused, None, &q, Some(&fresh), &p, now).0, Health::Degraded);
        let dlq: BTreeMap<_, _> = [(ActionStatus::Dlq, 2)].into_iter().collect();
        let (h, r) = judge(&OK_FLAGS, Some(&lease(true)), &dlq, Some(&fresh), &p, now);
        assert_eq!(h, Health::Degraded);
        assert_eq!(r, vec!["2 action(s) in DLQ".to_string()]);
        let http = HealthPolicy::for_http(Duration::from_secs(30), 2);
        assert_eq!(http.stale_after, Duration::from_secs(60));
        let (h, r) = judge(&OK_FLAGS, Some(&lease(false)), &q, Some(&fresh), &http, now);
        assert_eq!((h, r[0].as_str()), (Health::Unhealthy, "no instance holds a live lease"));
        assert_eq!(judge(&paused, None, &q, Some(&fresh), &http, now).0, Health::Degraded, "paused needs no lease");
    }
}
