//! Health, in two dimensions that must not be confused, each under its own name:
//!
//! - the **workload score** ([`WorkloadHealth`]): the seed's 0-100 score of queue pressure and
//!   failures, `healthy` / `degraded` / `critical`. The rules read it as `snap.health`, and
//!   `/metrics` exports it as `orchestrator_health_score`. It describes the work, not the
//!   service: a low score never makes `/health` answer 503.
//! - the service's **liveness** ([`Liveness`]): is the last tick fresh, does an instance hold
//!   a live lease, is the database reachable, is the kill flag set. `healthy` / `degraded` /
//!   `unhealthy`; `/health`, `orchestrator status` (and its exit code 4) and systemd read it.
//!
//! Both are pure functions of what the store read (and, for liveness, of the process's own last
//! tick fault, [`TickFault`]); nothing here touches the database.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::HealthThresholds;
use crate::model::{Flags, TickRow, TickStatus};
use crate::snapshot::{LedgerView, QueueView, RecentView, seconds_between};

/// The workload score's band.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadStatus {
    Healthy,
    Degraded,
    Critical,
}

impl WorkloadStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadStatus::Healthy => "healthy",
            WorkloadStatus::Degraded => "degraded",
            WorkloadStatus::Critical => "critical",
        }
    }
}

impl std::fmt::Display for WorkloadStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The workload score as the rules see it (`snap.health`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkloadHealth {
    /// 0-100.
    pub score: i64,
    pub status: WorkloadStatus,
    /// What took points off, e.g. "queue saturated (-20)".
    #[serde(default)]
    pub reasons: Vec<String>,
}

impl Default for WorkloadHealth {
    fn default() -> Self {
        WorkloadHealth { score: 100, status: WorkloadStatus::Healthy, reasons: Vec::new() }
    }
}

/// The workload score: 100, less 20 for a saturated queue, 15 for an old pending action, 10 for
/// failures in the last hour and 5 per failed tick in the last hour; never below 0.
pub fn workload(queue: &QueueView, recent: &RecentView, ledger: &LedgerView, t: &HealthThresholds) -> WorkloadHealth {
    let mut score: i64 = 100;
    let mut reasons = Vec::new();
    if queue.pending > i64::try_from(t.saturated_pending).unwrap_or(i64::MAX) {
        score -= 20;
        reasons.push(format!("queue saturated: {} pending > {} (-20)", queue.pending, t.saturated_pending));
    }
    if queue.oldest_pending_age_seconds.is_some_and(|a| a > t.old_pending.as_secs_f64()) {
        score -= 15;
        reasons.push(format!("oldest pending older than {}s (-15)", t.old_pending.as_secs_f64()));
    }
    if recent.failures_1h > 0 {
        score -= 10;
        reasons.push(format!("{} failure(s) in the last hour (-10)", recent.failures_1h));
    }
    if ledger.failed_ticks_1h > 0 {
        let cut = ledger.failed_ticks_1h.saturating_mul(5).min(100);
        score -= cut;
        reasons.push(format!("{} failed tick(s) in the last hour (-{cut})", ledger.failed_ticks_1h));
    }
    let score = score.max(0);
    let status = if score >= t.healthy_at as i64 {
        WorkloadStatus::Healthy
    } else if score >= t.degraded_at as i64 {
        WorkloadStatus::Degraded
    } else {
        WorkloadStatus::Critical
    };
    WorkloadHealth { score, status, reasons }
}

/// The service's liveness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    Healthy,
    Degraded,
    Unhealthy,
}

impl std::fmt::Display for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Liveness::Healthy => "healthy",
            Liveness::Degraded => "degraded",
            Liveness::Unhealthy => "unhealthy",
        })
    }
}

/// The default age of the last tick after which liveness is degraded, and unhealthy.
pub const STALE_DEGRADED: Duration = Duration::from_secs(60);
pub const STALE_UNHEALTHY: Duration = Duration::from_secs(300);
/// With a longer tick interval the thresholds stretch to this many intervals.
const STALE_DEGRADED_INTERVALS: u32 = 2;
const STALE_UNHEALTHY_INTERVALS: u32 = 10;

/// The staleness thresholds (`liveness:` in the config).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StaleThresholds {
    pub degraded: Duration,
    pub unhealthy: Duration,
}

impl Default for StaleThresholds {
    fn default() -> Self {
        StaleThresholds { degraded: STALE_DEGRADED, unhealthy: STALE_UNHEALTHY }
    }
}

/// What liveness is judged by.
#[derive(Clone, Debug)]
pub struct LivenessPolicy {
    /// A last tick older than this makes liveness degraded.
    pub stale_degraded: Duration,
    /// A last tick older than this makes liveness unhealthy.
    pub stale_unhealthy: Duration,
    /// No live lease while not paused is unhealthy (the daemon's `/health`) rather than
    /// degraded (`orchestrator status`, often run while no daemon is up).
    pub lease_required: bool,
    /// A failed tick's reason quotes its ledger notes (`orchestrator status`, `/status`); the
    /// public `/health` says only that it failed, since notes can quote errors and rule output.
    pub quote_notes: bool,
}

impl LivenessPolicy {
    /// The thresholds, stretched to `interval` when ticks are further apart than they allow
    /// (2 and 10 intervals).
    pub fn new(thresholds: StaleThresholds, interval: Duration, lease_required: bool) -> Self {
        LivenessPolicy {
            stale_degraded: thresholds.degraded.max(interval * STALE_DEGRADED_INTERVALS),
            stale_unhealthy: thresholds.unhealthy.max(interval * STALE_UNHEALTHY_INTERVALS),
            lease_required,
            quote_notes: true,
        }
    }
}

/// The lease as liveness needs it.
#[derive(Clone, Copy, Debug)]
pub struct LeaseSeen {
    pub live: bool,
}

/// Judges liveness. Returns the verdict and every reason, the worst first.
pub fn liveness(
    flags: &Flags,
    lease: Option<LeaseSeen>,
    dlq: i64,
    last_tick: Option<&TickRow>,
    policy: &LivenessPolicy,
    now: DateTime<Utc>,
) -> (Liveness, Vec<String>) {
    let mut unhealthy = Vec::new();
    let mut degraded = Vec::new();
    if flags.killed {
        unhealthy.push("killed flag is set".to_string());
    }
    match last_tick {
        None => unhealthy.push("no tick recorded yet".to_string()),
        Some(t) => {
            let age = seconds_between(t.finished_at.unwrap_or(t.started_at), now);
            if age > policy.stale_unhealthy.as_secs_f64() {
                unhealthy.push(format!(
                    "last tick #{} was {age:.0}s ago (unhealthy after {:.0}s)",
                    t.id,
                    policy.stale_unhealthy.as_secs_f64()
                ));
            } else if age > policy.stale_degraded.as_secs_f64() {
                degraded.push(format!(
                    "last tick #{} was {age:.0}s ago (degraded after {:.0}s)",
                    t.id,
                    policy.stale_degraded.as_secs_f64()
                ));
            }
            // A row still open is a tick in flight (it reads FAIL until closed); a tick that
            // died open is caught by the staleness rule above.
            match t.status {
                TickStatus::Fail if t.finished_at.is_some() => unhealthy.push(if policy.quote_notes {
                    format!("last tick #{} failed: {}", t.id, t.notes.as_deref().unwrap_or(""))
                } else {
                    format!("last tick #{} failed (its notes are in /status and the ledger)", t.id)
                }),
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
    if dlq > 0 {
        degraded.push(format!("{dlq} action(s) in DLQ"));
    }
    let verdict = if !unhealthy.is_empty() {
        Liveness::Unhealthy
    } else if !degraded.is_empty() {
        Liveness::Degraded
    } else {
        Liveness::Healthy
    };
    unhealthy.extend(degraded);
    (verdict, unhealthy)
}

/// A tick of this process that failed on storage. It could not write (a full disk, say), so
/// the ledger, which [`liveness`] reads, may not show it: the process that ran it keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct TickFault {
    pub at: DateTime<Utc>,
    /// A few words that quote nothing from the database (`disk full`, `I/O error`, ...).
    pub kind: &'static str,
    /// The whole error, quoted only where notes may be (`/status`, behind the token).
    pub error: String,
}

/// Liveness with this process's own last tick fault, if its last tick failed: degraded at
/// least, at once, with that reason (a ledger that cannot be written would keep saying
/// healthy until the last recorded tick grows stale).
pub fn with_tick_fault(
    (verdict, mut reasons): (Liveness, Vec<String>),
    fault: Option<&TickFault>,
    quote: bool,
) -> (Liveness, Vec<String>) {
    let Some(f) = fault else { return (verdict, reasons) };
    let mut reason = format!("this instance's last tick failed on storage ({}) at {}", f.kind, f.at.to_rfc3339());
    if quote {
        reason = format!("{reason}: {}", f.error);
    }
    match verdict {
        Liveness::Unhealthy => {
            reasons.push(reason);
            (verdict, reasons)
        }
        _ => {
            reasons.insert(0, reason);
            (Liveness::Degraded, reasons)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RulesConfig;
    use crate::model;

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

    const LIVE: Option<LeaseSeen> = Some(LeaseSeen { live: true });
    const OK_FLAGS: Flags = Flags { paused: false, killed: false, proof_mode: true };

    #[test]
    fn liveness_rules() {
        let p = LivenessPolicy::new(StaleThresholds::default(), Duration::from_secs(30), false);
        let now = model::now();
        let fresh = tick(TickStatus::Success, 5);
        assert_eq!(liveness(&OK_FLAGS, LIVE, 0, Some(&fresh), &p, now).0, Liveness::Healthy);
        let mut in_flight = tick(TickStatus::Fail, 1);
        in_flight.finished_at = None;
        assert_eq!(liveness(&OK_FLAGS, LIVE, 0, Some(&in_flight), &p, now).0, Liveness::Healthy);
        assert_eq!(liveness(&OK_FLAGS, LIVE, 0, Some(&tick(TickStatus::Fail, 1)), &p, now).0, Liveness::Unhealthy);
        // Two thresholds: 60 s degraded, 300 s unhealthy, and the reason names the age.
        let (h, r) = liveness(&OK_FLAGS, LIVE, 0, Some(&tick(TickStatus::Success, 90)), &p, now);
        assert_eq!(h, Liveness::Degraded);
        assert!(r[0].contains("was 90s ago (degraded after 60s)"), "{r:?}");
        let (h, r) = liveness(&OK_FLAGS, LIVE, 0, Some(&tick(TickStatus::Success, 400)), &p, now);
        assert_eq!(h, Liveness::Unhealthy);
        assert!(r[0].contains("was 400s ago (unhealthy after 300s)"), "{r:?}");
        assert_eq!(liveness(&OK_FLAGS, LIVE, 0, None, &p, now).0, Liveness::Unhealthy);
        let killed = Flags { killed: true, ..OK_FLAGS };
        assert_eq!(liveness(&killed, None, 0, Some(&fresh), &p, now).0, Liveness::Unhealthy);
        let paused = Flags { paused: true, ..OK_FLAGS };
        assert_eq!(liveness(&paused, None, 0, Some(&fresh), &p, now).0, Liveness::Degraded);
        let (h, r) = liveness(&OK_FLAGS, LIVE, 2, Some(&fresh), &p, now);
        assert_eq!(h, Liveness::Degraded);
        assert_eq!(r, vec!["2 action(s) in DLQ".to_string()]);
        let http = LivenessPolicy::new(StaleThresholds::default(), Duration::from_secs(30), true);
        let (h, r) = liveness(&OK_FLAGS, Some(LeaseSeen { live: false }), 0, Some(&fresh), &http, now);
        assert_eq!((h, r[0].as_str()), (Liveness::Unhealthy, "no instance holds a live lease"));
        assert_eq!(liveness(&paused, None, 0, Some(&fresh), &http, now).0, Liveness::Degraded, "paused needs no lease");
    }

    #[test]
    fn a_tick_fault_degrades_at_once_and_quotes_only_where_asked() {
        let fault =
            TickFault { at: model::now(), kind: "disk full", error: "(code: 13) database or disk is full".into() };
        let (h, r) = with_tick_fault((Liveness::Healthy, Vec::new()), Some(&fault), false);
        assert_eq!(h, Liveness::Degraded);
        assert!(r[0].starts_with("this instance's last tick failed on storage (disk full) at "), "{r:?}");
        assert!(!r[0].contains("code: 13"), "the public reason quotes nothing: {r:?}");
        let (_, r) = with_tick_fault((Liveness::Degraded, vec!["paused flag is set".into()]), Some(&fault), true);
        assert!(r[0].ends_with(": (code: 13) database or disk is full") && r.len() == 2, "{r:?}");
        let (h, r) = with_tick_fault((Liveness::Unhealthy, vec!["killed flag is set".into()]), Some(&fault), false);
        assert_eq!((h, r[0].as_str()), (Liveness::Unhealthy, "killed flag is set"));
        assert_eq!(with_tick_fault((Liveness::Healthy, Vec::new()), None, true), (Liveness::Healthy, Vec::new()));
    }

    #[test]
    fn thresholds_stretch_with_a_long_interval() {
        let p = LivenessPolicy::new(StaleThresholds::default(), Duration::from_secs(120), true);
        assert_eq!((p.stale_degraded, p.stale_unhealthy), (Duration::from_secs(240), Duration::from_secs(1200)));
        let p = LivenessPolicy::new(StaleThresholds::default(), Duration::from_secs(1), true);
        assert_eq!((p.stale_degraded, p.stale_unhealthy), (STALE_DEGRADED, STALE_UNHEALTHY));
    }

    #[test]
    fn a_low_workload_score_is_not_a_liveness_failure() {
        let t = RulesConfig::default().health;
        let queue = QueueView { pending: 10_000, oldest_pending_age_seconds: Some(99_999.0), ..Default::default() };
        let recent = RecentView { failures_1h: 50, ..Default::default() };
        let ledger = LedgerView { failed_ticks_1h: 20, ..Default::default() };
        assert_eq!(workload(&queue, &recent, &ledger, &t).status, WorkloadStatus::Critical);
        // Liveness takes no workload input at all: the same service state is healthy.
        let p = LivenessPolicy::new(StaleThresholds::default(), Duration::from_secs(30), true);
        let fresh = tick(TickStatus::Success, 1);
        assert_eq!(liveness(&OK_FLAGS, LIVE, 0, Some(&fresh), &p, model::now()).0, Liveness::Healthy);
    }
}
