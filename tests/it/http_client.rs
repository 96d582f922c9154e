//! A minimal blocking HTTP/1.1 client for the live tests (and WebDriver), so that the test
//! binary needs no HTTP client crate: one request per connection, `Connection: close`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStderr};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// An answer: status code, headers (lower-cased names) and body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Sends one request; `Err` when the connection fails.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    // Read the head, then exactly the body (a server may keep the connection open).
    let mut reader = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse::<usize>().ok());
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let mut raw = Vec::new();
    if let Some(n) = length {
        raw.resize(n, 0);
        reader.read_exact(&mut raw)?;
    } else if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&chunk[..n]);
        }
    } else {
        reader.read_to_end(&mut raw)?;
    }
    let body = String::from_utf8_lossy(&raw).into_owned();
    Ok(Reply { status, headers, body })
}

pub fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, &[], None).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Polls `GET path` until `ok(reply)` or the limit; returns the last reply (or panics).
pub fn wait_for(addr: SocketAddr, path: &str, limit: Duration, ok: impl Fn(&Reply) -> bool) -> Reply {
    let start = Instant::now();
    loop {
        let r = request(addr, "GET", path, &[], None);
        match r {
            Ok(r) if ok(&r) => return r,
            Ok(r) if start.elapsed() > limit => panic!("GET {path}: condition not met in {limit:?}; last: {r:?}"),
            Err(e) if start.elapsed() > limit => panic!("GET {path}: {e}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
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
