//! One tick, start to ledger row: lease, flags, rescue, snapshot, decide, dispatch, record.
//!
//! `run-once` is exactly one call of [`Engine::tick`]; the daemon loops it. A tick that finds
//! the lease held by another instance does nothing and says who holds it. Every tick this
//! instance runs as the holder leaves one ledger row, opened first and closed last, so a tick
//! that dies mid-way still shows as `FAIL` with "did not finish".

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::adapters::Registry;
use crate::config::Config;
use crate::executor::{ExecSettings, Executor, Scope};
use crate::lease::{Lease, Term};
use crate::metrics::{Metrics, RuleMetrics};
use crate::model::{DecisionKind, TickStatus};
use crate::rules::{RuleSet, RulesError};
use crate::snapshot::{self, Snapshot};
use crate::store::Fence;
use crate::store::{Store, StoreError, TickClose};

/// How far behind a `--no-execute` leader counts the workers' outcomes: longer than an
/// outcome's write takes from its timestamp to its commit.
const OUTCOME_LAG: Duration = Duration::from_secs(2);

/// Rows claimed per claim statement; a tick loops claims up to `max_actions_per_tick`.
const CLAIM_BATCH: u32 = 512;

/// What a tick run as the holder did.
#[derive(Clone, Debug, Serialize)]
pub struct TickReport {
    pub tick_id: i64,
    pub status: TickStatus,
    pub attempted: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub duration_ms: u64,
    pub notes: String,
    #[serde(skip)]
    pub epoch: i64,
    #[serde(skip)]
    pub rejected_writes: usize,
    #[serde(skip)]
    pub snapshot: Option<Box<Snapshot>>,
    /// The tick stopped on its own budget (`max_actions_per_tick` or `max_tick_seconds`, not a
    /// throttle) rather than on an empty queue: the daemon starts the next one at once.
    #[serde(skip)]
    pub budget_spent: bool,
    /// Due actions this tick left idle with no brake to say why: always 0 unless the
    /// work-conserving invariant (ARCHITECTURE.md) is broken. Counted only when the tick ran
    /// nothing although its snapshot counted due work (a decision may have shed it by name).
    #[serde(skip)]
    pub left_due: i64,
}

/// How a tick ended.
#[derive(Clone, Debug)]
pub enum TickOutcome {
    Ran(TickReport),
    /// Another instance holds the lease; nothing was done.
    NotLeader {
        owner: String,
        epoch: i64,
        expires_at: DateTime<Utc>,
    },
}

/// Everything a tick needs, owned by `run-once` or the daemon.
#[derive(Clone, Debug)]
pub struct Engine {
    store: Store,
    config: Arc<Config>,
    lease: Lease,
    executor: Executor,
    settings: ExecSettings,
    /// This process's own executor, registered as a worker like any other.
    registration: Arc<crate::worker::Registration>,
    /// False (`run --no-execute`): the holder monitors, decides and rescues; workers execute.
    execute: bool,
    /// When this engine's previous `--no-execute` tick looked at the workers' outcomes.
    last_started: Arc<std::sync::Mutex<Option<DateTime<Utc>>>>,
    metrics: Arc<Metrics>,
    /// Held for the length of a tick, so that the daemon's ticks and an API `run-once` on the
    /// same engine never overlap.
    tick_gate: Arc<tokio::sync::Mutex<()>>,
    rules: Arc<std::sync::RwLock<Arc<RuleSet>>>,
    rule_metrics: Arc<RuleMetrics>,
    rule_diagnostics: Arc<std::sync::Mutex<RuleDiagnostics>>,
    /// Why this engine's last tick failed, until one succeeds (liveness reads it: a tick that
    /// cannot write is not in the ledger).
    tick_fault: Arc<std::sync::Mutex<Option<crate::health::TickFault>>>,
}

/// What went wrong with this engine's rules lately, for `/status`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RuleDiagnostics {
    /// Why the last (re)load was rejected (the previous set stayed active); empty once a load
    /// succeeds.
    pub rejected_load: Vec<crate::rules::Diagnostic>,
    /// Rule failures and invalid decisions of this engine's last tick.
    pub last_tick: Vec<crate::rules::Diagnostic>,
}

impl Engine {
    /// An engine with a fresh owner id.
    pub fn new(store: Store, config: Config, registry: Registry) -> Self {
        let owner = crate::lease::new_owner_id();
        Engine::with_owner(store, config, registry, owner)
    }

    pub fn with_owner(store: Store, config: Config, registry: Registry, owner: String) -> Self {
        let metrics = Arc::new(Metrics::new());
        let lease = Lease::new(store.clone(), crate::lease::LEASE_NAME.to_string(), owner, config.lease_ttl);
        let settings = ExecSettings::from_config(&config, store.clock().clone(), config.dispatch_concurrency);
        let registration = Arc::new(crate::worker::Registration::new(
            store.clone(),
            config.workers.ttl,
            config.dispatch_concurrency,
            Vec::new(),
        ));
        let executor = Executor::new(Arc::new(registry), settings.clone(), metrics.clone());
        let rule_metrics = Arc::new(RuleMetrics::register(&metrics));
        let rules = Arc::new(std::sync::RwLock::new(Arc::new(RuleSet::empty(&config.rules))));
        Engine {
            store,
            config: Arc::new(config),
            lease,
            executor,
            settings,
            registration,
            execute: true,
            last_started: Arc::default(),
            metrics,
            tick_gate: Arc::default(),
            rules,
            rule_metrics,
            rule_diagnostics: Arc::default(),
            tick_fault: Arc::default(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// This process's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
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
        self.rule_metrics.loaded.set(rules.len() as i64);
        self.rule_metrics.reload_success.set(1);
        match self.rules.write() {
            Ok(mut r) => *r = Arc::new(rules),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(rules),
        }
    }

    /// Loads, compiles and checks `rules_dir`; on success it becomes the active set, on failure
    /// the active set stays and the error carries every diagnostic. A missing directory is an
    /// empty rule set.
    pub fn load_rules(&self) -> Result<usize, RulesError> {
        let loaded = match RuleSet::load(&self.config.rules_dir, &self.config.rules) {
            Err(RulesError::Dir { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(dir = %self.config.rules_dir.display(), "no rules directory: no rules evaluated");
                Ok(RuleSet::empty(&self.config.rules))
            }
            other => other,
        }
        .and_then(|set| {
            let diags = set.check();
            if diags.is_empty() { Ok(set) } else { Err(RulesError::Invalid(diags)) }
        });
        match loaded {
            Ok(set) => {
                let n = set.len();
                self.set_rules(set);
                self.with_diagnostics(|d| d.rejected_load.clear());
                Ok(n)
            }
            Err(e) => {
                self.rule_metrics.reload_success.set(0);
                let diags = match &e {
                    RulesError::Invalid(diags) => diags.clone(),
                    RulesError::Dir { dir, source } => vec![crate::rules::Diagnostic {
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

    /// The last load's rejection and the last tick's rule failures.
    pub fn rule_diagnostics(&self) -> RuleDiagnostics {
        match self.rule_diagnostics.lock() {
            Ok(d) => d.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn with_diagnostics(&self, change: impl FnOnce(&mut RuleDiagnostics)) {
        match self.rule_diagnostics.lock() {
            Ok(mut d) => change(&mut d),
            Err(poisoned) => change(&mut poisoned.into_inner()),
        }
    }

    /// The rule metrics.
    pub fn rule_metrics(&self) -> &Arc<RuleMetrics> {
        &self.rule_metrics
    }

    /// A whole tick that writes nothing: no lease taken (it works while another instance holds
    /// it), no rescue, no decision applied, no action claimed.
    pub async fn dry_run(&self) -> Result<DryRunReport, StoreError> {
        let (snap, flags) = self.snapshot_now().await?;
        let rules = self.rules();
        let decided = crate::decide::decide(&self.store, &rules, &self.config, &self.rule_metrics, &snap, None).await?;
        // What the tick's claims would take if nothing they start finished within the tick: the
        // same pick, under the same limits (the config's filled in where the database has none,
        // as `run-once` writes them before its tick), capped as the tick caps them. Nothing when
        // a flag or a rule's pause stops the tick.
        let would_dispatch = if flags.killed || flags.paused || decided.paused {
            Vec::new()
        } else {
            let cap =
                decided.throttle.map_or(self.config.max_actions_per_tick, |t| t.min(self.config.max_actions_per_tick));
            let claimer = self.claimer(String::new(), None);
            self.store.actions().pick(&claimer, u64::from(cap), self.config.limits.as_ref()).await?
        };
        Ok(DryRunReport { snapshot: snap, rules_digest: rules.digest().to_string(), decided, would_dispatch })
    }

    /// How this engine's tick claims, for `worker` under lease epoch `epoch`.
    fn claimer(&self, worker: String, epoch: Option<i64>) -> crate::store::Claimer {
        let (type_timeouts, default_timeout) = self.settings.claim_timeouts();
        crate::store::Claimer {
            worker,
            worker_ttl: self.config.workers.ttl,
            types: Vec::new(),
            type_timeouts,
            default_timeout,
            // A claim waits for a slot at most until the tick's deadline.
            start_within: self.config.max_tick,
            proof_enforced: self.config.proof_enforced,
            limit_partitions: self.config.limit_partitions as usize,
            epoch,
        }
    }

    /// The snapshot the rules would see now (under the current lease holder's term, or none),
    /// and the flags it was built with. Reads only; takes no lease. `run-once --dry-run` and
    /// `GET /api/snapshot` show this.
    pub async fn snapshot_now(&self) -> Result<(Snapshot, crate::model::Flags), StoreError> {
        let mut flags = self.store.flags().get().await?;
        flags.proof_mode |= self.config.proof_enforced;
        let term = match self.store.lease().get(crate::lease::LEASE_NAME).await? {
            Some(l) => Term { lease_name: l.name, owner: l.owner, epoch: l.epoch, expires_at: l.expires_at },
            None => Term {
                lease_name: crate::lease::LEASE_NAME.to_string(),
                owner: String::new(),
                epoch: 0,
                expires_at: self.store.now(),
            },
        };
        let snap = snapshot::build_with(&self.store, &term, flags, None, &self.config.rules.health).await?;
        Ok((snap, flags))
    }

    /// Why this engine's last tick failed on storage (the database answered, but could not
    /// store: a full disk, an I/O error, a lock); `None` once one runs (or follows).
    pub fn tick_fault(&self) -> Option<crate::health::TickFault> {
        self.tick_fault.lock().ok().and_then(|g| g.clone())
    }

    /// Runs one tick.
    pub async fn tick(&self) -> Result<TickOutcome, StoreError> {
        let _gate = self.tick_gate.lock().await;
        let result = self.tick_inner().await;
        // A database that does not answer is not a storage fault: `/health` reads it and says
        // so itself, and says healthy again as soon as it answers.
        let fault = result.as_ref().err().filter(|e| !e.is_unavailable()).map(|e| crate::health::TickFault {
            at: crate::model::now(),
            kind: e.storage_fault(),
            error: e.to_string(),
        });
        if let Ok(mut last) = self.tick_fault.lock() {
            *last = fault;
        }
        match &result {
            Ok(TickOutcome::Ran(r)) => {
                self.metrics.ticks_total.with_label_values(&[r.status.as_str()]).inc();
                self.metrics.tick_duration_seconds.observe(r.duration_ms as f64 / 1000.0);
            }
            Ok(TickOutcome::NotLeader { .. }) => {}
            Err(_) => self.metrics.tick_errors_total.inc(),
        }
        result
    }

    async fn tick_inner(&self) -> Result<TickOutcome, StoreError> {
        let started = Instant::now();
        let started_at = self.store.now();
        let (term, tick_id) = match self.lease.begin_tick(started_at).await? {
            Ok(held) => held,
            Err(row) => {
                return Ok(TickOutcome::NotLeader { owner: row.owner, epoch: row.epoch, expires_at: row.expires_at });
            }
        };
        let heartbeat = self.lease.heartbeat(&term, self.config.heartbeat);
        let span = tracing::info_span!("tick", tick_id, epoch = term.epoch);
        let _enter = span.enter();

        match self.body(&term, tick_id, &heartbeat, started).await {
            Ok((close, report_extra)) => {
                self.store.ledger().close_tick(tick_id, &close).await?;
                if close.status == TickStatus::Killed {
                    drop(heartbeat);
                    self.lease.release().await?;
                }
                Ok(TickOutcome::Ran(TickReport {
                    tick_id,
                    status: close.status,
                    attempted: close.attempted as u32,
                    succeeded: close.succeeded as u32,
                    failed: (close.attempted - close.succeeded) as u32,
                    duration_ms: started.elapsed().as_millis() as u64,
                    notes: close.notes.unwrap_or_default(),
                    epoch: term.epoch,
                    rejected_writes: report_extra.rejected_writes,
                    snapshot: report_extra.snapshot,
                    budget_spent: report_extra.budget_spent,
                    left_due: report_extra.left_due,
                }))
            }
            Err(e) => {
                let close = TickClose {
                    status: TickStatus::Fail,
                    attempted: 0,
                    succeeded: 0,
                    notes: Some(format!("tick failed: {e}")),
                    snapshot: None,
                };
                if let Err(close_err) = self.store.ledger().close_tick(tick_id, &close).await {
                    tracing::warn!(error = %close_err, "could not close the failed tick's ledger row");
                }
                Err(e)
            }
        }
    }

    async fn body(
        &self,
        term: &Term,
        tick_id: i64,
        heartbeat: &crate::lease::Heartbeat,
        started: Instant,
    ) -> Result<(TickClose, Extra), StoreError> {
        let mut notes: Vec<String> = Vec::new();
        let mut extra = Extra::default();

        let mut flags = self.store.flags().get().await?;
        // An enforced instance runs every attempt in proof mode, whatever the flag says; the
        // snapshot (and so the rules) see the mode that applies.
        flags.proof_mode |= self.config.proof_enforced;
        if flags.killed {
            let close = TickClose {
                status: TickStatus::Killed,
                attempted: 0,
                succeeded: 0,
                notes: Some("killed flag set: nothing dispatched, lease released, stopping".into()),
                snapshot: None,
            };
            return Ok((close, extra));
        }
        if flags.paused {
            // Rules still run while paused (a breaker must be able to resume); only pause,
            // resume and alert act.
            let snap = snapshot::build_with(&self.store, term, flags, Some(tick_id), &self.config.rules.health).await?;
            let decided = self.decide(term, tick_id, &snap).await?;
            let mut notes = vec!["paused flag set: nothing dispatched".to_string()];
            notes.extend(decided.notes.iter().cloned());
            extra.snapshot = Some(Box::new(snap));
            return Ok((paused_close(&notes, decided), extra));
        }

        let fence = Fence { lease_name: term.lease_name.clone(), epoch: term.epoch, tick_id: Some(tick_id) };
        let rescued = self.store.actions().rescue(&fence, &term.owner, self.config.workers.ttl, Some(tick_id)).await?;
        if !rescued.is_empty() {
            self.metrics.rescued_actions_total.inc_by(rescued.len() as u64);
            let mut workers: Vec<&str> = rescued.iter().filter_map(|r| r.worker.as_deref()).collect();
            workers.sort_unstable();
            workers.dedup();
            tracing::warn!(count = rescued.len(), workers = %workers.join(", "), "rescued orphaned RUNNING actions");
            notes.push(format!("rescued {} orphaned action(s)", rescued.len()));
        }

        // Deadlines: the claim never starts an expired action; here they become visible as DLQ.
        let expired = self.store.actions().expire_due(&term.lease_name, term.epoch, Some(tick_id)).await?;
        if !expired.is_empty() {
            self.metrics.expired_actions_total.inc_by(expired.len() as u64);
            tracing::warn!(count = expired.len(), "expired actions moved to DLQ");
            notes.push(format!("{} expired action(s) moved to DLQ", expired.len()));
        }

        let snap = snapshot::build_with(&self.store, term, flags, Some(tick_id), &self.config.rules.health).await?;

        // Work that became due by time notifies no one: wake the workers.
        if snap.queue.due_now > 0 {
            self.wake_workers().await;
        }

        // A throttle lasts one tick: this tick's rules decide it afresh.
        self.store.flags().clear_throttle(&fence).await?;

        // DECIDE: the rules run on the snapshot; what they decide is applied (fenced) before
        // dispatch, which a `throttle` caps and a `pause` stops.
        let decided = self.decide(term, tick_id, &snap).await?;
        notes.extend(decided.notes.iter().cloned());
        if decided.paused {
            extra.snapshot = Some(Box::new(snap));
            notes.insert(0, "paused by a rule: nothing dispatched".into());
            return Ok((paused_close(&notes, decided), extra));
        }

        let deadline = started + self.config.max_tick;
        let lost = heartbeat.lost_flag();
        let mut remaining = self.config.max_actions_per_tick;
        // A throttle is a brake: it is recorded (note and status), never silent.
        let throttled_to = decided.throttle.filter(|n| *n < remaining);
        if let Some(n) = throttled_to {
            remaining = n;
        }
        let (mut attempted, mut succeeded, mut unstarted) = (0u32, 0u32, 0u32);
        let mut store_error = None;
        if self.execute && remaining > 0 && (snap.queue.due_now > 0 || !decided.decisions.is_empty()) {
            let worker = self.registration.ensure().await?;
            let _alive = self.registration.keep_alive(self.config.workers.heartbeat);
            let claimer = self.claimer(worker.clone(), Some(term.epoch));
            while remaining > 0 && Instant::now() < deadline && !heartbeat.is_lost() {
                let want = remaining.min(CLAIM_BATCH);
                let claimed = self.store.actions().claim(&claimer, u64::from(want)).await?;
                if claimed.is_empty() {
                    break;
                }
                remaining -= claimed.len() as u32;
                // A short batch means nothing else was due; claiming again would only re-take
                // what this tick just failed and made due again. Unless a type is limited: then
                // a limit may have cut the batch, and the slots this batch used are free again.
                let drained = (claimed.len() as u32) < want && snap.limits.is_empty();
                let scope =
                    Scope { store: &self.store, worker: &worker, tick_id: Some(tick_id), deadline, lost: &lost };
                let r = self.executor.dispatch(&scope, claimed).await;
                self.registration.count(r.succeeded, r.failed);
                attempted += r.attempted;
                succeeded += r.succeeded;
                unstarted += r.unstarted;
                extra.rejected_writes += r.rejected.len();
                if let Some(e) = r.store_error {
                    store_error = Some(e);
                    break;
                }
                if drained {
                    break;
                }
            }
        }
        extra.budget_spent = self.execute
            && store_error.is_none()
            && !heartbeat.is_lost()
            && ((remaining == 0 && throttled_to.is_none()) || Instant::now() >= deadline);
        if !self.execute {
            // The leader executes nothing: its counts are what the workers recorded since its
            // previous tick, so a drain by workers never reads as idle.
            // Windows end OUTCOME_LAG ago and follow each other without gap or overlap: an
            // outcome stamped before a window's end has committed by the time it is counted.
            let upto = crate::model::earlier_saturating(self.store.now(), OUTCOME_LAG);
            let previous = self.last_started.lock().ok().and_then(|mut g| g.replace(upto));
            let since = previous.unwrap_or_else(|| crate::model::earlier_saturating(upto, self.config.tick_interval));
            let (ok, failed) = self.store.actions().outcomes_between(since, upto).await?;
            succeeded = u32::try_from(ok).unwrap_or(u32::MAX);
            attempted = succeeded.saturating_add(u32::try_from(failed).unwrap_or(u32::MAX));
            notes.push(format!(
                "leader only (--no-execute): {attempted} outcome(s) recorded by workers since the last tick"
            ));
        }

        if unstarted > 0 {
            notes.push(format!("{unstarted} claimed action(s) returned to PENDING unstarted"));
        }
        if Instant::now() >= deadline {
            notes.push(format!("max_tick_seconds ({:.1}s) reached", self.config.max_tick.as_secs_f64()));
        }
        if heartbeat.is_lost() {
            notes.push("lease lost mid-tick: stopped starting actions".into());
        }
        if extra.rejected_writes > 0 {
            notes.push(format!("{} fenced write(s) rejected", extra.rejected_writes));
        }
        // Did the throttle hold work back? Only when it used its whole allowance and more was
        // due than it allowed.
        let held_back = throttled_to.filter(|n| attempted + unstarted >= *n && snap.queue.due_now > i64::from(*n));
        if let Some(n) = held_back {
            let by: Vec<&str> = decided
                .decisions
                .iter()
                .filter(|d| d.kind == DecisionKind::Throttle && d.outcome.is_applied())
                .map(|d| d.rule.as_str())
                .collect();
            notes.insert(
                0,
                format!("throttled to {n} by rule {} ({} due at the snapshot)", by.join(", "), snap.queue.due_now),
            );
        }
        let mut limits_held = false;
        // The invariant, checked where it can break: due work at the snapshot, budget, no brake,
        // and nothing ran. What the decisions shed or postponed by name is no longer due.
        if self.execute
            && attempted == 0
            && unstarted == 0
            && held_back.is_none()
            && store_error.is_none()
            && !heartbeat.is_lost()
            && snap.queue.due_now > 0
        {
            let due = self.store.actions().due_count().await?;
            // A type at its limit is a brake too: its due work waits, recorded here.
            let (held, why) = if due > 0 { self.held_now().await? } else { (0, Vec::new()) };
            if held > 0 {
                limits_held = true;
                notes.push(format!("held by limits: {}", why.join(", ")));
            }
            extra.left_due = due - held.min(due);
            if extra.left_due > 0 {
                tracing::error!(due = extra.left_due, "work-conserving invariant broken: due work left idle");
                notes.push(format!("work-conserving invariant broken: {} due action(s) left idle", extra.left_due));
            }
        }
        let status = if let Some(e) = &store_error {
            notes.push(format!("could not record outcomes: {e}"));
            TickStatus::Fail
        } else if attempted > 0 && succeeded < attempted {
            TickStatus::Partial
        } else if held_back.is_some() || limits_held {
            TickStatus::Throttled
        } else if attempted == 0 {
            TickStatus::Idle
        } else {
            TickStatus::Success
        };
        // The counts have columns of their own; the notes say what the counts cannot. An idle
        // tick says whether work is waiting for its time, so nothing hides the queue.
        if status == TickStatus::Idle {
            let waiting = snap.queue.pending + snap.queue.retry - snap.queue.due_now;
            if !self.execute && snap.queue.due_now > 0 {
                notes.insert(0, format!("{} due, waiting for workers", snap.queue.due_now));
            } else if waiting > 0 && snap.queue.due_now == 0 {
                notes.insert(0, format!("nothing due ({waiting} waiting for their not_before)"));
            } else {
                notes.insert(0, "nothing due".into());
            }
        }
        extra.snapshot = Some(Box::new(snap));
        let close = TickClose {
            status,
            attempted: attempted as i32,
            succeeded: succeeded as i32,
            notes: Some(notes.join("; ")),
            snapshot: Some((decided.snapshot_json, decided.rules_digest)),
        };
        Ok((close, extra))
    }

    async fn decide(&self, term: &Term, tick_id: i64, snap: &Snapshot) -> Result<crate::decide::Decided, StoreError> {
        let fence = Fence { lease_name: term.lease_name.clone(), epoch: term.epoch, tick_id: Some(tick_id) };
        let rules = self.rules();
        let decided =
            crate::decide::decide(&self.store, &rules, &self.config, &self.rule_metrics, snap, Some(&fence)).await?;
        let diags = decided.diagnostics.clone();
        self.with_diagnostics(|d| d.last_tick = diags);
        Ok(decided)
    }

    /// Keeps renewing the lease held at `epoch` until the returned guard is dropped (the daemon
    /// holds one while it waits between ticks).
    /// Keeps this process's executor registration alive while the daemon waits between ticks,
    /// so that `workers` and the rescue see it live (nothing when it is not registered).
    pub fn keep_registration_alive(&self) -> crate::worker::KeepAlive {
        self.registration.keep_alive(self.config.workers.heartbeat)
    }

    pub fn hold_lease_between_ticks(&self, epoch: i64) -> crate::lease::Heartbeat {
        let term = Term {
            lease_name: self.lease.name().to_string(),
            owner: self.lease.owner().to_string(),
            epoch,
            expires_at: self.store.now(),
        };
        self.lease.heartbeat(&term, self.config.heartbeat)
    }

    /// Releases the lease if this engine holds it, and deregisters its executor (clean exit).
    pub async fn release(&self) -> Result<bool, StoreError> {
        self.registration.deregister().await?;
        self.lease.release().await
    }

    /// This engine monitors, decides and rescues but claims nothing (`run --no-execute`):
    /// workers execute.
    pub fn without_execution(mut self) -> Self {
        self.execute = false;
        self
    }

    /// This process's executor registration.
    pub fn registration(&self) -> &Arc<crate::worker::Registration> {
        &self.registration
    }

    /// The interval the daemon waits between ticks.
    pub fn interval(&self) -> Duration {
        self.config.tick_interval
    }
}

/// The ledger close of a tick that dispatched nothing because it was paused.
fn paused_close(notes: &[String], decided: crate::decide::Decided) -> TickClose {
    TickClose {
        status: TickStatus::Paused,
        attempted: 0,
        succeeded: 0,
        notes: Some(notes.join("; ")),
        snapshot: Some((decided.snapshot_json, decided.rules_digest)),
    }
}

impl Engine {
    /// Wakes the workers (PostgreSQL's NOTIFY); a failure costs them at most a poll.
    async fn wake_workers(&self) {
        let woken = self.store.notify().notify_work().await;
        woken.unwrap_or_else(|e| tracing::debug!(error = %e, "cannot notify workers"));
    }

    /// [`held_by_limits`] of the limits' usage now.
    async fn held_now(&self) -> Result<(i64, Vec<String>), StoreError> {
        Ok(held_by_limits(&self.store.limits().limit_usage().await?))
    }
}

/// The due work of types that have nothing left of a limit (for a partitioned type: its
/// tightest partition), and for each such type what holds it, e.g. `SLOW max_running 2 (7
/// waiting)`.
fn held_by_limits(usage: &[crate::limits::LimitUsage]) -> (i64, Vec<String>) {
    let mut why = Vec::new();
    for u in usage.iter().filter(|u| u.waiting > 0 && u.is_held()) {
        let spec = &u.limit.effective;
        let full = [
            (u.running_remaining, spec.max_running.map(|n| format!("max_running {n}"))),
            (u.rate_remaining, spec.rate.map(|r| format!("rate {r}"))),
            (u.budget_remaining, spec.daily_budget.map(|n| format!("daily_budget {n}"))),
        ]
        .into_iter()
        .find_map(|(left, name)| if left == Some(0) { name } else { None });
        if let Some(name) = full {
            why.push(format!("{} {name} ({} waiting)", u.action_type, u.waiting));
        }
    }
    (crate::limits::held_waiting(usage), why)
}

#[derive(Default)]
struct Extra {
    budget_spent: bool,
    left_due: i64,
    rejected_writes: usize,
    snapshot: Option<Box<Snapshot>>,
}

/// What `run-once --dry-run` found: the snapshot, each decision with what would become of it,
/// and the actions that would be dispatched.
#[derive(Clone, Debug, Serialize)]
pub struct DryRunReport {
    pub snapshot: Snapshot,
    pub rules_digest: String,
    pub decided: crate::decide::Decided,
    pub would_dispatch: Vec<crate::model::Action>,
}
