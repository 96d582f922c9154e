//! The tables of limits: a type's base (`limits`: a config's, an operator's) and its temporary
//! overrides (`limit_overrides`), read with the overrides in force, and every write of them.
//! Every write of a type's base is one read-modify-write under that row's lock
//! ([`lock_limit`]); an override is one row of its own, under its type's row.
//!
//! It must not read or write what limits count (`limit_state`'s usage, `limit_starts`) beyond
//! creating and removing a type's rows with it: that is `usage` and the claim's.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction, Value};

use super::super::{Backend, Context, Fence, Store, StoreError};
use super::{ConfigLimits, ConfigLimitsWritten, EditRefusal, LimitDisagreement, LimitEdit, i, u};
use crate::limits::{
    AllowedHours, LimitField, LimitOverride, LimitSource, LimitSpec, LimitValue, PayloadPath, Rate, TypeLimit,
};

impl Store {
    /// The types whose limits are in force (something limited), for a claim.
    pub(in crate::store) async fn limits_in_force(&self) -> Result<Vec<TypeLimit>, StoreError> {
        Ok(read_limits(self, &self.db, self.now()).await?.into_iter().filter(TypeLimit::enforced).collect())
    }

    /// `store.limits().write_config_limits` in `txn`, which the caller commits (or, for a dry run,
    /// rolls back).
    pub(in crate::store) async fn write_config_limits_in(
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
}

impl crate::store::handles::Limits<'_> {
    /// Every type with a row in `limits`, with its overrides in force.
    pub async fn list(self) -> Result<Vec<TypeLimit>, StoreError> {
        read_limits(self.store, &self.store.db, self.store.now()).await
    }

    /// Writes a config's `limits:` section, `how` says on what terms (see [`ConfigLimits`]), in
    /// one transaction, each type's row under its lock. Types set by operators and not named
    /// stay; overrides always stay.
    pub async fn write_config_limits(
        self,
        limits: &BTreeMap<String, LimitSpec>,
        how: ConfigLimits,
    ) -> Result<ConfigLimitsWritten, StoreError> {
        let txn = self.store.begin_write().await?;
        let out = self.store.write_config_limits_in(&txn, limits, how).await?;
        txn.commit().await.doing("committing configured limits")?;
        Ok(out)
    }

    /// Replaces a type's base limits (source `operator`); overrides stay. `edit_limit` with
    /// [`LimitEdit::Replace`], for callers that hold a whole spec.
    pub async fn set_limit(self, action_type: &str, spec: &LimitSpec) -> Result<(), StoreError> {
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
        self,
        action_type: &str,
        edit: &LimitEdit,
    ) -> Result<Result<LimitSpec, EditRefusal>, StoreError> {
        crate::model::validate_type(action_type).map_err(StoreError::Invalid)?;
        let txn = self.store.begin_write().await?;
        let now = self.store.now();
        let held = lock_limit(self.store, &txn, action_type, LimitSource::Operator, now).await?.map(|(base, _)| base);
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
        upsert_limit(self.store, &txn, action_type, &next, LimitSource::Operator, now).await?;
        txn.commit().await.doing("committing a limit")?;
        Ok(Ok(next))
    }

    /// Removes a type's limits and overrides. Returns false when it had none.
    pub async fn clear_limit(self, action_type: &str) -> Result<bool, StoreError> {
        let txn = self.store.begin_write().await?;
        let n = delete_limit(self.store, &txn, action_type).await?;
        txn.commit().await.doing("committing a cleared limit")?;
        Ok(n > 0)
    }

    /// Sets a temporary value of one field of a type's limits until `until` (a rule's
    /// `set_limit` under the lease's fence, or an operator's). The type needs no base limit.
    #[allow(clippy::too_many_arguments)]
    pub async fn set_limit_override(
        self,
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
        let now = self.store.now();
        let txn = self.store.begin_write().await?;
        if let Some(fence) = fence {
            let held = txn
                .query_one_raw(self.store.stmt(
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
                return Err(crate::store::Refusal::Fenced(fence.epoch).into());
            }
        }
        // A no-op update rather than DO NOTHING: it locks the row (on PostgreSQL), so that
        // `clear_limit_override` or `clear_limit` cannot delete it under the override written next.
        txn.execute_raw(self.store.stmt(
            "INSERT INTO limits (action_type, source, updated_at) VALUES ($1, 'override', $2) \
             ON CONFLICT (action_type) DO UPDATE SET source = limits.source",
            [action_type.into(), now.into()],
        ))
        .await
        .doing("writing a limit override")?;
        txn.execute_raw(self.store.stmt(
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
                crate::store::actions::db_text(reason).into_owned().into(),
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
    pub async fn clear_limit_override(self, action_type: &str, field: LimitField) -> Result<bool, StoreError> {
        crate::model::validate_type(action_type).map_err(StoreError::Invalid)?;
        let txn = self.store.begin_write().await?;
        if self.store.backend == Backend::Postgres {
            txn.query_one_raw(
                self.store.stmt("SELECT 1 FROM limits WHERE action_type = $1 FOR UPDATE", [action_type.into()]),
            )
            .await
            .doing("locking a limit")?;
        }
        // The database's clock decides what is in force, as `read_limits` does: `now()` on
        // PostgreSQL, the store's clock (parameter `$n`) on SQLite.
        let (now_at, now): (fn(usize) -> String, Option<Value>) = match self.store.backend {
            Backend::Postgres => (|_| "now()".to_string(), None),
            Backend::Sqlite => (|n| format!("${n}"), Some(self.store.now().into())),
        };
        let mut values: Vec<Value> = vec![action_type.into(), field.as_str().into()];
        values.extend(now.clone());
        let ended = txn
            .execute_raw(self.store.stmt(
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
        txn.execute_raw(self.store.stmt(
            "DELETE FROM limit_overrides WHERE action_type = $1 AND field = $2",
            [action_type.into(), field.as_str().into()],
        ))
        .await
        .doing("ending a limit override")?;
        let mut values: Vec<Value> = vec![action_type.into()];
        values.extend(now);
        let empty = txn
            .query_one_raw(self.store.stmt(
                &format!(
                    "SELECT COUNT(*) AS n FROM limits l WHERE l.action_type = $1 AND l.source = 'override' \
                     AND l.max_running IS NULL AND l.rate_count IS NULL AND l.rate_seconds IS NULL \
                     AND l.daily_budget IS NULL AND l.partition_by IS NULL AND l.allowed_hours IS NULL AND NOT EXISTS \
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
            delete_limit(self.store, &txn, action_type).await?;
        }
        txn.commit().await.doing("committing an ended limit override")?;
        Ok(ended > 0)
    }
}

/// Every `limits` row with its overrides in force at `now`. A row that cannot be read holds
/// its type (`max_running` 0) and says why, rather than stopping every claim.
pub(in crate::store) async fn read_limits<C: ConnectionTrait>(
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
         l.allowed_hours, l.source, l.updated_at, o.field, o.value, o.period_seconds, o.expires_at, o.reason, o.set_by, o.set_at \
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
    // A text field that does not parse is named in `errors` and read as unset.
    fn parsed<T: std::str::FromStr<Err = String>>(text: Option<String>, errors: &mut Vec<String>) -> Option<T> {
        text.and_then(|t| t.parse().map_err(|e| errors.push(e)).ok())
    }
    let partition_by: Option<PayloadPath> = parsed(r.try_get("", "partition_by")?, errors);
    let allowed_hours: Option<AllowedHours> = parsed(r.try_get("", "allowed_hours")?, errors);
    Ok(LimitSpec { max_running, rate, daily_budget, partition_by, allowed_hours })
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
        "SELECT max_running, rate_count, rate_seconds, daily_budget, partition_by, allowed_hours, source FROM limits \
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
        "INSERT INTO limits (action_type, max_running, rate_count, rate_seconds, daily_budget, partition_by, \
         allowed_hours, source, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (action_type) DO UPDATE SET \
         max_running = excluded.max_running, rate_count = excluded.rate_count, rate_seconds = excluded.rate_seconds, \
         daily_budget = excluded.daily_budget, partition_by = excluded.partition_by, \
         allowed_hours = excluded.allowed_hours, source = excluded.source, updated_at = excluded.updated_at",
        [
            t.into(),
            spec.max_running.map(i).into(),
            spec.rate.map(|r| i(r.count)).into(),
            spec.rate.map(|r| i(r.period.as_secs())).into(),
            spec.daily_budget.map(i).into(),
            spec.partition_by.as_ref().map(|p| p.to_string()).into(),
            spec.allowed_hours.map(|h| h.to_string()).into(),
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
