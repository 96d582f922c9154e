//! Per-type limits under test: a typed action, a limit spec from YAML, a backlog, a
//! completion, and the config and probe log of the worker-process tests.

use std::collections::BTreeMap;

use orchestrator::limits::LimitSpec;
use orchestrator::queue::{self, EnqueueRequest};
use orchestrator::store::{Claimed, Completion, CompletionOutcome, Store};

pub fn action(t: &str, key: &str, priority: i32, payload: serde_json::Value) -> EnqueueRequest {
    EnqueueRequest {
        action_type: t.into(),
        payload,
        idempotency_key: Some(key.into()),
        priority,
        not_before: None,
        max_attempts: None,
        expires_at: None,
        traceparent: None,
        require_approval: false,
    }
}

/// How many of `claimed` are of each type.
pub fn types(claimed: &[Claimed]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for c in claimed {
        *m.entry(c.action.action_type.clone()).or_default() += 1;
    }
    m
}

pub fn spec(yaml: &str) -> LimitSpec {
    let v: BTreeMap<String, String> = serde_yaml::from_str(yaml).unwrap();
    let mut s = LimitSpec::default();
    for (k, v) in v {
        if k == "partition_by" {
            s.partition_by = Some(v.parse().unwrap());
        } else if k == "allowed_hours" {
            s.allowed_hours = Some(v.parse().unwrap());
        } else {
            s.set(k.parse().unwrap(), &v).unwrap();
        }
    }
    s
}

pub async fn enqueue(store: &Store, t: &str, n: usize, priority: i32, payload: impl Fn(usize) -> serde_json::Value) {
    for i in 0..n {
        queue::enqueue(store, &action(t, &format!("{t}-{priority}-{}-{i}", payload(i)), priority, payload(i)), 3)
            .await
            .unwrap();
    }
}

pub fn done(c: &Claimed, outcome: CompletionOutcome) -> Completion {
    Completion { action_id: c.action.id, token: c.token, attempt: c.attempt, outcome, logs: Vec::new() }
}

pub fn limits_config(log: &std::path::Path, max_running: u32) -> String {
    limits_config_polling(log, max_running, 0.1)
}

/// The most attempts the outside world saw at once: each probe writes a line when it starts
/// and one before it ends, both inside the time its row is `RUNNING`.
pub fn most_at_once(log: &std::path::Path) -> (i64, usize) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut events: Vec<(u128, i64)> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let kind = it.next()?;
            let _pid = it.next()?;
            let at: u128 = it.next()?.parse().ok()?;
            Some((at, if kind == "s" { 1 } else { -1 }))
        })
        .collect();
    // At the same instant an end goes before a start.
    events.sort();
    let (mut now, mut most) = (0i64, 0i64);
    for (_, d) in &events {
        now += d;
        most = most.max(now);
    }
    (most, events.iter().filter(|(_, d)| *d == 1).count())
}

pub fn limits_config_polling(log: &std::path::Path, max_running: u32, poll: f64) -> String {
    format!(
        "tick_interval_seconds: 0.2
workers:
  heartbeat_seconds: 0.3
  ttl_seconds: 1.5
  poll_seconds: {poll}
limits:
  COMMAND: {{max_running: {max_running}}}
adapters:
  command:
    allow:
      probe:
        program: /bin/sh
        args: [\"-c\", \"echo s $$ $(date +%s%N) >> {log}; sleep 0.2; echo e $$ $(date +%s%N) >> {log}\"]
",
        log = log.display()
    )
}
