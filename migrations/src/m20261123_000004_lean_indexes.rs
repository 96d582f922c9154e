//! Fewer index writes per claim, completion and enqueue, measured by the drain and bulk-enqueue
//! benchmarks (see `BENCHMARKS.md`):
//! - `ix_actions_type_status (action_type, status)` covered every row, history included, and no
//!   hot query needs it: open counts by type use the partial `ix_actions_open_type`, and listing
//!   by type is a bounded operator query. Dropped.
//! - `ix_actions_finished (status, finished_at)` covered every row too, so a claim (which changes
//!   `status`) rewrote its entry. Its readers (the snapshot's windowed counts, retention's purge)
//!   always ask for `finished_at` in a range, so it becomes partial over finished rows only.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261123_000004_lean_indexes"
    }
}

const UP: [&str; 3] = [
    "DROP INDEX IF EXISTS ix_actions_type_status",
    "DROP INDEX IF EXISTS ix_actions_finished",
    "CREATE INDEX IF NOT EXISTS ix_actions_finished ON actions (status, finished_at) WHERE finished_at IS NOT NULL",
];

const DOWN: [&str; 3] = [
    "DROP INDEX IF EXISTS ix_actions_finished",
    "CREATE INDEX IF NOT EXISTS ix_actions_finished ON actions (status, finished_at)",
    "CREATE INDEX IF NOT EXISTS ix_actions_type_status ON actions (action_type, status)",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for sql in UP {
            manager.get_connection().execute_unprepared(sql).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for sql in DOWN {
            manager.get_connection().execute_unprepared(sql).await?;
        }
        Ok(())
    }
}
