//! A tick held back by a `throttle` is recorded as `THROTTLED`, never as `IDLE`: the tick
//! ledger's status check gains that value.
//!
//! PostgreSQL replaces the column's check constraint. SQLite cannot alter a check, so the table
//! is rebuilt from its own stored definition with the one list changed, its rows copied with
//! their ids, and its indexes recreated from their stored definitions (no other table refers
//! to `tick_ledger`). Never edits an earlier migration.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, Statement};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261128_000006_throttled_ticks"
    }
}

const OLD_LIST: &str = "'KILLED')";
const NEW_LIST: &str = "'KILLED', 'THROTTLED')";
const PG_UP: &str = "ALTER TABLE tick_ledger DROP CONSTRAINT IF EXISTS tick_ledger_status_check; \
    ALTER TABLE tick_ledger ADD CONSTRAINT tick_ledger_status_check \
    CHECK (status IN ('SUCCESS', 'PARTIAL', 'FAIL', 'IDLE', 'PAUSED', 'KILLED', 'THROTTLED'))";
const PG_DOWN: &str = "UPDATE tick_ledger SET status = 'SUCCESS' WHERE status = 'THROTTLED'; \
    ALTER TABLE tick_ledger DROP CONSTRAINT IF EXISTS tick_ledger_status_check; \
    ALTER TABLE tick_ledger ADD CONSTRAINT tick_ledger_status_check \
    CHECK (status IN ('SUCCESS', 'PARTIAL', 'FAIL', 'IDLE', 'PAUSED', 'KILLED'))";

/// Rebuilds SQLite's `tick_ledger` with its status list changed from `from` to `to`.
async fn rebuild_sqlite(manager: &SchemaManager<'_>, from: &str, to: &str) -> Result<(), DbErr> {
    let db = manager.get_connection();
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT type, sql FROM sqlite_master WHERE tbl_name = 'tick_ledger' AND sql IS NOT NULL",
        ))
        .await?;
    let mut table = None;
    let mut indexes = Vec::new();
    for r in rows {
        let kind: String = r.try_get("", "type")?;
        let sql: String = r.try_get("", "sql")?;
        if kind == "table" {
            table = Some(sql);
        } else if kind == "index" {
            indexes.push(sql);
        }
    }
    let table = table.ok_or_else(|| DbErr::Migration("tick_ledger is missing".into()))?;
    if !table.contains(from) {
        return Err(DbErr::Migration(format!("tick_ledger's status check is not the expected one: {table}")));
    }
    let create = table.replacen(from, to, 1).replacen("tick_ledger", "tick_ledger_rebuilt", 1);
    db.execute_unprepared(&create).await?;
    db.execute_unprepared("INSERT INTO tick_ledger_rebuilt SELECT * FROM tick_ledger").await?;
    db.execute_unprepared("DROP TABLE tick_ledger").await?;
    db.execute_unprepared("ALTER TABLE tick_ledger_rebuilt RENAME TO tick_ledger").await?;
    for sql in indexes {
        db.execute_unprepared(&sql).await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        match manager.get_database_backend() {
            DbBackend::Postgres => manager.get_connection().execute_unprepared(PG_UP).await.map(|_| ()),
            _ => rebuild_sqlite(manager, OLD_LIST, NEW_LIST).await,
        }
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        match manager.get_database_backend() {
            DbBackend::Postgres => manager.get_connection().execute_unprepared(PG_DOWN).await.map(|_| ()),
            _ => {
                manager
                    .get_connection()
                    .execute_unprepared("UPDATE tick_ledger SET status = 'SUCCESS' WHERE status = 'THROTTLED'")
                    .await?;
                rebuild_sqlite(manager, NEW_LIST, OLD_LIST).await
            }
        }
    }
}
