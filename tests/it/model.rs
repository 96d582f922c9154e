//! Model-based tests of the queue (proptest-state-machine): random sequences of enqueue (with
//! duplicate keys), lease acquire and takeover by two leaders, two workers that register, claim,
//! die and register anew, completions (success, retryable and permanent failure, late ones from
//! dead workers, and writes carrying a stale claim token), the leader's rescue of dead workers'
//! claims, requeue and cancel run against the real store, on SQLite and on PostgreSQL, and a
//! small reference model predicts every row.
//!
//! After every step: each action is in exactly the status the model says (and one status), held
//! by the worker the model says; attempts never exceed the max; a terminal status (SUCCESS, DLQ,
//! CANCELLED) changes only through an explicit requeue; no write with a stale token is accepted,
//! and no attempt is completed twice; after a rescue no action stays RUNNING under a dead
//! worker; counts by status equal the rows. `MODEL_CASES` sets the number of cases (default 24;
//! a long run: 2000).

use std::collections::BTreeMap;
use std::time::Duration;

use orchestrator::lease::{Lease, LeaseState};
use orchestrator::model::ActionStatus;
use orchestrator::queue;
use orchestrator::store::{ActionFilter, Completion, CompletionOutcome};
use proptest::prelude::*;
use proptest::test_runner::Config;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest};

use crate::support::TestDb;
use crate::support::noop;

const KEYS: u8 = 5;
const OWNERS: [&str; 2] = ["owner-a", "owner-b"];
const WORKERS: usize = 2;
/// Long enough that no lease expires and no claim times out during a case: expiry is modelled
/// by an explicit takeover.
const TTL: Duration = Duration::from_secs(600);

fn cases() -> u32 {
    std::env::var("MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24)
}

#[derive(Clone, Copy, Debug)]
enum Outcome {
    Success,
    FailRetryable,
    FailPermanent,
}

#[derive(Clone, Debug)]
enum Step {
    Enqueue {
        key: u8,
        max: i32,
    },
    /// Acquire or renew; nothing if the other owner holds the lease.
    Acquire {
        owner: usize,
    },
    /// The holder crashed or stalled and its lease lapsed: `owner` takes over (epoch + 1).
    Takeover {
        owner: usize,
    },
    /// Worker `worker` registers (anew, under a new id, if it had died).
    Register {
        worker: usize,
    },
    /// Worker `worker` stops beating: its registration is dead from now on.
    Die {
        worker: usize,
    },
    Claim {
        worker: usize,
    },
    /// Completes the action's latest claim (whoever holds it, live or dead); `stale` sends the
    /// token before it.
    Complete {
        key: u8,
        outcome: Outcome,
        stale: bool,
    },
    Rescue {
        owner: usize,
    },
    Requeue {
        key: u8,
    },
    Cancel {
        key: u8,
    },
}

#[derive(Clone, Debug, PartialEq)]
struct RefAction {
    status: ActionStatus,
    attempts: i32,
    max: i32,
    /// The worker registration (slot, generation) holding its claim.
    claimed_by: Option<(usize, u32)>,
}

#[derive(Clone, Debug, Default)]
struct RefState {
    actions: BTreeMap<u8, RefAction>,
    epoch: i64,
    holder: Option<usize>,
    /// Each owner's last term (0: never held).
    terms: [i64; 2],
    /// Each worker slot's registration generation (0: never registered) and liveness.
    workers: [(u32, bool); WORKERS],
}

fn worker_id(slot: usize, generation: u32) -> String {
    format!("w{slot}-{generation}")
}

impl RefState {
    fn holds(&self, owner: usize) -> bool {
        self.holder == Some(owner) && self.terms[owner] == self.epoch
    }
}

struct QueueRef;

impl ReferenceStateMachine for QueueRef {
    type State = RefState;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<RefState> {
        Just(RefState::default()).boxed()
    }

    fn transitions(_: &RefState) -> BoxedStrategy<Step> {
        let key = 0..KEYS;
        let owner = 0..2usize;
        let outcome = prop_oneof![Just(Outcome::Success), Just(Outcome::FailRetryable), Just(Outcome::FailPermanent)];
        prop_oneof![
            3 => (key.clone(), 1..=3i32).prop_map(|(key, max)| Step::Enqueue { key, max }),
            2 => owner.clone().prop_map(|owner| Step::Acquire { owner }),
            1 => owner.clone().prop_map(|owner| Step::Takeover { owner }),
            2 => (0..WORKERS).prop_map(|worker| Step::Register { worker }),
            1 => (0..WORKERS).prop_map(|worker| Step::Die { worker }),
            3 => (0..WORKERS).prop_map(|worker| Step::Claim { worker }),
            4 => (key.clone(), outcome, proptest::bool::weighted(0.25))
                .prop_map(|(key, outcome, stale)| Step::Complete { key, outcome, stale }),
            1 => owner.prop_map(|owner| Step::Rescue { owner }),
            1 => key.clone().prop_map(|key| Step::Requeue { key }),
            1 => key.prop_map(|key| Step::Cancel { key }),
        ]
        .boxed()
    }

    fn apply(mut s: RefState, step: &Step) -> RefState {
        match *step {
            Step::Enqueue { key, max } => {
                s.actions.entry(key).or_insert(RefAction {
                    status: ActionStatus::Pending,
                    attempts: 0,
                    max,
                    claimed_by: None,
                });
            }
            Step::Acquire { owner } => match s.holder {
                Some(h) if h == owner => s.terms[owner] = s.epoch,
                Some(_) => {}
                None => {
                    s.epoch += 1;
                    s.holder = Some(owner);
                    s.terms[owner] = s.epoch;
                }
            },
            Step::Takeover { owner } => {
                s.epoch += 1;
                s.holder = Some(owner);
                s.terms[owner] = s.epoch;
            }
            Step::Register { worker } => {
                let (generation, live) = &mut s.workers[worker];
                if !*live {
                    *generation += 1;
                    *live = true;
                }
            }
            Step::Die { worker } => s.workers[worker].1 = false,
            Step::Claim { worker } => {
                let (generation, live) = s.workers[worker];
                if live {
                    for a in s.actions.values_mut() {
                        if matches!(a.status, ActionStatus::Pending | ActionStatus::Retry) {
                            a.status = ActionStatus::Running;
                            a.attempts += 1;
                            a.claimed_by = Some((worker, generation));
                        }
                    }
                }
            }
            Step::Complete { key, outcome, stale } => {
                if let Some(a) = s.actions.get_mut(&key)
                    && a.status == ActionStatus::Running
                    && !stale
                {
                    a.status = match outcome {
                        Outcome::Success => ActionStatus::Success,
                        Outcome::FailRetryable if a.attempts < a.max => ActionStatus::Retry,
                        Outcome::FailRetryable | Outcome::FailPermanent => ActionStatus::Dlq,
                    };
                }
            }
            Step::Rescue { owner } => {
                if s.holds(owner) {
                    let workers = s.workers;
                    for a in s.actions.values_mut() {
                        let dead = a.claimed_by.is_none_or(|(w, g)| workers[w] != (g, true));
                        if a.status == ActionStatus::Running && dead {
                            a.status = if a.attempts >= a.max { ActionStatus::Dlq } else { ActionStatus::Retry };
                        }
                    }
                }
            }
            Step::Requeue { key } => {
                if let Some(a) = s.actions.get_mut(&key)
                    && a.status == ActionStatus::Dlq
                {
                    a.status = ActionStatus::Pending;
                    a.attempts = 0;
                    a.claimed_by = None;
                }
            }
            Step::Cancel { key } => {
                if let Some(a) = s.actions.get_mut(&key)
                    && matches!(a.status, ActionStatus::Pending | ActionStatus::Retry | ActionStatus::Dlq)
                {
                    a.status = ActionStatus::Cancelled;
                }
            }
        }
        s
    }
}

/// The real store, one fresh database per case.
struct Sut {
    rt: tokio::runtime::Runtime,
    db: Option<TestDb>,
    leases: Vec<Lease>,
    /// Each owner's last term, as the lease told it.
    terms: [i64; 2],
    /// Each worker slot's claim terms (registered by a `Register` step).
    workers: [Option<orchestrator::store::Claimer>; WORKERS],
    /// (action id, token) of every completion the store accepted.
    completed: std::collections::HashSet<(i64, i64)>,
}

impl Sut {
    fn db(&self) -> &TestDb {
        self.db.as_ref().expect("the database lives until teardown")
    }

    fn rows(&self) -> BTreeMap<u8, orchestrator::model::Action> {
        let all = self
            .rt
            .block_on(self.db().store.actions().list_actions(&ActionFilter { limit: 1000, ..Default::default() }))
            .unwrap();
        all.into_iter()
            .map(|a| (a.idempotency_key.trim_start_matches("m-").parse::<u8>().expect("a model key"), a))
            .collect()
    }
}

struct QueueModel<const PG: bool>;

fn is_terminal(s: ActionStatus) -> bool {
    matches!(s, ActionStatus::Success | ActionStatus::Dlq | ActionStatus::Cancelled)
}

impl<const PG: bool> StateMachineTest for QueueModel<PG> {
    type SystemUnderTest = Sut;
    type Reference = QueueRef;

    fn init_test(_: &RefState) -> Sut {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let db = rt.block_on(async {
            if PG { TestDb::postgres().await.expect("PostgreSQL is configured") } else { TestDb::sqlite().await }
        });
        let leases = OWNERS.iter().map(|o| Lease::new(db.store.clone(), "orchestrator", *o, TTL)).collect();
        Sut { rt, db: Some(db), leases, terms: [0, 0], workers: [None, None], completed: Default::default() }
    }

    fn apply(mut sut: Sut, after: &RefState, step: Step) -> Sut {
        let before = sut.rows();
        let store = sut.db().store.clone();
        let mut requeued = None;
        match step {
            Step::Enqueue { key, max } => {
                let mut req = noop(&format!("m-{key}"));
                req.max_attempts = Some(max as u32);
                let out = sut.rt.block_on(queue::enqueue(&store, &req, 3)).unwrap();
                assert_eq!(out.duplicate, before.contains_key(&key), "a duplicate key creates nothing");
            }
            Step::Acquire { owner } => {
                if let LeaseState::Held(t) = sut.rt.block_on(sut.leases[owner].acquire()).unwrap() {
                    sut.terms[owner] = t.epoch;
                }
            }
            Step::Takeover { owner } => {
                sut.rt.block_on(store.lease().release_lease("orchestrator", None)).unwrap();
                match sut.rt.block_on(sut.leases[owner].acquire()).unwrap() {
                    LeaseState::Held(t) => sut.terms[owner] = t.epoch,
                    LeaseState::HeldByOther(r) => panic!("takeover of a released lease refused: {r:?}"),
                }
            }
            Step::Register { worker } => {
                let (generation, _) = after.workers[worker];
                let live = sut.workers[worker].as_ref().is_some_and(|c| c.worker == worker_id(worker, generation));
                if !live {
                    let id = worker_id(worker, generation);
                    sut.workers[worker] = Some(sut.rt.block_on(crate::support::worker(&store, &id, TTL)));
                }
            }
            Step::Die { worker } => {
                if let Some(c) = &sut.workers[worker] {
                    let sql =
                        format!("UPDATE workers SET heartbeat_at = '2000-01-01T00:00:00Z' WHERE id = '{}'", c.worker);
                    sut.rt.block_on(store.execute_unprepared(&sql)).unwrap();
                    let beat = orchestrator::store::Beat::default();
                    assert!(
                        !sut.rt.block_on(store.workers().worker_heartbeat(&c.worker, TTL, beat)).unwrap(),
                        "a dead registration cannot beat again"
                    );
                }
            }
            Step::Claim { worker } => {
                if let Some(c) = &sut.workers[worker] {
                    let claimed = sut.rt.block_on(store.actions().claim(c, 100)).unwrap();
                    if !after.workers[worker].1 {
                        assert!(claimed.is_empty(), "a dead worker's claim was accepted");
                    }
                }
            }
            Step::Complete { key, outcome, stale } => {
                let Some(row) = before.get(&key) else { return sut };
                let claimed = row.claim.as_ref().map_or(0, |c| c.token);
                let token = if stale { claimed - 1 } else { claimed };
                let outcome = match outcome {
                    Outcome::Success => CompletionOutcome::Success,
                    Outcome::FailRetryable if row.attempts < row.max_attempts => CompletionOutcome::Retry {
                        not_before: orchestrator::model::now(),
                        error: "model: retry".into(),
                    },
                    Outcome::FailRetryable | Outcome::FailPermanent => {
                        CompletionOutcome::Dlq { error: "model: failed".into() }
                    }
                };
                let c = Completion { action_id: row.id, token, attempt: row.attempts, outcome, logs: vec![] };
                let report = sut.rt.block_on(store.actions().complete(None, &[c])).unwrap();
                let landed = report.applied.contains(&row.id);
                assert_ne!(landed, report.rejected.contains(&row.id), "each completion is applied or rejected");
                if stale || row.status != ActionStatus::Running {
                    assert!(!landed, "a write carrying token {token} for a {} row was accepted", row.status);
                }
                if landed {
                    assert!(sut.completed.insert((row.id, token)), "attempt {token} of {} completed twice", row.id);
                }
            }
            Step::Rescue { owner } => {
                let fence = orchestrator::store::Fence {
                    lease_name: "orchestrator".into(),
                    epoch: sut.terms[owner],
                    tick_id: None,
                };
                sut.rt.block_on(store.actions().rescue(&fence, OWNERS[owner], TTL, None)).unwrap();
                if after.holds(owner) {
                    for a in sut.rows().values().filter(|a| a.status == ActionStatus::Running) {
                        let holder = a.claim.as_ref().map(|c| c.worker.clone());
                        let live = sut.workers.iter().enumerate().any(|(slot, c)| {
                            c.as_ref().is_some_and(|c| Some(&c.worker) == holder.as_ref())
                                && after.workers[slot].1
                                && c.as_ref().is_some_and(|c| c.worker == worker_id(slot, after.workers[slot].0))
                        });
                        assert!(live, "action {} stays RUNNING under dead worker {holder:?} after a rescue", a.id);
                    }
                }
            }
            Step::Requeue { key } => {
                if let Some(row) = before.get(&key) {
                    let r = sut.rt.block_on(store.actions().requeue(orchestrator::store::Authority::Operator, row.id));
                    assert_eq!(r.is_ok(), row.status == ActionStatus::Dlq, "requeue of a {} action: {r:?}", row.status);
                    requeued = Some(key);
                }
            }
            Step::Cancel { key } => {
                if let Some(row) = before.get(&key) {
                    let r =
                        sut.rt.block_on(store.actions().cancel(orchestrator::store::Authority::Operator, row.id, None));
                    let allowed = matches!(row.status, ActionStatus::Pending | ActionStatus::Retry | ActionStatus::Dlq);
                    assert_eq!(r.is_ok(), allowed, "cancel of a {} action: {r:?}", row.status);
                }
            }
        }
        // Terminal states change only through an explicit requeue (DLQ -> PENDING) or a cancel
        // of a DLQ action (an operator decision, allowed on DLQ only).
        let now = sut.rows();
        for (key, b) in &before {
            let a = &now[key];
            if is_terminal(b.status) && a.status != b.status {
                let by_requeue = requeued == Some(*key) && b.status == ActionStatus::Dlq;
                let by_cancel = matches!(step, Step::Cancel { key: k } if k == *key) && b.status == ActionStatus::Dlq;
                assert!(by_requeue || by_cancel, "{key}: terminal {} became {} through {step:?}", b.status, a.status);
            }
        }
        sut
    }

    fn check_invariants(sut: &Sut, model: &RefState) {
        let rows = sut.rows();
        assert_eq!(rows.keys().collect::<Vec<_>>(), model.actions.keys().collect::<Vec<_>>(), "the same actions");
        for (key, row) in &rows {
            let m = &model.actions[key];
            assert_eq!((row.status, row.attempts, row.max_attempts), (m.status, m.attempts, m.max), "action {key}");
            if row.status == ActionStatus::Running {
                let expected = m.claimed_by.map(|(w, g)| worker_id(w, g));
                assert_eq!(row.claim.as_ref().map(|c| c.worker.clone()), expected, "action {key}'s claimant");
            }
            assert!(
                row.attempts <= row.max_attempts,
                "action {key}: {} attempts of {}",
                row.attempts,
                row.max_attempts
            );
        }
        let counts = sut.rt.block_on(sut.db().store.actions().count_by_status()).unwrap();
        let total: i64 = counts.values().sum();
        assert_eq!(total, rows.len() as i64, "counts by status sum to the rows: {counts:?}");
        for (status, n) in &counts {
            assert_eq!(*n, rows.values().filter(|r| r.status == *status).count() as i64, "count of {status}");
        }
    }

    fn teardown(mut sut: Sut, _: RefState) {
        if let Some(db) = sut.db.take() {
            sut.rt.block_on(db.cleanup());
        }
    }
}

fn run<const PG: bool>() {
    let config = Config { cases: cases(), failure_persistence: None, ..Config::default() };
    let mut runner = proptest::test_runner::TestRunner::new(config.clone());
    let result = runner.run(&QueueRef::sequential_strategy(1..40), |(initial, steps, seen)| {
        QueueModel::<PG>::test_sequential(config.clone(), initial, steps, seen);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn queue_matches_the_model_sqlite() {
    run::<false>();
}

#[test]
fn queue_matches_the_model_postgres() {
    if crate::support::db::pg_url("this PostgreSQL test").is_none() {
        return;
    }
    run::<true>();
}
