//! The worker registry: one row per registered executor (`orchestrator worker`, or the `run`
//! process's own executor), kept alive by a heartbeat on the database's clock.
//!
//! A registration whose heartbeat is older than the TTL is dead for good: its claims are
//! rescued, its heartbeat is refused, and its process must register again under a new id. The
//! registry decides nothing about actions; the claim and the rescue read it (`actions/claim.rs`, `actions/sweep.rs`).

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, Value};

use super::{Context, StoreError};
use crate::model;

/// What a worker says of itself when it registers.
#[derive(Clone, Debug)]
pub struct NewWorker {
    /// `host:pid:random`, unique for this registration.
    pub id: String,
    pub host: String,
    pub pid: i64,
    pub version: String,
    pub concurrency: i32,
    /// The action types it serves; empty: every type.
    pub types: Vec<String>,
}

/// One row of the registry, as `orchestrator workers` and `/api/workers` show it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct WorkerRow {
    pub id: String,
    pub host: String,
    pub pid: i64,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    pub concurrency: i32,
    /// Empty: every type.
    pub types: Vec<String>,
    pub in_flight: i32,
    pub done: i64,
    pub failed: i64,
    pub draining: bool,
    /// Its heartbeat is within the TTL (by the database's clock when the list was read).
    pub live: bool,
}

/// What a heartbeat reports: the worker's counts since it registered.
#[derive(Clone, Copy, Debug, Default)]
pub struct Beat {
    pub in_flight: i32,
    pub done: i64,
    pub failed: i64,
    pub draining: bool,
}

impl crate::store::handles::Workers<'_> {
    /// Registers a worker, its heartbeat now.
    pub async fn register_worker(self, w: &NewWorker) -> Result<(), StoreError> {
        let now = self.store.db_now().await?;
        let sql = "INSERT INTO workers (id, host, pid, version, started_at, heartbeat_at, concurrency, types, \
                   in_flight, done, failed, draining) VALUES ($1, $2, $3, $4, $5, $5, $6, $7, 0, 0, 0, $8)";
        let values: [Value; 8] = [
            w.id.as_str().into(),
            w.host.as_str().into(),
            w.pid.into(),
            w.version.as_str().into(),
            now.into(),
            w.concurrency.into(),
            w.types.join(",").into(),
            false.into(),
        ];
        self.store.db.execute_raw(self.store.stmt(sql, values)).await.doing("registering a worker")?;
        Ok(())
    }

    /// Renews `id`'s heartbeat, if it is still live. `false`: the registration expired (or
    /// was removed); the worker must stop starting attempts and register anew.
    pub async fn worker_heartbeat(self, id: &str, ttl: std::time::Duration, beat: Beat) -> Result<bool, StoreError> {
        let now = self.store.db_now().await?;
        let live_after = model::earlier_saturating(now, ttl);
        let sql = "UPDATE workers SET heartbeat_at = $1, in_flight = $2, draining = $3, done = $4, failed = $5 \
                   WHERE id = $6 AND heartbeat_at > $7";
        let values: [Value; 7] = [
            now.into(),
            beat.in_flight.into(),
            beat.draining.into(),
            beat.done.into(),
            beat.failed.into(),
            id.into(),
            live_after.into(),
        ];
        let n = self.store.db.execute_raw(self.store.stmt(sql, values)).await.doing("renewing a worker's heartbeat")?;
        Ok(n.rows_affected() == 1)
    }

    /// Removes `id` (a clean stop). Any claim it still holds is rescued at the next tick.
    pub async fn deregister_worker(self, id: &str) -> Result<(), StoreError> {
        self.store
            .db
            .execute_raw(self.store.stmt("DELETE FROM workers WHERE id = $1", [id.into()]))
            .await
            .doing("deregistering a worker")?;
        Ok(())
    }

    /// Every registered worker, live first, then by id.
    pub async fn list(self, ttl: std::time::Duration) -> Result<Vec<WorkerRow>, StoreError> {
        let now = self.store.db_now().await?;
        let live_after = model::earlier_saturating(now, ttl);
        let sql = "SELECT id, host, pid, version, started_at, heartbeat_at, concurrency, types, in_flight, done, \
                   failed, draining FROM workers ORDER BY id";
        let rows = self.store.db.query_all_raw(self.store.stmt(sql, [])).await.doing("listing workers")?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let get = "listing workers";
            let heartbeat_at: DateTime<Utc> = r.try_get("", "heartbeat_at").doing(get)?;
            let types: String = r.try_get("", "types").doing(get)?;
            out.push(WorkerRow {
                id: r.try_get("", "id").doing(get)?,
                host: r.try_get("", "host").doing(get)?,
                pid: r.try_get("", "pid").doing(get)?,
                version: r.try_get("", "version").doing(get)?,
                started_at: r.try_get("", "started_at").doing(get)?,
                heartbeat_at,
                concurrency: r.try_get("", "concurrency").doing(get)?,
                types: types.split(',').filter(|t| !t.is_empty()).map(str::to_string).collect(),
                in_flight: r.try_get("", "in_flight").doing(get)?,
                done: r.try_get("", "done").doing(get)?,
                failed: r.try_get("", "failed").doing(get)?,
                draining: r.try_get("", "draining").doing(get)?,
                live: heartbeat_at > live_after,
            });
        }
        out.sort_by(|a, b| b.live.cmp(&a.live).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Removes registrations dead for longer than `older_than` (the leader's hourly purge).
    pub async fn prune_workers(self, older_than: DateTime<Utc>) -> Result<u64, StoreError> {
        let n = self
            .store
            .db
            .execute_raw(self.store.stmt("DELETE FROM workers WHERE heartbeat_at < $1", [older_than.into()]))
            .await
            .doing("pruning dead workers")?;
        Ok(n.rows_affected())
    }
}

impl crate::store::handles::Actions<'_> {
    /// Outcomes recorded in `[since, upto)` (by any executor): SUCCESS and DLQ rows finished,
    /// and RETRY rows changed, through the finished and retry indexes. What a leader that
    /// executes nothing (`run --no-execute`) reports as its tick's counts.
    pub async fn outcomes_between(self, since: DateTime<Utc>, upto: DateTime<Utc>) -> Result<(i64, i64), StoreError> {
        let sql = "SELECT \
                   (SELECT COUNT(*) FROM actions WHERE status = 'SUCCESS' AND finished_at >= $1 AND finished_at < $2) AS ok, \
                   (SELECT COUNT(*) FROM actions WHERE status = 'DLQ' AND finished_at >= $1 AND finished_at < $2) \
                   + (SELECT COUNT(*) FROM actions WHERE status = 'RETRY' AND updated_at >= $1 AND updated_at < $2) \
                   AS failed";
        let row = self
            .store
            .db
            .query_one_raw(self.store.stmt(sql, [since.into(), upto.into()]))
            .await
            .doing("counting recent outcomes")?;
        let row = row.ok_or_else(|| StoreError::Internal("counting recent outcomes returned nothing".into()))?;
        Ok((
            row.try_get("", "ok").doing("counting recent outcomes")?,
            row.try_get("", "failed").doing("counting recent outcomes")?,
        ))
    }
}
