//! The `orchestrator` binary: parse the command line, set up logging, run the command, and turn
//! the result into an exit code and (on failure) one line on stderr.
//!
//! Nothing here writes with `println!`/`eprintln!` (they panic on a closed or full stream): log
//! lines go through `cli::stdio::LogWriter`, the error line through `cli::stdio::stderr_line`.

use std::process::ExitCode;

use clap::Parser;
use orchestrator::cli::{self, Cli, Command, Failure, LogFormat, stdio};
use tracing_subscriber::EnvFilter;

/// How long the last log lines may take to reach stderr at exit (a stderr nobody reads is given
/// this, not forever).
const LOG_FLUSH_AT_EXIT: std::time::Duration = std::time::Duration::from_secs(2);

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return ExitCode::from(cli::usage(&e)),
    };
    let default_level =
        if matches!(cli.command, Command::Run { .. } | Command::Serve { .. }) { "info" } else { "warn" };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{default_level},sqlx=warn,sea_orm=warn")));
    // The writer never fails a log line (it counts the ones stderr does not take), so the
    // subscriber's own complaint about a failed write, itself an `eprintln!`, cannot happen.
    match cli.log_format {
        LogFormat::Text => {
            let colour =
                cli::log_colour(stdio::is_terminal(stdio::Stream::Stderr), std::env::var_os("NO_COLOR").as_deref());
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(colour)
                .with_writer(stdio::LogWriter)
                .log_internal_errors(false)
                .init();
        }
        LogFormat::Json => {
            tracing_subscriber::fmt()
                .json()
                .with_ansi(false)
                .with_env_filter(filter)
                .with_writer(stdio::LogWriter)
                .log_internal_errors(false)
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
    // Tasks still running log as they are stopped; then the queued log lines are written.
    drop(runtime);
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
