//! The dispatcher: claims due actions, runs them through the executor, records each outcome.
//!
//! The lease holder's tick calls [`Dispatcher::drain`] with the tick's budget, and between its
//! ticks the daemon calls [`Dispatcher::pick_up`], which drains again each time new work wakes
//! it, so an enqueue runs within milliseconds rather than at the next tick; a dry run calls
//! [`Dispatcher::preview`], which is the claim's own pick, written nowhere, so what it lists is
//! what the next claim takes. [`ClaimTerms`] are the terms every claimer states, the `worker`
//! process's too. After a tick that ran nothing with work due, [`Dispatcher::left_idle`] checks
//! the work-conserving invariant. It never decides what is due: the store's claim does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::executor::{ExecSettings, Executor, Scope};
use crate::heartbeat::Heartbeat;
use crate::limits::LimitSpec;
use crate::model::Action;
use crate::services::registration::Registration;
use crate::store::{Claimer, Store, StoreError, WorkWaiter};

/// Rows claimed per claim statement; a tick loops claims up to its budget.
pub const CLAIM_BATCH: u32 = 512;

/// What every claim of one process states besides its worker id.
#[derive(Clone, Debug)]
pub struct ClaimTerms {
    pub worker_ttl: Duration,
    /// The action types it serves; empty: every type.
    pub types: Vec<String>,
    /// How long a claimed attempt may wait for a run slot before it starts.
    pub start_within: Duration,
    pub proof_enforced: bool,
    pub limit_partitions: usize,
    pub type_timeouts: Vec<(String, Duration)>,
    pub default_timeout: Duration,
}

impl ClaimTerms {
    /// The terms of an executor with `settings`' timeouts.
    pub fn new(settings: &ExecSettings, worker_ttl: Duration, start_within: Duration) -> Self {
        let (type_timeouts, default_timeout) = settings.claim_timeouts();
        ClaimTerms {
            worker_ttl,
            types: Vec::new(),
            start_within,
            proof_enforced: false,
            limit_partitions: 0,
            type_timeouts,
            default_timeout,
        }
    }

    /// The claim of `worker`, the lease holder's own executor when `epoch` is set.
    pub fn claimer(&self, worker: String, epoch: Option<i64>) -> Claimer {
        Claimer {
            worker,
            worker_ttl: self.worker_ttl,
            types: self.types.clone(),
            type_timeouts: self.type_timeouts.clone(),
            default_timeout: self.default_timeout,
            start_within: self.start_within,
            proof_enforced: self.proof_enforced,
            limit_partitions: self.limit_partitions,
            epoch,
        }
    }
}

/// What a tick's dispatch did.
#[derive(Clone, Debug, Default)]
pub struct Drained {
    pub attempted: u32,
    pub succeeded: u32,
    /// Claims returned to PENDING unstarted (the deadline, or a lost lease).
    pub unstarted: u32,
    /// Outcome writes the fence refused.
    pub rejected_writes: usize,
    /// The first store error met while recording outcomes; the dispatch stopped there.
    pub store_error: Option<String>,
    /// What was left of the budget.
    pub remaining: u32,
}

impl Drained {
    /// Adds what another drain did.
    fn add(&mut self, d: Drained) {
        self.attempted += d.attempted;
        self.succeeded += d.succeeded;
        self.unstarted += d.unstarted;
        self.rejected_writes += d.rejected_writes;
        if self.store_error.is_none() {
            self.store_error = d.store_error;
        }
    }
}

/// Due work a tick left idle: what per-type limits hold (and why), and the rest.
#[derive(Clone, Debug, Default)]
pub struct LeftIdle {
    /// Due actions held by a full limit, and each limit that holds them.
    pub held: i64,
    pub held_by: Vec<String>,
    /// Each open maintenance window that holds due work, e.g. `window 3 WEBHOOK (5 waiting)`
    /// (its actions are counted in `held`).
    pub held_by_windows: Vec<String>,
    /// Due actions nothing holds: 0 unless the work-conserving invariant is broken.
    pub unheld: i64,
}

/// One claim's rows, and whether it took fewer than it asked for.
struct Batch {
    claimed: Vec<crate::store::Claimed>,
    short: bool,
}

/// Who a drain claims as, and under what: the lease's epoch, the tick (if any), the time after
/// which it starts nothing.
struct Shift<'a> {
    worker: String,
    epoch: i64,
    tick_id: Option<i64>,
    deadline: Instant,
    lease: &'a Heartbeat,
}

/// The lease holder's executor: claims and runs within a tick's budget.
#[derive(Clone, Debug)]
pub struct Dispatcher {
    store: Store,
    executor: Executor,
    registration: Arc<Registration>,
    terms: ClaimTerms,
    /// How often the registration is renewed while attempts run.
    heartbeat: Duration,
}

impl Dispatcher {
    pub fn new(
        store: Store,
        executor: Executor,
        registration: Arc<Registration>,
        terms: ClaimTerms,
        heartbeat: Duration,
    ) -> Self {
        Dispatcher { store, executor, registration, terms, heartbeat }
    }

    /// This executor's registration.
    pub fn registration(&self) -> &Arc<Registration> {
        &self.registration
    }

    /// What the next claims would take, at most `cap` (the config's `limits` filled in where the
    /// database has none, as the tick's process writes them before it claims): the claim's own
    /// pick in a transaction that is rolled back.
    pub async fn preview(
        &self,
        cap: u32,
        config_limits: Option<&BTreeMap<String, LimitSpec>>,
    ) -> Result<Vec<Action>, StoreError> {
        self.store.actions().pick(&self.terms.claimer(String::new(), None), u64::from(cap), config_limits).await
    }

    /// Claims and runs up to `budget` actions in batches, until the queue has nothing due, the
    /// `deadline` passes or the lease is `lost`. `limited`: some type has a limit, so a short
    /// batch may be a limit's cut rather than an empty queue (the slots it used are free again
    /// once it ran).
    pub async fn drain(
        &self,
        budget: u32,
        deadline: Instant,
        tick_id: Option<i64>,
        epoch: i64,
        lease: &Heartbeat,
        limited: bool,
    ) -> Result<Drained, StoreError> {
        let worker = self.registration.ensure().await?;
        let _alive = self.registration.keep_alive(self.heartbeat);
        self.shift(&Shift { worker, epoch, tick_id, deadline, lease }, budget, limited).await
    }

    /// The claims and runs of [`Dispatcher::drain`] as `shift.worker`, registered already. On
    /// PostgreSQL the next batch is claimed while the one before it runs, so the executor does
    /// not wait for a claim between two batches (the 50k NOOP drain: 9,400–10,900 /s without,
    /// 12,100–15,400 with). A claim ahead follows a full batch only, while budget, time and the
    /// lease remain; one that comes back empty ends the shift, unless a limit may have cut it
    /// (the slots the running batch holds are free once it is done: the claim is taken again
    /// then). SQLite claims after the batch is done: its claim and the batch's group commits
    /// share one write lock, and claiming ahead there slowed the same drain from 13,000 to
    /// 10,500 /s.
    async fn shift(&self, shift: &Shift<'_>, budget: u32, limited: bool) -> Result<Drained, StoreError> {
        let Shift { worker, epoch, tick_id, deadline, lease } = shift;
        let (epoch, tick_id, deadline) = (*epoch, *tick_id, *deadline);
        let claimer = self.terms.claimer(worker.clone(), Some(epoch));
        let lost = lease.lost_flag();
        let scope = Scope { store: &self.store, worker, tick_id, deadline, lost: &lost };
        let mut out = Drained { remaining: budget, ..Drained::default() };
        let may_claim = |out: &Drained| out.remaining > 0 && Instant::now() < deadline && !lease.is_lost();
        let claim_ahead = self.store.backend() == crate::store::Backend::Postgres;
        let mut ahead: Option<Batch> = None;
        while ahead.is_some() || may_claim(&out) {
            let batch = match ahead.take() {
                Some(batch) => batch,
                None => self.claim_batch(&claimer, &mut out).await?,
            };
            if batch.claimed.is_empty() {
                break;
            }
            // A short batch means nothing else was due; claiming again would only re-take what
            // this tick just failed and made due again, unless a limit cut the batch.
            let mut drained = batch.short && !limited;
            // After a short batch, a claim now would find nothing or a limit's slots all taken.
            let ahead_now = claim_ahead && !batch.short && may_claim(&out);
            let run = self.executor.dispatch(&scope, batch.claimed);
            let r = if !ahead_now {
                run.await
            } else {
                let (r, next) = tokio::join!(run, self.claim_batch(&claimer, &mut out));
                match next {
                    Ok(next) if !next.claimed.is_empty() => ahead = Some(next),
                    Ok(_) => drained = !limited,
                    Err(e) => {
                        self.account(&mut out, r);
                        return Err(e);
                    }
                }
                r
            };
            let failed = r.store_error.is_some();
            self.account(&mut out, r);
            if failed {
                // What was claimed ahead starts nothing: back to waiting, uncounted (or, with the
                // database away, left to the rescue).
                if let Some(batch) = ahead.take() {
                    let stop = std::sync::atomic::AtomicBool::new(true);
                    let r = self.executor.dispatch(&Scope { lost: &stop, ..scope }, batch.claimed).await;
                    out.unstarted += r.unstarted;
                }
                break;
            }
            if drained {
                break;
            }
        }
        Ok(out)
    }

    /// Claims the next batch of `out`'s remaining budget (at most [`CLAIM_BATCH`]), taking what
    /// it claimed off the budget.
    async fn claim_batch(&self, claimer: &crate::store::Claimer, out: &mut Drained) -> Result<Batch, StoreError> {
        let want = out.remaining.min(CLAIM_BATCH);
        let claimed = self.store.actions().claim(claimer, u64::from(want)).await?;
        out.remaining -= claimed.len() as u32;
        Ok(Batch { short: (claimed.len() as u32) < want, claimed })
    }

    /// Adds what one dispatch did to `out`, and to the registration's counts.
    fn account(&self, out: &mut Drained, r: crate::executor::DispatchReport) {
        self.registration.count(r.succeeded, r.failed);
        out.attempted += r.attempted;
        out.succeeded += r.succeeded;
        out.unstarted += r.unstarted;
        out.rejected_writes += r.rejected.len();
        if out.store_error.is_none() {
            out.store_error = r.store_error;
        }
    }

    /// Between two ticks of the holder at `epoch`: each time `waiter` wakes (new work), drains
    /// what is due as a tick would, with no tick of its own (its log rows name none), up to
    /// `budget` a wake-up; until `until`, the lease is lost or `stop` turns true. A wait that
    /// ends with no wake-up claims nothing: work due by time alone waits for the next tick.
    /// A store error ends it (logged): the next tick meets the same database and says so.
    pub async fn pick_up(
        &self,
        until: Instant,
        epoch: i64,
        lease: &Heartbeat,
        waiter: &mut WorkWaiter,
        budget: u32,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Drained {
        let mut total = Drained::default();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || lease.is_lost() || *stop.borrow() {
                return total;
            }
            let woke = tokio::select! {
                woke = waiter.wait(left) => woke,
                // A stop whose sender is gone never comes: wait for the waiter alone.
                Ok(()) = stop.changed() => false,
            };
            if !woke || Instant::now() >= until {
                continue;
            }
            // The daemon keeps the registration alive between ticks: a wake-up does not renew it
            // (a durable write) unless it has none.
            let worker = match self.registration.id() {
                Some(id) => Ok(id),
                None => self.registration.ensure().await,
            };
            let ran = match worker {
                Ok(worker) => {
                    self.shift(&Shift { worker, epoch, tick_id: None, deadline: until, lease }, budget, true).await
                }
                Err(e) => Err(e),
            };
            match ran {
                Ok(d) => {
                    let failed = d.store_error.is_some();
                    total.add(d);
                    if failed {
                        return total;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "picking up work between ticks failed; the next tick tries again");
                    return total;
                }
            }
        }
    }

    /// The due work nobody runs now, split into what full limits hold (named, e.g. `SLOW
    /// max_running 2 (7 waiting)`) and the rest.
    pub async fn left_idle(&self) -> Result<LeftIdle, StoreError> {
        let due = self.store.actions().due_count().await?;
        if due == 0 {
            return Ok(LeftIdle::default());
        }
        let usage = self.store.limits().limit_usage().await?;
        let windows = self.store.windows().held_due().await?;
        let by_windows = if windows.iter().any(|(_, n)| *n > 0) {
            let open = windows.iter().map(|(w, _)| w);
            self.store.windows().held_count(open, &crate::limits::held_types(&usage)).await?
        } else {
            0
        };
        let held = crate::limits::held_waiting(&usage).saturating_add(by_windows).min(due);
        let held_by_windows = windows
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(w, n)| format!("window {} {} ({n} waiting)", w.id, w.spec.matcher.types.join(",")))
            .collect();
        Ok(LeftIdle { held, held_by: held_by(&usage), held_by_windows, unheld: due - held })
    }
}

/// For each type whose due work a full limit holds (for a partitioned type: its tightest
/// partition) or its allowed hours hold, what holds it, e.g. `SLOW max_running 2 (7 waiting)`,
/// `POST_SOCIAL allowed_hours 09:00-21:00 Europe/Madrid (3 waiting)`.
fn held_by(usage: &[crate::limits::LimitUsage]) -> Vec<String> {
    let mut why = Vec::new();
    for u in usage.iter().filter(|u| u.waiting > 0 && u.is_held()) {
        let spec = &u.limit.effective;
        if let Some(hours) = spec.allowed_hours.filter(|_| u.outside_allowed_hours) {
            why.push(format!("{} allowed_hours {hours} ({} waiting)", u.action_type, u.waiting));
            continue;
        }
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
    why
}
