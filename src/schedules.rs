//! Schedules as the config, the CLI, the API and rules give them: a cron expression in an IANA
//! time zone, the action each slot enqueues, and what a leader does with slots it finds late
//! (the misfire policy). It parses, validates and plans: which slots of a schedule are due now,
//! which fire and which are misfires ([`Timing::plan`]), and the idempotency key of a slot.
//!
//! Cron is `croner`'s (five fields, OCPS: a fixed time in a skipped hour fires once right after
//! the gap, in a repeated hour once, at its first pass), zones are `chrono-tz`'s. Nothing here
//! reads the database or the clock: the leader's scheduler (`services/scheduler.rs`) gives the
//! times, the store (`store/schedules.rs`) keeps the rows and fences the fires.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use crate::settings::ConfigError;
use crate::settings::key::KeyDefault::{Required, Unset, Value};
use crate::settings::key::{Found, Key, key};

/// The longest schedule name.
pub const MAX_NAME: usize = 64;
/// Slots looked at per schedule per tick: a leader down for longer than this many slots counts
/// the rest as misfires without listing them.
pub const MAX_SCAN: usize = 10_000;
/// The largest `catch_up_cap`.
pub const MAX_CATCH_UP: u32 = 1000;
/// How late a slot may be seen and still count as on time, unless the schedule says otherwise.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(300);

/// What a leader does with slots it finds late (past their grace): the leader was down, or the
/// schedule's ticks came slower than its slots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Misfire {
    /// Late slots are not fired; only a slot within its grace is.
    Skip,
    /// One fire for the latest late slot, whatever the number missed.
    #[default]
    Once,
    /// Every late slot fires, the latest `catch_up_cap` of them, oldest first.
    All,
}

impl Misfire {
    pub fn as_str(self) -> &'static str {
        match self {
            Misfire::Skip => "skip",
            Misfire::Once => "once",
            Misfire::All => "all",
        }
    }
}

impl fmt::Display for Misfire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Misfire {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "skip" => Ok(Misfire::Skip),
            "once" => Ok(Misfire::Once),
            "all" => Ok(Misfire::All),
            other => Err(format!("misfire '{}' is not one of skip, once, all", other.escape_debug())),
        }
    }
}

/// One schedule's definition, as declared (config, `schedules add`, `POST /api/schedules`).
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleSpec {
    /// Five-field cron (`30 2 * * *`) or a nickname (`@daily`).
    pub cron: String,
    /// IANA zone the cron reads its wall clock in (`Europe/Madrid`); `UTC` by default.
    pub timezone: String,
    pub action_type: String,
    /// A JSON object.
    pub payload: serde_json::Value,
    pub priority: i32,
    /// `None`: the config's `max_attempts`.
    pub max_attempts: Option<u32>,
    /// Each fired action's deadline, from its slot.
    pub deadline: Option<Duration>,
    pub misfire: Misfire,
    /// For [`Misfire::All`]: at most this many late slots fire per catch-up.
    pub catch_up_cap: u32,
    /// How late a slot may be seen and still be on time.
    pub misfire_grace: Duration,
    /// The definition's switch: `false` keeps the schedule and fires nothing.
    pub enabled: bool,
}

impl Default for ScheduleSpec {
    fn default() -> Self {
        ScheduleSpec {
            cron: String::new(),
            timezone: "UTC".into(),
            action_type: String::new(),
            payload: serde_json::json!({}),
            priority: 0,
            max_attempts: None,
            deadline: None,
            misfire: Misfire::default(),
            catch_up_cap: 10,
            misfire_grace: DEFAULT_GRACE,
            enabled: true,
        }
    }
}

impl ScheduleSpec {
    /// Checks every field (the cron, the zone, the action it enqueues); the first fault, named.
    pub fn validate(&self) -> Result<Timing, String> {
        let timing = Timing::checked(&self.cron, &self.timezone)?;
        crate::model::validate_type(&self.action_type).map_err(|e| format!("type: {e}"))?;
        if !self.payload.is_object() {
            return Err("payload must be a JSON object".into());
        }
        crate::queue::validate("payload", &self.payload, crate::queue::MAX_PAYLOAD_BYTES)?;
        if !crate::queue::PRIORITY_RANGE.contains(&self.priority) {
            let r = &crate::queue::PRIORITY_RANGE;
            return Err(format!("priority {} is out of range {}..={}", self.priority, r.start(), r.end()));
        }
        if let Some(n) = self.max_attempts
            && !(1..=1000).contains(&n)
        {
            return Err(format!("max_attempts must be between 1 and 1000, got {n}"));
        }
        if self.deadline.is_some_and(|d| d.is_zero() || d > Duration::from_secs(366 * 86_400)) {
            return Err("deadline must be from 1s to 366d".into());
        }
        if !(1..=MAX_CATCH_UP).contains(&self.catch_up_cap) {
            return Err(format!("catch_up_cap must be between 1 and {MAX_CATCH_UP}, got {}", self.catch_up_cap));
        }
        if self.misfire_grace.is_zero() || self.misfire_grace > Duration::from_secs(7 * 86_400) {
            return Err("misfire_grace must be from 1s to 7d".into());
        }
        Ok(timing)
    }
}

/// A schedule's name: 1 to 64 of letters, digits, `_`, `-` and `.` (it is part of each slot's
/// idempotency key and a metric label).
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if name.is_empty() || name.len() > MAX_NAME || !name.chars().all(ok_char) {
        return Err(format!(
            "schedule name '{}' must be 1 to {MAX_NAME} letters, digits, '_', '-' or '.'",
            name.escape_debug()
        ));
    }
    Ok(())
}

/// The idempotency key of `name`'s slot at `slot`: the same on every leader, so a slot enqueued
/// twice (a leader that died between the enqueue and its mark) is one action.
pub fn slot_key(name: &str, slot: DateTime<Utc>) -> String {
    format!("schedule:{name}:{}", slot.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// A parsed cron in its zone: when its slots fall.
#[derive(Clone, Debug)]
pub struct Timing {
    cron: Cron,
    tz: chrono_tz::Tz,
}

/// What a leader does now with one schedule's due slots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The slots to enqueue, oldest first.
    pub fire: Vec<DateTime<Utc>>,
    /// Due slots that are not fired (late, under the policy), counted.
    pub missed: u64,
    /// The latest due slot: the schedule's new mark once the fires are done. `None`: no slot
    /// was due.
    pub latest: Option<DateTime<Utc>>,
}

impl Timing {
    /// Parses a five-field cron (or a nickname) and an IANA zone name.
    pub fn parse(cron: &str, timezone: &str) -> Result<Timing, String> {
        let parser = CronParser::builder().seconds(Seconds::Disallowed).year(Year::Disallowed).build();
        let parsed = parser.parse(cron).map_err(|e| {
            format!(
                "cron '{}' is not a valid five-field cron expression (minute hour day month weekday): {e}",
                cron.escape_debug()
            )
        })?;
        let tz = timezone.parse::<chrono_tz::Tz>().map_err(|_| {
            format!("timezone '{}' is not an IANA time zone (e.g. UTC, Europe/Madrid)", timezone.escape_debug())
        })?;
        Ok(Timing { cron: parsed, tz })
    }

    /// [`Timing::parse`], and refused if it never fires: the check of a new definition.
    pub fn checked(cron: &str, timezone: &str) -> Result<Timing, String> {
        let timing = Timing::parse(cron, timezone)?;
        if timing.next_after(Utc::now()).is_none() {
            return Err(format!("cron '{}' never fires", cron.escape_debug()));
        }
        Ok(timing)
    }

    /// The first slot strictly after `t`, in UTC; `None` if there is none (within croner's range).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.tz);
        self.cron.find_next_occurrence(&local, false).ok().map(|n| n.with_timezone(&Utc))
    }

    /// The slots in `(after, now]` and what to do with them under `misfire`: a slot seen within
    /// `grace` of its time is on time and fires under every policy; the others are late.
    pub fn plan(&self, after: DateTime<Utc>, now: DateTime<Utc>, misfire: Misfire, cap: u32, grace: Duration) -> Plan {
        let mut due = Vec::new();
        let mut more = 0u64;
        let mut at = after;
        while let Some(next) = self.next_after(at).filter(|n| *n <= now) {
            if due.len() < MAX_SCAN {
                due.push(next);
            } else {
                more += 1;
                if more > MAX_SCAN as u64 {
                    // Far behind: jump to the last slot, the ones between counted as one more scan.
                    break;
                }
            }
            at = next;
        }
        let Some(&latest) = due.last() else { return Plan::default() };
        let latest = if more > 0 { self.last_at_or_before(now).unwrap_or(latest) } else { latest };
        let on_time = now.signed_duration_since(latest).to_std().map_or(true, |late| late <= grace);
        let total = due.len() as u64 + more;
        let fire: Vec<DateTime<Utc>> = if on_time && more == 0 {
            // The latest slot is on time: it fires; the policy decides about the earlier ones.
            let late = &due[..due.len() - 1];
            let mut fire = match misfire {
                Misfire::All => late[late.len().saturating_sub(cap.saturating_sub(1) as usize)..].to_vec(),
                Misfire::Skip | Misfire::Once => Vec::new(),
            };
            fire.push(latest);
            fire
        } else if on_time {
            vec![latest]
        } else {
            match misfire {
                Misfire::Skip => Vec::new(),
                Misfire::Once => vec![latest],
                Misfire::All if more == 0 => due[due.len().saturating_sub(cap as usize)..].to_vec(),
                Misfire::All => vec![latest],
            }
        };
        Plan { missed: total - fire.len() as u64, fire, latest: Some(latest) }
    }

    /// The last slot at or before `t`.
    fn last_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.tz);
        self.cron.find_previous_occurrence(&local, true).ok().map(|n| n.with_timezone(&Utc))
    }
}

/// One schedule as the CLI, the API, the page, the rules and the metrics show it: the stored
/// row, its state, when it fires next and how late its last fire was.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ScheduleView {
    #[serde(flatten)]
    pub row: crate::store::ScheduleRow,
    /// `running`, `paused` (an operator or a rule) or `off` (its definition's `enabled: false`).
    pub state: &'static str,
    /// The next slot it will fire (in the past when a slot is due and not fired yet); `None`
    /// while it is not running, or if its stored definition no longer parses.
    pub next_fire: Option<DateTime<Utc>>,
    /// Seconds between the last fired slot and its fire.
    pub lag_seconds: Option<f64>,
}

/// `row`'s view as of `now`.
pub fn view(row: crate::store::ScheduleRow) -> ScheduleView {
    let state = match (row.def.enabled, row.paused) {
        (false, _) => "off",
        (true, true) => "paused",
        (true, false) => "running",
    };
    // The leader keeps the next slot; computed here only while it does not know it yet.
    let next_fire = match (state, row.next_slot) {
        ("running", Some(t)) if t > row.after() => Some(t),
        ("running", _) => Timing::parse(&row.def.cron, &row.def.timezone).ok().and_then(|t| t.next_after(row.after())),
        _ => None,
    };
    let lag_seconds = match (row.last_slot, row.last_fired_at) {
        (Some(slot), Some(fired)) => Some(crate::model::seconds_between(slot, fired).max(0.0)),
        _ => None,
    };
    ScheduleView { row, state, next_fire, lag_seconds }
}

/// `schedules:` (file only): named schedules the leader fires. The keys of one entry apply in
/// this order; the last one checks the whole entry.
pub const SCHEDULE_KEYS: &[Key<BTreeMap<String, ScheduleSpec>>] = &[
    key!("schedules.<name>.cron": String = Required,
    "Five-field cron expression (`30 2 * * *`) or a nickname (`@daily`), read in `timezone`",
    |m, v, at| entry(m, at)?.cron = v),
    key!("schedules.<name>.timezone": String = Value("UTC"),
    "IANA time zone the cron's wall clock is read in (`Europe/Madrid`)",
    |m, v, at| entry(m, at)?.timezone = v),
    key!("schedules.<name>.type": String = Required,
    "Action type each slot enqueues",
    |m, v, at| entry(m, at)?.action_type = v),
    key!("schedules.<name>.payload": serde_json::Value = Value("{}"),
    "Payload of each enqueued action (a map)",
    |m, v, at| entry(m, at)?.payload = v),
    key!("schedules.<name>.priority": i32 = Value("0"),
    "Priority of each enqueued action",
    |m, v, at| entry(m, at)?.priority = v),
    key!("schedules.<name>.max_attempts": Option<u32> = Unset,
    "Attempts of each enqueued action; unset: the top-level `max_attempts`",
    |m, v, at| entry(m, at)?.max_attempts = v),
    key!("schedules.<name>.deadline": Option<String> = Unset,
    "Deadline of each enqueued action, from its slot (`1h`); unset: none",
    |m, v, at| {
        let d = match v {
            Some(text) => Some(crate::settings::parse_duration(&text).map_err(|e| at.invalid(e))?),
            None => None,
        };
        entry(m, at)?.deadline = d;
    }),
    key!("schedules.<name>.misfire": String = Value("once"),
    "Slots found late (past `misfire_grace`): `skip` them, fire `once` for all, or fire `all` (up to `catch_up_cap`)",
    |m, v, at| entry(m, at)?.misfire = v.parse().map_err(|e: String| at.invalid(e))?),
    key!("schedules.<name>.catch_up_cap": u32 = Value("10"),
    "With `misfire: all`, at most this many late slots fire",
    |m, v, at| entry(m, at)?.catch_up_cap = v),
    key!("schedules.<name>.misfire_grace": String = Value("5m"),
    "How late a slot may be seen and still fire as on time",
    |m, v, at| entry(m, at)?.misfire_grace = crate::settings::parse_duration(&v).map_err(|e| at.invalid(e))?),
    key!("schedules.<name>.enabled": bool = Value("true"),
    "`false` keeps the schedule and fires nothing",
    |m, v, at| {
        let spec = entry(m, at)?;
        spec.enabled = v;
        // The entry's last key: the entry is whole.
        spec.validate().map_err(|e| at.entry_error(e))?;
    }),
];

/// The schedule of `at`'s entry, added on its first key once its name is checked.
fn entry<'m>(
    schedules: &'m mut BTreeMap<String, ScheduleSpec>,
    at: &Found<'_>,
) -> Result<&'m mut ScheduleSpec, ConfigError> {
    let name = at.entry();
    if !schedules.contains_key(name) {
        validate_name(name).map_err(|e| at.entry_error(e))?;
    }
    Ok(schedules.entry(name.to_string()).or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    const GRACE: Duration = Duration::from_secs(60);

    #[test]
    fn an_on_time_slot_fires_under_every_policy() {
        let every_hour = Timing::parse("0 * * * *", "UTC").unwrap();
        for policy in [Misfire::Skip, Misfire::Once, Misfire::All] {
            let p = every_hour.plan(t("2027-01-01T09:59:00Z"), t("2027-01-01T10:00:05Z"), policy, 10, GRACE);
            assert_eq!(p, Plan { fire: vec![t("2027-01-01T10:00:00Z")], missed: 0, latest: p.latest }, "{policy}");
            assert_eq!(p.latest, Some(t("2027-01-01T10:00:00Z")));
        }
        let none = every_hour.plan(t("2027-01-01T10:00:00Z"), t("2027-01-01T10:59:59Z"), Misfire::Once, 10, GRACE);
        assert_eq!(none, Plan::default(), "a slot already marked does not fire again");
    }

    #[test]
    fn three_missed_slots_fire_per_the_misfire_policy() {
        // Down from 09:30 to 12:30: the 10:00, 11:00 and 12:00 slots are late.
        let every_hour = Timing::parse("0 * * * *", "UTC").unwrap();
        let (after, now) = (t("2027-01-01T09:30:00Z"), t("2027-01-01T12:30:00Z"));
        let skip = every_hour.plan(after, now, Misfire::Skip, 10, GRACE);
        assert_eq!((skip.fire.len(), skip.missed), (0, 3));
        assert_eq!(skip.latest, Some(t("2027-01-01T12:00:00Z")), "the mark moves past what was skipped");
        let once = every_hour.plan(after, now, Misfire::Once, 10, GRACE);
        assert_eq!((once.fire, once.missed), (vec![t("2027-01-01T12:00:00Z")], 2));
        let all = every_hour.plan(after, now, Misfire::All, 10, GRACE);
        assert_eq!(all.fire, [t("2027-01-01T10:00:00Z"), t("2027-01-01T11:00:00Z"), t("2027-01-01T12:00:00Z")]);
        assert_eq!(all.missed, 0);
        let capped = every_hour.plan(after, now, Misfire::All, 2, GRACE);
        assert_eq!((capped.fire, capped.missed), (vec![t("2027-01-01T11:00:00Z"), t("2027-01-01T12:00:00Z")], 1));
        // Back just in time for the 12:00 slot: it fires on time, the two before it per policy.
        let now = t("2027-01-01T12:00:30Z");
        assert_eq!(every_hour.plan(after, now, Misfire::Skip, 10, GRACE).fire, [t("2027-01-01T12:00:00Z")]);
        assert_eq!(every_hour.plan(after, now, Misfire::All, 2, GRACE).fire.len(), 2);
    }

    #[test]
    fn a_skipped_hour_fires_once_after_the_gap_and_a_repeated_hour_once() {
        // Europe/Madrid: 2027-03-28 02:00 CET jumps to 03:00 CEST; 2027-10-31 03:00 CEST falls
        // back to 02:00 CET.
        let nightly = Timing::parse("30 2 * * *", "Europe/Madrid").unwrap();
        let spring = nightly.plan(t("2027-03-27T12:00:00Z"), t("2027-03-28T12:00:00Z"), Misfire::All, 10, GRACE);
        // 02:30 does not exist that night: it fires once, at 03:00 CEST (01:00 UTC).
        assert_eq!(spring.fire, [t("2027-03-28T01:00:00Z")]);
        assert_eq!(nightly.next_after(t("2027-03-28T01:00:00Z")), Some(t("2027-03-29T00:30:00Z")));
        let autumn = nightly.plan(t("2027-10-30T12:00:00Z"), t("2027-10-31T12:00:00Z"), Misfire::All, 10, GRACE);
        // 02:30 happens twice (00:30 UTC in CEST, 01:30 UTC in CET): it fires once, the first.
        assert_eq!(autumn.fire, [t("2027-10-31T00:30:00Z")]);
        // Every 30 minutes: the repeated hour's slots each fire, the skipped hour's do not exist.
        let half_hourly = Timing::parse("*/30 * * * *", "Europe/Madrid").unwrap();
        let over = half_hourly.plan(t("2027-10-30T23:50:00Z"), t("2027-10-31T02:10:00Z"), Misfire::All, 100, GRACE);
        assert_eq!(over.fire.len(), 5, "00:00, 00:30, 01:00, 01:30 UTC and 02:00 UTC: {:?}", over.fire);
    }

    #[test]
    fn a_leader_far_behind_counts_what_it_cannot_list() {
        let every_minute = Timing::parse("* * * * *", "UTC").unwrap();
        let p = every_minute.plan(t("2027-01-01T00:00:00Z"), t("2027-03-01T00:00:00Z"), Misfire::Once, 10, GRACE);
        assert_eq!(p.fire, [t("2027-03-01T00:00:00Z")]);
        assert_eq!(p.latest, Some(t("2027-03-01T00:00:00Z")));
        assert!(p.missed >= MAX_SCAN as u64, "{}", p.missed);
    }

    #[test]
    fn bad_definitions_are_refused_by_name() {
        let bad = |cron: &str, tz: &str| Timing::checked(cron, tz).unwrap_err();
        assert!(
            bad("61 * * * *", "UTC").starts_with("cron '61 * * * *' is not a valid five-field cron"),
            "{}",
            bad("61 * * * *", "UTC")
        );
        assert!(bad("0 0 * * * *", "UTC").contains("is not a valid five-field"), "seconds are refused");
        assert!(bad("0 0 30 2 *", "UTC").contains("never fires"), "{}", bad("0 0 30 2 *", "UTC"));
        assert!(bad("@daily", "Mars/Olympus").contains("timezone 'Mars/Olympus' is not an IANA time zone"));
        let spec = |f: &dyn Fn(&mut ScheduleSpec)| {
            let mut s = ScheduleSpec { cron: "@daily".into(), action_type: "NOOP".into(), ..Default::default() };
            f(&mut s);
            s.validate().map(|_| ())
        };
        assert_eq!(spec(&|_| {}), Ok(()));
        assert!(spec(&|s| s.action_type = "no such".into()).unwrap_err().starts_with("type: "));
        assert!(spec(&|s| s.payload = serde_json::json!([1])).unwrap_err().contains("JSON object"));
        assert!(spec(&|s| s.catch_up_cap = 0).unwrap_err().contains("catch_up_cap"));
        assert!(spec(&|s| s.priority = 2_000_000).unwrap_err().contains("priority"));
        assert!(validate_name("nightly-sync.v2").is_ok());
        assert!(validate_name("a b").unwrap_err().contains("schedule name 'a b'"));
        assert_eq!(slot_key("n", t("2027-03-28T01:00:00Z")), "schedule:n:2027-03-28T01:00:00Z");
    }
}
