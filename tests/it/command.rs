//! The COMMAND adapter against real processes, called directly (no store): /bin/true,
//! /bin/false, a sleep past its timeout whose whole process group must be gone afterwards, a
//! program that is not allowlisted, and argument slots that are filled, never interpreted.

use std::time::{Duration, Instant};

use crate::support::command::{action, adapter, assert_pids_gone, spec};
use orchestrator::adapters::{Adapter, AdapterError, ExecContext};
use serde_json::json;

#[tokio::test]
async fn true_succeeds_and_false_is_retryable() {
    let a = adapter(vec![spec("yes", "/bin/true", &[], None), spec("no", "/bin/false", &[], None)]);
    let ctx = ExecContext::new(None, 1);
    let ok = a.execute(&ctx, &action("t", json!({"command": "yes"}))).await.unwrap();
    assert!(ok.message.contains("exit status 0"), "{}", ok.message);
    assert!(ctx.take_attached().is_some(), "the run is recorded");
    match a.execute(&ctx, &action("f", json!({"command": "no"}))).await {
        Err(AdapterError::Retryable { message, .. }) => assert!(message.contains("exit status 1"), "{message}"),
        other => panic!("expected a retryable failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pids");
    let script = "sleep 30 & echo $! > \"$0\"; echo $$ >> \"$0\"; wait";
    let a = adapter(vec![spec("hang", "/bin/sh", &["-c", script, "{pidfile}"], Some(Duration::from_secs(1)))]);
    let started = Instant::now();
    let r = a
        .execute(&ExecContext::new(None, 1), &action("h", json!({"command": "hang", "args": {"pidfile": pidfile}})))
        .await;
    assert!(started.elapsed() < Duration::from_secs(5), "it did not wait for the sleep");
    match r {
        Err(AdapterError::Retryable { message, .. }) => {
            assert!(message.contains("timed out after 1.0s; its process group was killed"), "{message}")
        }
        other => panic!("expected a retryable timeout, got {other:?}"),
    }
    assert_pids_gone(&pidfile).await;
}

#[tokio::test]
async fn only_allowlisted_programs_with_declared_slots_run() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let a = adapter(vec![spec("touch", "/usr/bin/touch", &["{path}"], None)]);
    let ctx = ExecContext::new(None, 1);
    let cases = [
        (json!({"command": "rm", "args": {"path": marker}}), "'rm' is not allowlisted"),
        (json!({"command": "/usr/bin/touch", "args": {"path": marker}}), "is not allowlisted"),
        (json!({"command": "touch"}), "needs args.path"),
        (json!({"command": "touch", "args": {"path": marker, "extra": "-r"}}), "no argument slot '{extra}'"),
        (json!({"command": "touch", "args": {"path": [1]}}), "args.path must be a string"),
        (json!({"command": "touch", "program": "/bin/sh"}), "unknown field 'program'"),
    ];
    for (payload, want) in cases {
        assert!(a.render_proof(&action("x", payload.clone())).is_err(), "proof refuses {payload}");
        match a.execute(&ctx, &action("x", payload.clone())).await {
            Err(AdapterError::Permanent { message }) => assert!(message.contains(want), "{payload}: {message}"),
            other => panic!("{payload}: expected a permanent refusal, got {other:?}"),
        }
    }
    assert!(!marker.exists(), "nothing ran");
    let proof = a.render_proof(&action("ok", json!({"command": "touch", "args": {"path": marker}}))).unwrap().unwrap();
    let text = String::from_utf8(proof.body).unwrap();
    assert!(text.contains("program: /usr/bin/touch") && text.contains(&marker.display().to_string()), "{text}");
    assert!(!marker.exists(), "render_proof runs nothing");
    a.execute(&ctx, &action("ok", json!({"command": "touch", "args": {"path": marker}}))).await.unwrap();
    assert!(marker.exists());
}

#[tokio::test]
async fn a_missing_program_is_permanent_and_output_is_capped() {
    let a = adapter(vec![
        spec("ghost", "/nonexistent/program", &[], None),
        spec("loud", "/bin/sh", &["-c", "head -c 200000 /dev/zero | tr '\\0' x"], None),
    ]);
    let ctx = ExecContext::new(None, 1);
    match a.execute(&ctx, &action("g", json!({"command": "ghost"}))).await {
        Err(AdapterError::Permanent { message }) => assert!(message.contains("cannot start"), "{message}"),
        other => panic!("expected permanent, got {other:?}"),
    }
    a.execute(&ctx, &action("l", json!({"command": "loud"}))).await.unwrap();
    let record = ctx.take_attached().unwrap();
    let text = String::from_utf8(record.body).unwrap();
    assert!(text.contains("(200000 bytes, first 65536 kept)"), "{}", &text[..400.min(text.len())]);
    assert!(text.len() < 70_000, "capped: {} bytes", text.len());
}
