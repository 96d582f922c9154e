//! The queue against real databases: idempotent enqueue, the atomic claim, bulk enqueue,
//! operator edits and counts.

use std::collections::HashSet;
use std::time::Duration;

use orchestrator::model::ActionStatus;
use orchestrator::queue::{self, EnqueueRequest, QueueError};
use orchestrator::store::Authority::Operator;
use orchestrator::store::{ActionFilter, Completion, CompletionOutcome, Store};
use serde_json::json;

use crate::backend_tests;
use crate::support::{TestDb, worker};
use crate::support::{hold, noop};

backend_tests!(
    enqueue_is_idempotent,
    derived_keys_dedupe_equal_payloads,
    claim_orders_by_priority_then_age,
    two_claimers_over_1000_actions_never_share_one,
    bulk_enqueue_reports_bad_line_and_writes_nothing_of_its_batch,
    bulk_enqueue_keeps_every_field_and_orders_not_before_like_single_enqueue,
    bulk_enqueue_splits_batches_by_bytes,
    completions_record_retry_times_errors_and_logs_exactly,
    requeue_cancel_and_purge,
    not_before_is_honoured,
);

async fn enqueue_is_idempotent(db: &TestDb) {
    let first = queue::enqueue(&db.store, &noop("k1"), 3).await.unwrap();
    assert!(!first.duplicate);
    assert_eq!(first.status, ActionStatus::Pending);
    let again = queue::enqueue(&db.store, &noop("k1"), 3).await.unwrap();
    assert!(again.duplicate, "the same key is a duplicate");
    assert_eq!(again.id, first.id);
    let all = db.store.actions().list_actions(&ActionFilter { limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(all.len(), 1, "a duplicate creates nothing");
    let a = &all[0];
    assert_eq!((a.attempts, a.max_attempts, a.priority), (0, 3, 0));
    assert_eq!(a.payload, json!({"n": "k1"}));
}

async fn derived_keys_dedupe_equal_payloads(db: &TestDb) {
    let mut r = noop("x");
    r.idempotency_key = None;
    r.payload = json!({"b": 1, "a": [1, 2]});
    let one = queue::enqueue(&db.store, &r, 3).await.unwrap();
    r.payload = json!({"a": [1, 2], "b": 1});
    let two = queue::enqueue(&db.store, &r, 3).await.unwrap();
    assert_eq!(one.id, two.id);
    assert!(two.duplicate);
    let a = db.store.actions().action(one.id).await.unwrap().unwrap();
    assert_eq!(a.idempotency_key.len(), 64, "sha256 hex key: {}", a.idempotency_key);
}

async fn claim_orders_by_priority_then_age(db: &TestDb) {
    let term = hold(&db.store, "me").await;
    for (key, prio) in [("low", 0), ("high", 5), ("mid", 2), ("high2", 5)] {
        let mut r = noop(key);
        r.priority = prio;
        queue::enqueue(&db.store, &r, 3).await.unwrap();
    }
    let me = orchestrator::store::Claimer {
        epoch: Some(term.epoch),
        ..worker(&db.store, "me", Duration::from_secs(30)).await
    };
    let claimed = db.store.actions().claim(&me, 3).await.unwrap();
    let keys: Vec<_> = claimed.iter().map(|c| c.action.idempotency_key.as_str()).collect();
    assert_eq!(keys, ["high", "high2", "mid"]);
    for c in &claimed {
        assert_eq!(c.action.status, ActionStatus::Running);
        assert_eq!(c.attempt, 1);
        assert_eq!(c.action.claimed_epoch, Some(term.epoch));
        assert!(c.action.claimed_at.is_some());
        let claim = c.action.claim.as_ref().expect("the claim is stamped on the row");
        assert_eq!((claim.token, claim.worker.as_str()), (c.token, "me"));
        assert!(claim.deadline > c.action.claimed_at.unwrap(), "a deadline after the claim");
        assert!(claim.proof && c.proof, "the flag's proof mode (on by default), read with the claim");
    }
    let rest = db.store.actions().claim(&me, 10).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert!(rest[0].token > claimed[0].token, "each claim statement takes a new token");
    assert!(db.store.actions().claim(&me, 10).await.unwrap().is_empty());
    // An unregistered worker claims nothing, even with due work; nor does anyone while paused.
    queue::enqueue(&db.store, &noop("later"), 3).await.unwrap();
    let intruder = orchestrator::store::Claimer { worker: "intruder".into(), ..me.clone() };
    assert!(db.store.actions().claim(&intruder, 10).await.unwrap().is_empty());
    let pause = |on: bool| orchestrator::store::FlagChange { paused: Some(on), ..Default::default() };
    db.store.flags().set_flags(pause(true)).await.unwrap();
    assert!(db.store.actions().claim(&me, 10).await.unwrap().is_empty(), "paused: the claim itself refuses");
    db.store.flags().set_flags(pause(false)).await.unwrap();
    // A worker serving other types leaves the NOOP alone; one serving NOOP takes it.
    let picky = orchestrator::store::Claimer { types: vec!["WEBHOOK".into()], ..me.clone() };
    assert!(db.store.actions().claim(&picky, 10).await.unwrap().is_empty());
    let noop_only = orchestrator::store::Claimer { types: vec!["NOOP".into()], ..me.clone() };
    assert_eq!(db.store.actions().claim(&noop_only, 10).await.unwrap().len(), 1);
}

async fn two_claimers_over_1000_actions_never_share_one(db: &TestDb) {
    let lines: String =
        (0..1000).map(|i| format!("{{\"action_type\":\"NOOP\",\"payload\":{{\"i\":{i}}}}}\n")).collect();
    let report = queue::enqueue_jsonl(&db.store, lines.as_bytes(), 3).await.unwrap();
    assert_eq!(report.created, 1000);
    let me = worker(&db.store, "me", Duration::from_secs(30)).await;
    let other = db.another_store().await;
    let claimer = |store: Store| {
        let me = me.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            loop {
                let batch = store.actions().claim(&me, 7).await.expect("claim");
                if batch.is_empty() {
                    return ids;
                }
                ids.extend(batch.into_iter().map(|c| c.action.id));
            }
        })
    };
    let (a, b) = tokio::join!(claimer(db.store.clone()), claimer(other));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(!a.is_empty() && !b.is_empty(), "both claimers took part: {} / {}", a.len(), b.len());
    let all: HashSet<i64> = a.iter().chain(&b).copied().collect();
    assert_eq!(a.len() + b.len(), 1000, "every action claimed exactly once");
    assert_eq!(all.len(), 1000, "no action claimed twice");
    let counts = db.store.actions().count_by_status().await.unwrap();
    assert_eq!(counts[&ActionStatus::Running], 1000);
}

async fn bulk_enqueue_reports_bad_line_and_writes_nothing_of_its_batch(db: &TestDb) {
    let text = "{\"action_type\":\"NOOP\",\"payload\":{\"i\":1}}\n\n\
                {\"action_type\":\"NOOP\",\"payload\":{\"i\":2},\"priority\":3,\"idempotency_key\":\"two\"}\n\
                {\"action_type\":\"NOOP\",\"payload\":[]}\n";
    let err = queue::enqueue_jsonl(&db.store, text.as_bytes(), 3).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, QueueError::Invalid(_)), "{msg}");
    assert!(msg.starts_with("line 4: payload must be a JSON object"), "{msg}");
    assert!(msg.contains("nothing from lines 1-4 was written"), "{msg}");
    assert!(
        db.store.actions().list_actions(&ActionFilter { limit: 10, ..Default::default() }).await.unwrap().is_empty()
    );

    // A bad line in the second batch: the first batch stays, nothing of the second is written.
    let n = queue::BULK_BATCH + 50;
    let mut lines: Vec<String> =
        (0..n).map(|i| format!("{{\"action_type\":\"NOOP\",\"payload\":{{\"i\":{i}}}}}")).collect();
    lines[queue::BULK_BATCH + 9] = "{\"action_type\":\"NOOP\",\"payload\":{},\"bogus\":1}".into();
    let err = queue::enqueue_jsonl(&db.store, lines.join("\n").as_bytes(), 3).await.unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("line {}: not a valid action: unknown field `bogus`", queue::BULK_BATCH + 10)),
        "{err}"
    );
    let counts = db.store.actions().count_by_status().await.unwrap();
    assert_eq!(counts[&ActionStatus::Pending], queue::BULK_BATCH as i64);

    // Invalid UTF-8 is named by line too.
    let mut bytes = b"{\"action_type\":\"NOOP\",\"payload\":{\"u\":\"".to_vec();
    bytes.extend([0xff, 0xfe]);
    bytes.extend(b"\"}}\n");
    let err = queue::enqueue_jsonl(&db.store, bytes.as_slice(), 3).await.unwrap_err().to_string();
    assert!(err.starts_with("line 1: not valid UTF-8"), "{err}");
}

/// Bulk rows travel to the database as JSON; every field must land as a single enqueue writes
/// it, timestamps included (SQLite compares them as text).
async fn bulk_enqueue_keeps_every_field_and_orders_not_before_like_single_enqueue(db: &TestDb) {
    let past = (orchestrator::model::now() - chrono::Duration::seconds(5)).to_rfc3339();
    let future = (orchestrator::model::now() + chrono::Duration::hours(1)).to_rfc3339();
    let lines = format!(
        "{{\"action_type\":\"NOOP\",\"payload\":{{\"text\":\"caf\u{e9} \\\"quoted\\\" \\\\ back\\nline\",\"ctl\":\"a\\u0001b\",\"n\":[1,2.5,null]}},\"idempotency_key\":\"b-1\",\"priority\":7,\"max_attempts\":9,\"not_before\":\"{past}\"}}\n\
         {{\"action_type\":\"NOOP\",\"payload\":{{}},\"idempotency_key\":\"b-2\",\"priority\":-3,\"not_before\":\"{future}\"}}\n\
         {{\"action_type\":\"NOOP\",\"payload\":{{}},\"idempotency_key\":\"b-1\"}}\n"
    );
    let report = queue::enqueue_jsonl(&db.store, lines.as_bytes(), 4).await.unwrap();
    assert_eq!(
        (report.lines, report.created, report.duplicates),
        (3, 2, 1),
        "a key repeated in one batch is a duplicate"
    );
    let all = db.store.actions().list_actions(&ActionFilter { limit: 10, ..Default::default() }).await.unwrap();
    let one = all.iter().find(|a| a.idempotency_key == "b-1").unwrap();
    assert_eq!(
        one.payload,
        json!({"text": "caf\u{e9} \"quoted\" \\ back\nline", "ctl": "a\u{1}b", "n": [1, 2.5, null]})
    );
    assert_eq!((one.priority, one.max_attempts, one.attempts, one.status), (7, 9, 0, ActionStatus::Pending));
    let two = all.iter().find(|a| a.idempotency_key == "b-2").unwrap();
    assert_eq!((two.priority, two.max_attempts), (-3, 4), "the default max_attempts applies");
    // The past one is due, the future one is not: the same answer a single enqueue gets.
    let due: Vec<String> =
        crate::support::db::due(&db.store, 10).await.into_iter().map(|a| a.idempotency_key).collect();
    assert_eq!(due, vec!["b-1".to_string()]);
    let single =
        queue::enqueue(&db.store, &EnqueueRequest { not_before: Some(future.parse().unwrap()), ..noop("s-1") }, 3)
            .await
            .unwrap();
    let s = db.store.actions().action(single.id).await.unwrap().unwrap();
    assert_eq!(s.not_before, two.not_before, "bulk and single enqueue store the same instant");
    assert_eq!(db.store.actions().due_count().await.unwrap(), 1);
}

/// Large payloads close a batch by bytes before it reaches BULK_BATCH lines, so memory stays
/// bounded; a bad line then loses only its own batch.
async fn bulk_enqueue_splits_batches_by_bytes(db: &TestDb) {
    let big = "x".repeat(1_000_000);
    let line = |i: usize| format!("{{\"action_type\":\"NOOP\",\"payload\":{{\"i\":{i},\"blob\":\"{big}\"}}}}");
    let per_line = line(10).len() + 1;
    let per_batch = queue::BULK_BATCH_BYTES.div_ceil(per_line);
    let bad = per_batch + 3;
    let mut lines: Vec<String> = (0..bad - 1).map(line).collect();
    lines.push("{\"action_type\":\"NOOP\",\"payload\":7}".into());
    let err = queue::enqueue_jsonl(&db.store, lines.join("\n").as_bytes(), 3).await.unwrap_err().to_string();
    assert!(err.starts_with(&format!("line {bad}: payload must be a JSON object")), "{err}");
    assert!(err.contains(&format!("nothing from lines {}-{bad} was written", per_batch + 1)), "{err}");
    let counts = db.store.actions().count_by_status().await.unwrap();
    assert_eq!(counts[&ActionStatus::Pending], per_batch as i64, "the first batch closed at {per_batch} lines");
}

/// Completions travel as JSON: a retry's time must order like any other timestamp, and errors
/// and log lines must land as written, except NUL, which PostgreSQL text cannot hold.
async fn completions_record_retry_times_errors_and_logs_exactly(db: &TestDb) {
    use orchestrator::model::{LogLevel, NewLog};
    let me = worker(&db.store, "me", Duration::from_secs(30)).await;
    let soon = queue::enqueue(&db.store, &noop("soon"), 3).await.unwrap().id;
    let later = queue::enqueue(&db.store, &noop("later"), 3).await.unwrap().id;
    let claimed = db.store.actions().claim(&me, 2).await.unwrap();
    let token = claimed[0].token;
    assert_eq!(claimed.len(), 2);
    let past = orchestrator::model::now() - chrono::Duration::milliseconds(1500);
    let future = orchestrator::model::now() + chrono::Duration::hours(2);
    let retry = |id: i64, at, error: &str| Completion {
        action_id: id,
        token,
        attempt: 1,
        outcome: CompletionOutcome::Retry { not_before: at, error: error.into() },
        logs: vec![NewLog::new(id, LogLevel::Warning, format!("out: caf\u{e9} \"q\" a\0b {id}"))],
    };
    let r = db
        .store
        .actions()
        .complete(None, &[retry(soon, past, "bad\0byte"), retry(later, future, "later \\ \n x")])
        .await
        .unwrap();
    assert_eq!((r.applied.len(), r.rejected.len()), (2, 0));
    let s = db.store.actions().action(soon).await.unwrap().unwrap();
    assert_eq!((s.status, s.not_before), (ActionStatus::Retry, past));
    assert_eq!(s.last_error.as_deref(), Some("bad\u{FFFD}byte"));
    let l = db.store.actions().action(later).await.unwrap().unwrap();
    assert_eq!((l.not_before, l.last_error.as_deref()), (future, Some("later \\ \n x")));
    let due: Vec<i64> = crate::support::db::due(&db.store, 10).await.into_iter().map(|a| a.id).collect();
    assert_eq!(due, vec![soon], "the past retry is due, the future one is not");
    let logs = db.store.history().logs(Some(soon), 10).await.unwrap();
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].message, format!("out: caf\u{e9} \"q\" a\u{FFFD}b {soon}"));
}

async fn requeue_cancel_and_purge(db: &TestDb) {
    let me = worker(&db.store, "me", Duration::from_secs(30)).await;
    let a = queue::enqueue(&db.store, &noop("a"), 3).await.unwrap().id;
    let b = queue::enqueue(&db.store, &noop("b"), 3).await.unwrap().id;
    let claimed = db.store.actions().claim(&me, 2).await.unwrap();
    let token = claimed[0].token;
    let done =
        |id: i64, outcome: CompletionOutcome| Completion { action_id: id, token, attempt: 1, outcome, logs: vec![] };
    assert_eq!(claimed.len(), 2);
    let r = db
        .store
        .actions()
        .complete(
            None,
            &[done(a, CompletionOutcome::Dlq { error: "boom".into() }), done(b, CompletionOutcome::Success)],
        )
        .await
        .unwrap();
    assert_eq!(r.applied.len(), 2);

    // Only DLQ requeues; attempts reset; last_error kept for history.
    let e = db.store.actions().requeue(Operator, b).await.unwrap_err().to_string();
    assert!(e.contains("it is SUCCESS; only DLQ actions can be requeued"), "{e}");
    assert!(db.store.actions().requeue(Operator, 999_999).await.unwrap_err().to_string().contains("not found"));
    assert_eq!(db.store.actions().requeue(Operator, a).await.map(|()| vec![a]).unwrap(), vec![a]);
    let ra = db.store.actions().action(a).await.unwrap().unwrap();
    assert_eq!((ra.status, ra.attempts), (ActionStatus::Pending, 0));
    assert_eq!(ra.last_error.as_deref(), Some("boom"));
    let logs = db.store.history().logs(Some(a), 10).await.unwrap();
    assert!(logs[0].message.contains("requeued by operator"));

    db.store.actions().cancel(Operator, a, None).await.unwrap();
    assert_eq!(db.store.actions().action(a).await.unwrap().unwrap().status, ActionStatus::Cancelled);
    assert!(db.store.actions().cancel(Operator, a, None).await.unwrap_err().to_string().contains("it is CANCELLED"));

    let dlq = queue::enqueue(&db.store, &noop("c"), 3).await.unwrap().id;
    let token = db.store.actions().claim(&me, 1).await.unwrap()[0].token;
    db.store
        .actions()
        .complete(
            None,
            &[Completion {
                action_id: dlq,
                token,
                attempt: 1,
                outcome: CompletionOutcome::Dlq { error: "x".into() },
                logs: vec![],
            }],
        )
        .await
        .unwrap();

    // Purge removes finished SUCCESS/CANCELLED history older than the cutoff, never DLQ.
    assert_eq!(db.store.actions().purge(orchestrator::model::now() - chrono::Duration::days(1), 500).await.unwrap(), 0);
    let purged = db.store.actions().purge(orchestrator::model::now() + chrono::Duration::seconds(1), 1).await.unwrap();
    assert_eq!(purged, 2, "the SUCCESS and the CANCELLED one, one batch at a time");
    assert!(db.store.actions().action(a).await.unwrap().is_none());
    assert!(db.store.history().logs(Some(a), 10).await.unwrap().is_empty(), "their logs go with them");
    assert_eq!(db.store.actions().action(dlq).await.unwrap().unwrap().status, ActionStatus::Dlq);
}

async fn not_before_is_honoured(db: &TestDb) {
    let me = worker(&db.store, "me", Duration::from_secs(30)).await;
    let mut r = noop("later");
    r.not_before = Some(orchestrator::model::now() + chrono::Duration::hours(1));
    queue::enqueue(&db.store, &r, 3).await.unwrap();
    assert_eq!(db.store.actions().due_count().await.unwrap(), 0);
    assert!(db.store.actions().claim(&me, 10).await.unwrap().is_empty());
}
