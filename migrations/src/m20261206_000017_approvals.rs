//! Approvals (issue 25, part 3): the status `AWAITING_APPROVAL` joins the actions' status
//! check, and six nullable columns on `actions` hold an approval: when a waiting action expires
//! (`approval_expires_at`), the request it will send rendered once in proof mode
//! (`approval_preview`, `approval_preview_sha256`), the digest approved (`approval_sha256`),
//! who decided and why (`approval_by`, `approval_reason`). A partial index over the waiting rows
//! serves the expiry and the metrics without touching the rest of the queue.
//!
//! PostgreSQL replaces the column's check constraint. SQLite cannot alter a check; widening a
//! check's list changes nothing stored, so the table's stored definition is edited in place
//! (the procedure of SQLite's ALTER TABLE documentation, "other kinds of table schema changes":
//! `writable_schema`, the schema version bumped so every connection reads it again). Rebuilding
//! the table instead would drop it, and with it (foreign keys on) every execution log row.
//! Nullable columns without defaults rewrite no row. Never edits an earlier migration.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, Statement};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261206_000017_approvals"
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum Actions {
    Table,
    ApprovalExpiresAt,
    ApprovalPreview,
    ApprovalPreviewSha256,
    ApprovalSha256,
    ApprovalBy,
    ApprovalReason,
}

const OLD_LIST: &str = "'CANCELLED')";
const NEW_LIST: &str = "'CANCELLED', 'AWAITING_APPROVAL')";
const PG_CHECK: &str = "ALTER TABLE actions DROP CONSTRAINT IF EXISTS actions_status_check; \
    ALTER TABLE actions ADD CONSTRAINT actions_status_check \
    CHECK (status IN ('PENDING', 'RUNNING', 'SUCCESS', 'RETRY', 'DLQ', 'CANCELLED', 'AWAITING_APPROVAL'))";
const PG_CHECK_DOWN: &str = "ALTER TABLE actions DROP CONSTRAINT IF EXISTS actions_status_check; \
    ALTER TABLE actions ADD CONSTRAINT actions_status_check \
    CHECK (status IN ('PENDING', 'RUNNING', 'SUCCESS', 'RETRY', 'DLQ', 'CANCELLED'))";
const INDEX: &str = "CREATE INDEX IF NOT EXISTS ix_actions_awaiting ON actions (created_at) \
    WHERE status = 'AWAITING_APPROVAL'";
/// Going down, a waiting action cannot stay in a status the old check refuses.
const CANCEL_WAITING: &str = "UPDATE actions SET status = 'CANCELLED', last_error = 'approval: migration reverted' \
    WHERE status = 'AWAITING_APPROVAL'";

/// SQLite: the stored definition of `actions` with its status list changed from `from` to `to`.
async fn sqlite_check(manager: &SchemaManager<'_>, from: &str, to: &str) -> Result<(), DbErr> {
    let db = manager.get_connection();
    let q = |sql: &str| Statement::from_string(DbBackend::Sqlite, sql.to_string());
    let row = db
        .query_one_raw(q("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'actions'"))
        .await?
        .ok_or_else(|| DbErr::Migration("actions is missing".into()))?;
    let table: String = row.try_get("", "sql")?;
    if !table.contains(from) {
        return Err(DbErr::Migration(format!("actions' status check is not the expected one: {table}")));
    }
    let version: i64 = db
        .query_one_raw(q("PRAGMA schema_version"))
        .await?
        .ok_or_else(|| DbErr::Migration("no schema_version".into()))?
        .try_get_by_index(0)?;
    let edited = table.replacen(from, to, 1).replace('\'', "''");
    db.execute_unprepared("PRAGMA writable_schema = ON").await?;
    let edit = db
        .execute_unprepared(&format!(
            "UPDATE sqlite_master SET sql = '{edited}' WHERE type = 'table' AND name = 'actions'"
        ))
        .await;
    db.execute_unprepared(&format!("PRAGMA schema_version = {}", version + 1)).await?;
    db.execute_unprepared("PRAGMA writable_schema = OFF").await?;
    edit.map(|_| ())
}

fn columns() -> [(Actions, bool); 6] {
    [
        (Actions::ApprovalExpiresAt, false),
        (Actions::ApprovalPreview, true),
        (Actions::ApprovalPreviewSha256, false),
        (Actions::ApprovalSha256, false),
        (Actions::ApprovalBy, false),
        (Actions::ApprovalReason, true),
    ]
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        match manager.get_database_backend() {
            DbBackend::Postgres => manager.get_connection().execute_unprepared(PG_CHECK).await.map(|_| ())?,
            _ => sqlite_check(manager, OLD_LIST, NEW_LIST).await?,
        }
        // One column per statement: SQLite adds one at a time.
        for (col, text) in columns() {
            let mut def = ColumnDef::new(col);
            match (col, text) {
                (Actions::ApprovalExpiresAt, _) => def.timestamp_with_time_zone(),
                (_, true) => def.text(),
                _ => def.string(),
            };
            manager.alter_table(Table::alter().table(Actions::Table).add_column(def.null()).to_owned()).await?;
        }
        manager.get_connection().execute_unprepared(INDEX).await.map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("DROP INDEX IF EXISTS ix_actions_awaiting").await?;
        for (col, _) in columns() {
            manager.alter_table(Table::alter().table(Actions::Table).drop_column(col).to_owned()).await?;
        }
        db.execute_unprepared(CANCEL_WAITING).await?;
        match manager.get_database_backend() {
            DbBackend::Postgres => db.execute_unprepared(PG_CHECK_DOWN).await.map(|_| ()),
            _ => sqlite_check(manager, NEW_LIST, OLD_LIST).await,
        }
    }
}
