//! `adapters.social`: which webhook target delivers `POST_SOCIAL` for each platform, and
//! `POST_SOCIAL`'s timeout.
//!
//! Each key is declared once, in [`KEYS`]; a platform must name a target of `adapters.webhook`,
//! which is applied first. This module validates; it never sends anything.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::adapters::AdaptersConfig;
use crate::settings::key::KeyDefault::{Unset, Value};
use crate::settings::key::{Key, key};

/// The validated `adapters.social` section. `Default` is blank: the keys fill it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SocialConfig {
    /// Platform name -> webhook target name.
    pub platforms: BTreeMap<String, String>,
    pub timeout: Duration,
}

/// The keys of `adapters.social`.
pub const KEYS: &[Key<AdaptersConfig>] = &[
    key!("timeout_seconds": f64 = Value("30"),
        "Bounds one `POST_SOCIAL` attempt",
        |a, v, at| a.social.timeout = at.seconds(v, false)?),
    key!("platforms.<platform>": String = Unset,
    "The webhook target that delivers posts to this platform (none: real runs fail as unconfigured)",
    |a, v, at| {
        if !a.webhook.targets.contains_key(&v) {
            return Err(at.invalid(format!("'{v}' is not a target under adapters.webhook.targets")));
        }
        a.social.platforms.insert(at.entry().to_string(), v);
    }),
];
