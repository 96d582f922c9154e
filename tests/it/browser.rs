//! The operator page in a real browser: headless Chromium driven through WebDriver
//! (chromedriver), against the real daemon. It loads the page, checks the numbers shown match
//! `/status`, shows a decision a rule made, clicks Pause with a token and sees the flag in the
//! database, requeues a DLQ row, switches proof/real through the confirmation, cancels and
//! requeues the DLQ rows shown in bulk (a row arriving while the question is open stays), opens a
//! tick's explain, reads the decisions timeline and the waiting counts, each checked against the
//! database, and saves screenshots at 1280 px and at phone width under `target/`; a second test
//! clicks Approve on an action awaiting approval and sees it approved (the sha256 shown) and run,
//! and Reject on another, answering its prompt, and sees it cancelled with that reason.
//! Skips, saying why, when Chromium or chromedriver is absent.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use orchestrator::model::ActionStatus;
use orchestrator::queue::{self, EnqueueRequest};
use orchestrator::store::{Store, StoreOptions};
use serde_json::{Value, json};

use crate::support::daemon::{BEARER, TOKEN, daemon};
use crate::support::http::{request, wait_for};
use crate::support::process::{spawn_server, terminate};
use crate::support::{bin, run};

/// `/status` with the admin token, as JSON (`None` unless 200).
fn status(addr: SocketAddr) -> Option<Value> {
    let r = request(addr, "GET", "/status", &[("Authorization", BEARER)], None).ok()?;
    (r.status == 200).then(|| r.json())
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The first of `names` found on PATH, as an absolute path.
fn find_tool(names: &[&str]) -> Option<String> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|n| {
        std::env::split_paths(&path).map(|d| d.join(n)).find(|p| p.is_file()).map(|p| p.display().to_string())
    })
}

struct Driver {
    addr: SocketAddr,
    session: String,
    process: Child,
}

impl Driver {
    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let path = format!("/session/{}{path}", self.session);
        let body = body.map(|b| b.to_string());
        let r = request(self.addr, method, &path, &[], body.as_deref()).unwrap_or_else(|e| panic!("{path}: {e}"));
        (r.status, r.json()["value"].clone())
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.try_call(method, path, body);
        assert_eq!(status, 200, "WebDriver {method} {path}: {v}");
        v
    }

    fn find(&self, css: &str) -> String {
        let v = self.call("POST", "/element", Some(json!({"using": "css selector", "value": css})));
        v[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}: {v}")).to_string()
    }

    /// Runs `script` with `css` as `arguments[0]` in one step (the page re-renders every few
    /// seconds, so a found element can go stale before a second call reads it).
    fn script(&self, script: &str, css: &str) -> Value {
        self.call("POST", "/execute/sync", Some(json!({"script": script, "args": [css]})))
    }

    fn count(&self, css: &str) -> usize {
        self.script("return document.querySelectorAll(arguments[0]).length", css).as_u64().unwrap_or(0) as usize
    }

    fn text(&self, css: &str) -> String {
        let v = self.script("const e = document.querySelector(arguments[0]); return e ? e.innerText : null", css);
        v.as_str().unwrap_or_else(|| panic!("no element {css}")).trim().to_string()
    }

    fn enabled(&self, css: &str) -> bool {
        let v = self.script("const e = document.querySelector(arguments[0]); return e ? !e.disabled : null", css);
        v.as_bool().unwrap_or_else(|| panic!("no element {css}"))
    }

    /// A real WebDriver click, found afresh if the element went stale in between.
    fn click(&self, css: &str) {
        for _ in 0..10 {
            let id = self.find(css);
            let (status, v) = self.try_call("POST", &format!("/element/{id}/click"), Some(json!({})));
            if status == 200 {
                return;
            }
            assert_eq!(v["error"], "stale element reference", "click {css}: {v}");
        }
        panic!("{css} kept going stale");
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.call("POST", &format!("/element/{id}/value"), Some(json!({"text": text})));
    }

    fn wait_text(&self, css: &str, ok: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let t = self.text(css);
            if ok(&t) {
                return t;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "{css} still shows {t:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn screenshot(&self, width: u32, height: u32, name: &str) -> std::path::PathBuf {
        self.call("POST", "/window/rect", Some(json!({"width": width, "height": height})));
        std::thread::sleep(Duration::from_millis(500));
        let png = base64_decode(self.call("GET", "/screenshot", None).as_str().expect("base64 screenshot"));
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, png).unwrap();
        path
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = request(self.addr, "DELETE", &format!("/session/{}", self.session), &[], None);
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn start_driver(chromium: &str, driver: &str, profile: &std::path::Path) -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let process = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for(addr, "/status", Duration::from_secs(30), |r| r.status == 200);
    let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
        "binary": chromium,
        "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", format!("--user-data-dir={}", profile.display()),
                 "--window-size=1280,1000"]
    }}}});
    let r = request(addr, "POST", "/session", &[], Some(&caps.to_string())).expect("new WebDriver session");
    let v = r.json();
    let session = v["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {v}")).to_string();
    Driver { addr, session, process }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_page_in_headless_chromium() {
    let (Some(chromium), Some(chromedriver)) =
        (find_tool(&["chromium", "chromium-browser"]), find_tool(&["chromedriver"]))
    else {
        eprintln!(
            "skipped: chromium and chromedriver are needed (Debian packages chromium, chromium-driver), so the browser test did not run"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = format!("sqlite:{}", d.join("o.db").display());
    let social = r#"{"platform":"mastodon","content":"hello","audience":"all"}"#;
    for (t, key, payload) in
        [("TELEPORT", "dead-1", "{}"), ("WORMHOLE", "dead-2", "{}"), ("POST_SOCIAL", "ok-1", social)]
    {
        let o = run(bin(d).args(["--database-url", &url, "enqueue", t, "--payload", payload, "--key", key]));
        assert_eq!(o.status.code(), Some(0));
    }
    let nightly =
        ["schedules", "add", "nightly", "--cron", "30 2 * * *", "--timezone", "Europe/Madrid", "--type", "NOOP"];
    assert_eq!(run(bin(d).args(["--database-url", &url]).args(nightly)).status.code(), Some(0));
    // A tiny rule that raises an alert every tick (a new key each time, so no cooldown).
    std::fs::create_dir(d.join("rules")).unwrap();
    std::fs::write(
        d.join("rules").join("beacon.rhai"),
        "state.n = (state.n ?? 0) + 1;\n[alert(\"info\", `beacon ${state.n}`, `beacon ${state.n}`)]\n",
    )
    .unwrap();
    let (mut server, mut logs, addr) =
        spawn_server(daemon(d, &url, &["--interval", "0.5"]).env("ORCHESTRATOR_ADMIN_TOKEN", TOKEN));
    // A token is set, so /status needs it (docs/operations.md, Security).
    let start = Instant::now();
    while !status(addr).is_some_and(|s| s["queue"]["DLQ"] == 2) {
        assert!(start.elapsed() < Duration::from_secs(30), "the two DLQ rows never showed");
        std::thread::sleep(Duration::from_millis(100));
    }

    let profile = tempfile::tempdir().unwrap();
    let page = format!("http://{addr}/");
    let handle = tokio::runtime::Handle::current();
    let db = Store::open(&url, &StoreOptions::default()).await.unwrap();
    let checks = tokio::task::spawn_blocking(move || {
        let drv = start_driver(&chromium, &chromedriver, profile.path());
        drv.call("POST", "/url", Some(json!({"url": page})));
        // With a token set the page shows nothing until it is given the token; the buttons are
        // disabled, with the reason.
        drv.wait_text("#updated", |t| t.contains("enter the admin token"));
        assert!(!drv.enabled("#btn-pause"));
        assert!(drv.text("#why").contains("enter the admin token"), "{}", drv.text("#why"));
        drv.type_into("#token", TOKEN.split_once(':').unwrap().1);
        drv.click("#token-save");
        drv.wait_text("#mode", |t| t == "PROOF");
        drv.wait_text("#q-DLQ b", |t| t == "2");

        // The numbers shown are /status's.
        let s = status(addr).expect("/status with the token");
        for status in ["PENDING", "RUNNING", "RETRY", "DLQ"] {
            assert_eq!(drv.text(&format!("#q-{status} b")), s["queue"][status].to_string(), "{status}");
        }
        for status in ["SUCCESS", "CANCELLED"] {
            let shown = drv.text(&format!("#q-{status} b"));
            assert_eq!(shown, s["finished_last_24h"][status].to_string(), "{status} (24 h)");
        }
        assert_eq!(drv.text("#lease-owner"), s["lease"]["owner"].as_str().unwrap());
        assert_eq!(drv.text("#lease-epoch"), s["lease"]["epoch"].to_string());
        assert!(drv.text("#lease-ttl").ends_with(" s"), "TTL counts down in seconds");
        assert_eq!(drv.text("#flag-paused"), "false");
        assert_eq!(drv.text("#health"), s["liveness"].as_str().unwrap().to_uppercase());
        assert_eq!(drv.count("#dlq tbody tr"), 2);
        // Schedules: the one added, running, with its next fire.
        drv.wait_text("#schedules tr[data-schedule=nightly] td:nth-child(2)", |t| t == "running");
        assert_eq!(drv.text("#schedules tr[data-schedule=nightly] td:nth-child(3)"), "30 2 * * *");
        assert_eq!(drv.text("#schedules tr[data-schedule=nightly] td:nth-child(4)"), "Europe/Madrid");
        assert_ne!(drv.text("#schedules tr[data-schedule=nightly] td:nth-child(7)"), "-", "a next fire is shown");
        assert!(drv.text("#dlq").contains("no adapter for action type TELEPORT"));
        assert!(drv.count("#ticks tbody tr") >= 1);
        assert!(drv.count("#chart-duration polyline") == 1, "the tick duration chart is drawn");
        let sha =
            s["logs"].as_array().unwrap().iter().find_map(|l| l["artifact_sha256"].as_str()).expect("a proof artifact");
        assert!(drv.text("#logs").contains(sha), "the artifact sha256 is shown");
        // The rule's decision, as /status lists it: tick, rule, kind, target, outcome, reason.
        // The daemon ticks faster than the page refreshes, so the row is read in one step and
        // looked up in /status by its tick.
        drv.wait_text("#decisions tbody tr td:nth-child(2)", |t| t == "beacon");
        let cells = drv.script(
            "return Array.from(document.querySelectorAll(arguments[0])).map((td) => td.textContent)",
            "#decisions tbody tr:first-child td",
        );
        let cells: Vec<&str> = cells.as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
        assert_eq!((cells[1], cells[2], cells[4]), ("beacon", "alert", "applied"), "{cells:?}");
        let s = status(addr).expect("/status with the token");
        assert_eq!(s["rules"]["loaded"], json!(["beacon"]), "the daemon loaded the rules directory");
        let tick: i64 = cells[0].parse().unwrap_or_else(|e| panic!("tick cell {:?}: {e}", cells[0]));
        let shown = s["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["tick_id"].as_i64() == Some(tick))
            .unwrap_or_else(|| panic!("tick {tick} not among /status's decisions: {}", s["decisions"]));
        assert_eq!((shown["rule"].as_str(), shown["target"].as_str()), (Some("beacon"), Some(cells[3])));
        assert_eq!(shown["reason"].as_str(), Some(cells[5]), "the reason is shown");

        let wide = drv.screenshot(1280, 1000, "operator-page-1280.png");

        let start = Instant::now();
        while !drv.enabled("#btn-pause") {
            assert!(start.elapsed() < Duration::from_secs(20), "Pause never enabled");
            std::thread::sleep(Duration::from_millis(100));
        }
        drv.click("#btn-pause");
        drv.wait_text("#flag-paused", |t| t == "true");
        assert_eq!(drv.text("#message"), "paused");
        // Paused, a requeued action stays PENDING: the page's count follows the database.
        drv.click("#dlq button.requeue");
        drv.wait_text("#q-DLQ b", |t| t == "1");
        drv.wait_text("#q-PENDING b", |t| t == "1");
        assert!(drv.text("#message").starts_with("requeued action "), "{}", drv.text("#message"));

        // Proof -> real needs the confirmation; answering no changes nothing.
        drv.click("#btn-mode");
        drv.wait_text("#confirm-text", |t| t.starts_with("Switch to REAL mode?"));
        drv.click("#confirm-no");
        drv.wait_text("#message", |t| t == "nothing done");
        assert!(handle.block_on(db.flags().get()).unwrap().proof_mode, "no: still proof mode in the database");
        drv.click("#btn-mode");
        drv.wait_text("#confirm-text", |t| t.starts_with("Switch to REAL mode?"));
        drv.click("#confirm-yes");
        drv.wait_text("#mode", |t| t == "REAL");
        assert!(!handle.block_on(db.flags().get()).unwrap().proof_mode, "yes: real mode in the database");
        drv.click("#btn-mode");
        drv.wait_text("#confirm-text", |t| t.starts_with("Switch to PROOF mode?"));
        drv.click("#confirm-yes");
        drv.wait_text("#mode", |t| t == "PROOF");
        assert!(handle.block_on(db.flags().get()).unwrap().proof_mode);

        // Bulk cancel of the one DLQ row shown.
        let left = handle.block_on(db.actions().dlq_ids()).unwrap();
        assert_eq!(left.len(), 1);
        drv.wait_text("#dlq-cancel-shown", |t| t == "Cancel 1 shown");
        drv.click("#dlq-cancel-shown");
        drv.wait_text("#confirm-text", |t| t.starts_with("Cancel the 1 DLQ action(s) shown"));
        drv.click("#confirm-yes");
        drv.wait_text("#q-DLQ b", |t| t == "0");
        drv.wait_text("#message", |t| t == "cancelled 1 shown DLQ action(s)");
        let cancelled = handle.block_on(db.actions().action(left[0])).unwrap().unwrap();
        assert_eq!(cancelled.status, ActionStatus::Cancelled, "the click cancelled it in the database");

        // Bulk requeue of the two rows shown; a third reaches the DLQ while the question is open.
        let dead = |key: &str| {
            let req = EnqueueRequest {
                action_type: "GHOST".into(),
                payload: json!({}),
                idempotency_key: Some(key.into()),
                priority: 0,
                not_before: None,
                max_attempts: None,
                expires_at: None,
                traceparent: None,
                require_approval: false,
            };
            let id = handle.block_on(queue::enqueue(&db, &req, 3)).unwrap().id;
            handle
                .block_on(db.execute_unprepared(&format!("UPDATE actions SET status = 'DLQ' WHERE id = {id}")))
                .unwrap();
            id
        };
        let shown = [dead("ghost-1"), dead("ghost-2")];
        drv.wait_text("#dlq-requeue-shown", |t| t == "Requeue 2 shown");
        drv.click("#dlq-requeue-shown");
        drv.wait_text("#confirm-text", |t| t.starts_with("Requeue the 2 DLQ action(s) shown"));
        let late = dead("ghost-late");
        drv.click("#confirm-yes");
        drv.wait_text("#message", |t| t == "requeued 2 shown DLQ action(s)");
        for id in shown {
            assert_eq!(
                handle.block_on(db.actions().action(id)).unwrap().unwrap().status,
                ActionStatus::Pending,
                "{id}"
            );
        }
        let late = handle.block_on(db.actions().action(late)).unwrap().unwrap();
        assert_eq!(late.status, ActionStatus::Dlq, "a row that arrived after the page showed the DLQ is untouched");

        // Waiting per type: the page's numbers are the database's.
        let waiting = handle.block_on(db.actions().waiting_by_type()).unwrap();
        // The row appears at the next refresh (the message above comes first).
        let start = Instant::now();
        while drv.count("#waiting tr[data-type=GHOST]") == 0 {
            assert!(start.elapsed() < Duration::from_secs(20), "GHOST never shown as waiting");
            std::thread::sleep(Duration::from_millis(100));
        }
        drv.wait_text("#waiting tr[data-type=GHOST] td:nth-child(2)", |t| t == "2");
        for (t, n) in &waiting {
            assert_eq!(drv.text(&format!("#waiting tr[data-type=\"{t}\"] td:nth-child(2)")), n.to_string(), "{t}");
        }

        // Workers: the daemon's own executor is a registered worker, shown as the database has it.
        let workers = handle.block_on(db.workers().list(Duration::from_secs(30))).unwrap();
        assert!(workers.iter().any(|w| w.live), "the daemon's executor registered: {workers:?}");
        for w in workers.iter().filter(|w| w.live) {
            drv.wait_text(&format!("#workers tr[data-worker=\"{}\"] td:nth-child(2)", w.id), |t| t == "yes");
        }

        // The decisions timeline: one dot per decision /status lists, each naming its rule.
        let dots = drv.count("#timeline circle.decision");
        assert!(dots >= 1, "the timeline shows the rule's decisions");
        let titles = drv.script(
            "return Array.from(document.querySelectorAll(arguments[0])).map((c) => c.textContent)",
            "#timeline circle.decision title",
        );
        let first = titles[0].as_str().unwrap().to_string();
        let tick: i64 = first.split_whitespace().nth(1).unwrap().parse().unwrap();
        let recorded = handle.block_on(db.decisions().list(tick)).unwrap();
        assert!(recorded.iter().any(|d| first.contains(&format!("{}: {} {}", d.rule, d.kind, d.target))), "{first}");

        // The tick view: a click on a tick shows its explain, as the database has it.
        drv.click("#ticks tbody tr:first-child");
        // Headings are shown in capitals (CSS), so innerText is upper case.
        let title = drv.wait_text("#explain-title", |t| t.to_uppercase().starts_with("TICK #"));
        let tick: i64 = title[6..].split_whitespace().next().unwrap().parse().unwrap();
        let explained = handle.block_on(orchestrator::explain::explain(&db, tick)).unwrap().unwrap();
        assert!(title.contains(explained.tick.status.as_str()), "{title}");
        assert_eq!(drv.count("#explain-decisions tbody tr"), explained.decisions.len().max(1));
        if let Some(d) = explained.decisions.first() {
            assert_eq!(drv.text("#explain-decisions tbody tr:first-child td:first-child"), d.rule);
        }
        assert!(drv.text("#explain-snapshot").contains("health"), "the snapshot highlights are shown");

        let narrow = drv.screenshot(390, 844, "operator-page-390.png");
        (wide, narrow)
    })
    .await
    .unwrap();

    let store = Store::open(&url, &StoreOptions::default()).await.unwrap();
    assert!(store.flags().get().await.unwrap().paused, "the click set the flag in the database");
    let counts = store.actions().count_by_status().await.unwrap();
    assert_eq!(
        (counts[&ActionStatus::Dlq], counts[&ActionStatus::Pending], counts[&ActionStatus::Cancelled]),
        (1, 3, 1),
        "Requeue moved one DLQ row, the bulk requeue two, the bulk cancel one; the late row stayed"
    );
    store.close().await.ok();
    logs.wait_for("admin API: flags changed", Duration::from_secs(10));
    eprintln!("screenshots: {} and {}", checks.0.display(), checks.1.display());
    assert_eq!(terminate(&mut server, Duration::from_secs(25)).code(), Some(0));
}

/// Approvals on the page: an action awaiting approval is listed with the request it will send,
/// Approve asks for confirmation, and the click approves it in the database (who: the token's
/// name, the sha256 shown), after which the daemon runs it; Reject asks why in a prompt and
/// cancels the other one with that reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_on_the_page_in_headless_chromium() {
    let (Some(chromium), Some(chromedriver)) =
        (find_tool(&["chromium", "chromium-browser"]), find_tool(&["chromedriver"]))
    else {
        eprintln!(
            "skipped: chromium and chromedriver are needed (Debian packages chromium, chromium-driver), so the browser test did not run"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = format!("sqlite:{}", d.join("o.db").display());
    for key in ["needs-ok", "needs-no"] {
        let o = run(bin(d).args(["--database-url", &url, "enqueue", "NOOP", "--key", key, "--require-approval"]));
        assert_eq!(o.status.code(), Some(0));
    }
    let (mut server, _logs, addr) =
        spawn_server(daemon(d, &url, &["--interval", "0.5"]).env("ORCHESTRATOR_ADMIN_TOKEN", TOKEN));
    let db = Store::open(&url, &StoreOptions::default()).await.unwrap();
    let start = Instant::now();
    let sha = loop {
        let a = db.actions().action(1).await.unwrap().unwrap();
        if let Some(sha) = a.approval.and_then(|ap| ap.preview_sha256) {
            break sha;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the preview was never rendered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let profile = tempfile::tempdir().unwrap();
    let page = format!("http://{addr}/");
    let shown_sha = sha.clone();
    tokio::task::spawn_blocking(move || {
        let drv = start_driver(&chromium, &chromedriver, profile.path());
        drv.call("POST", "/url", Some(json!({"url": page})));
        drv.wait_text("#updated", |t| t.contains("enter the admin token"));
        drv.type_into("#token", TOKEN.split_once(':').unwrap().1);
        drv.click("#token-save");
        let start = Instant::now();
        while drv.count("#approvals tr[data-id=\"1\"]") == 0 {
            assert!(start.elapsed() < Duration::from_secs(20), "the waiting action never shown");
            std::thread::sleep(Duration::from_millis(100));
        }
        drv.wait_text("#approvals tr[data-id=\"1\"]", |t| t.contains(&shown_sha) && t.contains("sends nothing"));
        let start = Instant::now();
        while !drv.enabled("#approvals button.approve") {
            assert!(start.elapsed() < Duration::from_secs(20), "Approve never enabled");
            std::thread::sleep(Duration::from_millis(100));
        }
        drv.click("#approvals tr[data-id=\"1\"] button.approve");
        drv.wait_text("#confirm-text", |t| t.starts_with("Approve action 1?") && t.contains(&shown_sha));
        drv.click("#confirm-yes");
        drv.wait_text("#message", |t| t == "approved action 1");
        // Reject asks why in a prompt; the answer is the reason recorded.
        drv.click("#approvals tr[data-id=\"2\"] button.reject");
        let start = Instant::now();
        while drv.try_call("POST", "/alert/text", Some(json!({"text": "not tonight"}))).0 != 200 {
            assert!(start.elapsed() < Duration::from_secs(10), "the reject prompt never opened");
            std::thread::sleep(Duration::from_millis(50));
        }
        drv.call("POST", "/alert/accept", Some(json!({})));
        drv.wait_text("#message", |t| t == "rejected action 2");
        drv.wait_text("#approvals", |t| t.contains("nothing awaits approval"));
    })
    .await
    .unwrap();

    let a = db.actions().action(1).await.unwrap().unwrap();
    let ap = a.approval.unwrap();
    assert_eq!(ap.approved_sha256.as_deref(), Some(sha.as_str()), "the click approved the request shown");
    assert_eq!(ap.decided_by.as_deref(), Some("api:tester"));
    let rejected = db.actions().action(2).await.unwrap().unwrap();
    assert_eq!(rejected.status, ActionStatus::Cancelled, "the click on Reject cancelled it");
    let why = rejected.approval.unwrap();
    assert_eq!((why.decided_by.as_deref(), why.reason.as_deref()), (Some("api:tester"), Some("not tonight")));
    let start = Instant::now();
    while db.actions().action(1).await.unwrap().unwrap().status != ActionStatus::Success {
        assert!(start.elapsed() < Duration::from_secs(20), "the approved action never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    db.close().await.ok();
    assert_eq!(terminate(&mut server, Duration::from_secs(25)).code(), Some(0));
}
