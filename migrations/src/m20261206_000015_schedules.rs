//! Schedules: the `schedules` table, one row per named schedule (from the config or an
//! operator): its cron expression and time zone, the action it enqueues, its misfire policy,
//! the on/off switches (`enabled` from its definition, `paused` by an operator or a rule), and
//! what the leader fired: the last slot (the exactly-once mark every fire moves forward under
//! the lease's fence), the next slot (a lower bound: the leader looks at a schedule only once it
//! is due, `NULL` meaning "look now") and the counts. A new table only; never edits an earlier migration.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261206_000015_schedules"
    }
}

#[derive(DeriveIden)]
enum Schedules {
    Table,
    Name,
    Source,
    Cron,
    Timezone,
    ActionType,
    PayloadJson,
    Priority,
    MaxAttempts,
    DeadlineSeconds,
    Misfire,
    CatchUpCap,
    MisfireGraceSeconds,
    Enabled,
    Paused,
    PausedReason,
    Since,
    LastSlot,
    LastFiredAt,
    NextSlot,
    Fires,
    Misfires,
    CreatedAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Schedules::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Schedules::Name).string().not_null().primary_key())
                    .col(ColumnDef::new(Schedules::Source).string().not_null())
                    .col(ColumnDef::new(Schedules::Cron).string().not_null())
                    .col(ColumnDef::new(Schedules::Timezone).string().not_null())
                    .col(ColumnDef::new(Schedules::ActionType).string().not_null())
                    .col(ColumnDef::new(Schedules::PayloadJson).text().not_null())
                    .col(ColumnDef::new(Schedules::Priority).integer().not_null())
                    .col(ColumnDef::new(Schedules::MaxAttempts).integer().not_null())
                    .col(ColumnDef::new(Schedules::DeadlineSeconds).big_integer().null())
                    .col(ColumnDef::new(Schedules::Misfire).string().not_null())
                    .col(ColumnDef::new(Schedules::CatchUpCap).integer().not_null())
                    .col(ColumnDef::new(Schedules::MisfireGraceSeconds).big_integer().not_null())
                    .col(ColumnDef::new(Schedules::Enabled).boolean().not_null())
                    .col(ColumnDef::new(Schedules::Paused).boolean().not_null())
                    .col(ColumnDef::new(Schedules::PausedReason).string().null())
                    .col(ColumnDef::new(Schedules::Since).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Schedules::LastSlot).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(Schedules::LastFiredAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(Schedules::NextSlot).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(Schedules::Fires).big_integer().not_null().default(0))
                    .col(ColumnDef::new(Schedules::Misfires).big_integer().not_null().default(0))
                    .col(ColumnDef::new(Schedules::CreatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Schedules::UpdatedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        // The leader's look for due schedules: `next_slot IS NULL OR next_slot <= now`.
        manager
            .create_index(
                Index::create()
                    .name("ix_schedules_next_slot")
                    .table(Schedules::Table)
                    .col(Schedules::NextSlot)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Schedules::Table).to_owned()).await
    }
}
