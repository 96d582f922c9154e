//! Prints what building the tick's snapshot costs on SQLite with an empty history and with
//! 200,000 finished actions older than the one-hour window: the two figures should be close,
//! since the snapshot reads only open rows and windows.
//!
//! `cargo run --release --example bench_snapshot [FINISHED_ROWS]`

use std::time::Instant;

use orchestrator::lease::Term;
use orchestrator::model::{self, Flags};
use orchestrator::rules::RulesConfig;
use orchestrator::snapshot;
use orchestrator::store::{NewAction, Store, StoreOptions};

async fn per_build(store: &Store, n: u32) -> anyhow::Result<f64> {
    let term = Term { lease_name: "orchestrator".into(), owner: "bench".into(), epoch: 1, expires_at: model::now() };
    let flags = Flags { paused: false, killed: false, proof_mode: true };
    let health = RulesConfig::default().health;
    snapshot::build_with(store, &term, flags, None, &health).await?;
    let started = Instant::now();
    for _ in 0..n {
        snapshot::build_with(store, &term, flags, None, &health).await?;
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0 / f64::from(n))
}

fn batch(prefix: &str, from: usize, n: usize) -> Vec<NewAction> {
    (from..from + n)
        .map(|i| NewAction {
            action_type: if i % 2 == 0 { "NOOP".into() } else { "POST_SOCIAL".into() },
            payload_json: "{}".into(),
            idempotency_key: format!("{prefix}-{i}"),
            priority: 0,
            not_before: model::now(),
            max_attempts: 3,
            expires_at: None,
            traceparent: None,
            approval_expires_at: None,
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let finished: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(200_000);
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite:{}", dir.path().join("bench.db").display());
    let store = Store::open(&url, &StoreOptions { sqlite_synchronous_full: false, ..StoreOptions::default() }).await?;
    // An open queue of 200 actions, some in each open state.
    store.actions().enqueue_many(&batch("open", 0, 200)).await?;
    store.bench().spread_open_states().await?;
    let empty = per_build(&store, 200).await?;
    for chunk in (0..finished).step_by(10_000) {
        store.actions().enqueue_many(&batch("done", chunk, 10_000.min(finished - chunk))).await?;
    }
    store.bench().finish_old("done-").await?;
    store.bench().analyze().await?;
    let full = per_build(&store, 200).await?;
    println!(
        "snapshot build on SQLite: {empty:.3} ms with 200 open actions and no history; {full:.3} ms with {finished} finished actions as well (mean of 200)"
    );
    Ok(())
}
