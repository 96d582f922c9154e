//! The `orchestrator` command line: clap types, one function per command, and the only place
//! that prints to stdout.
//!
//! Raw flags become a validated [`Config`] in one step; commands then call into the library.
//! Failures carry the exit code they deserve ([`Failure`]); `main` turns them into one line on
//! stderr.

/// Prints one line to stdout through the command's `Out` (never `println!`, which panics on a
/// closed or full stdout): `say!(out, "format", args)`; `say!(out)` prints an empty line.
macro_rules! say {
    ($out:expr) => {{
        $out.line(format_args!(""));
    }};
    ($out:expr, $($arg:tt)*) => {{
        $out.line(format_args!($($arg)*));
    }};
}

mod approvals;
mod follow;
mod limits;
mod output;
mod rules;
mod schedules;
pub mod stdio;
mod windows;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{self, Config, Overrides};
use crate::health::{Liveness, LivenessPolicy};
use crate::model::{self, ActionStatus, LogLevel};
use crate::queue::{self, EnqueueRequest};
use crate::runtime::{self, reload::Reload};
use crate::status;
use crate::store::{ActionFilter, Authority, FlagChange, LogFilter, Store};
use crate::tick::TickOutcome;

/// Exit codes.
pub mod exit {
    pub const OK: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const LEASE_HELD: u8 = 3;
    pub const UNHEALTHY: u8 = 4;
    /// `run`, `worker` or `serve` waited `startup_timeout_seconds` for a database that did not
    /// answer (sysexits' EX_UNAVAILABLE; systemd's `Restart=on-failure` starts it again).
    pub const UNAVAILABLE: u8 = 69;
    /// The output could not be written (a full disk, `/dev/full`, an I/O error): EX_IOERR of
    /// sysexits.h. A closed pipe is not this: the command then exits with its own code, quietly.
    pub const OUTPUT: u8 = 74;
}

/// An error that carries its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

fn fail(code: u8, message: impl Into<String>) -> anyhow::Error {
    Failure { code, message: message.into() }.into()
}

/// What `orchestrator --version` prints after the name: the version, the git commit it was built
/// from (`unknown` outside a repository) and the enabled cargo features (`none`), from build.rs.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BUILD_GIT_COMMIT"),
    ", features: ",
    env!("BUILD_FEATURES"),
    ")"
);

#[derive(Debug, Parser)]
#[command(name = "orchestrator", version = VERSION, about = "Monitor-decide-execute rule engine over a durable action queue")]
pub struct Cli {
    /// Database URL: sqlite:PATH (default sqlite:orchestrator.db) or postgres://USER@HOST/DB.
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,
    /// Config file (default: ./orchestrator.yaml if present).
    #[arg(long, global = true, value_name = "FILE", env = "ORCHESTRATOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print machine-readable JSON (field names are stable; see docs/cli.md).
    #[arg(long, global = true)]
    pub json: bool,
    /// Enforce proof mode in this process (proof_mode: enforced): every attempt runs in proof
    /// mode whatever the flag says, and `proof off` is refused.
    #[arg(long, global = true)]
    pub proof_enforced: bool,
    /// Log lines on stderr as text or as JSON objects (filtered by RUST_LOG).
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// Where `orchestrator worker` serves its /metrics and /health unless told otherwise.
pub const DEFAULT_WORKER_LISTEN: &str = "127.0.0.1:9465";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending schema migrations (every command also does this first).
    Migrate,
    /// Run the daemon: tick at the configured interval until killed, signalled or --ticks done.
    Run {
        /// Stop after N ticks (1 to 1,000,000,000).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
        ticks: Option<u64>,
        /// Seconds between ticks (0: back to back while work is due).
        #[arg(long, value_name = "SECS")]
        interval: Option<f64>,
        /// Serve HTTP (/metrics, /health, /status, the page, the admin API) here
        /// (default: http.listen, 127.0.0.1:9464).
        #[arg(long, value_name = "ADDR", conflicts_with = "no_http")]
        listen: Option<String>,
        /// Do not serve HTTP.
        #[arg(long)]
        no_http: bool,
        /// Monitor, decide and rescue only: claim nothing (workers execute).
        #[arg(long)]
        no_execute: bool,
    },
    /// Execute on this host: claim and run due actions beside the leader, until SIGTERM.
    Worker {
        /// Serve /metrics and /health (this worker's) here (default: 127.0.0.1:9465, beside
        /// `run`'s 9464 on the same host).
        #[arg(long, value_name = "ADDR", conflicts_with = "no_http", default_value = DEFAULT_WORKER_LISTEN)]
        listen: String,
        /// Do not serve HTTP.
        #[arg(long)]
        no_http: bool,
        /// Attempts run at once (1 to 4096; default: dispatch_concurrency).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
        concurrency: Option<u32>,
        /// Serve only these action types (comma-separated, at most 1,000; default: every type).
        #[arg(long, value_name = "TYPES", value_delimiter = ',')]
        types: Vec<String>,
    },
    /// The registered workers: live first, with their heartbeats and counts.
    Workers,
    /// Serve the HTTP endpoints without ticking (a dashboard for another instance's work).
    Serve {
        /// Listen here (default: http.listen, 127.0.0.1:9464).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Run exactly one tick and exit (for cron).
    RunOnce {
        /// Evaluate and report, change nothing (works while another instance holds the lease).
        #[arg(long)]
        dry_run: bool,
    },
    /// Add an action to the queue (or many, from JSON Lines with --file).
    Enqueue(EnqueueArgs),
    /// Liveness, the workload score, flags, lease, queue counts and the last tick. Exit 4 when unhealthy.
    Status,
    /// Set the paused flag: ticks dispatch nothing.
    Pause,
    /// Clear the paused and killed flags.
    Resume,
    /// Set the killed flag: the running instance records a KILLED tick, releases the lease and exits.
    Kill,
    /// Turn proof mode on (artifacts only) or off (real side effects).
    Proof {
        #[arg(value_enum)]
        mode: OnOff,
    },
    /// Inspect and edit actions.
    #[command(subcommand)]
    Actions(ActionsCommand),
    /// Inspect or release the lease.
    #[command(subcommand)]
    Lease(LeaseCommand),
    /// Limits per action type, held in the database for every host: list, set, clear, override.
    #[command(subcommand)]
    Limits(limits::LimitsCommand),
    /// Schedules the leader fires (cron in a time zone, exactly once per slot): list, add,
    /// remove, pause, resume, run-now.
    #[command(subcommand)]
    Schedules(schedules::SchedulesCommand),
    /// Maintenance windows, held in the database for every host: list, add, end.
    #[command(subcommand)]
    Windows(windows::WindowsCommand),
    /// The tick ledger, newest first; with --follow, the last --limit oldest first, then each
    /// tick as it finishes, until Ctrl-C.
    Ticks {
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        limit: u64,
        /// Keep printing ticks as they finish (like journalctl -f), until Ctrl-C.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Check proof and run artifacts against the sha256 recorded in the execution logs.
    #[command(subcommand)]
    Artifacts(ArtifactsCommand),
    /// Copy the SQLite database into FILE while daemons and workers run (a consistent copy,
    /// checked before it is named); on PostgreSQL, print the pg_dump line to use.
    Backup {
        /// The copy to write (refused if it exists).
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Execution logs, newest first; with --follow, the last --limit oldest first, then new
    /// rows as they land, until Ctrl-C.
    Logs {
        /// Only this action's logs.
        #[arg(long, value_name = "ID")]
        action: Option<i64>,
        /// Only logs of actions of this type.
        #[arg(long = "type", value_name = "TYPE")]
        action_type: Option<String>,
        /// Only rows at this level or above: INFO, WARNING or ERROR.
        #[arg(long, value_parser = parse_level)]
        level: Option<LogLevel>,
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        limit: u64,
        /// Keep printing rows as they land (like journalctl -f), until Ctrl-C.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Check, test, backtest and benchmark the rules.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Why a tick did what it did: its snapshot, each rule's decisions and their outcomes.
    Explain {
        #[arg(long, value_name = "N")]
        tick: i64,
    },
    /// Print a shell completion script (e.g. `orchestrator completions bash > /etc/bash_completion.d/orchestrator`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `orchestrator manpage | man -l -`.
    Manpage,
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Compile every rule and evaluate it on a default snapshot; exit 1 on any error.
    Check {
        #[arg(long, value_name = "DIR")]
        rules: Option<PathBuf>,
    },
    /// Run the fixtures in DIR/tests/*.yaml; exit 1 if any case fails.
    Test {
        #[arg(long, value_name = "DIR")]
        rules: Option<PathBuf>,
    },
    /// Evaluate the rules on disk against the recorded snapshots of the last N ticks.
    Backtest {
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        last: u64,
        #[arg(long, value_name = "DIR")]
        rules: Option<PathBuf>,
    },
    /// Print the per-tick evaluation cost of the rules and of N synthetic rules.
    Bench {
        #[arg(long, value_name = "DIR")]
        rules: Option<PathBuf>,
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        iterations: u32,
        /// Synthetic rules to time beside the real ones (at most 1,000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(0..=1_000))]
        synthetic: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// Action type, e.g. POST_SOCIAL.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub action_type: Option<String>,
    /// Payload: a JSON object.
    #[arg(long, default_value = "{}", value_name = "JSON")]
    pub payload: String,
    /// Idempotency key (default: sha256 of the type and canonical payload).
    #[arg(long, value_name = "K")]
    pub key: Option<String>,
    /// Higher runs first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// Not before now + this (e.g. 30s, 5m).
    #[arg(long, conflicts_with = "not_before", value_parser = parse_delay)]
    pub delay: Option<Duration>,
    /// Not before this RFC 3339 time.
    #[arg(long, value_parser = parse_time)]
    pub not_before: Option<DateTime<Utc>>,
    /// Attempts before DLQ (default: config max_attempts).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_attempts: Option<u32>,
    /// The deadline, from now (e.g. 2h): never started after it, moved to DLQ as `expired`
    /// (default: the type's expire_after in the config, if any).
    #[arg(long, value_name = "DURATION", value_parser = parse_delay)]
    pub expires_in: Option<Duration>,
    /// A W3C trace context (`00-<trace id>-<parent id>-<flags>`): the action's first attempt
    /// continues that trace (traces: docs/operations.md).
    #[arg(long, value_name = "TRACEPARENT", value_parser = parse_traceparent)]
    pub traceparent: Option<String>,
    /// The action waits in AWAITING_APPROVAL until `actions approve` (a type in
    /// approvals.types always does).
    #[arg(long)]
    pub require_approval: bool,
    /// JSON Lines file of actions (`-` for stdin).
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["key", "delay", "not_before", "max_attempts", "expires_in", "traceparent", "require_approval"]
    )]
    pub file: Option<PathBuf>,
}

fn parse_traceparent(s: &str) -> Result<String, String> {
    s.parse::<model::TraceParent>().map(|t| t.to_string())
}

fn parse_delay(s: &str) -> Result<Duration, String> {
    config::parse_duration(s)
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("'{s}' is not an RFC 3339 time like 2026-01-02T03:04:05Z ({e})"))
}

#[derive(Debug, Subcommand)]
pub enum ActionsCommand {
    /// List actions, newest first.
    List {
        #[arg(long, value_parser = parse_status)]
        status: Option<ActionStatus>,
        #[arg(long = "type", value_name = "TYPE")]
        action_type: Option<String>,
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        limit: u64,
    },
    /// One action with its logs.
    Show { id: i64 },
    /// Move DLQ actions back to PENDING with attempts reset.
    Requeue {
        #[arg(required_unless_present = "all_dlq", conflicts_with = "all_dlq")]
        id: Option<i64>,
        /// Requeue every DLQ action.
        #[arg(long)]
        all_dlq: bool,
    },
    /// Cancel a PENDING, RETRY or DLQ action (or, with --all-dlq, every DLQ action).
    Cancel {
        #[arg(required_unless_present = "all_dlq", conflicts_with = "all_dlq")]
        id: Option<i64>,
        /// Cancel every DLQ action.
        #[arg(long)]
        all_dlq: bool,
    },
    /// Approve actions awaiting approval: each may then send exactly the request `actions show`
    /// displays (its sha256 is recorded).
    Approve(approvals::ApproveArgs),
    /// Reject actions awaiting approval (-> CANCELLED), with a reason.
    Reject(approvals::RejectArgs),
    /// Counts by type and status, the oldest due action per type, open actions by priority.
    Summary,
    /// Delete SUCCESS and CANCELLED actions older than the retention (DLQ is kept), and tick
    /// ledger rows, decisions and rule cooldowns older than theirs.
    Purge {
        /// e.g. 7d, 12h (default: retention_days).
        #[arg(long, value_parser = parse_delay)]
        older_than: Option<Duration>,
    },
}

fn parse_status(s: &str) -> Result<ActionStatus, String> {
    s.parse()
}

fn parse_level(s: &str) -> Result<LogLevel, String> {
    s.parse()
}

#[derive(Debug, Subcommand)]
pub enum ArtifactsCommand {
    /// Recompute every recorded artifact's sha256; report missing or changed files. Exit 1 if any.
    Verify,
}

#[derive(Debug, Subcommand)]
pub enum LeaseCommand {
    /// Who holds the lease, its epoch and expiry.
    Show,
    /// Release the lease. A live lease needs --force (its holder's writes are then fenced).
    Release {
        #[arg(long)]
        force: bool,
    },
}

/// Whether text log lines on stderr carry ANSI colour: only on a terminal, and never when
/// `NO_COLOR` is set to something (<https://no-color.org>).
pub fn log_colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The most of one value a command-line error quotes, in characters.
pub const MAX_QUOTED_CHARS: usize = 80;
/// The most of a command-line error shown, in characters (a backstop for what is not quoted).
const MAX_USAGE_ERROR_CHARS: usize = 2_000;

/// `text` with every `'...'` span longer than `max` characters cut to its first `max` and the
/// count of the rest, and the whole cut at `total` characters.
fn cut_quoted(text: &str, max: usize, total: usize) -> String {
    let mut out = String::with_capacity(text.len().min(total + 64));
    let mut rest = text;
    while let Some(open) = rest.find('\'') {
        out.push_str(&rest[..=open]);
        let inner = &rest[open + 1..];
        let Some(close) = inner.find('\'') else {
            rest = inner;
            break;
        };
        let quoted = &inner[..close];
        let n = quoted.chars().count();
        if n > max {
            out.extend(quoted.chars().take(max));
            out.push_str(&format!("… ({} more characters)", n - max));
        } else {
            out.push_str(quoted);
        }
        out.push('\'');
        rest = &inner[close + 1..];
    }
    out.push_str(rest);
    if out.chars().count() > total {
        out = out.chars().take(total).collect();
        out.push_str("…\n");
    }
    out
}

/// Runs a parsed command; returns the exit code. Its output goes through one [`output::Out`],
/// whose failure (other than a closed pipe) turns success into [`exit::OUTPUT`].
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    let out = output::Out::new(cli.json);
    let result = run_with(cli, &out).await;
    out.settle(result)
}

/// Writes clap's answer to a bad command line or `--help`/`--version` (stdout or stderr, as
/// clap says) and returns its exit code; `--help > /dev/full` exits [`exit::OUTPUT`]. A usage
/// error has every quoted value cut to [`MAX_QUOTED_CHARS`] (an argument of 20 KB is not echoed
/// back in full), so it is plain text; help is coloured on a terminal.
pub fn usage(e: &clap::Error) -> u8 {
    let stream = if e.use_stderr() { stdio::Stream::Stderr } else { stdio::Stream::Stdout };
    let text = if e.use_stderr() {
        cut_quoted(&e.render().to_string(), MAX_QUOTED_CHARS, MAX_USAGE_ERROR_CHARS)
    } else if stdio::is_terminal(stream) {
        e.render().ansi().to_string()
    } else {
        e.render().to_string()
    };
    match stdio::write(stream, text.as_bytes()) {
        stdio::Written::Failed(_) if stream == stdio::Stream::Stdout => exit::OUTPUT,
        _ => u8::try_from(e.exit_code()).unwrap_or(exit::USAGE),
    }
}

/// The `tracing:` settings of a command that runs work (`run`, `worker`, `run-once`), for
/// `main` to start the exporter with before the runtime; `None` for the others, and when the
/// config cannot be read (the command itself then says why).
pub fn tracing_config(cli: &Cli) -> Option<crate::telemetry::TracingConfig> {
    match &cli.command {
        Command::Run { .. } | Command::Worker { .. } | Command::RunOnce { dry_run: false } => {
            Config::load(cli.config.as_deref(), Overrides::default()).ok().map(|c| c.tracing)
        }
        _ => None,
    }
}

async fn run_with(cli: Cli, out: &output::Out) -> anyhow::Result<u8> {
    // Generated from the clap types alone: no config, no database. Generated into memory first:
    // clap_complete panics on a write error.
    match &cli.command {
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut text = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "orchestrator", &mut text);
            out.put(&String::from_utf8_lossy(&text));
            return Ok(exit::OK);
        }
        Command::Manpage => {
            let man = clap_mangen::Man::new(<Cli as clap::CommandFactory>::command());
            let mut text = Vec::new();
            man.render(&mut text).context("rendering the man page")?;
            out.put(&String::from_utf8_lossy(&text));
            return Ok(exit::OK);
        }
        _ => {}
    }
    let interval = match &cli.command {
        Command::Run { interval, .. } => *interval,
        _ => None,
    };
    let http_listen = match &cli.command {
        Command::Run { listen, .. } | Command::Serve { listen } => listen.clone(),
        _ => None,
    };
    let overrides = Overrides {
        database_url: cli.database_url.clone(),
        tick_interval_seconds: interval,
        proof_enforced: cli.proof_enforced,
        http_listen,
    };
    let config = Config::load(cli.config.as_deref(), overrides.clone())?;
    for line in &config.deprecations {
        tracing::warn!("{line}");
    }
    if let Some(export) = &config.tracing.export {
        tracing::info!(endpoint = %export.endpoint, from = %export.from, "traces exported over OTLP/HTTP");
    }
    // What SIGHUP reads again: the same file and flags.
    let config_file = cli.config.clone();
    let reload: Reload = std::sync::Arc::new(move || Config::load(config_file.as_deref(), overrides.clone()));
    // Commands on rule files alone need no database.
    match &cli.command {
        Command::Rules(RulesCommand::Check { rules: dir }) => {
            return rules::check(dir.as_ref().unwrap_or(&config.rules_dir), &config, out);
        }
        Command::Rules(RulesCommand::Test { rules: dir }) => {
            return rules::test(dir.as_ref().unwrap_or(&config.rules_dir), &config, out).await;
        }
        Command::Rules(RulesCommand::Bench { rules: dir, iterations, synthetic }) => {
            return rules::bench(
                dir.as_ref().unwrap_or(&config.rules_dir),
                &config,
                *iterations,
                *synthetic as usize,
                out,
            );
        }
        _ => {}
    }
    // The earlier systems' switches: refused before the database is touched.
    let acts = match &cli.command {
        Command::Run { .. } | Command::Worker { .. } => Some(false),
        Command::RunOnce { dry_run: false } => Some(true),
        _ => None,
    };
    if let Some(why) = acts.and_then(|on_demand| config.acting.refusal(on_demand)) {
        return Err(fail(exit::USAGE, why));
    }
    if let Command::Backup { file } = &cli.command
        && matches!(crate::store::normalize_url(&config.database_url), Ok((crate::store::Backend::Postgres, _)))
    {
        return Err(fail(exit::ERROR, crate::store::pg_dump_advice(&config.database_url, file)));
    }
    // The long-running commands start at boot, maybe before their database: they wait for it.
    let store = match &cli.command {
        Command::Run { .. } | Command::Worker { .. } | Command::Serve { .. } => {
            check_before_waiting(&cli.command, &config)?;
            runtime::startup::open_store_waiting(&config).await.map_err(started)?
        }
        _ => open_store(&config).await?,
    };
    if acts.is_some() && config.acting == config::Acting::Paused {
        store.flags().set_flags(FlagChange { paused: Some(true), ..Default::default() }).await?;
        tracing::warn!("ORCHESTRATOR_MODE=PAUSED: the shared paused flag is set; `orchestrator resume` clears it");
    }
    let code = dispatch(cli.command, &config, &store, out, reload).await;
    if let Err(e) = store.close().await {
        tracing::debug!(error = %e, "closing the database");
    }
    code
}

/// Connects and migrates, naming the database on failure.
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    runtime::startup::open_store(config).await.map_err(started)
}

async fn dispatch(
    command: Command,
    config: &Config,
    store: &Store,
    out: &output::Out,
    reload: Reload,
) -> anyhow::Result<u8> {
    match command {
        Command::Run { ticks, no_http, no_execute, .. } => {
            let options = runtime::RunOptions { ticks, http: !no_http, execute: !no_execute };
            let summary = runtime::run(store, config, options, reload).await.map_err(started)?;
            out.message(&summary, &format!("stopped after {} tick(s): {:?}", summary.ticks, summary.stopped_by));
        }
        Command::Worker { concurrency, types, listen, no_http } => {
            let options = crate::worker::WorkerOptions {
                concurrency: concurrency.unwrap_or(config.dispatch_concurrency),
                types: worker_types(&types)?,
            };
            let listen = if no_http { None } else { Some(worker_listen(&listen)?) };
            let summary = runtime::worker(store, config, options, listen).await.map_err(started)?;
            out.message(
                &summary,
                &format!(
                    "worker stopped: {} attempted, {} succeeded, {} write(s) rejected, {} registration(s)",
                    summary.attempted, summary.succeeded, summary.rejected_writes, summary.registrations
                ),
            );
        }
        Command::Serve { .. } => {
            runtime::serve(store, config).await.map_err(started)?;
            out.message(&serde_json::json!({"stopped": true}), "HTTP server stopped");
        }
        Command::RunOnce { dry_run: true } => {
            rules::print_dry_run(&runtime::dry_run(store, config).await.map_err(started)?, out);
        }
        Command::RunOnce { dry_run: false } => match runtime::run_once(store, config).await.map_err(started)? {
            TickOutcome::Ran(report) => out.tick(&report),
            TickOutcome::NotLeader { owner, epoch, expires_at } => {
                return Err(fail(
                    exit::LEASE_HELD,
                    format!(
                        "lease '{}' is held by {owner} (epoch {epoch}) until {}; nothing done",
                        crate::lease::LEASE_NAME,
                        expires_at.to_rfc3339()
                    ),
                ));
            }
        },
        other => return operate(other, config, store, out).await,
    }
    Ok(exit::OK)
}

/// The commands that read or change the database and end: one output each.
async fn operate(command: Command, config: &Config, store: &Store, out: &output::Out) -> anyhow::Result<u8> {
    match command {
        Command::Migrate => {
            out.message(&serde_json::json!({"migrated": true}), "database schema is up to date");
        }
        Command::Workers => out.workers(&store.workers().list(config.workers.ttl).await?),
        Command::Enqueue(args) => enqueue(args, config, store, out).await?,
        Command::Status => {
            let report = read_status(config, store).await?;
            let report = status::StatusReport { proof_enforced: config.proof_enforced, ..report };
            out.status(&report);
            if report.liveness.status == Liveness::Unhealthy {
                return Ok(exit::UNHEALTHY);
            }
        }
        Command::Pause => {
            out.flags(&store.flags().set_flags(FlagChange { paused: Some(true), ..Default::default() }).await?)
        }
        Command::Resume => out.flags(
            &store
                .flags()
                .set_flags(FlagChange { paused: Some(false), killed: Some(false), ..Default::default() })
                .await?,
        ),
        Command::Kill => {
            out.flags(&store.flags().set_flags(FlagChange { killed: Some(true), ..Default::default() }).await?)
        }
        Command::Proof { mode } => {
            let on = matches!(mode, OnOff::On);
            if !on && config.proof_enforced {
                return Err(fail(exit::ERROR, crate::status::PROOF_ENFORCED_REFUSAL));
            }
            out.flags(&store.flags().set_flags(FlagChange { proof_mode: Some(on), ..Default::default() }).await?)
        }
        Command::Actions(cmd) => actions(cmd, config, store, out).await?,
        Command::Limits(cmd) => limits::run(cmd, store, out).await?,
        Command::Schedules(cmd) => schedules::run(cmd, config, store, out).await?,
        Command::Windows(cmd) => windows::run(cmd, store, out).await?,
        Command::Lease(cmd) => match cmd {
            LeaseCommand::Show => {
                let report = read_status(config, store).await?;
                out.lease(report.lease.as_ref());
            }
            LeaseCommand::Release { force } => release_lease(store, force, out).await?,
        },
        Command::Ticks { limit, follow: false } => out.ticks(&store.ledger().recent_ticks(limit).await?),
        Command::Ticks { limit, follow: true } => follow::ticks(store, limit, out).await?,
        Command::Logs { action, action_type, level, limit, follow } => {
            let filter = LogFilter { action_id: action, action_type, min_level: level };
            if follow {
                follow::logs(store, &filter, limit, out).await?;
            } else {
                out.logs(&store.history().logs_filtered(&filter, limit).await?);
            }
        }
        Command::Rules(RulesCommand::Backtest { last, rules: dir }) => {
            return rules::backtest(store, dir.as_ref().unwrap_or(&config.rules_dir), config, last, out).await;
        }
        Command::Rules(cmd) => return Err(fail(exit::USAGE, format!("{cmd:?} runs without a database"))),
        Command::Explain { tick } => return rules::explain(store, tick, out).await,
        // The processes are `dispatch`'s; it hands on only what is not one.
        Command::Run { .. } | Command::Worker { .. } | Command::Serve { .. } | Command::RunOnce { .. } => {
            return Err(fail(exit::ERROR, "a process command was taken for an operator command"));
        }
        Command::Completions { .. } | Command::Manpage => {}
        Command::Backup { file } => {
            let backup = store.backup_into(&file).await?;
            let counts: Vec<String> =
                backup.actions.iter().filter(|(_, n)| **n > 0).map(|(s, n)| format!("{n} {s}")).collect();
            out.message(
                &backup,
                &format!(
                    "backup written to {} ({} bytes, integrity ok): {} action(s) ({}), last tick {}",
                    backup.file.display(),
                    backup.bytes,
                    backup.actions.values().sum::<i64>(),
                    counts.join(", "),
                    backup.last_tick.map_or_else(|| "none".to_string(), |t| t.to_string())
                ),
            );
        }
        Command::Artifacts(ArtifactsCommand::Verify) => {
            let rows = store.history().artifact_logs().await?;
            let host = gethostname::gethostname().to_string_lossy().into_owned();
            let report = tokio::task::spawn_blocking(move || crate::artifacts::verify(&rows, &host)).await?;
            out.verify(&report);
            if !report.all_ok() {
                return Ok(exit::ERROR);
            }
        }
    }
    Ok(exit::OK)
}

/// `lease release`: a live lease only with `--force` (the holder's later writes are fenced).
async fn release_lease(store: &Store, force: bool, out: &output::Out) -> anyhow::Result<()> {
    let lease = store.lease().get(crate::lease::LEASE_NAME).await?;
    let now = store.db_now().await?;
    match lease {
        Some(l) if l.expires_at > now && !force => {
            return Err(fail(
                exit::ERROR,
                format!(
                    "lease '{}' is live, held by {} (epoch {}) until {}; use --force to release it (that instance's later writes will be fenced)",
                    l.name,
                    l.owner,
                    l.epoch,
                    l.expires_at.to_rfc3339()
                ),
            ));
        }
        _ => {
            let released = store.lease().release_lease(crate::lease::LEASE_NAME, None).await?;
            let msg = if released { "lease released" } else { "lease was not held; nothing to release" };
            out.message(&serde_json::json!({"released": released}), msg);
        }
    }
    Ok(())
}

/// `worker --types`: each a valid action type, without repeats.
fn worker_types(types: &[String]) -> anyhow::Result<Vec<String>> {
    crate::worker::served_types(types).map_err(|e| fail(exit::USAGE, format!("--types: {e}")))
}

/// `worker --listen`.
fn worker_listen(listen: &str) -> anyhow::Result<std::net::SocketAddr> {
    listen
        .trim()
        .parse()
        .map_err(|e| fail(exit::USAGE, format!("--listen '{listen}' is not an address like 127.0.0.1:9465 ({e})")))
}

/// What `run`, `worker` and `serve` can refuse without a database, checked before they wait
/// for one: a usage error or an address they may not serve fails at once, not after
/// `startup_timeout_seconds`.
fn check_before_waiting(command: &Command, config: &Config) -> anyhow::Result<()> {
    match command {
        Command::Worker { types, listen, no_http, .. } => {
            worker_types(types)?;
            if !no_http {
                worker_listen(listen)?;
            }
        }
        Command::Run { no_http: false, .. } | Command::Serve { .. } => {
            crate::http::check_bind(config.http.listen, &config.admin_tokens).map_err(|m| fail(exit::ERROR, m))?;
        }
        _ => {}
    }
    Ok(())
}

/// A process that could not start: its exit code, and the store's error as it is.
fn started(e: runtime::StartError) -> anyhow::Error {
    match e {
        runtime::StartError::Refused(m) => fail(exit::ERROR, m),
        runtime::StartError::Unavailable(m) => fail(exit::UNAVAILABLE, m),
        runtime::StartError::Registry(e) => e.into(),
        runtime::StartError::Store(e) => e.into(),
    }
}

async fn enqueue(args: EnqueueArgs, config: &Config, store: &Store, out: &output::Out) -> anyhow::Result<()> {
    if let Some(file) = args.file {
        let report = if file.as_os_str() == "-" {
            let stdin = std::io::stdin();
            queue::enqueue_jsonl(store, stdin.lock(), config.enqueue_defaults()).await
        } else {
            let f = std::fs::File::open(&file).with_context(|| format!("cannot open {}", file.display()))?;
            queue::enqueue_jsonl(store, std::io::BufReader::new(f), config.enqueue_defaults()).await
        };
        let report = report.map_err(|e| match &file {
            f if f.as_os_str() == "-" => fail(exit::ERROR, format!("stdin: {e}")),
            f => fail(exit::ERROR, format!("{}: {e}", f.display())),
        })?;
        out.message(
            &report,
            &format!("{} line(s): {} created, {} duplicate(s)", report.lines, report.created, report.duplicates),
        );
        return Ok(());
    }
    let Some(action_type) = args.action_type else {
        return Err(fail(exit::USAGE, "enqueue needs an action TYPE or --file"));
    };
    let payload = queue::parse_payload(&args.payload).map_err(|e| fail(exit::ERROR, format!("--payload: {e}")))?;
    let not_before = match (args.delay, args.not_before) {
        (Some(d), _) => Some(model::later(store.now(), d).map_err(|e| fail(exit::ERROR, format!("--delay: {e}")))?),
        (None, t) => t,
    };
    let req = EnqueueRequest {
        action_type,
        payload,
        idempotency_key: args.key,
        priority: args.priority,
        not_before,
        max_attempts: args.max_attempts,
        expires_at: args
            .expires_in
            .map(|d| {
                chrono::Duration::from_std(d)
                    .ok()
                    .and_then(|d| store.now().checked_add_signed(d))
                    .ok_or_else(|| fail(exit::ERROR, "--expires-in is too long"))
            })
            .transpose()?,
        traceparent: args.traceparent,
        require_approval: args.require_approval,
    };
    let outcome = queue::enqueue(store, &req, config.enqueue_defaults()).await?;
    let text = if outcome.duplicate {
        format!("duplicate: action {} already exists ({}); nothing created", outcome.id, outcome.status)
    } else {
        format!("enqueued action {} ({})", outcome.id, outcome.status)
    };
    out.message(&outcome, &text);
    Ok(())
}

/// `status` as an operator sees it: every count over all history; no live lease is degraded,
/// not unhealthy (often no daemon runs where `status` is typed).
async fn read_status(config: &Config, store: &Store) -> anyhow::Result<status::StatusReport> {
    let policy = LivenessPolicy::new(config.liveness, config.tick_interval, false);
    let counts = status::Counts::AllHistory;
    // No tick fault: this process runs no tick.
    Ok(status::read(store, crate::lease::LEASE_NAME, &policy, &config.rules.health, counts, config.workers.ttl, None)
        .await?)
}

async fn actions(cmd: ActionsCommand, config: &Config, store: &Store, out: &output::Out) -> anyhow::Result<()> {
    match cmd {
        ActionsCommand::List { status, action_type, limit } => {
            out.actions(&store.actions().list_actions(&ActionFilter { status, action_type, limit }).await?);
        }
        ActionsCommand::Show { id } => {
            let action =
                store.actions().action(id).await?.ok_or_else(|| fail(exit::ERROR, format!("action {id} not found")))?;
            let logs = store.history().logs(Some(id), 1000).await?;
            out.action(&action, &logs);
        }
        ActionsCommand::Requeue { id, .. } => {
            let ids = match id {
                Some(id) => store.actions().requeue(Authority::Operator, id).await.map(|()| vec![id])?,
                None => store.actions().requeue_all().await?,
            };
            out.message(&serde_json::json!({"requeued": ids}), &format!("requeued {} action(s): {:?}", ids.len(), ids));
        }
        ActionsCommand::Cancel { id: Some(id), .. } => {
            store.actions().cancel(Authority::Operator, id, None).await?;
            out.message(&serde_json::json!({"cancelled": id}), &format!("cancelled action {id}"));
        }
        ActionsCommand::Cancel { id: None, .. } => {
            // The ids read first, then cancelled by id: a row that reaches DLQ in between stays.
            let ids = store.actions().dlq_ids().await?;
            let mut cancelled = Vec::with_capacity(ids.len());
            for chunk in ids.chunks(crate::store::MAX_BULK_IDS) {
                cancelled.extend(store.actions().cancel_ids(chunk, &[ActionStatus::Dlq]).await?.changed);
            }
            out.message(
                &serde_json::json!({"cancelled": cancelled}),
                &format!("cancelled {} DLQ action(s): {:?}", cancelled.len(), cancelled),
            );
        }
        ActionsCommand::Approve(args) => approvals::approve(args, store, out).await?,
        ActionsCommand::Reject(args) => approvals::reject(args, store, out).await?,
        ActionsCommand::Summary => out.summary(&store.actions().actions_summary().await?),
        ActionsCommand::Purge { older_than } => {
            let age = older_than.unwrap_or_else(|| config.retention());
            let cutoff =
                model::earlier(model::now(), age).map_err(|e| fail(exit::ERROR, format!("--older-than: {e}")))?;
            let n = store.actions().purge(cutoff, crate::services::pruner::PURGE_BATCH).await?;
            let history = crate::services::pruner::prune_history(store, config, crate::store::Pace::FLAT_OUT).await?;
            out.message(
                &serde_json::json!({"purged": n, "before": cutoff, "history": history}),
                &format!(
                    "purged {n} SUCCESS/CANCELLED action(s) finished before {}; pruned {} ledger row(s), {} decision(s), \
                     {} cooldown(s) past their retention",
                    cutoff.to_rfc3339(),
                    history.ledger,
                    history.decisions,
                    history.cooldowns
                ),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_cut_what_they_quote() {
        let long = "k".repeat(20_000);
        let text = format!("error: invalid value '{long}' for '--limit <N>'\n\nFor more information, try '--help'.\n");
        let cut = cut_quoted(&text, 80, 2_000);
        assert_eq!(
            cut,
            format!(
                "error: invalid value '{}… (19920 more characters)' for '--limit <N>'\n\nFor more information, try '--help'.\n",
                "k".repeat(80)
            )
        );
        assert_eq!(cut_quoted("no quotes", 3, 100), "no quotes");
        assert_eq!(cut_quoted("'abcd' and 'é'", 3, 100), "'abc… (1 more characters)' and 'é'");
        // A quote inside the value unpairs the rest: the whole is still bounded.
        let odd = format!("error: invalid value 'it's {long}' for '--limit <N>'");
        assert!(cut_quoted(&odd, 80, 2_000).chars().count() <= 2_002);
    }
}
