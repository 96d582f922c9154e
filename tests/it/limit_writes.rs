//! Who writes a type's limits, and that no write is lost (issue 21, items 6 and 7): a worker
//! writes its config's limits before its first claim (so they hold before any `run` has
//! started), never undoing an operator's `limits set`, another config's values or an override,
//! and warns where configs disagree; concurrent edits of different fields (`limits set`, `PUT
//! /api/limits`, overrides, a rule's `set_limit`, the configs' writes) all land. Through the
//! real binary and the router, on SQLite and PostgreSQL.

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::json;

use orchestrator::limits::{BaseField, LimitField, LimitSpec, LimitValue, Rate};
use orchestrator::limits::{LimitSource, TypeLimit};
use orchestrator::store::{Backend, ConfigLimits, EditRefusal, LimitEdit, Store};

use crate::backend_tests;
use crate::support::api::{admin, config, state};
use crate::support::limits::{enqueue, limits_config, most_at_once, spec};
use crate::support::process::{LogLines, Server, terminate};
use crate::support::{TestDb, bin, run, stderr};

backend_tests!(
    workers_started_before_the_leader_hold_its_limits_from_their_first_claim,
    a_worker_keeps_what_it_finds_and_warns_where_configs_disagree,
    thirty_concurrent_limit_sets_all_land,
    racing_limit_writers_lose_no_acknowledged_write,
);

fn spawn(db: &TestDb, args: &[&str]) -> Child {
    bin(db.dir.path())
        .args(["--database-url", &db.url, "--config", "o.yaml"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn orchestrator")
}

async fn limit_of(store: &Store, t: &str) -> Option<TypeLimit> {
    store.limits().list().await.unwrap().into_iter().find(|l| l.action_type == t)
}

/// The race, 20 times (`LIMIT_REPS`): 8 probes due, two workers of 4 slots started with
/// a config that says `COMMAND: {max_running: 2}` on a database that has no limit yet, and the
/// leader started half a second after them. The probes never see more than two at once.
async fn workers_started_before_the_leader_hold_its_limits_from_their_first_claim(db: &TestDb) {
    let reps: i32 = std::env::var("LIMIT_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let log = db.dir.path().join("probe.log");
    std::fs::write(db.dir.path().join("o.yaml"), limits_config(&log, 2)).unwrap();
    db.store
        .flags()
        .set_flags(orchestrator::store::FlagChange { proof_mode: Some(false), ..Default::default() })
        .await
        .unwrap();
    let n = 8;
    for rep in 0..reps {
        db.store.limits().clear_limit("COMMAND").await.unwrap();
        let _ = std::fs::remove_file(&log);
        enqueue(&db.store, "COMMAND", n, rep, |_| json!({"command": "probe"})).await;
        let mut procs = crate::support::daemon::Procs(vec![
            spawn(db, &["worker", "--concurrency", "4", "--no-http"]),
            spawn(db, &["worker", "--concurrency", "4", "--no-http"]),
        ]);
        // Time enough for a worker to claim before the leader has written anything.
        tokio::time::sleep(Duration::from_millis(500)).await;
        procs.0.push(spawn(db, &["run", "--no-execute", "--no-http"]));
        let start = Instant::now();
        loop {
            let done = db
                .store
                .actions()
                .list_actions(&orchestrator::store::ActionFilter {
                    status: Some(orchestrator::model::ActionStatus::Success),
                    limit: 10_000,
                    ..Default::default()
                })
                .await
                .unwrap()
                .len();
            if done == n * (rep as usize + 1) {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "repetition {rep}: {done} done");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(procs);
        let (most, started) = most_at_once(&log);
        assert_eq!(started, n, "repetition {rep}: every probe ran once");
        assert!(most <= 2, "repetition {rep}: {most} probes at once under max_running 2");
    }
}

/// Starts `orchestrator worker` with `o.yaml`, waits until it runs (it has written its config's
/// limits by then), stops it and returns what it logged.
fn worker_logs(db: &TestDb) -> Vec<String> {
    let mut child = Server(
        bin(db.dir.path())
            .args(["--database-url", &db.url, "--config", "o.yaml", "worker", "--no-http"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn orchestrator"),
    );
    let mut logs = LogLines::new(child.stderr.take().expect("stderr piped"));
    logs.wait_for("orchestrator worker running", Duration::from_secs(30));
    terminate(&mut child, Duration::from_secs(20));
    logs.drain().to_vec()
}

/// What a worker finds stays, and each field where its config disagrees is a warning naming
/// the type and the field: an operator's `limits set`, another config's value, and an override
/// (a type with only an override gains the config's base, the override in force). `run` then
/// replaces the base of the types its config names, says whose value it replaced, and removes
/// (and names) a type an earlier config set that its own does not name.
async fn a_worker_keeps_what_it_finds_and_warns_where_configs_disagree(db: &TestDb) {
    let yaml = "workers: {heartbeat_seconds: 0.3, ttl_seconds: 1.5, poll_seconds: 0.1}
limits:
  COMMAND: {max_running: 2}
  NOOP: {max_running: 3, rate: 10/1m}
  WEBHOOK: {max_running: 4}
  POST_SOCIAL: {daily_budget: 50}
";
    std::fs::write(db.dir.path().join("o.yaml"), yaml).unwrap();
    let other = BTreeMap::from([
        ("NOOP".to_string(), spec("max_running: '5'")),
        ("ALERT".to_string(), spec("max_running: '7'")),
    ]);
    db.store.limits().write_config_limits(&other, ConfigLimits::Replace).await.unwrap();
    db.store.limits().set_limit("COMMAND", &spec("max_running: '1'")).await.unwrap();
    let until = db.store.db_now().await.unwrap() + chrono::Duration::minutes(10);
    let narrow = LimitValue::Count(0);
    db.store
        .limits()
        .set_limit_override(None, "WEBHOOK", LimitField::MaxRunning, narrow, until, "down", "op")
        .await
        .unwrap();

    let logs = worker_logs(db).join("\n");
    let command = limit_of(&db.store, "COMMAND").await.unwrap();
    assert_eq!((command.base, command.source), (spec("max_running: '1'"), LimitSource::Operator));
    let noop = limit_of(&db.store, "NOOP").await.unwrap();
    assert_eq!((noop.base, noop.source), (spec("max_running: '5'"), LimitSource::Config), "the first config's stays");
    let webhook = limit_of(&db.store, "WEBHOOK").await.unwrap();
    assert_eq!((webhook.base, webhook.source), (spec("max_running: '4'"), LimitSource::Config));
    assert_eq!((webhook.effective.max_running, webhook.overrides.len()), (Some(0), 1), "the override holds");
    let social = limit_of(&db.store, "POST_SOCIAL").await.unwrap();
    assert_eq!(
        (social.base, social.source),
        (spec("daily_budget: '50'"), LimitSource::Config),
        "a new type is written"
    );
    for needle in [
        "limits.COMMAND.max_running: this config says 2, but the database holds 1 (set by operator)",
        "limits.NOOP.max_running: this config says 3, but the database holds 5 (set by config)",
        "limits.NOOP.rate: this config says 10/1m, but the database holds none (set by config)",
    ] {
        assert!(logs.contains(needle), "{needle:?} in\n{logs}");
    }
    assert!(!logs.contains("limits.WEBHOOK") && !logs.contains("limits.POST_SOCIAL"), "{logs}");
    assert!(limit_of(&db.store, "ALERT").await.is_some(), "a worker removes nothing");

    // `run` replaces, and names what it replaced; the override stays.
    let o = run(bin(db.dir.path()).args([
        "--database-url",
        &db.url,
        "--config",
        "o.yaml",
        "run",
        "--ticks",
        "1",
        "--no-execute",
        "--no-http",
    ]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o)
            .contains("limits.COMMAND.max_running: the database held 1 (set by operator); this config's 2 replaces it"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains(
            "limits.ALERT: set from a config (an earlier one, or another process's) that this one does not name"
        ),
        "{}",
        stderr(&o)
    );
    assert!(limit_of(&db.store, "ALERT").await.is_none(), "the config `run` replaced named it, this one does not");
    let command = limit_of(&db.store, "COMMAND").await.unwrap();
    assert_eq!((command.base, command.source), (spec("max_running: '2'"), LimitSource::Config));
    assert_eq!(limit_of(&db.store, "NOOP").await.unwrap().base, spec("{max_running: '3', rate: 10/1m}"));
    assert_eq!(limit_of(&db.store, "WEBHOOK").await.unwrap().effective.max_running, Some(0), "the override holds");
    // A worker whose config agrees with the database has nothing to say.
    let logs = worker_logs(db).join("\n");
    assert!(!logs.contains("this config says"), "{logs}");
}

/// The figure: 30 `limits set` processes at once, each setting one field of one of 10
/// types. Every one exits 0, and every type ends with the three fields set.
async fn thirty_concurrent_limit_sets_all_land(db: &TestDb) {
    let value = |flag: &str, i: usize| match flag {
        "--max-running" => (i + 1).to_string(),
        "--rate" => format!("{}/1h", i + 1),
        _ => (100 + i).to_string(),
    };
    let mut children = Vec::new();
    for i in 0..10 {
        for flag in ["--max-running", "--rate", "--daily-budget"] {
            let t = format!("TYPE{i}");
            children.push(
                bin(db.dir.path())
                    .args(["--database-url", &db.url, "limits", "set", &t, flag, &value(flag, i)])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn orchestrator"),
            );
        }
    }
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    for i in 0..10 {
        let l = limit_of(&db.store, &format!("TYPE{i}")).await.unwrap();
        let want = LimitSpec {
            max_running: Some(i as u64 + 1),
            rate: Some(Rate { count: i as u64 + 1, period: Duration::from_secs(3600) }),
            daily_budget: Some(100 + i as u64),
            partition_by: None,
            allowed_hours: None,
        };
        assert_eq!((l.base, l.source), (want, LimitSource::Operator), "TYPE{i}");
    }
}

// ---- a property: racing writers, checked against every acknowledged write ----------------------

/// One writer of a type's limits, as each surface calls the store.
#[derive(Clone, Debug)]
enum Writer {
    /// `limits set TYPE --FIELD v`: a merge of one field.
    Set(BaseField),
    /// `PUT /api/limits/TYPE` with these fields (through the router).
    Put(Vec<BaseField>),
    /// `POST /api/limits/TYPE/override` (through the router).
    Override(LimitField),
    /// A rule's `set_limit`, under the lease's fence.
    RuleOverride(LimitField),
    /// A config's `limits:` naming these fields: `run`'s (replace) or a worker's (fill).
    Config(ConfigLimits, Vec<BaseField>),
}

fn writer() -> impl proptest::strategy::Strategy<Value = Writer> {
    use proptest::prelude::*;
    let field = prop_oneof![
        Just(BaseField::MaxRunning),
        Just(BaseField::Rate),
        Just(BaseField::DailyBudget),
        Just(BaseField::PartitionBy),
        Just(BaseField::AllowedHours)
    ];
    let limit = prop_oneof![Just(LimitField::MaxRunning), Just(LimitField::Rate), Just(LimitField::DailyBudget)];
    // A whole base: one limit at least, and any of the others.
    let base = (limit.clone(), proptest::collection::vec(field.clone(), 0..3)).prop_map(|(first, more)| {
        let mut fields = vec![match first {
            LimitField::MaxRunning => BaseField::MaxRunning,
            LimitField::Rate => BaseField::Rate,
            LimitField::DailyBudget => BaseField::DailyBudget,
        }];
        for f in more {
            if !fields.contains(&f) {
                fields.push(f);
            }
        }
        fields
    });
    let how = prop_oneof![Just(ConfigLimits::Replace), Just(ConfigLimits::Fill)];
    prop_oneof![
        5 => field.prop_map(Writer::Set),
        2 => base.clone().prop_map(Writer::Put),
        2 => limit.clone().prop_map(Writer::Override),
        1 => limit.prop_map(Writer::RuleOverride),
        2 => (how, base).prop_map(|(how, fields)| Writer::Config(how, fields)),
    ]
}

/// Writer `k`'s values: its own in every field, so that the final row says whose write landed.
fn spec_of(k: usize, fields: &[BaseField]) -> LimitSpec {
    let mut s = LimitSpec::default();
    for f in fields {
        match f {
            BaseField::MaxRunning => s.max_running = Some(k as u64 + 1),
            BaseField::Rate => s.rate = Some(Rate { count: k as u64 + 1, period: Duration::from_secs(3600) }),
            BaseField::DailyBudget => s.daily_budget = Some(1000 + k as u64),
            BaseField::PartitionBy => s.partition_by = Some(format!("payload.f{k}").parse().unwrap()),
            BaseField::AllowedHours => {
                s.allowed_hours = Some(format!("{:02}:00-{:02}:30 UTC", k % 24, k % 24).parse().unwrap())
            }
        }
    }
    s
}

fn value_of(k: usize, field: LimitField) -> LimitValue {
    match field {
        LimitField::Rate => LimitValue::Rate(Rate { count: k as u64 + 1, period: Duration::from_secs(60) }),
        _ => LimitValue::Count(k as u64 + 1),
    }
}

/// What an acknowledged write wrote: base fields (with their values, `None` for a field a
/// whole-base write leaves out) or one override.
enum Wrote {
    Base(Vec<(BaseField, Option<String>)>),
    Override(LimitField, String),
    Nothing,
}

/// Every case: a fresh type and 4 to 14 writers at once (`LIMIT_WRITE_CASES` cases, 12 unless
/// set). Each field of the final base holds the value of an acknowledged write of that field
/// (none when no write named it), and each override the value of an acknowledged override of
/// its field: no acknowledged write was lost to another.
async fn racing_limit_writers_lose_no_acknowledged_write(db: &TestDb) {
    use proptest::test_runner::{Config as PropConfig, TestRunner};
    let cases: u32 = std::env::var("LIMIT_WRITE_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(12);
    let mut runner = TestRunner::new(PropConfig { cases, failure_persistence: None, ..PropConfig::default() });
    let term = crate::support::hold(&db.store, "leader").await;
    let fence = crate::support::fence(&term);
    let mut stores = vec![db.store.clone()];
    for _ in 1..4 {
        stores.push(if db.store.backend() == Backend::Postgres { db.another_store().await } else { db.store.clone() });
    }
    let api = state(&db.engine(config(db, true)));
    let case = std::sync::atomic::AtomicUsize::new(0);
    let result = runner.run(&proptest::collection::vec(writer(), 4..14), |writers| {
        let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(race_writers(&stores, &api, &fence, n, writers))
        });
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

async fn race_writers(
    stores: &[Store],
    api: &orchestrator::http::AppState,
    fence: &orchestrator::store::Fence,
    n: usize,
    writers: Vec<Writer>,
) {
    let t = format!("RACE{n}");
    let until = stores[0].db_now().await.unwrap() + chrono::Duration::minutes(10);
    let go = std::sync::Arc::new(tokio::sync::Barrier::new(writers.len()));
    let mut tasks = Vec::new();
    for (k, w) in writers.iter().cloned().enumerate() {
        let (store, api, fence, t, go) =
            (stores[k % stores.len()].clone(), api.clone(), fence.clone(), t.clone(), go.clone());
        tasks.push(tokio::spawn(async move {
            go.wait().await;
            match w {
                Writer::Set(field) => {
                    match store.limits().edit_limit(&t, &LimitEdit::Merge(spec_of(k, &[field]))).await.unwrap() {
                        Ok(_) => Wrote::Base(vec![(field, field.value_in(&spec_of(k, &[field])))]),
                        Err(EditRefusal::LimitsNothing) if field == BaseField::PartitionBy => Wrote::Nothing,
                        Err(e) => panic!("writer {k} {w:?}: {e}"),
                    }
                }
                Writer::Put(fields) => {
                    let s = spec_of(k, &fields);
                    let body = json!({
                        "max_running": s.max_running,
                        "rate": s.rate.map(|r| format!("{}/1h", r.count)),
                        "daily_budget": s.daily_budget,
                        "partition_by": s.partition_by.as_ref().map(|p| p.to_string()),
                        "allowed_hours": s.allowed_hours.map(|h| h.to_string()),
                    });
                    let a = admin(&api, "PUT", &format!("/api/limits/{t}"), Some(&body.to_string())).await;
                    assert_eq!(a.status, StatusCode::OK, "writer {k}: {}", a.body);
                    Wrote::Base(BaseField::ALL.iter().map(|f| (*f, f.value_in(&s))).collect())
                }
                Writer::Override(field) => {
                    let v = value_of(k, field);
                    let value = match v {
                        LimitValue::Count(c) => json!(c),
                        LimitValue::Rate(r) => json!(format!("{}/1m", r.count)),
                    };
                    let body = json!({"field": field.as_str(), "value": value, "seconds": 600, "reason": "race"});
                    let a = admin(&api, "POST", &format!("/api/limits/{t}/override"), Some(&body.to_string())).await;
                    assert_eq!(a.status, StatusCode::OK, "writer {k}: {}", a.body);
                    Wrote::Override(field, v.to_string())
                }
                Writer::RuleOverride(field) => {
                    let v = value_of(k, field);
                    store
                        .limits()
                        .set_limit_override(Some(&fence), &t, field, v, until, "race", "rule race")
                        .await
                        .unwrap();
                    Wrote::Override(field, v.to_string())
                }
                Writer::Config(how, fields) => {
                    let s = spec_of(k, &fields);
                    let done = store
                        .limits()
                        .write_config_limits(&BTreeMap::from([(t.clone(), s.clone())]), how)
                        .await
                        .unwrap();
                    if done.written.contains(&t) {
                        Wrote::Base(BaseField::ALL.iter().map(|f| (*f, f.value_in(&s))).collect())
                    } else {
                        Wrote::Nothing
                    }
                }
            }
        }));
    }
    let mut wrote = Vec::new();
    for task in tasks {
        wrote.push(task.await.unwrap());
    }
    let last = limit_of(&stores[0], &t).await;
    let base = last.as_ref().map(|l| l.base.clone()).unwrap_or_default();
    for field in BaseField::ALL {
        let written: Vec<&Option<String>> = wrote
            .iter()
            .filter_map(|w| match w {
                Wrote::Base(fields) => fields.iter().find(|(f, _)| *f == field).map(|(_, v)| v),
                _ => None,
            })
            .collect();
        let now = field.value_in(&base);
        if written.is_empty() {
            assert_eq!(now, None, "case {n}: {field} was never written: {writers:?} -> {last:?}");
        } else {
            assert!(written.contains(&&now), "case {n}: {field} = {now:?} is no write's, of {written:?}: {writers:?}");
        }
    }
    for field in LimitField::ALL {
        let written: Vec<&String> = wrote
            .iter()
            .filter_map(|w| match w {
                Wrote::Override(f, v) if *f == field => Some(v),
                _ => None,
            })
            .collect();
        let now =
            last.as_ref().and_then(|l| l.overrides.iter().find(|o| o.field == field)).map(|o| o.value.to_string());
        match now {
            None => assert!(written.is_empty(), "case {n}: the {field} override was lost: {writers:?} -> {last:?}"),
            Some(v) => assert!(written.contains(&&v), "case {n}: override {field} = {v} is no write's: {writers:?}"),
        }
    }
}
