//! Partition keys: `actions.part_key`, the value of a partitioned limit's `partition_by` field
//! for a waiting row of that type (`''` when the field is missing or the payload does not
//! parse; `NULL` until a limited claim computes it, and for every other type), and
//! `limit_state.part_path`, on a type's gate row the path its rows' keys were computed for.
//!
//! `ix_actions_due_part` orders the waiting rows by type, key, then claim order, so a limited
//! claim can take the first rows of each partition with room (one index probe per partition)
//! instead of walking past the backlog of every full one. It also holds the rows still without
//! a key, so the claim finds the ones to compute without a scan. Never edits an earlier
//! migration.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261203_000011_partition_keys"
    }
}

#[derive(DeriveIden)]
enum Actions {
    Table,
    PartKey,
}

#[derive(DeriveIden)]
enum LimitState {
    Table,
    PartPath,
}

const INDEX: &str = "CREATE INDEX IF NOT EXISTS ix_actions_due_part ON actions \
     (action_type, part_key, priority DESC, not_before, id) WHERE status IN ('PENDING', 'RETRY')";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Actions::Table)
                    .add_column(ColumnDef::new(Actions::PartKey).text().null())
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(LimitState::Table)
                    .add_column(ColumnDef::new(LimitState::PartPath).text().null())
                    .to_owned(),
            )
            .await?;
        manager.get_connection().execute_unprepared(INDEX).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared("DROP INDEX IF EXISTS ix_actions_due_part").await?;
        manager
            .alter_table(Table::alter().table(LimitState::Table).drop_column(LimitState::PartPath).to_owned())
            .await?;
        manager.alter_table(Table::alter().table(Actions::Table).drop_column(Actions::PartKey).to_owned()).await?;
        Ok(())
    }
}
