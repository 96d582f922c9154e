//! The store's connection and schema: SQLite pragmas, idempotent and concurrent migrations, and
//! a clear error when the database cannot be reached.

use orchestrator::store::{Store, StoreOptions};

use crate::support::{TestDb, bin, run, stderr};

#[tokio::test]
async fn sqlite_runs_wal_full_sync_with_foreign_keys_and_a_busy_timeout() {
    let db = TestDb::sqlite().await;
    let p = |name: &'static str| {
        let store = db.store.clone();
        async move { store.sqlite_pragma(name).await.unwrap().unwrap() }
    };
    assert_eq!(p("journal_mode").await, "wal");
    assert_eq!(p("synchronous").await, "2", "FULL");
    assert_eq!(p("foreign_keys").await, "1");
    assert_eq!(p("busy_timeout").await, "5000");
    // Migrating again is a no-op.
    db.store.migrate().await.unwrap();
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_opens_migrate_once_on_postgres() {
    let Some(db) = TestDb::postgres().await else { return };
    // A fresh schema of its own, opened by four processes' worth of pools at once.
    let schema = format!("it_mig_{:08x}", fastrand::u32(..));
    db.store.execute_unprepared(&format!("CREATE SCHEMA {schema}")).await.unwrap();
    let base = std::env::var(crate::support::PG_ENV).unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options[search_path]={schema}");
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { Store::open(&url, &StoreOptions::default()).await })
        })
        .collect();
    for o in opens {
        let store = o.await.unwrap().expect("every concurrent open succeeds");
        assert!(store.flags().get().await.unwrap().proof_mode);
        store.close().await.unwrap();
    }
    db.store.execute_unprepared(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
    db.cleanup().await;
}

/// Two processes that open a new SQLite file at once (a worker and the leader started
/// together) race to switch it to WAL; SQLite answers one of them "database is locked" at once.
/// Every open must still succeed: 20 new files, four openers each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_opens_of_a_new_sqlite_file_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..20 {
        let url = format!("sqlite:{}", dir.path().join(format!("new{round}.db")).display());
        let opens: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { Store::open(&url, &StoreOptions::default()).await })
            })
            .collect();
        for o in opens {
            let store = o.await.unwrap().unwrap_or_else(|e| panic!("round {round}: an open failed: {e}"));
            assert!(store.flags().get().await.unwrap().proof_mode);
            store.close().await.unwrap();
        }
    }
}

#[test]
fn an_unreachable_database_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(bin(dir.path()).args(["--database-url", "postgres://postgres:s3cret@127.0.0.1:1/nope", "status"]));
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(
        err.trim_end(),
        "error: cannot open database postgres://postgres:***@127.0.0.1:1/nope: Connection Error: error communicating with database: Connection refused (os error 111)"
    );
    assert!(!err.contains("s3cret"), "the password is redacted: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let o = run(bin(dir.path()).args(["--database-url", "/nonexistent-dir/x.db", "status"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("cannot open database sqlite:///nonexistent-dir/x.db?mode=rwc: Connection Error: error returned from database: (code: 14) unable to open database file"), "{}", stderr(&o));
    assert!(stderr(&o).starts_with("error: ") && stderr(&o).trim_end().lines().count() == 1);
}

/// `ORCHESTRATOR_TEST_REQUIRE_PG=1` (which `.ci/run` sets) turns a PostgreSQL test's skip into
/// a failure that says why; without it the same test passes after saying it was skipped. Runs
/// this test binary on one PostgreSQL test, with no URL.
#[test]
fn a_postgresql_test_without_a_url_fails_when_postgresql_is_required() {
    let one = |require: Option<&str>| {
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args(["store::concurrent_first_opens_migrate_once_on_postgres", "--exact", "--nocapture"])
            .env_remove(crate::support::PG_ENV)
            .env_remove(crate::support::db::REQUIRE_PG_ENV);
        if let Some(v) = require {
            cmd.env(crate::support::db::REQUIRE_PG_ENV, v);
        }
        let o = cmd.output().unwrap();
        (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
    };
    let (ok, text) = one(None);
    assert!(ok && text.contains("skipped: ORCHESTRATOR_TEST_PG_URL is not set") && text.contains("1 passed"), "{text}");
    let (ok, text) = one(Some("1"));
    assert!(!ok, "{text}");
    assert!(text.contains("ORCHESTRATOR_TEST_REQUIRE_PG=1, but ORCHESTRATOR_TEST_PG_URL is not set"), "{text}");
}
