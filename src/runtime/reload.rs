//! Reloads on a running process: its rules when the rules directory changes or on SIGHUP, and
//! (for `run`) its config's limits on SIGHUP. A reload that is rejected keeps what was in use
//! and says why.

use std::path::PathBuf;
use std::time::Duration;

use super::signals;
use crate::config::{Config, ConfigError};
use crate::store::Store;
use crate::tick::Engine;

/// Reads the configuration again, as it was read at start (for SIGHUP).
pub type Reload = std::sync::Arc<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// Hot reload for `run`: a change in the rules directory (debounced) or SIGHUP reloads; a set
/// that fails to compile or check is rejected whole and the old one stays.
pub fn watch_rules(engine: Engine, dir: PathBuf) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<&'static str>(16);
    let watcher = {
        let tx = tx.clone();
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok_and(|e| !e.kind.is_access()) {
                let _ = tx.try_send("rules directory changed");
            }
        })
    };
    let watcher = match watcher {
        Ok(mut w) => {
            use notify::Watcher;
            match w.watch(&dir, notify::RecursiveMode::NonRecursive) {
                Ok(()) => Some(w),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the rules directory; SIGHUP still reloads");
                    None
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "no file watcher; SIGHUP still reloads");
            None
        }
    };
    {
        let tx = tx.clone();
        let mut hup = signals::hangups();
        tokio::spawn(async move {
            while signals::next_hangup(&mut hup).await {
                let _ = tx.send("SIGHUP").await;
            }
        });
    }
    drop(tx);
    tokio::spawn(async move {
        let _keep = watcher;
        while let Some(why) = rx.recv().await {
            // Editors write in several steps; wait for the burst to end.
            tokio::time::sleep(Duration::from_millis(200)).await;
            while rx.try_recv().is_ok() {}
            match engine.decider().load_rules() {
                Ok(n) => {
                    tracing::info!(rules = n, digest = %engine.decider().rules().digest(), trigger = why, "rules reloaded")
                }
                Err(e) => {
                    tracing::error!(trigger = why, error = %e, "rules rejected; the previous rule set stays active")
                }
            }
        }
    });
}

/// On SIGHUP, `run` reads its config again and writes its `limits:`, `schedules:` and
/// `windows:` sections into the database; a config that no longer loads is logged and changes nothing.
pub fn rewrite_on_hangup(store: Store, reload: Reload) {
    let mut hup = signals::hangups();
    tokio::spawn(async move {
        while signals::next_hangup(&mut hup).await {
            crate::services::limits_writer::rewrite(&store, &*reload).await;
            // A rejected config was named by the limits' rewrite; the schedules and windows stay too.
            let Ok(config) = reload() else { continue };
            if let Err(e) = crate::services::scheduler::write(&store, &config).await {
                tracing::error!(error = %e, "could not write the schedules on SIGHUP; they stay as they were");
            }
            match store.windows().replace_config(&config.windows).await {
                Ok((opened, ended)) => tracing::info!(opened, ended, "windows written from the config on SIGHUP"),
                Err(e) => tracing::error!(error = %e, "could not write the windows on SIGHUP; they stay as they were"),
            }
        }
    });
}
