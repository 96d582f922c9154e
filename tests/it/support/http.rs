//! HTTP requests to a server under test (the daemon, Prometheus, chromedriver) through
//! `reqwest`, from sync and async tests alike: each request runs on its own thread with a
//! current-thread runtime, so it never nests in the test's runtime. One connection per request,
//! no proxy.

use std::net::SocketAddr;
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

/// Sends one request (a body, or any POST, as `application/json`); `Err` when the connection
/// fails.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> reqwest::Result<Reply> {
    let url = format!("http://{addr}{path}");
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or_else(|e| panic!("method {method}: {e}"));
    let send = async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(0)
            .build()?;
        let post = method == reqwest::Method::POST;
        let mut req = client.request(method, url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if body.is_some_and(|b| !b.is_empty()) || post {
            req = req.header("content-type", "application/json").body(body.unwrap_or("").to_string());
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let body = resp.text().await?;
        Ok(Reply { status, headers, body })
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime for the request");
            rt.block_on(send)
        })
        .join()
        .expect("the request thread")
    })
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
