//! Schema migrations for `orchestrator`, run idempotently at the start of every command.
//!
//! Each migration is one file, applied in order and recorded in `seaql_migrations`. A migration
//! never edits an earlier one: schema changes are new files. This crate knows nothing of the
//! queue or the lease; it only shapes the tables they live in.

pub use sea_orm_migration::prelude::*;

mod m20261123_000001_core;
mod m20261123_000003_decide;
mod m20261123_000004_lean_indexes;
mod m20261128_000005_deadlines;
mod m20261128_000006_throttled_ticks;
mod m20261128_000007_workers;
mod m20261128_000008_throttle;
mod m20261129_000009_limits;
mod m20261203_000010_lease_epochs;
mod m20261203_000011_partition_keys;
mod m20261204_000012_tracked_keys;
mod m20261205_000013_overflow_walk;
mod m20261205_000014_traceparent;
mod m20261206_000015_schedules;
mod m20261206_000016_windows;
mod m20261206_000017_approvals;
mod m20261207_000018_allowed_hours;
mod m20261208_000019_log_rows_unreferenced;

/// The ordered list of migrations.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_core::Migration),
            Box::new(m20261123_000003_decide::Migration),
            Box::new(m20261123_000004_lean_indexes::Migration),
            Box::new(m20261128_000005_deadlines::Migration),
            Box::new(m20261128_000006_throttled_ticks::Migration),
            Box::new(m20261128_000007_workers::Migration),
            Box::new(m20261128_000008_throttle::Migration),
            Box::new(m20261129_000009_limits::Migration),
            Box::new(m20261203_000010_lease_epochs::Migration),
            Box::new(m20261203_000011_partition_keys::Migration),
            Box::new(m20261204_000012_tracked_keys::Migration),
            Box::new(m20261205_000013_overflow_walk::Migration),
            Box::new(m20261205_000014_traceparent::Migration),
            Box::new(m20261206_000015_schedules::Migration),
            Box::new(m20261206_000016_windows::Migration),
            Box::new(m20261206_000017_approvals::Migration),
            Box::new(m20261207_000018_allowed_hours::Migration),
            Box::new(m20261208_000019_log_rows_unreferenced::Migration),
        ]
    }
}
