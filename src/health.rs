//! Health, in two dimensions that must not be confused, each under its own name; every
//! judgement of either is made here and nowhere else:
//!
//! - the **workload score** ([`WorkloadHealth`], [`workload`]): the seed's 0-100 score of queue
//!   pressure and failures, `healthy` / `degraded` / `critical`. The rules read it as
//!   `snap.health`, and `/metrics` exports it as `orchestrator_health_score`. It describes the
//!   work, not the service: a low score, the DLQ or failed attempts never make `/health` or
//!   `status` liveness anything but what the process is.
//! - the service's **liveness** ([`Liveness`], a [`Judgement`] with its reasons): can this
//!   process do its job. [`instance`] judges an instance (`run`, `serve`, `status`): the flags,
//!   the last tick's freshness and outcome, the lease, live workers for the types with due
//!   work, the process's own tick fault; [`database_unreachable`] when it cannot read them;
//!   [`registration`] judges a worker; [`readiness`] is `/health/ready`'s. `/health`,
//!   `orchestrator status` (and its exit code 4) and systemd read them.
//!
//! Every function here takes plain facts that its caller gathered (`status::read`, the HTTP
//! handlers, the worker's registration); nothing here touches the database or knows HTTP.
//! The thresholds' config keys are declared here too ([`WORKLOAD_KEYS`], [`LIVENESS_KEYS`]),
//! and `config` assembles them.
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{Flags, TickRow, TickStatus, seconds_between};
use crate::settings::key::KeyDefault::Value;
use crate::settings::key::{Key, key};

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

/// Thresholds of the workload score (`rules.health.*` in the config: [`WORKLOAD_KEYS`]).
#[derive(Clone, Debug, PartialEq)]
pub struct HealthThresholds {
    /// The queue is saturated above this many pending actions (-20).
    pub saturated_pending: u64,
    /// The oldest pending action is too old past this (-15).
    pub old_pending: Duration,
    /// `healthy` at this score or more.
    pub healthy_at: u64,
    /// `degraded` at this score or more (below `healthy_at`); `critical` below.
    pub degraded_at: u64,
}

impl Default for HealthThresholds {
    /// The defaults of [`WORKLOAD_KEYS`] (the config's tests hold them equal).
    fn default() -> Self {
        HealthThresholds {
            saturated_pending: 50,
            old_pending: Duration::from_secs(1800),
            healthy_at: 80,
            degraded_at: 50,
        }
    }
}

/// What the workload score is judged from, as plain numbers (the snapshot and `status` read
/// them).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkloadFacts {
    /// Pending actions (those held by a limit left out).
    pub pending: i64,
    pub oldest_pending_age_seconds: Option<f64>,
    /// Failed attempts in the last hour.
    pub failures_1h: i64,
    /// Ticks that ended FAIL in the last hour.
    pub failed_ticks_1h: i64,
}

/// The `rules.health.*` keys, in the order they apply (`degraded_at` is checked against
/// `healthy_at`).
pub const WORKLOAD_KEYS: &[Key<HealthThresholds>] = &[
    key!("rules.health.saturated_pending": u64 = Value("50"),
        "The workload score loses 20 above this many pending actions",
        |t, v, at| t.saturated_pending = at.range(v, 0, u64::from(u32::MAX))?),
    key!("rules.health.old_pending_seconds": f64 = Value("1800"),
        "The workload score loses 15 when the oldest pending action is older than this",
        |t, v, at| t.old_pending = at.seconds(v, true)?),
    key!("rules.health.healthy_at": u64 = Value("80"),
        "The workload is `healthy` at this score or more",
        |t, v, at| t.healthy_at = at.range(v, 1, 100)?),
    key!("rules.health.degraded_at": u64 = Value("50"),
    "The workload is `degraded` at this score or more (below: `critical`)",
    |t, v, at| {
        let degraded_at = at.range(v, 0, 100)?;
        let healthy_at = t.healthy_at;
        at.check(degraded_at <= healthy_at, || {
            format!(
                "rules.health.degraded_at ({degraded_at}) must not be above rules.health.healthy_at ({healthy_at})"
            )
        })?;
        t.degraded_at = degraded_at;
    }),
];

/// The workload score of `facts`: 100, less 20 for a saturated queue, 15 for an old pending
/// action, 10 for failures in the last hour and 5 per failed tick in the last hour; never
/// below 0.
pub fn workload(facts: &WorkloadFacts, t: &HealthThresholds) -> WorkloadHealth {
    let WorkloadFacts { pending, oldest_pending_age_seconds, failures_1h, failed_ticks_1h } = facts.clone();
    let mut score: i64 = 100;
    let mut reasons = Vec::new();
    if pending > i64::try_from(t.saturated_pending).unwrap_or(i64::MAX) {
        score -= 20;
        reasons.push(format!("queue saturated: {pending} pending > {} (-20)", t.saturated_pending));
    }
    if oldest_pending_age_seconds.is_some_and(|a| a > t.old_pending.as_secs_f64()) {
        score -= 15;
        reasons.push(format!("oldest pending older than {}s (-15)", t.old_pending.as_secs_f64()));
    }
    if failures_1h > 0 {
        score -= 10;
        reasons.push(format!("{failures_1h} failure(s) in the last hour (-10)"));
    }
    if failed_ticks_1h > 0 {
        let cut = failed_ticks_1h.saturating_mul(5).min(100);
        score -= cut;
        reasons.push(format!("{failed_ticks_1h} failed tick(s) in the last hour (-{cut})"));
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

/// A liveness verdict with every reason for it, the worst first: what `/health` (an
/// instance's and a worker's), `status` and `/status` show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judgement {
    pub status: Liveness,
    pub reasons: Vec<String>,
}

/// The reasons found, by weight, in the order found; [`Findings::judge`] gives the verdict.
#[derive(Default)]
struct Findings {
    unhealthy: Vec<String>,
    degraded: Vec<String>,
}

impl Findings {
    fn unhealthy(&mut self, reason: impl Into<String>) {
        self.unhealthy.push(reason.into());
    }

    fn degraded(&mut self, reason: impl Into<String>) {
        self.degraded.push(reason.into());
    }

    fn judge(self) -> Judgement {
        let status = if !self.unhealthy.is_empty() {
            Liveness::Unhealthy
        } else if !self.degraded.is_empty() {
            Liveness::Degraded
        } else {
            Liveness::Healthy
        };
        let mut reasons = self.unhealthy;
        reasons.extend(self.degraded);
        Judgement { status, reasons }
    }
}

/// The reason an instance whose database does not answer gives.
const DATABASE_UNREACHABLE: &str = "database unreachable";

/// The default age of the last tick after which liveness is degraded, and unhealthy.
pub const STALE_DEGRADED: Duration = Duration::from_secs(60);
pub const STALE_UNHEALTHY: Duration = Duration::from_secs(300);
/// With a longer tick interval the thresholds stretch to this many intervals.
const STALE_DEGRADED_INTERVALS: u32 = 2;
const STALE_UNHEALTHY_INTERVALS: u32 = 10;

/// The staleness thresholds (`liveness:` in the config: [`LIVENESS_KEYS`]).
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

/// The `liveness.*` keys (`stale_unhealthy_seconds` is checked against the degraded one).
pub const LIVENESS_KEYS: &[Key<StaleThresholds>] = &[
    key!("liveness.stale_degraded_seconds": f64 = Value("60"),
        "Liveness is degraded past this last-tick age (or 2 tick intervals, if longer)",
        |t, v, at| t.degraded = at.seconds(v, false)?),
    key!("liveness.stale_unhealthy_seconds": f64 = Value("300"),
    "Liveness is unhealthy (`/health` 503) past this last-tick age (or 10 intervals)",
    |t, v, at| {
        let unhealthy = at.seconds(v, false)?;
        at.check(unhealthy >= t.degraded, || {
            "liveness.stale_unhealthy_seconds must be at least liveness.stale_degraded_seconds".into()
        })?;
        t.unhealthy = unhealthy;
    }),
];

/// How an instance's liveness is judged.
#[derive(Clone, Debug)]
pub struct LivenessPolicy {
    /// A last tick older than this makes liveness degraded.
    pub stale_degraded: Duration,
    /// A last tick older than this makes liveness unhealthy.
    pub stale_unhealthy: Duration,
    /// No live lease while not paused is unhealthy (the daemon's `/health`) rather than
    /// degraded (`orchestrator status`, often run while no daemon is up).
    pub lease_required: bool,
    /// A failed tick's reason quotes its ledger notes, and a tick fault its error (`orchestrator
    /// status`, `/status`); the public `/health` says only that it failed, since notes can quote
    /// errors and rule output.
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

/// A registered executor as liveness needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerSeen {
    /// Its heartbeat is within `workers.ttl_seconds`.
    pub live: bool,
    /// The types it serves; empty: every type.
    pub types: Vec<String>,
}

/// A tick of this process that failed on storage. It could not write (a full disk, say), so
/// the ledger, which [`instance`] reads, may not show it: the process that ran it keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct TickFault {
    pub at: DateTime<Utc>,
    /// A few words that quote nothing from the database (`disk full`, `I/O error`, ...).
    pub kind: &'static str,
    /// The whole error, quoted only where notes may be (`/status`, behind the token).
    pub error: String,
}

/// What an instance's liveness is judged from: facts about the process and the service it is
/// part of, gathered by the caller (`status::read`). No workload fact (the DLQ, failed
/// attempts, a backlog) is among them: those are the workload score's.
#[derive(Clone, Debug)]
pub struct InstanceFacts<'a> {
    pub flags: &'a Flags,
    /// The lease row, if there is one.
    pub lease: Option<LeaseSeen>,
    /// The last tick in the ledger (a row still open is a tick in flight).
    pub last_tick: Option<&'a TickRow>,
    /// Every registered executor, live and dead.
    pub workers: &'a [WorkerSeen],
    /// The types with due work; read only when [`due_types_matter`] says so, else empty.
    pub due_types: &'a [String],
    /// This process's own last tick, if it failed on storage (only a process that ticks has
    /// one).
    pub tick_fault: Option<&'a TickFault>,
    pub now: DateTime<Utc>,
}

/// Whether the types with due work take part in the judgement: only once some executor has
/// registered (a `run-once` from cron deregisters when it ends, and is not a missing worker),
/// and only while no live one serves every type. The caller reads them only then.
pub fn due_types_matter(workers: &[WorkerSeen]) -> bool {
    !workers.is_empty() && !workers.iter().any(|w| w.live && w.types.is_empty())
}

/// Judges an instance's liveness: the kill and pause flags, the freshness and outcome of the
/// last tick (and this process's own tick fault), the lease, and live workers for the types
/// with due work.
pub fn instance(facts: &InstanceFacts<'_>, policy: &LivenessPolicy) -> Judgement {
    let mut found = Findings::default();
    let flags = facts.flags;
    if flags.killed {
        found.unhealthy("killed flag is set");
    }
    if let Some(fault) = facts.tick_fault {
        found.degraded(tick_fault(fault, policy.quote_notes));
    }
    last_tick(&mut found, facts.last_tick, policy, facts.now);
    if flags.paused {
        found.degraded("paused flag is set");
    }
    if !facts.lease.is_some_and(|l| l.live) && !flags.paused && !flags.killed {
        let reason = "no instance holds a live lease";
        if policy.lease_required { found.unhealthy(reason) } else { found.degraded(reason) }
    }
    let unserved = unserved_types(facts.workers, facts.due_types);
    if !unserved.is_empty() {
        found.degraded(format!("due {} work waits and no live worker serves it", unserved.join(", ")));
    }
    found.judge()
}

/// An instance that cannot read its database cannot judge anything else, nor work.
pub fn database_unreachable() -> Judgement {
    Judgement { status: Liveness::Unhealthy, reasons: vec![DATABASE_UNREACHABLE.to_string()] }
}

/// The last tick: none, stale, or finished `FAIL`. A row still open is a tick in flight (it
/// reads `FAIL` until closed); a tick that died open is caught by its age. A `PARTIAL` tick
/// ran, and some attempts failed: that is the workload's, not liveness's.
fn last_tick(found: &mut Findings, last: Option<&TickRow>, policy: &LivenessPolicy, now: DateTime<Utc>) {
    let Some(t) = last else {
        found.unhealthy("no tick recorded yet");
        return;
    };
    let age = seconds_between(t.finished_at.unwrap_or(t.started_at), now);
    if age > policy.stale_unhealthy.as_secs_f64() {
        found.unhealthy(format!(
            "last tick #{} was {age:.0}s ago (unhealthy after {:.0}s)",
            t.id,
            policy.stale_unhealthy.as_secs_f64()
        ));
    } else if age > policy.stale_degraded.as_secs_f64() {
        found.degraded(format!(
            "last tick #{} was {age:.0}s ago (degraded after {:.0}s)",
            t.id,
            policy.stale_degraded.as_secs_f64()
        ));
    }
    if t.status == TickStatus::Fail && t.finished_at.is_some() {
        found.unhealthy(if policy.quote_notes {
            format!("last tick #{} failed: {}", t.id, t.notes.as_deref().unwrap_or(""))
        } else {
            format!("last tick #{} failed (its notes are in /status and the ledger)", t.id)
        });
    }
}

/// This process's own last tick fault: degraded at once, since a ledger that cannot be written
/// would keep saying healthy until the last recorded tick grows stale.
fn tick_fault(f: &TickFault, quote: bool) -> String {
    let reason = format!("this instance's last tick failed on storage ({}) at {}", f.kind, f.at.to_rfc3339());
    if quote { format!("{reason}: {}", f.error) } else { reason }
}

/// The due types that no live worker serves (empty unless [`due_types_matter`]).
fn unserved_types(workers: &[WorkerSeen], due: &[String]) -> Vec<String> {
    if !due_types_matter(workers) {
        return Vec::new();
    }
    let live: Vec<&WorkerSeen> = workers.iter().filter(|w| w.live).collect();
    due.iter().filter(|t| !live.iter().any(|w| w.types.contains(t))).cloned().collect()
}

/// A worker's registration, as the worker itself last confirmed it.
#[derive(Clone, Debug)]
pub struct RegistrationSeen {
    /// The id registered now, if any.
    pub id: Option<String>,
    /// How long ago the registration was last written or renewed (`None`: not confirmed).
    pub since_renewed: Option<Duration>,
    /// `workers.ttl_seconds`: past it, everyone else sees the registration as dead.
    pub ttl: Duration,
}

/// Judges a worker's liveness: healthy while it is registered and its registration was
/// written or renewed within the TTL. A heartbeat that keeps failing (the database gone or not
/// answering, its write lock held) makes it unhealthy one TTL after the last renewal, when the
/// row has lapsed for everyone else too.
pub fn registration(seen: &RegistrationSeen) -> Judgement {
    let mut found = Findings::default();
    match (&seen.id, seen.since_renewed) {
        (None, _) => found.unhealthy("not registered: heartbeat lapsed or database unreachable"),
        (Some(_), Some(age)) if age < seen.ttl => {}
        (Some(_), Some(age)) => found.unhealthy(format!(
            "registration not renewed for {:.1}s (workers.ttl_seconds: {}): cannot renew the heartbeat or reach \
             the database",
            age.as_secs_f64(),
            seen.ttl.as_secs_f64()
        )),
        (Some(_), None) => found.unhealthy("registration not confirmed yet"),
    }
    found.judge()
}

/// Judges readiness (`/health/ready`): the database answers and every migration is applied.
/// `pending_migrations` is `None` when they could not be read. `Err` says why not.
pub fn readiness(database_reachable: bool, pending_migrations: Option<usize>) -> Result<(), String> {
    match (database_reachable, pending_migrations) {
        (false, _) => Err(DATABASE_UNREACHABLE.to_string()),
        (true, None) => Err("cannot read the applied migrations".to_string()),
        (true, Some(0)) => Ok(()),
        (true, Some(n)) => Err(format!("{n} migration(s) not applied (run `orchestrator migrate`)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    /// An instance's facts: these flags, lease and last tick, no worker registered, no fault.
    fn facts<'a>(flags: &'a Flags, lease: Option<LeaseSeen>, last_tick: Option<&'a TickRow>) -> InstanceFacts<'a> {
        InstanceFacts { flags, lease, last_tick, workers: &[], due_types: &[], tick_fault: None, now: model::now() }
    }

    fn policy(lease_required: bool) -> LivenessPolicy {
        LivenessPolicy::new(StaleThresholds::default(), Duration::from_secs(30), lease_required)
    }

    fn judged(status: Liveness, reasons: &[&str]) -> Judgement {
        Judgement { status, reasons: reasons.iter().map(|r| r.to_string()).collect() }
    }

    #[test]
    fn the_last_tick_is_judged_by_age_and_outcome() {
        let p = policy(false);
        let fresh = tick(TickStatus::Success, 5);
        assert_eq!(instance(&facts(&OK_FLAGS, LIVE, Some(&fresh)), &p), judged(Liveness::Healthy, &[]));
        let mut in_flight = tick(TickStatus::Fail, 1);
        in_flight.finished_at = None;
        assert_eq!(instance(&facts(&OK_FLAGS, LIVE, Some(&in_flight)), &p).status, Liveness::Healthy, "in flight");
        let mut failed = tick(TickStatus::Fail, 1);
        failed.notes = Some("rules: boom".into());
        let j = instance(&facts(&OK_FLAGS, LIVE, Some(&failed)), &p);
        assert_eq!(j, judged(Liveness::Unhealthy, &["last tick #7 failed: rules: boom"]));
        let quiet = LivenessPolicy { quote_notes: false, ..policy(true) };
        let j = instance(&facts(&OK_FLAGS, LIVE, Some(&failed)), &quiet);
        assert_eq!(j.reasons, ["last tick #7 failed (its notes are in /status and the ledger)"], "no notes quoted");
        // Two thresholds: 60 s degraded, 300 s unhealthy, and the reason names the age.
        let j = instance(&facts(&OK_FLAGS, LIVE, Some(&tick(TickStatus::Success, 90))), &p);
        assert_eq!(j, judged(Liveness::Degraded, &["last tick #7 was 90s ago (degraded after 60s)"]));
        let j = instance(&facts(&OK_FLAGS, LIVE, Some(&tick(TickStatus::Success, 400))), &p);
        assert_eq!(j, judged(Liveness::Unhealthy, &["last tick #7 was 400s ago (unhealthy after 300s)"]));
        let j = instance(&facts(&OK_FLAGS, LIVE, None), &p);
        assert_eq!(j, judged(Liveness::Unhealthy, &["no tick recorded yet"]));
    }

    #[test]
    fn a_partial_tick_is_the_workloads_not_liveness() {
        // Some attempts failed, the tick ran: the process works. The failures count in the
        // workload score (`failures_1h`), not here.
        let partial = tick(TickStatus::Partial, 5);
        assert_eq!(instance(&facts(&OK_FLAGS, LIVE, Some(&partial)), &policy(true)), judged(Liveness::Healthy, &[]));
    }

    #[test]
    fn flags_and_the_lease() {
        let fresh = tick(TickStatus::Success, 5);
        let killed = Flags { killed: true, ..OK_FLAGS };
        let j = instance(&facts(&killed, None, Some(&fresh)), &policy(true));
        assert_eq!(j, judged(Liveness::Unhealthy, &["killed flag is set"]), "killed needs no lease");
        let paused = Flags { paused: true, ..OK_FLAGS };
        for p in [policy(false), policy(true)] {
            let j = instance(&facts(&paused, None, Some(&fresh)), &p);
            assert_eq!(j, judged(Liveness::Degraded, &["paused flag is set"]), "paused needs no lease");
        }
        let gone = Some(LeaseSeen { live: false });
        let j = instance(&facts(&OK_FLAGS, gone, Some(&fresh)), &policy(true));
        assert_eq!(j, judged(Liveness::Unhealthy, &["no instance holds a live lease"]), "/health");
        let j = instance(&facts(&OK_FLAGS, None, Some(&fresh)), &policy(false));
        assert_eq!(j, judged(Liveness::Degraded, &["no instance holds a live lease"]), "status");
    }

    #[test]
    fn due_work_that_no_live_worker_serves_degrades() {
        let fresh = tick(TickStatus::Success, 5);
        let webhooks = WorkerSeen { live: true, types: vec!["WEBHOOK".into()] };
        let every = WorkerSeen { live: true, types: Vec::new() };
        let dead_every = WorkerSeen { live: false, types: Vec::new() };
        let due = ["NOOP".to_string(), "WEBHOOK".to_string()];
        let judge = |workers: &[WorkerSeen]| {
            instance(&InstanceFacts { workers, due_types: &due, ..facts(&OK_FLAGS, LIVE, Some(&fresh)) }, &policy(true))
        };
        assert_eq!(judge(&[]), judged(Liveness::Healthy, &[]), "no executor registered: cron's run-once");
        assert!(!due_types_matter(&[]));
        let j = judge(&[webhooks.clone(), dead_every.clone()]);
        assert_eq!(j, judged(Liveness::Degraded, &["due NOOP work waits and no live worker serves it"]));
        assert!(due_types_matter(&[webhooks.clone(), dead_every]), "a dead worker serves nothing");
        assert_eq!(judge(&[webhooks.clone(), every.clone()]), judged(Liveness::Healthy, &[]));
        assert!(!due_types_matter(&[webhooks, every]), "a live worker of every type: the due types are not read");
    }

    #[test]
    fn a_tick_fault_degrades_at_once_and_quotes_only_where_asked() {
        let fault =
            TickFault { at: model::now(), kind: "disk full", error: "(code: 13) database or disk is full".into() };
        let fresh = tick(TickStatus::Success, 1);
        let with = |flags: &Flags, quote: bool| {
            let p = LivenessPolicy { quote_notes: quote, ..policy(true) };
            instance(&InstanceFacts { tick_fault: Some(&fault), ..facts(flags, LIVE, Some(&fresh)) }, &p)
        };
        let j = with(&OK_FLAGS, false);
        assert_eq!(j.status, Liveness::Degraded);
        assert!(j.reasons[0].starts_with("this instance's last tick failed on storage (disk full) at "), "{j:?}");
        assert!(!j.reasons[0].contains("code: 13"), "the public reason quotes nothing: {j:?}");
        let j = with(&Flags { paused: true, ..OK_FLAGS }, true);
        assert!(j.reasons[0].ends_with(": (code: 13) database or disk is full") && j.reasons.len() == 2, "{j:?}");
        let j = with(&Flags { killed: true, ..OK_FLAGS }, false);
        assert_eq!((j.status, j.reasons[0].as_str()), (Liveness::Unhealthy, "killed flag is set"), "the worst first");
    }

    #[test]
    fn an_unreachable_database_is_unhealthy() {
        assert_eq!(database_unreachable(), judged(Liveness::Unhealthy, &["database unreachable"]));
    }

    #[test]
    fn a_worker_is_live_while_its_registration_is_renewed_within_the_ttl() {
        let ttl = Duration::from_secs(3);
        let seen = |id: Option<&str>, since: Option<f64>| RegistrationSeen {
            id: id.map(String::from),
            since_renewed: since.map(Duration::from_secs_f64),
            ttl,
        };
        assert_eq!(registration(&seen(Some("h:1:ab"), Some(1.0))), judged(Liveness::Healthy, &[]));
        let j = registration(&seen(Some("h:1:ab"), Some(4.2)));
        assert_eq!(j.status, Liveness::Unhealthy);
        assert!(j.reasons[0].starts_with("registration not renewed for 4.2s (workers.ttl_seconds: 3)"), "{j:?}");
        let j = registration(&seen(None, Some(1.0)));
        assert_eq!(j, judged(Liveness::Unhealthy, &["not registered: heartbeat lapsed or database unreachable"]));
        let j = registration(&seen(Some("h:1:ab"), None));
        assert_eq!(j, judged(Liveness::Unhealthy, &["registration not confirmed yet"]));
    }

    #[test]
    fn ready_when_the_database_answers_and_is_migrated() {
        assert_eq!(readiness(true, Some(0)), Ok(()));
        assert_eq!(readiness(false, None), Err("database unreachable".to_string()));
        assert_eq!(readiness(true, None), Err("cannot read the applied migrations".to_string()));
        assert_eq!(
            readiness(true, Some(2)),
            Err("2 migration(s) not applied (run `orchestrator migrate`)".to_string())
        );
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
        let t = HealthThresholds::default();
        let busy = WorkloadFacts {
            pending: 10_000,
            oldest_pending_age_seconds: Some(99_999.0),
            failures_1h: 50,
            failed_ticks_1h: 20,
        };
        assert_eq!(workload(&busy, &t).status, WorkloadStatus::Critical);
        // Liveness takes no workload input at all (no DLQ, no failures, no backlog): the same
        // service state is healthy.
        let fresh = tick(TickStatus::Success, 1);
        assert_eq!(instance(&facts(&OK_FLAGS, LIVE, Some(&fresh)), &policy(true)).status, Liveness::Healthy);
    }

    /// Every reason liveness can give, by the words it starts with (or, for a quoted value, the
    /// words around it), with its weight. ARCHITECTURE.md ("Health: two things, two names") lists
    /// each with what it means; a unit test keeps the two in step.
    const CAUSES: &[(&str, Liveness)] = &[
        ("database unreachable", Liveness::Unhealthy),
        ("killed flag is set", Liveness::Unhealthy),
        ("no tick recorded yet", Liveness::Unhealthy),
        ("(unhealthy after", Liveness::Unhealthy),
        ("failed: ", Liveness::Unhealthy),
        ("failed (its notes are in /status and the ledger)", Liveness::Unhealthy),
        ("no instance holds a live lease", Liveness::Unhealthy),
        ("not registered: heartbeat lapsed or database unreachable", Liveness::Unhealthy),
        ("registration not confirmed yet", Liveness::Unhealthy),
        ("registration not renewed for", Liveness::Unhealthy),
        ("(degraded after", Liveness::Degraded),
        ("paused flag is set", Liveness::Degraded),
        ("no instance holds a live lease", Liveness::Degraded),
        ("work waits and no live worker serves it", Liveness::Degraded),
        ("this instance's last tick failed on storage", Liveness::Degraded),
    ];

    #[test]
    fn architecture_lists_every_cause() {
        let doc = include_str!("../ARCHITECTURE.md");
        let section = doc.split("## Health: two things, two names").nth(1).and_then(|s| s.split("\n## ").next());
        let section = section.expect("ARCHITECTURE.md has the section \"Health: two things, two names\"");
        for (cause, weight) in CAUSES {
            let row = section
                .lines()
                .find(|l| l.starts_with('|') && l.contains(cause) && l.contains(&format!("| {weight} |")));
            assert!(row.is_some(), "ARCHITECTURE.md's table of liveness causes has no {weight} row for `{cause}`");
        }
    }
}
