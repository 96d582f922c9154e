//! Prints the per-tick cost of evaluating rules: the shipped `rules/` and 50 synthetic rules of
//! the same shape, on a snapshot with full samples (20 per state). Targets: 1 ms and 5 ms.
//!
//! `cargo run --release --example bench_rules [RULES_DIR] [ITERATIONS]`
//! (The same figures: `orchestrator rules bench`.)

use std::path::PathBuf;

use orchestrator::decide;
use orchestrator::rules::RuleSet;
use orchestrator::rules::RulesConfig;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "rules".into()));
    let iterations: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let cfg = RulesConfig::default();
    let shipped = RuleSet::load(&dir, &cfg)?;
    let snap = decide::bench_snapshot();
    let _warm = decide::bench(&shipped, &snap, 10);
    let per_tick = decide::bench(&shipped, &snap, iterations);
    let sources = (0..50)
        .map(|i| {
            let src = format!(
                "let out = [];\nfor s in snap.samples.retry {{ if s.attempts > {} && s.age_seconds > 10.0 {{ out.push(retry(s.id, \"r\", 5)); }} }}\nif snap.queue.pending > {} {{ out.push(rebalance(\"sat\", 9)); }}\nout",
                i % 3,
                40 + i
            );
            (PathBuf::from(format!("synthetic_{i:02}.rhai")), src)
        })
        .collect();
    let fifty = RuleSet::from_sources(sources, &cfg).map_err(|d| anyhow::anyhow!("{}", d[0]))?;
    let per_tick_50 = decide::bench(&fifty, &snap, iterations);
    println!(
        "{} shipped rules: {:.3} ms per tick (target 1 ms); 50 rules: {:.3} ms per tick (target 5 ms); mean of {iterations}",
        shipped.len(),
        per_tick.as_secs_f64() * 1000.0,
        per_tick_50.as_secs_f64() * 1000.0
    );
    Ok(())
}
