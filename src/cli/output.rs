//! Rendering for the CLI: the same data as stable JSON (`--json`) or as text for a terminal.

use serde::Serialize;

use std::collections::BTreeMap;

use crate::model::{Action, ActionStatus, Flags, LogRow, TickRow};
use crate::status::{LeaseStatus, StatusReport};
use crate::store::{ActionsSummary, PRIORITY_BANDS};
use crate::tick::TickReport;

pub struct Out {
    pub json: bool,
}

fn print_json(value: &impl Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: cannot render JSON: {e}"),
    }
}

fn ts(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.3fZ").to_string()
}

fn opt_ts(t: &Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.as_ref().map_or_else(|| "-".to_string(), ts)
}

fn one_line(s: &str, max: usize) -> String {
    let flat: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if flat.chars().count() > max {
        let cut: String = flat.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        flat
    }
}

/// One log row on one line (`logs`, `logs --follow`).
pub fn log_line(l: &LogRow) -> String {
    format!(
        "{}  {:<7}  action {:<6} tick {:<6} {}{}",
        ts(&l.ts),
        l.level.as_str(),
        l.action_id,
        l.tick_id.map_or("-".to_string(), |t| t.to_string()),
        one_line(&l.message, 160),
        l.artifact_sha256.as_deref().map_or(String::new(), |s| format!("  sha256={s}"))
    )
}

/// One ledger row on one line (`ticks`, `ticks --follow`).
pub fn tick_line(t: &TickRow) -> String {
    let ms = t.finished_at.map(|f| (f - t.started_at).num_milliseconds());
    format!(
        "#{:<7} {:<8} {}  {:>6}  epoch {:<4} {}/{} ok  {}",
        t.id,
        t.status.as_str(),
        ts(&t.started_at),
        ms.map_or("-".to_string(), |m| format!("{m}ms")),
        t.epoch,
        t.actions_succeeded,
        t.actions_attempted,
        one_line(t.notes.as_deref().unwrap_or(""), 120)
    )
}

impl Out {
    /// A result with a JSON shape and a one-line text form.
    pub fn workers(&self, rows: &[crate::store::WorkerRow]) {
        if self.json {
            return print_json(&rows);
        }
        if rows.is_empty() {
            println!("no workers registered");
            return;
        }
        println!(
            "{:<36} {:<5} {:<8} {:>4} {:>9} {:>8} {:>7}  {:<25} TYPES",
            "ID", "LIVE", "VERSION", "CONC", "IN FLIGHT", "DONE", "FAILED", "HEARTBEAT"
        );
        for w in rows {
            let live = match (w.live, w.draining) {
                (true, true) => "drain",
                (true, false) => "yes",
                (false, _) => "no",
            };
            let types = if w.types.is_empty() { "*".to_string() } else { w.types.join(",") };
            println!(
                "{:<36} {:<5} {:<8} {:>4} {:>9} {:>8} {:>7}  {:<25} {types}",
                w.id,
                live,
                w.version,
                w.concurrency,
                w.in_flight,
                w.done,
                w.failed,
                w.heartbeat_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
        }
    }

    pub fn message(&self, value: &impl Serialize, text: &str) {
        if self.json { print_json(value) } else { println!("{text}") }
    }

    pub fn tick(&self, r: &TickReport) {
        if self.json {
            return print_json(r);
        }
        println!(
            "tick #{} {} in {} ms: {} attempted, {} succeeded, {} failed{}",
            r.tick_id,
            r.status,
            r.duration_ms,
            r.attempted,
            r.succeeded,
            r.failed,
            if r.notes.is_empty() { String::new() } else { format!(" ({})", r.notes) }
        );
    }

    pub fn flags(&self, f: &Flags) {
        if self.json {
            return print_json(f);
        }
        println!(
            "paused={} killed={} proof_mode={} ({})",
            f.paused,
            f.killed,
            f.proof_mode,
            if f.proof_mode { "PROOF: artifacts only" } else { "REAL: side effects enabled" }
        );
    }

    pub fn status(&self, s: &StatusReport) {
        if self.json {
            return print_json(s);
        }
        println!("liveness: {}", s.health);
        for r in &s.reasons {
            println!("  - {r}");
        }
        println!("workload: {} ({}/100)", s.workload.status, s.workload.score);
        for r in &s.workload.reasons {
            println!("  - {r}");
        }
        println!(
            "mode:    {}   paused={} killed={}",
            match (s.proof_enforced, s.flags.proof_mode) {
                (true, _) => "PROOF (enforced by this instance's config; proof off is refused)",
                (false, true) => "PROOF",
                (false, false) => "REAL",
            },
            s.flags.paused,
            s.flags.killed
        );
        self.lease_line(s.lease.as_ref());
        let counts: Vec<String> = s.queue.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("queue:   {}", counts.join(" "));
        println!("workers: {} live, {} dead", s.workers.live, s.workers.dead);
        match &s.last_tick {
            Some(t) => println!(
                "last:    tick #{} {} at {} ({} attempted, {} succeeded)",
                t.id,
                t.status,
                opt_ts(&t.finished_at),
                t.actions_attempted,
                t.actions_succeeded
            ),
            None => println!("last:    no tick yet"),
        }
    }

    fn lease_line(&self, l: Option<&LeaseStatus>) {
        match l {
            Some(l) if l.live => println!(
                "lease:   {} held by {} epoch {} for {:.1}s more (until {})",
                l.name,
                l.owner,
                l.epoch,
                l.ttl_seconds,
                ts(&l.expires_at)
            ),
            Some(l) => println!(
                "lease:   {} free (last holder {} epoch {}, expired {})",
                l.name,
                l.owner,
                l.epoch,
                ts(&l.expires_at)
            ),
            None => println!("lease:   never taken"),
        }
    }

    pub fn lease(&self, l: Option<&LeaseStatus>) {
        if self.json { print_json(&l) } else { self.lease_line(l) }
    }

    pub fn actions(&self, list: &[Action]) {
        if self.json {
            return print_json(&list);
        }
        println!(
            "{:>8}  {:<9}  {:<14}  {:>4}  {:>5}  {:<24}  KEY / LAST ERROR",
            "ID", "STATUS", "TYPE", "PRIO", "TRIES", "NOT BEFORE"
        );
        for a in list {
            println!(
                "{:>8}  {:<9}  {:<14}  {:>4}  {:>2}/{:<2}  {:<24}  {}{}",
                a.id,
                a.status.as_str(),
                one_line(&a.action_type, 14),
                a.priority,
                a.attempts,
                a.max_attempts,
                ts(&a.not_before),
                one_line(&a.idempotency_key, 40),
                a.last_error.as_deref().map_or(String::new(), |e| format!("  [{}]", one_line(e, 60)))
            );
        }
    }

    pub fn action(&self, a: &Action, logs: &[LogRow]) {
        if self.json {
            #[derive(Serialize)]
            struct Shown<'a> {
                #[serde(flatten)]
                action: &'a Action,
                logs: &'a [LogRow],
            }
            return print_json(&Shown { action: a, logs });
        }
        println!("action {} ({})", a.id, a.action_type);
        println!("  status:       {}", a.status);
        println!("  key:          {}", a.idempotency_key);
        println!("  priority:     {}", a.priority);
        println!("  attempts:     {}/{}", a.attempts, a.max_attempts);
        println!("  not_before:   {}", ts(&a.not_before));
        println!("  created_at:   {}", ts(&a.created_at));
        println!("  finished_at:  {}", opt_ts(&a.finished_at));
        if let Some(e) = &a.last_error {
            println!("  last_error:   {}", one_line(e, 200));
        }
        println!("  payload:      {}", one_line(&a.payload.to_string(), 200));
        println!("  logs:");
        self.log_lines(logs);
    }

    fn log_lines(&self, logs: &[LogRow]) {
        for l in logs {
            println!("    {}", log_line(l));
        }
    }

    pub fn ticks(&self, ticks: &[TickRow]) {
        if self.json {
            return print_json(&ticks);
        }
        for t in ticks {
            println!("{}", tick_line(t));
        }
    }

    pub fn summary(&self, s: &ActionsSummary) {
        if self.json {
            return print_json(s);
        }
        let mut types: BTreeMap<&str, BTreeMap<ActionStatus, i64>> = BTreeMap::new();
        for c in &s.by_type_status {
            types.entry(c.action_type.as_str()).or_default().insert(c.status, c.count);
        }
        print!("{:<20}", "TYPE");
        for st in ActionStatus::ALL {
            print!(" {:>9}", st.as_str());
        }
        println!();
        for (t, counts) in &types {
            print!("{:<20}", one_line(t, 20));
            for st in ActionStatus::ALL {
                print!(" {:>9}", counts.get(st).copied().unwrap_or(0));
            }
            println!();
        }
        if types.is_empty() {
            println!("(no actions)");
        }
        println!();
        if s.oldest_due.is_empty() {
            println!("oldest due: none (nothing is due)");
        } else {
            println!("oldest due per type:");
            for o in &s.oldest_due {
                println!(
                    "  {:<20} action {:<8} due since {} ({:.0}s)",
                    one_line(&o.action_type, 20),
                    o.id,
                    ts(&o.not_before),
                    o.due_for_seconds
                );
            }
        }
        let bands: Vec<String> = PRIORITY_BANDS
            .iter()
            .map(|b| format!("{b}: {}", s.open_by_priority.get(b).copied().unwrap_or(0)))
            .collect();
        println!("open (PENDING, RETRY, RUNNING) by priority: {}", bands.join("  "));
    }

    pub fn verify(&self, r: &crate::artifacts::VerifyReport) {
        if self.json {
            return print_json(r);
        }
        for b in r.missing.iter().chain(&r.mismatched) {
            println!(
                "{}: {} (log {}, action {}; recorded sha256 {}{})",
                b.problem,
                b.path,
                b.log_id,
                b.action_id,
                b.expected_sha256,
                b.actual_sha256.as_deref().map_or(String::new(), |a| format!(", now {a}"))
            );
        }
        println!(
            "{} artifact(s) checked: {} ok, {} missing, {} changed",
            r.checked,
            r.ok,
            r.missing.len(),
            r.mismatched.len()
        );
        if !r.elsewhere.is_empty() {
            let mut hosts: Vec<&str> = r.elsewhere.iter().map(|b| b.problem.trim_start_matches("on host ")).collect();
            hosts.sort_unstable();
            hosts.dedup();
            println!(
                "{} artifact(s) written on other hosts not checked here (run artifacts verify there): {}",
                r.elsewhere.len(),
                hosts.join(", ")
            );
        }
    }

    pub fn logs(&self, logs: &[LogRow]) {
        if self.json { print_json(&logs) } else { self.log_lines(logs) }
    }
}
