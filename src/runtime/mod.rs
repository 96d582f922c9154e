//! Assembles a process from the services: `run` (the daemon), `worker`, `serve`, and
//! `run-once`'s single tick or dry run. The CLI only maps its arguments to one call here and
//! its result to output and an exit code.
//!
//! A process is wired here once: the rules loaded (and watched, for `run`), the config's limits
//! written, the signals listened for, the HTTP server started and stopped. It prints nothing;
//! what went wrong before the process could start is a [`StartError`].

pub mod daemon;
pub mod http;
pub mod reload;
pub mod signals;
pub mod startup;

use std::net::SocketAddr;

use tokio::sync::watch;

use crate::adapters::{Registry, RegistryError};
use crate::config::Config;
use crate::services::{limits_writer, scheduler};
use crate::store::{ConfigLimits, Store, StoreError};
use crate::tick::{DryRunReport, Engine, TickOutcome};
use crate::worker::{Worker, WorkerOptions, WorkerSummary};
use daemon::RunSummary;
use http::HttpServer;
use reload::Reload;

/// Why a process could not start, or stopped on a fault.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Refused as configured: an address it cannot bind, rules that do not load.
    #[error("{0}")]
    Refused(String),
    /// The database did not answer within `startup_timeout_seconds`.
    #[error("{0}")]
    Unavailable(String),
    /// An adapter's settings the registry refused.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How `run` runs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Stop after this many ticks.
    pub ticks: Option<u64>,
    /// Serve `/`, `/metrics`, `/health`, `/status` and `/api/`.
    pub http: bool,
    /// Execute due actions itself (false: `--no-execute`, workers execute).
    pub execute: bool,
}

/// An engine with its rules loaded; a rule set that does not load stops the command.
pub fn engine(store: &Store, config: &Config) -> Result<Engine, StartError> {
    let engine = Engine::new(store.clone(), config.clone(), Registry::from_config(config)?);
    engine.decider().load_rules().map_err(|e| StartError::Refused(e.to_string()))?;
    Ok(engine)
}

/// The daemon: ticks until `--ticks`, the killed flag or SIGTERM; reloads its rules when they
/// change and its limits on SIGHUP.
pub async fn run(
    store: &Store,
    config: &Config,
    options: RunOptions,
    reload: Reload,
) -> Result<RunSummary, StartError> {
    let engine = engine(store, config)?;
    let engine = if options.execute { engine } else { engine.without_execution() };
    let stop = stop_on_signal("signal received: finishing the current tick, then releasing the lease");
    reload::watch_rules(engine.clone(), config.rules_dir.clone());
    limits_writer::write(store, config, &Registry::from_config(config)?, ConfigLimits::Replace).await?;
    scheduler::write(store, config).await?;
    let (opened, ended) = store.windows().replace_config(&config.windows).await?;
    tracing::info!(opened, ended, declared = config.windows.len(), "windows written from the config");
    reload::rewrite_on_hangup(store.clone(), reload);
    let server = if options.http { Some(http::start_instance(&engine, config, true).await?) } else { None };
    tracing::info!(
        owner = engine.lease().owner(),
        interval_s = config.tick_interval.as_secs_f64(),
        "orchestrator running"
    );
    let summary = daemon::run(&engine, options.ticks, stop).await;
    if let Some(server) = server {
        server.stop().await;
    }
    Ok(summary)
}

/// A worker: claims and runs due actions until SIGTERM, then drains what is in flight. Its
/// config's limits hold from its first claim, even before any `run` wrote them.
pub async fn worker(
    store: &Store,
    config: &Config,
    options: WorkerOptions,
    listen: Option<SocketAddr>,
) -> Result<WorkerSummary, StartError> {
    let registry = Registry::from_config(config)?;
    limits_writer::write(store, config, &registry, ConfigLimits::Fill).await?;
    let concurrency = options.concurrency;
    let worker = Worker::new(store.clone(), config.clone(), registry, options);
    let stop = stop_on_signal("signal received: claiming nothing more, finishing attempts in flight");
    let server = match listen {
        None => None,
        Some(addr) => {
            let app = crate::http::worker_router(worker.metrics().clone(), worker.registration().clone());
            let routes = "/metrics, /health (this worker)";
            Some(HttpServer::start((addr, "--listen"), app, config.http.clone(), routes).await?)
        }
    };
    tracing::info!(concurrency, "orchestrator worker running");
    let summary = worker.run(stop).await;
    // Its /health answered through the drain of the attempts in flight.
    if let Some(server) = server {
        server.stop().await;
    }
    Ok(summary?)
}

/// The HTTP face alone, ticking nothing, until SIGTERM.
pub async fn serve(store: &Store, config: &Config) -> Result<(), StartError> {
    let engine = engine(store, config)?;
    let stop = signals::shutdown_signal();
    let server = http::start_instance(&engine, config, false).await?;
    stop.await;
    tracing::info!("signal received: stopping the HTTP server");
    server.stop().await;
    Ok(())
}

/// One tick (for cron), then the lease released. Its tick claims, so its config's limits hold
/// from that claim, as a worker's do.
pub async fn run_once(store: &Store, config: &Config) -> Result<TickOutcome, StartError> {
    let engine = engine(store, config)?;
    limits_writer::write(store, config, &Registry::from_config(config)?, ConfigLimits::Fill).await?;
    scheduler::write(store, config).await?;
    let outcome = engine.tick().await;
    if let Err(e) = engine.release().await {
        tracing::warn!(error = %e, "could not release the lease; it expires by itself");
    }
    Ok(outcome?)
}

/// What the next tick would do, written nowhere.
pub async fn dry_run(store: &Store, config: &Config) -> Result<DryRunReport, StartError> {
    Ok(engine(store, config)?.dry_run().await?)
}

/// A switch that turns true on SIGTERM or SIGINT, after logging `what` happens next. The
/// handlers are installed at the call.
fn stop_on_signal(what: &'static str) -> watch::Receiver<bool> {
    let stop = signals::shutdown_signal();
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        stop.await;
        tracing::info!("{what}");
        let _ = tx.send(true);
    });
    rx
}
