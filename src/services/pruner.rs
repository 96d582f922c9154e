//! The pruner: removes what is kept only for a while. Once an hour, after a tick it ran as the
//! holder, the daemon starts it in the background ([`Hourly`]): finished actions past the
//! retention, dead workers' registrations, then ledger rows, decisions and cooldowns past
//! theirs, each in small batches so that ticks go on while it runs. At start it removes
//! leftover `.tmp-*` artifact files ([`Pruner::remove_stale_tmp`]).
//!
//! It deletes only finished history: never an action that can still run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{Pace, PruneCutoffs, Pruned, Store, StoreError};

/// How often the holder prunes finished history past the retention.
pub const PURGE_EVERY: Duration = Duration::from_secs(3600);
/// Rows per purge transaction: small, so pruning never holds the write lock long enough to
/// stall a tick.
pub const PURGE_BATCH: u64 = 500;
/// Rows per history prune transaction (ledger rows with their snapshots, decisions, cooldowns).
pub const PRUNE_BATCH: u64 = 200;
/// How the daemon's history prune yields to ticks: it rests three times as long as each batch
/// took (at least 5 ms), so it holds the write lock a quarter of its time at most.
pub const PRUNE_PACE: Pace = Pace { min_rest: Duration::from_millis(5), rest_per_busy: 3 };
/// A dead worker's registration stays listed this long (`orchestrator workers`), then the
/// hourly purge removes it.
pub const DEAD_WORKER_KEPT: Duration = Duration::from_secs(86_400);
/// How long a stopping daemon lets a running purge go on before stopping it.
pub const PURGE_GRACE: Duration = Duration::from_secs(5);
/// A `.tmp-*` artifact file older than this is a leftover (its attempt died mid-write).
pub const STALE_TMP_AGE: Duration = Duration::from_secs(3600);

/// Removes history past its retention.
#[derive(Clone, Debug)]
pub struct Pruner {
    store: Store,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
}

impl Pruner {
    pub fn new(store: Store, config: Arc<Config>, metrics: Arc<Metrics>) -> Self {
        Pruner { store, config, metrics }
    }

    /// One hourly pass: finished actions past the retention, workers dead for a day, then the
    /// history. Each failure is logged and retried at the next pass.
    pub async fn run(&self) {
        let cutoff = crate::model::earlier_saturating(crate::model::now(), self.config.retention());
        match self.store.actions().purge(cutoff, PURGE_BATCH).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(deleted = n, before = %cutoff.to_rfc3339(), "purged finished actions past the retention")
            }
            Err(e) => tracing::warn!(error = %e, "retention purge failed; it is retried next hour"),
        }
        let dead_since = crate::model::earlier_saturating(crate::model::now(), DEAD_WORKER_KEPT);
        match self.store.workers().prune_workers(dead_since).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "removed worker registrations dead for over a day"),
            Err(e) => tracing::warn!(error = %e, "pruning dead workers failed; it is retried next hour"),
        }
        match prune_history(&self.store, &self.config, PRUNE_PACE).await {
            Ok(p) if p.total() == 0 => {}
            Ok(p) => tracing::info!(
                ledger = p.ledger,
                decisions = p.decisions,
                cooldowns = p.cooldowns,
                "pruned history past its retention"
            ),
            Err(e) => tracing::warn!(error = %e, "history prune failed; it is retried next hour"),
        }
    }

    /// Removes leftover `.tmp-*` files older than [`STALE_TMP_AGE`] under the artifacts dir and
    /// counts them in `orchestrator_artifact_tmp_removed_total`.
    pub async fn remove_stale_tmp(&self) {
        let dir = self.config.artifacts_dir.clone();
        let shown = dir.display().to_string();
        match tokio::task::spawn_blocking(move || crate::artifacts::remove_stale_tmp(&dir, STALE_TMP_AGE)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => {
                self.metrics.artifact_tmp_removed_total.inc_by(n);
                tracing::info!(removed = n, dir = %shown, "removed leftover .tmp-* artifact files older than an hour");
            }
            Ok(Err(e)) => tracing::warn!(error = %e, dir = %shown, "cannot clean leftover .tmp-* artifact files"),
            Err(e) => tracing::warn!(error = %e, "artifact cleanup task failed"),
        }
    }
}

/// The pruner's schedule in a daemon: at most one pass at a time, one an hour.
#[derive(Debug, Default)]
pub struct Hourly {
    last: Option<Instant>,
    running: Option<tokio::task::JoinHandle<()>>,
}

impl Hourly {
    /// Starts a pass in the background when the last one started an hour ago (or never) and
    /// has finished.
    pub fn start_if_due(&mut self, pruner: &Pruner) {
        if self.last.is_none_or(|t| t.elapsed() >= PURGE_EVERY) && self.running.as_ref().is_none_or(|p| p.is_finished())
        {
            self.last = Some(Instant::now());
            let pruner = pruner.clone();
            self.running = Some(tokio::spawn(async move { pruner.run().await }));
        }
    }

    /// A stopping daemon: a short pass finishes; a long one is stopped after [`PURGE_GRACE`],
    /// losing at most the batch in flight (each batch is its own transaction), and resumes at
    /// the next start.
    pub async fn stop(self) {
        if let Some(mut p) = self.running.filter(|p| !p.is_finished())
            && tokio::time::timeout(PURGE_GRACE, &mut p).await.is_err()
        {
            p.abort();
            tracing::info!("history purge stopped with the daemon; it resumes at the next start");
        }
    }
}

/// The cutoffs of `config`'s history retentions, as of now.
pub fn history_cutoffs(config: &Config) -> PruneCutoffs {
    let now = crate::model::now();
    let ago = |d: Duration| now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    PruneCutoffs {
        ledger: ago(config.ledger_retention()),
        decisions: ago(config.decisions_retention()),
        cooldowns: ago(config.cooldown_retention()),
    }
}

/// Prunes ledger rows, decisions and cooldowns past `config`'s retentions, [`PRUNE_BATCH`] rows
/// at a time, resting between batches as `pace` says.
pub async fn prune_history(store: &Store, config: &Config, pace: Pace) -> Result<Pruned, StoreError> {
    store.history().prune_history(history_cutoffs(config), PRUNE_BATCH, pace).await
}
