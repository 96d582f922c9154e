//! The DECIDE stage's tables: `decisions` (what each rule decided in each tick and what became
//! of it), `rule_state` (each rule's persisted `state` map), `rule_cooldowns` (when a rule last
//! applied a kind of decision to a target), the tick ledger's snapshot and rules digest, and the
//! indexes the snapshot's windowed counts need.
//!
//! It adds columns to `tick_ledger` with `ALTER TABLE` and never edits the core migration.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261123_000003_decide"
    }
}

#[derive(DeriveIden)]
enum Decisions {
    Table,
    Id,
    TickId,
    Rule,
    Kind,
    Target,
    Priority,
    Reason,
    Outcome,
    CreatedAt,
}

#[derive(DeriveIden)]
enum RuleState {
    Table,
    Rule,
    StateJson,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum RuleCooldowns {
    Table,
    Rule,
    Kind,
    Target,
    AppliedAt,
}

#[derive(DeriveIden)]
enum TickLedger {
    Table,
    SnapshotJson,
    RulesDigest,
}

/// Windowed counts of the snapshot: finished rows by finish time (served by the core's
/// `ix_actions_finished (status, finished_at)`), retries by their last update, open rows by type.
const INDEXES: [&str; 4] = [
    // Live cooldowns are read, and expired ones pruned, by time.
    "CREATE INDEX IF NOT EXISTS ix_rule_cooldowns_applied ON rule_cooldowns (applied_at)",
    "CREATE INDEX IF NOT EXISTS ix_actions_retry_updated ON actions (updated_at) WHERE status = 'RETRY'",
    "CREATE INDEX IF NOT EXISTS ix_actions_open_type ON actions (status, action_type) \
     WHERE status IN ('PENDING', 'RUNNING', 'RETRY', 'DLQ')",
    "CREATE INDEX IF NOT EXISTS ix_tick_ledger_fail ON tick_ledger (started_at) WHERE status = 'FAIL'",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Decisions::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Decisions::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(Decisions::TickId).big_integer().not_null())
                    .col(ColumnDef::new(Decisions::Rule).string().not_null())
                    .col(ColumnDef::new(Decisions::Kind).string().not_null())
                    .col(ColumnDef::new(Decisions::Target).string().not_null())
                    .col(ColumnDef::new(Decisions::Priority).integer().not_null())
                    .col(ColumnDef::new(Decisions::Reason).text().not_null())
                    .col(ColumnDef::new(Decisions::Outcome).text().not_null())
                    .col(ColumnDef::new(Decisions::CreatedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("ix_decisions_tick")
                    .table(Decisions::Table)
                    .col(Decisions::TickId)
                    .col(Decisions::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(RuleState::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(RuleState::Rule).string().not_null().primary_key())
                    .col(ColumnDef::new(RuleState::StateJson).text().not_null())
                    .col(ColumnDef::new(RuleState::UpdatedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(RuleCooldowns::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(RuleCooldowns::Rule).string().not_null())
                    .col(ColumnDef::new(RuleCooldowns::Kind).string().not_null())
                    .col(ColumnDef::new(RuleCooldowns::Target).string().not_null())
                    .col(ColumnDef::new(RuleCooldowns::AppliedAt).timestamp_with_time_zone().not_null())
                    .primary_key(
                        Index::create().col(RuleCooldowns::Rule).col(RuleCooldowns::Kind).col(RuleCooldowns::Target),
                    )
                    .to_owned(),
            )
            .await?;
        for col in [TickLedger::SnapshotJson, TickLedger::RulesDigest] {
            manager
                .alter_table(
                    Table::alter().table(TickLedger::Table).add_column(ColumnDef::new(col).text().null()).to_owned(),
                )
                .await?;
        }
        for sql in INDEXES {
            manager.get_connection().execute_unprepared(sql).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [Decisions::Table.into_iden(), RuleState::Table.into_iden(), RuleCooldowns::Table.into_iden()] {
            manager.drop_table(Table::drop().table(table).if_exists().to_owned()).await?;
        }
        for col in [TickLedger::SnapshotJson, TickLedger::RulesDigest] {
            manager.alter_table(Table::alter().table(TickLedger::Table).drop_column(col).to_owned()).await?;
        }
        Ok(())
    }
}
