//! Reads of the `actions` table (one action, listings, counts) and the helpers every write
//! shares: log rows in the caller's transaction, timestamp and text encoding.
//!
//! It changes no action's state: every transition is an operation of the state machine's
//! families beside it (`enqueue`, `claim`, `complete`, `edit`, `sweep`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Value,
};

use super::super::entities::{self, actions};
use super::super::{Context, OPEN_SQL, Store, StoreError, due_sql};
use crate::model::{Action, ActionStatus, NewLog};

/// Filters for listing actions.
#[derive(Clone, Debug, Default)]
pub struct ActionFilter {
    pub status: Option<ActionStatus>,
    pub action_type: Option<String>,
    pub limit: u64,
}

/// Log rows per INSERT (each chunk is one JSON parameter).
const LOG_CHUNK: usize = 1000;

impl Store {
    /// How many actions of each type are due at `now`, of the types `only` lists when it is not
    /// empty (` AND action_type IN (...)`, checked names); types with none left out.
    pub(in crate::store) async fn due_per_type(
        &self,
        only: &str,
        now: DateTime<Utc>,
    ) -> Result<BTreeMap<String, u64>, StoreError> {
        let doing = "counting due actions";
        let sql = format!(
            "SELECT action_type, COUNT(*) AS n FROM actions WHERE {}{only} GROUP BY action_type",
            due_sql("$1")
        );
        let rows = self.db.query_all_raw(self.stmt(&sql, [now.into()])).await.doing(doing)?;
        let mut out = BTreeMap::new();
        for r in rows {
            let n: i64 = r.try_get("", "n").doing(doing)?;
            out.insert(r.try_get("", "action_type").doing(doing)?, u64::try_from(n).unwrap_or(0));
        }
        Ok(out)
    }

    async fn grouped_counts(&self, sql: &str) -> Result<BTreeMap<ActionStatus, i64>, StoreError> {
        let rows = self.db.query_all_raw(self.stmt(sql, [])).await.doing("counting actions")?;
        let mut counts: BTreeMap<ActionStatus, i64> = ActionStatus::ALL.iter().map(|s| (*s, 0)).collect();
        for r in rows {
            let status: String = r.try_get("", "status").doing("counting actions")?;
            let n: i64 = r.try_get("", "n").doing("counting actions")?;
            if let Ok(s) = status.parse::<ActionStatus>() {
                counts.insert(s, n);
            }
        }
        Ok(counts)
    }
}

impl crate::store::handles::Actions<'_> {
    pub async fn action(self, id: i64) -> Result<Option<Action>, StoreError> {
        let row = actions::Entity::find_by_id(id).one(&self.store.db).await.doing("reading an action")?;
        row.map(Action::try_from).transpose()
    }

    /// Actions matching the filter, newest first.
    pub async fn list_actions(self, filter: &ActionFilter) -> Result<Vec<Action>, StoreError> {
        let mut q = actions::Entity::find();
        if let Some(s) = filter.status {
            q = q.filter(actions::Column::Status.eq(s.as_str()));
            if ActionStatus::OPEN.contains(&s) {
                // The open-status index's own predicate, so that the planner reads only that
                // status's rows (the page's DLQ list) instead of scanning finished history.
                q = q.filter(sea_orm::sea_query::Expr::cust(OPEN_SQL));
            }
        }
        if let Some(t) = &filter.action_type {
            q = q.filter(actions::Column::ActionType.eq(t.as_str()));
        }
        let rows = q
            .order_by_desc(actions::Column::Id)
            .limit(filter.limit)
            .all(&self.store.db)
            .await
            .doing("listing actions")?;
        entities::convert_all(rows)
    }

    /// Count of every status (all history; for `status`, not for the tick's hot path).
    pub async fn count_by_status(self) -> Result<BTreeMap<ActionStatus, i64>, StoreError> {
        self.store.grouped_counts("SELECT status, COUNT(*) AS n FROM actions GROUP BY status").await
    }

    /// Counts of the open statuses only, served by the partial index: cost independent of
    /// finished history.
    pub async fn open_counts(self) -> Result<BTreeMap<ActionStatus, i64>, StoreError> {
        let mut counts = self
            .store
            .grouped_counts(&format!("SELECT status, COUNT(*) AS n FROM actions WHERE {OPEN_SQL} GROUP BY status"))
            .await?;
        counts.retain(|s, _| ActionStatus::OPEN.contains(s));
        Ok(counts)
    }

    /// SUCCESS and CANCELLED actions finished since `since`, through the finished index: a cost
    /// that follows recent traffic, not history.
    pub async fn finished_since(self, since: DateTime<Utc>) -> Result<BTreeMap<ActionStatus, i64>, StoreError> {
        let sql = "SELECT status, COUNT(*) AS n FROM actions WHERE status IN ('SUCCESS', 'CANCELLED') \
                   AND finished_at >= $1 GROUP BY status";
        let rows = self
            .store
            .db
            .query_all_raw(self.store.stmt(sql, [since.into()]))
            .await
            .doing("counting finished actions")?;
        let mut counts: BTreeMap<ActionStatus, i64> =
            [(ActionStatus::Success, 0), (ActionStatus::Cancelled, 0)].into_iter().collect();
        for r in rows {
            let status: String = r.try_get("", "status").doing("counting finished actions")?;
            if let Ok(s) = status.parse::<ActionStatus>() {
                counts.insert(s, r.try_get("", "n").doing("counting finished actions")?);
            }
        }
        Ok(counts)
    }

    /// When the oldest `PENDING` action was created, if any.
    pub async fn oldest_pending(self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let sql = format!("SELECT MIN(created_at) AS t FROM actions WHERE {OPEN_SQL} AND status = 'PENDING'");
        let row =
            self.store.db.query_one_raw(self.store.stmt(&sql, [])).await.doing("finding the oldest pending action")?;
        match row {
            Some(r) => r.try_get::<Option<DateTime<Utc>>>("", "t").doing("finding the oldest pending action"),
            None => Ok(None),
        }
    }

    /// Up to `limit` action types that have due work now.
    pub async fn due_types(self, limit: u64) -> Result<Vec<String>, StoreError> {
        let sql =
            format!("SELECT DISTINCT action_type FROM actions WHERE {} ORDER BY action_type LIMIT $2", due_sql("$1"));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .store
            .db
            .query_all_raw(self.store.stmt(&sql, [self.store.now().into(), limit.into()]))
            .await
            .doing("listing due types")?;
        rows.iter().map(|r| r.try_get::<String>("", "action_type").doing("listing due types")).collect()
    }

    /// The newest action's id (0 when there is none): what a claimer without notifications
    /// watches for enqueues by other processes.
    pub async fn newest_id(self) -> Result<i64, StoreError> {
        let sql = "SELECT COALESCE(MAX(id), 0) AS n FROM actions";
        let row = self.store.db.query_one_raw(self.store.stmt(sql, [])).await.doing("reading the newest action id")?;
        match row {
            Some(r) => r.try_get("", "n").doing("reading the newest action id"),
            None => Ok(0),
        }
    }

    /// How many actions of each type are due now, as [`due_count`](Self::due_count) counts them
    /// (types with none left out).
    pub async fn due_counts_by_type(self) -> Result<BTreeMap<String, u64>, StoreError> {
        self.store.due_per_type("", self.store.now()).await
    }

    /// How many actions are due now (`PENDING` or `RETRY`, `not_before` passed, not expired).
    pub async fn due_count(self) -> Result<i64, StoreError> {
        let sql = format!("SELECT COUNT(*) AS n FROM actions WHERE {}", due_sql("$1"));
        let row = self
            .store
            .db
            .query_one_raw(self.store.stmt(&sql, [self.store.now().into()]))
            .await
            .doing("counting due actions")?;
        match row {
            Some(r) => r.try_get("", "n").doing("counting due actions"),
            None => Ok(0),
        }
    }
}

/// Inserts log rows inside the caller's transaction.
pub(in crate::store) async fn insert_logs(
    txn: &DatabaseTransaction,
    tick_id: Option<i64>,
    logs: &[NewLog],
    ts: DateTime<Utc>,
) -> Result<(), StoreError> {
    let rows_from = match txn.get_database_backend() {
        DbBackend::Postgres => {
            "json_to_recordset($1::json) AS x(action_id BIGINT, level TEXT, message TEXT, artifact_ref TEXT, \
             artifact_sha256 TEXT)"
        }
        _ => {
            "(SELECT value ->> 'action_id' AS action_id, value ->> 'level' AS level, value ->> 'message' AS message, \
             value ->> 'artifact_ref' AS artifact_ref, value ->> 'artifact_sha256' AS artifact_sha256 FROM json_each($1))"
        }
    };
    let sql = format!(
        "INSERT INTO execution_logs (action_id, tick_id, ts, level, message, artifact_ref, artifact_sha256) \
         SELECT action_id, $2, $3, level, message, artifact_ref, artifact_sha256 FROM {rows_from}"
    );
    for chunk in logs.chunks(LOG_CHUNK) {
        let rows: Vec<serde_json::Value> = chunk
            .iter()
            .map(|l| {
                serde_json::json!({
                    "action_id": l.action_id, "level": l.level.as_str(), "message": db_text(&l.message),
                    "artifact_ref": l.artifact_ref.as_deref().map(db_text),
                    "artifact_sha256": l.artifact_sha256,
                })
            })
            .collect();
        let values: [Value; 3] = [serde_json::Value::Array(rows).to_string().into(), tick_id.into(), ts.into()];
        txn.execute_raw(sea_orm::Statement::from_sql_and_values(txn.get_database_backend(), &sql, values))
            .await
            .doing("writing execution logs")?;
    }
    Ok(())
}

/// A timestamp as sqlx writes one to SQLite (which compares timestamps as text); PostgreSQL
/// parses the same text.
pub(in crate::store) fn timestamp_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
}

/// Text as the database can store it: PostgreSQL text cannot hold NUL, and an adapter's output
/// or error may carry one; it becomes U+FFFD rather than failing the write that records it.
pub(in crate::store) fn db_text(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') { std::borrow::Cow::Owned(s.replace('\0', "\u{FFFD}")) } else { std::borrow::Cow::Borrowed(s) }
}
