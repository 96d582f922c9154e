//! The domain vocabulary shared by every stage of the loop: statuses, an action, a tick row, a
//! log row, the flags and the lease as callers see them.
//!
//! Plain data with serde shapes that the CLI's `--json` output promises to keep stable. Nothing
//! here talks to the database; `store` converts its rows into these types.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;

/// The wall clock, truncated to milliseconds so that stored timestamps compare the same way on
/// every backend. The engine reads time through a [`Clock`] (`Store::now`); this is the real one.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}

/// The longest duration that any input (a delay, an age, a retention) may name: 1,000 years.
/// Far inside what a `DateTime` holds, so that `now` ± any accepted duration is a valid time.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(1_000 * 365 * 86_400);

/// `t + d`, or a clear error when `d` is longer than [`MAX_DURATION`] or the result is not a
/// representable time. The one checked conversion from a duration to a date: every input
/// duration goes through it (or [`earlier`]) instead of `chrono`'s panicking arithmetic.
pub fn later(t: DateTime<Utc>, d: std::time::Duration) -> Result<DateTime<Utc>, String> {
    offset(t, d, true)
}

/// `t - d`, or a clear error (see [`later`]).
pub fn earlier(t: DateTime<Utc>, d: std::time::Duration) -> Result<DateTime<Utc>, String> {
    offset(t, d, false)
}

/// `t + d`, saturating at the latest representable time: for durations the program computed
/// itself (a backoff, a lease TTL), where an error would have nobody to tell.
pub fn later_saturating(t: DateTime<Utc>, d: std::time::Duration) -> DateTime<Utc> {
    later(t, d).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `t - d`, saturating at the earliest representable time (see [`later_saturating`]).
pub fn earlier_saturating(t: DateTime<Utc>, d: std::time::Duration) -> DateTime<Utc> {
    earlier(t, d).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Checks a date given as input (`not_before`): years 0001 to 9999, the range RFC 3339 writes
/// with four digits, so that every backend stores and orders it correctly (SQLite compares the
/// text; PostgreSQL refuses dates before 4713 BC). chrono itself accepts signed years such as
/// `+100000-01-01T00:00:00Z`.
pub fn check_date(field: &str, t: DateTime<Utc>) -> Result<(), String> {
    use chrono::Datelike;
    if (1..=9999).contains(&t.year()) {
        Ok(())
    } else {
        Err(format!("{field} {} is outside the years 0001 to 9999", t.to_rfc3339()))
    }
}

fn offset(t: DateTime<Utc>, d: std::time::Duration, forward: bool) -> Result<DateTime<Utc>, String> {
    if d > MAX_DURATION {
        return Err(format!(
            "{} is longer than the maximum of {} days (1,000 years)",
            humantime::format_duration(d),
            MAX_DURATION.as_secs() / 86_400
        ));
    }
    let delta =
        chrono::Duration::from_std(d).map_err(|_| format!("{} is out of range", humantime::format_duration(d)))?;
    let result = if forward { t.checked_add_signed(delta) } else { t.checked_sub_signed(delta) };
    result.ok_or_else(|| {
        format!(
            "{} {} {} is not a representable time",
            t.to_rfc3339(),
            if forward { "+" } else { "-" },
            humantime::format_duration(d)
        )
    })
}

/// The clock a [`crate::store::Store`] (and so the tick, the executor and the snapshot) reads:
/// the wall clock, or the wall clock shifted by an offset that a scenario moves forward, so
/// that "two hours later" takes no time. Clones share the offset; each store has its own, so
/// tests running as threads of one process never see each other's time.
///
/// PostgreSQL reads `now()` in some statements (the claim, the lease): a shifted clock is
/// meant for SQLite, where every time comes from the process.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    /// `None`: the wall clock. `Some`: milliseconds added to it.
    offset_ms: Option<std::sync::Arc<std::sync::atomic::AtomicI64>>,
}

impl Clock {
    /// The wall clock (the default).
    pub fn real() -> Clock {
        Clock::default()
    }

    /// A clock that starts at the wall clock and moves forward (or back) by [`Clock::advance`].
    pub fn shifted() -> Clock {
        Clock { offset_ms: Some(std::sync::Arc::default()) }
    }

    /// Now, by this clock, to the millisecond.
    pub fn now(&self) -> DateTime<Utc> {
        let real = now();
        match &self.offset_ms {
            None => real,
            Some(off) => {
                let ms = off.load(std::sync::atomic::Ordering::SeqCst);
                real.checked_add_signed(chrono::Duration::milliseconds(ms)).unwrap_or(real)
            }
        }
    }

    /// Moves a shifted clock by `by` (negative: back). Returns false, changing nothing, on the
    /// real clock.
    pub fn advance(&self, by: chrono::Duration) -> bool {
        match &self.offset_ms {
            None => false,
            Some(off) => {
                off.fetch_add(by.num_milliseconds(), std::sync::atomic::Ordering::SeqCst);
                true
            }
        }
    }
}

/// What every text enum here has: the enum, `ALL`, its text (`as_str`), `Display` and
/// `Serialize` as that text. [`string_enum!`] and [`exact_text_enum!`] add how each parses.
macro_rules! text_enum_common {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

/// A string enum: its text, `Display`, `FromStr` (any case) and `Serialize`. `earlier { OLD =>
/// "what it is here" }` names the earlier systems' spellings that a parse refuses with their
/// mapping (docs/upgrading.md).
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }
     $(earlier { $($old:literal => $new:literal),+ $(,)? })?) => {
        text_enum_common!($(#[$meta])* $name { $($variant => $text),+ });

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                let upper = s.to_ascii_uppercase();
                match upper.as_str() {
                    $($text => Ok($name::$variant),)+
                    _ => {
                        let earlier: &[(&str, &str)] = &[$($(($old, $new)),+)?];
                        let hint = earlier
                            .iter()
                            .find(|(old, _)| *old == upper)
                            .map(|(old, new)| format!("; {old} (an earlier system's status) is {new} here"))
                            .unwrap_or_default();
                        Err(format!(
                            "unknown {} '{}' (expected one of: {}){hint}",
                            stringify!($name),
                            s,
                            [$($text),+].join(", ")
                        ))
                    }
                }
            }
        }
    };
}

string_enum!(
    /// Where an action is in its life. `SUCCESS` and `CANCELLED` are terminal; `DLQ` is terminal
    /// until an operator requeues it.
    ActionStatus {
        Pending => "PENDING",
        Running => "RUNNING",
        Success => "SUCCESS",
        Retry => "RETRY",
        Dlq => "DLQ",
        Cancelled => "CANCELLED",
        AwaitingApproval => "AWAITING_APPROVAL",
    }
    earlier {
        "READY" => "PENDING",
        "FAILED" => "DLQ",
    }
);

impl ActionStatus {
    /// The statuses of actions still in the queue (everything but SUCCESS and CANCELLED): what
    /// the tick's reads count, through partial indexes.
    pub const OPEN: &'static [ActionStatus] =
        &[ActionStatus::Pending, ActionStatus::Running, ActionStatus::Retry, ActionStatus::Dlq];
}

string_enum!(
    /// How a tick ended.
    TickStatus {
        Success => "SUCCESS",
        Partial => "PARTIAL",
        Fail => "FAIL",
        Idle => "IDLE",
        Paused => "PAUSED",
        Killed => "KILLED",
        Throttled => "THROTTLED",
    }
);

string_enum!(
    /// Severity of an execution log row.
    LogLevel {
        Info => "INFO",
        Warning => "WARNING",
        Error => "ERROR",
    }
);

/// How loud a rule's alert is. Written lower-case, exactly: in a rule's `alert(...)`, an ALERT
/// action's payload and the `severity` label of `orchestrator_alerts_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub const ALL: &'static [Severity] = &[Severity::Info, Severity::Warning, Severity::Critical];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Severity::ALL.iter().copied().find(|v| v.as_str() == s).ok_or_else(|| {
            format!(
                "severity must be {}, not {s:?}",
                Severity::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
            )
        })
    }
}

impl Serialize for Severity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A text enum that parses exactly as written (decision kinds and outcomes are lower-case and
/// stored as such): its text, `Display`, `FromStr`, `Serialize` and `Deserialize` as that text.
macro_rules! exact_text_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($variant:ident => $text:literal),+ $(,)? }) => {
        text_enum_common!($(#[$meta])* $name { $($variant => $text),+ });

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $name::ALL.iter().copied().find(|v| v.as_str() == s).ok_or_else(|| {
                    format!("unknown {} {s:?} (expected one of: {})", $what, [$($text),+].join(", "))
                })
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

exact_text_enum!(
    /// What a rule's decision does, by name: the `kind` of a recorded decision, of a cooldown,
    /// and the `kind` label of `orchestrator_decisions_total`. `rules::Kind` carries the
    /// arguments; this is its name alone, so that the store can read a decision back without
    /// knowing the rules.
    DecisionKind, "decision kind" {
        Retry => "retry",
        Dlq => "dlq",
        Cancel => "cancel",
        ForceRun => "force_run",
        Reprioritize => "reprioritize",
        Postpone => "postpone",
        Rebalance => "rebalance",
        Pause => "pause",
        Resume => "resume",
        Throttle => "throttle",
        SetLimit => "set_limit",
        Enqueue => "enqueue",
        PauseSchedule => "pause_schedule",
        ResumeSchedule => "resume_schedule",
        Alert => "alert",
        OpenWindow => "open_window",
    }
);

exact_text_enum!(
    /// Why a decision was not applied (the rule pipeline's verdicts, and a dry run's).
    Suppressed, "suppression" {
        Dedupe => "dedupe",
        Cap => "cap",
        Cooldown => "cooldown",
        Paused => "paused",
        DryRun => "dry-run",
    }
);

impl Suppressed {
    /// The metric label of a decision suppressed for this reason (`suppressed:<why>`).
    pub fn label(self) -> &'static str {
        match self {
            Suppressed::Dedupe => "suppressed:dedupe",
            Suppressed::Cap => "suppressed:cap",
            Suppressed::Cooldown => "suppressed:cooldown",
            Suppressed::Paused => "suppressed:paused",
            Suppressed::DryRun => "suppressed:dry-run",
        }
    }
}

/// What became of one decision. Stored and shown as text: `applied`, `suppressed:<why>` or
/// `failed:<error>`; [`FromStr`] reads that text back, exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecisionOutcome {
    Applied,
    Suppressed(Suppressed),
    /// The decision was refused when applied: the state it found, or the fence.
    Failed(String),
}

impl DecisionOutcome {
    /// The `outcome` label of `orchestrator_decisions_total` (a failure's text is not a label).
    pub fn label(&self) -> &'static str {
        match self {
            DecisionOutcome::Applied => "applied",
            DecisionOutcome::Suppressed(why) => why.label(),
            DecisionOutcome::Failed(_) => "failed",
        }
    }

    pub fn is_applied(&self) -> bool {
        *self == DecisionOutcome::Applied
    }
}

impl fmt::Display for DecisionOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecisionOutcome::Applied => f.write_str("applied"),
            DecisionOutcome::Suppressed(why) => write!(f, "suppressed:{}", why.as_str()),
            DecisionOutcome::Failed(why) => write!(f, "failed:{why}"),
        }
    }
}

impl FromStr for DecisionOutcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "applied" {
            return Ok(DecisionOutcome::Applied);
        }
        if let Some(why) = s.strip_prefix("suppressed:") {
            return why.parse().map(DecisionOutcome::Suppressed).map_err(|e| format!("decision outcome {s:?}: {e}"));
        }
        if let Some(why) = s.strip_prefix("failed:") {
            return Ok(DecisionOutcome::Failed(why.to_string()));
        }
        Err(format!("unknown decision outcome {s:?} (expected applied, suppressed:<why> or failed:<error>)"))
    }
}

impl Serialize for DecisionOutcome {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for DecisionOutcome {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// One row of the action queue.
#[derive(Clone, Debug, Serialize)]
pub struct Action {
    pub id: i64,
    pub idempotency_key: String,
    pub action_type: String,
    /// The payload as JSON (parsed from `payload_json`).
    pub payload: serde_json::Value,
    pub status: ActionStatus,
    pub priority: i32,
    pub not_before: DateTime<Utc>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub last_error: Option<String>,
    pub claimed_epoch: Option<i64>,
    pub claimed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Set when a stored value of this row cannot be read (its `payload` is then null): the
    /// row is shown with its error instead of failing a listing, and quarantined if claimed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decode_error: Option<String>,
    /// The deadline: after this the action is never started, and a tick moves it to `DLQ`
    /// with the error `expired`. `null`: no deadline.
    pub expires_at: Option<DateTime<Utc>>,
    /// The claim of the attempt in flight or last run (absent before any claim, after a
    /// requeue, and for rows claimed before claims had tokens).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim: Option<ClaimInfo>,
    /// The W3C `traceparent` it was enqueued under (`null`: none): its first attempt's trace
    /// is a child of it, a retry's trace links to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Its approval, when one is (or was) required: the preview the approver sees and who
    /// decided (absent for an action that never needed one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
}

/// An action's approval: the exact request it will send, rendered once in proof mode while it
/// waits (`AWAITING_APPROVAL`), and the decision on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Approval {
    /// Past this a waiting action is cancelled (`approval expired`).
    pub expires_at: Option<DateTime<Utc>>,
    /// The proof-mode rendering of the request (lossy UTF-8 for display); `None`: not rendered yet.
    pub preview: Option<String>,
    /// The sha256 of the preview's bytes.
    pub preview_sha256: Option<String>,
    /// The sha256 approved: the real attempt renders the request again and runs only if it
    /// still has this digest.
    pub approved_sha256: Option<String>,
    /// Who approved or rejected it.
    pub decided_by: Option<String>,
    /// Why (as given).
    pub reason: Option<String>,
}

/// One attempt's claim: who holds it, under which token, until when, in which mode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClaimInfo {
    /// Unique for all time (a sequence): every write about the attempt is fenced by it.
    pub token: i64,
    /// The worker that claimed it (`host:pid:random`).
    pub worker: String,
    /// Past this the leader's rescue takes the attempt back: the claim time plus the type's
    /// timeout, capped by `action_timeout_seconds`.
    pub deadline: DateTime<Utc>,
    /// The mode the attempt runs in, read with the claim: true for proof.
    pub proof: bool,
}

/// The control flags row (`control_flags`, id = 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Flags {
    pub paused: bool,
    pub killed: bool,
    pub proof_mode: bool,
}

/// The lease row as stored.
#[derive(Clone, Debug, Serialize)]
pub struct LeaseRow {
    pub name: String,
    pub owner: String,
    pub epoch: i64,
    pub acquired_at: DateTime<Utc>,
    pub renewed_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// One row of the tick ledger.
#[derive(Clone, Debug, Serialize)]
pub struct TickRow {
    pub id: i64,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub status: TickStatus,
    pub owner: String,
    pub epoch: i64,
    pub actions_attempted: i32,
    pub actions_succeeded: i32,
    pub notes: Option<String>,
}

/// One row of `execution_logs`.
#[derive(Clone, Debug, Serialize)]
pub struct LogRow {
    pub id: i64,
    pub action_id: i64,
    pub tick_id: Option<i64>,
    pub ts: DateTime<Utc>,
    pub level: LogLevel,
    pub message: String,
    pub artifact_ref: Option<String>,
    pub artifact_sha256: Option<String>,
}

/// A log row about to be written (ids and timestamps are the store's).
#[derive(Clone, Debug)]
pub struct NewLog {
    pub action_id: i64,
    pub level: LogLevel,
    pub message: String,
    pub artifact_ref: Option<String>,
    pub artifact_sha256: Option<String>,
}

impl NewLog {
    pub fn new(action_id: i64, level: LogLevel, message: impl Into<String>) -> Self {
        NewLog { action_id, level, message: message.into(), artifact_ref: None, artifact_sha256: None }
    }
}

/// `b - a` in seconds.
pub fn seconds_between(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (b - a).num_milliseconds() as f64 / 1000.0
}

/// Longest action type accepted.
pub const MAX_TYPE_LEN: usize = 64;

/// Checks an action type: 1 to 64 of `[A-Za-z0-9_.:-]`.
pub fn validate_type(t: &str) -> Result<(), String> {
    if t.is_empty() || t.len() > MAX_TYPE_LEN {
        return Err(format!("action type must be 1 to {MAX_TYPE_LEN} characters, got {}", t.len()));
    }
    if let Some(c) = t.chars().find(|c| !(c.is_ascii_alphanumeric() || "_.:-".contains(*c))) {
        return Err(format!("action type {t:?} contains {c:?}; use letters, digits and _ . : -"));
    }
    Ok(())
}

/// A W3C trace context `traceparent` (version `00`): the trace an action's first attempt joins.
/// Parsed once where it enters (`enqueue --traceparent`, the API's `traceparent` header, a
/// body's or a JSON Lines row's field, a tick's own context) and stored as its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceParent {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
}

impl TraceParent {
    /// From its parts; `None` when either id is all zeros (the spec's invalid ids).
    pub fn new(trace_id: [u8; 16], span_id: [u8; 8], flags: u8) -> Option<TraceParent> {
        (trace_id != [0; 16] && span_id != [0; 8]).then_some(TraceParent { trace_id, span_id, flags })
    }

    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    pub fn span_id(&self) -> [u8; 8] {
        self.span_id
    }

    /// The trace flags (bit 0: sampled).
    pub fn flags(&self) -> u8 {
        self.flags
    }
}

impl FromStr for TraceParent {
    type Err = String;

    /// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, lower case, as the W3C
    /// recommendation writes it; anything else is refused with what was wrong.
    fn from_str(text: &str) -> Result<Self, String> {
        let shown = if text.len() > 80 {
            format!("{:?}...", &text[..text.floor_char_boundary(80)])
        } else {
            format!("{text:?}")
        };
        let bad = |why: &str| format!("traceparent {shown} is not a W3C trace context: {why}");
        let parts: Vec<&str> = text.split('-').collect();
        let [version, trace, span, flags] = parts[..] else {
            return Err(bad("expected 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>"));
        };
        if version != "00" {
            return Err(bad(&format!("version {version:?} is not supported (only 00)")));
        }
        fn hex<const N: usize>(part: &str, what: &str) -> Result<[u8; N], String> {
            if part.len() != 2 * N || !part.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(format!("the {what} must be {} lower-case hex digits, got {part:?}", 2 * N));
            }
            let mut out = [0u8; N];
            hex::decode_to_slice(part, &mut out).map_err(|e| format!("the {what}: {e}"))?;
            Ok(out)
        }
        let trace_id = hex::<16>(trace, "trace id").map_err(|e| bad(&e))?;
        let span_id = hex::<8>(span, "parent id").map_err(|e| bad(&e))?;
        let [flags] = hex::<1>(flags, "flags").map_err(|e| bad(&e))?;
        TraceParent::new(trace_id, span_id, flags).ok_or_else(|| bad("an all-zero trace id or parent id is invalid"))
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{}-{}-{:02x}", hex::encode(self.trace_id), hex::encode(self.span_id), self.flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    #[test]
    fn a_traceparent_reads_back_as_written_and_a_bad_one_says_why() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tp: TraceParent = text.parse().unwrap();
        assert_eq!(tp.to_string(), text);
        assert_eq!(tp.flags(), 1);
        for (bad, why) in [
            ("", "expected 00-"),
            ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "version \"01\""),
            ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", "32 lower-case hex"),
            ("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", "trace id must be 32"),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01", "parent id must be 16"),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1", "flags must be 2"),
            ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", "all-zero"),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", "all-zero"),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", "expected 00-"),
        ] {
            let e = bad.parse::<TraceParent>().unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn decision_kinds_and_outcomes_read_back_as_written() {
        for k in DecisionKind::ALL {
            assert_eq!(k.as_str().parse::<DecisionKind>(), Ok(*k));
            assert_eq!(serde_json::to_value(k).unwrap(), serde_json::json!(k.as_str()));
            assert_eq!(serde_json::from_value::<DecisionKind>(serde_json::json!(k.as_str())).unwrap(), *k);
        }
        let mut outcomes = vec![
            (DecisionOutcome::Applied, "applied"),
            (DecisionOutcome::Failed("refused: action 7 is SUCCESS".into()), "failed:refused: action 7 is SUCCESS"),
            (DecisionOutcome::Failed(String::new()), "failed:"),
        ];
        let suppressed: Vec<String> = Suppressed::ALL.iter().map(|s| format!("suppressed:{s}")).collect();
        outcomes.extend(
            Suppressed::ALL.iter().zip(&suppressed).map(|(s, t)| (DecisionOutcome::Suppressed(*s), t.as_str())),
        );
        for (outcome, text) in outcomes {
            assert_eq!(outcome.to_string(), text);
            assert_eq!(text.parse::<DecisionOutcome>(), Ok(outcome.clone()));
            assert_eq!(serde_json::to_value(&outcome).unwrap(), serde_json::json!(text));
            assert_eq!(serde_json::from_value::<DecisionOutcome>(serde_json::json!(text)).unwrap(), outcome);
        }
        assert_eq!(Suppressed::DryRun.label(), "suppressed:dry-run");
    }

    #[test]
    fn decision_text_that_is_not_written_here_is_refused_by_name() {
        let e = "Retry".parse::<DecisionKind>().unwrap_err();
        assert!(e.contains("unknown decision kind \"Retry\"") && e.contains("force_run"), "{e}");
        for bad in ["", "Applied", "applied ", "suppressed:later", "suppressed", "failed", "skipped:x"] {
            let e = bad.parse::<DecisionOutcome>().unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }

    #[test]
    fn severities_read_and_write_the_same_lower_case_text() {
        for s in Severity::ALL {
            assert_eq!(s.as_str().parse::<Severity>(), Ok(*s));
            assert_eq!(serde_json::to_value(s).unwrap(), serde_json::json!(s.as_str()));
        }
        let e = "CRITICAL".parse::<Severity>().unwrap_err();
        assert_eq!(e, r#"severity must be info, warning, critical, not "CRITICAL""#);
    }

    #[test]
    fn overflowing_offsets_are_errors_not_panics() {
        let t = now();
        let e = later(t, Duration::from_secs(300_000 * 365 * 86_400)).unwrap_err();
        assert!(e.contains("longer than the maximum of 365000 days"), "{e}");
        assert!(earlier(t, Duration::MAX).is_err());
        assert_eq!(later(t, Duration::from_secs(60)).unwrap(), t + chrono::Duration::seconds(60));
        assert!(
            later(DateTime::<Utc>::MAX_UTC, Duration::from_secs(1)).unwrap_err().contains("not a representable time")
        );
        assert_eq!(later_saturating(t, Duration::MAX), DateTime::<Utc>::MAX_UTC);
        assert_eq!(earlier_saturating(t, Duration::MAX), DateTime::<Utc>::MIN_UTC);
        assert!(later(t, MAX_DURATION).is_ok() && earlier(t, MAX_DURATION).is_ok());
    }

    #[test]
    fn input_dates_stay_within_four_digit_years() {
        let far: DateTime<Utc> = serde_json::from_str("\"+100000-01-01T00:00:00Z\"").unwrap();
        assert!(check_date("not_before", far).unwrap_err().contains("outside the years 0001 to 9999"));
        let before: DateTime<Utc> = serde_json::from_str("\"-0001-01-01T00:00:00Z\"").unwrap();
        assert!(check_date("not_before", before).is_err());
        assert!(check_date("not_before", now()).is_ok());
        assert!(check_date("not_before", later(now(), MAX_DURATION).unwrap()).is_ok());
    }

    proptest! {
        /// Any duration on any date: the checked forms never panic, and the saturating forms
        /// agree with them where they succeed.
        #[test]
        fn any_duration_on_any_date_never_panics(secs in any::<u64>(), nanos in 0u32..1_000_000_000, at in any::<i64>()) {
            let d = Duration::new(secs, nanos);
            let t = DateTime::<Utc>::from_timestamp(at % 8_000_000_000_000, 0).unwrap_or(DateTime::<Utc>::MIN_UTC);
            match later(t, d) {
                Ok(r) => prop_assert_eq!(later_saturating(t, d), r),
                Err(_) => prop_assert_eq!(later_saturating(t, d), DateTime::<Utc>::MAX_UTC),
            }
            match earlier(t, d) {
                Ok(r) => prop_assert_eq!(earlier_saturating(t, d), r),
                Err(_) => prop_assert_eq!(earlier_saturating(t, d), DateTime::<Utc>::MIN_UTC),
            }
        }
    }
}
