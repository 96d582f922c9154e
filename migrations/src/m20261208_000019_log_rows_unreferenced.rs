//! PostgreSQL: `execution_logs` no longer declares its foreign key to `actions`. The key cost
//! every log row a trigger and a `SELECT … FOR KEY SHARE` of its action, about 12 % of a 50k
//! NOOP drain (8,200 against 9,300 /s, BENCHMARKS.md "Round 2"),
//! for nothing the code needs: a log row is only ever written in the transaction that has just
//! changed its action, under the claim's fence, and the purge deletes an action's log rows
//! itself. SQLite keeps the key (dropping it means rebuilding the table); its check is a
//! primary key lookup in the same process, and the purge's own delete leaves the cascade
//! nothing to do. Never edits an earlier migration.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261208_000019_log_rows_unreferenced"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_connection().get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        manager
            .get_connection()
            .execute_unprepared("ALTER TABLE execution_logs DROP CONSTRAINT IF EXISTS fk_execution_logs_action")
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_connection().get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        // Log rows whose action is gone would fail the key: they go first.
        manager
            .get_connection()
            .execute_unprepared(
                "DELETE FROM execution_logs l WHERE NOT EXISTS (SELECT 1 FROM actions a WHERE a.id = l.action_id); \
                 ALTER TABLE execution_logs ADD CONSTRAINT fk_execution_logs_action FOREIGN KEY (action_id) \
                 REFERENCES actions (id) ON DELETE CASCADE",
            )
            .await
            .map(|_| ())
    }
}
