//! The hostile-input corpus: cases kept as data in `tests/hostile/*.yaml`, each run through the
//! real binary. Every case must exit with the expected non-zero code and a clear message, must
//! not panic, and must leave the database exactly as it was.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use orchestrator::store::{Store, StoreOptions};
use serde::Deserialize;

use crate::support::hostile::{expand, hex, load_cases, visible_state};
use crate::support::{bin, run, stderr};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    args: Vec<String>,
    #[serde(default)]
    config: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    stdin: Option<String>,
    #[serde(default)]
    stdin_hex: Option<String>,
    /// Files written (relative to the case's directory) before the run, e.g. rules.
    #[serde(default)]
    files: BTreeMap<String, String>,
    /// Symlinks made (relative to the case's directory) before the run: link -> target.
    #[serde(default)]
    symlinks: BTreeMap<String, String>,
    exit: i32,
    /// Expected in stderr (or, with `in_stdout: true`, in stdout: `rules check` reports there).
    stderr: String,
    #[serde(default)]
    in_stdout: bool,
    /// At most this many characters of stderr: what is quoted back is cut.
    #[serde(default)]
    stderr_max_chars: Option<usize>,
}

/// A case still running after this long has been let in (e.g. a worker that started) and fails.
const CASE_DEADLINE: Duration = Duration::from_secs(60);

/// Everything an operator could see in the database, as one comparable value.
async fn state(dir: &Path) -> serde_json::Value {
    let url = format!("sqlite:{}", dir.join("orchestrator.db").display());
    let store = Store::connect(&url, &StoreOptions::default()).await.unwrap();
    let v = visible_state(&store).await;
    store.close().await.unwrap();
    v
}

fn load_corpus() -> Vec<(String, Case)> {
    load_cases("hostile")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_input_is_refused_clearly_without_panic_or_change() {
    let cases = load_corpus();
    assert!(cases.len() >= 40, "the corpus holds {} cases", cases.len());
    let mut failures = Vec::new();
    for (file, case) in &cases {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        assert_eq!(run(bin(dir).arg("migrate")).status.code(), Some(0));
        let before = state(dir).await;
        for (path, text) in &case.files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        for (link, target) in &case.symlinks {
            let p = dir.join(link);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, p).unwrap();
        }
        if let Some(cfg) = &case.config {
            std::fs::write(dir.join("orchestrator.yaml"), cfg).unwrap();
        }
        let mut cmd = bin(dir);
        cmd.args(case.args.iter().map(|a| expand(a))).envs(&case.env);
        let stdin: Option<Vec<u8>> = match (&case.stdin, &case.stdin_hex) {
            (Some(s), _) => Some(expand(s).into_bytes()),
            (None, Some(h)) => Some(hex(h)),
            (None, None) => None,
        };
        let (out, overran) = run_bounded(&mut cmd, stdin);
        std::fs::remove_file(dir.join("orchestrator.yaml")).ok();
        let err = stderr(&out);
        let shown = if case.in_stdout { String::from_utf8_lossy(&out.stdout).into_owned() } else { err.clone() };
        let after = state(dir).await;
        let mut problems = Vec::new();
        if out.status.code() != Some(case.exit) {
            problems.push(format!("exit {:?}, expected {}", out.status.code(), case.exit));
        }
        if !shown.contains(&case.stderr) {
            problems.push(format!("output lacks {:?}", case.stderr));
        }
        if overran {
            problems.push(format!("still running after {CASE_DEADLINE:?}: killed"));
        }
        if let Some(max) = case.stderr_max_chars
            && err.chars().count() > max
        {
            problems.push(format!("stderr has {} characters, more than {max}", err.chars().count()));
        }
        if err.contains("panicked") || out.status.code() == Some(101) {
            problems.push("panicked".into());
        }
        if before != after {
            problems.push("the database changed".into());
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{file}: {}: {}\n    stderr: {}",
                case.name,
                problems.join("; "),
                err.chars().take(300).collect::<String>()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} hostile cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    eprintln!("hostile corpus: {} cases refused clearly, no panic, database unchanged", cases.len());
}

/// Runs `cmd` with `stdin` (or none), killing it once it has run for [`CASE_DEADLINE`]: its
/// output, and whether it had to be killed.
fn run_bounded(cmd: &mut Command, stdin: Option<Vec<u8>>) -> (Output, bool) {
    let piped = if stdin.is_some() { Stdio::piped() } else { Stdio::null() };
    let mut child = cmd.stdin(piped).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // The binary may refuse and exit before reading everything: a broken pipe is fine.
    let writer = stdin.map(|bytes| {
        let mut pipe = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        })
    });
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let started = Instant::now();
    let mut overran = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > CASE_DEADLINE {
            overran = true;
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if let Some(w) = writer {
        w.join().unwrap();
    }
    let out = Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() };
    (out, overran)
}
