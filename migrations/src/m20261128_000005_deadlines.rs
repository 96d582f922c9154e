//! Deadlines: `actions.expires_at`, when set the moment after which the action must not start.
//! A tick moves expired waiting actions to `DLQ` (reason `expired`) and the claim skips them.
//!
//! A nullable column (no deadline: `NULL`, every existing row) and a partial index over the
//! waiting rows that carry one, so finding the expired costs nothing while no action has a
//! deadline. Never edits an earlier migration.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261128_000005_deadlines"
    }
}

#[derive(DeriveIden)]
enum Actions {
    Table,
    ExpiresAt,
}

const INDEX: &str = "CREATE INDEX IF NOT EXISTS ix_actions_expiry ON actions (expires_at) \
                     WHERE expires_at IS NOT NULL AND status IN ('PENDING', 'RETRY')";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Actions::Table)
                    .add_column(ColumnDef::new(Actions::ExpiresAt).timestamp_with_time_zone().null())
                    .to_owned(),
            )
            .await?;
        manager.get_connection().execute_unprepared(INDEX).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared("DROP INDEX IF EXISTS ix_actions_expiry").await?;
        manager.alter_table(Table::alter().table(Actions::Table).drop_column(Actions::ExpiresAt).to_owned()).await?;
        Ok(())
    }
}
