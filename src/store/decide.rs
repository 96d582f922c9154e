//! Queries of the DECIDE stage: the snapshot's aggregate counts and samples, rule state and
//! cooldowns, the `decisions` table, the ledger's snapshot and digest, and the fenced flag
//! write of `pause`/`resume`. Decisions that move actions go through the state machine (`actions/`).
//!
//! Every write here is fenced: it lands only while the lease still carries the caller's epoch
//! (`EXISTS (SELECT 1 FROM leases WHERE name = .. AND epoch = ..)`), so a deposed instance's
//! decisions change nothing. The snapshot's reads touch
//! only open rows (partial indexes) and rows finished inside a time window, never all history.
//! Which decision to take is not decided here.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, EntityTrait, Value};

use super::entities::{self, actions};
use super::{Context, OPEN_SQL, Store, StoreError};
use crate::model::{Action, ActionStatus, DecisionKind, DecisionOutcome, TickStatus};

/// Who is writing: the lease and the epoch every write is fenced by.
#[derive(Clone, Debug)]
pub struct Fence {
    pub lease_name: String,
    pub epoch: i64,
    pub tick_id: Option<i64>,
}

/// Counts of one action type in one status, over the last hour and the last 15 minutes
/// (finished rows by `finished_at`, `RETRY` rows by their last update).
#[derive(Clone, Debug)]
pub struct WindowCount {
    pub action_type: String,
    pub status: ActionStatus,
    pub n_1h: i64,
    pub n_15m: i64,
}

/// The ledger's recent history, for the snapshot.
#[derive(Clone, Debug, Default)]
pub struct LedgerStats {
    pub last_tick_status: Option<TickStatus>,
    pub consecutive_failed_ticks: i64,
    pub failed_ticks_1h: i64,
    /// `PARTIAL` ticks (some attempt failed) since the same time.
    pub partial_ticks_1h: i64,
}

/// One row of the `decisions` table. `kind` and `outcome` are stored as their text and read
/// back as the enums they were written from; their JSON is that same text.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct DecisionRow {
    pub tick_id: i64,
    pub rule: String,
    pub kind: DecisionKind,
    pub target: String,
    pub priority: i32,
    pub reason: String,
    pub outcome: DecisionOutcome,
    pub created_at: DateTime<Utc>,
}

/// The decide-stage record of one tick, from the ledger.
#[derive(Clone, Debug)]
pub struct TickDecide {
    pub tick_id: i64,
    pub snapshot_json: Option<String>,
    pub rules_digest: Option<String>,
}

/// What one tick's decide stage leaves behind, written in one transaction.
#[derive(Clone, Debug, Default)]
pub struct DecideRecord {
    pub decisions: Vec<DecisionRow>,
    /// (rule, kind, target) applied in this tick: their cooldown starts now.
    pub cooldowns: Vec<(String, String, String)>,
    /// Each rule's state after the tick (JSON text).
    pub states: BTreeMap<String, String>,
}

/// The columns [`decision_row`] reads.
const DECISION_COLUMNS: &str = "id, tick_id, rule, kind, target, priority, reason, outcome, created_at";

fn decision_row(r: &sea_orm::QueryResult) -> Result<DecisionRow, StoreError> {
    let id: i64 = r.try_get("", "id").doing("reading decisions")?;
    let kind: String = r.try_get("", "kind").doing("reading decisions")?;
    let outcome: String = r.try_get("", "outcome").doing("reading decisions")?;
    Ok(DecisionRow {
        tick_id: r.try_get("", "tick_id").doing("reading decisions")?,
        rule: r.try_get("", "rule").doing("reading decisions")?,
        kind: stored(id, "kind", &kind)?,
        target: r.try_get("", "target").doing("reading decisions")?,
        priority: r.try_get("", "priority").doing("reading decisions")?,
        reason: r.try_get("", "reason").doing("reading decisions")?,
        outcome: stored(id, "outcome", &outcome)?,
        created_at: r.try_get("", "created_at").doing("reading decisions")?,
    })
}

/// A column of decision `id` read back as the enum it was written from. Text that is not one
/// (a hand edit, a newer version's kind) is an error naming the row, the column and the value.
fn stored<T: std::str::FromStr<Err = String>>(id: i64, column: &str, text: &str) -> Result<T, StoreError> {
    text.parse().map_err(|e| StoreError::Corrupt { table: "decisions", id, reason: format!("{column} {text:?}: {e}") })
}

fn fence_sql(name: usize, epoch: usize) -> String {
    format!("EXISTS (SELECT 1 FROM leases WHERE name = ${name} AND epoch = ${epoch})")
}

impl Store {
    /// `UPDATE control_flags SET <set>` under `fence`; `values` bind `$1..`, the fence follows.
    async fn set_flags_fenced(
        &self,
        fence: &Fence,
        set: &str,
        mut values: Vec<Value>,
        doing: &'static str,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "UPDATE control_flags SET {set} WHERE id = 1 AND {}",
            fence_sql(values.len() + 1, values.len() + 2)
        );
        values.extend([fence.lease_name.as_str().into(), fence.epoch.into()]);
        let n = self.db.execute_raw(self.stmt(&sql, values)).await.doing(doing)?.rows_affected();
        if n == 1 {
            Ok(())
        } else if !self.lease().fence_holds(fence).await? {
            Err(super::Refusal::Fenced(fence.epoch).into())
        } else {
            Err(StoreError::Internal("the control_flags row is missing".into()))
        }
    }
}

impl crate::store::handles::Actions<'_> {
    /// Open actions counted by type and status (partial index; no finished history).
    pub async fn open_counts_by_type(self) -> Result<Vec<(String, ActionStatus, i64)>, StoreError> {
        let sql = format!(
            "SELECT action_type, status, COUNT(*) AS n FROM actions WHERE {OPEN_SQL} GROUP BY action_type, status"
        );
        let rows =
            self.store.db.query_all_raw(self.store.stmt(&sql, [])).await.doing("counting open actions by type")?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let t: String = r.try_get("", "action_type").doing("counting open actions by type")?;
            let s: String = r.try_get("", "status").doing("counting open actions by type")?;
            let n: i64 = r.try_get("", "n").doing("counting open actions by type")?;
            if let Ok(s) = s.parse() {
                out.push((t, s, n));
            }
        }
        Ok(out)
    }

    /// Windowed counts of finished and retried actions since `since_1h` (and since `since_15m`).
    pub async fn windowed_counts(
        self,
        since_1h: DateTime<Utc>,
        since_15m: DateTime<Utc>,
    ) -> Result<Vec<WindowCount>, StoreError> {
        let sql = "SELECT action_type, status, COUNT(*) AS n, \
                   CAST(SUM(CASE WHEN COALESCE(finished_at, updated_at) >= $2 THEN 1 ELSE 0 END) AS BIGINT) AS n15 \
                   FROM actions \
                   WHERE (status IN ('SUCCESS', 'DLQ', 'CANCELLED') AND finished_at >= $1) \
                      OR (status = 'RETRY' AND updated_at >= $1) \
                   GROUP BY action_type, status";
        let rows = self
            .store
            .db
            .query_all_raw(self.store.stmt(sql, [since_1h.into(), since_15m.into()]))
            .await
            .doing("counting recent outcomes")?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let action_type: String = r.try_get("", "action_type").doing("counting recent outcomes")?;
            let s: String = r.try_get("", "status").doing("counting recent outcomes")?;
            let n_1h: i64 = r.try_get("", "n").doing("counting recent outcomes")?;
            let n_15m: Option<i64> = r.try_get("", "n15").doing("counting recent outcomes")?;
            if let Ok(status) = s.parse() {
                out.push(WindowCount { action_type, status, n_1h, n_15m: n_15m.unwrap_or(0) });
            }
        }
        Ok(out)
    }

    /// Up to `limit` of the oldest actions in an open `status` (by `claimed_at` for `RUNNING`,
    /// else by `created_at`).
    pub async fn oldest_in(self, status: ActionStatus, limit: u64) -> Result<Vec<Action>, StoreError> {
        let order = if status == ActionStatus::Running { "claimed_at" } else { "created_at" };
        let sql = format!("SELECT * FROM actions WHERE {OPEN_SQL} AND status = $1 ORDER BY {order}, id LIMIT $2");
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = actions::Entity::find()
            .from_raw_sql(self.store.stmt(&sql, [status.as_str().into(), limit.into()]))
            .all(&self.store.db)
            .await
            .doing("sampling the oldest actions")?;
        entities::convert_all(rows)
    }
}

impl crate::store::handles::Ledger<'_> {
    /// The ledger's last tick status, how many of the latest ticks in a row failed (looking
    /// back at most `lookback`), and the failed ticks since `since`. `exclude` is the tick
    /// being run (its row is still open).
    pub async fn ledger_stats(
        self,
        exclude: Option<i64>,
        since: DateTime<Utc>,
        lookback: u64,
    ) -> Result<LedgerStats, StoreError> {
        let exclude = exclude.unwrap_or(-1);
        let lookback = i64::try_from(lookback).unwrap_or(i64::MAX);
        let rows = self
            .store
            .db
            .query_all_raw(self.store.stmt(
                "SELECT status FROM tick_ledger WHERE id <> $1 ORDER BY id DESC LIMIT $2",
                [exclude.into(), lookback.into()],
            ))
            .await
            .doing("reading recent ticks")?;
        let mut stats = LedgerStats::default();
        let mut streak = true;
        for (i, r) in rows.iter().enumerate() {
            let s: String = r.try_get("", "status").doing("reading recent ticks")?;
            let status: Option<TickStatus> = s.parse().ok();
            if i == 0 {
                stats.last_tick_status = status;
            }
            if streak && status == Some(TickStatus::Fail) {
                stats.consecutive_failed_ticks += 1;
            } else {
                streak = false;
            }
        }
        let row = self
            .store
            .db
            .query_one_raw(self.store.stmt(
                "SELECT CAST(COALESCE(SUM(CASE WHEN status = 'FAIL' THEN 1 ELSE 0 END), 0) AS BIGINT) AS n, \
                 CAST(COALESCE(SUM(CASE WHEN status = 'PARTIAL' THEN 1 ELSE 0 END), 0) AS BIGINT) AS p \
                 FROM tick_ledger WHERE status IN ('FAIL', 'PARTIAL') AND started_at >= $1 AND id <> $2",
                [since.into(), exclude.into()],
            ))
            .await
            .doing("counting failed ticks")?;
        if let Some(r) = row {
            stats.failed_ticks_1h = r.try_get("", "n").doing("counting failed ticks")?;
            stats.partial_ticks_1h = r.try_get("", "p").doing("counting failed ticks")?;
        }
        Ok(stats)
    }

    /// The snapshot and rules digest a tick recorded (None if the tick does not exist).
    pub async fn tick_decide(self, tick_id: i64) -> Result<Option<TickDecide>, StoreError> {
        let row = self
            .store
            .db
            .query_one_raw(
                self.store
                    .stmt("SELECT id, snapshot_json, rules_digest FROM tick_ledger WHERE id = $1", [tick_id.into()]),
            )
            .await
            .doing("reading a tick's snapshot")?;
        row.map(|r| {
            Ok(TickDecide {
                tick_id: r.try_get("", "id").doing("reading a tick's snapshot")?,
                snapshot_json: r.try_get("", "snapshot_json").doing("reading a tick's snapshot")?,
                rules_digest: r.try_get("", "rules_digest").doing("reading a tick's snapshot")?,
            })
        })
        .transpose()
    }

    /// The last `limit` ticks that recorded a snapshot, newest first.
    pub async fn recorded_ticks(self, limit: u64) -> Result<Vec<TickDecide>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .store
            .db
            .query_all_raw(self.store.stmt(
                "SELECT id, snapshot_json, rules_digest FROM tick_ledger WHERE snapshot_json IS NOT NULL \
                 ORDER BY id DESC LIMIT $1",
                [limit.into()],
            ))
            .await
            .doing("reading recorded ticks")?;
        rows.iter()
            .map(|r| {
                Ok(TickDecide {
                    tick_id: r.try_get("", "id").doing("reading recorded ticks")?,
                    snapshot_json: r.try_get("", "snapshot_json").doing("reading recorded ticks")?,
                    rules_digest: r.try_get("", "rules_digest").doing("reading recorded ticks")?,
                })
            })
            .collect()
    }
}

impl crate::store::handles::Decisions<'_> {
    /// Every rule's persisted state (JSON text), by rule name.
    pub async fn rule_states(self) -> Result<BTreeMap<String, String>, StoreError> {
        let rows = self
            .store
            .db
            .query_all_raw(self.store.stmt("SELECT rule, state_json FROM rule_state", []))
            .await
            .doing("reading rule state")?;
        let mut out = BTreeMap::new();
        for r in rows {
            let rule: String = r.try_get("", "rule").doing("reading rule state")?;
            let state: String = r.try_get("", "state_json").doing("reading rule state")?;
            out.insert(rule, state);
        }
        Ok(out)
    }

    /// Cooldowns that started at or after `since`: (rule, kind, target) -> when.
    pub async fn cooldowns_since(
        self,
        since: DateTime<Utc>,
    ) -> Result<BTreeMap<(String, String, String), DateTime<Utc>>, StoreError> {
        let rows = self
            .store
            .db
            .query_all_raw(self.store.stmt(
                "SELECT rule, kind, target, applied_at FROM rule_cooldowns WHERE applied_at >= $1",
                [since.into()],
            ))
            .await
            .doing("reading rule cooldowns")?;
        let mut out = BTreeMap::new();
        for r in rows {
            let key = (
                r.try_get("", "rule").doing("reading rule cooldowns")?,
                r.try_get("", "kind").doing("reading rule cooldowns")?,
                r.try_get("", "target").doing("reading rule cooldowns")?,
            );
            out.insert(key, r.try_get("", "applied_at").doing("reading rule cooldowns")?);
        }
        Ok(out)
    }

    /// Deletes cooldowns that started before `before` (expired), so the table stays small.
    pub async fn prune_cooldowns(self, fence: &Fence, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let sql = format!("DELETE FROM rule_cooldowns WHERE applied_at < $1 AND {}", fence_sql(2, 3));
        let res = self
            .store
            .db
            .execute_raw(self.store.stmt(&sql, [before.into(), fence.lease_name.as_str().into(), fence.epoch.into()]))
            .await
            .doing("pruning expired cooldowns")?;
        Ok(res.rows_affected())
    }

    /// Writes a tick's decisions, cooldowns and rule states in one transaction (the snapshot and
    /// rules digest go with the ledger row's close).
    /// Cooldowns and states are fenced by the lease epoch; a deposed writer leaves them as they
    /// were (the decisions and the ledger row, being the record of what happened, are kept).
    pub async fn record_decide(self, fence: &Fence, rec: &DecideRecord) -> Result<(), StoreError> {
        if rec.decisions.is_empty() && rec.cooldowns.is_empty() && rec.states.is_empty() {
            // Nothing to write: an idle tick costs no transaction (and no fsync) here.
            return Ok(());
        }
        let now = self.store.now();
        let txn = self.store.begin_write().await?;
        for d in &rec.decisions {
            txn.execute_raw(self.store.stmt(
                "INSERT INTO decisions (tick_id, rule, kind, target, priority, reason, outcome, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                [
                    d.tick_id.into(),
                    d.rule.as_str().into(),
                    d.kind.as_str().into(),
                    d.target.as_str().into(),
                    d.priority.into(),
                    d.reason.as_str().into(),
                    d.outcome.to_string().into(),
                    d.created_at.into(),
                ],
            ))
            .await
            .doing("recording decisions")?;
        }
        for (rule, kind, target) in &rec.cooldowns {
            let sql = format!(
                "INSERT INTO rule_cooldowns (rule, kind, target, applied_at) SELECT $1, $2, $3, $4 WHERE {} \
                 ON CONFLICT (rule, kind, target) DO UPDATE SET applied_at = excluded.applied_at",
                fence_sql(5, 6)
            );
            let values: [Value; 6] = [
                rule.as_str().into(),
                kind.as_str().into(),
                target.as_str().into(),
                now.into(),
                fence.lease_name.as_str().into(),
                fence.epoch.into(),
            ];
            txn.execute_raw(self.store.stmt(&sql, values)).await.doing("recording a cooldown")?;
        }
        for (rule, state) in &rec.states {
            let sql = format!(
                "INSERT INTO rule_state (rule, state_json, updated_at) SELECT $1, $2, $3 WHERE {} \
                 ON CONFLICT (rule) DO UPDATE SET state_json = excluded.state_json, updated_at = excluded.updated_at",
                fence_sql(4, 5)
            );
            let values: [Value; 5] = [
                rule.as_str().into(),
                state.as_str().into(),
                now.into(),
                fence.lease_name.as_str().into(),
                fence.epoch.into(),
            ];
            txn.execute_raw(self.store.stmt(&sql, values)).await.doing("saving rule state")?;
        }
        txn.commit().await.doing("committing the tick's decisions")
    }

    /// The decisions recorded for a tick, in the order they were written.
    pub async fn list(self, tick_id: i64) -> Result<Vec<DecisionRow>, StoreError> {
        let rows = self
            .store
            .db
            .query_all_raw(self.store.stmt(
                &format!("SELECT {DECISION_COLUMNS} FROM decisions WHERE tick_id = $1 ORDER BY id"),
                [tick_id.into()],
            ))
            .await
            .doing("reading decisions")?;
        rows.iter().map(decision_row).collect()
    }

    /// The last `limit` decisions of any tick, newest first (by primary key: no scan).
    pub async fn recent_decisions(self, limit: u64) -> Result<Vec<DecisionRow>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows =
            self.store
                .db
                .query_all_raw(self.store.stmt(
                    &format!("SELECT {DECISION_COLUMNS} FROM decisions ORDER BY id DESC LIMIT $1"),
                    [limit.into()],
                ))
                .await
                .doing("reading recent decisions")?;
        rows.iter().map(decision_row).collect()
    }
}

impl crate::store::handles::Lease<'_> {
    /// True while the lease still carries the fence's epoch.
    pub async fn fence_holds(self, fence: &Fence) -> Result<bool, StoreError> {
        let row = self
            .store
            .db
            .query_one_raw(self.store.stmt(
                "SELECT COUNT(*) AS n FROM leases WHERE name = $1 AND epoch = $2",
                [fence.lease_name.as_str().into(), fence.epoch.into()],
            ))
            .await
            .doing("checking the lease")?;
        Ok(match row {
            Some(r) => r.try_get::<i64>("", "n").doing("checking the lease")? > 0,
            None => false,
        })
    }
}

impl crate::store::handles::Flags<'_> {
    /// `pause` / `resume` decided by a rule: sets the paused flag, fenced.
    pub async fn set_paused_fenced(self, fence: &Fence, paused: bool) -> Result<(), StoreError> {
        let values = vec![paused.into(), self.store.now().into()];
        self.store.set_flags_fenced(fence, "paused = $1, updated_at = $2", values, "setting the paused flag").await
    }

    /// Sets the throttle every claimer honours: at most `n` attempts start until `until`
    /// (`None`: no throttle). Under the lease's fence, like every decision.
    pub async fn set_throttle(self, fence: &Fence, n: Option<u32>, until: DateTime<Utc>) -> Result<(), StoreError> {
        let (remaining, until): (Option<i32>, Option<DateTime<Utc>>) = match n {
            Some(n) => (Some(i32::try_from(n).unwrap_or(i32::MAX)), Some(until)),
            None => (None, None),
        };
        let set = "throttle_remaining = $1, throttle_until = $2";
        self.store.set_flags_fenced(fence, set, vec![remaining.into(), until.into()], "setting the throttle").await
    }

    /// Clears the last tick's throttle, if one is set: the row is written only then, so an
    /// unthrottled tick pays no write (and no fsync) for it.
    pub async fn clear_throttle(self, fence: &Fence) -> Result<(), StoreError> {
        let sql = format!(
            "UPDATE control_flags SET throttle_remaining = NULL, throttle_until = NULL \
             WHERE id = 1 AND throttle_until IS NOT NULL AND {}",
            fence_sql(1, 2)
        );
        let values: [Value; 2] = [fence.lease_name.as_str().into(), fence.epoch.into()];
        self.store.db.execute_raw(self.store.stmt(&sql, values)).await.doing("clearing the throttle")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_decision_kind_and_outcome_reads_back_as_written() {
        for k in DecisionKind::ALL {
            assert_eq!(stored::<DecisionKind>(1, "kind", k.as_str()).unwrap(), *k);
        }
        let mut outcomes = vec![DecisionOutcome::Applied, DecisionOutcome::Failed("stale fence".into())];
        outcomes.extend(crate::model::Suppressed::ALL.iter().map(|s| DecisionOutcome::Suppressed(*s)));
        for o in outcomes {
            // What `record_decide` writes is the outcome's text.
            assert_eq!(stored::<DecisionOutcome>(1, "outcome", &o.to_string()).unwrap(), o);
        }
    }

    #[test]
    fn a_stored_value_that_is_not_one_names_the_row_the_column_and_the_value() {
        let e = stored::<DecisionKind>(42, "kind", "explode").unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { table: "decisions", id: 42, .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.starts_with("row decisions#42 holds an invalid value: kind \"explode\": unknown decision kind"),
            "{text}"
        );
        let e = stored::<DecisionOutcome>(7, "outcome", "suppressed:later").unwrap_err().to_string();
        assert!(e.starts_with("row decisions#7 holds an invalid value: outcome \"suppressed:later\""), "{e}");
    }
}
