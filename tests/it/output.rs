//! Output that cannot be written, through the real binary. Every command that prints, with its
//! stdout on a closed pipe (it exits quietly, with the code it exits with when stdout is fine)
//! and on `/dev/full` (it exits 74 and says so on stderr), and with its stderr on a closed pipe
//! or `/dev/full` (its exit code does not change); followers whose reader leaves while nothing
//! happens; a daemon whose stderr closes mid-drain (every action done once, the lease released).

use std::io::{BufRead as _, BufReader};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use orchestrator::model::ActionStatus;
use orchestrator::store::ActionFilter;

use crate::support::process::{LogLines, Server, spawn_server, terminate};
use crate::support::{TestDb, bin, json, run, stderr};

/// `cli::exit::OUTPUT`: the output could not be written.
const OUTPUT_FAILED: i32 = 74;

/// Where a stream of the child goes.
#[derive(Debug, Clone, Copy)]
enum Sink {
    /// `/dev/null`: every write succeeds.
    Null,
    /// A pipe whose reader has already gone: every write is `EPIPE`.
    ClosedPipe,
    /// `/dev/full`: every write is `ENOSPC`.
    Full,
}

impl Sink {
    fn stdio(self) -> Stdio {
        match self {
            Sink::Null => Stdio::null(),
            Sink::ClosedPipe => {
                let (reader, writer) = std::io::pipe().unwrap();
                drop(reader);
                Stdio::from(writer)
            }
            Sink::Full => Stdio::from(std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap()),
        }
    }
}

fn orch(db: &TestDb, args: &[&str]) -> Command {
    let mut cmd = bin(db.dir.path());
    cmd.arg("--database-url").arg(&db.url).args(args);
    cmd
}

/// Runs `args` with stdout and stderr sent to the given sinks (stderr captured when `None`).
fn run_to(db: &TestDb, args: &[&str], out: Sink, err: Option<Sink>) -> Output {
    // `backup` never writes over a file: each run gets a name of its own, so each succeeds.
    let fresh = format!("backup-{:016x}.db", fastrand::u64(..));
    let args: Vec<&str> = args.iter().map(|a| if *a == FRESH_FILE { fresh.as_str() } else { a }).collect();
    let mut cmd = orch(db, &args);
    cmd.stdout(out.stdio());
    if let Some(err) = err {
        // Something to log on every command, so that stderr is written to.
        cmd.env("RUST_LOG", "debug").stderr(err.stdio());
    }
    run(&mut cmd)
}

/// The shipped rules and their fixtures, without the scenarios: a scenario runs the engine for
/// several ticks against the clock, and under a loaded machine its verdict can differ from one
/// run to the next, which would blur the exit code this test compares.
fn shipped_rules_without_scenarios(into: &std::path::Path) -> String {
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    std::fs::create_dir_all(into.join("tests")).unwrap();
    for (from, to) in [(shipped.clone(), into.to_path_buf()), (shipped.join("tests"), into.join("tests"))] {
        for entry in std::fs::read_dir(&from).unwrap().flatten() {
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
    }
    into.display().to_string()
}

/// Stands for a file name no run has used (see [`run_to`]).
const FRESH_FILE: &str = "@fresh-file";

/// Every command that prints, with arguments that make it print, in an order that keeps each
/// one's exit code the same however often it runs (`kill` is followed by `resume`).
fn printing_commands(rules: &str) -> Vec<Vec<String>> {
    let table: &[&[&str]] = &[
        &["--help"],
        &["--version"],
        &["actions", "--help"],
        &["migrate"],
        &["enqueue", "NOOP", "--key", "again"],
        &["enqueue", "--file", "more.jsonl"],
        &["run-once"],
        &["run-once", "--dry-run"],
        &["run", "--ticks", "1", "--no-http", "--interval", "0"],
        &["status"],
        &["workers"],
        &["actions", "list"],
        &["actions", "show", "1"],
        &["actions", "show", "999999"],
        &["actions", "requeue", "--all-dlq"],
        &["actions", "cancel", "--all-dlq"],
        &["actions", "approve", "999999"],
        &["actions", "reject", "999999", "--reason", "no"],
        &["actions", "summary"],
        &["actions", "purge", "--older-than", "30d"],
        &["lease", "show"],
        &["lease", "release"],
        &["limits", "list"],
        &["limits", "set", "NOOP", "--max-running", "5"],
        &["limits", "override", "NOOP", "max_running", "3", "--for", "10m", "--reason", "test"],
        &["limits", "override", "NOOP", "max_running", "--end"],
        &["limits", "clear", "NOOP"],
        &["schedules", "list"],
        // `s` exists (seeded): the add is refused each time, the others succeed each time.
        &["schedules", "add", "s", "--cron", "@daily", "--type", "NOOP"],
        &["schedules", "pause", "s"],
        &["schedules", "resume", "s"],
        &["schedules", "run-now", "s"],
        &["schedules", "remove", "no-such-schedule"],
        &["windows", "add", "--type", "WEBHOOK", "--for", "10m", "--reason", "test"],
        &["windows", "list"],
        &["windows", "end", "999999"],
        &["ticks"],
        &["ticks", "--follow"],
        &["logs"],
        &["logs", "--follow"],
        &["explain", "--tick", "1"],
        &["artifacts", "verify"],
        &["backup", FRESH_FILE],
        &["rules", "check", "--rules", rules],
        &["rules", "test", "--rules", rules],
        &["rules", "backtest", "--rules", rules],
        &["rules", "bench", "--rules", rules, "--iterations", "1", "--synthetic", "1"],
        &["pause"],
        &["resume"],
        &["kill"],
        &["resume"],
        &["proof", "on"],
        &["completions", "bash"],
        &["manpage"],
    ];
    table.iter().map(|args| args.iter().map(|a| a.to_string()).collect()).collect()
}

/// Commands that print only when stopped, tested on their own below.
const PRINTING_AT_STOP: [&str; 2] = ["serve", "worker"];

/// Every command and subcommand clap knows, as the words that name it (`actions list`).
fn leaf_commands(cmd: &clap::Command, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let subs: Vec<&clap::Command> = cmd.get_subcommands().filter(|c| c.get_name() != "help").collect();
    if subs.is_empty() && !prefix.is_empty() {
        out.push(prefix.to_vec());
    }
    for sub in subs {
        let mut path = prefix.to_vec();
        path.push(sub.get_name().to_string());
        leaf_commands(sub, &path, out);
    }
}

#[test]
fn the_table_names_every_command() {
    let mut leaves = Vec::new();
    leaf_commands(&<orchestrator::cli::Cli as clap::CommandFactory>::command(), &[], &mut leaves);
    assert!(leaves.len() > 30, "{leaves:?}");
    let table = printing_commands("rules");
    let missing: Vec<String> = leaves
        .iter()
        .filter(|leaf| !PRINTING_AT_STOP.contains(&leaf[0].as_str()))
        .filter(|leaf| !table.iter().any(|args| args.starts_with(leaf)))
        .map(|leaf| leaf.join(" "))
        .collect();
    assert!(missing.is_empty(), "commands with no closed-pipe and /dev/full case: {missing:?}");
}

/// A database with an action run (tick 1, a log row, an artifact), a schedule and a JSON Lines
/// file.
async fn seeded() -> TestDb {
    let db = TestDb::sqlite().await;
    std::fs::write(db.dir.path().join("more.jsonl"), "{\"action_type\":\"NOOP\",\"payload\":{\"n\":1}}\n").unwrap();
    let schedule = ["schedules", "add", "s", "--cron", "@daily", "--type", "NOOP"];
    for args in [&["enqueue", "NOOP"][..], &["run-once"], &schedule] {
        let o = run(&mut orch(&db, args));
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
    }
    db
}

fn no_panic(what: &str, o: &Output) {
    let err = stderr(o);
    assert_ne!(o.status.code(), Some(101), "{what} panicked: {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
}

#[tokio::test]
async fn every_printing_command_survives_a_closed_or_full_stdout_and_stderr() {
    let db = seeded().await;
    let rules = shipped_rules_without_scenarios(&db.dir.path().join("rules-copy"));
    for args in printing_commands(&rules) {
        for json_flag in [false, true] {
            let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
            if json_flag {
                if args[0].starts_with("--") || args.contains(&"--help") {
                    continue;
                }
                args.push("--json");
            }
            let what = args.join(" ");
            // A follower runs until its reader goes: its code with a good stdout is 0.
            let follows = args.contains(&"--follow");
            let expected = if follows {
                0
            } else {
                let o = run_to(&db, &args, Sink::Null, None);
                no_panic(&what, &o);
                o.status.code().unwrap()
            };

            let o = run_to(&db, &args, Sink::ClosedPipe, None);
            no_panic(&what, &o);
            assert_eq!(o.status.code(), Some(expected), "{what} on a closed pipe: {}", stderr(&o));
            assert!(!stderr(&o).contains("Broken pipe"), "{what} on a closed pipe is quiet: {}", stderr(&o));

            let o = run_to(&db, &args, Sink::Full, None);
            no_panic(&what, &o);
            if expected == 0 {
                assert_eq!(o.status.code(), Some(OUTPUT_FAILED), "{what} > /dev/full: {}", stderr(&o));
                if !args[0].starts_with("--") && !args.contains(&"--help") {
                    assert!(
                        stderr(&o).contains("error: cannot write the output to stdout: No space left on device"),
                        "{what} > /dev/full: {}",
                        stderr(&o)
                    );
                }
            } else {
                assert_eq!(o.status.code(), Some(expected), "{what} > /dev/full keeps its failure: {}", stderr(&o));
            }

            if json_flag || follows {
                continue;
            }
            for err in [Sink::ClosedPipe, Sink::Full] {
                let o = run_to(&db, &args, Sink::Null, Some(err));
                assert_ne!(o.status.code(), Some(101), "{what} 2> {err:?} panicked");
                assert_eq!(o.status.code(), Some(expected), "{what} 2> {err:?}");
            }
        }
    }
    db.cleanup().await;
}

/// Waits for `child` to exit on its own (a follower must not need a signal to notice).
fn exit_within(child: &mut Server, limit: Duration) -> ExitStatus {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("still running {limit:?} after its reader left");
}

#[tokio::test]
async fn a_follower_notices_its_reader_has_gone_while_nothing_happens() {
    let db = seeded().await;
    for args in [["logs", "--follow"], ["ticks", "--follow"]] {
        let mut child = Server(orch(&db, &args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap());
        let mut reader = BufReader::new(child.0.stdout.take().unwrap());
        let mut first = String::new();
        reader.read_line(&mut first).unwrap();
        assert!(!first.is_empty(), "{args:?} printed its last row");
        // Like `| head -1`: the reader takes one line and leaves. Nothing is written after.
        drop(reader);
        let status = exit_within(&mut child, Duration::from_secs(30));
        assert_eq!(status.code(), Some(0), "{args:?} exits quietly");
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut err).unwrap();
        assert!(err.is_empty(), "{args:?} says nothing: {err}");
    }
    db.cleanup().await;
}

#[tokio::test]
async fn commands_that_print_when_stopped_survive_a_closed_or_full_stdout() {
    let db = seeded().await;
    for (out, expected) in [(Sink::ClosedPipe, 0), (Sink::Full, OUTPUT_FAILED)] {
        let mut cmd = orch(&db, &["serve", "--listen", "127.0.0.1:0", "--log-format", "json"]);
        let (mut server, _logs, _addr) = spawn_server(cmd.stdout(out.stdio()));
        assert_eq!(terminate(&mut server, Duration::from_secs(30)).code(), Some(expected), "serve > {out:?}");

        let mut cmd = orch(&db, &["worker", "--no-http", "--log-format", "json"]);
        let mut worker =
            Server(cmd.env("RUST_LOG", "info").stdout(out.stdio()).stderr(Stdio::piped()).spawn().unwrap());
        let mut logs = LogLines::new(worker.0.stderr.take().unwrap());
        logs.wait_for("orchestrator worker running", Duration::from_secs(60));
        assert_eq!(terminate(&mut worker, Duration::from_secs(30)).code(), Some(expected), "worker > {out:?}");
    }
    db.cleanup().await;
}

/// The value of an unlabelled counter in a Prometheus text page.
fn counter(page: &str, name: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Starts `args` (a process that serves HTTP on 127.0.0.1:0 and logs JSON) with stderr on a
/// pipe, reads up to the line that names its address, then closes the pipe's only reader:
/// from then on every log line it writes meets a closed pipe.
fn spawn_then_close_stderr(db: &TestDb, args: &[&str]) -> (Server, std::net::SocketAddr) {
    let mut child = Server(
        orch(db, args)
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut reader = BufReader::new(child.0.stderr.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "{args:?} exited before listening");
        if line.contains("HTTP server listening") {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            break v["fields"]["addr"].as_str().unwrap().parse().unwrap();
        }
    };
    drop(reader);
    (child, addr)
}

/// Drains 300 NOOP actions with every process's stderr closed before its first tick or claim:
/// `run` alone, or `run --no-execute` and a `worker`.
async fn drain_with_stderr_closed(with_worker: bool) {
    const ACTIONS: usize = 300;
    let db = TestDb::sqlite().await;
    let lines: String =
        (0..ACTIONS).map(|i| format!("{{\"action_type\":\"NOOP\",\"payload\":{{\"n\":{i}}}}}\n")).collect();
    std::fs::write(db.dir.path().join("many.jsonl"), lines).unwrap();
    let o = run(&mut orch(&db, &["enqueue", "--file", "many.jsonl"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    // Each tick logs a line; `max_actions_per_tick` 10 makes the drain 30 ticks or more.
    std::fs::write(db.dir.path().join("orchestrator.yaml"), "max_actions_per_tick: 10\n").unwrap();
    let mut procs = Vec::new();
    if with_worker {
        procs.push(spawn_then_close_stderr(&db, &["run", "--interval", "0", "--no-execute"]));
        procs.push(spawn_then_close_stderr(&db, &["worker", "--concurrency", "4"]));
    } else {
        procs.push(spawn_then_close_stderr(&db, &["run", "--interval", "0"]));
    }

    let start = Instant::now();
    loop {
        let done = db
            .store
            .actions()
            .list_actions(&ActionFilter { status: Some(ActionStatus::Success), action_type: None, limit: 100_000 })
            .await
            .unwrap();
        if done.len() == ACTIONS {
            break;
        }
        for (p, _) in &mut procs {
            assert!(p.try_wait().unwrap().is_none(), "a process stopped with {} of {ACTIONS} done", done.len());
        }
        assert!(start.elapsed() < Duration::from_secs(120), "{} of {ACTIONS} done after 120 s", done.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (_, addr) in &procs {
        let page = crate::support::http::get(*addr, "/metrics").body;
        let dropped = counter(&page, "orchestrator_log_lines_dropped_total").unwrap_or_else(|| panic!("{page}"));
        assert!(dropped > 0.0, "the lines stderr refused were counted: {page}");
    }

    // The worker first (it stops claiming, finishes, deregisters), then the leader.
    for (mut p, _) in procs.into_iter().rev() {
        let status = terminate(&mut p, Duration::from_secs(30));
        assert_eq!(status.code(), Some(0), "each process stops cleanly on SIGTERM");
    }
    let all = db
        .store
        .actions()
        .list_actions(&ActionFilter { status: None, action_type: None, limit: 100_000 })
        .await
        .unwrap();
    assert_eq!(all.len(), ACTIONS);
    for a in &all {
        assert_eq!((a.status, a.attempts), (ActionStatus::Success, 1), "action {} ran once", a.id);
    }
    let lease = json(&run(&mut orch(&db, &["lease", "show", "--json"])));
    assert_eq!(lease["live"], false, "the lease was released at exit: {lease}");
    if with_worker {
        let workers = json(&run(&mut orch(&db, &["workers", "--json"])));
        assert!(workers.as_array().unwrap().iter().all(|w| w["live"] == false), "the worker deregistered: {workers}");
    }
    db.cleanup().await;
}

#[tokio::test]
async fn a_daemon_whose_stderr_closes_mid_drain_does_every_action_once_and_releases_the_lease() {
    drain_with_stderr_closed(false).await;
}

#[tokio::test]
async fn a_leader_and_worker_whose_stderr_closes_mid_drain_do_every_action_once() {
    drain_with_stderr_closed(true).await;
}

#[tokio::test]
async fn a_daemon_whose_stderr_nobody_reads_does_not_wait_for_it() {
    const ACTIONS: usize = 300;
    const FILLER: &str = "filler\n";
    let db = TestDb::sqlite().await;
    let lines: String =
        (0..ACTIONS).map(|i| format!("{{\"action_type\":\"NOOP\",\"payload\":{{\"n\":{i}}}}}\n")).collect();
    std::fs::write(db.dir.path().join("many.jsonl"), lines).unwrap();
    let o = run(&mut orch(&db, &["enqueue", "--file", "many.jsonl"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    std::fs::write(db.dir.path().join("orchestrator.yaml"), "max_actions_per_tick: 10\n").unwrap();
    // A reader that is there but does not read (a pager left paused): the pipe is full (64 KiB,
    // Linux's default) before the daemon starts, so its every write to stderr would wait.
    let (reader, mut writer) = std::io::pipe().unwrap();
    std::io::Write::write_all(&mut writer, FILLER.repeat(65536 / FILLER.len()).as_bytes()).unwrap();
    let mut child = Server(
        orch(&db, &["run", "--no-http", "--interval", "0"]).stdout(Stdio::null()).stderr(writer).spawn().unwrap(),
    );
    let start = Instant::now();
    loop {
        let done = db
            .store
            .actions()
            .list_actions(&ActionFilter { status: Some(ActionStatus::Success), action_type: None, limit: 100_000 })
            .await
            .unwrap();
        if done.len() == ACTIONS {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the daemon stopped with {} of {ACTIONS} done", done.len());
        assert!(start.elapsed() < Duration::from_secs(120), "{} of {ACTIONS} done after 120 s", done.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The reader catches up: the lines that waited follow, whole and in order.
    let reading = std::thread::spawn(move || std::io::read_to_string(reader).unwrap());
    let status = terminate(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "the daemon stops cleanly on SIGTERM");
    drop(child);
    let text = reading.join().unwrap();
    let logged: Vec<&str> = text.lines().filter(|l| *l != FILLER.trim_end()).collect();
    assert!(logged.iter().all(|l| l.starts_with("20") && l.contains("orchestrator")), "whole lines: {text}");
    assert!(logged.iter().filter(|l| l.contains(" tick ")).count() >= 30, "every tick's line: {text}");
    assert!(logged.last().is_some_and(|l| l.contains("lease released")), "the last line too: {text}");
    let lease = json(&run(&mut orch(&db, &["lease", "show", "--json"])));
    assert_eq!(lease["live"], false, "the lease was released at exit: {lease}");
    db.cleanup().await;
}
