//! The tick's DECIDE step around the pure rule engine: read each rule's persisted state and the
//! live cooldowns, evaluate the rules on the snapshot, run the pipeline, apply what survives
//! through the store (every write fenced by the lease epoch), and record decisions, cooldowns,
//! states, the snapshot and the rules digest in one transaction.
//!
//! With no fence (a dry run) it reads but writes nothing: every decision that would apply is
//! reported as `suppressed:dry-run`. It never dispatches actions; the tick does.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::config::Config;
use crate::metrics::RuleMetrics;
use crate::model::ActionStatus;
use crate::queue;
use crate::rules::pipeline::{self, Suppressed};
use crate::rules::{Decision, Diagnostic, Kind, RuleSet};
use crate::snapshot::Snapshot;
use crate::store::{DecideRecord, DecisionRow, Fence, NewAction, Store, StoreError};

/// Priority added to an action by `force_run`.
pub const FORCE_RUN_BUMP: i32 = 10;

/// One decision and what became of it.
#[derive(Clone, Debug, Serialize)]
pub struct DecisionReport {
    pub rule: String,
    pub kind: String,
    pub target: String,
    pub priority: u8,
    pub reason: String,
    /// `applied`, `suppressed:<why>` or `failed:<error>`.
    pub outcome: String,
}

/// What the decide step did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Decided {
    pub decisions: Vec<DecisionReport>,
    /// The dispatch cap an applied `throttle` set for this tick.
    pub throttle: Option<u32>,
    /// A `pause` was applied in this tick.
    pub paused: bool,
    /// Rule failures and invalid decisions.
    pub diagnostics: Vec<Diagnostic>,
    /// Notes for the ledger row.
    pub notes: Vec<String>,
    pub rules_evaluated: usize,
    pub eval_seconds: f64,
    /// The snapshot the rules saw (JSON) and the digest of their sources, for the ledger row.
    pub snapshot_json: String,
    pub rules_digest: String,
}

/// Evaluates `rules` on `snap` and applies the outcome under `fence` (`None`: dry run).
pub async fn decide(
    store: &Store,
    rules: &RuleSet,
    config: &Config,
    metrics: &RuleMetrics,
    snap: &Snapshot,
    fence: Option<&Fence>,
) -> Result<Decided, StoreError> {
    let mut out = Decided::default();
    let snap_json = serde_json::to_value(snap).unwrap_or(Value::Null);
    let mut states = BTreeMap::new();
    for (rule, text) in store.rule_states().await? {
        match serde_json::from_str::<Value>(&text) {
            Ok(v) => {
                states.insert(rule, v);
            }
            Err(e) => out.notes.push(format!("rule {rule}: stored state is not JSON ({e}); starting empty")),
        }
    }
    let runs = rules.evaluate(&snap_json, &states);
    out.rules_evaluated = runs.len();
    let mut decisions = Vec::new();
    let mut new_states = BTreeMap::new();
    for r in runs {
        out.eval_seconds += r.elapsed.as_secs_f64();
        metrics.evaluations_total.with_label_values(&[r.rule.as_str()]).inc();
        metrics.eval_duration_seconds.with_label_values(&[r.rule.as_str()]).observe(r.elapsed.as_secs_f64());
        if let Some(e) = r.error {
            metrics.errors_total.with_label_values(&[r.rule.as_str()]).inc();
            tracing::warn!(rule = %r.rule, diagnostic = %e, "rule failed");
            out.notes.push(format!("rule {} failed: {e}", r.rule));
            out.diagnostics.push(e);
            continue;
        }
        for d in r.invalid {
            tracing::warn!(rule = %r.rule, diagnostic = %d, "invalid decision");
            out.notes.push(format!("rule {}: invalid decision: {}", r.rule, d.message));
            out.diagnostics.push(d);
        }
        if states.get(&r.rule) != Some(&r.state) {
            new_states.insert(r.rule.clone(), r.state.to_string());
        }
        decisions.extend(r.decisions);
    }

    let cooling: BTreeSet<(String, String, String)> = if config.rules.cooldown.is_zero() {
        BTreeSet::new()
    } else {
        store.cooldowns_since(ago(snap.now, config.rules.cooldown)).await?.into_keys().collect()
    };
    let planned = pipeline::plan(decisions, config.rules.max_decisions_per_tick as usize, &cooling, snap.flags.paused);

    out.snapshot_json = snap_json.to_string();
    out.rules_digest = rules.digest().to_string();
    let mut record = DecideRecord { states: new_states, ..Default::default() };
    for p in planned {
        let d = &p.decision;
        let outcome = match (p.suppressed, fence) {
            (Some(why), _) => format!("suppressed:{}", why.as_str()),
            (None, None) => format!("suppressed:{}", Suppressed::DryRun.as_str()),
            (None, Some(fence)) => match apply(store, fence, config, metrics, d, &mut out).await? {
                Ok(()) => {
                    record.cooldowns.push((d.rule.clone(), d.kind.name().to_string(), d.kind.target()));
                    "applied".to_string()
                }
                Err(e) => format!("failed:{e}"),
            },
        };
        let label = if outcome.starts_with("failed:") { "failed" } else { outcome.as_str() };
        if fence.is_some() {
            metrics.decisions_total.with_label_values(&[d.rule.as_str(), d.kind.name(), label]).inc();
        }
        if outcome.starts_with("failed:") {
            out.notes.push(format!("{} {} {} {outcome}", d.rule, d.kind.name(), d.kind.target()));
        }
        out.decisions.push(DecisionReport {
            rule: d.rule.clone(),
            kind: d.kind.name().to_string(),
            target: d.kind.target(),
            priority: d.priority,
            reason: d.reason.clone(),
            outcome,
        });
    }
    let applied = out.decisions.iter().filter(|d| d.outcome == "applied").count();
    if !out.decisions.is_empty() {
        out.notes.push(format!("{} decision(s), {applied} applied", out.decisions.len()));
    }
    if let Some(fence) = fence {
        let now = store.now();
        record.decisions = out
            .decisions
            .iter()
            .map(|d| DecisionRow {
                tick_id: fence.tick_id.unwrap_or(0),
                rule: d.rule.clone(),
                kind: d.kind.clone(),
                target: d.target.clone(),
                priority: i32::from(d.priority),
                reason: d.reason.clone(),
                outcome: d.outcome.clone(),
                created_at: now,
            })
            .collect();
        store.record_decide(fence, &record).await?;
        store.prune_cooldowns(fence, ago(snap.now, config.rules.cooldown)).await?;
    }
    Ok(out)
}

/// Applies one decision. The outer error is the store failing; the inner one is the decision
/// refused (wrong status, fenced, invalid).
async fn apply(
    store: &Store,
    fence: &Fence,
    config: &Config,
    metrics: &RuleMetrics,
    d: &Decision,
    out: &mut Decided,
) -> Result<Result<(), String>, StoreError> {
    use ActionStatus::{Dlq, Pending, Retry, Running};
    let by = format!("rule {}: {}", d.rule, d.reason);
    match &d.kind {
        Kind::Retry { id } => {
            store
                .decide_update_action(
                    fence,
                    *id,
                    &[Retry, Dlq, Running],
                    // A RUNNING action (timed out; its attempt was counted at the claim) goes
                    // back to RETRY, or to DLQ when out of attempts, like a rescue; its late
                    // completion, if any, is then refused by the completion fence.
                    "not_before = $4, updated_at = $4, \
                     finished_at = CASE WHEN status = 'RUNNING' AND attempts >= max_attempts THEN $4 ELSE NULL END, \
                     last_error = CASE WHEN status = 'RUNNING' THEN $5 ELSE last_error END, \
                     claimed_epoch = CASE WHEN status = 'RUNNING' THEN NULL ELSE claimed_epoch END, \
                     attempts = CASE WHEN status = 'DLQ' THEN 0 ELSE attempts END, \
                     status = CASE WHEN status = 'DLQ' THEN 'PENDING' \
                                   WHEN status = 'RUNNING' AND attempts >= max_attempts THEN 'DLQ' \
                                   WHEN status = 'RUNNING' THEN 'RETRY' ELSE status END",
                    vec![format!("running too long: returned by {by}").into()],
                    &format!("retry decided ({by}): due now (DLQ is requeued, RUNNING returned to RETRY)"),
                )
                .await
        }
        Kind::Dlq { id } => {
            store
                .decide_update_action(
                    fence,
                    *id,
                    &[Pending, Retry],
                    "status = 'DLQ', last_error = $5, finished_at = $4, updated_at = $4",
                    vec![format!("moved to DLQ by {by}").into()],
                    &format!("dlq decided ({by})"),
                )
                .await
        }
        Kind::Cancel { id } => {
            store
                .decide_update_action(
                    fence,
                    *id,
                    &[Pending, Retry, Dlq],
                    "status = 'CANCELLED', finished_at = $4, updated_at = $4",
                    vec![],
                    &format!("cancel decided ({by})"),
                )
                .await
        }
        Kind::ForceRun { id } => {
            store
                .decide_update_action(
                    fence,
                    *id,
                    &[Pending, Retry],
                    "not_before = $4, updated_at = $4, priority = CASE WHEN priority > 999000 THEN priority ELSE priority + $5 END",
                    vec![FORCE_RUN_BUMP.into()],
                    &format!("force_run decided ({by}): due now, priority +{FORCE_RUN_BUMP}"),
                )
                .await
        }
        Kind::Reprioritize { id, to } => {
            store
                .decide_update_action(
                    fence,
                    *id,
                    &[Pending, Retry, Dlq],
                    "priority = $5, updated_at = $4",
                    vec![(*to).into()],
                    &format!("reprioritize decided ({by}): priority {to}"),
                )
                .await
        }
        Kind::Postpone { id, seconds } => {
            let now = store.now();
            let Some(until) = i64::try_from(*seconds)
                .ok()
                .and_then(|s| now.checked_add_signed(chrono::Duration::seconds(s)))
            else {
                return Ok(Err(format!("postpone by {seconds}s is out of range")));
            };
            store
                .postpone(fence, *id, until, &format!("postpone decided ({by}): not before {}", until.to_rfc3339()))
                .await
        }
        Kind::Rebalance => {
            // Work-conserving: boosts old work and defers nothing (ARCHITECTURE.md).
            let old_before = ago(store.now(), config.rules.rebalance_age);
            Ok(store.boost_old(fence, old_before).await?.map(|boosted| {
                out.notes.push(format!("rebalance: {boosted} boosted"));
            }))
        }
        Kind::Pause => Ok(store.decide_set_paused(fence, true).await?.map(|()| out.paused = true)),
        Kind::Resume => store.decide_set_paused(fence, false).await,
        Kind::Throttle { n } => {
            out.throttle = Some(out.throttle.map_or(*n, |t| t.min(*n)));
            Ok(Ok(()))
        }
        Kind::Enqueue { action_type, payload, key } => {
            let new = NewAction {
                action_type: action_type.clone(),
                payload_json: queue::canonical_json(payload),
                idempotency_key: key.clone(),
                priority: 0,
                not_before: store.now(),
                max_attempts: i32::try_from(config.max_attempts).unwrap_or(3),
                expires_at: config
                    .expire_after
                    .get(action_type)
                    .and_then(|d| chrono::Duration::from_std(*d).ok())
                    .and_then(|d| store.now().checked_add_signed(d)),
            };
            if new.payload_json.len() > queue::MAX_PAYLOAD_BYTES {
                return Ok(Err(format!("payload is over {} bytes", queue::MAX_PAYLOAD_BYTES)));
            }
            Ok(store.decide_enqueue(fence, &new).await?.map(|created| {
                if !created {
                    out.notes.push(format!("enqueue {key}: key exists, nothing created"));
                }
            }))
        }
        Kind::Alert { severity, message } => {
            metrics.alerts_total.with_label_values(&[severity.as_str()]).inc();
            tracing::warn!(rule = %d.rule, severity = %severity, message = %message, "ALERT");
            out.notes.push(format!("ALERT [{severity}] {message} (rule {})", d.rule));
            let Some(action_type) = &config.rules.alert_action_type else { return Ok(Ok(())) };
            let payload = serde_json::json!({
                "severity": severity, "message": message, "rule": d.rule, "tick_id": fence.tick_id,
            });
            let new = NewAction {
                action_type: action_type.clone(),
                idempotency_key: format!(
                    "alert-{}-{}-{}",
                    fence.tick_id.unwrap_or(0),
                    d.rule,
                    &queue::derive_key(severity, message)[..16]
                ),
                payload_json: queue::canonical_json(&payload),
                priority: i32::from(d.priority),
                not_before: store.now(),
                max_attempts: i32::try_from(config.max_attempts).unwrap_or(3),
                expires_at: None,
            };
            Ok(store.decide_enqueue(fence, &new).await?.map(|_| ()))
        }
    }
}

/// `now - d`, saturating at the earliest time instead of overflowing.
fn ago(now: chrono::DateTime<chrono::Utc>, d: Duration) -> chrono::DateTime<chrono::Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
}

/// A rough per-call figure for `rules bench`: evaluates `rules` `iterations` times on `snap`.
pub fn bench(rules: &RuleSet, snap: &Snapshot, iterations: u32) -> Duration {
    let snap_json = serde_json::to_value(snap).unwrap_or(Value::Null);
    let states = BTreeMap::new();
    let started = std::time::Instant::now();
    for _ in 0..iterations {
        let runs = rules.evaluate(&snap_json, &states);
        let decisions: Vec<Decision> = runs.into_iter().flat_map(|r| r.decisions).collect();
        let _ = pipeline::plan(decisions, 10, &BTreeSet::new(), false);
    }
    started.elapsed() / iterations.max(1)
}

/// A snapshot with full samples, for benchmarks.
pub fn bench_snapshot() -> Snapshot {
    let mut s = Snapshot::example();
    s.queue.pending = 60;
    s.recent.failures_1h = 3;
    s.recent.successes_1h = 30;
    let sample = |id: i64, status: crate::model::ActionStatus| crate::snapshot::Sample {
        id,
        action_type: "NOOP".into(),
        status,
        attempts: (id % 4) as i32,
        max_attempts: 5,
        age_seconds: 100.0 * id as f64,
        last_error: Some("upstream timed out".into()),
        priority: 0,
        due_in_seconds: 0.0,
        expires_in_seconds: None,
        payload: None,
    };
    use crate::model::ActionStatus as S;
    s.samples.stuck_pending = (1..=20).map(|i| sample(i, S::Pending)).collect();
    s.samples.retry = (21..=40).map(|i| sample(i, S::Retry)).collect();
    s.samples.dlq = (41..=60).map(|i| sample(i, S::Dlq)).collect();
    s.samples.running_too_long = (61..=80).map(|i| sample(i, S::Running)).collect();
    s
}
