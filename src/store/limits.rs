//! Limits per action type, held in the database so that every claimer on every host agrees:
//! the table of limits and their temporary overrides, the usage the claim checks them against,
//! and the claim of a batch that contains limited types ([`Store::claim`] calls it).
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
//! Every write of a type's base limits (a config's, an operator's edit, `PUT /api/limits`)
//! reads and writes the type's `limits` row under that row's lock ([`lock_limit`]), so that
//! concurrent edits of different fields all land; an override is one row of its own.
//!
//! Nothing here decides a limit's value: config, operators and rules do, through the setters.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction, Value};

use super::actions::{Claimed, Claimer};
use super::{Backend, Context, Fence, Store, StoreError};
use crate::limits::{BaseField, LimitField, LimitSpec, LimitValue, OVERFLOW_PARTITION, PayloadPath, Rate};

/// Where a type's base limits came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitSource {
    /// A config's `limits:` section: `run`'s, rewritten at its start and on SIGHUP, or that of
    /// another claiming process for a type that had no base limit (see [`ConfigLimits`]).
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

    fn parse(s: &str) -> LimitSource {
        match s {
            "config" => LimitSource::Config,
            "operator" => LimitSource::Operator,
            _ => LimitSource::Override,
        }
    }
}

/// How a process writes its config's `limits:` section ([`Store::write_config_limits`]).
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

/// An operator's change to a type's base limits ([`Store::edit_limit`]).
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
    pub(super) fn enforced(&self) -> bool {
        !self.effective.is_empty() && crate::model::validate_type(&self.action_type).is_ok()
    }
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
}

impl LimitUsage {
    /// True when the type has nothing left of one of its limits (for a partitioned limit, its
    /// tightest partition): its waiting work is held by the limit, by design.
    pub fn is_held(&self) -> bool {
        [self.running_remaining, self.rate_remaining, self.budget_remaining].contains(&Some(0))
    }
}

/// The due work of the types whose work is held (see [`LimitUsage::is_held`]): waiting by
/// design, which neither the workload score nor the work-conserving check counts against the
/// queue.
pub fn held_waiting(usage: &[LimitUsage]) -> i64 {
    usage.iter().filter(|u| u.is_held()).map(|u| i64::try_from(u.waiting).unwrap_or(i64::MAX)).sum()
}

/// The busiest partitions a usage view lists.
pub const BUSIEST_PARTITIONS: usize = 5;

/// At most this many passes of the limited claim's pick (each pass leaves out what the one
/// before found full); a batch still short after them is topped up by the next claim.
const PICK_PASSES: usize = 8;

/// Keys computed by one claim from which PostgreSQL's statistics of `actions` are read again.
const ANALYZE_AFTER_KEYS: u64 = 1000;

/// A limited claim that leaves something out picks per due type when there are at most this
/// many due types (else in one walk of the due index).
const PER_TYPE_PICK_MAX: usize = 32;

/// Per (type, partition): what is in use.
#[derive(Clone, Copy, Debug, Default)]
struct Used {
    running: u64,
    window: u64,
}

/// Usage of the limited types, read under the gates (or, for a view, without them).
/// What [`Store::pick_limited`] chose: `(id, type, partition)` in claim order, and what it
/// read and counted on the way, which the claim records.
pub(super) struct LimitedPick {
    pub(super) chosen: Vec<(i64, String, String)>,
    held_back: HashMap<String, LimitField>,
    usage: Usage,
    adding: HashMap<String, HashSet<String>>,
    left: HashMap<(String, String), (u64, Option<LimitField>)>,
    full_at_start: HashSet<(String, String)>,
    now: DateTime<Utc>,
}

struct Usage {
    used: HashMap<(String, String), Used>,
    /// Per partitioned type: the tracked partition values.
    tracked: HashMap<String, HashSet<String>>,
    /// Per (type, partition) with a budget row: (day, used, exhausted_at).
    state: HashMap<(String, String), StateRow>,
}

#[derive(Clone, Debug, Default)]
struct StateRow {
    day: Option<String>,
    used: u64,
    exhausted_at: Option<DateTime<Utc>>,
    blocked: [u64; 3],
}

impl Usage {
    /// The partition a value counts under: itself when tracked (or when there is room to track
    /// it), else the overflow partition.
    fn resolve(
        &self,
        limit: &TypeLimit,
        part: &str,
        cap: usize,
        adding: &mut HashMap<String, HashSet<String>>,
    ) -> String {
        if limit.effective.partition_by.is_none() {
            return String::new();
        }
        if part.is_empty() || part == OVERFLOW_PARTITION {
            return part.to_string();
        }
        let tracked = self.tracked.get(&limit.action_type);
        if tracked.is_some_and(|t| t.contains(part)) {
            return part.to_string();
        }
        let new = adding.entry(limit.action_type.clone()).or_default();
        if new.contains(part) {
            return part.to_string();
        }
        if tracked.map_or(0, HashSet::len) + new.len() < cap {
            new.insert(part.to_string());
            part.to_string()
        } else {
            OVERFLOW_PARTITION.to_string()
        }
    }

    /// What (type, partition) has left: the smallest of its limits' remainders, and which limit
    /// that is (`None`: unlimited).
    fn left(&self, limit: &TypeLimit, part: &str, today: &str) -> (u64, Option<LimitField>) {
        let used = self.used.get(&(limit.action_type.clone(), part.to_string())).copied().unwrap_or_default();
        let budget_used = self
            .state
            .get(&(limit.action_type.clone(), part.to_string()))
            .filter(|s| s.day.as_deref() == Some(today))
            .map_or(0, |s| s.used);
        remaining(&limit.effective, used, budget_used)
            .into_iter()
            .zip(LimitField::ALL)
            .filter_map(|(left, field)| left.map(|l| (l, Some(field))))
            .min_by_key(|(l, _)| *l)
            .unwrap_or((u64::MAX, None))
    }
}

/// What each limit of `spec` has left given what is in use, in [`LimitField::ALL`]'s order
/// (`max_running`, `rate`, `daily_budget`); `None` where `spec` has no such limit.
fn remaining(spec: &LimitSpec, used: Used, budget_used: u64) -> [Option<u64>; 3] {
    [
        spec.max_running.map(|cap| cap.saturating_sub(used.running)),
        spec.rate.map(|r| r.count.saturating_sub(used.window)),
        spec.daily_budget.map(|cap| cap.saturating_sub(budget_used)),
    ]
}

/// A type name as an SQL literal. Types pass `model::validate_type` (letters, digits, `_.:-`)
/// before they reach here; anything else is refused rather than quoted.
fn lit(t: &str) -> Result<String, StoreError> {
    crate::model::validate_type(t).map_err(|e| StoreError::Internal(format!("not a checked type name: {e}")))?;
    Ok(format!("'{t}'"))
}

/// A payload path's value as text, `''` when it is missing or the payload does not parse (a
/// row that cannot be read is claimed and quarantined like any other, never an error here).
/// Path segments are checked by `PayloadPath` (letters, digits, `_`, `-`).
fn part_expr(backend: Backend, path: &PayloadPath) -> String {
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
    let mut whens = String::new();
    for l in limits {
        if let Some(path) = &l.effective.partition_by {
            whens.push_str(&format!(" WHEN {} THEN {}", lit(&l.action_type)?, part_expr(backend, path)));
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

impl Store {
    /// Every type with a row in `limits`, with its overrides in force.
    pub async fn limits(&self) -> Result<Vec<TypeLimit>, StoreError> {
        read_limits(self, &self.db, self.now()).await
    }

    /// The types whose limits are in force (something limited), for a claim.
    pub(super) async fn limits_in_force(&self) -> Result<Vec<TypeLimit>, StoreError> {
        Ok(read_limits(self, &self.db, self.now()).await?.into_iter().filter(TypeLimit::enforced).collect())
    }

    /// Writes a config's `limits:` section, `how` says on what terms (see [`ConfigLimits`]), in
    /// one transaction, each type's row under its lock. Types set by operators and not named
    /// stay; overrides always stay.
    pub async fn write_config_limits(
        &self,
        limits: &BTreeMap<String, LimitSpec>,
        how: ConfigLimits,
    ) -> Result<ConfigLimitsWritten, StoreError> {
        let txn = self.begin_write().await?;
        let out = self.write_config_limits_in(&txn, limits, how).await?;
        txn.commit().await.doing("committing configured limits")?;
        Ok(out)
    }

    /// [`Store::write_config_limits`] in `txn`, which the caller commits (or, for a dry run,
    /// rolls back).
    pub(super) async fn write_config_limits_in(
        &self,
        txn: &DatabaseTransaction,
        limits: &BTreeMap<String, LimitSpec>,
        how: ConfigLimits,
    ) -> Result<ConfigLimitsWritten, StoreError> {
        let now = self.now();
        let mut out = ConfigLimitsWritten::default();
        // Every row this touches, named or to remove, is locked in type order, as every other
        // writer of several rows does, so that two writers never wait on each other in a cycle.
        let mut touched: BTreeMap<String, Option<&LimitSpec>> =
            limits.iter().map(|(t, spec)| (t.clone(), Some(spec))).collect();
        if how == ConfigLimits::Replace {
            let rows = txn
                .query_all_raw(self.stmt("SELECT action_type FROM limits WHERE source = 'config'", []))
                .await
                .doing("reading configured limits")?;
            for r in rows {
                touched.entry(r.try_get("", "action_type").doing("reading configured limits")?).or_insert(None);
            }
        }
        for (t, spec) in touched {
            let Some(spec) = spec else {
                // Set by an earlier config and not named in this one, if it still is.
                let lock = if self.backend == Backend::Postgres { " FOR UPDATE" } else { "" };
                let still = txn
                    .query_one_raw(self.stmt(
                        &format!("SELECT 1 AS one FROM limits WHERE action_type = $1 AND source = 'config'{lock}"),
                        [t.as_str().into()],
                    ))
                    .await
                    .doing("reading configured limits")?;
                if still.is_some() {
                    delete_limit(self, txn, &t).await?;
                    out.removed.push(t);
                }
                continue;
            };
            crate::model::validate_type(&t).map_err(StoreError::Invalid)?;
            // A row of overrides alone (source `override`) has no base to keep.
            let base = lock_limit(self, txn, &t, LimitSource::Config, now)
                .await?
                .filter(|(_, source)| *source != LimitSource::Override);
            if let Some((held, source)) = &base {
                out.disagreements.extend(held.differing(spec).into_iter().map(|field| LimitDisagreement {
                    action_type: t.clone(),
                    field,
                    config: field.value_in(spec),
                    database: field.value_in(held),
                    source: *source,
                }));
            }
            if how == ConfigLimits::Replace || base.is_none() {
                upsert_limit(self, txn, &t, spec, LimitSource::Config, now).await?;
                out.written.push(t);
            }
        }
        Ok(out)
    }

    /// Replaces a type's base limits (source `operator`); overrides stay. `edit_limit` with
    /// [`LimitEdit::Replace`], for callers that hold a whole spec.
    pub async fn set_limit(&self, action_type: &str, spec: &LimitSpec) -> Result<(), StoreError> {
        spec.validate().map_err(|e| StoreError::Invalid(format!("limits.{action_type}: {e}")))?;
        match self.edit_limit(action_type, &LimitEdit::Replace(spec.clone())).await? {
            Ok(_) => Ok(()),
            // A valid spec limits something, the only refusal a replacement can meet.
            Err(why) => Err(StoreError::Internal(format!("replacing the limits of {action_type}: {why:?}"))),
        }
    }

    /// An operator's change to a type's base limits (source `operator`), made on the row as it
    /// stands under its lock: the fields the edit names change, every other field (another
    /// operator's edit a moment before included) and the overrides stay. Returns the type's
    /// base as written, or why nothing was.
    pub async fn edit_limit(
        &self,
        action_type: &str,
        edit: &LimitEdit,
    ) -> Result<Result<LimitSpec, EditRefusal>, StoreError> {
        crate::model::validate_type(action_type).map_err(StoreError::Invalid)?;
        let txn = self.begin_write().await?;
        let now = self.now();
        let held = lock_limit(self, &txn, action_type, LimitSource::Operator, now).await?.map(|(base, _)| base);
        let next = match (edit, held) {
            (LimitEdit::Replace(spec), _) => spec.clone(),
            (LimitEdit::Merge(spec), held) => held.unwrap_or_default().merged(spec),
            (LimitEdit::Remove(_), None) => return refuse(txn, EditRefusal::NoLimits).await,
            (LimitEdit::Remove(field), Some(mut base)) => {
                if field.value_in(&base).is_none() {
                    return refuse(txn, EditRefusal::NotSet).await;
                }
                field.remove(&mut base);
                base
            }
        };
        if next.is_empty() {
            return refuse(txn, EditRefusal::LimitsNothing).await;
        }
        next.validate().map_err(|e| StoreError::Invalid(format!("limits.{action_type}: {e}")))?;
        upsert_limit(self, &txn, action_type, &next, LimitSource::Operator, now).await?;
        txn.commit().await.doing("committing a limit")?;
        Ok(Ok(next))
    }

    /// Removes a type's limits and overrides. Returns false when it had none.
    pub async fn clear_limit(&self, action_type: &str) -> Result<bool, StoreError> {
        let txn = self.begin_write().await?;
        let n = delete_limit(self, &txn, action_type).await?;
        txn.commit().await.doing("committing a cleared limit")?;
        Ok(n > 0)
    }

    /// Sets a temporary value of one field of a type's limits until `until` (a rule's
    /// `set_limit` under the lease's fence, or an operator's). The type needs no base limit.
    #[allow(clippy::too_many_arguments)]
    pub async fn set_limit_override(
        &self,
        fence: Option<&Fence>,
        action_type: &str,
        field: LimitField,
        value: LimitValue,
        until: DateTime<Utc>,
        reason: &str,
        set_by: &str,
    ) -> Result<(), StoreError> {
        crate::model::validate_type(action_type).map_err(StoreError::Invalid)?;
        let (v, period) = match value {
            LimitValue::Count(n) => (i(n), None),
            LimitValue::Rate(r) => (i(r.count), Some(i(r.period.as_secs()))),
        };
        let now = self.now();
        let txn = self.begin_write().await?;
        if let Some(fence) = fence {
            let held = txn
                .query_one_raw(self.stmt(
                    "SELECT COUNT(*) AS n FROM leases WHERE name = $1 AND epoch = $2",
                    [fence.lease_name.as_str().into(), fence.epoch.into()],
                ))
                .await
                .doing("checking the lease")?
                .map(|r| r.try_get::<i64>("", "n"))
                .transpose()
                .doing("checking the lease")?
                .unwrap_or(0);
            if held == 0 {
                return Err(super::Refusal::Fenced(fence.epoch).into());
            }
        }
        // A no-op update rather than DO NOTHING: it locks the row (on PostgreSQL), so that
        // `clear_limit_override` or `clear_limit` cannot delete it under the override written next.
        txn.execute_raw(self.stmt(
            "INSERT INTO limits (action_type, source, updated_at) VALUES ($1, 'override', $2) \
             ON CONFLICT (action_type) DO UPDATE SET source = limits.source",
            [action_type.into(), now.into()],
        ))
        .await
        .doing("writing a limit override")?;
        txn.execute_raw(self.stmt(
            "INSERT INTO limit_overrides (action_type, field, value, period_seconds, expires_at, reason, set_by, set_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (action_type, field) DO UPDATE SET value = excluded.value, \
               period_seconds = excluded.period_seconds, expires_at = excluded.expires_at, \
               reason = excluded.reason, set_by = excluded.set_by, set_at = excluded.set_at",
            [
                action_type.into(),
                field.as_str().into(),
                v.into(),
                period.into(),
                until.into(),
                super::actions::db_text(reason).into_owned().into(),
                set_by.into(),
                now.into(),
            ],
        ))
        .await
        .doing("writing a limit override")?;
        txn.commit().await.doing("committing a limit override")
    }

    /// Ends one override before it expires (an operator ending a circuit breaker's narrowing).
    /// Returns false when the type had no override of that field in force. A type that had
    /// only overrides (source `override`, no base limit) and is left with none loses its row,
    /// its gate and its window, as `clear_limit` would: it is no longer limited.
    ///
    /// On PostgreSQL the type's `limits` row is locked first, and `set_limit_override` locks it
    /// too (its upsert), so an override set at the same moment is either ended here or kept
    /// with its row, never left without one (which `limits` would not read).
    pub async fn clear_limit_override(&self, action_type: &str, field: LimitField) -> Result<bool, StoreError> {
        crate::model::validate_type(action_type).map_err(StoreError::Invalid)?;
        let txn = self.begin_write().await?;
        if self.backend == Backend::Postgres {
            txn.query_one_raw(
                self.stmt("SELECT 1 FROM limits WHERE action_type = $1 FOR UPDATE", [action_type.into()]),
            )
            .await
            .doing("locking a limit")?;
        }
        // The database's clock decides what is in force, as `read_limits` does: `now()` on
        // PostgreSQL, the store's clock (parameter `$n`) on SQLite.
        let (now_at, now): (fn(usize) -> String, Option<Value>) = match self.backend {
            Backend::Postgres => (|_| "now()".to_string(), None),
            Backend::Sqlite => (|n| format!("${n}"), Some(self.now().into())),
        };
        let mut values: Vec<Value> = vec![action_type.into(), field.as_str().into()];
        values.extend(now.clone());
        let ended = txn
            .execute_raw(self.stmt(
                &format!(
                    "DELETE FROM limit_overrides WHERE action_type = $1 AND field = $2 AND expires_at > {}",
                    now_at(3)
                ),
                values,
            ))
            .await
            .doing("ending a limit override")?
            .rows_affected();
        // An expired row of the field is in force no longer; it goes too.
        txn.execute_raw(self.stmt(
            "DELETE FROM limit_overrides WHERE action_type = $1 AND field = $2",
            [action_type.into(), field.as_str().into()],
        ))
        .await
        .doing("ending a limit override")?;
        let mut values: Vec<Value> = vec![action_type.into()];
        values.extend(now);
        let empty = txn
            .query_one_raw(self.stmt(
                &format!(
                    "SELECT COUNT(*) AS n FROM limits l WHERE l.action_type = $1 AND l.source = 'override' \
                     AND l.max_running IS NULL AND l.rate_count IS NULL AND l.rate_seconds IS NULL \
                     AND l.daily_budget IS NULL AND l.partition_by IS NULL AND NOT EXISTS \
                     (SELECT 1 FROM limit_overrides o WHERE o.action_type = l.action_type AND o.expires_at > {})",
                    now_at(2)
                ),
                values,
            ))
            .await
            .doing("ending a limit override")?
            .map(|r| r.try_get::<i64>("", "n"))
            .transpose()
            .doing("ending a limit override")?
            .unwrap_or(0);
        if empty > 0 {
            delete_limit(self, &txn, action_type).await?;
        }
        txn.commit().await.doing("committing an ended limit override")?;
        Ok(ended > 0)
    }

    /// Every limited type's usage: what is running, waiting, and left of each limit.
    pub async fn limit_usage(&self) -> Result<Vec<LimitUsage>, StoreError> {
        let limits = read_limits(self, &self.db, self.now()).await?;
        if limits.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.db_now().await?;
        let refs: Vec<&TypeLimit> = limits.iter().filter(|l| l.enforced()).collect();
        let (usage, waiting) = if refs.is_empty() {
            (Usage { used: HashMap::new(), tracked: HashMap::new(), state: HashMap::new() }, HashMap::new())
        } else {
            (read_usage(self, &self.db, &refs, now).await?, self.waiting_of(&refs, now).await?)
        };
        let today = day_of(now);
        let mut out = Vec::with_capacity(limits.len());
        for l in &limits {
            let t = &l.action_type;
            // Every partition with something in use, plus the one a new value would take.
            let mut parts: BTreeMap<String, PartUsage> = BTreeMap::new();
            for ((ty, p), used) in &usage.used {
                if ty == t {
                    let e = parts
                        .entry(p.clone())
                        .or_insert_with(|| PartUsage { partition: p.clone(), ..Default::default() });
                    e.running += used.running;
                    e.rate_used += used.window;
                }
            }
            for ((ty, p), s) in &usage.state {
                if ty == t
                    && s.day.as_deref() == Some(today.as_str())
                    && (!p.is_empty() || l.effective.partition_by.is_none())
                {
                    let e = parts
                        .entry(p.clone())
                        .or_insert_with(|| PartUsage { partition: p.clone(), ..Default::default() });
                    e.budget_used = s.used;
                }
            }
            // The tightest partition's remainder of each limit (a fresh one when none is in use).
            let mut tightest: [Option<u64>; 3] = remaining(&l.effective, Used::default(), 0);
            for p in parts.values() {
                let left = remaining(&l.effective, Used { running: p.running, window: p.rate_used }, p.budget_used);
                for (t, l) in tightest.iter_mut().zip(left) {
                    *t = t.zip(l).map(|(a, b)| a.min(b));
                }
            }
            let gate = usage.state.get(&(t.clone(), String::new())).cloned().unwrap_or_default();
            let exhausted = usage
                .state
                .iter()
                .filter(|((ty, _), s)| ty == t && s.day.as_deref() == Some(today.as_str()))
                .filter_map(|(_, s)| s.exhausted_at)
                .min();
            let mut list: Vec<PartUsage> = parts.into_values().collect();
            list.sort_by(|a, b| {
                (b.running, b.rate_used, b.budget_used)
                    .cmp(&(a.running, a.rate_used, a.budget_used))
                    .then(a.partition.cmp(&b.partition))
            });
            let running = list.iter().map(|p| p.running).sum();
            let partitioned = l.effective.partition_by.is_some();
            list.truncate(if partitioned { BUSIEST_PARTITIONS } else { 0 });
            out.push(LimitUsage {
                action_type: t.clone(),
                limit: l.clone(),
                running,
                waiting: waiting.get(t).copied().unwrap_or(0),
                running_remaining: tightest[0],
                rate_remaining: tightest[1],
                budget_remaining: tightest[2],
                budget_exhausted_at: if tightest[2] == Some(0) { exhausted } else { None },
                blocked_running: gate.blocked[0],
                blocked_rate: gate.blocked[1],
                blocked_budget: gate.blocked[2],
                partitions: list,
                partitions_tracked: usage.tracked.get(t).map_or(0, |s| s.len() as u64),
            });
        }
        Ok(out)
    }

    /// Due actions per limited type.
    async fn waiting_of(&self, limits: &[&TypeLimit], now: DateTime<Utc>) -> Result<HashMap<String, u64>, StoreError> {
        let sql = format!(
            "SELECT action_type, COUNT(*) AS n FROM actions WHERE {} AND action_type IN ({}) GROUP BY action_type",
            super::due_sql("$1"),
            in_list(limits)?
        );
        let rows = self.db.query_all_raw(self.stmt(&sql, [now.into()])).await.doing("counting limited work")?;
        let mut out = HashMap::new();
        for r in rows {
            let t: String = r.try_get("", "action_type").doing("counting limited work")?;
            let n: i64 = r.try_get("", "n").doing("counting limited work")?;
            out.insert(t, u(n));
        }
        Ok(out)
    }

    /// The claim of up to `n` due actions when some of `limits` (each served by the claimer)
    /// are in force; see the module doc. Returns the rows claimed, not yet sorted.
    pub(super) async fn claim_limited(
        &self,
        claimer: &Claimer,
        n: u64,
        token: i64,
        limits: &[TypeLimit],
        partitions_cap: usize,
    ) -> Result<Vec<Claimed>, StoreError> {
        let txn = self.begin_write().await?;
        let mut refs: Vec<&TypeLimit> = limits.iter().collect();
        refs.sort_by(|a, b| a.action_type.cmp(&b.action_type));
        let LimitedPick { chosen, mut held_back, usage, adding, left, full_at_start, now } =
            self.pick_limited(&txn, claimer, n, &refs, partitions_cap).await?;
        let by_type: HashMap<&str, &TypeLimit> = refs.iter().map(|l| (l.action_type.as_str(), *l)).collect();

        // Due work left out because its type or partition was full at the start: one probe per
        // type, for the blocked counters.
        for l in &refs {
            if held_back.contains_key(&l.action_type) {
                continue;
            }
            let full: Vec<&(String, String)> = full_at_start.iter().filter(|(t, _)| *t == l.action_type).collect();
            if full.is_empty() {
                continue;
            }
            if let Some(f) = self.blocked_probe(&txn, l, &full, &left, &usage, now).await? {
                held_back.insert(l.action_type.clone(), f);
            }
        }

        let claimed =
            if chosen.is_empty() { Vec::new() } else { self.claim_ids(&txn, claimer, token, &chosen).await? };
        let landed: HashSet<i64> = claimed.iter().map(|c| c.action.id).collect();
        let mut per_key: BTreeMap<(String, String), u64> = BTreeMap::new();
        for (id, t, part) in &chosen {
            if landed.contains(id) && by_type.contains_key(t.as_str()) {
                *per_key.entry((t.clone(), part.clone())).or_default() += 1;
            }
        }
        self.record_starts(&txn, &refs, &usage, &per_key, &adding, &held_back, token, now).await?;
        txn.commit().await.doing("committing a limited claim")?;
        Ok(claimed)
    }

    /// The rows a limited claim of `n` for `claimer` takes now, in claim order, with what it
    /// read to choose them; claims nothing. In `txn`, which takes the gates of `refs` (sorted
    /// by type) and computes the partition keys of new rows. The claim and the dry run both
    /// pick through here.
    pub(super) async fn pick_limited(
        &self,
        txn: &DatabaseTransaction,
        claimer: &Claimer,
        n: u64,
        refs: &[&TypeLimit],
        partitions_cap: usize,
    ) -> Result<LimitedPick, StoreError> {
        let refs = refs.to_vec();
        let (now, keyed_for) = lock_gates(self, txn, &refs).await?;
        self.key_partitions(txn, &refs, &keyed_for).await?;
        let usage = read_usage(self, txn, &refs, now).await?;
        let today = day_of(now);
        let by_type: HashMap<&str, &TypeLimit> = refs.iter().map(|l| (l.action_type.as_str(), *l)).collect();
        let part_sql = part_case(self.backend, &refs)?;

        // What each (type, partition) has left; full ones are left out of the pick.
        let mut left: HashMap<(String, String), (u64, Option<LimitField>)> = HashMap::new();
        let mut adding: HashMap<String, HashSet<String>> = HashMap::new();
        let mut known: Vec<(String, String)> = usage.used.keys().cloned().collect();
        known.extend(usage.state.keys().cloned());
        for l in &refs {
            known.push((l.action_type.clone(), String::new()));
            if l.effective.partition_by.is_some() {
                known.push((l.action_type.clone(), OVERFLOW_PARTITION.to_string()));
            }
        }
        for key in known {
            if let Some(l) = by_type.get(key.0.as_str()) {
                left.entry(key.clone()).or_insert_with(|| usage.left(l, &key.1, &today));
            }
        }
        let full_at_start: HashSet<(String, String)> =
            left.iter().filter(|(_, (n, _))| *n == 0).map(|(k, _)| k.clone()).collect();

        let want_total = usize::try_from(n).unwrap_or(usize::MAX);
        let mut chosen: Vec<(i64, String, String)> = Vec::new();
        let mut held_back: HashMap<String, LimitField> = HashMap::new();
        let mut due_types: Option<Vec<String>> = None;
        let order = super::CLAIM_ORDER_SQL;
        for _pass in 0..PICK_PASSES {
            let want = want_total - chosen.len();
            // A partitioned type with a full partition is picked through its partition keys
            // (`keyed_candidates`), never by a walk that would step over the full ones' backlog.
            let keyed: Vec<&TypeLimit> = refs
                .iter()
                .copied()
                .filter(|l| self.full_parts(l, &left, &usage, &adding, partitions_cap).is_some_and(|f| f.any()))
                .collect();
            let (exclude, mut values) = self.exclusions(&refs, &left, &keyed, &chosen)?;
            let types = claimer_types(claimer, &mut values);
            values.push(now.into());
            let now_at = format!("${}", values.len());
            values.push(i(want as u64).into());
            let limit_at = format!("${}", values.len());
            let lock = if self.backend == Backend::Postgres { " FOR UPDATE SKIP LOCKED" } else { "" };
            let due = format!("{}{types}{exclude}", super::due_sql(&now_at));
            // With something left out, one walk in claim order would step over every row of
            // it (a held backlog of a higher priority: all of it, at every claim). Instead each
            // due type gives its first rows through its own index, and the claim order is
            // taken over those.
            let full_somewhere = left.values().any(|(n, _)| *n == 0);
            if full_somewhere && due_types.is_none() {
                due_types = Some(self.due_type_list(txn).await?);
            }
            let left_out = |t: &String| {
                keyed.iter().any(|l| &l.action_type == t)
                    || by_type.get(t.as_str()).is_some_and(|l| {
                        l.effective.partition_by.is_none()
                            && left.get(&(t.clone(), String::new())).is_some_and(|(n, _)| *n == 0)
                    })
            };
            let pick = match due_types.as_deref() {
                Some(list) if full_somewhere && !list.is_empty() && list.len() <= PER_TYPE_PICK_MAX => {
                    let mut parts = Vec::new();
                    // SQLite's planner, seeing few types, would rather walk the due index.
                    let index_hint = match self.backend {
                        Backend::Sqlite => " INDEXED BY ix_actions_due_type",
                        Backend::Postgres => "",
                    };
                    for t in list.iter().filter(|t| claimer.serves(t) && !left_out(t)) {
                        values.push(t.as_str().into());
                        parts.push(format!(
                            "SELECT id FROM (SELECT id FROM actions{index_hint} WHERE action_type = ${} AND {due} \
                             ORDER BY {order} LIMIT {limit_at}) t{}",
                            values.len(),
                            parts.len()
                        ));
                    }
                    if parts.is_empty() {
                        None
                    } else {
                        Some(format!("id IN ({}) AND {due}", parts.join(" UNION ALL ")))
                    }
                }
                _ => Some(due),
            };
            let mut rows = Vec::new();
            if let Some(pick) = pick {
                let sql = format!(
                    "SELECT id, action_type, {part_sql} AS part, CAST(priority AS BIGINT) AS prio, not_before \
                     FROM actions WHERE {pick} ORDER BY {order} LIMIT {limit_at}{lock}"
                );
                let found = txn.query_all_raw(self.stmt(&sql, values)).await.doing("picking limited work")?;
                for r in &found {
                    rows.push(Candidate::read(r)?);
                }
            }
            // The walk gave the first `want` rows of the other types; a keyed type's candidate
            // after the last of them waits for the next pass (a row the walk did not reach may
            // come before it), unless the walk found all there was. So does any candidate from
            // where a keyed type's are incomplete.
            let walked_all = rows.len() < want;
            let walk_end = if walked_all { None } else { rows.last().map(Candidate::rank) };
            let mut keyed_rows = Vec::new();
            let mut bound: Option<Rank> = None;
            for l in &keyed {
                let (found, incomplete_from) =
                    self.keyed_candidates(txn, l, &left, &usage, &adding, partitions_cap, &chosen, want, now).await?;
                keyed_rows.extend(found);
                bound = bound.into_iter().chain(incomplete_from).min();
            }
            let mut deferred = false;
            let before_bound = |c: &Candidate| bound.as_ref().is_none_or(|b| c.rank() < *b);
            rows.retain(|c| {
                let keep = before_bound(c);
                deferred |= !keep;
                keep
            });
            for c in keyed_rows {
                if walk_end.as_ref().is_none_or(|h| c.rank() < *h) && before_bound(&c) {
                    rows.push(c);
                } else {
                    deferred = true;
                }
            }
            rows.sort_by_key(Candidate::rank);
            let mut skipped = false;
            for c in rows {
                if chosen.len() >= want_total {
                    break;
                }
                let Some(l) = by_type.get(c.action_type.as_str()) else {
                    chosen.push((c.id, c.action_type, String::new()));
                    continue;
                };
                let part = usage.resolve(l, &c.part, partitions_cap, &mut adding);
                let key = (c.action_type.clone(), part.clone());
                let slot = left.entry(key).or_insert_with(|| usage.left(l, &part, &today));
                if slot.0 > 0 {
                    slot.0 -= 1;
                    chosen.push((c.id, c.action_type, part));
                } else {
                    skipped = true;
                    if let Some(f) = slot.1 {
                        held_back.entry(c.action_type).or_insert(f);
                    }
                }
            }
            if chosen.len() >= want_total || (walked_all && !deferred) || (!skipped && !deferred) {
                break;
            }
        }
        Ok(LimitedPick { chosen, held_back, usage, adding, left, full_at_start, now })
    }

    /// The types with claimable rows, up to one more than [`PER_TYPE_PICK_MAX`]: a skip scan of
    /// `ix_actions_due_type`, one index probe per type.
    async fn due_type_list(&self, txn: &DatabaseTransaction) -> Result<Vec<String>, StoreError> {
        let sql = format!(
            "WITH RECURSIVE t(x) AS ( \
               SELECT (SELECT action_type FROM actions WHERE {c} ORDER BY action_type LIMIT 1) \
               UNION ALL \
               SELECT (SELECT action_type FROM actions WHERE {c} AND action_type > t.x ORDER BY action_type LIMIT 1) \
               FROM t WHERE t.x IS NOT NULL) \
             SELECT x AS action_type FROM t WHERE x IS NOT NULL LIMIT {}",
            PER_TYPE_PICK_MAX + 1,
            c = super::CLAIMABLE_SQL
        );
        let rows = txn.query_all_raw(self.stmt(&sql, [])).await.doing("listing due types")?;
        rows.iter().map(|r| r.try_get::<String>("", "action_type").doing("listing due types")).collect()
    }

    /// The walk's `AND ...` leaving out the unpartitioned types that are full, the types picked
    /// by their partition keys (`keyed`), and the ids already chosen.
    fn exclusions(
        &self,
        refs: &[&TypeLimit],
        left: &HashMap<(String, String), (u64, Option<LimitField>)>,
        keyed: &[&TypeLimit],
        chosen: &[(i64, String, String)],
    ) -> Result<(String, Vec<Value>), StoreError> {
        let mut sql = String::new();
        let mut left_out = Vec::new();
        for l in refs {
            let t = &l.action_type;
            let full = left.get(&(t.clone(), String::new())).is_some_and(|(n, _)| *n == 0);
            if (l.effective.partition_by.is_none() && full) || keyed.iter().any(|k| &k.action_type == t) {
                left_out.push(lit(t)?);
            }
        }
        if !left_out.is_empty() {
            sql.push_str(&format!(" AND action_type NOT IN ({})", left_out.join(", ")));
        }
        sql.push_str(&chosen_sql(chosen));
        Ok((sql, Vec::new()))
    }

    /// The full partitions of partitioned type `l` (`None` for an unpartitioned type): the
    /// tracked values (and `''`) with nothing left, and whether the overflow partition is full
    /// with no room to track another value (then every untracked value is full).
    fn full_parts(
        &self,
        l: &TypeLimit,
        left: &HashMap<(String, String), (u64, Option<LimitField>)>,
        usage: &Usage,
        adding: &HashMap<String, HashSet<String>>,
        cap: usize,
    ) -> Option<FullParts> {
        l.effective.partition_by.as_ref()?;
        let t = &l.action_type;
        let values: Vec<String> = left
            .iter()
            .filter(|((ty, p), (n, _))| ty == t && *n == 0 && p != OVERFLOW_PARTITION)
            .map(|((_, p), _)| p.clone())
            .collect();
        let tracked: Vec<String> =
            usage.tracked.get(t).into_iter().flatten().chain(adding.get(t).into_iter().flatten()).cloned().collect();
        let overflow_full = left.get(&(t.clone(), OVERFLOW_PARTITION.to_string())).is_some_and(|(n, _)| *n == 0)
            && tracked.len() >= cap;
        Some(FullParts { values, overflow_known: overflow_full.then_some(tracked) })
    }

    /// Candidates of partitioned type `l`, which has a full partition, and the claim order from
    /// which they are incomplete (`None`: they are all there is). The keys that may take a row
    /// are the type's tracked values (and `''`) that are not full when the overflow is full with
    /// no room to track another, else every key among its waiting rows (a skip scan of
    /// `ix_actions_due_part`, one probe per key) but the full ones. Of those, each key's first
    /// waiting row is read (one probe per key), and only the `want` keys whose first row comes
    /// first in claim order give their first rows, as many as a partition of the type could take
    /// (at most `want`): a key after them cannot take a row before the first row of the
    /// `want + 1`-th, which is the bound returned. Every row the walk in claim order could choose
    /// before that bound is among them; the rows of a full partition are not read.
    #[allow(clippy::too_many_arguments)]
    async fn keyed_candidates(
        &self,
        txn: &DatabaseTransaction,
        l: &TypeLimit,
        left: &HashMap<(String, String), (u64, Option<LimitField>)>,
        usage: &Usage,
        adding: &HashMap<String, HashSet<String>>,
        cap: usize,
        chosen: &[(i64, String, String)],
        want: usize,
        now: DateTime<Utc>,
    ) -> Result<(Vec<Candidate>, Option<Rank>), StoreError> {
        let Some(full) = self.full_parts(l, left, usage, adding, cap) else { return Ok((Vec::new(), None)) };
        // A fresh partition's room bounds every partition's: no value takes more rows than that.
        let fresh = remaining(&l.effective, Used::default(), 0).into_iter().flatten().min().unwrap_or(u64::MAX);
        let per_key = usize::try_from(fresh).unwrap_or(usize::MAX).min(want);
        if per_key == 0 {
            return Ok((Vec::new(), None));
        }
        let keys_wanted = want.saturating_add(1);
        let mut values: Vec<Value> = vec![l.action_type.as_str().into(), now.into()];
        let claimable = super::CLAIMABLE_SQL;
        // SQLite is told the index; PostgreSQL's statistics are kept current for it (see
        // `key_partitions`).
        let by_key = match self.backend {
            Backend::Sqlite => " INDEXED BY ix_actions_due_part",
            Backend::Postgres => "",
        };
        let keys = match full.overflow_known {
            // Every untracked value is full: the keys with room are among the tracked ones.
            Some(mut known) => {
                known.push(String::new());
                known.retain(|k| !full.values.contains(k));
                values.push(serde_json::Value::from(known).to_string().into());
                format!("v(x) AS {}", json_elems(self.backend, values.len()))
            }
            None => {
                let mut cond = String::new();
                if !full.values.is_empty() {
                    values.push(serde_json::Value::from(full.values).to_string().into());
                    cond = format!(" AND x NOT IN {}", json_elems(self.backend, values.len()));
                }
                format!(
                    "s(x) AS ( \
                       SELECT (SELECT part_key FROM actions{by_key} WHERE action_type = $1 AND {claimable} \
                         AND part_key IS NOT NULL ORDER BY part_key LIMIT 1) \
                       UNION ALL \
                       SELECT (SELECT part_key FROM actions{by_key} WHERE action_type = $1 AND {claimable} \
                         AND part_key > s.x ORDER BY part_key LIMIT 1) FROM s WHERE s.x IS NOT NULL), \
                     v(x) AS (SELECT x FROM s WHERE x IS NOT NULL{cond})"
                )
            }
        };
        let due = format!("action_type = $1 AND {}{}", super::due_sql("$2"), chosen_sql(chosen));
        let order = format!("ORDER BY {}", super::CLAIM_ORDER_SQL);
        let f_order = super::claim_order_of("f");
        let sql = match self.backend {
            // No row lock: claimers of the type take turns at its gate, and the claim of the
            // rows chosen lands only on rows still waiting.
            Backend::Postgres => format!(
                "WITH RECURSIVE {keys}, \
                 k(x) AS (SELECT v.x FROM v CROSS JOIN LATERAL \
                   (SELECT priority, not_before, id FROM actions WHERE part_key = v.x AND {due} {order} LIMIT 1) f \
                   ORDER BY {f_order} LIMIT {keys_wanted}) \
                 SELECT b.id, b.action_type, b.part_key AS part, b.prio, b.not_before FROM k CROSS JOIN LATERAL \
                   (SELECT id, action_type, part_key, CAST(priority AS BIGINT) AS prio, not_before FROM actions \
                    WHERE part_key = k.x AND {due} {order} LIMIT {per_key}) b"
            ),
            Backend::Sqlite => format!(
                "WITH RECURSIVE {keys}, \
                 k(x) AS (SELECT v.x FROM v JOIN actions f ON f.id = \
                   (SELECT id FROM actions{by_key} WHERE part_key = v.x AND {due} {order} LIMIT 1) \
                   ORDER BY {f_order} LIMIT {keys_wanted}) \
                 SELECT a.id, a.action_type, a.part_key AS part, CAST(a.priority AS BIGINT) AS prio, a.not_before \
                 FROM k JOIN actions a ON a.id IN \
                   (SELECT id FROM actions{by_key} WHERE part_key = k.x AND {due} {order} LIMIT {per_key})"
            ),
        };
        let rows = txn.query_all_raw(self.stmt(&sql, values)).await.doing("picking partitioned work")?;
        let rows: Vec<Candidate> = rows.iter().map(Candidate::read).collect::<Result<_, _>>()?;
        // Each key's first row; with more keys than `want`, the first row of the last one bounds
        // what is complete.
        let mut firsts: HashMap<&str, Rank> = HashMap::new();
        for c in &rows {
            let first = firsts.entry(c.part.as_str()).or_insert_with(|| c.rank());
            if c.rank() < *first {
                *first = c.rank();
            }
        }
        let bound = if firsts.len() >= keys_wanted { firsts.into_values().max() } else { None };
        Ok((rows, bound))
    }

    /// Computes the partition key of the waiting rows of each partitioned type that have none
    /// (new rows), or of all of them when the type's `partition_by` is not the path its keys
    /// were computed for (`keyed_for`, read with the gates); then records that path.
    async fn key_partitions(
        &self,
        txn: &DatabaseTransaction,
        refs: &[&TypeLimit],
        keyed_for: &HashMap<String, Option<String>>,
    ) -> Result<(), StoreError> {
        for l in refs {
            let Some(path) = &l.effective.partition_by else { continue };
            let path_text = path.to_string();
            let current = keyed_for.get(&l.action_type).is_some_and(|p| p.as_deref() == Some(path_text.as_str()));
            let keyed = self.key_waiting_rows(txn, &l.action_type, &part_expr(self.backend, path), !current).await?;
            // PostgreSQL plans the keyed pick by its statistics: read while the keys were not
            // there (a backlog just enqueued, the column just added), they make a walk of the
            // type's rows per key look cheap. A burst of new keys is counted before it is used
            // (ANALYZE samples, in this transaction, which sees its own keys).
            if self.backend == Backend::Postgres && keyed >= ANALYZE_AFTER_KEYS {
                txn.execute_unprepared("ANALYZE actions").await.doing("counting partition keys")?;
            }
            if !current {
                txn.execute_raw(self.stmt(
                    "UPDATE limit_state SET part_path = $2 WHERE action_type = $1 AND part = ''",
                    [l.action_type.as_str().into(), path_text.into()],
                ))
                .await
                .doing("computing partition keys")?;
            }
        }
        Ok(())
    }

    /// Whether type `l` has due work in a partition that was full at the start; the limit that
    /// held it when so.
    async fn blocked_probe(
        &self,
        txn: &DatabaseTransaction,
        l: &TypeLimit,
        full: &[&(String, String)],
        left: &HashMap<(String, String), (u64, Option<LimitField>)>,
        usage: &Usage,
        now: DateTime<Utc>,
    ) -> Result<Option<LimitField>, StoreError> {
        let mut values: Vec<Value> = vec![now.into()];
        let cond = match &l.effective.partition_by {
            None => String::new(),
            Some(path) => {
                let parts: Vec<String> =
                    full.iter().map(|(_, p)| p.clone()).filter(|p| p != OVERFLOW_PARTITION).collect();
                let overflow = full.iter().any(|(_, p)| p == OVERFLOW_PARTITION);
                let known = usage.tracked.get(&l.action_type).into_iter().flatten();
                match full_partitions(self.backend, path, parts, overflow.then_some(known), &mut values) {
                    Some(cond) => format!(" AND {cond}"),
                    None => String::new(),
                }
            }
        };
        let sql = format!(
            "SELECT 1 AS one FROM actions WHERE {} AND action_type = {}{cond} LIMIT 1",
            super::due_sql("$1"),
            lit(&l.action_type)?
        );
        let found = txn.query_one_raw(self.stmt(&sql, values)).await.doing("probing held-back work")?.is_some();
        Ok(if found { full.iter().find_map(|k| left.get(*k).and_then(|(_, f)| *f)) } else { None })
    }

    /// The fenced claim of exactly the rows picked.
    async fn claim_ids(
        &self,
        txn: &DatabaseTransaction,
        claimer: &Claimer,
        token: i64,
        chosen: &[(i64, String, String)],
    ) -> Result<Vec<Claimed>, StoreError> {
        let ids: Vec<i64> = chosen.iter().map(|(id, _, _)| *id).collect();
        let ids = serde_json::Value::from(ids).to_string();
        let (sql, values) = self.claim_sql(claimer, token, super::actions::Pick::Ids(&ids));
        super::actions::claimed_rows(self, txn, token, sql, values).await
    }

    /// Writes what a limited claim used: the window's starts, the day's budget, newly tracked
    /// partitions and the blocked counters; and drops starts that left every window.
    #[allow(clippy::too_many_arguments)]
    async fn record_starts(
        &self,
        txn: &DatabaseTransaction,
        refs: &[&TypeLimit],
        usage: &Usage,
        per_key: &BTreeMap<(String, String), u64>,
        adding: &HashMap<String, HashSet<String>>,
        held_back: &HashMap<String, LimitField>,
        token: i64,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let by_type: HashMap<&str, &TypeLimit> = refs.iter().map(|l| (l.action_type.as_str(), *l)).collect();
        let today = day_of(now);
        let mut starts = Vec::new();
        let mut states = Vec::new();
        for ((t, part), k) in per_key {
            let Some(l) = by_type.get(t.as_str()) else { continue };
            if l.effective.rate.is_some() {
                starts.push(serde_json::json!([t, part, token, k]));
            }
            if let Some(budget) = l.effective.daily_budget {
                let old = usage.state.get(&(t.clone(), part.clone())).cloned().unwrap_or_default();
                let same_day = old.day.as_deref() == Some(today.as_str());
                let used = if same_day { old.used } else { 0 } + k;
                let exhausted =
                    if used >= budget { Some(old.exhausted_at.filter(|_| same_day).unwrap_or(now)) } else { None };
                states.push((t.clone(), part.clone(), Some(today.clone()), used, exhausted));
            }
        }
        // Newly tracked partitions get their row even without a budget.
        for (t, parts) in adding {
            for p in parts {
                if !states.iter().any(|(st, sp, ..)| st == t && sp == p) {
                    states.push((t.clone(), p.clone(), None, 0, None));
                }
            }
        }
        if !starts.is_empty() {
            let sql = match self.backend {
                Backend::Sqlite => {
                    "INSERT INTO limit_starts (action_type, part, token, started_at, n) \
                     SELECT value ->> 0, value ->> 1, value ->> 2, $2, value ->> 3 FROM json_each($1) WHERE true \
                     ON CONFLICT (action_type, part, token) DO UPDATE SET n = limit_starts.n + excluded.n"
                }
                Backend::Postgres => {
                    "INSERT INTO limit_starts (action_type, part, token, started_at, n) \
                     SELECT r ->> 0, r ->> 1, (r ->> 2)::bigint, $2, (r ->> 3)::bigint FROM json_array_elements($1::json) AS r \
                     ON CONFLICT (action_type, part, token) DO UPDATE SET n = limit_starts.n + excluded.n"
                }
            };
            txn.execute_raw(self.stmt(sql, [serde_json::Value::from(starts).to_string().into(), now.into()]))
                .await
                .doing("recording limited starts")?;
        }
        for (t, part, day, used, exhausted) in states {
            let sql = match day {
                Some(_) => {
                    "INSERT INTO limit_state (action_type, part, budget_day, budget_used, budget_exhausted_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (action_type, part) DO UPDATE SET \
                     budget_day = excluded.budget_day, budget_used = excluded.budget_used, \
                     budget_exhausted_at = excluded.budget_exhausted_at"
                }
                None => {
                    "INSERT INTO limit_state (action_type, part, budget_day, budget_used, budget_exhausted_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (action_type, part) DO NOTHING"
                }
            };
            txn.execute_raw(self.stmt(sql, [t.into(), part.into(), day.into(), i(used).into(), exhausted.into()]))
                .await
                .doing("recording the budget")?;
        }
        for (t, f) in held_back {
            let col = match f {
                LimitField::MaxRunning => "blocked_running",
                LimitField::Rate => "blocked_rate",
                LimitField::DailyBudget => "blocked_budget",
            };
            txn.execute_raw(self.stmt(
                &format!("UPDATE limit_state SET {col} = {col} + 1 WHERE action_type = $1 AND part = ''"),
                [t.as_str().into()],
            ))
            .await
            .doing("counting held-back work")?;
        }
        // Starts older than their type's window count for nothing any more; they only take
        // room, so one claim in 16 drops them.
        if token % 16 != 0 {
            return Ok(());
        }
        let mut conds = Vec::new();
        let mut values: Vec<Value> = Vec::new();
        for l in refs {
            if let Some(rate) = l.effective.rate {
                values.push(model_earlier(now, rate).into());
                conds.push(format!("(action_type = {} AND started_at <= ${})", lit(&l.action_type)?, values.len()));
            }
        }
        if !conds.is_empty() {
            txn.execute_raw(self.stmt(&format!("DELETE FROM limit_starts WHERE {}", conds.join(" OR ")), values))
                .await
                .doing("dropping old starts")?;
        }
        Ok(())
    }

    /// Gives back the rate and budget of attempts that never started (`unstart`): `ids` are
    /// the rows just returned to `PENDING` under `token`s.
    pub(super) async fn give_back_starts(
        &self,
        txn: &DatabaseTransaction,
        unstarted: &[(i64, i64)],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if unstarted.is_empty() {
            return Ok(());
        }
        let limits: Vec<TypeLimit> = read_limits(self, txn, now).await?;
        let refs: Vec<&TypeLimit> = limits
            .iter()
            .filter(|l| l.enforced() && (l.effective.rate.is_some() || l.effective.daily_budget.is_some()))
            .collect();
        if refs.is_empty() {
            return Ok(());
        }
        let part_sql = part_case(self.backend, &refs)?;
        let ids: Vec<i64> = unstarted.iter().map(|(id, _)| *id).collect();
        let tokens: HashMap<i64, i64> = unstarted.iter().copied().collect();
        let sql = format!(
            "SELECT id, action_type, {part_sql} AS part FROM actions WHERE id IN ({}) AND action_type IN ({})",
            super::actions::ids_in_json(self.backend, "$1"),
            in_list(&refs)?
        );
        let rows = txn
            .query_all_raw(self.stmt(&sql, [serde_json::Value::from(ids).to_string().into()]))
            .await
            .doing("reading unstarted limited work")?;
        let tracked = read_tracked(self, txn, &refs).await?;
        let today = day_of(now);
        let mut back: BTreeMap<(String, String, i64), i64> = BTreeMap::new();
        for r in rows {
            let id: i64 = r.try_get("", "id").doing("reading unstarted limited work")?;
            let t: String = r.try_get("", "action_type").doing("reading unstarted limited work")?;
            let raw: String = r.try_get("", "part").doing("reading unstarted limited work")?;
            let Some(l) = refs.iter().find(|l| l.action_type == t) else { continue };
            let part = counted_part(l, raw, &tracked);
            *back.entry((t, part, tokens.get(&id).copied().unwrap_or(0))).or_default() += 1;
        }
        for ((t, part, token), k) in back {
            txn.execute_raw(self.stmt(
                "UPDATE limit_starts SET n = n - $4 WHERE action_type = $1 AND part = $2 AND token = $3",
                [t.as_str().into(), part.as_str().into(), token.into(), k.into()],
            ))
            .await
            .doing("giving back unstarted starts")?;
            txn.execute_raw(self.stmt(
                "UPDATE limit_state SET budget_used = CASE WHEN budget_used > $4 THEN budget_used - $4 ELSE 0 END, \
                 budget_exhausted_at = NULL WHERE action_type = $1 AND part = $2 AND budget_day = $3",
                [t.as_str().into(), part.as_str().into(), today.as_str().into(), k.into()],
            ))
            .await
            .doing("giving back unstarted budget")?;
        }
        Ok(())
    }
}

fn model_earlier(now: DateTime<Utc>, rate: Rate) -> DateTime<Utc> {
    crate::model::earlier_saturating(now, rate.period)
}

/// The rows of a partitioned type that fall in a full partition: its value among `full`, or,
/// when the overflow partition is full (`overflow_known`: the tracked values), a value that is
/// none of those nor missing. `None` when no partition is full. Lists are bound into `values`.
fn full_partitions<'a>(
    backend: Backend,
    path: &PayloadPath,
    full: Vec<String>,
    overflow_known: Option<impl Iterator<Item = &'a String>>,
    values: &mut Vec<Value>,
) -> Option<String> {
    let expr = part_expr(backend, path);
    let mut conds = Vec::new();
    if !full.is_empty() {
        values.push(serde_json::Value::from(full).to_string().into());
        conds.push(format!("{expr} IN {}", json_elems(backend, values.len())));
    }
    if let Some(known) = overflow_known {
        let mut known: Vec<String> = known.cloned().collect();
        known.push(String::new());
        values.push(serde_json::Value::from(known).to_string().into());
        conds.push(format!("{expr} NOT IN {}", json_elems(backend, values.len())));
    }
    (!conds.is_empty()).then(|| format!("({})", conds.join(" OR ")))
}

/// `(SELECT <elements of the JSON array in $at>)`.
fn json_elems(backend: Backend, at: usize) -> String {
    match backend {
        Backend::Sqlite => format!("(SELECT value FROM json_each(${at}))"),
        Backend::Postgres => format!("(SELECT json_array_elements_text(${at}::json))"),
    }
}

/// The claimer's type filter, bound into `values`.
fn claimer_types(claimer: &Claimer, values: &mut Vec<Value>) -> String {
    if claimer.types.is_empty() {
        return String::new();
    }
    let mut list = Vec::new();
    for t in &claimer.types {
        values.push(t.as_str().into());
        list.push(format!("${}", values.len()));
    }
    format!(" AND action_type IN ({})", list.join(", "))
}

/// Locks the gate row of each type (creating the missing ones), in type order so that two
/// claimers never wait on each other in a cycle.
async fn lock_gates(
    store: &Store,
    txn: &DatabaseTransaction,
    refs: &[&TypeLimit],
) -> Result<(DateTime<Utc>, HashMap<String, Option<String>>), StoreError> {
    // PostgreSQL's clock, read in the same statement (the transaction's time), decides the
    // window and the day, as it does for every claim; SQLite's store clock likewise.
    let (lock, now) = match store.backend {
        Backend::Postgres => (" FOR UPDATE", "now()"),
        Backend::Sqlite => ("", "NULL"),
    };
    let select = format!(
        "SELECT action_type, part_path, {now} AS now FROM limit_state WHERE part = '' AND action_type IN ({}) \
         ORDER BY action_type{lock}",
        in_list(refs)?
    );
    let mut rows = txn.query_all_raw(store.stmt(&select, [])).await.doing("locking limit gates")?;
    if rows.len() != refs.len() {
        for l in refs {
            txn.execute_raw(store.stmt(
                "INSERT INTO limit_state (action_type, part) VALUES ($1, '') ON CONFLICT (action_type, part) DO NOTHING",
                [l.action_type.as_str().into()],
            ))
            .await
            .doing("creating limit gates")?;
        }
        rows = txn.query_all_raw(store.stmt(&select, [])).await.doing("locking limit gates")?;
    }
    let mut keyed_for = HashMap::new();
    for r in &rows {
        let t: String = r.try_get("", "action_type").doing("locking limit gates")?;
        keyed_for.insert(t, r.try_get::<Option<String>>("", "part_path").doing("locking limit gates")?);
    }
    let now = match (store.backend, rows.first()) {
        (Backend::Postgres, Some(r)) => r.try_get::<DateTime<Utc>>("", "now").doing("locking limit gates")?,
        _ => store.now(),
    };
    Ok((now, keyed_for))
}

/// The full partitions of a partitioned type (see `Store::full_parts`).
struct FullParts {
    /// Tracked values (and `''`) with nothing left.
    values: Vec<String>,
    /// When the overflow partition is full and no value can be tracked: the tracked values
    /// (every other value is full).
    overflow_known: Option<Vec<String>>,
}

impl FullParts {
    fn any(&self) -> bool {
        !self.values.is_empty() || self.overflow_known.is_some()
    }
}

/// A place in the claim order: priority (highest first), then `not_before`, then id.
type Rank = super::ClaimRank;

/// A due row a limited claim may pick: its type, raw partition value and claim order.
struct Candidate {
    id: i64,
    action_type: String,
    part: String,
    priority: i64,
    not_before: DateTime<Utc>,
}

impl Candidate {
    fn read(r: &sea_orm::QueryResult) -> Result<Candidate, StoreError> {
        let doing = "picking limited work";
        Ok(Candidate {
            id: r.try_get("", "id").doing(doing)?,
            action_type: r.try_get("", "action_type").doing(doing)?,
            part: r.try_get::<Option<String>>("", "part").doing(doing)?.unwrap_or_default(),
            priority: r.try_get("", "prio").doing(doing)?,
            not_before: r.try_get("", "not_before").doing(doing)?,
        })
    }

    /// Its place in the claim order.
    fn rank(&self) -> Rank {
        super::claim_rank(self.priority, self.not_before, self.id)
    }
}

/// ` AND id NOT IN (...)` for the ids already chosen (integers formatted here, not input).
fn chosen_sql(chosen: &[(i64, String, String)]) -> String {
    if chosen.is_empty() {
        return String::new();
    }
    let ids: Vec<String> = chosen.iter().map(|(id, _, _)| id.to_string()).collect();
    format!(" AND id NOT IN ({})", ids.join(", "))
}

/// The tracked partition values of each partitioned type.
async fn read_tracked<C: ConnectionTrait>(
    store: &Store,
    conn: &C,
    refs: &[&TypeLimit],
) -> Result<HashMap<String, HashSet<String>>, StoreError> {
    let parted: Vec<&TypeLimit> = refs.iter().copied().filter(|l| l.effective.partition_by.is_some()).collect();
    let mut out: HashMap<String, HashSet<String>> = HashMap::new();
    if parted.is_empty() {
        return Ok(out);
    }
    let sql = format!(
        "SELECT action_type, part FROM limit_state WHERE part <> '' AND part <> '{OVERFLOW_PARTITION}' AND action_type IN ({})",
        in_list(&parted)?
    );
    for r in conn.query_all_raw(store.stmt(&sql, [])).await.doing("reading tracked partitions")? {
        let t: String = r.try_get("", "action_type").doing("reading tracked partitions")?;
        let p: String = r.try_get("", "part").doing("reading tracked partitions")?;
        out.entry(t).or_default().insert(p);
    }
    Ok(out)
}

/// Running attempts, window starts and budget rows of the limited types.
async fn read_usage<C: ConnectionTrait>(
    store: &Store,
    conn: &C,
    refs: &[&TypeLimit],
    now: DateTime<Utc>,
) -> Result<Usage, StoreError> {
    let mut usage = Usage { used: HashMap::new(), tracked: HashMap::new(), state: HashMap::new() };
    let by_type: HashMap<&str, &TypeLimit> = refs.iter().map(|l| (l.action_type.as_str(), *l)).collect();
    let types = in_list(refs)?;
    // One statement, four parts (`k`): the state rows that hold something (budgets, counters),
    // per type the other rows' partitions as one JSON array (tracked partitions with nothing
    // else: at the cap, a thousand of them, read at every claim), the running attempts by
    // partition value, and the starts in each rated type's window.
    let held = "(budget_day IS NOT NULL OR budget_used <> 0 OR budget_exhausted_at IS NOT NULL \
                OR blocked_running <> 0 OR blocked_rate <> 0 OR blocked_budget <> 0)";
    let parts = match store.backend {
        Backend::Sqlite => "json_group_array(part)",
        Backend::Postgres => "CAST(json_agg(part) AS TEXT)",
    };
    let mut sql = format!(
        "SELECT 's' AS k, action_type, part, 0 AS n, budget_day, budget_used, budget_exhausted_at, \
           blocked_running, blocked_rate, blocked_budget FROM limit_state WHERE action_type IN ({types}) AND {held} \
         UNION ALL \
         SELECT 'p', action_type, {parts}, 0, NULL, 0, NULL, 0, 0, 0 FROM limit_state \
           WHERE action_type IN ({types}) AND NOT {held} GROUP BY action_type \
         UNION ALL \
         SELECT 'r', action_type, part, COUNT(*), NULL, 0, NULL, 0, 0, 0 FROM (SELECT action_type, {} AS part \
           FROM actions WHERE status = 'RUNNING' AND action_type IN ({types})) r GROUP BY action_type, part",
        part_case(store.backend, refs)?
    );
    let mut conds = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    for l in refs {
        if let Some(rate) = l.effective.rate {
            values.push(model_earlier(now, rate).into());
            conds.push(format!("(action_type = {} AND started_at > ${})", lit(&l.action_type)?, values.len()));
        }
    }
    if !conds.is_empty() {
        sql.push_str(&format!(
            " UNION ALL SELECT 'w', action_type, part, CAST(SUM(n) AS BIGINT), NULL, 0, NULL, 0, 0, 0 \
             FROM limit_starts WHERE {} GROUP BY action_type, part",
            conds.join(" OR ")
        ));
    }
    let doing = "reading what limited types use";
    let mut running: Vec<(String, String, u64)> = Vec::new();
    for r in conn.query_all_raw(store.stmt(&sql, values)).await.doing(doing)? {
        let k: String = r.try_get("", "k").doing(doing)?;
        let t: String = r.try_get("", "action_type").doing(doing)?;
        let p: String = r.try_get("", "part").doing(doing)?;
        let n = u(r.try_get("", "n").doing(doing)?);
        let partitioned = by_type.get(t.as_str()).is_some_and(|l| l.effective.partition_by.is_some());
        match k.as_str() {
            "r" => running.push((t, p, n)),
            "w" => usage.used.entry((t, p)).or_default().window += n,
            "p" => {
                let parts: Vec<String> = serde_json::from_str(&p)
                    .map_err(|e| StoreError::Internal(format!("reading the tracked partitions of {t}: {e}")))?;
                for p in parts {
                    if partitioned && !p.is_empty() && p != OVERFLOW_PARTITION {
                        usage.tracked.entry(t.clone()).or_default().insert(p.clone());
                    }
                    usage.state.insert((t.clone(), p), StateRow::default());
                }
            }
            _ => {
                let row = StateRow {
                    day: r.try_get("", "budget_day").doing(doing)?,
                    used: u(r.try_get("", "budget_used").doing(doing)?),
                    exhausted_at: r.try_get("", "budget_exhausted_at").doing(doing)?,
                    blocked: [
                        u(r.try_get("", "blocked_running").doing(doing)?),
                        u(r.try_get("", "blocked_rate").doing(doing)?),
                        u(r.try_get("", "blocked_budget").doing(doing)?),
                    ],
                };
                if partitioned && !p.is_empty() && p != OVERFLOW_PARTITION {
                    usage.tracked.entry(t.clone()).or_default().insert(p.clone());
                }
                usage.state.insert((t, p), row);
            }
        }
    }
    for (t, p, n) in running {
        let Some(l) = by_type.get(t.as_str()) else { continue };
        let part = counted_part(l, p, &usage.tracked);
        usage.used.entry((t, part)).or_default().running += n;
    }
    Ok(usage)
}

/// The partition an already claimed row of type `limit` counts under: `''` for an unpartitioned
/// type, its value when tracked (or missing), else the overflow partition (where it was counted
/// when claimed, the tracked values never shrinking).
fn counted_part(limit: &TypeLimit, raw: String, tracked: &HashMap<String, HashSet<String>>) -> String {
    if limit.effective.partition_by.is_none() {
        String::new()
    } else if raw.is_empty() || tracked.get(&limit.action_type).is_some_and(|s| s.contains(&raw)) {
        raw
    } else {
        OVERFLOW_PARTITION.to_string()
    }
}

/// Every `limits` row with its overrides in force at `now`. A row that cannot be read holds
/// its type (`max_running` 0) and says why, rather than stopping every claim.
pub(super) async fn read_limits<C: ConnectionTrait>(
    store: &Store,
    conn: &C,
    now: DateTime<Utc>,
) -> Result<Vec<TypeLimit>, StoreError> {
    // PostgreSQL's clock decides when an override ends, as it does for every claim.
    let (now_sql, values): (&str, Vec<Value>) = match store.backend {
        Backend::Postgres => ("now()", vec![]),
        Backend::Sqlite => ("$1", vec![now.into()]),
    };
    let sql = format!(
        "SELECT l.action_type, l.max_running, l.rate_count, l.rate_seconds, l.daily_budget, l.partition_by, \
         l.source, l.updated_at, o.field, o.value, o.period_seconds, o.expires_at, o.reason, o.set_by, o.set_at \
         FROM limits l LEFT JOIN limit_overrides o ON o.action_type = l.action_type AND o.expires_at > {now_sql} \
         ORDER BY l.action_type, o.field"
    );
    let rows = conn.query_all_raw(store.stmt(&sql, values)).await.doing("reading limits")?;
    let mut out: Vec<TypeLimit> = Vec::new();
    for r in rows {
        let t: String = r.try_get("", "action_type").doing("reading limits")?;
        if out.last().is_none_or(|l| l.action_type != t) {
            let mut errors = Vec::new();
            let base = base_spec(&r, &mut errors).doing("reading limits")?;
            let source: String = r.try_get("", "source").doing("reading limits")?;
            let updated_at: DateTime<Utc> = r.try_get("", "updated_at").doing("reading limits")?;
            if let Err(e) = crate::model::validate_type(&t) {
                errors.push(e);
            }
            out.push(TypeLimit {
                action_type: t.clone(),
                effective: base.clone(),
                base,
                source: LimitSource::parse(&source),
                updated_at,
                overrides: Vec::new(),
                error: if errors.is_empty() { None } else { Some(errors.join("; ")) },
            });
        }
        let Some(last) = out.last_mut() else { continue };
        let field: Option<String> = r.try_get("", "field").doing("reading limits")?;
        let Some(field) = field else { continue };
        let value: i64 = r.try_get("", "value").doing("reading limits")?;
        let period: Option<i64> = r.try_get("", "period_seconds").doing("reading limits")?;
        let read = || -> Result<(LimitField, LimitValue), String> {
            let field: LimitField = field.parse()?;
            let count = u64::try_from(value).map_err(|_| format!("override {field} is negative ({value})"))?;
            let value = match (field, period) {
                (LimitField::Rate, Some(p)) if p > 0 => {
                    LimitValue::Rate(Rate { count, period: std::time::Duration::from_secs(u(p)) })
                }
                (LimitField::Rate, _) => return Err("rate override has no period".into()),
                _ => LimitValue::Count(count),
            };
            Ok((field, value))
        };
        match read() {
            Ok((field, value)) => {
                match value {
                    LimitValue::Count(n) if field == LimitField::MaxRunning => last.effective.max_running = Some(n),
                    LimitValue::Count(n) => last.effective.daily_budget = Some(n),
                    LimitValue::Rate(r) => last.effective.rate = Some(r),
                }
                last.overrides.push(LimitOverride {
                    field,
                    value,
                    expires_at: r.try_get("", "expires_at").doing("reading limits")?,
                    reason: r.try_get("", "reason").doing("reading limits")?,
                    set_by: r.try_get("", "set_by").doing("reading limits")?,
                    set_at: r.try_get("", "set_at").doing("reading limits")?,
                });
            }
            Err(e) => {
                let msg = last.error.take().map_or(e.clone(), |old| format!("{old}; {e}"));
                last.error = Some(msg);
            }
        }
    }
    for l in &mut out {
        if l.error.is_some() {
            // What cannot be read holds the type: a limit must never lapse by corruption.
            l.effective = LimitSpec { max_running: Some(0), ..LimitSpec::default() };
        }
    }
    Ok(out)
}

/// The base limits of a `limits` row; what does not read is named in `errors`.
fn base_spec(r: &sea_orm::QueryResult, errors: &mut Vec<String>) -> Result<LimitSpec, sea_orm::DbErr> {
    let count = |name: &str, v: Option<i64>, errors: &mut Vec<String>| -> Option<u64> {
        v.and_then(|v| match u64::try_from(v) {
            Ok(n) if n <= crate::limits::MAX_LIMIT => Some(n),
            _ => {
                errors.push(format!("{name} {v} is out of range"));
                None
            }
        })
    };
    let max_running = count("max_running", r.try_get("", "max_running")?, errors);
    let daily_budget = count("daily_budget", r.try_get("", "daily_budget")?, errors);
    let rate_count = count("rate", r.try_get("", "rate_count")?, errors);
    let rate_seconds: Option<i64> = r.try_get("", "rate_seconds")?;
    let rate = match (rate_count, rate_seconds) {
        (Some(c), Some(s)) if s > 0 && c > 0 => Some(Rate { count: c, period: std::time::Duration::from_secs(u(s)) }),
        (None, None) => None,
        _ => {
            errors.push("rate has no valid count and period".into());
            None
        }
    };
    let partition: Option<String> = r.try_get("", "partition_by")?;
    let partition_by = match partition.map(|p| p.parse::<PayloadPath>()) {
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => {
            errors.push(e);
            None
        }
        None => None,
    };
    Ok(LimitSpec { max_running, rate, daily_budget, partition_by })
}

/// Locks type `t`'s `limits` row for a read-modify-write and returns its base and source, or
/// `None` when it had none: then a row (source `source`, no limit) is created here, which no
/// other transaction sees, and every other writer of the type waits for, until this one ends.
/// On PostgreSQL the row lock (`FOR UPDATE`, or the insert's) makes concurrent writers of one
/// type take turns; on SQLite the write transaction already does.
async fn lock_limit(
    store: &Store,
    txn: &DatabaseTransaction,
    t: &str,
    source: LimitSource,
    now: DateTime<Utc>,
) -> Result<Option<(LimitSpec, LimitSource)>, StoreError> {
    let doing = "locking a limit";
    let lock = if store.backend == Backend::Postgres { " FOR UPDATE" } else { "" };
    let select = format!(
        "SELECT max_running, rate_count, rate_seconds, daily_budget, partition_by, source FROM limits \
         WHERE action_type = $1{lock}"
    );
    // A row deleted between the two statements (a `limits clear` at that moment) is created
    // again by the next insert.
    for _ in 0..3 {
        let created = txn
            .execute_raw(store.stmt(
                "INSERT INTO limits (action_type, source, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (action_type) DO NOTHING",
                [t.into(), source.as_str().into(), now.into()],
            ))
            .await
            .doing(doing)?
            .rows_affected();
        if created > 0 {
            return Ok(None);
        }
        let Some(row) = txn.query_one_raw(store.stmt(&select, [t.into()])).await.doing(doing)? else { continue };
        // A field that does not read is no base to keep: the write replaces it.
        let base = base_spec(&row, &mut Vec::new()).doing(doing)?;
        let held: String = row.try_get("", "source").doing(doing)?;
        return Ok(Some((base, LimitSource::parse(&held))));
    }
    Err(StoreError::Internal(format!("the limits row of {t} vanished three times while it was being locked")))
}

/// Ends an edit that writes nothing: the row `lock_limit` may have created goes with it.
async fn refuse(txn: DatabaseTransaction, why: EditRefusal) -> Result<Result<LimitSpec, EditRefusal>, StoreError> {
    txn.rollback().await.doing("ending a refused limit edit")?;
    Ok(Err(why))
}

async fn upsert_limit(
    store: &Store,
    txn: &DatabaseTransaction,
    t: &str,
    spec: &LimitSpec,
    source: LimitSource,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    crate::model::validate_type(t).map_err(StoreError::Invalid)?;
    // A partition field that changes starts its partitions afresh.
    txn.execute_raw(store.stmt(
        "DELETE FROM limit_state WHERE action_type = $1 AND part <> '' AND EXISTS \
         (SELECT 1 FROM limits WHERE action_type = $1 AND COALESCE(partition_by, '') <> $2)",
        [t.into(), spec.partition_by.as_ref().map(|p| p.to_string()).unwrap_or_default().into()],
    ))
    .await
    .doing("resetting partitions")?;
    txn.execute_raw(store.stmt(
        "INSERT INTO limits (action_type, max_running, rate_count, rate_seconds, daily_budget, partition_by, source, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (action_type) DO UPDATE SET \
         max_running = excluded.max_running, rate_count = excluded.rate_count, rate_seconds = excluded.rate_seconds, \
         daily_budget = excluded.daily_budget, partition_by = excluded.partition_by, source = excluded.source, \
         updated_at = excluded.updated_at",
        [
            t.into(),
            spec.max_running.map(i).into(),
            spec.rate.map(|r| i(r.count)).into(),
            spec.rate.map(|r| i(r.period.as_secs())).into(),
            spec.daily_budget.map(i).into(),
            spec.partition_by.as_ref().map(|p| p.to_string()).into(),
            source.as_str().into(),
            now.into(),
        ],
    ))
    .await
    .doing("writing a limit")?;
    txn.execute_raw(store.stmt(
        "INSERT INTO limit_state (action_type, part) VALUES ($1, '') ON CONFLICT (action_type, part) DO NOTHING",
        [t.into()],
    ))
    .await
    .doing("writing a limit")?;
    Ok(())
}

async fn delete_limit(store: &Store, txn: &DatabaseTransaction, t: &str) -> Result<u64, StoreError> {
    let n = txn
        .execute_raw(store.stmt("DELETE FROM limits WHERE action_type = $1", [t.into()]))
        .await
        .doing("clearing a limit")?
        .rows_affected();
    for table in ["limit_overrides", "limit_state", "limit_starts"] {
        txn.execute_raw(store.stmt(&format!("DELETE FROM {table} WHERE action_type = $1"), [t.into()]))
            .await
            .doing("clearing a limit")?;
    }
    Ok(n)
}
