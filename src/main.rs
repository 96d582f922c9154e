//! The `orchestrator` binary: parse the command line, set up logging (and traces, when
//! configured: `telemetry`), run the command, and turn
//! the result into an exit code and (on failure) one line on stderr.
//!
//! Nothing here writes with `println!`/`eprintln!` (they panic on a closed or full stream): log
//! lines go through `cli::stdio::LogWriter`, the error line through `cli::stdio::stderr_line`.

use std::process::ExitCode;

use clap::Parser;
use orchestrator::cli::{self, Cli, Command, Failure, LogFormat, stdio};
use orchestrator::telemetry::{self, Traces};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, fmt};

/// How long the last log lines may take to reach stderr at exit (a stderr nobody reads is given
/// this, not forever).
const LOG_FLUSH_AT_EXIT: std::time::Duration = std::time::Duration::from_secs(2);

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return ExitCode::from(cli::usage(&e)),
    };
    // Traces start before the runtime: the exporter's HTTP client is a blocking one, on the
    // SDK's own thread. A config that cannot be read starts none; `cli::run` reports it.
    let traces = match Traces::start(&cli::tracing_config(&cli).unwrap_or_default()) {
        Ok(traces) => traces,
        Err(e) => {
            stdio::stderr_line(&format!("error: {e}"));
            return ExitCode::from(cli::exit::ERROR);
        }
    };
    // The long-running commands say at info when they start, reach their database again or
    // stop; a one-shot command prints only warnings and errors besides its output.
    let long_running = matches!(cli.command, Command::Run { .. } | Command::Serve { .. } | Command::Worker { .. });
    let default_level = if long_running { "info" } else { "warn" };
    let mut filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{default_level},sqlx=warn,sea_orm=warn")));
    if traces.on() {
        for directive in telemetry::TRACE_DIRECTIVES.split(',').filter_map(|d| d.parse().ok()) {
            filter = filter.add_directive(directive);
        }
    }
    // The writer never fails a log line (it counts the ones stderr does not take), so the
    // subscriber's own complaint about a failed write, itself an `eprintln!`, cannot happen.
    let logs = tracing_subscriber::registry().with(traces.layer()).with(filter);
    match cli.log_format {
        LogFormat::Text => {
            let colour =
                cli::log_colour(stdio::is_terminal(stdio::Stream::Stderr), std::env::var_os("NO_COLOR").as_deref());
            logs.with(fmt::layer().with_ansi(colour).with_writer(stdio::LogWriter).log_internal_errors(false)).init();
        }
        LogFormat::Json => {
            logs.with(fmt::layer().json().with_ansi(false).with_writer(stdio::LogWriter).log_internal_errors(false))
                .init();
        }
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            stdio::stderr_line(&format!("error: cannot start the async runtime: {e}"));
            return ExitCode::from(cli::exit::ERROR);
        }
    };
    let result = runtime.block_on(cli::run(cli));
    // Tasks still running log as they are stopped; then the queued spans and log lines leave.
    drop(runtime);
    traces.shutdown();
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            let line: String = format!("{e:#}").chars().map(|c| if c == '\n' { ' ' } else { c }).collect();
            stdio::stderr_line(&format!("error: {line}"));
            e.downcast_ref::<Failure>().map_or(cli::exit::ERROR, |f| f.code)
        }
    };
    stdio::flush_logs(LOG_FLUSH_AT_EXIT);
    ExitCode::from(code)
}
