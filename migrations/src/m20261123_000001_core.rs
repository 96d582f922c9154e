//! The core tables: control flags, leases, the action queue, the tick ledger and execution logs.
//!
//! Indexes are shaped for the hot queries, not for history: the claim and the open-state counts
//! use partial indexes over the non-terminal statuses, so finished rows cost them nothing.
//! Timestamps are `timestamp with time zone` on PostgreSQL and RFC 3339 text on SQLite.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261123_000001_core"
    }
}

#[derive(DeriveIden)]
enum ControlFlags {
    Table,
    Id,
    Paused,
    Killed,
    ProofMode,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Leases {
    Table,
    Name,
    Owner,
    Epoch,
    AcquiredAt,
    RenewedAt,
    ExpiresAt,
}

#[derive(DeriveIden)]
enum Actions {
    Table,
    Id,
    IdempotencyKey,
    ActionType,
    PayloadJson,
    Status,
    Priority,
    NotBefore,
    Attempts,
    MaxAttempts,
    LastError,
    ClaimedEpoch,
    ClaimedAt,
    CreatedAt,
    UpdatedAt,
    FinishedAt,
}

#[derive(DeriveIden)]
enum TickLedger {
    Table,
    Id,
    StartedAt,
    FinishedAt,
    Status,
    Owner,
    Epoch,
    ActionsAttempted,
    ActionsSucceeded,
    Notes,
}

#[derive(DeriveIden)]
enum ExecutionLogs {
    Table,
    Id,
    ActionId,
    TickId,
    Ts,
    Level,
    Message,
    ArtifactRef,
    ArtifactSha256,
}

const ACTION_STATUSES: [&str; 6] = ["PENDING", "RUNNING", "SUCCESS", "RETRY", "DLQ", "CANCELLED"];
const TICK_STATUSES: [&str; 6] = ["SUCCESS", "PARTIAL", "FAIL", "IDLE", "PAUSED", "KILLED"];
const LOG_LEVELS: [&str; 3] = ["INFO", "WARNING", "ERROR"];

/// Hand-written because the partial `WHERE` is the point of these indexes; both backends accept it.
const PARTIAL_INDEXES: [&str; 3] = [
    // The claim: due work by priority, then age, then id.
    "CREATE INDEX IF NOT EXISTS ix_actions_due ON actions (priority DESC, not_before, id) \
     WHERE status IN ('PENDING', 'RETRY')",
    // Counts and oldest-age of the open states; never touches finished history.
    "CREATE INDEX IF NOT EXISTS ix_actions_open ON actions (status, created_at) \
     WHERE status IN ('PENDING', 'RUNNING', 'RETRY', 'DLQ')",
    // Rescue of orphaned claims.
    "CREATE INDEX IF NOT EXISTS ix_actions_running ON actions (claimed_epoch, claimed_at) \
     WHERE status = 'RUNNING'",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ControlFlags::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(ControlFlags::Id)
                            .integer()
                            .not_null()
                            .primary_key()
                            .check(Expr::col(ControlFlags::Id).eq(1)),
                    )
                    .col(ColumnDef::new(ControlFlags::Paused).boolean().not_null().default(false))
                    .col(ColumnDef::new(ControlFlags::Killed).boolean().not_null().default(false))
                    .col(ColumnDef::new(ControlFlags::ProofMode).boolean().not_null().default(true))
                    .col(
                        ColumnDef::new(ControlFlags::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null()
                            .default(Expr::current_timestamp()),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::insert()
                    .into_table(ControlFlags::Table)
                    .columns([ControlFlags::Id])
                    .values_panic([1.into()])
                    .on_conflict(OnConflict::column(ControlFlags::Id).do_nothing().to_owned())
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Leases::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Leases::Name).string().not_null().primary_key())
                    .col(ColumnDef::new(Leases::Owner).string().not_null())
                    .col(ColumnDef::new(Leases::Epoch).big_integer().not_null())
                    .col(ColumnDef::new(Leases::AcquiredAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Leases::RenewedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Leases::ExpiresAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Actions::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Actions::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(Actions::IdempotencyKey).string().not_null().unique_key())
                    .col(ColumnDef::new(Actions::ActionType).string().not_null())
                    .col(ColumnDef::new(Actions::PayloadJson).text().not_null())
                    .col(
                        ColumnDef::new(Actions::Status)
                            .string()
                            .not_null()
                            .default("PENDING")
                            .check(Expr::col(Actions::Status).is_in(ACTION_STATUSES)),
                    )
                    .col(ColumnDef::new(Actions::Priority).integer().not_null().default(0))
                    .col(ColumnDef::new(Actions::NotBefore).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Actions::Attempts).integer().not_null().default(0))
                    .col(ColumnDef::new(Actions::MaxAttempts).integer().not_null().default(3))
                    .col(ColumnDef::new(Actions::LastError).text().null())
                    .col(ColumnDef::new(Actions::ClaimedEpoch).big_integer().null())
                    .col(ColumnDef::new(Actions::ClaimedAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(Actions::CreatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Actions::UpdatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Actions::FinishedAt).timestamp_with_time_zone().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("ix_actions_finished")
                    .table(Actions::Table)
                    .col(Actions::Status)
                    .col(Actions::FinishedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("ix_actions_type_status")
                    .table(Actions::Table)
                    .col(Actions::ActionType)
                    .col(Actions::Status)
                    .to_owned(),
            )
            .await?;
        for sql in PARTIAL_INDEXES {
            manager.get_connection().execute_unprepared(sql).await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(TickLedger::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(TickLedger::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(TickLedger::StartedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(TickLedger::FinishedAt).timestamp_with_time_zone().null())
                    .col(
                        ColumnDef::new(TickLedger::Status)
                            .string()
                            .not_null()
                            .check(Expr::col(TickLedger::Status).is_in(TICK_STATUSES)),
                    )
                    .col(ColumnDef::new(TickLedger::Owner).string().not_null())
                    .col(ColumnDef::new(TickLedger::Epoch).big_integer().not_null())
                    .col(ColumnDef::new(TickLedger::ActionsAttempted).integer().not_null().default(0))
                    .col(ColumnDef::new(TickLedger::ActionsSucceeded).integer().not_null().default(0))
                    .col(ColumnDef::new(TickLedger::Notes).text().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("ix_tick_ledger_started")
                    .table(TickLedger::Table)
                    .col(TickLedger::StartedAt)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(ExecutionLogs::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(ExecutionLogs::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(ExecutionLogs::ActionId).big_integer().not_null())
                    .col(ColumnDef::new(ExecutionLogs::TickId).big_integer().null())
                    .col(ColumnDef::new(ExecutionLogs::Ts).timestamp_with_time_zone().not_null())
                    .col(
                        ColumnDef::new(ExecutionLogs::Level)
                            .string()
                            .not_null()
                            .check(Expr::col(ExecutionLogs::Level).is_in(LOG_LEVELS)),
                    )
                    .col(ColumnDef::new(ExecutionLogs::Message).text().not_null())
                    .col(ColumnDef::new(ExecutionLogs::ArtifactRef).text().null())
                    .col(ColumnDef::new(ExecutionLogs::ArtifactSha256).string().null())
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_execution_logs_action")
                            .from(ExecutionLogs::Table, ExecutionLogs::ActionId)
                            .to(Actions::Table, Actions::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        for (name, col) in
            [("ix_execution_logs_action", ExecutionLogs::ActionId), ("ix_execution_logs_tick", ExecutionLogs::TickId)]
        {
            manager
                .create_index(
                    Index::create()
                        .if_not_exists()
                        .name(name)
                        .table(ExecutionLogs::Table)
                        .col(col)
                        .col(ExecutionLogs::Id)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            ExecutionLogs::Table.into_iden(),
            TickLedger::Table.into_iden(),
            Actions::Table.into_iden(),
            Leases::Table.into_iden(),
            ControlFlags::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(table).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}
