//! The overflow's rows in claim order: `ix_actions_due_tracked` orders by type, then
//! `part_overflow`, then claim order, the waiting rows of every type whose keys are computed.
//! A limited claim at the partition cap takes the tracked partitions' first rows
//! (`part_overflow = 0`) and the first rows the overflow partition has room for
//! (`part_overflow = 1`) through the one index, instead of walking the overflow's backlog in
//! claim order past what it can take. Rows without a computed key (every unlimited type's) stay
//! out of it. Never edits an earlier migration.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261205_000013_overflow_walk"
    }
}

const DROP: &str = "DROP INDEX IF EXISTS ix_actions_due_tracked";

const INDEX: &str = "CREATE INDEX ix_actions_due_tracked ON actions \
     (action_type, part_overflow, priority DESC, not_before, id) \
     WHERE status IN ('PENDING', 'RETRY') AND part_overflow IS NOT NULL";

/// The index as `m20261204_000012_tracked_keys` made it.
const TRACKED_ONLY: &str = "CREATE INDEX ix_actions_due_tracked ON actions \
     (action_type, priority DESC, not_before, id) WHERE status IN ('PENDING', 'RETRY') AND part_overflow = 0";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(DROP).await?;
        db.execute_unprepared(INDEX).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(DROP).await?;
        db.execute_unprepared(TRACKED_ONLY).await?;
        Ok(())
    }
}
