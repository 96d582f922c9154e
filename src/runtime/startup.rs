//! Opening the database a process runs on: at once for a command, or, for the long-running
//! processes that start at boot (`run`, `worker`, `serve`), waiting for a database that is not
//! there yet, up to `startup_timeout_seconds`.

use std::time::Duration;

use super::StartError;
use crate::config::Config;
use crate::store::{Store, StoreOptions};

/// The connection settings `config` asks for.
pub fn store_options(config: &Config) -> StoreOptions {
    StoreOptions {
        sqlite_synchronous_full: config.sqlite_synchronous_full,
        listen: config.postgres_listen,
        ..StoreOptions::default()
    }
}

/// Connects and migrates, naming the database on failure.
pub async fn open_store(config: &Config) -> Result<Store, StartError> {
    Ok(Store::open(&config.database_url, &store_options(config)).await?)
}

/// The first pause between tries at a database that is not there yet, and the longest.
const STARTUP_RETRY_FIRST: Duration = Duration::from_millis(500);
const STARTUP_RETRY_MAX: Duration = Duration::from_secs(5);

/// Connects and migrates, for `run`, `worker` and `serve`, which start at boot, maybe before their
/// database: one that is not there yet ([`StoreError::is_unavailable`]: refused, starting up,
/// not created yet, or dropped mid-migration) is tried again with a backoff from 0.5 s doubling
/// to 5 s, one log line per try, for `startup_timeout_seconds`; then it gives up
/// ([`StartError::Unavailable`]). Anything else (a malformed URL, a refused role, a SQLite path that
/// cannot be opened) fails at once, as in every other command.
///
/// [`StoreError::is_unavailable`]: crate::store::StoreError::is_unavailable
pub async fn open_store_waiting(config: &Config) -> Result<Store, StartError> {
    let options = store_options(config);
    let started = std::time::Instant::now();
    let timeout = config.startup_timeout;
    let mut pause = STARTUP_RETRY_FIRST;
    let mut attempt = 0u32;
    loop {
        attempt = attempt.saturating_add(1);
        // A try never runs past the deadline (a host that drops packets answers nothing).
        let left = timeout.saturating_sub(started.elapsed()).max(Duration::from_secs(1));
        let error = match tokio::time::timeout(left, Store::open(&config.database_url, &options)).await {
            Ok(Ok(store)) => {
                if attempt > 1 {
                    tracing::info!(attempt, waited_s = started.elapsed().as_secs_f64(), "database reachable; starting");
                }
                return Ok(store);
            }
            Ok(Err(e)) if e.is_unavailable() => e.to_string(),
            Ok(Err(e)) => return Err(StartError::Store(e)),
            Err(_) => format!("no answer within {:.1}s", left.as_secs_f64()),
        };
        let waited = started.elapsed();
        if waited >= timeout {
            return Err(StartError::Unavailable(format!(
                "database still not reachable after {:.0}s and {attempt} tries (startup_timeout_seconds: {}): {error}",
                waited.as_secs_f64(),
                timeout.as_secs_f64()
            )));
        }
        let pause_now = pause.min(timeout - waited);
        tracing::warn!(
            attempt,
            retry_in_s = pause_now.as_secs_f64(),
            waited_s = waited.as_secs_f64(),
            startup_timeout_s = timeout.as_secs_f64(),
            error = %error,
            "database not reachable yet; waiting for it"
        );
        tokio::time::sleep(pause_now).await;
        pause = (pause * 2).min(STARTUP_RETRY_MAX);
    }
}
