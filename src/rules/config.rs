//! The DECIDE stage's settings: the `rules:` section's keys ([`RULES_KEYS`]; the workload
//! score's `rules.health.*` are [`crate::health::WORKLOAD_KEYS`]), which `config` assembles.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::health::HealthThresholds;
use crate::settings::key::KeyDefault::{Unset, Value};
use crate::settings::key::{Key, key};

/// The DECIDE stage's settings (`rules:` in the config file).
#[derive(Clone, Debug, PartialEq)]
pub struct RulesConfig {
    /// `rules.params.<rule>`: each rule's settings, seen by the rule as `params`.
    pub params: BTreeMap<String, serde_json::Value>,
    /// Decisions applied per tick at most, after dedupe (the rest: `suppressed:cap`).
    pub max_decisions_per_tick: u32,
    /// A (rule, kind, target) applied once is suppressed for this long (`suppressed:cooldown`).
    pub cooldown: Duration,
    /// Wall-clock budget of one rule's evaluation.
    pub budget: Duration,
    pub max_operations: u64,
    pub max_call_depth: usize,
    pub max_string_size: usize,
    pub max_array_size: usize,
    pub max_map_size: usize,
    /// `rebalance` boosts waiting actions older than this by one priority step. It defers
    /// nothing: a rule that wants work later names it (`postpone`).
    pub rebalance_age: Duration,
    /// When set, every applied `alert` is also enqueued as an action of this type (payload
    /// `{severity, message, rule, tick_id}`), for the adapter that handles it to deliver.
    pub alert_action_type: Option<String>,
    pub health: HealthThresholds,
}

impl Default for RulesConfig {
    /// The defaults of [`RULES_KEYS`] (the config's tests hold them equal).
    fn default() -> Self {
        RulesConfig {
            params: BTreeMap::new(),
            max_decisions_per_tick: 10,
            cooldown: Duration::from_secs(300),
            budget: Duration::from_millis(50),
            max_operations: 1_000_000,
            max_call_depth: 64,
            max_string_size: 65_536,
            max_array_size: 10_000,
            max_map_size: 10_000,
            rebalance_age: Duration::from_secs(600),
            alert_action_type: None,
            health: HealthThresholds::default(),
        }
    }
}

/// The `rules.*` keys but the workload score's.
pub const RULES_KEYS: &[Key<RulesConfig>] = &[
    key!("rules.params.<rule>": serde_yaml::Value = Unset,
    "A rule's settings (a map), seen by the rule file of that stem as `params`",
    |c, v, at| {
        let rule = at.entry();
        at.check(v.is_mapping() || v.is_null(), || format!("rules.params.{rule} must be a map of settings"))?;
        let json = serde_json::to_value(&v).map_err(|e| at.fail(format!("rules.params.{rule}: {e}")))?;
        c.params.insert(rule.to_string(), json);
    }),
    key!("rules.max_decisions_per_tick": u64 = Value("10"),
        "Decisions applied per tick at most, after dedupe (the rest: `suppressed:cap`)",
        |c, v, at| c.max_decisions_per_tick = at.range(v, 1, 10_000)? as u32),
    key!("rules.cooldown_seconds": f64 = Value("300"),
        "The same decision by the same rule on the same target is suppressed this long",
        |c, v, at| c.cooldown = at.seconds(v, true)?),
    key!("rules.budget_ms": u64 = Value("50"),
        "Wall-clock budget of one rule's evaluation",
        |c, v, at| c.budget = Duration::from_millis(at.range(v, 1, 60_000)?)),
    key!("rules.max_operations": u64 = Value("1000000"),
        "Rhai operations per rule evaluation at most",
        |c, v, at| c.max_operations = at.range(v, 1_000, 1_000_000_000)?),
    key!("rules.max_call_depth": u64 = Value("64"),
        "Rhai call depth at most",
        |c, v, at| c.max_call_depth = at.range(v, 1, 1_000)? as usize),
    key!("rules.max_string_size": u64 = Value("65536"),
        "A Rhai string's length at most",
        |c, v, at| c.max_string_size = at.range(v, 64, 1 << 30)? as usize),
    key!("rules.max_array_size": u64 = Value("10000"),
        "A Rhai array's length at most",
        |c, v, at| c.max_array_size = at.range(v, 16, 1 << 30)? as usize),
    key!("rules.max_map_size": u64 = Value("10000"),
        "A Rhai map's size at most",
        |c, v, at| c.max_map_size = at.range(v, 16, 1 << 30)? as usize),
    key!("rules.rebalance_age_seconds": f64 = Value("600"),
        "`rebalance` gives waiting actions older than this one priority step",
        |c, v, at| c.rebalance_age = at.seconds(v, true)?),
    key!("rules.alert_action_type": Option<String> = Unset,
    "Also enqueue each applied alert as an action of this type (e.g. `ALERT`)",
    |c, v, at| {
        if let Some(t) = &v {
            crate::queue::validate_type(t).map_err(|e| at.fail(format!("rules.alert_action_type: {e}")))?;
        }
        c.alert_action_type = v;
    }),
];
