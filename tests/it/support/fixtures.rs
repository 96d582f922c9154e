//! What most tests start from: a NOOP action, the lease held, a tick that ran, the shipped
//! rules, and the check that a tick conserved work.

use std::path::{Path, PathBuf};
use std::time::Duration;

use orchestrator::lease::{Lease, LeaseState, Term};
use orchestrator::model::TickStatus;
use orchestrator::queue::EnqueueRequest;
use orchestrator::store::Store;
use orchestrator::tick::{Engine, TickOutcome, TickReport};
use serde_json::json;

pub fn noop(key: &str) -> EnqueueRequest {
    EnqueueRequest {
        action_type: "NOOP".into(),
        payload: json!({"n": key}),
        idempotency_key: Some(key.into()),
        priority: 0,
        not_before: None,
        max_attempts: None,
        expires_at: None,
        traceparent: None,
        require_approval: false,
    }
}

pub async fn hold(store: &Store, owner: &str) -> Term {
    match Lease::new(store.clone(), "orchestrator", owner, Duration::from_secs(30)).acquire().await.unwrap() {
        LeaseState::Held(t) => t,
        LeaseState::HeldByOther(row) => panic!("lease held by {}", row.owner),
    }
}

pub async fn ran(engine: &Engine) -> TickReport {
    match engine.tick().await.expect("tick") {
        TickOutcome::Ran(r) => r,
        TickOutcome::NotLeader { owner, .. } => panic!("not leader: {owner} holds the lease"),
    }
}

pub fn shipped_rules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")
}

/// The invariant, checked on one tick: due work at the snapshot and budget left means
/// something ran, unless a brake held it back and the tick says so (no rule here sheds work).
pub fn assert_conserving(r: &TickReport) {
    assert_eq!(r.left_due, 0, "{r:?}");
    let due = r.snapshot.as_ref().map_or(0, |s| s.queue.due_now);
    if due > 0 {
        assert!(
            r.attempted > 0 || matches!(r.status, TickStatus::Paused | TickStatus::Throttled | TickStatus::Killed),
            "tick {} left {due} due action(s) idle without a brake: {r:?}",
            r.tick_id
        );
        assert_ne!(r.status, TickStatus::Idle, "IDLE while {due} were due: {r:?}");
    }
}
