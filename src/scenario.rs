//! Scenario fixtures: several ticks of the real engine against a throwaway SQLite database, with
//! a virtual clock between ticks, so that behaviour that only shows across ticks (a backlog that
//! stalls, a breaker that never resumes) fails a test instead of a deployment.
//!
//! A scenario (`rules/tests/scenarios/*.yaml`) gives a starting queue, the config it runs under
//! (defaults plus its own `config:`), how each action type behaves (a scripted adapter that
//! fails a given fraction of attempts, optionally until a given tick), how many ticks to run
//! and how far the clock moves between them, and what must hold over the run. It lives beside
//! the tick, not in `rules/`, which stays pure; `orchestrator rules test` runs it.
//!
//! It never touches the caller's database: each run makes its own in a temporary directory.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

use serde::{Deserialize, Serialize};

use crate::adapters::{Adapter, AdapterError, ExecContext, Outcome, Proof, Registry};
use crate::config::{Config, Inputs, Overrides};
use crate::model::{Action, ActionStatus, Clock, DecisionKind, TickStatus};
use crate::queue::{self, EnqueueRequest};
use crate::store::{ActionFilter, FlagChange, Store, StoreOptions};
use crate::tick::{Engine, TickOutcome};

/// A scenario file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// Keys of `orchestrator.yaml`, over the defaults (the caller's config is not used, so a
    /// scenario means the same everywhere). `database_url` and `rules_dir` are the runner's.
    #[serde(default)]
    pub config: Option<serde_yaml::Value>,
    /// Flags at the start (proof mode is off: the scripted adapter touches nothing).
    #[serde(default)]
    pub flags: StartFlags,
    /// The starting queue, group by group.
    pub queue: Vec<Group>,
    /// Maintenance windows opened before the first tick (a deploy window).
    #[serde(default)]
    pub windows: Vec<ScenarioWindow>,
    /// How attempts of each action type end; a type not named here always succeeds.
    #[serde(default)]
    pub adapters: BTreeMap<String, Script>,
    /// What an operator does between ticks (approve, reject, change an adapter's target).
    #[serde(default)]
    pub operator: Vec<OperatorStep>,
    /// How many ticks to run.
    pub ticks: u32,
    /// Virtual seconds between two ticks.
    #[serde(default = "one")]
    pub every_seconds: f64,
    /// When the first tick runs (RFC 3339): a schedule across a DST change needs its date.
    /// Default: 01:00 UTC tomorrow, so that a run never depends on when it runs.
    #[serde(default)]
    pub start_at: Option<chrono::DateTime<chrono::Utc>>,
    /// From this tick (1-based) a new instance ticks: the old one stops without releasing its
    /// lease, as a crashed leader does, so `every_seconds` must outlast `lease_ttl_seconds`.
    #[serde(default)]
    pub failover_at_tick: Option<u32>,
    pub expect: Expect,
}

fn one() -> f64 {
    1.0
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartFlags {
    #[serde(default)]
    pub paused: bool,
}

/// `count` actions of one type, created `age_seconds` before the first tick.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    #[serde(rename = "type")]
    pub action_type: String,
    pub count: u32,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub age_seconds: f64,
    /// Not due before this many seconds after the first tick.
    #[serde(default)]
    pub delay_seconds: f64,
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// A deadline this many seconds after the first tick (else the config's `expire_after`).
    #[serde(default)]
    pub expires_in_seconds: Option<f64>,
    /// Extra payload fields (each action also gets `n`, its number in the group).
    #[serde(default)]
    pub payload: Option<serde_json::Value>,
    /// The group's actions wait for an approval (as `approvals.types` in `config:` does).
    #[serde(default)]
    pub require_approval: bool,
}

/// An operator's step, taken just before tick `before_tick` (1-based).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorStep {
    pub before_tick: u32,
    /// Approve every action of this type awaiting approval (those rendered by then).
    #[serde(default)]
    pub approve: Option<String>,
    /// Reject every action of this type awaiting approval, with `reason`.
    #[serde(default)]
    pub reject: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    /// The scripted adapter of this type now sends to another target (a config change): what
    /// its actions render to changes.
    #[serde(default)]
    pub change_target: Option<String>,
}

/// A maintenance window of a scenario: it holds `types` (and with `field`, only the actions
/// whose payload has `value` there) from `from_seconds` after the first tick for `for_seconds`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioWindow {
    pub types: Vec<String>,
    #[serde(default)]
    pub field: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub from_seconds: f64,
    pub for_seconds: f64,
    #[serde(default = "scenario_reason")]
    pub reason: String,
}

fn scenario_reason() -> String {
    "scenario".into()
}

/// How a scripted action type behaves.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    /// The fraction of attempts that fail, 0 to 1 (chosen by action id and attempt, so a run
    /// is repeatable).
    #[serde(default)]
    pub fail_fraction: f64,
    /// Fail only in ticks before this one (1-based); after it, every attempt succeeds.
    #[serde(default)]
    pub until_tick: Option<i64>,
    /// The error a failure reports.
    #[serde(default = "default_error")]
    pub error: String,
    /// Permanent failures go to DLQ at once; retryable ones (the default) back off.
    #[serde(default)]
    pub permanent: bool,
}

fn default_error() -> String {
    "upstream timed out".into()
}

/// What must hold over the run.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Nothing open (`PENDING`, `RETRY`, `RUNNING`) after this tick.
    #[serde(default)]
    pub drained_by_tick: Option<u32>,
    /// No tick leaves due work idle: a tick that ran nothing while its snapshot counted due
    /// work either had a brake (`PAUSED`, `THROTTLED`) or its decisions shed or postponed that
    /// work by name, so that none was due any more.
    #[serde(default)]
    pub no_idle_while_due: bool,
    /// Decisions applied at least once (with `times`, exactly that many times over the run).
    #[serde(default)]
    pub decisions: Vec<DecisionPattern>,
    /// Decisions never applied.
    #[serde(default)]
    pub absent: Vec<DecisionPattern>,
    /// Counts by status at the end (statuses not named are not checked).
    #[serde(default)]
    pub final_counts: BTreeMap<String, i64>,
    /// How many `DLQ` actions end with each `last_error`.
    #[serde(default)]
    pub final_dlq_errors: BTreeMap<String, i64>,
    /// Per schedule (of `config: schedules:`): the actions its slots enqueued over the run.
    #[serde(default)]
    pub schedule_fires: BTreeMap<String, i64>,
    /// Per schedule: its slots not fired (late under its misfire policy) over the run.
    #[serde(default)]
    pub schedule_misfires: BTreeMap<String, i64>,
    /// How many actions, in any status, end with a `last_error` that starts with each text.
    #[serde(default)]
    pub final_error_prefixes: BTreeMap<String, i64>,
    /// Per tick (1-based), a text its ledger notes contain (e.g. `held by windows`).
    #[serde(default)]
    pub notes: BTreeMap<u32, String>,
}

/// Matches an applied decision: kind, and rule and target when given.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionPattern {
    pub kind: DecisionKind,
    #[serde(default)]
    pub rule: Option<String>,
    #[serde(default)]
    pub target: Option<String>,
    /// In `decisions`: applied exactly this many times over the run (e.g. an alert once per
    /// cooldown). Not taken in `absent`.
    #[serde(default)]
    pub times: Option<usize>,
}

impl DecisionPattern {
    fn matches(&self, d: &AppliedDecision) -> bool {
        d.kind == self.kind
            && self.rule.as_ref().is_none_or(|r| *r == d.rule)
            && self.target.as_ref().is_none_or(|t| *t == d.target)
    }
}

impl std::fmt::Display for DecisionPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(r) = &self.rule {
            write!(f, " by {r}")?;
        }
        if let Some(t) = &self.target {
            write!(f, " on {t}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct AppliedDecision {
    pub rule: String,
    pub kind: DecisionKind,
    pub target: String,
}

/// One tick of the run, for the timeline.
#[derive(Clone, Debug, Serialize)]
pub struct TickLine {
    pub tick: u32,
    /// Virtual seconds since the first tick.
    pub at_seconds: f64,
    pub status: String,
    pub attempted: u32,
    pub succeeded: u32,
    /// Due work the tick's snapshot counted.
    pub due_at_snapshot: i64,
    /// Due work the tick left idle with no brake (the invariant broken; normally 0).
    pub left_due: i64,
    /// `PENDING` + `RETRY` + `RUNNING` after the tick.
    pub open_after: i64,
    pub decisions: Vec<String>,
    pub notes: String,
    #[serde(skip)]
    applied: Vec<AppliedDecision>,
}

impl std::fmt::Display for TickLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "#{:<3} +{:>7.0}s {:<9} ran {:>5} ok {:>5} due {:>5} open {:>5}",
            self.tick,
            self.at_seconds,
            self.status,
            self.attempted,
            self.succeeded,
            self.due_at_snapshot,
            self.open_after
        )?;
        if self.left_due > 0 {
            write!(f, " LEFT IDLE {}", self.left_due)?;
        }
        if !self.decisions.is_empty() {
            write!(f, " | {}", self.decisions.join(", "))?;
        }
        if !self.notes.is_empty() {
            write!(f, " | {}", self.notes)?;
        }
        Ok(())
    }
}

/// The outcome of one scenario.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioResult {
    pub file: PathBuf,
    pub name: String,
    pub passed: bool,
    /// Each expectation that did not hold.
    pub failures: Vec<String>,
    pub timeline: Vec<TickLine>,
}

/// Runs before each tick with the store and the tick's number (1-based); for tests that change
/// the engine's surroundings (e.g. emulate a past behaviour).
pub type BeforeTick = Arc<dyn Fn(Store, u32) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The longest a scenario's tick may take in real time (a tick of a scenario takes well under
/// a second): past it the scenario fails, naming what its tick left running.
const TICK_WATCHDOG: std::time::Duration = std::time::Duration::from_secs(120);

/// Runs every `*.yaml` in `rules_dir/tests/scenarios` against the rules of `rules_dir`. A
/// missing directory is no scenarios.
pub async fn run_dir(rules_dir: &Path) -> Vec<ScenarioResult> {
    let dir = rules_dir.join("tests").join("scenarios");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect(),
        Err(_) => return Vec::new(),
    };
    files.sort();
    let mut out = Vec::new();
    for file in files {
        out.push(run_file(&file, rules_dir, None).await);
    }
    out
}

/// Runs one scenario file; a file that cannot be read or run is a failed result.
pub async fn run_file(file: &Path, rules_dir: &Path, before_tick: Option<BeforeTick>) -> ScenarioResult {
    let broken = |name: String, why: String| ScenarioResult {
        file: file.to_path_buf(),
        name,
        passed: false,
        failures: vec![why],
        timeline: Vec::new(),
    };
    let text = match crate::input::read_text_capped(file, crate::input::MAX_FIXTURE_BYTES, "a scenario fixture") {
        Ok(t) => t,
        Err(e) => return broken("(file)".into(), format!("cannot read: {e}")),
    };
    let scenario: Scenario = match serde_yaml::from_str(&text) {
        Ok(s) => s,
        Err(e) => return broken("(file)".into(), format!("not a valid scenario: {e}")),
    };
    let name = scenario.name.clone();
    match run(&scenario, rules_dir, before_tick).await {
        Ok((timeline, failures)) => {
            ScenarioResult { file: file.to_path_buf(), name, passed: failures.is_empty(), failures, timeline }
        }
        Err(e) => broken(name, format!("{e:#}")),
    }
}

/// Runs `scenario` with the rules of `rules_dir`: (the timeline, each failed expectation).
pub async fn run(
    scenario: &Scenario,
    rules_dir: &Path,
    before_tick: Option<BeforeTick>,
) -> anyhow::Result<(Vec<TickLine>, Vec<String>)> {
    let tmp = tempfile::tempdir()?;
    let config = scenario_config(scenario, rules_dir, tmp.path())?;
    let clock = Clock::shifted();
    // Every run starts at the same time of day (01:00 UTC, tomorrow): what a rule keys on the
    // hour or the day (`reconcile-<hour>`, a daily budget) must not depend on when it runs.
    let real = clock.now();
    let start = scenario.start_at.unwrap_or_else(|| {
        (real.date_naive() + chrono::Days::new(1)).and_time(chrono::NaiveTime::MIN).and_utc()
            + chrono::Duration::hours(1)
    });
    clock.advance(start - real);
    let store = Store::open(
        &config.database_url,
        &StoreOptions { sqlite_synchronous_full: false, max_connections: 4, ..Default::default() },
    )
    .await?
    .with_clock(clock.clone());
    store
        .flags()
        .set_flags(FlagChange { proof_mode: Some(false), paused: Some(scenario.flags.paused), killed: None })
        .await?;
    seed(&store, &config, scenario).await?;
    crate::services::scheduler::write(&store, &config).await?;
    // The config's limits, as `run` writes them at its start.
    if let Some(limits) = &config.limits {
        store.limits().write_config_limits(limits, crate::store::ConfigLimits::Replace).await?;
    }
    let targets = scripted_targets(scenario, &config);
    let mut engine = instance(&store, &config, scenario, &targets)?;

    let step = chrono::Duration::milliseconds((scenario.every_seconds.max(0.0) * 1000.0) as i64);
    let mut timeline = Vec::new();
    for n in 1..=scenario.ticks {
        if n > 1 {
            clock.advance(step);
        }
        if let Some(hook) = &before_tick {
            hook(store.clone(), n).await;
        }
        if scenario.failover_at_tick == Some(n) {
            engine = instance(&store, &config, scenario, &targets)?;
        }
        operate(&store, scenario.operator.iter().filter(|s| s.before_tick == n), &targets).await?;
        let report = match watched_tick(&engine, &store, n).await? {
            TickOutcome::Ran(r) => r,
            TickOutcome::NotLeader { owner, .. } => anyhow::bail!("tick {n}: the lease is held by {owner}"),
        };
        let applied: Vec<AppliedDecision> = store
            .decisions()
            .list(report.tick_id)
            .await?
            .into_iter()
            .filter(|d| d.outcome.is_applied())
            .map(|d| AppliedDecision { rule: d.rule, kind: d.kind, target: d.target })
            .collect();
        let open = store.actions().open_counts().await?;
        let open_after = [ActionStatus::Pending, ActionStatus::Retry, ActionStatus::Running]
            .iter()
            .map(|s| open.get(s).copied().unwrap_or(0))
            .sum();
        timeline.push(TickLine {
            tick: n,
            at_seconds: f64::from(n - 1) * scenario.every_seconds,
            status: report.status.to_string(),
            attempted: report.attempted,
            succeeded: report.succeeded,
            due_at_snapshot: report.snapshot.as_ref().map_or(0, |s| s.queue.due_now),
            left_due: report.left_due,
            open_after,
            decisions: applied.iter().map(|d| format!("{}:{}({})", d.rule, d.kind, d.target)).collect(),
            notes: report.notes.clone(),
            applied,
        });
    }
    let failures = check(&scenario.expect, &timeline, &store).await?;
    store.close().await?;
    Ok((timeline, failures))
}

/// Tick `n` of `engine`. A tick that never ends fails its scenario, saying what it left
/// RUNNING, rather than hang the run that checks it.
async fn watched_tick(engine: &Engine, store: &Store, n: u32) -> anyhow::Result<TickOutcome> {
    if let Ok(ran) = tokio::time::timeout(TICK_WATCHDOG, engine.tick()).await {
        return Ok(ran?);
    }
    let running = ActionFilter { status: Some(ActionStatus::Running), action_type: None, limit: 50 };
    let left: Vec<String> = store
        .actions()
        .list_actions(&running)
        .await?
        .iter()
        .map(|a| format!("{} {} attempt {}", a.id, a.action_type, a.attempts))
        .collect();
    anyhow::bail!(
        "tick {n}: not over after {} s; RUNNING: [{}]; counts: {:?}",
        TICK_WATCHDOG.as_secs(),
        left.join(", "),
        store.actions().open_counts().await?
    )
}

/// One target counter per scripted type (the operator's `change_target` moves it): every type
/// the scenario names, in its queue, its adapters, its schedules, and the alerts' type.
fn scripted_targets(scenario: &Scenario, config: &Config) -> BTreeMap<String, Arc<AtomicU32>> {
    let mut types: Vec<&str> = scenario.queue.iter().map(|g| g.action_type.as_str()).collect();
    types.extend(scenario.adapters.keys().map(String::as_str));
    types.extend(config.schedules.iter().flat_map(|s| s.values().map(|s| s.action_type.as_str())));
    if let Some(t) = &config.rules.alert_action_type {
        types.push(t);
    }
    types.into_iter().map(|t| (t.to_string(), Arc::default())).collect()
}

/// An instance of the scenario: an engine with its own owner id, the rules loaded, and a scripted
/// adapter for every type of `targets`.
fn instance(
    store: &Store,
    config: &Config,
    scenario: &Scenario,
    targets: &BTreeMap<String, Arc<AtomicU32>>,
) -> anyhow::Result<Engine> {
    let mut registry = Registry::empty();
    for (t, target) in targets {
        let script = scenario.adapters.get(t).cloned();
        registry.register(Scripted { action_type: t.clone(), script, target: target.clone() });
    }
    let engine = Engine::new(store.clone(), config.clone(), registry);
    engine.decider().load_rules().map_err(|e| anyhow::anyhow!("the rules do not load: {e}"))?;
    Ok(engine)
}

/// The operator's steps before one tick: approvals and rejections by type (each recorded as
/// the scenario's), a target changed.
async fn operate<'a>(
    store: &Store,
    steps: impl Iterator<Item = &'a OperatorStep>,
    targets: &BTreeMap<String, Arc<AtomicU32>>,
) -> anyhow::Result<()> {
    for step in steps {
        if let Some(t) = &step.change_target {
            targets.get(t).ok_or_else(|| anyhow::anyhow!("change_target: no action type {t}"))?.fetch_add(1, SeqCst);
        }
        for (t, approve) in [(&step.approve, true), (&step.reject, false)] {
            let Some(t) = t else { continue };
            let filter = ActionFilter {
                status: Some(ActionStatus::AwaitingApproval),
                action_type: Some(t.clone()),
                limit: 1_000_000,
            };
            for a in store.actions().list_actions(&filter).await? {
                let reason = step.reason.as_deref();
                if approve {
                    store.actions().approve(a.id, "scenario", reason, None).await?;
                } else {
                    store.actions().reject(a.id, "scenario", reason.unwrap_or("rejected by the scenario")).await?;
                }
            }
        }
    }
    Ok(())
}

fn scenario_config(scenario: &Scenario, rules_dir: &Path, tmp: &Path) -> anyhow::Result<Config> {
    let path = tmp.join("orchestrator.yaml");
    let text = match &scenario.config {
        Some(v) => serde_yaml::to_string(v)?,
        None => String::new(),
    };
    std::fs::write(&path, text)?;
    let none = |_: &str| None;
    let mut config = Config::load_from(Inputs {
        config_file: Some(&path),
        env: &none,
        env_names: &[],
        overrides: Overrides::default(),
    })?;
    config.database_url = format!("sqlite:{}", tmp.join("scenario.db").display());
    config.rules_dir = rules_dir.to_path_buf();
    config.artifacts_dir = tmp.join("artifacts");
    Ok(config)
}

/// Inserts the starting queue: each group's actions are created `age_seconds` before the first
/// tick (the clock is moved back for the insert and forward again).
async fn seed(store: &Store, config: &Config, scenario: &Scenario) -> anyhow::Result<()> {
    let start = store.now();
    let defaults = config.enqueue_defaults();
    for (g, group) in scenario.queue.iter().enumerate() {
        let age = chrono::Duration::milliseconds((group.age_seconds.max(0.0) * 1000.0) as i64);
        store.clock().advance(-age);
        let now = store.now();
        let secs = |s: f64| chrono::Duration::milliseconds((s * 1000.0) as i64);
        let mut batch = Vec::with_capacity(group.count as usize);
        for i in 0..group.count {
            let mut payload = group.payload.clone().unwrap_or_else(|| serde_json::json!({}));
            if let Some(obj) = payload.as_object_mut() {
                obj.insert("n".into(), i.into());
            }
            let req = EnqueueRequest {
                action_type: group.action_type.clone(),
                payload,
                idempotency_key: Some(format!("scenario-{g}-{i}")),
                priority: group.priority,
                not_before: Some(start + secs(group.delay_seconds)),
                max_attempts: group.max_attempts,
                expires_at: group.expires_in_seconds.map(|s| start + secs(s)),
                traceparent: None,
                require_approval: group.require_approval,
            };
            batch.push(queue::prepare(&req, &defaults, now).map_err(|e| anyhow::anyhow!("queue group {g}: {e}"))?);
        }
        store.actions().enqueue_many(&batch).await?;
        store.clock().advance(age);
    }
    for (i, w) in scenario.windows.iter().enumerate() {
        let field = match (&w.field, &w.value) {
            (Some(f), Some(v)) => {
                Some(crate::windows::field_match(f, v).map_err(|e| anyhow::anyhow!("window {i}: {e}"))?)
            }
            (None, None) => None,
            _ => anyhow::bail!("window {i}: `field` and `value` go together"),
        };
        let at = |s: f64| start + chrono::Duration::milliseconds((s.max(0.0) * 1000.0) as i64);
        let spec = crate::windows::WindowSpec {
            matcher: crate::windows::Matcher { types: w.types.clone(), field },
            starts_at: at(w.from_seconds),
            ends_at: Some(at(w.from_seconds + w.for_seconds)),
            recurrence: None,
            reason: w.reason.clone(),
            opened_by: "scenario".into(),
        };
        spec.check().map_err(|e| anyhow::anyhow!("window {i}: {e}"))?;
        store.windows().add(&spec).await?;
    }
    Ok(())
}

async fn check(expect: &Expect, timeline: &[TickLine], store: &Store) -> anyhow::Result<Vec<String>> {
    let mut failures = Vec::new();
    if let Some(k) = expect.drained_by_tick {
        match timeline.iter().find(|t| t.open_after == 0) {
            Some(t) if t.tick <= k => {}
            Some(t) => failures.push(format!("drained by tick {k}: drained only at tick {}", t.tick)),
            None => failures.push(format!(
                "drained by tick {k}: {} still open after {} tick(s)",
                timeline.last().map_or(0, |t| t.open_after),
                timeline.len()
            )),
        }
    }
    if expect.no_idle_while_due {
        for t in timeline {
            if t.status == TickStatus::Idle.as_str() && t.left_due > 0 {
                failures
                    .push(format!("no idle tick while work is due: tick {} was IDLE with {} due", t.tick, t.left_due));
            }
        }
    }
    for p in &expect.decisions {
        let ticks: Vec<String> = timeline
            .iter()
            .flat_map(|t| t.applied.iter().filter(|d| p.matches(d)).map(|_| t.tick.to_string()))
            .collect();
        match p.times {
            None if ticks.is_empty() => failures.push(format!("decision {p} was never applied")),
            Some(n) if ticks.len() != n => failures.push(format!(
                "decision {p} applied {} time(s), expected {n}{}",
                ticks.len(),
                if ticks.is_empty() { String::new() } else { format!(" (at ticks {})", ticks.join(", ")) }
            )),
            _ => {}
        }
    }
    for p in &expect.absent {
        if p.times.is_some() {
            failures.push(format!("absent decision {p}: `times` is for `decisions`"));
        }
        if let Some(t) = timeline.iter().find(|t| t.applied.iter().any(|d| p.matches(d))) {
            failures.push(format!("decision {p} must not be applied, but was at tick {}", t.tick));
        }
    }
    if !expect.final_counts.is_empty() {
        let counts = store.actions().count_by_status().await?;
        for (status, want) in &expect.final_counts {
            let s: ActionStatus = status.parse().map_err(|e: String| anyhow::anyhow!("final_counts: {e}"))?;
            let got = counts.get(&s).copied().unwrap_or(0);
            if got != *want {
                failures.push(format!("final count of {s}: expected {want}, got {got}"));
            }
        }
    }
    if !expect.final_error_prefixes.is_empty() {
        let all = store.actions().list_actions(&ActionFilter { limit: 1_000_000, ..Default::default() }).await?;
        for (prefix, want) in &expect.final_error_prefixes {
            let got = all.iter().filter(|a| a.last_error.as_deref().is_some_and(|e| e.starts_with(prefix))).count();
            if got as i64 != *want {
                failures.push(format!("actions whose error starts with {prefix:?}: expected {want}, got {got}"));
            }
        }
    }
    for (tick, text) in &expect.notes {
        match timeline.iter().find(|t| t.tick == *tick) {
            Some(t) if t.notes.contains(text.as_str()) => {}
            Some(t) => failures.push(format!("tick {tick}'s notes should contain {text:?}: {:?}", t.notes)),
            None => failures.push(format!("notes of tick {tick}: the run has {} tick(s)", timeline.len())),
        }
    }
    if !expect.final_dlq_errors.is_empty() {
        let dlq = store
            .actions()
            .list_actions(&ActionFilter { status: Some(ActionStatus::Dlq), action_type: None, limit: 1_000_000 })
            .await?;
        for (error, want) in &expect.final_dlq_errors {
            let got = dlq.iter().filter(|a| a.last_error.as_deref() == Some(error.as_str())).count() as i64;
            if got != *want {
                failures.push(format!("DLQ actions with error {error:?}: expected {want}, got {got}"));
            }
        }
    }
    failures.extend(check_schedules(expect, store).await?);
    Ok(failures)
}

/// Each schedule's fires and misfires against `expect`'s.
async fn check_schedules(expect: &Expect, store: &Store) -> anyhow::Result<Vec<String>> {
    let mut failures = Vec::new();
    if !expect.schedule_fires.is_empty() || !expect.schedule_misfires.is_empty() {
        let rows = store.schedules().list().await?;
        for (what, expected) in [("fires", &expect.schedule_fires), ("misfires", &expect.schedule_misfires)] {
            for (name, want) in expected {
                let got = rows
                    .iter()
                    .find(|r| r.def.name == *name)
                    .map(|r| if what == "fires" { r.fires } else { r.misfires });
                if got != Some(*want) {
                    failures.push(format!(
                        "schedule {name} {what}: expected {want}, got {}",
                        got.map_or("no such schedule".into(), |g| g.to_string())
                    ));
                }
            }
        }
    }
    Ok(failures)
}

/// The scenario's adapter: succeeds, or fails a repeatable fraction of attempts. What it
/// would send (its proof) is its type, its target's generation and the payload, so an operator
/// step that changes the target changes what its actions render to.
struct Scripted {
    action_type: String,
    script: Option<Script>,
    target: Arc<AtomicU32>,
}

impl Scripted {
    fn outcome(&self, action: &Action, tick: Option<i64>, attempt: i32) -> Result<Outcome, AdapterError> {
        let Some(s) = &self.script else { return Ok(Outcome { message: "scripted: ok".into() }) };
        if s.until_tick.is_some_and(|until| tick.is_some_and(|t| t >= until)) {
            return Ok(Outcome { message: "scripted: ok (recovered)".into() });
        }
        // A fixed hash of (id, attempt) in 0..1000: the same run fails the same attempts.
        let h = (action.id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (attempt as u64).wrapping_mul(0xC2B2_AE3D);
        let fails = ((h >> 17) % 1000) < (s.fail_fraction.clamp(0.0, 1.0) * 1000.0) as u64;
        match (fails, s.permanent) {
            (false, _) => Ok(Outcome { message: "scripted: ok".into() }),
            (true, true) => Err(AdapterError::permanent(s.error.clone())),
            (true, false) => Err(AdapterError::retryable(s.error.clone())),
        }
    }
}

#[async_trait::async_trait]
impl Adapter for Scripted {
    fn action_type(&self) -> &str {
        &self.action_type
    }

    fn render_proof(&self, action: &Action) -> Result<Option<Proof>, AdapterError> {
        let body = format!("{} to target {}\n{}", self.action_type, self.target.load(SeqCst), action.payload);
        Ok(Some(Proof { subdir: "scripted".into(), extension: "txt".into(), body: body.into_bytes() }))
    }

    async fn execute(&self, ctx: &ExecContext, action: &Action) -> Result<Outcome, AdapterError> {
        self.outcome(action, ctx.tick_id, ctx.attempt)
    }
}
