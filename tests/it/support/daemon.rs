//! The real binary as a daemon and as workers: its command line with an admin token, the
//! worker processes of a test (killed when dropped), signals to them, and Prometheus's
//! `promtool` when installed.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::support::{TestDb, bin};

pub const TOKEN: &str = "tester:0123456789abcdef-live";

pub const BEARER: &str = "Bearer 0123456789abcdef-live";

/// `orchestrator run` on an ephemeral port with JSON logs.
pub fn daemon(dir: &Path, url: &str, extra: &[&str]) -> Command {
    let mut cmd = bin(dir);
    cmd.args(["--database-url", url, "--log-format", "json", "run", "--listen", "127.0.0.1:0"]).args(extra);
    cmd
}

pub fn promtool() -> Option<&'static str> {
    match Command::new("promtool").arg("--version").output() {
        Ok(o) if o.status.success() => Some("promtool"),
        _ => {
            eprintln!(
                "skipped: promtool is not installed (Debian package prometheus), so the Prometheus checks did not run"
            );
            None
        }
    }
}

pub fn promtool_ok(args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut cmd = Command::new("promtool");
    cmd.args(args).current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let o = child.wait_with_output().unwrap();
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "promtool {args:?} failed:\n{out}");
    out
}

pub struct Procs(pub Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `orchestrator <args>`; a worker serves no HTTP unless `args` give it `--listen`.
pub fn spawn(db: &TestDb, args: &[&str]) -> Child {
    let quiet = args[0] == "worker" && !args.contains(&"--listen");
    bin(db.dir.path())
        .args(["--database-url", &db.url, "--config", "o.yaml"])
        .args(args)
        .args(if quiet { &["--no-http"][..] } else { &[][..] })
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn orchestrator")
}

pub fn signal(child: &Child, sig: &str) {
    let pid = child.id().to_string();
    assert!(Command::new("kill").args([sig, &pid]).status().unwrap().success());
}
