//! Rendering for the CLI: the same data as stable JSON (`--json`) or as text for a terminal.

use serde::Serialize;

use std::collections::BTreeMap;

use super::stdio::Sink;
use crate::limits::{LimitField, LimitSource, LimitSpec, LimitUsage, TypeLimit};
use crate::model::{Action, ActionStatus, Flags, LogRow, TickRow};
use crate::status::{LeaseStatus, StatusReport};
use crate::store::{ActionsSummary, PRIORITY_BANDS};
use crate::tick::TickReport;

/// How a command prints: `--json` or text, every line through one [`Sink`].
#[derive(Debug, Default)]
pub struct Out {
    pub json: bool,
    sink: Sink,
}

impl Out {
    pub fn new(json: bool) -> Self {
        Out { json, sink: Sink::default() }
    }

    /// Writes one line (with `say!`); `false` once stdout is closed or failing.
    pub fn line(&self, args: std::fmt::Arguments<'_>) -> bool {
        self.sink.put(&format!("{args}\n"))
    }

    /// Writes `text` as it is.
    pub fn put(&self, text: &str) -> bool {
        self.sink.put(text)
    }

    /// Whether stdout still takes output (for a command that waits between lines).
    pub fn wanted(&self) -> bool {
        self.sink.wanted()
    }

    /// The command's result once its output is known (see [`Sink::settle`]).
    pub fn settle(&self, result: anyhow::Result<u8>) -> anyhow::Result<u8> {
        self.sink.settle(result)
    }

    /// A value as pretty JSON on stdout.
    pub fn print_json(&self, value: &impl Serialize) {
        match serde_json::to_string_pretty(value) {
            Ok(s) => {
                say!(self, "{s}");
            }
            Err(e) => super::stdio::stderr_line(&format!("error: cannot render JSON: {e}")),
        }
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

/// A spec's limits in a few words: `max_running 2, rate 300/1h, partition_by payload.partner`.
fn spec_words(spec: &LimitSpec) -> String {
    let mut parts = Vec::new();
    if let Some(n) = spec.max_running {
        parts.push(format!("max_running {n}"));
    }
    if let Some(r) = spec.rate {
        parts.push(format!("rate {r}"));
    }
    if let Some(n) = spec.daily_budget {
        parts.push(format!("daily_budget {n}"));
    }
    if let Some(p) = &spec.partition_by {
        parts.push(format!("partition_by {p}"));
    }
    if let Some(h) = &spec.allowed_hours {
        parts.push(format!("allowed_hours {h}"));
    }
    if parts.is_empty() { "no limit".to_string() } else { parts.join(", ") }
}

/// What a limited type is using and has left: `running 1/2, waiting 12, rate 250/300 left, ...`
/// (per the tightest partition when partitioned).
fn usage_words(u: &LimitUsage) -> String {
    let spec = &u.limit.effective;
    let mut parts = vec![match spec.max_running {
        Some(max) => format!("running {}/{max}", u.running),
        None => format!("running {}", u.running),
    }];
    parts.push(format!("waiting {}", u.waiting));
    if let (Some(left), Some(r)) = (u.rate_remaining, spec.rate) {
        parts.push(format!("rate {left}/{} left per {}", r.count, humantime::format_duration(r.period)));
    }
    if let (Some(left), Some(b)) = (u.budget_remaining, spec.daily_budget) {
        parts.push(format!("budget {left}/{b} left today"));
    }
    if let Some(p) = &spec.partition_by {
        parts.push(format!("per {p} ({} tracked; left is the tightest's)", u.partitions_tracked));
    }
    parts.join(", ")
}

/// The lines under a limited type: overrides in force, claims held back, a used-up budget, the
/// busiest partitions and an unreadable row's error, each indented by `indent`.
fn usage_details(u: &LimitUsage, indent: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for o in &u.limit.overrides {
        lines.push(format!(
            "{indent}override {} = {} until {} by {}: {}",
            o.field,
            o.value,
            ts(&o.expires_at),
            one_line(&o.set_by, 40),
            one_line(&o.reason, 120)
        ));
    }
    if let Some(h) = &u.limit.effective.allowed_hours {
        let now = if u.outside_allowed_hours { "outside them now: its due work waits" } else { "open now" };
        lines.push(format!("{indent}allowed hours {h} ({now})"));
    }
    if let Some(t) = &u.budget_exhausted_at {
        lines.push(format!("{indent}daily budget used up since {}", ts(t)));
    }
    if u.blocked_running + u.blocked_rate + u.blocked_budget > 0 {
        lines.push(format!(
            "{indent}claims held back so far: max_running {}, rate {}, daily_budget {}",
            u.blocked_running, u.blocked_rate, u.blocked_budget
        ));
    }
    if !u.partitions.is_empty() {
        let spec = &u.limit.effective;
        let busiest: Vec<String> = u
            .partitions
            .iter()
            .map(|p| {
                let mut used = Vec::new();
                for (has, name, n) in [
                    (spec.max_running.is_some(), "running", p.running),
                    (spec.rate.is_some(), "rate", p.rate_used),
                    (spec.daily_budget.is_some(), "budget", p.budget_used),
                ] {
                    if has {
                        used.push(format!("{name} {n}"));
                    }
                }
                format!("{} ({})", one_line(&p.partition, 40), used.join(", "))
            })
            .collect();
        lines.push(format!("{indent}busiest partitions, used: {}", busiest.join("; ")));
    }
    if let Some(e) = &u.limit.error {
        lines.push(format!("{indent}error: {} (the type is held until its limits are set again)", one_line(e, 200)));
    }
    lines
}

/// A limit cell: the effective value, marked `*` when an override is in force on it.
fn limit_cell(value: Option<String>, overridden: bool) -> String {
    match value {
        None => "-".to_string(),
        Some(v) if overridden => format!("{v}*"),
        Some(v) => v,
    }
}

impl Out {
    /// A result with a JSON shape and a one-line text form.
    pub fn workers(&self, rows: &[crate::store::WorkerRow]) {
        if self.json {
            return self.print_json(&rows);
        }
        if rows.is_empty() {
            say!(self, "no workers registered");
            return;
        }
        say!(
            self,
            "{:<36} {:<5} {:<8} {:>4} {:>9} {:>8} {:>7}  {:<25} TYPES",
            "ID",
            "LIVE",
            "VERSION",
            "CONC",
            "IN FLIGHT",
            "DONE",
            "FAILED",
            "HEARTBEAT"
        );
        for w in rows {
            let live = match (w.live, w.draining) {
                (true, true) => "drain",
                (true, false) => "yes",
                (false, _) => "no",
            };
            let types = if w.types.is_empty() { "*".to_string() } else { w.types.join(",") };
            say!(
                self,
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

    /// `schedules list` (and an added schedule): one row each, its state and fires.
    pub fn schedules(&self, list: &[crate::schedules::ScheduleView]) {
        if self.json {
            return self.print_json(&list);
        }
        if list.is_empty() {
            say!(self, "no schedules");
            return;
        }
        let at = |t: Option<chrono::DateTime<chrono::Utc>>| {
            t.map_or_else(|| "-".to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        };
        say!(
            self,
            "{:<20} {:<8} {:<16} {:<16} {:<14} {:<21} {:<21} {:>6} {:>8}  SOURCE",
            "NAME",
            "STATE",
            "CRON",
            "TIMEZONE",
            "TYPE",
            "LAST SLOT",
            "NEXT FIRE",
            "FIRES",
            "MISFIRES"
        );
        for v in list {
            let (d, r) = (&v.row.def, &v.row);
            say!(
                self,
                "{:<20} {:<8} {:<16} {:<16} {:<14} {:<21} {:<21} {:>6} {:>8}  {}",
                d.name,
                v.state,
                d.cron,
                d.timezone,
                d.action_type,
                at(r.last_slot),
                at(v.next_fire),
                r.fires,
                r.misfires,
                r.source
            );
            if let Some(why) = &r.paused_reason
                && r.paused
            {
                say!(self, "  paused: {why}");
            }
        }
    }

    /// `limits list`: one row per limited type, the details under it.
    pub fn limits(&self, list: &[LimitUsage]) {
        if self.json {
            return self.print_json(&list);
        }
        if list.is_empty() {
            say!(self, "no limits set (limits: in the config, `orchestrator limits set`, or /api/limits)");
            return;
        }
        say!(
            self,
            "{:<24} {:>11} {:<12} {:>12} {:<20} {:<8} {:>7} {:>7}  LEFT",
            "TYPE",
            "MAX RUNNING",
            "RATE",
            "DAILY BUDGET",
            "PARTITION BY",
            "SOURCE",
            "RUNNING",
            "WAITING"
        );
        for u in list {
            let l = &u.limit;
            let over = |f: crate::limits::LimitField| l.overrides.iter().any(|o| o.field == f);
            let e = &l.effective;
            let mut left = Vec::new();
            for (name, v) in
                [("running", u.running_remaining), ("rate", u.rate_remaining), ("budget", u.budget_remaining)]
            {
                if let Some(v) = v {
                    left.push(format!("{name} {v}"));
                }
            }
            say!(
                self,
                "{:<24} {:>11} {:<12} {:>12} {:<20} {:<8} {:>7} {:>7}  {}",
                one_line(&u.action_type, 24),
                limit_cell(e.max_running.map(|n| n.to_string()), over(crate::limits::LimitField::MaxRunning)),
                limit_cell(e.rate.map(|r| r.to_string()), over(crate::limits::LimitField::Rate)),
                limit_cell(e.daily_budget.map(|n| n.to_string()), over(crate::limits::LimitField::DailyBudget)),
                e.partition_by.as_ref().map_or("-".to_string(), |p| one_line(&p.to_string(), 20)),
                LimitSource::as_str(l.source),
                u.running,
                u.waiting,
                if left.is_empty() { "-".to_string() } else { left.join(", ") }
            );
            for line in usage_details(u, "  ") {
                say!(self, "{line}");
            }
        }
        if list.iter().any(|u| !u.limit.overrides.is_empty()) {
            say!(self, "(* an override is in force: its line says until when)");
        }
    }

    /// A type's limits after `limits set|clear|override` (`what` says which was done).
    pub fn type_limit(&self, l: &TypeLimit, what: &str) {
        if self.json {
            return self.print_json(l);
        }
        say!(self, "{what} {}: {}", l.action_type, spec_words(&l.effective));
        if l.effective != l.base {
            say!(self, "  base (without overrides): {}", spec_words(&l.base));
        }
        for o in &l.overrides {
            say!(
                self,
                "  override {} = {} until {} by {}: {}",
                o.field,
                o.value,
                ts(&o.expires_at),
                o.set_by,
                one_line(&o.reason, 120)
            );
        }
    }

    /// What `limits override TYPE FIELD --end` did: `{"action_type", "field", "ended", "limit"}`
    /// (`limit`: the type's limits as they now stand, `null` when it has none left).
    pub fn override_ended(&self, action_type: &str, field: LimitField, ended: bool, now: Option<&TypeLimit>) {
        if self.json {
            let v = serde_json::json!({"action_type": action_type, "field": field, "ended": ended, "limit": now});
            return self.print_json(&v);
        }
        match (ended, now) {
            (false, _) => say!(self, "{action_type} has no {field} override in force; nothing ended"),
            (true, Some(l)) => self.type_limit(l, &format!("ended the {field} override of")),
            (true, None) => say!(self, "ended the {field} override of {action_type}; it has no limits now"),
        }
    }

    pub fn message(&self, value: &impl Serialize, text: &str) {
        if self.json { self.print_json(value) } else { say!(self, "{text}") }
    }

    pub fn tick(&self, r: &TickReport) {
        if self.json {
            return self.print_json(r);
        }
        say!(
            self,
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
            return self.print_json(f);
        }
        say!(
            self,
            "paused={} killed={} proof_mode={} ({})",
            f.paused,
            f.killed,
            f.proof_mode,
            if f.proof_mode { "PROOF: artifacts only" } else { "REAL: side effects enabled" }
        );
    }

    pub fn status(&self, s: &StatusReport) {
        if self.json {
            return self.print_json(s);
        }
        say!(self, "liveness: {}", s.liveness.status);
        for r in &s.liveness.reasons {
            say!(self, "  - {r}");
        }
        say!(self, "workload: {} ({}/100)", s.workload.status, s.workload.score);
        for r in &s.workload.reasons {
            say!(self, "  - {r}");
        }
        say!(
            self,
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
        say!(self, "queue:   {}", counts.join(" "));
        say!(self, "workers: {} live, {} dead", s.workers.live, s.workers.dead);
        if s.limits.is_empty() {
            say!(self, "limits:  none");
        }
        for (i, u) in s.limits.iter().enumerate() {
            say!(
                self,
                "{}{}: {}",
                if i == 0 { "limits:  " } else { "         " },
                one_line(&u.action_type, 64),
                usage_words(u)
            );
            for line in usage_details(u, "           ") {
                say!(self, "{line}");
            }
        }
        match &s.last_tick {
            Some(t) => {
                say!(
                    self,
                    "last:    tick #{} {} at {} ({} attempted, {} succeeded)",
                    t.id,
                    t.status,
                    opt_ts(&t.finished_at),
                    t.actions_attempted,
                    t.actions_succeeded
                );
                // Why it ran what it ran: a brake, a window, a schedule's fire.
                if let Some(notes) = t.notes.as_deref().filter(|n| !n.is_empty()) {
                    say!(self, "         {notes}");
                }
            }
            None => say!(self, "last:    no tick yet"),
        }
    }

    fn lease_line(&self, l: Option<&LeaseStatus>) {
        match l {
            Some(l) if l.live => say!(
                self,
                "lease:   {} held by {} epoch {} for {:.1}s more (until {})",
                l.name,
                l.owner,
                l.epoch,
                l.ttl_seconds,
                ts(&l.expires_at)
            ),
            Some(l) => say!(
                self,
                "lease:   {} free (last holder {} epoch {}, expired {})",
                l.name,
                l.owner,
                l.epoch,
                ts(&l.expires_at)
            ),
            None => say!(self, "lease:   never taken"),
        }
    }

    pub fn lease(&self, l: Option<&LeaseStatus>) {
        if self.json { self.print_json(&l) } else { self.lease_line(l) }
    }

    pub fn actions(&self, list: &[Action]) {
        if self.json {
            return self.print_json(&list);
        }
        say!(
            self,
            "{:>8}  {:<9}  {:<14}  {:>4}  {:>5}  {:<24}  KEY / LAST ERROR",
            "ID",
            "STATUS",
            "TYPE",
            "PRIO",
            "TRIES",
            "NOT BEFORE"
        );
        for a in list {
            say!(
                self,
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
            return self.print_json(&Shown { action: a, logs });
        }
        say!(self, "action {} ({})", a.id, a.action_type);
        say!(self, "  status:       {}", a.status);
        say!(self, "  key:          {}", a.idempotency_key);
        say!(self, "  priority:     {}", a.priority);
        say!(self, "  attempts:     {}/{}", a.attempts, a.max_attempts);
        say!(self, "  not_before:   {}", ts(&a.not_before));
        say!(self, "  created_at:   {}", ts(&a.created_at));
        say!(self, "  finished_at:  {}", opt_ts(&a.finished_at));
        if let Some(e) = &a.last_error {
            say!(self, "  last_error:   {}", one_line(e, 200));
        }
        say!(self, "  payload:      {}", one_line(&a.payload.to_string(), 200));
        if let Some(ap) = &a.approval {
            self.approval(ap);
        }
        say!(self, "  logs:");
        self.log_lines(logs);
    }

    /// An action's approval: its deadline, the decision, and the exact request it will send.
    fn approval(&self, ap: &crate::model::Approval) {
        say!(self, "  approval:");
        say!(self, "    expires_at:     {}", opt_ts(&ap.expires_at));
        if let Some(by) = &ap.decided_by {
            say!(self, "    decided_by:     {by}{}", ap.reason.as_deref().map_or(String::new(), |r| format!(" ({r})")));
        }
        if let Some(sha) = &ap.approved_sha256 {
            say!(self, "    approved:       sha256 {sha}");
        }
        match (&ap.preview, &ap.preview_sha256) {
            (Some(body), Some(sha)) => {
                say!(self, "    request sha256: {sha}");
                say!(self, "    request (exactly what will be sent, secrets redacted):");
                if body.is_empty() {
                    say!(self, "      (this action sends nothing)");
                }
                for line in body.lines() {
                    // A control character would act on the terminal: shown as U+FFFD.
                    let shown: String =
                        line.chars().map(|c| if c.is_control() && c != '\t' { '\u{FFFD}' } else { c }).collect();
                    say!(self, "      | {shown}");
                }
            }
            _ => say!(self, "    request:        not rendered yet (the leader renders it at its next tick)"),
        }
    }

    fn log_lines(&self, logs: &[LogRow]) {
        for l in logs {
            say!(self, "    {}", log_line(l));
        }
    }

    pub fn ticks(&self, ticks: &[TickRow]) {
        if self.json {
            return self.print_json(&ticks);
        }
        for t in ticks {
            say!(self, "{}", tick_line(t));
        }
    }

    pub fn summary(&self, s: &ActionsSummary) {
        if self.json {
            return self.print_json(s);
        }
        let mut types: BTreeMap<&str, BTreeMap<ActionStatus, i64>> = BTreeMap::new();
        for c in &s.by_type_status {
            types.entry(c.action_type.as_str()).or_default().insert(c.status, c.count);
        }
        let header: String = ActionStatus::ALL.iter().map(|st| format!(" {:>9}", st.as_str())).collect();
        say!(self, "{:<20}{header}", "TYPE");
        for (t, counts) in &types {
            let row: String =
                ActionStatus::ALL.iter().map(|st| format!(" {:>9}", counts.get(st).copied().unwrap_or(0))).collect();
            say!(self, "{:<20}{row}", one_line(t, 20));
        }
        if types.is_empty() {
            say!(self, "(no actions)");
        }
        say!(self);
        if s.oldest_due.is_empty() {
            say!(self, "oldest due: none (nothing is due)");
        } else {
            say!(self, "oldest due per type:");
            for o in &s.oldest_due {
                say!(
                    self,
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
        say!(self, "open (PENDING, RETRY, RUNNING) by priority: {}", bands.join("  "));
    }

    pub fn verify(&self, r: &crate::artifacts::VerifyReport) {
        if self.json {
            return self.print_json(r);
        }
        for b in r.missing.iter().chain(&r.mismatched) {
            say!(
                self,
                "{}: {} (log {}, action {}; recorded sha256 {}{})",
                b.problem,
                b.path,
                b.log_id,
                b.action_id,
                b.expected_sha256,
                b.actual_sha256.as_deref().map_or(String::new(), |a| format!(", now {a}"))
            );
        }
        say!(
            self,
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
            say!(
                self,
                "{} artifact(s) written on other hosts not checked here (run artifacts verify there): {}",
                r.elsewhere.len(),
                hosts.join(", ")
            );
        }
    }

    pub fn logs(&self, logs: &[LogRow]) {
        if self.json { self.print_json(&logs) } else { self.log_lines(logs) }
    }
}
