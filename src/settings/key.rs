//! One declaration per config key, and the machinery every declaration shares.
//!
//! A [`Key`] (written with [`key!`]) is a key's name, default, one line of doc, and how its final
//! value is checked and stored. From the declarations this module reads the layers (the file,
//! the `ORCHESTRATOR_<KEY>` variables, the flags) into raw values by key, refusing unknown keys
//! and values of the wrong type; applies each key's final value (or its default) in declaration
//! order; renders the key table of `docs/operations.md`; and checks that table and
//! `orchestrator.example.yaml` against the declarations. It knows no particular key: those are
//! declared by the components (each adapter's `config.rs`, `limits.rs`) and by `config.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use super::{ConfigError, MAX_SECONDS, Source};

/// A key's default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyDefault {
    /// This YAML value (parsed and applied like a configured one).
    Value(&'static str),
    /// Not set unless configured; the key's doc says what that means.
    Unset,
    /// Not set unless configured, then computed from other keys as described here.
    Computed(&'static str),
    /// An entry of a map (a webhook target, an allowlisted command) must give it.
    Required,
}

/// One key: what the key table says about it, and how its value is checked and stored into a
/// `T`: the config of the component that declares it (`Config` for the top level,
/// `AdaptersConfig` for an adapter's keys).
pub struct Key<T: 'static> {
    /// Dotted, below the section that declares it; `<name>` stands for an entry of a map whose
    /// names the user picks (`targets.<name>.url`).
    pub name: &'static str,
    pub default: KeyDefault,
    /// One line for the key table.
    pub doc: &'static str,
    /// `ORCHESTRATOR_<KEY>` is taken verbatim (a string key) rather than parsed as YAML.
    pub text: bool,
    /// Checks the type of a value from any layer, so a mistyped value is refused even when a
    /// later layer overrides it.
    pub check: fn(&Value) -> Result<(), String>,
    /// Validates the final value (or the default) and stores it. Keys apply in declaration
    /// order, so a check against another key reads a key declared before it.
    pub apply: fn(&mut T, &Found<'_>) -> Result<(), ConfigError>,
}

/// Declares a [`Key`]: `key!("name": Type = default, "doc", |target, value, at| store)`, or
/// `key!(text "name": ...)` for a string key whose environment variable is taken verbatim.
/// `value` is the final value (or the default) as `Type`; `at` is the [`Found`] value, for its
/// source and the checks that name the key.
macro_rules! key {
    (text $name:literal : $ty:ty = $default:expr, $doc:literal, |$c:ident, $v:ident, $at:ident| $body:expr $(,)?) => {
        $crate::settings::key::Key { text: true, ..$crate::settings::key::key!($name: $ty = $default, $doc, |$c, $v, $at| $body) }
    };
    ($name:literal : $ty:ty = $default:expr, $doc:literal, |$c:ident, $v:ident, $at:ident| $body:expr $(,)?) => {
        $crate::settings::key::Key {
            name: $name,
            default: $default,
            doc: $doc,
            text: false,
            check: $crate::settings::key::check_type::<$ty>,
            apply: |$c, $at| {
                let $v: $ty = $at.value()?;
                $body;
                Ok(())
            },
        }
    };
}
pub(crate) use key;

/// Whether `value` deserializes as a `V` (the serde message if not).
pub fn check_type<V: DeserializeOwned>(value: &Value) -> Result<(), String> {
    from_yaml::<V>(value).map(drop)
}

/// `value` as a `V`, read back from its YAML text the way the file is read: a scalar is taken
/// as a string where a string is expected (`LANG: C`, `THREADS: 4` in a string map), as the file
/// always allowed.
fn from_yaml<V: DeserializeOwned>(value: &Value) -> Result<V, String> {
    let text = serde_yaml::to_string(value).map_err(|e| e.to_string())?;
    serde_yaml::from_str(&text).map_err(|e| strip_location(&e.to_string()))
}

/// serde_yaml appends " at line L column C"; an error's source already says where.
pub fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// The serde message for a section (or an entry of keys) that is not a map.
fn not_a_map(value: &Value) -> String {
    check_type::<serde_yaml::Mapping>(value)
        .err()
        .filter(|_| !value.is_null())
        .unwrap_or_else(|| "invalid type: unit value, expected a YAML mapping".to_string())
}

/// A key as the table, the layers and the checks see it, whatever it is stored into.
#[derive(Clone, Debug)]
pub struct KeyInfo {
    /// The full dotted name (`adapters.webhook.targets.<name>.url`).
    pub name: String,
    pub default: KeyDefault,
    pub doc: &'static str,
    /// `ORCHESTRATOR_<TOP>` sets it: a top-level key, or a key of a section the environment
    /// sets as a YAML map (`http`, `liveness`, `rules`). Not the file-only `adapters`.
    pub env: bool,
    text: bool,
    check: fn(&Value) -> Result<(), String>,
}

impl KeyInfo {
    /// The infos of `keys`, named below `prefix` (`""` or `adapters.webhook.`).
    pub fn of<T>(keys: &[Key<T>], prefix: &str, env: bool) -> Vec<KeyInfo> {
        keys.iter()
            .map(|k| KeyInfo {
                name: format!("{prefix}{}", k.name),
                default: k.default,
                doc: k.doc,
                env,
                text: k.text,
                check: k.check,
            })
            .collect()
    }

    fn segments(&self) -> impl Iterator<Item = &str> {
        self.name.split('.')
    }

    /// Whether this key's first segments match `path` (an entry segment matches any name).
    fn starts_with(&self, path: &[String]) -> bool {
        let mut segs = self.segments();
        path.iter().all(|p| segs.next().is_some_and(|s| s == p || is_entry(s)))
    }

    fn depth(&self) -> usize {
        self.segments().count()
    }

    fn top(&self) -> &str {
        self.segments().next().unwrap_or_default()
    }
}

fn is_entry(segment: &str) -> bool {
    segment.starts_with('<')
}

/// A key that no longer exists, refused with a message naming what replaced it.
pub struct Retired {
    pub name: &'static str,
    pub message: &'static str,
}

/// Where a layer came from.
pub enum Origin<'a> {
    File { path: &'a Path, text: &'a str },
    Env(String),
    Flag(&'static str),
}

impl Origin<'_> {
    /// Where an error about `path` points: the key itself (`at_key`) or its value.
    fn at(&self, path: &[String], at_key: bool) -> Source {
        match self {
            Origin::File { path: file, text } => {
                let segs: Vec<&str> = path.iter().map(String::as_str).collect();
                let (line, key_col, value_col) = locate_path(text, &segs).unwrap_or((1, 1, 1));
                Source::File { path: file.to_path_buf(), line, column: if at_key { key_col } else { value_col } }
            }
            Origin::Env(name) => Source::Env(name.clone()),
            Origin::Flag(name) => Source::Flag((*name).to_string()),
        }
    }

    /// Where a stored value came from, as errors about it say. The environment overrides a
    /// top-level key or a whole section, so in the file a value the environment can override is
    /// placed at its top-level key; a file-only value at its own line.
    fn source_of(&self, info: &KeyInfo, path: &[String]) -> Source {
        if info.env { self.at(&path[..1], false) } else { self.at(path, false) }
    }
}

/// Every value the layers gave, by concrete key; a later layer's value replaces an earlier one.
#[derive(Default)]
pub struct Raw {
    values: BTreeMap<String, (Value, Source)>,
    /// The entries seen of each map whose names the user picks (`adapters.webhook.targets` ->
    /// `hook` and where it is), over all layers.
    entries: BTreeMap<String, BTreeMap<String, Source>>,
}

impl Raw {
    /// Adds one layer: a YAML map of keys, checked against `keys` and `retired`.
    pub fn add(
        &mut self,
        keys: &[KeyInfo],
        retired: &[Retired],
        layer: &Value,
        origin: &Origin<'_>,
    ) -> Result<(), ConfigError> {
        let Value::Mapping(map) = layer else {
            let what = not_a_map(layer);
            return Err(ConfigError::Value {
                source_: origin.at(&[], true),
                message: format!("the config must be a map of keys: {what}"),
            });
        };
        self.walk(keys, retired, map, &mut Vec::new(), origin)
    }

    fn walk(
        &mut self,
        keys: &[KeyInfo],
        retired: &[Retired],
        map: &serde_yaml::Mapping,
        path: &mut Vec<String>,
        origin: &Origin<'_>,
    ) -> Result<(), ConfigError> {
        let parent = path.join(".");
        let named = |message: String| if parent.is_empty() { message } else { format!("{parent}: {message}") };
        for (k, v) in map {
            // A key that is not a string (`3:`) is read as its text, as the file always was.
            let k = match k.as_str() {
                Some(k) => k.to_string(),
                None => serde_yaml::to_string(k).unwrap_or_default().trim().to_string(),
            };
            let k = k.as_str();
            path.push(k.to_string());
            let full = path.join(".");
            if let Some(r) = retired.iter().find(|r| r.name == full) {
                if v.is_null() {
                    path.pop();
                    continue;
                }
                let env = keys.iter().any(|i| i.env && i.top() == path[0]);
                let source_ = if env { origin.at(&path[..1], false) } else { origin.at(path, false) };
                return Err(ConfigError::Value { source_, message: r.message.to_string() });
            }
            let matching: Vec<&KeyInfo> = keys.iter().filter(|i| i.starts_with(path)).collect();
            let Some(first) = matching.first() else {
                let mut expected: Vec<String> = Vec::new();
                for seg in keys
                    .iter()
                    .filter(|i| i.starts_with(&path[..path.len() - 1]))
                    .filter_map(|i| i.segments().nth(path.len() - 1))
                {
                    let seg = format!("`{seg}`");
                    if !expected.contains(&seg) {
                        expected.push(seg);
                    }
                }
                let message = named(format!("unknown field `{k}`, expected one of {}", expected.join(", ")));
                return Err(ConfigError::Value { source_: origin.at(path, true), message });
            };
            let entry = first.segments().nth(path.len() - 1).is_some_and(is_entry);
            if v.is_null() && !entry {
                path.pop();
                continue;
            }
            if entry {
                let seen = origin.source_of(&KeyInfo { env: false, ..(*first).clone() }, path);
                self.entries.entry(parent.clone()).or_default().insert(k.to_string(), seen);
            }
            match matching.iter().find(|i| i.depth() == path.len()) {
                Some(leaf) => {
                    (leaf.check)(v).map_err(|e| ConfigError::Value {
                        source_: origin.at(path, false),
                        message: format!("{full}: {e}"),
                    })?;
                    self.values.insert(full, (v.clone(), origin.source_of(leaf, path)));
                }
                None => {
                    let Value::Mapping(inner) = v else {
                        let what = not_a_map(v);
                        return Err(ConfigError::Value {
                            source_: origin.at(path, false),
                            message: format!("{full}: {what}"),
                        });
                    };
                    if matching.iter().any(|i| i.segments().nth(path.len()).is_some_and(is_entry)) {
                        // A map of named entries is given even when empty: `limits: {}` says
                        // "no limits", where no `limits:` says nothing.
                        self.entries.entry(full.clone()).or_default();
                    }
                    self.walk(keys, retired, inner, path, origin)?;
                }
            }
            path.pop();
        }
        Ok(())
    }

    /// Adds the `ORCHESTRATOR_<KEY>` variables, one per top-level key the environment may set
    /// (a section's is a YAML map of its keys), and `aliases` (other names of a variable).
    pub fn add_env(
        &mut self,
        keys: &[KeyInfo],
        retired: &[Retired],
        aliases: &[(&str, &str)],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let mut tops: Vec<&KeyInfo> = Vec::new();
        for k in keys.iter().filter(|k| k.env) {
            if !tops.iter().any(|t| t.top() == k.top()) {
                tops.push(k);
            }
        }
        // A retired top-level key's variable is refused like the key, with what replaced it.
        for r in retired.iter().filter(|r| !r.name.contains('.')) {
            let name = env_var(r.name);
            if env(&name).is_some() {
                return Err(ConfigError::Value { source_: Source::Env(name), message: r.message.to_string() });
            }
        }
        for info in tops {
            let key = info.top();
            let alias = aliases.iter().find(|(k, _)| *k == key).map(|(_, var)| (*var).to_string());
            let Some((name, value)) =
                std::iter::once(env_var(key)).chain(alias).find_map(|name| env(&name).map(|value| (name, value)))
            else {
                continue;
            };
            let yaml = if info.text && info.name == key {
                Value::String(value)
            } else {
                serde_yaml::from_str(&value).map_err(|e| ConfigError::Value {
                    source_: Source::Env(name.clone()),
                    message: format!("{key}: {e}"),
                })?
            };
            self.add(keys, retired, &nest(key, yaml), &Origin::Env(name))?;
        }
        Ok(())
    }

    /// The final value of `key` and where it came from.
    fn get(&self, key: &str) -> Option<&(Value, Source)> {
        self.values.get(key)
    }

    /// Whether a layer gave the map of named entries `parent` (`limits`), even an empty one. A
    /// null value (`limits:` alone) is not given, as for every key.
    pub fn has_entries(&self, parent: &str) -> bool {
        self.entries.contains_key(parent)
    }
}

/// `ORCHESTRATOR_<KEY>` of a top-level key.
pub fn env_var(top: &str) -> String {
    format!("ORCHESTRATOR_{}", top.to_ascii_uppercase())
}

/// `{a: {b: value}}` from `a.b` and `value`.
pub fn nest(dotted: &str, value: Value) -> Value {
    dotted.rsplit('.').fold(value, |inner, seg| {
        let mut m = serde_yaml::Mapping::new();
        m.insert(Value::String(seg.to_string()), inner);
        Value::Mapping(m)
    })
}

/// One key's final value (or none, then its default), as the key's `apply` sees it.
pub struct Found<'a> {
    /// The full key with entry names filled in (`adapters.webhook.targets.hook.url`).
    pub key: String,
    /// Where the value came from ([`Source::Default`] for the default).
    pub source: Source,
    value: Option<&'a Value>,
    default: KeyDefault,
    /// The entry this key belongs to: its name, full key and place.
    entry: Option<(&'a str, String, &'a Source)>,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Found<'_> {
    /// The value, or the default, as a `V`.
    pub fn value<V: DeserializeOwned>(&self) -> Result<V, ConfigError> {
        let default;
        let value = match (self.value, self.default) {
            (Some(v), _) => v,
            (None, KeyDefault::Value(text)) => {
                default = serde_yaml::from_str(text).map_err(|e| self.invalid(format!("the default: {e}")))?;
                &default
            }
            (None, _) => &Value::Null,
        };
        from_yaml(value).map_err(|e| self.invalid(e))
    }

    /// The name of the entry this key belongs to (`hook` in `targets.hook.url`), or `""`.
    pub fn entry(&self) -> &str {
        self.entry.as_ref().map_or("", |(name, _, _)| name)
    }

    /// An environment variable the value names (a webhook's `secret_env`).
    pub fn env(&self, var: &str) -> Option<String> {
        (self.env)(var)
    }

    /// An error at this value's source, worded by the caller.
    pub fn fail(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::Value { source_: self.source.clone(), message: message.into() }
    }

    /// `<key>: <message>` at this value's source.
    pub fn invalid(&self, message: impl fmt::Display) -> ConfigError {
        self.fail(format!("{}: {message}", self.key))
    }

    /// `<entry key>: <message>` at the entry (a bad entry name).
    pub fn entry_error(&self, message: impl fmt::Display) -> ConfigError {
        match &self.entry {
            Some((_, key, source)) => {
                ConfigError::Value { source_: (*source).clone(), message: format!("{key}: {message}") }
            }
            None => self.invalid(message),
        }
    }

    /// A number of seconds: finite, not negative, at most a year, and more than 0 unless
    /// `zero_ok`.
    pub fn seconds(&self, value: f64, zero_ok: bool) -> Result<Duration, ConfigError> {
        seconds((value, self.source.clone()), &self.key, zero_ok)
    }

    /// `value` within `min..=max`.
    pub fn range<N: PartialOrd + fmt::Display>(&self, value: N, min: N, max: N) -> Result<N, ConfigError> {
        if value < min || value > max {
            return Err(self.fail(format!("{} must be between {min} and {max}, got {value}", self.key)));
        }
        Ok(value)
    }

    /// Refuses the value with `message` (worded by the caller) unless `ok`.
    pub fn check(&self, ok: bool, message: impl FnOnce() -> String) -> Result<(), ConfigError> {
        if ok { Ok(()) } else { Err(self.fail(message())) }
    }
}

/// A number of seconds from `source`: finite, not negative, at most a year, and more than 0
/// unless `zero_ok`. Errors begin with `key`.
pub fn seconds((value, source): (f64, Source), key: &str, zero_ok: bool) -> Result<Duration, ConfigError> {
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

/// Applies `keys` (declared below `prefix`) in order to `target`: each key's final value in
/// `raw`, or its default. The keys of one map entry (`targets.<name>.*`) apply entry by entry.
pub fn apply<T>(
    keys: &[Key<T>],
    prefix: &str,
    raw: &Raw,
    env: &dyn Fn(&str) -> Option<String>,
    target: &mut T,
) -> Result<(), ConfigError> {
    let no_entries = BTreeMap::new();
    let mut rest = keys;
    while let Some(first) = rest.first() {
        let Some((head, _)) = first.name.split_once('<') else {
            let key = format!("{prefix}{}", first.name);
            let (value, source) = raw.get(&key).map_or((None, Source::Default), |(v, s)| (Some(v), s.clone()));
            (first.apply)(target, &Found { key, source, value, default: first.default, entry: None, env })?;
            rest = &rest[1..];
            continue;
        };
        let group =
            rest.iter().take_while(|k| k.name.starts_with(head) && k.name[head.len()..].starts_with('<')).count();
        let parent = format!("{prefix}{}", head.trim_end_matches('.'));
        for (name, place) in raw.entries.get(&parent).unwrap_or(&no_entries) {
            let entry_key = format!("{parent}.{name}");
            for k in &rest[..group] {
                let tail = k.name[head.len()..].split_once('.').map_or("", |(_, t)| t);
                let key = if tail.is_empty() { entry_key.clone() } else { format!("{entry_key}.{tail}") };
                let (value, source) = raw.get(&key).map_or((None, Source::Default), |(v, s)| (Some(v), s.clone()));
                if value.is_none() && k.default == KeyDefault::Required {
                    return Err(ConfigError::Value {
                        source_: place.clone(),
                        message: format!("{entry_key}: missing field `{tail}`"),
                    });
                }
                let entry = Some((name.as_str(), entry_key.clone(), place));
                (k.apply)(target, &Found { key, source, value, default: k.default, entry, env })?;
            }
        }
        rest = &rest[group..];
    }
    Ok(())
}

/// The line, key column and value column (1-based) of a nested key such as
/// `adapters.webhook.targets.hook.url`: each segment is looked for below the previous one, more
/// deeply indented, or inside the flow map (`{rate: 5/1s}`) the previous one's value opens on
/// its line. Falls back to the deepest segment found; the empty path is the file's start.
pub fn locate_path(text: &str, path: &[&str]) -> Option<(usize, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut from = 0;
    let mut parent_indent: Option<usize> = None;
    let mut found = path.is_empty().then_some((1, 1, 1));
    // The line and byte offset of the `{` that the last segment found opens as its value.
    let mut flow: Option<(usize, usize)> = None;
    for seg in path {
        if let Some((i, open)) = flow {
            let Some((key, value)) = flow_key(lines[i], open, seg) else { break };
            found = Some((i + 1, key + 1, value + 1));
            flow = lines[i][value..].starts_with('{').then_some((i, value));
            continue;
        }
        let mut hit = None;
        for (i, line) in lines.iter().enumerate().skip(from) {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let indent = line.len() - trimmed.len();
            if let Some(p) = parent_indent
                && indent <= p
                && i > from
            {
                break;
            }
            let unquoted = trimmed.trim_start_matches(['"', '\'']);
            if let Some(rest) = unquoted.strip_prefix(seg) {
                let rest = rest.trim_start_matches(['"', '\'']).trim_start();
                if let Some(value) = rest.strip_prefix(':') {
                    let col = line.len() - value.trim_start().len() + 1;
                    hit = Some((i, indent, col));
                    break;
                }
            }
        }
        let Some((i, indent, col)) = hit else { break };
        found = Some((i + 1, indent + 1, col));
        from = i + 1;
        parent_indent = Some(indent);
        flow = lines[i].get(col - 1..).is_some_and(|v| v.starts_with('{')).then_some((i, col - 1));
    }
    found
}

/// The byte offsets of key `seg` and of its value in the flow map that opens at byte `open` of
/// `line`, if the map names it on that line: `seg` after `{` or `,`, then `:`.
fn flow_key(line: &str, open: usize, seg: &str) -> Option<(usize, usize)> {
    let mut from = open + 1;
    while let Some(p) = line.get(from..).and_then(|rest| rest.find(seg)).map(|p| from + p) {
        from = p + seg.len();
        let key = line[..p].trim_end_matches(['"', '\'']);
        let after = line[from..].trim_start_matches(['"', '\'']).trim_start();
        let follows_separator = key.trim_end().ends_with(['{', ',']);
        if let Some(value) = after.strip_prefix(':').filter(|_| follows_separator) {
            return Some((key.len(), line.len() - value.trim_start().len()));
        }
    }
    None
}

// ---- the key table and orchestrator.example.yaml, checked against the declarations ----------

/// The heading of the key table's section in `docs/operations.md`.
pub const TABLE_HEADING: &str = "## Config keys";

/// The key table (Markdown): one row per key with its default, what else sets it, and its doc.
/// `aliases` and `flags` are `(key, variable or flag)` pairs.
pub fn table(keys: &[KeyInfo], aliases: &[(&str, &str)], flags: &[(&str, &str)]) -> String {
    let mut out = String::from("| key | default | also set by | what it does |\n| --- | --- | --- | --- |\n");
    for k in keys {
        let default = match k.default {
            KeyDefault::Value(v) => format!("`{v}`"),
            KeyDefault::Unset => "unset".to_string(),
            KeyDefault::Computed(how) => how.to_string(),
            KeyDefault::Required => "required".to_string(),
        };
        let mut also = Vec::new();
        if k.env {
            let top = k.top();
            also.push(if k.name == top {
                format!("`{}`", env_var(top))
            } else {
                format!("`{}` (a map)", env_var(top))
            });
            also.extend(aliases.iter().filter(|(key, _)| *key == k.name).map(|(_, var)| format!("`{var}`")));
        }
        also.extend(flags.iter().filter(|(key, _)| *key == k.name).map(|(_, flag)| format!("`{flag}`")));
        let also = if also.is_empty() { "file only".to_string() } else { also.join(", ") };
        out.push_str(&format!("| `{}` | {default} | {also} | {} |\n", k.name, k.doc.replace('|', "\\|")));
    }
    out
}

/// The table lines (`| ...`) of the [`TABLE_HEADING`] section of `doc`, and their line range.
fn table_in(doc: &str) -> Option<(std::ops::Range<usize>, Vec<&str>)> {
    let lines: Vec<&str> = doc.lines().collect();
    let start = lines.iter().position(|l| l.trim_end() == TABLE_HEADING)?;
    let end = lines[start + 1..].iter().position(|l| l.starts_with("## ")).map_or(lines.len(), |i| start + 1 + i);
    let first = (start..end).find(|&i| lines[i].starts_with('|')).unwrap_or(end);
    let last = (first..end).find(|&i| !lines[i].starts_with('|')).unwrap_or(end);
    Some((first..last, lines[first..last].to_vec()))
}

/// What is wrong with the key table in `doc` (`docs/operations.md`): no section, a key missing
/// from it, a row naming a key that does not exist, or rows that differ from `expected` (a
/// changed default or doc line). Empty when it is current.
pub fn check_table(doc: &str, keys: &[KeyInfo], expected: &str) -> Vec<String> {
    let Some((_, rows)) = table_in(doc) else {
        return vec![format!("there is no `{TABLE_HEADING}` section with a table")];
    };
    let named: BTreeSet<&str> =
        rows.iter().filter_map(|r| r.strip_prefix("| `")).filter_map(|r| r.split_once('`')).map(|(k, _)| k).collect();
    let declared: BTreeSet<&str> = keys.iter().map(|k| k.name.as_str()).collect();
    let mut problems: Vec<String> = declared
        .difference(&named)
        .map(|k| format!("the key table lacks `{k}`"))
        .chain(named.difference(&declared).map(|k| format!("the key table names `{k}`, which is not a key")))
        .collect();
    if problems.is_empty() && rows.join("\n").trim_end() != expected.trim_end() {
        problems.push("the key table differs from the declarations (a default or a doc line changed)".to_string());
    }
    problems
}

/// `doc` with its key table replaced by `expected` (the section is appended when missing).
pub fn with_table(doc: &str, expected: &str) -> String {
    match table_in(doc) {
        Some((range, _)) => {
            let lines: Vec<&str> = doc.lines().collect();
            let mut out: Vec<&str> = lines[..range.start].to_vec();
            out.extend(expected.trim_end().lines());
            out.extend(&lines[range.end..]);
            out.join("\n") + "\n"
        }
        None => format!("{}\n\n{TABLE_HEADING}\n\n{}", doc.trim_end(), expected),
    }
}

/// The keys `text` (orchestrator.example.yaml) shows, with their line: the keys it sets, and
/// the keys it shows commented out (`# key: value`, the `#` and one space before the key's
/// indentation). Flow maps (`{a: 1}`) are values, not read for keys. Prose in a comment must
/// not read like `word: ...` at the start of the comment; write keys in prose in backticks.
pub fn keys_shown(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let body = match line.trim_start().strip_prefix('#') {
            Some(rest) => {
                let indent = line.len() - line.trim_start().len();
                format!("{}{}", " ".repeat(indent), rest.strip_prefix(' ').unwrap_or(rest))
            }
            None => line.to_string(),
        };
        let key_part = body.trim_start();
        let indent = body.len() - key_part.len();
        let Some((key, rest)) = key_part.split_once(':') else { continue };
        let is_key = !key.is_empty()
            && key.chars().all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
            && (rest.is_empty() || rest.starts_with(' '));
        if !is_key {
            continue;
        }
        while stack.last().is_some_and(|(d, _)| *d >= indent) {
            stack.pop();
        }
        stack.push((indent, key.to_string()));
        out.push((i + 1, stack.iter().map(|(_, k)| k.as_str()).collect::<Vec<_>>().join(".")));
    }
    out
}

/// What is wrong with `text` (orchestrator.example.yaml) against the declarations: a key it
/// does not show, or a key it shows that does not exist. Empty when it documents every key.
pub fn check_example(text: &str, keys: &[KeyInfo]) -> Vec<String> {
    let shown = keys_shown(text);
    let mut problems = Vec::new();
    let mut documented = BTreeSet::new();
    for (line, path) in &shown {
        let segs: Vec<String> = path.split('.').map(str::to_string).collect();
        // A key, a section or entry above keys, or a value's inside (a map written as a block).
        let known =
            keys.iter().any(|k| k.starts_with(&segs) || segs.len() > k.depth() && k.starts_with(&segs[..k.depth()]));
        if !known {
            problems.push(format!("orchestrator.example.yaml:{line}: `{path}` is not a key"));
        }
        documented
            .extend(keys.iter().filter(|k| k.depth() == segs.len() && k.starts_with(&segs)).map(|k| k.name.as_str()));
    }
    problems.extend(
        keys.iter()
            .filter(|k| !documented.contains(k.name.as_str()))
            .map(|k| format!("orchestrator.example.yaml does not show `{}`", k.name)),
    );
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct Demo {
        port: u32,
        targets: BTreeMap<String, String>,
    }

    const KEYS: &[Key<Demo>] = &[
        key!("port": u32 = KeyDefault::Value("80"), "The port", |d, v, at| d.port = at.range(v, 1, 65_535)?),
        key!("targets.<name>.url": String = KeyDefault::Required, "A target's URL", |d, v, at| {
            d.targets.insert(at.entry().to_string(), v)
        }),
        key!("targets.<name>.method": String = KeyDefault::Value("POST"), "Its method", |d, v, at| {
            if let Some(url) = d.targets.get_mut(at.entry()) {
                url.push_str(&format!(" {v}"));
            }
        }),
    ];

    fn infos() -> Vec<KeyInfo> {
        KeyInfo::of(KEYS, "", true)
    }

    fn resolve(yaml: &str) -> Result<Demo, ConfigError> {
        let mut raw = Raw::default();
        let value: Value = serde_yaml::from_str(yaml).unwrap();
        raw.add(&infos(), &[], &value, &Origin::File { path: Path::new("d.yaml"), text: yaml })?;
        let mut d = Demo::default();
        apply(KEYS, "", &raw, &|_| None, &mut d)?;
        Ok(d)
    }

    #[test]
    fn declarations_check_and_apply() {
        let d = resolve("port: 8080\ntargets:\n  a: {url: x}\n  b: {url: y, method: PUT}\n").unwrap();
        assert_eq!(d.port, 8080);
        assert_eq!(d.targets["a"], "x POST");
        assert_eq!(d.targets["b"], "y PUT");
        let e = resolve("port: 0\n").unwrap_err().to_string();
        assert_eq!(e, "d.yaml:1:7: port must be between 1 and 65535, got 0");
        let e = resolve("port: x\n").unwrap_err().to_string();
        assert!(e.starts_with("d.yaml:1:7: port: invalid type"), "{e}");
        let e = resolve("\nprot: 1\n").unwrap_err().to_string();
        assert_eq!(e, "d.yaml:2:1: unknown field `prot`, expected one of `port`, `targets`");
        let e = resolve("targets:\n  a:\n    method: GET\n").unwrap_err().to_string();
        assert_eq!(e, "d.yaml:2:5: targets.a: missing field `url`");
        let e = resolve("targets:\n  a:\n    metod: GET\n").unwrap_err().to_string();
        assert_eq!(e, "d.yaml:3:5: targets.a: unknown field `metod`, expected one of `url`, `method`");
    }

    #[test]
    fn an_empty_map_of_entries_is_given_and_a_null_one_is_not() {
        let given = |yaml: &str| {
            let mut raw = Raw::default();
            let value: Value = serde_yaml::from_str(yaml).unwrap();
            raw.add(&infos(), &[], &value, &Origin::File { path: Path::new("d.yaml"), text: yaml }).unwrap();
            raw.has_entries("targets")
        };
        assert!(given("targets: {}\n"));
        assert!(given("targets:\n  a: {url: x}\n"));
        assert!(!given("port: 1\n"));
        assert!(!given("targets:\n"), "null is not given, as for every key");
    }

    #[test]
    fn the_table_checker_finds_missing_unknown_and_stale_rows() {
        let keys = infos();
        let expected = table(&keys, &[], &[("port", "--port")]);
        assert!(expected.contains("| `port` | `80` | `ORCHESTRATOR_PORT`, `--port` | The port |"), "{expected}");
        let doc = with_table("# Ops\n\nprose\n", &expected);
        assert!(check_table(&doc, &keys, &expected).is_empty(), "{doc}");
        assert_eq!(with_table(&doc, &expected), doc, "regenerating a current table changes nothing");

        let missing = doc.lines().filter(|l| !l.contains("`port`")).collect::<Vec<_>>().join("\n");
        assert_eq!(check_table(&missing, &keys, &expected), ["the key table lacks `port`"]);
        let extra = doc.replace("| `port` |", "| `port` | x |\n| `prot` |");
        assert_eq!(check_table(&extra, &keys, &expected), ["the key table names `prot`, which is not a key"]);
        let stale = doc.replace("`80`", "`81`");
        assert_eq!(check_table(&stale, &keys, &expected).len(), 1);
        assert_eq!(check_table("# Ops\n", &keys, &expected).len(), 1, "no section");
        let fixed = with_table(&stale, &expected);
        assert!(check_table(&fixed, &keys, &expected).is_empty());
    }

    #[test]
    fn the_example_checker_reads_set_and_commented_keys() {
        let keys = infos();
        let good = "# The port. Also `port: 80` in prose.\nport: 80\ntargets: {}\n#   hook:\n#     url: x\n#     method: POST\n";
        assert_eq!(
            keys_shown(good).into_iter().map(|(_, p)| p).collect::<Vec<_>>(),
            ["port", "targets", "targets.hook", "targets.hook.url", "targets.hook.method"]
        );
        assert!(check_example(good, &keys).is_empty(), "{:?}", check_example(good, &keys));
        let missing = good.replace("#     method: POST\n", "");
        assert_eq!(check_example(&missing, &keys), ["orchestrator.example.yaml does not show `targets.<name>.method`"]);
        let unknown = format!("{good}# prot: 1\n");
        assert_eq!(check_example(&unknown, &keys), ["orchestrator.example.yaml:7: `prot` is not a key"]);
        let nested = good.replace("#     url: x", "#     ur: x");
        assert_eq!(check_example(&nested, &keys).len(), 2, "{:?}", check_example(&nested, &keys));
    }

    #[test]
    fn nested_keys_are_located() {
        let text = "a: 1\nadapters:\n  webhook:\n    targets:\n      hook:\n        url: x\n  command: {}\n";
        assert_eq!(locate_path(text, &["adapters", "webhook", "targets", "hook", "url"]), Some((6, 9, 14)));
        assert_eq!(locate_path(text, &["adapters", "command"]), Some((7, 3, 12)));
        assert_eq!(locate_path(text, &["adapters", "social", "platforms"]), Some((2, 1, 10)), "falls back to a parent");
        let flow = "limits:\n  WEBHOOK: {max_rate: 1, rate: fifty, 'x': {y: 2}}\n  NOOP: {}\n";
        assert_eq!(locate_path(flow, &["limits", "WEBHOOK", "rate"]), Some((2, 26, 32)), "not inside `max_rate`");
        assert_eq!(locate_path(flow, &["limits", "WEBHOOK", "x", "y"]), Some((2, 45, 48)), "nested, quoted");
        assert_eq!(locate_path(flow, &["limits", "WEBHOOK", "burst"]), Some((2, 3, 12)), "falls back to the entry");
        assert_eq!(locate_path(flow, &["limits", "NOOP", "rate"]), Some((3, 3, 9)));
    }
}
