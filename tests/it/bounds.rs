//! Every input is bounded (issue 16). What one writer stores every reader can read back: the
//! one validation of stored JSON (`queue::validate`) at its limits from both sides, through the
//! rule writers (`enqueue`, `state`) and the queue, and a property test that every accepted
//! value round-trips through the store on both backends. Decision floods bounded per rule per
//! tick; slow HTTP clients bounded by the read timeouts and the connection cap; a command's
//! slot values bounded to one argument. (Per-type limits are `type_limits.rs`.)

use std::path::PathBuf;

use orchestrator::config::Config;
use orchestrator::model::{ActionStatus, DecisionOutcome};
use orchestrator::queue::{self, EnqueueRequest, MAX_JSON_DEPTH};
use orchestrator::rules::{MAX_DECISIONS_PER_RULE, MAX_INVALID_PER_RULE, RuleSet};
use orchestrator::store::ActionFilter;
use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestRunner};
use serde_json::{Value, json};

use crate::backend_tests;
use crate::support::TestDb;
use crate::support::ran;

backend_tests!(
    rule_writers_are_held_to_the_stored_value_limits,
    every_value_validation_accepts_round_trips_through_the_store,
    a_decision_flood_is_bounded_per_rule_and_counted,
);

fn rule_set(config: &Config, rules: &[(&str, &str)]) -> RuleSet {
    let sources = rules.iter().map(|(n, s)| (PathBuf::from(format!("rules/{n}.rhai")), s.to_string())).collect();
    RuleSet::from_sources(sources, &config.rules).unwrap_or_else(|d| panic!("rules do not compile: {d:?}"))
}

/// A Rhai map nested `depth` levels deep (the top level counts 1), built in a loop.
fn rhai_nested(depth: usize) -> String {
    format!("let v = #{{}}; for i in 1..{depth} {{ v = #{{a: v}}; }}")
}

/// A rule enqueues a payload, and keeps a state, at the depth limit and one level over it. The
/// ones at the limit are stored and read back; the ones over it are refused with a diagnostic
/// naming the field; nothing stops the other rules or the actions.
async fn rule_writers_are_held_to_the_stored_value_limits(db: &TestDb) {
    let config = db.config();
    let engine = db.engine(config.clone());
    let at = MAX_JSON_DEPTH;
    let over = MAX_JSON_DEPTH + 1;
    let rules = [
        (
            "a_enqueue_at",
            format!(
                "{}\nif state.done == () {{ state.done = true; [enqueue(\"NOOP\", v, \"deep-at\", \"r\")] }}",
                rhai_nested(at)
            ),
        ),
        ("b_enqueue_over", format!("{}\n[enqueue(\"NOOP\", v, \"deep-over\", \"r\")]", rhai_nested(over))),
        // state itself is the top level, so a value nested `at - 1` deep inside it is at the limit.
        ("c_state_at", format!("{}\nstate.v = v;", rhai_nested(at - 1))),
        ("d_state_over", format!("{}\nstate.v = v;", rhai_nested(over - 1))),
        ("e_good", "[alert(\"info\", \"still deciding\")]".to_string()),
    ];
    let rules: Vec<(&str, &str)> = rules.iter().map(|(n, s)| (*n, s.as_str())).collect();
    engine.decider().set_rules(rule_set(&config, &rules));
    queue::enqueue(&db.store, &crate::support::noop("plain"), 3).await.unwrap();

    let r = ran(&engine).await;
    assert!(
        r.notes.contains(
            "rule b_enqueue_over: invalid decision: decision #1: enqueue payload is nested more than 64 levels deep"
        ),
        "{}",
        r.notes
    );
    assert!(
        r.notes.contains("rule d_state_over failed: rules/d_state_over.rhai:0:0: state cannot be saved: state is nested more than 64 levels deep"),
        "{}",
        r.notes
    );
    let rows = db.store.decisions().list(r.tick_id).await.unwrap();
    let outcome = |rule: &str| rows.iter().find(|d| d.rule == rule).map(|d| d.outcome.clone());
    assert_eq!(outcome("a_enqueue_at"), Some(DecisionOutcome::Applied));
    assert_eq!(outcome("e_good"), Some(DecisionOutcome::Applied));
    assert_eq!(outcome("b_enqueue_over"), None);

    // The stored payload and state read back; the next tick runs everything.
    let actions = db.store.actions().list_actions(&ActionFilter { limit: 100, ..Default::default() }).await.unwrap();
    let deep = actions.iter().find(|a| a.idempotency_key == "deep-at").expect("the action at the limit is stored");
    assert_eq!(queue::json_depth(&deep.payload, usize::MAX), at);
    assert!(!actions.iter().any(|a| a.idempotency_key == "deep-over"));
    let states = db.store.decisions().rule_states().await.unwrap();
    let c: Value = serde_json::from_str(&states["c_state_at"]).unwrap();
    assert_eq!(queue::json_depth(&c, usize::MAX), at);
    assert!(!states.contains_key("d_state_over"), "a state over the limit is never written");

    let r2 = ran(&engine).await;
    assert!(!r2.notes.contains("starting empty"), "every stored state reads back: {}", r2.notes);
    assert!(r2.notes.contains("rule d_state_over failed"), "refused again, visibly, every tick: {}", r2.notes);
    let done = db.store.actions().list_actions(&ActionFilter { limit: 100, ..Default::default() }).await.unwrap();
    assert!(done.iter().all(|a| a.status == ActionStatus::Success), "{done:?}");
    let m = engine.metrics().render();
    assert!(m.contains("orchestrator_rule_errors_total{rule=\"d_state_over\"} 2"), "{m}");
}

/// Any JSON value, nested up to a little past the limit.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        "[\u{0}-\u{1f}\"\\\\\u{7f}\u{fffd}\u{1f600}]{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(72, 400, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A value nested exactly `depth` levels, by wrapping `v` (arrays and objects alternate).
fn wrap(mut v: Value, depth: usize) -> Value {
    for i in 0..depth {
        v = if i % 2 == 0 { json!([v]) } else { json!({ "k": v }) };
    }
    v
}

async fn every_value_validation_accepts_round_trips_through_the_store(db: &TestDb) {
    let cases: u32 = std::env::var("LIMITS_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let mut runner = TestRunner::new(PropConfig { cases, failure_persistence: None, ..PropConfig::default() });
    let strategy = (any_json(), 0usize..MAX_JSON_DEPTH + 2);
    let store = db.store.clone();
    // Rule state is written by the fenced decide record: hold the lease to write it.
    let held =
        match store.lease().acquire_lease("orchestrator", "limits-test", std::time::Duration::from_secs(600)).await {
            Ok(orchestrator::store::Acquired::Held(row)) => row,
            other => panic!("lease: {other:?}"),
        };
    let fence = orchestrator::store::Fence { lease_name: "orchestrator".into(), epoch: held.epoch, tick_id: None };
    let counter = std::sync::atomic::AtomicU64::new(0);
    let (accepted, refused) = (std::sync::atomic::AtomicU64::new(0), std::sync::atomic::AtomicU64::new(0));
    let result = runner.run(&strategy, |(v, extra)| {
        // Near the depth limit from both sides, and a top-level object as payloads must be.
        let payload = json!({ "v": wrap(v, extra) });
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let req = EnqueueRequest {
            action_type: "NOOP".into(),
            payload: payload.clone(),
            idempotency_key: Some(format!("rt-{n}")),
            priority: 0,
            not_before: None,
            max_attempts: None,
            expires_at: None,
            traceparent: None,
            require_approval: false,
        };
        let valid = queue::validate("payload", &payload, queue::MAX_PAYLOAD_BYTES);
        let state_text = queue::validate("state", &payload, queue::MAX_STATE_BYTES).ok();
        let (stored, state) = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                let stored = match queue::enqueue(&store, &req, 3).await {
                    Ok(o) => Some(store.actions().action(o.id).await.expect("read back").expect("the row exists")),
                    Err(queue::QueueError::Invalid(_)) => None,
                    Err(e) => panic!("store error: {e}"),
                };
                // The same value as a rule's state, through the fenced decide record.
                let state = match &state_text {
                    Some(text) => {
                        let rec = orchestrator::store::DecideRecord {
                            states: [("round_trip".to_string(), text.clone())].into_iter().collect(),
                            ..Default::default()
                        };
                        store.decisions().record_decide(&fence, &rec).await.expect("state written");
                        let back = store.decisions().rule_states().await.expect("states read")["round_trip"].clone();
                        Some(serde_json::from_str::<Value>(&back).expect("a stored state parses"))
                    }
                    None => None,
                };
                (stored, state)
            })
        });
        if let Some(state) = state {
            prop_assert_eq!(&state, &payload, "state read back differs");
        }
        match (valid, stored) {
            (Ok(_), Some(action)) => {
                accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                prop_assert_eq!(&action.payload, &payload, "read back differs");
            }
            (Err(_), None) => {
                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            (valid, stored) => {
                prop_assert!(false, "validate said {:?} but enqueue stored {:?}", valid, stored.is_some());
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!(
        "round trip: {} accepted and read back equal, {} refused by validation",
        accepted.into_inner(),
        refused.into_inner()
    );
}

/// A rule returning 1,000 decisions (and one returning 16,000 invalid ones) costs a bounded
/// number of rows and notes, and one note and a metric for the rest.
async fn a_decision_flood_is_bounded_per_rule_and_counted(db: &TestDb) {
    let mut config = db.config();
    // The sandbox counts a value's whole size (its maps and strings too): let a flood through.
    config.rules.max_array_size = 1 << 30;
    config.rules.max_map_size = 1 << 30;
    config.rules.max_string_size = 1 << 30;
    config.rules.max_operations = 100_000_000;
    config.rules.budget = std::time::Duration::from_secs(30);
    let engine = db.engine(config.clone());
    engine.decider().set_rules(rule_set(
        &config,
        &[
            // The sandbox re-measures the array at each push, so 1,000 keeps the test quick; the bound
            // is the same at 16,000 (see `junk`).
            ("flood", "let out = []; for i in 0..1000 { out.push(alert(\"info\", \"flood\")); } out"),
            ("junk", "let out = []; for i in 0..16000 { out.push(#{kind: \"nonsense\"}); } out"),
        ],
    ));
    let r = ran(&engine).await;
    let rows = db.store.decisions().list(r.tick_id).await.unwrap();
    assert_eq!(rows.len(), MAX_DECISIONS_PER_RULE, "one rule's decisions are bounded: {}", r.notes);
    let notes: Vec<&str> = r.notes.split("; ").collect();
    let invalid = notes.iter().filter(|n| n.contains("invalid decision")).count();
    assert!(invalid <= MAX_INVALID_PER_RULE, "{invalid} invalid-decision notes");
    assert!(
        r.notes.contains(&format!("rule flood: {} more decision(s) not considered", 1_000 - MAX_DECISIONS_PER_RULE)),
        "{}",
        r.notes
    );
    assert!(
        r.notes.contains(&format!("rule junk: {} more decision(s) not considered", 16_000 - MAX_INVALID_PER_RULE)),
        "{}",
        r.notes
    );
    assert!(r.notes.len() < 8_000, "the ledger note stays small: {} bytes", r.notes.len());
    let m = engine.metrics().render();
    assert!(
        m.contains(&format!(
            "orchestrator_decisions_overflow_total{{rule=\"flood\"}} {}",
            1_000 - MAX_DECISIONS_PER_RULE
        )),
        "{m}"
    );
}

/// 200 clients that open a connection and send half a request head (and never the rest) do
/// not keep `/health` from answering: it answers within the header read timeout plus a second,
/// and the server closes the slow connections once the timeout passes. A request whose body
/// never comes gets 408 after the body read timeout.
#[test]
fn health_answers_while_200_slow_clients_hold_connections() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = format!("sqlite:{}", d.join("o.db").display());
    let header_timeout = Duration::from_secs(2);
    let mut cmd = crate::support::bin(d);
    cmd.args(["--database-url", &url, "--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .env("ORCHESTRATOR_HTTP", "{header_read_timeout_seconds: 2, body_read_timeout_seconds: 2}");
    let (mut child, mut logs, addr) = crate::support::process::spawn_server(&mut cmd);
    crate::support::http::wait_for(addr, "/health/live", Duration::from_secs(30), |r| r.status == 200);

    let mut slow: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
            s.write_all(b"GET /health HTTP/1.1\r\nHost: slow\r\n").expect("half a request head");
            s
        })
        .collect();
    let started = Instant::now();
    let r = crate::support::http::request(addr, "GET", "/health", &[], None).expect("/health answers");
    let took = started.elapsed();
    assert!(r.status == 200 || r.status == 503, "{}", r.status);
    assert!(took <= header_timeout + Duration::from_secs(1), "/health took {took:?} beside 200 slow clients");

    // The slow ones are closed by the server once the header timeout has passed.
    let deadline = Instant::now() + header_timeout + Duration::from_secs(5);
    let mut closed = 0;
    for s in &mut slow {
        s.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10))))
            .unwrap();
        let mut buf = [0u8; 1024];
        // EOF, a reset, or a 408 followed by EOF: anything but a timeout means the server let go.
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => {
                    if Instant::now() < deadline {
                        closed += 1;
                    }
                    break;
                }
                Ok(_) => continue,
            }
        }
    }
    assert_eq!(closed, 200, "every slow connection is closed after the header timeout");

    // Headers, then a body that never comes: 408 after the body timeout.
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.write_all(b"POST /api/flags HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 100\r\n\r\n{").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(
        crate::support::process::terminate(&mut child, Duration::from_secs(15)).code(),
        Some(0),
        "{}",
        logs.drain().join("\n")
    );
}

/// A slot value cannot become an option of the program (`--output=FILE` made `sort` write a
/// file) unless the entry opts in for that slot, and a value is never expanded as a template.
#[tokio::test]
async fn command_slot_values_are_neither_options_nor_templates() {
    use crate::support::command::{action, adapter, spec};
    use orchestrator::adapters::{Adapter, AdapterError, ExecContext};
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("written-by-sort");
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "b\na\n").unwrap();
    let a = adapter(vec![
        spec("sort", "/usr/bin/sort", &["{file}"], None),
        spec("echo", "/bin/echo", &["{a}", "{b}"], None),
        {
            let mut s = spec("sort_opts", "/usr/bin/sort", &["{opt}", "--", "{file}"], None);
            s.allow_dash = vec!["opt".into()];
            s
        },
    ]);
    let ctx = ExecContext::new(None, 1);
    let hostile = json!({"command": "sort", "args": {"file": format!("--output={}", victim.display())}});
    match a.execute(&ctx, &action("inject", hostile)).await {
        Err(AdapterError::Permanent { message }) => {
            assert!(message.contains("args.file begins with '-'") && message.contains("allow_dash"), "{message}")
        }
        other => panic!("expected a permanent refusal, got {other:?}"),
    }
    assert!(!victim.exists(), "sort wrote the file named by the payload");

    // Opted in for one slot: that slot may carry an option, the others still may not.
    let ok = json!({"command": "sort_opts", "args": {"opt": "-r", "file": input}});
    a.execute(&ctx, &action("opt", ok)).await.expect("an allowed option runs");
    let bad = json!({"command": "sort_opts", "args": {"opt": "-r", "file": "-o/tmp/x"}});
    assert!(matches!(a.execute(&ctx, &action("opt2", bad)).await, Err(AdapterError::Permanent { .. })));

    // A value holding another slot's name is passed as is.
    let out =
        a.execute(&ctx, &action("tpl", json!({"command": "echo", "args": {"a": "{b}", "b": "x"}}))).await.unwrap();
    let record = ctx.take_attached().expect("the run is recorded");
    let text = String::from_utf8_lossy(&record.body).into_owned();
    assert!(text.contains("{b} x"), "{text} / {}", out.message);
}

/// With `http.max_connections` held by slow clients, a new client waits in the backlog (it is
/// not refused) and is served once the header timeout frees a slot: within the header timeout
/// plus a second.
#[test]
fn a_full_connection_cap_serves_the_next_client_after_the_header_timeout() {
    use std::io::Write;
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = format!("sqlite:{}", d.join("o.db").display());
    let mut cmd = crate::support::bin(d);
    cmd.args(["--database-url", &url, "--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .env("ORCHESTRATOR_HTTP", "{header_read_timeout_seconds: 1.5, max_connections: 4}");
    let (mut child, mut logs, addr) = crate::support::process::spawn_server(&mut cmd);
    crate::support::http::wait_for(addr, "/health/live", Duration::from_secs(30), |r| r.status == 200);
    // Let the poll's own connection close, so that the four below take every slot.
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let _slow: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
            s.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
            s
        })
        .collect();
    let r = crate::support::http::request(addr, "GET", "/health/live", &[], None).expect("served after the timeout");
    let took = started.elapsed();
    assert_eq!(r.status, 200);
    assert!(took >= Duration::from_millis(1000), "served after {took:?}: the cap did not hold");
    assert!(took <= Duration::from_millis(2500), "served after {took:?}: more than the header timeout + 1 s");
    assert_eq!(
        crate::support::process::terminate(&mut child, Duration::from_secs(15)).code(),
        Some(0),
        "{}",
        logs.drain().join("\n")
    );
}
