//! The `run` loop: ticks back to back at the configured interval until told to stop.
//!
//! It stops after `--ticks N`, when a tick finds the `killed` flag (that tick released the
//! lease), or on SIGTERM/SIGINT after the current tick finishes; every exit releases the lease.
//! A failing database is logged once per change of state and retried with a backoff from 1 s
//! doubling to 30 s, without a restart. It never busy-loops. Once an hour, after a tick it ran as
//! the holder, it starts a background purge of history past its retention (finished actions,
//! ledger rows, decisions, cooldowns) in small batches, so ticks go on while it runs. At start it
//! removes leftover `.tmp-*` artifact files older than an hour. `run` writes its config's
//! `limits:` into the database at start and on SIGHUP, and a worker fills in those that have no
//! base limit yet before its first claim ([`sync_limits`]).

use std::time::Duration;

use tokio::sync::watch;

use crate::config::Config;
use crate::model::TickStatus;
use crate::store::{ConfigLimits, Pace, PruneCutoffs, Pruned, Store, StoreError};
use crate::tick::{Engine, TickOutcome};

/// How long an idle daemon with `tick_interval_seconds: 0` waits before looking again.
pub const IDLE_POLL: Duration = Duration::from_millis(500);
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
/// A follower never polls more often than this.
const FOLLOWER_MIN_POLL: Duration = Duration::from_millis(50);
/// How long after the holder's expiry a follower looks again.
const FOLLOWER_MARGIN: Duration = Duration::from_millis(10);
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Why the loop stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    TicksDone,
    Killed,
    Signal,
}

/// What a run did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunSummary {
    pub ticks: u64,
    pub stopped_by: StopReason,
}

/// Deletes SUCCESS and CANCELLED actions older than the retention, then ledger rows, decisions
/// and cooldowns older than theirs, in small batches.
async fn purge(engine: &Engine) {
    let cutoff = crate::model::earlier_saturating(crate::model::now(), engine.config().retention());
    match engine.store().actions().purge(cutoff, PURGE_BATCH).await {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(deleted = n, before = %cutoff.to_rfc3339(), "purged finished actions past the retention")
        }
        Err(e) => tracing::warn!(error = %e, "retention purge failed; it is retried next hour"),
    }
    let dead_since = crate::model::earlier_saturating(crate::model::now(), DEAD_WORKER_KEPT);
    match engine.store().workers().prune_workers(dead_since).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "removed worker registrations dead for over a day"),
        Err(e) => tracing::warn!(error = %e, "pruning dead workers failed; it is retried next hour"),
    }
    match prune_history(engine.store(), engine.config(), PRUNE_PACE).await {
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

/// Removes leftover `.tmp-*` files older than [`STALE_TMP_AGE`] under the artifacts dir and
/// counts them in `orchestrator_artifact_tmp_removed_total`.
pub async fn remove_stale_tmp(engine: &Engine) {
    let dir = engine.config().artifacts_dir.clone();
    let shown = dir.display().to_string();
    match tokio::task::spawn_blocking(move || crate::artifacts::remove_stale_tmp(&dir, STALE_TMP_AGE)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => {
            engine.metrics().artifact_tmp_removed_total.inc_by(n);
            tracing::info!(removed = n, dir = %shown, "removed leftover .tmp-* artifact files older than an hour");
        }
        Ok(Err(e)) => tracing::warn!(error = %e, dir = %shown, "cannot clean leftover .tmp-* artifact files"),
        Err(e) => tracing::warn!(error = %e, "artifact cleanup task failed"),
    }
}

/// Writes the config's `limits:` section into the database, on `how`'s terms: `run` replaces
/// (at start and on SIGHUP), every other process that claims fills in what has no base limit
/// before its first claim ([`ConfigLimits`]). Without a section it changes nothing. Warns of a
/// limit on a type no adapter here serves, and of each field where this config and the
/// database disagreed, naming the type, the field, both values and who set the database's.
pub async fn sync_limits(
    store: &Store,
    config: &Config,
    registry: &crate::adapters::Registry,
    how: ConfigLimits,
) -> Result<(), StoreError> {
    for w in config.unserved_limit_warnings(registry.types()) {
        tracing::warn!("{w}");
    }
    let Some(limits) = &config.limits else { return Ok(()) };
    let done = store.limits().write_config_limits(limits, how).await?;
    let none = || "none".to_string();
    for d in &done.disagreements {
        let (t, field, source) = (&d.action_type, d.field, d.source.as_str());
        let (ours, theirs) = (d.config.clone().unwrap_or_else(none), d.database.clone().unwrap_or_else(none));
        match how {
            ConfigLimits::Replace => tracing::warn!(
                action_type = %t, field = %field, config = %ours, database = %theirs, source,
                "limits.{t}.{field}: the database held {theirs} (set by {source}); this config's {ours} replaces it \
                 (a process whose config says {theirs} now runs under {ours})"
            ),
            ConfigLimits::Fill => tracing::warn!(
                action_type = %t, field = %field, config = %ours, database = %theirs, source,
                "limits.{t}.{field}: this config says {ours}, but the database holds {theirs} (set by {source}), \
                 which every claimer honours, this process too; align the configs, or decide with \
                 `orchestrator limits set`"
            ),
        }
    }
    for t in &done.removed {
        tracing::warn!(
            action_type = %t,
            "limits.{t}: set from a config (an earlier one, or another process's) that this one does not name; \
             its limits were removed"
        );
    }
    let types: Vec<&str> = limits.keys().map(String::as_str).collect();
    tracing::info!(types = ?types, written = ?done.written, removed = ?done.removed, "limits written from the config");
    Ok(())
}

/// Runs ticks until a stop condition; `shutdown` turning true asks for a clean stop.
pub async fn run(engine: &Engine, max_ticks: Option<u64>, mut shutdown: watch::Receiver<bool>) -> RunSummary {
    let interval = engine.interval();
    let mut ticks = 0u64;
    let mut failing: Option<Duration> = None;
    let mut following: Option<String> = None;
    let mut last_purge: Option<std::time::Instant> = None;
    let mut purging: Option<tokio::task::JoinHandle<()>> = None;
    remove_stale_tmp(engine).await;
    let stopped_by = loop {
        if *shutdown.borrow() {
            break StopReason::Signal;
        }
        let outcome = engine.tick().await;
        ticks += 1;
        let mut wait = interval;
        // Renews the lease while the daemon waits for its next tick (dropped when the wait
        // ends), so that an interval longer than the TTL does not hand leadership to another
        // instance, or to a new epoch of this one, at every tick.
        let mut _holding: Option<crate::lease::Heartbeat> = None;
        let mut _alive: Option<crate::worker::KeepAlive> = None;
        match outcome {
            Ok(TickOutcome::Ran(r)) => {
                if failing.take().is_some() {
                    tracing::info!("database reachable again; ticking resumed");
                }
                if following.take().is_some() {
                    tracing::info!(epoch = r.epoch, "acquired the lease; now the active instance");
                }
                tracing::info!(
                    tick_id = r.tick_id,
                    status = %r.status,
                    duration_ms = r.duration_ms,
                    attempted = r.attempted,
                    succeeded = r.succeeded,
                    failed = r.failed,
                    notes = %r.notes,
                    "tick"
                );
                if r.status == TickStatus::Killed {
                    break StopReason::Killed;
                }
                engine.metrics().instance_lease_held.set(1);
                if last_purge.is_none_or(|t| t.elapsed() >= PURGE_EVERY)
                    && purging.as_ref().is_none_or(|p| p.is_finished())
                {
                    last_purge = Some(std::time::Instant::now());
                    let engine = engine.clone();
                    purging = Some(tokio::spawn(async move { purge(&engine).await }));
                }
                if interval.is_zero() && r.attempted == 0 {
                    wait = IDLE_POLL;
                }
                // Work-conserving between ticks too: a tick that stopped on its budget leaves
                // work due, so the next one starts now; the interval paces an idle queue.
                if r.budget_spent {
                    wait = Duration::ZERO;
                }
                _holding = Some(engine.hold_lease_between_ticks(r.epoch));
                _alive = Some(engine.keep_registration_alive());
            }
            Ok(TickOutcome::NotLeader { owner, expires_at, .. }) => {
                engine.metrics().instance_lease_held.set(0);
                if failing.take().is_some() {
                    tracing::info!("database reachable again");
                }
                if following.as_deref() != Some(owner.as_str()) {
                    tracing::info!(holder = %owner, until = %expires_at.to_rfc3339(), "lease held by another instance; following");
                    following = Some(owner);
                }
                if interval.is_zero() {
                    wait = IDLE_POLL;
                }
                // Look again just after the holder's lease would expire, not up to a whole
                // interval later. The floor keeps a clock far behind the database's from
                // polling in a tight loop.
                let until = (expires_at - crate::model::now()).to_std().unwrap_or_default();
                wait = wait.min(until.max(FOLLOWER_MIN_POLL) + FOLLOWER_MARGIN);
            }
            Err(e) => {
                engine.metrics().instance_lease_held.set(0);
                let next = match failing {
                    None => {
                        // An outage is the database not answering; any other failed tick is
                        // in the ledger and the logs, not counted as one.
                        if e.is_unavailable() {
                            engine.metrics().database_outages_total.inc();
                            tracing::error!(error = %e, "tick failed: database unavailable; retrying with backoff until it answers");
                        } else {
                            tracing::error!(error = %e, "tick failed; retrying with backoff");
                        }
                        BACKOFF_START
                    }
                    Some(prev) => (prev * 2).min(BACKOFF_MAX),
                };
                failing = Some(next);
                wait = next;
            }
        }
        if max_ticks.is_some_and(|n| ticks >= n) {
            break StopReason::TicksDone;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
    };
    if let Some(mut p) = purging.filter(|p| !p.is_finished()) {
        // A short purge finishes; a long one is stopped, losing at most the batch in flight
        // (each batch is its own transaction), and resumes at the next start.
        if tokio::time::timeout(PURGE_GRACE, &mut p).await.is_err() {
            p.abort();
            tracing::info!("history purge stopped with the daemon; it resumes at the next start");
        }
    }
    engine.metrics().instance_lease_held.set(0);
    match engine.release().await {
        Ok(true) => tracing::info!("lease released"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "could not release the lease; it expires by itself"),
    }
    RunSummary { ticks, stopped_by }
}
