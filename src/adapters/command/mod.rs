//! `COMMAND`: runs a program from the config's allowlist, never a shell.
//!
//! The payload is `{"command": "<allowlisted name>", "args": {"<slot>": "<value>", ...}}`; each
//! `{slot}` in the configured arguments is replaced by its value, every slot must be filled and
//! no undeclared one may be given. Each template is expanded once (a value is never a template),
//! and a value beginning with `-` is refused unless the entry lists its slot under `allow_dash`
//! (put `--` before such arguments in `args` when the program accepts it). The program runs in its own process group with only the
//! configured environment and no stdin; stdout and stderr are captured, capped, and attached to
//! the attempt as a `command/…log` artifact. A non-zero exit is retryable unless the entry says
//! `nonzero_exit: permanent`. On timeout, or if the attempt is cancelled, the whole process
//! group is killed. This module never decides whether to run: in proof mode the executor calls
//! only `render_proof`, which shows the program and its arguments.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;

pub mod config;

use super::http::{printable, redact_named};
use super::{Adapter, AdapterError, ExecContext, Outcome, Proof, Section};
use crate::model::Action;
use config::{CommandConfig, CommandSpec, NonzeroExit, fill, slots};

/// `adapters.command`, and the `COMMAND` adapter built from it.
pub const SECTION: Section = Section {
    name: "command",
    action_type: "COMMAND",
    keys: config::KEYS,
    timeout: |a| a.command.timeout,
    build: |a, _| std::sync::Arc::new(Command::new(&a.command)),
};

/// Bytes of stdout, and of stderr, kept in the artifact.
pub const OUTPUT_CAP_BYTES: usize = 64 * 1024;
/// Bytes of output quoted in the execution log.
const LOG_QUOTE_BYTES: usize = 512;

pub struct Command {
    allow: BTreeMap<String, CommandSpec>,
    timeout: Duration,
}

/// What one run would be: the entry and its filled arguments.
struct Plan<'a> {
    spec: &'a CommandSpec,
    args: Vec<String>,
    timeout: Duration,
}

impl Command {
    pub fn new(config: &CommandConfig) -> Self {
        Command { allow: config.allow.clone(), timeout: config.timeout }
    }

    fn plan(&self, action: &Action) -> Result<Plan<'_>, AdapterError> {
        let p = &action.payload;
        if let Some(extra) = p.as_object().and_then(|m| m.keys().find(|k| !["command", "args"].contains(&k.as_str()))) {
            return Err(AdapterError::permanent(format!("COMMAND payload has an unknown field '{extra}'")));
        }
        let name = p
            .get("command")
            .and_then(|v| v.as_str())
            .ok_or_else(|| AdapterError::permanent("COMMAND payload needs a string field 'command'"))?;
        let spec = self.allow.get(name).ok_or_else(|| {
            AdapterError::permanent(format!("COMMAND '{name}' is not allowlisted under adapters.command.allow"))
        })?;
        let values: BTreeMap<String, String> = match p.get("args") {
            None => BTreeMap::new(),
            Some(serde_json::Value::Object(m)) => m
                .iter()
                .map(|(k, v)| {
                    let s = match v {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Number(n) => n.to_string(),
                        serde_json::Value::Bool(b) => b.to_string(),
                        _ => {
                            return Err(AdapterError::permanent(format!(
                                "COMMAND payload args.{k} must be a string, number or boolean"
                            )));
                        }
                    };
                    if s.contains('\0') {
                        return Err(AdapterError::permanent(format!("COMMAND payload args.{k} contains NUL")));
                    }
                    Ok((k.clone(), s))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(AdapterError::permanent("COMMAND payload field 'args' must be an object")),
        };
        let declared: Vec<&str> = spec.args.iter().flat_map(|a| slots(a)).collect();
        if let Some(extra) = values.keys().find(|k| !declared.contains(&k.as_str())) {
            return Err(AdapterError::permanent(format!(
                "COMMAND '{name}' has no argument slot '{{{extra}}}' (declared: {})",
                if declared.is_empty() { "none".to_string() } else { declared.join(", ") }
            )));
        }
        if let Some((slot, _)) = values.iter().find(|(k, v)| v.starts_with('-') && !spec.allow_dash.contains(k)) {
            return Err(AdapterError::permanent(format!(
                "COMMAND '{name}' args.{slot} begins with '-', which the program could read as an option; \
                 list '{slot}' under allow_dash in its allowlist entry if it may"
            )));
        }
        let mut args = Vec::with_capacity(spec.args.len());
        for template in &spec.args {
            // One pass: a value is never expanded again, whatever braces it holds.
            let arg = fill(template, &values).map_err(|slot| {
                AdapterError::permanent(format!("COMMAND '{name}' needs args.{slot} for its argument '{template}'"))
            })?;
            args.push(arg);
        }
        let timeout = spec.timeout.unwrap_or(self.timeout);
        Ok(Plan { spec, args, timeout })
    }
}

fn describe(plan: &Plan<'_>, action: &Action, heading: &str) -> String {
    let mut out = format!(
        "{heading}\nidempotency_key: {}\naction_id: {}\ncommand: {}\nprogram: {}\n",
        action.idempotency_key,
        action.id,
        plan.spec.name,
        plan.spec.program.display()
    );
    let args = serde_json::to_string(&plan.args).unwrap_or_else(|_| format!("{:?}", plan.args));
    let _ = writeln!(out, "args: {args}");
    let env: Vec<&str> = plan.spec.env.keys().map(String::as_str).collect();
    let _ = writeln!(out, "env (values not shown): {}", if env.is_empty() { "(none)".into() } else { env.join(", ") });
    let _ = writeln!(out, "timeout_seconds: {}", plan.timeout.as_secs_f64());
    out
}

/// Kills the process group when dropped, unless disarmed: a timeout, or a cancelled attempt,
/// leaves nothing running.
struct GroupGuard {
    pgid: Option<Pid>,
}

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // ESRCH (the group is already gone) is the outcome we want anyway.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads a stream to its end, keeping the first `cap` bytes; returns them and the total length.
async fn read_capped<R: tokio::io::AsyncRead + Unpin>(stream: Option<R>, cap: usize) -> (Vec<u8>, usize) {
    let Some(mut s) = stream else { return (Vec::new(), 0) };
    let mut kept = Vec::new();
    let mut total = 0;
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                total += n;
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    (kept, total)
}

fn section(out: &mut String, name: &str, (bytes, total): &(Vec<u8>, usize)) {
    let note = if *total > bytes.len() { format!(", first {} kept", bytes.len()) } else { String::new() };
    let _ = writeln!(out, "--- {name} ({total} bytes{note}) ---");
    out.push_str(&String::from_utf8_lossy(bytes));
    if !bytes.is_empty() && !bytes.ends_with(b"\n") {
        out.push('\n');
    }
}

/// The head of an output stream for the log, with header-named secrets redacted (a program
/// that prints a request it made, say `curl -v`, quotes its Authorization header).
fn quote(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(LOG_QUOTE_BYTES)];
    printable(redact_named(&String::from_utf8_lossy(head)).as_bytes())
}

#[async_trait::async_trait]
impl Adapter for Command {
    fn action_type(&self) -> &str {
        "COMMAND"
    }

    fn render_proof(&self, action: &Action) -> Result<Option<Proof>, AdapterError> {
        let plan = self.plan(action)?;
        let body = describe(&plan, action, "PROOF COMMAND");
        Ok(Some(Proof { subdir: "command".into(), extension: "txt".into(), body: body.into_bytes() }))
    }

    async fn execute(&self, ctx: &ExecContext, action: &Action) -> Result<Outcome, AdapterError> {
        let plan = self.plan(action)?;
        let name = &plan.spec.name;
        let mut cmd = tokio::process::Command::new(&plan.spec.program);
        cmd.args(&plan.args)
            .env_clear()
            .envs(&plan.spec.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|e| {
            let message = format!("COMMAND '{name}': cannot start {}: {e}", plan.spec.program.display());
            match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => AdapterError::permanent(message),
                _ => AdapterError::retryable(message),
            }
        })?;
        let mut guard = GroupGuard { pgid: child.id().and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw) };
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let run = async {
            let (out, err, status) = tokio::join!(
                read_capped(stdout, OUTPUT_CAP_BYTES),
                read_capped(stderr, OUTPUT_CAP_BYTES),
                child.wait()
            );
            (out, err, status)
        };
        let finished = tokio::time::timeout(plan.timeout, run).await;
        let elapsed_ms = started.elapsed().as_millis();
        let mut record = describe(&plan, action, "RUN COMMAND");
        let result = match finished {
            Err(_) => {
                guard.kill();
                let _ = child.wait().await;
                let _ = writeln!(
                    record,
                    "result: timed out after {:.1}s; process group killed",
                    plan.timeout.as_secs_f64()
                );
                Err(AdapterError::retryable(format!(
                    "COMMAND '{name}' timed out after {:.1}s; its process group was killed",
                    plan.timeout.as_secs_f64()
                )))
            }
            Ok((out, err, status)) => {
                // The leader has exited and both pipes are closed; nothing of the group is left
                // holding them, and the group id may soon be reused: do not signal it.
                guard.pgid = None;
                let status = status.map_err(|e| AdapterError::retryable(format!("COMMAND '{name}': wait failed: {e}")));
                match status {
                    Err(e) => Err(e),
                    Ok(status) => {
                        let code = match (status.code(), status.signal()) {
                            (Some(c), _) => format!("exit status {c}"),
                            (None, Some(s)) => format!("killed by signal {s}"),
                            (None, None) => "unknown exit status".to_string(),
                        };
                        let _ = writeln!(record, "result: {code} in {elapsed_ms} ms");
                        section(&mut record, "stdout", &out);
                        section(&mut record, "stderr", &err);
                        if status.success() {
                            Ok(Outcome {
                                message: format!(
                                    "COMMAND '{name}': {code} in {elapsed_ms} ms; stdout: {}",
                                    quote(&out.0)
                                ),
                            })
                        } else {
                            let message = format!("COMMAND '{name}': {code}; stderr: {}", quote(&err.0));
                            match (plan.spec.nonzero_exit, status.code()) {
                                (NonzeroExit::Permanent, Some(_)) => Err(AdapterError::permanent(message)),
                                _ => Err(AdapterError::retryable(message)),
                            }
                        }
                    }
                }
            }
        };
        ctx.attach(Proof { subdir: "command".into(), extension: "log".into(), body: record.into_bytes() });
        result
    }
}
