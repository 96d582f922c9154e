//! EXECUTE, the outside edge: one adapter per action type behind one [`Adapter`] trait, and
//! the registry that maps a type to its adapter.
//!
//! An adapter with settings owns them: `<adapter>/config.rs` declares its keys (under
//! `adapters.<section>`) and its config type, and its module's `SECTION` says how the adapter
//! is built from them. [`SECTIONS`] lists the sections; adding an adapter is its folder, a line
//! there and its field in [`AdaptersConfig`].
//!
//! An adapter says what it would do ([`Adapter::render_proof`], pure, no I/O) and does it
//! ([`Adapter::execute`]). Proof mode is enforced by the executor, which in proof mode calls
//! only `render_proof`; an adapter never decides whether it may touch the outside world.
//! Adapters know nothing of the queue, the lease or the store.

mod alert;
mod command;
pub mod http;
mod noop;
mod social;
mod webhook;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

pub use alert::Alert;
pub use alert::config::AlertConfig;
pub use command::Command;
pub use command::config::{CommandConfig, CommandSpec, NonzeroExit, fill, slots};
pub use noop::Noop;
pub use social::config::SocialConfig;
pub use social::{PostSocial, REAL_RUN_UNCONFIGURED};
pub use webhook::Webhook;
pub use webhook::config::{METHODS, Secret, WebhookConfig, WebhookTarget, check_url};

use crate::model::Action;
use crate::settings::ConfigError;
use crate::settings::key::{self, Key, KeyInfo, Raw};

/// An adapter's own section under `adapters:`, declared in its module (`SECTION`).
pub struct Section {
    /// Its name under `adapters:` (`social`).
    pub name: &'static str,
    /// The action type its adapter serves (`POST_SOCIAL`).
    pub action_type: &'static str,
    /// Its keys, named below `adapters.<name>.`.
    pub keys: &'static [Key<AdaptersConfig>],
    /// Its `timeout_seconds`, which the executor applies to every attempt of the type.
    pub timeout: fn(&AdaptersConfig) -> Duration,
    /// Its adapter, from the whole section (delivery may go through another adapter's targets).
    pub build: fn(&AdaptersConfig, &Arc<http::Http>) -> Arc<dyn Adapter>,
}

/// The sections, in the order they apply: `webhook` first, since others name its targets.
pub const SECTIONS: &[Section] = &[webhook::SECTION, command::SECTION, social::SECTION, alert::SECTION];

/// The `adapters:` section (file only): each adapter's validated config. `Default` is the
/// built-in defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct AdaptersConfig {
    pub webhook: WebhookConfig,
    pub command: CommandConfig,
    pub social: SocialConfig,
    pub alert: AlertConfig,
}

impl Default for AdaptersConfig {
    fn default() -> Self {
        AdaptersConfig::resolve(&Raw::default(), &|_| None)
            .unwrap_or_else(|e| unreachable!("the built-in defaults are valid (unit-tested): {e}"))
    }
}

impl AsRef<AdaptersConfig> for AdaptersConfig {
    fn as_ref(&self) -> &AdaptersConfig {
        self
    }
}

impl AdaptersConfig {
    /// Every section's keys, under `adapters.<section>.`.
    pub fn keys() -> Vec<KeyInfo> {
        SECTIONS.iter().flat_map(|s| KeyInfo::of(s.keys, &format!("adapters.{}.", s.name), false)).collect()
    }

    /// Applies every section's keys from the layers.
    pub(crate) fn resolve(raw: &Raw, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut a = AdaptersConfig {
            webhook: WebhookConfig::default(),
            command: CommandConfig::default(),
            social: SocialConfig::default(),
            alert: AlertConfig::default(),
        };
        for s in SECTIONS {
            key::apply(s.keys, &format!("adapters.{}.", s.name), raw, env, &mut a)?;
        }
        Ok(a)
    }

    /// Each configured action type's timeout and the key it comes from, for the executor.
    pub fn type_timeouts(&self) -> BTreeMap<String, (Duration, String)> {
        SECTIONS
            .iter()
            .map(|s| (s.action_type.to_string(), ((s.timeout)(self), format!("adapters.{}.timeout_seconds", s.name))))
            .collect()
    }
}

/// What names of webhook targets and allowlisted commands may be.
pub(crate) const NAME_RULE: &str = "names are 1 to 64 characters from [A-Za-z0-9_-]";

pub(crate) fn is_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Why an attempt failed, and whether trying again can help.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum AdapterError {
    /// Transient: retried with backoff (or after `retry_after`, when the peer said so).
    #[error("{message}")]
    Retryable { message: String, retry_after: Option<Duration> },
    /// Retrying cannot help (bad payload, refused request): the action goes to DLQ at once.
    #[error("{message}")]
    Permanent { message: String },
}

impl AdapterError {
    pub fn retryable(message: impl Into<String>) -> Self {
        AdapterError::Retryable { message: message.into(), retry_after: None }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        AdapterError::Permanent { message: message.into() }
    }
}

/// A successful attempt, in a sentence for the execution log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub message: String,
}

/// What an adapter would do, written as a proof artifact in proof mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proof {
    /// Directory under the artifacts directory.
    pub subdir: String,
    /// File extension.
    pub extension: String,
    /// The artifact's bytes: exactly what would be sent or run, secrets redacted.
    pub body: Vec<u8>,
}

/// What an adapter is told about the attempt it runs, and where it leaves a record of it.
#[derive(Clone, Debug)]
pub struct ExecContext {
    pub tick_id: Option<i64>,
    /// This attempt's number, from 1.
    pub attempt: i32,
    /// The W3C `traceparent` to send the peer (the attempt's span, or the context the action
    /// was enqueued under when traces are off); `None`: no header.
    pub traceparent: Option<String>,
    record: Arc<Mutex<Option<Proof>>>,
}

impl ExecContext {
    pub fn new(tick_id: Option<i64>, attempt: i32) -> Self {
        ExecContext { tick_id, attempt, traceparent: None, record: Arc::default() }
    }

    /// With the `traceparent` the peer is sent.
    pub fn with_traceparent(mut self, traceparent: Option<String>) -> Self {
        self.traceparent = traceparent;
        self
    }

    /// Leaves a record of what a real attempt did (a command's output, say). The executor writes
    /// it as an artifact, atomically and sha256-stamped, and names it in the attempt's log row,
    /// whether the attempt succeeded or failed. A later call replaces an earlier one.
    pub fn attach(&self, record: Proof) {
        *self.record.lock().unwrap_or_else(PoisonError::into_inner) = Some(record);
    }

    /// The record attached by the adapter, if any (taken once).
    pub fn take_attached(&self) -> Option<Proof> {
        self.record.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// One action type's executor.
#[async_trait::async_trait]
pub trait Adapter: Send + Sync + 'static {
    /// The action type this adapter serves, e.g. `POST_SOCIAL`.
    fn action_type(&self) -> &str;

    /// Validates the payload and describes what `execute` would do. `Ok(None)` means there is
    /// nothing worth an artifact (a no-op). Must not perform I/O.
    fn render_proof(&self, action: &Action) -> Result<Option<Proof>, AdapterError>;

    /// Performs the action for real.
    async fn execute(&self, ctx: &ExecContext, action: &Action) -> Result<Outcome, AdapterError>;
}

/// The registry could not be built from the config.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RegistryError(String);

/// Adapters by action type.
#[derive(Clone, Default)]
pub struct Registry {
    adapters: BTreeMap<String, Arc<dyn Adapter>>,
}

impl Registry {
    pub fn empty() -> Self {
        Registry::default()
    }

    /// `NOOP` and an unconfigured `POST_SOCIAL`: what needs no configuration.
    pub fn builtin() -> Self {
        let mut r = Registry::empty();
        r.register(Noop);
        r.register(PostSocial::unconfigured());
        r
    }

    /// Every adapter that ships with the binary, set up from the `adapters:` section: `NOOP`,
    /// `POST_SOCIAL`, `WEBHOOK`, `COMMAND` and `ALERT`. It takes the section alone (`Config`
    /// hands it over as `AsRef<AdaptersConfig>`), so that adapters know nothing of `config`.
    pub fn from_config(config: impl AsRef<AdaptersConfig>) -> Result<Self, RegistryError> {
        let http =
            Arc::new(http::Http::new().map_err(|e| RegistryError(format!("cannot set up the HTTP client: {e}")))?);
        let mut r = Registry::empty();
        r.register(Noop);
        for s in SECTIONS {
            let adapter = (s.build)(config.as_ref(), &http);
            r.adapters.insert(adapter.action_type().to_string(), adapter);
        }
        Ok(r)
    }

    /// Adds (or replaces) the adapter for its action type.
    pub fn register(&mut self, adapter: impl Adapter) -> &mut Self {
        self.adapters.insert(adapter.action_type().to_string(), Arc::new(adapter));
        self
    }

    /// The name of the adapter serving `action_type`, for an attempt's span: its section's
    /// (`webhook`), `noop`, `custom` for one a program registered, `none` without one.
    pub fn adapter_name(&self, action_type: &str) -> &'static str {
        match (self.get(action_type), SECTIONS.iter().find(|s| s.action_type == action_type)) {
            (None, _) => "none",
            (Some(_), Some(section)) => section.name,
            (Some(_), None) if action_type == "NOOP" => "noop",
            (Some(_), None) => "custom",
        }
    }

    pub fn get(&self, action_type: &str) -> Option<Arc<dyn Adapter>> {
        self.adapters.get(action_type).cloned()
    }

    pub fn types(&self) -> impl Iterator<Item = &str> {
        self.adapters.keys().map(String::as_str)
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.adapters.keys()).finish()
    }
}
