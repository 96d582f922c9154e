//! Trace context: `actions.traceparent`, the W3C `traceparent` an action was enqueued under
//! (`enqueue --traceparent`, the API's header, a rule's tick), or `NULL`. The executor makes an
//! action's first attempt a child of it and links each retry's new trace to it. Nullable and
//! without a default, so adding it rewrites no row on either backend. Never edits an earlier
//! migration.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261205_000014_traceparent"
    }
}

#[derive(DeriveIden)]
enum Actions {
    Table,
    Traceparent,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Actions::Table)
                    .add_column(ColumnDef::new(Actions::Traceparent).string().null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(Actions::Table).drop_column(Actions::Traceparent).to_owned()).await
    }
}
