//! Limits per action type, kept in the database so that every claimer on every host agrees:
//! - `limits`: one row per limited type (`max_running`, `rate` as count per seconds,
//!   `daily_budget`, `partition_by`), and where it came from (`config`, `operator`, `rule`);
//! - `limit_overrides`: a temporary value of one field (a rule's `set_limit`, or an operator's)
//!   until `expires_at`;
//! - `limit_state`: per (type, partition) the day's budget use and the blocked counters; the
//!   row of partition `''` is also the gate a limited claim locks;
//! - `limit_starts`: the sliding window of starts, one row per (type, partition, claim token);
//! - `ix_actions_due_type`: due work by type, then claim order, for a claim that leaves a full
//!   type out.
//!
//! New tables only; never edits an earlier migration.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

pub struct Migration;

const DUE_TYPE_INDEX: &str = "CREATE INDEX IF NOT EXISTS ix_actions_due_type ON actions \
     (action_type, priority DESC, not_before, id) WHERE status IN ('PENDING', 'RETRY')";

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261129_000009_limits"
    }
}

#[derive(DeriveIden)]
enum Limits {
    Table,
    ActionType,
    MaxRunning,
    RateCount,
    RateSeconds,
    DailyBudget,
    PartitionBy,
    Source,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum LimitOverrides {
    Table,
    ActionType,
    Field,
    Value,
    PeriodSeconds,
    ExpiresAt,
    Reason,
    SetBy,
    SetAt,
}

#[derive(DeriveIden)]
enum LimitState {
    Table,
    ActionType,
    Part,
    BudgetDay,
    BudgetUsed,
    BudgetExhaustedAt,
    BlockedRunning,
    BlockedRate,
    BlockedBudget,
}

#[derive(DeriveIden)]
enum LimitStarts {
    Table,
    ActionType,
    Part,
    Token,
    StartedAt,
    N,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Limits::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Limits::ActionType).string().not_null().primary_key())
                    .col(ColumnDef::new(Limits::MaxRunning).big_integer().null())
                    .col(ColumnDef::new(Limits::RateCount).big_integer().null())
                    .col(ColumnDef::new(Limits::RateSeconds).big_integer().null())
                    .col(ColumnDef::new(Limits::DailyBudget).big_integer().null())
                    .col(ColumnDef::new(Limits::PartitionBy).string().null())
                    .col(ColumnDef::new(Limits::Source).string().not_null())
                    .col(ColumnDef::new(Limits::UpdatedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(LimitOverrides::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(LimitOverrides::ActionType).string().not_null())
                    .col(ColumnDef::new(LimitOverrides::Field).string().not_null())
                    .col(ColumnDef::new(LimitOverrides::Value).big_integer().not_null())
                    .col(ColumnDef::new(LimitOverrides::PeriodSeconds).big_integer().null())
                    .col(ColumnDef::new(LimitOverrides::ExpiresAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(LimitOverrides::Reason).text().not_null())
                    .col(ColumnDef::new(LimitOverrides::SetBy).string().not_null())
                    .col(ColumnDef::new(LimitOverrides::SetAt).timestamp_with_time_zone().not_null())
                    .primary_key(Index::create().col(LimitOverrides::ActionType).col(LimitOverrides::Field))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(LimitState::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(LimitState::ActionType).string().not_null())
                    .col(ColumnDef::new(LimitState::Part).string().not_null())
                    .col(ColumnDef::new(LimitState::BudgetDay).string().null())
                    .col(ColumnDef::new(LimitState::BudgetUsed).big_integer().not_null().default(0))
                    .col(ColumnDef::new(LimitState::BudgetExhaustedAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(LimitState::BlockedRunning).big_integer().not_null().default(0))
                    .col(ColumnDef::new(LimitState::BlockedRate).big_integer().not_null().default(0))
                    .col(ColumnDef::new(LimitState::BlockedBudget).big_integer().not_null().default(0))
                    .primary_key(Index::create().col(LimitState::ActionType).col(LimitState::Part))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(LimitStarts::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(LimitStarts::ActionType).string().not_null())
                    .col(ColumnDef::new(LimitStarts::Part).string().not_null())
                    .col(ColumnDef::new(LimitStarts::Token).big_integer().not_null())
                    .col(ColumnDef::new(LimitStarts::StartedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(LimitStarts::N).big_integer().not_null())
                    .primary_key(
                        Index::create().col(LimitStarts::ActionType).col(LimitStarts::Part).col(LimitStarts::Token),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("ix_limit_starts_window")
                    .table(LimitStarts::Table)
                    .col(LimitStarts::ActionType)
                    .col(LimitStarts::StartedAt)
                    .to_owned(),
            )
            .await?;
        let db = manager.get_connection();
        // A limited claim that leaves a full type out picks each due type's first rows through
        // this, instead of walking past the full type's backlog in the due index.
        db.execute_unprepared(DUE_TYPE_INDEX).await?;
        if db.get_database_backend() == DbBackend::Postgres {
            // A payload field's text, or NULL when the payload does not parse: a partitioned
            // claim must read past a row it cannot parse (that row is quarantined when claimed)
            // rather than fail. SQLite says the same with json_valid().
            db.execute_unprepared(
                "CREATE OR REPLACE FUNCTION orchestrator_json_path(doc text, path text[]) RETURNS text \
                 LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN RETURN doc::jsonb #>> path; \
                 EXCEPTION WHEN others THEN RETURN NULL; END $$",
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("DROP INDEX IF EXISTS ix_actions_due_type").await?;
        if db.get_database_backend() == DbBackend::Postgres {
            db.execute_unprepared("DROP FUNCTION IF EXISTS orchestrator_json_path(text, text[])").await?;
        }
        for t in [
            LimitStarts::Table.into_iden(),
            LimitState::Table.into_iden(),
            LimitOverrides::Table.into_iden(),
            Limits::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(t).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}
