//! MONITOR: one immutable [`Snapshot`] of the queue, the lease, the flags and the ledger, built
//! at the start of every tick with a fixed number of index-backed queries (twelve, and five more when some type is limited), plus the
//! workload score (`health::workload`) computed from it.
//!
//! Its cost does not grow with finished history: counts of open states use a partial index,
//! recent outcomes are counted inside a one-hour window (`finished_at`, indexed), the ledger is
//! read from the top by primary key and in a window, and samples are `LIMIT 20` over partial
//! indexes. It decides nothing, and it is what rules see as `snap`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::health::HealthThresholds;
use crate::health::WorkloadHealth;
use crate::lease::Term;
use crate::model::{self, Action, ActionStatus, Flags, TickStatus};
use crate::store::{Store, StoreError};

/// Actions listed per sample.
pub const SAMPLE_SIZE: u64 = 20;
/// How many of the latest ticks are looked at for a failing streak.
const STREAK_LOOKBACK: u64 = 100;

/// The state a tick decides on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub now: DateTime<Utc>,
    pub tick_id: Option<i64>,
    pub flags: Flags,
    pub lease: LeaseView,
    pub queue: QueueView,
    pub last_tick: Option<LastTick>,
    #[serde(default)]
    pub recent: RecentView,
    #[serde(default)]
    pub ledger: LedgerView,
    #[serde(default)]
    pub health: WorkloadHealth,
    #[serde(default)]
    pub samples: Samples,
    /// Per limited type: what is running and waiting, and what is left of each limit.
    #[serde(default)]
    pub limits: BTreeMap<String, LimitView>,
    /// Per schedule, by name: its state, when it fires next and how late its last fire was.
    #[serde(default)]
    pub schedules: BTreeMap<String, ScheduleSnap>,
    /// The maintenance windows open now (`snap.windows`).
    #[serde(default)]
    pub windows: Vec<crate::windows::OpenWindow>,
}

/// Schedules in a snapshot, the first by name: the snapshot is recorded with every tick.
pub const SNAPSHOT_SCHEDULES: i64 = 100;

/// One schedule as rules see it (`snap.schedules.NAME`). A time it does not have is `()`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ScheduleSnap {
    /// `running`, `paused` or `off`.
    pub state: String,
    #[serde(rename = "type")]
    pub action_type: String,
    pub cron: String,
    pub timezone: String,
    /// Its next slot (RFC 3339), and the seconds until it (negative: due and not fired yet).
    pub next_fire: Option<DateTime<Utc>>,
    pub next_fire_in_seconds: Option<f64>,
    /// Its last fired slot, and how late that fire was.
    pub last_fire: Option<DateTime<Utc>>,
    pub lag_seconds: Option<f64>,
    pub fires: i64,
    pub misfires: i64,
    pub paused_reason: Option<String>,
}

impl ScheduleSnap {
    pub fn of(v: crate::schedules::ScheduleView, now: DateTime<Utc>) -> ScheduleSnap {
        ScheduleSnap {
            state: v.state.to_string(),
            next_fire_in_seconds: v.next_fire.map(|t| seconds_between(now, t)),
            next_fire: v.next_fire,
            last_fire: v.row.last_slot,
            lag_seconds: v.lag_seconds,
            fires: v.row.fires,
            misfires: v.row.misfires,
            paused_reason: v.row.paused_reason.filter(|_| v.row.paused),
            action_type: v.row.def.action_type,
            cron: v.row.def.cron,
            timezone: v.row.def.timezone,
        }
    }
}

/// One limited type as rules see it (`snap.limits.TYPE`). A limit the type does not have is
/// `()` in a rule.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LimitView {
    pub running: u64,
    pub max_running: Option<u64>,
    /// `N/PERIOD`.
    pub rate: Option<String>,
    pub rate_remaining: Option<u64>,
    pub daily_budget: Option<u64>,
    pub budget_remaining: Option<u64>,
    /// Due actions of the type, waiting for a claim.
    pub waiting: u64,
    /// Nothing is left of one of its limits (of a partitioned limit, in its tightest
    /// partition): the waiting work is held by the limit, by design.
    #[serde(default)]
    pub held: bool,
    /// How long the budget has been used up while work waits; `()` when it is not.
    pub budget_blocked_seconds: Option<f64>,
    /// The overrides in force (`field`, `value`, `expires_in_seconds`, `reason`).
    #[serde(default)]
    pub overrides: Vec<OverrideView>,
    /// The busiest partitions, for a partitioned limit.
    #[serde(default)]
    pub partitions: Vec<crate::limits::PartUsage>,
    /// `HH:MM-HH:MM ZONE`, the times of day it may start; `()` for every hour.
    #[serde(default)]
    pub allowed_hours: Option<String>,
    /// Its allowed hours hold it now (then `held` too).
    #[serde(default)]
    pub outside_allowed_hours: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct OverrideView {
    pub field: String,
    pub value: String,
    pub expires_in_seconds: f64,
    pub reason: String,
}

impl LimitView {
    /// The view of one type's usage at `now`.
    pub fn of(u: &crate::limits::LimitUsage, now: DateTime<Utc>) -> LimitView {
        let spec = &u.limit.effective;
        LimitView {
            running: u.running,
            max_running: spec.max_running,
            rate: spec.rate.map(|r| r.to_string()),
            rate_remaining: u.rate_remaining,
            daily_budget: spec.daily_budget,
            budget_remaining: u.budget_remaining,
            waiting: u.waiting,
            held: u.is_held(),
            budget_blocked_seconds: u
                .budget_exhausted_at
                .filter(|_| u.waiting > 0)
                .map(|t| seconds_between(t, now).max(0.0)),
            overrides: u
                .limit
                .overrides
                .iter()
                .map(|o| OverrideView {
                    field: o.field.to_string(),
                    value: o.value.to_string(),
                    expires_in_seconds: seconds_between(now, o.expires_at).max(0.0),
                    reason: o.reason.clone(),
                })
                .collect(),
            partitions: u.partitions.clone(),
            allowed_hours: spec.allowed_hours.map(|h| h.to_string()),
            outside_allowed_hours: u.outside_allowed_hours,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LeaseView {
    pub owner: String,
    pub epoch: i64,
    pub ttl_seconds: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct QueueView {
    pub pending: i64,
    pub running: i64,
    pub retry: i64,
    pub dlq: i64,
    /// Finished with `SUCCESS` in the last hour (a window, so the cost stays bounded).
    #[serde(default)]
    pub success: i64,
    /// Cancelled in the last hour.
    #[serde(default)]
    pub cancelled: i64,
    pub due_now: i64,
    pub oldest_pending_age_seconds: Option<f64>,
    #[serde(default)]
    pub by_type: BTreeMap<String, TypeView>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TypeView {
    pub pending: i64,
    pub retry: i64,
    pub dlq: i64,
    pub failures_1h: i64,
    pub successes_1h: i64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RecentView {
    /// Attempts that failed in the last hour: actions now in `RETRY` updated in the window,
    /// plus those moved to `DLQ` in it.
    pub failures_1h: i64,
    pub successes_1h: i64,
    /// failures / (failures + successes), 0 when there were none.
    pub error_rate_1h: f64,
    pub failures_15m: i64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LedgerView {
    pub last_tick_status: Option<TickStatus>,
    pub consecutive_failed_ticks: i64,
    pub failed_ticks_1h: i64,
    /// Ticks that ended `PARTIAL` (some attempt failed) in the last hour.
    #[serde(default)]
    pub partial_ticks_1h: i64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Samples {
    pub stuck_pending: Vec<Sample>,
    pub retry: Vec<Sample>,
    pub dlq: Vec<Sample>,
    pub running_too_long: Vec<Sample>,
}

/// One action as a rule sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    pub id: i64,
    #[serde(rename = "type")]
    pub action_type: String,
    pub status: ActionStatus,
    pub attempts: i32,
    pub max_attempts: i32,
    /// Since creation (since the claim for `RUNNING`).
    pub age_seconds: f64,
    pub last_error: Option<String>,
    pub priority: i32,
    /// Seconds until `not_before` (0 or less: due). A delayed action is not stuck.
    #[serde(default)]
    pub due_in_seconds: f64,
    /// Seconds until its deadline (`expires_at`); `null` when it has none.
    #[serde(default)]
    pub expires_in_seconds: Option<f64>,
    /// The payload, for rules over a user's own fields (a clip's score, a campaign's budget),
    /// when its JSON text is at most [`SAMPLE_PAYLOAD_BYTES`]; `null` when larger, so that the
    /// snapshot (recorded with every tick) stays small.
    #[serde(default)]
    pub payload: Option<serde_json::Value>,
}

/// The largest payload a sample carries, in bytes of JSON text.
pub const SAMPLE_PAYLOAD_BYTES: usize = 512;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LastTick {
    pub id: i64,
    pub status: TickStatus,
    pub finished_at: Option<DateTime<Utc>>,
}

impl LastTick {
    /// What the snapshot keeps of a ledger row.
    fn of(t: model::TickRow) -> LastTick {
        LastTick { id: t.id, status: t.status, finished_at: t.finished_at }
    }
}

impl<'de> Deserialize<'de> for ActionStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for TickStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for Flags {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            paused: bool,
            #[serde(default)]
            killed: bool,
            #[serde(default = "yes")]
            proof_mode: bool,
        }
        fn yes() -> bool {
            true
        }
        let r = Raw::deserialize(d)?;
        Ok(Flags { paused: r.paused, killed: r.killed, proof_mode: r.proof_mode })
    }
}

impl Snapshot {
    /// A quiet system: nothing queued, healthy. `rules check` evaluates rules against it, and
    /// rule fixtures fill what they leave out from it.
    pub fn example() -> Snapshot {
        Snapshot {
            now: model::now(),
            tick_id: None,
            flags: Flags { paused: false, killed: false, proof_mode: true },
            lease: LeaseView { owner: "example".into(), epoch: 1, ttl_seconds: 30.0 },
            queue: QueueView::default(),
            last_tick: None,
            recent: RecentView::default(),
            ledger: LedgerView::default(),
            health: WorkloadHealth::default(),
            samples: Samples::default(),
            limits: BTreeMap::new(),
            schedules: BTreeMap::new(),
            windows: Vec::new(),
        }
    }
}

/// Builds the snapshot for the tick `tick_id` run under `term`.
pub async fn build_with(
    store: &Store,
    term: &Term,
    flags: Flags,
    tick_id: Option<i64>,
    thresholds: &HealthThresholds,
) -> Result<Snapshot, StoreError> {
    let now = store.now();
    let hour_ago = now - chrono::Duration::hours(1);
    let by_status_type = store.actions().open_counts_by_type().await?;
    let windowed = store.actions().windowed_counts(hour_ago, now - chrono::Duration::minutes(15)).await?;
    let oldest = store.actions().oldest_pending().await?;
    let due_by_type = store.actions().due_counts_by_type().await?;
    let stats = store.ledger().ledger_stats(tick_id, hour_ago, STREAK_LOOKBACK).await?;
    let last_tick = store.ledger().recent_ticks(2).await?.into_iter().find(|t| Some(t.id) != tick_id).map(LastTick::of);
    let sample = |actions: Vec<Action>| -> Vec<Sample> {
        actions
            .into_iter()
            .map(|a| Sample {
                id: a.id,
                age_seconds: seconds_between(
                    if a.status == ActionStatus::Running { a.claimed_at.unwrap_or(a.created_at) } else { a.created_at },
                    now,
                )
                .max(0.0),
                due_in_seconds: seconds_between(now, a.not_before),
                expires_in_seconds: a.expires_at.map(|t| seconds_between(now, t)),
                payload: (crate::queue::canonical_json(&a.payload).len() <= SAMPLE_PAYLOAD_BYTES).then_some(a.payload),
                action_type: a.action_type,
                status: a.status,
                attempts: a.attempts,
                max_attempts: a.max_attempts,
                last_error: a.last_error,
                priority: a.priority,
            })
            .collect()
    };
    let samples = Samples {
        stuck_pending: sample(store.actions().oldest_in(ActionStatus::Pending, SAMPLE_SIZE).await?),
        retry: sample(store.actions().oldest_in(ActionStatus::Retry, SAMPLE_SIZE).await?),
        dlq: sample(store.actions().oldest_in(ActionStatus::Dlq, SAMPLE_SIZE).await?),
        running_too_long: sample(store.actions().oldest_in(ActionStatus::Running, SAMPLE_SIZE).await?),
    };

    let mut queue = QueueView {
        due_now: i64::try_from(due_by_type.values().sum::<u64>()).unwrap_or(i64::MAX),
        oldest_pending_age_seconds: oldest.map(|t| seconds_between(t, now).max(0.0)),
        ..QueueView::default()
    };
    for (t, status, n) in by_status_type {
        let ty = queue.by_type.entry(t).or_default();
        match status {
            ActionStatus::Pending => {
                queue.pending += n;
                ty.pending += n;
            }
            ActionStatus::Running => queue.running += n,
            ActionStatus::Retry => {
                queue.retry += n;
                ty.retry += n;
            }
            ActionStatus::Dlq => {
                queue.dlq += n;
                ty.dlq += n;
            }
            // Not an open status: the queue's reads never return them.
            ActionStatus::Success | ActionStatus::Cancelled | ActionStatus::AwaitingApproval => {}
        }
    }
    let mut recent = RecentView::default();
    for w in windowed {
        let ty = queue.by_type.entry(w.action_type).or_default();
        match w.status {
            ActionStatus::Success => {
                queue.success += w.n_1h;
                recent.successes_1h += w.n_1h;
                ty.successes_1h += w.n_1h;
            }
            ActionStatus::Cancelled => queue.cancelled += w.n_1h,
            ActionStatus::Retry | ActionStatus::Dlq => {
                recent.failures_1h += w.n_1h;
                recent.failures_15m += w.n_15m;
                ty.failures_1h += w.n_1h;
            }
            ActionStatus::Pending | ActionStatus::Running | ActionStatus::AwaitingApproval => {}
        }
    }
    let outcomes = recent.failures_1h + recent.successes_1h;
    recent.error_rate_1h = if outcomes > 0 { recent.failures_1h as f64 / outcomes as f64 } else { 0.0 };
    let ledger = LedgerView {
        last_tick_status: stats.last_tick_status,
        consecutive_failed_ticks: stats.consecutive_failed_ticks,
        failed_ticks_1h: stats.failed_ticks_1h,
        partial_ticks_1h: stats.partial_ticks_1h,
    };
    let (usage, limits, schedules) = limits_and_schedules(store, now, &due_by_type).await?;
    // Work a limit or a window holds back waits by design, and says so in `limits` and
    // `windows`: it does not make the queue saturated (the shipped `budget_blocked` rule is what
    // alerts on a used-up budget).
    let open = store.windows().open_now().await?;
    let by_windows = store.windows().held_count(&open, &crate::limits::held_types(&usage)).await?;
    let held = crate::limits::held_waiting(&usage).saturating_add(by_windows);
    let unheld = QueueView { pending: (queue.pending - held).max(0), ..queue.clone() };
    let health = crate::health::workload(&workload_facts(&unheld, &recent, &ledger), thresholds);
    Ok(Snapshot {
        now,
        tick_id,
        flags,
        lease: LeaseView {
            owner: term.owner.clone(),
            epoch: term.epoch,
            ttl_seconds: seconds_between(now, term.expires_at).max(0.0),
        },
        queue,
        last_tick,
        recent,
        ledger,
        health,
        samples,
        limits,
        schedules,
        windows: open.iter().filter_map(|w| crate::windows::OpenWindow::of(w, now)).collect(),
    })
}

/// The limits' usage and views, and the schedules' views, by type and by name. The limited
/// types' waiting work is `due_by_type`'s, the count the queue's `due_now` sums: the due rows
/// are counted once per tick.
async fn limits_and_schedules(
    store: &Store,
    now: DateTime<Utc>,
    due_by_type: &BTreeMap<String, u64>,
) -> Result<(Vec<crate::limits::LimitUsage>, BTreeMap<String, LimitView>, BTreeMap<String, ScheduleSnap>), StoreError> {
    let usage = store.limits().limit_usage_counted(due_by_type).await?;
    let limits = usage.iter().map(|u| (u.action_type.clone(), LimitView::of(u, now))).collect();
    let schedules = store.schedules().first(SNAPSHOT_SCHEDULES).await?;
    let schedules =
        schedules.into_iter().map(|r| (r.def.name.clone(), ScheduleSnap::of(crate::schedules::view(r), now))).collect();
    Ok((usage, limits, schedules))
}

pub use crate::model::seconds_between;

/// What the workload score is judged from, out of the snapshot's views.
pub(crate) fn workload_facts(
    queue: &QueueView,
    recent: &RecentView,
    ledger: &LedgerView,
) -> crate::health::WorkloadFacts {
    crate::health::WorkloadFacts {
        pending: queue.pending,
        oldest_pending_age_seconds: queue.oldest_pending_age_seconds,
        failures_1h: recent.failures_1h,
        failed_ticks_1h: ledger.failed_ticks_1h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_score_follows_the_seed() {
        let health =
            |q: &QueueView, r: &RecentView, l: &LedgerView, t| crate::health::workload(&workload_facts(q, r, l), t);
        let t = HealthThresholds::default();
        let mut q = QueueView::default();
        let mut r = RecentView::default();
        let mut l = LedgerView::default();
        assert_eq!(health(&q, &r, &l, &t).score, 100);
        q.pending = 51;
        q.oldest_pending_age_seconds = Some(1801.0);
        let h = health(&q, &r, &l, &t);
        assert_eq!((h.score, h.status.as_str()), (65, "degraded"));
        r.failures_1h = 3;
        l.failed_ticks_1h = 2;
        let h = health(&q, &r, &l, &t);
        assert_eq!((h.score, h.status.as_str()), (45, "critical"));
        l.failed_ticks_1h = 40;
        assert_eq!(health(&q, &r, &l, &t).score, 0, "never below 0");
        q.pending = 50;
        q.oldest_pending_age_seconds = Some(10.0);
        r.failures_1h = 0;
        l.failed_ticks_1h = 0;
        let h = health(&q, &r, &l, &t);
        assert_eq!((h.score, h.status.as_str()), (100, "healthy"), "50 pending is not above the threshold");
    }
}
