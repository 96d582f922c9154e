//! The tick ledger: a row opened when a tick starts and closed when it ends.
//!
//! A row is inserted as `FAIL` with "did not finish" notes and updated at the end, so a tick
//! whose process dies leaves an honest record instead of none.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ConnectionTrait, EntityTrait, QueryOrder, QuerySelect, Value,
};

use super::entities::{self, tick_ledger};
use super::{Acquired, Context, Store, StoreError};
use crate::model::{LeaseRow, TickRow, TickStatus};

/// The notes an unfinished tick keeps.
pub const UNFINISHED_NOTE: &str = "tick did not finish (the process stopped or lost the database mid-tick)";

/// The closing figures of a tick.
#[derive(Clone, Debug)]
pub struct TickClose {
    pub status: TickStatus,
    pub attempted: i32,
    pub succeeded: i32,
    pub notes: Option<String>,
    /// The decide stage's snapshot (JSON) and rules digest, written with the closing figures so
    /// that an idle tick costs one write fewer.
    pub snapshot: Option<(String, String)>,
}

/// What beginning a tick found.
#[derive(Clone, Debug)]
pub enum Begun {
    /// This owner holds the lease; the tick's ledger row is open.
    Held { lease: LeaseRow, tick_id: i64 },
    /// Another owner holds a live lease; nothing was written.
    HeldByOther(LeaseRow),
}

async fn open_tick_on(
    conn: &impl ConnectionTrait,
    owner: &str,
    epoch: i64,
    started_at: DateTime<Utc>,
) -> Result<i64, StoreError> {
    let row = tick_ledger::ActiveModel {
        id: NotSet,
        started_at: Set(started_at),
        finished_at: Set(None),
        status: Set(TickStatus::Fail.as_str().to_string()),
        owner: Set(owner.to_string()),
        epoch: Set(epoch),
        actions_attempted: Set(0),
        actions_succeeded: Set(0),
        notes: Set(Some(UNFINISHED_NOTE.to_string())),
    };
    let res = tick_ledger::Entity::insert(row).exec(conn).await.doing("opening a tick ledger row")?;
    Ok(res.last_insert_id)
}

impl Store {
    async fn begin_tick_on(
        &self,
        conn: &impl ConnectionTrait,
        lease_name: &str,
        owner: &str,
        ttl: Duration,
        started_at: DateTime<Utc>,
    ) -> Result<Begun, StoreError> {
        Ok(match self.acquire_on(conn, lease_name, owner, ttl).await? {
            Acquired::Held(lease) => {
                let tick_id = open_tick_on(conn, &lease.owner, lease.epoch, started_at).await?;
                Begun::Held { lease, tick_id }
            }
            Acquired::HeldByOther(row) => Begun::HeldByOther(row),
        })
    }
}

impl crate::store::handles::Ledger<'_> {
    /// Acquires or renews the lease and, if this owner holds it, opens the tick's ledger row.
    ///
    /// On PostgreSQL (and SQLite with `synchronous=NORMAL`) both writes are one transaction. On
    /// SQLite with `synchronous=FULL` they are two autocommit statements on the relaxed
    /// connection (`synchronous=NORMAL`: no fsync of their own), so an idle tick costs one
    /// fsync, the close's, instead of three. What that gives up is durability against a power
    /// cut, and only until the next fsynced commit (the close, or the first claim), which writes
    /// the same WAL file and so makes these durable too. Nothing depends on them across a power
    /// cut: a SQLite database lives on one machine, so every instance holding or waiting for the
    /// lease stops with it, and the worst case is a tick that leaves no `FAIL` row for the cut. A
    /// process crash loses nothing: the writes are in the WAL. Autocommit statements also leave
    /// no transaction behind when a write fails (a full disk, say). Between the two statements
    /// the lease is renewed with no ledger row yet; if the second fails, the tick fails before
    /// doing anything.
    pub async fn begin_tick(
        self,
        lease_name: &str,
        owner: &str,
        ttl: Duration,
        started_at: DateTime<Utc>,
    ) -> Result<Begun, StoreError> {
        if let Some(relaxed) = &self.store.relaxed {
            return self.store.begin_tick_on(relaxed, lease_name, owner, ttl, started_at).await;
        }
        let txn = self.store.begin_write().await?;
        let begun = self.store.begin_tick_on(&txn, lease_name, owner, ttl, started_at).await?;
        txn.commit().await.doing("committing the lease renewal and the tick's ledger row")?;
        Ok(begun)
    }

    /// Closes a tick's ledger row with its figures (one statement).
    pub async fn close_tick(self, id: i64, close: &TickClose) -> Result<(), StoreError> {
        let (snapshot, digest) = match &close.snapshot {
            Some((s, d)) => (Some(s.clone()), Some(d.clone())),
            None => (None, None),
        };
        let values: [Value; 8] = [
            self.store.now().into(),
            close.status.as_str().into(),
            close.attempted.into(),
            close.succeeded.into(),
            close.notes.clone().into(),
            snapshot.into(),
            digest.into(),
            id.into(),
        ];
        self.store
            .db
            .execute_raw(self.store.stmt(
                "UPDATE tick_ledger SET finished_at = $1, status = $2, actions_attempted = $3, \
                 actions_succeeded = $4, notes = $5, snapshot_json = COALESCE($6, snapshot_json), \
                 rules_digest = COALESCE($7, rules_digest) WHERE id = $8",
                values,
            ))
            .await
            .doing("closing a tick ledger row")?;
        Ok(())
    }

    /// The last `limit` ticks, newest first.
    pub async fn recent_ticks(self, limit: u64) -> Result<Vec<TickRow>, StoreError> {
        let rows = tick_ledger::Entity::find()
            .order_by_desc(tick_ledger::Column::Id)
            .limit(limit)
            .all(&self.store.db)
            .await
            .doing("reading the tick ledger")?;
        entities::convert_all(rows)
    }

    pub async fn tick(self, id: i64) -> Result<Option<TickRow>, StoreError> {
        let row = tick_ledger::Entity::find_by_id(id).one(&self.store.db).await.doing("reading a tick")?;
        row.map(TickRow::try_from).transpose()
    }
}
