//! The limited pick's and the limited claim's steps, each tested on its own on both backends
//! (`testing::both_backends!`): the gates, the partition keys, the usage read, the room at the
//! start, the walk, the keyed pick, the merge, the take and the claim's records. The whole
//! claim is tested through its public surface in `tests/it/` (`type_limits.rs`,
//! `partition_cap.rs`); these say which step broke.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction};

use super::claim::{starts_per_key, what_to_record};
use super::pick::{Candidate, Chosen, Picking, lock_gates, merge};
use super::usage::read_usage;
use crate::limits::{LimitField, LimitSpec, OVERFLOW_PARTITION, TypeLimit};
use crate::store::testing::both_backends;
use crate::store::{Claimer, NewAction, NewWorker, Store};

fn spec(text: &str) -> LimitSpec {
    let mut s = LimitSpec::default();
    for pair in text.split_whitespace() {
        let (field, value) = pair.split_once('=').unwrap();
        match field {
            "partition_by" => s.partition_by = Some(value.parse().unwrap()),
            f => s.set(f.parse().unwrap(), value).unwrap(),
        }
    }
    s
}

/// Sets the limits and returns them as the claim reads them, in type order.
async fn limits(store: &Store, specs: &[(&str, &str)]) -> Vec<TypeLimit> {
    for (t, s) in specs {
        store.limits().set_limit(t, &spec(s)).await.unwrap();
    }
    let mut out = store.limits().list().await.unwrap();
    out.sort_by(|a, b| a.action_type.cmp(&b.action_type));
    out
}

/// Enqueues `(type, key, priority)` rows (payload `{"k": key}`); returns their ids.
async fn enqueue(store: &Store, rows: &[(&str, &str, i32)]) -> Vec<i64> {
    let base = store.now() - chrono::Duration::seconds(60);
    let mut ids = Vec::new();
    for (n, (t, k, prio)) in rows.iter().enumerate() {
        let new = NewAction {
            action_type: t.to_string(),
            payload_json: format!("{{\"k\":\"{k}\"}}"),
            idempotency_key: format!("{t}-{k}-{n}-{}", fastrand::u64(..)),
            priority: *prio,
            not_before: base + chrono::Duration::milliseconds(n as i64),
            max_attempts: 3,
            expires_at: None,
            traceparent: None,
            approval_expires_at: None,
        };
        ids.push(store.actions().enqueue(crate::store::Authority::Operator, &new).await.unwrap().id);
    }
    ids
}

/// A registered worker's terms: every type, 1000 partitions tracked.
async fn claimer(store: &Store) -> Claimer {
    store
        .workers()
        .register_worker(&NewWorker {
            id: "w".into(),
            host: "test".into(),
            pid: 1,
            version: "test".into(),
            concurrency: 4,
            types: Vec::new(),
        })
        .await
        .unwrap();
    Claimer {
        worker: "w".into(),
        worker_ttl: Duration::from_secs(60),
        types: Vec::new(),
        type_timeouts: Vec::new(),
        default_timeout: Duration::from_secs(60),
        start_within: Duration::ZERO,
        proof_enforced: false,
        epoch: None,
        limit_partitions: 1000,
    }
}

/// Gates, keys and usage, as the pick's first three steps leave them.
async fn started<'a>(
    store: &Store,
    txn: &DatabaseTransaction,
    refs: &'a [&'a TypeLimit],
    n: u64,
) -> (Picking<'a>, DateTime<Utc>) {
    started_at_cap(store, txn, refs, n, 1000).await
}

/// The same, with at most `cap` partition values tracked per type.
async fn started_at_cap<'a>(
    store: &Store,
    txn: &DatabaseTransaction,
    refs: &'a [&'a TypeLimit],
    n: u64,
    cap: usize,
) -> (Picking<'a>, DateTime<Utc>) {
    let (now, keyed_for) = lock_gates(store, txn, refs).await.unwrap();
    store.key_partitions(txn, refs, &keyed_for).await.unwrap();
    let usage = read_usage(store, txn, refs, now).await.unwrap();
    (Picking::start(refs, usage, now, cap, n), now)
}

/// `(part_key, part_overflow)` of each row of `ids`, in that order.
async fn keys_of<C: ConnectionTrait>(conn: &C, store: &Store, ids: &[i64]) -> Vec<(Option<String>, Option<i64>)> {
    let mut out = Vec::new();
    for id in ids {
        let sql = format!("SELECT part_key, CAST(part_overflow AS BIGINT) AS o FROM actions WHERE id = {id}");
        let r = conn.query_one_raw(store.stmt(&sql, [])).await.unwrap().unwrap();
        out.push((r.try_get("", "part_key").unwrap(), r.try_get("", "o").unwrap()));
    }
    out
}

async fn ints(txn: &DatabaseTransaction, store: &Store, sql: &str) -> Vec<i64> {
    let rows = txn.query_all_raw(store.stmt(sql, [])).await.unwrap();
    rows.iter().map(|r| r.try_get_by_index::<i64>(0).unwrap()).collect()
}

both_backends!(
    lock_gates_creates_each_gate_and_reads_the_keyed_path,
    key_partitions_keys_new_rows_and_records_the_path,
    read_usage_counts_running_window_and_budget,
    read_usage_counts_running_rows_by_their_kept_key,
    start_gives_each_partition_the_smallest_remainder,
    walk_leaves_out_full_types_and_chosen_rows,
    keyed_candidates_skip_a_full_partition,
    take_fills_each_partition_until_full,
    the_claim_records_starts_budget_blocked_and_tracked,
    keys_say_which_rows_count_in_the_overflow,
    a_newly_tracked_value_leaves_the_overflow_and_a_returning_row_keeps_its_mark,
    at_the_cap_the_walk_of_tracked_rows_picks_what_the_probes_pick,
);

async fn lock_gates_creates_each_gate_and_reads_the_keyed_path(store: &Store) {
    let l = limits(store, &[("a", "max_running=1"), ("b", "max_running=1 partition_by=payload.k")]).await;
    let refs: Vec<&TypeLimit> = l.iter().collect();
    store.execute_unprepared("DELETE FROM limit_state").await.unwrap();
    let txn = store.begin_write().await.unwrap();
    let (_, keyed_for) = lock_gates(store, &txn, &refs).await.unwrap();
    assert_eq!(keyed_for, HashMap::from([("a".to_string(), (None, false)), ("b".to_string(), (None, false))]));
    assert_eq!(ints(&txn, store, "SELECT COUNT(*) FROM limit_state WHERE part = ''").await, [2]);
    store.key_partitions(&txn, &refs, &keyed_for).await.unwrap();
    let (_, keyed_for) = lock_gates(store, &txn, &refs).await.unwrap();
    assert_eq!(keyed_for["b"].0.as_deref(), Some("payload.k"));
    txn.rollback().await.unwrap();
}

async fn key_partitions_keys_new_rows_and_records_the_path(store: &Store) {
    let l = limits(store, &[("b", "max_running=1 partition_by=payload.k")]).await;
    let refs: Vec<&TypeLimit> = l.iter().collect();
    enqueue(store, &[("b", "x", 0), ("b", "y", 0)]).await;
    let txn = store.begin_write().await.unwrap();
    let (_, keyed_for) = lock_gates(store, &txn, &refs).await.unwrap();
    assert_eq!(ints(&txn, store, "SELECT COUNT(*) FROM actions WHERE part_key IS NOT NULL").await, [0]);
    store.key_partitions(&txn, &refs, &keyed_for).await.unwrap();
    let keys = txn.query_all_raw(store.stmt("SELECT part_key FROM actions ORDER BY id", [])).await.unwrap();
    let keys: Vec<String> = keys.iter().map(|r| r.try_get_by_index::<String>(0).unwrap()).collect();
    assert_eq!(keys, ["x", "y"]);
    // The gates see when every waiting row has its key (then step 2 writes nothing), and when
    // a new one has none.
    let (_, keyed_for) = lock_gates(store, &txn, &refs).await.unwrap();
    assert_eq!(keyed_for["b"], (Some("payload.k".to_string()), false));
    txn.commit().await.unwrap();
    enqueue(store, &[("b", "z", 0)]).await;
    let txn = store.begin_write().await.unwrap();
    let (_, keyed_for) = lock_gates(store, &txn, &refs).await.unwrap();
    assert_eq!(keyed_for["b"], (Some("payload.k".to_string()), true));
    store.key_partitions(&txn, &refs, &keyed_for).await.unwrap();
    assert_eq!(ints(&txn, store, "SELECT COUNT(*) FROM actions WHERE part_key IS NULL").await, [0]);
    txn.rollback().await.unwrap();
}

async fn read_usage_counts_running_window_and_budget(store: &Store) {
    let l = limits(store, &[("a", "max_running=2 rate=10/1h daily_budget=5")]).await;
    enqueue(store, &[("a", "x", 0), ("a", "x", 0), ("a", "x", 0)]).await;
    assert_eq!(store.actions().claim(&claimer(store).await, 1).await.unwrap().len(), 1);
    let refs: Vec<&TypeLimit> = l.iter().collect();
    let usage = read_usage(store, &store.db, &refs, store.now()).await.unwrap();
    let used = usage.used[&("a".to_string(), String::new())];
    assert_eq!((used.running, used.window), (1, 1));
    assert_eq!(usage.state[&("a".to_string(), String::new())].used, 1);
}

/// A running row counts under the key it keeps while its type's keys are computed for the
/// `partition_by` in force (the gate's path), not under its payload's value read again.
async fn read_usage_counts_running_rows_by_their_kept_key(store: &Store) {
    let by_k = limits(store, &[("b", "max_running=5 partition_by=payload.k")]).await;
    enqueue(store, &[("b", "x", 0)]).await;
    assert_eq!(store.actions().claim(&claimer(store).await, 1).await.unwrap().len(), 1);
    let running = |usage: super::usage::Usage| -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> =
            usage.used.into_iter().filter(|(_, u)| u.running > 0).map(|((_, p), u)| (p, u.running)).collect();
        v.sort();
        v
    };
    let refs: Vec<&TypeLimit> = by_k.iter().collect();
    assert_eq!(running(read_usage(store, &store.db, &refs, store.now()).await.unwrap()), [("x".to_string(), 1)]);
    // A new path the keys were not computed for: the payload is read, and has no `j`.
    let by_j = limits(store, &[("b", "max_running=5 partition_by=payload.j")]).await;
    let refs: Vec<&TypeLimit> = by_j.iter().collect();
    assert_eq!(running(read_usage(store, &store.db, &refs, store.now()).await.unwrap()), [(String::new(), 1)]);
    // The gate says the keys are for `payload.j`: the kept key `x` counts (untracked since the
    // path changed: in the overflow), not the payload.
    store.execute_unprepared("UPDATE limit_state SET part_path = 'payload.j' WHERE part = ''").await.unwrap();
    let usage = read_usage(store, &store.db, &refs, store.now()).await.unwrap();
    assert_eq!(running(usage), [(OVERFLOW_PARTITION.to_string(), 1)]);
}

async fn start_gives_each_partition_the_smallest_remainder(store: &Store) {
    let l = limits(store, &[("a", "max_running=2 rate=10/1h daily_budget=5"), ("b", "daily_budget=1")]).await;
    enqueue(store, &[("a", "x", 0), ("b", "x", 0)]).await;
    assert_eq!(store.actions().claim(&claimer(store).await, 2).await.unwrap().len(), 2);
    let refs: Vec<&TypeLimit> = l.iter().collect();
    let txn = store.begin_write().await.unwrap();
    let (p, _) = started(store, &txn, &refs, 4).await;
    // a: 2 - 1 running, 10 - 1 started, 5 - 1 spent; b: its budget spent.
    assert_eq!(p.room(("a", "")), Some((1, Some(LimitField::MaxRunning))));
    assert_eq!(p.room(("b", "")), Some((0, Some(LimitField::DailyBudget))));
    txn.rollback().await.unwrap();
}

async fn walk_leaves_out_full_types_and_chosen_rows(store: &Store) {
    let l = limits(store, &[("a", "max_running=1")]).await;
    enqueue(store, &[("a", "x", 9)]).await;
    let c = claimer(store).await;
    assert_eq!(store.actions().claim(&c, 1).await.unwrap().len(), 1);
    // a is full; its next row comes first in claim order, and is left out.
    let ids = enqueue(store, &[("a", "x", 9), ("c", "x", 1), ("c", "x", 5)]).await;
    let refs: Vec<&TypeLimit> = l.iter().collect();
    let txn = store.begin_write().await.unwrap();
    let (p, _) = started(store, &txn, &refs, 4).await;
    let walked = store.walk(&txn, &c, &p, &[], 4, None).await.unwrap();
    assert_eq!(walked.iter().map(|c| c.id).collect::<Vec<_>>(), [ids[2], ids[1]]);
    let due_types = ["a".to_string(), "c".to_string()];
    let walked = store.walk(&txn, &c, &p, &[], 1, Some(&due_types)).await.unwrap();
    assert_eq!(walked.iter().map(|c| c.id).collect::<Vec<_>>(), [ids[2]], "per type, as many as wanted");
    txn.rollback().await.unwrap();
}

async fn keyed_candidates_skip_a_full_partition(store: &Store) {
    let l = limits(store, &[("b", "max_running=1 partition_by=payload.k")]).await;
    enqueue(store, &[("b", "x", 9)]).await;
    let c = claimer(store).await;
    assert_eq!(store.actions().claim(&c, 1).await.unwrap().len(), 1);
    let ids = enqueue(store, &[("b", "x", 9), ("b", "x", 9), ("b", "y", 1), ("b", "z", 5)]).await;
    let refs: Vec<&TypeLimit> = l.iter().collect();
    let txn = store.begin_write().await.unwrap();
    let (p, _) = started(store, &txn, &refs, 4).await;
    assert_eq!(p.keyed_types().len(), 1, "x is full");
    let (found, bound) = store.keyed_candidates(&txn, refs[0], &p, 4).await.unwrap();
    let mut found: Vec<(i64, String)> = found.into_iter().map(|c| (c.id, c.part)).collect();
    found.sort();
    assert_eq!(found, [(ids[2], "y".to_string()), (ids[3], "z".to_string())]);
    assert_eq!(bound, None, "every key with room was read");
    // Wanting one: two keys are read (one more than wanted), and the later one's first row
    // bounds what is complete.
    let (found, bound) = store.keyed_candidates(&txn, refs[0], &p, 1).await.unwrap();
    assert_eq!(found.len(), 2);
    assert_eq!(bound, found.iter().find(|c| c.id == ids[2]).map(Candidate::rank));
    txn.rollback().await.unwrap();
}

async fn take_fills_each_partition_until_full(store: &Store) {
    let l = limits(store, &[("b", "max_running=1 partition_by=payload.k")]).await;
    let refs: Vec<&TypeLimit> = l.iter().collect();
    let txn = store.begin_write().await.unwrap();
    let (mut p, now) = started(store, &txn, &refs, 3).await;
    let row = |id: i64, t: &str, part: &str| Candidate {
        id,
        action_type: t.into(),
        part: part.into(),
        priority: 0,
        not_before: now,
    };
    let skipped = p.take(vec![row(1, "b", "x"), row(2, "b", "x"), row(3, "other", ""), row(4, "b", "y")]);
    assert!(skipped, "x took one");
    assert_eq!(
        p.chosen(),
        [(1, "b".into(), "x".into()), (3, "other".into(), String::new()), (4, "b".into(), "y".into())]
    );
    let pick = p.finish_for_test();
    assert_eq!(pick.held_back, HashMap::from([("b".to_string(), LimitField::MaxRunning)]));
    assert_eq!(pick.adding["b"], HashSet::from(["x".to_string(), "y".to_string()]));
    txn.rollback().await.unwrap();
}

async fn the_claim_records_starts_budget_blocked_and_tracked(store: &Store) {
    let l = limits(store, &[("b", "rate=5/1h daily_budget=2 partition_by=payload.k")]).await;
    let refs: Vec<&TypeLimit> = l.iter().collect();
    let ids = enqueue(store, &[("b", "x", 0), ("b", "x", 0), ("b", "x", 0)]).await;
    let c = claimer(store).await;
    let claimed = store.actions().claim(&c, 3).await.unwrap();
    assert_eq!(claimed.len(), 2, "the budget of x is 2");
    let txn = store.begin_write().await.unwrap();
    let (p, now) = started(store, &txn, &refs, 1).await;
    assert_eq!(p.room(("b", "x")), Some((0, Some(LimitField::DailyBudget))));
    // What a claim of the third row (x, over budget today) would record.
    let chosen = vec![(ids[2], "b".to_string(), "y".to_string())];
    let per_key = starts_per_key(&refs, &chosen, &[]);
    assert!(per_key.is_empty(), "nothing landed, nothing counts");
    let per_key = BTreeMap::from([(("b".to_string(), "y".to_string()), 1)]);
    let adding = HashMap::from([("b".to_string(), HashSet::from(["y".to_string(), "z".to_string()]))]);
    let record = what_to_record(&refs, p.usage(), &per_key, &adding, 16, now);
    assert_eq!(record.starts, [serde_json::json!(["b", "y", 16, 1])]);
    let today = Some(now.date_naive().to_string());
    assert_eq!(record.states, [("b".into(), "y".into(), today, 1, None), ("b".into(), "z".into(), None, 0, None)],);
    store.record_starts(&txn, &record, now).await.unwrap();
    store.count_blocked(&txn, &HashMap::from([("b".to_string(), LimitField::Rate)])).await.unwrap();
    let sum = "SELECT CAST(SUM(n) AS BIGINT) FROM limit_starts WHERE action_type = 'b'";
    assert_eq!(ints(&txn, store, sum).await, [3]);
    let blocked = "SELECT blocked_rate FROM limit_state WHERE action_type = 'b' AND part = ''";
    assert_eq!(ints(&txn, store, blocked).await, [1]);
    let tracked = format!("SELECT COUNT(*) FROM limit_state WHERE part NOT IN ('', '{OVERFLOW_PARTITION}')");
    assert_eq!(ints(&txn, store, &tracked).await, [3], "x, y and z");
    // An hour on, every start has left the window; token 16 drops them.
    store.drop_old_starts(&txn, &refs, 16, now + chrono::Duration::hours(2)).await.unwrap();
    assert_eq!(ints(&txn, store, "SELECT COUNT(*) FROM limit_starts").await, [0]);
    txn.rollback().await.unwrap();
}

async fn keys_say_which_rows_count_in_the_overflow(store: &Store) {
    let l = limits(store, &[("b", "max_running=1 partition_by=payload.k")]).await;
    enqueue(store, &[("b", "x", 0)]).await;
    let c = Claimer { limit_partitions: 1, ..claimer(store).await };
    assert_eq!(store.actions().claim(&c, 1).await.unwrap().len(), 1, "x is tracked, the cap reached");
    let ids = enqueue(store, &[("b", "x", 0), ("b", "y", 0), ("b", "", 0), ("b", OVERFLOW_PARTITION, 0)]).await;
    let refs: Vec<&TypeLimit> = l.iter().collect();
    let txn = store.begin_write().await.unwrap();
    assert_eq!(keys_of(&txn, store, &ids).await, vec![(None, None); 4], "not keyed before a claim");
    let (_, keyed_for) = lock_gates(store, &txn, &refs).await.unwrap();
    store.key_partitions(&txn, &refs, &keyed_for).await.unwrap();
    let key = |k: &str, o: i64| (Some(k.to_string()), Some(o));
    assert_eq!(
        keys_of(&txn, store, &ids).await,
        [key("x", 0), key("y", 1), key("", 0), key(OVERFLOW_PARTITION, 1)],
        "a tracked value and the missing one count on their own, the rest in the overflow"
    );
    txn.rollback().await.unwrap();
}

async fn a_newly_tracked_value_leaves_the_overflow_and_a_returning_row_keeps_its_mark(store: &Store) {
    limits(store, &[("b", "max_running=5 partition_by=payload.k")]).await;
    let ids = enqueue(store, &[("b", "x", 9), ("b", "y", 5), ("b", "y", 5), ("b", "y", 5)]).await;
    let of = |c: &[crate::store::Claimed]| c.iter().map(|c| c.action.id).collect::<Vec<_>>();
    let key = |k: &str, o: i64| (Some(k.to_string()), Some(o));
    // x is tracked (the cap is one value), the first y counts in the overflow; x's row, keyed
    // before x was tracked, is marked while it runs.
    let one = Claimer { limit_partitions: 1, ..claimer(store).await };
    let first = store.actions().claim(&one, 2).await.unwrap();
    assert_eq!(of(&first), [ids[0], ids[1]]);
    assert_eq!(keys_of(&store.db, store, &ids).await, [key("x", 0), key("y", 1), key("y", 1), key("y", 1)]);
    // A claim that may track one more value tracks y: its rows leave the overflow, the waiting
    // one and the running ones alike.
    let two = Claimer { limit_partitions: 2, ..one.clone() };
    assert_eq!(of(&store.actions().claim(&two, 1).await.unwrap()), [ids[2]]);
    assert_eq!(keys_of(&store.db, store, &ids[1..]).await, [key("y", 0), key("y", 0), key("y", 0)]);
    // x and the first y come back to PENDING with their keys and marks: no claim computes them
    // again.
    let back: Vec<crate::store::Completion> = first
        .iter()
        .map(|c| crate::store::Completion {
            action_id: c.action.id,
            token: c.token,
            attempt: c.attempt,
            outcome: crate::store::CompletionOutcome::Unstarted,
            logs: Vec::new(),
        })
        .collect();
    store.actions().complete(None, &back).await.unwrap();
    assert_eq!(keys_of(&store.db, store, &ids[..2]).await, [key("x", 0), key("y", 0)]);
}

/// Picks of each size of `ns` at the cap, made twice in a transaction rolled back: by the walk of
/// the tracked partitions' rows, then by the probe of each key. Asserts that the type is picked
/// by its keys and walks (when `keyed`) and that both choose the same; returns the walk's picks.
async fn walk_and_probes_agree(
    store: &Store,
    refs: &[&TypeLimit],
    c: &Claimer,
    cap: usize,
    ns: &[u64],
    keyed: bool,
) -> Vec<Vec<Chosen>> {
    let mut out = Vec::new();
    for &n in ns {
        let mut picks = Vec::new();
        for walk in [true, false] {
            let txn = store.begin_write().await.unwrap();
            let (mut p, _) = started_at_cap(store, &txn, refs, n, cap).await;
            p.walk_tracked = walk;
            if walk {
                assert_eq!(p.keyed_types().len(), usize::from(keyed), "a pick of {n} by keys");
                if keyed {
                    assert!(store.walks_tracked(&txn, refs[0], &p, n as usize).await.unwrap(), "a pick of {n} walks");
                }
            }
            let pick = store.pick_passes(&txn, c, p).await.unwrap();
            picks.push((pick.chosen, pick.held_back));
            txn.rollback().await.unwrap();
        }
        assert!(!picks[0].0.is_empty(), "a pick of {n}");
        assert_eq!(picks[0], picks[1], "a pick of {n}: the walk, then the probes");
        out.push(picks.swap_remove(0).0);
    }
    out
}

/// At the cap (no room to track another value), a pick that walks the tracked partitions' rows,
/// and the overflow's first rows while it has room, chooses exactly what the probe of each key
/// chooses: with the overflow's room short of the batch, and with the overflow full.
async fn at_the_cap_the_walk_of_tracked_rows_picks_what_the_probes_pick(store: &Store) {
    let l = limits(store, &[("b", "max_running=2 partition_by=payload.k")]).await;
    let refs: Vec<&TypeLimit> = l.iter().collect();
    let cap = 10;
    // Ten tracked values; the untracked ones (the overflow) lead the queue.
    let mut rows: Vec<(String, i32)> = (0..10).map(|i| (format!("v{i}"), 0)).collect();
    for i in 0..90 {
        let (k, prio) = match i % 9 {
            0 | 4 => (format!("u{}", i % 7), 5),
            3 => (String::new(), i % 3),
            _ => (format!("v{}", (i * 7) % 10), i % 4),
        };
        rows.push((k, prio));
    }
    let rows: Vec<(&str, &str, i32)> = rows.iter().map(|(k, p)| ("b", k.as_str(), *p)).collect();
    enqueue(store, &rows[..10]).await;
    let c = Claimer { limit_partitions: cap, ..claimer(store).await };
    let first = store.actions().claim(&c, 10).await.unwrap();
    assert_eq!(first.len(), 10, "every tracked value's first row");
    let done: Vec<crate::store::Completion> = first
        .iter()
        .map(|x| crate::store::Completion {
            action_id: x.action.id,
            token: x.token,
            attempt: x.attempt,
            outcome: crate::store::CompletionOutcome::Success,
            logs: Vec::new(),
        })
        .collect();
    store.actions().complete(None, &done).await.unwrap();
    enqueue(store, &rows[10..]).await;
    // The overflow has room for two, its backlog first in the queue: a pick of more takes those
    // two and fills up from the tracked partitions, walking past none of the rest.
    let picks = walk_and_probes_agree(store, &refs, &c, cap, &[3, 6, 9], true).await;
    for pick in &picks {
        let overflow: Vec<&Chosen> = pick.iter().filter(|(_, _, part)| part == OVERFLOW_PARTITION).collect();
        assert_eq!(overflow.len(), 2, "the overflow's room, taken first: {pick:?}");
        assert_eq!(pick[..2].iter().collect::<Vec<_>>(), overflow);
    }
    // A pick the overflow has room for is the walk of the queue.
    walk_and_probes_agree(store, &refs, &c, cap, &[1, 2], false).await;
    // The overflow's two slots and a few tracked partitions taken and held.
    assert_eq!(store.actions().claim(&c, 8).await.unwrap().len(), 8);
    walk_and_probes_agree(store, &refs, &c, cap, &[1, 2, 4, 6, 9], true).await;
}

#[test]
fn merge_defers_keyed_rows_past_the_walk_and_rows_past_the_bound() {
    let now = Utc::now();
    let row = |id: i64, priority: i64| Candidate {
        id,
        action_type: "t".into(),
        part: String::new(),
        priority,
        not_before: now,
    };
    let ids = |rows: &[Candidate]| rows.iter().map(|c| c.id).collect::<Vec<_>>();
    // The walk stopped at priority 5 (more may follow): a keyed row at 1 waits, one at 7 merges.
    let (rows, deferred) = merge(vec![row(1, 9), row(2, 5)], false, vec![row(3, 7), row(4, 1)], None);
    assert_eq!((ids(&rows), deferred), (vec![1, 3, 2], true));
    // The walk found all there was: nothing waits for it.
    let (rows, deferred) = merge(vec![row(1, 9)], true, vec![row(4, 1)], None);
    assert_eq!((ids(&rows), deferred), (vec![1, 4], false));
    // A keyed type's candidates are incomplete from priority 6 on: everything after waits.
    let bound = Some(row(0, 6).rank());
    let (rows, deferred) = merge(vec![row(1, 9), row(2, 5)], true, vec![row(3, 7), row(4, 1)], bound);
    assert_eq!((ids(&rows), deferred), (vec![1, 3], true));
}

#[test]
fn packed_candidates_read_as_rows_or_not_at_all() {
    let text = r#"[[7,"t","x",5,"2026-12-04T13:40:58.123456+00:00"],[8,"t",null,0,"2026-12-04T13:40:59Z"]]"#;
    let found = Candidate::unpack(text).unwrap();
    let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
    assert_eq!(
        found,
        [
            Candidate {
                id: 7,
                action_type: "t".into(),
                part: "x".into(),
                priority: 5,
                not_before: t("2026-12-04T13:40:58.123456Z")
            },
            Candidate {
                id: 8,
                action_type: "t".into(),
                part: String::new(),
                priority: 0,
                not_before: t("2026-12-04T13:40:59Z")
            },
        ]
    );
    assert_eq!(Candidate::unpack("[]"), Some(Vec::new()));
    // A `not_before` in another form the driver reads: the rows are read as rows instead.
    assert_eq!(Candidate::unpack(r#"[[7,"t","x",5,"2026-12-04 13:40:58"]]"#), None);
}

/// PostgreSQL: a claim that computes a burst of partition keys vacuums `actions` after it
/// commits, so that the entries the keys left behind are not passed by every later claim; a
/// claim that keys a few rows does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_partition_keys_is_vacuumed_on_postgres() {
    let Some(db) = crate::store::testing::TestStore::postgres().await else { return };
    let store = &db.store;
    // Autovacuum, which the insert of the burst may call in, would make the claim's vacuum skip
    // the table (`SKIP_LOCKED`) and count nothing.
    store.execute_unprepared("ALTER TABLE actions SET (autovacuum_enabled = false)").await.unwrap();
    limits(store, &[("b", "max_running=1 partition_by=payload.k")]).await;
    let n = super::claim::VACUUM_AFTER_KEYS;
    let base = NewAction {
        action_type: "b".into(),
        payload_json: String::new(),
        idempotency_key: String::new(),
        priority: 0,
        not_before: store.now() - chrono::Duration::seconds(60),
        max_attempts: 3,
        expires_at: None,
        traceparent: None,
        approval_expires_at: None,
    };
    let batch: Vec<NewAction> = (0..n)
        .map(|i| NewAction {
            payload_json: format!("{{\"k\":\"v{i}\"}}"),
            idempotency_key: format!("b-{i}"),
            ..base.clone()
        })
        .collect();
    assert_eq!(store.actions().enqueue_many(&batch).await.unwrap(), n);
    let vacuums = || async {
        let txn = store.begin_write().await.unwrap();
        let sql = "SELECT vacuum_count FROM pg_stat_user_tables WHERE relid = 'actions'::regclass";
        let count = ints(&txn, store, sql).await;
        txn.rollback().await.unwrap();
        count
    };
    let before = vacuums().await;
    let w = claimer(store).await;
    assert_eq!(store.actions().claim(&w, 1).await.unwrap().len(), 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while vacuums().await == before {
        assert!(std::time::Instant::now() < deadline, "no VACUUM within 20 s of keying {n} rows");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(vacuums().await, [before[0] + 1]);
    // A few new rows keyed: no vacuum for them.
    enqueue(store, &[("b", "x", 0), ("b", "y", 0)]).await;
    assert_eq!(store.actions().claim(&w, 1).await.unwrap().len(), 1);
    let txn = store.begin_write().await.unwrap();
    assert_eq!(ints(&txn, store, "SELECT COUNT(*) FROM actions WHERE part_key IS NULL").await, [0]);
    txn.rollback().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(vacuums().await, [before[0] + 1]);
    db.cleanup().await;
}
