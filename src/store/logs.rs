//! Reading execution logs. (They are written inside the transactions that change an action's
//! state, in `actions.rs`, so a log row never exists without its state change or vice versa.)

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use super::entities::{self, execution_logs};
use super::{Context, StoreError};
use crate::model::LogRow;

impl crate::store::handles::History<'_> {
    /// The last `limit` log rows, newest first, optionally of one action.
    pub async fn logs(self, action_id: Option<i64>, limit: u64) -> Result<Vec<LogRow>, StoreError> {
        self.logs_filtered(&super::LogFilter { action_id, ..Default::default() }, limit).await
    }

    /// Every log row that records an artifact (for verification).
    pub async fn artifact_logs(self) -> Result<Vec<LogRow>, StoreError> {
        let rows = execution_logs::Entity::find()
            .filter(execution_logs::Column::ArtifactRef.is_not_null())
            .order_by_asc(execution_logs::Column::Id)
            .all(&self.store.db)
            .await
            .doing("reading artifact logs")?;
        entities::convert_all(rows)
    }
}
