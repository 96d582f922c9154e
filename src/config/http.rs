//! The `http:` section ([`HTTP_KEYS`]) and the admin API's tokens, which come from the
//! environment only. Declared in `config`'s own folder rather than in `http`, because the HTTP
//! server reads the whole assembled [`super::Config`] (the tick interval, the workers' TTL, the
//! proof setting): `config` importing `http` would be a cycle.

use std::fmt;
use std::time::Duration;

use crate::settings::key::KeyDefault::Value;
use crate::settings::key::{Key, key};

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

impl Default for HttpConfig {
    /// Blank, like `Config::default()`: the `http.*` keys fill it.
    fn default() -> Self {
        HttpConfig {
            listen: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            header_read_timeout: Duration::ZERO,
            body_read_timeout: Duration::ZERO,
            max_connections: 0,
        }
    }
}

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

/// The `http.*` keys.
pub const HTTP_KEYS: &[Key<HttpConfig>] = &[
    key!("http.listen": String = Value(DEFAULT_HTTP_LISTEN),
    "Where `run` and `serve` listen (a non-loopback address needs an admin token)",
    |h, v, at| {
        h.listen = v.trim().parse().map_err(|e| {
            at.fail(format!("http.listen '{v}' is not an address like 127.0.0.1:9464 ({e})"))
        })?;
    }),
    key!("http.header_read_timeout_seconds": f64 = Value("10"),
        "A connection that sends no complete request headers within this is closed",
        |h, v, at| h.header_read_timeout = at.seconds(v, false)?),
    key!("http.body_read_timeout_seconds": f64 = Value("30"),
        "A request body not received within this gets 408",
        |h, v, at| h.body_read_timeout = at.seconds(v, false)?),
    key!("http.max_connections": u32 = Value("512"),
        "Connections served at once; more wait in the listen backlog",
        |h, v, at| h.max_connections = at.range(v, 1, 65_536)?),
];
