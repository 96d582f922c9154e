//! Maintenance windows: `windows`, one row per window an operator, the config or a rule opened.
//! A window holds the actions it matches (`action_types`, a JSON array of type names, and
//! optionally one payload field's value) while it is open: from `starts_at` to `ends_at`, or,
//! with `cron`, for `duration_seconds` from each occurrence of the cron expression in
//! `time_zone` (from `starts_at`, until `ends_at` when set). `ended_at` is set when it is ended
//! early; ended and past rows stay for the record. `ix_windows_live` finds the rows that may be
//! open (not ended) by their end, so the claim's look at open windows reads none of the past.
//!
//! A new table only; never edits an earlier migration.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::ConnectionTrait;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261206_000016_windows"
    }
}

#[derive(DeriveIden)]
enum Windows {
    Table,
    Id,
    ActionTypes,
    FieldPath,
    FieldValue,
    StartsAt,
    EndsAt,
    Cron,
    DurationSeconds,
    TimeZone,
    Reason,
    OpenedBy,
    CreatedAt,
    EndedAt,
}

const LIVE_INDEX: &str = "CREATE INDEX IF NOT EXISTS ix_windows_live ON windows (ends_at) WHERE ended_at IS NULL";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Windows::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Windows::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(Windows::ActionTypes).text().not_null())
                    .col(ColumnDef::new(Windows::FieldPath).string().null())
                    .col(ColumnDef::new(Windows::FieldValue).text().null())
                    .col(ColumnDef::new(Windows::StartsAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Windows::EndsAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(Windows::Cron).string().null())
                    .col(ColumnDef::new(Windows::DurationSeconds).big_integer().null())
                    .col(ColumnDef::new(Windows::TimeZone).string().null())
                    .col(ColumnDef::new(Windows::Reason).text().not_null())
                    .col(ColumnDef::new(Windows::OpenedBy).string().not_null())
                    .col(ColumnDef::new(Windows::CreatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Windows::EndedAt).timestamp_with_time_zone().null())
                    .to_owned(),
            )
            .await?;
        manager.get_connection().execute_unprepared(LIVE_INDEX).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared("DROP INDEX IF EXISTS ix_windows_live").await?;
        manager.drop_table(Table::drop().table(Windows::Table).if_exists().to_owned()).await
    }
}
