//! What the benchmarks (`examples/bench*.rs`) need of the database and no command does: a
//! throwaway schema or database, fabricated history, and figures read back from the rows and
//! from PostgreSQL's `pg_stat_activity`. Reached through [`Store::bench`], so that the
//! examples hold no SQL and do not import `sea_orm`, as `src/` does not.
//!
//! The fabricated history is the one write to `actions` outside the state machine: rows
//! written finished in one `INSERT … SELECT` per chunk, as no operation could make 1M of them
//! in a bench's time. Nothing here is called by the program itself.

use sea_orm::{ConnectionTrait, Statement};

use super::{Backend, Context, Store, StoreError};

/// The benchmarks' handle on a store ([`Store::bench`]).
#[derive(Clone, Copy, Debug)]
pub struct Bench<'a> {
    store: &'a Store,
}

/// A drain's counts while it runs (`Bench::drain_sample`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DrainSample {
    pub succeeded: f64,
    /// Actions in `RETRY` or `DLQ`: attempts that failed.
    pub failed: f64,
    /// Connections to the database but the given ones.
    pub connections: f64,
}

/// A finished drain, read from its rows (`Bench::drain_totals`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DrainTotals {
    /// From the first claim to the last finish.
    pub seconds: f64,
    pub rows: f64,
    /// A claim stamps one token on every row it takes.
    pub claims: f64,
    /// A completion transaction stamps one `finished_at` on every row of its group.
    pub commits: f64,
    /// Distinct claimers.
    pub workers: f64,
}

impl Store {
    /// The benchmarks' reads and writes (module doc).
    pub fn bench(&self) -> Bench<'_> {
        Bench { store: self }
    }
}

/// A schema or database name the bench made up: letters, digits and `_` only, since it is
/// written into the statement.
fn identifier(name: &str) -> Result<&str, StoreError> {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(name)
    } else {
        Err(StoreError::Invalid(format!("'{name}' is not a plain identifier")))
    }
}

impl Bench<'_> {
    async fn run(&self, sql: &str) -> Result<(), StoreError> {
        self.store.db.execute_unprepared(sql).await.doing("preparing a benchmark")?;
        Ok(())
    }

    /// The first `n` columns of the one row `sql` selects, each a float8.
    async fn numbers(&self, sql: &str, n: usize) -> Result<Vec<f64>, StoreError> {
        let doing = "reading a benchmark's figures";
        let stmt = Statement::from_string(self.store.db.get_database_backend(), sql);
        let row = self.store.db.query_one_raw(stmt).await.doing(doing)?;
        let row = row.ok_or_else(|| StoreError::Internal(format!("no row: {sql}")))?;
        (0..n).map(|i| row.try_get_by_index::<f64>(i).doing(doing)).collect()
    }

    /// PostgreSQL: `CREATE SCHEMA name`.
    pub async fn create_schema(&self, name: &str) -> Result<(), StoreError> {
        self.run(&format!("CREATE SCHEMA {}", identifier(name)?)).await
    }

    /// PostgreSQL: `DROP SCHEMA name CASCADE`.
    pub async fn drop_schema(&self, name: &str) -> Result<(), StoreError> {
        self.run(&format!("DROP SCHEMA {} CASCADE", identifier(name)?)).await
    }

    /// PostgreSQL: `CREATE DATABASE name`.
    pub async fn create_database(&self, name: &str) -> Result<(), StoreError> {
        self.run(&format!("CREATE DATABASE {}", identifier(name)?)).await
    }

    /// PostgreSQL: drops the database, ending its connections.
    pub async fn drop_database(&self, name: &str) -> Result<(), StoreError> {
        self.run(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", identifier(name)?)).await
    }

    /// `n` rows of finished history (90 % SUCCESS, 10 % CANCELLED, finished 2026-01-01) plus
    /// 100 open rows that are scheduled for later (created now, so no rule calls them stuck),
    /// written with one INSERT … SELECT per chunk; then the planner's statistics.
    pub async fn history(&self, n: u64) -> Result<(), StoreError> {
        let ts = "'2026-01-01T00:00:00+00:00'";
        let far = "'2100-01-01T00:00:00+00:00'";
        let now_text = crate::model::now().to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false);
        let now = format!("'{now_text}'");
        let chunk = 200_000u64;
        let mut start = 1u64;
        while start <= n {
            let end = (start + chunk - 1).min(n);
            let status = "CASE WHEN i % 10 = 0 THEN 'CANCELLED' ELSE 'SUCCESS' END";
            let sql = match self.store.backend() {
                Backend::Sqlite => format!(
                    "WITH RECURSIVE seq(i) AS (SELECT {start} UNION ALL SELECT i + 1 FROM seq WHERE i < {end}) \
                     INSERT INTO actions (idempotency_key, action_type, payload_json, status, priority, not_before, attempts, max_attempts, created_at, updated_at, finished_at) \
                     SELECT 'hist-' || i, 'NOOP', '{{}}', {status}, 0, {ts}, 1, 3, {ts}, {ts}, {ts} FROM seq"
                ),
                Backend::Postgres => format!(
                    "INSERT INTO actions (idempotency_key, action_type, payload_json, status, priority, not_before, attempts, max_attempts, created_at, updated_at, finished_at) \
                     SELECT 'hist-' || i, 'NOOP', '{{}}', {status}, 0, {ts}, 1, 3, {ts}, {ts}, {ts} FROM generate_series({start}, {end}) AS i"
                ),
            };
            self.run(&sql).await?;
            start = end + 1;
        }
        let open = match self.store.backend() {
            Backend::Sqlite => format!(
                "WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < 100) \
                 INSERT INTO actions (idempotency_key, action_type, payload_json, status, priority, not_before, attempts, max_attempts, created_at, updated_at) \
                 SELECT 'open-' || i, 'NOOP', '{{}}', 'PENDING', 0, {far}, 0, 3, {now}, {now} FROM seq"
            ),
            Backend::Postgres => format!(
                "INSERT INTO actions (idempotency_key, action_type, payload_json, status, priority, not_before, attempts, max_attempts, created_at, updated_at) \
                 SELECT 'open-' || i, 'NOOP', '{{}}', 'PENDING', 0, {far}, 0, 3, now(), now() FROM generate_series(1, 100) AS i"
            ),
        };
        self.run(&open).await?;
        self.analyze().await
    }

    /// Spreads the open queue over the open states: every fourth action (by id, from 1) to
    /// `RETRY` (`timeout`), every fourth from 2 to `DLQ` (`boom`).
    pub async fn spread_open_states(&self) -> Result<(), StoreError> {
        self.run("UPDATE actions SET status = 'RETRY', last_error = 'timeout' WHERE id % 4 = 1").await?;
        self.run("UPDATE actions SET status = 'DLQ', last_error = 'boom' WHERE id % 4 = 2").await
    }

    /// Marks the actions whose idempotency key starts with `prefix` (letters, digits, `_`, `-`)
    /// `SUCCESS`, finished on 2020-01-01: history older than any window.
    pub async fn finish_old(&self, prefix: &str) -> Result<(), StoreError> {
        if !prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(StoreError::Invalid(format!("'{prefix}' is not a plain key prefix")));
        }
        self.run(&format!(
            "UPDATE actions SET status = 'SUCCESS', finished_at = '2020-01-01T00:00:00.000+00:00' \
             WHERE idempotency_key LIKE '{prefix}%'"
        ))
        .await
    }

    /// Refreshes the planner's statistics (`ANALYZE`; on PostgreSQL of `actions`).
    pub async fn analyze(&self) -> Result<(), StoreError> {
        self.run(match self.store.backend() {
            Backend::Sqlite => "ANALYZE",
            Backend::Postgres => "ANALYZE actions",
        })
        .await
    }

    /// PostgreSQL: the pids of the connections to `database` now, as an SQL list (`0` for none).
    pub async fn connections(&self, database: &str) -> Result<String, StoreError> {
        let doing = "listing a benchmark's connections";
        let sql = format!(
            "SELECT coalesce(string_agg(pid::text, ', '), '0') FROM pg_stat_activity WHERE datname = '{}'",
            identifier(database)?
        );
        let stmt = Statement::from_string(self.store.db.get_database_backend(), sql);
        let row = self.store.db.query_one_raw(stmt).await.doing(doing)?;
        let row = row.ok_or_else(|| StoreError::Internal("no row".into()))?;
        row.try_get_by_index::<String>(0).doing(doing)
    }

    /// PostgreSQL: a running drain's counts; `ours` is [`Bench::connections`]' list of the
    /// connections to leave out.
    pub async fn drain_sample(&self, database: &str, ours: &str) -> Result<DrainSample, StoreError> {
        if !ours.chars().all(|c| c.is_ascii_digit() || c == ',' || c == ' ') {
            return Err(StoreError::Invalid(format!("'{ours}' is not a list of pids")));
        }
        let sample = format!(
            "SELECT (SELECT count(*) FROM actions WHERE status = 'SUCCESS')::float8, \
             (SELECT count(*) FROM actions WHERE status IN ('RETRY', 'DLQ'))::float8, \
             (SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND pid NOT IN ({ours}))::float8",
            identifier(database)?
        );
        let v = self.numbers(&sample, 3).await?;
        Ok(DrainSample { succeeded: v[0], failed: v[1], connections: v[2] })
    }

    /// PostgreSQL: a finished drain's totals, from its `SUCCESS` rows.
    pub async fn drain_totals(&self) -> Result<DrainTotals, StoreError> {
        let v = self
            .numbers(
                "SELECT EXTRACT(EPOCH FROM max(finished_at) - min(claimed_at))::float8, count(*)::float8, \
                 count(DISTINCT claim_token)::float8, count(DISTINCT (claimed_by, finished_at))::float8, \
                 count(DISTINCT claimed_by)::float8 FROM actions WHERE status = 'SUCCESS'",
                5,
            )
            .await?;
        Ok(DrainTotals { seconds: v[0], rows: v[1], claims: v[2], commits: v[3], workers: v[4] })
    }

    /// PostgreSQL: one worker's cycle, as medians in milliseconds: from a claim to its batch's
    /// last outcome (written at `finished_at`, the worker's clock when its completion
    /// transaction began), and from there to the worker's next claim.
    pub async fn worker_cycle(&self) -> Result<(f64, f64), StoreError> {
        let v = self
            .numbers(
                "WITH c AS (SELECT claimed_by, min(claimed_at) AS claimed, max(finished_at) AS finished \
                 FROM actions GROUP BY claimed_by, claim_token), \
                 g AS (SELECT claimed, finished, \
                 lead(claimed) OVER (PARTITION BY claimed_by ORDER BY claimed) AS next FROM c) \
                 SELECT (1000 * percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM finished - claimed)))::float8, \
                 (1000 * percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM next - finished)))::float8 \
                 FROM g",
                2,
            )
            .await?;
        Ok((v[0], v[1]))
    }

    /// Actions waiting or running now (read through the open-status index).
    pub async fn open_actions(&self) -> Result<f64, StoreError> {
        let sql =
            "SELECT CAST(count(*) AS DOUBLE PRECISION) FROM actions WHERE status IN ('PENDING', 'RETRY', 'RUNNING')";
        Ok(self.numbers(sql, 1).await?[0])
    }

    /// PostgreSQL: transactions committed and rolled back in `database` so far, as the
    /// statistics have them (a backend reports at most once a second, an idle one within 10 s).
    pub async fn transactions(&self, database: &str) -> Result<f64, StoreError> {
        let sql = format!(
            "SELECT (xact_commit + xact_rollback)::float8 FROM pg_stat_database WHERE datname = '{}'",
            identifier(database)?
        );
        Ok(self.numbers(&sql, 1).await?[0])
    }
}
