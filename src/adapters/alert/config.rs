//! `adapters.alert`: the webhook target alerts are also sent to, and `ALERT`'s timeout.
//!
//! Each key is declared once, in [`KEYS`]; the target must be one of `adapters.webhook`, which
//! is applied first. This module validates; it never sends anything.

use std::time::Duration;

use crate::adapters::AdaptersConfig;
use crate::settings::key::KeyDefault::{Unset, Value};
use crate::settings::key::{Key, key};

/// The validated `adapters.alert` section. `Default` is blank: the keys fill it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AlertConfig {
    /// A webhook target that alerts are also sent to.
    pub target: Option<String>,
    pub timeout: Duration,
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
];
