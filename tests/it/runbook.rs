//! docs/runbook.md, run as written. Each entry's symptom is created on a fresh database in a
//! scratch directory; then every line of the entry's `sh` blocks runs through `sh -c` with the
//! real binary first on `PATH` and the scratch directory as the working directory, in page order, and each line's checks (`# shows: TEXT`,
//! `# lacks: TEXT`, `# exit: N`) are asserted. The prose steps of a fix (edit the config, free
//! space) are done by the entry's scenario here, between the confirm and the fix blocks. An entry
//! the page has and this file does not know fails the test, and so does the reverse, so the page
//! cannot drift from what the binary does.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::disk::Tmpfs;
use crate::support::process::Server;

const PAGE: &str = include_str!("../../docs/runbook.md");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Confirm,
    Fix,
    Verify,
}

#[derive(Debug)]
struct Line {
    /// The line as the page shows it, for messages.
    text: String,
    cmd: String,
    shows: Vec<String>,
    lacks: Vec<String>,
    exit: i32,
    /// Ends with `&`: a process that keeps running (a worker), stopped when the entry ends.
    background: bool,
}

#[derive(Debug)]
struct Entry {
    title: String,
    blocks: Vec<(Part, Vec<Line>)>,
}

fn parse_line(text: &str) -> Line {
    let (cmd, checks) = match text.find(" # ") {
        Some(at) => (text[..at].trim(), text[at + 3..].trim()),
        None => (text.trim(), ""),
    };
    let mut line = Line {
        text: text.to_string(),
        cmd: cmd.trim_end_matches('&').trim().to_string(),
        shows: Vec::new(),
        lacks: Vec::new(),
        exit: 0,
        background: cmd.ends_with('&'),
    };
    for check in checks.split(';').map(str::trim).filter(|c| !c.is_empty()) {
        if let Some(t) = check.strip_prefix("shows:") {
            line.shows.push(t.trim().to_string());
        } else if let Some(t) = check.strip_prefix("lacks:") {
            line.lacks.push(t.trim().to_string());
        } else if let Some(n) = check.strip_prefix("exit:") {
            line.exit = n.trim().parse().unwrap_or_else(|e| panic!("runbook: bad exit code in {text:?}: {e}"));
        } else {
            panic!("runbook: unknown check {check:?} in {text:?} (shows:, lacks:, exit:)");
        }
    }
    line
}

/// The entries of the page: `## Title`, then `**Confirm**`, `**Fix**` and `**Verify**`
/// paragraphs, each followed by `sh` blocks.
fn parse(page: &str) -> Vec<Entry> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut part = None;
    let mut block: Option<Vec<Line>> = None;
    for raw in page.lines() {
        if let Some(lines) = block.as_mut() {
            if raw.trim() == "```" {
                let entry = entries.last_mut().expect("a block inside an entry");
                let p = part.unwrap_or_else(|| panic!("runbook: an sh block in {:?} before **Confirm**", entry.title));
                entry.blocks.push((p, block.take().unwrap_or_default()));
            } else if !raw.trim().is_empty() {
                lines.push(parse_line(raw));
            }
            continue;
        }
        if let Some(title) = raw.strip_prefix("## ") {
            entries.push(Entry { title: title.trim().to_string(), blocks: Vec::new() });
            part = None;
        } else if raw.starts_with("**Symptom") {
            part = None;
        } else if raw.starts_with("**Confirm") {
            part = Some(Part::Confirm);
        } else if raw.starts_with("**Fix") {
            part = Some(Part::Fix);
        } else if raw.starts_with("**Verify") {
            part = Some(Part::Verify);
        } else if raw.trim() == "```sh" && !entries.is_empty() {
            block = Some(Vec::new());
        }
    }
    entries
}

/// One entry's world: a scratch directory (the service's working directory), its database, its
/// config file, and the processes it started.
struct Ctx {
    /// The service's working directory: the database, `rules/`, `artifacts/` and the config.
    work: PathBuf,
    database_url: String,
    config: Option<PathBuf>,
    children: Vec<Server>,
    /// A small filesystem under `work`, for the entry that fills it.
    disk: Option<Tmpfs>,
    /// A PostgreSQL database of the entry's own: the server's URL and the name, dropped at the end.
    pg: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Ctx {
    fn sqlite() -> Ctx {
        let dir = tempfile::tempdir().expect("tempdir");
        let work = dir.path().to_path_buf();
        let database_url = format!("sqlite:{}", work.join("orchestrator.db").display());
        Ctx { work, database_url, config: None, children: Vec::new(), disk: None, pg: None, _dir: dir }
    }

    /// A PostgreSQL database name that does not exist yet, with `PGHOST`, `PGPORT`, `PGUSER` and
    /// `PGDATABASE` set for `createdb` and `psql`; `None` (after saying why) without one.
    fn postgres_not_created() -> Option<Ctx> {
        let base = crate::support::db::pg_url("the runbook's PostgreSQL entry")?;
        let mut ctx = Ctx::sqlite();
        let name = format!("runbook_{:012x}", fastrand::u64(..1 << 48));
        let server = base.split('?').next().unwrap_or(&base).rsplit_once('/').map_or(base.as_str(), |(s, _)| s);
        ctx.database_url = format!("{server}/{name}");
        ctx.pg = Some((format!("{server}/postgres"), name));
        Some(ctx)
    }

    /// The same on a 16 MB tmpfs; `None` (after saying why) where this process may not mount.
    fn sqlite_on_small_disk() -> Option<Ctx> {
        let mut ctx = Ctx::sqlite();
        let work = ctx.work.join("disk");
        ctx.disk = Some(Tmpfs::mount(&work, "16m")?);
        ctx.database_url = format!("sqlite:{}", work.join("orchestrator.db").display());
        ctx.work = work;
        Some(ctx)
    }

    fn path(&self) -> &Path {
        &self.work
    }

    /// Writes the config file the commands read through `ORCHESTRATOR_CONFIG`.
    fn write_config(&mut self, yaml: &str) {
        let path = self.path().join("orchestrator.yaml");
        std::fs::write(&path, yaml).expect("write config");
        self.config = Some(path);
    }

    /// `program` with the environment the service has: the binary first on `PATH`, the
    /// database and config, and nothing else of ours.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(self.path());
        for (k, _) in std::env::vars() {
            if k.starts_with("ORCHESTRATOR_") || k == "DATABASE_URL" || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_orchestrator")).parent().expect("binary's directory");
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{path}", bin_dir.display()));
        cmd.env("DATABASE_URL", &self.database_url);
        if let Some((admin, name)) = &self.pg {
            // postgres://USER@HOST:PORT/DB, as createdb and psql read it from the environment.
            let rest = admin.trim_start_matches("postgres://").trim_start_matches("postgresql://");
            let (user, host_port) = rest.split_once('@').unwrap_or(("postgres", rest));
            let host_port = host_port.split('/').next().unwrap_or(host_port);
            let (host, port) = host_port.split_once(':').unwrap_or((host_port, "5432"));
            cmd.env("PGUSER", user.split(':').next().unwrap_or(user)).env("PGHOST", host).env("PGPORT", port);
            cmd.env("PGDATABASE", name);
        }
        if let Some(c) = &self.config {
            cmd.env("ORCHESTRATOR_CONFIG", c);
        }
        cmd
    }

    /// The binary with `args`, for a scenario's own steps; panics unless it exits 0.
    fn orchestrator(&self, args: &[&str]) -> String {
        let o = self.command(env!("CARGO_BIN_EXE_orchestrator")).args(args).output().expect("run orchestrator");
        let text = output(&o);
        assert!(o.status.success(), "orchestrator {args:?} failed: {text}");
        text
    }

    /// A process of the binary left running (a daemon, a worker) until the entry ends.
    fn spawn(&mut self, args: &[&str]) -> usize {
        let child = self
            .command(env!("CARGO_BIN_EXE_orchestrator"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn orchestrator");
        self.children.push(Server(child));
        self.children.len() - 1
    }

    /// Waits until `orchestrator args` prints `needle`.
    fn wait_for(&self, args: &[&str], needle: &str, limit: Duration) {
        let start = Instant::now();
        loop {
            let o = self.command(env!("CARGO_BIN_EXE_orchestrator")).args(args).output().expect("run orchestrator");
            let text = output(&o);
            if text.contains(needle) {
                return;
            }
            assert!(start.elapsed() < limit, "orchestrator {args:?} never showed {needle:?} in {limit:?}: {text}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn run_line(&mut self, line: &Line, retry_for: Duration) {
        if line.background {
            let child = self
                .command("sh")
                .arg("-c")
                .arg(format!("exec {}", line.cmd))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn sh");
            self.children.push(Server(child));
            return;
        }
        let start = Instant::now();
        loop {
            let o = self.command("sh").arg("-c").arg(&line.cmd).output().expect("run sh");
            let text = output(&o);
            let code = o.status.code().unwrap_or(-1);
            let mut wrong = Vec::new();
            if code != line.exit {
                wrong.push(format!("exit {code}, not {}", line.exit));
            }
            wrong.extend(line.shows.iter().filter(|t| !text.contains(t.as_str())).map(|t| format!("no {t:?}")));
            wrong.extend(line.lacks.iter().filter(|t| text.contains(t.as_str())).map(|t| format!("has {t:?}")));
            if wrong.is_empty() {
                return;
            }
            assert!(
                start.elapsed() < retry_for,
                "runbook line `{}`: {}\n--- output ---\n{text}",
                line.text,
                wrong.join(", ")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        self.children.clear();
        if let Some((admin, name)) = &self.pg {
            let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            Command::new("psql").arg(admin).args(["-q", "-c", &drop]).output().ok();
        }
    }
}

fn output(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// What the test does for one entry: create the symptom, then the prose part of the fix.
struct Scenario {
    title: &'static str,
    /// Where the entry runs (a fresh SQLite database by default); `None` after saying why it
    /// cannot run here.
    world: fn() -> Option<Ctx>,
    symptom: fn(&mut Ctx),
    prose_fix: fn(&mut Ctx),
}

fn sqlite() -> Option<Ctx> {
    Some(Ctx::sqlite())
}

fn nothing(_: &mut Ctx) {}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        title: "Stuck lease",
        world: sqlite,
        symptom: |ctx| {
            // A daemon with a long TTL that dies holding the lease.
            ctx.write_config("lease_ttl_seconds: 600\nheartbeat_seconds: 1\n");
            let i = ctx.spawn(&["run", "--no-http", "--interval", "1"]);
            ctx.wait_for(&["lease", "show"], "held by", Duration::from_secs(30));
            ctx.children[i].kill().expect("kill -9 the daemon");
            ctx.children[i].wait().expect("reap the daemon");
        },
        prose_fix: nothing,
    },
    Scenario {
        title: "DLQ growing",
        world: sqlite,
        symptom: |ctx| {
            ctx.orchestrator(&["enqueue", "WEBHOOK", "--payload", r#"{"target":"crm","body":{"n":1}}"#]);
            ctx.orchestrator(&["enqueue", "WEBHOOK", "--payload", r#"{"target":"crm","body":{"n":2}}"#]);
            ctx.orchestrator(&["run-once"]);
        },
        prose_fix: |ctx| {
            ctx.write_config("adapters:\n  webhook:\n    targets:\n      crm:\n        url: http://127.0.0.1:9/crm\n");
        },
    },
    Scenario {
        title: "Nothing is processing: paused",
        world: sqlite,
        symptom: |ctx| {
            ctx.orchestrator(&["enqueue", "NOOP", "--key", "waiting"]);
            ctx.orchestrator(&["pause"]);
            ctx.orchestrator(&["run-once"]);
        },
        prose_fix: nothing,
    },
    Scenario {
        title: "Nothing is processing: killed",
        world: sqlite,
        symptom: |ctx| {
            ctx.orchestrator(&["enqueue", "NOOP", "--key", "waiting"]);
            ctx.orchestrator(&["kill"]);
            ctx.orchestrator(&["run-once"]);
        },
        prose_fix: nothing,
    },
    Scenario {
        title: "Nothing is processing: a limit holds the work",
        world: sqlite,
        symptom: |ctx| {
            ctx.orchestrator(&["enqueue", "NOOP", "--key", "held"]);
            ctx.orchestrator(&["limits", "set", "NOOP", "--max-running", "0"]);
        },
        prose_fix: nothing,
    },
    Scenario {
        title: "Nothing is processing: no live worker serves the type",
        world: sqlite,
        symptom: |ctx| {
            ctx.write_config("workers:\n  heartbeat_seconds: 0.5\n  ttl_seconds: 3\n  poll_seconds: 0.2\n");
            for k in ["w1", "w2", "w3"] {
                ctx.orchestrator(&["enqueue", "NOOP", "--key", k]);
            }
            ctx.spawn(&["run", "--no-execute", "--no-http", "--interval", "1"]);
            ctx.wait_for(&["lease", "show"], "held by", Duration::from_secs(30));
        },
        prose_fix: nothing,
    },
    Scenario {
        title: "A dead worker",
        world: sqlite,
        symptom: |ctx| {
            ctx.write_config("workers:\n  heartbeat_seconds: 0.5\n  ttl_seconds: 2\n  poll_seconds: 0.2\n");
            // Proof mode renders a NOOP without running it: the sleep needs real mode. The tick
            // stands for the leader's last one.
            ctx.orchestrator(&["proof", "off"]);
            ctx.orchestrator(&["run-once"]);
            let i = ctx.spawn(&["worker", "--concurrency", "1"]);
            ctx.orchestrator(&["enqueue", "NOOP", "--payload", r#"{"sleep_ms":60000}"#, "--max-attempts", "1"]);
            ctx.wait_for(&["actions", "list", "--status", "RUNNING"], "RUNNING", Duration::from_secs(30));
            ctx.children[i].kill().expect("kill -9 the worker");
            ctx.children[i].wait().expect("reap the worker");
            ctx.wait_for(&["status"], "1 dead", Duration::from_secs(30));
        },
        prose_fix: nothing,
    },
    Scenario {
        title: "Rules fail to load",
        world: sqlite,
        symptom: |ctx| {
            let rules = ctx.path().join("rules");
            std::fs::create_dir_all(&rules).expect("rules dir");
            let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
            for e in std::fs::read_dir(&shipped).expect("shipped rules").flatten() {
                if e.path().extension().is_some_and(|x| x == "rhai") {
                    std::fs::copy(e.path(), rules.join(e.file_name())).expect("copy a rule");
                }
            }
            std::fs::write(rules.join("broken.rhai"), "let threshold = ;\n").expect("write a broken rule");
        },
        prose_fix: nothing,
    },
    Scenario {
        title: "Proof mode stuck on",
        world: sqlite,
        symptom: |ctx| {
            ctx.write_config("proof_mode: enforced\n");
            ctx.orchestrator(&["run-once"]);
        },
        prose_fix: |ctx| ctx.write_config("proof_mode: flag\n"),
    },
    Scenario {
        title: "Database down at boot",
        world: Ctx::postgres_not_created,
        symptom: |ctx| {
            ctx.write_config("tick_interval_seconds: 0.5\n");
            ctx.spawn(&["run", "--no-http"]);
            std::thread::sleep(Duration::from_secs(1));
        },
        prose_fix: nothing,
    },
    Scenario {
        title: "Disk full",
        world: Ctx::sqlite_on_small_disk,
        symptom: |ctx| {
            ctx.spawn(&["run", "--no-http", "--interval", "0.5"]);
            ctx.wait_for(&["ticks", "--limit", "1"], "IDLE", Duration::from_secs(30));
            ctx.disk.as_ref().expect("the small disk").fill();
            ctx.wait_for(&["enqueue", "NOOP", "--key", "probe-filling"], "full", Duration::from_secs(30));
        },
        prose_fix: |ctx| ctx.disk.as_ref().expect("the small disk").resize("64m"),
    },
    Scenario {
        title: "Restore from a backup",
        world: sqlite,
        symptom: |ctx| {
            let post = r#"{"platform":"mastodon","content":"before the backup","audience":"all"}"#;
            ctx.orchestrator(&["enqueue", "POST_SOCIAL", "--payload", post, "--key", "before-backup"]);
            ctx.orchestrator(&["run-once"]);
            std::fs::create_dir_all(ctx.path().join("backups")).expect("backups dir");
            ctx.orchestrator(&["backup", "backups/orchestrator-daily.db"]);
            ctx.orchestrator(&["enqueue", "NOOP", "--key", "after-backup"]);
            // The damage: the file's pages overwritten, the WAL gone.
            let db = ctx.path().join("orchestrator.db");
            std::fs::write(&db, vec![0x5a; 64 * 1024]).expect("overwrite the database");
            for side in ["orchestrator.db-wal", "orchestrator.db-shm"] {
                std::fs::remove_file(ctx.path().join(side)).ok();
            }
        },
        prose_fix: nothing,
    },
    Scenario {
        title: "A rule that alerts in a loop",
        world: sqlite,
        symptom: |ctx| {
            std::fs::create_dir_all(ctx.path().join("rules")).expect("rules dir");
            // Keyed on the time: every tick is a new alert.
            let rule = "[alert(\"warning\", `queue at ${snap.now}`, `at-${snap.now}`, 5)]\n";
            std::fs::write(ctx.path().join("rules/noisy.rhai"), rule).expect("write the rule");
            for _ in 0..3 {
                ctx.orchestrator(&["run-once"]);
            }
        },
        prose_fix: |ctx| {
            let rule = "[alert(\"warning\", `queue at ${snap.now}`, \"queue-deep\", 5)]\n";
            std::fs::write(ctx.path().join("rules/noisy.rhai"), rule).expect("rewrite the rule");
        },
    },
];

fn run_entry(title: &str) {
    let entries = parse(PAGE);
    let entry =
        entries.iter().find(|e| e.title == title).unwrap_or_else(|| panic!("docs/runbook.md has no entry {title:?}"));
    let scenario = SCENARIOS.iter().find(|s| s.title == title).unwrap_or_else(|| panic!("no scenario for {title:?}"));
    let parts: Vec<Part> = entry.blocks.iter().map(|(p, _)| *p).collect();
    for p in [Part::Confirm, Part::Fix, Part::Verify] {
        assert!(parts.contains(&p), "runbook entry {title:?} has no {p:?} block");
    }
    assert!(parts.is_sorted_by_key(|p| *p as u8), "runbook entry {title:?}: confirm, then fix, then verify");

    let Some(mut ctx) = (scenario.world)() else { return };
    (scenario.symptom)(&mut ctx);
    let mut fixed = false;
    for (part, lines) in &entry.blocks {
        if *part != Part::Confirm && !fixed {
            (scenario.prose_fix)(&mut ctx);
            fixed = true;
        }
        // A fix takes effect at once, but what verifies it may need a heartbeat or two.
        let retry = if *part == Part::Verify { Duration::from_secs(20) } else { Duration::ZERO };
        for line in lines {
            ctx.run_line(line, retry);
        }
    }
}

#[test]
fn the_page_and_the_scenarios_name_the_same_entries() {
    let page: Vec<String> = parse(PAGE).into_iter().map(|e| e.title).collect();
    let known: Vec<String> = SCENARIOS.iter().map(|s| s.title.to_string()).collect();
    assert_eq!(page, known, "docs/runbook.md entries and tests/it/runbook.rs scenarios, in order");
    for e in parse(PAGE) {
        let lines: usize = e.blocks.iter().map(|(_, l)| l.len()).sum();
        assert!(lines >= 3, "runbook entry {:?} has {lines} command lines", e.title);
        let ours = e.blocks.iter().flat_map(|(_, l)| l).filter(|l| l.cmd.starts_with("orchestrator ")).count();
        assert!(ours >= 2, "runbook entry {:?} runs the binary {ours} time(s)", e.title);
    }
}

#[test]
fn stuck_lease() {
    run_entry("Stuck lease");
}

#[test]
fn dlq_growing() {
    run_entry("DLQ growing");
}

#[test]
fn nothing_processing_paused() {
    run_entry("Nothing is processing: paused");
}

#[test]
fn nothing_processing_killed() {
    run_entry("Nothing is processing: killed");
}

#[test]
fn nothing_processing_limit() {
    run_entry("Nothing is processing: a limit holds the work");
}

#[test]
fn nothing_processing_no_worker() {
    run_entry("Nothing is processing: no live worker serves the type");
}

#[test]
fn a_dead_worker() {
    run_entry("A dead worker");
}

#[test]
fn rules_fail_to_load() {
    run_entry("Rules fail to load");
}

#[test]
fn proof_mode_stuck_on() {
    run_entry("Proof mode stuck on");
}

#[test]
fn disk_full() {
    run_entry("Disk full");
}

#[test]
fn restore_from_a_backup() {
    run_entry("Restore from a backup");
}

#[test]
fn a_rule_that_alerts_in_a_loop() {
    run_entry("A rule that alerts in a loop");
}

#[test]
fn database_down_at_boot() {
    run_entry("Database down at boot");
}
