//! Workers on PostgreSQL, as processes: a leader started with `--no-execute` beside
//! `orchestrator worker` processes that claim and run everything, a worker killed with
//! `kill -9` mid-drain whose claims the leader rescues, and a SIGTERM that lets attempts in
//! flight finish and deregisters. Small sizes here; the figures are in RELIABILITY.md.

use std::time::{Duration, Instant};

use orchestrator::model::ActionStatus;
use orchestrator::store::ActionFilter;

use crate::support::daemon::{Procs, signal, spawn};
use crate::support::{TestDb, bin, json, run, stderr};

const CONFIG: &str = "\
tick_interval_seconds: 0.2
workers:
  heartbeat_seconds: 0.3
  ttl_seconds: 1.5
  poll_seconds: 0.1
  shutdown_grace_seconds: 10
adapters:
  command:
    allow:
      nap:
        program: /bin/sleep
        args: [\"0.2\"]
";

async fn counts(db: &TestDb) -> Vec<(ActionStatus, usize)> {
    let all = db.store.actions().list_actions(&ActionFilter { limit: 10_000, ..Default::default() }).await.unwrap();
    ActionStatus::ALL
        .iter()
        .map(|s| (*s, all.iter().filter(|a| a.status == *s).count()))
        .filter(|(_, n)| *n > 0)
        .collect()
}

async fn wait_until_done(db: &TestDb, n: usize, limit: Duration) {
    let start = Instant::now();
    loop {
        let c = counts(db).await;
        if c == vec![(ActionStatus::Success, n)] {
            return;
        }
        assert!(start.elapsed() < limit, "not drained within {limit:?}: {c:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn pg() -> Option<TestDb> {
    let db = TestDb::postgres().await?;
    std::fs::write(db.dir.path().join("o.yaml"), CONFIG).unwrap();
    Some(db)
}

fn enqueue_naps(db: &TestDb, n: usize) {
    let lines: String = (0..n)
        .map(|i| {
            format!(
                "{{\"action_type\":\"COMMAND\",\"payload\":{{\"command\":\"nap\"}},\"idempotency_key\":\"n{i}\"}}\n"
            )
        })
        .collect();
    std::fs::write(db.dir.path().join("naps.jsonl"), lines).unwrap();
    let args = ["--database-url", &db.url, "--config", "o.yaml", "enqueue", "--file", "naps.jsonl"];
    let o = run(bin(db.dir.path()).args(args));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(bin(db.dir.path()).args(["--database-url", &db.url, "proof", "off"]));
    assert!(o.status.success(), "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_drain_beside_a_leader_that_does_not_execute() {
    let Some(db) = pg().await else { return };
    enqueue_naps(&db, 60);
    let mut procs = Procs(vec![spawn(&db, &["run", "--no-execute", "--no-http"])]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    procs.0.push(spawn(&db, &["worker", "--concurrency", "4", "--listen", &listen]));
    procs.0.push(spawn(&db, &["worker", "--concurrency", "4"]));
    wait_until_done(&db, 60, Duration::from_secs(60)).await;

    // The worker with an address serves its own counters and its registration's health.
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    let health = crate::support::http::wait_for(addr, "/health", Duration::from_secs(10), |r| r.status == 200);
    // The same judgement and body as an instance's /health (it said `"of": "worker"` before).
    assert_eq!(health.json()["of"], "liveness", "{}", health.body);
    assert!(health.json()["worker"].as_str().is_some_and(|w| w.contains(':')), "{}", health.body);
    let metrics = crate::support::http::get(addr, "/metrics");
    assert!(metrics.body.contains("orchestrator_actions_total{"), "{}", metrics.body);

    // Every attempt ran on a worker; the leader's ledger counts what the workers recorded,
    // so the drain never reads as idle, and the work-conserving check does not fire.
    // A tick still in flight reads as "did not finish" until it closes: only finished ones.
    let ticks: Vec<_> =
        db.store.ledger().recent_ticks(10_000).await.unwrap().into_iter().filter(|t| t.finished_at.is_some()).collect();
    assert!(!ticks.is_empty(), "the leader ticked");
    let notes = |t: &orchestrator::model::TickRow| t.notes.clone().unwrap_or_default();
    assert!(ticks.iter().all(|t| notes(t).contains("leader only (--no-execute)")), "{ticks:?}");
    assert!(ticks.iter().all(|t| !notes(t).contains("invariant broken")), "{ticks:?}");
    // Each outcome is counted once, by the tick whose window (ending 2 s back) holds it.
    let start = Instant::now();
    let counted = loop {
        let ticks = db.store.ledger().recent_ticks(10_000).await.unwrap();
        let counted: i32 = ticks.iter().map(|t| t.actions_succeeded).sum();
        if counted >= 60 || start.elapsed() > Duration::from_secs(15) {
            break counted;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(counted, 60, "the ledger counts every outcome the workers recorded, once");
    let ticks = db.store.ledger().recent_ticks(10_000).await.unwrap();
    assert!(ticks.iter().any(|t| t.status == orchestrator::model::TickStatus::Success), "{ticks:?}");
    let logs = db.store.history().logs(None, 1000).await.unwrap();
    assert!(logs.iter().all(|l| l.tick_id.is_none()), "no attempt ran inside a leader's tick");
    let o = run(bin(db.dir.path()).args(["--database-url", &db.url, "--config", "o.yaml", "--json", "status"]));
    assert_eq!(json(&o)["workers"], serde_json::json!({"live": 2, "dead": 0}), "{}", stderr(&o));
    // The workers report what they ran, written with each heartbeat.
    let start = Instant::now();
    loop {
        let o = run(bin(db.dir.path()).args(["--database-url", &db.url, "--config", "o.yaml", "--json", "workers"]));
        let listed = json(&o);
        let rows = listed.as_array().unwrap();
        assert_eq!(rows.iter().filter(|w| w["live"] == true).count(), 2, "{listed}");
        let done: i64 = rows.iter().map(|w| w["done"].as_i64().unwrap()).sum();
        if done == 60 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "the workers' counts never reached 60: {listed}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let logs = db.store.history().logs(None, 1000).await.unwrap();
    assert!(
        logs.iter().filter(|l| l.message.contains("succeeded")).all(|l| l.message.contains("[worker ")),
        "{logs:?}"
    );

    // SIGTERM: each worker finishes, deregisters and exits 0.
    for w in &mut procs.0[1..] {
        signal(w, "-TERM");
        let start = Instant::now();
        let status = loop {
            if let Some(s) = w.try_wait().unwrap() {
                break s;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "a worker did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(status.code(), Some(0));
    }
    let left = db.store.workers().list(Duration::from_secs(30)).await.unwrap();
    assert!(left.is_empty(), "stopped workers deregistered: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_claims_are_rescued_and_nothing_is_lost() {
    let Some(db) = pg().await else { return };
    enqueue_naps(&db, 80);
    let mut procs = Procs(vec![spawn(&db, &["run", "--no-execute", "--no-http"])]);
    procs.0.push(spawn(&db, &["worker", "--concurrency", "4"]));
    procs.0.push(spawn(&db, &["worker", "--concurrency", "4"]));
    // Let the first worker take claims, then kill it mid-attempt.
    let start = Instant::now();
    let victim = loop {
        let live = db.store.workers().list(Duration::from_secs(30)).await.unwrap();
        let busy = db
            .store
            .actions()
            .list_actions(&ActionFilter { status: Some(ActionStatus::Running), limit: 100, ..Default::default() })
            .await
            .unwrap();
        if live.len() == 2 && busy.len() >= 4 {
            break busy[0].claim.as_ref().unwrap().worker.clone();
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the workers never got busy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let pid: u32 = victim.split(':').nth(1).unwrap().parse().unwrap();
    let idx = procs.0.iter().position(|c| c.id() == pid).expect("the victim is one of ours");
    signal(&procs.0[idx], "-KILL");
    let _ = procs.0[idx].wait();
    procs.0.push(spawn(&db, &["worker", "--concurrency", "4"]));

    wait_until_done(&db, 80, Duration::from_secs(90)).await;
    let logs = db.store.history().logs(None, 10_000).await.unwrap();
    let rescued: Vec<_> = logs.iter().filter(|l| l.message.contains(&format!("worker {victim} is gone"))).collect();
    assert!(!rescued.is_empty(), "the leader rescued the killed worker's claims, naming it");
    let listed = db.store.workers().list(Duration::from_secs(1)).await.unwrap();
    assert!(listed.iter().any(|w| w.id == victim && !w.live), "the killed worker shows as dead: {listed:?}");
}

crate::backend_tests!(status_counts_workers_and_names_due_types_no_live_worker_serves);

async fn status_counts_workers_and_names_due_types_no_live_worker_serves(db: &TestDb) {
    let status = || {
        let o = run(bin(db.dir.path()).args(["--database-url", &db.url, "--json", "status"]));
        json(&o)
    };
    orchestrator::queue::enqueue(&db.store, &crate::support::noop("waiting"), 3).await.unwrap();
    let s = status();
    assert_eq!(s["workers"], serde_json::json!({"live": 0, "dead": 0}));
    let quiet = |s: &serde_json::Value| !s["reasons"].to_string().contains("no live worker");
    assert!(quiet(&s), "no executor has registered: nothing to judge (cron's run-once): {s}");

    crate::support::worker(&db.store, "webhooks-only", Duration::from_secs(30)).await;
    db.store.execute_unprepared("UPDATE workers SET types = 'WEBHOOK'").await.unwrap();
    let s = status();
    assert_eq!(s["workers"], serde_json::json!({"live": 1, "dead": 0}));
    assert!(s["reasons"].to_string().contains("due NOOP work waits and no live worker serves it"), "{s}");
    assert_ne!(s["liveness"], "healthy", "{s}");

    crate::support::worker(&db.store, "any", Duration::from_secs(30)).await;
    let s = status();
    assert_eq!(s["workers"], serde_json::json!({"live": 2, "dead": 0}));
    assert!(quiet(&s), "a worker of every type serves it: {s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_worker_repeats_nothing() {
    let Some(db) = pg().await else { return };
    let n = 120;
    enqueue_naps(&db, n);
    let mut procs = Procs(vec![spawn(&db, &["run", "--no-execute", "--no-http"])]);
    for _ in 0..3 {
        procs.0.push(spawn(&db, &["worker", "--concurrency", "4"]));
    }
    // SIGTERM each worker in turn mid-drain (grace 10 s, attempts 0.2 s), starting its
    // replacement first.
    for i in 1..=3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        procs.0.push(spawn(&db, &["worker", "--concurrency", "4"]));
        signal(&procs.0[i], "-TERM");
    }
    for i in 1..=3 {
        let start = Instant::now();
        while procs.0[i].try_wait().unwrap().is_none() {
            assert!(start.elapsed() < Duration::from_secs(20), "worker {i} did not stop on SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(procs.0[i].try_wait().unwrap().and_then(|s| s.code()), Some(0), "worker {i} exits 0");
    }
    wait_until_done(&db, n, Duration::from_secs(90)).await;
    let all = db.store.actions().list_actions(&ActionFilter { limit: 10_000, ..Default::default() }).await.unwrap();
    let again: Vec<_> = all.iter().filter(|a| a.attempts != 1).map(|a| (&a.idempotency_key, a.attempts)).collect();
    assert!(again.is_empty(), "every action ran exactly once: {again:?}");
    let logs = db.store.history().logs(None, 10_000).await.unwrap();
    assert!(logs.iter().all(|l| !l.message.starts_with("rescued")), "nothing was rescued");
    assert_eq!(logs.iter().filter(|l| l.message.contains(" succeeded (real")).count(), n, "one success row each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_past_its_ttl_wakes_to_find_its_writes_rejected() {
    let Some(db) = pg().await else { return };
    let n = 60;
    enqueue_naps(&db, n);
    let mut procs = Procs(vec![spawn(&db, &["run", "--no-execute", "--no-http"])]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    procs.0.push(spawn(&db, &["worker", "--concurrency", "4", "--listen", &addr.to_string()]));
    let victim_pid = procs.0[1].id();
    // Freeze the worker while it holds claims; its nap children finish meanwhile.
    let start = Instant::now();
    let frozen: Vec<i64> = loop {
        let running = db
            .store
            .actions()
            .list_actions(&ActionFilter { status: Some(ActionStatus::Running), limit: 100, ..Default::default() })
            .await
            .unwrap();
        let mine: Vec<i64> = running
            .iter()
            .filter(|a| a.claim.as_ref().is_some_and(|c| c.worker.contains(&format!(":{victim_pid}:"))))
            .map(|a| a.id)
            .collect();
        if !mine.is_empty() {
            signal(&procs.0[1], "-STOP");
            break mine;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the worker never claimed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Another worker drains everything, the frozen claims once the leader has rescued them.
    procs.0.push(spawn(&db, &["worker", "--concurrency", "4"]));
    wait_until_done(&db, n, Duration::from_secs(60)).await;
    signal(&procs.0[1], "-CONT");

    // Awake: its completions of the rescued attempts are all refused, and counted.
    let start = Instant::now();
    let rejected = loop {
        let m = crate::support::http::get(addr, "/metrics").body;
        let n: f64 = m
            .lines()
            .find(|l| l.starts_with("orchestrator_fenced_writes_rejected_total"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if n >= frozen.len() as f64 {
            break n;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "late writes not reported as rejected:\n{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(rejected >= frozen.len() as f64);
    for id in &frozen {
        let a = db.store.actions().action(*id).await.unwrap().unwrap();
        assert_eq!(a.status, ActionStatus::Success);
        assert!(a.attempts >= 2, "action {id} was rescued and run again: {a:?}");
        let logs = db.store.history().logs(Some(*id), 100).await.unwrap();
        assert_eq!(logs.iter().filter(|l| l.message.contains(" succeeded (")).count(), 1, "{logs:?}");
        assert!(logs.iter().any(|l| l.message.starts_with("rescued attempt")), "{logs:?}");
    }
    // It carries on under a new registration, never the lapsed one.
    let health = crate::support::http::wait_for(addr, "/health", Duration::from_secs(10), |r| r.status == 200);
    let now_id = health.json()["worker"].as_str().unwrap().to_string();
    let old_ids: Vec<String> = {
        let logs = db.store.history().logs(None, 10_000).await.unwrap();
        logs.iter()
            .filter(|l| frozen.contains(&l.action_id) && l.message.starts_with("rescued attempt"))
            .filter_map(|l| l.message.split("worker ").nth(1).map(|w| w.split(' ').next().unwrap_or("").to_string()))
            .collect()
    };
    assert!(
        !old_ids.is_empty() && old_ids.iter().all(|o| *o != now_id),
        "re-registered under a new id: {now_id} vs {old_ids:?}"
    );
}

crate::backend_tests!(the_throttle_is_in_the_database_and_every_claimer_honours_it);

async fn the_throttle_is_in_the_database_and_every_claimer_honours_it(db: &TestDb) {
    let term = crate::support::hold(&db.store, "leader").await;
    let fence = crate::support::fence(&term);
    for i in 0..6 {
        orchestrator::queue::enqueue(&db.store, &crate::support::noop(&format!("t{i}")), 3).await.unwrap();
    }
    let a = crate::support::worker(&db.store, "a", Duration::from_secs(30)).await;
    let b = crate::support::worker(&db.store, "b", Duration::from_secs(30)).await;
    let later = orchestrator::model::now() + chrono::Duration::seconds(60);
    db.store.flags().set_throttle(&fence, Some(3), later).await.unwrap();
    assert_eq!(db.store.actions().claim(&a, 2).await.unwrap().len(), 2);
    assert_eq!(db.store.actions().claim(&b, 10).await.unwrap().len(), 1, "the throttle is shared by every claimer");
    assert!(db.store.actions().claim(&a, 10).await.unwrap().is_empty(), "spent");

    // What a claim was granted and found no work for goes back.
    db.store.flags().set_throttle(&fence, Some(10), later).await.unwrap();
    assert_eq!(db.store.actions().claim(&a, 10).await.unwrap().len(), 3, "the rest of the queue");
    for i in 0..12 {
        orchestrator::queue::enqueue(&db.store, &crate::support::noop(&format!("u{i}")), 3).await.unwrap();
    }
    assert_eq!(db.store.actions().claim(&b, 20).await.unwrap().len(), 7, "10 granted, 3 used, 7 left");

    // Cleared (each tick decides afresh) or expired: no cap.
    db.store
        .flags()
        .set_throttle(&fence, Some(1), orchestrator::model::now() - chrono::Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(db.store.actions().claim(&a, 2).await.unwrap().len(), 2, "an expired throttle caps nothing");
    db.store.flags().set_throttle(&fence, None, later).await.unwrap();
    assert_eq!(db.store.actions().claim(&a, 10).await.unwrap().len(), 3);

    // Only the lease holder sets it, or clears it (as each tick does before its rules decide).
    let stale = orchestrator::store::Fence { epoch: term.epoch + 1, ..fence.clone() };
    assert!(db.store.flags().set_throttle(&stale, Some(1), later).await.is_err());
    orchestrator::queue::enqueue(&db.store, &crate::support::noop("v"), 3).await.unwrap();
    db.store.flags().set_throttle(&fence, Some(0), later).await.unwrap();
    db.store.flags().clear_throttle(&stale).await.unwrap();
    assert!(db.store.actions().claim(&a, 1).await.unwrap().is_empty(), "a stale fence clears nothing");
    db.store.flags().clear_throttle(&fence).await.unwrap();
    db.store.flags().clear_throttle(&fence).await.unwrap();
    assert_eq!(db.store.actions().claim(&a, 1).await.unwrap().len(), 1, "cleared by the holder");

    // Claimers racing on one throttle never exceed it together.
    for i in 0..200 {
        orchestrator::queue::enqueue(&db.store, &crate::support::noop(&format!("r{i}")), 3).await.unwrap();
    }
    db.store.flags().set_throttle(&crate::support::fence(&term), Some(50), later).await.unwrap();
    let other = db.another_store().await;
    let race = |store: orchestrator::store::Store, c: orchestrator::store::Claimer| {
        tokio::spawn(async move {
            let mut got = 0;
            for _ in 0..20 {
                got += store.actions().claim(&c, 7).await.unwrap().len();
            }
            got
        })
    };
    let (x, y) = tokio::join!(race(db.store.clone(), a.clone()), race(other, b.clone()));
    assert_eq!(x.unwrap() + y.unwrap(), 50, "exactly the throttle's 50 started, across both claimers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_wakes_on_notify_not_on_its_poll() {
    let Some(db) = pg().await else { return };
    // A poll so long that only a notification can explain a quick start.
    let slow_poll = CONFIG.replace("poll_seconds: 0.1", "poll_seconds: 60");
    std::fs::write(db.dir.path().join("o.yaml"), slow_poll).unwrap();
    let mut procs = Procs(vec![spawn(&db, &["worker", "--concurrency", "2"])]);
    let start = Instant::now();
    while db.store.workers().list(Duration::from_secs(30)).await.unwrap().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(20), "the worker never registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let enqueued = Instant::now();
    orchestrator::queue::enqueue(&db.store, &crate::support::noop("now"), 3).await.unwrap();
    wait_until_done(&db, 1, Duration::from_secs(10)).await;
    let woke_in = enqueued.elapsed();
    assert!(woke_in < Duration::from_secs(5), "an enqueue wakes the worker: {woke_in:?}");

    // Work that becomes due by time: the leader's tick notifies.
    procs.0.push(spawn(&db, &["run", "--no-execute", "--no-http"]));
    let mut later = crate::support::noop("later");
    later.not_before = Some(orchestrator::model::now() + chrono::Duration::seconds(2));
    orchestrator::queue::enqueue(&db.store, &later, 3).await.unwrap();
    let due_at = Instant::now() + Duration::from_secs(2);
    wait_until_done(&db, 2, Duration::from_secs(20)).await;
    let after_due = Instant::now().saturating_duration_since(due_at);
    assert!(after_due < Duration::from_secs(5), "the leader's tick woke the worker {after_due:?} after it was due");
}

/// `postgres_listen: false` (for a pooler in transaction mode) opens no `LISTEN`: the waiter
/// looks for new work instead; by default it listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_listen_false_opens_no_listen() {
    let Some(db) = pg().await else { return };
    assert!(db.store.notify().waiter().await.listens(), "listens by default");
    let config = orchestrator::config::Config { postgres_listen: false, ..db.config() };
    let quiet = orchestrator::store::Store::open(&db.url, &orchestrator::runtime::startup::store_options(&config))
        .await
        .unwrap();
    assert!(quiet.notify().work_listener().await.unwrap().is_none());
    assert!(!quiet.notify().waiter().await.listens(), "no LISTEN with postgres_listen: false");
    quiet.close().await.ok();
}

/// `kill -9` of random workers during a drain, one worker `SIGSTOP`ped past its TTL and woken,
/// and the leader killed once, with every side effect counted at a recording server. Sizes:
/// `WORKERS_CHAOS_ACTIONS` (default 300; the full run: 2000) and `WORKERS_CHAOS_KILLS`
/// (default 5; the full run: 20).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_chaos_loses_nothing_and_repeats_only_what_a_kill_cut_short() {
    let Some(db) = pg().await else { return };
    let num = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let (n, kills) = (num("WORKERS_CHAOS_ACTIONS", 300), num("WORKERS_CHAOS_KILLS", 5));
    let sink = crate::support::peer::Peer::answering(
        crate::support::peer::Reply::status(200).delay(Duration::from_millis(30)),
    )
    .await;
    let config = format!(
        "lease_ttl_seconds: 1\nheartbeat_seconds: 0.25\nmax_attempts: 10\n{CONFIG}  webhook:\n    targets:\n      sink:\n        url: {}\n",
        sink.url("/hook")
    );
    std::fs::write(db.dir.path().join("o.yaml"), config).unwrap();
    let lines: String = (0..n)
        .map(|i| format!("{{\"action_type\":\"WEBHOOK\",\"payload\":{{\"target\":\"sink\",\"body\":{{\"i\":{i}}}}},\"idempotency_key\":\"c{i}\"}}\n"))
        .collect();
    assert_eq!(orchestrator::queue::enqueue_jsonl(&db.store, lines.as_bytes(), 10).await.unwrap().created, n as u64);
    db.store
        .flags()
        .set_flags(orchestrator::store::FlagChange { proof_mode: Some(false), ..Default::default() })
        .await
        .unwrap();

    let worker_args = ["worker", "--concurrency", "4"];
    let mut leader = Procs(vec![spawn(&db, &["run", "--no-execute", "--no-http"])]);
    let mut workers = Procs((0..3).map(|_| spawn(&db, &worker_args)).collect());
    let started = Instant::now();
    let done = |db: &TestDb| {
        let store = db.store.clone();
        async move {
            let all =
                store.actions().list_actions(&ActionFilter { limit: 100_000, ..Default::default() }).await.unwrap();
            all.iter().filter(|a| a.status == ActionStatus::Success).count()
        }
    };
    let mut killed_pids = Vec::new();
    let mut stopped: Option<u32> = None;
    for k in 0..kills {
        // Spread the kills over the first two thirds of the drain.
        let mark = (n * 2 / 3) * (k + 1) / (kills + 1);
        while done(&db).await < mark {
            assert!(started.elapsed() < Duration::from_secs(300), "the drain stalled before kill {k}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let victim = fastrand::usize(..workers.0.len());
        let mut child = workers.0.remove(victim);
        killed_pids.push(child.id());
        child.kill().unwrap();
        child.wait().unwrap();
        workers.0.push(spawn(&db, &worker_args));
        if k == kills / 2 {
            // The leader dies once; a new one takes over after its lease runs out.
            leader.0[0].kill().unwrap();
            leader.0[0].wait().unwrap();
            leader.0[0] = spawn(&db, &["run", "--no-execute", "--no-http"]);
            // And one worker freezes past its TTL, to wake once its claims were rescued.
            let frozen = &workers.0[0];
            signal(frozen, "-STOP");
            stopped = Some(frozen.id());
        }
        if k == kills / 2 + 1
            && let Some(pid) = stopped
            && let Some(c) = workers.0.iter().find(|c| c.id() == pid)
        {
            tokio::time::sleep(Duration::from_secs(2)).await;
            signal(c, "-CONT");
        }
    }
    if let Some(pid) = stopped
        && let Some(c) = workers.0.iter().find(|c| c.id() == pid)
    {
        signal(c, "-CONT");
    }
    wait_until_done(&db, n, Duration::from_secs(600)).await;
    let drained_in = started.elapsed();

    // Nothing lost, nothing stuck; every success row written by the attempt's own claimant.
    let all = db.store.actions().list_actions(&ActionFilter { limit: 100_000, ..Default::default() }).await.unwrap();
    assert_eq!(all.len(), n);
    let logs = db.store.history().logs(None, 1_000_000).await.unwrap();
    let mut rescued_by_action: std::collections::BTreeMap<i64, usize> = Default::default();
    for l in logs.iter().filter(|l| l.message.starts_with("rescued attempt")) {
        *rescued_by_action.entry(l.action_id).or_default() += 1;
    }
    for a in &all {
        let ok: Vec<_> = logs.iter().filter(|l| l.action_id == a.id && l.message.contains(" succeeded (")).collect();
        assert_eq!(ok.len(), 1, "{}: one success row: {ok:?}", a.idempotency_key);
        let claimant = &a.claim.as_ref().expect("a finished action keeps its last claim").worker;
        assert!(ok[0].message.ends_with(&format!("[worker {claimant}]")), "{}: {}", a.idempotency_key, ok[0].message);
    }
    // Side effects: one request per action, plus at most one per attempt cut short (rescued).
    let mut sent: std::collections::BTreeMap<String, usize> = Default::default();
    for r in sink.requests() {
        let key =
            r.header(orchestrator::adapters::http::IDEMPOTENCY_HEADER).expect("the idempotency header").to_string();
        *sent.entry(key).or_default() += 1;
    }
    let mut repeats = 0;
    for a in &all {
        let got = sent.get(&a.idempotency_key).copied().unwrap_or(0);
        let rescued = rescued_by_action.get(&a.id).copied().unwrap_or(0);
        assert!(got >= 1, "{}: no request reached the recorder", a.idempotency_key);
        assert!(got <= 1 + rescued, "{}: {got} requests but {rescued} rescued attempt(s)", a.idempotency_key);
        assert_eq!(a.attempts as usize, 1 + rescued, "{}: every attempt but the last was rescued", a.idempotency_key);
        repeats += got - 1;
    }
    let rescues: usize = rescued_by_action.values().sum();
    eprintln!(
        "workers chaos: {n} actions, {kills} kill -9 of workers, the leader killed once, one worker stopped past its \
         TTL; drained in {drained_in:.1?}; {rescues} attempt(s) rescued, {repeats} repeated request(s); 0 lost, 0 stuck"
    );
}

crate::backend_tests!(an_attempt_runs_in_the_mode_it_was_claimed_in_and_enforced_proof_holds);

async fn an_attempt_runs_in_the_mode_it_was_claimed_in_and_enforced_proof_holds(db: &TestDb) {
    let mode = |proof: bool| orchestrator::store::FlagChange { proof_mode: Some(proof), ..Default::default() };
    for i in 0..3 {
        orchestrator::queue::enqueue(&db.store, &crate::support::noop(&format!("m{i}")), 3).await.unwrap();
    }
    let plain = crate::support::worker(&db.store, "plain", Duration::from_secs(30)).await;
    let enforced = orchestrator::store::Claimer {
        worker: "enforced".into(),
        proof_enforced: true,
        ..crate::support::worker(&db.store, "enforced", Duration::from_secs(30)).await
    };
    db.store.flags().set_flags(mode(false)).await.unwrap();
    let real = db.store.actions().claim(&plain, 1).await.unwrap();
    assert!(!real[0].proof && !real[0].action.claim.as_ref().unwrap().proof, "real, as the flag says");
    let held = db.store.actions().claim(&enforced, 1).await.unwrap();
    assert!(held[0].proof, "a worker configured for enforced proof claims in proof whatever the flag");
    db.store.flags().set_flags(mode(true)).await.unwrap();
    let proof = db.store.actions().claim(&plain, 1).await.unwrap();
    assert!(proof[0].proof, "flipping proof on holds from the next claim");
    assert!(
        !db.store.actions().action(real[0].action.id).await.unwrap().unwrap().claim.unwrap().proof,
        "claimed real, stays real"
    );
}

crate::backend_tests!(run_runs_an_enqueue_at_once_not_at_its_next_tick, the_next_tick_notes_what_ran_between_ticks);

/// `run` with a minute between ticks: what the CLI enqueues (another process: a `NOTIFY`, or
/// the newest id on SQLite) runs within seconds, with no tick of its own.
async fn run_runs_an_enqueue_at_once_not_at_its_next_tick(db: &TestDb) {
    std::fs::write(db.dir.path().join("o.yaml"), "tick_interval_seconds: 60\n").unwrap();
    let _procs = Procs(vec![spawn(db, &["run", "--no-http"])]);
    let start = Instant::now();
    while db.store.ledger().recent_ticks(10).await.unwrap().iter().all(|t| t.finished_at.is_none()) {
        assert!(start.elapsed() < Duration::from_secs(30), "the first tick never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for key in ["a", "b", "c"] {
        let args = ["--database-url", &db.url, "--config", "o.yaml", "--json", "enqueue", "NOOP", "--key", key];
        let o = run(bin(db.dir.path()).args(args));
        assert!(o.status.success(), "{}", stderr(&o));
        let id = json(&o)["id"].as_i64().unwrap();
        let start = Instant::now();
        loop {
            let status = db.store.actions().action(id).await.unwrap().unwrap().status;
            if status == ActionStatus::Success {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "action {key} still {status} (the next tick is a minute away)"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let logs = db.store.history().logs(Some(id), 10).await.unwrap();
        assert_eq!(logs.iter().map(|l| l.tick_id).collect::<Vec<_>>(), [None], "ran between ticks");
    }
    assert_eq!(db.store.ledger().recent_ticks(10).await.unwrap().len(), 1, "no tick ran them");
}

/// The tick after work ran between ticks says so in its note: what `ticks` shows accounts for
/// every attempt of the leader.
async fn the_next_tick_notes_what_ran_between_ticks(db: &TestDb) {
    std::fs::write(db.dir.path().join("o.yaml"), "tick_interval_seconds: 2\n").unwrap();
    let _procs = Procs(vec![spawn(db, &["run", "--no-http"])]);
    let start = Instant::now();
    while db.store.ledger().recent_ticks(10).await.unwrap().iter().all(|t| t.finished_at.is_none()) {
        assert!(start.elapsed() < Duration::from_secs(30), "the first tick never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let args = ["--database-url", &db.url, "--config", "o.yaml", "enqueue", "NOOP", "--key", "between"];
    let o = run(bin(db.dir.path()).args(args));
    assert!(o.status.success(), "{}", stderr(&o));
    let start = Instant::now();
    let note = loop {
        let ticks = db.store.ledger().recent_ticks(10).await.unwrap();
        if let Some(n) = ticks.iter().filter_map(|t| t.notes.clone()).find(|n| n.contains("since the last tick")) {
            break n;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no tick noted it: {ticks:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(note.contains("1 attempt(s) ran since the last tick as work arrived (1 succeeded)"), "{note}");
}
