//! Support for the store's own unit tests (compiled only for them): a fresh database per test
//! on each backend, for the steps that are not public (the limited pick's and the limited
//! claim's). SQLite is a file in a temporary directory; PostgreSQL a schema of its own in
//! `ORCHESTRATOR_TEST_PG_URL`, skipped without it unless `ORCHESTRATOR_TEST_REQUIRE_PG=1`, as
//! `tests/it/support/db.rs` does for the integration tests (which cannot reach these steps).
//!
//! It must not be used by anything but `#[cfg(test)]` code.

use super::{Store, StoreOptions};

const PG_ENV: &str = "ORCHESTRATOR_TEST_PG_URL";
const REQUIRE_PG_ENV: &str = "ORCHESTRATOR_TEST_REQUIRE_PG";

/// One isolated, migrated database.
pub(crate) struct TestStore {
    pub(crate) store: Store,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>,
}

impl TestStore {
    pub(crate) async fn sqlite() -> TestStore {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite:{}", dir.path().join("test.db").display());
        let store = Store::open(&url, &StoreOptions::default()).await.expect("open sqlite");
        TestStore { store, _dir: Some(dir), pg: None }
    }

    /// `None` when no PostgreSQL is configured for tests (a failure when one is required).
    pub(crate) async fn postgres() -> Option<TestStore> {
        let Ok(base) = std::env::var(PG_ENV) else {
            assert!(
                !std::env::var(REQUIRE_PG_ENV).is_ok_and(|v| v == "1"),
                "{REQUIRE_PG_ENV}=1, but {PG_ENV} is not set"
            );
            return None;
        };
        let schema = format!("unit_{:016x}", fastrand::u64(..));
        let admin = Store::connect(&base, &StoreOptions::default()).await.expect("connect to PostgreSQL");
        admin.execute_unprepared(&format!("CREATE SCHEMA {schema}")).await.expect("create schema");
        admin.close().await.ok();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options[search_path]={schema}");
        let store = Store::open(&url, &StoreOptions::default()).await.expect("open postgres");
        Some(TestStore { store, _dir: None, pg: Some((base, schema)) })
    }

    pub(crate) async fn cleanup(self) {
        self.store.close().await.ok();
        if let Some((base, schema)) = self.pg
            && let Ok(admin) = Store::connect(&base, &StoreOptions::default()).await
        {
            admin.execute_unprepared(&format!("DROP SCHEMA {schema} CASCADE")).await.ok();
            admin.close().await.ok();
        }
    }
}

/// `mod NAME { sqlite(), postgres() }`: runs `async fn NAME(&Store)` on each backend.
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = $crate::store::testing::TestStore::sqlite().await;
                super::$name(&db.store).await;
                db.cleanup().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = $crate::store::testing::TestStore::postgres().await else { return };
                super::$name(&db.store).await;
                db.cleanup().await;
            }
        }
    )+};
}
pub(crate) use both_backends;
