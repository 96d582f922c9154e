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

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
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

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                let upper = s.to_ascii_uppercase();
                match upper.as_str() {
                    $($text => Ok($name::$variant),)+
                    _ => Err(format!(
                        "unknown {} '{}' (expected one of: {})",
                        stringify!($name),
                        s,
                        [$($text),+].join(", ")
                    )),
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
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
    }
);

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
    /// The deadline: after this the action is never started, and a tick moves it to `DLQ`
    /// with the error `expired`. `null`: no deadline.
    pub expires_at: Option<DateTime<Utc>>,
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
