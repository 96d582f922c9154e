//! The hostile-input corpus: cases kept as data in `tests/hostile/*.yaml`, each run through the
//! real binary. Every case must exit with the expected non-zero code and a clear message, must
//! not panic, and must leave the database exactly as it was.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use orchestrator::store::{ActionFilter, Store, StoreOptions};
use serde::Deserialize;

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

/// Expands the corpus' generators: `@big:N`, `@nested:N`, `@long:N`, `@types:N` (N distinct
/// action types, comma-separated: `T0,T1,...`; `@types:N:FROM` starts at `T<FROM>`, so that a
/// long list can be split over arguments, each under the kernel's 128 KiB).
pub fn expand(text: &str) -> String {
    let mut out = text.to_string();
    for (tag, make) in [
        ("@big:", (|n: usize| format!("{{\"a\":\"{}\"}}", "x".repeat(n))) as fn(usize) -> String),
        ("@nested:", |n| format!("{{\"a\":{}{}}}", "[".repeat(n), "]".repeat(n))),
        ("@long:", |n| "k".repeat(n)),
    ] {
        while let Some(start) = out.find(tag) {
            let digits: String = out[start + tag.len()..].chars().take_while(char::is_ascii_digit).collect();
            let n: usize = digits.parse().expect("a number after the generator tag");
            out.replace_range(start..start + tag.len() + digits.len(), &make(n));
        }
    }
    while let Some(start) = out.find("@types:") {
        let spec: String =
            out[start + "@types:".len()..].chars().take_while(|c| c.is_ascii_digit() || *c == ':').collect();
        let (n, from) = spec.split_once(':').unwrap_or((&spec, "0"));
        let (n, from): (usize, usize) = (n.parse().expect("a count"), from.parse().expect("a first number"));
        let list = (from..from + n).map(|i| format!("T{i}")).collect::<Vec<_>>().join(",");
        out.replace_range(start..start + "@types:".len() + spec.len(), &list);
    }
    out
}

pub fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

/// Everything an operator could see in the database, as one comparable value.
async fn state(dir: &Path) -> serde_json::Value {
    let url = format!("sqlite:{}", dir.join("orchestrator.db").display());
    let store = Store::connect(&url, &StoreOptions::default()).await.unwrap();
    let v = serde_json::json!({
        "flags": store.flags().await.unwrap(),
        "lease": store.lease("orchestrator").await.unwrap(),
        "actions": store.list_actions(&ActionFilter { limit: 1_000_000, ..Default::default() }).await.unwrap(),
        "ticks": store.recent_ticks(1_000_000).await.unwrap(),
        "logs": store.logs(None, 1_000_000).await.unwrap(),
        "limits": store.limits().await.unwrap(),
    });
    store.close().await.unwrap();
    v
}

/// Every case of every `*.yaml` file in `tests/<dir>`, in file order, with its file's stem.
pub fn load_cases<T: serde::de::DeserializeOwned>(dir: &str) -> Vec<(String, T)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut cases = Vec::new();
    for f in files.into_iter().filter(|f| f.extension().is_some_and(|e| e == "yaml")) {
        let text = std::fs::read_to_string(&f).unwrap();
        let list: Vec<T> = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let file = f.file_stem().unwrap().to_string_lossy().into_owned();
        cases.extend(list.into_iter().map(|c| (file.clone(), c)));
    }
    cases
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
