//! The benchmark suite: prints a table and one JSON line per figure, and writes SVG charts.
//!
//! ```text
//! cargo build --release && cargo run --release --example bench -- [--runs 5] [--quick] [--only NAME]
//! ```
//!
//! Figures: `cold_run_once` (the whole release binary, start to exit, wall time and peak RSS),
//! `tick_overhead` (a tick with nothing due, with the shipped rules, against 1k..1M rows of
//! history, SQLite and PostgreSQL), `schedules_tick` (that idle tick over 1k rows, with no
//! schedule and with 1,000 defined), `drain` (50k NOOP actions, concurrency 16, SQLite and PostgreSQL; every
//! completion fenced, durable and logged; twice: bare, with no rules, and `drain_default`, in the
//! default configuration with the shipped rules loaded, which is what users run; each also as
//! CPU per action, `_cpu` of this process and `_pg_cpu` of PostgreSQL's server processes, from
//! `/proc/<pid>/stat`; on PostgreSQL each drain gets a database of its own),
//! `drain_concurrency` (drain rate against
//! concurrency), `bulk_enqueue` (JSON Lines into SQLite) and `memory` (RSS of `run` over
//! 10,000 ticks) and `workers_scaling` (PostgreSQL only: a leader `run --no-execute --no-http`
//! beside 1, 2 and 4 `orchestrator worker --concurrency 16` processes of the release binary,
//! draining WEBHOOK actions to a receiver in this process that answers after 200 ms, proof mode
//! off; what PostgreSQL carried with four; and NOOP drains by one and four workers against the single
//! process of `drain`), and `limits` (the claim's cost with 0, 3 and 20 limited types, the 50k
//! drain with three limited types that do not bind, and an unlimited type's drain beside a
//! backlog held by a rate limit), and `pickup` (the time from an enqueue to its action's finish
//! on an idle `run` in the default configuration, p50/p99/max of 200, and the idle daemon's CPU
//! and PostgreSQL transactions per second). PostgreSQL figures need `ORCHESTRATOR_BENCH_PG_URL` (or
//! `ORCHESTRATOR_TEST_PG_URL`; `--only workers_scaling` falls back to
//! postgres://postgres@127.0.0.1:5432/test); each run uses a fresh schema, or for the workers a
//! fresh database (`CREATE DATABASE`), so `pg_stat_activity` counts only its processes.
//! `--traces off|on` runs the figures under `run`'s own log subscriber, with traces off, or on
//! and exported to an OTLP/HTTP receiver in this process (BENCHMARKS.md, Traces).
//! Timings are medians over `--runs`.
//! This is a measuring tool, not a test: it asserts only that the work it timed was done.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use orchestrator::adapters::Registry;
use orchestrator::config::Config;
use orchestrator::model::ActionStatus;
use orchestrator::queue;
use orchestrator::store::{FlagChange, Store, StoreOptions};
use orchestrator::tick::{Engine, TickOutcome};

struct Args {
    runs: usize,
    quick: bool,
    only: Option<String>,
    pg: Option<String>,
    /// `--no-pg`: not even the workers figures' default URL.
    no_pg: bool,
    out: PathBuf,
    /// `--bin PATH`: the binary the process figures (`cold_run_once`, `pickup`, the workers)
    /// run, e.g. an earlier build's, for a before and after in one run.
    bin: Option<PathBuf>,
    /// `--rules DIR`: the rules the daemon figures (`pickup`, `steady`) load instead of the
    /// shipped ones, e.g. an empty directory to see what the rules cost.
    rules: Option<PathBuf>,
    /// `--traces off|on`: this process logs as `run` does (its subscriber, `info`, lines to a
    /// sink) with traces off, or on and exported to a receiver in this process; absent, no
    /// subscriber at all, as before.
    traces: Option<bool>,
    /// `--peer DIR`: a copy of `shared/peers/graphile-bench` with its `node_modules`
    /// (`npm ci`): the PostgreSQL drains run graphile-worker's batched mode on the same
    /// database server just before each of ours, and print our rate over its.
    peer: Option<PathBuf>,
    /// `--rows N`: `partition_cap` at this backlog only, instead of its three sizes.
    rows: Option<usize>,
}

/// graphile-worker's batched drain of `n` no-op jobs at concurrency 16 (`node bench.js n 16
/// batched URL` in `peer`, which makes and drops a database of its own through `pg`), in jobs/s,
/// read from the one line it prints: `… drained in S s = R/s (…)`.
fn peer_rate(peer: &Path, pg: &str, n: usize) -> anyhow::Result<f64> {
    let out = std::process::Command::new("node")
        .current_dir(peer)
        .args(["bench.js", &n.to_string(), "16", "batched", pg])
        .output()
        .map_err(|e| anyhow::anyhow!("--peer {}: cannot run node: {e}", peer.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("graphile-worker batched")).ok_or_else(|| {
        anyhow::anyhow!(
            "--peer {}: no result line ({}): {}",
            peer.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let rate = line.split(" = ").nth(1).and_then(|r| r.split("/s").next()).and_then(|r| r.parse::<f64>().ok());
    rate.ok_or_else(|| anyhow::anyhow!("--peer: cannot read the rate in {line:?}"))
}

/// Our rates over the peer's, run by run.
fn over_peer(ours: &[f64], peer: &[f64]) -> Vec<f64> {
    ours.iter().zip(peer).map(|(o, p)| o / p).collect()
}

/// `--sqlite-sync normal` measures SQLite with `synchronous=NORMAL` instead of FULL.
static SQLITE_FULL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

fn store_options() -> StoreOptions {
    StoreOptions {
        sqlite_synchronous_full: SQLITE_FULL.load(std::sync::atomic::Ordering::Relaxed),
        ..StoreOptions::default()
    }
}

const USAGE: &str = "usage: bench [--runs N] [--quick] [--only NAME] [--out DIR] [--no-pg] \
     [--sqlite-sync full|normal] [--bin PATH] [--rules DIR] [--traces off|on] [--peer DIR] [--rows N]";

/// What `--only` takes: each group of figures by the name `main` runs it under.
const ONLY: &[&str] = &[
    "cold_run_once",
    "tick_overhead",
    "schedules",
    "drain",
    "drain_concurrency",
    "bulk_enqueue",
    "memory",
    "workers_scaling",
    "limits",
    "partition_cap",
    "pickup",
    "steady",
];

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        runs: 5,
        quick: false,
        only: None,
        pg: std::env::var("ORCHESTRATOR_BENCH_PG_URL").or_else(|_| std::env::var("ORCHESTRATOR_TEST_PG_URL")).ok(),
        no_pg: false,
        out: PathBuf::from("target/bench"),
        bin: None,
        rules: None,
        traces: None,
        peer: std::env::var_os("ORCHESTRATOR_BENCH_PEER").map(PathBuf::from),
        rows: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--runs" => a.runs = it.next().ok_or_else(|| anyhow::anyhow!("--runs needs N"))?.parse()?,
            "--quick" => a.quick = true,
            "--rows" => a.rows = Some(it.next().ok_or_else(|| anyhow::anyhow!("--rows needs N"))?.parse()?),
            "--only" => a.only = it.next(),
            "--out" => a.out = PathBuf::from(it.next().ok_or_else(|| anyhow::anyhow!("--out needs DIR"))?),
            "--bin" => a.bin = Some(PathBuf::from(it.next().ok_or_else(|| anyhow::anyhow!("--bin needs PATH"))?)),
            "--rules" => a.rules = Some(PathBuf::from(it.next().ok_or_else(|| anyhow::anyhow!("--rules needs DIR"))?)),
            "--peer" => a.peer = Some(PathBuf::from(it.next().ok_or_else(|| anyhow::anyhow!("--peer needs DIR"))?)),
            "--traces" => match it.next().as_deref() {
                Some("off") => a.traces = Some(false),
                Some("on") => a.traces = Some(true),
                _ => anyhow::bail!("--traces takes off or on"),
            },
            "--no-pg" => {
                a.pg = None;
                a.no_pg = true;
            }
            "--sqlite-sync" => match it.next().as_deref() {
                Some("full") => SQLITE_FULL.store(true, std::sync::atomic::Ordering::Relaxed),
                Some("normal") => SQLITE_FULL.store(false, std::sync::atomic::Ordering::Relaxed),
                _ => anyhow::bail!("--sqlite-sync takes full or normal"),
            },
            "--help" | "-h" => {
                println!("{USAGE}\nNAME: {}", ONLY.join(", "));
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    anyhow::ensure!(a.runs >= 1, "--runs must be at least 1");
    if let Some(name) = &a.only {
        anyhow::ensure!(ONLY.contains(&name.as_str()), "--only {name}: no such figure (one of {})", ONLY.join(", "));
    }
    Ok(a)
}

/// One printed figure.
struct Figure {
    name: String,
    backend: String,
    param: String,
    value: f64,
    unit: &'static str,
    runs: Vec<f64>,
}

fn emit(f: &Figure) {
    println!(
        "{:<18} {:<9} {:<14} {:>12.3} {:<8} (runs: {})",
        f.name,
        f.backend,
        f.param,
        f.value,
        f.unit,
        f.runs.iter().map(|v| format!("{v:.3}")).collect::<Vec<_>>().join(", ")
    );
    println!(
        "{}",
        serde_json::json!({"figure": f.name, "backend": f.backend, "param": f.param, "value": f.value, "unit": f.unit, "runs": f.runs})
    );
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// A fresh database: a SQLite file in a temp dir, or a fresh PostgreSQL schema.
struct Db {
    url: String,
    store: Store,
    _dir: tempfile::TempDir,
    pg: Option<(String, String)>,
}

impl Db {
    async fn new(backend: &str, pg: Option<&str>) -> anyhow::Result<Db> {
        let dir = tempfile::tempdir()?;
        let (url, pg) = match backend {
            "sqlite" => (format!("sqlite:{}", dir.path().join("bench.db").display()), None),
            _ => {
                // A database of its own, so that `pg_stat_activity` names its server processes.
                let base = pg.ok_or_else(|| anyhow::anyhow!("no PostgreSQL URL"))?;
                let name = format!("bench_{:016x}", fastrand::u64(..));
                let admin = Store::connect(base, &StoreOptions::default()).await?;
                admin.bench().create_database(&name).await?;
                admin.close().await?;
                (pg_url(base, &name), Some((base.to_string(), name)))
            }
        };
        let store = Store::open(&url, &store_options()).await?;
        Ok(Db { url, store, _dir: dir, pg })
    }

    fn config(&self) -> Config {
        let mut c = Config::defaults();
        c.database_url = self.url.clone();
        c.artifacts_dir = self._dir.path().join("artifacts");
        c.sqlite_synchronous_full = SQLITE_FULL.load(std::sync::atomic::Ordering::Relaxed);
        c
    }

    async fn drop(self) {
        self.store.close().await.ok();
        if let Some((base, name)) = self.pg
            && let Ok(admin) = Store::connect(&base, &StoreOptions::default()).await
        {
            admin.bench().drop_database(&name).await.ok();
            admin.close().await.ok();
        }
    }

    /// CPU seconds so far of this process and, on PostgreSQL, of each server process connected
    /// to the database (by pid).
    async fn cpu(&self) -> anyhow::Result<(f64, BTreeMap<u32, f64>)> {
        let own = cpu_seconds(std::process::id()).unwrap_or(0.0);
        let mut server = BTreeMap::new();
        if let Some((_, name)) = &self.pg {
            for pid in self.store.bench().connections(name).await?.split(", ").filter_map(|p| p.parse().ok()) {
                if let Some(s) = cpu_seconds(pid) {
                    server.insert(pid, s);
                }
            }
        }
        Ok((own, server))
    }

    /// `n` rows of finished history plus 100 open rows scheduled for later
    /// ([`orchestrator::store::Bench::history`]).
    async fn history(&self, n: u64) -> anyhow::Result<()> {
        Ok(self.store.bench().history(n).await?)
    }

    /// `n` due NOOP actions, through the real bulk path.
    async fn due_noops(&self, n: usize) -> anyhow::Result<()> {
        let lines: String =
            (0..n).map(|i| format!("{{\"action_type\":\"NOOP\",\"payload\":{{\"i\":{i}}}}}\n")).collect();
        let report = queue::enqueue_jsonl(&self.store, lines.as_bytes(), 3).await?;
        anyhow::ensure!(report.created == n as u64, "created {} of {n}", report.created);
        Ok(())
    }
}

fn backends(a: &Args) -> Vec<&'static str> {
    if a.pg.is_some() { vec!["sqlite", "postgres"] } else { vec!["sqlite"] }
}

fn wanted(a: &Args, name: &str) -> bool {
    a.only.as_deref().is_none_or(|o| o == name)
}

/// `--bin`'s binary, else the release binary beside this example (`<target>/release/orchestrator`,
/// wherever `CARGO_TARGET_DIR` put it), else `target/release/orchestrator`.
fn release_binary(a: &Args) -> anyhow::Result<PathBuf> {
    if let Some(bin) = &a.bin {
        anyhow::ensure!(bin.exists(), "--bin {}: no such file", bin.display());
        return Ok(bin.clone());
    }
    let beside =
        std::env::current_exe().ok().and_then(|e| e.parent().and_then(Path::parent).map(|d| d.join("orchestrator")));
    let p = beside.filter(|p| p.exists()).unwrap_or_else(|| PathBuf::from("target/release/orchestrator"));
    anyhow::ensure!(p.exists(), "build the release binary first: cargo build --release");
    Ok(std::fs::canonicalize(p)?)
}

/// Runs `cmd` under GNU time; returns (wall seconds, peak RSS in KiB).
fn timed(bin: &Path, args: &[&str], cwd: &Path) -> anyhow::Result<(f64, f64)> {
    let report = cwd.join(".time");
    let start = Instant::now();
    let status = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&report)
        .arg(bin)
        .args(args)
        .current_dir(cwd)
        .stdout(std::process::Stdio::null())
        .status()?;
    let wall = start.elapsed().as_secs_f64();
    anyhow::ensure!(status.success(), "{} {:?} failed: {status}", bin.display(), args);
    let rss: f64 = std::fs::read_to_string(&report)?.trim().lines().last().unwrap_or("0").parse()?;
    Ok((wall, rss))
}

fn cold_run_once(a: &Args) -> anyhow::Result<Vec<Figure>> {
    let bin = release_binary(a)?;
    let (mut walls, mut rss) = (Vec::new(), Vec::new());
    for _ in 0..a.runs.max(5) {
        let dir = tempfile::tempdir()?;
        let (w, r) = timed(&bin, &["run-once"], dir.path())?;
        anyhow::ensure!(dir.path().join("orchestrator.db").exists(), "run-once created no database");
        walls.push(w * 1000.0);
        rss.push(r / 1024.0);
    }
    Ok(vec![
        Figure {
            name: "cold_run_once".into(),
            backend: "sqlite".into(),
            param: "wall".into(),
            value: median(&mut walls.clone()),
            unit: "ms",
            runs: walls,
        },
        Figure {
            name: "cold_run_once".into(),
            backend: "sqlite".into(),
            param: "peak_rss".into(),
            value: median(&mut rss.clone()),
            unit: "MiB",
            runs: rss,
        },
    ])
}

async fn tick_overhead(a: &Args) -> anyhow::Result<Vec<Figure>> {
    let sizes: &[u64] = if a.quick { &[1_000, 100_000] } else { &[1_000, 10_000, 100_000, 1_000_000] };
    let ticks = if a.quick { 50 } else { 200 };
    let mut out = Vec::new();
    for backend in backends(a) {
        for &n in sizes {
            let db = Db::new(backend, a.pg.as_deref()).await?;
            db.history(n).await?;
            let engine = Engine::new(db.store.clone(), db.config(), Registry::builtin());
            // The tick as it runs in production: snapshot, the shipped rules, ledger.
            let rules = engine.decider().load_rules()?;
            anyhow::ensure!(rules > 0, "no rules loaded from rules/ (run the bench from the repository root)");
            let mut per_run = Vec::new();
            for _ in 0..a.runs {
                let mut samples = Vec::with_capacity(ticks);
                for _ in 0..ticks {
                    let t = Instant::now();
                    match engine.tick().await? {
                        TickOutcome::Ran(r) => anyhow::ensure!(r.attempted == 0, "something was due"),
                        TickOutcome::NotLeader { .. } => anyhow::bail!("lost the lease"),
                    }
                    samples.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                per_run.push(median(&mut samples));
            }
            engine.release().await?;
            out.push(Figure {
                name: "tick_overhead".into(),
                backend: backend.into(),
                param: format!("rows={n}"),
                value: median(&mut per_run.clone()),
                unit: "ms",
                runs: per_run,
            });
            emit(out.last().expect("just pushed"));
            db.drop().await;
        }
    }
    Ok(out)
}

/// The idle tick (shipped rules, 1,000 rows of history) with no schedule and with 1,000 defined,
/// daily at times spread over the day: what the schedules cost a tick (the claim reads nothing
/// of theirs).
async fn schedules(a: &Args) -> anyhow::Result<Vec<Figure>> {
    use orchestrator::schedules::ScheduleSpec;
    let ticks = if a.quick { 50 } else { 200 };
    let mut out = Vec::new();
    for backend in backends(a) {
        for defined in [0usize, 1000] {
            let db = Db::new(backend, a.pg.as_deref()).await?;
            db.history(1000).await?;
            let defs = (0..defined)
                .map(|i| {
                    let spec = ScheduleSpec {
                        cron: format!("{} {} * * *", i % 60, (i / 60) % 24),
                        action_type: "NOOP".into(),
                        ..ScheduleSpec::default()
                    };
                    orchestrator::services::scheduler::stored(&format!("s{i}"), &spec, 3)
                })
                .collect::<Result<Vec<_>, String>>()
                .map_err(anyhow::Error::msg)?;
            db.store.schedules().write_config(&defs).await?;
            let engine = Engine::new(db.store.clone(), db.config(), Registry::builtin());
            anyhow::ensure!(engine.decider().load_rules()? > 0, "no rules loaded from rules/");
            let mut per_run = Vec::new();
            for _ in 0..a.runs {
                let mut samples = Vec::with_capacity(ticks);
                for _ in 0..ticks {
                    let t = Instant::now();
                    anyhow::ensure!(matches!(engine.tick().await?, TickOutcome::Ran(_)), "lost the lease");
                    samples.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                per_run.push(median(&mut samples));
            }
            engine.release().await?;
            out.push(figure_on(backend, "schedules_tick", format!("defined={defined}"), "ms", per_run));
            emit(out.last().expect("just pushed"));
            db.drop().await;
        }
    }
    Ok(out)
}

/// Drains `n` NOOP actions. `shipped_rules`: the default configuration (the shipped rules loaded,
/// every setting at its default apart from the concurrency and the tick budget, which both
/// figures share); else the bare engine with no rules.
/// What a drain runs beside its NOOP backlog: limits set first, and a backlog of `SLOW`
/// actions (served by an adapter that does nothing) at a higher priority.
#[derive(Default)]
struct Beside {
    limits: Vec<(&'static str, &'static str)>,
    slow_backlog: usize,
}

/// Parses `max_running=N,rate=N/P,daily_budget=N` into a limit.
fn limit(spec: &str) -> orchestrator::limits::LimitSpec {
    let mut l = orchestrator::limits::LimitSpec::default();
    for kv in spec.split(',') {
        let (k, v) = kv.split_once('=').expect("field=value");
        l.set(k.parse().expect("a limit field"), v).expect("a limit value");
    }
    l
}

/// `SLOW`: succeeds at once, like NOOP, under a type of its own.
struct Slow;

#[async_trait::async_trait]
impl orchestrator::adapters::Adapter for Slow {
    fn action_type(&self) -> &str {
        "SLOW"
    }

    fn render_proof(
        &self,
        _: &orchestrator::model::Action,
    ) -> Result<Option<orchestrator::adapters::Proof>, orchestrator::adapters::AdapterError> {
        Ok(None)
    }

    async fn execute(
        &self,
        _: &orchestrator::adapters::ExecContext,
        _: &orchestrator::model::Action,
    ) -> Result<orchestrator::adapters::Outcome, orchestrator::adapters::AdapterError> {
        Ok(orchestrator::adapters::Outcome { message: "done".into() })
    }
}

async fn drain_once(
    backend: &str,
    pg: Option<&str>,
    n: usize,
    concurrency: u32,
    shipped_rules: bool,
) -> anyhow::Result<f64> {
    Ok(drain_run(backend, pg, n, concurrency, shipped_rules, &Beside::default()).await?.rate)
}

/// What one drain measured: actions per second, and the CPU each action cost this process and
/// (PostgreSQL) the database's server processes, in µs, from `/proc/<pid>/stat` before and
/// after the drain (a server process that connected during it counts whole).
struct DrainRun {
    rate: f64,
    process_us: f64,
    server_us: Option<f64>,
}

/// NOOP actions drained per second; with `beside`'s limits and `SLOW` backlog, which must not
/// slow the NOOP drain (the backlog is left as its limits leave it).
async fn drain_run(
    backend: &str,
    pg: Option<&str>,
    n: usize,
    concurrency: u32,
    shipped_rules: bool,
    beside: &Beside,
) -> anyhow::Result<DrainRun> {
    let db = Db::new(backend, pg).await?;
    db.due_noops(n).await?;
    for (t, spec) in &beside.limits {
        db.store.limits().set_limit(t, &limit(spec)).await?;
    }
    if beside.slow_backlog > 0 {
        let lines: String = (0..beside.slow_backlog)
            .map(|i| format!("{{\"action_type\":\"SLOW\",\"priority\":5,\"payload\":{{\"i\":{i}}}}}\n"))
            .collect();
        queue::enqueue_jsonl(&db.store, lines.as_bytes(), 3).await?;
    }
    db.store.flags().set_flags(FlagChange { proof_mode: Some(false), ..Default::default() }).await?;
    let mut config = db.config();
    config.max_actions_per_tick = 1_000_000;
    config.dispatch_concurrency = concurrency;
    config.max_unrecorded = orchestrator::config::default_max_unrecorded(concurrency);
    config.tick_interval = Duration::ZERO;
    config.max_tick = Duration::from_secs(600);
    if shipped_rules {
        config.rules_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    }
    let mut registry = Registry::builtin();
    registry.register(Slow);
    let engine = Engine::new(db.store.clone(), config, registry);
    if shipped_rules {
        anyhow::ensure!(engine.decider().load_rules()? >= 7, "the shipped rules did not load");
    }
    let (process0, server0) = db.cpu().await?;
    let start = Instant::now();
    loop {
        match engine.tick().await? {
            TickOutcome::Ran(r) if r.attempted == 0 => break,
            TickOutcome::Ran(_) => {}
            TickOutcome::NotLeader { .. } => anyhow::bail!("lost the lease"),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let (process1, server1) = db.cpu().await?;
    let per_action = |seconds: f64| seconds * 1e6 / n as f64;
    let process_us = per_action(process1 - process0);
    let server_us = db
        .pg
        .is_some()
        .then(|| per_action(server1.iter().map(|(pid, s)| s - server0.get(pid).copied().unwrap_or(0.0)).sum::<f64>()));
    engine.release().await?;
    let noop = db
        .store
        .actions()
        .list_actions(&orchestrator::store::ActionFilter {
            status: Some(ActionStatus::Success),
            action_type: Some("NOOP".into()),
            limit: n as u64 + 1,
        })
        .await?
        .len();
    anyhow::ensure!(noop == n, "{noop} of {n} NOOP succeeded");
    let logs = db.store.history().logs(None, 1).await?;
    anyhow::ensure!(!logs.is_empty(), "no log rows");
    db.drop().await;
    Ok(DrainRun { rate: n as f64 / secs, process_us, server_us })
}

async fn drain(a: &Args) -> anyhow::Result<Vec<Figure>> {
    let n = if a.quick { 10_000 } else { 50_000 };
    let mut out = Vec::new();
    for backend in backends(a) {
        for (name, shipped) in [("drain", false), ("drain_default", true)] {
            let (mut rates, mut process, mut server) = (Vec::new(), Vec::new(), Vec::new());
            let mut peer = Vec::new();
            for _ in 0..a.runs {
                if let (Some(dir), Some(pg), "postgres") = (&a.peer, &a.pg, backend) {
                    peer.push(peer_rate(dir, pg, n)?);
                }
                let run = drain_run(backend, a.pg.as_deref(), n, 16, shipped, &Beside::default()).await?;
                rates.push(run.rate);
                process.push(run.process_us);
                server.extend(run.server_us);
            }
            let ratio = over_peer(&rates, &peer);
            let cpu = [(format!("{name}_cpu"), process), (format!("{name}_pg_cpu"), server)];
            let peer = [(format!("{name}_peer"), "jobs/s", peer), (format!("{name}_vs_peer"), "x", ratio)];
            for (name, unit, runs) in std::iter::once((name.to_string(), "actions/s", rates))
                .chain(cpu.into_iter().filter(|(_, r)| !r.is_empty()).map(|(n, r)| (n, "µs/action", r)))
                .chain(peer.into_iter().filter(|(_, _, r)| !r.is_empty()))
            {
                out.push(Figure {
                    name,
                    backend: backend.into(),
                    param: format!("n={n},c=16"),
                    value: median(&mut runs.clone()),
                    unit,
                    runs,
                });
                emit(out.last().expect("just pushed"));
            }
        }
    }
    Ok(out)
}

/// The three limited (not binding) types of `limits`' drain: NOOP itself under all three
/// kinds of limit, and two other types.
const THREE_LIMITS: [(&str, &str); 3] = [
    ("NOOP", "max_running=100000,rate=100000000/1s,daily_budget=1000000000"),
    ("WEBHOOK", "max_running=10"),
    ("COMMAND", "max_running=1"),
];

/// `limits`: what limits cost and what they must not cost.
/// - `limits_claim`: one claim of 64 due NOOP actions, with 0, 3 and 20 limited types (NOOP
///   one of them when any, its limits not binding), µs per claim (median of 200 claims);
/// - `drain_limited`: the 50k NOOP drain in the default configuration (shipped rules) with
///   three limited, not binding, types, against `drain_default` (target: within 15 %);
/// - `mixed_queue`: 10k NOOP drained beside 5k `SLOW` actions of a higher priority held by
///   `rate: 10/1h` (the pick leaves them out), against the same drain without them.
async fn limits(a: &Args) -> anyhow::Result<Vec<Figure>> {
    let mut out = Vec::new();
    let mut push = |f: Figure| {
        emit(&f);
        out.push(f);
    };
    for backend in backends(a) {
        for k in [0usize, 3, 20] {
            let mut runs = Vec::new();
            for _ in 0..a.runs.min(3) {
                runs.push(claim_cost(backend, a.pg.as_deref(), k).await?);
            }
            push(figure_on(backend, "limits_claim", format!("limited={k}"), "µs/claim", runs));
        }
        // Each pair is measured in turns, so that a slow minute of the machine hits both alike.
        let n = if a.quick { 10_000 } else { 50_000 };
        let (mut bare, mut limited) = (Vec::new(), Vec::new());
        for _ in 0..a.runs {
            bare.push(drain_run(backend, a.pg.as_deref(), n, 16, true, &Beside::default()).await?.rate);
            let beside = Beside { limits: THREE_LIMITS.to_vec(), slow_backlog: 0 };
            limited.push(drain_run(backend, a.pg.as_deref(), n, 16, true, &beside).await?.rate);
        }
        push(figure_on(backend, "drain_default", format!("n={n},c=16"), "actions/s", bare));
        push(figure_on(backend, "drain_limited", format!("n={n},c=16"), "actions/s", limited));
        let n = if a.quick { 5_000 } else { 10_000 };
        let (mut alone, mut mixed) = (Vec::new(), Vec::new());
        for _ in 0..a.runs.min(3) {
            let beside = |slow_backlog| Beside { limits: vec![("SLOW", "rate=10/1h")], slow_backlog };
            alone.push(drain_run(backend, a.pg.as_deref(), n, 16, true, &beside(0)).await?.rate);
            mixed.push(drain_run(backend, a.pg.as_deref(), n, 16, true, &beside(5_000)).await?.rate);
        }
        push(figure_on(backend, "mixed_alone", format!("n={n}"), "NOOP/s", alone));
        push(figure_on(backend, "mixed_queue", format!("n={n},slow=5000"), "NOOP/s", mixed));
    }
    Ok(out)
}

/// An adapter that succeeds at once, under the type it is given.
struct Instant0(&'static str);

#[async_trait::async_trait]
impl orchestrator::adapters::Adapter for Instant0 {
    fn action_type(&self) -> &str {
        self.0
    }

    fn render_proof(
        &self,
        _: &orchestrator::model::Action,
    ) -> Result<Option<orchestrator::adapters::Proof>, orchestrator::adapters::AdapterError> {
        Ok(None)
    }

    async fn execute(
        &self,
        _: &orchestrator::adapters::ExecContext,
        _: &orchestrator::model::Action,
    ) -> Result<orchestrator::adapters::Outcome, orchestrator::adapters::AdapterError> {
        Ok(orchestrator::adapters::Outcome { message: "done".into() })
    }
}

/// The partitioned type of `partition_cap`, its tracked partner values (the default cap) and
/// as many more, which share the overflow partition.
const PARTNER_TYPE: &str = "PARTNER";
const TRACKED: usize = orchestrator::limits::DEFAULT_PARTITIONS as usize;

/// `n` due rows of [`PARTNER_TYPE`]: every other one of an untracked partner (the overflow) at
/// priority 5, so that the overflow's backlog leads the queue; the rest of the tracked
/// partners at priority 0.
async fn partner_backlog(store: &Store, n: usize) -> anyhow::Result<()> {
    let lines: String = (0..n)
        .map(|i| {
            let (partner, priority) = if i % 2 == 0 { (TRACKED + (i / 2) % TRACKED, 5) } else { ((i / 2) % TRACKED, 0) };
            format!(
                "{{\"action_type\":\"{PARTNER_TYPE}\",\"priority\":{priority},\"payload\":{{\"partner\":\"p{partner}\",\"i\":{i}}}}}\n"
            )
        })
        .collect();
    let report = queue::enqueue_jsonl(store, lines.as_bytes(), 3).await?;
    anyhow::ensure!(report.created == n as u64, "created {} of {n}", report.created);
    Ok(())
}

/// A bench claimer of every type, registered as `id`.
async fn bench_claimer(store: &Store, id: &str) -> anyhow::Result<orchestrator::store::Claimer> {
    store
        .workers()
        .register_worker(&orchestrator::store::NewWorker {
            id: id.into(),
            host: "bench".into(),
            pid: 1,
            version: "bench".into(),
            concurrency: 64,
            types: Vec::new(),
        })
        .await?;
    Ok(orchestrator::store::Claimer {
        worker: id.into(),
        worker_ttl: Duration::from_secs(3600),
        types: Vec::new(),
        type_timeouts: Vec::new(),
        default_timeout: Duration::from_secs(3600),
        start_within: Duration::ZERO,
        proof_enforced: false,
        epoch: None,
        limit_partitions: orchestrator::limits::DEFAULT_PARTITIONS as usize,
    })
}

/// One claim of 64, timed in µs, and the batch unstarted again so the queue stays the same.
async fn timed_claim(store: &Store, claimer: &orchestrator::store::Claimer) -> anyhow::Result<(f64, usize)> {
    let start = Instant::now();
    let got = store.actions().claim(claimer, 64).await?;
    let us = start.elapsed().as_secs_f64() * 1e6;
    let back: Vec<orchestrator::store::Completion> = got
        .iter()
        .map(|c| orchestrator::store::Completion {
            action_id: c.action.id,
            token: c.token,
            attempt: c.attempt,
            outcome: orchestrator::store::CompletionOutcome::Unstarted,
            logs: Vec::new(),
        })
        .collect();
    store.actions().complete(None, &back).await?;
    Ok((us, got.len()))
}

/// `partition_cap`: `max_running: 3` per `payload.partner`, brought to its cap by a first tick
/// (1,000 partner values tracked, the default), then `n` due rows over 2,000 partners (see
/// [`partner_backlog`]: the overflow's backlog first), against the same queue with no limit.
/// Shipped rules, default config.
/// - `pcap_tick`: one tick (1,000 actions claimed and done), ms, median of 3;
/// - `pcap_claim`: one claim of 64 (unstarted again), µs, median of 20;
/// - `pcap_held_claim`, `pcap_held_tick`: the same once another worker has claimed all it
///   could and holds it (3 running in each tracked value that has that many and in the
///   overflow): the claim finds nothing.
async fn partition_cap(a: &Args) -> anyhow::Result<Vec<Figure>> {
    let sizes: &[usize] = match (a.rows, a.quick) {
        (Some(n), _) => &[n],
        (None, true) => &[10_000],
        (None, false) => &[10_000, 30_000, 100_000],
    };
    let mut out = Vec::new();
    let mut push = |f: Figure| {
        emit(&f);
        out.push(f);
    };
    for backend in backends(a) {
        for &n in sizes {
            for limited in [false, true] {
                let what = if limited { "cap" } else { "none" };
                let db = Db::new(backend, a.pg.as_deref()).await?;
                // One due row of each tracked partner first: the first tick tracks them all.
                let first: String = (0..TRACKED)
                    .map(|i| format!("{{\"action_type\":\"{PARTNER_TYPE}\",\"payload\":{{\"partner\":\"p{i}\"}}}}\n"))
                    .collect();
                queue::enqueue_jsonl(&db.store, first.as_bytes(), 3).await?;
                if limited {
                    let mut spec = limit("max_running=3");
                    spec.partition_by = Some("payload.partner".parse().map_err(|e: String| anyhow::anyhow!(e))?);
                    db.store.limits().set_limit(PARTNER_TYPE, &spec).await?;
                }
                db.store.flags().set_flags(FlagChange { proof_mode: Some(false), ..Default::default() }).await?;
                let mut config = db.config();
                config.tick_interval = Duration::ZERO;
                config.max_tick = Duration::from_secs(600);
                config.rules_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
                let mut registry = Registry::builtin();
                registry.register(Instant0(PARTNER_TYPE));
                let engine = Engine::new(db.store.clone(), config, registry);
                anyhow::ensure!(engine.decider().load_rules()? >= 7, "the shipped rules did not load");
                let tick = || async {
                    let t = Instant::now();
                    let attempted = match engine.tick().await? {
                        TickOutcome::Ran(r) => r.attempted,
                        TickOutcome::NotLeader { .. } => anyhow::bail!("lost the lease"),
                    };
                    Ok::<_, anyhow::Error>((t.elapsed().as_secs_f64() * 1000.0, attempted))
                };
                tick().await?;
                partner_backlog(&db.store, n).await?;
                if limited {
                    let usage = db.store.limits().limit_usage().await?;
                    let tracked = usage.first().map_or(0, |u| u.partitions_tracked);
                    anyhow::ensure!(tracked == 1000, "{tracked} partitions tracked, not the cap");
                }
                let mut ticks = Vec::new();
                for _ in 0..3 {
                    let (ms, attempted) = tick().await?;
                    anyhow::ensure!(attempted == 1000, "a tick attempted {attempted} of 1000");
                    ticks.push(ms);
                }
                let param = format!("n={n},{what}");
                push(figure_on(backend, "pcap_tick", param.clone(), "ms/tick", ticks));
                let claimer = bench_claimer(&db.store, "bench-claimer").await?;
                let mut claims = Vec::new();
                for _ in 0..20 {
                    let (us, got) = timed_claim(&db.store, &claimer).await?;
                    anyhow::ensure!(got == 64, "claimed {got} of 64");
                    claims.push(us);
                }
                push(figure_on(backend, "pcap_claim", param.clone(), "µs/claim", claims));
                if limited {
                    // Another worker takes every slot there is and keeps it.
                    let holder = bench_claimer(&db.store, "bench-holder").await?;
                    let mut held = 0;
                    loop {
                        let got = db.store.actions().claim(&holder, 512).await?.len();
                        if got == 0 {
                            break;
                        }
                        held += got;
                    }
                    anyhow::ensure!(held > 1000, "only {held} held");
                    let mut claims = Vec::new();
                    for _ in 0..20 {
                        let (us, got) = timed_claim(&db.store, &claimer).await?;
                        anyhow::ensure!(got == 0, "claimed {got} past full partitions");
                        claims.push(us);
                    }
                    push(figure_on(backend, "pcap_held_claim", param.clone(), "µs/claim", claims));
                    let mut ticks = Vec::new();
                    for _ in 0..3 {
                        let (ms, attempted) = tick().await?;
                        anyhow::ensure!(attempted == 0, "a tick attempted {attempted} past full partitions");
                        ticks.push(ms);
                    }
                    push(figure_on(backend, "pcap_held_tick", param, "ms/tick", ticks));
                }
                engine.release().await?;
                db.drop().await;
            }
        }
    }
    Ok(out)
}

/// A figure of `backend`, not yet printed.
fn figure_on(backend: &str, name: &str, param: String, unit: &'static str, runs: Vec<f64>) -> Figure {
    Figure { name: name.into(), backend: backend.into(), param, value: median(&mut runs.clone()), unit, runs }
}

/// Median µs of one claim of 64 (each claimed batch is unstarted again, so the queue stays the
/// same), with `k` limited types.
async fn claim_cost(backend: &str, pg: Option<&str>, k: usize) -> anyhow::Result<f64> {
    let db = Db::new(backend, pg).await?;
    db.due_noops(5_000).await?;
    for (t, spec) in THREE_LIMITS.iter().take(k.min(3)) {
        db.store.limits().set_limit(t, &limit(spec)).await?;
    }
    for i in 3..k {
        db.store.limits().set_limit(&format!("TYPE{i}"), &limit("max_running=5,rate=100/1m")).await?;
    }
    let worker = "bench-claimer";
    db.store
        .workers()
        .register_worker(&orchestrator::store::NewWorker {
            id: worker.into(),
            host: "bench".into(),
            pid: 1,
            version: "bench".into(),
            concurrency: 64,
            types: Vec::new(),
        })
        .await?;
    let claimer = orchestrator::store::Claimer {
        worker: worker.into(),
        worker_ttl: Duration::from_secs(600),
        types: Vec::new(),
        type_timeouts: Vec::new(),
        default_timeout: Duration::from_secs(60),
        start_within: Duration::ZERO,
        proof_enforced: false,
        epoch: None,
        limit_partitions: 1000,
    };
    let mut times = Vec::new();
    for _ in 0..200 {
        let start = Instant::now();
        let got = db.store.actions().claim(&claimer, 64).await?;
        times.push(start.elapsed().as_secs_f64() * 1e6);
        anyhow::ensure!(got.len() == 64, "claimed {} of 64", got.len());
        let back: Vec<orchestrator::store::Completion> = got
            .iter()
            .map(|c| orchestrator::store::Completion {
                action_id: c.action.id,
                token: c.token,
                attempt: c.attempt,
                outcome: orchestrator::store::CompletionOutcome::Unstarted,
                logs: Vec::new(),
            })
            .collect();
        db.store.actions().complete(None, &back).await?;
    }
    db.drop().await;
    Ok(median(&mut times))
}

async fn drain_concurrency(a: &Args) -> anyhow::Result<Vec<Figure>> {
    let n = if a.quick { 5_000 } else { 20_000 };
    let mut out = Vec::new();
    for backend in backends(a) {
        for c in [1u32, 2, 4, 8, 16, 32, 64] {
            let mut rates = Vec::new();
            for _ in 0..a.runs.min(3) {
                rates.push(drain_once(backend, a.pg.as_deref(), n, c, false).await?);
            }
            out.push(Figure {
                name: "drain_concurrency".into(),
                backend: backend.into(),
                param: format!("c={c}"),
                value: median(&mut rates.clone()),
                unit: "actions/s",
                runs: rates,
            });
            emit(out.last().expect("just pushed"));
        }
    }
    Ok(out)
}

/// `bulk_enqueue`: `n` JSON Lines through `queue::enqueue_jsonl` (the CLI's `enqueue --file`
/// path, keys derived), into a fresh database per run, on each backend.
async fn bulk_enqueue(a: &Args) -> anyhow::Result<Vec<Figure>> {
    let n = if a.quick { 20_000 } else { 100_000 };
    let lines: String = (0..n)
        .map(|i| format!("{{\"action_type\":\"POST_SOCIAL\",\"payload\":{{\"platform\":\"x\",\"content\":\"post {i}\",\"audience\":\"all\"}},\"priority\":{}}}\n", i % 10))
        .collect();
    let mut out = Vec::new();
    for backend in backends(a) {
        let mut rates = Vec::new();
        for _ in 0..a.runs {
            let db = Db::new(backend, a.pg.as_deref()).await?;
            let start = Instant::now();
            let report = queue::enqueue_jsonl(&db.store, lines.as_bytes(), 3).await?;
            let secs = start.elapsed().as_secs_f64();
            anyhow::ensure!(report.created == n as u64, "created {}", report.created);
            rates.push(n as f64 / secs);
            db.drop().await;
        }
        let f = Figure {
            name: "bulk_enqueue".into(),
            backend: backend.into(),
            param: format!("n={n}"),
            value: median(&mut rates.clone()),
            unit: "actions/s",
            runs: rates,
        };
        emit(&f);
        out.push(f);
    }
    Ok(out)
}

fn rss_kib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
}

fn memory(a: &Args) -> anyhow::Result<Vec<Figure>> {
    let bin = release_binary(a)?;
    let ticks = if a.quick { 2_000 } else { 10_000 };
    let dir = tempfile::tempdir()?;
    let mut child = Command::new(&bin)
        .args(["run", "--ticks", &ticks.to_string(), "--interval", "0.001"])
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut samples = Vec::new();
    let start = Instant::now();
    while child.try_wait()?.is_none() {
        if let Some(r) = rss_kib(child.id()) {
            samples.push((start.elapsed().as_secs_f64(), r / 1024.0));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    anyhow::ensure!(samples.len() >= 4, "the run was too short to sample");
    let early = samples[samples.len() / 10].1;
    let last = samples.last().map_or(0.0, |s| s.1);
    let peak = samples.iter().map(|s| s.1).fold(0.0, f64::max);
    let figs = vec![
        Figure {
            name: "memory".into(),
            backend: "sqlite".into(),
            param: format!("ticks={ticks},rss@10%"),
            value: early,
            unit: "MiB",
            runs: vec![early],
        },
        Figure {
            name: "memory".into(),
            backend: "sqlite".into(),
            param: format!("ticks={ticks},rss@end"),
            value: last,
            unit: "MiB",
            runs: vec![last],
        },
        Figure {
            name: "memory".into(),
            backend: "sqlite".into(),
            param: format!("ticks={ticks},peak"),
            value: peak,
            unit: "MiB",
            runs: vec![peak],
        },
        Figure {
            name: "memory".into(),
            backend: "sqlite".into(),
            param: format!("ticks={ticks},seconds"),
            value: start.elapsed().as_secs_f64(),
            unit: "s",
            runs: vec![],
        },
    ];
    for f in &figs {
        emit(f);
    }
    Ok(figs)
}

// workers_scaling: a leader (`run --no-execute`) and `orchestrator worker` processes on one
// PostgreSQL database, each run in a database of its own.

/// The PostgreSQL URL the workers figures use when none is given.
const DEFAULT_PG: &str = "postgres://postgres@127.0.0.1:5432/test";

/// `base` with its database name replaced by `db` (its query kept).
fn pg_url(base: &str, db: &str) -> String {
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h, format!("?{q}")),
        None => (base, String::new()),
    };
    let authority = head.find("://").map_or(0, |i| i + 3);
    let root = head[authority..].find('/').map_or(head, |i| &head[..authority + i]);
    format!("{root}/{db}{query}")
}

/// Process CPU seconds so far (user + system) of `pid`, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// `p` (0..=1) of sorted `v`, nearest rank.
fn percentile(v: &[f64], p: f64) -> f64 {
    let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// `pickup`: the release binary's `run` in the default configuration (shipped rules, the 5 s
/// tick interval, proof mode as shipped), idle; then 200 single NOOP enqueues by this process
/// (another process, as the CLI is), each 0-50 ms after the previous one ran. The latency is
/// the action's `finished_at` less its `created_at` (both stamped by the database's clock
/// on PostgreSQL, by the machine's on SQLite): p50, p99 and max in ms. Before them, the idle
/// daemon's cost over 20 s: its CPU (`/proc/<pid>/stat`), and on PostgreSQL its database's
/// transactions per second (`pg_stat_database`, its own database).
async fn pickup(a: &Args) -> anyhow::Result<Vec<Figure>> {
    let bin = release_binary(a)?;
    let n = if a.quick { 50 } else { 200 };
    let mut out = Vec::new();
    for backend in backends(a) {
        let daemon = Daemon::start(&bin, backend, a.pg.as_deref(), a.rules.as_deref(), None).await?;
        let (store, pid, pg) = (&daemon.store, daemon.pid, &daemon.pg);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle = Duration::from_secs(if a.quick { 5 } else { 20 });
        let (cpu0, tx0) = (cpu_seconds(pid), transactions(pg).await?);
        tokio::time::sleep(idle).await;
        let (cpu1, tx1) = (cpu_seconds(pid), transactions(pg).await?);
        let mut figures =
            vec![("pickup_idle_cpu", "%", (cpu1.unwrap_or(0.0) - cpu0.unwrap_or(0.0)) * 100.0 / idle.as_secs_f64())];
        if let (Some(t0), Some(t1)) = (tx0, tx1) {
            figures.push(("pickup_idle_tx", "tx/s", (t1 - t0) / idle.as_secs_f64()));
        }
        let mut ms = Vec::new();
        for i in 0..n {
            tokio::time::sleep(Duration::from_millis(fastrand::u64(0..50))).await;
            let req = queue::EnqueueRequest {
                action_type: "NOOP".into(),
                payload: serde_json::json!({"i": i}),
                idempotency_key: None,
                priority: 0,
                not_before: None,
                max_attempts: None,
                expires_at: None,
                traceparent: None,
                require_approval: false,
            };
            let id = queue::enqueue(store, &req, 3).await?.id;
            let start = Instant::now();
            let action = loop {
                let action =
                    store.actions().action(id).await?.ok_or_else(|| anyhow::anyhow!("action {id} vanished"))?;
                if action.finished_at.is_some() {
                    break action;
                }
                anyhow::ensure!(start.elapsed() < Duration::from_secs(60), "action {id} not run within 60 s");
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            anyhow::ensure!(action.status == ActionStatus::Success, "action {id} ended {}", action.status);
            let finished = action.finished_at.expect("finished");
            ms.push((finished - action.created_at).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        }
        daemon.stop().await?;
        ms.sort_by(f64::total_cmp);
        figures.push(("pickup_p50", "ms", percentile(&ms, 0.50)));
        figures.push(("pickup_p99", "ms", percentile(&ms, 0.99)));
        figures.push(("pickup_max", "ms", percentile(&ms, 1.0)));
        for (name, unit, value) in figures {
            let f = Figure {
                name: name.into(),
                backend: backend.into(),
                param: format!("n={n}"),
                value,
                unit,
                runs: vec![value],
            };
            emit(&f);
            out.push(f);
        }
    }
    Ok(out)
}

/// The release binary's `run` in the default configuration (the shipped rules, or `--rules`;
/// 5 s between ticks; HTTP off) on a fresh database, proof mode as given, stopped by `stop` (or
/// killed if dropped).
struct Daemon {
    procs: Procs,
    pid: u32,
    store: Store,
    pg: Option<PgDatabase>,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// `rules`: the rules directory, else the shipped rules.
    async fn start(
        bin: &Path,
        backend: &str,
        pg_base: Option<&str>,
        rules: Option<&Path>,
        proof: Option<bool>,
    ) -> anyhow::Result<Daemon> {
        let pg = match backend {
            "postgres" => Some(PgDatabase::new(pg_base.ok_or_else(|| anyhow::anyhow!("no PostgreSQL URL"))?).await?),
            _ => None,
        };
        let dir = tempfile::tempdir()?;
        let (url, cwd) = match &pg {
            Some(db) => (db.url.clone(), db.dir.path().to_path_buf()),
            None => (format!("sqlite:{}", dir.path().join("daemon.db").display()), dir.path().to_path_buf()),
        };
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        let rules = std::fs::canonicalize(rules.unwrap_or(&shipped))?;
        std::fs::write(cwd.join("o.yaml"), format!("rules_dir: {}\n", rules.display()))?;
        let store = Store::open(&url, &store_options()).await?;
        if let Some(proof) = proof {
            store.flags().set_flags(FlagChange { proof_mode: Some(proof), ..Default::default() }).await?;
        }
        let log = std::fs::File::create(cwd.join("run.log"))?;
        let procs = Procs(vec![
            Command::new(bin)
                .args(["--database-url", &url, "--config", "o.yaml", "run", "--no-http"])
                .current_dir(&cwd)
                .env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()?,
        ]);
        let pid = procs.0[0].id();
        let started = Instant::now();
        while store.ledger().recent_ticks(1).await?.is_empty() {
            anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "`run` recorded no tick within 60 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Daemon { procs, pid, store, pg, _dir: dir })
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        self.procs.stop()?;
        self.store.close().await.ok();
        if let Some(db) = self.pg {
            db.drop_database().await;
        }
        Ok(())
    }
}

/// `steady`: NOOP actions arrive at a fixed rate (2,000/s, then 5,000/s, for 60 s each; 10 s
/// with `--quick`) at the release binary's `run` in the default configuration (shipped rules,
/// the 5 s tick interval; proof mode off), enqueued by this process (another process, as the
/// CLI or a service is) in a batch every 10 ms. Figures per rate: the rate offered and the rate
/// done over the window, each action's enqueue-to-finish latency (p50, p99, max), the queue depth
/// (open actions) sampled each second (its maximum, and the series), and the daemon's CPU.
async fn steady(a: &Args) -> anyhow::Result<Vec<Figure>> {
    let bin = release_binary(a)?;
    let window = Duration::from_secs(if a.quick { 10 } else { 60 });
    let mut out = Vec::new();
    for backend in backends(a) {
        for rate in [2_000u64, 5_000] {
            let daemon = Daemon::start(&bin, backend, a.pg.as_deref(), a.rules.as_deref(), Some(false)).await?;
            let run = steady_run(&daemon, rate, window).await;
            daemon.stop().await?;
            let run = run?;
            let param = format!("{rate}/s,{}s", window.as_secs());
            println!("steady_depth       {backend:<9} {param:<14} per second: {:?}", run.depth);
            println!(
                "{}",
                serde_json::json!({"figure": "steady_depth_series", "backend": backend, "param": param, "unit": "actions", "series": run.depth})
            );
            for (name, unit, value) in [
                ("steady_offered", "actions/s", run.offered),
                ("steady_done", "actions/s", run.done),
                ("steady_p50", "ms", percentile(&run.latency_ms, 0.50)),
                ("steady_p99", "ms", percentile(&run.latency_ms, 0.99)),
                ("steady_max", "ms", percentile(&run.latency_ms, 1.0)),
                ("steady_depth_max", "actions", run.depth.iter().copied().fold(0.0, f64::max)),
                ("steady_cpu", "%", run.cpu_percent),
            ] {
                let f = Figure {
                    name: name.into(),
                    backend: backend.into(),
                    param: param.clone(),
                    value,
                    unit,
                    runs: vec![value],
                };
                emit(&f);
                out.push(f);
            }
        }
    }
    Ok(out)
}

/// What one steady run measured.
struct SteadyRun {
    offered: f64,
    /// Actions finished within the window, per second.
    done: f64,
    /// Every action's enqueue to finish, sorted.
    latency_ms: Vec<f64>,
    /// Open actions (waiting or running), once a second.
    depth: Vec<f64>,
    /// The daemon's CPU over the window, in % of a core.
    cpu_percent: f64,
}

async fn steady_run(daemon: &Daemon, rate: u64, window: Duration) -> anyhow::Result<SteadyRun> {
    let store = &daemon.store;
    let mut sent = 0u64;
    let mut depth = Vec::new();
    let cpu0 = cpu_seconds(daemon.pid).unwrap_or(0.0);
    let mut every = tokio::time::interval(Duration::from_millis(10));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let start = Instant::now();
    let mut next_sample = Duration::from_secs(1);
    while start.elapsed() < window {
        every.tick().await;
        let due = (rate as f64 * start.elapsed().min(window).as_secs_f64()) as u64;
        if due > sent {
            let lines: String =
                (sent..due).map(|i| format!("{{\"action_type\":\"NOOP\",\"payload\":{{\"i\":{i}}}}}\n")).collect();
            let report = queue::enqueue_jsonl(store, lines.as_bytes(), 3).await?;
            anyhow::ensure!(report.created == due - sent, "created {} of {}", report.created, due - sent);
            sent = due;
        }
        if start.elapsed() >= next_sample {
            depth.push(store.bench().open_actions().await?);
            next_sample += Duration::from_secs(1);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu1 = cpu_seconds(daemon.pid).unwrap_or(0.0);
    let open_at_end = store.bench().open_actions().await?;
    let finishing = Instant::now();
    while store.bench().open_actions().await? > 0.0 {
        anyhow::ensure!(finishing.elapsed() < Duration::from_secs(300), "the backlog did not drain within 300 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let filter = orchestrator::store::ActionFilter {
        status: Some(ActionStatus::Success),
        action_type: Some("NOOP".into()),
        limit: sent + 1,
    };
    let done = store.actions().list_actions(&filter).await?;
    anyhow::ensure!(done.len() as u64 == sent, "{} of {sent} NOOP succeeded", done.len());
    let mut latency_ms: Vec<f64> = done
        .iter()
        .filter_map(|a| a.finished_at.map(|f| (f - a.created_at).num_microseconds().unwrap_or(0) as f64 / 1000.0))
        .collect();
    latency_ms.sort_by(f64::total_cmp);
    Ok(SteadyRun {
        offered: sent as f64 / elapsed,
        done: (sent as f64 - open_at_end) / elapsed,
        latency_ms,
        depth,
        cpu_percent: (cpu1 - cpu0) * 100.0 / elapsed,
    })
}

/// PostgreSQL: the database's transaction count so far; `None` on SQLite.
async fn transactions(pg: &Option<PgDatabase>) -> anyhow::Result<Option<f64>> {
    match pg {
        Some(db) => Ok(Some(db.stats.bench().transactions(&db.name).await?)),
        None => Ok(None),
    }
}

/// A fresh PostgreSQL database (`CREATE DATABASE bench_x_<n>`), dropped after the run.
struct PgDatabase {
    base: String,
    name: String,
    url: String,
    store: Store,
    /// A connection of its own for the samples, opened before they begin.
    stats: Store,
    dir: tempfile::TempDir,
}

impl PgDatabase {
    async fn new(base: &str) -> anyhow::Result<PgDatabase> {
        let name = format!("bench_x_{}", fastrand::u32(..));
        let admin = Store::connect(base, &StoreOptions::default()).await?;
        admin.bench().create_database(&name).await?;
        admin.close().await?;
        let url = pg_url(base, &name);
        let store = Store::open(&url, &StoreOptions::default()).await?;
        let stats = Store::connect(&url, &StoreOptions::default()).await?;
        Ok(PgDatabase { base: base.to_string(), name, url, store, stats, dir: tempfile::tempdir()? })
    }

    async fn drop_database(self) {
        self.store.close().await.ok();
        self.stats.close().await.ok();
        if let Ok(admin) = Store::connect(&self.base, &StoreOptions::default()).await {
            admin.bench().drop_database(&self.name).await.ok();
            admin.close().await.ok();
        }
    }

    /// The pids of the connections to this database now, as an SQL list.
    async fn backends(&self) -> anyhow::Result<String> {
        Ok(self.stats.bench().connections(&self.name).await?)
    }

    /// The processes' stderr, for an error.
    fn logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.dir.path()).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                out += &format!("--- {}\n{text}", entry.file_name().to_string_lossy());
            }
        }
        out
    }

    fn spawn(&self, bin: &Path, log: &str, args: &[&str]) -> anyhow::Result<std::process::Child> {
        let stderr = std::fs::File::create(self.dir.path().join(log))?;
        Ok(Command::new(bin)
            .args(["--database-url", &self.url, "--config", "o.yaml"])
            .args(args)
            .current_dir(self.dir.path())
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()?)
    }
}

/// The leader and the workers of one run: SIGTERM and a wait by `stop`, killed if dropped first.
struct Procs(Vec<std::process::Child>);

impl Procs {
    fn stop(&mut self) -> anyhow::Result<()> {
        for c in &self.0 {
            Command::new("kill").args(["-TERM", &c.id().to_string()]).status()?;
        }
        for c in &mut self.0 {
            let start = Instant::now();
            while c.try_wait()?.is_none() && start.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A webhook target on 127.0.0.1 that answers every request 200 after `delay`; counts them.
async fn slow_receiver(delay: Duration) -> anyhow::Result<(String, std::sync::Arc<std::sync::atomic::AtomicU64>)> {
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let counted = counted.clone();
        async move {
            tokio::time::sleep(delay).await;
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, hits))
}

#[derive(Clone, Copy, PartialEq)]
enum Work {
    /// WEBHOOK to the slow receiver: I/O-bound.
    Webhook,
    Noop,
}

/// What one run of leader + workers did, from the rows it left (the database's timestamps).
struct WorkersRun {
    /// Actions per second, first claim to last completion.
    rate: f64,
    /// Claim statements that took rows, per second.
    claims: f64,
    /// Rows claimed per such claim.
    rows_per_claim: f64,
    /// Completion transactions (group commits) per second.
    commits: f64,
    /// The most connections the processes held at once (every 100 ms sample).
    connections: f64,
    /// Median ms from a claim to the last outcome of its batch written (the worker's dispatch).
    batch_ms: f64,
    /// Median ms from that write to the same worker's next claim (commit, heartbeat, claim).
    between_ms: f64,
}

/// `n` actions drained by a leader (`run --no-execute --no-http`) and `workers` workers at
/// concurrency 16, started together once the queue is filled, proof mode off.
async fn workers_once(
    bin: &Path,
    base: &str,
    work: Work,
    n: usize,
    workers: usize,
    hook: &str,
) -> anyhow::Result<WorkersRun> {
    let db = PgDatabase::new(base).await?;
    let r = workers_measure(bin, &db, work, n, workers, hook).await;
    db.drop_database().await;
    r
}

async fn workers_measure(
    bin: &Path,
    db: &PgDatabase,
    work: Work,
    n: usize,
    workers: usize,
    hook: &str,
) -> anyhow::Result<WorkersRun> {
    let config = format!("adapters:\n  webhook:\n    targets:\n      sink:\n        url: {hook}\n");
    std::fs::write(db.dir.path().join("o.yaml"), config)?;
    let lines: String = (0..n)
        .map(|i| match work {
            Work::Webhook => {
                format!("{{\"action_type\":\"WEBHOOK\",\"payload\":{{\"target\":\"sink\",\"body\":{{\"i\":{i}}}}}}}\n")
            }
            Work::Noop => format!("{{\"action_type\":\"NOOP\",\"payload\":{{\"i\":{i}}}}}\n"),
        })
        .collect();
    let report = queue::enqueue_jsonl(&db.store, lines.as_bytes(), 3).await?;
    anyhow::ensure!(report.created == n as u64, "created {} of {n}", report.created);
    db.store.flags().set_flags(FlagChange { proof_mode: Some(false), ..Default::default() }).await?;

    // Every connection to the database now is the bench's own (its store names itself
    // `orchestrator`, as the processes do): the samples leave these out.
    let ours = db.backends().await?;
    let mut procs = Procs(vec![db.spawn(bin, "leader.log", &["run", "--no-execute", "--no-http"])?]);
    for i in 0..workers {
        procs.0.push(db.spawn(bin, &format!("worker{i}.log"), &["worker", "--concurrency", "16", "--no-http"])?);
    }
    let start = Instant::now();
    let mut connections = 0.0f64;
    loop {
        let v = db.stats.bench().drain_sample(&db.name, &ours).await?;
        connections = connections.max(v.connections);
        if v.succeeded as usize == n {
            break;
        }
        anyhow::ensure!(v.failed == 0.0, "{} attempts failed; the processes' stderr:\n{}", v.failed, db.logs());
        anyhow::ensure!(start.elapsed() < Duration::from_secs(600), "not drained within 600 s");
        for c in &mut procs.0 {
            if let Some(status) = c.try_wait()? {
                anyhow::bail!("a process exited early ({status}); their stderr:\n{}", db.logs());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    procs.stop()?;
    // From the rows: a claim stamps one token on every row it takes; a completion transaction
    // stamps one finished_at on every row of its group.
    let v = db.stats.bench().drain_totals().await?;
    let (secs, rows, claims, commits, by) = (v.seconds, v.rows, v.claims, v.commits, v.workers);
    anyhow::ensure!(rows == n as f64 && by >= 1.0, "{rows} of {n} succeeded, by {by} workers");
    anyhow::ensure!(!db.store.history().logs(None, 1).await?.is_empty(), "no log rows");
    let (batch_ms, between_ms) = db.stats.bench().worker_cycle().await?;
    Ok(WorkersRun {
        batch_ms,
        between_ms,
        rate: rows / secs,
        claims: claims / secs,
        rows_per_claim: rows / claims,
        commits: commits / secs,
        connections,
    })
}

fn figure(name: &str, param: String, unit: &'static str, runs: Vec<f64>) -> Figure {
    let f =
        Figure { name: name.into(), backend: "postgres".into(), param, value: median(&mut runs.clone()), unit, runs };
    emit(&f);
    f
}

async fn workers_scaling(a: &Args) -> anyhow::Result<Vec<Figure>> {
    // The default URL only when asked for by name: the whole suite without a URL stays SQLite.
    let base = match (&a.pg, a.only.is_some()) {
        (Some(url), _) => url.clone(),
        (None, true) if !a.no_pg => DEFAULT_PG.to_string(),
        (None, _) => return Ok(Vec::new()),
    };
    let bin = release_binary(a)?;
    let (hook, hits) = slow_receiver(Duration::from_millis(200)).await?;
    let n = if a.quick { 200 } else { 800 };
    let counts = [1usize, 2, 4];
    // Interleaved, so that every worker count sees the same machine.
    let mut by: BTreeMap<usize, Vec<WorkersRun>> = BTreeMap::new();
    for _ in 0..a.runs {
        for &w in &counts {
            let before = hits.load(std::sync::atomic::Ordering::Relaxed);
            let r = workers_once(&bin, &base, Work::Webhook, n, w, &hook).await?;
            let sent = hits.load(std::sync::atomic::Ordering::Relaxed) - before;
            anyhow::ensure!(sent >= n as u64, "the receiver saw {sent} of {n} requests");
            by.entry(w).or_default().push(r);
        }
    }
    let mut out = Vec::new();
    let rates = |w: usize| by[&w].iter().map(|r| r.rate).collect::<Vec<_>>();
    for &w in &counts {
        out.push(figure("workers_scaling", format!("webhook,n={n},w={w}"), "actions/s", rates(w)));
    }
    let ratios: Vec<f64> = rates(4).iter().zip(rates(1)).map(|(four, one)| four / one).collect();
    let ratio = median(&mut rates(4)) / median(&mut rates(1));
    let f = Figure {
        name: "workers_ratio".into(),
        backend: "postgres".into(),
        param: "w=4 / w=1".into(),
        value: ratio,
        unit: "x",
        runs: ratios,
    };
    emit(&f);
    out.push(f);
    // What PostgreSQL carried while four workers drained.
    let of = |w: usize, get: fn(&WorkersRun) -> f64| by[&w].iter().map(get).collect::<Vec<_>>();
    out.push(figure("workers_pg", "w=4,claims".into(), "claims/s", of(4, |r| r.claims)));
    out.push(figure("workers_pg", "w=4,rows/claim".into(), "rows", of(4, |r| r.rows_per_claim)));
    out.push(figure("workers_pg", "w=4,commits".into(), "commits/s", of(4, |r| r.commits)));
    for &w in &counts {
        out.push(figure("workers_cycle", format!("w={w},batch"), "ms", of(w, |r| r.batch_ms)));
        out.push(figure("workers_cycle", format!("w={w},between"), "ms", of(w, |r| r.between_ms)));
    }
    for &w in &counts {
        let per: Vec<f64> = of(w, |r| r.connections).iter().map(|c| c / (w as f64 + 1.0)).collect();
        out.push(figure("workers_pg", format!("w={w},conns/proc"), "conns", per));
    }
    let extra: Vec<f64> =
        of(4, |r| r.connections).iter().zip(of(1, |r| r.connections)).map(|(c4, c1)| (c4 - c1) / 3.0).collect();
    out.push(figure("workers_pg", "per extra worker".into(), "conns", extra));

    // NOOP on PostgreSQL: 1, 2 and 4 workers beside a leader against the single process (`run`
    // executing itself, as `drain` measures it), concurrency 16 all, and with `--peer`
    // graphile-worker's batched drain of as many jobs just before.
    let n = if a.quick { 5_000 } else { 50_000 };
    let (mut one, mut two, mut four, mut single, mut peer) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..a.runs {
        if let Some(dir) = &a.peer {
            peer.push(peer_rate(dir, &base, n)?);
        }
        one.push(workers_once(&bin, &base, Work::Noop, n, 1, &hook).await?);
        two.push(workers_once(&bin, &base, Work::Noop, n, 2, &hook).await?);
        four.push(workers_once(&bin, &base, Work::Noop, n, 4, &hook).await?);
        single.push(drain_once("postgres", Some(&base), n, 16, false).await?);
    }
    let get = |v: &[WorkersRun], f: fn(&WorkersRun) -> f64| v.iter().map(f).collect::<Vec<_>>();
    for (w, runs) in [(1, &one), (2, &two), (4, &four)] {
        let rates = get(runs, |r| r.rate);
        if !peer.is_empty() {
            out.push(figure("workers_noop_vs_peer", format!("n={n},{w} worker(s)"), "x", over_peer(&rates, &peer)));
        }
        out.push(figure("workers_noop", format!("n={n},{w} worker(s)"), "actions/s", rates));
    }
    out.push(figure("workers_noop", format!("n={n},single"), "actions/s", single));
    if !peer.is_empty() {
        out.push(figure("workers_noop", format!("n={n},peer batched"), "jobs/s", peer));
    }
    for (w, runs) in [(1, &one), (2, &two), (4, &four)] {
        out.push(figure("workers_pg", format!("noop,w={w},claims"), "claims/s", get(runs, |r| r.claims)));
        out.push(figure("workers_pg", format!("noop,w={w},commits"), "commits/s", get(runs, |r| r.commits)));
        out.push(figure("workers_cycle", format!("noop,w={w},batch"), "ms", get(runs, |r| r.batch_ms)));
        out.push(figure("workers_cycle", format!("noop,w={w},between"), "ms", get(runs, |r| r.between_ms)));
    }
    Ok(out)
}

/// A minimal line chart: one polyline per series, log-scaled x when asked.
fn svg_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &BTreeMap<String, Vec<(f64, f64)>>,
    log_x: bool,
) -> String {
    let (w, h, l, r, t, b) = (640.0, 360.0, 70.0, 20.0, 40.0, 50.0);
    let tx = |x: f64| if log_x { x.log10() } else { x };
    let pts: Vec<(f64, f64)> = series.values().flatten().copied().collect();
    let (x0, x1) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(tx(p.0)), b.max(tx(p.0))));
    let y1 = pts.iter().fold(0.0f64, |a, p| a.max(p.1)) * 1.1;
    let sx = |x: f64| l + (tx(x) - x0) / (x1 - x0).max(1e-9) * (w - l - r);
    let sy = |y: f64| h - b - y / y1.max(1e-9) * (h - t - b);
    let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{title}</text>\n\
         <line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{l}\" y1=\"{t}\" x2=\"{l}\" y2=\"{}\" stroke=\"black\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x_label}</text>\n<text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">{y_label}</text>\n",
        w / 2.0,
        h - b,
        w - r,
        h - b,
        h - b,
        (l + w - r) / 2.0,
        h - 12.0,
        (t + h - b) / 2.0,
        (t + h - b) / 2.0
    );
    for i in 0..=4 {
        let y = y1 * i as f64 / 4.0;
        s += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.1}</text><line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#ddd\"/>\n",
            l - 6.0,
            sy(y) + 4.0,
            y,
            sy(y),
            w - r,
            sy(y)
        );
    }
    let mut xs: Vec<f64> = pts.iter().map(|p| p.0).collect();
    xs.sort_by(|a, b| a.total_cmp(b));
    xs.dedup();
    for x in xs {
        s += &format!("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", sx(x), h - b + 16.0, x);
    }
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        let path: Vec<String> = pts.iter().map(|p| format!("{:.1},{:.1}", sx(p.0), sy(p.1))).collect();
        s += &format!("<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>\n", path.join(" "));
        for p in pts {
            s += &format!("<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{c}\"/>\n", sx(p.0), sy(p.1));
        }
        s += &format!("<text x=\"{}\" y=\"{}\" fill=\"{c}\">{name}</text>\n", l + 10.0, t + 14.0 + 16.0 * i as f64);
    }
    s + "</svg>\n"
}

fn param_num(p: &str) -> f64 {
    p.rsplit('=').next().and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    std::fs::create_dir_all(&a.out)?;
    let traces = match a.traces {
        Some(on) => Some(traces::install(on)?),
        None => None,
    };
    println!("{:<18} {:<9} {:<14} {:>12} {:<8}", "FIGURE", "BACKEND", "PARAM", "MEDIAN", "UNIT");
    let mut all = Vec::new();
    if wanted(&a, "cold_run_once") {
        for f in cold_run_once(&a)? {
            emit(&f);
            all.push(f);
        }
    }
    if wanted(&a, "tick_overhead") {
        all.extend(tick_overhead(&a).await?);
    }
    if wanted(&a, "drain") {
        all.extend(drain(&a).await?);
    }
    if wanted(&a, "schedules") {
        all.extend(schedules(&a).await?);
    }
    if wanted(&a, "drain_concurrency") {
        all.extend(drain_concurrency(&a).await?);
    }
    if wanted(&a, "bulk_enqueue") {
        all.extend(bulk_enqueue(&a).await?);
    }
    if wanted(&a, "memory") {
        all.extend(memory(&a)?);
    }
    if wanted(&a, "limits") {
        all.extend(limits(&a).await?);
    }
    if wanted(&a, "partition_cap") {
        all.extend(partition_cap(&a).await?);
    }
    if wanted(&a, "workers_scaling") {
        all.extend(workers_scaling(&a).await?);
    }
    if wanted(&a, "pickup") {
        all.extend(pickup(&a).await?);
    }
    if wanted(&a, "steady") {
        all.extend(steady(&a).await?);
    }
    if let Some(t) = traces {
        t.report();
    }
    for (figure, file, title, x, y, log_x) in [
        (
            "tick_overhead",
            "tick_overhead.svg",
            "Tick overhead against history size",
            "rows in actions",
            "ms per tick (median)",
            true,
        ),
        (
            "drain_concurrency",
            "drain_concurrency.svg",
            "Drain rate against dispatch concurrency",
            "dispatch_concurrency",
            "actions/s",
            true,
        ),
        (
            "workers_scaling",
            "workers_scaling.svg",
            "WEBHOOK (200 ms) drain against worker processes, c=16 each",
            "workers",
            "actions/s",
            false,
        ),
    ] {
        let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for f in all.iter().filter(|f| f.name == figure) {
            series.entry(f.backend.clone()).or_default().push((param_num(&f.param), f.value));
        }
        if !series.is_empty() {
            let path = a.out.join(file);
            std::fs::write(&path, svg_chart(title, x, y, &series, log_x))?;
            println!("chart: {}", path.display());
        }
    }
    Ok(())
}

/// `--traces`: the subscriber `run` installs (src/main.rs), with the exporter when on, and an
/// OTLP/HTTP receiver in this process (its own thread and runtime) that decodes and counts the
/// spans it is sent, so the figures say how many left and how many the bounded queue dropped.
mod traces {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use orchestrator::telemetry::{self, Export, Traces, TracingConfig};
    use prost::Message;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    pub struct Installed {
        traces: Traces,
        spans: Arc<AtomicU64>,
        on: bool,
    }

    pub fn install(on: bool) -> anyhow::Result<Installed> {
        let spans = Arc::new(AtomicU64::new(0));
        let mut config = TracingConfig { service_name: "bench".into(), sample_ratio: 1.0, export: None };
        if on {
            anyhow::ensure!(cfg!(feature = "otel"), "--traces on needs the otel feature");
            let addr = receiver(spans.clone())?;
            config.export = Some(Export { endpoint: format!("http://{addr}/v1/traces"), from: "bench".into() });
        }
        let traces = Traces::start(&config).map_err(|e| anyhow::anyhow!(e))?;
        let mut filter = tracing_subscriber::EnvFilter::new("info,sqlx=warn,sea_orm=warn");
        if traces.on() {
            for d in telemetry::TRACE_DIRECTIVES.split(',').filter_map(|d| d.parse().ok()) {
                filter = filter.add_directive(d);
            }
        }
        tracing_subscriber::registry()
            .with(traces.layer())
            .with(filter)
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::sink))
            .init();
        Ok(Installed { traces, spans, on })
    }

    impl Installed {
        /// Sends what is queued, then prints what the receiver decoded and what was dropped.
        pub fn report(self) {
            self.traces.shutdown();
            if self.on {
                let received = self.spans.load(Ordering::Relaxed);
                let failed = orchestrator::metrics::trace_spans_dropped().get();
                println!(
                    "{}",
                    serde_json::json!({"traces": "on", "spans_received": received, "spans_failed_export": failed})
                );
            }
        }
    }

    /// A minimal OTLP/HTTP receiver: HTTP/1.1 keep-alive, `Content-Length` bodies decoded as
    /// `ExportTraceServiceRequest`, answered 200.
    fn receiver(spans: Arc<AtomicU64>) -> anyhow::Result<std::net::SocketAddr> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                while let Ok((mut sock, _)) = listener.accept().await {
                    let spans = spans.clone();
                    tokio::spawn(async move {
                        let mut buf = Vec::new();
                        loop {
                            let Some(end) = find(&buf, b"\r\n\r\n") else {
                                let mut chunk = [0u8; 65536];
                                match sock.read(&mut chunk).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                                }
                                continue;
                            };
                            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                            let len: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                            while buf.len() < end + 4 + len {
                                let mut chunk = [0u8; 65536];
                                match sock.read(&mut chunk).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                                }
                            }
                            let body: Vec<u8> = buf.drain(..end + 4 + len).skip(end + 4).collect();
                            if let Ok(req) =
                                opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(
                                    body.as_slice(),
                                )
                            {
                                let n: usize =
                                    req.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
                                spans.fetch_add(n as u64, Ordering::Relaxed);
                            }
                            let reply =
                                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
                            if sock.write_all(reply).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            });
        });
        Ok(addr)
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }
}
