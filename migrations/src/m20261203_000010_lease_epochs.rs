//! The lease epoch gets a counter that a hand edit of `leases` cannot send back: `lease_epochs`,
//! one row, `last` = the highest epoch ever granted. Every new term is granted
//! `max(the row's epoch + 1, last + 1)` by the acquire statement, and a trigger on `leases`
//! raises `last` in the same statement, so deleting the lease row (an old runbook's way to
//! clear a stuck lease) frees the lease without resetting the epoch to 1. Another trigger
//! refuses to delete the counter itself.
//!
//! It starts at the highest epoch stamped anywhere (the lease, the ledger, the claims), so an
//! existing database carries on upwards. A counter row kept by a trigger rather than a
//! PostgreSQL sequence: one design on both backends, read in the one acquire statement and
//! advanced in its transaction; concurrent first acquirers all ask for the same epoch and one
//! wins, where `nextval` would leave gaps and let the race decide the winner's number.
//!
//! A migration that rebuilds `leases` (SQLite's way to change a column) must create the
//! triggers again. Never edits an earlier migration.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261203_000010_lease_epochs"
    }
}

const REFUSAL: &str = "lease_epochs holds the highest lease epoch ever granted and cannot be deleted \
     (to free a stuck lease, run: orchestrator lease release --force)";

fn up_sql(backend: DbBackend) -> Vec<String> {
    let highest = |max: &str| {
        format!(
            "SELECT {max}(COALESCE((SELECT MAX(epoch) FROM leases), 0), \
             COALESCE((SELECT MAX(epoch) FROM tick_ledger), 0), \
             COALESCE((SELECT MAX(claimed_epoch) FROM actions), 0))"
        )
    };
    let create = "CREATE TABLE IF NOT EXISTS lease_epochs (last BIGINT NOT NULL)".to_string();
    let follow = "UPDATE lease_epochs SET last = NEW.epoch WHERE last < NEW.epoch;";
    match backend {
        DbBackend::Postgres => vec![
            create,
            format!(
                "INSERT INTO lease_epochs (last) {} WHERE NOT EXISTS (SELECT 1 FROM lease_epochs)",
                highest("GREATEST")
            ),
            format!(
                "CREATE OR REPLACE FUNCTION lease_epochs_follow() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN {follow} RETURN NULL; END $$"
            ),
            "DROP TRIGGER IF EXISTS lease_epochs_follow_insert ON leases".into(),
            "CREATE TRIGGER lease_epochs_follow_insert AFTER INSERT ON leases \
             FOR EACH ROW EXECUTE FUNCTION lease_epochs_follow()"
                .into(),
            "DROP TRIGGER IF EXISTS lease_epochs_follow_update ON leases".into(),
            "CREATE TRIGGER lease_epochs_follow_update AFTER UPDATE OF epoch ON leases \
             FOR EACH ROW WHEN (NEW.epoch > OLD.epoch) EXECUTE FUNCTION lease_epochs_follow()"
                .into(),
            format!(
                "CREATE OR REPLACE FUNCTION lease_epochs_kept() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN RAISE EXCEPTION '{REFUSAL}'; END $$"
            ),
            "DROP TRIGGER IF EXISTS lease_epochs_kept ON lease_epochs".into(),
            "CREATE TRIGGER lease_epochs_kept BEFORE DELETE OR TRUNCATE ON lease_epochs \
             FOR EACH STATEMENT EXECUTE FUNCTION lease_epochs_kept()"
                .into(),
        ],
        _ => vec![
            create,
            format!("INSERT INTO lease_epochs (last) {} WHERE NOT EXISTS (SELECT 1 FROM lease_epochs)", highest("MAX")),
            format!(
                "CREATE TRIGGER IF NOT EXISTS lease_epochs_follow_insert AFTER INSERT ON leases BEGIN {follow} END"
            ),
            format!(
                "CREATE TRIGGER IF NOT EXISTS lease_epochs_follow_update AFTER UPDATE OF epoch ON leases \
                 WHEN NEW.epoch > OLD.epoch BEGIN {follow} END"
            ),
            format!(
                "CREATE TRIGGER IF NOT EXISTS lease_epochs_kept BEFORE DELETE ON lease_epochs \
                 BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END"
            ),
        ],
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for sql in up_sql(db.get_database_backend()) {
            db.execute_unprepared(&sql).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let sql: &[&str] = match db.get_database_backend() {
            DbBackend::Postgres => &[
                "DROP TRIGGER IF EXISTS lease_epochs_follow_insert ON leases",
                "DROP TRIGGER IF EXISTS lease_epochs_follow_update ON leases",
                "DROP TABLE IF EXISTS lease_epochs",
                "DROP FUNCTION IF EXISTS lease_epochs_follow()",
                "DROP FUNCTION IF EXISTS lease_epochs_kept()",
            ],
            _ => &[
                "DROP TRIGGER IF EXISTS lease_epochs_follow_insert",
                "DROP TRIGGER IF EXISTS lease_epochs_follow_update",
                "DROP TABLE IF EXISTS lease_epochs",
            ],
        };
        for s in sql {
            db.execute_unprepared(s).await?;
        }
        Ok(())
    }
}
