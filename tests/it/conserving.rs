//! Issue 13 against real databases: the work-conserving invariant with the shipped rules and the
//! default config, brakes recorded as such, `postpone`, deadlines (expiry, the claim filter,
//! `expire_after`, the JSON shapes), enforced proof mode, and the scenario fixtures, including
//! one that fails against the old rebalance semantics.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use orchestrator::adapters::{Adapter, AdapterError, ExecContext, Outcome, Proof, Registry};
use orchestrator::config::Config;
use orchestrator::model::{Action, ActionStatus, DecisionKind, TickStatus};
use orchestrator::queue::{self, EnqueueDefaults, EnqueueRequest};
use orchestrator::rules::RuleSet;
use orchestrator::store::{ActionFilter, FlagChange};
use orchestrator::tick::Engine;
use serde_json::json;

use crate::backend_tests;
use crate::support::fixtures::{assert_conserving, shipped_rules};
use crate::support::noop;
use crate::support::ran;
use crate::support::{self, TestDb};

backend_tests!(
    a_backlog_drains_with_the_shipped_rules_and_no_idle_tick,
    a_throttle_that_holds_work_back_is_recorded,
    postpone_delays_only_the_named_action,
    expired_actions_never_start_and_go_to_dlq,
    expire_after_gives_new_actions_a_deadline,
    enforced_proof_mode_overrides_the_flag,
);

fn rule_set(config: &Config, rules: &[(&str, &str)]) -> RuleSet {
    let sources = rules.iter().map(|(n, s)| (PathBuf::from(format!("rules/{n}.rhai")), s.to_string())).collect();
    RuleSet::from_sources(sources, &config.rules).unwrap_or_else(|d| panic!("rules do not compile: {d:?}"))
}

/// The issue's new-user run: 2,000 NOOP, the shipped rules, the default config (the test
/// database's URL and artifacts directory apart).
async fn a_backlog_drains_with_the_shipped_rules_and_no_idle_tick(db: &TestDb) {
    let mut config = Config::defaults();
    config.database_url = db.url.clone();
    config.artifacts_dir = db.dir.path().join("artifacts");
    config.rules_dir = shipped_rules();
    let lines: String =
        (0..2000).map(|i| format!("{{\"action_type\":\"NOOP\",\"payload\":{{\"i\":{i}}}}}\n")).collect();
    queue::enqueue_jsonl(&db.store, lines.as_bytes(), config.enqueue_defaults()).await.unwrap();
    let engine = Engine::new(db.store.clone(), config, Registry::builtin());
    assert!(engine.decider().load_rules().unwrap() >= 7, "the shipped rules load");

    let mut ticks = Vec::new();
    for _ in 0..4 {
        let r = ran(&engine).await;
        assert_conserving(&r);
        ticks.push(r);
        if db.store.actions().due_count().await.unwrap() == 0 {
            break;
        }
    }
    let first = &ticks[0];
    assert!(first.notes.contains("rebalance: "), "the saturated queue was rebalanced: {}", first.notes);
    assert!(!first.notes.contains("deferred"), "rebalance defers nothing: {}", first.notes);
    assert_eq!(first.attempted, 1000, "the first tick ran a full default budget: {first:?}");
    assert!(first.budget_spent, "a tick that used its budget asks for the next one at once");
    let counts = db.store.actions().count_by_status().await.unwrap();
    assert_eq!(counts[&ActionStatus::Success], 2000, "drained in {} tick(s): {ticks:?}", ticks.len());
    assert!(ticks.len() <= 2, "two ticks of 1000: {ticks:?}");
}

async fn a_throttle_that_holds_work_back_is_recorded(db: &TestDb) {
    for i in 0..5 {
        queue::enqueue(&db.store, &noop(&format!("t{i}")), 3).await.unwrap();
    }
    let config = db.config();
    let engine = db.engine(config.clone());
    engine.decider().set_rules(rule_set(&config, &[("brake", r#"[throttle(0, "hold everything")]"#)]));
    let r = ran(&engine).await;
    assert_eq!((r.status, r.attempted), (TickStatus::Throttled, 0), "{r:?}");
    assert!(r.notes.contains("throttled to 0 by rule brake (5 due at the snapshot)"), "{}", r.notes);
    assert!(!r.notes.contains("nothing due"), "{}", r.notes);
    let row = db.store.ledger().tick(r.tick_id).await.unwrap().unwrap();
    assert_eq!(row.status, TickStatus::Throttled, "the ledger keeps the brake");

    // Another rule: the first one's throttle is cooling down for this target.
    engine.decider().set_rules(rule_set(&config, &[("slower", r#"[throttle(2, "slow down")]"#)]));
    let r = ran(&engine).await;
    assert_eq!((r.status, r.attempted), (TickStatus::Throttled, 2), "{r:?}");
    assert!(!r.budget_spent, "a throttled tick does not call the next one early");

    engine.decider().set_rules(rule_set(&config, &[]));
    let r = ran(&engine).await;
    assert_eq!((r.status, r.attempted), (TickStatus::Success, 3), "{r:?}");
    let r = ran(&engine).await;
    assert_eq!(r.status, TickStatus::Idle);
    assert!(r.notes.starts_with("nothing due"), "{}", r.notes);
}

async fn postpone_delays_only_the_named_action(db: &TestDb) {
    let later = queue::enqueue(&db.store, &noop("later"), 3).await.unwrap().id;
    let now = queue::enqueue(&db.store, &noop("now"), 3).await.unwrap().id;
    let mut config = db.config();
    config.rules.params.insert("p".into(), json!({"id": later}));
    let engine = db.engine(config.clone());
    engine.decider().set_rules(rule_set(&config, &[("p", r#"[postpone(params.id, 3600, "not yet", 3)]"#)]));
    let r = ran(&engine).await;
    assert_eq!((r.status, r.attempted), (TickStatus::Success, 1), "only the named action waits: {r:?}");
    let row = db.store.actions().action(later).await.unwrap().unwrap();
    assert_eq!(row.status, ActionStatus::Pending);
    let wait = (row.not_before - db.store.now()).num_seconds();
    assert!((3500..=3600).contains(&wait), "postponed by an hour, {wait}s left");
    assert_eq!(db.store.actions().action(now).await.unwrap().unwrap().status, ActionStatus::Success);
    let logs = db.store.history().logs(Some(later), 10).await.unwrap();
    assert!(logs.iter().any(|l| l.message.contains("postpone decided (rule p: not yet)")), "{logs:?}");
    let decisions = db.store.decisions().list(r.tick_id).await.unwrap();
    assert!(decisions.iter().any(|d| d.kind == DecisionKind::Postpone && d.outcome.is_applied()), "{decisions:?}");

    let r = ran(&engine).await;
    assert_eq!(r.status, TickStatus::Idle);
    assert!(r.notes.contains("nothing due (1 waiting for their not_before)"), "{}", r.notes);
}

/// Inserts an action whose deadline passed an hour ago (enqueued "two hours ago").
async fn expired_one(db: &TestDb, key: &str) -> i64 {
    let past = db.store.now() - chrono::Duration::hours(2);
    let req = EnqueueRequest { expires_at: Some(past + chrono::Duration::hours(1)), ..noop(key) };
    let new = queue::prepare(&req, &3.into(), past).unwrap();
    db.store.actions().enqueue(orchestrator::store::Authority::Operator, &new).await.unwrap().id
}

async fn by_key(db: &TestDb, key: &str) -> Action {
    let all = db.store.actions().list_actions(&ActionFilter { limit: 1000, ..Default::default() }).await.unwrap();
    all.into_iter().find(|a| a.idempotency_key == key).unwrap_or_else(|| panic!("no action {key}"))
}

async fn expired_actions_never_start_and_go_to_dlq(db: &TestDb) {
    let stale = expired_one(db, "stale").await;
    let fresh = queue::enqueue(&db.store, &noop("fresh"), 3).await.unwrap().id;
    assert_eq!(db.store.actions().due_count().await.unwrap(), 1, "an expired action is not due");

    // The claim alone never starts it, even before a tick has expired it.
    let me = crate::support::worker(&db.store, "me", Duration::from_secs(30)).await;
    let claimed = db.store.actions().claim(&me, 10).await.unwrap();
    assert_eq!(claimed.iter().map(|c| c.action.id).collect::<Vec<_>>(), vec![fresh], "only the live one is claimed");

    let engine = db.engine(db.config());
    let r = ran(&engine).await;
    assert!(r.notes.contains("1 expired action(s) moved to DLQ"), "{}", r.notes);
    let row = db.store.actions().action(stale).await.unwrap().unwrap();
    assert_eq!((row.status, row.attempts, row.last_error.as_deref()), (ActionStatus::Dlq, 0, Some("expired")));
    let logs = db.store.history().logs(Some(stale), 10).await.unwrap();
    assert!(logs.iter().any(|l| l.message.starts_with("expired")), "{logs:?}");
    // The JSON shape of `actions show`.
    let shown = serde_json::to_value(&row).unwrap();
    assert!(shown["expires_at"].is_string(), "{shown}");
    let shown = serde_json::to_value(db.store.actions().action(fresh).await.unwrap().unwrap()).unwrap();
    assert!(shown["expires_at"].is_null(), "{shown}");

    // An operator's requeue drops the passed deadline: it asked for another run.
    db.store.actions().requeue(orchestrator::store::Authority::Operator, stale).await.unwrap();
    assert_eq!(db.store.actions().action(stale).await.unwrap().unwrap().expires_at, None);
}

async fn expire_after_gives_new_actions_a_deadline(db: &TestDb) {
    let defaults = EnqueueDefaults {
        max_attempts: 3,
        expire_after: [("NOOP".to_string(), Duration::from_secs(7200))].into_iter().collect(),
        ..Default::default()
    };
    let id = queue::enqueue(&db.store, &noop("with-default"), defaults.clone()).await.unwrap().id;
    let row = db.store.actions().action(id).await.unwrap().unwrap();
    let left = (row.expires_at.unwrap() - db.store.now()).num_seconds();
    assert!((7100..=7200).contains(&left), "two hours from the enqueue: {left}s");
    let other = EnqueueRequest { action_type: "POST_SOCIAL".into(), ..noop("no-default") };
    let id = queue::enqueue(&db.store, &other, defaults.clone()).await.unwrap().id;
    assert_eq!(db.store.actions().action(id).await.unwrap().unwrap().expires_at, None, "off for types not named");

    // JSON Lines carry their own deadline, which wins; a deadline already passed is refused.
    let soon = (db.store.now() + chrono::Duration::minutes(5)).to_rfc3339();
    let line =
        format!("{{\"action_type\":\"NOOP\",\"payload\":{{}},\"idempotency_key\":\"jl\",\"expires_at\":\"{soon}\"}}\n");
    queue::enqueue_jsonl(&db.store, line.as_bytes(), defaults.clone()).await.unwrap();
    let row = by_key(db, "jl").await;
    assert!((row.expires_at.unwrap() - db.store.now()).num_seconds() <= 300);
    let past = "{\"action_type\":\"NOOP\",\"payload\":{},\"expires_at\":\"2000-01-01T00:00:00Z\"}\n";
    let err = queue::enqueue_jsonl(&db.store, past.as_bytes(), defaults).await.unwrap_err().to_string();
    assert!(err.contains("line 1") && err.contains("not in the future"), "{err}");

    // The snapshot's samples show the deadline.
    let engine = db.engine(db.config());
    let snap = engine.dry_run().await.unwrap().snapshot;
    let sample = snap.samples.stuck_pending.iter().find(|s| s.expires_in_seconds.is_some()).expect("a sample");
    let v = serde_json::to_value(sample).unwrap();
    assert!(v["expires_in_seconds"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["payload"].is_object(), "small payloads are sampled: {v}");
}

/// An adapter that must never run for real.
struct Guarded;

#[async_trait::async_trait]
impl Adapter for Guarded {
    fn action_type(&self) -> &str {
        "GUARDED"
    }

    fn render_proof(&self, _action: &Action) -> Result<Option<Proof>, AdapterError> {
        Ok(Some(Proof { subdir: "guarded".into(), extension: "txt".into(), body: b"would touch".to_vec() }))
    }

    async fn execute(&self, _ctx: &ExecContext, _action: &Action) -> Result<Outcome, AdapterError> {
        Err(AdapterError::permanent("touched the world"))
    }
}

async fn enforced_proof_mode_overrides_the_flag(db: &TestDb) {
    db.store.flags().set_flags(FlagChange { proof_mode: Some(false), ..Default::default() }).await.unwrap();
    let id =
        queue::enqueue(&db.store, &EnqueueRequest { action_type: "GUARDED".into(), ..noop("g") }, 3).await.unwrap().id;
    let mut config = db.config();
    config.proof_enforced = true;
    let mut registry = Registry::builtin();
    registry.register(Guarded);
    let engine = Engine::new(db.store.clone(), config.clone(), registry);
    let r = ran(&engine).await;
    assert_eq!((r.status, r.succeeded), (TickStatus::Success, 1), "{r:?}");
    assert!(r.snapshot.as_ref().unwrap().flags.proof_mode, "the rules see the mode that applies");
    assert_eq!(db.store.actions().action(id).await.unwrap().unwrap().status, ActionStatus::Success);
    assert!(!db.store.flags().get().await.unwrap().proof_mode, "the flag itself is untouched");
    let artifacts = support::artifacts_under(&config.artifacts_dir);
    assert!(artifacts.iter().any(|p| p.to_string_lossy().contains("guarded")), "a proof, not a run: {artifacts:?}");

    // The CLI refuses `proof off`, by flag and by environment.
    let dir = db.dir.path();
    let o = support::run(support::bin(dir).args(["--database-url", &db.url, "--proof-enforced", "proof", "off"]));
    assert_eq!(o.status.code(), Some(1), "{}", support::stderr(&o));
    assert!(support::stderr(&o).contains("proof mode is enforced on this instance"), "{}", support::stderr(&o));
    let o = support::run(support::bin(dir).env("ORCHESTRATOR_PROOF_MODE", "enforced").args([
        "--database-url",
        &db.url,
        "proof",
        "off",
    ]));
    assert_eq!(o.status.code(), Some(1), "{}", support::stderr(&o));
    let o = support::run(support::bin(dir).env("ORCHESTRATOR_PROOF_MODE", "enforced").args([
        "--database-url",
        &db.url,
        "--json",
        "status",
    ]));
    let status = support::json(&o);
    assert_eq!(status["proof_enforced"], json!(true), "{status}");
    let o = support::run(support::bin(dir).args(["--database-url", &db.url, "proof", "on"]));
    assert_eq!(o.status.code(), Some(0), "proof on is always allowed: {}", support::stderr(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_scenarios_pass() {
    let results = orchestrator::scenario::run_dir(&shipped_rules()).await;
    let names: Vec<&str> = results.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(results.len(), 16, "{names:?}");
    for r in &results {
        let timeline: Vec<String> = r.timeline.iter().map(|t| t.to_string()).collect();
        assert!(r.passed, "{}: {:?}\n{}", r.name, r.failures, timeline.join("\n"));
    }
}

/// The old `rebalance` deferred every young pending action of priority <= 0 by a minute while
/// more than 50 were pending. Replayed before each tick, it makes the backlog scenario fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_scenario_fails_against_the_old_rebalance() {
    let old_rebalance: orchestrator::scenario::BeforeTick = Arc::new(|store, _tick| {
        Box::pin(async move {
            let counts = store.actions().open_counts().await.unwrap();
            if counts[&ActionStatus::Pending] > 50 {
                let now = store.now();
                let until = (now + chrono::Duration::seconds(60)).to_rfc3339();
                let young = (now - chrono::Duration::seconds(600)).to_rfc3339();
                store
                    .execute_unprepared(&format!(
                        "UPDATE actions SET not_before = '{until}' WHERE status = 'PENDING' AND priority <= 0 \
                         AND created_at >= '{young}' AND not_before < '{until}'"
                    ))
                    .await
                    .unwrap();
            }
        })
    });
    let file = shipped_rules().join("tests/scenarios/backlog.yaml");
    let r = orchestrator::scenario::run_file(&file, &shipped_rules(), Some(old_rebalance)).await;
    assert!(!r.passed, "the backlog must stall under the old semantics: {:?}", r.timeline);
    assert!(r.failures.iter().any(|f| f.starts_with("drained by tick 2")), "{:?}", r.failures);
}

/// The worked example of the seed's domain rows passes its own fixture.
#[test]
fn the_domain_example_rule_passes_its_fixture() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/rules");
    let results = orchestrator::rules::fixtures::run_dir(&dir, &Config::defaults().rules).unwrap();
    assert!(results.len() >= 5, "{results:?}");
    for r in &results {
        assert!(r.passed, "{}: {:?}", r.name, r.diff);
    }
}
