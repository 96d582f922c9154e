//! The environment checked whole: every `ORCHESTRATOR_*` variable sets a key or is one of the
//! few other names this program reads, and the earlier systems' variables are translated (with
//! a one-line deprecation warning) or refused (with what to set instead). A variable set is
//! never silently ignored: the operator who set it believes it holds.
//!
//! The earlier systems are the ones this program replaces (their operator guides named these
//! variables): the AOL daemon (`AOL_*`), Stakazo's orchestrator (`ORCHESTRATOR_ENABLED`,
//! `ORCHESTRATOR_INTERVAL_SECONDS`) and NANO-OS's (`ORCHESTRATOR_MODE`,
//! `ORCHESTRATOR_DEFAULT_NAME`). `docs/upgrading.md` has the whole translation table.
//!
//! This module reads no variable itself: `config.rs` passes the names set and a lookup. It does
//! not act on what it translates: [`Acting`] says what a command may do, and the CLI obeys it.

use serde_yaml::Value;

use super::{ADMIN_TOKEN_ENV, ConfigError, Source};
use crate::settings::key::{self, KeyInfo};

/// Names under `ORCHESTRATOR_` that are no key and are read: `--config`'s variable and the admin
/// token(s).
pub const OTHER_NAMES: &[&str] = &["ORCHESTRATOR_CONFIG", ADMIN_TOKEN_ENV];

/// Prefixes under `ORCHESTRATOR_` that no key may take, left to the project's own test suite and
/// benchmarks (`ORCHESTRATOR_TEST_PG_URL`, `ORCHESTRATOR_BENCH_PG_URL`): a shell that runs both
/// the tests and the binary must not make the binary refuse to start.
pub const RESERVED_PREFIXES: &[&str] = &["ORCHESTRATOR_TEST_", "ORCHESTRATOR_BENCH_"];

/// What this process may do, as the earlier systems' switches said (`ORCHESTRATOR_ENABLED`,
/// `ORCHESTRATOR_MODE`). Nothing but those variables sets it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Acting {
    /// Every command acts as asked.
    #[default]
    Any,
    /// `ORCHESTRATOR_ENABLED=false`: nothing this process runs acts. `run`, `run-once`,
    /// `worker` and the admin API's run-once refuse; reading, `--dry-run` and enqueueing work.
    Disabled,
    /// `ORCHESTRATOR_MODE=MANUAL`: only a tick asked for acts (`run-once`, the admin API's
    /// run-once); `run` and `worker`, which act on their own schedule, refuse.
    Manual,
    /// `ORCHESTRATOR_MODE=PAUSED`: `run`, `run-once` and `worker` set the shared paused flag
    /// (as `orchestrator pause` does) before anything else, then start; `resume` clears it.
    Paused,
}

impl Acting {
    /// Why a command may not act here, or `None`. `on_demand`: one tick asked for (`run-once`,
    /// the admin API's run-once), not a loop on its own schedule (`run`, `worker`).
    pub fn refusal(self, on_demand: bool) -> Option<&'static str> {
        match self {
            Acting::Disabled => Some(
                "ORCHESTRATOR_ENABLED=false: this process never acts (run, run-once, worker and the admin API's \
                 run-once refuse); unset it to act",
            ),
            Acting::Manual if !on_demand => Some(
                "ORCHESTRATOR_MODE=MANUAL: only a tick asked for acts (`orchestrator run-once`, from cron or by \
                 hand); `run` and `worker` refuse; unset it to run the daemon",
            ),
            _ => None,
        }
    }
}

/// What the earlier systems' variables in the environment come to.
#[derive(Debug, Default)]
pub struct Translated {
    /// Key values, each as a layer (`{key: value}`) and the variable that gave it, applied
    /// after the file and before the `ORCHESTRATOR_<KEY>` variables.
    pub layers: Vec<(Value, String)>,
    pub acting: Acting,
    /// One line per earlier name honoured, naming what to set instead.
    pub deprecations: Vec<String>,
}

/// How an earlier system's variable is read.
enum Meaning {
    /// The same value as this key.
    Key(&'static str),
    /// Stakazo's auto-start switch: `false` never acts.
    Enabled,
    /// NANO-OS's `MANUAL`, `SCHEDULED`, `CONTINUOUS` or `PAUSED`.
    Mode,
    /// AOL's proof switch: on is `proof_mode: enforced`; off has no setting of this process.
    AolProofMode,
    /// No clear equivalent: refused with this message (what to do instead).
    Refused(&'static str),
}

struct Earlier {
    name: &'static str,
    system: &'static str,
    meaning: Meaning,
}

/// Every earlier system's variable this program knows, in the order they apply.
const EARLIER: &[Earlier] = &[
    Earlier { name: "ORCHESTRATOR_ENABLED", system: "Stakazo", meaning: Meaning::Enabled },
    Earlier {
        name: "ORCHESTRATOR_INTERVAL_SECONDS",
        system: "Stakazo",
        meaning: Meaning::Key("tick_interval_seconds"),
    },
    Earlier { name: "ORCHESTRATOR_MODE", system: "NANO-OS", meaning: Meaning::Mode },
    Earlier {
        name: "ORCHESTRATOR_DEFAULT_NAME",
        system: "NANO-OS",
        meaning: Meaning::Refused(
            "named the orchestrator whose state a process used; here one database is one queue, so for a \
             separate one use a separate database (another SQLite file, or a PostgreSQL database); remove this \
             variable",
        ),
    },
    Earlier { name: "AOL_TICK_INTERVAL_SECONDS", system: "AOL", meaning: Meaning::Key("tick_interval_seconds") },
    Earlier { name: "AOL_MAX_ACTIONS_PER_TICK", system: "AOL", meaning: Meaning::Key("max_actions_per_tick") },
    Earlier { name: "AOL_MAX_TICK_SECONDS", system: "AOL", meaning: Meaning::Key("max_tick_seconds") },
    Earlier { name: "AOL_PROOF_MODE", system: "AOL", meaning: Meaning::AolProofMode },
    Earlier {
        name: "AOL_MAX_TICKS",
        system: "AOL",
        meaning: Meaning::Refused(
            "stopped the daemon after N ticks; here that is a flag of the command: `orchestrator run --ticks N` \
             (or `orchestrator run-once` for one tick, from cron); remove the variable",
        ),
    },
];

/// Checks every variable in `names` (the names set; `env` reads their values) against `keys`:
/// translates the earlier systems' names, and refuses an `ORCHESTRATOR_*` or `AOL_*` name that
/// sets nothing, naming the closest one that does (or saying that the section is file only).
pub fn check(
    names: &[String],
    env: &dyn Fn(&str) -> Option<String>,
    keys: &[KeyInfo],
) -> Result<Translated, ConfigError> {
    let mut sorted: Vec<&String> = names.iter().collect();
    sorted.sort();
    for name in sorted {
        if let Some(message) = unknown(name, keys) {
            return Err(ConfigError::Value { source_: Source::Env(name.clone()), message });
        }
    }
    let mut out = Translated::default();
    let mut enabled = true;
    let mut mode = None;
    for earlier in EARLIER {
        let Some(value) = env(earlier.name) else { continue };
        let name = earlier.name;
        let bad = |message: String| ConfigError::Value { source_: Source::Env(name.to_string()), message };
        let deprecated = |what: String| format!("{name} is deprecated (the {} name): {what}", earlier.system);
        match &earlier.meaning {
            Meaning::Key(key) => {
                let current = key::env_var(key);
                if let Some(other) = env(&current).filter(|v| v.trim() != value.trim()) {
                    return Err(bad(format!(
                        "{key} is set twice, to '{}' here and to '{}' by {current}; remove {name}",
                        value.escape_debug(),
                        other.escape_debug()
                    )));
                }
                let yaml: Value = serde_yaml::from_str(&value).map_err(|e| bad(format!("{key}: {e}")))?;
                out.layers.push((key::nest(key, yaml), name.to_string()));
                out.deprecations.push(deprecated(format!("read as `{key}`; set {current} instead")));
            }
            Meaning::Enabled => {
                enabled = parse_bool(&value)
                    .ok_or_else(|| bad(format!("'{}' is not true or false", value.escape_debug())))?;
                out.deprecations.push(deprecated(if enabled {
                    "`true` is what every command does; remove it".to_string()
                } else {
                    "`false` is honoured: this process never acts (run, run-once and worker refuse); to stop \
                     every instance use `orchestrator pause`; remove it"
                        .to_string()
                }));
            }
            Meaning::Mode => {
                let (parsed, what) = match value.trim().to_ascii_uppercase().as_str() {
                    "CONTINUOUS" => (Acting::Any, "CONTINUOUS is `orchestrator run`, the daemon; remove it"),
                    "SCHEDULED" => (
                        Acting::Any,
                        "SCHEDULED is `orchestrator run`, ticking every `tick_interval_seconds`; remove it",
                    ),
                    "MANUAL" => (
                        Acting::Manual,
                        "MANUAL is honoured: only `orchestrator run-once` acts, `run` and `worker` refuse; run \
                         `run-once` from cron and remove it",
                    ),
                    "PAUSED" => (
                        Acting::Paused,
                        "PAUSED is honoured: run, run-once and worker set the shared paused flag at start; use \
                         `orchestrator pause` (and `resume`) and remove it",
                    ),
                    _ => {
                        return Err(bad(format!(
                            "'{}' is not a mode: MANUAL, SCHEDULED, CONTINUOUS or PAUSED",
                            value.escape_debug()
                        )));
                    }
                };
                mode = Some(parsed);
                out.deprecations.push(deprecated(what.to_string()));
            }
            Meaning::AolProofMode => {
                let on = parse_bool(&value)
                    .ok_or_else(|| bad(format!("'{}' is not 1, 0, true or false", value.escape_debug())))?;
                if !on {
                    return Err(bad(
                        "real execution is not a setting of this process: it is the proof flag in the database, \
                         shared by every instance (`orchestrator proof off`, with `proof_mode: flag`); remove \
                         the variable"
                            .to_string(),
                    ));
                }
                let current = key::env_var("proof_mode");
                if env(&current).is_some_and(|v| !v.trim().eq_ignore_ascii_case("enforced")) {
                    return Err(bad(format!("proof_mode is set twice, here and by {current}; remove {name}")));
                }
                out.layers.push((key::nest("proof_mode", Value::String("enforced".into())), name.to_string()));
                out.deprecations.push(deprecated(format!(
                    "read as `proof_mode: enforced` (every attempt runs in proof mode); set {current}=enforced instead"
                )));
            }
            Meaning::Refused(what) => return Err(bad(format!("the {} name that {what}", earlier.system))),
        }
    }
    out.acting = if enabled { mode.unwrap_or_default() } else { Acting::Disabled };
    Ok(out)
}

/// `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`, in any case.
fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Why `name` sets nothing, if it is ours to check and does not.
fn unknown(name: &str, keys: &[KeyInfo]) -> Option<String> {
    let known = OTHER_NAMES.contains(&name)
        || EARLIER.iter().any(|e| e.name == name)
        || RESERVED_PREFIXES.iter().any(|p| name.starts_with(p));
    if known {
        return None;
    }
    if name.starts_with("AOL_") {
        let earlier: Vec<&str> = EARLIER.iter().filter(|e| e.name.starts_with("AOL_")).map(|e| e.name).collect();
        let closest = closest(name, earlier.iter().copied()).unwrap_or_default();
        return Some(format!(
            "{name} is no variable of the AOL daemon this program reads (it reads {}; see docs/upgrading.md); \
             the closest is {closest}",
            earlier.join(", ")
        ));
    }
    let suffix = name.strip_prefix("ORCHESTRATOR_")?.to_ascii_lowercase();
    // A retired key's variable is refused where the key is, with what replaced it.
    if super::RETIRED.iter().any(|r| r.name == suffix) {
        return None;
    }
    let top = |k: &KeyInfo| k.name.split('.').next().unwrap_or_default().to_string();
    if keys.iter().any(|k| k.env && top(k) == suffix) {
        return None;
    }
    // A file-only section, whole or one of its keys flattened (`ORCHESTRATOR_ADAPTERS_WEBHOOK`).
    if let Some(k) = keys.iter().find(|k| !k.env && (suffix == top(k) || suffix.starts_with(&format!("{}_", top(k))))) {
        let section = top(k);
        return Some(format!(
            "`{section}` is file only: set it in the config file (orchestrator.yaml or --config), where each error \
             points at its line; the environment cannot set it"
        ));
    }
    // A section's key flattened (`ORCHESTRATOR_HTTP_LISTEN`): sections take a YAML map.
    if let Some(k) = keys.iter().find(|k| k.env && k.name.contains('.') && k.name.replace('.', "_") == suffix) {
        let section = top(k);
        let map = k
            .name
            .split('.')
            .skip(1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .fold("VALUE".to_string(), |inner, seg| format!("{{{seg}: {inner}}}"));
        let var = key::env_var(&section);
        return Some(format!(
            "names no config key: `{}` is set through {var}, a YAML map of the section's keys ({var}='{map}')",
            k.name
        ));
    }
    let candidates: Vec<String> = keys
        .iter()
        .filter(|k| k.env)
        .map(|k| key::env_var(&top(k)))
        .chain(OTHER_NAMES.iter().map(|n| (*n).to_string()))
        .chain(EARLIER.iter().filter(|e| e.name.starts_with("ORCHESTRATOR_")).map(|e| e.name.to_string()))
        .collect();
    let closest = closest(name, candidates.iter().map(String::as_str)).unwrap_or_default();
    let key = closest.strip_prefix("ORCHESTRATOR_").map(str::to_ascii_lowercase);
    let what = match key {
        Some(k) if keys.iter().any(|i| i.env && top(i) == k) => format!("{closest} (`{k}`)"),
        _ => closest.to_string(),
    };
    Some(format!("names no config key; the closest is {what} (ORCHESTRATOR_<KEY> sets a top-level key or a section)"))
}

/// The candidate nearest to `name` by edit distance (the first of equals).
fn closest<'c>(name: &str, candidates: impl Iterator<Item = &'c str>) -> Option<&'c str> {
    candidates.min_by_key(|c| strsim::levenshtein(name, c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_env(vars: &[(&str, &str)]) -> Result<Translated, String> {
        let names: Vec<String> = vars.iter().map(|(k, _)| (*k).to_string()).collect();
        let lookup = |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_string());
        check(&names, &lookup, &crate::config::keys()).map_err(|e| e.to_string())
    }

    #[test]
    fn unknown_names_are_refused_with_the_closest_one() {
        let e = check_env(&[("ORCHESTRATOR_MAX_ACTION_PER_TICK", "9")]).unwrap_err();
        assert!(
            e.starts_with(
                "environment variable ORCHESTRATOR_MAX_ACTION_PER_TICK: names no config key; the closest \
                 is ORCHESTRATOR_MAX_ACTIONS_PER_TICK (`max_actions_per_tick`)"
            ),
            "{e}"
        );
        let e = check_env(&[("ORCHESTRATOR_LIMITS", "{NOOP: {max_running: 0}}")]).unwrap_err();
        assert!(e.contains("ORCHESTRATOR_LIMITS: `limits` is file only"), "{e}");
        let e = check_env(&[("ORCHESTRATOR_ADAPTERS_WEBHOOK", "x")]).unwrap_err();
        assert!(e.contains("`adapters` is file only"), "{e}");
        let e = check_env(&[("ORCHESTRATOR_HTTP_LISTEN", "0.0.0.0:1")]).unwrap_err();
        assert!(e.contains("`http.listen` is set through ORCHESTRATOR_HTTP"), "{e}");
        let e = check_env(&[("AOL_TICK_INTERVAL", "3")]).unwrap_err();
        assert!(e.contains("the closest is AOL_TICK_INTERVAL_SECONDS"), "{e}");
    }

    #[test]
    fn our_other_names_and_reserved_prefixes_pass() {
        let vars = [
            ("ORCHESTRATOR_CONFIG", "o.yaml"),
            ("ORCHESTRATOR_TEST_PG_URL", "postgres://x"),
            ("ORCHESTRATOR_BENCH_PG_URL", "postgres://x"),
            ("ORCHESTRATOR_HTTP", "{listen: 127.0.0.1:1}"),
            ("DATABASE_URL", "x.db"),
            ("RUST_LOG", "debug"),
            ("PATH", "/bin"),
        ];
        let t = check_env(&vars).unwrap();
        assert!(t.layers.is_empty() && t.deprecations.is_empty() && t.acting == Acting::Any);
    }

    #[test]
    fn no_key_takes_a_reserved_prefix_or_an_earlier_name() {
        for k in crate::config::keys().iter().filter(|k| k.env) {
            let var = key::env_var(k.name.split('.').next().unwrap_or_default());
            assert!(!RESERVED_PREFIXES.iter().any(|p| var.starts_with(p)), "{var}");
            assert!(!EARLIER.iter().any(|e| e.name == var) && !OTHER_NAMES.contains(&var.as_str()), "{var}");
        }
    }

    #[test]
    fn the_switches_say_what_may_act() {
        let acting = |vars: &[(&str, &str)]| check_env(vars).unwrap().acting;
        assert_eq!(acting(&[("ORCHESTRATOR_ENABLED", "false")]), Acting::Disabled);
        assert_eq!(acting(&[("ORCHESTRATOR_ENABLED", "false"), ("ORCHESTRATOR_MODE", "CONTINUOUS")]), Acting::Disabled);
        assert_eq!(acting(&[("ORCHESTRATOR_ENABLED", "TRUE"), ("ORCHESTRATOR_MODE", "manual")]), Acting::Manual);
        assert_eq!(acting(&[("ORCHESTRATOR_MODE", "PAUSED")]), Acting::Paused);
        assert_eq!(acting(&[("ORCHESTRATOR_MODE", "SCHEDULED")]), Acting::Any);
        assert!(check_env(&[("ORCHESTRATOR_MODE", "SOMETIMES")]).unwrap_err().contains("MANUAL, SCHEDULED"));
        assert!(check_env(&[("ORCHESTRATOR_ENABLED", "nah")]).unwrap_err().contains("not true or false"));
        assert_eq!(Acting::Manual.refusal(true), None, "run-once acts under MANUAL");
        assert!(Acting::Manual.refusal(false).is_some() && Acting::Disabled.refusal(true).is_some());
        assert_eq!(Acting::Paused.refusal(false), None);
    }

    #[test]
    fn an_earlier_name_and_the_current_one_must_agree() {
        let t = check_env(&[("AOL_TICK_INTERVAL_SECONDS", "30"), ("ORCHESTRATOR_TICK_INTERVAL_SECONDS", "30")]);
        assert_eq!(t.unwrap().deprecations.len(), 1);
        let e = check_env(&[("AOL_TICK_INTERVAL_SECONDS", "30"), ("ORCHESTRATOR_TICK_INTERVAL_SECONDS", "5")]);
        assert!(e.unwrap_err().contains("set twice"));
    }
}
