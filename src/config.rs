//! Configuration: defaults, then `orchestrator.yaml`, then `ORCHESTRATOR_<KEY>` environment
//! variables, then command-line flags, folded into one validated [`Config`].
//!
//! Every error names the key and where its value came from: the file with line and column, the
//! environment variable, or the flag. Unknown keys are errors. Nothing else in the crate reads
//! the environment or the config file.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub mod adapters;

pub use adapters::AdaptersConfig;

/// The file read when `--config` / `ORCHESTRATOR_CONFIG` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "orchestrator.yaml";
/// The SQLite database used when no URL is configured.
pub const DEFAULT_DATABASE_URL: &str = "sqlite:orchestrator.db";
const MAX_SECONDS: f64 = 365.0 * 86_400.0;

/// The validated settings every command runs with.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub database_url: String,
    pub tick_interval: Duration,
    pub max_actions_per_tick: u32,
    pub max_tick: Duration,
    pub dispatch_concurrency: u32,
    /// At most this many attempts are started and not yet durably recorded at once (at least
    /// `dispatch_concurrency`): what one crash can make run twice.
    pub max_unrecorded: u32,
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub lease_name: String,
    pub lease_ttl: Duration,
    pub heartbeat: Duration,
    pub action_timeout: Duration,
    pub rules_dir: PathBuf,
    pub artifacts_dir: PathBuf,
    pub retention_days: u32,
    /// Tick ledger rows (with their snapshots) are pruned after this many days.
    pub ledger_retention_days: u32,
    /// Decisions are pruned after this many days, but never while their tick is in the ledger.
    pub decisions_retention_days: u32,
    /// Rule cooldown rows are pruned after this many days, but never within `rules.cooldown`.
    pub cooldown_retention_days: u32,
    pub sqlite_synchronous_full: bool,
    pub rules: RulesConfig,
    /// `expire_after`: per action type, the deadline a new action gets from its enqueue when it
    /// names none. Empty by default: no action expires unless asked to.
    pub expire_after: BTreeMap<String, Duration>,
    /// `proof_mode: enforced`: every attempt runs in proof mode whatever the database flag
    /// says, and `proof off` is refused. `flag` (the default): the flag decides.
    pub proof_enforced: bool,
    /// The `adapters:` section (file only).
    pub adapters: AdaptersConfig,
    /// The HTTP server (`http:` in the file).
    pub http: HttpConfig,
    /// When the last tick's age makes liveness degraded, then unhealthy (`liveness:`).
    pub liveness: crate::health::StaleThresholds,
    /// Admin API tokens from `ORCHESTRATOR_ADMIN_TOKEN` (never from the file); empty: the
    /// admin API is disabled.
    pub admin_tokens: AdminTokens,
}

/// The default HTTP listen address: loopback only.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9464";
/// The environment variable that holds the admin API token(s).
pub const ADMIN_TOKEN_ENV: &str = "ORCHESTRATOR_ADMIN_TOKEN";
/// The shortest admin token accepted.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// `http:` settings.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpConfig {
    /// Where `run` and `serve` listen.
    pub listen: std::net::SocketAddr,
    /// A connection that has not sent a request's headers within this is closed (an idle
    /// keep-alive connection too).
    pub header_read_timeout: Duration,
    /// A request whose body has not arrived within this gets 408.
    pub body_read_timeout: Duration,
    /// Connections served at once; further ones wait in the listen backlog until one closes.
    pub max_connections: u32,
}

/// `http.header_read_timeout_seconds` when not set.
pub const DEFAULT_HEADER_READ_TIMEOUT_SECONDS: f64 = 10.0;
/// `http.body_read_timeout_seconds` when not set.
pub const DEFAULT_BODY_READ_TIMEOUT_SECONDS: f64 = 30.0;
/// `http.max_connections` when not set.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 512;

/// Named admin tokens. `Debug` never shows a token.
#[derive(Clone, Default, PartialEq)]
pub struct AdminTokens(Vec<(String, String)>);

impl fmt::Debug for AdminTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|(n, _)| n.as_str()).collect();
        write!(f, "AdminTokens({names:?})")
    }
}

impl AdminTokens {
    /// Parses `ORCHESTRATOR_ADMIN_TOKEN`: comma-separated entries, each `NAME:TOKEN` (NAME of
    /// letters, digits, `_.-`, up to 64) or a bare `TOKEN` (named `admin`). Tokens are at least
    /// [`MIN_ADMIN_TOKEN_LEN`] characters with no whitespace.
    pub fn parse(text: &str) -> Result<AdminTokens, String> {
        let mut tokens = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, token) = match entry.split_once(':') {
                Some((n, t))
                    if !n.is_empty()
                        && n.len() <= 64
                        && n.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) =>
                {
                    (n.to_string(), t.to_string())
                }
                _ => ("admin".to_string(), entry.to_string()),
            };
            if token.chars().count() < MIN_ADMIN_TOKEN_LEN || token.chars().any(char::is_whitespace) {
                return Err(format!(
                    "the token named '{name}' must be at least {MIN_ADMIN_TOKEN_LEN} characters with no whitespace"
                ));
            }
            tokens.push((name, token));
        }
        if tokens.is_empty() {
            return Err("no token given (unset the variable to disable the admin API)".to_string());
        }
        Ok(AdminTokens(tokens))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `(name, token)` pairs.
    pub fn entries(&self) -> &[(String, String)] {
        &self.0
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpLayer {
    listen: Option<String>,
    /// Replaced by `liveness:`; refused with an error that names the new keys.
    stale_tick_intervals: Option<serde_yaml::Value>,
    header_read_timeout_seconds: Option<f64>,
    body_read_timeout_seconds: Option<f64>,
    max_connections: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LivenessLayer {
    stale_degraded_seconds: Option<f64>,
    stale_unhealthy_seconds: Option<f64>,
}

/// Where a setting's value came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    File { path: PathBuf, line: usize, column: usize },
    Env(String),
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("the default"),
            Source::File { path, line, column } => write!(f, "{}:{line}:{column}", path.display()),
            Source::Env(name) => write!(f, "environment variable {name}"),
            Source::Flag(name) => write!(f, "flag {name}"),
        }
    }
}

/// A configuration error; its message names the key and the source of the bad value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{source_}: {message}")]
    Value { source_: Source, message: String },
}

/// The raw layer shape: every key optional, unknown keys refused.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Layer {
    database_url: Option<String>,
    tick_interval_seconds: Option<f64>,
    max_actions_per_tick: Option<u32>,
    max_tick_seconds: Option<f64>,
    dispatch_concurrency: Option<u32>,
    max_unrecorded: Option<u32>,
    max_attempts: Option<u32>,
    backoff_base_seconds: Option<f64>,
    backoff_max_seconds: Option<f64>,
    lease_name: Option<String>,
    lease_ttl_seconds: Option<f64>,
    heartbeat_seconds: Option<f64>,
    action_timeout_seconds: Option<f64>,
    rules_dir: Option<PathBuf>,
    artifacts_dir: Option<PathBuf>,
    retention_days: Option<u32>,
    ledger_retention_days: Option<u32>,
    decisions_retention_days: Option<u32>,
    cooldown_retention_days: Option<u32>,
    sqlite_synchronous: Option<String>,
    expire_after: Option<BTreeMap<String, serde_yaml::Value>>,
    proof_mode: Option<String>,
    rules: Option<RulesLayer>,
    adapters: Option<adapters::AdaptersLayer>,
    http: Option<HttpLayer>,
    liveness: Option<LivenessLayer>,
}

/// Every key, and whether its value is text (taken verbatim from the environment) or a YAML
/// scalar (parsed, so `ORCHESTRATOR_MAX_ATTEMPTS=five` fails like `max_attempts: five`).
const KEYS: &[(&str, bool)] = &[
    ("database_url", true),
    ("tick_interval_seconds", false),
    ("max_actions_per_tick", false),
    ("max_tick_seconds", false),
    ("dispatch_concurrency", false),
    ("max_unrecorded", false),
    ("max_attempts", false),
    ("backoff_base_seconds", false),
    ("backoff_max_seconds", false),
    ("lease_name", true),
    ("lease_ttl_seconds", false),
    ("heartbeat_seconds", false),
    ("action_timeout_seconds", false),
    ("rules_dir", true),
    ("artifacts_dir", true),
    ("retention_days", false),
    ("ledger_retention_days", false),
    ("decisions_retention_days", false),
    ("cooldown_retention_days", false),
    ("sqlite_synchronous", true),
    ("expire_after", false),
    ("proof_mode", true),
    ("http", false),
    ("liveness", false),
    ("rules", false),
];

/// Flags that override the other layers.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub database_url: Option<String>,
    pub tick_interval_seconds: Option<f64>,
    /// `--proof-enforced` (proof_mode: enforced).
    pub proof_enforced: bool,
    /// `--listen` (http.listen).
    pub http_listen: Option<String>,
}

/// Where to read from: the config file (if any) and the environment.
pub struct Inputs<'a> {
    /// An explicit file: it must exist. `None` reads `orchestrator.yaml` if present.
    pub config_file: Option<&'a Path>,
    pub env: &'a dyn Fn(&str) -> Option<String>,
    pub overrides: Overrides,
}

impl Config {
    /// Loads from the process environment and the given file and flags.
    pub fn load(config_file: Option<&Path>, overrides: Overrides) -> Result<Config, ConfigError> {
        let env = |k: &str| std::env::var(k).ok();
        Config::load_from(Inputs { config_file, env: &env, overrides })
    }

    /// Loads from explicit inputs (tests pass their own environment).
    pub fn load_from(inputs: Inputs<'_>) -> Result<Config, ConfigError> {
        let mut layers: Vec<(Layer, LayerOrigin)> = Vec::new();

        let file = match inputs.config_file {
            Some(p) => read_file(p, true)?,
            None => read_file(Path::new(DEFAULT_CONFIG_FILE), false)?,
        };
        let mut adapters_file = None;
        if let Some((path, text)) = file {
            let layer = parse_file(&path, &text)?;
            adapters_file = Some((layer.adapters.clone(), path.clone(), text.clone()));
            layers.push((layer, LayerOrigin::File { path, text }));
        }

        for (key, is_text) in KEYS {
            let var = format!("ORCHESTRATOR_{}", key.to_ascii_uppercase());
            let value =
                (inputs.env)(&var).or_else(|| (*key == "database_url").then(|| (inputs.env)("DATABASE_URL")).flatten());
            let Some(value) = value else { continue };
            let name = if (inputs.env)(&var).is_some() { var } else { "DATABASE_URL".to_string() };
            let yaml_value = if *is_text {
                serde_yaml::Value::String(value)
            } else {
                serde_yaml::from_str(&value).map_err(|e| ConfigError::Value {
                    source_: Source::Env(name.clone()),
                    message: format!("{key}: {e}"),
                })?
            };
            let mut map = serde_yaml::Mapping::new();
            map.insert(serde_yaml::Value::String((*key).to_string()), yaml_value);
            let layer: Layer = serde_yaml::from_value(serde_yaml::Value::Mapping(map)).map_err(|e| {
                ConfigError::Value { source_: Source::Env(name.clone()), message: format!("{key}: {e}") }
            })?;
            layers.push((layer, LayerOrigin::Env(name)));
        }

        let o = inputs.overrides;
        if o.database_url.is_some() {
            let layer = Layer { database_url: o.database_url, ..Default::default() };
            layers.push((layer, LayerOrigin::Flag("--database-url")));
        }
        if o.tick_interval_seconds.is_some() {
            let layer = Layer { tick_interval_seconds: o.tick_interval_seconds, ..Default::default() };
            layers.push((layer, LayerOrigin::Flag("--interval")));
        }
        if o.proof_enforced {
            let layer = Layer { proof_mode: Some("enforced".into()), ..Default::default() };
            layers.push((layer, LayerOrigin::Flag("--proof-enforced")));
        }
        if o.http_listen.is_some() {
            let http = HttpLayer { listen: o.http_listen, ..Default::default() };
            layers.push((Layer { http: Some(http), ..Default::default() }, LayerOrigin::Flag("--listen")));
        }

        let mut config = Resolver::new(layers).resolve()?;
        if let Some((layer, path, text)) = adapters_file {
            let file = adapters::FileText { path: &path, text: &text };
            config.adapters = adapters::resolve(layer, Some(file), inputs.env)?;
        }
        if let Some(text) = (inputs.env)(ADMIN_TOKEN_ENV) {
            config.admin_tokens = AdminTokens::parse(&text)
                .map_err(|message| ConfigError::Value { source_: Source::Env(ADMIN_TOKEN_ENV.to_string()), message })?;
        }
        Ok(config)
    }

    /// What an enqueue fills in from the config: `max_attempts` and `expire_after`.
    pub fn enqueue_defaults(&self) -> crate::queue::EnqueueDefaults {
        crate::queue::EnqueueDefaults { max_attempts: self.max_attempts, expire_after: self.expire_after.clone() }
    }

    /// The built-in defaults (what an empty config file gives).
    pub fn defaults() -> Config {
        Resolver::new(Vec::new())
            .resolve()
            .unwrap_or_else(|e| unreachable!("the built-in defaults are valid (unit-tested): {e}"))
    }

    /// The retention as a duration.
    pub fn retention(&self) -> Duration {
        days(self.retention_days)
    }

    /// How long tick ledger rows are kept.
    pub fn ledger_retention(&self) -> Duration {
        days(self.ledger_retention_days)
    }

    /// How long decisions are kept: their own retention, or their tick's if that is longer
    /// (`explain` needs a tick's decisions as long as the tick is in the ledger).
    pub fn decisions_retention(&self) -> Duration {
        days(self.decisions_retention_days).max(self.ledger_retention())
    }

    /// How long rule cooldown rows are kept: at least the cooldown itself, or a pruned row
    /// would let a rule act again too soon.
    pub fn cooldown_retention(&self) -> Duration {
        days(self.cooldown_retention_days).max(self.rules.cooldown)
    }
}

enum LayerOrigin {
    File { path: PathBuf, text: String },
    Env(String),
    Flag(&'static str),
}

impl LayerOrigin {
    fn source_for(&self, key: &str) -> Source {
        match self {
            LayerOrigin::File { path, text } => {
                let (line, column) = locate_key(text, key).unwrap_or((1, 1));
                Source::File { path: path.clone(), line, column }
            }
            LayerOrigin::Env(name) => Source::Env(name.clone()),
            LayerOrigin::Flag(name) => Source::Flag((*name).to_string()),
        }
    }
}

fn read_file(path: &Path, required: bool) -> Result<Option<(PathBuf, String)>, ConfigError> {
    match crate::input::read_text_capped(path, crate::input::MAX_CONFIG_BYTES, "a config file") {
        Ok(text) => Ok(Some((path.to_path_buf(), text))),
        Err(e) if e.is_not_found() && !required => Ok(None),
        Err(e) => Err(ConfigError::File { path: path.to_path_buf(), message: e.to_string() }),
    }
}

fn parse_file(path: &Path, text: &str) -> Result<Layer, ConfigError> {
    if text.trim().is_empty() {
        return Ok(Layer::default());
    }
    serde_yaml::from_str::<Layer>(text).map_err(|e| {
        let message = e.to_string();
        match e.location() {
            Some(loc) => ConfigError::Value {
                source_: Source::File { path: path.to_path_buf(), line: loc.line(), column: loc.column() },
                message: strip_location(&message),
            },
            None => ConfigError::File { path: path.to_path_buf(), message },
        }
    })
}

/// serde_yaml appends " at line L column C"; the source already says where.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// The line and column of a top-level `key:` in YAML text (1-based), pointing at the value.
fn locate_key(text: &str, key: &str) -> Option<(usize, usize)> {
    text.lines().enumerate().find_map(|(i, line)| {
        let rest = line.strip_prefix(key)?;
        let after = rest.trim_start();
        let colon = after.strip_prefix(':')?;
        let value_col = line.len() - colon.trim_start().len() + 1;
        Some((i + 1, value_col))
    })
}

/// Folds the layers in order, remembering where each value came from.
struct Resolver {
    layers: Vec<(Layer, LayerOrigin)>,
}

macro_rules! pick {
    ($self:ident, $field:ident, $default:expr) => {{
        let mut value = $default;
        let mut source = Source::Default;
        for (layer, origin) in &$self.layers {
            if let Some(v) = &layer.$field {
                value = v.clone();
                source = origin.source_for(stringify!($field));
            }
        }
        (value, source)
    }};
}

impl Resolver {
    fn new(layers: Vec<(Layer, LayerOrigin)>) -> Self {
        Resolver { layers }
    }

    fn resolve(self) -> Result<Config, ConfigError> {
        let (database_url, src) = pick!(self, database_url, DEFAULT_DATABASE_URL.to_string());
        check(!database_url.trim().is_empty(), &src, "database_url must not be empty")?;

        let tick_interval = seconds(pick!(self, tick_interval_seconds, 5.0), "tick_interval_seconds", true)?;
        let max_tick = seconds(pick!(self, max_tick_seconds, 20.0), "max_tick_seconds", false)?;
        let (backoff_base_s, base_src) = pick!(self, backoff_base_seconds, 10.0);
        let backoff_base = seconds((backoff_base_s, base_src), "backoff_base_seconds", true)?;
        let (backoff_max_s, max_src) = pick!(self, backoff_max_seconds, 3600.0);
        let backoff_max = seconds((backoff_max_s, max_src.clone()), "backoff_max_seconds", true)?;
        check(
            backoff_max >= backoff_base,
            &max_src,
            &format!("backoff_max_seconds ({backoff_max_s}) must be at least backoff_base_seconds ({backoff_base_s})"),
        )?;
        let (hb_s, hb_src) = pick!(self, heartbeat_seconds, 5.0);
        let heartbeat = seconds((hb_s, hb_src), "heartbeat_seconds", false)?;
        let (ttl_s, ttl_src) = pick!(self, lease_ttl_seconds, 30.0);
        let lease_ttl = seconds((ttl_s, ttl_src.clone()), "lease_ttl_seconds", false)?;
        check(
            lease_ttl > heartbeat,
            &ttl_src,
            &format!(
                "lease_ttl_seconds ({ttl_s}) must be longer than heartbeat_seconds ({hb_s}), or the lease lapses between renewals"
            ),
        )?;
        let action_timeout = seconds(pick!(self, action_timeout_seconds, 60.0), "action_timeout_seconds", false)?;

        let max_actions_per_tick =
            range(pick!(self, max_actions_per_tick, 1000), "max_actions_per_tick", 1, 1_000_000)?;
        let dispatch_concurrency = range(pick!(self, dispatch_concurrency, 4), "dispatch_concurrency", 1, 1024)?;
        let (window, window_src) = pick!(self, max_unrecorded, default_max_unrecorded(dispatch_concurrency));
        let max_unrecorded = range((window, window_src.clone()), "max_unrecorded", 1, 65_536)?;
        check(
            max_unrecorded >= dispatch_concurrency,
            &window_src,
            &format!(
                "max_unrecorded ({max_unrecorded}) must be at least dispatch_concurrency ({dispatch_concurrency}): \
                 every running attempt is one not yet recorded"
            ),
        )?;
        let max_attempts = range(pick!(self, max_attempts, 3), "max_attempts", 1, 1000)?;
        let retention_days = range(pick!(self, retention_days, 7), "retention_days", 1, 36_500)?;
        let ledger_retention_days = range(pick!(self, ledger_retention_days, 14), "ledger_retention_days", 1, 36_500)?;
        let decisions_retention_days =
            range(pick!(self, decisions_retention_days, 14), "decisions_retention_days", 1, 36_500)?;
        let cooldown_retention_days =
            range(pick!(self, cooldown_retention_days, 7), "cooldown_retention_days", 1, 36_500)?;

        let (lease_name, src) = pick!(self, lease_name, "orchestrator".to_string());
        check(
            !lease_name.is_empty() && lease_name.len() <= 200 && !lease_name.chars().any(char::is_control),
            &src,
            "lease_name must be 1 to 200 printable characters",
        )?;
        let (rules_dir, src) = pick!(self, rules_dir, PathBuf::from("rules"));
        check(!rules_dir.as_os_str().is_empty(), &src, "rules_dir must not be empty")?;
        let (artifacts_dir, src) = pick!(self, artifacts_dir, PathBuf::from("artifacts"));
        check(!artifacts_dir.as_os_str().is_empty(), &src, "artifacts_dir must not be empty")?;
        let (sync, src) = pick!(self, sqlite_synchronous, "full".to_string());
        let sqlite_synchronous_full = match sync.to_ascii_lowercase().as_str() {
            "full" => true,
            "normal" => false,
            other => {
                return Err(ConfigError::Value {
                    source_: src,
                    message: format!("sqlite_synchronous must be 'full' or 'normal', not '{other}'"),
                });
            }
        };
        let http = self.resolve_http()?;
        let liveness = self.resolve_liveness()?;

        let rules = self.rules()?;

        let (expire, src) = pick!(self, expire_after, BTreeMap::new());
        let mut expire_after = BTreeMap::new();
        for (action_type, v) in expire {
            let bad = |why: String| ConfigError::Value {
                source_: src.clone(),
                message: format!("expire_after.{action_type} {why}"),
            };
            crate::queue::validate_type(&action_type).map_err(|e| bad(format!("is not an action type: {e}")))?;
            let d = match &v {
                serde_yaml::Value::Number(n) => {
                    let secs = n.as_f64().ok_or_else(|| bad("must be a number of seconds".into()))?;
                    seconds((secs, src.clone()), &format!("expire_after.{action_type}"), false)?
                }
                serde_yaml::Value::String(t) => parse_duration(t).map_err(bad)?,
                _ => return Err(bad("must be seconds or a duration like 2h".into())),
            };
            if d.is_zero() || d.as_secs_f64() > MAX_SECONDS {
                return Err(bad("must be more than 0 and at most one year".into()));
            }
            expire_after.insert(action_type, d);
        }
        let (proof_mode, src) = pick!(self, proof_mode, "flag".to_string());
        let proof_enforced = match proof_mode.to_ascii_lowercase().as_str() {
            "flag" => false,
            "enforced" => true,
            other => {
                return Err(ConfigError::Value {
                    source_: src,
                    message: format!("proof_mode must be 'flag' or 'enforced', not '{other}'"),
                });
            }
        };

        Ok(Config {
            database_url,
            tick_interval,
            max_actions_per_tick,
            max_tick,
            dispatch_concurrency,
            max_unrecorded,
            max_attempts,
            backoff_base,
            backoff_max,
            lease_name,
            lease_ttl,
            heartbeat,
            action_timeout,
            rules_dir,
            artifacts_dir,
            retention_days,
            ledger_retention_days,
            decisions_retention_days,
            cooldown_retention_days,
            sqlite_synchronous_full,
            rules,
            expire_after,
            proof_enforced,
            adapters: AdaptersConfig::default(),
            http,
            liveness,
            admin_tokens: AdminTokens::default(),
        })
    }

    /// `liveness:` sub-keys, folded one by one like `http:`.
    fn resolve_liveness(&self) -> Result<crate::health::StaleThresholds, ConfigError> {
        let d = crate::health::StaleThresholds::default();
        let mut degraded = (d.degraded.as_secs_f64(), Source::Default);
        let mut unhealthy = (d.unhealthy.as_secs_f64(), Source::Default);
        for (layer, origin) in &self.layers {
            let Some(l) = &layer.liveness else { continue };
            if let Some(v) = l.stale_degraded_seconds {
                degraded = (v, origin.source_for("liveness"));
            }
            if let Some(v) = l.stale_unhealthy_seconds {
                unhealthy = (v, origin.source_for("liveness"));
            }
        }
        let unhealthy_src = unhealthy.1.clone();
        let degraded = seconds(degraded, "liveness.stale_degraded_seconds", false)?;
        let unhealthy = seconds(unhealthy, "liveness.stale_unhealthy_seconds", false)?;
        check(
            unhealthy >= degraded,
            &unhealthy_src,
            "liveness.stale_unhealthy_seconds must be at least liveness.stale_degraded_seconds",
        )?;
        Ok(crate::health::StaleThresholds { degraded, unhealthy })
    }

    /// `http:` sub-keys are folded one by one, so a layer that sets only `listen` keeps the
    /// file's others.
    fn resolve_http(&self) -> Result<HttpConfig, ConfigError> {
        let mut listen = (DEFAULT_HTTP_LISTEN.to_string(), Source::Default);
        let mut header_timeout = (DEFAULT_HEADER_READ_TIMEOUT_SECONDS, Source::Default);
        let mut body_timeout = (DEFAULT_BODY_READ_TIMEOUT_SECONDS, Source::Default);
        let mut max_connections = (DEFAULT_MAX_CONNECTIONS, Source::Default);
        for (layer, origin) in &self.layers {
            let Some(http) = &layer.http else { continue };
            if let Some(v) = &http.listen {
                listen = (v.clone(), origin.source_for("http"));
            }
            if http.stale_tick_intervals.is_some() {
                return Err(ConfigError::Value {
                    source_: origin.source_for("http"),
                    message: "http.stale_tick_intervals is replaced by liveness.stale_degraded_seconds and \
                              liveness.stale_unhealthy_seconds (60 and 300 by default, stretched to 2 and 10 tick \
                              intervals when those are longer); remove it"
                        .to_string(),
                });
            }
            if let Some(v) = http.header_read_timeout_seconds {
                header_timeout = (v, origin.source_for("http"));
            }
            if let Some(v) = http.body_read_timeout_seconds {
                body_timeout = (v, origin.source_for("http"));
            }
            if let Some(v) = http.max_connections {
                max_connections = (v, origin.source_for("http"));
            }
        }
        let addr = listen.0.trim().parse::<std::net::SocketAddr>().map_err(|e| ConfigError::Value {
            source_: listen.1.clone(),
            message: format!("http.listen '{}' is not an address like 127.0.0.1:9464 ({e})", listen.0),
        })?;
        let header_read_timeout = seconds(header_timeout, "http.header_read_timeout_seconds", false)?;
        let body_read_timeout = seconds(body_timeout, "http.body_read_timeout_seconds", false)?;
        let max_connections = range(max_connections, "http.max_connections", 1, 65_536)?;
        Ok(HttpConfig { listen: addr, header_read_timeout, body_read_timeout, max_connections })
    }

    /// The `rules:` section: later layers override earlier ones key by key.
    fn rules(&self) -> Result<RulesConfig, ConfigError> {
        let mut merged = RulesLayer::default();
        let mut health = HealthLayer::default();
        let mut source = Source::Default;
        for (layer, origin) in &self.layers {
            let Some(r) = &layer.rules else { continue };
            source = origin.source_for("rules");
            merged.params.extend(r.params.iter().map(|(k, v)| (k.clone(), v.clone())));
            macro_rules! over {
                ($($f:ident),+) => {$( if r.$f.is_some() { merged.$f = r.$f.clone(); } )+};
            }
            over!(max_decisions_per_tick, cooldown_seconds, budget_ms, max_operations, max_call_depth);
            over!(max_string_size, max_array_size, max_map_size, rebalance_age_seconds);
            over!(alert_action_type);
            if let Some(h) = &r.health {
                macro_rules! over_h {
                    ($($f:ident),+) => {$( if h.$f.is_some() { health.$f = h.$f; } )+};
                }
                over_h!(saturated_pending, old_pending_seconds, healthy_at, degraded_at);
            }
        }
        let d = RulesConfig::default();
        let bad = |message: String| ConfigError::Value { source_: source.clone(), message };
        for (rule, p) in &merged.params {
            if !p.is_mapping() && !p.is_null() {
                return Err(bad(format!("rules.params.{rule} must be a map of settings")));
            }
        }
        let params = merged
            .params
            .into_iter()
            .map(|(k, v)| {
                serde_json::to_value(&v).map(|j| (k.clone(), j)).map_err(|e| bad(format!("rules.params.{k}: {e}")))
            })
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        let within = |v: Option<u64>, key: &str, default: u64, min: u64, max: u64| -> Result<u64, ConfigError> {
            let v = v.unwrap_or(default);
            if v < min || v > max {
                return Err(bad(format!("rules.{key} must be between {min} and {max}, got {v}")));
            }
            Ok(v)
        };
        let secs = |v: Option<f64>, key: &str, default: Duration| -> Result<Duration, ConfigError> {
            match v {
                None => Ok(default),
                Some(v) => seconds((v, source.clone()), &format!("rules.{key}"), true),
            }
        };
        let healthy_at = within(health.healthy_at, "health.healthy_at", d.health.healthy_at, 1, 100)?;
        let degraded_at = within(health.degraded_at, "health.degraded_at", d.health.degraded_at, 0, 100)?;
        if degraded_at > healthy_at {
            return Err(bad(format!(
                "rules.health.degraded_at ({degraded_at}) must not be above rules.health.healthy_at ({healthy_at})"
            )));
        }
        if let Some(t) = &merged.alert_action_type {
            crate::queue::validate_type(t).map_err(|e| bad(format!("rules.alert_action_type: {e}")))?;
        }
        Ok(RulesConfig {
            alert_action_type: merged.alert_action_type,
            params,
            max_decisions_per_tick: within(merged.max_decisions_per_tick, "max_decisions_per_tick", 10, 1, 10_000)?
                as u32,
            cooldown: secs(merged.cooldown_seconds, "cooldown_seconds", d.cooldown)?,
            budget: Duration::from_millis(within(merged.budget_ms, "budget_ms", 50, 1, 60_000)?),
            max_operations: within(merged.max_operations, "max_operations", d.max_operations, 1_000, 1_000_000_000)?,
            max_call_depth: within(merged.max_call_depth, "max_call_depth", d.max_call_depth as u64, 1, 1_000)?
                as usize,
            max_string_size: within(merged.max_string_size, "max_string_size", d.max_string_size as u64, 64, 1 << 30)?
                as usize,
            max_array_size: within(merged.max_array_size, "max_array_size", d.max_array_size as u64, 16, 1 << 30)?
                as usize,
            max_map_size: within(merged.max_map_size, "max_map_size", d.max_map_size as u64, 16, 1 << 30)? as usize,
            rebalance_age: secs(merged.rebalance_age_seconds, "rebalance_age_seconds", d.rebalance_age)?,
            health: HealthThresholds {
                saturated_pending: within(
                    health.saturated_pending,
                    "health.saturated_pending",
                    d.health.saturated_pending,
                    0,
                    u64::from(u32::MAX),
                )?,
                old_pending: secs(health.old_pending_seconds, "health.old_pending_seconds", d.health.old_pending)?,
                healthy_at,
                degraded_at,
            },
        })
    }
}

/// The `rules:` section as written (every key optional, unknown keys refused).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesLayer {
    #[serde(default)]
    params: BTreeMap<String, serde_yaml::Value>,
    max_decisions_per_tick: Option<u64>,
    cooldown_seconds: Option<f64>,
    budget_ms: Option<u64>,
    max_operations: Option<u64>,
    max_call_depth: Option<u64>,
    max_string_size: Option<u64>,
    max_array_size: Option<u64>,
    max_map_size: Option<u64>,
    rebalance_age_seconds: Option<f64>,
    alert_action_type: Option<String>,
    health: Option<HealthLayer>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthLayer {
    saturated_pending: Option<u64>,
    old_pending_seconds: Option<f64>,
    healthy_at: Option<u64>,
    degraded_at: Option<u64>,
}

/// The DECIDE stage's settings (`rules:` in the config file).
#[derive(Clone, Debug, PartialEq)]
pub struct RulesConfig {
    /// `rules.params.<rule>`: each rule's settings, seen by the rule as `params`.
    pub params: BTreeMap<String, serde_json::Value>,
    /// Decisions applied per tick at most, after dedupe (the rest: `suppressed:cap`).
    pub max_decisions_per_tick: u32,
    /// A (rule, kind, target) applied once is suppressed for this long (`suppressed:cooldown`).
    pub cooldown: Duration,
    /// Wall-clock budget of one rule's evaluation.
    pub budget: Duration,
    pub max_operations: u64,
    pub max_call_depth: usize,
    pub max_string_size: usize,
    pub max_array_size: usize,
    pub max_map_size: usize,
    /// `rebalance` boosts waiting actions older than this by one priority step. It defers
    /// nothing: a rule that wants work later names it (`postpone`).
    pub rebalance_age: Duration,
    /// When set, every applied `alert` is also enqueued as an action of this type (payload
    /// `{severity, message, rule, tick_id}`), for the adapter that handles it to deliver.
    pub alert_action_type: Option<String>,
    pub health: HealthThresholds,
}

/// Thresholds of the snapshot's health score.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthThresholds {
    /// The queue is saturated above this many pending actions (-20).
    pub saturated_pending: u64,
    /// The oldest pending action is too old past this (-15).
    pub old_pending: Duration,
    /// `healthy` at this score or more.
    pub healthy_at: u64,
    /// `degraded` at this score or more (below `healthy_at`); `critical` below.
    pub degraded_at: u64,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            params: BTreeMap::new(),
            max_decisions_per_tick: 10,
            cooldown: Duration::from_secs(300),
            budget: Duration::from_millis(50),
            max_operations: 1_000_000,
            max_call_depth: 64,
            max_string_size: 65_536,
            max_array_size: 10_000,
            max_map_size: 10_000,
            rebalance_age: Duration::from_secs(600),
            alert_action_type: None,
            health: HealthThresholds {
                saturated_pending: 50,
                old_pending: Duration::from_secs(1800),
                healthy_at: 80,
                degraded_at: 50,
            },
        }
    }
}

fn days(n: u32) -> Duration {
    Duration::from_secs(u64::from(n) * 86_400)
}

/// `max_unrecorded` when it is not set: four times `dispatch_concurrency`, so that one commit
/// records several rounds of attempts.
pub fn default_max_unrecorded(dispatch_concurrency: u32) -> u32 {
    dispatch_concurrency.saturating_mul(4).min(65_536)
}

fn check(ok: bool, source: &Source, message: &str) -> Result<(), ConfigError> {
    if ok { Ok(()) } else { Err(ConfigError::Value { source_: source.clone(), message: message.to_string() }) }
}

fn seconds((value, source): (f64, Source), key: &str, zero_ok: bool) -> Result<Duration, ConfigError> {
    let bad = |why: String| ConfigError::Value { source_: source.clone(), message: format!("{key} {why}") };
    if !value.is_finite() {
        return Err(bad(format!("must be a finite number of seconds, not {value}")));
    }
    if value < 0.0 {
        return Err(bad(format!("must not be negative (got {value})")));
    }
    if value == 0.0 && !zero_ok {
        return Err(bad("must be greater than 0".to_string()));
    }
    if value > MAX_SECONDS {
        return Err(bad(format!("must be at most {MAX_SECONDS} seconds (one year), got {value}")));
    }
    Ok(Duration::from_secs_f64(value))
}

fn range((value, source): (u32, Source), key: &str, min: u32, max: u32) -> Result<u32, ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::Value {
            source_: source,
            message: format!("{key} must be between {min} and {max}, got {value}"),
        });
    }
    Ok(value)
}

/// Every key with its default, for `orchestrator.example.yaml` drift checks.
pub fn known_keys() -> BTreeMap<&'static str, bool> {
    KEYS.iter().copied().collect()
}

/// Parses a human duration such as `30s`, `5m`, `7d` or `1h30m`, at most
/// [`model::MAX_DURATION`] (1,000 years), so that adding it to or taking it from any date the
/// program meets cannot overflow.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let d = match t.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(t)
            .map_err(|e| format!("'{}' is not a duration like 30s, 5m or 7d ({e})", t.escape_debug()))?,
    };
    if d > crate::model::MAX_DURATION {
        return Err(format!(
            "'{}' is longer than the maximum of {} days (1,000 years)",
            t.escape_debug(),
            crate::model::MAX_DURATION.as_secs() / 86_400
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: Option<&str>, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.yaml");
        if let Some(y) = yaml {
            std::fs::write(&path, y).unwrap();
        }
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let file = yaml.map(|_| path.as_path());
        Config::load_from(Inputs { config_file: file, env: &lookup, overrides: Overrides::default() })
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = load(None, &[]).unwrap();
        assert_eq!(c.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(c.tick_interval, Duration::from_secs(5));
        assert_eq!(c.max_actions_per_tick, 1000);
        assert!(c.expire_after.is_empty(), "no deadlines unless configured");
        assert!(!c.proof_enforced);
        assert_eq!(c.max_tick, Duration::from_secs(20));
        assert_eq!(c.max_attempts, 3);
        assert_eq!(c.backoff_base, Duration::from_secs(10));
        assert_eq!(c.backoff_max, Duration::from_secs(3600));
        assert_eq!(c.lease_ttl, Duration::from_secs(30));
        assert_eq!(c.heartbeat, Duration::from_secs(5));
        assert_eq!(c.retention_days, 7);
        assert_eq!((c.ledger_retention_days, c.decisions_retention_days, c.cooldown_retention_days), (14, 14, 7));
        assert_eq!((c.dispatch_concurrency, c.max_unrecorded), (4, 16));
        assert!(c.sqlite_synchronous_full);
    }

    #[test]
    fn env_beats_file_and_flags_beat_env() {
        let c =
            load(Some("max_attempts: 5\ntick_interval_seconds: 2\n"), &[("ORCHESTRATOR_MAX_ATTEMPTS", "7")]).unwrap();
        assert_eq!(c.max_attempts, 7);
        assert_eq!(c.tick_interval, Duration::from_secs(2));
        let lookup = |k: &str| (k == "ORCHESTRATOR_TICK_INTERVAL_SECONDS").then(|| "9".to_string());
        let c = Config::load_from(Inputs {
            config_file: None,
            env: &lookup,
            overrides: Overrides { tick_interval_seconds: Some(0.0), ..Default::default() },
        })
        .unwrap();
        assert_eq!(c.tick_interval, Duration::ZERO, "tick_interval_seconds 0 is allowed");
    }

    #[test]
    fn unknown_key_names_key_line_and_column() {
        let e = load(Some("max_attempts: 3\nmax_atempts: 4\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("o.yaml:2:1"), "{e}");
        assert!(e.contains("unknown field `max_atempts`"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = load(Some("\n\nmax_attempts: lots\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("o.yaml:3:"), "{e}");
        assert!(e.contains("max_attempts"), "{e}");
    }

    #[test]
    fn impossible_values_are_refused_with_their_line() {
        let e = load(Some("heartbeat_seconds: 10\nlease_ttl_seconds: 10\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("o.yaml:2:20") && e.contains("must be longer than heartbeat_seconds"), "{e}");
        let e = load(Some("max_tick_seconds: -1\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("max_tick_seconds must not be negative"), "{e}");
        let e = load(Some("backoff_max_seconds: 1e300\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("at most"), "{e}");
        let e = load(Some("max_attempts: -3\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("max_attempts"), "{e}");
        let e = load(Some("dispatch_concurrency: 8\nmax_unrecorded: 4\n"), &[]).unwrap_err().to_string();
        assert!(
            e.contains("o.yaml:2:17") && e.contains("max_unrecorded (4) must be at least dispatch_concurrency (8)"),
            "{e}"
        );
        let c = load(Some("dispatch_concurrency: 8\n"), &[]).unwrap();
        assert_eq!(c.max_unrecorded, 32, "the window defaults to 4 x dispatch_concurrency");
    }

    #[test]
    fn env_errors_name_the_variable() {
        let e = load(None, &[("ORCHESTRATOR_MAX_ATTEMPTS", "five")]).unwrap_err().to_string();
        assert!(e.contains("ORCHESTRATOR_MAX_ATTEMPTS") && e.contains("max_attempts"), "{e}");
        let e = load(None, &[("ORCHESTRATOR_HEARTBEAT_SECONDS", "0")]).unwrap_err().to_string();
        assert!(e.contains("ORCHESTRATOR_HEARTBEAT_SECONDS") && e.contains("greater than 0"), "{e}");
    }

    #[test]
    fn expire_after_and_proof_mode() {
        let c = load(Some("expire_after: {POST_SOCIAL: 2h, NOOP: 90}\nproof_mode: enforced\n"), &[]).unwrap();
        assert_eq!(c.expire_after["POST_SOCIAL"], Duration::from_secs(7200));
        assert_eq!(c.expire_after["NOOP"], Duration::from_secs(90));
        assert!(c.proof_enforced);
        let c = load(None, &[("ORCHESTRATOR_PROOF_MODE", "enforced")]).unwrap();
        assert!(c.proof_enforced, "the environment enforces too");
        let e = load(None, &[("ORCHESTRATOR_PROOF_MODE", "sometimes")]).unwrap_err().to_string();
        assert!(e.contains("ORCHESTRATOR_PROOF_MODE") && e.contains("'flag' or 'enforced'"), "{e}");
        let e = load(Some("expire_after: {NOOP: -1}\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("expire_after.NOOP"), "{e}");
        let e = load(Some("expire_after: {'bad type': 1h}\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("expire_after.bad type"), "{e}");
        let c = Config::load_from(Inputs {
            config_file: None,
            env: &|_: &str| None,
            overrides: Overrides { proof_enforced: true, ..Default::default() },
        })
        .unwrap();
        assert!(c.proof_enforced, "--proof-enforced");
    }

    #[test]
    fn database_url_env_is_honoured() {
        let c = load(None, &[("DATABASE_URL", "postgres://x@h/db")]).unwrap();
        assert_eq!(c.database_url, "postgres://x@h/db");
        let c = load(None, &[("DATABASE_URL", "a.db"), ("ORCHESTRATOR_DATABASE_URL", "b.db")]).unwrap();
        assert_eq!(c.database_url, "b.db");
    }

    #[test]
    fn the_example_file_documents_every_key_with_its_default() {
        let text = include_str!("../orchestrator.example.yaml");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("example.yaml");
        std::fs::write(&path, text).unwrap();
        let none = |_: &str| None;
        let c = Config::load_from(Inputs { config_file: Some(&path), env: &none, overrides: Overrides::default() })
            .unwrap();
        assert_eq!(c, Config::defaults(), "the example's values are the defaults");
        for key in known_keys().keys() {
            assert!(locate_key(text, key).is_some(), "orchestrator.example.yaml lacks {key}");
        }
    }

    const ADAPTERS: &str = "\
adapters:
  webhook:
    allow_raw_urls: true
    targets:
      hook:
        url: https://example.com/hook
        method: put
        headers: {X-Team: ops}
        secret_env: HOOK_SECRET
        timeout_seconds: 5
      unsigned:
        url: http://127.0.0.1:9/x
  command:
    timeout_seconds: 12
    allow:
      greet:
        program: /bin/echo
        args: [\"hello\", \"{name}\"]
        nonzero_exit: permanent
        env: {LANG: C}
  social:
    platforms: {mastodon: hook}
  alert:
    target: unsigned
";

    #[test]
    fn adapters_section_is_read_and_secrets_come_from_the_environment() {
        let c = load(Some(ADAPTERS), &[("HOOK_SECRET", "s3cret")]).unwrap();
        let a = &c.adapters;
        let hook = &a.webhook.targets["hook"];
        assert_eq!((hook.method.as_str(), hook.timeout), ("PUT", Some(Duration::from_secs(5))));
        assert_eq!(hook.secret.as_ref().map(|s| s.expose()), Some("s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"), "Debug never shows a secret");
        assert_eq!(a.webhook.targets["unsigned"].method, "POST");
        assert!(a.webhook.allow_raw_urls);
        assert_eq!(a.command.timeout, Duration::from_secs(12));
        let greet = &a.command.allow["greet"];
        assert_eq!(greet.args, vec!["hello", "{name}"]);
        assert_eq!(greet.nonzero_exit, adapters::NonzeroExit::Permanent);
        assert_eq!(a.social.platforms["mastodon"], "hook");
        assert_eq!(a.social.timeout, Duration::from_secs(30), "the per-type default");
        assert_eq!(a.alert.target.as_deref(), Some("unsigned"));
        let unset = load(Some(ADAPTERS), &[]).unwrap();
        assert!(unset.adapters.webhook.targets["hook"].secret.is_none(), "an unset variable is not an error");
    }

    #[test]
    fn adapter_errors_name_the_full_key_and_its_line() {
        let cases = [
            ("url: https://example.com/hook", "url: ftp://example.com", "adapters.webhook.targets.hook.url", 6),
            ("method: put", "method: YELL", "adapters.webhook.targets.hook.method", 7),
            ("platforms: {mastodon: hook}", "platforms: {mastodon: nope}", "adapters.social.platforms.mastodon", 22),
            ("target: unsigned", "target: ghost", "adapters.alert.target", 24),
            ("program: /bin/echo", "program: echo", "adapters.command.allow.greet.program", 17),
            ("timeout_seconds: 12", "timeout_seconds: -1", "adapters.command.timeout_seconds", 14),
        ];
        for (good, bad, key, line) in cases {
            let e = load(Some(&ADAPTERS.replace(good, bad)), &[]).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
            assert!(e.contains(&format!("o.yaml:{line}:")), "{key} at line {line}: {e}");
        }
        let e = load(Some(&ADAPTERS.replace("secret_env:", "secret_envv:")), &[]).unwrap_err().to_string();
        assert!(e.contains("o.yaml:9:") && e.contains("unknown field `secret_envv`"), "{e}");
        let e = load(Some(&ADAPTERS.replace("  social:", "  socal:")), &[]).unwrap_err().to_string();
        assert!(e.contains("unknown field `socal`"), "{e}");
    }

    #[test]
    fn http_settings_and_admin_tokens() {
        let c = load(Some("http:\n  listen: 127.0.0.1:9999\n"), &[]).unwrap();
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:9999");
        assert!(c.admin_tokens.is_empty(), "no token: admin API disabled");
        let e = load(Some("http:\n  listen: nowhere\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("o.yaml:1:") && e.contains("http.listen 'nowhere'"), "{e}");
        let e = load(Some("http:\n  lisen: x\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("unknown field `lisen`"), "{e}");
        let c = load(
            Some("liveness:\n  stale_degraded_seconds: 5\n"),
            &[("ORCHESTRATOR_LIVENESS", "{stale_unhealthy_seconds: 50}")],
        )
        .unwrap();
        assert_eq!(
            (c.liveness.degraded, c.liveness.unhealthy),
            (Duration::from_secs(5), Duration::from_secs(50)),
            "folded per sub-key"
        );
        // The old single threshold is refused with an error that names its replacement.
        let e = load(Some("http:\n  stale_tick_intervals: 5\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("o.yaml:1:") && e.contains("liveness.stale_unhealthy_seconds"), "{e}");
        let e = load(Some("liveness: {stale_degraded_seconds: 100, stale_unhealthy_seconds: 50}\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("at least liveness.stale_degraded_seconds"), "{e}");
        let c = load(None, &[(ADMIN_TOKEN_ENV, "alice:0123456789abcdef, fedcba9876543210fedc")]).unwrap();
        let names: Vec<&str> = c.admin_tokens.entries().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["alice", "admin"]);
        assert!(!format!("{c:?}").contains("0123456789abcdef"), "Debug never shows a token");
        let e = load(None, &[(ADMIN_TOKEN_ENV, "short")]).unwrap_err().to_string();
        assert!(e.contains(ADMIN_TOKEN_ENV) && e.contains("at least 16"), "{e}");
    }

    #[test]
    fn rules_section_parses_and_refuses_unknown_keys() {
        let yaml = "rules:\n  max_decisions_per_tick: 4\n  params:\n    breaker: {hold_ticks: 5}\n  health:\n    healthy_at: 90\n";
        let c = load(Some(yaml), &[]).unwrap();
        assert_eq!(c.rules.max_decisions_per_tick, 4);
        assert_eq!(c.rules.params["breaker"], serde_json::json!({"hold_ticks": 5}));
        assert_eq!((c.rules.health.healthy_at, c.rules.health.degraded_at), (90, 50));
        assert_eq!(c.rules.cooldown, Duration::from_secs(300));
        let e = load(Some("rules:\n  cooldown: 5\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("o.yaml:2:") && e.contains("unknown field `cooldown`"), "{e}");
        let e = load(Some("rules:\n  health: {healthy_at: 40, degraded_at: 60}\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("o.yaml:1:") && e.contains("rules.health.degraded_at (60)"), "{e}");
        let e = load(None, &[("ORCHESTRATOR_RULES", "{budget_ms: 0}")]).unwrap_err().to_string();
        assert!(e.contains("ORCHESTRATOR_RULES") && e.contains("rules.budget_ms"), "{e}");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86_400));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert!(parse_duration("soon").unwrap_err().contains("not a duration"));
    }
}
