//! RECORD: the Prometheus registry of this process and every metric name, as constants in one
//! place. Counters and histograms here describe what *this process* did; gauges of database
//! state are computed on scrape by the HTTP layer (another instance may be the leader).
//!
//! Other modules increment through [`Metrics`]; none of them names a metric by string.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

/// Metric names (Prometheus naming: `_total` for counters, `_seconds` for durations).
pub mod names {
    pub const TICKS_TOTAL: &str = "orchestrator_ticks_total";
    pub const TICK_DURATION_SECONDS: &str = "orchestrator_tick_duration_seconds";
    pub const ACTIONS_TOTAL: &str = "orchestrator_actions_total";
    pub const ACTION_DURATION_SECONDS: &str = "orchestrator_action_duration_seconds";
    pub const FENCED_WRITES_REJECTED_TOTAL: &str = "orchestrator_fenced_writes_rejected_total";
    pub const RESCUED_ACTIONS_TOTAL: &str = "orchestrator_rescued_actions_total";
    pub const EXPIRED_ACTIONS_TOTAL: &str = "orchestrator_expired_actions_total";
    /// Actions whose approval deadline passed, cancelled.
    pub const APPROVALS_EXPIRED_TOTAL: &str = "orchestrator_approvals_expired_total";
    /// Actions waiting in `AWAITING_APPROVAL`, and the oldest one's age (scrape-time gauges).
    pub const ACTIONS_AWAITING_APPROVAL: &str = "orchestrator_actions_awaiting_approval";
    pub const APPROVAL_OLDEST_WAITING_SECONDS: &str = "orchestrator_approval_oldest_waiting_seconds";
    pub const TICK_ERRORS_TOTAL: &str = "orchestrator_tick_errors_total";
    pub const BUILD_INFO: &str = "orchestrator_build_info";
    pub const DATABASE_OUTAGES_TOTAL: &str = "orchestrator_database_outages_total";
    pub const INSTANCE_LEASE_HELD: &str = "orchestrator_instance_lease_held";
    pub const ARTIFACT_TMP_REMOVED_TOTAL: &str = "orchestrator_artifact_tmp_removed_total";
    /// Log lines this process could not write (stderr closed or failing); the work went on.
    pub const LOG_LINES_DROPPED_TOTAL: &str = "orchestrator_log_lines_dropped_total";
    /// Spans the OTLP collector did not take (traces on); the work went on.
    pub const TRACE_SPANS_DROPPED_TOTAL: &str = "orchestrator_trace_spans_dropped_total";

    // Gauges of database state, computed on every scrape (see [`super::DbGauges`]).
    pub const QUEUE_ACTIONS: &str = "orchestrator_queue_actions";
    pub const QUEUE_OLDEST_PENDING_AGE_SECONDS: &str = "orchestrator_queue_oldest_pending_age_seconds";
    pub const LEASE_HELD: &str = "orchestrator_lease_held";
    pub const LEASE_EPOCH: &str = "orchestrator_lease_epoch";
    pub const LEASE_TTL_SECONDS: &str = "orchestrator_lease_ttl_seconds";
    pub const FLAG: &str = "orchestrator_flag";
    pub const HEALTH_SCORE: &str = "orchestrator_health_score";
    pub const WORKERS: &str = "orchestrator_workers";
    pub const LAST_TICK_TIMESTAMP_SECONDS: &str = "orchestrator_last_tick_timestamp_seconds";
    pub const DATABASE_UP: &str = "orchestrator_database_up";
    // Per limited type (`limits`), from the database on every scrape; absent while no limit is set.
    pub const LIMIT_RUNNING: &str = "orchestrator_limit_running";
    pub const LIMIT_WAITING: &str = "orchestrator_limit_waiting";
    pub const BUDGET_REMAINING: &str = "orchestrator_budget_remaining";
    /// A counter kept in the database (every claimer adds to it), so every process reports the
    /// same value; exposed at scrape like the gauges.
    pub const LIMIT_BLOCKED_TOTAL: &str = "orchestrator_limit_blocked_total";
    // Per schedule, from the database on every scrape (so every process reports the leaders'
    // fires, across failovers); absent while no schedule exists.
    pub const SCHEDULE_FIRES_TOTAL: &str = "orchestrator_schedule_fires_total";
    pub const SCHEDULE_MISFIRES_TOTAL: &str = "orchestrator_schedule_misfires_total";
    pub const SCHEDULE_LAG_SECONDS: &str = "orchestrator_schedule_lag_seconds";
    pub const SCHEDULE_NEXT_FIRE_TIMESTAMP_SECONDS: &str = "orchestrator_schedule_next_fire_timestamp_seconds";

    pub const RULE_EVALUATIONS_TOTAL: &str = "orchestrator_rule_evaluations_total";
    pub const RULE_ERRORS_TOTAL: &str = "orchestrator_rule_errors_total";
    pub const RULE_EVAL_DURATION_SECONDS: &str = "orchestrator_rule_eval_duration_seconds";
    pub const DECISIONS_TOTAL: &str = "orchestrator_decisions_total";
    pub const DECISIONS_OVERFLOW_TOTAL: &str = "orchestrator_decisions_overflow_total";
    pub const ALERTS_TOTAL: &str = "orchestrator_alerts_total";
    pub const RULES_RELOAD_SUCCESS: &str = "orchestrator_rules_reload_success";
    pub const RULES_LOADED: &str = "orchestrator_rules_loaded";
}

/// Database state for the scrape-time gauges. `None` fields are left out of the output.
#[derive(Clone, Debug, Default)]
pub struct DbGauges {
    /// Open statuses only (PENDING, RUNNING, RETRY, DLQ): finished history is not counted on a
    /// scrape.
    pub queue: Vec<(String, i64)>,
    pub oldest_pending_age_seconds: f64,
    /// 1 when some instance holds a live lease.
    pub lease_held: bool,
    pub lease_epoch: Option<i64>,
    pub lease_ttl_seconds: f64,
    pub flags: Vec<(&'static str, bool)>,
    /// The workload score, 0-100 (`health::workload`; not the service's liveness).
    pub workload_score: f64,
    pub last_tick_timestamp_seconds: Option<f64>,
    /// Registered executors: (live, dead).
    pub workers: (i64, i64),
    /// One entry per limited type; empty while no limit is set (and then no limit metric is
    /// shown).
    pub limits: Vec<LimitGauges>,
    /// One entry per schedule; empty while none exists (and then no schedule metric is shown).
    pub schedules: Vec<ScheduleGauges>,
    /// Actions awaiting approval, and the oldest one's age in seconds (0 when none).
    pub approvals: (i64, f64),
}

/// One schedule's numbers on a scrape.
#[derive(Clone, Debug, Default)]
pub struct ScheduleGauges {
    pub name: String,
    /// Actions its slots enqueued, and slots not fired (late under its policy), since it was made.
    pub fires: u64,
    pub misfires: u64,
    /// Seconds between its last fired slot and the fire; `None` before its first.
    pub lag_seconds: Option<f64>,
    /// Unix time of its next slot; `None` while paused or off.
    pub next_fire_timestamp_seconds: Option<f64>,
}

/// One limited type's numbers on a scrape.
#[derive(Clone, Debug, Default)]
pub struct LimitGauges {
    pub action_type: String,
    /// Attempts running, every partition.
    pub running: u64,
    /// Due actions waiting to be claimed.
    pub waiting: u64,
    /// What today's budget has left (the tightest partition's); `None`: no daily budget.
    pub budget_remaining: Option<u64>,
    /// Claims held back so far, by the limit that held them: `max_running`, `rate`,
    /// `daily_budget`. Cumulative, from the database.
    pub blocked: [(&'static str, u64); 3],
}

/// The DECIDE stage's metrics, registered into a [`Metrics`] registry.
#[derive(Clone, Debug)]
pub struct RuleMetrics {
    /// Evaluations by rule.
    pub evaluations_total: IntCounterVec,
    /// Failed or stopped evaluations by rule.
    pub errors_total: IntCounterVec,
    pub eval_duration_seconds: HistogramVec,
    /// Decisions by rule, kind and outcome (`applied`, `suppressed:<why>`, `failed`).
    pub decisions_total: IntCounterVec,
    /// Decisions a rule returned past the per-rule bound (not validated, not recorded), by rule.
    pub decisions_overflow_total: IntCounterVec,
    /// Alerts decided by rules and applied, by severity.
    pub alerts_total: IntCounterVec,
    /// 1 when the last (re)load of the rules succeeded, 0 when it was rejected.
    pub reload_success: prometheus::IntGauge,
    /// Rules in the active set.
    pub loaded: prometheus::IntGauge,
}

impl RuleMetrics {
    /// Creates the rule metrics and registers them in `metrics`' registry.
    pub fn register(metrics: &Metrics) -> RuleMetrics {
        let evaluations_total =
            IntCounterVec::new(Opts::new(names::RULE_EVALUATIONS_TOTAL, "Rule evaluations, by rule."), &["rule"])
                .expect("valid metric");
        let errors_total = IntCounterVec::new(
            Opts::new(names::RULE_ERRORS_TOTAL, "Rule evaluations that failed or ran out of budget, by rule."),
            &["rule"],
        )
        .expect("valid metric");
        let eval_duration_seconds = HistogramVec::new(
            HistogramOpts::new(names::RULE_EVAL_DURATION_SECONDS, "Wall time of one rule's evaluation.")
                .buckets(vec![0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1]),
            &["rule"],
        )
        .expect("valid metric");
        let decisions_total = IntCounterVec::new(
            Opts::new(names::DECISIONS_TOTAL, "Decisions by rule, kind and outcome."),
            &["rule", "kind", "outcome"],
        )
        .expect("valid metric");
        let decisions_overflow_total = IntCounterVec::new(
            Opts::new(
                names::DECISIONS_OVERFLOW_TOTAL,
                "Decisions a rule returned beyond the per-rule bound of a tick (counted, not recorded), by rule.",
            ),
            &["rule"],
        )
        .expect("valid metric");
        let alerts_total =
            IntCounterVec::new(Opts::new(names::ALERTS_TOTAL, "Alerts raised by rules, by severity."), &["severity"])
                .expect("valid metric");
        let reload_success =
            prometheus::IntGauge::new(names::RULES_RELOAD_SUCCESS, "1 if the last rules (re)load succeeded.")
                .expect("valid metric");
        let loaded =
            prometheus::IntGauge::new(names::RULES_LOADED, "Rules in the active rule set.").expect("valid metric");
        for c in [
            Box::new(evaluations_total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(errors_total.clone()),
            Box::new(eval_duration_seconds.clone()),
            Box::new(decisions_total.clone()),
            Box::new(decisions_overflow_total.clone()),
            Box::new(alerts_total.clone()),
            Box::new(reload_success.clone()),
            Box::new(loaded.clone()),
        ] {
            if let Err(e) = metrics.registry().register(c) {
                tracing::warn!(error = %e, "rule metrics already registered");
            }
        }
        RuleMetrics {
            evaluations_total,
            errors_total,
            eval_duration_seconds,
            decisions_total,
            decisions_overflow_total,
            alerts_total,
            reload_success,
            loaded,
        }
    }
}

/// Log lines this process could not write. One counter per process (the log writer is one per
/// process), registered in every [`Metrics`] registry so the daemon's and a worker's
/// `/metrics` both show it.
pub fn log_lines_dropped() -> &'static IntCounter {
    static DROPPED: std::sync::LazyLock<IntCounter> = std::sync::LazyLock::new(|| {
        IntCounter::new(
            names::LOG_LINES_DROPPED_TOTAL,
            "Log lines this process could not write to stderr (closed or failing); the work went on.",
        )
        .expect("valid metric")
    });
    &DROPPED
}

/// Spans the OTLP exporter could not deliver (the collector down or refusing), one counter per
/// process like [`log_lines_dropped`]; 0 while traces are off.
pub fn trace_spans_dropped() -> &'static IntCounter {
    static DROPPED: std::sync::LazyLock<IntCounter> = std::sync::LazyLock::new(|| {
        IntCounter::new(
            names::TRACE_SPANS_DROPPED_TOTAL,
            "Spans the OTLP collector did not take (traces on); dropped, the work went on.",
        )
        .expect("valid metric")
    });
    &DROPPED
}

/// This process's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Ticks run as the holder, by ledger status.
    pub ticks_total: IntCounterVec,
    pub tick_duration_seconds: Histogram,
    /// Attempts by action type and outcome (`success`, `retry`, `dlq`, `unstarted`, `quarantined`).
    pub actions_total: IntCounterVec,
    pub action_duration_seconds: HistogramVec,
    pub fenced_writes_rejected_total: IntCounter,
    pub rescued_actions_total: IntCounter,
    /// Waiting actions whose deadline passed, moved to DLQ as `expired`.
    pub expired_actions_total: IntCounter,
    /// Actions whose approval deadline passed, cancelled.
    pub approvals_expired_total: IntCounter,
    /// Ticks that failed with an error (database unreachable and the like).
    pub tick_errors_total: IntCounter,
    /// Times the daemon found the database unreachable after it had been reachable.
    pub database_outages_total: IntCounter,
    /// 1 while this process's daemon holds the lease (after its last tick), 0 otherwise.
    pub instance_lease_held: prometheus::IntGauge,
    /// Leftover `.tmp-*` artifact files (an attempt killed mid-write) removed at start.
    pub artifact_tmp_removed_total: IntCounter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let ticks_total =
            IntCounterVec::new(Opts::new(names::TICKS_TOTAL, "Ticks run as the lease holder, by status."), &["status"])
                .expect("valid metric");
        let tick_duration_seconds = Histogram::with_opts(
            HistogramOpts::new(names::TICK_DURATION_SECONDS, "Wall time of a tick, lease to ledger row.")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )
        .expect("valid metric");
        let actions_total = IntCounterVec::new(
            Opts::new(names::ACTIONS_TOTAL, "Action attempts by type and outcome."),
            &["type", "outcome"],
        )
        .expect("valid metric");
        let action_duration_seconds = HistogramVec::new(
            HistogramOpts::new(names::ACTION_DURATION_SECONDS, "Wall time of one action attempt.")
                .buckets(vec![0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0]),
            &["type"],
        )
        .expect("valid metric");
        let fenced_writes_rejected_total = IntCounter::new(
            names::FENCED_WRITES_REJECTED_TOTAL,
            "Writes about claimed actions refused because this instance no longer held the claim.",
        )
        .expect("valid metric");
        let rescued_actions_total =
            IntCounter::new(names::RESCUED_ACTIONS_TOTAL, "Orphaned RUNNING actions returned to RETRY or DLQ.")
                .expect("valid metric");
        let expired_actions_total =
            IntCounter::new(names::EXPIRED_ACTIONS_TOTAL, "Waiting actions whose deadline passed, moved to DLQ.")
                .expect("valid metric");
        let approvals_expired_total = IntCounter::new(
            names::APPROVALS_EXPIRED_TOTAL,
            "Actions not approved before their approval deadline, cancelled.",
        )
        .expect("valid metric");
        let tick_errors_total =
            IntCounter::new(names::TICK_ERRORS_TOTAL, "Ticks that failed with an error.").expect("valid metric");
        let database_outages_total = IntCounter::new(
            names::DATABASE_OUTAGES_TOTAL,
            "Times the daemon lost the database (counted once per outage, not per failed tick).",
        )
        .expect("valid metric");
        let instance_lease_held = prometheus::IntGauge::new(
            names::INSTANCE_LEASE_HELD,
            "1 while this instance's daemon holds the lease (as of its last tick), 0 otherwise.",
        )
        .expect("valid metric");
        let artifact_tmp_removed_total = IntCounter::new(
            names::ARTIFACT_TMP_REMOVED_TOTAL,
            "Leftover .tmp-* artifact files older than an hour removed at start (attempts killed mid-write).",
        )
        .expect("valid metric");
        let build_info = IntGaugeVec::new(Opts::new(names::BUILD_INFO, "Build information; always 1."), &["version"])
            .expect("valid metric");
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for c in [
            Box::new(ticks_total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(tick_duration_seconds.clone()),
            Box::new(actions_total.clone()),
            Box::new(action_duration_seconds.clone()),
            Box::new(fenced_writes_rejected_total.clone()),
            Box::new(rescued_actions_total.clone()),
            Box::new(expired_actions_total.clone()),
            Box::new(approvals_expired_total.clone()),
            Box::new(tick_errors_total.clone()),
            Box::new(database_outages_total.clone()),
            Box::new(instance_lease_held.clone()),
            Box::new(artifact_tmp_removed_total.clone()),
            Box::new(log_lines_dropped().clone()),
            Box::new(trace_spans_dropped().clone()),
            Box::new(build_info),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            ticks_total,
            tick_duration_seconds,
            actions_total,
            action_duration_seconds,
            fenced_writes_rejected_total,
            rescued_actions_total,
            expired_actions_total,
            approvals_expired_total,
            tick_errors_total,
            database_outages_total,
            instance_lease_held,
            artifact_tmp_removed_total,
        }
    }

    /// The registry, for registering more collectors (rules, HTTP gauges).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        encode(&self.registry.gather())
    }

    /// The registry plus the database gauges (`None`: the database did not answer, and
    /// `orchestrator_database_up` says 0), in Prometheus text format.
    pub fn render_with_db(&self, db: Option<&DbGauges>) -> String {
        let scrape = Registry::new();
        if let Err(e) = register_db_gauges(&scrape, db) {
            tracing::warn!(error = %e, "cannot build the database gauges");
        }
        let mut families = self.registry.gather();
        families.extend(scrape.gather());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        encode(&families)
    }
}

fn register_db_gauges(r: &Registry, db: Option<&DbGauges>) -> prometheus::Result<()> {
    use prometheus::{Gauge, GaugeVec, IntGauge};
    let up = IntGauge::new(names::DATABASE_UP, "1 when the database answered this scrape.")?;
    r.register(Box::new(up.clone()))?;
    let Some(db) = db else {
        up.set(0);
        return Ok(());
    };
    up.set(1);
    let queue =
        IntGaugeVec::new(Opts::new(names::QUEUE_ACTIONS, "Actions by open status, from the database."), &["status"])?;
    for (status, n) in &db.queue {
        queue.with_label_values(&[status.as_str()]).set(*n);
    }
    r.register(Box::new(queue))?;
    let oldest = Gauge::new(names::QUEUE_OLDEST_PENDING_AGE_SECONDS, "Age of the oldest PENDING action; 0 when none.")?;
    oldest.set(db.oldest_pending_age_seconds);
    r.register(Box::new(oldest))?;
    let held = IntGauge::new(names::LEASE_HELD, "1 when some instance holds a live lease.")?;
    held.set(i64::from(db.lease_held));
    r.register(Box::new(held))?;
    if let Some(epoch) = db.lease_epoch {
        let g = IntGauge::new(names::LEASE_EPOCH, "The lease's fencing epoch; it rises on every takeover.")?;
        g.set(epoch);
        r.register(Box::new(g))?;
    }
    let ttl = Gauge::new(names::LEASE_TTL_SECONDS, "Seconds until the lease expires; 0 when expired or never taken.")?;
    ttl.set(db.lease_ttl_seconds);
    r.register(Box::new(ttl))?;
    let flags = GaugeVec::new(Opts::new(names::FLAG, "Control flags: 1 set, 0 clear."), &["flag"])?;
    for (name, on) in &db.flags {
        flags.with_label_values(&[*name]).set(if *on { 1.0 } else { 0.0 });
    }
    r.register(Box::new(flags))?;
    let score = Gauge::new(
        names::HEALTH_SCORE,
        "The workload score the rules see, 0-100 (queue pressure and failures; not the service's liveness, which /health shows).",
    )?;
    score.set(db.workload_score);
    r.register(Box::new(score))?;
    let workers = IntGaugeVec::new(
        Opts::new(names::WORKERS, "Registered executors (workers, and run's own) by state: live or dead."),
        &["state"],
    )?;
    workers.with_label_values(&["live"]).set(db.workers.0);
    workers.with_label_values(&["dead"]).set(db.workers.1);
    r.register(Box::new(workers))?;
    if let Some(t) = db.last_tick_timestamp_seconds {
        let g =
            Gauge::new(names::LAST_TICK_TIMESTAMP_SECONDS, "Unix time the last recorded tick finished (or started).")?;
        g.set(t);
        r.register(Box::new(g))?;
    }
    if !db.limits.is_empty() {
        register_limit_metrics(r, &db.limits)?;
    }
    if !db.schedules.is_empty() {
        register_schedule_metrics(r, &db.schedules)?;
    }
    let awaiting = IntGauge::new(names::ACTIONS_AWAITING_APPROVAL, "Actions waiting for an operator's approval.")?;
    awaiting.set(db.approvals.0);
    r.register(Box::new(awaiting))?;
    let oldest = Gauge::new(
        names::APPROVAL_OLDEST_WAITING_SECONDS,
        "How long the oldest action awaiting approval has waited, since its enqueue; 0 when none.",
    )?;
    oldest.set(db.approvals.1);
    r.register(Box::new(oldest))?;
    Ok(())
}

fn register_schedule_metrics(r: &Registry, schedules: &[ScheduleGauges]) -> prometheus::Result<()> {
    use prometheus::GaugeVec;
    let fires = IntCounterVec::new(
        Opts::new(
            names::SCHEDULE_FIRES_TOTAL,
            "Actions a schedule's slots enqueued (counted in the database, across leaders).",
        ),
        &["schedule"],
    )?;
    let misfires = IntCounterVec::new(
        Opts::new(
            names::SCHEDULE_MISFIRES_TOTAL,
            "Slots of a schedule not fired: seen late under its misfire policy, or past their deadline.",
        ),
        &["schedule"],
    )?;
    let lag = GaugeVec::new(
        Opts::new(names::SCHEDULE_LAG_SECONDS, "Seconds between a schedule's last fired slot and its fire."),
        &["schedule"],
    )?;
    let next = GaugeVec::new(
        Opts::new(names::SCHEDULE_NEXT_FIRE_TIMESTAMP_SECONDS, "Unix time of a running schedule's next slot."),
        &["schedule"],
    )?;
    for s in schedules {
        let n = s.name.as_str();
        fires.with_label_values(&[n]).inc_by(s.fires);
        misfires.with_label_values(&[n]).inc_by(s.misfires);
        if let Some(l) = s.lag_seconds {
            lag.with_label_values(&[n]).set(l);
        }
        if let Some(t) = s.next_fire_timestamp_seconds {
            next.with_label_values(&[n]).set(t);
        }
    }
    r.register(Box::new(fires))?;
    r.register(Box::new(misfires))?;
    r.register(Box::new(lag))?;
    r.register(Box::new(next))
}

fn register_limit_metrics(r: &Registry, limits: &[LimitGauges]) -> prometheus::Result<()> {
    let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let running = IntGaugeVec::new(
        Opts::new(names::LIMIT_RUNNING, "Attempts running of each limited action type, on every host."),
        &["type"],
    )?;
    let waiting = IntGaugeVec::new(
        Opts::new(names::LIMIT_WAITING, "Due actions of each limited action type waiting to be claimed."),
        &["type"],
    )?;
    let budget = IntGaugeVec::new(
        Opts::new(
            names::BUDGET_REMAINING,
            "Attempt starts left today (UTC) of each action type with a daily_budget (the tightest partition's).",
        ),
        &["type"],
    )?;
    let blocked = IntCounterVec::new(
        Opts::new(
            names::LIMIT_BLOCKED_TOTAL,
            "Claims that held back due work of a limited action type, by the limit that held it (counted in the database, across every claimer).",
        ),
        &["type", "limit"],
    )?;
    for l in limits {
        let t = l.action_type.as_str();
        running.with_label_values(&[t]).set(int(l.running));
        waiting.with_label_values(&[t]).set(int(l.waiting));
        if let Some(left) = l.budget_remaining {
            budget.with_label_values(&[t]).set(int(left));
        }
        for (limit, n) in l.blocked {
            blocked.with_label_values(&[t, limit]).inc_by(n);
        }
    }
    r.register(Box::new(running))?;
    r.register(Box::new(waiting))?;
    if limits.iter().any(|l| l.budget_remaining.is_some()) {
        r.register(Box::new(budget))?;
    }
    r.register(Box::new(blocked))?;
    Ok(())
}

fn encode(families: &[prometheus::proto::MetricFamily]) -> String {
    let mut buf = Vec::new();
    if let Err(e) = prometheus::TextEncoder::new().encode(families, &mut buf) {
        tracing::warn!(error = %e, "cannot encode metrics");
    }
    String::from_utf8(buf).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_names_and_build_info() {
        let m = Metrics::new();
        m.ticks_total.with_label_values(&["SUCCESS"]).inc();
        m.actions_total.with_label_values(&["NOOP", "success"]).inc_by(2);
        let text = m.render();
        assert!(text.contains("orchestrator_ticks_total{status=\"SUCCESS\"} 1"), "{text}");
        assert!(text.contains("orchestrator_actions_total{outcome=\"success\",type=\"NOOP\"} 2"), "{text}");
        assert!(text.contains(&format!("orchestrator_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))));
        assert!(text.contains(&format!("{} ", names::LOG_LINES_DROPPED_TOTAL)), "{text}");
    }

    #[test]
    fn limit_metrics_show_only_when_limits_exist() {
        let m = Metrics::new();
        let none = m.render_with_db(Some(&DbGauges::default()));
        assert!(!none.contains("orchestrator_limit"), "{none}");
        assert!(!none.contains(names::BUDGET_REMAINING), "{none}");
        let limits = vec![
            LimitGauges {
                action_type: "POST_SOCIAL".into(),
                running: 2,
                waiting: 7,
                budget_remaining: Some(40),
                blocked: [("max_running", 3), ("rate", 0), ("daily_budget", 1)],
            },
            LimitGauges {
                action_type: "COMMAND".into(),
                blocked: [("max_running", 0), ("rate", 0), ("daily_budget", 0)],
                ..Default::default()
            },
        ];
        let text = m.render_with_db(Some(&DbGauges { limits, ..DbGauges::default() }));
        for line in [
            "orchestrator_limit_running{type=\"POST_SOCIAL\"} 2",
            "orchestrator_limit_waiting{type=\"POST_SOCIAL\"} 7",
            "orchestrator_limit_running{type=\"COMMAND\"} 0",
            "orchestrator_budget_remaining{type=\"POST_SOCIAL\"} 40",
            "orchestrator_limit_blocked_total{limit=\"max_running\",type=\"POST_SOCIAL\"} 3",
            "orchestrator_limit_blocked_total{limit=\"daily_budget\",type=\"POST_SOCIAL\"} 1",
            "orchestrator_limit_blocked_total{limit=\"rate\",type=\"COMMAND\"} 0",
            "# TYPE orchestrator_limit_blocked_total counter",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(!text.contains("orchestrator_budget_remaining{type=\"COMMAND\"}"), "no budget, no gauge: {text}");
    }
}
