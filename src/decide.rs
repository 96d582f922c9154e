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
use tracing::Instrument;

use crate::config::Config;
use crate::metrics::RuleMetrics;
use crate::model::{self, DecisionKind};
use crate::queue;
use crate::rules::pipeline::{self, Suppressed};
use crate::rules::{Decision, Diagnostic, Kind, RuleSet};
use crate::snapshot::Snapshot;
use crate::store::{Authority, DecideRecord, DecisionRow, Fence, NewAction, Store, StoreError};

/// Priority added to an action by `force_run`.
pub const FORCE_RUN_BUMP: i32 = 10;

/// What became of one decision: the model's vocabulary (`applied`, `suppressed:<why>`,
/// `failed:<error>`), so that the store reads it back as it was written.
pub use crate::model::DecisionOutcome;

/// One decision and what became of it.
#[derive(Clone, Debug, Serialize)]
pub struct DecisionReport {
    pub rule: String,
    pub kind: DecisionKind,
    pub target: String,
    pub priority: u8,
    pub reason: String,
    pub outcome: DecisionOutcome,
}

/// What the decide step did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Decided {
    pub decisions: Vec<DecisionReport>,
    /// The dispatch cap an applied `throttle` set for this tick (in a dry run: would set).
    pub throttle: Option<u32>,
    /// A `pause` was applied in this tick (in a dry run: would be).
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
    let states = read_states(store, &mut out).await?;
    let (decisions, new_states) = evaluate(rules, &snap_json, &states, metrics, &mut out);
    let cooling: BTreeSet<(String, String, String)> = if config.rules.cooldown.is_zero() {
        BTreeSet::new()
    } else {
        store.decisions().cooldowns_since(ago(snap.now, config.rules.cooldown)).await?.into_keys().collect()
    };
    let planned = pipeline::plan(decisions, config.rules.max_decisions_per_tick as usize, &cooling, snap.flags.paused);

    out.snapshot_json = snap_json.to_string();
    out.rules_digest = rules.digest().to_string();
    let mut record = DecideRecord { states: new_states, ..Default::default() };
    let apply = tracing::info_span!(target: crate::telemetry::TARGET, "apply", decisions = planned.len());
    async {
        for p in planned {
            let report = settle(store, config, metrics, fence, p, &mut out, &mut record).await?;
            out.decisions.push(report);
        }
        let applied = out.decisions.iter().filter(|d| d.outcome.is_applied()).count();
        if !out.decisions.is_empty() {
            out.notes.push(format!("{} decision(s), {applied} applied", out.decisions.len()));
        }
        if let Some(fence) = fence {
            let now = store.now();
            record.decisions = out.decisions.iter().map(|d| d.row(fence.tick_id.unwrap_or(0), now)).collect();
            store.decisions().record_decide(fence, &record).await?;
            store.decisions().prune_cooldowns(fence, ago(snap.now, config.rules.cooldown)).await?;
        }
        Ok::<(), StoreError>(())
    }
    .instrument(apply)
    .await?;
    Ok(out)
}

/// Each rule's persisted state; one that is not JSON starts empty, with a note.
async fn read_states(store: &Store, out: &mut Decided) -> Result<BTreeMap<String, Value>, StoreError> {
    let mut states = BTreeMap::new();
    for (rule, text) in store.decisions().rule_states().await? {
        match serde_json::from_str::<Value>(&text) {
            Ok(v) => {
                states.insert(rule, v);
            }
            Err(e) => out.notes.push(format!("rule {rule}: stored state is not JSON ({e}); starting empty")),
        }
    }
    Ok(states)
}

/// Runs every rule: their decisions, and the states that changed (checked for storage). A rule
/// that fails, an invalid decision and decisions past the per-rule cap become notes and
/// diagnostics, and are counted.
fn evaluate(
    rules: &RuleSet,
    snap_json: &Value,
    states: &BTreeMap<String, Value>,
    metrics: &RuleMetrics,
    out: &mut Decided,
) -> (Vec<Decision>, BTreeMap<String, String>) {
    let runs = rules.evaluate(snap_json, states);
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
        if r.overflow > 0 {
            metrics.decisions_overflow_total.with_label_values(&[r.rule.as_str()]).inc_by(r.overflow as u64);
            out.notes.push(format!(
                "rule {}: {} more decision(s) not considered (at most {} per rule per tick, {} invalid ones reported)",
                r.rule,
                r.overflow,
                crate::rules::MAX_DECISIONS_PER_RULE,
                crate::rules::MAX_INVALID_PER_RULE
            ));
        }
        if states.get(&r.rule) != Some(&r.state) {
            // The rule engine refuses a state over the limits already; this is the writer's check.
            match queue::validate("state", &r.state, queue::MAX_STATE_BYTES) {
                Ok(text) => {
                    new_states.insert(r.rule.clone(), text);
                }
                Err(e) => out.notes.push(format!("rule {}: state not saved: {e}", r.rule)),
            }
        }
        decisions.extend(r.decisions);
    }
    (decisions, new_states)
}

/// What becomes of one planned decision: suppressed by the pipeline, applied under `fence`
/// (its cooldown recorded), refused, or, in a dry run, reported as it would cap or stop the
/// tick's pick.
async fn settle(
    store: &Store,
    config: &Config,
    metrics: &RuleMetrics,
    fence: Option<&Fence>,
    p: pipeline::Planned,
    out: &mut Decided,
    record: &mut DecideRecord,
) -> Result<DecisionReport, StoreError> {
    let d = &p.decision;
    let outcome = match (p.suppressed, fence) {
        (Some(why), _) => DecisionOutcome::Suppressed(why),
        (None, None) => {
            // A dry run applies nothing, but its pick is capped and stopped as the tick's
            // would be.
            match d.kind {
                Kind::Throttle { n } => out.throttle = Some(out.throttle.map_or(n, |t| t.min(n))),
                Kind::Pause => out.paused = true,
                _ => {}
            }
            DecisionOutcome::Suppressed(Suppressed::DryRun)
        }
        (None, Some(fence)) => match apply(store, fence, config, metrics, d, out).await? {
            Applied::Yes => {
                record.cooldowns.push((d.rule.clone(), d.kind.name().to_string(), d.kind.target()));
                DecisionOutcome::Applied
            }
            Applied::Refused(why) => DecisionOutcome::Failed(why),
        },
    };
    if fence.is_some() {
        metrics.decisions_total.with_label_values(&[d.rule.as_str(), d.kind.name(), outcome.label()]).inc();
    }
    if let DecisionOutcome::Failed(_) = &outcome {
        out.notes.push(format!("{} {} {} {outcome}", d.rule, d.kind.name(), d.kind.target()));
    }
    Ok(DecisionReport {
        rule: d.rule.clone(),
        kind: d.kind.decision_kind(),
        target: d.kind.target(),
        priority: d.priority,
        reason: d.reason.clone(),
        outcome,
    })
}

impl DecisionReport {
    /// The decision's row in tick `tick_id`'s record.
    fn row(&self, tick_id: i64, now: chrono::DateTime<chrono::Utc>) -> DecisionRow {
        DecisionRow {
            tick_id,
            rule: self.rule.clone(),
            kind: self.kind,
            target: self.target.clone(),
            priority: i32::from(self.priority),
            reason: self.reason.clone(),
            outcome: self.outcome.clone(),
            created_at: now,
        }
    }
}

/// A throttle holds for the tick interval, and at least this long (an interval of 0 would
/// otherwise end it at once).
const THROTTLE_AT_LEAST: Duration = Duration::from_secs(1);

/// What became of one decision that reached the store (a store failure is the `Err` beside it).
enum Applied {
    Yes,
    /// Refused: the state it found, the fence, or a value out of range; the text is the
    /// outcome's (`failed:<why>`).
    Refused(String),
}

/// Applies one decision through the state machine's operation for its kind.
async fn apply(
    store: &Store,
    fence: &Fence,
    config: &Config,
    metrics: &RuleMetrics,
    d: &Decision,
    out: &mut Decided,
) -> Result<Applied, StoreError> {
    let by = format!("rule {}: {}", d.rule, d.reason);
    let auth = Authority::Lease(fence);
    let applied = match &d.kind {
        Kind::Retry { id } => store.actions().retry_now(auth, *id, &by).await,
        Kind::Dlq { id } => store.actions().dlq(auth, *id, &by).await,
        Kind::Cancel { id } => store.actions().cancel(auth, *id, Some(&by)).await,
        Kind::ForceRun { id } => store.actions().force_run(auth, *id, FORCE_RUN_BUMP, &by).await,
        Kind::Reprioritize { id, to } => store.actions().reprioritize(auth, *id, *to, &by).await,
        Kind::Postpone { id, seconds } => {
            let now = store.now();
            let Some(until) =
                i64::try_from(*seconds).ok().and_then(|s| now.checked_add_signed(chrono::Duration::seconds(s)))
            else {
                return Ok(Applied::Refused(format!("postpone by {seconds}s is out of range")));
            };
            store.actions().postpone(auth, *id, until, &by).await
        }
        Kind::Rebalance => {
            // Work-conserving: boosts old work and defers nothing (ARCHITECTURE.md).
            let old_before = ago(store.now(), config.rules.rebalance_age);
            store
                .actions()
                .boost(fence, old_before)
                .await
                .map(|boosted| out.notes.push(format!("rebalance: {boosted} boosted")))
        }
        Kind::Pause => store.flags().set_paused_fenced(fence, true).await.map(|()| out.paused = true),
        Kind::Resume => store.flags().set_paused_fenced(fence, false).await,
        Kind::Throttle { n } => {
            // In the database, so that every claimer on every host honours it until the next
            // tick decides again (or it runs out).
            let n = out.throttle.map_or(*n, |t| t.min(*n));
            out.throttle = Some(n);
            let until = model::later_saturating(store.now(), config.tick_interval.max(THROTTLE_AT_LEAST));
            store.flags().set_throttle(fence, Some(n), until).await
        }
        Kind::SetLimit { action_type, field, value, seconds } => {
            let until = model::later_saturating(store.now(), Duration::from_secs(*seconds));
            store
                .limits()
                .set_limit_override(
                    Some(fence),
                    action_type,
                    *field,
                    *value,
                    until,
                    &d.reason,
                    &format!("rule {}", d.rule),
                )
                .await
                .map(|()| out.notes.push(format!("set_limit {action_type}.{field} = {value} for {seconds}s")))
        }
        Kind::OpenWindow { types, field, seconds } => {
            let spec = rule_window(store, d, types, field.as_ref(), *seconds);
            let opened = store.windows().add_fenced(fence, &spec).await;
            opened.map(|w| out.notes.push(format!("open_window {} for {seconds}s (window {})", d.kind.target(), w.id)))
        }
        Kind::Enqueue { action_type, payload, key, approval } => {
            match rule_enqueue(store, config, action_type, payload, (key, *approval)) {
                Ok(new) => store.actions().enqueue(auth, &new).await.map(|done| {
                    if done.duplicate {
                        out.notes.push(format!("enqueue {key}: key exists, nothing created"));
                    }
                }),
                Err(e) => return Ok(Applied::Refused(e)),
            }
        }
        Kind::PauseSchedule { name } => store.schedules().set_paused(auth, name, true, Some(&by)).await.map(|_| ()),
        Kind::ResumeSchedule { name } => store.schedules().set_paused(auth, name, false, None).await.map(|_| ()),
        Kind::Alert { severity, message, key } => {
            metrics.alerts_total.with_label_values(&[severity.as_str()]).inc();
            tracing::warn!(rule = %d.rule, severity = %severity, message = %message, "ALERT");
            out.notes.push(format!("ALERT [{severity}] {message} (rule {})", d.rule));
            let Some(action_type) = &config.rules.alert_action_type else { return Ok(Applied::Yes) };
            match alert_action(store, config, fence, d, action_type, (severity.as_str(), message, key)) {
                Ok(new) => store.actions().enqueue(auth, &new).await.map(|_| ()),
                Err(e) => return Ok(Applied::Refused(e)),
            }
        }
    };
    match applied {
        Ok(()) => Ok(Applied::Yes),
        Err(StoreError::Refused(why)) => Ok(Applied::Refused(why.to_string())),
        Err(e) => Err(e),
    }
}

/// The window a rule's `open_window` asks for: from now, for `seconds`, opened by `rule R`.
fn rule_window(
    store: &Store,
    d: &Decision,
    types: &[String],
    field: Option<&crate::windows::FieldMatch>,
    seconds: u64,
) -> crate::windows::WindowSpec {
    let now = store.now();
    crate::windows::WindowSpec {
        matcher: crate::windows::Matcher { types: types.to_vec(), field: field.cloned() },
        starts_at: now,
        ends_at: Some(model::later_saturating(now, Duration::from_secs(seconds))),
        recurrence: None,
        reason: d.reason.clone(),
        opened_by: format!("rule {}", d.rule),
    }
}

/// The action a rule's `enqueue` asks for; the payload's refusal when it is not storable.
fn rule_enqueue(
    store: &Store,
    config: &Config,
    action_type: &str,
    payload: &Value,
    (key, approval): (&str, bool),
) -> Result<NewAction, String> {
    let payload_json = queue::validate("enqueue payload", payload, queue::MAX_PAYLOAD_BYTES)?;
    let approval_expires_at = queue::approval_deadline(&config.enqueue_defaults(), action_type, approval, store.now())?;
    Ok(NewAction {
        action_type: action_type.to_string(),
        payload_json,
        idempotency_key: key.to_string(),
        priority: 0,
        not_before: store.now(),
        max_attempts: i32::try_from(config.max_attempts).unwrap_or(3),
        expires_at: config
            .expire_after
            .get(action_type)
            .and_then(|d| chrono::Duration::from_std(*d).ok())
            .and_then(|d| store.now().checked_add_signed(d)),
        // The tick's trace: the action's first attempt continues it.
        traceparent: crate::telemetry::current_traceparent(),
        approval_expires_at,
    })
}

/// The action an `alert` enqueues when `rules.alert_action_type` names one: keyed by tick,
/// rule, severity and alert key, so a repeat within a tick is one action.
fn alert_action(
    store: &Store,
    config: &Config,
    fence: &Fence,
    d: &Decision,
    action_type: &str,
    (severity, message, key): (&str, &str, &str),
) -> Result<NewAction, String> {
    let payload = serde_json::json!({
        "severity": severity, "message": message, "key": key, "rule": d.rule, "tick_id": fence.tick_id,
    });
    Ok(NewAction {
        action_type: action_type.to_string(),
        idempotency_key: format!(
            "alert-{}-{}-{}",
            fence.tick_id.unwrap_or(0),
            d.rule,
            &queue::derive_key(severity, key)[..16]
        ),
        payload_json: queue::validate("alert payload", &payload, queue::MAX_PAYLOAD_BYTES)?,
        priority: i32::from(d.priority),
        not_before: store.now(),
        max_attempts: i32::try_from(config.max_attempts).unwrap_or(3),
        expires_at: None,
        traceparent: crate::telemetry::current_traceparent(),
        approval_expires_at: queue::approval_deadline(&config.enqueue_defaults(), action_type, false, store.now())?,
    })
}

/// `now - d`, saturating at the earliest time instead of overflowing.
fn ago(now: chrono::DateTime<chrono::Utc>, d: Duration) -> chrono::DateTime<chrono::Utc> {
    model::earlier_saturating(now, d)
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
