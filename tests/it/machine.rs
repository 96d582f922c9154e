//! The action state machine against its table: every (operation, starting status) pair, on
//! both backends, checked against the `from -> to` table in ARCHITECTURE.md (read from the
//! file, so the document and the code cannot drift apart).

use std::collections::BTreeMap;
use std::time::Duration;

use orchestrator::model::{Action, ActionStatus};
use orchestrator::store::{
    Acquired, Authority, Completion, CompletionOutcome, Fence, NewAction, Op, Store, StoreError,
};

use crate::backend_tests;
use crate::support::TestDb;

const LEASE: &str = "orchestrator";
/// The digest the walker's previews record.
const WALK_SHA: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What the table says an operation does from a status: the status it leads to (the first one
/// the `to` column names; `unchanged` is the starting status), or `None` for "deleted".
type Table = BTreeMap<(String, ActionStatus), Option<ActionStatus>>;

fn statuses_in(text: &str) -> Vec<ActionStatus> {
    text.split(|c: char| !c.is_ascii_alphabetic() && c != '_').filter_map(|w| w.parse::<ActionStatus>().ok()).collect()
}

fn table() -> Table {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/ARCHITECTURE.md")).unwrap();
    let start = doc.find("## The action state machine").expect("ARCHITECTURE.md has the state machine section");
    let mut t = Table::new();
    for line in doc[start..].lines().skip_while(|l| !l.starts_with("| operation")).skip(2) {
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (op, from, to) = (cells[1].trim_matches('`'), cells[2], cells[3]);
        for s in statuses_in(from) {
            let target = if to.contains("deleted") {
                None
            } else if to.starts_with("unchanged") {
                Some(s)
            } else {
                Some(*statuses_in(to).first().unwrap_or_else(|| panic!("no status in `{to}`")))
            };
            assert!(t.insert((op.to_string(), s), target).is_none(), "{op} from {s} listed twice");
        }
    }
    t
}

#[test]
fn the_table_names_every_operation_and_matches_their_starting_statuses() {
    let t = table();
    for op in Op::ALL {
        let listed: Vec<ActionStatus> =
            ActionStatus::ALL.iter().copied().filter(|s| t.contains_key(&(op.as_str().to_string(), *s))).collect();
        assert_eq!(listed, sorted(op.from()), "ARCHITECTURE.md's rows for `{op}` and Op::from disagree");
        if *op == Op::Enqueue {
            assert!(
                std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/ARCHITECTURE.md"))
                    .unwrap()
                    .contains("| `enqueue` | (new) | PENDING |")
            );
        }
    }
}

fn sorted(s: &[ActionStatus]) -> Vec<ActionStatus> {
    ActionStatus::ALL.iter().copied().filter(|x| s.contains(x)).collect()
}

/// The walker: one lease holder that can make an action reach any status.
struct Walk<'a> {
    store: &'a Store,
    owner: String,
    epoch: i64,
    n: usize,
    worker: orchestrator::store::Claimer,
}

impl<'a> Walk<'a> {
    async fn new(store: &'a Store) -> Walk<'a> {
        let worker = crate::support::worker(store, "walker", Duration::from_secs(300)).await;
        Walk { store, owner: String::new(), epoch: 0, n: 0, worker }
    }

    async fn take_lease(&mut self) {
        self.store.lease().release_lease(LEASE, None).await.unwrap();
        self.owner = format!("walker-{}", self.n);
        match self.store.lease().acquire_lease(LEASE, &self.owner, Duration::from_secs(300)).await.unwrap() {
            Acquired::Held(row) => self.epoch = row.epoch,
            Acquired::HeldByOther(row) => panic!("lease held by {}", row.owner),
        }
    }

    fn fence(&self) -> Fence {
        Fence { lease_name: LEASE.into(), epoch: self.epoch, tick_id: None }
    }

    async fn get(&self, id: i64) -> Option<Action> {
        self.store.actions().action(id).await.unwrap()
    }

    /// A new action in `status`, claimed (if RUNNING) under the current lease.
    async fn action_in(&mut self, status: ActionStatus) -> i64 {
        self.n += 1;
        let new = NewAction {
            action_type: "NOOP".into(),
            payload_json: "{}".into(),
            idempotency_key: format!("walk-{}", self.n),
            // Claimed first, whatever else is due (leftovers of earlier pairs gain at most a few
            // steps from `boost` and `force_run`).
            priority: 100_000 + 100 * self.n as i32,
            not_before: orchestrator::model::now(),
            max_attempts: 3,
            expires_at: None,
            traceparent: None,
            approval_expires_at: (status == ActionStatus::AwaitingApproval)
                .then(|| orchestrator::model::now() + chrono::Duration::days(1)),
        };
        let id = self.store.actions().enqueue(Authority::Operator, &new).await.unwrap().id;
        match status {
            ActionStatus::Pending => {}
            ActionStatus::Running => {
                self.claim_it(id).await;
            }
            ActionStatus::Success => self.end(id, CompletionOutcome::Success).await,
            ActionStatus::Retry => {
                let not_before = orchestrator::model::now();
                self.end(id, CompletionOutcome::Retry { not_before, error: "e".into() }).await
            }
            ActionStatus::Dlq => self.end(id, CompletionOutcome::Dlq { error: "e".into() }).await,
            ActionStatus::Cancelled => self.store.actions().cancel(Authority::Operator, id, None).await.unwrap(),
            ActionStatus::AwaitingApproval => {}
        }
        assert_eq!(self.get(id).await.unwrap().status, status);
        id
    }

    async fn end(&self, id: i64, outcome: CompletionOutcome) {
        let (token, attempt) = self.claim_it(id).await;
        let done = Completion { action_id: id, token, attempt, outcome, logs: vec![] };
        assert_eq!(self.store.actions().complete(None, &[done]).await.unwrap().applied, vec![id]);
    }

    async fn claim_it(&self, id: i64) -> (i64, i32) {
        let claimed = self.store.actions().claim(&self.worker, 1).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].action.id, id, "the walker's action is claimed first");
        (claimed[0].token, claimed[0].attempt)
    }

    /// Applies `op` to `id`. `Ok(true)`: applied; `Ok(false)`: refused (or, for an operation
    /// that sweeps the queue, left untouched).
    async fn apply(&mut self, op: Op, id: i64) -> Result<bool, StoreError> {
        let before = self.get(id).await.unwrap();
        let fence = self.fence();
        let lease = Authority::Lease(&fence);
        let claim = (before.claim.as_ref().map_or(0, |c| c.token), before.attempts);
        let completion =
            |outcome| Completion { action_id: id, token: claim.0, attempt: claim.1, outcome, logs: vec![] };
        let refused = |r: Result<(), StoreError>| match r {
            Ok(()) => Ok(true),
            Err(StoreError::Refused(_)) => Ok(false),
            Err(e) => Err(e),
        };
        let far = orchestrator::model::now() + chrono::Duration::days(1);
        match op {
            Op::Enqueue => unreachable!("enqueue has no starting status"),
            Op::Claim => {
                let claimed = self.store.actions().claim(&self.worker, 1).await?;
                Ok(claimed.iter().any(|c| c.action.id == id))
            }
            Op::Unstart => self.complete(completion(CompletionOutcome::Unstarted)).await,
            Op::Complete => self.complete(completion(CompletionOutcome::Success)).await,
            Op::Quarantine => {
                let mut claimed = orchestrator::store::Claimed {
                    action: before.clone(),
                    token: claim.0,
                    attempt: claim.1,
                    proof: true,
                };
                claimed.action.decode_error = Some("payload_json cannot be read".into());
                self.complete(orchestrator::store::quarantine(&claimed, "payload_json cannot be read")).await
            }
            Op::Rescue => {
                // A new holder rescues what a worker it counts as dead (a zero TTL) left RUNNING.
                self.take_lease().await;
                let rescued = self.store.actions().rescue(&self.fence(), &self.owner, Duration::ZERO, None).await?;
                Ok(rescued.iter().any(|r| r.id == id))
            }
            Op::Requeue => refused(self.store.actions().requeue(Authority::Operator, id).await),
            Op::RetryNow => refused(self.store.actions().retry_now(lease, id, "walk").await),
            Op::Dlq => refused(self.store.actions().dlq(lease, id, "walk").await),
            Op::Cancel => refused(self.store.actions().cancel(lease, id, None).await),
            Op::ForceRun => refused(self.store.actions().force_run(lease, id, 10, "walk").await),
            Op::Reprioritize => refused(self.store.actions().reprioritize(lease, id, 7, "walk").await),
            Op::Postpone => refused(self.store.actions().postpone(lease, id, far, "walk").await),
            Op::Boost => {
                self.store.actions().boost(&fence, far).await?;
                Ok(self.get(id).await.unwrap().priority != before.priority)
            }
            Op::Expire => {
                // Give the walker's row a deadline that has passed, then expire what is due.
                let past = "2000-01-01T00:00:00Z";
                self.store
                    .execute_unprepared(&format!("UPDATE actions SET expires_at = '{past}' WHERE id = {id}"))
                    .await?;
                let expired = self.store.actions().expire_due(LEASE, self.epoch, None).await?;
                Ok(expired.contains(&id))
            }
            Op::Purge => {
                self.store.actions().purge(far, 100).await?;
                Ok(self.get(id).await.is_none())
            }
            Op::Preview => refused(self.store.actions().record_preview(&fence, id, "GET /", WALK_SHA, None).await),
            Op::Approve => {
                // An approval needs the request rendered: the holder's preview comes first.
                let _ = self.store.actions().record_preview(&fence, id, "GET /", WALK_SHA, None).await;
                refused(self.store.actions().approve(id, "walker", Some("walk"), None).await.map(drop))
            }
            Op::Reject => refused(self.store.actions().reject(id, "walker", "walk").await),
            Op::ExpireApproval => {
                let past = "2000-01-01T00:00:00Z";
                self.store
                    .execute_unprepared(&format!("UPDATE actions SET approval_expires_at = '{past}' WHERE id = {id}"))
                    .await?;
                Ok(self.store.actions().expire_approvals(&fence).await?.contains(&id))
            }
        }
    }

    async fn complete(&self, c: Completion) -> Result<bool, StoreError> {
        let id = c.action_id;
        Ok(self.store.actions().complete(None, &[c]).await?.applied.contains(&id))
    }
}

async fn every_operation_from_every_status_matches_the_table(db: &TestDb) {
    let table = table();
    let mut walk = Walk::new(&db.store).await;
    walk.take_lease().await;
    let mut checked = 0;
    for op in Op::ALL.iter().copied().filter(|op| *op != Op::Enqueue) {
        for &from in ActionStatus::ALL {
            let id = walk.action_in(from).await;
            let applied = walk.apply(op, id).await.unwrap_or_else(|e| panic!("{op} from {from}: {e}"));
            let after = walk.get(id).await;
            match table.get(&(op.as_str().to_string(), from)) {
                Some(expected) => {
                    assert!(applied, "{op} from {from} must apply (ARCHITECTURE.md)");
                    assert_eq!(after.map(|a| a.status), *expected, "{op} from {from}");
                }
                None => {
                    assert!(!applied, "{op} from {from} must be refused (ARCHITECTURE.md lists no such row)");
                    assert_eq!(after.map(|a| a.status), Some(from), "{op} from {from} left the row as it was");
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, (Op::ALL.len() - 1) * ActionStatus::ALL.len());
}

/// A refusal names the state it found; operator and rule paths say the same thing.
async fn refusals_name_the_state_found(db: &TestDb) {
    let mut walk = Walk::new(&db.store).await;
    walk.take_lease().await;
    let id = walk.action_in(ActionStatus::Success).await;
    let e = db.store.actions().requeue(Authority::Operator, id).await.unwrap_err().to_string();
    assert!(e.contains("it is SUCCESS; only DLQ actions can be requeued"), "{e}");
    let fence = walk.fence();
    let e = db.store.actions().dlq(Authority::Lease(&fence), id, "x").await.unwrap_err().to_string();
    assert!(e.contains(&format!("cannot dlq action {id}: it is SUCCESS; dlq needs PENDING or RETRY")), "{e}");
    let stale = Fence { epoch: walk.epoch - 1, ..walk.fence() };
    let pending = walk.action_in(ActionStatus::Pending).await;
    let e = db.store.actions().cancel(Authority::Lease(&stale), pending, None).await.unwrap_err().to_string();
    assert!(e.contains("fenced"), "{e}");
    assert!(matches!(
        db.store.actions().cancel(Authority::Operator, 987_654, None).await,
        Err(StoreError::Refused(orchestrator::store::Refusal::NotFound(987_654)))
    ));
}

/// The drift the one home removed: a rule's retry of a DLQ action and an operator's requeue
/// leave the same row.
async fn rule_retry_of_dlq_is_a_requeue(db: &TestDb) {
    let mut walk = Walk::new(&db.store).await;
    walk.take_lease().await;
    let (a, b) = (walk.action_in(ActionStatus::Dlq).await, walk.action_in(ActionStatus::Dlq).await);
    db.store.actions().requeue(Authority::Operator, a).await.unwrap();
    let fence = walk.fence();
    db.store.actions().retry_now(Authority::Lease(&fence), b, "rule").await.unwrap();
    let (a, b) = (walk.get(a).await.unwrap(), walk.get(b).await.unwrap());
    for x in [&a, &b] {
        assert_eq!(x.status, ActionStatus::Pending);
        assert_eq!(x.attempts, 0);
        assert_eq!((x.claimed_epoch, x.claimed_at, x.finished_at), (None, None, None), "{x:?}");
    }
}

backend_tests!(
    every_operation_from_every_status_matches_the_table,
    refusals_name_the_state_found,
    rule_retry_of_dlq_is_a_requeue
);

/// A row no reader can decode, planted with raw SQL past every writer's validation: the tick
/// quarantines it (RUNNING -> DLQ, the error naming the field), the other due actions still
/// run, and listings, `actions show` and the snapshot show it with its error.
async fn an_undecodable_row_is_quarantined_and_the_engine_carries_on(db: &TestDb) {
    for key in ["good-1", "good-2"] {
        orchestrator::queue::enqueue(&db.store, &crate::support::noop(key), 3).await.unwrap();
    }
    // 300 levels: serde_json reads at most 128.
    let deep = format!("{{\"a\":{}1{}}}", "[".repeat(300), "]".repeat(300));
    let now = "2020-01-01T00:00:00Z";
    db.store
        .execute_unprepared(&format!(
            "INSERT INTO actions (idempotency_key, action_type, payload_json, status, priority, not_before, attempts, \
             max_attempts, created_at, updated_at) VALUES ('planted', 'NOOP', '{deep}', 'PENDING', 5, '{now}', 0, 3, \
             '{now}', '{now}')"
        ))
        .await
        .unwrap();
    let all =
        db.store.actions().list_actions(&orchestrator::store::ActionFilter { limit: 10, ..Default::default() }).await;
    let all = all.expect("a listing does not fail on an undecodable row");
    let planted = all.iter().find(|a| a.idempotency_key == "planted").unwrap();
    assert!(planted.decode_error.as_deref().unwrap_or("").contains("payload_json cannot be read"), "{planted:?}");
    let engine = db.engine(db.config());
    let snap = engine.snapshot_now().await.expect("the snapshot builds").0;
    assert!(snap.samples.stuck_pending.iter().any(|s| s.id == planted.id));

    let r = crate::support::ran(&engine).await;
    assert_eq!((r.attempted, r.succeeded), (3, 2), "{r:?}");
    let after = db.store.actions().action(planted.id).await.unwrap().unwrap();
    assert_eq!(after.status, ActionStatus::Dlq);
    assert!(after.last_error.as_deref().unwrap_or("").starts_with("quarantined: payload_json cannot be read"));
    for a in db
        .store
        .actions()
        .list_actions(&orchestrator::store::ActionFilter { limit: 10, ..Default::default() })
        .await
        .unwrap()
    {
        if a.idempotency_key != "planted" {
            assert_eq!(a.status, ActionStatus::Success, "{a:?}");
        }
    }
    let logs = db.store.history().logs(Some(planted.id), 10).await.unwrap();
    assert!(logs.iter().any(|l| l.message.contains("-> DLQ (nothing ran)")), "{logs:?}");
    // The next tick is clean: nothing is left RUNNING, nothing fails.
    let r = crate::support::ran(&engine).await;
    assert_eq!(r.status.as_str(), "IDLE", "{r:?}");
}

backend_tests!(an_undecodable_row_is_quarantined_and_the_engine_carries_on);
