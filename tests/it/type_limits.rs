//! Limits per action type (issue 14), held in the database and enforced in the claim: at most
//! `max_running` at once, a sliding-window `rate`, a `daily_budget`, each optionally per
//! partition of a payload field; a full type never blocks the others; an unstart gives its
//! start back; an override narrows a type until it expires.

use std::collections::BTreeMap;
use std::time::Duration;

use orchestrator::limits::{LimitField, LimitSpec, LimitValue};
use orchestrator::queue::{self, EnqueueRequest};
use orchestrator::store::{Claimed, Claimer, Completion, CompletionOutcome, Store};
use serde_json::json;

use crate::backend_tests;
use crate::support::TestDb;

backend_tests!(
    a_full_type_waits_and_the_others_flow_past_it,
    partitions_are_limited_one_by_one,
    rate_and_budget_count_starts_and_an_unstart_gives_them_back,
    an_override_narrows_a_type_until_it_expires,
);

pub fn action(t: &str, key: &str, priority: i32, payload: serde_json::Value) -> EnqueueRequest {
    EnqueueRequest {
        action_type: t.into(),
        payload,
        idempotency_key: Some(key.into()),
        priority,
        not_before: None,
        max_attempts: None,
        expires_at: None,
    }
}

pub fn spec(yaml: &str) -> LimitSpec {
    let v: BTreeMap<String, String> = serde_yaml::from_str(yaml).unwrap();
    let mut s = LimitSpec::default();
    for (k, v) in v {
        if k == "partition_by" {
            s.partition_by = Some(v.parse().unwrap());
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

fn types(c: &[Claimed]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for x in c {
        *m.entry(x.action.action_type.clone()).or_default() += 1;
    }
    m
}

pub fn done(c: &Claimed, outcome: CompletionOutcome) -> Completion {
    Completion { action_id: c.action.id, token: c.token, attempt: c.attempt, outcome, logs: Vec::new() }
}

async fn claimer(db: &TestDb) -> Claimer {
    crate::support::worker(&db.store, "w", Duration::from_secs(30)).await
}

async fn a_full_type_waits_and_the_others_flow_past_it(db: &TestDb) {
    db.store.set_limit("SLOW", &spec("max_running: '2'")).await.unwrap();
    enqueue(&db.store, "SLOW", 10, 10, |i| json!({"i": i})).await;
    enqueue(&db.store, "NOOP", 10, 0, |i| json!({"i": i})).await;
    let w = claimer(db).await;
    let first = db.store.claim(&w, 5).await.unwrap();
    assert_eq!(
        types(&first),
        BTreeMap::from([("NOOP".into(), 3), ("SLOW".into(), 2)]),
        "two SLOW, the rest of the batch NOOP"
    );
    let second = db.store.claim(&w, 5).await.unwrap();
    assert_eq!(
        types(&second),
        BTreeMap::from([("NOOP".into(), 5)]),
        "SLOW is full; NOOP flows past its higher priority"
    );
    let slow: Vec<&Claimed> = first.iter().filter(|c| c.action.action_type == "SLOW").collect();
    db.store.complete(None, &[done(slow[0], CompletionOutcome::Success)]).await.unwrap();
    let third = db.store.claim(&w, 5).await.unwrap();
    assert_eq!(
        types(&third),
        BTreeMap::from([("NOOP".into(), 2), ("SLOW".into(), 1)]),
        "a completion gives its slot back"
    );
    let usage = db.store.limit_usage().await.unwrap();
    let slow = usage.iter().find(|u| u.action_type == "SLOW").unwrap();
    assert_eq!((slow.running, slow.waiting, slow.running_remaining), (2, 7, Some(0)));
    assert!(slow.blocked_running >= 1, "the claims that held SLOW back are counted: {slow:?}");
    // Waiting never counts as an attempt.
    let waiting = db.store.list_actions(&Default::default()).await.unwrap();
    assert!(
        waiting.iter().filter(|a| a.action_type == "SLOW" && a.status.as_str() == "PENDING").all(|a| a.attempts == 0)
    );
}

async fn partitions_are_limited_one_by_one(db: &TestDb) {
    db.store.set_limit("WEBHOOK", &spec("{max_running: '1', partition_by: payload.partner}")).await.unwrap();
    enqueue(&db.store, "WEBHOOK", 9, 0, |i| json!({"partner": format!("p{}", i % 3)})).await;
    enqueue(&db.store, "WEBHOOK", 1, 0, |_| json!({"other": 1})).await;
    let w = claimer(db).await;
    let got = db.store.claim(&w, 20).await.unwrap();
    let mut partners: Vec<String> = got
        .iter()
        .map(|c| c.action.payload.get("partner").and_then(|p| p.as_str()).unwrap_or("").to_string())
        .collect();
    partners.sort();
    assert_eq!(partners, ["", "p0", "p1", "p2"], "one at a time per partner, and one without the field");
    assert!(db.store.claim(&w, 20).await.unwrap().is_empty());
    let usage = db.store.limit_usage().await.unwrap();
    let u = &usage[0];
    assert_eq!((u.running, u.waiting, u.partitions_tracked), (4, 6, 3));
    assert_eq!(u.partitions.len(), 4);
}

async fn rate_and_budget_count_starts_and_an_unstart_gives_them_back(db: &TestDb) {
    db.store.set_limit("POST", &spec("{rate: 3/1h}")).await.unwrap();
    db.store.set_limit("MAIL", &spec("{daily_budget: '4'}")).await.unwrap();
    enqueue(&db.store, "POST", 10, 0, |i| json!({"i": i})).await;
    enqueue(&db.store, "MAIL", 10, 0, |i| json!({"i": i})).await;
    let w = claimer(db).await;
    let got = db.store.claim(&w, 20).await.unwrap();
    assert_eq!(types(&got), BTreeMap::from([("MAIL".into(), 4), ("POST".into(), 3)]));
    // Completing frees nothing of a rate or a budget: a start is a start.
    let batch: Vec<Completion> = got.iter().map(|c| done(c, CompletionOutcome::Success)).collect();
    db.store.complete(None, &batch[..2]).await.unwrap();
    assert!(db.store.claim(&w, 20).await.unwrap().is_empty());
    // An attempt that never started gives its start back.
    let rest: Vec<Completion> =
        batch[2..].iter().map(|c| Completion { outcome: CompletionOutcome::Unstarted, ..c.clone() }).collect();
    db.store.complete(None, &rest).await.unwrap();
    let again = db.store.claim(&w, 20).await.unwrap();
    assert_eq!(again.len(), rest.len(), "each unstart gives back one start");
    let usage = db.store.limit_usage().await.unwrap();
    let mail = usage.iter().find(|u| u.action_type == "MAIL").unwrap();
    assert_eq!(mail.budget_remaining, Some(0));
    assert!(mail.budget_exhausted_at.is_some());
    let post = usage.iter().find(|u| u.action_type == "POST").unwrap();
    assert_eq!(post.rate_remaining, Some(0));
}

async fn an_override_narrows_a_type_until_it_expires(db: &TestDb) {
    enqueue(&db.store, "NOOP", 4, 0, |i| json!({"i": i})).await;
    let w = claimer(db).await;
    let soon = db.store.db_now().await.unwrap() + chrono::Duration::milliseconds(1500);
    db.store
        .set_limit_override(None, "NOOP", LimitField::MaxRunning, LimitValue::Count(0), soon, "breaker", "test")
        .await
        .unwrap();
    assert!(db.store.claim(&w, 4).await.unwrap().is_empty(), "narrowed to 0");
    let listed = db.store.limits().await.unwrap();
    assert_eq!(listed[0].overrides[0].reason, "breaker");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(db.store.claim(&w, 4).await.unwrap().len(), 4, "the override expired");
}
