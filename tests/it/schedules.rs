//! Schedules on both backends, on the store's clock: each slot enqueued exactly once across
//! restarts, a leader change and a deposed leader racing the new one; the misfire policies after
//! a leader was down for three slots; pause, resume, run-now and the config's writes; and a
//! schedule fired by the real tick.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use orchestrator::model::Clock;
use orchestrator::schedules::{Misfire, ScheduleSpec};
use orchestrator::services::scheduler;
use orchestrator::store::{ActionFilter, Authority, Fire, Refusal, Store, StoreError};

use crate::backend_tests;
use crate::support::TestDb;
use crate::support::db::fence;
use crate::support::fixtures::hold;

backend_tests!(
    each_slot_fires_once_across_restarts_leader_changes_and_a_deposed_leader,
    a_leader_down_for_three_slots_fires_per_the_misfire_policy,
    pause_resume_run_now_and_the_config_own_their_parts,
    the_tick_fires_a_configured_schedule_and_says_so,
    a_rule_sees_snap_schedules_and_pauses_one_under_the_fence,
    an_idle_tick_reads_no_schedule_and_a_new_cron_is_looked_at_at_once,
    the_api_adds_lists_pauses_runs_and_removes_schedules_and_metrics_count_them,
);

/// No type needs an approval.
static D: std::sync::LazyLock<orchestrator::queue::EnqueueDefaults> = std::sync::LazyLock::new(|| 3.into());

fn hourly(action_type: &str, misfire: Misfire) -> ScheduleSpec {
    ScheduleSpec {
        cron: "0 * * * *".into(),
        action_type: action_type.into(),
        payload: serde_json::json!({"job": "sync"}),
        misfire,
        misfire_grace: Duration::from_secs(60),
        ..ScheduleSpec::default()
    }
}

/// A store on a clock this test moves, set a minute before a full hour that has passed by at
/// least five minutes (PostgreSQL's claim reads its own clock: what fires must be due by it).
fn shifted(store: &Store) -> (Store, Clock) {
    let clock = Clock::shifted();
    let now = clock.now();
    let past_hour = i64::from(now.minute() * 60 + now.second());
    let back = if past_hour < 300 { past_hour + 3600 } else { past_hour };
    clock.advance(chrono::Duration::seconds(-back - 60));
    (store.clone().with_clock(clock.clone()), clock)
}

async fn keys_of(store: &Store, action_type: &str) -> Vec<String> {
    let filter = ActionFilter { action_type: Some(action_type.into()), limit: 1000, ..ActionFilter::default() };
    let mut keys: Vec<String> =
        store.actions().list_actions(&filter).await.unwrap().into_iter().map(|a| a.idempotency_key).collect();
    keys.sort();
    keys
}

async fn write(store: &Store, specs: &[(&str, ScheduleSpec)]) {
    let defs: Vec<_> = specs.iter().map(|(n, s)| scheduler::stored(n, s, 3).unwrap()).collect();
    store.schedules().write_config(&defs).await.unwrap();
}

fn hour(t: DateTime<Utc>) -> DateTime<Utc> {
    t.with_minute(0).unwrap().with_second(0).unwrap().with_nanosecond(0).unwrap()
}

async fn each_slot_fires_once_across_restarts_leader_changes_and_a_deposed_leader(db: &TestDb) {
    let (store, clock) = shifted(&db.store);
    write(&store, &[("sync", hourly("SCHED_A", Misfire::Once))]).await;
    let a = hold(&db.store, "leader-a").await;
    assert_eq!(scheduler::run(&store, &fence(&a), &D).await.unwrap().fired, 0, "no slot yet");
    clock.advance(chrono::Duration::seconds(90));
    let first = hour(store.now());
    let done = scheduler::run(&store, &fence(&a), &D).await.unwrap();
    assert_eq!((done.fired, done.missed), (1, 0), "{:?}", done.notes);
    // Run again, as a restarted leader would with the same database: nothing more.
    assert_eq!(scheduler::run(&store, &fence(&a), &D).await.unwrap().fired, 0);
    // The lease moves to B: A is fenced, B finds the slot fired.
    db.store.lease().release_lease("orchestrator", None).await.unwrap();
    let b = hold(&db.store, "leader-b").await;
    assert!(b.epoch > a.epoch);
    let fenced = scheduler::run(&store, &fence(&a), &D).await;
    let row = store.schedules().get("sync").await.unwrap();
    assert_eq!(row.last_slot, Some(first));
    clock.advance(chrono::Duration::hours(1));
    let fenced_after = scheduler::run(&store, &fence(&a), &D).await.unwrap();
    assert_eq!(fenced_after.fired, 0, "a deposed leader enqueues nothing: {:?} {:?}", fenced_after.notes, fenced);
    assert!(fenced_after.notes.iter().any(|n| n.contains("fenced")), "{:?}", fenced_after.notes);
    // A deposed leader that read the mark before B fired: its fire does not land.
    let stale = store.schedules().get("sync").await.unwrap();
    assert_eq!(scheduler::run(&store, &fence(&b), &D).await.unwrap().fired, 1);
    let second = hour(store.now());
    let late = Fire {
        name: "sync",
        read_mark: stale.last_slot,
        mark: second,
        next_slot: None,
        cron: &stale.def.cron,
        timezone: &stale.def.timezone,
        actions: &[],
        missed: 0,
    };
    let refused = store.schedules().fire(&fence(&a), &late).await.unwrap_err();
    assert!(matches!(refused, StoreError::Refused(Refusal::Fenced(_))), "{refused}");
    assert_eq!(store.schedules().fire(&fence(&b), &late).await.unwrap(), None, "the mark moved: nothing lands");
    // The two leaders race for the next slot, many times over: one action per slot.
    for _ in 0..5 {
        clock.advance(chrono::Duration::hours(1));
        let (fa, fb) = (fence(&a), fence(&b));
        let (x, y) = tokio::join!(scheduler::run(&store, &fa, &D), scheduler::run(&store, &fb, &D));
        assert_eq!(x.unwrap().fired + y.unwrap().fired, 1);
    }
    let keys = keys_of(&store, "SCHED_A").await;
    assert_eq!(keys.len(), 7, "{keys:?}");
    let slot_key = |t: DateTime<Utc>| orchestrator::schedules::slot_key("sync", t);
    assert_eq!(keys[0], slot_key(first));
    assert_eq!(keys[1], slot_key(second));
    let row = store.schedules().get("sync").await.unwrap();
    assert_eq!((row.fires, row.misfires), (7, 0));
}

async fn a_leader_down_for_three_slots_fires_per_the_misfire_policy(db: &TestDb) {
    let (store, clock) = shifted(&db.store);
    let cap2 = ScheduleSpec { catch_up_cap: 2, ..hourly("SCHED_CAP", Misfire::All) };
    write(
        &store,
        &[
            ("skip", hourly("SCHED_SKIP", Misfire::Skip)),
            ("once", hourly("SCHED_ONCE", Misfire::Once)),
            ("all", hourly("SCHED_ALL", Misfire::All)),
            ("all-capped", cap2),
        ],
    )
    .await;
    let term = hold(&db.store, "leader").await;
    // Down from a minute before the hour to 30 minutes past the third: three slots late.
    clock.advance(chrono::Duration::minutes(2 * 60 + 31));
    let done = scheduler::run(&store, &fence(&term), &D).await.unwrap();
    assert_eq!(done.fired, 1 + 3 + 2, "{:?}", done.notes);
    assert_eq!(keys_of(&store, "SCHED_SKIP").await.len(), 0);
    assert_eq!(keys_of(&store, "SCHED_ONCE").await.len(), 1);
    assert_eq!(keys_of(&store, "SCHED_ALL").await.len(), 3);
    assert_eq!(keys_of(&store, "SCHED_CAP").await.len(), 2);
    let misfires: BTreeMap<String, i64> =
        store.schedules().list().await.unwrap().into_iter().map(|r| (r.def.name, r.misfires)).collect();
    assert_eq!(
        misfires,
        BTreeMap::from([("all".into(), 0), ("all-capped".into(), 1), ("once".into(), 2), ("skip".into(), 3)])
    );
    assert!(done.notes.iter().any(|n| n == "schedule skip: 0 enqueued, 3 slot(s) missed (skip)"), "{:?}", done.notes);
    // Back on time: the next slot fires under every policy.
    clock.advance(chrono::Duration::minutes(30));
    assert_eq!(scheduler::run(&store, &fence(&term), &D).await.unwrap().fired, 4);
}

async fn pause_resume_run_now_and_the_config_own_their_parts(db: &TestDb) {
    let (store, clock) = shifted(&db.store);
    write(&store, &[("declared", hourly("SCHED_DECL", Misfire::All))]).await;
    let op = scheduler::stored("mine", &hourly("SCHED_MINE", Misfire::All), 3).unwrap();
    store.schedules().add(&op).await.unwrap();
    let taken = store.schedules().add(&op).await.unwrap_err();
    assert_eq!(
        taken.to_string(),
        "schedule 'mine' exists (declared by operator); remove it first, or pick another name"
    );
    let config_owned = store.schedules().remove("declared").await.unwrap_err();
    assert!(config_owned.to_string().contains("declared in the config's `schedules:`"), "{config_owned}");
    assert!(matches!(store.schedules().remove("nope").await, Err(StoreError::Refused(Refusal::NoSchedule(_)))));
    // Paused over a slot: nothing fires, and resume fires from the next slot, not the missed one.
    assert!(store.schedules().set_paused(Authority::Operator, "declared", true, Some("deploy")).await.unwrap());
    assert!(!store.schedules().set_paused(Authority::Operator, "declared", true, None).await.unwrap());
    let term = hold(&db.store, "leader").await;
    clock.advance(chrono::Duration::seconds(90));
    assert_eq!(scheduler::run(&store, &fence(&term), &D).await.unwrap().fired, 1, "only `mine` fires");
    assert!(store.schedules().set_paused(Authority::Operator, "declared", false, None).await.unwrap());
    assert_eq!(scheduler::run(&store, &fence(&term), &D).await.unwrap().fired, 0, "the paused slot is not caught up");
    clock.advance(chrono::Duration::hours(1));
    assert_eq!(scheduler::run(&store, &fence(&term), &D).await.unwrap().fired, 2);
    // A rule's pause under a fence that has moved does not land.
    let stale = orchestrator::store::Fence { epoch: term.epoch - 1, ..fence(&term) };
    let fenced = store.schedules().set_paused(Authority::Lease(&stale), "mine", true, None).await.unwrap_err();
    assert!(matches!(fenced, StoreError::Refused(Refusal::Fenced(_))), "{fenced}");
    // run-now: a key of its own; the slots' marks stay.
    let before = store.schedules().get("mine").await.unwrap();
    let now = scheduler::run_now(&store, "mine", &D).await.unwrap();
    assert!(!now.duplicate);
    assert!(keys_of(&store, "SCHED_MINE").await.iter().any(|k| k.starts_with("schedule:mine:run-now:")));
    assert_eq!(store.schedules().get("mine").await.unwrap().last_slot, before.last_slot);
    // A new config without `declared` removes it; one naming `mine` takes it over.
    write(&store, &[("mine", hourly("SCHED_MINE", Misfire::Once))]).await;
    let rows = store.schedules().list().await.unwrap();
    assert_eq!(rows.iter().map(|r| (r.def.name.as_str(), r.source.as_str())).collect::<Vec<_>>(), [("mine", "config")]);
    assert_eq!(rows[0].def.misfire, "once");
    assert_eq!(rows[0].last_slot, before.last_slot, "a rewrite keeps the mark");
    // Switched off by its definition: not fired, and `resume` says why it cannot.
    write(&store, &[("mine", ScheduleSpec { enabled: false, ..hourly("SCHED_MINE", Misfire::Once) })]).await;
    clock.advance(chrono::Duration::hours(1));
    assert_eq!(scheduler::run(&store, &fence(&term), &D).await.unwrap().fired, 0);
    let off = store.schedules().set_paused(Authority::Operator, "mine", false, None).await.unwrap_err();
    assert!(off.to_string().contains("switched off by its definition (enabled: false)"), "{off}");
}

async fn the_tick_fires_a_configured_schedule_and_says_so(db: &TestDb) {
    use crate::support::fixtures::ran;
    let (store, clock) = shifted(&db.store);
    let mut config = db.config();
    // A deadline past PostgreSQL's own clock, which the claim reads: the shifted clock runs up
    // to 65 minutes behind it (an hour's deadline expired on PostgreSQL when this ran in the
    // first five minutes of an hour).
    let spec = ScheduleSpec { deadline: Some(Duration::from_secs(3 * 3600)), ..hourly("NOOP", Misfire::Once) };
    config.schedules = Some(BTreeMap::from([("sync".to_string(), spec)]));
    scheduler::write(&store, &config).await.unwrap();
    let engine = orchestrator::tick::Engine::new(store.clone(), config, orchestrator::adapters::Registry::builtin());
    clock.advance(chrono::Duration::seconds(90));
    let report = ran(&engine).await;
    assert!(report.notes.contains("schedule sync: 1 enqueued"), "{}", report.notes);
    assert_eq!(report.succeeded, 1, "the fired action runs in the same tick");
    let action = &store.actions().list_actions(&ActionFilter { limit: 10, ..Default::default() }).await.unwrap()[0];
    assert_eq!(
        action.expires_at,
        Some(hour(store.now()) + chrono::Duration::hours(3)),
        "the deadline is from the slot"
    );
    let again = ran(&engine).await;
    assert!(!again.notes.contains("schedule"), "{}", again.notes);
}

async fn a_rule_sees_snap_schedules_and_pauses_one_under_the_fence(db: &TestDb) {
    use crate::support::fixtures::ran;
    let (store, clock) = shifted(&db.store);
    let rules = db.dir.path().join("schedule-rules");
    std::fs::create_dir_all(&rules).unwrap();
    let breaker = r#"
let out = [];
if "sync" in snap.schedules {
    let s = snap.schedules["sync"];
    if s.state == "running" && s.fires > 0 && s.lag_seconds < 60.0 && s.next_fire_in_seconds > 0.0 {
        out.push(pause_schedule("sync", `peer down after ${s.fires} fire(s)`));
    }
}
out
"#;
    std::fs::write(rules.join("breaker.rhai"), breaker).unwrap();
    let mut config = db.config();
    config.rules_dir = rules;
    config.schedules = Some(BTreeMap::from([("sync".to_string(), hourly("NOOP", Misfire::Once))]));
    scheduler::write(&store, &config).await.unwrap();
    let engine = orchestrator::tick::Engine::new(store.clone(), config, orchestrator::adapters::Registry::builtin());
    engine.decider().load_rules().unwrap();
    clock.advance(chrono::Duration::seconds(90));
    let report = ran(&engine).await;
    assert!(report.notes.contains("schedule sync: 1 enqueued"), "{}", report.notes);
    let row = store.schedules().get("sync").await.unwrap();
    assert!(row.paused, "the rule saw the fire in the same tick's snapshot and paused it");
    assert_eq!(row.paused_reason.as_deref(), Some("rule breaker: peer down after 1 fire(s)"));
    let (snap, _) = engine.snapshot_now().await.unwrap();
    assert_eq!(snap.schedules["sync"].state, "paused");
    assert_eq!(snap.schedules["sync"].next_fire, None);
    clock.advance(chrono::Duration::hours(1));
    let report = ran(&engine).await;
    assert!(!report.notes.contains("schedule sync"), "paused: {}", report.notes);
    assert_eq!(keys_of(&store, "NOOP").await.len(), 1);
}

async fn the_api_adds_lists_pauses_runs_and_removes_schedules_and_metrics_count_them(db: &TestDb) {
    use crate::support::api::{self, admin, call};
    let engine = db.engine(api::config(db, true));
    let st = api::state(&engine);
    let anonymous = call(&st, "GET", "/api/schedules", None, None).await;
    assert!(anonymous.status.is_client_error(), "{}", anonymous.body);
    let body = r#"{"name": "n", "cron": "@hourly", "type": "NOOP", "payload": {"a": 1}, "misfire": "all"}"#;
    let added = admin(&st, "POST", "/api/schedules", Some(body)).await;
    assert_eq!(added.status.as_u16(), 201, "{}", added.body);
    assert_eq!(added.json()["state"], "running");
    assert_eq!(added.json()["misfire"], "all");
    assert!(added.json()["next_fire"].is_string(), "{}", added.body);
    let again = admin(&st, "POST", "/api/schedules", Some(body)).await;
    assert_eq!((again.status.as_u16(), again.error().contains("schedule 'n' exists")), (409, true), "{}", again.body);
    let bad =
        admin(&st, "POST", "/api/schedules", Some(r#"{"name": "b", "cron": "61 * * * *", "type": "NOOP"}"#)).await;
    assert_eq!(bad.status.as_u16(), 400);
    assert!(bad.error().starts_with("cron '61 * * * *' is not a valid five-field cron expression"), "{}", bad.body);
    let zone = admin(
        &st,
        "POST",
        "/api/schedules",
        Some(r#"{"name": "z", "cron": "@daily", "timezone": "Mars/Base", "type": "NOOP"}"#),
    )
    .await;
    assert!(zone.error().contains("timezone 'Mars/Base'"), "{}", zone.body);
    let unknown =
        admin(&st, "POST", "/api/schedules", Some(r#"{"name": "u", "cron": "@daily", "type": "NOOP", "every": 5}"#))
            .await;
    assert!(unknown.status.as_u16() == 400 && unknown.error().contains("every"), "{}", unknown.body);
    let paused = admin(&st, "POST", "/api/schedules/n/pause", Some(r#"{"reason": "deploy"}"#)).await;
    assert_eq!(paused.json()["changed"], true, "{}", paused.body);
    let list = admin(&st, "GET", "/api/schedules", None).await.json();
    assert_eq!((list[0]["state"].as_str(), list[0]["paused_reason"].as_str()), (Some("paused"), Some("deploy")));
    assert_eq!(admin(&st, "POST", "/api/schedules/n/resume", None).await.json()["changed"], true);
    let now = admin(&st, "POST", "/api/schedules/n/run-now", None).await;
    assert_eq!(now.status.as_u16(), 201, "{}", now.body);
    assert_eq!(now.json()["duplicate"], false);
    let metrics = call(&st, "GET", "/metrics", None, None).await.body;
    assert_eq!(api::sample(&metrics, "orchestrator_schedule_fires_total{schedule=\"n\"}"), 0.0);
    assert!(api::sample(&metrics, "orchestrator_schedule_next_fire_timestamp_seconds{schedule=\"n\"}") > 1.7e9);
    assert_eq!(admin(&st, "DELETE", "/api/schedules/n", None).await.json()["removed"], true);
    let gone = admin(&st, "DELETE", "/api/schedules/n", None).await;
    assert_eq!((gone.status.as_u16(), gone.error()), (404, "schedule 'n' not found".to_string()));
    let missing = admin(&st, "POST", "/api/schedules/nope/run-now", None).await;
    assert_eq!(missing.status.as_u16(), 404, "{}", missing.body);
}

/// Through the binary on PostgreSQL: a `run --no-execute` leader fires a config's every-minute
/// schedule and a worker runs it; after the leader is stopped, a new leader fires the next slot
/// and not the first again. Up to two minutes: it waits for two real slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_fires_and_a_worker_runs_real_slots_and_a_new_leader_goes_on() {
    use crate::support::daemon::{Procs, signal, spawn};
    use crate::support::{bin, json, run};
    let Some(db) = TestDb::postgres().await else { return };
    let config = "tick_interval_seconds: 0.3\nlease_ttl_seconds: 3\nheartbeat_seconds: 1\n\
                  schedules:\n  every-minute:\n    cron: '* * * * *'\n    type: NOOP\n    payload: {job: beat}\n";
    std::fs::write(db.dir.path().join("o.yaml"), config).unwrap();
    let list = || {
        let o = run(bin(db.dir.path()).args([
            "--database-url",
            &db.url,
            "--config",
            "o.yaml",
            "--json",
            "schedules",
            "list",
        ]));
        json(&o)[0].clone()
    };
    let mut procs = Procs(vec![spawn(&db, &["run", "--no-execute", "--no-http"]), spawn(&db, &["worker"])]);
    let succeeded = |n: usize| {
        let db = &db;
        async move {
            let start = std::time::Instant::now();
            loop {
                let filter = ActionFilter { action_type: Some("NOOP".into()), limit: 10, ..ActionFilter::default() };
                let rows = db.store.actions().list_actions(&filter).await.unwrap();
                let done = rows.iter().filter(|a| a.status == orchestrator::model::ActionStatus::Success).count();
                if done >= n {
                    return rows;
                }
                assert!(start.elapsed() < Duration::from_secs(80), "{n} scheduled action(s) not run: {rows:?}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    let first = succeeded(1).await;
    assert_eq!(first.len(), 1);
    let row = list();
    assert_eq!((row["fires"].as_i64(), row["source"].as_str()), (Some(1), Some("config")), "{row}");
    let slot = row["last_slot"].as_str().unwrap().parse::<DateTime<Utc>>().unwrap();
    assert_eq!(first[0].idempotency_key, orchestrator::schedules::slot_key("every-minute", slot));
    // The leader stops (releasing the lease); another takes over and fires the next slot only.
    signal(&procs.0[0], "-TERM");
    let _ = procs.0[0].wait();
    procs.0.push(spawn(&db, &["run", "--no-execute", "--no-http"]));
    let both = succeeded(2).await;
    let mut keys: Vec<&str> = both.iter().map(|a| a.idempotency_key.as_str()).collect();
    keys.sort();
    let next = slot + chrono::Duration::minutes(1);
    assert_eq!(
        keys,
        [
            orchestrator::schedules::slot_key("every-minute", slot),
            orchestrator::schedules::slot_key("every-minute", next)
        ]
    );
    let row = list();
    assert_eq!((row["fires"].as_i64(), row["misfires"].as_i64()), (Some(2), Some(0)), "{row}");
}

async fn an_idle_tick_reads_no_schedule_and_a_new_cron_is_looked_at_at_once(db: &TestDb) {
    let (store, clock) = shifted(&db.store);
    write(&store, &[("sync", hourly("SCHED_N", Misfire::Once))]).await;
    let term = hold(&db.store, "leader").await;
    assert_eq!(store.schedules().due(store.now()).await.unwrap().len(), 1, "a new schedule is looked at once");
    assert_eq!(scheduler::run(&store, &fence(&term), &D).await.unwrap().fired, 0);
    let row = store.schedules().get("sync").await.unwrap();
    assert_eq!(row.next_slot, Some(hour(store.now()) + chrono::Duration::hours(1)), "the next slot is kept");
    assert!(store.schedules().due(store.now()).await.unwrap().is_empty(), "until then no tick reads it");
    let view = orchestrator::schedules::view(row.clone());
    assert_eq!(view.next_fire, row.next_slot);
    // A new cron in the config: looked at the next tick, not at the old next slot.
    write(&store, &[("sync", ScheduleSpec { cron: "*/5 * * * *".into(), ..hourly("SCHED_N", Misfire::Once) })]).await;
    assert_eq!(store.schedules().get("sync").await.unwrap().next_slot, None);
    // A bound computed from the old definition does not land over the new one.
    store.schedules().set_next(&row, row.next_slot).await.unwrap();
    assert_eq!(store.schedules().get("sync").await.unwrap().next_slot, None);
    clock.advance(chrono::Duration::minutes(6));
    assert_eq!(scheduler::run(&store, &fence(&term), &D).await.unwrap().fired, 1, "the 5-minute slot fired");
    let row = store.schedules().get("sync").await.unwrap();
    assert_eq!(row.next_slot, row.last_slot.map(|t| t + chrono::Duration::minutes(5)));
}
