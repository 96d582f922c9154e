//! Wake-ups for claimers on PostgreSQL: a `NOTIFY` on [`WORK_CHANNEL`] when work arrives (an
//! enqueue) or has become due by time (the leader's tick, since a `not_before` passing notifies
//! no one), and a `LISTEN` in each worker. Polling stays the fallback: a notification only
//! shortens a wait, it is never needed for correctness. SQLite has neither; its workers poll.
//!
//! Behind PgBouncer in transaction mode `LISTEN` does not hold (the session is not kept), so
//! the listener fails or hears nothing and the worker polls (`workers.poll_seconds`).

use std::time::Duration;

use sea_orm::ConnectionTrait;
use sea_orm::sqlx::postgres::PgListener;

use super::{Backend, Context, DbCause, Store, StoreError};

/// The channel claimers listen on.
pub const WORK_CHANNEL: &str = "orchestrator_work";

/// A worker's subscription to [`WORK_CHANNEL`].
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

impl Store {
    /// `store.notify().notify_work` after a write that made work due; a failure only costs the
    /// claimers a poll interval, so it is logged, not returned.
    pub(super) async fn wake_claimers(&self) {
        if let Err(e) = self.notify().notify_work().await {
            tracing::debug!(error = %e, "could not notify claimers; they poll");
        }
    }
}

impl crate::store::handles::Notify<'_> {
    /// A subscription to work notifications (PostgreSQL), or `None` (SQLite).
    pub async fn work_listener(self) -> Result<Option<WorkListener>, StoreError> {
        if self.store.backend != Backend::Postgres {
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
