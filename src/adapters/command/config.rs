//! `adapters.command`: the allowlist of programs a `COMMAND` may run (path, argument templates,
//! environment, timeout, what a non-zero exit means), `COMMAND`'s timeout, and the `{slot}`
//! templating of the arguments.
//!
//! Each key is declared once, in [`KEYS`]. This module validates and fills templates; it never
//! runs anything.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::adapters::{AdaptersConfig, NAME_RULE, is_name};
use crate::settings::key::KeyDefault::{Computed, Required, Value};
use crate::settings::key::{Found, Key, key};

/// The validated `adapters.command` section. `Default` is blank: the keys fill it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CommandConfig {
    pub allow: BTreeMap<String, CommandSpec>,
    pub timeout: Duration,
}

/// What a non-zero exit status means.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NonzeroExit {
    #[default]
    Retryable,
    Permanent,
}

/// An allowlisted program.
#[derive(Clone, Debug, PartialEq)]
pub struct CommandSpec {
    pub name: String,
    /// An absolute path: there is no shell and no `PATH` lookup.
    pub program: PathBuf,
    /// Arguments; `{slot}` placeholders are filled from the payload's `args`.
    pub args: Vec<String>,
    pub timeout: Option<Duration>,
    /// The program's whole environment (nothing is inherited).
    pub env: BTreeMap<String, String>,
    pub nonzero_exit: NonzeroExit,
    /// Slots whose value may begin with `-` (`allow_dash`); any other slot refuses such a value,
    /// so that a payload cannot turn an argument into an option of the program.
    pub allow_dash: Vec<String>,
}

/// The entry an `allow.<name>.*` key belongs to (its `program` comes first and checks the name).
fn spec<'a>(a: &'a mut AdaptersConfig, at: &Found<'_>) -> &'a mut CommandSpec {
    let name = at.entry();
    a.command.allow.entry(name.to_string()).or_insert_with(|| CommandSpec {
        name: name.to_string(),
        program: PathBuf::new(),
        args: Vec::new(),
        timeout: None,
        env: BTreeMap::new(),
        nonzero_exit: NonzeroExit::default(),
        allow_dash: Vec::new(),
    })
}

/// The keys of `adapters.command`.
pub const KEYS: &[Key<AdaptersConfig>] = &[
    key!("timeout_seconds": f64 = Value("30"),
        "Bounds one `COMMAND` attempt; then the whole process group is killed",
        |a, v, at| a.command.timeout = at.seconds(v, false)?),
    key!("allow.<name>.program": PathBuf = Required,
    "The program's absolute path (no shell, no `PATH` lookup)",
    |a, v, at| {
        if !is_name(at.entry()) {
            return Err(at.entry_error(NAME_RULE));
        }
        if !v.is_absolute() {
            return Err(at.invalid(format!(
                "'{}' must be an absolute path (there is no shell and no PATH lookup)",
                v.display()
            )));
        }
        spec(a, at).program = v;
    }),
    key!("allow.<name>.args": Vec<String> = Value("[]"),
    "Its arguments; each `{slot}` is filled from the payload's `args`",
    |a, v, at| {
        if v.iter().any(|arg| arg.contains('\0')) {
            return Err(at.invalid("an argument contains a NUL character"));
        }
        spec(a, at).args = v;
    }),
    key!("allow.<name>.timeout_seconds": Option<f64> = Computed("`adapters.command.timeout_seconds`"),
        "Its timeout",
        |a, v, at| spec(a, at).timeout = v.map(|s| at.seconds(s, false)).transpose()?),
    key!("allow.<name>.env": BTreeMap<String, String> = Value("{}"),
    "Its whole environment (nothing is inherited)",
    |a, v, at| {
        for (k, value) in &v {
            if k.is_empty() || k.contains('=') || k.contains('\0') || value.contains('\0') {
                return Err(at.invalid(format!("'{k}' is not a valid environment variable")));
            }
        }
        spec(a, at).env = v;
    }),
    key!("allow.<name>.nonzero_exit": NonzeroExit = Value("retryable"),
        "`retryable`, or `permanent` (straight to DLQ)",
        |a, v, at| spec(a, at).nonzero_exit = v),
    key!("allow.<name>.allow_dash": Vec<String> = Value("[]"),
    "Slots whose value may begin with `-`",
    |a, v, at| {
        let s = spec(a, at);
        let declared: Vec<&str> = s.args.iter().flat_map(|arg| slots(arg)).collect();
        if let Some(unknown) = v.iter().find(|d| !declared.contains(&d.as_str())) {
            return Err(at.invalid(format!(
                "'{unknown}' is not one of the slots of args ({})",
                declared.join(", ")
            )));
        }
        s.allow_dash = v;
    }),
];

/// `template` with each `{slot}` replaced by its value, in one pass: a value is never read as a
/// template itself. `Err(slot)` names the first slot without a value.
pub fn fill<'a>(template: &'a str, values: &BTreeMap<String, String>) -> Result<String, &'a str> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) if is_slot_name(&after[..close]) => {
                let slot = &after[..close];
                out.push_str(values.get(slot).ok_or(slot)?);
                rest = &after[close + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Where `args` slot names come from: `{name}` with `name` in `[A-Za-z_][A-Za-z0-9_]*`.
pub fn slots(arg: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) if is_slot_name(&after[..close]) => {
                out.push(&after[..close]);
                rest = &after[close + 1..];
            }
            _ => rest = after,
        }
    }
    out
}

fn is_slot_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_found() {
        assert_eq!(slots("--name={name}"), vec!["name"]);
        assert_eq!(slots("{a}{b_2} {not a slot} {}"), vec!["a", "b_2"]);
        assert!(slots("plain").is_empty());
        let values: BTreeMap<String, String> =
            [("a".to_string(), "{b}".to_string()), ("b".to_string(), "x".to_string())].into_iter().collect();
        assert_eq!(fill("--a={a} {b} {not a slot} {}", &values).unwrap(), "--a={b} x {not a slot} {}");
        assert_eq!(fill("{c}", &values).unwrap_err(), "c");
    }
}
