//! Maintenance windows (issue 25): what a window is, parsed and checked once, and when it is
//! open. A window holds the actions it matches (its types, and optionally one payload field's
//! value, the way `partition_by` names a field) from a start to an end, or for a duration from
//! each occurrence of a cron expression in an IANA time zone (parsed by `croner`, which follows
//! OCPS on DST gaps and overlaps; never by hand). Every input error names the field it is about.
//!
//! It decides nothing about the queue and holds no SQL: the claim reads the open windows and
//! leaves their rows out (`store/windows.rs`); this module only says which are open at a time.

use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

use crate::limits::PayloadPath;
use crate::settings::key::{Found, Key, KeyDefault, key};

/// The longest reason kept.
pub const MAX_REASON: usize = 500;
/// The most types one window names.
pub const MAX_TYPES: usize = 32;
/// The longest payload field value a window matches.
pub const MAX_FIELD_VALUE: usize = 200;
/// The longest a one-off window may last (an operator's; a year).
pub const MAX_ONCE: Duration = Duration::from_secs(366 * 86_400);
/// The longest one occurrence of a recurring window may last.
pub const MAX_OCCURRENCE: Duration = Duration::from_secs(7 * 86_400);

/// What a window holds: actions of one of `types`, and when `field` is set, only those whose
/// payload has that value at that path (compared as text, as `partition_by` reads it).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Matcher {
    pub types: Vec<String>,
    pub field: Option<FieldMatch>,
}

/// One payload field's value.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FieldMatch {
    pub path: PayloadPath,
    pub value: String,
}

/// A recurrence: open for `duration` from each occurrence of `cron` in `time_zone`.
#[derive(Clone, Debug)]
pub struct Recurrence {
    cron_text: String,
    cron: Cron,
    pub duration: Duration,
    pub time_zone: Tz,
}

impl PartialEq for Recurrence {
    fn eq(&self, o: &Recurrence) -> bool {
        self.cron_text == o.cron_text && self.duration == o.duration && self.time_zone == o.time_zone
    }
}

impl serde::Serialize for Recurrence {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Recurrence", 3)?;
        st.serialize_field("cron", &self.cron_text)?;
        st.serialize_field("duration_seconds", &self.duration.as_secs())?;
        st.serialize_field("time_zone", self.time_zone.name())?;
        st.end()
    }
}

impl Recurrence {
    /// Parses a five-field cron expression, a duration and an IANA zone name; each error names
    /// its field. An expression that never occurs is refused.
    pub fn parse(cron: &str, duration: Duration, time_zone: &str) -> Result<Recurrence, String> {
        let cron_text = cron.trim().to_string();
        let parsed = CronParser::builder().seconds(Seconds::Disallowed).build().parse(&cron_text).map_err(|e| {
            format!("cron '{}': {e} (write five fields: minute hour day month weekday)", cron.escape_debug())
        })?;
        let time_zone: Tz = time_zone.trim().parse().map_err(|_| {
            format!(
                "time_zone '{}' is not an IANA time zone name (e.g. Europe/Madrid or UTC)",
                time_zone.escape_debug()
            )
        })?;
        if duration.is_zero() || duration > MAX_OCCURRENCE {
            return Err(format!(
                "duration {} is out of range: give 1s to {}",
                humantime::format_duration(duration),
                humantime::format_duration(MAX_OCCURRENCE)
            ));
        }
        let r = Recurrence { cron_text, cron: parsed, duration, time_zone };
        if r.next_start(crate::model::now()).is_none() {
            return Err(format!("cron '{}' never occurs", r.cron_text.escape_debug()));
        }
        Ok(r)
    }

    pub fn cron(&self) -> &str {
        &self.cron_text
    }

    /// The occurrence in force at `now` (the latest start at or before it, if `now` is within
    /// `duration` of it): its start and end.
    pub fn occurrence_at(&self, now: DateTime<Utc>) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let local = now.with_timezone(&self.time_zone);
        let start = self.cron.find_previous_occurrence(&local, true).ok()?.with_timezone(&Utc);
        let end = crate::model::later(start, self.duration).ok()?;
        (end > now).then_some((start, end))
    }

    /// The first start after `now`.
    pub fn next_start(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = now.with_timezone(&self.time_zone);
        Some(self.cron.find_next_occurrence(&local, false).ok()?.with_timezone(&Utc))
    }
}

/// A window as it is opened: what it holds, when, and why.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct WindowSpec {
    pub matcher: Matcher,
    /// A one-off window opens here; a recurring one applies from here.
    pub starts_at: DateTime<Utc>,
    /// A one-off window closes here; a recurring one applies until here (`None`: for good).
    pub ends_at: Option<DateTime<Utc>>,
    pub recurrence: Option<Recurrence>,
    pub reason: String,
    pub opened_by: String,
}

/// A stored window.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Window {
    pub id: i64,
    #[serde(flatten)]
    pub spec: WindowSpec,
    pub created_at: DateTime<Utc>,
    /// Set when it was ended early (`windows end`).
    pub ended_at: Option<DateTime<Utc>>,
}

/// A window and what it is at one time, as `windows list`, the API and the page show it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct WindowView {
    #[serde(flatten)]
    pub window: Window,
    /// Open at the time it was read.
    pub open: bool,
    /// The start and end of the occurrence open now.
    pub open_from: Option<DateTime<Utc>>,
    pub open_until: Option<DateTime<Utc>>,
    /// When it opens next (a recurring one, or a one-off one yet to start).
    pub next_open: Option<DateTime<Utc>>,
}

/// An open window as rules see it (`snap.windows`): what it holds, for how much longer, why.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OpenWindow {
    pub id: i64,
    pub types: Vec<String>,
    /// `payload.FIELD` and its value, when it holds only those.
    #[serde(default)]
    pub field: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
    pub closes_in_seconds: f64,
    pub reason: String,
    pub opened_by: String,
}

impl OpenWindow {
    /// `w` as rules see it at `now`, if it is open then.
    pub fn of(w: &Window, now: DateTime<Utc>) -> Option<OpenWindow> {
        let (_, until) = w.open_at(now)?;
        let f = w.spec.matcher.field.as_ref();
        Some(OpenWindow {
            id: w.id,
            types: w.spec.matcher.types.clone(),
            field: f.map(|f| f.path.to_string()),
            value: f.map(|f| f.value.clone()),
            closes_in_seconds: crate::model::seconds_between(now, until).max(0.0),
            reason: w.spec.reason.clone(),
            opened_by: w.spec.opened_by.clone(),
        })
    }
}

impl Window {
    /// The start and end of the stretch in which it is open at `now`, if it is.
    pub fn open_at(&self, now: DateTime<Utc>) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        if self.ended_at.is_some_and(|e| e <= now) || now < self.spec.starts_at {
            return None;
        }
        if self.spec.ends_at.is_some_and(|e| e <= now) {
            return None;
        }
        match &self.spec.recurrence {
            None => Some((self.spec.starts_at, self.spec.ends_at?)),
            Some(r) => {
                let (from, until) = r.occurrence_at(now)?;
                let until = self.spec.ends_at.map_or(until, |e| e.min(until));
                Some((from, until))
            }
        }
    }

    /// When it opens next after `now`, if it will.
    pub fn next_open(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.ended_at.is_some() {
            return None;
        }
        let next = match &self.spec.recurrence {
            None => (self.spec.starts_at > now).then_some(self.spec.starts_at)?,
            Some(r) => r.next_start(now.max(self.spec.starts_at))?,
        };
        self.spec.ends_at.is_none_or(|e| next < e).then_some(next)
    }

    /// This window seen at `now`.
    pub fn view(self, now: DateTime<Utc>) -> WindowView {
        let open = self.open_at(now);
        let next_open = self.next_open(now);
        WindowView {
            open: open.is_some(),
            open_from: open.map(|o| o.0),
            open_until: open.map(|o| o.1),
            next_open,
            window: self,
        }
    }
}

/// Checks the types of a matcher (1 to [`MAX_TYPES`], each a valid type, no repeats).
pub fn check_types(types: &[String]) -> Result<(), String> {
    if types.is_empty() || types.len() > MAX_TYPES {
        return Err(format!("types: give 1 to {MAX_TYPES} action types, got {}", types.len()));
    }
    for (i, t) in types.iter().enumerate() {
        crate::model::validate_type(t).map_err(|e| format!("types: {e}"))?;
        if types[..i].contains(t) {
            return Err(format!("types: {t} is named twice"));
        }
    }
    Ok(())
}

/// Parses `payload.FIELD=VALUE` (the CLI's `--field`).
pub fn parse_field(text: &str) -> Result<FieldMatch, String> {
    let (path, value) =
        text.split_once('=').ok_or_else(|| format!("field '{}' is not payload.FIELD=VALUE", text.escape_debug()))?;
    field_match(path, value)
}

/// A payload field matcher from its path and value, each checked.
pub fn field_match(path: &str, value: &str) -> Result<FieldMatch, String> {
    let path: PayloadPath = path.parse().map_err(|_| {
        format!("field '{}' is not a payload path (write payload.FIELD, e.g. payload.partner)", path.escape_debug())
    })?;
    if value.is_empty() || value.chars().count() > MAX_FIELD_VALUE || value.chars().any(char::is_control) {
        return Err(format!("field value must be 1 to {MAX_FIELD_VALUE} characters without control characters"));
    }
    Ok(FieldMatch { path, value: value.to_string() })
}

/// Checks a reason (1 to [`MAX_REASON`] characters, not blank).
pub fn check_reason(text: &str) -> Result<String, String> {
    if text.trim().is_empty() || text.chars().count() > MAX_REASON {
        return Err(format!("reason must be 1 to {MAX_REASON} characters, not blank"));
    }
    Ok(text.to_string())
}

impl WindowSpec {
    /// Checks the whole: types, reason, and that a one-off window ends after it starts and
    /// lasts at most [`MAX_ONCE`].
    pub fn check(&self) -> Result<(), String> {
        check_types(&self.matcher.types)?;
        check_reason(&self.reason)?;
        if self.opened_by.trim().is_empty() || self.opened_by.len() > 100 {
            return Err("opened_by must be 1 to 100 characters".into());
        }
        match (&self.recurrence, self.ends_at) {
            (None, None) => Err("a window needs an end (until, or for) or a recurrence (cron and duration)".into()),
            (_, Some(end)) if end <= self.starts_at => {
                Err(format!("until {end} is not after its start {}", self.starts_at))
            }
            (None, Some(end)) => {
                let lasts = (end - self.starts_at).to_std().unwrap_or(Duration::MAX);
                if lasts > MAX_ONCE {
                    return Err(format!(
                        "a one-off window lasts at most {}, this one {}",
                        humantime::format_duration(MAX_ONCE),
                        humantime::format_duration(lasts)
                    ));
                }
                Ok(())
            }
            (Some(_), _) => Ok(()),
        }
    }

    /// Whether this holds an action of `action_type` whose payload is `payload` (JSON text).
    pub fn matches(&self, action_type: &str, payload: &serde_json::Value) -> bool {
        if !self.matcher.types.iter().any(|t| t == action_type) {
            return false;
        }
        let Some(f) = &self.matcher.field else { return true };
        let mut at = payload;
        for seg in f.path.segments() {
            match at.get(seg) {
                Some(v) => at = v,
                None => return false,
            }
        }
        let text = match at {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => return false,
            other => other.to_string(),
        };
        text == f.value
    }
}

/// A recurring window declared in the config (`windows.<name>`), as its keys give it; `run`
/// writes it into the database at start (`store.windows().replace_config`), opened by
/// `config <name>`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigWindow {
    pub types: Vec<String>,
    pub field: Option<String>,
    pub value: Option<String>,
    pub cron: String,
    pub duration: Duration,
    pub time_zone: String,
    pub reason: String,
}

impl ConfigWindow {
    /// The window `name` declares, applying from `now`; each error names its field.
    pub fn spec(&self, name: &str, now: DateTime<Utc>) -> Result<WindowSpec, String> {
        check_types(&self.types)?;
        let field = match (&self.field, &self.value) {
            (Some(f), Some(v)) => Some(field_match(f, v)?),
            (None, None) => None,
            _ => return Err("field and value go together".into()),
        };
        let spec = WindowSpec {
            matcher: Matcher { types: self.types.clone(), field },
            starts_at: now,
            ends_at: None,
            recurrence: Some(Recurrence::parse(&self.cron, self.duration, &self.time_zone)?),
            reason: check_reason(&self.reason)?,
            opened_by: format!("config {name}"),
        };
        spec.check()?;
        Ok(spec)
    }
}

fn entry<'m>(m: &'m mut std::collections::BTreeMap<String, ConfigWindow>, at: &Found<'_>) -> &'m mut ConfigWindow {
    m.entry(at.entry().to_string()).or_default()
}

/// The config's `windows:` keys (file only): recurring windows, each under a name.
pub const WINDOW_KEYS: &[Key<std::collections::BTreeMap<String, ConfigWindow>>] = &[
    key!("windows.<name>.types": Vec<String> = KeyDefault::Required,
    "The action types a recurring maintenance window holds, e.g. `[WEBHOOK]`",
    |m, v, _at| entry(m, _at).types = v),
    key!("windows.<name>.field": Option<String> = KeyDefault::Unset,
    "`payload.FIELD`: hold only the actions whose payload has `value` there",
    |m, v, _at| entry(m, _at).field = v),
    key!("windows.<name>.value": Option<String> = KeyDefault::Unset,
    "The payload field's value (with `field`)",
    |m, v, _at| entry(m, _at).value = v),
    key!("windows.<name>.cron": String = KeyDefault::Required,
    "When it opens: a five-field cron expression read in `time_zone`, e.g. `0 2 * * SUN`",
    |m, v, _at| entry(m, _at).cron = v),
    key!("windows.<name>.duration_seconds": f64 = KeyDefault::Required,
    "How long each occurrence stays open (at most 7 days)",
    |m, v, at| entry(m, at).duration = at.seconds(v, false)?),
    key!("windows.<name>.time_zone": String = KeyDefault::Value("UTC"),
    "The IANA time zone the cron expression is read in, e.g. `Europe/Madrid`",
    |m, v, _at| entry(m, _at).time_zone = v),
    key!("windows.<name>.reason": String = KeyDefault::Required,
    "Why, shown beside it (1 to 500 characters)",
    |m, v, at| {
        let w = entry(m, at);
        w.reason = v;
        // The entry's last key: the entry is whole.
        w.spec(at.entry(), crate::model::now()).map_err(|e| at.entry_error(e))?;
    }),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn recurring(cron: &str, secs: u64, tz: &str) -> Window {
        Window {
            id: 1,
            spec: WindowSpec {
                matcher: Matcher { types: vec!["WEBHOOK".into()], field: None },
                starts_at: at("2026-01-01T00:00:00Z"),
                ends_at: None,
                recurrence: Some(Recurrence::parse(cron, Duration::from_secs(secs), tz).unwrap()),
                reason: "deploys".into(),
                opened_by: "operator".into(),
            },
            created_at: at("2026-01-01T00:00:00Z"),
            ended_at: None,
        }
    }

    #[test]
    fn a_recurring_window_is_open_for_its_duration_in_its_time_zone() {
        // 02:00 Madrid is 01:00 UTC in winter (CET) and 00:00 UTC in summer (CEST).
        let w = recurring("0 2 * * *", 3600, "Europe/Madrid");
        assert_eq!(w.open_at(at("2026-01-10T01:30:00Z")).map(|o| o.0), Some(at("2026-01-10T01:00:00Z")));
        assert!(w.open_at(at("2026-01-10T02:00:00Z")).is_none());
        assert!(w.open_at(at("2026-01-10T00:59:59Z")).is_none());
        assert!(w.open_at(at("2026-07-10T00:30:00Z")).is_some());
        assert!(w.open_at(at("2026-07-10T01:30:00Z")).is_none());
        assert_eq!(w.next_open(at("2026-01-10T02:00:00Z")), Some(at("2026-01-11T01:00:00Z")));
    }

    #[test]
    fn a_one_off_window_is_open_between_its_start_and_end_unless_ended() {
        let mut w = recurring("0 2 * * *", 60, "UTC");
        w.spec.recurrence = None;
        w.spec.ends_at = Some(at("2026-01-01T01:00:00Z"));
        assert!(w.open_at(at("2026-01-01T00:30:00Z")).is_some());
        assert!(w.open_at(at("2026-01-01T01:00:00Z")).is_none());
        w.ended_at = Some(at("2026-01-01T00:10:00Z"));
        assert!(w.open_at(at("2026-01-01T00:30:00Z")).is_none());
    }

    #[test]
    fn bad_input_is_refused_by_name() {
        let d = Duration::from_secs(60);
        assert!(Recurrence::parse("0 2 * *", d, "UTC").unwrap_err().starts_with("cron"));
        assert!(Recurrence::parse("0 0 2 * * *", d, "UTC").unwrap_err().starts_with("cron"));
        assert!(Recurrence::parse("0 2 * * *", d, "Mars/Olympus").unwrap_err().starts_with("time_zone"));
        assert!(Recurrence::parse("0 2 * * *", Duration::ZERO, "UTC").unwrap_err().starts_with("duration"));
        assert!(Recurrence::parse("0 0 30 2 *", d, "UTC").unwrap_err().contains("never occurs"));
        assert!(parse_field("payload.partner").unwrap_err().starts_with("field"));
        assert!(parse_field("partner=x").unwrap_err().starts_with("field"));
        assert!(check_types(&[]).unwrap_err().starts_with("types"));
        assert!(check_types(&["bad type".into()]).unwrap_err().starts_with("types"));
        assert!(check_reason(" ").unwrap_err().starts_with("reason"));
    }

    #[test]
    fn a_field_matcher_compares_the_payload_value_as_text() {
        let mut w = recurring("0 2 * * *", 60, "UTC");
        w.spec.matcher.field = Some(parse_field("payload.partner.id=7").unwrap());
        let p = |v: serde_json::Value| v;
        assert!(w.spec.matches("WEBHOOK", &p(serde_json::json!({"partner": {"id": 7}}))));
        assert!(w.spec.matches("WEBHOOK", &p(serde_json::json!({"partner": {"id": "7"}}))));
        assert!(!w.spec.matches("WEBHOOK", &p(serde_json::json!({"partner": {"id": 8}}))));
        assert!(!w.spec.matches("NOOP", &p(serde_json::json!({"partner": {"id": 7}}))));
    }
}
