//! Tracked keys: `actions.part_overflow`, on a waiting row of a partitioned type whose key is
//! computed, whether that key counts in the shared overflow partition (1: a value not tracked)
//! or in its own (0: a tracked value, or `''`); `NULL` with the key. `ix_actions_due_tracked`
//! orders the waiting rows of tracked keys by type, then claim order, so a limited claim at the
//! partition cap (the overflow full, no room to track another value) takes the first rows of
//! the tracked partitions in claim order without one probe per tracked value, and never reads
//! the overflow's held backlog.
//!
//! The keys computed before this migration have no flag: every type's recorded path is
//! forgotten (`limit_state.part_path`), so the next limited claim computes the keys and flags
//! of all its waiting rows. Never edits an earlier migration.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261204_000012_tracked_keys"
    }
}

#[derive(DeriveIden)]
enum Actions {
    Table,
    PartOverflow,
}

const INDEX: &str = "CREATE INDEX IF NOT EXISTS ix_actions_due_tracked ON actions \
     (action_type, priority DESC, not_before, id) WHERE status IN ('PENDING', 'RETRY') AND part_overflow = 0";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Actions::Table)
                    .add_column(ColumnDef::new(Actions::PartOverflow).integer().null())
                    .to_owned(),
            )
            .await?;
        let db = manager.get_connection();
        db.execute_unprepared(INDEX).await?;
        db.execute_unprepared("UPDATE limit_state SET part_path = NULL WHERE part = ''").await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared("DROP INDEX IF EXISTS ix_actions_due_tracked").await?;
        manager.alter_table(Table::alter().table(Actions::Table).drop_column(Actions::PartOverflow).to_owned()).await?;
        Ok(())
    }
}
