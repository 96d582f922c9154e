//! The `throttle` brake moves into the database, so that every claimer on every host honours
//! it: `control_flags.throttle_remaining` attempts may still start until
//! `control_flags.throttle_until`; past that (or `NULL`) there is no throttle. Nullable
//! columns; never edits an earlier migration.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261128_000008_throttle"
    }
}

#[derive(DeriveIden)]
enum ControlFlags {
    Table,
    ThrottleRemaining,
    ThrottleUntil,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for col in [
            ColumnDef::new(ControlFlags::ThrottleRemaining).integer().null().to_owned(),
            ColumnDef::new(ControlFlags::ThrottleUntil).timestamp_with_time_zone().null().to_owned(),
        ] {
            let mut col = col;
            manager.alter_table(Table::alter().table(ControlFlags::Table).add_column(&mut col).to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for col in [ControlFlags::ThrottleUntil, ControlFlags::ThrottleRemaining] {
            manager.alter_table(Table::alter().table(ControlFlags::Table).drop_column(col).to_owned()).await?;
        }
        Ok(())
    }
}
