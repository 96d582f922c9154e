//! History: reading the ledger and the execution logs forward from an id (for `--follow`), and
//! pruning the ledger, the decisions and the rule cooldowns past their retention.
//!
//! A follow is a poll: every read is one autocommit `SELECT` by id, so it holds no transaction
//! and no lock between polls. Pruning deletes in small batches, one short write transaction
//! each, so that a tick's writes wait for at most one batch. Neither decides a retention: the
//! caller passes the cutoffs.

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Value};

use super::entities::{self, execution_logs, tick_ledger};
use super::{Context, Store, StoreError};
use crate::model::{LogLevel, LogRow, TickRow};

/// Which execution logs a follow (or a listing) shows.
#[derive(Clone, Debug, Default)]
pub struct LogFilter {
    pub action_id: Option<i64>,
    /// Only logs of actions of this type.
    pub action_type: Option<String>,
    /// Only rows at this level or above.
    pub min_level: Option<LogLevel>,
}

/// Cutoffs of one prune: rows older than these go.
#[derive(Clone, Copy, Debug)]
pub struct PruneCutoffs {
    /// Ledger rows started before this.
    pub ledger: DateTime<Utc>,
    /// Decisions written before this. The store never goes later than `ledger`: a tick still in
    /// the ledger keeps its decisions, which `explain` needs.
    pub decisions: DateTime<Utc>,
    /// Cooldown rows applied before this.
    pub cooldowns: DateTime<Utc>,
}

/// Rows deleted by one prune.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Pruned {
    pub ledger: u64,
    pub decisions: u64,
    pub cooldowns: u64,
}

impl Pruned {
    pub fn total(&self) -> u64 {
        self.ledger + self.decisions + self.cooldowns
    }
}

/// How a prune rests between batches: at least `min_rest`, and `rest_per_busy` times as long as
/// the batch took, so that a background prune holds the write lock (and a core) for at most
/// `1 / (1 + rest_per_busy)` of its time, however slow the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pace {
    pub min_rest: std::time::Duration,
    pub rest_per_busy: u32,
}

impl Pace {
    /// No rest: an operator's `purge`, with nothing else to yield to.
    pub const FLAT_OUT: Pace = Pace { min_rest: std::time::Duration::ZERO, rest_per_busy: 0 };

    /// The rest after a batch that took `busy`.
    pub fn rest_after(&self, busy: std::time::Duration) -> std::time::Duration {
        busy.saturating_mul(self.rest_per_busy).max(self.min_rest)
    }
}

impl Store {
    async fn delete_batch(
        &self,
        sql: &str,
        values: impl IntoIterator<Item = Value>,
        doing: &'static str,
    ) -> Result<u64, StoreError> {
        let txn = self.begin_write().await?;
        let n = txn.execute_raw(self.stmt(sql, values)).await.doing(doing)?.rows_affected();
        txn.commit().await.doing("committing a prune batch")?;
        if self.backend == super::Backend::Sqlite && n > 0 {
            // The pruner copies its own pages back into the database file, so that the WAL's
            // automatic checkpoint does not fall to (and stall) the next tick's commit.
            self.db
                .execute_unprepared("PRAGMA wal_checkpoint(PASSIVE)")
                .await
                .doing("checkpointing after a prune batch")?;
        }
        Ok(n)
    }

    /// The smallest id whose time is at or after `cutoff` (scanning ids upward from the oldest
    /// row, so it reads about as many rows as will be deleted); `None` when every row is older.
    async fn first_id_at_or_after(
        &self,
        table: &str,
        time_col: &str,
        cutoff: DateTime<Utc>,
    ) -> Result<Option<i64>, StoreError> {
        let sql = format!("SELECT id FROM {table} WHERE {time_col} >= $1 ORDER BY id LIMIT 1");
        let row = self.db.query_one_raw(self.stmt(&sql, [cutoff.into()])).await.doing("finding the prune boundary")?;
        match row {
            Some(r) => Ok(Some(r.try_get_by_index::<i64>(0).doing("finding the prune boundary")?)),
            None => Ok(None),
        }
    }
}

impl crate::store::handles::History<'_> {
    /// Log rows with `id` above `after` or in `also` (ids a poll saw skipped, whose transaction
    /// may commit late), oldest first, at most `limit`, filtered.
    pub async fn logs_after(
        self,
        after: i64,
        also: &[i64],
        filter: &LogFilter,
        limit: u64,
    ) -> Result<Vec<LogRow>, StoreError> {
        let rows = filtered_logs(filter)
            .filter(after_or_in(execution_logs::Column::Id, after, also))
            .order_by_asc(execution_logs::Column::Id)
            .limit(limit)
            .all(&self.store.db)
            .await
            .doing("following execution logs")?;
        entities::convert_all(rows)
    }

    /// The last `limit` log rows that pass `filter`, newest first.
    pub async fn logs_filtered(self, filter: &LogFilter, limit: u64) -> Result<Vec<LogRow>, StoreError> {
        let rows = filtered_logs(filter)
            .order_by_desc(execution_logs::Column::Id)
            .limit(limit)
            .all(&self.store.db)
            .await
            .doing("reading execution logs")?;
        entities::convert_all(rows)
    }

    /// Deletes ledger rows, decisions and cooldowns older than `cutoffs`, `batch` rows per
    /// transaction, resting between batches as `pace` says so that ticks get the write lock (and
    /// the CPU). Decisions go first, and never past the ledger's cutoff.
    pub async fn prune_history(self, cutoffs: PruneCutoffs, batch: u64, pace: Pace) -> Result<Pruned, StoreError> {
        let batch = i64::try_from(batch.max(1)).unwrap_or(i64::MAX);
        let decisions_cutoff = cutoffs.decisions.min(cutoffs.ledger);
        let mut pruned = Pruned::default();
        // Decisions and ledger rows: ids grow with time, so the first young row's id bounds a
        // primary-key range and each batch reads only the rows it deletes.
        for (table, time_col, cutoff, count) in [
            ("decisions", "created_at", decisions_cutoff, &mut pruned.decisions),
            ("tick_ledger", "started_at", cutoffs.ledger, &mut pruned.ledger),
        ] {
            let bound = self.store.first_id_at_or_after(table, time_col, cutoff).await?;
            let sql = format!(
                "DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE id < $1 AND {time_col} < $2 \
                 ORDER BY id LIMIT $3)"
            );
            loop {
                let values: [Value; 3] = [bound.unwrap_or(i64::MAX).into(), cutoff.into(), batch.into()];
                let busy = std::time::Instant::now();
                let n = self.store.delete_batch(&sql, values, "pruning history").await?;
                *count += n;
                if n < batch as u64 {
                    break;
                }
                tokio::time::sleep(pace.rest_after(busy.elapsed())).await;
            }
        }
        let sql = "DELETE FROM rule_cooldowns WHERE (rule, kind, target) IN (SELECT rule, kind, target \
                   FROM rule_cooldowns WHERE applied_at < $1 LIMIT $2)";
        loop {
            let values: [Value; 2] = [cutoffs.cooldowns.into(), batch.into()];
            let busy = std::time::Instant::now();
            let n = self.store.delete_batch(sql, values, "pruning rule cooldowns").await?;
            pruned.cooldowns += n;
            if n < batch as u64 {
                break;
            }
            tokio::time::sleep(pace.rest_after(busy.elapsed())).await;
        }
        Ok(pruned)
    }
}

impl crate::store::handles::Ledger<'_> {
    /// Ledger rows with `id` above `after` or in `also`, oldest first, at most `limit`.
    pub async fn ticks_after(self, after: i64, also: &[i64], limit: u64) -> Result<Vec<TickRow>, StoreError> {
        let rows = tick_ledger::Entity::find()
            .filter(after_or_in(tick_ledger::Column::Id, after, also))
            .order_by_asc(tick_ledger::Column::Id)
            .limit(limit)
            .all(&self.store.db)
            .await
            .doing("following the tick ledger")?;
        entities::convert_all(rows)
    }
}

/// `id > after OR id IN also`: what a follow reads (`also`: ids it skipped that may commit late).
fn after_or_in(id: impl ColumnTrait, after: i64, also: &[i64]) -> sea_orm::Condition {
    let newer = sea_orm::Condition::any().add(id.gt(after));
    if also.is_empty() { newer } else { newer.add(id.is_in(also.iter().copied())) }
}

fn filtered_logs(filter: &LogFilter) -> sea_orm::Select<execution_logs::Entity> {
    use sea_orm::sea_query::Query;
    let mut q = execution_logs::Entity::find();
    if let Some(id) = filter.action_id {
        q = q.filter(execution_logs::Column::ActionId.eq(id));
    }
    if let Some(min) = filter.min_level {
        let levels: Vec<&str> = LogLevel::ALL.iter().filter(|l| **l >= min).map(|l| l.as_str()).collect();
        q = q.filter(execution_logs::Column::Level.is_in(levels));
    }
    if let Some(t) = &filter.action_type {
        q = q.filter(
            execution_logs::Column::ActionId.in_subquery(
                Query::select()
                    .column(entities::actions::Column::Id)
                    .from(entities::actions::Entity)
                    .and_where(entities::actions::Column::ActionType.eq(t.as_str()))
                    .to_owned(),
            ),
        );
    }
    q
}
