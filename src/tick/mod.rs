//! One tick, start to ledger row: lease, flags, rescue, expiry, snapshot, decide, dispatch,
//! record; each stage a service's call (`services/`), the status judged in `close.rs`.
//!
//! `run-once` is exactly one call of [`Engine::tick`]; the daemon loops it. A tick that finds
//! the lease held by another instance does nothing and says who holds it. Every tick this
//! instance runs as the holder leaves one ledger row, opened first and closed last, so a tick
//! that dies mid-way still shows as `FAIL` with "did not finish".

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing::Instrument;

use crate::adapters::Registry;
use crate::config::Config;
use crate::executor::{ExecSettings, Executor};
use crate::heartbeat::Heartbeat;
use crate::lease::{Lease, Term};
use crate::metrics::Metrics;
use crate::model::{DecisionKind, TickStatus};
use crate::services::approvals::Approvals;
use crate::services::decider::Decider;
use crate::services::dispatcher::{ClaimTerms, Dispatcher, Drained, LeftIdle};
use crate::services::expirer::Expirer;
use crate::services::notifier::Notifier;
use crate::services::registration::Registration;
use crate::services::rescuer::Rescuer;
use crate::services::scheduler;
use crate::snapshot::{self, Snapshot};
use crate::store::{Fence, Store, StoreError, TickClose};
use crate::telemetry;

mod close;

pub use crate::services::decider::RuleDiagnostics;

/// How far behind a `--no-execute` leader counts the workers' outcomes: longer than an
/// outcome's write takes from its timestamp to its commit.
const OUTCOME_LAG: Duration = Duration::from_secs(2);

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

/// Everything a tick needs, owned by `run-once` or the daemon: the lease and the services
/// the tick calls.
#[derive(Clone, Debug)]
pub struct Engine {
    store: Store,
    config: Arc<Config>,
    lease: Lease,
    rescuer: Rescuer,
    expirer: Expirer,
    approvals: Approvals,
    notifier: Notifier,
    decider: Decider,
    /// This process's own executor, registered as a worker like any other.
    dispatcher: Dispatcher,
    /// False (`run --no-execute`): the holder monitors, decides and rescues; workers execute.
    execute: bool,
    /// When this engine's previous `--no-execute` tick looked at the workers' outcomes.
    last_started: Arc<std::sync::Mutex<Option<DateTime<Utc>>>>,
    metrics: Arc<Metrics>,
    /// Held for the length of a tick, so that the daemon's ticks and an API `run-once` on the
    /// same engine never overlap.
    tick_gate: Arc<tokio::sync::Mutex<()>>,
    /// Why this engine's last tick failed, until one succeeds (liveness reads it: a tick that
    /// cannot write is not in the ledger).
    tick_fault: Arc<std::sync::Mutex<Option<crate::health::TickFault>>>,
    /// What [`Engine::between_ticks`] ran since the last tick (attempted, succeeded), for that
    /// tick's note.
    ran_between: Arc<std::sync::Mutex<(u32, u32)>>,
}

impl Engine {
    /// An engine with a fresh owner id.
    pub fn new(store: Store, config: Config, registry: Registry) -> Self {
        let owner = crate::lease::new_owner_id();
        Engine::with_owner(store, config, registry, owner)
    }

    pub fn with_owner(store: Store, config: Config, registry: Registry, owner: String) -> Self {
        let metrics = Arc::new(Metrics::new());
        let config = Arc::new(config);
        let lease = Lease::new(store.clone(), crate::lease::LEASE_NAME.to_string(), owner, config.lease_ttl);
        let settings = ExecSettings::from_config(&config, store.clock().clone(), config.dispatch_concurrency);
        let registration =
            Arc::new(Registration::new(store.clone(), config.workers.ttl, config.dispatch_concurrency, Vec::new()));
        // A claim waits for a slot at most until the tick's deadline.
        let terms = ClaimTerms {
            proof_enforced: config.proof_enforced,
            limit_partitions: config.limit_partitions as usize,
            ..ClaimTerms::new(&settings, config.workers.ttl, config.max_tick)
        };
        let registry = Arc::new(registry);
        let approvals = Approvals::new(store.clone(), registry.clone(), config.artifacts_dir.clone(), metrics.clone());
        let executor = Executor::new(registry, settings, metrics.clone());
        Engine {
            approvals,
            rescuer: Rescuer::new(store.clone(), metrics.clone(), config.workers.ttl),
            expirer: Expirer::new(store.clone(), metrics.clone()),
            notifier: Notifier::new(store.clone()),
            decider: Decider::new(store.clone(), config.clone(), &metrics),
            dispatcher: Dispatcher::new(store.clone(), executor, registration, terms, config.workers.heartbeat),
            store,
            config,
            lease,
            execute: true,
            last_started: Arc::default(),
            metrics,
            tick_gate: Arc::default(),
            tick_fault: Arc::default(),
            ran_between: Arc::default(),
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

    /// The rule set in use, its reloads and its diagnostics.
    pub fn decider(&self) -> &Decider {
        &self.decider
    }

    /// This process's executor: the claims, the preview, the conserving check.
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }

    /// A whole tick that writes nothing: no lease taken (it works while another instance holds
    /// it), no rescue, no decision applied, no action claimed.
    pub async fn dry_run(&self) -> Result<DryRunReport, StoreError> {
        let (snap, flags) = self.snapshot_now().await?;
        let rules_digest = self.decider.rules().digest().to_string();
        let decided = self.decider.decide(&snap, None).await?;
        // What the tick's claims would take if nothing they start finished within the tick: the
        // claim's own pick, capped as the tick caps it. Nothing when a flag or a rule's pause
        // stops the tick.
        let would_dispatch = if flags.killed || flags.paused || decided.paused {
            Vec::new()
        } else {
            let max = self.config.max_actions_per_tick;
            let cap = decided.throttle.map_or(max, |t| t.min(max));
            self.dispatcher.preview(cap, self.config.limits.as_ref()).await?
        };
        Ok(DryRunReport { snapshot: snap, rules_digest, decided, would_dispatch })
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
        Ok((self.snapshot(&term, flags, None).await?, flags))
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
        // The tick's span: its children are the snapshot, each rule, the decisions' apply and
        // the dispatch; a rule's `enqueue` stores its context (`telemetry`).
        let span = tracing::info_span!(
            target: telemetry::TARGET,
            "tick",
            tick_id,
            epoch = term.epoch,
            status = tracing::field::Empty
        );
        let ran = async {
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
        .instrument(span.clone())
        .await;
        if let Ok(TickOutcome::Ran(r)) = &ran {
            span.record("status", r.status.as_str());
        }
        ran
    }

    /// The tick as the holder, from the flags to the ledger row's close.
    async fn body(
        &self,
        term: &Term,
        tick_id: i64,
        lease: &Heartbeat,
        started: Instant,
    ) -> Result<(TickClose, Extra), StoreError> {
        let mut flags = self.store.flags().get().await?;
        // An enforced instance runs every attempt in proof mode, whatever the flag says; the
        // snapshot (and so the rules) see the mode that applies.
        flags.proof_mode |= self.config.proof_enforced;
        if flags.killed {
            let notes = "killed flag set: nothing dispatched, lease released, stopping";
            let close = ledger_close(TickStatus::Killed, 0, 0, notes.into(), None);
            return Ok((close, Extra::default()));
        }
        let fence = Fence { lease_name: term.lease_name.clone(), epoch: term.epoch, tick_id: Some(tick_id) };
        let mut notes = Vec::new();
        if !flags.paused {
            notes.extend(self.rescuer.run(&fence, &term.owner).await?);
            notes.extend(self.expirer.run(&fence).await?);
            // Slots fall due while paused are left to each schedule's misfire policy at resume.
            notes.extend(scheduler::run(&self.store, &fence, &self.config.enqueue_defaults()).await?.notes);
            notes.extend(self.approvals.run(&fence).await?);
        }
        let snap = self
            .snapshot(term, flags, Some(tick_id))
            .instrument(tracing::info_span!(target: telemetry::TARGET, "snapshot"))
            .await?;
        if flags.paused {
            // Rules still run while paused (a breaker must be able to resume); only pause,
            // resume and alert act.
            let decided = self.decider.decide(&snap, Some(&fence)).await?;
            return Ok(paused("paused flag set: nothing dispatched", notes, decided, snap));
        }
        self.notifier.wake_if_due(snap.queue.due_now).await;
        self.decider.clear_throttle(&fence).await?;
        let decided = self.decider.decide(&snap, Some(&fence)).await?;
        if decided.paused {
            return Ok(paused("paused by a rule: nothing dispatched", notes, decided, snap));
        }
        notes.extend(decided.notes.iter().cloned());
        let facts = self
            .dispatch(term.epoch, tick_id, lease, started, &snap, &decided)
            .instrument(tracing::info_span!(target: telemetry::TARGET, "dispatch"))
            .await?;
        let idle =
            if facts.needs_conserving_check() { self.dispatcher.left_idle().await? } else { LeftIdle::default() };
        let (status, notes) = facts.judge(&idle, notes);
        let d = &facts.drained;
        let close = ledger_close(
            status,
            d.attempted,
            d.succeeded,
            notes.join("; "),
            Some((decided.snapshot_json, decided.rules_digest)),
        );
        let extra = Extra {
            budget_spent: facts.budget_spent(),
            left_due: idle.unheld,
            rejected_writes: d.rejected_writes,
            snapshot: Some(Box::new(snap)),
        };
        Ok((close, extra))
    }

    /// EXECUTE: this engine's dispatcher runs what is due within the tick's budget (as a
    /// throttle caps it), or, for a `--no-execute` leader, what the workers did is counted.
    async fn dispatch(
        &self,
        epoch: i64,
        tick_id: i64,
        lease: &Heartbeat,
        started: Instant,
        snap: &Snapshot,
        decided: &crate::decide::Decided,
    ) -> Result<close::Facts, StoreError> {
        let deadline = started + self.config.max_tick;
        // A throttle is a brake: it is recorded (note and status), never silent.
        let throttled_to = decided.throttle.filter(|n| *n < self.config.max_actions_per_tick);
        let budget = throttled_to.unwrap_or(self.config.max_actions_per_tick);
        let due = snap.queue.due_now > 0 || !decided.decisions.is_empty();
        let drained = if !self.execute {
            self.workers_outcomes(budget).await?
        } else if budget > 0 && due {
            self.dispatcher.drain(budget, deadline, Some(tick_id), epoch, lease, !snap.limits.is_empty()).await?
        } else {
            Drained { remaining: budget, ..Drained::default() }
        };
        let throttled_by = decided
            .decisions
            .iter()
            .filter(|d| d.kind == DecisionKind::Throttle && d.outcome.is_applied())
            .map(|d| d.rule.clone())
            .collect();
        Ok(close::Facts {
            execute: self.execute,
            due_now: snap.queue.due_now,
            queued: snap.queue.pending + snap.queue.retry,
            drained,
            throttled_to,
            throttled_by,
            deadline_reached: (Instant::now() >= deadline).then_some(self.config.max_tick),
            lease_lost: lease.is_lost(),
            ran_between: self.ran_between.lock().map(|mut g| std::mem::take(&mut *g)).unwrap_or_default(),
        })
    }

    /// A `--no-execute` leader executes nothing: its counts are what the workers recorded since
    /// its previous tick, so a drain by workers never reads as idle. Windows end
    /// [`OUTCOME_LAG`] ago and follow each other without gap or overlap: an outcome stamped
    /// before a window's end has committed by the time it is counted.
    async fn workers_outcomes(&self, budget: u32) -> Result<Drained, StoreError> {
        let upto = crate::model::earlier_saturating(self.store.now(), OUTCOME_LAG);
        let previous = self.last_started.lock().ok().and_then(|mut g| g.replace(upto));
        let since = previous.unwrap_or_else(|| crate::model::earlier_saturating(upto, self.config.tick_interval));
        let (ok, failed) = self.store.actions().outcomes_between(since, upto).await?;
        let succeeded = u32::try_from(ok).unwrap_or(u32::MAX);
        let attempted = succeeded.saturating_add(u32::try_from(failed).unwrap_or(u32::MAX));
        Ok(Drained { attempted, succeeded, remaining: budget, ..Drained::default() })
    }

    /// MONITOR: the snapshot under `term`, for tick `tick_id` (`None`: a preview).
    async fn snapshot(
        &self,
        term: &Term,
        flags: crate::model::Flags,
        tick_id: Option<i64>,
    ) -> Result<Snapshot, StoreError> {
        snapshot::build_with(&self.store, term, flags, tick_id, &self.config.rules.health).await
    }

    /// Keeps this process's executor registration alive while the daemon waits between ticks,
    /// so that `workers` and the rescue see it live (nothing when it is not registered).
    pub fn keep_registration_alive(&self) -> crate::services::registration::KeepAlive {
        self.dispatcher.registration().keep_alive(self.config.workers.heartbeat)
    }

    /// Waits `wait` for the next tick as the holder at `epoch`; meanwhile, unless this engine
    /// executes nothing, runs new work as it arrives ([`Dispatcher::pick_up`]). Returns early
    /// when `stop` turns true or `lease` is lost; what it ran.
    pub async fn between_ticks(
        &self,
        wait: Duration,
        epoch: i64,
        lease: &Heartbeat,
        waiter: &mut crate::store::WorkWaiter,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Drained {
        let until = Instant::now() + wait;
        if !self.execute {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                Ok(_) = stop.wait_for(|s| *s) => {}
            }
            return Drained::default();
        }
        let ran = self.dispatcher.pick_up(until, epoch, lease, waiter, self.config.max_actions_per_tick, stop).await;
        if let Ok(mut g) = self.ran_between.lock() {
            g.0 += ran.attempted;
            g.1 += ran.succeeded;
        }
        ran
    }

    /// Keeps renewing the lease held at `epoch` until the returned guard is dropped (the daemon
    /// holds one while it waits between ticks).
    pub fn hold_lease_between_ticks(&self, epoch: i64) -> Heartbeat {
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
        self.dispatcher.registration().deregister().await?;
        self.lease.release().await
    }

    /// This engine monitors, decides and rescues but claims nothing (`run --no-execute`):
    /// workers execute.
    pub fn without_execution(mut self) -> Self {
        self.execute = false;
        self
    }

    /// This process's executor registration.
    pub fn registration(&self) -> &Arc<Registration> {
        self.dispatcher.registration()
    }

    /// The interval the daemon waits between ticks.
    pub fn interval(&self) -> Duration {
        self.config.tick_interval
    }
}

/// A tick that dispatched nothing because it was paused: `why` first, then the notes of the
/// stages that ran and of the decisions.
fn paused(why: &str, mut notes: Vec<String>, decided: crate::decide::Decided, snap: Snapshot) -> (TickClose, Extra) {
    notes.insert(0, why.to_string());
    notes.extend(decided.notes.iter().cloned());
    let close =
        ledger_close(TickStatus::Paused, 0, 0, notes.join("; "), Some((decided.snapshot_json, decided.rules_digest)));
    (close, Extra { snapshot: Some(Box::new(snap)), ..Extra::default() })
}

/// The close of a tick's ledger row.
fn ledger_close(
    status: TickStatus,
    attempted: u32,
    succeeded: u32,
    notes: String,
    snapshot: Option<(String, String)>,
) -> TickClose {
    let count = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    TickClose { status, attempted: count(attempted), succeeded: count(succeeded), notes: Some(notes), snapshot }
}

/// What the tick reports besides its ledger row.
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
