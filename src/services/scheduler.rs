//! The scheduler: each tick, the lease holder enqueues every due slot of every running schedule
//! (`crate::schedules` plans which slots fire and which are misfires; the store fences the fire
//! and moves the schedule's mark with it), and the schedules' writes from outside the tick: the
//! config's `schedules:` at start and on SIGHUP, an operator's `run-now`.
//!
//! It fires only as the holder, through [`crate::store::Fence`]; it never claims or runs what it
//! enqueues (the dispatcher does, as for any action).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::queue::EnqueueDefaults;
use crate::schedules::{Misfire, ScheduleSpec, Timing, slot_key};
use crate::store::{
    Authority, EnqueueOutcome, Fence, Fire, NewAction, NewSchedule, Refusal, ScheduleRow, Store, StoreError,
};

/// What one tick's scheduling did, for its ledger note.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scheduled {
    /// Actions enqueued, over every schedule.
    pub fired: u64,
    /// Slots not fired (late under their policy, or past their deadline), over every schedule.
    pub missed: u64,
    /// One line per schedule that fired or missed, and per schedule that could not be read.
    pub notes: Vec<String>,
}

/// Enqueues the due slots of every running schedule under `fence` (a type `defaults` says needs
/// an approval waits for one, as any action of it does). A schedule whose stored definition no
/// longer parses is skipped and named; a fire another leader made first is left to it; a lost
/// fence stops the round.
pub async fn run(store: &Store, fence: &Fence, defaults: &EnqueueDefaults) -> Result<Scheduled, StoreError> {
    let mut done = Scheduled::default();
    let now = store.now();
    // Only the schedules whose next slot has come (or is not known yet): an idle tick reads
    // none, whatever the number defined.
    let rows = store.schedules().due(now).await?;
    for row in &rows {
        let name = &row.def.name;
        let (timing, misfire) = match timing_of(row) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(schedule = %name, error = %e, "schedule skipped: its stored definition does not parse");
                done.notes.push(format!("schedule {name}: skipped ({e})"));
                continue;
            }
        };
        let grace = std::time::Duration::from_secs(row.def.misfire_grace_seconds.max(1) as u64);
        let cap = row.def.catch_up_cap.max(1) as u32;
        let plan = timing.plan(row.after(), now, misfire, cap, grace);
        let Some(mark) = plan.latest else {
            store.schedules().set_next(row, timing.next_after(row.after())).await?;
            continue;
        };
        let approval = match crate::queue::approval_deadline(defaults, &row.def.action_type, false, now) {
            Ok(a) => a,
            Err(e) => {
                done.notes.push(format!("schedule {name}: skipped ({e})"));
                continue;
            }
        };
        let mut missed = plan.missed;
        let mut actions = Vec::with_capacity(plan.fire.len());
        for slot in &plan.fire {
            match slot_action(row, *slot, now, approval) {
                Some(a) => actions.push(a),
                None => missed += 1,
            }
        }
        let fire = Fire {
            name,
            read_mark: row.last_slot,
            mark,
            next_slot: timing.next_after(mark),
            cron: &row.def.cron,
            timezone: &row.def.timezone,
            actions: &actions,
            missed,
        };
        match store.schedules().fire(fence, &fire).await {
            Ok(Some(created)) => {
                done.fired += created;
                done.missed += missed;
                let lag = crate::model::seconds_between(mark, now);
                tracing::info!(schedule = %name, slot = %mark, created, missed, lag_seconds = lag, "schedule fired");
                done.notes.push(match missed {
                    0 => format!("schedule {name}: {created} enqueued"),
                    m => format!("schedule {name}: {created} enqueued, {m} slot(s) missed ({})", misfire.as_str()),
                });
            }
            Ok(None) => done.notes.push(format!("schedule {name}: already fired by another leader")),
            Err(StoreError::Refused(Refusal::Fenced(epoch))) => {
                done.notes.push(format!("schedules: fenced at epoch {epoch}, nothing more fired"));
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Enqueues one action of `name` now, outside its slots, as an operator (`schedules run-now`):
/// its own key, so it never stands in for a slot and a slot never stands in for it.
pub async fn run_now(store: &Store, name: &str, defaults: &EnqueueDefaults) -> Result<EnqueueOutcome, StoreError> {
    let row = store.schedules().get(name).await?;
    let now = store.now();
    let approval = crate::queue::approval_deadline(defaults, &row.def.action_type, false, now)
        .map_err(|e| StoreError::Refused(Refusal::Schedule(format!("schedule '{name}': {e}"))))?;
    let mut new = slot_action(&row, now, now, approval).ok_or_else(|| {
        StoreError::Refused(Refusal::Schedule(format!("schedule '{name}': its deadline has no room from now")))
    })?;
    new.idempotency_key =
        format!("schedule:{name}:run-now:{}", now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    store.actions().enqueue(Authority::Operator, &new).await
}

/// The action `row` enqueues for `slot`, due now (waiting for an approval until
/// `approval_expires_at`, if given); `None` when its deadline (from the slot) has already passed.
fn slot_action(
    row: &ScheduleRow,
    slot: DateTime<Utc>,
    now: DateTime<Utc>,
    approval_expires_at: Option<DateTime<Utc>>,
) -> Option<NewAction> {
    let expires_at = match row.def.deadline_seconds {
        Some(s) => {
            let at = slot.checked_add_signed(chrono::Duration::seconds(s))?;
            if at <= now {
                return None;
            }
            Some(at)
        }
        None => None,
    };
    Some(NewAction {
        action_type: row.def.action_type.clone(),
        payload_json: crate::queue::canonical_json(&row.def.payload),
        idempotency_key: slot_key(&row.def.name, slot),
        priority: row.def.priority,
        not_before: now,
        max_attempts: row.def.max_attempts,
        expires_at,
        traceparent: None,
        approval_expires_at,
    })
}

/// The stored definition's timing and policy, parsed again (a row edited by hand is refused here,
/// not trusted).
pub fn timing_of(row: &ScheduleRow) -> Result<(Timing, Misfire), String> {
    Ok((Timing::parse(&row.def.cron, &row.def.timezone)?, row.def.misfire.parse()?))
}

/// `spec` as the store keeps it: checked, the payload canonical, `max_attempts` filled in from
/// the config's.
pub fn stored(name: &str, spec: &ScheduleSpec, default_max_attempts: u32) -> Result<NewSchedule, String> {
    crate::schedules::validate_name(name)?;
    spec.validate()?;
    Ok(NewSchedule {
        name: name.to_string(),
        cron: spec.cron.trim().to_string(),
        timezone: spec.timezone.clone(),
        action_type: spec.action_type.clone(),
        payload_json: crate::queue::canonical_json(&spec.payload),
        priority: spec.priority,
        max_attempts: spec.max_attempts.unwrap_or(default_max_attempts).clamp(1, 1000) as i32,
        deadline_seconds: spec.deadline.map(|d| d.as_secs().max(1) as i64),
        misfire: spec.misfire.as_str().to_string(),
        catch_up_cap: spec.catch_up_cap as i32,
        misfire_grace_seconds: spec.misfire_grace.as_secs().max(1) as i64,
        enabled: spec.enabled,
    })
}

/// Writes the config's `schedules:` into the database (at `run`'s start and on SIGHUP). Without
/// the section it changes nothing; `schedules: {}` removes the config's schedules. Says what it
/// removed and what it took over from an operator.
pub async fn write(store: &Store, config: &Config) -> Result<(), StoreError> {
    let Some(schedules) = &config.schedules else { return Ok(()) };
    let defs = stored_all(schedules, config.max_attempts).map_err(StoreError::Invalid)?;
    let done = store.schedules().write_config(&defs).await?;
    for name in &done.taken_over {
        tracing::warn!(schedule = %name, "schedules.{name}: an operator had added a schedule of this name; the config's replaces it");
    }
    for name in &done.removed {
        tracing::warn!(schedule = %name, "schedules.{name}: declared by an earlier config, not this one; removed");
    }
    tracing::info!(written = ?done.written, removed = ?done.removed, "schedules written from the config");
    Ok(())
}

fn stored_all(schedules: &BTreeMap<String, ScheduleSpec>, max_attempts: u32) -> Result<Vec<NewSchedule>, String> {
    schedules
        .iter()
        .map(|(name, spec)| stored(name, spec, max_attempts).map_err(|e| format!("schedules.{name}: {e}")))
        .collect()
}
