//! `actions approve` and `actions reject`: an operator's decision on actions awaiting approval,
//! one or many ids at once. Each id is decided on its own (one transaction each), so one that
//! is refused (not found, not waiting, not rendered yet) leaves the others decided; the command
//! then says which and why on stderr, and exits 1.
//!
//! It decides nothing itself: the state machine's `approve` and `reject` do, and record who
//! (`--by`, else `cli:$USER`) and why.

use clap::Args;

use super::output::Out;
use super::{exit, fail};
use crate::store::Store;

/// `actions approve ID... [--reason R] [--sha256 S] [--by NAME]`.
#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The actions to approve (AWAITING_APPROVAL -> PENDING).
    #[arg(required = true, num_args = 1.., value_name = "ID")]
    pub ids: Vec<i64>,
    /// Why: recorded with the approval and in the action's log.
    #[arg(long)]
    pub reason: Option<String>,
    /// The sha256 of the request you reviewed (`actions show`): refused if the preview differs.
    #[arg(long, value_name = "SHA256", value_parser = parse_sha256)]
    pub sha256: Option<String>,
    /// Who approves (default: cli:$USER).
    #[arg(long, value_name = "NAME")]
    pub by: Option<String>,
}

/// `actions reject ID... --reason R [--by NAME]`.
#[derive(Debug, Args)]
pub struct RejectArgs {
    /// The actions to reject (AWAITING_APPROVAL -> CANCELLED).
    #[arg(required = true, num_args = 1.., value_name = "ID")]
    pub ids: Vec<i64>,
    /// Why: required, recorded with the rejection and as the action's last error.
    #[arg(long, value_parser = parse_reason)]
    pub reason: String,
    /// Who rejects (default: cli:$USER).
    #[arg(long, value_name = "NAME")]
    pub by: Option<String>,
}

fn parse_sha256(s: &str) -> Result<String, String> {
    let s = s.trim().to_ascii_lowercase();
    if s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(s)
    } else {
        Err("a sha256 is 64 hexadecimal digits".to_string())
    }
}

fn parse_reason(s: &str) -> Result<String, String> {
    if s.trim().is_empty() { Err("a rejection needs a reason".to_string()) } else { Ok(s.to_string()) }
}

/// Who the CLI records as deciding: `--by`, else `cli:$USER`.
fn who(by: Option<String>) -> String {
    by.unwrap_or_else(|| format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".to_string())))
}

/// What one id came to.
#[derive(serde::Serialize)]
struct Outcome {
    id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refused: Option<String>,
}

pub async fn approve(args: ApproveArgs, store: &Store, out: &Out) -> anyhow::Result<()> {
    if args.sha256.is_some() && args.ids.len() > 1 {
        return Err(fail(exit::USAGE, "--sha256 names one request: give it with one id"));
    }
    let by = who(args.by);
    let mut done = Vec::new();
    for id in args.ids {
        let r = store.actions().approve(id, &by, args.reason.as_deref(), args.sha256.as_deref()).await;
        done.push(match r {
            Ok(a) => Outcome { id, sha256: Some(a.sha256), refused: None },
            Err(crate::store::StoreError::Refused(why)) => Outcome { id, sha256: None, refused: Some(why.to_string()) },
            Err(e) => return Err(e.into()),
        });
    }
    report(out, "approved", &done)
}

pub async fn reject(args: RejectArgs, store: &Store, out: &Out) -> anyhow::Result<()> {
    let by = who(args.by);
    let mut done = Vec::new();
    for id in args.ids {
        done.push(match store.actions().reject(id, &by, &args.reason).await {
            Ok(()) => Outcome { id, sha256: None, refused: None },
            Err(crate::store::StoreError::Refused(why)) => Outcome { id, sha256: None, refused: Some(why.to_string()) },
            Err(e) => return Err(e.into()),
        });
    }
    report(out, "rejected", &done)
}

/// What was decided goes to stdout, one line per id (nothing when nothing was); what was
/// refused goes into the error, one line per id, and the command exits 1.
fn report(out: &Out, verb: &str, done: &[Outcome]) -> anyhow::Result<()> {
    let (ok, refused): (Vec<&Outcome>, Vec<&Outcome>) = done.iter().partition(|o| o.refused.is_none());
    if !ok.is_empty() {
        let lines: Vec<String> = ok
            .iter()
            .map(|o| match &o.sha256 {
                Some(sha) => format!("action {}: {verb} (request sha256 {sha})", o.id),
                None => format!("action {}: {verb}", o.id),
            })
            .collect();
        out.message(&serde_json::json!({ verb: ok, "refused": refused }), &lines.join("\n"));
    }
    if refused.is_empty() {
        return Ok(());
    }
    let why: Vec<String> =
        refused.iter().map(|o| format!("action {}: {}", o.id, o.refused.as_deref().unwrap_or_default())).collect();
    Err(fail(exit::ERROR, format!("{} of {} action(s) not {verb}:\n{}", refused.len(), done.len(), why.join("\n"))))
}
