//! One database is one queue with one leader, through the real binary: `lease_name` (once a
//! setting that promised "one queue per lease name" and delivered two leaders of one queue) is
//! refused from the file and the environment with an error that names the replacement, a
//! separate database; and two daemons with two config files on one database are one leader and
//! one follower, on both backends.

use std::time::Duration;

use crate::backend_tests;
use crate::support::daemon::daemon;
use crate::support::process::{spawn_server, terminate};
use crate::support::{TestDb, bin, json, run, stderr};

backend_tests!(two_daemons_with_two_configs_on_one_database_are_one_leader_and_one_follower);

#[test]
fn lease_name_is_refused_naming_a_separate_database() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = format!("sqlite:{}", d.join("o.db").display());
    std::fs::write(d.join("orchestrator.yaml"), "lease_name: billing\n").unwrap();
    let o = run(bin(d).args(["--database-url", &url, "status"]));
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("orchestrator.yaml:1:") && e.contains("one database is one queue"), "{e}");
    assert!(e.contains("separate database") && e.contains("options[search_path]"), "{e}");
    assert!(!d.join("o.db").exists(), "refused before the database is touched");

    std::fs::remove_file(d.join("orchestrator.yaml")).unwrap();
    let o = run(bin(d).env("ORCHESTRATOR_LEASE_NAME", "billing").args(["--database-url", &url, "run-once"]));
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("ORCHESTRATOR_LEASE_NAME") && e.contains("separate database"), "{e}");

    let o = run(bin(d).args(["--database-url", &url, "--lease-name", "billing", "run-once"]));
    assert_eq!(o.status.code(), Some(2), "no such flag: {}", stderr(&o));
}

async fn two_daemons_with_two_configs_on_one_database_are_one_leader_and_one_follower(db: &TestDb) {
    let base = db.dir.path();
    let (a, b) = (base.join("a"), base.join("b"));
    for (dir, interval) in [(&a, "0.2"), (&b, "0.3")] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join("orchestrator.yaml"),
            format!("tick_interval_seconds: {interval}\nlease_ttl_seconds: 30\n"),
        )
        .unwrap();
    }
    let (mut first, mut first_logs, _) = spawn_server(&mut daemon(&a, &db.url, &[]));
    first_logs.wait_for("\"tick_id\":1,", Duration::from_secs(30));
    let (mut second, mut second_logs, _) = spawn_server(&mut daemon(&b, &db.url, &[]));
    let following = second_logs.wait_for("lease held by another instance; following", Duration::from_secs(30));
    let leader: serde_json::Value =
        serde_json::from_str(&first_logs.wait_for("orchestrator running", Duration::ZERO)).unwrap();
    let owner = leader["fields"]["owner"].as_str().unwrap().to_string();
    assert!(following.contains(&owner), "the follower names the leader {owner}: {following}");

    for i in 0..5 {
        let o = run(bin(&b).args(["--database-url", &db.url, "enqueue", "NOOP", "--key", &format!("q-{i}")]));
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    let start = std::time::Instant::now();
    while db.store.actions().count_by_status().await.unwrap()[&orchestrator::model::ActionStatus::Success] < 5 {
        assert!(start.elapsed() < Duration::from_secs(30), "the leader does not drain the queue");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ticks = json(&run(bin(&b).args(["--database-url", &db.url, "--json", "ticks", "--limit", "1000"])));
    let owners: std::collections::BTreeSet<&str> =
        ticks.as_array().unwrap().iter().map(|t| t["owner"].as_str().unwrap()).collect();
    assert_eq!(owners, [owner.as_str()].into_iter().collect(), "every tick is the leader's");
    let o = run(bin(&b).args(["--database-url", &db.url, "run-once"]));
    assert_eq!(o.status.code(), Some(3), "a third instance is refused too: {}", stderr(&o));

    assert_eq!(terminate(&mut second, Duration::from_secs(25)).code(), Some(0));
    assert_eq!(terminate(&mut first, Duration::from_secs(25)).code(), Some(0));
}
