//! The limits writer: puts the config's `limits:` section into the database, where every
//! claimer on every host reads them.
//!
//! `run` replaces the database's limits with its config's, at start and on each SIGHUP
//! ([`ConfigLimits::Replace`]); every other process that claims (a worker, `run-once`) fills in
//! the types that have no base limit yet, before its first claim ([`ConfigLimits::Fill`]). Where
//! this config and the database disagree it says so, naming the type, the field, both values
//! and who set the database's. It never judges a limit: `limits.rs` checked the config's.

use crate::adapters::Registry;
use crate::config::Config;
use crate::store::{ConfigLimits, Store, StoreError};

/// Writes the config's `limits:` section into the database, on `how`'s terms. Without a section
/// it changes nothing. Warns of a limit on a type no adapter here serves, and of each field
/// where this config and the database disagreed.
pub async fn write(store: &Store, config: &Config, registry: &Registry, how: ConfigLimits) -> Result<(), StoreError> {
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

/// Reads `reload`'s config again and replaces the database's limits with its `limits:` (what
/// `run` does on SIGHUP). A config that is rejected, or a write that fails, leaves the limits as
/// they were and says so.
pub async fn rewrite<E: std::fmt::Display>(store: &Store, reload: impl Fn() -> Result<Config, E>) {
    let config = match reload() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "config rejected on SIGHUP; limits unchanged");
            return;
        }
    };
    let registry = match Registry::from_config(&config) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "config rejected on SIGHUP; limits unchanged");
            return;
        }
    };
    if let Err(e) = write(store, &config, &registry, ConfigLimits::Replace).await {
        tracing::error!(error = %e, "could not write the limits on SIGHUP; they stay as they were");
    }
}
