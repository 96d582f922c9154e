//! Limits per action type (issue 14), held in the database and enforced in the claim: at most
//! `max_running` at once, a sliding-window `rate`, a `daily_budget`, each optionally per
//! partition of a payload field; a full type never blocks the others; an unstart gives its
//! start back; an override narrows a type until it expires.

use std::collections::BTreeMap;
use std::time::Duration;

use orchestrator::limits::{LimitField, LimitValue};
use orchestrator::store::{Claimed, Claimer, Completion, CompletionOutcome, Store};
use serde_json::json;

use crate::backend_tests;
use crate::support::TestDb;
use crate::support::limits::{done, enqueue, limits_config, limits_config_polling, most_at_once, spec, types};

backend_tests!(
    a_full_type_waits_and_the_others_flow_past_it,
    partitions_are_limited_one_by_one,
    rate_and_budget_count_starts_and_an_unstart_gives_them_back,
    an_override_narrows_a_type_until_it_expires,
);

async fn claimer(db: &TestDb) -> Claimer {
    crate::support::worker(&db.store, "w", Duration::from_secs(30)).await
}

async fn a_full_type_waits_and_the_others_flow_past_it(db: &TestDb) {
    db.store.limits().set_limit("SLOW", &spec("max_running: '2'")).await.unwrap();
    enqueue(&db.store, "SLOW", 10, 10, |i| json!({"i": i})).await;
    enqueue(&db.store, "NOOP", 10, 0, |i| json!({"i": i})).await;
    let w = claimer(db).await;
    let first = db.store.actions().claim(&w, 5).await.unwrap();
    assert_eq!(
        types(&first),
        BTreeMap::from([("NOOP".into(), 3), ("SLOW".into(), 2)]),
        "two SLOW, the rest of the batch NOOP"
    );
    let second = db.store.actions().claim(&w, 5).await.unwrap();
    assert_eq!(
        types(&second),
        BTreeMap::from([("NOOP".into(), 5)]),
        "SLOW is full; NOOP flows past its higher priority"
    );
    let slow: Vec<&Claimed> = first.iter().filter(|c| c.action.action_type == "SLOW").collect();
    db.store.actions().complete(None, &[done(slow[0], CompletionOutcome::Success)]).await.unwrap();
    let third = db.store.actions().claim(&w, 5).await.unwrap();
    assert_eq!(
        types(&third),
        BTreeMap::from([("NOOP".into(), 2), ("SLOW".into(), 1)]),
        "a completion gives its slot back"
    );
    let usage = db.store.limits().limit_usage().await.unwrap();
    let slow = usage.iter().find(|u| u.action_type == "SLOW").unwrap();
    assert_eq!((slow.running, slow.waiting, slow.running_remaining), (2, 7, Some(0)));
    assert!(slow.blocked_running >= 1, "the claims that held SLOW back are counted: {slow:?}");
    // Waiting never counts as an attempt.
    let waiting = db.store.actions().list_actions(&Default::default()).await.unwrap();
    assert!(
        waiting.iter().filter(|a| a.action_type == "SLOW" && a.status.as_str() == "PENDING").all(|a| a.attempts == 0)
    );
}

async fn partitions_are_limited_one_by_one(db: &TestDb) {
    db.store.limits().set_limit("WEBHOOK", &spec("{max_running: '1', partition_by: payload.partner}")).await.unwrap();
    enqueue(&db.store, "WEBHOOK", 9, 0, |i| json!({"partner": format!("p{}", i % 3)})).await;
    enqueue(&db.store, "WEBHOOK", 1, 0, |_| json!({"other": 1})).await;
    let w = claimer(db).await;
    let got = db.store.actions().claim(&w, 20).await.unwrap();
    let mut partners: Vec<String> = got
        .iter()
        .map(|c| c.action.payload.get("partner").and_then(|p| p.as_str()).unwrap_or("").to_string())
        .collect();
    partners.sort();
    assert_eq!(partners, ["", "p0", "p1", "p2"], "one at a time per partner, and one without the field");
    assert!(db.store.actions().claim(&w, 20).await.unwrap().is_empty());
    let usage = db.store.limits().limit_usage().await.unwrap();
    let u = &usage[0];
    assert_eq!((u.running, u.waiting, u.partitions_tracked), (4, 6, 3));
    assert_eq!(u.partitions.len(), 4);
}

async fn rate_and_budget_count_starts_and_an_unstart_gives_them_back(db: &TestDb) {
    db.store.limits().set_limit("POST", &spec("{rate: 3/1h}")).await.unwrap();
    db.store.limits().set_limit("MAIL", &spec("{daily_budget: '4'}")).await.unwrap();
    enqueue(&db.store, "POST", 10, 0, |i| json!({"i": i})).await;
    enqueue(&db.store, "MAIL", 10, 0, |i| json!({"i": i})).await;
    let w = claimer(db).await;
    let got = db.store.actions().claim(&w, 20).await.unwrap();
    assert_eq!(types(&got), BTreeMap::from([("MAIL".into(), 4), ("POST".into(), 3)]));
    // Completing frees nothing of a rate or a budget: a start is a start.
    let batch: Vec<Completion> = got.iter().map(|c| done(c, CompletionOutcome::Success)).collect();
    db.store.actions().complete(None, &batch[..2]).await.unwrap();
    assert!(db.store.actions().claim(&w, 20).await.unwrap().is_empty());
    // An attempt that never started gives its start back.
    let rest: Vec<Completion> =
        batch[2..].iter().map(|c| Completion { outcome: CompletionOutcome::Unstarted, ..c.clone() }).collect();
    db.store.actions().complete(None, &rest).await.unwrap();
    let again = db.store.actions().claim(&w, 20).await.unwrap();
    assert_eq!(again.len(), rest.len(), "each unstart gives back one start");
    let usage = db.store.limits().limit_usage().await.unwrap();
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
        .limits()
        .set_limit_override(None, "NOOP", LimitField::MaxRunning, LimitValue::Count(0), soon, "breaker", "test")
        .await
        .unwrap();
    assert!(db.store.actions().claim(&w, 4).await.unwrap().is_empty(), "narrowed to 0");
    let listed = db.store.limits().list().await.unwrap();
    assert_eq!(listed[0].overrides[0].reason, "breaker");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(db.store.actions().claim(&w, 4).await.unwrap().len(), 4, "the override expired");
}

// ---- property: four claimers racing never exceed a limit ---------------------------------------

/// One step of one claimer's script.
#[derive(Clone, Debug)]
enum Step {
    /// Claim up to this many.
    Claim(u64),
    /// End the held attempt at this index (mod what is held) this way.
    Finish(usize, End),
    /// The worker dies: its registration goes, and the leader rescues its claims; the claimer
    /// registers anew.
    Die,
    Pause,
}

#[derive(Clone, Copy, Debug)]
enum End {
    Success,
    Retry,
    Dlq,
    Unstart,
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        4 => (1u64..=4).prop_map(Step::Claim),
        4 => (0usize..8, prop_oneof![Just(End::Success), Just(End::Retry), Just(End::Dlq), Just(End::Unstart)])
            .prop_map(|(i, e)| Step::Finish(i, e)),
        1 => Just(Step::Die),
        1 => Just(Step::Pause),
    ]
}

/// What the harness saw, kept apart from the store: an attempt counts as running from the
/// moment its claim returned until just before its end was written (or its worker was declared
/// dead), which is inside the time the row is `RUNNING` in the database. So the count here can
/// only be lower than the database's, never higher, and any excess it sees is real.
#[derive(Default)]
struct Seen {
    running: BTreeMap<(String, String), i64>,
    max_seen: BTreeMap<(String, String), i64>,
    /// Per type, every partition together.
    type_running: BTreeMap<String, i64>,
    type_max: BTreeMap<String, i64>,
    /// Starts per type, less the unstarts (counted before the unstart is written).
    starts: BTreeMap<String, i64>,
    /// Per action: its claims less its unstarts, which is what its `attempts` must be.
    attempts: BTreeMap<i64, i32>,
    claims: u64,
}

impl Seen {
    fn add(&mut self, t: &str, part: &str) {
        let k = (t.to_string(), part.to_string());
        let n = self.running.entry(k.clone()).or_default();
        *n += 1;
        let n = *n;
        let m = self.max_seen.entry(k).or_default();
        *m = (*m).max(n);
        let n = self.type_running.entry(t.to_string()).or_default();
        *n += 1;
        let n = *n;
        let m = self.type_max.entry(t.to_string()).or_default();
        *m = (*m).max(n);
        *self.starts.entry(t.to_string()).or_default() += 1;
        self.claims += 1;
    }

    fn remove(&mut self, t: &str, part: &str) {
        *self.running.entry((t.to_string(), part.to_string())).or_default() -= 1;
        *self.type_running.entry(t.to_string()).or_default() -= 1;
    }
}

fn partition(c: &Claimed) -> String {
    c.action.payload.get("p").and_then(|p| p.as_str()).unwrap_or("").to_string()
}

backend_tests!(four_racing_claimers_never_exceed_a_limit);

async fn four_racing_claimers_never_exceed_a_limit(db: &TestDb) {
    use proptest::test_runner::{Config as PropConfig, TestRunner};
    let cases: u32 = std::env::var("LIMIT_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let mut runner = TestRunner::new(PropConfig { cases, failure_persistence: None, ..PropConfig::default() });
    let scripts = proptest::collection::vec(proptest::collection::vec(step(), 4..24), 4);
    let term = crate::support::hold(&db.store, "leader").await;
    let fence = crate::support::fence(&term);
    let mut stores = vec![db.store.clone()];
    for _ in 1..4 {
        stores.push(if db.store.backend() == orchestrator::store::Backend::Postgres {
            db.another_store().await
        } else {
            db.store.clone()
        });
    }
    let case = std::sync::atomic::AtomicU32::new(0);
    let result = runner.run(&scripts, |scripts| {
        let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(race_case(db, &stores, &fence, n, scripts))
        });
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// One case: fresh types (so cases share nothing), four claimers running their scripts at once.
async fn race_case(db: &TestDb, stores: &[Store], fence: &orchestrator::store::Fence, n: u32, scripts: Vec<Vec<Step>>) {
    let (run, rate, budget, part, free) =
        (format!("RUN{n}"), format!("RATE{n}"), format!("BUDGET{n}"), format!("PART{n}"), format!("FREE{n}"));
    db.store.limits().set_limit(&run, &spec("max_running: '2'")).await.unwrap();
    db.store.limits().set_limit(&rate, &spec("{rate: 5/1h, max_running: '3'}")).await.unwrap();
    db.store.limits().set_limit(&budget, &spec("daily_budget: '6'")).await.unwrap();
    db.store.limits().set_limit(&part, &spec("{max_running: '1', partition_by: payload.p}")).await.unwrap();
    let day = db.store.db_now().await.unwrap().date_naive();
    for t in [&run, &rate, &budget, &free] {
        enqueue(&db.store, t, 12, 0, |i| json!({"i": i})).await;
    }
    // A higher priority, so that the partitioned type is always at the head of the queue. Four
    // values and a cap of two tracked: two of them share the overflow partition.
    enqueue(&db.store, &part, 12, 5, |i| json!({"p": format!("v{}", i % 4), "i": i})).await;

    let seen = std::sync::Arc::new(std::sync::Mutex::new(Seen::default()));
    let mut tasks = Vec::new();
    for (k, script) in scripts.into_iter().enumerate() {
        let store = stores[k].clone();
        let seen = seen.clone();
        let fence = fence.clone();
        tasks.push(tokio::spawn(async move {
            let mut generation = 0;
            let mut me =
                crate::support::worker(&store, &format!("c{n}-{k}-{generation}"), Duration::from_secs(600)).await;
            me.limit_partitions = 2;
            let mut held: Vec<Claimed> = Vec::new();
            for step in script {
                match step {
                    Step::Claim(want) => {
                        let got = store.actions().claim(&me, want).await.unwrap();
                        let mut s = seen.lock().unwrap();
                        for c in got {
                            s.add(&c.action.action_type, &partition(&c));
                            *s.attempts.entry(c.action.id).or_default() += 1;
                            held.push(c);
                        }
                    }
                    Step::Finish(i, end) if !held.is_empty() => {
                        let c = held.remove(i % held.len());
                        let outcome = match end {
                            End::Success => CompletionOutcome::Success,
                            End::Retry => CompletionOutcome::Retry {
                                not_before: orchestrator::model::now(),
                                error: "again".into(),
                            },
                            End::Dlq => CompletionOutcome::Dlq { error: "no".into() },
                            End::Unstart => CompletionOutcome::Unstarted,
                        };
                        {
                            let mut s = seen.lock().unwrap();
                            s.remove(&c.action.action_type, &partition(&c));
                            if matches!(end, End::Unstart) {
                                *s.starts.entry(c.action.action_type.clone()).or_default() -= 1;
                                *s.attempts.entry(c.action.id).or_default() -= 1;
                            }
                        }
                        let r = store.actions().complete(None, &[done(&c, outcome)]).await.unwrap();
                        assert_eq!(r.applied, [c.action.id], "a live claim's end lands");
                    }
                    Step::Finish(..) => {}
                    Step::Die => {
                        {
                            let mut s = seen.lock().unwrap();
                            for c in held.drain(..) {
                                s.remove(&c.action.action_type, &partition(&c));
                            }
                        }
                        store.workers().deregister_worker(&me.worker).await.unwrap();
                        store.actions().rescue(&fence, "leader", Duration::from_secs(600), None).await.unwrap();
                        generation += 1;
                        me =
                            crate::support::worker(&store, &format!("c{n}-{k}-{generation}"), Duration::from_secs(600))
                                .await;
                        me.limit_partitions = 2;
                    }
                    Step::Pause => tokio::task::yield_now().await,
                }
            }
            held
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let s = std::mem::take(&mut *seen.lock().unwrap());
    let max = |t: &str| s.max_seen.iter().filter(|((ty, _), _)| ty == t).map(|(_, n)| *n).max().unwrap_or(0);
    assert!(max(&run) <= 2, "max_running 2 exceeded: {}", max(&run));
    assert!(max(&rate) <= 3, "max_running 3 of the rated type exceeded: {}", max(&rate));
    for ((t, p), m) in &s.max_seen {
        if t == &part {
            assert!(*m <= 1, "partition {p} ran {m} at once");
        }
    }
    let in_part = s.type_max.get(&part).copied().unwrap_or(0);
    assert!(in_part <= 3, "two tracked values and the overflow, one each: {in_part} ran at once");
    let starts = |t: &str| s.starts.get(t).copied().unwrap_or(0);
    assert!(starts(&rate) <= 5, "rate 5/1h: {} started", starts(&rate));
    if db.store.db_now().await.unwrap().date_naive() == day {
        assert!(starts(&budget) <= 6, "budget 6: {} started", starts(&budget));
    }
    // The database agrees: what is running is within the limits, and what waits never counted
    // an attempt for waiting.
    let rows = db
        .store
        .actions()
        .list_actions(&orchestrator::store::ActionFilter { limit: 10_000, ..Default::default() })
        .await
        .unwrap();
    for t in [&run, &rate, &budget, &part] {
        let running = rows.iter().filter(|a| &a.action_type == t && a.status.as_str() == "RUNNING").count();
        // The partitioned type: one per partition, two tracked values and the overflow.
        let cap = if t == &run {
            2
        } else if t == &budget {
            6
        } else {
            3
        };
        assert!(running <= cap, "{t}: {running} RUNNING");
    }
    let mine = [&run, &rate, &budget, &part, &free];
    for a in rows.iter().filter(|a| mine.contains(&&a.action_type)) {
        let expected = s.attempts.get(&a.id).copied().unwrap_or(0);
        assert_eq!(a.attempts, expected, "attempts are the starts, never the waits: {a:?}");
    }
}

// ---- a mixed queue, ticked in the default configuration ---------------------------------------

backend_tests!(a_type_at_its_rate_does_not_delay_the_rest_and_the_tick_says_why);

/// 300 POST_SOCIAL of a higher priority held by `rate: 3/1h`, 150 NOOP behind them, the shipped
/// rules loaded, the default config (a tick budget of 100 for the test): the NOOP drain takes
/// the ticks it would take alone, the limited type starts exactly its rate, and the tick that
/// then has only limited work left says so and is not an idle tick.
async fn a_type_at_its_rate_does_not_delay_the_rest_and_the_tick_says_why(db: &TestDb) {
    use orchestrator::model::{ActionStatus, TickStatus};
    db.store.limits().set_limit("POST_SOCIAL", &spec("rate: 3/1h")).await.unwrap();
    enqueue(&db.store, "POST_SOCIAL", 300, 5, |i| json!({"text": format!("post {i}")})).await;
    enqueue(&db.store, "NOOP", 150, 0, |i| json!({"i": i})).await;
    let mut config = db.config();
    config.rules_dir = crate::support::fixtures::shipped_rules();
    let engine = db.engine(config);
    assert!(engine.decider().load_rules().unwrap() >= 7, "the shipped rules load");

    let first = crate::support::ran(&engine).await;
    crate::support::fixtures::assert_conserving(&first);
    assert_eq!(first.attempted, 100, "a full tick budget, not three: {first:?}");
    let second = crate::support::ran(&engine).await;
    crate::support::fixtures::assert_conserving(&second);
    assert_eq!(second.attempted, 53, "the rest of the NOOP: {second:?}");
    let done = |t: &str| {
        let t = t.to_string();
        let store = db.store.clone();
        async move {
            store
                .actions()
                .list_actions(&orchestrator::store::ActionFilter {
                    status: Some(ActionStatus::Success),
                    action_type: Some(t),
                    limit: 1000,
                })
                .await
                .unwrap()
                .len()
        }
    };
    assert_eq!(done("NOOP").await, 150, "two ticks, as without the limited backlog");
    let posts = db
        .store
        .actions()
        .list_actions(&orchestrator::store::ActionFilter {
            action_type: Some("POST_SOCIAL".into()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    let started: i32 = posts.iter().map(|a| a.attempts).sum();
    assert_eq!(
        started,
        3,
        "exactly the rate started: {:?}",
        posts.iter().filter(|a| a.attempts > 0).collect::<Vec<_>>()
    );

    let held = crate::support::ran(&engine).await;
    crate::support::fixtures::assert_conserving(&held);
    assert_eq!((held.status, held.attempted), (TickStatus::Throttled, 0), "{held:?}");
    assert!(held.notes.contains("held by limits: POST_SOCIAL rate 3/1h (297 waiting)"), "{}", held.notes);
    let snap = held.snapshot.as_ref().unwrap();
    let view = &snap.limits["POST_SOCIAL"];
    assert_eq!((view.rate_remaining, view.waiting), (Some(0), 297), "{view:?}");
    // 297 pending, but held by their limit: waiting by design, not a saturated queue.
    assert_eq!(snap.queue.pending, 297);
    assert!(snap.health.reasons.iter().all(|r| !r.contains("saturated")), "{:?}", snap.health);
}

// ---- across processes: workers on several "hosts" over PostgreSQL ------------------------------

/// Three worker processes with 4 slots each, and a leader whose config says `COMMAND:
/// {max_running: 2}`: the commands themselves never see more than two of them at once, every
/// action runs, and a SIGHUP with a new config moves the limit for everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_holds_across_worker_processes_and_moves_on_sighup() {
    let Some(db) = TestDb::postgres().await else { return };
    let log = db.dir.path().join("probe.log");
    std::fs::write(db.dir.path().join("o.yaml"), limits_config(&log, 2)).unwrap();
    let mut procs =
        crate::support::daemon::Procs(vec![crate::support::daemon::spawn(&db, &["run", "--no-execute", "--no-http"])]);
    // The leader writes its config's limits at start; work comes only once they are in force.
    let start = std::time::Instant::now();
    while !db.store.limits().list().await.unwrap().iter().any(|l| l.action_type == "COMMAND") {
        assert!(start.elapsed() < Duration::from_secs(20), "the leader never wrote its limits");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..3 {
        procs.0.push(crate::support::daemon::spawn(&db, &["worker", "--concurrency", "4"]));
    }
    db.store
        .flags()
        .set_flags(orchestrator::store::FlagChange { proof_mode: Some(false), ..Default::default() })
        .await
        .unwrap();
    let n = 24;
    enqueue(&db.store, "COMMAND", n, 0, |_| json!({"command": "probe"})).await;
    let start = std::time::Instant::now();
    loop {
        let done = db
            .store
            .actions()
            .list_actions(&orchestrator::store::ActionFilter {
                status: Some(orchestrator::model::ActionStatus::Success),
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .len();
        if done == n {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{done} of {n} done");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (most, started) = most_at_once(&log);
    assert_eq!(started, n, "every action ran once");
    assert_eq!(most, 2, "twelve slots on three processes, and never more than two at once (nor fewer: it binds)");

    // A new config and a SIGHUP: the leader writes it, and every worker's next claim honours it.
    std::fs::write(db.dir.path().join("o.yaml"), limits_config(&log, 3)).unwrap();
    crate::support::daemon::signal(&procs.0[0], "-HUP");
    let start = std::time::Instant::now();
    loop {
        let l = db.store.limits().list().await.unwrap();
        if l.iter().any(|l| l.action_type == "COMMAND" && l.base.max_running == Some(3)) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "SIGHUP did not move the limit: {l:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::remove_file(&log).unwrap();
    enqueue(&db.store, "COMMAND", n, 1, |_| json!({"command": "probe"})).await;
    let start = std::time::Instant::now();
    while most_at_once(&log).1 < n {
        assert!(start.elapsed() < Duration::from_secs(60), "the second round did not finish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(most_at_once(&log).0, 3, "three at once after the SIGHUP, never more");
    drop(procs);
    db.cleanup().await;
}

// ---- time: the window slides, the day turns, a dead worker's slot waits for its rescue ----------

/// SQLite, where every time comes from the store's clock, so that an hour and a day pass at
/// once: `rate: 2/1h` lets two more start only once the first two are an hour old, and
/// `daily_budget: 3` starts afresh on the next UTC day.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_slides_and_the_budget_turns_with_the_day() {
    let db = TestDb::sqlite().await;
    let clock = orchestrator::model::Clock::shifted();
    let store = db.store.clone().with_clock(clock.clone());
    store.limits().set_limit("POST", &spec("rate: 2/1h")).await.unwrap();
    store.limits().set_limit("MAIL", &spec("daily_budget: '3'")).await.unwrap();
    enqueue(&store, "POST", 10, 0, |i| json!({"i": i})).await;
    enqueue(&store, "MAIL", 10, 0, |i| json!({"i": i})).await;
    let mut generation = 0;
    let mut claim = async |store: &Store, t: &str| {
        // A new registration each time: the clock jumps past any heartbeat's TTL.
        generation += 1;
        let me = Claimer {
            types: vec![t.to_string()],
            ..crate::support::worker(store, &format!("w{generation}"), Duration::from_secs(30)).await
        };
        let got = store.actions().claim(&me, 10).await.unwrap();
        let batch: Vec<Completion> = got.iter().map(|c| done(c, CompletionOutcome::Success)).collect();
        store.actions().complete(None, &batch).await.unwrap();
        got.len()
    };
    assert_eq!(claim(&store, "POST").await, 2);
    clock.advance(chrono::Duration::minutes(30));
    assert_eq!(claim(&store, "POST").await, 0, "half an hour later the window still holds two");
    clock.advance(chrono::Duration::minutes(31));
    assert_eq!(claim(&store, "POST").await, 2, "an hour after the first two, two more");

    assert_eq!(claim(&store, "MAIL").await, 3);
    assert_eq!(claim(&store, "MAIL").await, 0);
    let now = store.now();
    let midnight = (now.date_naive() + chrono::Days::new(1)).and_hms_opt(0, 0, 1).unwrap().and_utc();
    clock.advance(midnight - now);
    assert_eq!(claim(&store, "MAIL").await, 3, "a new UTC day, a new budget");
    db.cleanup().await;
}

backend_tests!(a_dead_workers_slot_comes_back_with_its_rescue_never_before);

async fn a_dead_workers_slot_comes_back_with_its_rescue_never_before(db: &TestDb) {
    db.store.limits().set_limit("ONE", &spec("max_running: '1'")).await.unwrap();
    enqueue(&db.store, "ONE", 3, 0, |i| json!({"i": i})).await;
    let term = crate::support::hold(&db.store, "leader").await;
    let a = crate::support::worker(&db.store, "a", Duration::from_secs(30)).await;
    let b = crate::support::worker(&db.store, "b", Duration::from_secs(30)).await;
    assert_eq!(db.store.actions().claim(&a, 3).await.unwrap().len(), 1);
    db.store.workers().deregister_worker("a").await.unwrap();
    assert!(
        db.store.actions().claim(&b, 3).await.unwrap().is_empty(),
        "a's attempt may still be running: its slot is held"
    );
    let rescued = db
        .store
        .actions()
        .rescue(&crate::support::fence(&term), "leader", Duration::from_secs(30), None)
        .await
        .unwrap();
    assert_eq!(rescued.len(), 1);
    assert_eq!(db.store.actions().claim(&b, 3).await.unwrap().len(), 1, "the rescue gave the slot back");
}

/// A worker whose claim came back empty because of a limit claims again as soon as one of its
/// own attempts ends, not a poll later: six one-at-a-time commands of 0.2 s drain in a few
/// seconds with a 5 s poll (by the poll alone they would take half a minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_held_by_a_limit_claims_again_when_its_attempt_ends() {
    let Some(db) = TestDb::postgres().await else { return };
    let log = db.dir.path().join("probe.log");
    std::fs::write(db.dir.path().join("o.yaml"), limits_config_polling(&log, 1, 5.0)).unwrap();
    db.store.limits().set_limit("COMMAND", &spec("max_running: '1'")).await.unwrap();
    db.store
        .flags()
        .set_flags(orchestrator::store::FlagChange { proof_mode: Some(false), ..Default::default() })
        .await
        .unwrap();
    let procs =
        crate::support::daemon::Procs(vec![crate::support::daemon::spawn(&db, &["worker", "--concurrency", "4"])]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n = 6;
    enqueue(&db.store, "COMMAND", n, 0, |_| json!({"command": "probe"})).await;
    let start = std::time::Instant::now();
    while most_at_once(&log).1 < n {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{} of {n} started: the worker waited for its poll",
            most_at_once(&log).1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(most_at_once(&log).0, 1, "one at a time");
    drop(procs);
    db.cleanup().await;
}

backend_tests!(a_tick_keeps_a_limited_types_slots_busy);

/// `max_running: 2` and 20 due: one tick runs all 20, two at a time, instead of stopping after
/// its first short batch.
async fn a_tick_keeps_a_limited_types_slots_busy(db: &TestDb) {
    db.store.limits().set_limit("NOOP", &spec("max_running: '2'")).await.unwrap();
    enqueue(&db.store, "NOOP", 20, 0, |i| json!({"i": i})).await;
    let engine = db.engine(db.config());
    let r = crate::support::ran(&engine).await;
    assert_eq!((r.attempted, r.succeeded), (20, 20), "{r:?}");
}

backend_tests!(a_limits_row_no_reader_can_use_stops_nothing_else);

/// Rows planted past every writer: one whose type name no action can have, one whose
/// `partition_by` does not parse. Claims, the usage view and a tick go on; the unreadable
/// partition holds its own type (a limit never lapses by corruption); both show their error.
async fn a_limits_row_no_reader_can_use_stops_nothing_else(db: &TestDb) {
    let now = match db.store.backend() {
        orchestrator::store::Backend::Postgres => "now()".to_string(),
        orchestrator::store::Backend::Sqlite => format!("'{}'", orchestrator::model::now().to_rfc3339()),
    };
    db.store
        .execute_unprepared(&format!(
            "INSERT INTO limits (action_type, max_running, source, updated_at) VALUES ('bad''type', 1, 'operator', {now}); \
             INSERT INTO limits (action_type, max_running, partition_by, source, updated_at) \
             VALUES ('WEIRD', 5, 'partner', 'operator', {now})"
        ))
        .await
        .unwrap();
    enqueue(&db.store, "NOOP", 3, 0, |i| json!({"i": i})).await;
    enqueue(&db.store, "WEIRD", 3, 0, |i| json!({"i": i})).await;
    let w = claimer(db).await;
    let got = db.store.actions().claim(&w, 10).await.unwrap();
    assert_eq!(types(&got), BTreeMap::from([("NOOP".into(), 3)]), "NOOP runs; WEIRD is held by its unreadable row");
    let usage = db.store.limits().limit_usage().await.unwrap();
    let error = |t: &str| usage.iter().find(|u| u.action_type == t).and_then(|u| u.limit.error.clone());
    assert!(error("bad'type").is_some_and(|e| e.contains("contains")), "{usage:?}");
    assert!(error("WEIRD").is_some_and(|e| e.contains("partition_by")), "{usage:?}");
    let r = crate::support::ran(&db.engine(db.config())).await;
    assert!(r.snapshot.as_ref().unwrap().limits.contains_key("WEIRD"), "{r:?}");
}
