//! The real `orchestrator` binary under test: a command with a clean environment, its output
//! read as text or JSON, and a daemon started on a free port whose log lines are followed and
//! which is killed if the test fails.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Output};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The real binary, run in `cwd` with a clean environment (no ORCHESTRATOR_*, AOL_* or
/// DATABASE_URL).
pub fn bin(cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    cmd.current_dir(cwd);
    for (k, _) in std::env::vars() {
        let otel = k.starts_with("OTEL_");
        if k.starts_with("ORCHESTRATOR_") || k.starts_with("AOL_") || otel || k == "DATABASE_URL" || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run the orchestrator binary")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}\nstderr: {}", stdout(o), stderr(o)))
}

pub fn artifacts_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() { stack.push(p) } else { out.push(p) }
        }
    }
    out
}

/// The daemon's stderr, line by line, read on a thread so the pipe never fills.
pub struct LogLines {
    rx: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl LogLines {
    pub fn new(stderr: ChildStderr) -> LogLines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        LogLines { rx, seen: Vec::new() }
    }

    /// Waits for a line containing `needle`; returns it.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let start = Instant::now();
        while start.elapsed() < limit {
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!("no log line containing {needle:?} within {limit:?}; got:\n{}", self.seen.join("\n"));
    }

    /// Everything logged so far (waits briefly for stragglers).
    pub fn drain(&mut self) -> &[String] {
        while let Ok(line) = self.rx.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(line);
        }
        &self.seen
    }
}

/// A child process killed on drop, so a failing test leaves no daemon behind.
pub struct Server(pub Child);

impl std::ops::Deref for Server {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `cmd` (an `orchestrator run|serve --log-format json --listen 127.0.0.1:0 ...`) and
/// returns the child, its log lines and the address it bound.
pub fn spawn_server(cmd: &mut std::process::Command) -> (Server, LogLines, SocketAddr) {
    let mut child = Server(cmd.stderr(std::process::Stdio::piped()).spawn().expect("spawn orchestrator"));
    let mut logs = LogLines::new(child.stderr.take().expect("stderr piped"));
    let line = logs.wait_for("HTTP server listening", Duration::from_secs(60));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("JSON log line ({e}): {line}"));
    let addr = v["fields"]["addr"].as_str().unwrap_or_else(|| panic!("addr in {line}")).parse().unwrap();
    (child, logs, addr)
}

/// SIGTERM, then the exit status (or a kill and a panic after `limit`).
pub fn terminate(child: &mut Server, limit: Duration) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("process {pid} did not exit within {limit:?} of SIGTERM");
}
