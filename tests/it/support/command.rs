//! The command adapter under test: an action for it, an allowlisted command, the adapter of
//! a list of them, and a check that a command's processes are gone.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use orchestrator::adapters::{Command, CommandConfig, CommandSpec, NonzeroExit};
use orchestrator::model::{Action, ActionStatus};

pub fn action(key: &str, payload: serde_json::Value) -> Action {
    let now = orchestrator::model::now();
    Action {
        id: 1,
        idempotency_key: key.into(),
        action_type: "COMMAND".into(),
        payload,
        status: ActionStatus::Running,
        priority: 0,
        not_before: now,
        attempts: 1,
        max_attempts: 3,
        last_error: None,
        claimed_epoch: Some(1),
        claimed_at: Some(now),
        created_at: now,
        updated_at: now,
        finished_at: None,
        decode_error: None,
        expires_at: None,
        claim: None,
        traceparent: None,
        approval: None,
    }
}

pub fn spec(name: &str, program: &str, args: &[&str], timeout: Option<Duration>) -> CommandSpec {
    CommandSpec {
        name: name.into(),
        program: program.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        timeout,
        env: BTreeMap::new(),
        nonzero_exit: NonzeroExit::Retryable,
        allow_dash: vec![],
    }
}

pub fn adapter(specs: Vec<CommandSpec>) -> Command {
    let allow = specs.into_iter().map(|s| (s.name.clone(), s)).collect();
    Command::new(&CommandConfig { allow, timeout: Duration::from_secs(30) })
}

/// Every pid written to `pidfile` is gone within two seconds.
pub async fn assert_pids_gone(pidfile: &Path) {
    let text = std::fs::read_to_string(pidfile).expect("the command wrote its pids before it was killed");
    let pids: Vec<i32> = text.split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert_eq!(pids.len(), 2, "the shell and its background sleep: {text}");
    let until = Instant::now() + Duration::from_secs(2);
    while pids.iter().any(|p| !gone(*p)) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for p in pids {
        assert!(gone(p), "process {p} of the killed group is still running");
    }
}

/// Whether a process is gone (no /proc entry) or dead awaiting its reaper (a zombie).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}
