//! The `adapters:` section of the config file: webhook targets, the command allowlist, social
//! platforms, the alert sink and each action type's timeout, validated into [`AdaptersConfig`].
//!
//! File only (nested keys have no environment override), except that a target's `secret_env`
//! names an environment variable whose value is read here, once, and held as a [`Secret`] that
//! never prints. Every error names the full key (`adapters.webhook.targets.hook.url`) and its
//! line and column. This module validates; it neither sends nor runs anything.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Source, seconds};

/// An action type's timeout when `adapters.<type>.timeout_seconds` is not set.
pub const DEFAULT_TYPE_TIMEOUT_SECONDS: f64 = 30.0;
/// HTTP methods a webhook target may use.
pub const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];

/// The validated `adapters:` section.
#[derive(Clone, Debug, PartialEq)]
pub struct AdaptersConfig {
    pub webhook: WebhookConfig,
    pub command: CommandConfig,
    pub social: SocialConfig,
    pub alert: AlertConfig,
}

#[derive(Clone, Debug, PartialEq)]
pub struct WebhookConfig {
    pub targets: BTreeMap<String, WebhookTarget>,
    /// Whether a payload may carry its own `url` instead of naming a target.
    pub allow_raw_urls: bool,
    pub timeout: Duration,
}

/// A named HTTP endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookTarget {
    pub name: String,
    /// An absolute `http` or `https` URL.
    pub url: String,
    /// Upper case, one of [`METHODS`].
    pub method: String,
    pub headers: BTreeMap<String, String>,
    /// The environment variable holding the HMAC secret, if the body is signed.
    pub secret_env: Option<String>,
    /// Its value when the config was loaded; `None` when the variable was not set.
    pub secret: Option<Secret>,
    /// Request timeout; the type's timeout when not set.
    pub timeout: Option<Duration>,
}

/// A secret value: compared, used, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Clone, Debug, PartialEq)]
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

#[derive(Clone, Debug, PartialEq)]
pub struct SocialConfig {
    /// Platform name -> webhook target name.
    pub platforms: BTreeMap<String, String>,
    pub timeout: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AlertConfig {
    /// A webhook target that alerts are also sent to.
    pub target: Option<String>,
    pub timeout: Duration,
}

impl Default for AdaptersConfig {
    fn default() -> Self {
        let t = Duration::from_secs_f64(DEFAULT_TYPE_TIMEOUT_SECONDS);
        AdaptersConfig {
            webhook: WebhookConfig { targets: BTreeMap::new(), allow_raw_urls: false, timeout: t },
            command: CommandConfig { allow: BTreeMap::new(), timeout: t },
            social: SocialConfig { platforms: BTreeMap::new(), timeout: t },
            alert: AlertConfig { target: None, timeout: t },
        }
    }
}

impl AdaptersConfig {
    /// Each configurable action type's timeout, for the executor.
    pub fn type_timeouts(&self) -> BTreeMap<String, Duration> {
        [
            ("WEBHOOK", self.webhook.timeout),
            ("COMMAND", self.command.timeout),
            ("POST_SOCIAL", self.social.timeout),
            ("ALERT", self.alert.timeout),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

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

// ---- the raw layer -------------------------------------------------------------------------

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AdaptersLayer {
    webhook: Option<WebhookLayer>,
    command: Option<CommandLayer>,
    social: Option<SocialLayer>,
    alert: Option<AlertLayer>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookLayer {
    targets: Option<BTreeMap<String, TargetLayer>>,
    allow_raw_urls: Option<bool>,
    timeout_seconds: Option<f64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetLayer {
    url: String,
    method: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    secret_env: Option<String>,
    timeout_seconds: Option<f64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandLayer {
    allow: Option<BTreeMap<String, SpecLayer>>,
    timeout_seconds: Option<f64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecLayer {
    program: PathBuf,
    args: Option<Vec<String>>,
    timeout_seconds: Option<f64>,
    env: Option<BTreeMap<String, String>>,
    nonzero_exit: Option<NonzeroExit>,
    allow_dash: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SocialLayer {
    platforms: Option<BTreeMap<String, String>>,
    timeout_seconds: Option<f64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertLayer {
    target: Option<String>,
    timeout_seconds: Option<f64>,
}

/// Where the layer came from, to point errors at a line and column.
pub(super) struct FileText<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl FileText<'_> {
    fn source(&self, key_path: &[&str]) -> Source {
        let (line, column) = locate_path(self.text, key_path).unwrap_or((1, 1));
        Source::File { path: self.path.to_path_buf(), line, column }
    }

    fn err(&self, key_path: &[&str], message: impl fmt::Display) -> ConfigError {
        ConfigError::Value { source_: self.source(key_path), message: format!("{}: {message}", key_path.join(".")) }
    }

    fn timeout(&self, value: Option<f64>, key_path: &[&str]) -> Result<Option<Duration>, ConfigError> {
        let Some(v) = value else { return Ok(None) };
        let key = key_path.join(".");
        seconds((v, self.source(key_path)), &key, false).map(Some)
    }
}

/// Validates the `adapters:` layer. `env` reads the variables named by `secret_env`.
pub(super) fn resolve(
    layer: Option<AdaptersLayer>,
    file: Option<FileText<'_>>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<AdaptersConfig, ConfigError> {
    let mut out = AdaptersConfig::default();
    let (Some(layer), Some(file)) = (layer, file) else { return Ok(out) };
    let type_timeout = |value: Option<f64>, section: &str| -> Result<Duration, ConfigError> {
        Ok(file
            .timeout(value, &["adapters", section, "timeout_seconds"])?
            .unwrap_or(Duration::from_secs_f64(DEFAULT_TYPE_TIMEOUT_SECONDS)))
    };

    let webhook = layer.webhook.unwrap_or_default();
    out.webhook.timeout = type_timeout(webhook.timeout_seconds, "webhook")?;
    out.webhook.allow_raw_urls = webhook.allow_raw_urls.unwrap_or(false);
    for (name, t) in webhook.targets.unwrap_or_default() {
        let at = |leaf: &'static str| -> Vec<&str> {
            let mut p = vec!["adapters", "webhook", "targets", name.as_str()];
            p.push(leaf);
            p
        };
        if !is_name(&name) {
            return Err(file.err(&["adapters", "webhook", "targets", &name], NAME_RULE));
        }
        check_url(&t.url).map_err(|m| file.err(&at("url"), m))?;
        let method = t.method.unwrap_or_else(|| "POST".to_string()).to_ascii_uppercase();
        if !METHODS.contains(&method.as_str()) {
            return Err(file.err(&at("method"), format!("'{method}' is not one of {}", METHODS.join(", "))));
        }
        let headers = t.headers.unwrap_or_default();
        for (k, v) in &headers {
            if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err() {
                return Err(file.err(&at("headers"), format!("'{k}' is not a valid header name")));
            }
            if reqwest::header::HeaderValue::from_str(v).is_err() {
                return Err(file.err(&at("headers"), format!("the value of '{k}' is not a valid header value")));
            }
            if k.to_ascii_lowercase().starts_with("x-orchestrator-") {
                return Err(file.err(&at("headers"), format!("'{k}' is set by the orchestrator itself")));
            }
        }
        let secret = match &t.secret_env {
            Some(var) if var.is_empty() || var.contains('=') || var.contains('\0') => {
                return Err(file.err(&at("secret_env"), "must name an environment variable"));
            }
            Some(var) => env(var).filter(|v| !v.is_empty()).map(Secret),
            None => None,
        };
        let timeout = file.timeout(t.timeout_seconds, &at("timeout_seconds"))?;
        let target = WebhookTarget {
            name: name.clone(),
            url: t.url,
            method,
            headers,
            secret_env: t.secret_env,
            secret,
            timeout,
        };
        out.webhook.targets.insert(name, target);
    }

    let command = layer.command.unwrap_or_default();
    out.command.timeout = type_timeout(command.timeout_seconds, "command")?;
    for (name, s) in command.allow.unwrap_or_default() {
        let at = |leaf: &'static str| -> Vec<&str> {
            let mut p = vec!["adapters", "command", "allow", name.as_str()];
            p.push(leaf);
            p
        };
        if !is_name(&name) {
            return Err(file.err(&["adapters", "command", "allow", &name], NAME_RULE));
        }
        if !s.program.is_absolute() {
            return Err(file.err(
                &at("program"),
                format!("'{}' must be an absolute path (there is no shell and no PATH lookup)", s.program.display()),
            ));
        }
        let args = s.args.unwrap_or_default();
        for a in &args {
            if a.contains('\0') {
                return Err(file.err(&at("args"), "an argument contains a NUL character"));
            }
        }
        let env_vars = s.env.unwrap_or_default();
        for (k, v) in &env_vars {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(file.err(&at("env"), format!("'{k}' is not a valid environment variable")));
            }
        }
        let timeout = file.timeout(s.timeout_seconds, &at("timeout_seconds"))?;
        let allow_dash = s.allow_dash.unwrap_or_default();
        let declared: Vec<&str> = args.iter().flat_map(|a| slots(a)).collect();
        if let Some(unknown) = allow_dash.iter().find(|d| !declared.contains(&d.as_str())) {
            return Err(file.err(
                &at("allow_dash"),
                format!("'{unknown}' is not one of the slots of args ({})", declared.join(", ")),
            ));
        }
        let spec = CommandSpec {
            name: name.clone(),
            program: s.program,
            args,
            timeout,
            env: env_vars,
            nonzero_exit: s.nonzero_exit.unwrap_or_default(),
            allow_dash,
        };
        out.command.allow.insert(name, spec);
    }

    let social = layer.social.unwrap_or_default();
    out.social.timeout = type_timeout(social.timeout_seconds, "social")?;
    for (platform, target) in social.platforms.unwrap_or_default() {
        if !out.webhook.targets.contains_key(&target) {
            return Err(file.err(
                &["adapters", "social", "platforms", &platform],
                format!("'{target}' is not a target under adapters.webhook.targets"),
            ));
        }
        out.social.platforms.insert(platform, target);
    }

    let alert = layer.alert.unwrap_or_default();
    out.alert.timeout = type_timeout(alert.timeout_seconds, "alert")?;
    if let Some(target) = alert.target {
        if !out.webhook.targets.contains_key(&target) {
            return Err(file.err(
                &["adapters", "alert", "target"],
                format!("'{target}' is not a target under adapters.webhook.targets"),
            ));
        }
        out.alert.target = Some(target);
    }
    Ok(out)
}

const NAME_RULE: &str = "names are 1 to 64 characters from [A-Za-z0-9_-]";

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// An absolute `http(s)` URL with a host and no credentials. Errors quote the URL only
/// without its userinfo, query and fragment (or not at all when it does not parse), since a URL
/// can carry secrets.
pub fn check_url(url: &str) -> Result<(), String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("not a valid URL ({e})"))?;
    let shown = crate::adapters::http::loggable_url(url);
    if !u.username().is_empty() || u.password().is_some() {
        return Err(format!(
            "'{shown}' carries credentials (user:password@), which are refused: they would be sent as \
             Basic auth and a peer could echo them into logs. Sign with secret_env, or send a header \
             (e.g. Authorization) from the target's headers"
        ));
    }
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err(format!("'{shown}' must use http or https, not {}", u.scheme()));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(format!("'{shown}' has no host"));
    }
    Ok(())
}

/// The line and column (1-based) of a nested key such as `adapters.webhook.targets.hook.url`:
/// each segment is looked for below the previous one, more deeply indented. Falls back to the
/// deepest segment found.
fn locate_path(text: &str, path: &[&str]) -> Option<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut from = 0;
    let mut parent_indent: Option<usize> = None;
    let mut found = None;
    for seg in path {
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
        found = Some((i + 1, col));
        from = i + 1;
        parent_indent = Some(indent);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_keys_are_located() {
        let text = "a: 1\nadapters:\n  webhook:\n    targets:\n      hook:\n        url: x\n  command: {}\n";
        assert_eq!(locate_path(text, &["adapters", "webhook", "targets", "hook", "url"]), Some((6, 14)));
        assert_eq!(locate_path(text, &["adapters", "command"]), Some((7, 12)));
        assert_eq!(locate_path(text, &["adapters", "social", "platforms"]), Some((2, 10)), "falls back to a parent");
    }

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

    #[test]
    fn urls_are_checked() {
        assert!(check_url("https://example.com/hook").is_ok());
        assert!(check_url("ftp://example.com").unwrap_err().contains("http or https"));
        assert!(check_url("not a url").unwrap_err().contains("not a valid URL"));
        let e = check_url("https://user:hunter2@example.com/hook?token=abc").unwrap_err();
        assert!(e.contains("carries credentials") && e.contains("secret_env"), "{e}");
        assert!(e.starts_with("'https://example.com/hook' carries credentials"), "{e}");
        assert!(!e.contains("hunter2") && !e.contains("abc"), "{e}");
        assert!(!check_url("ftp://u:hunter2@example.com").unwrap_err().contains("hunter2"));
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(<redacted>)");
    }
}
