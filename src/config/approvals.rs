//! The `approvals:` section ([`APPROVALS_KEYS`]): which action types always wait for an
//! operator's approval, and how long an approval may wait before the action is cancelled.
//! Declared in `config`'s own folder, as the enqueue defaults it feeds are the whole config's.
//! It decides nothing about a given action: `queue::prepare` does, with these as defaults.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::settings::key::KeyDefault::Value;
use crate::settings::key::{Key, key};

/// `approvals:` settings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ApprovalsConfig {
    /// Action types whose every new action waits in `AWAITING_APPROVAL`.
    pub types: BTreeSet<String>,
    /// How long an action waits for its approval before it is cancelled.
    pub expire_after: Duration,
}

/// The `approvals.*` keys.
pub const APPROVALS_KEYS: &[Key<ApprovalsConfig>] = &[
    key!("approvals.types": Vec<String> = Value("[]"),
    "Action types whose every action waits for an operator's approval (`actions approve`) before it can run",
    |a, v, at| {
        let mut types = BTreeSet::new();
        for t in v {
            crate::queue::validate_type(&t)
                .map_err(|e| at.fail(format!("approvals.types: {t:?} is not an action type: {e}")))?;
            types.insert(t);
        }
        a.types = types;
    }),
    key!("approvals.expire_after_seconds": f64 = Value("86400"),
        "An action not approved (nor rejected) this long after its enqueue is cancelled, with the reason",
        |a, v, at| a.expire_after = at.seconds(v, false)?),
];
