//! A fresh database per test: on SQLite a file in a temporary directory, on PostgreSQL a
//! schema of its own in `ORCHESTRATOR_TEST_PG_URL`; and `backend_tests!`, which runs one test
//! body on both.

use std::time::Duration;

use orchestrator::adapters::Registry;
use orchestrator::config::Config;
use orchestrator::store::{Store, StoreOptions};
use orchestrator::tick::Engine;

pub const PG_ENV: &str = "ORCHESTRATOR_TEST_PG_URL";

/// Set to `1`, a PostgreSQL test that would skip fails instead (`.ci/run` sets it).
pub const REQUIRE_PG_ENV: &str = "ORCHESTRATOR_TEST_REQUIRE_PG";

/// The PostgreSQL URL of the tests; without one, `None` after saying that `what` did not run,
/// or a failure when `ORCHESTRATOR_TEST_REQUIRE_PG=1` asks that every PostgreSQL test run.
pub fn pg_url(what: &str) -> Option<String> {
    if let Ok(url) = std::env::var(PG_ENV) {
        return Some(url);
    }
    not_run(&format!("{PG_ENV} is not set, so {what} did not run"));
    None
}

/// Says why a PostgreSQL test (or part of one) did not run; fails instead when
/// `ORCHESTRATOR_TEST_REQUIRE_PG=1`.
pub fn not_run(why: &str) {
    if std::env::var(REQUIRE_PG_ENV).is_ok_and(|v| v == "1") {
        panic!("{REQUIRE_PG_ENV}=1, but {why}");
    }
    eprintln!("skipped: {why}");
}

/// One isolated database and a scratch directory.
pub struct TestDb {
    pub url: String,
    pub store: Store,
    pub dir: tempfile::TempDir,
    pg: Option<(String, String)>,
}

impl TestDb {
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite:{}", dir.path().join("test.db").display());
        let store = Store::open(&url, &StoreOptions::default()).await.expect("open sqlite");
        TestDb { url, store, dir, pg: None }
    }

    /// `None` (after printing why) when no PostgreSQL is configured for tests.
    pub async fn postgres() -> Option<TestDb> {
        let base = pg_url("this PostgreSQL test")?;
        let schema = format!("it_{:016x}", fastrand::u64(..));
        let admin = Store::connect(&base, &StoreOptions::default()).await.expect("connect to PostgreSQL");
        admin.execute_unprepared(&format!("CREATE SCHEMA {schema}")).await.expect("create schema");
        admin.close().await.ok();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options[search_path]={schema}");
        let store = Store::open(&url, &StoreOptions::default()).await.expect("open postgres");
        let dir = tempfile::tempdir().expect("tempdir");
        Some(TestDb { url, store, dir, pg: Some((base, schema)) })
    }

    /// Config for this database with fast timings for tests.
    pub fn config(&self) -> Config {
        let mut c = Config::defaults();
        c.database_url = self.url.clone();
        c.artifacts_dir = self.dir.path().join("artifacts");
        c.backoff_base = Duration::ZERO;
        c.backoff_max = Duration::ZERO;
        c.max_actions_per_tick = 100;
        c
    }

    pub fn engine(&self, config: Config) -> Engine {
        Engine::new(self.store.clone(), config, Registry::builtin())
    }

    /// A second, independent connection pool to the same database.
    pub async fn another_store(&self) -> Store {
        Store::open(&self.url, &StoreOptions::default()).await.expect("second connection")
    }

    pub async fn cleanup(self) {
        self.store.close().await.ok();
        if let Some((base, schema)) = self.pg
            && let Ok(admin) = Store::connect(&base, &StoreOptions::default()).await
        {
            admin.execute_unprepared(&format!("DROP SCHEMA {schema} CASCADE")).await.ok();
            admin.close().await.ok();
        }
    }
}

/// Generates `mod NAME { sqlite(), postgres() }` tests that run `async fn NAME(TestDb)`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = $crate::support::TestDb::sqlite().await;
                super::$name(&db).await;
                db.cleanup().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = $crate::support::TestDb::postgres().await else { return };
                super::$name(&db).await;
                db.cleanup().await;
            }
        }
    )+};
}

/// Up to `n` actions the next claim would take, in claim order (claiming nothing).
pub async fn due(store: &orchestrator::store::Store, n: u64) -> Vec<orchestrator::model::Action> {
    store.actions().pick(&claimer("", std::time::Duration::from_secs(60)), n, None).await.unwrap()
}

/// The terms a test claims on as worker `id`: every type, attempts due within a minute.
fn claimer(id: &str, ttl: std::time::Duration) -> orchestrator::store::Claimer {
    orchestrator::store::Claimer {
        worker: id.into(),
        worker_ttl: ttl,
        types: Vec::new(),
        type_timeouts: Vec::new(),
        default_timeout: std::time::Duration::from_secs(60),
        start_within: std::time::Duration::ZERO,
        proof_enforced: false,
        epoch: None,
        limit_partitions: 1000,
    }
}

/// Registers a worker named `id` (heartbeat now, dead after `ttl`) and returns the terms it
/// claims on: every type, attempts due within a minute.
pub async fn worker(
    store: &orchestrator::store::Store,
    id: &str,
    ttl: std::time::Duration,
) -> orchestrator::store::Claimer {
    store
        .workers()
        .register_worker(&orchestrator::store::NewWorker {
            id: id.into(),
            host: "test".into(),
            pid: 1,
            version: "test".into(),
            concurrency: 4,
            types: Vec::new(),
        })
        .await
        .unwrap();
    claimer(id, ttl)
}

/// A fence for the live holder `term` (rescue, rule edits).
pub fn fence(term: &orchestrator::lease::Term) -> orchestrator::store::Fence {
    orchestrator::store::Fence { lease_name: term.lease_name.clone(), epoch: term.epoch, tick_id: None }
}

/// A database on the test PostgreSQL server that does not exist yet: the test creates it when
/// it likes and drops it (with any connection still on it) at the end.
pub struct LateDatabase {
    admin: Store,
    name: String,
    pub url: String,
}

impl LateDatabase {
    /// `None` (after printing why) when no PostgreSQL is configured for tests.
    pub async fn new(tag: &str) -> Option<LateDatabase> {
        let base = crate::support::db::pg_url("this PostgreSQL test")?;
        let admin = Store::connect(&base, &StoreOptions::default()).await.expect("connect to PostgreSQL");
        let name = format!("it_late_{tag}_{:08x}", fastrand::u32(..));
        // postgres://USER@HOST:PORT/DB?QUERY: the same server and options, another database.
        let (scheme, rest) = base.split_once("://").expect("a postgres:// URL");
        let authority = rest.split(['/', '?']).next().unwrap_or(rest);
        let query = rest.split_once('?').map(|(_, q)| format!("?{q}")).unwrap_or_default();
        let url = format!("{scheme}://{authority}/{name}{query}");
        Some(LateDatabase { admin, name, url })
    }

    pub async fn create(&self) {
        self.admin.execute_unprepared(&format!("CREATE DATABASE {}", self.name)).await.expect("create the database");
    }

    /// Drops the database, ending the connections still on it.
    pub async fn drop_now(&self) {
        self.admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
            .await
            .expect("drop the database");
    }

    pub async fn cleanup(self) {
        self.drop_now().await;
        self.admin.close().await.ok();
    }
}
