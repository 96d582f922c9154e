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
    pub const TICK_ERRORS_TOTAL: &str = "orchestrator_tick_errors_total";
    pub const BUILD_INFO: &str = "orchestrator_build_info";
    pub const RULE_EVALUATIONS_TOTAL: &str = "orchestrator_rule_evaluations_total";
    pub const RULE_ERRORS_TOTAL: &str = "orchestrator_rule_errors_total";
    pub const RULE_EVAL_DURATION_SECONDS: &str = "orchestrator_rule_eval_duration_seconds";
    pub const DECISIONS_TOTAL: &str = "orchestrator_decisions_total";
    pub const ALERTS_TOTAL: &str = "orchestrator_alerts_total";
    pub const RULES_RELOAD_SUCCESS: &str = "orchestrator_rules_reload_success";
    pub const RULES_LOADED: &str = "orchestrator_rules_loaded";
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
            alerts_total,
            reload_success,
            loaded,
        }
    }
}

/// This process's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Ticks run as the holder, by ledger status.
    pub ticks_total: IntCounterVec,
    pub tick_duration_seconds: Histogram,
    /// Attempts by action type and outcome (`success`, `retry`, `dlq`, `unstarted`).
    pub actions_total: IntCounterVec,
    pub action_duration_seconds: HistogramVec,
    pub fenced_writes_rejected_total: IntCounter,
    pub rescued_actions_total: IntCounter,
    /// Ticks that failed with an error (database unreachable and the like).
    pub tick_errors_total: IntCounter,
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
        let tick_errors_total =
            IntCounter::new(names::TICK_ERRORS_TOTAL, "Ticks that failed with an error.").expect("valid metric");
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
            Box::new(tick_errors_total.clone()),
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
            tick_errors_total,
        }
    }

    /// The registry, for registering more collectors (rules, HTTP gauges).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
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
    }
}
