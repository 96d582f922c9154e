//! The DECIDE stage against real databases: every decision kind applied (and fenced), state
//! and cooldowns persisting across separate `run-once` processes, runaway rules, dry runs that
//! change nothing, explain, backtests on recorded history, and hot reload rejecting a bad set.

use std::path::{Path, PathBuf};
use std::time::Duration;

use orchestrator::config::Config;
use orchestrator::model::{ActionStatus, DecisionKind, DecisionOutcome, Suppressed};
use orchestrator::queue;
use orchestrator::rules::RuleSet;
use orchestrator::store::{ActionFilter, Store};
use serde_json::{Value, json};

use crate::backend_tests;
use crate::support::noop;
use crate::support::ran;
use crate::support::{self, TestDb};

backend_tests!(
    every_decision_kind_is_applied_and_recorded,
    decisions_of_a_deposed_holder_are_fenced,
    state_and_cooldown_persist_across_run_once_processes,
    runaway_rules_are_stopped_while_the_others_decide,
    dry_run_changes_nothing_while_another_instance_holds_the_lease,
    dry_run_lists_what_the_next_tick_claims,
    backtest_replays_recorded_history_with_edited_rules,
    snapshot_counts_by_type_windows_and_samples,
    cooldowns_expire_and_are_pruned,
    decisions_read_back_as_the_enums_they_were_written_from,
);

fn rule_set(config: &Config, rules: &[(&str, &str)]) -> RuleSet {
    let sources = rules.iter().map(|(n, s)| (PathBuf::from(format!("rules/{n}.rhai")), s.to_string())).collect();
    RuleSet::from_sources(sources, &config.rules).unwrap_or_else(|d| panic!("rules do not compile: {d:?}"))
}

fn write_rules(dir: &Path, rules: &[(&str, &str)]) -> PathBuf {
    let rules_dir = dir.join("rules");
    std::fs::create_dir_all(&rules_dir).unwrap();
    for entry in std::fs::read_dir(&rules_dir).unwrap().flatten() {
        std::fs::remove_file(entry.path()).ok();
    }
    for (name, src) in rules {
        std::fs::write(rules_dir.join(format!("{name}.rhai")), src).unwrap();
    }
    rules_dir
}

fn orch(dir: &Path, url: &str, rules_dir: &Path, args: &[&str]) -> std::process::Output {
    support::run(support::bin(dir).env("ORCHESTRATOR_RULES_DIR", rules_dir).args(["--database-url", url]).args(args))
}

async fn id(db: &TestDb, key: &str) -> i64 {
    queue::enqueue(&db.store, &noop(key), 3).await.unwrap().id
}

const ALL_KINDS: &str = r#"
state.phase = (state.phase ?? 0) + 1;
if state.phase == 1 {
    [
        force_run(params.a, "stuck", 9),
        reprioritize(params.b, 5, "matters", 8),
        cancel(params.c, "obsolete", 7),
        dlq(params.d, "poison", 7),
        retry(params.e, "transient", 6),
        retry(params.f, "requeue from DLQ", 6),
        retry(params.h, "running too long", 6),
        rebalance("saturated", 3),
        throttle(1, "go slow", 2),
        enqueue("NOOP", #{made: true}, "made-by-rule", "follow-up", 2),
        alert("warning", "something to look at", 1),
    ]
} else if state.phase == 2 {
    [pause("breaker")]
} else if state.phase == 3 {
    [resume("calm"), cancel(params.b, "not while paused")]
} else {
    []
}
"#;

async fn every_decision_kind_is_applied_and_recorded(db: &TestDb) {
    let h = id(db, "h").await;
    let (a, b, c, d, e, f, g) = (
        id(db, "a").await,
        id(db, "b").await,
        id(db, "c").await,
        id(db, "d").await,
        id(db, "e").await,
        id(db, "f").await,
        id(db, "g").await,
    );
    db.store
        .execute_unprepared(&format!(
            "UPDATE actions SET status = 'RETRY', attempts = 1, not_before = '9999-01-01T00:00:00Z' WHERE id = {e}"
        ))
        .await
        .unwrap();
    db.store
        .execute_unprepared(&format!("UPDATE actions SET status = 'DLQ', attempts = 3 WHERE id = {f}"))
        .await
        .unwrap();
    // Claimed by a live worker with a deadline rescue will not call passed: only the rule
    // returns it.
    crate::support::worker(&db.store, "busy", Duration::from_secs(3600)).await;
    db.store
        .execute_unprepared(&format!(
            "UPDATE actions SET status = 'RUNNING', attempts = 1, claimed_epoch = 1, \
             claimed_at = '9999-01-01T00:00:00Z', claim_token = 1, claimed_by = 'busy', \
             claim_deadline = '9999-01-01T00:00:00Z', claim_proof = true WHERE id = {h}"
        ))
        .await
        .unwrap();
    let mut config = db.config();
    config.rules.params.insert("all".into(), json!({"a": a, "b": b, "c": c, "d": d, "e": e, "f": f, "h": h}));
    config.rules.max_decisions_per_tick = 20;
    config.rules.rebalance_age = Duration::ZERO;
    config.rules.alert_action_type = Some("ALERT_SINK".into());
    let engine = db.engine(config.clone());
    engine.decider().set_rules(rule_set(&config, &[("all", ALL_KINDS)]));

    let r = ran(&engine).await;
    assert_eq!(r.attempted, 1, "throttle(1) caps dispatch: {r:?}");
    assert!(r.notes.contains("ALERT [warning] something to look at"), "{}", r.notes);
    let act = |i: i64| {
        let store = db.store.clone();
        async move { store.actions().action(i).await.unwrap().unwrap() }
    };
    let a_row = act(a).await;
    assert_eq!((a_row.status, a_row.priority), (ActionStatus::Success, 11), "force_run +10, rebalance +1, dispatched");
    assert_eq!(act(b).await.priority, 6, "reprioritize to 5, then rebalance +1");
    assert_eq!(act(c).await.status, ActionStatus::Cancelled);
    let d_row = act(d).await;
    assert_eq!(d_row.status, ActionStatus::Dlq);
    assert!(d_row.last_error.unwrap_or_default().contains("rule all: poison"));
    let e_row = act(e).await;
    assert_eq!(e_row.status, ActionStatus::Retry);
    assert!(e_row.not_before <= orchestrator::model::now(), "retry made it due now");
    let f_row = act(f).await;
    assert_eq!((f_row.status, f_row.attempts), (ActionStatus::Pending, 0), "retry from DLQ is a requeue");
    assert_eq!(act(g).await.priority, 1, "rebalance boosted an old pending action");
    let made = db
        .store
        .actions()
        .list_actions(&ActionFilter { action_type: Some("NOOP".into()), limit: 100, ..Default::default() })
        .await
        .unwrap();
    assert!(made.iter().any(|x| x.idempotency_key == "made-by-rule"), "enqueue created the action");
    let sent = db
        .store
        .actions()
        .list_actions(&ActionFilter { action_type: Some("ALERT_SINK".into()), limit: 10, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(sent.len(), 1, "the alert went to the configured alert action type");
    assert_eq!(sent[0].payload["message"], "something to look at");
    assert_eq!(sent[0].payload["severity"], "warning");
    let rows = db.store.decisions().list(r.tick_id).await.unwrap();
    let h_row = act(h).await;
    assert_eq!(
        (h_row.status, h_row.claimed_epoch, h_row.claim.is_none()),
        (ActionStatus::Retry, None, true),
        "a RUNNING action is returned: {h_row:?} {:?}",
        db.store.history().logs(Some(h), 10).await.unwrap()
    );
    assert!(h_row.last_error.unwrap_or_default().contains("running too long"));
    assert_eq!(rows.len(), 11);
    assert!(rows.iter().all(|x| x.outcome == DecisionOutcome::Applied), "{rows:#?}");
    let kinds: Vec<DecisionKind> = rows.iter().map(|x| x.kind).collect();
    use DecisionKind::*;
    for k in [ForceRun, Reprioritize, Cancel, Dlq, Retry, Rebalance, Throttle, Enqueue, Alert] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let logs = db.store.history().logs(Some(c), 10).await.unwrap();
    assert!(logs.iter().any(|l| l.message.contains("cancel decided (rule all: obsolete)")), "{logs:?}");

    let r2 = ran(&engine).await;
    assert_eq!(r2.status.as_str(), "PAUSED");
    assert!(db.store.flags().get().await.unwrap().paused, "pause set the flag");
    let r3 = ran(&engine).await;
    assert_eq!(r3.status.as_str(), "PAUSED", "the tick that resumes still dispatches nothing");
    assert!(!db.store.flags().get().await.unwrap().paused, "resume cleared the flag while paused");
    let rows = db.store.decisions().list(r3.tick_id).await.unwrap();
    let outcome = |k: DecisionKind| rows.iter().find(|x| x.kind == k).map(|x| x.outcome.clone()).unwrap();
    assert_eq!(outcome(DecisionKind::Resume), DecisionOutcome::Applied);
    assert_eq!(outcome(DecisionKind::Cancel), DecisionOutcome::Suppressed(Suppressed::Paused));
    assert_eq!(act(b).await.status, ActionStatus::Pending);
    let metrics = engine.metrics().render();
    assert!(
        metrics.contains("orchestrator_decisions_total{kind=\"cancel\",outcome=\"suppressed:paused\",rule=\"all\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("orchestrator_rule_evaluations_total{rule=\"all\"} 3"), "{metrics}");
}

async fn decisions_of_a_deposed_holder_are_fenced(db: &TestDb) {
    let a = id(db, "a").await;
    let config = db.config();
    let engine = db.engine(config.clone());
    engine.decider().set_rules(rule_set(&config, &[("c", &format!("[cancel({a}, \"x\"), pause(\"p\")]"))]));
    // Another instance takes over between our lease acquire and our writes: bump the epoch
    // under our feet by rewriting the lease row after our acquire (the rule runs after it).
    let fence =
        orchestrator::store::Fence { lease_name: orchestrator::lease::LEASE_NAME.into(), epoch: 999, tick_id: None };
    let res = db.store.actions().cancel(orchestrator::store::Authority::Lease(&fence), a, Some("x")).await;
    assert!(res.unwrap_err().to_string().contains("fenced"), "a write under a stale epoch is refused");
    assert!(db.store.flags().set_paused_fenced(&fence, true).await.is_err());
    assert_eq!(db.store.actions().action(a).await.unwrap().unwrap().status, ActionStatus::Pending);
    assert!(!db.store.flags().get().await.unwrap().paused);
    // Under the live epoch the same rule applies.
    let r = ran(&engine).await;
    assert_eq!(
        db.store.decisions().list(r.tick_id).await.unwrap().iter().filter(|d| d.outcome.is_applied()).count(),
        2
    );
    assert_eq!(db.store.actions().action(a).await.unwrap().unwrap().status, ActionStatus::Cancelled);
}

async fn state_and_cooldown_persist_across_run_once_processes(db: &TestDb) {
    let rules_dir = write_rules(
        db.dir.path(),
        &[(
            "memo",
            "state.n = (state.n ?? 0) + 1;\n[alert(\"info\", \"hello\"), enqueue(\"NOOP\", #{n: state.n}, `made-${state.n}`, \"count\")]",
        )],
    );
    for _ in 0..2 {
        let o = orch(db.dir.path(), &db.url, &rules_dir, &["run-once"]);
        assert!(o.status.success(), "{}", support::stderr(&o));
    }
    let keys: Vec<String> = db
        .store
        .actions()
        .list_actions(&ActionFilter { limit: 10, ..Default::default() })
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.idempotency_key)
        .collect();
    assert!(keys.contains(&"made-1".to_string()) && keys.contains(&"made-2".to_string()), "state persisted: {keys:?}");
    let ticks = db.store.ledger().recent_ticks(2).await.unwrap();
    let second = ticks[0].id.to_string();
    let o = orch(db.dir.path(), &db.url, &rules_dir, &["--json", "explain", "--tick", &second]);
    assert!(o.status.success(), "{}", support::stderr(&o));
    let j = support::json(&o);
    let outcome = |kind: &str| {
        j["decisions"].as_array().unwrap().iter().find(|d| d["kind"] == kind).map(|d| d["outcome"].clone()).unwrap()
    };
    assert_eq!(outcome("alert"), "suppressed:cooldown", "the cooldown held across processes");
    assert_eq!(outcome("enqueue"), "applied");
    assert_eq!(j["snapshot"]["health"]["status"], "healthy");
    assert_eq!(j["rules_digest"].as_str().map(str::len), Some(64));
    let o = orch(db.dir.path(), &db.url, &rules_dir, &["explain", "--tick", &second]);
    let text = support::stdout(&o);
    assert!(text.contains("rule memo:") && text.contains("-> suppressed:cooldown"), "{text}");
}

async fn runaway_rules_are_stopped_while_the_others_decide(db: &TestDb) {
    let mut config = db.config();
    config.rules.budget = Duration::from_millis(30);
    let engine = db.engine(config.clone());
    engine.decider().set_rules(rule_set(
        &config,
        &[
            ("a_loop", "let x = 0;\nloop { x += 1; }"),
            ("b_huge", "let s = \"x\";\nloop { s += s; }"),
            ("c_deep", "fn f(n) { f(n + 1) }\nf(0)"),
            ("d_good", "[alert(\"info\", \"still deciding\")]"),
        ],
    ));
    let r = ran(&engine).await;
    for rule in ["a_loop", "b_huge", "c_deep"] {
        assert!(r.notes.contains(&format!("rule {rule} failed: rules/{rule}.rhai:")), "{rule}: {}", r.notes);
    }
    assert!(r.notes.contains("rules/a_loop.rhai:2:"), "the loop is located on line 2: {}", r.notes);
    let rows = db.store.decisions().list(r.tick_id).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].rule.as_str(), &rows[0].outcome), ("d_good", &DecisionOutcome::Applied));
    let m = engine.metrics().render();
    assert!(m.contains("orchestrator_rule_errors_total{rule=\"a_loop\"} 1"), "{m}");
}

/// Every table the dry run reads, as text.
async fn everything(store: &Store) -> String {
    let mut out = Vec::new();
    out.push(
        serde_json::to_string(
            &store.actions().list_actions(&ActionFilter { limit: 10_000, ..Default::default() }).await.unwrap(),
        )
        .unwrap(),
    );
    out.push(serde_json::to_string(&store.flags().get().await.unwrap()).unwrap());
    out.push(serde_json::to_string(&store.lease().get("orchestrator").await.unwrap()).unwrap());
    let ticks = store.ledger().recent_ticks(1000).await.unwrap();
    out.push(serde_json::to_string(&ticks).unwrap());
    for t in store.ledger().recorded_ticks(1000).await.unwrap() {
        out.push(format!("{} {:?} {:?}", t.tick_id, t.snapshot_json, t.rules_digest));
    }
    for t in &ticks {
        out.push(serde_json::to_string(&store.decisions().list(t.id).await.unwrap()).unwrap());
    }
    out.push(serde_json::to_string(&store.history().logs(None, 10_000).await.unwrap()).unwrap());
    out.push(format!("{:?}", store.decisions().rule_states().await.unwrap()));
    out.push(format!("{:?}", store.decisions().cooldowns_since(chrono::DateTime::UNIX_EPOCH).await.unwrap()));
    out.join("\n")
}

/// `sqlite3 DB .dump` of a SQLite test database; `None` on PostgreSQL, or (saying so) when the
/// sqlite3 tool is missing.
fn sqlite_dump(url: &str) -> Option<String> {
    let path = url.strip_prefix("sqlite:")?;
    match std::process::Command::new("sqlite3").arg(path).arg(".dump").output() {
        Ok(o) if o.status.success() => Some(String::from_utf8_lossy(&o.stdout).into_owned()),
        _ => {
            eprintln!("skipped the byte-for-byte dump comparison: the sqlite3 tool is not available");
            None
        }
    }
}

async fn dry_run_changes_nothing_while_another_instance_holds_the_lease(db: &TestDb) {
    let a = id(db, "a").await;
    id(db, "b").await;
    let rules = [
        ("counter", "state.n = (state.n ?? 0) + 1; [alert(\"info\", `hi ${state.n}`, `hi-${state.n}`)]"),
        ("forcer", &*format!("[force_run({a}, \"go\", 9)]")),
    ];
    let rules_dir = write_rules(db.dir.path(), &rules);
    let config = db.config();
    let holder = db.engine(config.clone());
    holder.decider().set_rules(rule_set(&config, &rules));
    ran(&holder).await; // records state, cooldowns, decisions, runs a and b; keeps the lease
    let c = id(db, "c").await;
    let before = everything(&db.store).await;
    let dump_before = sqlite_dump(&db.url);
    let o = orch(db.dir.path(), &db.url, &rules_dir, &["run-once", "--dry-run"]);
    assert!(o.status.success(), "dry run works while the lease is held: {}", support::stderr(&o));
    let text = support::stdout(&o);
    assert!(text.contains("dry run (nothing written)"), "{text}");
    assert!(text.contains("forcer force_run 1: go -> suppressed: cooldown"), "{text}");
    assert!(text.contains("counter alert hi-2: hi 2 -> would apply"), "the stored state was read: {text}");
    assert!(text.contains(&format!("would dispatch 1 action(s):\n  #{c} NOOP priority 0 (PENDING)")), "{text}");
    let o = orch(db.dir.path(), &db.url, &rules_dir, &["--json", "run-once", "--dry-run"]);
    let j = support::json(&o);
    assert_eq!(j["dry_run"], true);
    assert!(j["decisions"].as_array().unwrap().iter().any(|d| d["outcome"] == "would apply"), "{j}");
    assert_eq!(everything(&db.store).await, before, "the dry run wrote nothing");
    assert_eq!(sqlite_dump(&db.url), dump_before, "byte for byte, per the sqlite3 dump");
}

/// `run-once --dry-run`'s "would dispatch" is the claim's own pick: with a partitioned rate, a
/// daily budget (both from the config, not yet in the database), a rule's throttle and
/// deadlines in play, it lists exactly what the next `run-once` claims, and writes nothing.
async fn dry_run_lists_what_the_next_tick_claims(db: &TestDb) {
    let d = db.dir.path();
    std::fs::write(
        d.join("o.yaml"),
        "max_actions_per_tick: 40\nlimits:\n  RATED: {rate: 2/1h, partition_by: payload.p}\n  \
         BUDGETED: {daily_budget: 3}\n",
    )
    .unwrap();
    let rules_dir =
        write_rules(d, &[("brake", "if snap.queue.due_now > 10 { [throttle(20, \"too much at once\")] } else { [] }")]);
    let enqueue = |t: &str, key: String, payload: Value, priority: i32| {
        let mut r = noop(&key);
        r.action_type = t.into();
        r.payload = payload;
        r.priority = priority;
        r
    };
    let mut reqs = Vec::new();
    // Ahead of the rest: 2 starts an hour per partner, so 2 of each partner's 4.
    for i in 0..12 {
        let partner = ["a", "b", "c"][i % 3];
        reqs.push(enqueue("RATED", format!("r{i}"), json!({ "p": partner }), 5));
    }
    // Then 3 starts a day of 6.
    for i in 0..6 {
        reqs.push(enqueue("BUDGETED", format!("b{i}"), json!({}), 4));
    }
    // Then unlimited work: some of it past its deadline by the time the tick runs, some not
    // due yet.
    for i in 0..30 {
        let mut r = enqueue("NOOP", format!("n{i}"), json!({"n": i}), i % 4);
        if i % 6 == 0 {
            // Set again just before its enqueue, below.
            r.expires_at = Some(chrono::Utc::now());
        }
        if i % 10 == 1 {
            r.not_before = Some(chrono::Utc::now() + chrono::Duration::hours(1));
        }
        reqs.push(r);
    }
    // Each deadline is set just before its enqueue, which refuses one already past: on a slow
    // machine the 48 enqueues can take longer than any fixed margin.
    let mut last_deadline = chrono::Utc::now();
    for r in &mut reqs {
        if r.expires_at.is_some() {
            last_deadline = chrono::Utc::now() + chrono::Duration::milliseconds(300);
            r.expires_at = Some(last_deadline);
        }
        queue::enqueue(&db.store, r, 3).await.unwrap();
    }
    let past = last_deadline + chrono::Duration::milliseconds(200) - chrono::Utc::now();
    tokio::time::sleep(past.to_std().unwrap_or_default()).await;

    let cmd = |args: &[&str]| {
        support::run(
            support::bin(d)
                .env("ORCHESTRATOR_RULES_DIR", &rules_dir)
                .args(["--database-url", &db.url, "--config", "o.yaml"])
                .args(args),
        )
    };
    let o = cmd(&["--json", "run-once", "--dry-run"]);
    assert!(o.status.success(), "{}", support::stderr(&o));
    let j = support::json(&o);
    assert_eq!(j["throttle"], 20, "{j}");
    let mut would: Vec<i64> =
        j["would_dispatch"].as_array().unwrap().iter().map(|a| a["id"].as_i64().unwrap()).collect();
    assert!(db.store.limits().list().await.unwrap().is_empty(), "the dry run wrote the config's limits");
    let all = db.store.actions().list_actions(&ActionFilter { limit: 1000, ..Default::default() }).await.unwrap();
    assert!(all.iter().all(|a| a.attempts == 0 && a.status == ActionStatus::Pending), "the dry run claimed");
    let type_of = |id: i64| all.iter().find(|a| a.id == id).map(|a| a.action_type.clone()).unwrap();
    let count = |ids: &[i64], t: &str| ids.iter().filter(|id| type_of(**id) == t).count();
    // The limits shaped the list: the first 20 in claim order alone would be 12 RATED, 6
    // BUDGETED and 2 NOOP.
    assert_eq!((would.len(), count(&would, "RATED"), count(&would, "BUDGETED")), (20, 6, 3), "{j}");

    let o = cmd(&["run-once"]);
    assert!(o.status.success(), "{}", support::stderr(&o));
    let after = db.store.actions().list_actions(&ActionFilter { limit: 1000, ..Default::default() }).await.unwrap();
    let mut claimed: Vec<i64> = after.iter().filter(|a| a.attempts > 0).map(|a| a.id).collect();
    claimed.sort_unstable();
    would.sort_unstable();
    assert_eq!(would, claimed, "the dry run's list is what the tick claimed");
    let expired = after.iter().filter(|a| a.status == ActionStatus::Dlq && a.attempts == 0).count();
    assert_eq!(expired, 5, "the deadlines passed before the tick: {after:?}");

    // A rule's pause stops the tick: the dry run lists nothing.
    write_rules(d, &[("stop", "[pause(\"stop\")]")]);
    let o = cmd(&["--json", "run-once", "--dry-run"]);
    let j = support::json(&o);
    let still_due = after.iter().filter(|a| a.status == ActionStatus::Pending && a.not_before <= chrono::Utc::now());
    assert!(still_due.count() > 10, "work is still due: {after:?}");
    assert_eq!(j["would_dispatch"], json!([]), "{j}");
}

async fn backtest_replays_recorded_history_with_edited_rules(db: &TestDb) {
    let config = db.config();
    let engine = db.engine(config.clone());
    let v1 = [("watch", "if snap.queue.pending > 0 { [alert(\"info\", \"work waiting\")] } else { [] }")];
    engine.decider().set_rules(rule_set(&config, &v1));
    id(db, "a").await;
    let mut config2 = config.clone();
    config2.max_actions_per_tick = 1;
    ran(&engine).await; // pending 1: alert
    ran(&engine).await; // pending 0: nothing
    let v2 = [(
        "watch",
        "if snap.queue.pending > 0 { [alert(\"warning\", \"work waiting\", 7)] } else { [rebalance(\"idle\")] }",
    )];
    let rules_dir = write_rules(db.dir.path(), &v2);
    let o = orch(db.dir.path(), &db.url, &rules_dir, &["--json", "rules", "backtest", "--last", "10"]);
    assert!(o.status.success(), "{}", support::stderr(&o));
    let j = support::json(&o);
    assert_eq!(j["ticks"], 2);
    assert_eq!(j["differing"], 2);
    let report = j["report"].as_array().unwrap();
    assert_eq!(report[0]["removed"], json!(["watch alert info [5]"]), "an alert's target is its key");
    assert_eq!(report[0]["added"], json!(["watch alert warning [7]"]));
    assert_eq!(report[1]["removed"], json!([]));
    assert_eq!(report[1]["added"], json!(["watch rebalance queue [5]"]));
    let o = orch(db.dir.path(), &db.url, &rules_dir, &["rules", "backtest"]);
    let text = support::stdout(&o);
    assert!(text.contains("  + watch rebalance queue [5]") && text.contains("2 tick(s) replayed, 2 would"), "{text}");
}

async fn snapshot_counts_by_type_windows_and_samples(db: &TestDb) {
    let mut config = db.config();
    config.rules.health.saturated_pending = 1;
    let engine = db.engine(config);
    for k in ["n1", "n2"] {
        id(db, k).await;
    }
    let bad = queue::enqueue(&db.store, &queue::EnqueueRequest { action_type: "BOGUS".into(), ..noop("bogus") }, 3)
        .await
        .unwrap()
        .id;
    ran(&engine).await; // NOOPs succeed, BOGUS goes to DLQ
    id(db, "n3").await;
    id(db, "n4").await;
    let r = ran(&engine).await;
    let s = r.snapshot.expect("snapshot");
    assert_eq!(s.queue.pending, 2);
    assert_eq!(s.queue.success, 2);
    assert_eq!(s.queue.by_type["NOOP"].pending, 2);
    assert_eq!(s.queue.by_type["NOOP"].successes_1h, 2);
    assert_eq!(s.queue.by_type["BOGUS"].dlq, 1);
    assert_eq!(s.queue.by_type["BOGUS"].failures_1h, 1);
    assert_eq!((s.recent.failures_1h, s.recent.successes_1h, s.recent.failures_15m), (1, 2, 1));
    assert!((s.recent.error_rate_1h - 1.0 / 3.0).abs() < 1e-9);
    assert_eq!(s.samples.dlq.len(), 1);
    assert_eq!(s.samples.dlq[0].id, bad);
    assert!(s.samples.dlq[0].last_error.as_deref().unwrap_or("").contains("no adapter"));
    assert_eq!(s.samples.stuck_pending.len(), 2);
    assert_eq!(s.ledger.last_tick_status.map(|t| t.as_str()), Some("PARTIAL"));
    // saturated (2 > 1): -20; failures in the last hour: -10
    assert_eq!((s.health.score, s.health.status.as_str()), (70, "degraded"));
    let recorded = db.store.ledger().tick_decide(r.tick_id).await.unwrap().unwrap();
    let snap: Value = serde_json::from_str(&recorded.snapshot_json.unwrap()).unwrap();
    assert_eq!(snap["queue"]["by_type"]["NOOP"]["pending"], 2, "the ledger keeps the snapshot");
}

#[tokio::test]
async fn hot_reload_rejects_a_bad_rule_set_as_a_whole() {
    let db = TestDb::sqlite().await;
    let mut config = db.config();
    config.rules_dir = write_rules(db.dir.path(), &[("one", "[]"), ("two", "[]")]);
    let engine = db.engine(config.clone());
    assert_eq!(engine.decider().load_rules().unwrap(), 2);
    let digest = engine.decider().rules().digest().to_string();
    write_rules(db.dir.path(), &[("one", "[]"), ("two", "let x = ;")]);
    let e = engine.decider().load_rules().unwrap_err().to_string();
    assert!(e.contains("two.rhai:1:"), "{e}");
    assert_eq!(engine.decider().rules().digest(), digest, "the old set stays active");
    assert_eq!(engine.decider().rules().len(), 2);
    let m = engine.metrics().render();
    assert!(m.contains("orchestrator_rules_reload_success 0") && m.contains("orchestrator_rules_loaded 2"), "{m}");
    // A set that compiles but fails its check on the default snapshot is rejected too.
    write_rules(db.dir.path(), &[("three", "[retry(0, \"no target\")]")]);
    assert!(engine.decider().load_rules().unwrap_err().to_string().contains("target action id"));
    write_rules(db.dir.path(), &[("four", "[]")]);
    assert_eq!(engine.decider().load_rules().unwrap(), 1);
    assert!(engine.metrics().render().contains("orchestrator_rules_reload_success 1"));
    db.cleanup().await;
}

#[test]
fn shipped_rules_check_and_pass_their_fixtures() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let o = support::run(support::bin(dir.path()).args(["rules", "check", "--rules"]).arg(root.join("rules")));
    assert!(o.status.success(), "{}{}", support::stdout(&o), support::stderr(&o));
    let o = support::run(support::bin(dir.path()).args(["rules", "test", "--rules"]).arg(root.join("rules")));
    assert!(o.status.success(), "{}", support::stdout(&o));
    assert!(support::stdout(&o).contains(" passed, 0 failed"));
    assert!(!dir.path().join("orchestrator.db").exists(), "rule commands need no database");
}

#[test]
fn rules_check_and_test_report_failures_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let rules_dir = write_rules(dir.path(), &[("good", "[]"), ("bad", "let a = 1;\nlet b = (a +;\n")]);
    let o = support::run(support::bin(dir.path()).args(["rules", "check", "--rules"]).arg(&rules_dir));
    assert_eq!(o.status.code(), Some(1));
    let text = support::stdout(&o);
    assert!(text.contains(&format!("{}:2:13: ", rules_dir.join("bad.rhai").display())), "{text}");

    let rules_dir =
        write_rules(dir.path(), &[("sat", "if snap.queue.pending > 5 { [rebalance(\"full\", 9)] } else { [] }")]);
    std::fs::create_dir_all(rules_dir.join("tests")).unwrap();
    std::fs::write(
        rules_dir.join("tests/sat.yaml"),
        "cases:\n  - name: full\n    snapshot: {queue: {pending: 6}}\n    expect: [{kind: rebalance, priority: 9}]\n  - name: wrong on purpose\n    snapshot: {queue: {pending: 6}}\n    expect: [{kind: pause}]\n    absent: [{kind: rebalance}]\n",
    )
    .unwrap();
    let o = support::run(support::bin(dir.path()).args(["rules", "test", "--rules"]).arg(&rules_dir));
    assert_eq!(o.status.code(), Some(1));
    let text = support::stdout(&o);
    assert!(text.contains("PASS sat.yaml: full"), "{text}");
    assert!(text.contains("FAIL sat.yaml: wrong on purpose"), "{text}");
    assert!(text.contains("- expected: pause"), "{text}");
    assert!(text.contains("+ unexpected (rebalance must be absent): rebalance target=queue priority=9"), "{text}");
    assert!(text.contains("1 passed, 1 failed"), "{text}");
}

/// The latest finished tick's decisions, through the binary (the newest row may be a tick still
/// running, whose decisions are not written yet).
fn latest_decisions(d: &Path) -> Vec<Value> {
    let o = support::run(support::bin(d).args(["ticks", "--limit", "3", "--json"]));
    if !o.status.success() {
        return Vec::new(); // the daemon may still be creating the database
    }
    let t = support::json(&o);
    let finished = t.as_array().and_then(|ticks| ticks.iter().find(|t| !t["finished_at"].is_null()));
    let Some(id) = finished.and_then(|t| t["id"].as_i64()) else { return Vec::new() };
    let id = id.to_string();
    let e = support::json(&support::run(support::bin(d).args(["--json", "explain", "--tick", &id])));
    e["decisions"].as_array().cloned().unwrap_or_default()
}

fn wait_for(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn run_reloads_rules_on_change_and_sighup_and_keeps_the_old_set_when_the_new_one_is_bad() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_rules(d, &[("say", "[alert(\"info\", \"v1\")]")]);
    let mut daemon = support::bin(d)
        .args(["run", "--no-http", "--interval", "0.1"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let says = |m: &str| latest_decisions(d).iter().any(|x| x["reason"] == m);
    assert!(wait_for(Duration::from_secs(10), || says("v1")), "the daemon runs the rules");
    write_rules(d, &[("say", "[alert(\"info\", \"v2\")]")]);
    assert!(wait_for(Duration::from_secs(10), || says("v2")), "a changed file is reloaded");
    std::fs::write(d.join("rules/broken.rhai"), "let x = (1 +;").unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert!(says("v2"), "a bad set is rejected whole; the old one keeps deciding");
    std::fs::write(d.join("rules/broken.rhai"), "[alert(\"info\", \"v3\")]").unwrap();
    let pid = daemon.id().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    assert!(wait_for(Duration::from_secs(10), || says("v3")), "SIGHUP (or the change) reloaded the fixed set");
    std::thread::sleep(Duration::from_millis(500));
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    std::thread::sleep(Duration::from_millis(800));
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut status = None;
    assert!(wait_for(Duration::from_secs(10), || {
        status = daemon.try_wait().unwrap();
        status.is_some()
    }));
    let mut err = String::new();
    daemon.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.contains("rules rejected; the previous rule set stays active"), "{err}");
    assert!(err.contains("broken.rhai:1:"), "the diagnostics are logged: {err}");
    assert!(err.contains("rules reloaded"), "{err}");
    assert!(err.contains("\"SIGHUP\""), "a SIGHUP alone reloads: {err}");
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}

async fn cooldowns_expire_and_are_pruned(db: &TestDb) {
    let mut config = db.config();
    config.rules.cooldown = Duration::from_millis(300);
    let engine = db.engine(config.clone());
    engine.decider().set_rules(rule_set(
        &config,
        &[("nag", "state.n = (state.n ?? 0) + 1;\n[alert(\"info\", \"again\", \"again\"), alert(\"info\", `m${state.n}`, `m${state.n}`)]")],
    ));
    let outcome = |id: i64| {
        let store = db.store.clone();
        async move { store.decisions().list(id).await.unwrap()[0].outcome.clone() }
    };
    let t1 = ran(&engine).await.tick_id;
    let t2 = ran(&engine).await.tick_id;
    assert_eq!(
        (outcome(t1).await, outcome(t2).await),
        (DecisionOutcome::Applied, DecisionOutcome::Suppressed(Suppressed::Cooldown))
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let t3 = ran(&engine).await.tick_id;
    assert_eq!(outcome(t3).await, DecisionOutcome::Applied, "the cooldown expired");
    let live = db.store.decisions().cooldowns_since(chrono::DateTime::UNIX_EPOCH).await.unwrap();
    let targets: Vec<&str> = live.keys().map(|(_, _, t)| t.as_str()).collect();
    assert_eq!(targets, vec!["again", "m3"], "m1 and m2 expired and were pruned");
}

async fn decisions_read_back_as_the_enums_they_were_written_from(db: &TestDb) {
    let mut config = db.config();
    config.rules.max_decisions_per_tick = 3;
    config.rules.cooldown = Duration::from_secs(3600);
    let engine = db.engine(config.clone());
    // In priority order: a refused cancel (no such action), an alert, the same alert again
    // (deduplicated), a throttle (the third kept), and a rebalance past the cap.
    let rules = r#"[
        cancel(999999, "not there", 9),
        alert("info", "hello", "k", 8),
        alert("info", "hello again", "k", 7),
        throttle(5, "slow", 6),
        rebalance("spread", 1),
    ]"#;
    engine.decider().set_rules(rule_set(&config, &[("mixed", rules)]));
    let first = ran(&engine).await.tick_id;
    let second = ran(&engine).await.tick_id;

    let read = |tick: i64| {
        let store = db.store.clone();
        async move {
            let rows = store.decisions().list(tick).await.unwrap();
            assert!(rows.iter().all(|d| d.tick_id == tick && d.rule == "mixed"), "{rows:#?}");
            rows.into_iter().map(|d| (d.kind, d.outcome)).collect::<Vec<_>>()
        }
    };
    let rows = read(first).await;
    assert!(
        matches!(&rows[0], (DecisionKind::Cancel, DecisionOutcome::Failed(why)) if why.contains("999999")),
        "{rows:?}"
    );
    assert_eq!(
        rows[1..],
        [
            (DecisionKind::Alert, DecisionOutcome::Applied),
            (DecisionKind::Alert, DecisionOutcome::Suppressed(Suppressed::Dedupe)),
            (DecisionKind::Throttle, DecisionOutcome::Applied),
            (DecisionKind::Rebalance, DecisionOutcome::Suppressed(Suppressed::Cap)),
        ]
    );
    let rows = read(second).await;
    assert!(matches!(rows[0], (DecisionKind::Cancel, DecisionOutcome::Failed(_))), "a refusal starts no cooldown");
    assert_eq!(
        rows[1..],
        [
            (DecisionKind::Alert, DecisionOutcome::Suppressed(Suppressed::Cooldown)),
            (DecisionKind::Alert, DecisionOutcome::Suppressed(Suppressed::Dedupe)),
            (DecisionKind::Throttle, DecisionOutcome::Suppressed(Suppressed::Cooldown)),
            (DecisionKind::Rebalance, DecisionOutcome::Suppressed(Suppressed::Cap)),
        ]
    );
    let recent = db.store.decisions().recent_decisions(1).await.unwrap();
    assert_eq!(
        (recent[0].kind, &recent[0].outcome),
        (DecisionKind::Rebalance, &DecisionOutcome::Suppressed(Suppressed::Cap))
    );

    // Text that no version writes (a hand edit) is an error that names the row and the value.
    db.store
        .execute_unprepared(&format!(
            "UPDATE decisions SET kind = 'explode' WHERE tick_id = {first} AND kind = 'rebalance'"
        ))
        .await
        .unwrap();
    let e = db.store.decisions().list(first).await.unwrap_err().to_string();
    assert!(e.starts_with("row decisions#") && e.contains("kind \"explode\": unknown decision kind"), "{e}");
    db.store
        .execute_unprepared(&format!(
            "UPDATE decisions SET outcome = 'maybe' WHERE tick_id = {second} AND kind = 'rebalance'"
        ))
        .await
        .unwrap();
    let e = db.store.decisions().recent_decisions(10).await.unwrap_err().to_string();
    assert!(e.starts_with("row decisions#") && e.contains("outcome \"maybe\""), "{e}");
}
