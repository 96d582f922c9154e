//! Wake-ups for claimers. A claimer (a worker, or `run` between its ticks) waits on a
//! [`WorkWaiter`], which wakes it when:
//! - a write of this same process made work due (an enqueue through the API): on both
//!   backends, in memory;
//! - on PostgreSQL, a `NOTIFY` on [`WORK_CHANNEL`] came: sent when work arrives (an enqueue by
//!   any process) or has become due by time (the leader's tick, since a `not_before` passing
//!   notifies no one);
//! - without a listener (SQLite; PostgreSQL behind a transaction pooler): a look at the newest
//!   action id every [`CHANGE_POLL`] found a new one (an enqueue by another process, such as
//!   the CLI). On SQLite the look is a `stat` of the write-ahead log, and the id is read only
//!   when the log changed: a commit by any process writes to it.
//!
//! A wake-up only shortens a wait; it is never needed for correctness: the claimer also claims
//! again at its poll (`workers.poll_seconds`).
//!
//! Behind PgBouncer in transaction mode `LISTEN` does not hold (the session is not kept): the
//! `LISTEN` stays on whichever server connection ran it, and that connection's notifications
//! then reach another client in the middle of its query, which fails ("expected ReadyForQuery,
//! got NotificationResponse"). `postgres_listen: false` is for that: no `LISTEN`, and the
//! newest-id look stands in for it.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use sea_orm::ConnectionTrait;
use sea_orm::sqlx::postgres::PgListener;

use super::{Backend, Context, DbCause, Store, StoreError};

/// The channel claimers listen on.
pub const WORK_CHANNEL: &str = "orchestrator_work";

/// How often a waiter without notifications looks at the newest action id: a query of one
/// index entry, 20 a second while idle.
pub const CHANGE_POLL: Duration = Duration::from_millis(50);

/// A subscription to [`WORK_CHANNEL`].
pub struct WorkListener(PgListener);

impl std::fmt::Debug for WorkListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkListener")
    }
}

impl WorkListener {
    /// Waits at most `timeout` for a notification; `true` when one came (any others already
    /// received are taken with it). A lost connection is re-established on the next call;
    /// meanwhile the wait is the plain timeout.
    pub async fn wait(&mut self, timeout: Duration) -> bool {
        match tokio::time::timeout(timeout, self.0.recv()).await {
            Ok(Ok(_)) => {
                while self.0.next_buffered().is_some() {}
                true
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "work notifications unavailable; polling");
                tokio::time::sleep(timeout).await;
                false
            }
            Err(_) => false,
        }
    }
}

/// What a claimer waits on when it found nothing to claim (see the module's doc).
pub struct WorkWaiter {
    store: Store,
    listener: Option<WorkListener>,
    /// The newest action id seen, when no listener tells of enqueues.
    seen: i64,
    /// SQLite: the write-ahead log, and what it looked like last time.
    wal: Option<(PathBuf, Option<WalLook>)>,
}

/// A write-ahead log's length and time of change.
type WalLook = (u64, Option<SystemTime>);

impl std::fmt::Debug for WorkWaiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkWaiter").field("listens", &self.listener.is_some()).field("seen", &self.seen).finish()
    }
}

impl WorkWaiter {
    /// Whether it hears `NOTIFY` (PostgreSQL with a session kept).
    pub fn listens(&self) -> bool {
        self.listener.is_some()
    }

    /// Waits at most `timeout` for a wake-up; `true` when one came.
    pub async fn wait(&mut self, timeout: Duration) -> bool {
        let local = self.store.local_wake.clone();
        tokio::select! {
            () = local.notified() => true,
            woke = self.external(timeout) => woke,
        }
    }

    async fn external(&mut self, timeout: Duration) -> bool {
        if let Some(listener) = &mut self.listener {
            return listener.wait(timeout).await;
        }
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            tokio::time::sleep(left.min(CHANGE_POLL)).await;
            if !self.wal_changed() {
                continue;
            }
            // A failed look is a missed wake-up only: the poll claims anyway.
            if let Ok(newest) = self.store.actions().newest_id().await {
                let new = newest > self.seen;
                self.seen = newest;
                if new {
                    return true;
                }
            }
        }
    }
}

impl WorkWaiter {
    /// Whether the write-ahead log changed since the last look (true when there is none to
    /// look at, or it cannot be read: the id is read then).
    fn wal_changed(&mut self) -> bool {
        let Some((path, last)) = &mut self.wal else { return true };
        let now = std::fs::metadata(path).ok().map(|m| (m.len(), m.modified().ok()));
        let changed = now.is_none() || *last != now;
        *last = now;
        changed
    }
}

impl Store {
    /// Wakes the claimers after a write that made work due: this process's own at once,
    /// others by `NOTIFY` (PostgreSQL). A failed `NOTIFY` only costs them a look, so it is
    /// logged, not returned.
    pub(super) async fn wake_claimers(&self) {
        self.local_wake.notify_one();
        if let Err(e) = self.notify().notify_work().await {
            tracing::debug!(error = %e, "could not notify claimers; they poll");
        }
    }
}

impl crate::store::handles::Notify<'_> {
    /// What a claimer of this process waits on: with a `LISTEN` on PostgreSQL when it can be
    /// had (a failure to listen is logged, and the newest-id look stands in). Never fails: a
    /// database that does not answer yet costs at most one early wake-up.
    pub async fn waiter(self) -> WorkWaiter {
        let listener = match self.work_listener().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for work notifications; looking for new work every 50 ms");
                None
            }
        };
        let seen = self.store.actions().newest_id().await.unwrap_or(0);
        let wal = match self.store.backend {
            Backend::Sqlite => self.database_file().await.map(|f| (PathBuf::from(format!("{f}-wal")), None)),
            Backend::Postgres => None,
        };
        WorkWaiter { store: self.store.clone(), listener, seen, wal }
    }

    /// SQLite: the main database's file, if it has one.
    async fn database_file(self) -> Option<String> {
        let sql = "SELECT file FROM pragma_database_list WHERE name = 'main'";
        let row = self.store.db.query_one_raw(self.store.stmt(sql, [])).await.ok()??;
        row.try_get::<String>("", "file").ok().filter(|f| !f.is_empty())
    }

    /// A subscription to work notifications (PostgreSQL), or `None` (SQLite, or
    /// `postgres_listen: false`).
    pub async fn work_listener(self) -> Result<Option<WorkListener>, StoreError> {
        if self.store.backend != Backend::Postgres || !self.store.listen {
            return Ok(None);
        }
        let pool = self.store.db.get_postgres_connection_pool();
        let mut listener = PgListener::connect_with(pool).await.map_err(|e| StoreError::Db {
            doing: "listening for work",
            cause: DbCause::of(&sea_orm::DbErr::Conn(sea_orm::RuntimeErr::Internal(e.to_string()))),
        })?;
        listener.listen(WORK_CHANNEL).await.map_err(|e| StoreError::Db {
            doing: "listening for work",
            cause: DbCause::of(&sea_orm::DbErr::Conn(sea_orm::RuntimeErr::Internal(e.to_string()))),
        })?;
        Ok(Some(WorkListener(listener)))
    }

    /// Wakes the listening claimers (PostgreSQL; nothing on SQLite).
    pub async fn notify_work(self) -> Result<(), StoreError> {
        if self.store.backend != Backend::Postgres {
            return Ok(());
        }
        self.store
            .db
            .execute_unprepared(&format!("NOTIFY {WORK_CHANNEL}"))
            .await
            .doing("notifying claimers of work")?;
        Ok(())
    }
}
