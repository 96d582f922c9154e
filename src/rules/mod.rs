//! DECIDE: loads `rules/*.rhai` (one rule per file, named after its stem), compiles each once
//! with strict variables, and evaluates them against a snapshot into decisions.
//!
//! A rule sees `snap` (the snapshot, a read-only map), `state` (its own map, persisted by the
//! caller between ticks) and `params` (`rules.params.<rule>` from the config), and ends with an
//! array of decisions built by the constructors in [`sandbox`] (or `()` for none). Evaluation is
//! sandboxed (operations, call depth, sizes, a wall-clock budget, no files, no modules); a
//! failing rule yields a [`Diagnostic`] with file, line and column and the others still run.
//!
//! Architecture invariant: rules never touch the store. This module does no I/O but reading
//! the rule files when asked to load them.

mod config;
pub(crate) mod convert;
pub mod fixtures;
pub(crate) mod pipeline;
mod sandbox;
mod windows;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rhai::{AST, Dynamic, Map, Scope};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::model::DecisionKind;
pub use config::{RULES_KEYS, RulesConfig};

/// Decisions carry a priority from 0 to 10; this is the one a constructor gives by default.
pub const DEFAULT_PRIORITY: u8 = 5;
pub const MAX_PRIORITY: u8 = 10;

/// A problem with a rule, located in its file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub rule: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.column, self.message)
    }
}

/// Loading a rule set failed.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read rules directory {}: {source}", dir.display())]
    Dir { dir: PathBuf, source: std::io::Error },
    #[error("{} rule error(s):\n{}", .0.len(), .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
}

/// The longest a `postpone` may push an action back: one year.
pub const MAX_POSTPONE_SECONDS: u64 = 365 * 86_400;

/// What a decision does, and to what. `Postpone` is the seed's `downgrade_low_score_clip`: not
/// before `seconds` from now.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Kind {
    Retry {
        id: i64,
    },
    Dlq {
        id: i64,
    },
    Cancel {
        id: i64,
    },
    ForceRun {
        id: i64,
    },
    Reprioritize {
        id: i64,
        to: i32,
    },
    Postpone {
        id: i64,
        seconds: u64,
    },
    Rebalance,
    Pause,
    Resume,
    Throttle {
        n: u32,
    },
    /// A temporary value of one limit of one type, in the database (so every worker honours
    /// it) until `seconds` from now.
    SetLimit {
        #[serde(rename = "type")]
        action_type: String,
        field: crate::limits::LimitField,
        value: crate::limits::LimitValue,
        seconds: u64,
    },
    Enqueue {
        action_type: String,
        payload: Value,
        key: String,
        /// True: the action waits for an operator's approval (`approval: true` in the
        /// decision, or `enqueue_for_approval`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        approval: bool,
    },
    /// Stop firing a schedule until resumed (a breaker); its reason is shown by `schedules list`.
    PauseSchedule {
        name: String,
    },
    /// Fire a paused schedule again, from its next slot.
    ResumeSchedule {
        name: String,
    },
    /// Cooled down and deduplicated by its rule and `key`, never by its message (whose text
    /// may carry a count that changes every tick).
    Alert {
        severity: crate::model::Severity,
        message: String,
        key: String,
    },
    /// A maintenance window opened for `seconds` from now (at most
    /// `crate::windows::MAX_RULE_WINDOW`), in the database, fenced: a breaker that holds a
    /// type after a peer fails (`windows.rs` below).
    OpenWindow {
        types: Vec<String>,
        field: Option<crate::windows::FieldMatch>,
        seconds: u64,
    },
}

impl Kind {
    /// The kind's name alone, as decisions are recorded and counted.
    pub fn decision_kind(&self) -> DecisionKind {
        match self {
            Kind::Retry { .. } => DecisionKind::Retry,
            Kind::Dlq { .. } => DecisionKind::Dlq,
            Kind::Cancel { .. } => DecisionKind::Cancel,
            Kind::ForceRun { .. } => DecisionKind::ForceRun,
            Kind::Reprioritize { .. } => DecisionKind::Reprioritize,
            Kind::Postpone { .. } => DecisionKind::Postpone,
            Kind::Rebalance => DecisionKind::Rebalance,
            Kind::Pause => DecisionKind::Pause,
            Kind::Resume => DecisionKind::Resume,
            Kind::Throttle { .. } => DecisionKind::Throttle,
            Kind::SetLimit { .. } => DecisionKind::SetLimit,
            Kind::Enqueue { .. } => DecisionKind::Enqueue,
            Kind::PauseSchedule { .. } => DecisionKind::PauseSchedule,
            Kind::ResumeSchedule { .. } => DecisionKind::ResumeSchedule,
            Kind::Alert { .. } => DecisionKind::Alert,
            Kind::OpenWindow { .. } => DecisionKind::OpenWindow,
        }
    }

    /// [`Kind::decision_kind`]'s text (`retry`, `force_run`, ...).
    pub fn name(&self) -> &'static str {
        self.decision_kind().as_str()
    }

    /// What dedupe and cooldowns key on: the action id, the idempotency key, the alert's key
    /// (with its rule: see [`Decision::dedupe_key`]), or the thing a global decision acts on.
    pub fn target(&self) -> String {
        match self {
            Kind::Retry { id } | Kind::Dlq { id } | Kind::Cancel { id } | Kind::ForceRun { id } => id.to_string(),
            Kind::Reprioritize { id, .. } | Kind::Postpone { id, .. } => id.to_string(),
            Kind::Rebalance => "queue".into(),
            Kind::Pause | Kind::Resume => "flags".into(),
            Kind::Throttle { .. } => "dispatch".into(),
            Kind::SetLimit { action_type, field, .. } => format!("{action_type}.{field}"),
            Kind::Enqueue { key, .. } => key.clone(),
            Kind::PauseSchedule { name } | Kind::ResumeSchedule { name } => format!("schedule:{name}"),
            Kind::Alert { key, .. } => key.clone(),
            Kind::OpenWindow { types, field, .. } => windows::target(types, field.as_ref()),
        }
    }

    /// While the system is paused, only these still act.
    pub fn allowed_while_paused(&self) -> bool {
        matches!(self, Kind::Pause | Kind::Resume | Kind::Alert { .. })
    }
}

/// One decision of one rule.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decision {
    pub rule: String,
    #[serde(flatten)]
    pub kind: Kind,
    pub priority: u8,
    pub reason: String,
}

impl Decision {
    /// What the pipeline deduplicates on: the kind and the target, and for an alert its rule
    /// too, since an alert's key is its rule's own (two rules' `warning` alerts are two alerts).
    pub fn dedupe_key(&self) -> (String, String, String) {
        let rule = if matches!(self.kind, Kind::Alert { .. }) { self.rule.clone() } else { String::new() };
        (self.kind.name().to_string(), self.kind.target(), rule)
    }
}

/// The longest alert key, in characters.
pub const MAX_ALERT_KEY_CHARS: usize = 200;

/// One compiled rule.
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub path: PathBuf,
    ast: AST,
}

/// What one rule did in one evaluation.
#[derive(Clone, Debug)]
pub struct RuleRun {
    pub rule: String,
    pub decisions: Vec<Decision>,
    /// The state after the run (unchanged when the rule failed).
    pub state: Value,
    /// The rule failed or ran out of budget: nothing it decided is kept.
    pub error: Option<Diagnostic>,
    /// Decisions it returned that were not valid (unknown kind, missing target...), at most
    /// [`MAX_INVALID_PER_RULE`].
    pub invalid: Vec<Diagnostic>,
    /// Decisions it returned beyond [`MAX_DECISIONS_PER_RULE`] (not validated), plus invalid
    /// ones beyond [`MAX_INVALID_PER_RULE`] (not reported one by one): counted, nothing more.
    pub overflow: usize,
    pub elapsed: Duration,
}

/// At most this many of one rule's decisions are validated and recorded per tick; a rule that
/// returns thousands costs one ledger note, not thousands of rows.
pub const MAX_DECISIONS_PER_RULE: usize = 100;
/// At most this many invalid decisions of one rule become diagnostics (and ledger notes) per tick.
pub const MAX_INVALID_PER_RULE: usize = 10;

/// A compiled, checked set of rules, ready to evaluate every tick.
#[derive(Clone)]
pub struct RuleSet {
    engine: Arc<rhai::Engine>,
    rules: Vec<Rule>,
    digest: String,
    params: BTreeMap<String, Value>,
    budget: Duration,
}

impl fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleSet").field("rules", &self.names()).field("digest", &self.digest).finish()
    }
}

/// The rule's name: its file stem.
fn stem(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The `*.rhai` files of a directory, sorted by name. Each must be a regular file, or a symlink
/// that resolves to one inside `dir` ([`crate::input::check_rule_file`]); any other `*.rhai`
/// entry rejects the set with a one-line reason that quotes nothing of what it points to.
pub fn rule_files(dir: &Path) -> Result<Vec<PathBuf>, RulesError> {
    let entries = std::fs::read_dir(dir).map_err(|source| RulesError::Dir { dir: dir.to_path_buf(), source })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "rhai"))
        .collect();
    files.sort();
    let refused: Vec<Diagnostic> = files
        .iter()
        .filter_map(|p| {
            crate::input::check_rule_file(dir, p).err().map(|message| Diagnostic {
                rule: stem(p),
                file: p.clone(),
                line: 1,
                column: 1,
                message,
            })
        })
        .collect();
    if !refused.is_empty() {
        return Err(RulesError::Invalid(refused));
    }
    Ok(files)
}

/// Reads one rule file, bounded in size.
pub fn read_rule_file(path: &Path) -> Result<String, crate::input::ReadError> {
    crate::input::read_text_capped(path, crate::input::MAX_RULE_FILE_BYTES, "a rule file")
}

impl RuleSet {
    /// No rules: every tick decides nothing.
    pub fn empty(cfg: &RulesConfig) -> RuleSet {
        RuleSet {
            engine: Arc::new(sandbox::engine(cfg)),
            rules: Vec::new(),
            digest: digest(&[]),
            params: cfg.params.clone(),
            budget: cfg.budget,
        }
    }

    /// Loads and compiles every `*.rhai` in `dir`. Any rule that fails to read or compile
    /// rejects the whole set, with every diagnostic.
    pub fn load(dir: &Path, cfg: &RulesConfig) -> Result<RuleSet, RulesError> {
        let mut sources = Vec::new();
        let mut diags = Vec::new();
        for path in rule_files(dir)? {
            match read_rule_file(&path) {
                Ok(text) => sources.push((path, text)),
                Err(e) => diags.push(Diagnostic {
                    rule: stem(&path),
                    file: path,
                    line: 1,
                    column: 1,
                    message: format!("cannot read: {e}"),
                }),
            }
        }
        match RuleSet::from_sources(sources, cfg) {
            Ok(set) if diags.is_empty() => Ok(set),
            Ok(_) => Err(RulesError::Invalid(diags)),
            Err(mut more) => {
                diags.append(&mut more);
                Err(RulesError::Invalid(diags))
            }
        }
    }

    /// Compiles rules from (path, source) pairs; the rule is named after the path's stem.
    pub fn from_sources(sources: Vec<(PathBuf, String)>, cfg: &RulesConfig) -> Result<RuleSet, Vec<Diagnostic>> {
        let engine = sandbox::engine(cfg);
        let mut rules = Vec::with_capacity(sources.len());
        let mut diags = Vec::new();
        let mut digest_input = Vec::with_capacity(sources.len());
        for (path, text) in &sources {
            let name = stem(path);
            digest_input.push((name.clone(), text.clone()));
            // Plain variables, not constants: constants would be folded into the AST at compile
            // time. Strict variables only needs the names to exist.
            let mut scope = Scope::new();
            for name in ["snap", "state", "params"] {
                scope.push_dynamic(name, Dynamic::from_map(Map::new()));
            }
            match engine.compile_with_scope(&scope, text) {
                Ok(ast) => rules.push(Rule { name, path: path.clone(), ast }),
                Err(e) => diags.push(Diagnostic {
                    rule: name,
                    file: path.clone(),
                    line: e.1.line().unwrap_or(1),
                    column: e.1.position().unwrap_or(1),
                    message: e.0.to_string(),
                }),
            }
        }
        if !diags.is_empty() {
            return Err(diags);
        }
        digest_input.sort();
        Ok(RuleSet {
            engine: Arc::new(engine),
            rules,
            digest: digest(&digest_input),
            params: cfg.params.clone(),
            budget: cfg.budget,
        })
    }

    /// Compiles, then evaluates every rule against a default snapshot: the rule set as
    /// `rules check` and hot reload accept it. Returns every diagnostic.
    pub fn check(&self) -> Vec<Diagnostic> {
        let snap = serde_json::to_value(crate::snapshot::Snapshot::example()).unwrap_or(Value::Null);
        self.evaluate(&snap, &BTreeMap::new()).into_iter().flat_map(|r| r.error.into_iter().chain(r.invalid)).collect()
    }

    /// sha256 of the rules' names and sources.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn names(&self) -> Vec<&str> {
        self.rules.iter().map(|r| r.name.as_str()).collect()
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Evaluates every rule against `snap` (the snapshot as JSON) with each rule's `state`.
    pub fn evaluate(&self, snap: &Value, states: &BTreeMap<String, Value>) -> Vec<RuleRun> {
        let snap = convert::to_dynamic(snap);
        self.rules.iter().map(|rule| self.run_rule(rule, &snap, states.get(&rule.name))).collect()
    }

    /// Evaluates only the rules named in `only`.
    pub fn evaluate_only(&self, snap: &Value, states: &BTreeMap<String, Value>, only: &[String]) -> Vec<RuleRun> {
        let snap = convert::to_dynamic(snap);
        self.rules
            .iter()
            .filter(|r| only.contains(&r.name))
            .map(|rule| self.run_rule(rule, &snap, states.get(&rule.name)))
            .collect()
    }

    fn run_rule(&self, rule: &Rule, snap: &Dynamic, state: Option<&Value>) -> RuleRun {
        // One span per rule, a child of the tick's when traces are on (evaluation is synchronous).
        let _span = tracing::info_span!(target: crate::telemetry::TARGET, "rule", rule = %rule.name).entered();
        let started = Instant::now();
        let state_in = match state {
            Some(v @ Value::Object(_)) => v.clone(),
            _ => Value::Object(serde_json::Map::new()),
        };
        let params = self.params.get(&rule.name).cloned().unwrap_or(Value::Object(serde_json::Map::new()));
        let params = if params.is_object() { params } else { Value::Object(serde_json::Map::new()) };
        let mut scope = base_scope(convert::to_dynamic(&state_in), convert::to_dynamic(&params), snap.clone());
        let diag = |line: Option<usize>, column: Option<usize>, message: String| Diagnostic {
            file: rule.path.clone(),
            rule: rule.name.clone(),
            line: line.unwrap_or(0),
            column: column.unwrap_or(0),
            message,
        };
        let result =
            sandbox::with_budget(self.budget, || self.engine.eval_ast_with_scope::<Dynamic>(&mut scope, &rule.ast));
        let elapsed = started.elapsed();
        let failed = |error: Diagnostic| RuleRun {
            rule: rule.name.clone(),
            decisions: Vec::new(),
            state: state_in.clone(),
            error: Some(error),
            invalid: Vec::new(),
            overflow: 0,
            elapsed,
        };
        let value = match result {
            Ok(v) => v,
            Err(e) => {
                let pos = e.position();
                return failed(diag(pos.line(), pos.position(), sandbox::describe(&e, self.budget)));
            }
        };
        let state_out = match scope.get("state").map(convert::to_json) {
            Some(Ok(v @ Value::Object(_))) => {
                match crate::queue::validate("state", &v, crate::queue::MAX_STATE_BYTES) {
                    Ok(_) => v,
                    // Refused here, with a diagnostic, rather than stored and unreadable next tick.
                    Err(e) => return failed(diag(None, None, format!("state cannot be saved: {e}"))),
                }
            }
            Some(Ok(other)) => {
                return failed(diag(None, None, format!("state must stay a map, the rule made it {other}")));
            }
            Some(Err(e)) => return failed(diag(None, None, format!("state cannot be saved: {e}"))),
            None => state_in.clone(),
        };
        let (decisions, invalid, overflow) = collect(&rule.name, &value, |m| diag(Some(0), Some(0), m));
        RuleRun { rule: rule.name.clone(), decisions, state: state_out, error: None, invalid, overflow, elapsed }
    }
}

fn base_scope(state: Dynamic, params: Dynamic, snap: Dynamic) -> Scope<'static> {
    let mut scope = Scope::new();
    scope.push_constant_dynamic("snap", snap);
    scope.push_dynamic("state", state);
    scope.push_constant_dynamic("params", params);
    scope
}

fn digest(sources: &[(String, String)]) -> String {
    let mut h = Sha256::new();
    for (name, text) in sources {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(text.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// Turns a rule's result into decisions; anything that is not a valid decision becomes a
/// diagnostic (built by `diag`). Bounded: the first [`MAX_DECISIONS_PER_RULE`] items are
/// validated and at most [`MAX_INVALID_PER_RULE`] diagnostics kept; the rest are counted (the
/// third value).
fn collect(
    rule: &str,
    value: &Dynamic,
    diag: impl Fn(String) -> Diagnostic,
) -> (Vec<Decision>, Vec<Diagnostic>, usize) {
    let mut decisions = Vec::new();
    let mut invalid = Vec::new();
    if value.is_unit() {
        return (decisions, invalid, 0);
    }
    let (items, total): (Vec<Dynamic>, usize) = if value.is_array() {
        value
            .read_lock::<rhai::Array>()
            .map(|a| (a.iter().take(MAX_DECISIONS_PER_RULE).cloned().collect(), a.len()))
            .unwrap_or_default()
    } else if value.is_map() {
        (vec![value.clone()], 1)
    } else {
        invalid.push(diag(format!(
            "a rule must end with an array of decisions or (), not a value of type {}",
            value.type_name()
        )));
        return (decisions, invalid, 0);
    };
    let mut overflow = total - items.len();
    for (i, item) in items.iter().enumerate() {
        match convert::to_json(item).and_then(|j| decision_from_json(rule, &j)) {
            Ok(d) => decisions.push(d),
            Err(_) if invalid.len() >= MAX_INVALID_PER_RULE => overflow += 1,
            Err(e) => invalid.push(diag(format!("decision #{}: {e}", i + 1))),
        }
    }
    (decisions, invalid, overflow)
}

/// `pause_schedule` and `resume_schedule` with their schedule's `name`; the window kinds
/// (`windows.rs`), which refuse any other kind by name.
fn schedule_or_window_kind(
    kind: &str,
    obj: &serde_json::Map<String, Value>,
    name: impl FnOnce() -> Result<String, String>,
) -> Result<Kind, String> {
    let make: fn(String) -> Kind = match kind {
        "pause_schedule" => |name| Kind::PauseSchedule { name },
        "resume_schedule" => |name| Kind::ResumeSchedule { name },
        other => return windows::kind_from_json(other, obj),
    };
    let name = name()?;
    crate::schedules::validate_name(&name).map_err(|e| format!("{kind}: {e}"))?;
    Ok(make(name))
}

/// An enqueue decision's `approval` (absent: none needed).
fn approval_of(obj: &serde_json::Map<String, Value>) -> Result<bool, String> {
    match obj.get("approval") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(format!("enqueue `approval` must be true or false, got {other}")),
    }
}

/// Validates one decision as a rule returned it (a map with `kind`).
pub fn decision_from_json(rule: &str, v: &Value) -> Result<Decision, String> {
    let obj = v.as_object().ok_or_else(|| format!("expected a decision map, got {v}"))?;
    let kind = obj.get("kind").and_then(Value::as_str).ok_or("it has no kind")?;
    let int = |field: &str| -> Result<i64, String> {
        obj.get(field).and_then(Value::as_i64).ok_or_else(|| format!("{kind} needs an integer `{field}`"))
    };
    let text = |field: &str| -> Result<String, String> {
        match obj.get(field).and_then(Value::as_str) {
            Some(s) if !s.trim().is_empty() => Ok(s.to_string()),
            _ => Err(format!("{kind} needs a non-empty `{field}`")),
        }
    };
    let id = || -> Result<i64, String> {
        let id = int("id")?;
        if id <= 0 { Err(format!("{kind} needs a target action id, got {id}")) } else { Ok(id) }
    };
    let k = match kind {
        "retry" => Kind::Retry { id: id()? },
        "dlq" => Kind::Dlq { id: id()? },
        "cancel" => Kind::Cancel { id: id()? },
        "force_run" => Kind::ForceRun { id: id()? },
        "reprioritize" => {
            let to = int("to")?;
            let to = i32::try_from(to)
                .ok()
                .filter(|p| crate::queue::PRIORITY_RANGE.contains(p))
                .ok_or_else(|| format!("reprioritize: priority {to} is out of range"))?;
            Kind::Reprioritize { id: id()?, to }
        }
        "postpone" => {
            let seconds = int("seconds")?;
            // A year at most, like every duration of the config.
            let seconds =
                u64::try_from(seconds).ok().filter(|s| (1..=MAX_POSTPONE_SECONDS).contains(s)).ok_or_else(|| {
                    format!("postpone: seconds must be between 1 and {MAX_POSTPONE_SECONDS}, got {seconds}")
                })?;
            Kind::Postpone { id: id()?, seconds }
        }
        "rebalance" => Kind::Rebalance,
        "pause" => Kind::Pause,
        "resume" => Kind::Resume,
        "throttle" => {
            let n = int("n")?;
            Kind::Throttle { n: u32::try_from(n).map_err(|_| format!("throttle needs n >= 0, got {n}"))? }
        }
        "set_limit" => {
            let action_type = text("type")?;
            crate::queue::validate_type(&action_type).map_err(|e| format!("set_limit: {e}"))?;
            let field: crate::limits::LimitField = text("field")?.parse().map_err(|e| format!("set_limit: {e}"))?;
            let value = crate::limits::LimitValue::from_json(field, obj.get("value"))
                .map_err(|e| format!("set_limit `value`: {e}"))?;
            let seconds = int("seconds")?;
            let lasts = u64::try_from(seconds).map(Duration::from_secs).unwrap_or_default();
            let seconds = crate::limits::check_override_lasts(lasts).map_err(|e| format!("set_limit: {e}"))?.as_secs();
            Kind::SetLimit { action_type, field, value, seconds }
        }
        "enqueue" => {
            let action_type = text("type")?;
            crate::queue::validate_type(&action_type)?;
            let key = text("key")?;
            crate::queue::validate_key(&key)?;
            let payload = obj.get("payload").cloned().unwrap_or(Value::Object(serde_json::Map::new()));
            if !payload.is_object() {
                return Err("enqueue needs a map `payload`".into());
            }
            crate::queue::validate("enqueue payload", &payload, crate::queue::MAX_PAYLOAD_BYTES)?;
            Kind::Enqueue { action_type, payload, key, approval: approval_of(obj)? }
        }
        "alert" => {
            let severity: crate::model::Severity = text("severity")?.parse().map_err(|e| format!("alert {e}"))?;
            // Without a key, one alert per rule and severity per cooldown.
            let key = match obj.get("key") {
                None | Some(Value::Null) => severity.as_str().to_string(),
                Some(_) => text("key")?,
            };
            let n = key.chars().count();
            if n > MAX_ALERT_KEY_CHARS || key.chars().any(char::is_control) {
                return Err(format!(
                    "alert `key` must be 1 to {MAX_ALERT_KEY_CHARS} characters without control characters, got {n}"
                ));
            }
            Kind::Alert { severity, message: text("message")?, key }
        }
        other => schedule_or_window_kind(other, obj, || text("name"))?,
    };
    let priority = match obj.get("priority") {
        None | Some(Value::Null) => DEFAULT_PRIORITY,
        Some(p) => p
            .as_i64()
            .and_then(|p| u8::try_from(p).ok())
            .filter(|p| *p <= MAX_PRIORITY)
            .ok_or_else(|| format!("priority must be an integer from 0 to {MAX_PRIORITY}, got {p}"))?,
    };
    let reason = match &k {
        Kind::Alert { message, .. } => message.clone(),
        // Stored with the override, so held to the bound of an operator's reason.
        Kind::SetLimit { .. } => {
            crate::limits::check_override_reason(&text("reason")?).map_err(|e| format!("set_limit `reason`: {e}"))?
        }
        _ => text("reason")?,
    };
    Ok(Decision { rule: rule.to_string(), kind: k, priority, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_limit_decisions_are_checked() {
        use crate::limits::{LimitField, LimitValue, Rate};
        let base = serde_json::json!({
            "kind": "set_limit", "type": "WEBHOOK", "field": "rate", "value": "5/1s", "seconds": 60, "reason": "x"
        });
        let d = decision_from_json("r", &base).unwrap();
        let rate = LimitValue::Rate(Rate { count: 5, period: Duration::from_secs(1) });
        assert_eq!(
            d.kind,
            Kind::SetLimit { action_type: "WEBHOOK".into(), field: LimitField::Rate, value: rate, seconds: 60 }
        );
        assert_eq!(d.kind.target(), "WEBHOOK.rate");
        let with = |k: &str, v: serde_json::Value| {
            let mut o = base.clone();
            o[k] = v;
            decision_from_json("r", &o).unwrap_err()
        };
        assert!(with("field", "max".into()).contains("not a limit field"));
        assert!(with("value", true.into()).contains("expected a whole number"));
        assert!(with("value", 7.into()).contains("N/PERIOD"), "a rate needs its period");
        assert!(with("type", "a b".into()).contains("set_limit"));
        assert!(with("seconds", 0.into()).contains("from 1s to 30 days"));
        assert!(with("seconds", (30 * 86_400 + 1).into()).contains("30 days"));
        let long = "x".repeat(crate::limits::MAX_REASON_CHARS + 1);
        assert!(with("reason", long.into()).contains("set_limit `reason`: the reason must be 1 to 500 characters"));
        let longest = "x".repeat(crate::limits::MAX_REASON_CHARS);
        let mut o = base.clone();
        o["reason"] = format!(" {longest} ").into();
        assert_eq!(decision_from_json("r", &o).unwrap().reason, longest, "kept trimmed, as an operator's");
        let mut count = base.clone();
        count["field"] = "max_running".into();
        count["value"] = (-1).into();
        assert!(decision_from_json("r", &count).unwrap_err().contains("from 0"));
    }

    fn set(rules: &[(&str, &str)]) -> Result<RuleSet, Vec<Diagnostic>> {
        let cfg = RulesConfig { budget: Duration::from_millis(100), ..Default::default() };
        RuleSet::from_sources(
            rules.iter().map(|(n, s)| (PathBuf::from(format!("rules/{n}.rhai")), s.to_string())).collect(),
            &cfg,
        )
    }

    fn snap() -> Value {
        serde_json::to_value(crate::snapshot::Snapshot::example()).unwrap()
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let e = set(&[("ok", "[]"), ("bad", "let x = 1;\nlet y = (2 +;\n")]).unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].line, e[0].column), (2, 13), "{}", e[0]);
        assert!(e[0].to_string().starts_with("rules/bad.rhai:2:13: "), "{}", e[0]);
    }

    #[test]
    fn undefined_variable_is_a_compile_error() {
        let e = set(&[("typo", "if snapp.queue.pending > 1 { [] }")]).unwrap_err();
        assert_eq!(e[0].line, 1, "{}", e[0]);
        assert!(e[0].message.contains("snapp"), "{}", e[0]);
    }

    #[test]
    fn constructors_state_and_params() {
        let rules = set(&[(
            "r",
            "state.n = (state.n ?? 0) + 1;\n[retry(7, \"x\"), dlq(8, \"y\", 9), alert(\"critical\", \"hi\", 10), throttle(params.n ?? 2, \"t\"), alert(\"info\", `n=${state.n}`, \"count\"), alert(\"info\", \"k\", \"count\", 2)]",
        )])
        .unwrap();
        let runs = rules.evaluate(&snap(), &BTreeMap::from([("r".to_string(), serde_json::json!({"n": 4}))]));
        let r = &runs[0];
        assert!(r.error.is_none() && r.invalid.is_empty(), "{r:?}");
        assert_eq!(r.state, serde_json::json!({"n": 5}));
        let kinds: Vec<(&str, String, u8)> =
            r.decisions.iter().map(|d| (d.kind.name(), d.kind.target(), d.priority)).collect();
        assert_eq!(
            kinds,
            vec![
                ("retry", "7".into(), 5),
                ("dlq", "8".into(), 9),
                ("alert", "critical".into(), 10),
                ("throttle", "dispatch".into(), 5),
                ("alert", "count".into(), 5),
                ("alert", "count".into(), 2)
            ]
        );
        assert_eq!(r.decisions[4].reason, "n=5", "an alert's reason is its message; its target, its key");
    }

    #[test]
    fn alert_keys_are_checked() {
        let alert = |key: serde_json::Value| {
            let v = serde_json::json!({"kind": "alert", "severity": "warning", "message": "m", "key": key});
            decision_from_json("r", &v)
        };
        assert_eq!(alert(serde_json::Value::Null).unwrap().kind.target(), "warning", "default: the severity");
        assert_eq!(alert("bad_ticks".into()).unwrap().kind.target(), "bad_ticks");
        assert!(alert("".into()).unwrap_err().contains("non-empty `key`"));
        assert!(alert("a\nb".into()).unwrap_err().contains("without control characters"));
        assert!(alert("k".repeat(MAX_ALERT_KEY_CHARS + 1).into()).unwrap_err().contains("1 to 200 characters"));
        assert!(alert("k".repeat(MAX_ALERT_KEY_CHARS).into()).is_ok());
    }

    #[test]
    fn snap_is_read_only_and_bad_decisions_are_diagnostics() {
        let rules = set(&[
            ("writes", "snap.queue.pending = 5; []"),
            ("bad", "[#{kind: \"explode\"}, retry(0, \"no target\"), retry(1, \"p\", 11), cancel(3, \"fine\")]"),
        ])
        .unwrap();
        let runs = rules.evaluate(&snap(), &BTreeMap::new());
        assert!(runs[0].error.as_ref().is_some_and(|e| e.message.contains("constant")), "{:?}", runs[0].error);
        assert_eq!(runs[1].decisions.len(), 1);
        let msgs: Vec<&str> = runs[1].invalid.iter().map(|d| d.message.as_str()).collect();
        assert!(msgs[0].contains("unknown decision kind"), "{msgs:?}");
        assert!(msgs[1].contains("target action id"), "{msgs:?}");
        assert!(msgs[2].contains("priority must be"), "{msgs:?}");
    }

    #[test]
    fn runaway_rules_are_stopped_and_the_others_still_decide() {
        let rules = set(&[
            ("a_loop", "loop { }"),
            ("b_string", "let s = \"xxxxxxxx\"; loop { s += s; }"),
            ("c_recursion", "fn f(n) { f(n + 1) } f(0)"),
            ("d_fine", "[pause(\"ok\")]"),
            ("e_array", "let a = []; loop { a.push(1); }"),
        ])
        .unwrap();
        let started = Instant::now();
        let runs = rules.evaluate(&snap(), &BTreeMap::new());
        assert!(started.elapsed() < Duration::from_secs(5));
        for r in &runs {
            if r.rule == "d_fine" {
                assert!(r.error.is_none());
                assert_eq!(r.decisions[0].kind, Kind::Pause);
            } else {
                let e = r.error.as_ref().unwrap_or_else(|| panic!("{} was not stopped", r.rule));
                assert!(e.line >= 1, "{e}");
            }
        }
        let msg = |n: &str| runs.iter().find(|r| r.rule == n).and_then(|r| r.error.clone()).unwrap().message;
        assert!(msg("a_loop").contains("budget") || msg("a_loop").contains("operations"), "{}", msg("a_loop"));
        assert!(msg("b_string").contains("too large") || msg("b_string").contains("size"), "{}", msg("b_string"));
        assert!(msg("c_recursion").contains("call") || msg("c_recursion").contains("stack"), "{}", msg("c_recursion"));
    }

    #[test]
    fn no_modules_no_eval() {
        let e = set(&[("imp", "import \"x\" as y; []")]);
        let failed = match e {
            Err(d) => !d.is_empty(),
            Ok(s) => s.evaluate(&snap(), &BTreeMap::new())[0].error.is_some(),
        };
        assert!(failed, "import must not work");
    }

    #[test]
    fn digest_changes_with_the_source() {
        let a = set(&[("r", "[]")]).unwrap();
        let b = set(&[("r", "[] ")]).unwrap();
        assert_ne!(a.digest(), b.digest());
        assert_eq!(a.digest(), set(&[("r", "[]")]).unwrap().digest());
    }
}
