//! The `orchestrator` binary: parse the command line, set up logging, run the command, and turn
//! the result into an exit code and (on failure) one line on stderr.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser;
use orchestrator::cli::{self, Cli, Command, Failure, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return ExitCode::from(cli::parse_failure(&e)),
    };
    let default_level =
        if matches!(cli.command, Command::Run { .. } | Command::Serve { .. }) { "info" } else { "warn" };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{default_level},sqlx=warn,sea_orm=warn")));
    match cli.log_format {
        LogFormat::Text => {
            let colour = cli::log_colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref());
            tracing_subscriber::fmt().with_env_filter(filter).with_ansi(colour).with_writer(std::io::stderr).init();
        }
        LogFormat::Json => {
            tracing_subscriber::fmt()
                .json()
                .with_ansi(false)
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .init();
        }
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(cli::exit::ERROR);
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = e.downcast_ref::<Failure>().map_or(cli::exit::ERROR, |f| f.code);
            let line: String = format!("{e:#}").chars().map(|c| if c == '\n' { ' ' } else { c }).collect();
            eprintln!("error: {line}");
            ExitCode::from(code)
        }
    }
}
