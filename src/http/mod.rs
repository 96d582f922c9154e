//! The HTTP face of an instance: `/metrics`, `/health` (and `/live`, `/ready`), `/status`, the
//! operator page at `/` and the admin API under `/api/` (see [`admin`]).
//!
//! Access: `/health*`, `/metrics` and the page itself are public; `/status` (it quotes logs,
//! errors and samples) needs the admin token once one is set, like `/api/*`. Without a token
//! only loopback can be served, so reads stay open there.
//!
//! [`router`] builds the whole thing from an [`AppState`], so tests drive it with
//! `tower::ServiceExt::oneshot` and no socket. Everything shown is read from the database on
//! each request (another instance may be the leader); liveness is judged by [`crate::health`]
//! from what [`crate::status`] reads, the same code as `orchestrator status`, and a worker's
//! `/health` comes from the same kind of judgement in the same body (`HealthBody`). This
//! module judges nothing and decides nothing about the queue, and never imports `sea_orm`: it
//! calls the store and the queue like the CLI does.

mod admin;
mod approvals;
mod schedules;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use crate::config::{AdminTokens, Config};
use crate::health::{Judgement, Liveness, LivenessPolicy};
use crate::limits::LimitField;
use crate::metrics::{DbGauges, LimitGauges, ScheduleGauges};
use crate::model::{self, ActionStatus, LogRow, TickRow};
use crate::snapshot::seconds_between;
use crate::status::{self, Counts, StatusReport};
use crate::store::{ActionFilter, DecisionRow, Refusal, Store, StoreError};
use crate::tick::{Engine, RuleDiagnostics};

/// The largest request body accepted: an action's payload limit plus room for its fields.
pub const MAX_BODY_BYTES: usize = crate::queue::MAX_PAYLOAD_BYTES + 16 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    store: Store,
    config: Arc<Config>,
    /// This instance's engine: its metrics, and `run-once` (which shares the daemon's tick gate).
    engine: Engine,
    tokens: Arc<AdminTokens>,
    /// True under `run` (this process ticks), false under `serve`.
    ticking: bool,
}

impl AppState {
    pub fn new(engine: Engine, ticking: bool) -> Self {
        let config = Arc::new(engine.config().clone());
        AppState {
            store: engine.store().clone(),
            tokens: Arc::new(config.admin_tokens.clone()),
            config,
            engine,
            ticking,
        }
    }

    /// The liveness, workload score and counts; `counts` says whether to count all history,
    /// `quote_notes` whether a failed tick's reason may quote its notes (only behind the
    /// token: notes can quote errors and rule output).
    async fn status(&self, counts: Counts, quote_notes: bool) -> Result<StatusReport, StoreError> {
        let policy = LivenessPolicy {
            quote_notes,
            ..LivenessPolicy::new(self.config.liveness, self.config.tick_interval, true)
        };
        // This process's own tick that failed on storage is not in the ledger: it says so here.
        let fault = if self.ticking { self.engine.tick_fault() } else { None };
        status::read(
            &self.store,
            crate::lease::LEASE_NAME,
            &policy,
            &self.config.rules.health,
            counts,
            self.config.workers.ttl,
            fault.as_ref(),
        )
        .await
    }
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route(
            "/status",
            get(status_page)
                .route_layer(axum::middleware::from_fn_with_state(state.clone(), admin::require_token_once_set)),
        )
        .merge(admin::routes(state.clone()))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Refuses to expose an instance beyond this machine without an admin token.
pub fn check_bind(addr: SocketAddr, tokens: &AdminTokens) -> Result<(), String> {
    if addr.ip().is_loopback() || !tokens.is_empty() {
        return Ok(());
    }
    Err(format!(
        "refusing to listen on {addr} without an admin token: a non-loopback address lets the network read \
         /status and the operator page, and the admin API must then be guarded. Set {} (at least {} characters), \
         or listen on 127.0.0.1",
        crate::config::ADMIN_TOKEN_ENV,
        crate::config::MIN_ADMIN_TOKEN_LEN
    ))
}

/// How long open connections may take to finish after `shutdown`, before they are dropped.
const DRAIN_SECONDS: u64 = 10;

/// Serves `router(state)` on `listener` until `shutdown` completes, then drains open requests.
///
/// Our own accept loop on hyper's HTTP/1 connection builder rather than `axum::serve`, which sets
/// no read timeouts: every connection must send its request headers within
/// `http.header_read_timeout_seconds` (idle keep-alive connections too) and its body within
/// `http.body_read_timeout_seconds`, and at most `http.max_connections` are served at once (the
/// loop stops accepting until one closes, so the kernel's backlog holds the rest).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.config.http.clone();
    serve_app(listener, router(state), limits, shutdown).await
}

/// What `orchestrator worker` serves on its own address: its own counters on `/metrics`
/// (attempts, durations, rejected writes), and on `/health` its liveness, judged from its
/// registration (503 while it is not live: not registered, or not renewed within the TTL
/// because the heartbeat fails or the database is gone; see [`crate::health::registration`]).
pub fn worker_router(
    metrics: Arc<crate::metrics::Metrics>,
    registration: Arc<crate::services::registration::Registration>,
) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let text = metrics.render();
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response() }
            }),
        )
        .route(
            "/health",
            get(move || {
                let seen = registration.seen();
                let worker = seen.id.clone();
                async move { liveness_response(crate::health::registration(&seen), worker) }
            }),
        )
        .fallback(not_found)
}

/// Serves `app` on `listener` with the connection cap and the header and body timeouts of
/// `limits`, until `shutdown` completes.
pub async fn serve_app(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: crate::config::HttpConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let app = app.layer(axum::middleware::from_fn_with_state(limits.body_read_timeout, body_timeout));
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections as usize));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "HTTP connection closed");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(std::time::Duration::from_secs(DRAIN_SECONDS), graceful.shutdown()).await.is_err() {
        tracing::warn!("HTTP connections still open {DRAIN_SECONDS}s after shutdown; dropping them");
    }
    Ok(())
}

/// Reads a request's body within `timeout` (and within [`MAX_BODY_BYTES`]), so that a client
/// that sends its headers and then trickles or withholds the body cannot hold a handler.
async fn body_timeout(
    State(timeout): State<std::time::Duration>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use axum::body::Body;
    let no_body = req.headers().get(header::CONTENT_LENGTH).is_none_or(|v| v.as_bytes() == b"0")
        && req.headers().get(header::TRANSFER_ENCODING).is_none();
    if no_body {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    // One byte over the limit is enough to let the handler's own limit answer 413.
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, MAX_BODY_BYTES + 1)).await {
        Ok(Ok(bytes)) => next.run(axum::extract::Request::from_parts(parts, Body::from(bytes))).await,
        Ok(Err(_)) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than the limit of {MAX_BODY_BYTES} bytes"),
        )
        .into_response(),
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("request body not received within {:.0}s", timeout.as_secs_f64()),
        )
        .into_response(),
    }
}

/// An error answer: a short message for the client (`{"error": ...}`); the cause, if any, was
/// logged once when the error was made.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::NotFound(_)
            | StoreError::Refused(Refusal::NotFound(_))
            | StoreError::Refused(Refusal::NoSchedule(_)) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            StoreError::Refused(r) => ApiError::new(StatusCode::CONFLICT, r.to_string()),
            StoreError::Invalid(m) => ApiError::bad_request(m.clone()),
            _ if e.is_unavailable() => {
                tracing::warn!(error = %e, "HTTP request: database unavailable");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
            }
            _ => {
                tracing::error!(error = %e, "HTTP request: database error");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "database error (see the server log)")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(serde_json::json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")
}

const PAGE: &str = include_str!("page.html");

/// Inline script and style only; no other origin.
const PAGE_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                        connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

async fn page() -> Response {
    let mut r = Html(PAGE).into_response();
    r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_CSP));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn metrics(State(st): State<AppState>) -> Response {
    let gauges = match db_gauges(&st).await {
        Ok(g) => Some(g),
        Err(e) => {
            tracing::warn!(error = %e, "/metrics: database gauges unavailable");
            None
        }
    };
    let text = st.engine.metrics().render_with_db(gauges.as_ref());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// The database gauges of a scrape: open counts, the lease, flags, the last tick, the
/// workload score and each limited type's usage (one `limit_usage` read), all from index-backed
/// or bounded reads whose cost does not grow with history.
async fn db_gauges(st: &AppState) -> Result<DbGauges, StoreError> {
    let report = st.status(Counts::OpenOnly, false).await?;
    let now = st.store.db_now().await?;
    let (awaiting, oldest_awaiting) = st.store.actions().awaiting_approval().await?;
    let limits = report
        .limits
        .iter()
        .map(|u| LimitGauges {
            running: u.running,
            waiting: u.waiting,
            budget_remaining: u.budget_remaining,
            blocked: [
                (LimitField::MaxRunning.as_str(), u.blocked_running),
                (LimitField::Rate.as_str(), u.blocked_rate),
                (LimitField::DailyBudget.as_str(), u.blocked_budget),
            ],
            action_type: u.action_type.clone(),
        })
        .collect();
    let schedules = st
        .store
        .schedules()
        .list()
        .await?
        .into_iter()
        .map(crate::schedules::view)
        .map(|v| ScheduleGauges {
            fires: u64::try_from(v.row.fires).unwrap_or(0),
            misfires: u64::try_from(v.row.misfires).unwrap_or(0),
            lag_seconds: v.lag_seconds,
            next_fire_timestamp_seconds: v.next_fire.map(|t| t.timestamp_millis() as f64 / 1000.0),
            name: v.row.def.name,
        })
        .collect();
    Ok(DbGauges {
        queue: ActionStatus::OPEN
            .iter()
            .map(|s| (s.as_str().to_string(), report.queue.get(s).copied().unwrap_or(0)))
            .collect(),
        oldest_pending_age_seconds: report.oldest_pending.map_or(0.0, |t| seconds_between(t, now).max(0.0)),
        lease_held: report.lease.as_ref().is_some_and(|l| l.live),
        lease_epoch: report.lease.as_ref().map(|l| l.epoch),
        lease_ttl_seconds: report.lease.as_ref().map_or(0.0, |l| l.ttl_seconds),
        flags: vec![
            ("paused", report.flags.paused),
            ("killed", report.flags.killed),
            ("proof_mode", report.flags.proof_mode),
        ],
        workload_score: report.workload.score as f64,
        workers: (report.workers.live, report.workers.dead),
        last_tick_timestamp_seconds: report
            .last_tick
            .as_ref()
            .map(|t| t.finished_at.unwrap_or(t.started_at).timestamp_millis() as f64 / 1000.0),
        limits,
        schedules,
        approvals: (awaiting, oldest_awaiting.map_or(0.0, |t| seconds_between(t, now).max(0.0))),
    })
}

/// `/health`, an instance's and a worker's alike: the liveness (not the workload score).
#[derive(Serialize)]
struct HealthBody {
    of: &'static str,
    status: Liveness,
    reasons: Vec<String>,
    checked_at: chrono::DateTime<chrono::Utc>,
    /// The answering worker's registered id; `null` on an instance's `/health`.
    worker: Option<String>,
}

/// A liveness judgement as `/health` answers it: 503 only when unhealthy.
fn liveness_response(judgement: Judgement, worker: Option<String>) -> Response {
    let code = if judgement.status == Liveness::Unhealthy { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    let body = HealthBody {
        of: "liveness",
        status: judgement.status,
        reasons: judgement.reasons,
        checked_at: model::now(),
        worker,
    };
    (code, axum::Json(body)).into_response()
}

async fn health(State(st): State<AppState>) -> Response {
    let judgement = match st.status(Counts::OpenOnly, false).await {
        Ok(r) => r.liveness,
        Err(e) => {
            tracing::warn!(error = %e, "/health: database unreachable");
            crate::health::database_unreachable()
        }
    };
    liveness_response(judgement, None)
}

/// A process that answers is live; nothing is judged.
async fn live() -> Response {
    axum::Json(serde_json::json!({ "status": "live" })).into_response()
}

async fn ready(State(st): State<AppState>) -> Response {
    let reachable = match st.store.ping().await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "/health/ready: database unreachable");
            false
        }
    };
    let pending = if reachable {
        match st.store.pending_migrations().await {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(error = %e, "/health/ready: cannot read migrations");
                None
            }
        }
    } else {
        None
    };
    match crate::health::readiness(reachable, pending) {
        Ok(()) => axum::Json(serde_json::json!({ "status": "ready" })).into_response(),
        Err(why) => {
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({ "status": "not ready", "reason": why })))
                .into_response()
        }
    }
}

/// A DLQ row as the page shows it: no payload (payloads can hold secrets; the admin API has it).
#[derive(Serialize)]
struct DlqRow {
    id: i64,
    action_type: String,
    attempts: i32,
    max_attempts: i32,
    last_error: Option<String>,
    updated_at: chrono::DateTime<chrono::Utc>,
}

/// `GET /status`.
#[derive(Serialize)]
struct StatusBody {
    #[serde(flatten)]
    report: StatusReport,
    /// `PROOF` or `REAL`.
    mode: &'static str,
    ticks: Vec<TickRow>,
    logs: Vec<LogRow>,
    dlq: Vec<DlqRow>,
    server: ServerInfo,
    /// This process's active rule set (under `serve`, the set it loaded at start; the leader's
    /// may differ).
    rules: RulesInfo,
    /// The last decisions of any instance, newest first.
    decisions: Vec<DecisionRow>,
    /// PENDING + RETRY actions per type: the work waiting.
    waiting_by_type: std::collections::BTreeMap<String, i64>,
    /// The registered executors (`orchestrator workers`).
    workers_list: Vec<crate::store::WorkerRow>,
    /// The schedules (`orchestrator schedules list`), with their next and last fires.
    schedules: Vec<crate::schedules::ScheduleView>,
    /// SUCCESS and CANCELLED actions finished in the last 24 hours (`queue` counts the open
    /// statuses only).
    finished_last_24h: std::collections::BTreeMap<ActionStatus, i64>,
    /// The maintenance windows not yet over (`windows list`).
    windows: Vec<crate::windows::WindowView>,
}

/// The window of `/status`'s `finished_last_24h`.
const FINISHED_WINDOW: std::time::Duration = std::time::Duration::from_secs(86_400);

/// How many recent decisions `/status` shows.
const STATUS_DECISIONS: u64 = 20;

#[derive(Serialize)]
struct RulesInfo {
    dir: String,
    digest: String,
    loaded: Vec<String>,
    diagnostics: RuleDiagnostics,
}

#[derive(Serialize)]
struct ServerInfo {
    version: &'static str,
    owner: String,
    ticking: bool,
    tick_interval_seconds: f64,
    admin_api: bool,
    now: chrono::DateTime<chrono::Utc>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusQuery {
    ticks: Option<u64>,
}

async fn status_page(
    State(st): State<AppState>,
    query: Result<Query<StatusQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| {
        ApiError::bad_request(format!("query: {} (the only parameter is ticks=N, 1 to 200)", e.body_text()))
    })?;
    let n_ticks = q.ticks.unwrap_or(10);
    if !(1..=200).contains(&n_ticks) {
        return Err(ApiError::bad_request(format!("query parameter ticks must be between 1 and 200, got {n_ticks}")));
    }
    // Behind the token once one is set, so a failed tick's reason may quote its notes.
    // Open counts only: the page polls this every few seconds, so its cost must not grow with
    // finished history; the finished side is the last 24 hours, through the finished index.
    let report = st.status(Counts::OpenOnly, true).await?;
    let finished_last_24h =
        st.store.actions().finished_since(model::earlier_saturating(st.store.now(), FINISHED_WINDOW)).await?;
    let report = status::StatusReport { proof_enforced: st.config.proof_enforced, ..report };
    let ticks = st.store.ledger().recent_ticks(n_ticks).await?;
    let logs = st.store.history().logs(None, 10).await?;
    let dlq = st
        .store
        .actions()
        .list_actions(&ActionFilter { status: Some(ActionStatus::Dlq), action_type: None, limit: 50 })
        .await?
        .into_iter()
        .map(|a| DlqRow {
            id: a.id,
            action_type: a.action_type,
            attempts: a.attempts,
            max_attempts: a.max_attempts,
            last_error: a.last_error,
            updated_at: a.updated_at,
        })
        .collect();
    let mode = if report.flags.proof_mode || report.proof_enforced { "PROOF" } else { "REAL" };
    let server = ServerInfo {
        version: env!("CARGO_PKG_VERSION"),
        owner: st.engine.lease().owner().to_string(),
        ticking: st.ticking,
        tick_interval_seconds: st.config.tick_interval.as_secs_f64(),
        admin_api: !st.tokens.is_empty(),
        now: st.store.db_now().await?,
    };
    let active = st.engine.decider().rules();
    let rules = RulesInfo {
        dir: st.config.rules_dir.display().to_string(),
        digest: active.digest().to_string(),
        loaded: active.names().into_iter().map(String::from).collect(),
        diagnostics: st.engine.decider().diagnostics(),
    };
    let decisions = st.store.decisions().recent_decisions(STATUS_DECISIONS).await?;
    let waiting_by_type = st.store.actions().waiting_by_type().await?;
    let workers_list = st.store.workers().list(st.config.workers.ttl).await?;
    let schedules = st.store.schedules().list().await?.into_iter().map(crate::schedules::view).collect();
    let now = st.store.now();
    let windows = st.store.windows().list(false).await?.into_iter().map(|w| w.view(now)).collect();
    Ok(axum::Json(StatusBody {
        report,
        mode,
        ticks,
        logs,
        dlq,
        server,
        rules,
        decisions,
        waiting_by_type,
        workers_list,
        schedules,
        finished_last_24h,
        windows,
    })
    .into_response())
}
