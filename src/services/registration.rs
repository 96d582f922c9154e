//! This process's registration in the `workers` table: written before its first claim,
//! renewed by a heartbeat, replaced under a new id once it lapsed, removed at a clean stop.
//!
//! Every executor registers, the `run` process's own too, so the rescue and `workers` see each
//! claimer the same way. A lapsed registration is never renewed again: its claims are the
//! rescuer's, and what the executor still writes under it is fenced by each claim's token.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use crate::heartbeat::{Heartbeat, Renewal, WhenLost};
use crate::store::{Beat, NewWorker, Store, StoreError};

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
    pub(crate) in_flight: AtomicI32,
    done: AtomicI64,
    failed: AtomicI64,
    pub(crate) draining: AtomicBool,
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
    pub(crate) fn heartbeat(self: &Arc<Self>, every: Duration, ttl: Duration, lost: Arc<AtomicBool>) -> Heartbeat {
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
