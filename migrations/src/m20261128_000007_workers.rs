//! Workers and claims of their own: the `workers` table (one row per registered executor, with
//! its heartbeat), and on `actions` the claim of one attempt: a token unique for all time, the
//! worker that holds it, the deadline it runs under and the mode (proof or real) it was claimed
//! in. Claim tokens come from a sequence: PostgreSQL's `claim_tokens`, or on SQLite (one
//! writer) the `claim_tokens` row of a one-column counter table.
//!
//! Nullable columns only: every existing row reads as "no claim of its own", which the rescue
//! treats as orphaned. Never edits an earlier migration.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261128_000007_workers"
    }
}

#[derive(DeriveIden)]
enum Actions {
    Table,
    ClaimToken,
    ClaimedBy,
    ClaimDeadline,
    ClaimProof,
}

#[derive(DeriveIden)]
enum Workers {
    Table,
    Id,
    Host,
    Pid,
    Version,
    StartedAt,
    HeartbeatAt,
    Concurrency,
    Types,
    InFlight,
    Done,
    Failed,
    Draining,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite adds one column per ALTER.
        for col in [
            ColumnDef::new(Actions::ClaimToken).big_integer().null().to_owned(),
            ColumnDef::new(Actions::ClaimedBy).string().null().to_owned(),
            ColumnDef::new(Actions::ClaimDeadline).timestamp_with_time_zone().null().to_owned(),
            ColumnDef::new(Actions::ClaimProof).boolean().null().to_owned(),
        ] {
            let mut col = col;
            manager.alter_table(Table::alter().table(Actions::Table).add_column(&mut col).to_owned()).await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(Workers::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Workers::Id).string().not_null().primary_key())
                    .col(ColumnDef::new(Workers::Host).string().not_null())
                    .col(ColumnDef::new(Workers::Pid).big_integer().not_null())
                    .col(ColumnDef::new(Workers::Version).string().not_null())
                    .col(ColumnDef::new(Workers::StartedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Workers::HeartbeatAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Workers::Concurrency).integer().not_null())
                    .col(ColumnDef::new(Workers::Types).string().not_null())
                    .col(ColumnDef::new(Workers::InFlight).integer().not_null().default(0))
                    .col(ColumnDef::new(Workers::Done).big_integer().not_null().default(0))
                    .col(ColumnDef::new(Workers::Failed).big_integer().not_null().default(0))
                    .col(ColumnDef::new(Workers::Draining).boolean().not_null().default(false))
                    .to_owned(),
            )
            .await?;
        let db = manager.get_connection();
        match db.get_database_backend() {
            DbBackend::Postgres => {
                db.execute_unprepared("CREATE SEQUENCE IF NOT EXISTS claim_tokens").await?;
            }
            _ => {
                db.execute_unprepared("CREATE TABLE IF NOT EXISTS claim_tokens (last BIGINT NOT NULL)").await?;
                db.execute_unprepared(
                    "INSERT INTO claim_tokens (last) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM claim_tokens)",
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        match db.get_database_backend() {
            DbBackend::Postgres => db.execute_unprepared("DROP SEQUENCE IF EXISTS claim_tokens").await?,
            _ => db.execute_unprepared("DROP TABLE IF EXISTS claim_tokens").await?,
        };
        manager.drop_table(Table::drop().table(Workers::Table).if_exists().to_owned()).await?;
        for col in [Actions::ClaimProof, Actions::ClaimDeadline, Actions::ClaimedBy, Actions::ClaimToken] {
            manager.alter_table(Table::alter().table(Actions::Table).drop_column(col).to_owned()).await?;
        }
        Ok(())
    }
}
