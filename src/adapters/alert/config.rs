//! `adapters.alert`: where alerts go besides the log (a webhook target, Alertmanager's API v2),
//! and `ALERT`'s timeout.
//!
//! Each key is declared once, in [`KEYS`]; the target must be one of `adapters.webhook`, which
//! is applied first. An `alertmanager.*` key set without `alertmanager.url` is refused: nothing
//! would use it. This module validates; it never sends anything.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::adapters::{AdaptersConfig, check_url};
use crate::settings::Source;
use crate::settings::key::KeyDefault::{Unset, Value};
use crate::settings::key::{Found, Key, key};

/// The validated `adapters.alert` section. `Default` is blank: the keys fill it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AlertConfig {
    /// A webhook target that alerts are also sent to.
    pub target: Option<String>,
    pub timeout: Duration,
    /// Alertmanager, when alerts are posted to it.
    pub alertmanager: Option<AlertmanagerConfig>,
}

/// `adapters.alert.alertmanager`: where Alertmanager's API v2 is and what each alert carries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AlertmanagerConfig {
    /// Alertmanager's base URL (`http://127.0.0.1:9093`, or with its route prefix), no
    /// trailing `/`; alerts go to `<url>/api/v2/alerts`.
    pub url: String,
    /// The orchestrator's HTTP base as Alertmanager's users reach it, no trailing `/`: an
    /// alert's `generatorURL` is `<base>/api/ticks/<tick>/explain`.
    pub generator_base_url: Option<String>,
    /// A firing alert's `endsAt` is this long after it was sent: Alertmanager resolves it then
    /// unless it is sent again (a rule that still alerts) or resolved sooner.
    pub resolve_after: Duration,
    /// Labels every alert carries (`env: prod`), under the alert's own.
    pub labels: BTreeMap<String, String>,
}

/// The labels an alert sets itself, from its payload's fields: neither the config's
/// `alertmanager.labels` nor a payload's `labels` may set them.
pub const OWN_LABELS: &[&str] = &["alertname", "severity", "key", "rule"];

/// Whether `name` is a Prometheus label name (`[a-zA-Z_][a-zA-Z0-9_]*`, not `__` reserved).
pub fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

/// `alertmanager`, which its `url` created: a later key set without it is refused by name.
fn alertmanager<'a>(a: &'a mut AdaptersConfig, at: &Found<'_>) -> Result<Option<&'a mut AlertmanagerConfig>, String> {
    match (&mut a.alert.alertmanager, &at.source) {
        (Some(am), _) => Ok(Some(am)),
        (None, Source::Default) => Ok(None),
        (None, _) => Err(format!(
            "is set but adapters.alert.alertmanager.url is not, so nothing would use it: set the url or remove {}",
            at.key
        )),
    }
}

/// A base URL with no trailing `/`, checked like a webhook target's.
fn base_url(v: &str) -> Result<String, String> {
    check_url(v)?;
    let u = reqwest::Url::parse(v).map_err(|e| format!("not a valid URL ({e})"))?;
    if u.query().is_some() || u.fragment().is_some() {
        return Err("must be a base URL, without a query or fragment".to_string());
    }
    Ok(v.trim_end_matches('/').to_string())
}

/// The keys of `adapters.alert`.
pub const KEYS: &[Key<AdaptersConfig>] = &[
    key!("timeout_seconds": f64 = Value("30"),
        "Bounds one `ALERT` attempt",
        |a, v, at| a.alert.timeout = at.seconds(v, false)?),
    key!("target": Option<String> = Unset,
    "A webhook target that alerts are also sent to (they are always logged)",
    |a, v, at| {
        if let Some(target) = &v
            && !a.webhook.targets.contains_key(target)
        {
            return Err(at.invalid(format!("'{target}' is not a target under adapters.webhook.targets")));
        }
        a.alert.target = v;
    }),
    key!("alertmanager.url": Option<String> = Unset,
    "Alertmanager's base URL: each alert is also posted to `<url>/api/v2/alerts`",
    |a, v, at| {
        if let Some(url) = v {
            if url.trim_end_matches('/').ends_with("/api/v2/alerts") {
                return Err(at.invalid("give Alertmanager's base URL (e.g. http://127.0.0.1:9093): /api/v2/alerts is added"));
            }
            let url = base_url(&url).map_err(|m| at.invalid(m))?;
            a.alert.alertmanager = Some(AlertmanagerConfig { url, ..AlertmanagerConfig::default() });
        }
    }),
    key!("alertmanager.generator_base_url": Option<String> = Unset,
    "The orchestrator's HTTP base URL as Alertmanager's users reach it: `generatorURL` is `<base>/api/ticks/<tick>/explain`",
    |a, v, at| {
        if let Some(am) = alertmanager(a, at).map_err(|m| at.invalid(m))? {
            am.generator_base_url = v.map(|u| base_url(&u)).transpose().map_err(|m| at.invalid(m))?;
        }
    }),
    key!("alertmanager.resolve_after_seconds": f64 = Value("300"),
    "A firing alert's `endsAt` is this long after it is sent, so it resolves unless sent again",
    |a, v, at| {
        let after = at.seconds(v, false)?;
        if let Some(am) = alertmanager(a, at).map_err(|m| at.invalid(m))? {
            am.resolve_after = after;
        }
    }),
    key!("alertmanager.labels": BTreeMap<String, String> = Value("{}"),
    "Labels every alert carries (e.g. `env: prod`); not `alertname`, `severity`, `key` or `rule`",
    |a, v, at| {
        for name in v.keys() {
            if !is_label_name(name) {
                return Err(at.invalid(format!("'{name}' is not a label name ([a-zA-Z_][a-zA-Z0-9_]*, not __...)")));
            }
            if OWN_LABELS.contains(&name.as_str()) {
                return Err(at.invalid(format!("'{name}' is set by each alert itself")));
            }
        }
        if let Some(am) = alertmanager(a, at).map_err(|m| at.invalid(m))? {
            am.labels = v;
        }
    }),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_names_follow_prometheus() {
        for good in ["env", "_x", "team_2", "A"] {
            assert!(is_label_name(good), "{good}");
        }
        for bad in ["", "2x", "a-b", "__name", "é", "a.b"] {
            assert!(!is_label_name(bad), "{bad}");
        }
    }
}
