//! `actions summary`: counts by type and status, the oldest due action of each type, and the
//! open actions by priority band. An operator's read: it counts all history, so it is never on
//! the tick's path.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, Value};
use serde::Serialize;

use super::{Context, StoreError};
use crate::model::ActionStatus;

/// One type's count of one status.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TypeCount {
    pub action_type: String,
    pub status: ActionStatus,
    pub count: i64,
}

/// The oldest due action of a type (`PENDING` or `RETRY`, `not_before` passed).
#[derive(Clone, Debug, Serialize)]
pub struct OldestDue {
    pub action_type: String,
    pub id: i64,
    pub not_before: DateTime<Utc>,
    /// Seconds since it became due.
    pub due_for_seconds: f64,
}

/// What `actions summary` shows.
#[derive(Clone, Debug, Serialize)]
pub struct ActionsSummary {
    /// Every (type, status) with at least one action, by type then status.
    pub by_type_status: Vec<TypeCount>,
    /// Per type, `PENDING` + `RETRY` (due or not): the work waiting.
    pub waiting_by_type: BTreeMap<String, i64>,
    pub oldest_due: Vec<OldestDue>,
    /// Open actions (`PENDING`, `RETRY`, `RUNNING`) by priority band: `negative`, `0`, `1-9`,
    /// `10+` (every band present, zero or not).
    pub open_by_priority: BTreeMap<&'static str, i64>,
    pub at: DateTime<Utc>,
}

/// The priority bands, in display order.
pub const PRIORITY_BANDS: [&str; 4] = ["negative", "0", "1-9", "10+"];

impl crate::store::handles::Actions<'_> {
    pub async fn actions_summary(self) -> Result<ActionsSummary, StoreError> {
        let doing = "summarising actions";
        let now = self.store.now();
        let rows = self
            .store
            .db
            .query_all_raw(self.store.stmt(
                "SELECT action_type, status, COUNT(*) AS n FROM actions GROUP BY action_type, status \
                 ORDER BY action_type, status",
                [],
            ))
            .await
            .doing(doing)?;
        let mut by_type_status = Vec::with_capacity(rows.len());
        let mut waiting_by_type: BTreeMap<String, i64> = BTreeMap::new();
        for r in rows {
            let action_type: String = r.try_get("", "action_type").doing(doing)?;
            let status: String = r.try_get("", "status").doing(doing)?;
            let count: i64 = r.try_get("", "n").doing(doing)?;
            let Ok(status) = status.parse::<ActionStatus>() else { continue };
            if matches!(status, ActionStatus::Pending | ActionStatus::Retry) {
                *waiting_by_type.entry(action_type.clone()).or_default() += count;
            }
            by_type_status.push(TypeCount { action_type, status, count });
        }

        // The oldest due row of each type: the smallest (not_before, id) among due rows.
        let values: [Value; 1] = [now.into()];
        let rows = self
            .store
            .db
            .query_all_raw(self.store.stmt(
                &format!(
                    "SELECT a.action_type, a.id, a.not_before FROM actions a \
                     JOIN (SELECT action_type, MIN(not_before) AS nb FROM actions WHERE {due} GROUP BY action_type) m \
                       ON a.action_type = m.action_type AND a.not_before = m.nb \
                     WHERE {due} ORDER BY a.action_type, a.id",
                    due = super::due_sql("$1")
                ),
                values,
            ))
            .await
            .doing(doing)?;
        let mut oldest_due: Vec<OldestDue> = Vec::new();
        for r in rows {
            let action_type: String = r.try_get("", "action_type").doing(doing)?;
            if oldest_due.last().is_some_and(|o| o.action_type == action_type) {
                continue;
            }
            let id: i64 = r.try_get("", "id").doing(doing)?;
            let not_before: DateTime<Utc> = r.try_get("", "not_before").doing(doing)?;
            let due_for_seconds = ((now - not_before).num_milliseconds() as f64 / 1000.0).max(0.0);
            oldest_due.push(OldestDue { action_type, id, not_before, due_for_seconds });
        }

        let rows = self
            .store
            .db
            .query_all_raw(self.store.stmt(
                "SELECT CASE WHEN priority < 0 THEN 'negative' WHEN priority = 0 THEN '0' \
                             WHEN priority < 10 THEN '1-9' ELSE '10+' END AS band, COUNT(*) AS n \
                 FROM actions WHERE status IN ('PENDING', 'RETRY', 'RUNNING') GROUP BY 1",
                [],
            ))
            .await
            .doing(doing)?;
        let mut open_by_priority: BTreeMap<&'static str, i64> = PRIORITY_BANDS.iter().map(|b| (*b, 0)).collect();
        for r in rows {
            let band: String = r.try_get("", "band").doing(doing)?;
            let n: i64 = r.try_get("", "n").doing(doing)?;
            if let Some(b) = PRIORITY_BANDS.iter().find(|b| **b == band) {
                open_by_priority.insert(b, n);
            }
        }
        Ok(ActionsSummary { by_type_status, waiting_by_type, oldest_due, open_by_priority, at: now })
    }

    /// `PENDING` + `RETRY` actions per type: the work waiting (served by the open partial index).
    pub async fn waiting_by_type(self) -> Result<BTreeMap<String, i64>, StoreError> {
        let doing = "counting waiting actions by type";
        let rows = self
            .store
            .db
            .query_all_raw(self.store.stmt(
                "SELECT action_type, COUNT(*) AS n FROM actions WHERE status IN ('PENDING', 'RETRY') \
                 GROUP BY action_type ORDER BY action_type",
                [],
            ))
            .await
            .doing(doing)?;
        let mut out = BTreeMap::new();
        for r in rows {
            out.insert(r.try_get::<String>("", "action_type").doing(doing)?, r.try_get::<i64>("", "n").doing(doing)?);
        }
        Ok(out)
    }
}
