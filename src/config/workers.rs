//! The `workers:` section ([`WORKERS_KEYS`]). Declared in `config`'s own folder rather than in
//! `worker`, because a worker reads the whole assembled [`super::Config`] (the executor's
//! settings, the limits, the proof setting): `config` importing `worker` would be a cycle.

use std::time::Duration;

use crate::settings::key::KeyDefault::Value;
use crate::settings::key::{Key, key};

/// `workers:` settings: how executors register and stay alive (`orchestrator worker`, and the
/// `run` process's own executor).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkersConfig {
    /// How often a worker renews its heartbeat.
    pub heartbeat: Duration,
    /// A worker whose heartbeat is older than this is dead: its claims are rescued.
    pub ttl: Duration,
    /// How often an idle worker looks for due work when no notification wakes it.
    pub poll: Duration,
    /// How long a stopping worker lets its attempts in flight finish.
    pub shutdown_grace: Duration,
}

/// The `workers.*` keys (`ttl_seconds` is checked against the heartbeat).
pub const WORKERS_KEYS: &[Key<WorkersConfig>] = &[
    key!("workers.heartbeat_seconds": f64 = Value("5"),
        "How often a worker (and `run`'s own executor) renews its registration",
        |w, v, at| w.heartbeat = at.seconds(v, false)?),
    key!("workers.ttl_seconds": f64 = Value("30"),
    "A worker not renewed for this long is dead: its claims are rescued (longer than the heartbeat)",
    |w, v, at| {
        let ttl = at.seconds(v, false)?;
        at.check(ttl > w.heartbeat, || {
            "workers.ttl_seconds must be longer than workers.heartbeat_seconds".into()
        })?;
        w.ttl = ttl;
    }),
    key!("workers.poll_seconds": f64 = Value("1"),
        "How often an idle worker looks for due work when no notification wakes it",
        |w, v, at| w.poll = at.seconds(v, false)?),
    key!("workers.shutdown_grace_seconds": f64 = Value("60"),
        "On SIGTERM a worker finishes its attempts in flight for at most this long",
        |w, v, at| w.shutdown_grace = at.seconds(v, true)?),
];
