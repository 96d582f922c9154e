//! The partition cap (issue 21, item 8): a partitioned limit at its cap of tracked values, its
//! full partitions holding a backlog at the head of the queue. The claim picks through the
//! partition keys (`ix_actions_due_part`) past the full partitions; these tests hold it to the
//! limits: never more than `max_running` in a tracked partition or in the shared overflow, the
//! rows with room taken in claim order, and keys that follow a changed `partition_by`.

use std::collections::BTreeMap;

use orchestrator::store::{Claimed, CompletionOutcome};
use serde_json::json;

use crate::backend_tests;
use crate::support::TestDb;
use crate::support::limits::{done, enqueue, spec};

backend_tests!(
    a_capped_partition_is_picked_past_the_full_ones,
    partition_keys_follow_a_new_partition_by,
    keys_past_the_first_ones_keep_their_place_in_claim_order
);

const AB: [&str; 2] = ["a", "b"];

fn field(c: &Claimed, name: &str) -> String {
    c.action.payload.get(name).and_then(|p| p.as_str()).unwrap_or("").to_string()
}

/// Two values tracked (the cap), `max_running: 1`: the tracked partitions are full and hold a
/// backlog of a higher priority at the head of the queue; the overflow's values and the rows
/// without the field wait behind it. A claim takes one overflow row (its first in claim order)
/// and one without the field, then nothing; a completion frees exactly its own partition.
async fn a_capped_partition_is_picked_past_the_full_ones(db: &TestDb) {
    db.store.limits().set_limit("PART", &spec("{max_running: '1', partition_by: payload.p}")).await.unwrap();
    let mut w = crate::support::worker(&db.store, "w", std::time::Duration::from_secs(60)).await;
    w.limit_partitions = 2;
    enqueue(&db.store, "PART", 2, 9, |i| json!({"p": AB[i % 2]})).await;
    let tracked = db.store.actions().claim(&w, 10).await.unwrap();
    assert_eq!(tracked.len(), 2, "a and b are tracked and full");
    // The held backlog first, then the overflow's values (the latest enqueued first in claim
    // order by priority), then rows without the field.
    enqueue(&db.store, "PART", 40, 5, |i| json!({"p": AB[i % 2], "i": i})).await;
    enqueue(&db.store, "PART", 6, 3, |i| json!({"p": format!("o{i}")})).await;
    enqueue(&db.store, "PART", 1, 4, |_| json!({"p": "o-first"})).await;
    enqueue(&db.store, "PART", 3, 1, |i| json!({"i": i})).await;
    let got = db.store.actions().claim(&w, 10).await.unwrap();
    let mut parts: Vec<String> = got.iter().map(|c| field(c, "p")).collect();
    parts.sort();
    assert_eq!(parts, ["", "o-first"], "one in the overflow (its first in claim order), one without the field");
    assert!(db.store.actions().claim(&w, 10).await.unwrap().is_empty(), "every partition is full");

    let a = tracked.iter().find(|c| field(c, "p") == "a").unwrap();
    db.store.actions().complete(None, &[done(a, CompletionOutcome::Success)]).await.unwrap();
    let next = db.store.actions().claim(&w, 10).await.unwrap();
    assert_eq!(next.len(), 1, "only a's slot came back: {:?}", next.iter().map(|c| field(c, "p")).collect::<Vec<_>>());
    assert_eq!((field(&next[0], "p"), next[0].action.payload.get("i").cloned()), ("a".into(), Some(json!(0))));
    let overflow = got.iter().find(|c| field(c, "p") == "o-first").unwrap();
    db.store.actions().complete(None, &[done(overflow, CompletionOutcome::Success)]).await.unwrap();
    let next = db.store.actions().claim(&w, 10).await.unwrap();
    let parts: Vec<String> = next.iter().map(|c| field(c, "p")).collect();
    assert_eq!(parts, ["o0"], "the overflow's next row, one at a time");
    let usage = db.store.limits().limit_usage().await.unwrap();
    assert_eq!((usage[0].partitions_tracked, usage[0].running), (2, 4));
}

/// Keys computed for one `partition_by` are computed again when it changes: after `payload.a`
/// becomes `payload.b`, the rows that shared a value of `a` are one partition each, also when a
/// full partition has the claim pick by keys.
async fn partition_keys_follow_a_new_partition_by(db: &TestDb) {
    db.store.limits().set_limit("PART", &spec("{max_running: '1', partition_by: payload.a}")).await.unwrap();
    enqueue(&db.store, "PART", 10, 0, |i| json!({"a": "same", "b": format!("b{i}")})).await;
    let w = crate::support::worker(&db.store, "w", std::time::Duration::from_secs(60)).await;
    let first = db.store.actions().claim(&w, 10).await.unwrap();
    assert_eq!(first.len(), 1, "one partition of a");
    db.store.limits().set_limit("PART", &spec("{max_running: '1', partition_by: payload.b}")).await.unwrap();
    let second = db.store.actions().claim(&w, 1).await.unwrap();
    assert_eq!(second.len(), 1);
    // Partition b1 is now tracked and full: this claim picks by keys.
    let got = db.store.actions().claim(&w, 20).await.unwrap();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for c in got.iter().chain(&first).chain(&second) {
        *seen.entry(field(c, "b")).or_default() += 1;
    }
    assert_eq!(got.len(), 8, "every other value of b: {seen:?}");
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
}

/// The keyed pick reads the first rows of as many keys as the claim wants, in the claim order
/// of their first rows; a key after them still takes its place in that order. `max_running: 2`,
/// `a` and `b` tracked (the cap), `a` full, one slot left in `b` and in the overflow. Waiting,
/// in claim order: a row without the field, three values of the overflow, `b`, `b`, and a
/// second row without the field. A claim of 3 takes the first row without the field, the
/// overflow's first value, then `b` (the fifth key), not the second row without the field.
async fn keys_past_the_first_ones_keep_their_place_in_claim_order(db: &TestDb) {
    db.store.limits().set_limit("PART", &spec("{max_running: '2', partition_by: payload.p}")).await.unwrap();
    let mut w = crate::support::worker(&db.store, "w", std::time::Duration::from_secs(60)).await;
    w.limit_partitions = 2;
    enqueue(&db.store, "PART", 2, 9, |i| json!({"p": "a", "i": i})).await;
    enqueue(&db.store, "PART", 1, 8, |_| json!({"p": "b"})).await;
    enqueue(&db.store, "PART", 1, 7, |_| json!({"p": "o0"})).await;
    assert_eq!(db.store.actions().claim(&w, 10).await.unwrap().len(), 4, "a full, b and the overflow one each");

    enqueue(&db.store, "PART", 1, 9, |_| json!({"n": "first"})).await;
    for (i, prio) in [8, 7, 6].into_iter().enumerate() {
        enqueue(&db.store, "PART", 1, prio, |_| json!({"p": format!("o{}", i + 1)})).await;
    }
    enqueue(&db.store, "PART", 1, 3, |_| json!({"p": "b", "n": "b1"})).await;
    enqueue(&db.store, "PART", 1, 2, |_| json!({"p": "b", "n": "b2"})).await;
    enqueue(&db.store, "PART", 1, 1, |_| json!({"n": "second"})).await;
    let got = db.store.actions().claim(&w, 3).await.unwrap();
    let mut picked: Vec<(String, String)> = got.iter().map(|c| (field(c, "p"), field(c, "n"))).collect();
    picked.sort();
    let expected = [("", "first"), ("b", "b1"), ("o1", "")].map(|(p, n)| (p.to_string(), n.to_string()));
    assert_eq!(picked, expected, "the first rows in claim order that have room");
}
