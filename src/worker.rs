//! EXECUTE, on any host: a worker registers in the `workers` table, renews its heartbeat, and
//! claims and runs due actions through the executor until it is told to stop.
//!
//! The `run` process's own executor is a [`Registration`] too, so a change of leader never
//! touches attempts in flight. A worker whose heartbeat lapses stops starting attempts at once;
//! what it still writes is fenced by each claim's token anyway, and it carries on only under a
//! new id. It never monitors, decides, rescues or purges: that is the lease holder's (`tick`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::adapters::Registry;
use crate::config::Config;
use crate::executor::{DispatchReport, ExecSettings, Executor, Scope};
use crate::metrics::Metrics;
use crate::services::dispatcher::ClaimTerms;
use crate::services::registration::Registration;
use crate::store::{Store, StoreError};

/// The slack of a worker's claim deadline beyond the rounds its attempt may wait for a run
/// slot: the hand-over and the outcome write.
pub const WORKER_START_WITHIN: Duration = Duration::from_secs(5);

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
    /// The least its pool keeps claimed ([`Pool::floor`]).
    claim_floor: usize,
    registration: Arc<Registration>,
    options: WorkerOptions,
    metrics: Arc<Metrics>,
}

impl Worker {
    pub fn new(store: Store, config: Config, registry: Registry, options: WorkerOptions) -> Self {
        let metrics = Arc::new(Metrics::new());
        let mut settings = ExecSettings::from_config(&config, store.clock().clone(), options.concurrency);
        // The window scales with the worker's own concurrency, as `run`'s does with its, unless
        // the config sets it (at least 4 × `--concurrency`). What a worker claims of it is its
        // share of the queue: [`Pool`] fills a default window only while its attempts are fast.
        let own = options.concurrency.saturating_mul(4) as usize;
        let (window, claim_floor) = if config.max_unrecorded_given {
            let given = settings.max_unrecorded.max(own);
            (given, given)
        } else {
            (crate::config::default_max_unrecorded(options.concurrency) as usize, own)
        };
        settings.max_unrecorded = window;
        let executor = Executor::new(Arc::new(registry), settings.clone(), metrics.clone()).with_shared_concurrency();
        let registration =
            Arc::new(Registration::new(store.clone(), config.workers.ttl, options.concurrency, options.types.clone()));
        Worker { store, config: Arc::new(config), executor, settings, claim_floor, registration, options, metrics }
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
        let lost = Arc::new(AtomicBool::new(false));
        // The heartbeat runs beside the claims: a failed or refused renewal sets `lost`.
        let beating = self.registration.heartbeat(self.config.workers.heartbeat, self.config.workers.ttl, lost.clone());
        let mut waiter = self.store.notify().waiter().await;
        let mut pool = Pool::new(&self.settings, self.claim_floor);
        let terms = self.claim_terms(&pool);
        let mut work = Box::pin(self.claim_loop(&terms, &mut pool, &mut waiter, &lost, shutdown));
        // SIGTERM: the loop stops claiming; the dispatches in progress get the grace period,
        // after which their attempts are left to the rescue.
        let grace = self.config.workers.shutdown_grace;
        tokio::select! {
            () = &mut work => {}
            () = async {
                let _ = stopping.wait_for(|s| *s).await;
                self.registration.draining.store(true, Ordering::SeqCst);
                let _ = self.registration.renew().await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(grace_seconds = grace.as_secs_f64(), "shutdown grace over: attempts still in flight are left to the rescue");
            }
        }
        drop(work);
        drop(beating);
        self.registration.deregister().await?;
        Ok(pool.summary)
    }

    /// What this worker's claims state. A claimed attempt may wait for a run slot behind the
    /// rest of the pool's window: its deadline allows for that many rounds.
    fn claim_terms(&self, pool: &Pool) -> ClaimTerms {
        let mut terms = ClaimTerms::new(&self.settings, self.config.workers.ttl, Duration::ZERO);
        let rounds = u32::try_from(pool.window.div_ceil(pool.concurrency)).unwrap_or(u32::MAX);
        terms.start_within =
            WORKER_START_WITHIN.saturating_add(terms.default_timeout.saturating_mul(rounds.saturating_sub(1)));
        ClaimTerms {
            types: self.options.types.clone(),
            proof_enforced: self.config.proof_enforced,
            limit_partitions: self.config.limit_partitions as usize,
            ..terms
        }
    }

    /// Registers, claims as many as the pool has room for, hands each batch to a dispatch of its
    /// own, and waits for work when there is none; until `shutdown`, then waits for the
    /// dispatches in flight.
    async fn claim_loop(
        &self,
        terms: &ClaimTerms,
        pool: &mut Pool,
        waiter: &mut crate::store::WorkWaiter,
        lost: &Arc<AtomicBool>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let poll = self.config.workers.poll;
        let mut id: Option<String> = None;
        loop {
            pool.collect_finished(&self.registration);
            if *shutdown.borrow() {
                break;
            }
            if id.is_none() || lost.load(Ordering::SeqCst) {
                // A lapsed registration: what is in flight finishes (or is unstarted) under the
                // old one first; then a new id.
                pool.wait_all(&self.registration).await;
                match self.registration.ensure().await {
                    Ok(new) => {
                        lost.store(false, Ordering::SeqCst);
                        pool.summary.registrations += 1;
                        id = Some(new);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot register the worker; trying again");
                        wait(&mut shutdown, poll).await;
                        continue;
                    }
                }
            }
            let Some(worker) = id.clone() else { continue };
            let Some(permits) = pool.room(&mut shutdown, &self.registration).await else { continue };
            match self.store.actions().claim(&terms.claimer(worker.clone(), None), permits.len() as u64).await {
                Err(e) => {
                    drop(permits);
                    tracing::warn!(error = %e, "claim failed; trying again");
                    wait(&mut shutdown, poll).await;
                }
                Ok(claimed) if claimed.is_empty() => {
                    drop(permits);
                    pool.idle(waiter, poll, &mut shutdown, &self.registration).await;
                }
                Ok(claimed) => {
                    let scope = (self.store.clone(), self.executor.clone(), worker, lost.clone());
                    pool.spawn(scope, claimed, permits, &self.registration);
                }
            }
        }
        // Stopping: the attempts in flight finish and are recorded (within the grace).
        pool.wait_all(&self.registration).await;
    }
}

/// How far ahead of its run slots a worker claims: what it can start within this long, judged
/// by how fast its last dispatches went, and at least [`Pool::floor`].
const CLAIM_AHEAD: Duration = Duration::from_millis(100);

/// A worker's dispatches in flight. Up to `window` attempts are claimed and not yet recorded
/// (at least `concurrency`), and `concurrency` run at once across every dispatch: each claim
/// takes as many rows as the window has room for, and its dispatch runs beside the others, so a
/// slow attempt never holds the next claim back. Of the window it fills only `target`: what its
/// attempts, at the pace of the last dispatch, start within [`CLAIM_AHEAD`], and at least
/// `floor`. Claimed rows wait for this worker's slots while another worker may be idle, so a
/// worker of slow attempts holds a few rounds (`floor`), while one of fast attempts claims and
/// commits hundreds at once (the 50k NOOP drain with workers: BENCHMARKS.md "Round 2").
struct Pool {
    concurrency: usize,
    window: usize,
    /// 4 × `concurrency`, or `max_unrecorded` when the config sets it (then the whole window).
    floor: usize,
    target: usize,
    slots: Arc<tokio::sync::Semaphore>,
    running: tokio::task::JoinSet<(i32, DispatchReport, Duration)>,
    summary: WorkerSummary,
}

type Permits = Vec<tokio::sync::OwnedSemaphorePermit>;

impl Pool {
    /// `floor`: the least it keeps claimed (at least 4 × `concurrency`, at most the window).
    fn new(settings: &ExecSettings, floor: usize) -> Self {
        let concurrency = settings.concurrency.max(1);
        let window = settings.max_unrecorded.max(concurrency);
        let floor = floor.max(concurrency.saturating_mul(4)).min(window);
        Pool {
            concurrency,
            window,
            floor,
            target: floor,
            slots: Arc::new(tokio::sync::Semaphore::new(window)),
            running: tokio::task::JoinSet::new(),
            summary: WorkerSummary::default(),
        }
    }

    /// Counts a finished dispatch.
    fn account(
        &mut self,
        registration: &Registration,
        done: Result<(i32, DispatchReport, Duration), tokio::task::JoinError>,
    ) {
        match done {
            Ok((n, r, took)) => {
                self.target = claim_target(n, took, self.floor, self.window);
                registration.in_flight.fetch_sub(n, Ordering::SeqCst);
                registration.count(r.succeeded, r.failed);
                self.summary.attempted += u64::from(r.attempted);
                self.summary.succeeded += u64::from(r.succeeded);
                self.summary.rejected_writes += r.rejected.len() as u64;
            }
            Err(e) => tracing::error!(error = %e, "a dispatch task failed"),
        }
    }

    fn collect_finished(&mut self, registration: &Registration) {
        while let Some(done) = self.running.try_join_next() {
            self.account(registration, done);
        }
    }

    async fn wait_all(&mut self, registration: &Registration) {
        while let Some(done) = self.running.join_next().await {
            self.account(registration, done);
        }
    }

    /// Free slots of the window up to the target, at least one (waiting for a dispatch to
    /// finish while the target is reached); `None` when `shutdown` turned true first. The
    /// semaphore is never closed.
    async fn room(&mut self, shutdown: &mut watch::Receiver<bool>, registration: &Registration) -> Option<Permits> {
        while self.window - self.slots.available_permits() >= self.target && !self.running.is_empty() {
            tokio::select! {
                Some(done) = self.running.join_next() => self.account(registration, done),
                _ = shutdown.wait_for(|s| *s) => return None,
            }
        }
        let first = tokio::select! {
            p = self.slots.clone().acquire_owned() => p.ok()?,
            _ = shutdown.wait_for(|s| *s) => return None,
        };
        let mut permits = vec![first];
        while self.window - self.slots.available_permits() < self.target
            && let Ok(p) = self.slots.clone().try_acquire_owned()
        {
            permits.push(p);
        }
        Some(permits)
    }

    /// Nothing was due: waits for a wake-up (new work, [`crate::store::WorkWaiter`]), a
    /// finished dispatch (its slot, and a limit's slot of its type, are free again), the poll,
    /// or `shutdown`.
    async fn idle(
        &mut self,
        waiter: &mut crate::store::WorkWaiter,
        poll: Duration,
        shutdown: &mut watch::Receiver<bool>,
        registration: &Registration,
    ) {
        tokio::select! {
            _ = waiter.wait(poll) => {}
            Some(done) = self.running.join_next(), if !self.running.is_empty() => self.account(registration, done),
            _ = shutdown.wait_for(|s| *s) => {}
        }
    }

    /// Runs `claimed` beside the other dispatches, holding one slot each until it is recorded.
    fn spawn(
        &mut self,
        (store, executor, worker, lost): (Store, Executor, String, Arc<AtomicBool>),
        claimed: Vec<crate::store::Claimed>,
        mut permits: Permits,
        registration: &Registration,
    ) {
        permits.truncate(claimed.len());
        let n = i32::try_from(claimed.len()).unwrap_or(i32::MAX);
        registration.in_flight.fetch_add(n, Ordering::SeqCst);
        self.running.spawn(async move {
            let far = Instant::now() + Duration::from_secs(365 * 86_400);
            let scope = Scope { store: &store, worker: &worker, tick_id: None, deadline: far, lost: &lost };
            let began = Instant::now();
            let r = executor.dispatch(&scope, claimed).await;
            drop(permits);
            (n, r, began.elapsed())
        });
    }
}

/// How much of its window a pool fills after a dispatch of `n` attempts took `took`: at that
/// pace it starts n × [`CLAIM_AHEAD`] / took of them within `CLAIM_AHEAD`; at least `floor`,
/// at most `window`.
fn claim_target(n: i32, took: Duration, floor: usize, window: usize) -> usize {
    let pace = f64::from(n.max(1)) * CLAIM_AHEAD.as_secs_f64() / took.as_secs_f64().max(1e-6);
    (pace.min(window as f64) as usize).clamp(floor.min(window), window)
}

/// Sleeps `d`, or less if `shutdown` turns true.
async fn wait(shutdown: &mut watch::Receiver<bool>, d: Duration) {
    let _ = tokio::time::timeout(d, shutdown.wait_for(|s| *s)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fast attempts fill the window; slow ones keep the floor, so a worker of slow work holds a
    /// few rounds claimed while others may be idle.
    #[test]
    fn a_pool_claims_ahead_what_it_starts_within_claim_ahead() {
        let ms = Duration::from_millis;
        assert_eq!(claim_target(64, ms(2), 64, 512), 512, "64 NOOPs in 2 ms: the whole window");
        assert_eq!(claim_target(64, ms(20), 64, 512), 320, "64 in 20 ms: 320 start within 100 ms");
        assert_eq!(claim_target(64, ms(800), 64, 512), 64, "200 ms webhooks: the floor");
        assert_eq!(claim_target(0, Duration::ZERO, 64, 512), 512, "nothing timed: no division by zero");
        assert_eq!(claim_target(64, ms(1), 600, 512), 512, "never past the window");
    }

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
