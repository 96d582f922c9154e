//! EXECUTE: runs claimed actions through their adapters and records each outcome, fenced.
//!
//! Up to `dispatch_concurrency` actions run at once, each in its own task so that a panic is
//! caught and a timeout cancels it, and at most `max_unrecorded` are started and not yet
//! durably recorded (running, or finished and waiting for the writer's commit). Proof mode is enforced here: the adapter's `render_proof`
//! is the only thing called, and its bytes become a sha256-stamped artifact. Outcomes are
//! written by one writer as they arrive, grouped into one transaction per batch (group commit),
//! so a crash makes at most `max_unrecorded` attempts run again. Past the tick deadline, or once the lease is
//! lost, nothing new starts: unstarted claims go back to `PENDING` with no attempt counted.
//!
//! The executor never decides what should run; it runs what was claimed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::Instrument;

use crate::adapters::{AdapterError, ExecContext, Registry};
use crate::artifacts::{self, Artifact};
use crate::metrics::Metrics;
use crate::model::{self, Action, LogLevel, NewLog, TraceParent};
use crate::queue;
use crate::store::{Claimed, Completion, CompletionOutcome, Store};
use crate::telemetry;

/// The pause between two tries at writing a group of outcomes.
const RECORD_RETRY_PAUSE: Duration = Duration::from_millis(250);

/// How the executor runs actions.
#[derive(Clone, Debug)]
pub struct ExecSettings {
    /// The clock retry times and artifact names are read from (the store's).
    pub clock: crate::model::Clock,
    pub concurrency: usize,
    /// Attempts started and not yet durably recorded, at most (at least `concurrency`).
    pub max_unrecorded: usize,
    pub action_timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub artifacts_dir: PathBuf,
    /// Per action type timeouts and the key each comes from (`adapters.<section>.timeout_seconds`,
    /// [`AdaptersConfig::type_timeouts`](crate::adapters::AdaptersConfig::type_timeouts)); the
    /// smaller of this and `action_timeout` bounds an attempt of that type.
    pub type_timeouts: BTreeMap<String, (Duration, String)>,
}

impl ExecSettings {
    /// The settings `config` gives, at `concurrency` attempts at once.
    pub fn from_config(config: &crate::config::Config, clock: crate::model::Clock, concurrency: u32) -> Self {
        ExecSettings {
            clock,
            concurrency: concurrency as usize,
            max_unrecorded: (config.max_unrecorded as usize).max(concurrency as usize),
            action_timeout: config.action_timeout,
            backoff_base: config.backoff_base,
            backoff_max: config.backoff_max,
            artifacts_dir: config.artifacts_dir.clone(),
            type_timeouts: config.adapters.type_timeouts(),
        }
    }

    /// The timeouts a claim stamps its deadlines from: each type's (capped by
    /// `action_timeout`), and `action_timeout` for the rest.
    pub fn claim_timeouts(&self) -> (Vec<(String, Duration)>, Duration) {
        let by_type = self.type_timeouts.iter().map(|(t, (d, _))| (t.clone(), (*d).min(self.action_timeout))).collect();
        (by_type, self.action_timeout)
    }
}

/// What one dispatch did.
#[derive(Clone, Debug, Default)]
pub struct DispatchReport {
    /// Attempts started.
    pub attempted: u32,
    pub succeeded: u32,
    pub failed: u32,
    /// Claims returned to `PENDING` unstarted (deadline or lost lease).
    pub unstarted: u32,
    /// Outcome writes the fence refused (this instance was no longer the holder).
    pub rejected: Vec<i64>,
    /// The first store error met while recording outcomes, if any.
    pub store_error: Option<String>,
}

/// Runs claimed actions.
#[derive(Clone, Debug)]
pub struct Executor {
    registry: Arc<Registry>,
    settings: ExecSettings,
    metrics: Arc<Metrics>,
    /// Run permits shared by every dispatch of this executor (a worker runs several at once);
    /// `None`: each dispatch has its own `concurrency`.
    shared_running: Option<Arc<Semaphore>>,
}

/// The worker a dispatch runs for (and the tick, when the lease holder runs it).
#[derive(Clone, Copy)]
pub struct Scope<'a> {
    pub store: &'a Store,
    /// The registered worker that holds the claims (named in each attempt's log row).
    pub worker: &'a str,
    /// The tick the attempts' log rows belong to (`None`: a worker outside any tick).
    pub tick_id: Option<i64>,
    /// Nothing starts after this instant.
    pub deadline: Instant,
    /// Turns true when the claimer loses its standing (the lease, or the worker's heartbeat):
    /// nothing starts after that either.
    pub lost: &'a AtomicBool,
}

enum Kind {
    Succeeded,
    Failed,
    Unstarted,
}

impl Executor {
    pub fn new(registry: Arc<Registry>, settings: ExecSettings, metrics: Arc<Metrics>) -> Self {
        Executor { registry, settings, metrics, shared_running: None }
    }

    /// Dispatches that overlap share `concurrency` run permits between them.
    pub fn with_shared_concurrency(mut self) -> Self {
        self.shared_running = Some(Arc::new(Semaphore::new(self.settings.concurrency.max(1))));
        self
    }

    /// Runs `claimed` (already in dispatch order) and records every outcome.
    pub async fn dispatch(&self, scope: &Scope<'_>, claimed: Vec<Claimed>) -> DispatchReport {
        let Scope { store, worker, tick_id, deadline, lost } = *scope;
        // Two bounds. A run permit is held while the adapter runs: at most `concurrency` run at
        // once. A window permit is taken before the attempt starts and travels with its
        // completion until the outcome is durable: at most `max_unrecorded` attempts are ever
        // started and unrecorded, which bounds what a crash can make run twice, while the
        // writer commits many outcomes per fsync instead of one run permit's worth.
        let (tx, mut rx) = mpsc::unbounded_channel::<(Completion, Kind, OwnedSemaphorePermit)>();
        let concurrency = self.settings.concurrency.max(1);
        let running = self.shared_running.clone().unwrap_or_else(|| Arc::new(Semaphore::new(concurrency)));
        let window = Arc::new(Semaphore::new(self.settings.max_unrecorded.max(concurrency)));

        let launcher = async {
            for claim in claimed {
                let Ok(unrecorded) = window.clone().acquire_owned().await else { break };
                if let Some(error) = &claim.action.decode_error {
                    // A row no adapter could be given: straight to DLQ, fenced like any
                    // completion, and the next claims carry on.
                    tracing::error!(action_id = claim.action.id, error = %error, "undecodable action quarantined to DLQ");
                    self.metrics
                        .actions_total
                        .with_label_values(&[claim.action.action_type.as_str(), "quarantined"])
                        .inc();
                    let _ = tx.send((crate::store::quarantine(&claim, error), Kind::Failed, unrecorded));
                    continue;
                }
                let Ok(run) = running.clone().acquire_owned().await else { break };
                if Instant::now() >= deadline || lost.load(Ordering::SeqCst) {
                    self.metrics
                        .actions_total
                        .with_label_values(&[claim.action.action_type.as_str(), "unstarted"])
                        .inc();
                    drop(run);
                    let _ = tx.send((unstarted(&claim), Kind::Unstarted, unrecorded));
                    continue;
                }
                let tx = tx.clone();
                let this = self.clone();
                let worker = worker.to_string();
                tokio::spawn(async move {
                    let (completion, kind) = this.attempt(claim, tick_id, &worker).await;
                    drop(run);
                    let _ = tx.send((completion, kind, unrecorded));
                });
            }
            drop(tx);
        };

        let writer = async {
            let mut report = DispatchReport::default();
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < 1000 {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let mut permits = Vec::with_capacity(batch.len());
                let completions: Vec<Completion> = batch
                    .into_iter()
                    .map(|(c, kind, permit)| {
                        match kind {
                            Kind::Succeeded => report.succeeded += 1,
                            Kind::Failed => report.failed += 1,
                            Kind::Unstarted => report.unstarted += 1,
                        }
                        permits.push(permit);
                        c
                    })
                    .collect();
                match self.record(store, tick_id, &completions, lost).await {
                    Ok(r) => {
                        self.metrics.fenced_writes_rejected_total.inc_by(r.rejected.len() as u64);
                        for id in &r.rejected {
                            tracing::warn!(
                                action_id = id,
                                worker,
                                "fenced write rejected: the claim was rescued or taken since (it no longer holds)"
                            );
                        }
                        report.rejected.extend(r.rejected);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, count = completions.len(), "could not record outcomes; the claims will be rescued");
                        report.store_error.get_or_insert_with(|| e.to_string());
                    }
                }
                drop(permits);
            }
            report.attempted = report.succeeded + report.failed;
            report
        };

        let ((), report) = tokio::join!(launcher, writer);
        report
    }

    /// Writes a group of outcomes, retrying a failed write every [`RECORD_RETRY_PAUSE`] while
    /// the lease holds and for at most `action_timeout` (after which the claims would be rescued
    /// anyway). A database that is briefly locked or away must not turn attempts that ran into
    /// attempts that run again. Retrying is safe: the write is one fenced transaction.
    async fn record(
        &self,
        store: &Store,
        tick_id: Option<i64>,
        completions: &[Completion],
        lost: &AtomicBool,
    ) -> Result<crate::store::CompletionReport, crate::store::StoreError> {
        let started = Instant::now();
        let mut retries = 0u32;
        loop {
            match store.actions().complete(tick_id, completions).await {
                Ok(r) => {
                    if retries > 0 {
                        tracing::info!(retries, count = completions.len(), "outcomes recorded after retrying");
                    }
                    return Ok(r);
                }
                Err(e) if !lost.load(Ordering::SeqCst) && started.elapsed() < self.settings.action_timeout => {
                    if retries == 0 {
                        tracing::warn!(error = %e, count = completions.len(), "could not record outcomes yet; retrying while the claims hold");
                    }
                    retries += 1;
                    tokio::time::sleep(RECORD_RETRY_PAUSE).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One attempt, start to completion record. Never panics, never hangs past the timeout.
    async fn attempt(&self, claim: Claimed, tick_id: Option<i64>, worker: &str) -> (Completion, Kind) {
        let started = Instant::now();
        let proof_mode = claim.proof;
        let action = Arc::new(claim.action.clone());
        let registry = self.registry.clone();
        let artifacts_dir = self.settings.artifacts_dir.clone();
        let span = attempt_span(&claim, worker, self.registry.adapter_name(&claim.action.action_type));
        // The peer hears of this attempt's span; with traces off, of the context the action
        // was enqueued under, passed on as it came.
        let traceparent = telemetry::traceparent_of(&span).map(|t| t.to_string()).or(action.traceparent.clone());
        let ctx = ExecContext::new(tick_id, claim.attempt).with_traceparent(traceparent);
        let task_ctx = ctx.clone();
        let task_action = action.clone();
        let inner = tokio::spawn(
            async move { run_adapter(&registry, &task_ctx, &task_action, proof_mode, &artifacts_dir).await }
                .instrument(span.clone()),
        );
        let abort = inner.abort_handle();
        let (timeout, timeout_key) = self.timeout_for(&action.action_type);
        let result = match tokio::time::timeout(timeout, inner).await {
            Ok(Ok(r)) => r,
            Ok(Err(join)) if join.is_panic() => {
                Err(AdapterError::retryable(format!("adapter panicked: {}", panic_message(join.into_panic()))))
            }
            Ok(Err(_)) => Err(AdapterError::retryable("adapter task was cancelled")),
            Err(_) => {
                abort.abort();
                Err(AdapterError::retryable(format!("timed out after {:.1}s ({timeout_key})", timeout.as_secs_f64())))
            }
        };
        let record = match ctx.take_attached() {
            Some(proof) if !proof_mode => self.write_record(&action, proof).await,
            _ => None,
        };
        let elapsed = started.elapsed();
        self.metrics
            .action_duration_seconds
            .with_label_values(&[action.action_type.as_str()])
            .observe(elapsed.as_secs_f64());
        let done = self.completion(&claim, &action, result, record, worker, elapsed.as_millis());
        let outcome = match &done.0.outcome {
            CompletionOutcome::Success => "success",
            CompletionOutcome::Retry { .. } => "retry",
            CompletionOutcome::Dlq { .. } => "dlq",
            CompletionOutcome::Unstarted => "unstarted",
        };
        self.metrics.actions_total.with_label_values(&[action.action_type.as_str(), outcome]).inc();
        span.record("outcome", outcome);
        if outcome != "success" {
            span.record("otel.status_code", "ERROR");
        }
        done
    }

    fn completion(
        &self,
        claim: &Claimed,
        action: &Action,
        result: Result<(String, Option<Artifact>), AdapterError>,
        record: Option<Artifact>,
        worker: &str,
        elapsed_ms: u128,
    ) -> (Completion, Kind) {
        let mode = if claim.proof { "proof" } else { "real" };
        let attempt = claim.attempt;
        let max = action.max_attempts;
        let (outcome, log, kind) = match result {
            Ok((message, artifact)) => {
                let mut log = NewLog::new(
                    action.id,
                    LogLevel::Info,
                    format!(
                        "{} succeeded ({mode}, attempt {attempt}/{max}, {elapsed_ms} ms): {message}",
                        action.action_type
                    ),
                );
                if let Some(a) = artifact {
                    log.artifact_ref = Some(a.path.display().to_string());
                    log.artifact_sha256 = Some(a.sha256);
                }
                (CompletionOutcome::Success, log, Kind::Succeeded)
            }
            Err(AdapterError::Retryable { message, retry_after }) if attempt < max => {
                let delay = retry_after
                    .unwrap_or_else(|| queue::backoff(attempt, self.settings.backoff_base, self.settings.backoff_max));
                let not_before = model::later_saturating(self.settings.clock.now(), delay);
                let log = NewLog::new(
                    action.id,
                    LogLevel::Warning,
                    format!(
                        "attempt {attempt}/{max} failed ({mode}, retryable): {message}; retry at {}",
                        not_before.to_rfc3339()
                    ),
                );
                (CompletionOutcome::Retry { not_before, error: message }, log, Kind::Failed)
            }
            Err(AdapterError::Retryable { message, .. }) => {
                let log = NewLog::new(
                    action.id,
                    LogLevel::Error,
                    format!("attempt {attempt}/{max} failed ({mode}, retryable): {message}; out of attempts -> DLQ"),
                );
                (CompletionOutcome::Dlq { error: message }, log, Kind::Failed)
            }
            Err(AdapterError::Permanent { message }) => {
                let log = NewLog::new(
                    action.id,
                    LogLevel::Error,
                    format!("attempt {attempt}/{max} failed ({mode}, permanent): {message} -> DLQ"),
                );
                (CompletionOutcome::Dlq { error: message }, log, Kind::Failed)
            }
        };
        let mut log = log;
        if let (None, Some(r)) = (&log.artifact_ref, record) {
            log.artifact_ref = Some(r.path.display().to_string());
            log.artifact_sha256 = Some(r.sha256);
        }
        log.message.push_str(&format!(" [worker {worker}]"));
        let completion = Completion { action_id: action.id, token: claim.token, attempt, outcome, logs: vec![log] };
        (completion, kind)
    }
}

impl Executor {
    /// The timeout of an attempt of `action_type` and the setting it comes from.
    fn timeout_for(&self, action_type: &str) -> (Duration, String) {
        let global = self.settings.action_timeout;
        match self.settings.type_timeouts.get(action_type) {
            Some((t, key)) if *t < global => (*t, key.clone()),
            _ => (global, "action_timeout_seconds".to_string()),
        }
    }

    /// Writes what a real attempt attached (see [`ExecContext::attach`]); a failure to write
    /// is logged, never turned into the attempt's outcome.
    async fn write_record(&self, action: &Action, record: crate::adapters::Proof) -> Option<Artifact> {
        let path = artifacts::artifact_path(
            &self.settings.artifacts_dir,
            &record.subdir,
            &action.idempotency_key,
            &record.extension,
            self.settings.clock.now(),
        );
        match tokio::task::spawn_blocking(move || artifacts::write_atomic(&path, &record.body)).await {
            Ok(Ok(a)) => Some(a),
            Ok(Err(e)) => {
                tracing::warn!(action_id = action.id, error = %e, "cannot write the attempt's record");
                None
            }
            Err(e) => {
                tracing::warn!(action_id = action.id, error = %e, "the record writer failed");
                None
            }
        }
    }
}

async fn run_adapter(
    registry: &Registry,
    ctx: &ExecContext,
    action: &Action,
    proof_mode: bool,
    artifacts_dir: &std::path::Path,
) -> Result<(String, Option<Artifact>), AdapterError> {
    let Some(adapter) = registry.get(&action.action_type) else {
        return Err(AdapterError::permanent(format!("no adapter for action type {}", action.action_type)));
    };
    if !proof_mode {
        check_approved(adapter.as_ref(), action)?;
        return adapter.execute(ctx, action).await.map(|o| (o.message, None));
    }
    match adapter.render_proof(action)? {
        None => Ok(("proof mode: nothing to record".to_string(), None)),
        Some(proof) => {
            let path = artifacts::artifact_path(
                artifacts_dir,
                &proof.subdir,
                &action.idempotency_key,
                &proof.extension,
                model::now(),
            );
            let written = tokio::task::spawn_blocking(move || artifacts::write_atomic(&path, &proof.body))
                .await
                .map_err(|e| AdapterError::retryable(format!("artifact writer failed: {e}")))?
                .map_err(|e| AdapterError::retryable(format!("cannot write proof artifact: {e}")))?;
            Ok((format!("proof artifact written: {}", written.path.display()), Some(written)))
        }
    }
}

/// What an approver is shown of `action`: the exact request, as proof mode renders it (empty
/// when the adapter records nothing), and the sha256 of those bytes. The approval preview and
/// the real attempt's check both call this, so what was approved is byte for byte what is
/// compared.
pub fn approval_rendering(
    adapter: &dyn crate::adapters::Adapter,
    action: &Action,
) -> Result<(Vec<u8>, String), AdapterError> {
    let body = adapter.render_proof(action)?.map(|p| p.body).unwrap_or_default();
    let sha256 = artifacts::sha256_hex(&body);
    Ok((body, sha256))
}

/// A real attempt of an approved action runs only if its request still renders to the digest
/// approved; otherwise (its payload or its adapter's target changed since) it is refused,
/// permanently, saying both digests.
fn check_approved(adapter: &dyn crate::adapters::Adapter, action: &Action) -> Result<(), AdapterError> {
    let Some(approved) = action.approval.as_ref().and_then(|a| a.approved_sha256.as_deref()) else {
        return Ok(());
    };
    let (_, now) = approval_rendering(adapter, action)?;
    if now == approved {
        return Ok(());
    }
    Err(AdapterError::permanent(format!(
        "refused: the request differs from the one approved (approved sha256 {approved}, it now renders as \
         sha256 {now}): its payload or its adapter's target changed after approval; nothing was sent"
    )))
}

/// The span of one attempt. The first attempt of an action enqueued under a trace context is a
/// child of it; every later attempt starts a trace of its own, linked to that context (the
/// first attempt's trace), so one trace does not grow for as long as an action keeps retrying.
/// An action with no context starts a trace (in a tick, below its dispatch).
fn attempt_span(claim: &Claimed, worker: &str, adapter: &str) -> tracing::Span {
    let action = &claim.action;
    let context = action.traceparent.as_deref().and_then(|t| match t.parse::<TraceParent>() {
        Ok(tp) => Some(tp),
        Err(e) => {
            tracing::warn!(action_id = action.id, error = %e, "the stored traceparent is ignored");
            None
        }
    });
    macro_rules! span {
        ($($parent:tt)*) => {
            tracing::info_span!(
                target: telemetry::TARGET,
                $($parent)*
                "attempt",
                action_id = action.id,
                action_type = %action.action_type,
                attempt = claim.attempt,
                adapter,
                worker,
                proof_mode = claim.proof,
                outcome = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            )
        };
    }
    match context {
        None => span!(),
        Some(tp) => {
            let span = span!(parent: None,);
            if claim.attempt <= 1 {
                telemetry::join(&span, &tp);
            } else {
                telemetry::link(&span, &tp);
            }
            span
        }
    }
}

fn unstarted(claim: &Claimed) -> Completion {
    Completion {
        action_id: claim.action.id,
        token: claim.token,
        attempt: claim.attempt,
        outcome: CompletionOutcome::Unstarted,
        logs: vec![NewLog::new(
            claim.action.id,
            LogLevel::Warning,
            "not started: the deadline passed or the claimer lost its standing; back to PENDING, attempt not counted",
        )],
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
