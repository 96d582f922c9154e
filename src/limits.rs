//! Limits per action type: what `limits:` in the config, `orchestrator limits set`,
//! `/api/limits` and a rule's `set_limit` say, checked once here. A [`LimitSpec`] holds at most
//! three limits, an optional partition and allowed hours:
//! - `max_running`: at most N attempts of the type `RUNNING` at once, on every host;
//! - `rate`: at most N attempt starts in any window of the period (a sliding window, see
//!   ARCHITECTURE.md "Limits");
//! - `daily_budget`: at most N attempt starts per UTC day;
//! - `partition_by`: the same limits per value of one payload field;
//! - `allowed_hours`: the times of day the type's actions may start ([`AllowedHours`]).
//!
//! It also holds what the database holds of them ([`TypeLimit`], its overrides, the usage view
//! [`LimitUsage`]) and every judgement on them: what a limit leaves ([`LimitSpec::remaining`],
//! [`LimitSpec::room`]), whether a type's work is held by its limits ([`LimitUsage::is_held`],
//! [`held_waiting`]), whether a row is enforced ([`TypeLimit::enforced`]).
//!
//! It parses, validates and judges, and declares the config's `limits:` keys ([`LIMIT_KEYS`],
//! which `config` assembles); enforcement is the claim's (`store/limits/`), and nothing here
//! reads the database or the clock.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::settings::ConfigError;
use crate::settings::key::KeyDefault::Unset;
use crate::settings::key::{Found, Key, key};

use chrono::{DateTime, Utc};

/// The partition every value beyond the tracked cap shares.
pub const OVERFLOW_PARTITION: &str = "(overflow)";
/// The largest `max_running`, rate count or budget accepted.
pub const MAX_LIMIT: u64 = 1_000_000_000;
/// The longest rate period: one day (a longer window is a budget).
pub const MAX_RATE_PERIOD: Duration = Duration::from_secs(86_400);
/// The deepest payload path `partition_by` takes.
pub const MAX_PATH_DEPTH: usize = 8;
/// Partition values tracked per partitioned limit unless `limit_partitions` says otherwise.
pub const DEFAULT_PARTITIONS: u32 = 1000;

/// `N/period`: at most `count` attempt starts in any window of `period`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub count: u64,
    pub period: Duration,
}

impl FromStr for Rate {
    type Err = String;

    /// `300/1h`, `50/1s`, `10/90s`, `5/m` (a bare unit is one of it).
    fn from_str(s: &str) -> Result<Rate, String> {
        let t = s.trim();
        let bad = |why: &str| format!("rate '{}' {why} (write N/PERIOD, e.g. 300/1h or 50/1s)", t.escape_debug());
        let (count, period) = t.split_once('/').ok_or_else(|| bad("has no '/'"))?;
        let count: u64 = count.trim().parse().map_err(|_| bad("does not start with a whole number"))?;
        if count == 0 || count > MAX_LIMIT {
            return Err(bad(&format!("must allow 1 to {MAX_LIMIT} starts")));
        }
        let period = period.trim();
        if period.is_empty() {
            return Err(bad("has no period after '/'"));
        }
        let period =
            if period.starts_with(|c: char| c.is_ascii_digit()) { period.to_string() } else { format!("1{period}") };
        let period = crate::settings::parse_duration(&period).map_err(|e| bad(&format!("has a bad period: {e}")))?;
        if period.is_zero() || period > MAX_RATE_PERIOD || period.subsec_nanos() != 0 {
            return Err(bad("needs a period of whole seconds, from 1s to 1d (use daily_budget for a day's total)"));
        }
        Ok(Rate { count, period })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, humantime::format_duration(self.period))
    }
}

impl serde::Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// A payload field, written `payload.a.b`: each segment letters, digits, `_` or `-`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayloadPath(Vec<String>);

impl PayloadPath {
    pub fn segments(&self) -> &[String] {
        &self.0
    }
}

impl FromStr for PayloadPath {
    type Err = String;

    fn from_str(s: &str) -> Result<PayloadPath, String> {
        let t = s.trim();
        let bad = |why: &str| {
            format!("partition_by '{}' {why} (write payload.FIELD, e.g. payload.partner)", t.escape_debug())
        };
        let rest = t.strip_prefix("payload.").ok_or_else(|| bad("is not a payload path"))?;
        let segs: Vec<String> = rest.split('.').map(str::to_string).collect();
        if segs.len() > MAX_PATH_DEPTH {
            return Err(bad(&format!("is deeper than {MAX_PATH_DEPTH} fields")));
        }
        for seg in &segs {
            if seg.is_empty()
                || seg.len() > 64
                || !seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(bad("has a field that is not 1 to 64 letters, digits, _ or -"));
            }
        }
        Ok(PayloadPath(segs))
    }
}

impl fmt::Display for PayloadPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "payload.{}", self.0.join("."))
    }
}

impl serde::Serialize for PayloadPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// Allowed hours, `HH:MM-HH:MM ZONE` (`09:00-21:00 Europe/Madrid`): the times of day, on the
/// zone's wall clock, when a type's actions may start. Outside them its due work is held, as an
/// open window holds it: not claimed, blocking nothing else, deadlines still running. An end
/// before the start spans midnight (`22:00-06:00 UTC`); `24:00` ends at midnight. A start that
/// falls in a skipped hour (spring forward) opens at the first time after it; in a repeated
/// hour the wall clock says when, so a window covering it covers both passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllowedHours {
    pub from: chrono::NaiveTime,
    pub to: chrono::NaiveTime,
    pub tz: chrono_tz::Tz,
}

impl AllowedHours {
    /// True when an action of the type may start at `at`.
    pub fn is_open(&self, at: DateTime<Utc>) -> bool {
        let t = at.with_timezone(&self.tz).time();
        if self.from < self.to { self.from <= t && t < self.to } else { t >= self.from || t < self.to }
    }
}

impl FromStr for AllowedHours {
    type Err = String;

    fn from_str(s: &str) -> Result<AllowedHours, String> {
        let t = s.trim();
        let bad = |why: &str| {
            format!(
                "allowed_hours '{}' {why} (write HH:MM-HH:MM ZONE, e.g. 09:00-21:00 Europe/Madrid)",
                t.escape_debug()
            )
        };
        let (span, zone) = t.split_once(char::is_whitespace).ok_or_else(|| bad("names no time zone"))?;
        let (from, to) = span.split_once('-').ok_or_else(|| bad("has no '-' between its start and end"))?;
        let time = |text: &str, end: bool| -> Result<chrono::NaiveTime, String> {
            if end && text == "24:00" {
                return Ok(chrono::NaiveTime::MIN);
            }
            match chrono::NaiveTime::parse_from_str(text, "%H:%M") {
                Ok(v) if text.len() == 5 => Ok(v),
                _ => Err(bad(&format!("has '{}', not a time of day HH:MM", text.escape_debug()))),
            }
        };
        let (from, to) = (time(from, false)?, time(to, true)?);
        if from == to {
            return Err(bad("starts where it ends (leave allowed_hours out to allow every hour)"));
        }
        let tz = zone.trim().parse::<chrono_tz::Tz>().map_err(|_| {
            bad(&format!("has '{}', not an IANA time zone (e.g. UTC, Europe/Madrid)", zone.trim().escape_debug()))
        })?;
        Ok(AllowedHours { from, to, tz })
    }
}

impl fmt::Display for AllowedHours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let to =
            if self.to == chrono::NaiveTime::MIN { "24:00".to_string() } else { self.to.format("%H:%M").to_string() };
        write!(f, "{}-{to} {}", self.from.format("%H:%M"), self.tz.name())
    }
}

impl serde::Serialize for AllowedHours {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The limits of one action type. Every field `None`: no limit of that kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LimitSpec {
    pub max_running: Option<u64>,
    pub rate: Option<Rate>,
    pub daily_budget: Option<u64>,
    pub partition_by: Option<PayloadPath>,
    pub allowed_hours: Option<AllowedHours>,
}

impl LimitSpec {
    /// True when it limits nothing.
    pub fn is_empty(&self) -> bool {
        !self.counts() && self.allowed_hours.is_none()
    }

    /// True when it counts something (running attempts, starts in a window, starts a day):
    /// what the limited claim keeps track of. Allowed hours alone count nothing.
    pub fn counts(&self) -> bool {
        self.max_running.is_some() || self.rate.is_some() || self.daily_budget.is_some()
    }

    /// True when allowed hours hold the type at `at`.
    pub fn closed_at(&self, at: DateTime<Utc>) -> bool {
        self.allowed_hours.is_some_and(|h| !h.is_open(at))
    }

    /// Checks the numbers: each limit from 0 (nothing starts) to [`MAX_LIMIT`].
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [("max_running", self.max_running), ("daily_budget", self.daily_budget)] {
            if let Some(v) = v
                && v > MAX_LIMIT
            {
                return Err(format!("{name} {v} is above the maximum of {MAX_LIMIT}"));
            }
        }
        if self.is_empty() {
            return Err("names no limit (give max_running, rate, daily_budget or allowed_hours)".into());
        }
        Ok(())
    }

    /// Sets one field from text, as `limits set TYPE FIELD VALUE` and `/api/limits` give it.
    pub fn set(&mut self, field: LimitField, value: &str) -> Result<(), String> {
        match field {
            LimitField::MaxRunning => self.max_running = Some(whole(field, value)?),
            LimitField::DailyBudget => self.daily_budget = Some(whole(field, value)?),
            LimitField::Rate => self.rate = Some(value.parse()?),
        }
        Ok(())
    }
}

/// A field of a type's base limits: the three limits, the partition and the allowed hours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BaseField {
    #[value(name = "max_running")]
    MaxRunning,
    #[value(name = "rate")]
    Rate,
    #[value(name = "daily_budget")]
    DailyBudget,
    #[value(name = "partition_by")]
    PartitionBy,
    #[value(name = "allowed_hours")]
    AllowedHours,
}

impl BaseField {
    pub const ALL: [BaseField; 5] = [
        BaseField::MaxRunning,
        BaseField::Rate,
        BaseField::DailyBudget,
        BaseField::PartitionBy,
        BaseField::AllowedHours,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BaseField::MaxRunning => "max_running",
            BaseField::Rate => "rate",
            BaseField::DailyBudget => "daily_budget",
            BaseField::PartitionBy => "partition_by",
            BaseField::AllowedHours => "allowed_hours",
        }
    }

    /// The field's value in `spec` as text (`None`: not set).
    pub fn value_in(self, spec: &LimitSpec) -> Option<String> {
        match self {
            BaseField::MaxRunning => spec.max_running.map(|n| n.to_string()),
            BaseField::Rate => spec.rate.map(|r| r.to_string()),
            BaseField::DailyBudget => spec.daily_budget.map(|n| n.to_string()),
            BaseField::PartitionBy => spec.partition_by.as_ref().map(|p| p.to_string()),
            BaseField::AllowedHours => spec.allowed_hours.map(|h| h.to_string()),
        }
    }

    /// Removes the field from `spec`.
    pub fn remove(self, spec: &mut LimitSpec) {
        match self {
            BaseField::MaxRunning => spec.max_running = None,
            BaseField::Rate => spec.rate = None,
            BaseField::DailyBudget => spec.daily_budget = None,
            BaseField::PartitionBy => spec.partition_by = None,
            BaseField::AllowedHours => spec.allowed_hours = None,
        }
    }
}

impl fmt::Display for BaseField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl LimitSpec {
    /// `self` with the fields `other` sets taken from it (`limits set`: the fields given
    /// replace theirs, the others keep their value).
    pub fn merged(mut self, other: &LimitSpec) -> LimitSpec {
        self.max_running = other.max_running.or(self.max_running);
        self.rate = other.rate.or(self.rate);
        self.daily_budget = other.daily_budget.or(self.daily_budget);
        self.partition_by = other.partition_by.clone().or(self.partition_by);
        self.allowed_hours = other.allowed_hours.or(self.allowed_hours);
        self
    }

    /// The fields whose values differ between `self` and `other`.
    pub fn differing(&self, other: &LimitSpec) -> Vec<BaseField> {
        BaseField::ALL.into_iter().filter(|f| f.value_in(self) != f.value_in(other)).collect()
    }
}

/// A whole number from 0 to [`MAX_LIMIT`], for `field`.
pub fn whole(field: LimitField, value: &str) -> Result<u64, String> {
    let t = value.trim();
    match t.parse::<i64>() {
        Ok(n) if (0..=MAX_LIMIT as i64).contains(&n) => Ok(n as u64),
        Ok(n) => Err(format!("{field} {n} must be from 0 to {MAX_LIMIT}")),
        Err(_) => Err(format!("{field} '{}' is not a whole number", t.escape_debug())),
    }
}

/// The limit fields an override (`set_limit`, `limits set`) may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LimitField {
    MaxRunning,
    Rate,
    DailyBudget,
}

impl LimitField {
    pub const ALL: [LimitField; 3] = [LimitField::MaxRunning, LimitField::Rate, LimitField::DailyBudget];

    pub fn as_str(self) -> &'static str {
        match self {
            LimitField::MaxRunning => "max_running",
            LimitField::Rate => "rate",
            LimitField::DailyBudget => "daily_budget",
        }
    }
}

impl fmt::Display for LimitField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LimitField {
    type Err = String;

    fn from_str(s: &str) -> Result<LimitField, String> {
        LimitField::ALL.into_iter().find(|f| f.as_str() == s.trim()).ok_or_else(|| {
            format!("'{}' is not a limit field (max_running, rate or daily_budget)", s.trim().escape_debug())
        })
    }
}

/// The value of one overridden field: a count, or for `rate` a count per period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitValue {
    Count(u64),
    Rate(Rate),
}

impl LimitValue {
    /// Parses `value` for `field`: `rate` takes `N/PERIOD`, the others a whole number.
    pub fn parse(field: LimitField, value: &str) -> Result<LimitValue, String> {
        match field {
            LimitField::Rate => Ok(LimitValue::Rate(value.parse()?)),
            _ => Ok(LimitValue::Count(whole(field, value)?)),
        }
    }
}

impl LimitValue {
    /// The value as a rule or an API body gives it: a JSON number, or a string (`N/PERIOD` for
    /// `rate`).
    pub fn from_json(field: LimitField, value: Option<&serde_json::Value>) -> Result<LimitValue, String> {
        match value {
            Some(serde_json::Value::Number(n)) => LimitValue::parse(field, &n.to_string()),
            Some(serde_json::Value::String(s)) => LimitValue::parse(field, s),
            _ => Err("expected a whole number, or \"N/PERIOD\" for rate".into()),
        }
    }
}

impl serde::Serialize for LimitField {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl serde::Serialize for LimitValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for LimitValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitValue::Count(n) => write!(f, "{n}"),
            LimitValue::Rate(r) => write!(f, "{r}"),
        }
    }
}

/// The longest an operator's override lasts (`limits override --for`, the API's `seconds`): an
/// override is a temporary narrowing; a lasting change is `limits set`.
pub const MAX_OVERRIDE: Duration = Duration::from_secs(30 * 86_400);
/// The longest reason an operator's override carries, in characters.
pub const MAX_REASON_CHARS: usize = 500;

/// Checks how long an operator's override lasts: 1 s to [`MAX_OVERRIDE`].
pub fn check_override_lasts(lasts: Duration) -> Result<Duration, String> {
    if lasts < Duration::from_secs(1) || lasts > MAX_OVERRIDE {
        return Err(format!(
            "an override lasts from 1s to {} days, got {}",
            MAX_OVERRIDE.as_secs() / 86_400,
            humantime::format_duration(lasts)
        ));
    }
    Ok(lasts)
}

/// Checks the reason an operator gives an override: 1 to [`MAX_REASON_CHARS`] characters once
/// trimmed. Returns it trimmed.
pub fn check_override_reason(reason: &str) -> Result<String, String> {
    let t = reason.trim();
    let n = t.chars().count();
    if n == 0 || n > MAX_REASON_CHARS {
        return Err(format!("the reason must be 1 to {MAX_REASON_CHARS} characters, got {n}"));
    }
    Ok(t.to_string())
}

impl LimitSpec {
    /// What each limit has left given what is in use (`running` attempts, `window` starts in
    /// the rate's window, `budget_used` starts today), in [`LimitField::ALL`]'s order
    /// (`max_running`, `rate`, `daily_budget`); `None` where it has no such limit.
    pub fn remaining(&self, running: u64, window: u64, budget_used: u64) -> [Option<u64>; 3] {
        [
            self.max_running.map(|cap| cap.saturating_sub(running)),
            self.rate.map(|r| r.count.saturating_sub(window)),
            self.daily_budget.map(|cap| cap.saturating_sub(budget_used)),
        ]
    }

    /// How many more starts it allows given what is in use: the smallest of
    /// [`LimitSpec::remaining`], and which limit that is (`u64::MAX` and `None`: unlimited).
    pub fn room(&self, running: u64, window: u64, budget_used: u64) -> (u64, Option<LimitField>) {
        self.remaining(running, window, budget_used)
            .into_iter()
            .zip(LimitField::ALL)
            .filter_map(|(left, field)| left.map(|l| (l, Some(field))))
            .min_by_key(|(l, _)| *l)
            .unwrap_or((u64::MAX, None))
    }
}

/// Where a type's base limits came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitSource {
    /// A config's `limits:` section: `run`'s, rewritten at its start and on SIGHUP, or that of
    /// another claiming process for a type that had no base limit (see `store::ConfigLimits`).
    Config,
    /// `orchestrator limits set` or `/api/limits`.
    Operator,
    /// Only overrides (`set_limit`) on a type with no base limit.
    Override,
}

impl LimitSource {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitSource::Config => "config",
            LimitSource::Operator => "operator",
            LimitSource::Override => "override",
        }
    }

    /// The source a stored `limits.source` names; anything else reads as `Override`.
    pub fn parse(s: &str) -> LimitSource {
        match s {
            "config" => LimitSource::Config,
            "operator" => LimitSource::Operator,
            _ => LimitSource::Override,
        }
    }
}

/// A temporary value of one field, until `expires_at`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LimitOverride {
    pub field: LimitField,
    pub value: LimitValue,
    pub expires_at: DateTime<Utc>,
    pub reason: String,
    pub set_by: String,
    pub set_at: DateTime<Utc>,
}

/// One limited type as the database holds it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TypeLimit {
    pub action_type: String,
    /// What was set (config or operator), without overrides.
    pub base: LimitSpec,
    pub source: LimitSource,
    pub updated_at: DateTime<Utc>,
    /// The overrides in force.
    pub overrides: Vec<LimitOverride>,
    /// What the claim enforces: `base` with the overrides in force applied.
    pub effective: LimitSpec,
    /// The row could not be read: the type is held (`max_running` 0) until it is set again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl TypeLimit {
    /// Something is limited, on a type name an action can have: what the claim enforces. A
    /// row whose name is not one (planted past every writer) limits no action there is, and
    /// is left out rather than let into SQL; `limits list` still shows it with its error.
    pub fn enforced(&self) -> bool {
        !self.effective.is_empty() && crate::model::validate_type(&self.action_type).is_ok()
    }
}

/// Takes the types whose allowed hours hold them at `now` out of `limits` and returns them (the
/// claim leaves their rows out, as an open window's), and with them the types limited by
/// allowed hours alone: the limited claim counts only what the others count.
pub fn outside_hours(limits: &mut Vec<TypeLimit>, now: DateTime<Utc>) -> Vec<String> {
    let closed = limits.iter().filter(|l| l.effective.closed_at(now)).map(|l| l.action_type.clone()).collect();
    limits.retain(|l| l.effective.counts() && !l.effective.closed_at(now));
    closed
}

/// What one (type, partition) has used and has left.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PartUsage {
    pub partition: String,
    pub running: u64,
    /// Starts in the current window of the rate.
    pub rate_used: u64,
    /// Starts today (UTC).
    pub budget_used: u64,
}

/// One limited type's usage, as the snapshot, `status` and `/metrics` show it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LimitUsage {
    pub action_type: String,
    pub limit: TypeLimit,
    /// Running attempts of the type (every partition).
    pub running: u64,
    /// Due actions of the type waiting to be claimed.
    pub waiting: u64,
    /// What the tightest partition has left of each limit (`None`: no such limit).
    pub running_remaining: Option<u64>,
    pub rate_remaining: Option<u64>,
    pub budget_remaining: Option<u64>,
    /// Since when the budget has been used up (today), if it is.
    pub budget_exhausted_at: Option<DateTime<Utc>>,
    /// Claims that held back due work of this type, by the limit that held it.
    pub blocked_running: u64,
    pub blocked_rate: u64,
    pub blocked_budget: u64,
    /// Partitioned types: the busiest partitions (by running, then window starts, then budget).
    pub partitions: Vec<PartUsage>,
    /// Partitioned types: how many partition values are tracked.
    pub partitions_tracked: u64,
    /// Its allowed hours hold it now.
    pub outside_allowed_hours: bool,
}

impl LimitUsage {
    /// True when the type has nothing left of one of its limits (for a partitioned limit, its
    /// tightest partition), or is outside its allowed hours: its waiting work is held by the
    /// limit, by design.
    pub fn is_held(&self) -> bool {
        self.outside_allowed_hours
            || [self.running_remaining, self.rate_remaining, self.budget_remaining].contains(&Some(0))
    }
}

/// The due work of the types whose work is held (see [`LimitUsage::is_held`]): waiting by
/// design, which neither the workload score nor the work-conserving check counts against the
/// queue.
pub fn held_waiting(usage: &[LimitUsage]) -> i64 {
    usage.iter().filter(|u| u.is_held()).map(|u| i64::try_from(u.waiting).unwrap_or(i64::MAX)).sum()
}

/// The types whose work is held (see [`LimitUsage::is_held`]).
pub fn held_types(usage: &[LimitUsage]) -> Vec<String> {
    usage.iter().filter(|u| u.is_held()).map(|u| u.action_type.clone()).collect()
}

/// `limits:`, file only like `adapters:` so that every error points at the line and column of
/// its own value. Parsing and checking are this module's; these keys place the errors.
/// The keys of one entry apply in this order, so the last one sees the whole entry.
pub const LIMIT_KEYS: &[Key<BTreeMap<String, LimitSpec>>] = &[
    key!("limits.<type>.max_running": serde_yaml::Value = Unset,
    "At most this many attempts of the type `RUNNING` at once, across every instance and worker",
    |m, v, at| {
        let spec = limit_entry(m, at)?;
        spec.max_running = limit_field(v, at, |t| whole(LimitField::MaxRunning, t))?;
    }),
    key!("limits.<type>.rate": serde_yaml::Value = Unset,
    "At most N attempt starts in any window of the period: `N/PERIOD`, e.g. `300/1h` or `50/1s`",
    |m, v, at| {
        let spec = limit_entry(m, at)?;
        spec.rate = limit_field(v, at, str::parse)?;
    }),
    key!("limits.<type>.daily_budget": serde_yaml::Value = Unset,
    "At most this many attempt starts per UTC day",
    |m, v, at| {
        let spec = limit_entry(m, at)?;
        spec.daily_budget = limit_field(v, at, |t| whole(LimitField::DailyBudget, t))?;
    }),
    key!("limits.<type>.allowed_hours": serde_yaml::Value = Unset,
    "The times of day the type's actions may start, `HH:MM-HH:MM ZONE` (e.g. `09:00-21:00 Europe/Madrid`); outside them its due work waits, blocking nothing else",
    |m, v, at| {
        let spec = limit_entry(m, at)?;
        spec.allowed_hours = limit_field(v, at, str::parse)?;
    }),
    key!("limits.<type>.partition_by": serde_yaml::Value = Unset,
    "`payload.FIELD`: the type's limits hold per value of that payload field",
    |m, v, at| {
        let spec = limit_entry(m, at)?;
        spec.partition_by = limit_field(v, at, str::parse)?;
        // The entry's last key: the entry is whole.
        spec.validate().map_err(|e| at.entry_error(e))?;
    }),
];

/// The limits of `at`'s entry, added on its first key once the name is checked as an action type.
fn limit_entry<'m>(
    limits: &'m mut BTreeMap<String, LimitSpec>,
    at: &Found<'_>,
) -> Result<&'m mut LimitSpec, ConfigError> {
    let action_type = at.entry();
    if !limits.contains_key(action_type) {
        crate::model::validate_type(action_type).map_err(|e| at.entry_error(format!("is not an action type: {e}")))?;
    }
    Ok(limits.entry(action_type.to_string()).or_default())
}

/// One limit field's value (unset: `None`), parsed by `parse` from its text. The messages of this
/// module begin with the field's name (`rate 'fifty' has no '/'`), which becomes the
/// full key (`limits.WEBHOOK.rate 'fifty' has no '/'`).
fn limit_field<V>(
    value: serde_yaml::Value,
    at: &Found<'_>,
    parse: impl FnOnce(&str) -> Result<V, String>,
) -> Result<Option<V>, ConfigError> {
    use serde_yaml::Value as Y;
    let text = match value {
        Y::Null => return Ok(None),
        Y::String(s) => s,
        Y::Number(n) => n.to_string(),
        Y::Bool(b) => b.to_string(),
        Y::Sequence(_) | Y::Mapping(_) | Y::Tagged(_) => {
            return Err(at.invalid("must be one plain value, not a list, a map or a tagged value"));
        }
    };
    parse(&text).map(Some).map_err(|e| {
        let field = at.key.rsplit('.').next().unwrap_or_default();
        match e.strip_prefix(field) {
            Some(rest) => at.fail(format!("{}{rest}", at.key)),
            None => at.invalid(e),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_as_count_per_period() {
        let r: Rate = "300/1h".parse().unwrap();
        assert_eq!((r.count, r.period), (300, Duration::from_secs(3600)));
        assert_eq!("50/1s".parse::<Rate>().unwrap().period, Duration::from_secs(1));
        assert_eq!("5/m".parse::<Rate>().unwrap().period, Duration::from_secs(60));
        assert_eq!("10/90s".parse::<Rate>().unwrap().to_string(), "10/1m 30s");
        for bad in ["300", "0/1h", "x/1h", "-3/1h", "3/0s", "3/2d", "3/1.5s", "3/fortnight", "1/", "1/ "] {
            let e = bad.parse::<Rate>().unwrap_err();
            assert!(e.contains("N/PERIOD"), "{bad}: {e}");
        }
        assert!("1/".parse::<Rate>().unwrap_err().contains("has no period after '/'"));
    }

    #[test]
    fn partition_paths_are_payload_fields() {
        let p: PayloadPath = "payload.campaign.id".parse().unwrap();
        assert_eq!(p.segments(), ["campaign", "id"]);
        assert_eq!(p.to_string(), "payload.campaign.id");
        for bad in ["partner", "payload.", "payload.a..b", "payload.a b", "payload.$x", "meta.partner"] {
            let e = bad.parse::<PayloadPath>().unwrap_err();
            assert!(e.contains("payload path") || e.contains("field"), "{bad}: {e}");
        }
    }

    #[test]
    fn fields_and_values_parse_with_their_names() {
        assert_eq!("rate".parse::<LimitField>().unwrap(), LimitField::Rate);
        assert!("max".parse::<LimitField>().unwrap_err().contains("max_running, rate or daily_budget"));
        assert_eq!(LimitValue::parse(LimitField::MaxRunning, "2").unwrap(), LimitValue::Count(2));
        assert!(LimitValue::parse(LimitField::DailyBudget, "-1").unwrap_err().contains("from 0"));
        assert!(LimitValue::parse(LimitField::MaxRunning, "two").unwrap_err().contains("not a whole number"));
        let mut spec = LimitSpec::default();
        assert!(spec.validate().unwrap_err().contains("names no limit"));
        spec.set(LimitField::Rate, "3/1s").unwrap();
        spec.validate().unwrap();
    }

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn allowed_hours_read_the_zone_s_wall_clock() {
        let h: AllowedHours = " 09:00-21:00 Europe/Madrid ".parse().unwrap();
        assert_eq!(h.to_string(), "09:00-21:00 Europe/Madrid");
        // Winter, UTC+1: 08:00 UTC is 09:00 in Madrid, open; 20:00 UTC is 21:00, closed.
        assert!(!h.is_open(utc("2027-01-15T07:59:59Z")));
        assert!(h.is_open(utc("2027-01-15T08:00:00Z")));
        assert!(h.is_open(utc("2027-01-15T19:59:59Z")));
        assert!(!h.is_open(utc("2027-01-15T20:00:00Z")));
        // Summer, UTC+2: 07:00 UTC is 09:00.
        assert!(h.is_open(utc("2027-07-15T07:00:00Z")));
        assert!(!h.is_open(utc("2027-07-15T19:00:00Z")));
        // Across midnight, and to the end of the day.
        let night: AllowedHours = "22:00-06:00 UTC".parse().unwrap();
        assert!(night.is_open(utc("2027-01-15T23:30:00Z")) && night.is_open(utc("2027-01-16T05:59:00Z")));
        assert!(!night.is_open(utc("2027-01-16T06:00:00Z")) && !night.is_open(utc("2027-01-16T12:00:00Z")));
        let evening: AllowedHours = "18:00-24:00 UTC".parse().unwrap();
        assert_eq!(evening.to_string(), "18:00-24:00 UTC");
        assert!(evening.is_open(utc("2027-01-15T23:59:59Z")) && !evening.is_open(utc("2027-01-16T00:00:00Z")));
    }

    #[test]
    fn allowed_hours_across_daylight_saving() {
        // Madrid springs forward on 2027-03-28: 02:00 becomes 03:00. Hours from 02:30 open at
        // 03:00 local (01:00 UTC), the first time past their start.
        let h: AllowedHours = "02:30-04:00 Europe/Madrid".parse().unwrap();
        assert!(!h.is_open(utc("2027-03-28T00:59:59Z")), "01:59:59 local");
        assert!(h.is_open(utc("2027-03-28T01:00:00Z")), "03:00 local, after the skipped hour");
        assert!(!h.is_open(utc("2027-03-28T02:00:00Z")), "04:00 local");
        // It falls back on 2027-10-31: 03:00 becomes 02:00, and 02:00-03:00 comes twice. Hours
        // covering it are open on both passes.
        let h: AllowedHours = "02:00-03:00 Europe/Madrid".parse().unwrap();
        assert!(h.is_open(utc("2027-10-31T00:30:00Z")), "02:30 local, first pass (UTC+2)");
        assert!(h.is_open(utc("2027-10-31T01:30:00Z")), "02:30 local, second pass (UTC+1)");
        assert!(!h.is_open(utc("2027-10-31T02:00:00Z")), "03:00 local");
    }

    #[test]
    fn allowed_hours_refuse_what_they_cannot_read_by_name() {
        for (bad, says) in [
            ("09:00-21:00", "names no time zone"),
            ("09:00 UTC", "no '-'"),
            ("9:00-21:00 UTC", "'9:00', not a time of day"),
            ("09:00-21:60 UTC", "'21:60', not a time of day"),
            ("24:00-06:00 UTC", "'24:00', not a time of day"),
            ("09:00-09:00 UTC", "starts where it ends"),
            ("09:00-21:00 Europe/Atlantis", "not an IANA time zone"),
        ] {
            let e = bad.parse::<AllowedHours>().unwrap_err();
            assert!(
                e.starts_with("allowed_hours '") && e.contains(says) && e.contains("HH:MM-HH:MM ZONE"),
                "{bad}: {e}"
            );
        }
        let spec = LimitSpec { allowed_hours: Some("09:00-21:00 UTC".parse().unwrap()), ..LimitSpec::default() };
        spec.validate().unwrap();
        assert!(!spec.counts() && !spec.is_empty());
        assert!(spec.closed_at(utc("2027-01-15T22:00:00Z")) && !spec.closed_at(utc("2027-01-15T10:00:00Z")));
    }

    #[test]
    fn operator_overrides_are_bounded_and_say_why() {
        assert_eq!(check_override_lasts(Duration::from_secs(600)), Ok(Duration::from_secs(600)));
        assert!(check_override_lasts(Duration::ZERO).unwrap_err().contains("from 1s to 30 days"));
        assert!(check_override_lasts(MAX_OVERRIDE + Duration::from_secs(1)).unwrap_err().contains("30 days"));
        assert_eq!(check_override_reason(" partner asked ").unwrap(), "partner asked");
        assert!(check_override_reason("  ").unwrap_err().contains("reason must be 1 to 500"));
        assert!(check_override_reason(&"x".repeat(501)).is_err());
    }
}
