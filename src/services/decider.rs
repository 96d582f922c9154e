//! The decider: the live rule set, and the DECIDE step that runs it.
//!
//! It owns the rule set in use (swapped whole on a reload, so a tick never sees half of one),
//! what went wrong with it lately (a rejected reload, the last tick's rule failures), and the
//! rule metrics. [`Decider::decide`] runs the rules on a snapshot through `decide.rs`, which
//! applies what survives under the tick's fence; with no fence it writes nothing (a dry run).
//! It never claims or dispatches.

use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;

use crate::config::Config;
use crate::decide::Decided;
use crate::metrics::{Metrics, RuleMetrics};
use crate::rules::{Diagnostic, RuleSet, RulesError};
use crate::snapshot::Snapshot;
use crate::store::{Fence, Store, StoreError};

/// What went wrong with this engine's rules lately, for `/status`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RuleDiagnostics {
    /// Why the last (re)load was rejected (the previous set stayed active); empty once a load
    /// succeeds.
    pub rejected_load: Vec<Diagnostic>,
    /// Rule failures and invalid decisions of this engine's last tick.
    pub last_tick: Vec<Diagnostic>,
}

/// The rule set in use and the step that runs it.
#[derive(Clone, Debug)]
pub struct Decider {
    store: Store,
    config: Arc<Config>,
    rules: Arc<RwLock<Arc<RuleSet>>>,
    metrics: Arc<RuleMetrics>,
    diagnostics: Arc<Mutex<RuleDiagnostics>>,
}

impl Decider {
    /// A decider with no rules loaded yet, its metrics registered in `metrics`.
    pub fn new(store: Store, config: Arc<Config>, metrics: &Metrics) -> Self {
        let rules = Arc::new(RwLock::new(Arc::new(RuleSet::empty(&config.rules))));
        Decider { store, rules, metrics: Arc::new(RuleMetrics::register(metrics)), diagnostics: Arc::default(), config }
    }

    /// The active rule set.
    pub fn rules(&self) -> Arc<RuleSet> {
        match self.rules.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Makes `rules` the active set.
    pub fn set_rules(&self, rules: RuleSet) {
        self.metrics.loaded.set(rules.len() as i64);
        self.metrics.reload_success.set(1);
        match self.rules.write() {
            Ok(mut r) => *r = Arc::new(rules),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(rules),
        }
    }

    /// Loads, compiles and checks the rules directory; on success it becomes the active set, on
    /// failure the active set stays and the error carries every diagnostic. A missing directory
    /// is an empty rule set.
    pub fn load_rules(&self) -> Result<usize, RulesError> {
        match self.read_rules() {
            Ok(set) => {
                let n = set.len();
                self.set_rules(set);
                self.with_diagnostics(|d| d.rejected_load.clear());
                Ok(n)
            }
            Err(e) => {
                self.metrics.reload_success.set(0);
                let diags = match &e {
                    RulesError::Invalid(diags) => diags.clone(),
                    RulesError::Dir { dir, source } => vec![Diagnostic {
                        file: dir.clone(),
                        rule: String::new(),
                        line: 0,
                        column: 0,
                        message: format!("cannot read the rules directory: {source}"),
                    }],
                };
                self.with_diagnostics(|d| d.rejected_load = diags);
                Err(e)
            }
        }
    }

    /// The rules directory, compiled and checked.
    fn read_rules(&self) -> Result<RuleSet, RulesError> {
        let dir = &self.config.rules_dir;
        let set = match RuleSet::load(dir, &self.config.rules) {
            Err(RulesError::Dir { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(dir = %dir.display(), "no rules directory: no rules evaluated");
                RuleSet::empty(&self.config.rules)
            }
            other => other?,
        };
        let diags = set.check();
        if diags.is_empty() { Ok(set) } else { Err(RulesError::Invalid(diags)) }
    }

    /// The last load's rejection and the last tick's rule failures.
    pub fn diagnostics(&self) -> RuleDiagnostics {
        match self.diagnostics.lock() {
            Ok(d) => d.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn with_diagnostics(&self, change: impl FnOnce(&mut RuleDiagnostics)) {
        match self.diagnostics.lock() {
            Ok(mut d) => change(&mut d),
            Err(poisoned) => change(&mut poisoned.into_inner()),
        }
    }

    /// The rule metrics.
    pub fn metrics(&self) -> &Arc<RuleMetrics> {
        &self.metrics
    }

    /// Runs the active rules on `snap` and applies their decisions under `fence`; with `None`
    /// (a dry run) it writes nothing. A tick's rule failures become the diagnostics `/status`
    /// shows; a dry run's do not.
    pub async fn decide(&self, snap: &Snapshot, fence: Option<&Fence>) -> Result<Decided, StoreError> {
        let rules = self.rules();
        let decided = crate::decide::decide(&self.store, &rules, &self.config, &self.metrics, snap, fence).await?;
        if fence.is_some() {
            let diags = decided.diagnostics.clone();
            self.with_diagnostics(|d| d.last_tick = diags);
        }
        Ok(decided)
    }

    /// Ends the previous tick's throttle: a throttle lasts one tick, and this tick's rules
    /// decide it afresh.
    pub async fn clear_throttle(&self, fence: &Fence) -> Result<(), StoreError> {
        self.store.flags().clear_throttle(fence).await
    }
}
