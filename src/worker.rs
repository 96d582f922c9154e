//! EXECUTE, on any host: a worker registers in the `workers` table, renews its heartbeat, and
//! claims and runs due actions through the executor until it is told to stop.
//!
//! The `run` process's own executor is a [`Registration`] too, so a change of leader never
//! touches attempts in flight. A worker whose heartbeat lapses stops starting attempts at once;
//! what it still writes is fenced by each claim's token anyway, and it carries on only under a
//! new id. It never monitors, decides, rescues or purges: that is the lease holder's (`tick`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::adapters::Registry;
use crate::config::Config;
use crate::executor::{ExecSettings, Executor, Scope};
use crate::heartbeat::{Heartbeat, Renewal, WhenLost};
use crate::metrics::Metrics;
use crate::store::{Beat, Claimer, NewWorker, Store, StoreError};

/// The slack of a worker's claim deadline beyond the rounds its attempt may wait for a run
/// slot: the hand-over and the outcome write.
pub const WORKER_START_WITHIN: Duration = Duration::from_secs(5);

/// One registration in the `workers` table, renewed or replaced as its heartbeat allows.
#[derive(Debug)]
pub struct Registration {
    store: Store,
    ttl: Duration,
    template: NewWorker,
    id: std::sync::Mutex<Option<String>>,
    /// When the registration was last written or renewed (taken before the write was asked
    /// for, so it never looks fresher than the row): it lapses one TTL after.
    confirmed: std::sync::Mutex<Option<Instant>>,
    in_flight: AtomicI32,
    done: AtomicI64,
    failed: AtomicI64,
    draining: AtomicBool,
}

impl Registration {
    /// A registration not yet written: the first [`Registration::ensure`] registers it.
    pub fn new(store: Store, ttl: Duration, concurrency: u32, types: Vec<String>) -> Self {
        Registration {
            store,
            ttl,
            template: NewWorker {
                id: String::new(),
                host: gethostname::gethostname().to_string_lossy().into_owned(),
                pid: i64::from(std::process::id()),
                version: env!("CARGO_PKG_VERSION").to_string(),
                concurrency: i32::try_from(concurrency).unwrap_or(i32::MAX),
                types,
            },
            id: std::sync::Mutex::new(None),
            confirmed: std::sync::Mutex::new(None),
            in_flight: AtomicI32::new(0),
            done: AtomicI64::new(0),
            failed: AtomicI64::new(0),
            draining: AtomicBool::new(false),
        }
    }

    /// The id registered now, if any.
    pub fn id(&self) -> Option<String> {
        self.id.lock().map(|g| g.clone()).unwrap_or(None)
    }

    fn set_id(&self, id: Option<String>) {
        if let Ok(mut g) = self.id.lock() {
            *g = id;
        }
    }

    fn confirm(&self, asked: Option<Instant>) {
        if let Ok(mut g) = self.confirmed.lock() {
            *g = asked;
        }
    }

    /// What this worker's liveness is judged from (`health::registration`): the id registered
    /// now, how long ago it was last written or renewed, and the TTL. A heartbeat that keeps
    /// failing leaves the id in place for the next renewal to try, and lets the age grow.
    pub fn seen(&self) -> crate::health::RegistrationSeen {
        crate::health::RegistrationSeen {
            id: self.id(),
            since_renewed: self.confirmed.lock().ok().and_then(|g| *g).map(|t| t.elapsed()),
            ttl: self.ttl,
        }
    }

    fn beat(&self) -> Beat {
        Beat {
            in_flight: self.in_flight.load(Ordering::SeqCst),
            done: self.done.load(Ordering::SeqCst),
            failed: self.failed.load(Ordering::SeqCst),
            draining: self.draining.load(Ordering::SeqCst),
        }
    }

    /// Renews the heartbeat; `false` when the registration had lapsed (it is then forgotten,
    /// and the next [`Registration::ensure`] registers under a new id).
    pub async fn renew(&self) -> Result<bool, StoreError> {
        let Some(id) = self.id() else { return Ok(false) };
        let asked = Instant::now();
        if self.store.workers().worker_heartbeat(&id, self.ttl, self.beat()).await? {
            self.confirm(Some(asked));
            return Ok(true);
        }
        tracing::warn!(worker = %id, "worker registration lapsed (no heartbeat within the TTL); its claims are rescued");
        self.set_id(None);
        self.confirm(None);
        Ok(false)
    }

    /// The live id: renewed, or registered anew (never the lapsed one again).
    pub async fn ensure(&self) -> Result<String, StoreError> {
        if self.renew().await?
            && let Some(id) = self.id()
        {
            return Ok(id);
        }
        let mut new = self.template.clone();
        new.id = format!("{}:{}:{:08x}", new.host, new.pid, fastrand::u32(..));
        self.done.store(0, Ordering::SeqCst);
        self.failed.store(0, Ordering::SeqCst);
        let asked = Instant::now();
        self.store.workers().register_worker(&new).await?;
        tracing::info!(worker = %new.id, "worker registered");
        self.set_id(Some(new.id.clone()));
        self.confirm(Some(asked));
        Ok(new.id)
    }

    /// Removes the registration (a clean stop).
    pub async fn deregister(&self) -> Result<(), StoreError> {
        if let Some(id) = self.id() {
            self.store.workers().deregister_worker(&id).await?;
            self.set_id(None);
            self.confirm(None);
        }
        Ok(())
    }

    /// Renews the registration every `every` until the returned guard is dropped (the `run`
    /// process's executor, while it dispatches and while it waits between ticks). A lapsed
    /// registration is left lapsed: the next [`Registration::ensure`] registers anew.
    pub fn keep_alive(self: &Arc<Self>, every: Duration) -> KeepAlive {
        let this = self.clone();
        // Never lost: a failed renewal is only logged, and one that finds the registration
        // lapsed forgets it, which ends the loop at the next beat.
        let lost = Arc::new(AtomicBool::new(false));
        let beat =
            Heartbeat::start("the executor's registration", every, Duration::MAX, WhenLost::GoOn, lost, move || {
                let this = this.clone();
                async move {
                    if this.id().is_none() {
                        return Renewal::Done;
                    }
                    match this.renew().await {
                        Ok(_) => Renewal::Renewed,
                        Err(e) => {
                            tracing::warn!(error = %e, "renewing the executor's registration failed");
                            Renewal::Failed
                        }
                    }
                }
            });
        KeepAlive { _beat: beat }
    }

    /// A worker's heartbeat: renews every `every`; `lost` goes up when a renewal finds the
    /// registration lapsed, or renewals have failed for `ttl`, and the worker stops starting
    /// attempts until it registers anew (and lowers it).
    fn heartbeat(self: &Arc<Self>, every: Duration, ttl: Duration, lost: Arc<AtomicBool>) -> Heartbeat {
        let this = self.clone();
        Heartbeat::start(
            "the worker's registration (stopping new starts)",
            every,
            ttl,
            WhenLost::GoOn,
            lost,
            move || {
                let this = this.clone();
                async move {
                    match this.renew().await {
                        Ok(true) => Renewal::Renewed,
                        Ok(false) => Renewal::Lost,
                        Err(e) => {
                            tracing::warn!(error = %e, "worker heartbeat failed");
                            Renewal::Failed
                        }
                    }
                }
            },
        )
    }

    /// Counts a dispatch's finished attempts (written with the next heartbeat).
    pub fn count(&self, succeeded: u32, failed: u32) {
        self.done.fetch_add(i64::from(succeeded), Ordering::SeqCst);
        self.failed.fetch_add(i64::from(failed), Ordering::SeqCst);
    }
}

/// Stops a [`Registration::keep_alive`] when dropped.
pub struct KeepAlive {
    _beat: Heartbeat,
}

/// The most action types one worker serves (`worker --types`). Every claim binds each type
/// as one SQL parameter, and a database allows a few tens of thousands per statement (SQLite
/// 32,766, PostgreSQL 65,535): past the cap a worker would start and then fail every claim.
pub const MAX_WORKER_TYPES: usize = 1_000;

/// How one `orchestrator worker` process runs.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    pub concurrency: u32,
    /// The action types it serves; empty: every type.
    pub types: Vec<String>,
}

/// The types a worker is told to serve, checked (each a valid action type, at most
/// [`MAX_WORKER_TYPES`] different ones), without repeats, sorted.
pub fn served_types(given: &[String]) -> Result<Vec<String>, String> {
    let mut seen = std::collections::BTreeSet::new();
    for t in given {
        crate::queue::validate_type(t)?;
        seen.insert(t.as_str());
    }
    if seen.len() > MAX_WORKER_TYPES {
        return Err(format!("a worker serves at most {MAX_WORKER_TYPES} action types, got {}", seen.len()));
    }
    Ok(seen.into_iter().map(str::to_string).collect())
}

/// What a worker did before it stopped.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct WorkerSummary {
    pub registrations: u32,
    pub attempted: u64,
    pub succeeded: u64,
    pub rejected_writes: u64,
}

/// A worker process: the executor, its registration and the claim terms.
pub struct Worker {
    store: Store,
    config: Arc<Config>,
    executor: Executor,
    settings: ExecSettings,
    registration: Arc<Registration>,
    options: WorkerOptions,
    metrics: Arc<Metrics>,
}

impl Worker {
    pub fn new(store: Store, config: Config, registry: Registry, options: WorkerOptions) -> Self {
        let metrics = Arc::new(Metrics::new());
        let mut settings = ExecSettings::from_config(&config, store.clock().clone(), options.concurrency);
        // The window scales with the worker's own concurrency, as `run`'s does with its.
        settings.max_unrecorded =
            settings.max_unrecorded.max(crate::config::default_max_unrecorded(options.concurrency) as usize);
        let executor = Executor::new(Arc::new(registry), settings.clone(), metrics.clone()).with_shared_concurrency();
        let registration =
            Arc::new(Registration::new(store.clone(), config.workers.ttl, options.concurrency, options.types.clone()));
        Worker { store, config: Arc::new(config), executor, settings, registration, options, metrics }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn registration(&self) -> &Arc<Registration> {
        &self.registration
    }

    /// Claims and runs due actions until `shutdown` turns true: then it stops claiming, lets
    /// attempts in flight finish for at most `workers.shutdown_grace_seconds`, and
    /// deregisters. A lapsed heartbeat stops new starts; the worker then registers anew.
    pub async fn run(&self, shutdown: watch::Receiver<bool>) -> Result<WorkerSummary, StoreError> {
        let mut stopping = shutdown.clone();
        let mut shutdown = shutdown;
        let mut summary = WorkerSummary::default();
        let lost = Arc::new(AtomicBool::new(false));
        let (by_type, default) = self.settings.claim_timeouts();
        // The heartbeat runs beside the claims: a failed or refused renewal sets `lost`.
        let beating = self.registration.heartbeat(self.config.workers.heartbeat, self.config.workers.ttl, lost.clone());
        let mut listener = match self.store.notify().work_listener().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for work notifications; polling every workers.poll_seconds");
                None
            }
        };
        // Up to `max_unrecorded` attempts are claimed and not yet recorded (at least
        // `concurrency`), and `concurrency` run at once across every dispatch: each claim takes
        // as many rows as the window has room for, and its dispatch runs beside the others, so
        // a slow attempt never holds the next claim back. A claimed attempt may wait for a run
        // slot behind the rest of the window: its deadline allows for that many rounds.
        let concurrency = self.settings.concurrency.max(1);
        let window = self.settings.max_unrecorded.max(concurrency);
        let rounds = u32::try_from(window.div_ceil(concurrency)).unwrap_or(u32::MAX);
        let start_within = WORKER_START_WITHIN.saturating_add(default.saturating_mul(rounds.saturating_sub(1)));
        let slots = Arc::new(tokio::sync::Semaphore::new(window));
        let mut running: tokio::task::JoinSet<(i32, crate::executor::DispatchReport)> = tokio::task::JoinSet::new();
        let mut outcome = Box::pin(async {
            let mut id: Option<String> = None;
            let account =
                |summary: &mut WorkerSummary, done: Result<(i32, crate::executor::DispatchReport), _>| match done {
                    Ok((n, r)) => {
                        self.registration.in_flight.fetch_sub(n, Ordering::SeqCst);
                        self.registration.count(r.succeeded, r.failed);
                        summary.attempted += u64::from(r.attempted);
                        summary.succeeded += u64::from(r.succeeded);
                        summary.rejected_writes += r.rejected.len() as u64;
                    }
                    Err(e) => tracing::error!(error = %e, "a dispatch task failed"),
                };
            loop {
                while let Some(done) = running.try_join_next() {
                    account(&mut summary, done);
                }
                if *shutdown.borrow() {
                    break;
                }
                if id.is_none() || lost.load(Ordering::SeqCst) {
                    // A lapsed registration: what is in flight finishes (or is unstarted) under
                    // the old one first; then a new id.
                    while let Some(done) = running.join_next().await {
                        account(&mut summary, done);
                    }
                    match self.registration.ensure().await {
                        Ok(new) => {
                            lost.store(false, Ordering::SeqCst);
                            summary.registrations += 1;
                            id = Some(new);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot register the worker; trying again");
                            wait(&mut shutdown, self.config.workers.poll).await;
                            continue;
                        }
                    }
                }
                let Some(worker) = id.clone() else { continue };
                let first = tokio::select! {
                    p = slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    _ = shutdown.wait_for(|s| *s) => continue,
                };
                let mut permits = vec![first];
                while let Ok(p) = slots.clone().try_acquire_owned() {
                    permits.push(p);
                }
                let claimer = Claimer {
                    worker: worker.clone(),
                    worker_ttl: self.config.workers.ttl,
                    types: self.options.types.clone(),
                    type_timeouts: by_type.clone(),
                    default_timeout: default,
                    start_within,
                    proof_enforced: self.config.proof_enforced,
                    limit_partitions: self.config.limit_partitions as usize,
                    epoch: None,
                };
                let claimed = match self.store.actions().claim(&claimer, permits.len() as u64).await {
                    Ok(c) => c,
                    Err(e) => {
                        drop(permits);
                        tracing::warn!(error = %e, "claim failed; trying again");
                        wait(&mut shutdown, self.config.workers.poll).await;
                        continue;
                    }
                };
                if claimed.is_empty() {
                    drop(permits);
                    // Woken by a notification (PostgreSQL), a finished dispatch (its slot, and
                    // a limit's slot of its type, are free again), or the poll.
                    let poll = self.config.workers.poll;
                    let notified = async {
                        match listener.as_mut() {
                            Some(l) => {
                                l.wait(poll).await;
                            }
                            None => tokio::time::sleep(poll).await,
                        }
                    };
                    tokio::select! {
                        _ = notified => {}
                        Some(done) = running.join_next(), if !running.is_empty() => account(&mut summary, done),
                        _ = shutdown.wait_for(|s| *s) => {}
                    }
                    continue;
                }
                permits.truncate(claimed.len());
                let n = i32::try_from(claimed.len()).unwrap_or(i32::MAX);
                self.registration.in_flight.fetch_add(n, Ordering::SeqCst);
                let (store, executor, lost) = (self.store.clone(), self.executor.clone(), lost.clone());
                running.spawn(async move {
                    let far = Instant::now() + Duration::from_secs(365 * 86_400);
                    let scope = Scope { store: &store, worker: &worker, tick_id: None, deadline: far, lost: &lost };
                    let r = executor.dispatch(&scope, claimed).await;
                    drop(permits);
                    (n, r)
                });
            }
            // Stopping: the attempts in flight finish and are recorded (within the grace).
            while let Some(done) = running.join_next().await {
                account(&mut summary, done);
            }
        });
        // SIGTERM: the loop above stops claiming; the dispatches in progress get the grace
        // period, after which their attempts are left to the rescue.
        let grace = self.config.workers.shutdown_grace;
        tokio::select! {
            () = &mut outcome => {}
            () = async {
                let _ = stopping.wait_for(|s| *s).await;
                self.registration.draining.store(true, Ordering::SeqCst);
                let _ = self.registration.renew().await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(grace_seconds = grace.as_secs_f64(), "shutdown grace over: attempts still in flight are left to the rescue");
            }
        }
        drop(outcome);
        drop(beating);
        self.registration.deregister().await?;
        Ok(summary)
    }
}

/// Sleeps `d`, or less if `shutdown` turns true.
async fn wait(shutdown: &mut watch::Receiver<bool>, d: Duration) {
    let _ = tokio::time::timeout(d, shutdown.wait_for(|s| *s)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_types_are_checked_deduplicated_and_capped() {
        let given: Vec<String> = ["B", "A", "B"].map(String::from).to_vec();
        assert_eq!(served_types(&given).unwrap(), ["A", "B"]);
        assert!(served_types(&["a b".to_string()]).unwrap_err().contains("contains ' '"));
        let most: Vec<String> = (0..MAX_WORKER_TYPES).map(|i| format!("T{i}")).collect();
        assert_eq!(served_types(&most).unwrap().len(), MAX_WORKER_TYPES);
        let mut over = most.clone();
        over.push("ONE_MORE".into());
        assert_eq!(served_types(&over).unwrap_err(), "a worker serves at most 1000 action types, got 1001");
        over.extend(most.iter().cloned());
        assert!(served_types(&over).unwrap_err().ends_with("got 1001"), "repeats are counted once");
    }
}
