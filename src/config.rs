//! Configuration: defaults, then `orchestrator.yaml`, then `ORCHESTRATOR_<KEY>` environment
//! variables, then command-line flags, folded into one validated [`Config`].
//!
//! Each key is declared once: the top level in [`KEYS`], a component's section with the
//! component (`rules.*` in `rules`, `rules.health.*` and `liveness.*` in `health`, `limits.*`
//! in `limits`, an adapter's in its own `config.rs`; `http.*` and `workers.*` in this folder's
//! `http.rs` and `workers.rs`, as their components read the whole `Config`): name, default,
//! one line of doc, and how its value is checked and stored. This file assembles them.
//! Everything else (the layers, the key table in `docs/operations.md`, the check of
//! `orchestrator.example.yaml`) comes from the declarations through [`key`]. Every error names the key and where its value came from: the
//! file with line and column, the environment variable, or the flag. Unknown keys are errors,
//! in the environment too: an `ORCHESTRATOR_*` variable that sets nothing is refused, and the
//! earlier systems' names are translated or refused ([`environment`]).
//! Nothing else in the crate reads the environment or the config file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod approvals;
pub mod environment;
mod http;
mod workers;

pub use crate::adapters::AdaptersConfig;
use crate::health::{LIVENESS_KEYS, WORKLOAD_KEYS};
use crate::limits::{LIMIT_KEYS, LimitSpec};
use crate::rules::{RULES_KEYS, RulesConfig};
use crate::schedules::{SCHEDULE_KEYS, ScheduleSpec};
use crate::telemetry::{TRACING_KEYS, TracingConfig};
pub use approvals::{APPROVALS_KEYS, ApprovalsConfig};
pub use environment::Acting;
pub use http::{ADMIN_TOKEN_ENV, AdminTokens, DEFAULT_HTTP_LISTEN, HTTP_KEYS, HttpConfig, MIN_ADMIN_TOKEN_LEN};
pub use workers::{WORKERS_KEYS, WorkersConfig};
// The error every key reports and the duration syntax, declared with the key machinery in
// `settings`; re-exported as the config's own, which they are to its callers.
use crate::settings::MAX_SECONDS;
use crate::settings::key::KeyDefault::{Computed, Value};
use crate::settings::key::{self, Key, KeyInfo, Origin, Raw, Retired, key};
pub use crate::settings::{ConfigError, Source, parse_duration};

/// The file read when `--config` / `ORCHESTRATOR_CONFIG` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "orchestrator.yaml";
/// The SQLite database used when no URL is configured.
pub const DEFAULT_DATABASE_URL: &str = "sqlite:orchestrator.db";

/// The validated settings every command runs with.
///
/// `Config::default()` is the blank the keys are applied to, not a valid configuration: what an
/// empty file gives is [`Config::defaults`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    pub database_url: String,
    /// `run`, `worker` and `serve` wait this long at start for a database that is not there
    /// yet, then exit `UNAVAILABLE` (69).
    pub startup_timeout: Duration,
    pub tick_interval: Duration,
    pub max_actions_per_tick: u32,
    pub max_tick: Duration,
    pub dispatch_concurrency: u32,
    /// At most this many attempts are started and not yet durably recorded at once (at least
    /// `dispatch_concurrency`): what one crash can make run twice.
    pub max_unrecorded: u32,
    /// Whether the config or the environment set `max_unrecorded` (a worker's window follows its
    /// own `--concurrency` otherwise).
    pub max_unrecorded_given: bool,
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
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
    /// PostgreSQL: claimers wait on `LISTEN orchestrator_work` (off behind a transaction pooler).
    pub postgres_listen: bool,
    pub rules: RulesConfig,
    /// `expire_after`: per action type, the deadline a new action gets from its enqueue when it
    /// names none. Empty by default: no action expires unless asked to.
    pub expire_after: BTreeMap<String, Duration>,
    /// `limits:` (file only): each action type's limits. `None` when the file has no such
    /// section, so `run` leaves the limits table as it is; `Some` when it has one, even
    /// `limits: {}`.
    pub limits: Option<BTreeMap<String, LimitSpec>>,
    /// `schedules:` (file only): the named schedules the leader fires. `None` without the
    /// section (`run` leaves the schedules table as it is), `Some` with it, even `schedules: {}`.
    pub schedules: Option<BTreeMap<String, ScheduleSpec>>,
    /// `windows:` (file only): recurring maintenance windows by name, which `run` writes into
    /// the database at start (those of an earlier config it no longer names are ended).
    pub windows: BTreeMap<String, crate::windows::ConfigWindow>,
    /// Per partitioned limit, how many partition values are tracked; the values beyond share
    /// [`crate::limits::OVERFLOW_PARTITION`].
    pub limit_partitions: u32,
    /// `proof_mode: enforced`: every attempt runs in proof mode whatever the database flag
    /// says, and `proof off` is refused. `flag` (the default): the flag decides.
    pub proof_enforced: bool,
    /// The `adapters:` section (file only).
    pub adapters: AdaptersConfig,
    /// The HTTP server (`http:` in the file).
    pub http: HttpConfig,
    /// When the last tick's age makes liveness degraded, then unhealthy (`liveness:`).
    pub liveness: crate::health::StaleThresholds,
    /// Worker registration, heartbeat and shutdown (`workers:`).
    pub workers: WorkersConfig,
    /// Traces (`tracing:` and the `OTEL_*` variables): off unless an endpoint is given.
    pub tracing: TracingConfig,
    /// Which types wait for an approval, and for how long (`approvals:`).
    pub approvals: ApprovalsConfig,
    /// Admin API tokens from `ORCHESTRATOR_ADMIN_TOKEN` (never from the file); empty: the
    /// admin API is disabled.
    pub admin_tokens: AdminTokens,
    /// What this process may do, from the earlier systems' switches in the environment
    /// (`ORCHESTRATOR_ENABLED`, `ORCHESTRATOR_MODE`); every command acts unless one is set.
    pub acting: Acting,
    /// One line per earlier system's variable honoured, naming what to set instead: the CLI
    /// logs them at start.
    pub deprecations: Vec<String>,
}

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

/// The flags that set a key, as `(key, flag)`: the CLI's [`Overrides`] and the key table.
pub const FLAGS: &[(&str, &str)] = &[
    ("database_url", "--database-url"),
    ("tick_interval_seconds", "--interval"),
    ("proof_mode", "--proof-enforced"),
    ("http.listen", "--listen"),
];

/// Environment variables read besides `ORCHESTRATOR_<KEY>`, as `(key, variable)`; the
/// `ORCHESTRATOR_` one wins when both are set.
pub const ENV_ALIASES: &[(&str, &str)] = &[("database_url", "DATABASE_URL")];

impl Overrides {
    /// Each flag given, as `(key, value, flag)`.
    fn values(self) -> Vec<(&'static str, serde_yaml::Value, &'static str)> {
        let given = [
            self.database_url.map(serde_yaml::Value::String),
            self.tick_interval_seconds.map(|s| serde_yaml::Value::Number(s.into())),
            self.proof_enforced.then(|| serde_yaml::Value::String("enforced".into())),
            self.http_listen.map(serde_yaml::Value::String),
        ];
        FLAGS.iter().zip(given).filter_map(|(&(key, flag), value)| Some((key, value?, flag))).collect()
    }
}

/// Where to read from: the config file (if any) and the environment.
pub struct Inputs<'a> {
    /// An explicit file: it must exist. `None` reads `orchestrator.yaml` if present.
    pub config_file: Option<&'a Path>,
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// The names of every variable set, checked whole ([`environment::check`]): the process's
    /// for [`Config::load`]; a test passes its own, or none to check nothing.
    pub env_names: &'a [String],
    pub overrides: Overrides,
}

/// The `adapters:` section, as [`crate::adapters::Registry::from_config`] takes it.
impl AsRef<AdaptersConfig> for Config {
    fn as_ref(&self) -> &AdaptersConfig {
        &self.adapters
    }
}

impl Config {
    /// Loads from the process environment and the given file and flags.
    pub fn load(config_file: Option<&Path>, overrides: Overrides) -> Result<Config, ConfigError> {
        let env = |k: &str| std::env::var(k).ok();
        let names: Vec<String> = std::env::vars_os().map(|(k, _)| k.to_string_lossy().into_owned()).collect();
        Config::load_from(Inputs { config_file, env: &env, env_names: &names, overrides })
    }

    /// Loads from explicit inputs (tests pass their own environment).
    pub fn load_from(inputs: Inputs<'_>) -> Result<Config, ConfigError> {
        let keys = keys();
        let mut raw = Raw::default();
        let file = match inputs.config_file {
            Some(p) => read_file(p, true)?,
            None => read_file(Path::new(DEFAULT_CONFIG_FILE), false)?,
        };
        if let Some((path, text)) = &file {
            let layer = parse_file(path, text)?;
            raw.add(&keys, RETIRED, &layer, &Origin::File { path, text })?;
        }
        let earlier = environment::check(inputs.env_names, inputs.env, &keys)?;
        for (layer, name) in &earlier.layers {
            raw.add(&keys, RETIRED, layer, &Origin::Env(name.clone()))?;
        }
        raw.add_env(&keys, RETIRED, ENV_ALIASES, inputs.env)?;
        for (key, value, flag) in inputs.overrides.values() {
            raw.add(&keys, RETIRED, &key::nest(key, value), &Origin::Flag(flag))?;
        }
        let mut config = resolve(&raw, inputs.env)?;
        if let Some(text) = (inputs.env)(ADMIN_TOKEN_ENV) {
            config.admin_tokens = AdminTokens::parse(&text)
                .map_err(|message| ConfigError::Value { source_: Source::Env(ADMIN_TOKEN_ENV.to_string()), message })?;
        }
        config.acting = earlier.acting;
        config.deprecations = earlier.deprecations;
        Ok(config)
    }

    /// What an enqueue fills in from the config: `max_attempts` and `expire_after`.
    pub fn enqueue_defaults(&self) -> crate::queue::EnqueueDefaults {
        crate::queue::EnqueueDefaults {
            max_attempts: self.max_attempts,
            expire_after: self.expire_after.clone(),
            approval_types: self.approvals.types.clone(),
            approval_expiry: Some(self.approvals.expire_after),
        }
    }

    /// One warning line per action type in `limits:` that no type of `served` (the adapter
    /// registry's, [`crate::adapters::Registry::types`]) serves, for `run` to log at its start.
    /// Such a limit is not an error: it holds wherever a worker with an adapter for that type
    /// runs, and another host's may.
    pub fn unserved_limit_warnings<'s>(&self, served: impl IntoIterator<Item = &'s str>) -> Vec<String> {
        let served: std::collections::BTreeSet<&str> = served.into_iter().collect();
        self.limits
            .iter()
            .flat_map(BTreeMap::keys)
            .filter(|t| !served.contains(t.as_str()))
            .map(|t| {
                format!(
                    "limits.{t}: no adapter serves action type {t}; its limit applies only if a worker \
                     with such an adapter runs"
                )
            })
            .collect()
    }

    /// The built-in defaults (what an empty config file gives).
    pub fn defaults() -> Config {
        resolve(&Raw::default(), &|_| None)
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

/// Every key: [`KEYS`], each component's section that the environment may set too (http,
/// workers, liveness, rules, the workload score's), then [`LIMIT_KEYS`] and each adapter's
/// under `adapters.<section>.` (these two file only).
pub fn keys() -> Vec<KeyInfo> {
    let mut keys = KeyInfo::of(KEYS, "", true);
    keys.extend(KeyInfo::of(HTTP_KEYS, "", true));
    keys.extend(KeyInfo::of(WORKERS_KEYS, "", true));
    keys.extend(KeyInfo::of(LIVENESS_KEYS, "", true));
    keys.extend(KeyInfo::of(RULES_KEYS, "", true));
    keys.extend(KeyInfo::of(WORKLOAD_KEYS, "", true));
    keys.extend(KeyInfo::of(TRACING_KEYS, "", true));
    keys.extend(KeyInfo::of(APPROVALS_KEYS, "", true));
    keys.extend(KeyInfo::of(LIMIT_KEYS, "", false));
    keys.extend(KeyInfo::of(SCHEDULE_KEYS, "", false));
    keys.extend(KeyInfo::of(crate::windows::WINDOW_KEYS, "", false));
    keys.extend(AdaptersConfig::keys());
    keys
}

/// The key table of `docs/operations.md`, generated from the declarations.
pub fn key_table() -> String {
    key::table(&keys(), ENV_ALIASES, FLAGS)
}

/// Applies every key's final value (or default) in `raw`.
fn resolve(raw: &Raw, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let mut config = Config::default();
    key::apply(KEYS, "", raw, env, &mut config)?;
    key::apply(HTTP_KEYS, "", raw, env, &mut config.http)?;
    key::apply(WORKERS_KEYS, "", raw, env, &mut config.workers)?;
    key::apply(LIVENESS_KEYS, "", raw, env, &mut config.liveness)?;
    key::apply(RULES_KEYS, "", raw, env, &mut config.rules)?;
    key::apply(WORKLOAD_KEYS, "", raw, env, &mut config.rules.health)?;
    key::apply(TRACING_KEYS, "", raw, env, &mut config.tracing)?;
    key::apply(APPROVALS_KEYS, "", raw, env, &mut config.approvals)?;
    if raw.has_entries("limits") {
        let mut limits = BTreeMap::new();
        key::apply(LIMIT_KEYS, "", raw, env, &mut limits)?;
        config.limits = Some(limits);
    }
    if raw.has_entries("schedules") {
        let mut schedules = BTreeMap::new();
        key::apply(SCHEDULE_KEYS, "", raw, env, &mut schedules)?;
        config.schedules = Some(schedules);
    }
    key::apply(crate::windows::WINDOW_KEYS, "", raw, env, &mut config.windows)?;
    config.adapters = AdaptersConfig::resolve(raw, env)?;
    Ok(config)
}

/// Keys that no longer exist, refused with what replaced them.
const RETIRED: &[Retired] = &[
    Retired {
        name: "http.stale_tick_intervals",
        message: "http.stale_tick_intervals is replaced by liveness.stale_degraded_seconds and \
                  liveness.stale_unhealthy_seconds (60 and 300 by default, stretched to 2 and 10 tick \
                  intervals when those are longer); remove it",
    },
    Retired {
        name: "lease_name",
        message: "lease_name is no longer a setting: one database is one queue with one leader, whatever the \
                  lease is called, so two names on one database were two leaders of the same queue. Remove it; \
                  for a separate queue use a separate database: another SQLite file, or another PostgreSQL \
                  database or schema (database_url: postgres://USER@HOST/DB?options[search_path]=SCHEMA)",
    },
];

/// The top-level keys, in the order they apply (a key checked against another comes after it)
/// and the key table lists them.
pub const KEYS: &[Key<Config>] = &[
    key!(text "database_url": String = Value(DEFAULT_DATABASE_URL),
    "Where the state lives: a path or `sqlite:PATH` (SQLite), or `postgres://USER@HOST/DB`",
    |c, v, at| {
        at.check(!v.trim().is_empty(), || "database_url must not be empty".into())?;
        c.database_url = v;
    }),
    key!("startup_timeout_seconds": f64 = Value("60"),
        "How long `run`, `worker` and `serve` wait at start for a database that does not answer yet",
        |c, v, at| c.startup_timeout = at.seconds(v, true)?),
    key!("tick_interval_seconds": f64 = Value("5"),
        "Seconds between ticks of `run`; 0: back to back while work is due",
        |c, v, at| c.tick_interval = at.seconds(v, true)?),
    key!("max_actions_per_tick": u32 = Value("1000"),
        "Actions claimed and dispatched per tick at most (a ceiling, not a rate)",
        |c, v, at| c.max_actions_per_tick = at.range(v, 1, 1_000_000)?),
    key!("max_tick_seconds": f64 = Value("20"),
        "A tick starts no new action after this long",
        |c, v, at| c.max_tick = at.seconds(v, false)?),
    key!("dispatch_concurrency": u32 = Value("4"),
        "Actions of a tick run at once",
        |c, v, at| c.dispatch_concurrency = at.range(v, 1, 1024)?),
    key!("max_unrecorded": Option<u32> = Computed("512, or 4 × `dispatch_concurrency` if more"),
    "Attempts started and not yet durably recorded at most (what a crash can make run twice)",
    |c, v, at| {
        let window = at.range(v.unwrap_or(default_max_unrecorded(c.dispatch_concurrency)), 1, 65_536)?;
        let concurrency = c.dispatch_concurrency;
        at.check(window >= concurrency, || {
            format!(
                "max_unrecorded ({window}) must be at least dispatch_concurrency ({concurrency}): \
                 every running attempt is one not yet recorded"
            )
        })?;
        c.max_unrecorded = window;
        c.max_unrecorded_given = v.is_some();
    }),
    key!("max_attempts": u32 = Value("3"),
        "Attempts before an action goes to DLQ (per action: `enqueue --max-attempts`)",
        |c, v, at| c.max_attempts = at.range(v, 1, 1000)?),
    key!("backoff_base_seconds": f64 = Value("10"),
        "Retry backoff: base × 2^(attempt-1), jittered",
        |c, v, at| c.backoff_base = at.seconds(v, true)?),
    key!("backoff_max_seconds": f64 = Value("3600"),
    "The retry backoff's cap (at least `backoff_base_seconds`)",
    |c, v, at| {
        let max = at.seconds(v, true)?;
        let base = c.backoff_base.as_secs_f64();
        at.check(max >= c.backoff_base, || {
            format!("backoff_max_seconds ({v}) must be at least backoff_base_seconds ({base})")
        })?;
        c.backoff_max = max;
    }),
    key!("heartbeat_seconds": f64 = Value("5"),
        "How often the lease holder renews its lease",
        |c, v, at| c.heartbeat = at.seconds(v, false)?),
    key!("lease_ttl_seconds": f64 = Value("30"),
    "A lease not renewed for this long lapses (longer than `heartbeat_seconds`)",
    |c, v, at| {
        let ttl = at.seconds(v, false)?;
        let heartbeat = c.heartbeat.as_secs_f64();
        at.check(ttl > c.heartbeat, || {
            format!(
                "lease_ttl_seconds ({v}) must be longer than heartbeat_seconds ({heartbeat}), or the lease \
                 lapses between renewals"
            )
        })?;
        c.lease_ttl = ttl;
    }),
    key!("action_timeout_seconds": f64 = Value("60"),
        "An attempt is cancelled (retryably) after this long; older claims are rescued",
        |c, v, at| c.action_timeout = at.seconds(v, false)?),
    key!(text "rules_dir": PathBuf = Value("rules"),
    "Where the rules (`*.rhai`) are",
    |c, v, at| {
        at.check(!v.as_os_str().is_empty(), || "rules_dir must not be empty".into())?;
        c.rules_dir = v;
    }),
    key!(text "artifacts_dir": PathBuf = Value("artifacts"),
    "Where proof-mode and attempt artifacts are written",
    |c, v, at| {
        at.check(!v.as_os_str().is_empty(), || "artifacts_dir must not be empty".into())?;
        c.artifacts_dir = v;
    }),
    key!("retention_days": u32 = Value("7"),
        "`actions purge` deletes SUCCESS and CANCELLED actions older than this (never DLQ)",
        |c, v, at| c.retention_days = at.range(v, 1, 36_500)?),
    key!("ledger_retention_days": u32 = Value("14"),
        "Tick ledger rows (with their snapshots) are pruned after this many days",
        |c, v, at| c.ledger_retention_days = at.range(v, 1, 36_500)?),
    key!("decisions_retention_days": u32 = Value("14"),
        "Decisions are pruned after this many days, never while their tick is in the ledger",
        |c, v, at| c.decisions_retention_days = at.range(v, 1, 36_500)?),
    key!("cooldown_retention_days": u32 = Value("7"),
        "Rule cooldown rows are pruned after this many days, never within `rules.cooldown_seconds`",
        |c, v, at| c.cooldown_retention_days = at.range(v, 1, 36_500)?),
    key!(text "sqlite_synchronous": String = Value("full"),
    "SQLite only: `full` (a commit survives power loss) or `normal` (faster)",
    |c, v, at| {
        c.sqlite_synchronous_full = match v.to_ascii_lowercase().as_str() {
            "full" => true,
            "normal" => false,
            other => return Err(at.fail(format!("sqlite_synchronous must be 'full' or 'normal', not '{other}'"))),
        };
    }),
    key!("postgres_listen": bool = Value("true"),
    "PostgreSQL only: claimers wait on `LISTEN orchestrator_work` for new work; set false behind a pooler in transaction mode (PgBouncer), where a LISTEN stays on a pooled server connection and its notifications reach other clients mid-query",
    |c, v, _at| c.postgres_listen = v),
    key!("expire_after": BTreeMap<String, serde_yaml::Value> = Value("{}"),
        "Per action type, the deadline of a new action that names none (seconds or a duration like `2h`)",
        |c, v, at| c.expire_after = expire_after(v, at)?),
    key!("limit_partitions": u32 = Value("1000"), // crate::limits::DEFAULT_PARTITIONS (tested)
        "Per partitioned limit, how many partition values are tracked; values beyond share one overflow partition",
        |c, v, at| c.limit_partitions = at.range(v, 1, 100_000)?),
    key!(text "proof_mode": String = Value("flag"),
    "`flag`: the database's proof flag decides; `enforced`: every attempt runs in proof mode",
    |c, v, at| {
        c.proof_enforced = match v.to_ascii_lowercase().as_str() {
            "flag" => false,
            "enforced" => true,
            other => return Err(at.fail(format!("proof_mode must be 'flag' or 'enforced', not '{other}'"))),
        };
    }),
];

/// `expire_after`: each entry an action type and a deadline, in seconds or as a duration.
fn expire_after(
    given: BTreeMap<String, serde_yaml::Value>,
    at: &key::Found<'_>,
) -> Result<BTreeMap<String, Duration>, ConfigError> {
    let mut out = BTreeMap::new();
    for (action_type, v) in given {
        let bad = |why: String| at.fail(format!("expire_after.{action_type} {why}"));
        crate::queue::validate_type(&action_type).map_err(|e| bad(format!("is not an action type: {e}")))?;
        let d = match &v {
            serde_yaml::Value::Number(n) => {
                let secs = n.as_f64().ok_or_else(|| bad("must be a number of seconds".into()))?;
                key::seconds((secs, at.source.clone()), &format!("expire_after.{action_type}"), false)?
            }
            serde_yaml::Value::String(t) => parse_duration(t).map_err(bad)?,
            _ => return Err(bad("must be seconds or a duration like 2h".into())),
        };
        if d.is_zero() || d.as_secs_f64() > MAX_SECONDS {
            return Err(bad("must be more than 0 and at most one year".into()));
        }
        out.insert(action_type, d);
    }
    Ok(out)
}

fn read_file(path: &Path, required: bool) -> Result<Option<(PathBuf, String)>, ConfigError> {
    match crate::input::read_text_capped(path, crate::input::MAX_CONFIG_BYTES, "a config file") {
        Ok(text) => Ok(Some((path.to_path_buf(), text))),
        Err(e) if e.is_not_found() && !required => Ok(None),
        Err(e) => Err(ConfigError::File { path: path.to_path_buf(), message: e.to_string() }),
    }
}

/// The file as YAML; an empty file (or one of comments only) is an empty map.
fn parse_file(path: &Path, text: &str) -> Result<serde_yaml::Value, ConfigError> {
    let empty = || serde_yaml::Value::Mapping(serde_yaml::Mapping::new());
    if text.trim().is_empty() {
        return Ok(empty());
    }
    match serde_yaml::from_str::<serde_yaml::Value>(text) {
        Ok(serde_yaml::Value::Null) => Ok(empty()),
        Ok(value) => Ok(value),
        Err(e) => {
            let message = e.to_string();
            Err(match e.location() {
                Some(loc) => ConfigError::Value {
                    source_: Source::File { path: path.to_path_buf(), line: loc.line(), column: loc.column() },
                    message: key::strip_location(&message),
                },
                None => ConfigError::File { path: path.to_path_buf(), message },
            })
        }
    }
}

fn days(n: u32) -> Duration {
    Duration::from_secs(u64::from(n) * 86_400)
}

/// The smallest `max_unrecorded` by default: one claim's batch (512 rows). With a window of a few
/// rounds of attempts, fast actions stall on the commit before them and each commit records
/// about two rounds (32 outcomes at concurrency 16); with this one a commit records whatever
/// finished while the one before it was in flight: the 50k NOOP drain at concurrency 16 went
/// from 5,000 to 8,300 /s on PostgreSQL and from 10,100 to 12,700 /s on SQLite (BENCHMARKS.md,
/// "Round 2"). Slow actions never fill it: it bounds fast bursts only.
const UNRECORDED_FLOOR: u32 = 512;

/// `max_unrecorded` when it is not set: [`UNRECORDED_FLOOR`], or four times
/// `dispatch_concurrency` if that is more, so that one commit records several rounds of attempts.
pub fn default_max_unrecorded(dispatch_concurrency: u32) -> u32 {
    dispatch_concurrency.saturating_mul(4).clamp(UNRECORDED_FLOOR, 65_536)
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
        let names: Vec<String> = env.iter().map(|(k, _)| k.clone()).collect();
        let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let file = yaml.map(|_| path.as_path());
        Config::load_from(Inputs {
            config_file: file,
            env: &lookup,
            env_names: &names,
            overrides: Overrides::default(),
        })
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
        assert_eq!((c.dispatch_concurrency, c.max_unrecorded), (4, 512));
        assert!(c.sqlite_synchronous_full);
        assert!(c.postgres_listen);
        assert_eq!(c.limits, None, "no limits section: `run` leaves the limits table alone");
        assert_eq!(c.limit_partitions, crate::limits::DEFAULT_PARTITIONS);
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
            env_names: &[],
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
        assert_eq!(c.max_unrecorded, 512, "the window defaults to one claim's batch");
        let c = load(Some("dispatch_concurrency: 200\n"), &[]).unwrap();
        assert_eq!(c.max_unrecorded, 800, "or to 4 x dispatch_concurrency if more");
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
            env_names: &[],
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
        let c = Config::load_from(Inputs {
            config_file: Some(&path),
            env: &none,
            env_names: &[],
            overrides: Overrides::default(),
        })
        .unwrap();
        assert_eq!(c, Config::defaults(), "the example's values are the defaults");
        let problems = key::check_example(text, &keys());
        assert!(problems.is_empty(), "orchestrator.example.yaml and the declarations differ:\n{}", problems.join("\n"));
    }

    /// The key table in docs/operations.md is the one the declarations give. On a difference,
    /// `UPDATE_EXPECT=1 cargo test --lib key_table` rewrites the table (and only the table).
    #[test]
    fn the_key_table_in_operations_md_is_current() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md");
        let doc = std::fs::read_to_string(&path).unwrap();
        let expected = key_table();
        let problems = key::check_table(&doc, &keys(), &expected);
        if !problems.is_empty() && std::env::var_os("UPDATE_EXPECT").is_some() {
            std::fs::write(&path, key::with_table(&doc, &expected)).unwrap();
            return;
        }
        assert!(
            problems.is_empty(),
            "docs/operations.md, section `{}`:\n{}\n(UPDATE_EXPECT=1 cargo test --lib key_table rewrites it)",
            key::TABLE_HEADING,
            problems.join("\n")
        );
    }

    #[test]
    fn every_key_is_declared_once_with_at_most_one_entry_segment() {
        let keys = keys();
        let mut names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), keys.len(), "a key is declared twice");
        for k in &keys {
            assert!(k.name.matches('<').count() <= 1, "{}: one map of named entries per key at most", k.name);
            assert!(!k.doc.is_empty() && !k.doc.contains('\n'), "{}: one line of doc", k.name);
        }
    }

    #[test]
    fn hand_written_defaults_agree_with_the_declarations() {
        let d = Config::defaults();
        assert_eq!(d.rules, RulesConfig::default(), "RulesConfig::default()");
        assert_eq!(d.liveness, crate::health::StaleThresholds::default(), "StaleThresholds::default()");
        assert_eq!(d.adapters, AdaptersConfig::default(), "AdaptersConfig::default()");
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
        assert_eq!(greet.nonzero_exit, crate::adapters::NonzeroExit::Permanent);
        assert_eq!(a.social.platforms["mastodon"], "hook");
        assert_eq!(a.social.timeout, Duration::from_secs(30), "the per-type default");
        assert_eq!(a.alert.target.as_deref(), Some("unsigned"));
        let unset = load(Some(ADAPTERS), &[]).unwrap();
        assert!(unset.adapters.webhook.targets["hook"].secret.is_none(), "an unset variable is not an error");
    }

    #[test]
    fn alertmanager_settings_are_read_or_refused_by_name() {
        let am = |body: &str| load(Some(&format!("adapters:\n  alert:\n    alertmanager:\n{body}")), &[]);
        let c = am("      url: http://127.0.0.1:9093/\n      generator_base_url: https://o.example:9464/\n      \
                    resolve_after_seconds: 60\n      labels: {env: prod}\n")
        .unwrap();
        let a = c.adapters.alert.alertmanager.expect("the url turns Alertmanager on");
        assert_eq!(a.url, "http://127.0.0.1:9093", "no trailing /");
        assert_eq!(a.generator_base_url.as_deref(), Some("https://o.example:9464"));
        assert_eq!(a.resolve_after, Duration::from_secs(60));
        assert_eq!(a.labels["env"], "prod");
        assert!(load(None, &[]).unwrap().adapters.alert.alertmanager.is_none(), "off by default");
        let cases = [
            (
                "      generator_base_url: https://o.example\n",
                "adapters.alert.alertmanager.generator_base_url",
                "is set but adapters.alert.alertmanager.url is not",
            ),
            (
                "      resolve_after_seconds: 60\n",
                "adapters.alert.alertmanager.resolve_after_seconds",
                "is set but adapters.alert.alertmanager.url is not",
            ),
            (
                "      labels: {env: prod}\n",
                "adapters.alert.alertmanager.labels",
                "is set but adapters.alert.alertmanager.url is not",
            ),
            ("      url: http://am:9093/api/v2/alerts\n", "adapters.alert.alertmanager.url", "/api/v2/alerts is added"),
            ("      url: am:9093\n", "adapters.alert.alertmanager.url", "must use http or https"),
            (
                "      url: http://am:9093\n      labels: {severity: x}\n",
                "adapters.alert.alertmanager.labels",
                "'severity' is set by each alert itself",
            ),
            (
                "      url: http://am:9093\n      labels: {a-b: x}\n",
                "adapters.alert.alertmanager.labels",
                "'a-b' is not a label name",
            ),
            (
                "      url: http://am:9093\n      resolve_after_seconds: 0\n",
                "adapters.alert.alertmanager.resolve_after_seconds",
                "",
            ),
            (
                "      url: http://am:9093\n      generator_base_url: http://o/?t=1\n",
                "adapters.alert.alertmanager.generator_base_url",
                "without a query",
            ),
            (
                "      url: http://am:9093\n      resolve_after: 60\n",
                "unknown field `resolve_after`",
                "resolve_after_seconds",
            ),
        ];
        for (body, key, why) in cases {
            let e = am(body).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(why) && e.contains("o.yaml:"), "{body}: {e}");
        }
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

    /// The example, flow style as operators write it.
    const LIMITS: &str = "\
max_attempts: 3
limits:
  POST_SOCIAL: {max_running: 2, rate: 300/1h, daily_budget: 2000}
  COMMAND:     {max_running: 1}
  WEBHOOK:     {max_running: 10, rate: 50/1s, partition_by: payload.partner}
";

    #[test]
    fn schedules_are_read_and_a_bad_one_is_refused_where_it_is() {
        let yaml = "schedules:\n  nightly:\n    cron: 30 2 * * *\n    timezone: Europe/Madrid\n    type: WEBHOOK\n    \
                    payload: {target: reconcile}\n    deadline: 1h\n    misfire: all\n";
        let c = load(Some(yaml), &[]).unwrap();
        let nightly = &c.schedules.as_ref().unwrap()["nightly"];
        assert_eq!((nightly.cron.as_str(), nightly.timezone.as_str()), ("30 2 * * *", "Europe/Madrid"));
        assert_eq!(nightly.payload, serde_json::json!({"target": "reconcile"}));
        assert_eq!(
            (nightly.deadline, nightly.misfire),
            (Some(Duration::from_secs(3600)), crate::schedules::Misfire::All)
        );
        assert_eq!(nightly.max_attempts, None, "unset: the top-level max_attempts");
        assert_eq!(load(None, &[]).unwrap().schedules, None, "no section: the table is left alone");
        assert_eq!(load(Some("schedules: {}\n"), &[]).unwrap().schedules, Some(BTreeMap::new()));
        let err = |yaml: &str| load(Some(yaml), &[]).unwrap_err().to_string();
        let bad_cron = err("schedules:\n  n:\n    cron: 61 * * * *\n    type: NOOP\n");
        assert!(
            bad_cron.contains("o.yaml:2:5: ") && bad_cron.contains("schedules.n: cron '61 * * * *' is not a valid"),
            "{bad_cron}"
        );
        let unknown = err("schedules:\n  n:\n    cron: '@daily'\n    type: NOOP\n    every: 5\n");
        assert!(unknown.contains("unknown field `every`"), "{unknown}");
        let missing = err("schedules:\n  n:\n    type: NOOP\n");
        assert!(missing.contains("schedules.n: missing field `cron`"), "{missing}");
        let misfire = err("schedules:\n  n:\n    cron: '@daily'\n    type: NOOP\n    misfire: later\n");
        assert!(misfire.contains("schedules.n.misfire: misfire 'later' is not one of skip, once, all"), "{misfire}");
        let name = err("schedules:\n  'a b':\n    cron: '@daily'\n    type: NOOP\n");
        assert!(name.contains("schedule name 'a b'"), "{name}");
    }

    #[test]
    fn limits_are_read_per_action_type() {
        let c = load(Some(LIMITS), &[]).unwrap();
        let limits = c.limits.as_ref().unwrap();
        assert_eq!(limits.keys().collect::<Vec<_>>(), ["COMMAND", "POST_SOCIAL", "WEBHOOK"]);
        let social = &limits["POST_SOCIAL"];
        assert_eq!(
            (social.max_running, social.daily_budget, social.partition_by.as_ref()),
            (Some(2), Some(2000), None)
        );
        assert_eq!(social.rate, Some(crate::limits::Rate { count: 300, period: Duration::from_secs(3600) }));
        assert_eq!(limits["COMMAND"], LimitSpec { max_running: Some(1), ..LimitSpec::default() });
        let webhook = &limits["WEBHOOK"];
        assert_eq!(webhook.partition_by.as_ref().map(ToString::to_string).as_deref(), Some("payload.partner"));
        assert_eq!(webhook.rate.map(|r| (r.count, r.period)), Some((50, Duration::from_secs(1))));

        let block = "limits:\n  NOOP:\n    max_running: 0\n    rate: '5/m'\n    partition_by: payload.a.b\n";
        let noop = &load(Some(block), &[]).unwrap().limits.unwrap()["NOOP"];
        assert_eq!((noop.max_running, noop.partition_by.as_ref().map(|p| p.segments().len())), (Some(0), Some(2)));
        let block = "limits:\n  POST_SOCIAL: {allowed_hours: '09:00-21:00 Europe/Madrid'}\n";
        let social = &load(Some(block), &[]).unwrap().limits.unwrap()["POST_SOCIAL"];
        assert_eq!(social.allowed_hours.map(|h| h.to_string()).as_deref(), Some("09:00-21:00 Europe/Madrid"));

        assert_eq!(load(None, &[]).unwrap().limits, None, "no section: `run` leaves the table alone");
        assert_eq!(load(Some("limits:\n"), &[]).unwrap().limits, None, "null is not given, as for every key");
        assert_eq!(load(Some("limits: {}\n"), &[]).unwrap().limits, Some(BTreeMap::new()), "given, and empty");
        let e = load(Some("limits: {}\n"), &[("ORCHESTRATOR_LIMITS", "{NOOP: {max_running: 1}}")]).unwrap_err();
        assert!(e.to_string().contains("`limits` is file only"), "the environment does not set limits: {e}");
    }

    #[test]
    fn limit_errors_name_the_file_line_column_and_full_key() {
        let cases = [
            ("rate: 50/1s", "rate: fifty", "o.yaml:5:40: limits.WEBHOOK.rate 'fifty' has no '/' (write N/PERIOD"),
            ("{max_running: 1}", "{max_running: -1}", "o.yaml:4:30: limits.COMMAND.max_running -1 must be from 0 to"),
            ("{max_running: 1}", "{max_running: two}", "o.yaml:4:30: limits.COMMAND.max_running 'two' is not a whole"),
            ("daily_budget: 2000", "daily_budget: 2.5", "o.yaml:3:61: limits.POST_SOCIAL.daily_budget '2.5' is not"),
            ("max_running: 2,", "max_running: [2],", "o.yaml:3:30: limits.POST_SOCIAL.max_running: must be one plain"),
            (
                "partition_by: payload.partner",
                "partition_by: partner",
                "o.yaml:5:61: limits.WEBHOOK.partition_by 'partner' is not a payload path (write payload.FIELD",
            ),
            (
                "{max_running: 1}",
                "{}",
                "o.yaml:4:16: limits.COMMAND: names no limit (give max_running, rate, daily_budget or allowed_hours)",
            ),
            (
                "{max_running: 1}",
                "{allowed_hours: '9-17 UTC'}",
                "limits.COMMAND.allowed_hours '9-17 UTC' has '9', not a time of day HH:MM",
            ),
            ("{max_running: 1}", "{partition_by: payload.x}", "o.yaml:4:16: limits.COMMAND: names no limit"),
            (
                "{max_running: 1}",
                "1",
                "o.yaml:4:16: limits.COMMAND: invalid type: integer `1`, expected a YAML mapping",
            ),
            ("{max_running: 1}", "", "o.yaml:4:16: limits.COMMAND: invalid type: unit value, expected a YAML mapping"),
            (
                "daily_budget: 2000",
                "daily_budjet: 2000",
                "o.yaml:3:47: limits.POST_SOCIAL: unknown field `daily_budjet`, expected one of `max_running`, \
                 `rate`, `daily_budget`, `allowed_hours`, `partition_by`",
            ),
            ("COMMAND:", "'COM MAND':", "o.yaml:4:19: limits.COM MAND: is not an action type: action type"),
        ];
        for (good, bad, expected) in cases {
            let yaml = LIMITS.replacen(good, bad, 1);
            let e = load(Some(&yaml), &[]).unwrap_err().to_string();
            assert!(e.contains(expected), "{bad}:\n  got      {e}\n  expected {expected}");
        }
        let e = load(Some("limits: [POST_SOCIAL]\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("o.yaml:1:9: limits: invalid type: sequence, expected a YAML mapping"), "{e}");
    }

    #[test]
    fn limit_partitions_is_bounded() {
        assert_eq!(load(None, &[]).unwrap().limit_partitions, 1000);
        assert_eq!(load(Some("limit_partitions: 50\n"), &[]).unwrap().limit_partitions, 50);
        assert_eq!(load(None, &[("ORCHESTRATOR_LIMIT_PARTITIONS", "7")]).unwrap().limit_partitions, 7);
        for bad in ["0", "100001", "-1"] {
            let e = load(Some(&format!("limit_partitions: {bad}\n")), &[]).unwrap_err().to_string();
            assert!(e.contains("o.yaml:1:19") && e.contains("limit_partitions"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_limit_on_a_type_no_adapter_serves_is_a_warning() {
        let yaml = format!("{LIMITS}  NOOP: {{rate: 1/1s}}\n  REPORT: {{max_running: 1}}\n");
        let c = load(Some(&yaml), &[]).unwrap();
        let registry = crate::adapters::Registry::from_config(&c).unwrap();
        assert_eq!(
            c.unserved_limit_warnings(registry.types()),
            ["limits.REPORT: no adapter serves action type REPORT; its limit applies only if a worker with such \
              an adapter runs"]
        );
        assert_eq!(c.unserved_limit_warnings(["REPORT"]).len(), 4, "served is what the caller's registry serves");
        assert!(Config::defaults().unserved_limit_warnings([]).is_empty(), "no limits, no warnings");
    }

    #[test]
    fn the_example_limits_read_as_configured() {
        // The example shows `limits:` commented out (its default is no section); uncommented,
        // it must load, and a built-in adapter serves every type it names.
        let example = include_str!("../orchestrator.example.yaml");
        let block: String = example
            .lines()
            .skip_while(|l| !l.starts_with("# limits:"))
            .take_while(|l| l.starts_with("# limits:") || l.starts_with("#  "))
            .map(|l| format!("{}\n", &l[2..]))
            .collect();
        let c = load(Some(&block), &[]).unwrap();
        let limits = c.limits.as_ref().unwrap();
        assert!(limits.len() >= 3 && limits.values().any(|l| l.partition_by.is_some()), "{block}");
        let registry = crate::adapters::Registry::from_config(&c).unwrap();
        assert!(c.unserved_limit_warnings(registry.types()).is_empty());
    }

    /// A build without the exporter refuses what asks for traces, naming it (run by
    /// `cargo test --no-default-features`; a `tracing:` section is checked in telemetry).
    #[cfg(not(feature = "otel"))]
    #[test]
    fn a_build_without_otel_refuses_a_config_that_asks_for_traces() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("o.yaml");
        std::fs::write(&file, "tracing:\n  otlp_endpoint: http://127.0.0.1:4318\n").unwrap();
        let load = |file: Option<&std::path::Path>, env: &dyn Fn(&str) -> Option<String>| {
            let inputs = Inputs { config_file: file, env, env_names: &[], overrides: Overrides::default() };
            Config::load_from(inputs).map(|c| c.tracing).map_err(|e| e.to_string())
        };
        let e = load(Some(&file), &|_| None).unwrap_err();
        assert!(e.contains("tracing.otlp_endpoint") && e.contains("cargo feature `otel`"), "{e}");
        let env = |k: &str| (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://127.0.0.1:4318".to_string());
        let empty = dir.path().join("empty.yaml");
        std::fs::write(&empty, "").unwrap();
        let e = load(Some(&empty), &env).unwrap_err();
        assert!(e.contains("environment variable OTEL_EXPORTER_OTLP_ENDPOINT") && e.contains("`otel`"), "{e}");
        assert_eq!(load(Some(&empty), &|_| None).unwrap().export, None, "off: nothing to refuse");
    }
}
