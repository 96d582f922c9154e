//! A real HTTP/1.1 server on 127.0.0.1:0 for the outbound adapters to talk to: it counts every
//! connection, records every request as received (method, path, headers, body) and answers
//! from a script (status, headers, body, delay), then with a fixed reply. No network mock: the
//! adapters' own client connects to it over TCP. It lives in the test process, so it outlives
//! any daemon the test kills and sees every request each one sent.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the server read it off the socket.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        let n = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str())
    }
}

/// One scripted answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub delay: Duration,
    /// Answer with the request as received (request line, headers, body) after `body`.
    pub echo: bool,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: format!("status {status} from the test peer"),
            delay: Duration::ZERO,
            echo: false,
        }
    }

    /// Echoes the request it answers, as a careless peer does in its errors.
    pub fn echo(mut self) -> Reply {
        self.echo = true;
        self
    }

    pub fn header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.into(), v.into()));
        self
    }

    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }

    pub fn body(mut self, b: &str) -> Reply {
        self.body = b.into();
        self
    }
}

struct State {
    connections: usize,
    requests: Vec<Received>,
    script: VecDeque<Reply>,
    /// The answer once the script has run out.
    otherwise: Reply,
}

pub struct Peer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Peer {
    /// Starts a server that answers `script` in order, then 200 to anything else.
    pub async fn start(script: Vec<Reply>) -> Peer {
        Peer::start_then(script, Reply::status(200)).await
    }

    /// Starts a server that answers every request with `reply`: a recorder.
    pub async fn answering(reply: Reply) -> Peer {
        Peer::start_then(Vec::new(), reply).await
    }

    /// Starts a server that answers `script` in order, then `otherwise` to anything else.
    pub async fn start_then(script: Vec<Reply>, otherwise: Reply) -> Peer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state =
            Arc::new(Mutex::new(State { connections: 0, requests: Vec::new(), script: script.into(), otherwise }));
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                st.lock().unwrap().connections += 1;
                tokio::spawn(serve(sock, st.clone()));
            }
        });
        Peer { addr, state, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    pub fn requests(&self) -> Vec<Received> {
        self.state.lock().unwrap().requests.clone()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut sock: TcpStream, state: Arc<Mutex<State>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let echoed = format!("{head}\r\n\r\n{}", String::from_utf8_lossy(&body));
    let mut reply = {
        let mut s = state.lock().unwrap();
        s.requests.push(Received { method, path, headers, body });
        s.script.pop_front().unwrap_or_else(|| s.otherwise.clone())
    };
    if reply.echo {
        reply.body.push_str(&echoed);
    }
    tokio::time::sleep(reply.delay).await;
    let mut out =
        format!("HTTP/1.1 {} Scripted\r\ncontent-length: {}\r\nconnection: close\r\n", reply.status, reply.body.len());
    for (k, v) in &reply.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&reply.body);
    let _ = sock.write_all(out.as_bytes()).await;
    let _ = sock.shutdown().await;
}
