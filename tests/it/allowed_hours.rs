//! Allowed hours (issue 25, part 2), on SQLite and PostgreSQL: a type's `allowed_hours` limit
//! field holds its due work outside the hours, on the zone's wall clock, while other types flow
//! past it (the plain claim and the limited pick, the dry run picking what the claim picks), and
//! lets it run again inside them, counted limits still applying; the CLI and `/api/limits` set,
//! show and clear it and refuse a bad value by name; a tick it holds says why.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::StatusCode;
use chrono::{DateTime, TimeZone, Timelike, Utc};
use orchestrator::model::ActionStatus;
use orchestrator::model::Clock;
use orchestrator::store::{ActionFilter, Claimed, Store};
use serde_json::json;

use crate::backend_tests;
use crate::support::TestDb;
use crate::support::api::{admin, config, state};
use crate::support::limits::{enqueue, spec, types};
use crate::support::{bin, run, stderr, stdout};

backend_tests!(
    outside_its_hours_a_type_waits_while_others_flow,
    inside_its_hours_its_counted_limits_still_hold,
    the_cli_sets_shows_and_clears_allowed_hours,
    the_api_takes_allowed_hours_and_refuses_a_bad_value_by_name,
);

/// Moves `clock` (of `store`) to the next `hour:minute` UTC after now.
fn move_to(store: &Store, clock: &Clock, hour: u32, minute: u32) {
    let now = store.now();
    let mut at = Utc.from_utc_datetime(&now.date_naive().and_hms_opt(hour, minute, 0).unwrap());
    if at <= now {
        at += chrono::Duration::days(1);
    }
    clock.advance(at - now);
}

async fn claim_at(store: &Store, name: &str, n: u64) -> (Vec<String>, Vec<Claimed>) {
    let c = crate::support::worker(store, name, Duration::from_secs(30)).await;
    let preview = store.actions().pick(&c, n, None).await.unwrap();
    let got = store.actions().claim(&c, n).await.unwrap();
    assert_eq!(
        preview.iter().map(|a| a.id).collect::<Vec<_>>(),
        got.iter().map(|c| c.action.id).collect::<Vec<_>>(),
        "the dry run picks what the claim picks at {}",
        store.now()
    );
    (preview.into_iter().map(|a| a.action_type).collect(), got)
}

async fn outside_its_hours_a_type_waits_while_others_flow(db: &TestDb) {
    let clock = Clock::shifted();
    let store = db.store.clone().with_clock(clock.clone());
    store.limits().set_limit("POST_SOCIAL", &spec("{allowed_hours: '09:00-21:00 Europe/Madrid'}")).await.unwrap();
    // First in claim order: a held backlog ahead of NOOP must not block it.
    enqueue(&store, "POST_SOCIAL", 4, 10, |i| json!({"i": i})).await;
    enqueue(&store, "NOOP", 6, 0, |i| json!({"i": i})).await;
    // 22:30 UTC is 23:30 or 00:30 in Madrid, winter or summer: outside.
    move_to(&store, &clock, 22, 30);
    let (_, got) = claim_at(&store, "night", 3).await;
    assert_eq!(types(&got), BTreeMap::from([("NOOP".into(), 3)]), "at {}", store.now());
    let usage = store.limits().limit_usage().await.unwrap();
    let social = usage.iter().find(|u| u.action_type == "POST_SOCIAL").unwrap();
    assert!(social.outside_allowed_hours && social.is_held(), "{social:?}");
    assert_eq!(social.waiting, 4);
    // Another limited type sends the claim down the limited pick: it leaves them out too.
    store.limits().set_limit("NOOP", &spec("{max_running: '10'}")).await.unwrap();
    let (_, got) = claim_at(&store, "night-limited", 10).await;
    assert_eq!(types(&got), BTreeMap::from([("NOOP".into(), 3)]), "the rest of NOOP; POST_SOCIAL waits");
    // 08:30 UTC is 09:30 or 10:30 in Madrid: inside. Waiting was not an attempt.
    move_to(&store, &clock, 8, 30);
    let usage = store.limits().limit_usage().await.unwrap();
    assert!(!usage.iter().any(|u| u.outside_allowed_hours), "{usage:?}");
    let (_, got) = claim_at(&store, "morning", 10).await;
    assert_eq!(types(&got), BTreeMap::from([("POST_SOCIAL".into(), 4)]), "at {}", store.now());
    assert!(got.iter().all(|c| c.attempt == 1));
}

async fn inside_its_hours_its_counted_limits_still_hold(db: &TestDb) {
    let clock = Clock::shifted();
    let store = db.store.clone().with_clock(clock.clone());
    // Overnight hours (22:00 to 06:00 UTC) with a max_running of 2.
    let both = spec("{allowed_hours: '22:00-06:00 UTC', max_running: '2'}");
    store.limits().set_limit("REPORT", &both).await.unwrap();
    enqueue(&store, "REPORT", 5, 0, |i| json!({"i": i})).await;
    enqueue(&store, "NOOP", 2, 0, |i| json!({"i": i})).await;
    move_to(&store, &clock, 12, 0);
    let (_, got) = claim_at(&store, "noon", 10).await;
    assert_eq!(types(&got), BTreeMap::from([("NOOP".into(), 2)]), "outside 22:00-06:00 at noon");
    move_to(&store, &clock, 23, 0);
    let (_, got) = claim_at(&store, "late", 10).await;
    assert_eq!(types(&got), BTreeMap::from([("REPORT".into(), 2)]), "inside, and max_running 2 holds");
    move_to(&store, &clock, 5, 59);
    let (_, got) = claim_at(&store, "dawn", 10).await;
    assert!(got.is_empty(), "two still running: max_running holds: {:?}", types(&got));
}

/// The types of the actions that succeeded, sorted.
async fn succeeded(db: &TestDb) -> Vec<String> {
    let filter = ActionFilter { status: Some(ActionStatus::Success), action_type: None, limit: 100 };
    let mut t: Vec<String> =
        db.store.actions().list_actions(&filter).await.unwrap().into_iter().map(|a| a.action_type).collect();
    t.sort();
    t
}

fn orch(db: &TestDb, args: &[&str]) -> std::process::Output {
    run(bin(db.dir.path()).arg("--database-url").arg(&db.url).args(args))
}

/// `HH:MM-HH:MM UTC` from `from` to `to` hours after `now` (UTC): hours that hold, or not, now.
fn hours_around(now: DateTime<Utc>, from: i64, to: i64) -> String {
    let at = |h: i64| (now + chrono::Duration::hours(h)).format("%H:%M").to_string();
    format!("{}-{} UTC", at(from), at(to))
}

async fn the_cli_sets_shows_and_clears_allowed_hours(db: &TestDb) {
    let now = Utc::now().with_second(0).unwrap();
    let closed = hours_around(now, 2, 3);
    let o = orch(db, &["limits", "set", "POST_SOCIAL", "--allowed-hours", &closed]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains(&format!("allowed_hours {closed}")), "{}", stdout(&o));
    for o in [
        orch(
            db,
            &["enqueue", "POST_SOCIAL", "--payload", r#"{"platform":"mastodon","content":"hi","audience":"all"}"#],
        ),
        orch(db, &["enqueue", "NOOP"]),
        orch(db, &["run-once"]),
    ] {
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    let list = stdout(&orch(db, &["limits", "list"]));
    assert!(list.contains(&format!("allowed hours {closed} (outside them now: its due work waits)")), "{list}");
    assert_eq!(succeeded(db).await, ["NOOP"], "NOOP ran; POST_SOCIAL waits");
    let status = stdout(&orch(db, &["status"]));
    assert!(status.contains(&format!("allowed hours {closed} (outside them now")), "{status}");
    // A tick with only the held type due runs nothing, and says why.
    assert_eq!(orch(db, &["run-once"]).status.code(), Some(0));
    let status = stdout(&orch(db, &["status"]));
    let note = format!("held by limits: POST_SOCIAL allowed_hours {closed} (1 waiting)");
    assert!(status.contains("THROTTLED") && status.contains(&note), "{status}");
    // Bad values are refused by name, and nothing is written.
    for (bad, says) in [
        ("9-21 UTC", "not a time of day HH:MM"),
        ("09:00-21:00", "names no time zone"),
        ("09:00-21:00 Mars/Olympus", "not an IANA time zone"),
        ("09:00-09:00 UTC", "starts where it ends"),
    ] {
        let o = orch(db, &["limits", "set", "POST_SOCIAL", "--allowed-hours", bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", stderr(&o));
        assert!(stderr(&o).contains(says) && stderr(&o).contains("allowed_hours"), "{bad}: {}", stderr(&o));
    }
    // Hours that hold now let it run; with a max_running beside them, clearing the hours
    // leaves the other limit.
    let open = hours_around(now, -1, 2);
    let o = orch(db, &["limits", "set", "POST_SOCIAL", "--allowed-hours", &open, "--max-running", "3"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(orch(db, &["run-once"]).status.code(), Some(0));
    assert_eq!(succeeded(db).await, ["NOOP", "POST_SOCIAL"], "POST_SOCIAL ran inside its hours");
    let o = orch(db, &["limits", "clear", "POST_SOCIAL", "allowed_hours"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let list = stdout(&orch(db, &["limits", "list"]));
    assert!(!list.contains("allowed hours") && list.contains("POST_SOCIAL"), "{list}");
}

async fn the_api_takes_allowed_hours_and_refuses_a_bad_value_by_name(db: &TestDb) {
    let engine = db.engine(config(db, true));
    let st = state(&engine);
    let a =
        admin(&st, "PUT", "/api/limits/POST_SOCIAL", Some(r#"{"allowed_hours": "09:00-21:00 Europe/Madrid"}"#)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.json()["base"]["allowed_hours"], json!("09:00-21:00 Europe/Madrid"));
    for body in [r#"{"allowed_hours": "09:00-25:00 UTC"}"#, r#"{"allowed_hours": 9}"#] {
        let a = admin(&st, "PUT", "/api/limits/POST_SOCIAL", Some(body)).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {}", a.body);
        assert!(a.error().contains("allowed_hours"), "{body}: {}", a.error());
    }
    let list = admin(&st, "GET", "/api/limits", None).await.json();
    let row = list.as_array().unwrap().iter().find(|u| u["action_type"] == "POST_SOCIAL").cloned().unwrap();
    assert_eq!(row["limit"]["effective"]["allowed_hours"], json!("09:00-21:00 Europe/Madrid"), "{row}");
    assert!(row["outside_allowed_hours"].is_boolean(), "{row}");
}
