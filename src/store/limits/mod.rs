//! Limits per action type, held in the database so that every claimer on every host agrees.
//! The mechanism only, by concern:
//! - `tables`: the `limits` and `limit_overrides` rows (reads, a config's write, an operator's
//!   edits, overrides), each write of a type's base under its row's lock ([`tables`]'s
//!   `lock_limit`), so that concurrent edits of different fields all land;
//! - `usage`: what each (type, partition) has in use (`RUNNING` rows, the window's starts, the
//!   day's budget), read for a claim or for the usage view, and the starts an unstart gives back;
//! - `pick`: the limited pick as a sequence of named steps under the types' gates;
//! - `claim`: the limited claim's transaction (pick, claim exactly those ids, record the starts).
//!
//! How a limited claim holds (ARCHITECTURE.md "Limits" has the reasoning):
//! - It locks one gate row per limited type it serves (`limit_state`, partition `''`), in type
//!   order, inside the claim's transaction. Claimers of a limited type take turns; a claimer
//!   that serves no limited type never waits for them.
//! - Under the gate it counts what is in use: `RUNNING` rows (so a completion, a rescue or an
//!   unstart gives the slot back by leaving `RUNNING`, and a dead worker's slot comes back only
//!   when it is rescued), the starts in the sliding window (`limit_starts`), and the day's budget
//!   use (`limit_state`).
//! - It picks due rows in claim order, leaving out types and partitions with nothing left, so a
//!   saturated type never blocks the batch (no head-of-line blocking), then claims exactly those.
//!
//! It decides nothing: a limit's value is the config's, an operator's or a rule's, and what a
//! limit leaves and whether a type is held are judged in `crate::limits`.

mod claim;
mod pick;
mod tables;
mod usage;

#[cfg(test)]
mod tests;

pub(in crate::store) use tables::read_limits;

use chrono::{DateTime, Utc};

use super::{Backend, StoreError};
use crate::limits::{BaseField, LimitSource, LimitSpec, PayloadPath, TypeLimit};

/// How a process writes its config's `limits:` section (`store.limits().write_config_limits`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigLimits {
    /// `run`, at start and on SIGHUP: each type named gets exactly the config's limits, whoever
    /// set them before, and a type an earlier config set and this one does not name loses them.
    Replace,
    /// Every other process that claims (a worker, `run-once`), before its first claim: a type
    /// named that has no base limit gets the config's; one that has a base keeps it (an
    /// operator's `limits set`, another process's config). Overrides are never touched.
    Fill,
}

/// One field on which a config and the base limits the database held disagreed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitDisagreement {
    pub action_type: String,
    pub field: BaseField,
    /// The config's value (`None`: not set).
    pub config: Option<String>,
    /// The database's value before the write (`None`: not set), and who set it.
    pub database: Option<String>,
    pub source: LimitSource,
}

/// What writing a config's `limits:` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigLimitsWritten {
    /// The types whose base limits were written from the config.
    pub written: Vec<String>,
    /// The types an earlier config set, not named in this one, whose limits went (`Replace`).
    pub removed: Vec<String>,
    /// Where the database held other base values: replaced (`Replace`) or kept (`Fill`).
    pub disagreements: Vec<LimitDisagreement>,
}

/// An operator's change to a type's base limits (`store.limits().edit_limit`).
#[derive(Clone, Debug, PartialEq)]
pub enum LimitEdit {
    /// The base becomes exactly this (`PUT /api/limits/TYPE`).
    Replace(LimitSpec),
    /// The fields this sets replace theirs; the others keep their value (`limits set`).
    Merge(LimitSpec),
    /// One field goes (`limits clear TYPE FIELD`).
    Remove(BaseField),
}

/// Why an edit wrote nothing (the type's row is as it was).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EditRefusal {
    /// The type has no limits (a `Remove`).
    #[error("it has no limits")]
    NoLimits,
    /// The field to remove is not set in the base.
    #[error("the field is not set in its base limits")]
    NotSet,
    /// The base would limit nothing.
    #[error("it would have no limit")]
    LimitsNothing,
}

/// The busiest partitions a usage view lists.
pub const BUSIEST_PARTITIONS: usize = 5;

/// A type name as an SQL literal. Types pass `model::validate_type` (letters, digits, `_.:-`)
/// before they reach here; anything else is refused rather than quoted.
pub(in crate::store) fn lit(t: &str) -> Result<String, StoreError> {
    crate::model::validate_type(t).map_err(|e| StoreError::Internal(format!("not a checked type name: {e}")))?;
    Ok(format!("'{t}'"))
}

/// A payload path's value as text, `''` when it is missing or the payload does not parse (a
/// row that cannot be read is claimed and quarantined like any other, never an error here).
/// Path segments are checked by `PayloadPath` (letters, digits, `_`, `-`).
pub(in crate::store) fn part_expr(backend: Backend, path: &PayloadPath) -> String {
    match backend {
        Backend::Sqlite => {
            let p: String = path.segments().iter().map(|s| format!(".\"{s}\"")).collect();
            format!(
                "COALESCE(CASE WHEN json_valid(payload_json) THEN CAST(json_extract(payload_json, '${p}') AS TEXT) END, '')"
            )
        }
        Backend::Postgres => {
            format!("COALESCE(orchestrator_json_path(payload_json, '{{{}}}'), '')", path.segments().join(","))
        }
    }
}

/// `CASE action_type WHEN 'T' THEN <T's partition> ... ELSE '' END` over the partitioned types.
fn part_case(backend: Backend, limits: &[&TypeLimit]) -> Result<String, StoreError> {
    case_by_type(limits, |_, path| part_expr(backend, path))
}

/// [`part_case`] for rows that keep their partition key (the running ones: see
/// `key_waiting_rows`): the key, where the row has one and its type's keys were computed for
/// the `partition_by` in force (the path on the gate row, read in the same statement, once),
/// else the payload read again. With every slot held at the partition cap, reading the
/// payloads of 3,000 running rows was 9 to 14 ms of a 16 ms claim on PostgreSQL.
fn kept_part_case(backend: Backend, limits: &[&TypeLimit]) -> Result<String, StoreError> {
    case_by_type(limits, |t, path| {
        let expr = part_expr(backend, path);
        let text = path.to_string();
        if text.contains('\'') {
            return expr;
        }
        format!(
            "COALESCE(CASE WHEN (SELECT part_path FROM limit_state WHERE action_type = {t} AND part = '') = '{text}' \
             THEN part_key END, {expr})"
        )
    })
}

/// `(CASE action_type WHEN <type> THEN <value> ... ELSE '' END)` over the partitioned types of
/// `limits`, `value` given each type (a literal) and its path; `''` when none is partitioned.
fn case_by_type(limits: &[&TypeLimit], value: impl Fn(&str, &PayloadPath) -> String) -> Result<String, StoreError> {
    let mut whens = String::new();
    for l in limits {
        if let Some(path) = &l.effective.partition_by {
            let t = lit(&l.action_type)?;
            whens.push_str(&format!(" WHEN {t} THEN {}", value(&t, path)));
        }
    }
    Ok(if whens.is_empty() { "''".to_string() } else { format!("(CASE action_type{whens} ELSE '' END)") })
}

fn in_list(types: &[&TypeLimit]) -> Result<String, StoreError> {
    let l: Result<Vec<String>, StoreError> = types.iter().map(|t| lit(&t.action_type)).collect();
    Ok(l?.join(", "))
}

fn day_of(t: DateTime<Utc>) -> String {
    t.date_naive().to_string()
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Per rated type, `(action_type = 'T' AND started_at <cmp> $n)` with `$n` the start of its
/// window at `now`, bound into `values`: `>` for the starts inside the window, `<=` for those
/// that left it.
fn window_conds(
    refs: &[&TypeLimit],
    now: DateTime<Utc>,
    cmp: &str,
    values: &mut Vec<sea_orm::Value>,
) -> Result<Vec<String>, StoreError> {
    let mut conds = Vec::new();
    for l in refs {
        if let Some(rate) = l.effective.rate {
            values.push(crate::model::earlier_saturating(now, rate.period).into());
            conds.push(format!("(action_type = {} AND started_at {cmp} ${})", lit(&l.action_type)?, values.len()));
        }
    }
    Ok(conds)
}

/// `(SELECT <elements of the JSON array in $at>)`.
fn json_elems(backend: Backend, at: usize) -> String {
    match backend {
        Backend::Sqlite => format!("(SELECT value FROM json_each(${at}))"),
        Backend::Postgres => format!("(SELECT json_array_elements_text(${at}::json))"),
    }
}
