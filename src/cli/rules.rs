//! The rule commands (`rules check|test|backtest|bench`, `explain`, `run-once --dry-run`) and
//! the hot reload of `run`: glue between the rule engine, the store and the terminal.
//!
//! Like the rest of `cli`, it is the only place that prints; it decides nothing itself.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use super::{exit, fail, output::Out};
use crate::config::Config;
use crate::decide::DecisionOutcome;
use crate::rules::pipeline::Suppressed;
use crate::rules::{self, RuleSet, RulesError, fixtures};
use crate::store::Store;
use crate::tick::DryRunReport;

/// Loads a rule set, printing diagnostics as `file:line:col: message`.
fn load(dir: &Path, config: &Config) -> anyhow::Result<Result<RuleSet, Vec<rules::Diagnostic>>> {
    match RuleSet::load(dir, &config.rules) {
        Ok(set) => Ok(Ok(set)),
        Err(RulesError::Invalid(d)) => Ok(Err(d)),
        Err(e) => Err(fail(exit::ERROR, e.to_string())),
    }
}

/// `rules check`: compile every rule and evaluate it against a default snapshot.
pub fn check(dir: &Path, config: &Config, out: &Out) -> anyhow::Result<u8> {
    let diags = match load(dir, config)? {
        Ok(set) => {
            let d = set.check();
            if d.is_empty() {
                if out.json {
                    out.print_json(&serde_json::json!({"ok": true, "rules": set.names(), "digest": set.digest()}));
                } else {
                    say!(out, "{} rule(s) OK in {} (digest {})", set.len(), dir.display(), set.digest());
                }
                return Ok(exit::OK);
            }
            d
        }
        Err(d) => d,
    };
    if out.json {
        out.print_json(&serde_json::json!({"ok": false, "diagnostics": diags}));
    } else {
        for d in &diags {
            say!(out, "{d}");
        }
    }
    Ok(exit::ERROR)
}

/// `rules test`: run the fixtures, then the scenarios (`tests/scenarios/*.yaml`, several ticks
/// of the real engine on a throwaway database); exit 1 if any case or scenario fails. A failed
/// scenario prints its per-tick timeline.
pub async fn test(dir: &Path, config: &Config, out: &Out) -> anyhow::Result<u8> {
    let results = fixtures::run_dir(dir, &config.rules).map_err(|e| fail(exit::ERROR, e.to_string()))?;
    let scenarios = crate::scenario::run_dir(dir).await;
    let failed = results.iter().filter(|r| !r.passed).count();
    let failed_scenarios = scenarios.iter().filter(|r| !r.passed).count();
    if out.json {
        out.print_json(&serde_json::json!({
            "passed": results.len() - failed,
            "failed": failed,
            "cases": results,
            "scenarios": {"passed": scenarios.len() - failed_scenarios, "failed": failed_scenarios, "runs": scenarios},
        }));
    } else {
        for r in &results {
            let file = r.file.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            if r.passed {
                say!(out, "PASS {file}: {}", r.name);
            } else {
                say!(out, "FAIL {file}: {}", r.name);
                for line in &r.diff {
                    say!(out, "    {line}");
                }
            }
        }
        for r in &scenarios {
            let file = r.file.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            if r.passed {
                say!(out, "PASS scenarios/{file}: {} ({} ticks)", r.name, r.timeline.len());
            } else {
                say!(out, "FAIL scenarios/{file}: {}", r.name);
                for f in &r.failures {
                    say!(out, "    - {f}");
                }
                say!(out, "    timeline:");
                for t in &r.timeline {
                    say!(out, "      {t}");
                }
            }
        }
        say!(
            out,
            "{} passed, {failed} failed; scenarios: {} passed, {failed_scenarios} failed",
            results.len() - failed,
            scenarios.len() - failed_scenarios
        );
    }
    Ok(if failed + failed_scenarios > 0 || results.is_empty() { exit::ERROR } else { exit::OK })
}

#[derive(Serialize)]
struct BacktestTick {
    tick_id: i64,
    recorded_digest: Option<String>,
    /// Decisions the rules on disk make that were not recorded then.
    added: Vec<String>,
    /// Decisions recorded then that the rules on disk do not make.
    removed: Vec<String>,
}

/// `rules backtest`: the rules on disk against the recorded snapshots of the last N ticks,
/// oldest first, each rule's state carried from tick to tick.
pub async fn backtest(store: &Store, dir: &Path, config: &Config, last: u64, out: &Out) -> anyhow::Result<u8> {
    let set = match load(dir, config)? {
        Ok(s) => s,
        Err(d) => {
            for d in &d {
                super::stdio::stderr_line(&d.to_string());
            }
            return Err(fail(exit::ERROR, format!("{} rule error(s); nothing backtested", d.len())));
        }
    };
    let mut ticks = store.ledger().recorded_ticks(last).await?;
    ticks.reverse();
    let mut states: BTreeMap<String, Value> = BTreeMap::new();
    let mut report = Vec::new();
    for t in &ticks {
        let Some(text) = &t.snapshot_json else { continue };
        let snap: Value = serde_json::from_str(text)
            .map_err(|e| fail(exit::ERROR, format!("tick {}: recorded snapshot is not JSON: {e}", t.tick_id)))?;
        let runs = set.evaluate(&snap, &states);
        let mut now: Vec<String> = Vec::new();
        for r in runs {
            if let Some(e) = &r.error {
                now.push(format!("{} failed: {e}", r.rule));
                continue;
            }
            states.insert(r.rule.clone(), r.state.clone());
            now.extend(
                r.decisions
                    .iter()
                    .map(|d| format!("{} {} {} [{}]", d.rule, d.kind.name(), d.kind.target(), d.priority)),
            );
        }
        let then: Vec<String> = store
            .decisions()
            .list(t.tick_id)
            .await?
            .iter()
            .map(|d| format!("{} {} {} [{}]", d.rule, d.kind, d.target, d.priority))
            .collect();
        let added: Vec<String> = now.iter().filter(|d| !then.contains(d)).cloned().collect();
        let removed: Vec<String> = then.iter().filter(|d| !now.contains(d)).cloned().collect();
        report.push(BacktestTick { tick_id: t.tick_id, recorded_digest: t.rules_digest.clone(), added, removed });
    }
    let differing = report.iter().filter(|t| !t.added.is_empty() || !t.removed.is_empty()).count();
    if out.json {
        out.print_json(&serde_json::json!({
            "digest": set.digest(), "ticks": report.len(), "differing": differing, "report": report,
        }));
    } else {
        for t in &report {
            if t.added.is_empty() && t.removed.is_empty() {
                continue;
            }
            let same = t.recorded_digest.as_deref() == Some(set.digest());
            say!(out, "tick #{}{}", t.tick_id, if same { " (same rules digest)" } else { "" });
            for d in &t.removed {
                say!(out, "  - {d}");
            }
            for d in &t.added {
                say!(out, "  + {d}");
            }
        }
        say!(
            out,
            "{} tick(s) replayed, {differing} would decide differently (- recorded then, + rules on disk)",
            report.len()
        );
    }
    Ok(exit::OK)
}

/// `rules bench`: the evaluation cost of the rule set per tick, and of `synthetic` copies of
/// a typical rule.
pub fn bench(dir: &Path, config: &Config, iterations: u32, synthetic: usize, out: &Out) -> anyhow::Result<u8> {
    let set = match load(dir, config)? {
        Ok(s) => s,
        Err(d) => return Err(fail(exit::ERROR, format!("{} rule error(s): {}", d.len(), d[0]))),
    };
    let snap = crate::decide::bench_snapshot();
    let shipped = crate::decide::bench(&set, &snap, iterations);
    let sources: Vec<(std::path::PathBuf, String)> = (0..synthetic)
        .map(|i| {
            (
                format!("synthetic_{i:02}.rhai").into(),
                format!(
                    "let out = [];\nfor s in snap.samples.retry {{ if s.attempts > {} && s.age_seconds > 10.0 {{ out.push(retry(s.id, \"r\", 5)); }} }}\nif snap.queue.pending > {} {{ out.push(rebalance(\"sat\", 9)); }}\nout",
                    i % 3,
                    40 + i
                ),
            )
        })
        .collect();
    let many = RuleSet::from_sources(sources, &config.rules)
        .map_err(|d| fail(exit::ERROR, format!("synthetic rules do not compile: {}", d[0])))?;
    let fifty = crate::decide::bench(&many, &snap, iterations);
    let figures = serde_json::json!({
        "iterations": iterations,
        "rules": set.len(),
        "per_tick_ms": shipped.as_secs_f64() * 1000.0,
        "synthetic_rules": synthetic,
        "synthetic_per_tick_ms": fifty.as_secs_f64() * 1000.0,
    });
    if out.json {
        out.print_json(&figures);
    } else {
        say!(
            out,
            "{} shipped rule(s): {:.3} ms per tick; {synthetic} rules: {:.3} ms per tick (mean of {iterations}; snapshot with 20 samples per state)",
            set.len(),
            shipped.as_secs_f64() * 1000.0,
            fifty.as_secs_f64() * 1000.0
        );
    }
    Ok(exit::OK)
}

/// `explain --tick N`.
pub async fn explain(store: &Store, tick_id: i64, out: &Out) -> anyhow::Result<u8> {
    let crate::explain::Explain { tick, snapshot, rules_digest: digest, decisions } =
        crate::explain::explain(store, tick_id)
            .await?
            .ok_or_else(|| fail(exit::ERROR, format!("tick {tick_id} not found")))?;
    if out.json {
        out.print_json(&serde_json::json!({
            "tick": tick, "snapshot": snapshot, "rules_digest": digest, "decisions": decisions,
        }));
        return Ok(exit::OK);
    }
    say!(
        out,
        "tick #{} {} by {} (epoch {}), started {}",
        tick.id,
        tick.status,
        tick.owner,
        tick.epoch,
        tick.started_at.to_rfc3339()
    );
    if let Some(n) = &tick.notes {
        say!(out, "  notes: {n}");
    }
    match &snapshot {
        Some(s) => {
            let g = |p: &str| s.pointer(p).map_or("-".to_string(), |v| v.to_string());
            say!(
                out,
                "snapshot: health {} {}; pending {}, running {}, retry {}, dlq {}, due {}; oldest pending {}s",
                g("/health/score"),
                g("/health/status"),
                g("/queue/pending"),
                g("/queue/running"),
                g("/queue/retry"),
                g("/queue/dlq"),
                g("/queue/due_now"),
                g("/queue/oldest_pending_age_seconds"),
            );
            say!(
                out,
                "          failures 1h {} (15m {}), successes 1h {}, error rate {}; failed ticks 1h {}; paused {}",
                g("/recent/failures_1h"),
                g("/recent/failures_15m"),
                g("/recent/successes_1h"),
                g("/recent/error_rate_1h"),
                g("/ledger/failed_ticks_1h"),
                g("/flags/paused"),
            );
            if let Some(Value::Array(reasons)) = s.pointer("/health/reasons")
                && !reasons.is_empty()
            {
                let r: Vec<String> = reasons.iter().map(|r| r.as_str().unwrap_or_default().to_string()).collect();
                say!(out, "          health lost points for: {}", r.join("; "));
            }
        }
        None => say!(out, "snapshot: not recorded (a tick from before the rule engine, or one that stopped early)"),
    }
    if let Some(d) = &digest {
        say!(out, "rules digest: {d}");
    }
    if decisions.is_empty() {
        say!(out, "decisions: none");
    }
    let mut by_rule: BTreeMap<&str, Vec<_>> = BTreeMap::new();
    for d in &decisions {
        by_rule.entry(d.rule.as_str()).or_default().push(d);
    }
    for (rule, ds) in by_rule {
        say!(out, "rule {rule}:");
        for d in ds {
            say!(out, "  {} {} [priority {}] {} -> {}", d.kind, d.target, d.priority, d.reason, d.outcome);
        }
    }
    Ok(exit::OK)
}

/// Prints what `run-once --dry-run` found.
pub fn print_dry_run(r: &DryRunReport, out: &Out) {
    let decisions: Vec<Value> = r
        .decided
        .decisions
        .iter()
        .map(|d| {
            let outcome = if d.outcome == DecisionOutcome::Suppressed(Suppressed::DryRun) {
                "would apply".to_string()
            } else {
                d.outcome.to_string()
            };
            serde_json::json!({
                "rule": d.rule, "kind": d.kind, "target": d.target, "priority": d.priority,
                "reason": d.reason, "outcome": outcome,
            })
        })
        .collect();
    if out.json {
        let dispatch: Vec<Value> = r
            .would_dispatch
            .iter()
            .map(|a| serde_json::json!({"id": a.id, "action_type": a.action_type, "priority": a.priority, "status": a.status}))
            .collect();
        out.print_json(&serde_json::json!({
            "dry_run": true, "snapshot": r.snapshot, "rules_digest": r.rules_digest, "decisions": decisions,
            "diagnostics": r.decided.diagnostics, "throttle": r.decided.throttle, "would_dispatch": dispatch,
        }));
        return;
    }
    let s = &r.snapshot;
    say!(
        out,
        "dry run (nothing written): health {} {}; pending {}, running {}, retry {}, dlq {}, due {}; failures 1h {} (error rate {:.2}); paused {}",
        s.health.score,
        s.health.status,
        s.queue.pending,
        s.queue.running,
        s.queue.retry,
        s.queue.dlq,
        s.queue.due_now,
        s.recent.failures_1h,
        s.recent.error_rate_1h,
        s.flags.paused
    );
    for d in &r.decided.diagnostics {
        say!(out, "rule error: {d}");
    }
    if decisions.is_empty() {
        say!(out, "decisions: none");
    }
    for d in &r.decided.decisions {
        let outcome = if d.outcome == DecisionOutcome::Suppressed(Suppressed::DryRun) {
            "would apply".to_string()
        } else {
            d.outcome.to_string().replacen(':', ": ", 1)
        };
        say!(out, "  [{}] {} {} {}: {} -> {outcome}", d.priority, d.rule, d.kind, d.target, d.reason);
    }
    if let Some(n) = r.decided.throttle {
        say!(out, "throttle: dispatch capped at {n}");
    }
    say!(
        out,
        "would dispatch {} action(s){}",
        r.would_dispatch.len(),
        if r.would_dispatch.is_empty() { "" } else { ":" }
    );
    for a in &r.would_dispatch {
        say!(out, "  #{} {} priority {} ({})", a.id, a.action_type, a.priority, a.status);
    }
}
