//! Reading execution logs. (They are written inside the transactions that change an action's
//! state, in `actions.rs`, so a log row never exists without its state change or vice versa.)

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::entities::{self, execution_logs};
use super::{Context, Store, StoreError};
use crate::model::LogRow;

impl Store {
    /// The last `limit` log rows, newest first, optionally of one action.
    pub async fn logs(&self, action_id: Option<i64>, limit: u64) -> Result<Vec<LogRow>, StoreError> {
        let mut q = execution_logs::Entity::find();
        if let Some(id) = action_id {
            q = q.filter(execution_logs::Column::ActionId.eq(id));
        }
        let rows = q
            .order_by_desc(execution_logs::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await
            .doing("reading execution logs")?;
        entities::convert_all(rows)
    }

    /// Every log row that records an artifact (for verification).
    pub async fn artifact_logs(&self) -> Result<Vec<LogRow>, StoreError> {
        let rows = execution_logs::Entity::find()
            .filter(execution_logs::Column::ArtifactRef.is_not_null())
            .order_by_asc(execution_logs::Column::Id)
            .all(&self.db)
            .await
            .doing("reading artifact logs")?;
        entities::convert_all(rows)
    }
}
