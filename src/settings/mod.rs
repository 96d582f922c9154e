//! The mechanism of declared settings, below every component that declares some: [`key`]
//! (a key's declaration, the layers read against the declarations, applying them in order,
//! the key table and the example's check), the error a key reports naming where its value came
//! from ([`ConfigError`], [`Source`]), and the duration syntax keys and flags share
//! ([`parse_duration`]).
//!
//! A component (an adapter, the limits) declares its own keys with this and knows nothing of
//! `config`, which only assembles the components' declarations into one `Config`. This module
//! imports nothing of the crate but `model`.

pub mod key;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The longest duration a `*_seconds` key takes: one year.
pub(crate) const MAX_SECONDS: f64 = 365.0 * 86_400.0;

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

/// Parses a human duration such as `30s`, `5m`, `7d` or `1h30m`, at most
/// [`crate::model::MAX_DURATION`] (1,000 years), so that adding it to or taking it from any date the
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
    use crate::model::{MAX_DURATION, earlier, later};
    use chrono::{DateTime, Utc};
    use proptest::prelude::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86_400));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert!(parse_duration("soon").unwrap_err().contains("not a duration"));
    }

    proptest! {
        /// Any duration text, parsed and applied to any date, is a value or a clear error.
        #[test]
        fn any_duration_text_on_any_date_is_a_value_or_an_error(
            text in prop_oneof![
                "[0-9]{1,25}[a-z]{0,6}",
                "[0-9]{1,12}(y|d|h|m|s|ms|us|ns|years|months|weeks)( [0-9]{1,12}[a-z]{1,3}){0,3}",
                any::<String>(),
            ],
            secs in any::<i64>(),
            forward in any::<bool>(),
        ) {
            let t = DateTime::<Utc>::from_timestamp(secs % 8_000_000_000_000, 0).unwrap_or(DateTime::<Utc>::MIN_UTC);
            if let Ok(d) = parse_duration(&text) {
                prop_assert!(d <= MAX_DURATION);
                let r = if forward { later(t, d) } else { earlier(t, d) };
                if let Ok(r2) = r {
                    prop_assert_eq!(if forward { r2 - t } else { t - r2 }, chrono::Duration::from_std(d).unwrap());
                }
            }
        }
    }
}
