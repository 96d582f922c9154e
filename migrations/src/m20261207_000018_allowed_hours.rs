//! Allowed hours: `limits.allowed_hours`, the times of day a type's actions may start, as
//! `HH:MM-HH:MM ZONE` (`09:00-21:00 Europe/Madrid`), or `NULL` for every hour. Outside them the
//! claim leaves the type's due rows where they are, as an open window does. Nullable and
//! without a default, so adding it rewrites no row on either backend. Never edits an earlier
//! migration.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261207_000018_allowed_hours"
    }
}

#[derive(DeriveIden)]
enum Limits {
    Table,
    AllowedHours,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Limits::Table)
                    .add_column(ColumnDef::new(Limits::AllowedHours).string().null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(Limits::Table).drop_column(Limits::AllowedHours).to_owned()).await
    }
}
