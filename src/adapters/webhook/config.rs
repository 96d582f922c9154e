//! `adapters.webhook`: the named targets (URL, method, headers, signing secret, timeout), whether
//! a payload may carry a raw URL, and `WEBHOOK`'s timeout. `POST_SOCIAL` and `ALERT` deliver
//! through these targets too.
//!
//! Each key is declared once, in [`KEYS`]. A target's `secret_env` names an environment variable
//! whose value is read here, once, and held as a [`Secret`] that never prints. This module
//! validates; it never sends anything.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::adapters::{AdaptersConfig, NAME_RULE, is_name};
use crate::settings::key::KeyDefault::{Computed, Required, Unset, Value};
use crate::settings::key::{Found, Key, key};

/// HTTP methods a webhook target may use.
pub const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];

/// The validated `adapters.webhook` section. `Default` is blank: the keys fill it.
#[derive(Clone, Debug, Default, PartialEq)]
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

/// The target a `targets.<name>.*` key belongs to (its `url` comes first and checks the name).
fn target<'a>(a: &'a mut AdaptersConfig, at: &Found<'_>) -> &'a mut WebhookTarget {
    let name = at.entry();
    a.webhook.targets.entry(name.to_string()).or_insert_with(|| WebhookTarget {
        name: name.to_string(),
        url: String::new(),
        method: "POST".to_string(),
        headers: BTreeMap::new(),
        secret_env: None,
        secret: None,
        timeout: None,
    })
}

/// The keys of `adapters.webhook`.
pub const KEYS: &[Key<AdaptersConfig>] = &[
    key!("timeout_seconds": f64 = Value("30"),
        "Bounds one `WEBHOOK` attempt (the smaller of this and `action_timeout_seconds` applies)",
        |a, v, at| a.webhook.timeout = at.seconds(v, false)?),
    key!("allow_raw_urls": bool = Value("false"),
        "A payload may give its own `url` instead of naming a target (unsigned)",
        |a, v, at| a.webhook.allow_raw_urls = v),
    key!("targets.<name>.url": String = Required,
    "The target's absolute `http(s)` URL, without credentials",
    |a, v, at| {
        if !is_name(at.entry()) {
            return Err(at.entry_error(NAME_RULE));
        }
        check_url(&v).map_err(|m| at.invalid(m))?;
        target(a, at).url = v;
    }),
    key!("targets.<name>.method": String = Value("POST"),
    "`GET`, `POST`, `PUT`, `PATCH` or `DELETE`",
    |a, v, at| {
        let method = v.to_ascii_uppercase();
        if !METHODS.contains(&method.as_str()) {
            return Err(at.invalid(format!("'{method}' is not one of {}", METHODS.join(", "))));
        }
        target(a, at).method = method;
    }),
    key!("targets.<name>.headers": BTreeMap<String, String> = Value("{}"),
    "Headers sent with every request (sensitive-looking values are redacted in proofs)",
    |a, v, at| {
        for (k, value) in &v {
            if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err() {
                return Err(at.invalid(format!("'{k}' is not a valid header name")));
            }
            if reqwest::header::HeaderValue::from_str(value).is_err() {
                return Err(at.invalid(format!("the value of '{k}' is not a valid header value")));
            }
            if k.to_ascii_lowercase().starts_with("x-orchestrator-") {
                return Err(at.invalid(format!("'{k}' is set by the orchestrator itself")));
            }
        }
        target(a, at).headers = v;
    }),
    key!("targets.<name>.secret_env": Option<String> = Unset,
    "The environment variable holding the HMAC-SHA256 key that signs the body",
    |a, v, at| {
        let secret = match &v {
            Some(var) if var.is_empty() || var.contains('=') || var.contains('\0') => {
                return Err(at.invalid("must name an environment variable"));
            }
            Some(var) => at.env(var).filter(|s| !s.is_empty()).map(Secret),
            None => None,
        };
        let t = target(a, at);
        t.secret_env = v;
        t.secret = secret;
    }),
    key!("targets.<name>.timeout_seconds": Option<f64> = Computed("`adapters.webhook.timeout_seconds`"),
        "The target's request timeout",
        |a, v, at| target(a, at).timeout = v.map(|s| at.seconds(s, false)).transpose()?),
];

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

#[cfg(test)]
mod tests {
    use super::*;

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
