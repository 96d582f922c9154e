//! `orchestrator backup` through the real binary: on SQLite a copy taken while a daemon drains
//! the queue, restored into a fresh directory as docs/operations.md says (the copy as the
//! database, the artifacts directory beside it), passes `PRAGMA integrity_check`, `artifacts
//! verify` and a tick, and holds the counts of the moment it was taken; on PostgreSQL the
//! command prints the `pg_dump` line, and that line makes a dump.

use std::path::Path;
use std::time::{Duration, Instant};

use orchestrator::model::ActionStatus;
use orchestrator::store::{FlagChange, Store, StoreOptions};

use crate::support::TestDb;
use crate::support::daemon::daemon;
use crate::support::http::wait_for;
use crate::support::process::{bin, json, run, spawn_server, stderr, terminate};

const CONFIG: &str = "tick_interval_seconds: 0.2\nmax_actions_per_tick: 4\ndispatch_concurrency: 2\n";

/// Copies a directory tree (the restore's artifacts step) while the daemon writes into it: a
/// file gone between the listing and its copy (an artifact's temporary file, renamed into
/// place) is skipped, as the next listing would not show it either.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            copy_tree(&src, &dst);
        } else if let Err(e) = std::fs::copy(&src, &dst) {
            assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{}: {e}", src.display());
        }
    }
}

fn count(v: &serde_json::Value, s: ActionStatus) -> i64 {
    v[s.as_str()].as_i64().unwrap_or_else(|| panic!("{s} in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_during_a_drain_restores_into_a_fresh_directory() {
    let db = TestDb::sqlite().await;
    let dir = db.dir.path();
    std::fs::write(dir.join("orchestrator.yaml"), CONFIG).unwrap();
    db.store.flags().set_flags(FlagChange { proof_mode: Some(true), ..Default::default() }).await.unwrap();
    let n = 300;
    let lines: String = (0..n)
        .map(|i| {
            format!(
                "{{\"action_type\":\"POST_SOCIAL\",\"payload\":{{\"platform\":\"x\",\"content\":\"post {i}\",\
                 \"audience\":\"all\"}},\"idempotency_key\":\"backup-{i}\"}}\n"
            )
        })
        .collect();
    orchestrator::queue::enqueue_jsonl(&db.store, lines.as_bytes(), 3).await.unwrap();

    let (mut child, _logs, addr) = spawn_server(&mut daemon(dir, &db.url, &[]));
    wait_for(addr, "/health", Duration::from_secs(30), |r| r.status == 200);
    let start = Instant::now();
    while db.store.actions().count_by_status().await.unwrap()[&ActionStatus::Success] < 10 {
        assert!(start.elapsed() < Duration::from_secs(60), "the daemon is not working");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let kept = tempfile::tempdir().unwrap();
    let copy = kept.path().join("orchestrator-backup.db");
    let before = db.store.actions().count_by_status().await.unwrap()[&ActionStatus::Success];
    let o = run(bin(dir).args(["--database-url", &db.url, "--json", "backup"]).arg(&copy));
    let after = db.store.actions().count_by_status().await.unwrap()[&ActionStatus::Success];
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let b = json(&o);
    assert_eq!(b["integrity"], "ok", "{b}");
    let at_backup = &b["actions"];
    let total: i64 = ActionStatus::ALL.iter().map(|s| count(at_backup, *s)).sum();
    assert_eq!(total, n, "every action is in the copy: {b}");
    let done = count(at_backup, ActionStatus::Success);
    assert!((before..=after).contains(&done), "the copy is one moment of the drain: {before} <= {done} <= {after}");
    assert!(done < n, "the copy was taken mid-drain: {b}");
    // Artifacts are files beside the database: copied after the backup, they hold at least
    // every artifact the copy records.
    let fresh = tempfile::tempdir().unwrap();
    let f = fresh.path();
    copy_tree(&dir.join("artifacts"), &f.join("artifacts"));

    // A second backup to the same name is refused; the first copy is untouched.
    let o = run(bin(dir).args(["--database-url", &db.url, "backup"]).arg(&copy));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("exists; a backup never overwrites"), "{}", stderr(&o));
    assert_eq!(std::fs::metadata(&copy).unwrap().len(), b["bytes"].as_u64().unwrap());
    assert!(child.0.try_wait().unwrap().is_none(), "the daemon ran on through the backup");
    assert_eq!(terminate(&mut child, Duration::from_secs(25)).code(), Some(0));

    // The restore: the copy becomes the database of a fresh directory.
    std::fs::copy(&copy, f.join("orchestrator.db")).unwrap();
    let url = format!("sqlite:{}", f.join("orchestrator.db").display());
    let restored = Store::open(&url, &StoreOptions::default()).await.unwrap();
    assert_eq!(restored.sqlite_pragma("integrity_check").await.unwrap().as_deref(), Some("ok"));
    restored.close().await.unwrap();
    let orch = |args: &[&str]| run(bin(f).args(["--database-url", &url, "--json"]).args(args));
    let o = orch(&["status"]);
    let queue = &json(&o)["queue"];
    for s in ActionStatus::ALL {
        assert_eq!(count(queue, *s), count(at_backup, *s), "{s} after the restore: {queue} vs {at_backup}");
    }
    let o = orch(&["artifacts", "verify"]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    let v = json(&o);
    assert!(v["checked"].as_i64().unwrap() >= done, "every recorded artifact checked: {v}");
    assert_eq!(v["ok"], v["checked"], "{v}");
    // The copy carries the lease of the daemon it was taken from: released by hand, as the
    // restore says, and then a tick runs on the restored queue.
    let o = orch(&["lease", "release", "--force"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = orch(&["run-once"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let t = json(&o);
    assert_eq!(t["status"], "SUCCESS", "{t}");
    assert!(t["succeeded"].as_i64().unwrap() > 0, "the restored queue's due work runs: {t}");
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_backup_prints_a_pg_dump_line_that_works() {
    let Some(db) = TestDb::postgres().await else { return };
    let dir = db.dir.path();
    let dump = dir.join("queue.dump");
    let o = run(bin(dir).args(["--database-url", &db.url, "backup"]).arg(&dump));
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("on PostgreSQL take the copy with pg_dump") && e.contains("pg_restore --dbname="), "{e}");
    assert!(!dump.exists(), "backup wrote nothing itself");
    let line = e.split('`').find(|l| l.starts_with("pg_dump ")).unwrap_or_else(|| panic!("{e}"));
    assert!(line.contains("--schema='it_"), "the test's schema, not the whole database: {line}");
    let o = std::process::Command::new("sh").args(["-c", line]).output().unwrap();
    assert!(o.status.success(), "{line}: {}", stderr(&o));
    assert!(std::fs::metadata(&dump).unwrap().len() > 0);
    db.cleanup().await;
}
