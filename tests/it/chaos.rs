//! Crash chaos: `orchestrator run` (interval 0) is killed with SIGKILL at random moments of
//! its work and restarted, over a queue that mixes three kinds of action:
//!
//! - `NOOP` with a 30 ms sleep, so that kills land mid-attempt;
//! - `WEBHOOK` to a configured target, a recording HTTP server in this test process (so it
//!   outlives every kill), which keeps each request with its `X-Orchestrator-Idempotency-Key`
//!   and answers after 30 ms, so that kills land between the request and its recorded outcome;
//! - `POST_SOCIAL` delivered through the same target.
//!
//! Proof mode is a global flag the daemon re-reads every tick, so it is switched on from the
//! test, between a kill and the next start, for every other life of the daemon: in those lives
//! the outbound actions become sha256-stamped proof artifacts under the artifacts directory
//! instead of requests. The last life (the drain) is real.
//!
//! The kills are spread over the drain by progress, not by time (proof lives run faster): each
//! killed life holds the lease and works until a random number of actions, drawn in its own
//! slice of the first 60% of the queue, are done, then lives a random further 0-60 ms (about one
//! action) and is killed. The uninterrupted run it is compared with does the same work in the
//! same modes: the actions that finished for real, drained in real mode, then those that
//! finished as proofs, drained in proof mode.
//!
//! At the end every action is SUCCESS, none is stuck RUNNING or over its attempts, ledger epochs
//! never decrease, SQLite's integrity check passes, every outbound action left its side effect
//! (a request the server recorded, or an artifact that `orchestrator artifacts verify` accepts),
//! and the duplicate side effects (requests repeated per idempotency key, artifacts repeated per
//! key, a key both sent and proof-written, NOOP re-executions) number at most the kills. Each
//! is explained: the action has a "rescued attempt" log row for each attempt beyond its first,
//! naming the worker that claimed it, and that worker's pid is a daemon life the test
//! SIGKILLed, with at most one such attempt per kill: the attempt in flight when it died.
//!
//! The in-flight attempts are attributed through the rescue rows, not read from the database right after
//! each kill: on PostgreSQL the server goes on with statements a killed client had already sent
//! (a claim, a completion's commit), so such a read can see a claim that is about to finish, or
//! miss one that is about to be taken.
//!
//! CI runs a small round on both backends. The full suite:
//! `CHAOS_ACTIONS=2000 CHAOS_KILLS=30 cargo nextest run --release chaos --no-capture`

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use orchestrator::adapters::http::IDEMPOTENCY_HEADER;
use orchestrator::artifacts::{sanitize_key, sha256_hex};
use orchestrator::model::{Action, ActionStatus, LogRow};
use orchestrator::store::{ActionFilter, Backend, FlagChange};

use crate::backend_tests;
use crate::support::peer::{Peer, Reply};
use crate::support::{TestDb, artifacts_under, bin, json, run, stderr};

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Back-to-back ticks of one action each (a claim counts an attempt, so a bigger claim would
/// charge attempts that never ran); sequential dispatch, so each kill has at most one action in
/// flight; a 1 s lease so that a restarted instance takes over quickly.
const CONFIG: &str = "tick_interval_seconds: 0\nmax_actions_per_tick: 1\nlease_ttl_seconds: 1\n\
                      heartbeat_seconds: 0.25\ndispatch_concurrency: 1\nmax_attempts: 5\naction_timeout_seconds: 30\n\
                      workers:\n  heartbeat_seconds: 0.25\n  ttl_seconds: 1\n";
/// The webhook target of every outbound action: the recording server.
const SINK: &str = "chaos-sink";
/// How long the recording server takes to answer, and a NOOP to sleep.
const SINK_DELAY: Duration = Duration::from_millis(30);
const NOOP_SLEEP_MS: u64 = 30;
/// The share of the queue the killed lives work through; the last life drains the rest.
const KILLED_SHARE: f64 = 0.6;
/// The longest a killed life goes on after its progress mark: about one action (a 30 ms
/// attempt and the tick around it), so that the kill lands anywhere in it.
const PAST_MARK_MS: u64 = 60;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Noop,
    Webhook,
    Social,
}

impl Kind {
    fn of(i: usize) -> Kind {
        match i % 3 {
            0 => Kind::Noop,
            1 => Kind::Webhook,
            _ => Kind::Social,
        }
    }

    fn of_type(action_type: &str) -> Kind {
        match action_type {
            "NOOP" => Kind::Noop,
            "WEBHOOK" => Kind::Webhook,
            "POST_SOCIAL" => Kind::Social,
            other => panic!("unexpected action type {other}"),
        }
    }

    /// The artifact directory and extension of an outbound action's proof.
    fn proof_place(self) -> (&'static str, &'static str) {
        match self {
            Kind::Webhook => ("webhook", "http"),
            Kind::Social => ("proof_social", "txt"),
            Kind::Noop => unreachable!("a NOOP writes no proof"),
        }
    }
}

fn action_line(i: usize) -> String {
    let payload = match Kind::of(i) {
        Kind::Noop => format!(r#""action_type":"NOOP","payload":{{"i":{i},"sleep_ms":{NOOP_SLEEP_MS}}}"#),
        Kind::Webhook => format!(r#""action_type":"WEBHOOK","payload":{{"target":"{SINK}","body":{{"i":{i}}}}}"#),
        Kind::Social => format!(
            r#""action_type":"POST_SOCIAL","payload":{{"platform":"chaos","content":"chaos post {i}","audience":"public"}}"#
        ),
    };
    format!("{{{payload},\"idempotency_key\":\"chaos-{i}\"}}\n")
}

/// The number of the action with idempotency key `chaos-<i>`.
fn index_of(key: &str) -> usize {
    key.strip_prefix("chaos-").and_then(|i| i.parse().ok()).unwrap_or_else(|| panic!("not a chaos key: {key}"))
}

/// The JSON body the recording server must see for an outbound action.
fn expected_body(a: &Action) -> serde_json::Value {
    match Kind::of_type(&a.action_type) {
        Kind::Webhook => a.payload["body"].clone(),
        Kind::Social => serde_json::json!({
            "platform": a.payload["platform"],
            "audience": a.payload["audience"],
            "content": a.payload["content"],
        }),
        Kind::Noop => unreachable!("a NOOP sends nothing"),
    }
}

/// Writes the daemon's config into `dir`, with the webhook target pointing at `sink` and an
/// absolute artifacts directory (so the recorded artifact paths resolve from anywhere).
fn write_config(dir: &Path, sink: &Peer) -> PathBuf {
    let artifacts = dir.join("artifacts");
    let yaml = format!(
        "{CONFIG}artifacts_dir: '{}'\nadapters:\n  webhook:\n    targets:\n      {SINK}:\n        url: {}\n  \
         social:\n    platforms:\n      chaos: {SINK}\n",
        artifacts.display(),
        sink.url("/hook"),
    );
    std::fs::write(dir.join("orchestrator.yaml"), yaml).unwrap();
    artifacts
}

fn spawn_run(dir: &Path, url: &str) -> Child {
    bin(dir)
        .args(["--database-url", url, "run", "--no-http"])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn orchestrator run")
}

async fn set_proof_mode(db: &TestDb, on: bool) {
    db.store.flags().set_flags(FlagChange { proof_mode: Some(on), ..Default::default() }).await.unwrap();
}

/// Enqueues the actions numbered `indices`.
async fn enqueue(db: &TestDb, indices: &[usize]) {
    let lines: String = indices.iter().copied().map(action_line).collect();
    let r = orchestrator::queue::enqueue_jsonl(&db.store, lines.as_bytes(), 5).await.unwrap();
    assert_eq!(r.created, indices.len() as u64);
}

/// Waits until `child` holds the lease (its pid is in the owner id, `host:pid:random`).
async fn wait_until_holder(db: &TestDb, child: &mut Child) {
    let pid = child.id().to_string();
    let start = Instant::now();
    loop {
        if let Some(l) = db.store.lease().get("orchestrator").await.unwrap()
            && l.owner.split(':').nth(1) == Some(pid.as_str())
            && l.expires_at > Utc::now()
        {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the daemon exited before it took the lease: {status}");
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the restarted daemon did not take the lease in 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until at least `done` actions are finished (or nothing is left to do).
async fn wait_for_progress(db: &TestDb, child: &mut Child, n: usize, done: usize) {
    let start = Instant::now();
    loop {
        let open: i64 = db.store.actions().open_counts().await.unwrap().values().sum();
        if n as i64 - open >= done as i64 || open == 0 {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the daemon exited mid-work: {status}");
        }
        assert!(start.elapsed() < Duration::from_secs(600), "no progress to {done} done in 600 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until nothing is open, then stops the daemon cleanly through the flag.
async fn drain(db: &TestDb, mut child: Child, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let open = db.store.actions().open_counts().await.unwrap();
        let busy: i64 =
            [ActionStatus::Pending, ActionStatus::Running, ActionStatus::Retry].iter().map(|s| open[s]).sum();
        if busy == 0 {
            break;
        }
        assert!(start.elapsed() < limit, "not drained within {limit:?}: {open:?}");
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the daemon exited before the queue drained: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = start.elapsed();
    db.store.flags().set_flags(FlagChange { killed: Some(true), ..Default::default() }).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the daemon did not stop on the killed flag");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    db.store.flags().set_flags(FlagChange { killed: Some(false), ..Default::default() }).await.unwrap();
    took
}

/// Every action, by idempotency key.
async fn actions_by_key(db: &TestDb, n: usize) -> BTreeMap<String, Action> {
    let all =
        db.store.actions().list_actions(&ActionFilter { limit: n as u64 + 10, ..Default::default() }).await.unwrap();
    assert_eq!(all.len(), n, "every enqueued action is still there");
    all.into_iter().map(|a| (a.idempotency_key.clone(), a)).collect()
}

/// The requests the recording server saw, counted per idempotency key. Each must carry the key
/// of an outbound action and exactly that action's body.
fn requests_by_key(sink: &Peer, actions: &BTreeMap<String, Action>) -> BTreeMap<String, usize> {
    let mut by_key = BTreeMap::new();
    for r in sink.requests() {
        let key =
            r.header(IDEMPOTENCY_HEADER).unwrap_or_else(|| panic!("a request without {IDEMPOTENCY_HEADER}: {r:?}"));
        let a = actions.get(key).unwrap_or_else(|| panic!("a request for an unknown key {key}"));
        assert_ne!(Kind::of_type(&a.action_type), Kind::Noop, "a NOOP sent a request");
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/hook"));
        let body: serde_json::Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("{key}: the request body is not JSON ({e}): {:?}", r.body));
        assert_eq!(body, expected_body(a), "{key}: the body sent");
        *by_key.entry(key.to_string()).or_insert(0) += 1;
    }
    by_key
}

/// The proof artifacts on disk, per idempotency key, and how many temporary files a kill in the
/// middle of a write left behind. Each file must be named for an outbound action and lie in
/// its type's directory.
fn artifacts_by_key(dir: &Path, actions: &BTreeMap<String, Action>) -> (BTreeMap<String, Vec<PathBuf>>, usize) {
    // `<UTC time>_<sanitized key>-<12 hex of sha256(key)>.<ext>`; the time has no '_'.
    let names: BTreeMap<String, &Action> = actions
        .values()
        .map(|a| {
            (format!("{}-{}", sanitize_key(&a.idempotency_key), &sha256_hex(a.idempotency_key.as_bytes())[..12]), a)
        })
        .collect();
    let mut by_key: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let mut temp = 0;
    for path in artifacts_under(dir) {
        let file = path.file_name().and_then(|f| f.to_str()).unwrap().to_string();
        if file.starts_with(".tmp-") {
            temp += 1;
            continue;
        }
        let (stem, ext) = file.rsplit_once('.').unwrap_or_else(|| panic!("artifact without an extension: {file}"));
        let named = stem.split_once('_').map(|(_, rest)| rest).unwrap_or_else(|| panic!("odd artifact name {file}"));
        let a = names.get(named).unwrap_or_else(|| panic!("an artifact for no known action: {}", path.display()));
        let (subdir, extension) = Kind::of_type(&a.action_type).proof_place();
        let parent = path.parent().and_then(Path::file_name).and_then(|p| p.to_str());
        assert_eq!(
            (parent, ext),
            (Some(subdir), extension),
            "{}: where a {} proof goes",
            path.display(),
            a.action_type
        );
        by_key.entry(a.idempotency_key.clone()).or_default().push(path);
    }
    (by_key, temp)
}

/// An orphaned attempt a later holder rescued: "rescued attempt N: worker host:pid:x is gone
/// (...) -> RETRY".
#[derive(Debug)]
struct Rescue {
    action_id: i64,
    attempt: i32,
    /// The pid of the worker whose claim was rescued (its id is `host:pid:random`).
    pid: u32,
}

/// Per action id: the log rows saying it succeeded; and every rescue.
fn successes_and_rescues(logs: &[LogRow]) -> (BTreeMap<i64, Vec<&LogRow>>, Vec<Rescue>) {
    let mut successes: BTreeMap<i64, Vec<&LogRow>> = BTreeMap::new();
    let mut rescues = Vec::new();
    for l in logs {
        if let Some(rest) = l.message.strip_prefix("rescued attempt ") {
            let parsed = rest.split_once(": worker ").and_then(|(attempt, rest)| {
                let pid = rest.split(':').nth(1)?;
                Some(Rescue { action_id: l.action_id, attempt: attempt.parse().ok()?, pid: pid.parse().ok()? })
            });
            rescues.push(parsed.unwrap_or_else(|| panic!("unparsable rescue row: {}", l.message)));
        } else if l.message.contains(" succeeded (") {
            successes.entry(l.action_id).or_default().push(l);
        }
    }
    (successes, rescues)
}

/// The same work, uninterrupted, on a fresh database of the same backend and with its own
/// recording server: first the actions the chaos run finished for real, drained in real mode,
/// then those it finished in proof mode, drained in proof mode. Returns the two drain times.
/// Also a control: one attempt per action, one request per real outbound action and one
/// artifact per proved one, nothing repeated.
async fn baseline(backend: Backend, n: usize, proved: &BTreeSet<usize>) -> (Duration, Duration) {
    let base = match backend {
        Backend::Sqlite => TestDb::sqlite().await,
        Backend::Postgres => TestDb::postgres().await.expect("PostgreSQL is configured"),
    };
    let sink = Peer::answering(Reply::status(200).delay(SINK_DELAY)).await;
    let artifacts = write_config(base.dir.path(), &sink);
    let (in_proof, in_real): (Vec<usize>, Vec<usize>) = (0..n).partition(|i| proved.contains(i));
    let mut took = Vec::new();
    for (indices, proof) in [(in_real, false), (in_proof, true)] {
        set_proof_mode(&base, proof).await;
        enqueue(&base, &indices).await;
        let child = spawn_run(base.dir.path(), &base.url);
        took.push(drain(&base, child, Duration::from_secs(900)).await);
    }
    let actions = actions_by_key(&base, n).await;
    assert!(
        actions.values().all(|a| a.status == ActionStatus::Success && a.attempts == 1),
        "baseline: one attempt each"
    );
    let requests = requests_by_key(&sink, &actions);
    let (proofs, temp) = artifacts_by_key(&artifacts, &actions);
    for (i, a) in actions.values().map(|a| (index_of(&a.idempotency_key), a)) {
        if Kind::of_type(&a.action_type) == Kind::Noop {
            continue;
        }
        let (sent, written) = (requests.get(&a.idempotency_key), proofs.get(&a.idempotency_key).map(Vec::len));
        let expected = if proved.contains(&i) { (None, Some(1)) } else { (Some(&1), None) };
        assert_eq!((sent, written), expected, "baseline: {} sent once or proved once", a.idempotency_key);
    }
    assert_eq!(temp, 0, "baseline: no temporary file left");
    base.cleanup().await;
    (took[0], took[1])
}

/// Duplicate side effects by kind.
#[derive(Debug, Default)]
struct Duplicates {
    /// Requests beyond the first with one idempotency key.
    requests: usize,
    /// Artifacts beyond the first with one key.
    artifacts: usize,
    /// Keys both sent for real and written as a proof (a real attempt in flight at a kill,
    /// redone in a proof-mode life): one duplicate each.
    sent_and_proved: usize,
    /// NOOP attempts beyond the first.
    noop_reruns: usize,
}

impl Duplicates {
    fn total(&self) -> usize {
        self.requests + self.artifacts + self.sent_and_proved + self.noop_reruns
    }
}

backend_tests!(sigkill_chaos_loses_nothing);

async fn sigkill_chaos_loses_nothing(db: &TestDb) {
    let n = env_num("CHAOS_ACTIONS", 120);
    let kills_wanted = env_num("CHAOS_KILLS", 4);
    let dir = db.dir.path();
    let sink = Peer::answering(Reply::status(200).delay(SINK_DELAY)).await;
    let artifacts = write_config(dir, &sink);
    set_proof_mode(db, false).await;
    enqueue(db, &(0..n).collect::<Vec<_>>()).await;
    // Life k is killed once `marks[k]` actions are done: a random point in its own slice of the
    // first KILLED_SHARE of the queue, away from the slice's edges so that every life works.
    let slice = n as f64 * KILLED_SHARE / kills_wanted as f64;
    let marks: Vec<usize> =
        (0..kills_wanted).map(|k| (slice * (k as f64 + 0.2 + 0.6 * fastrand::f64())) as usize).collect();
    let start = Instant::now();
    let mut kills = 0;
    let mut proof_lives = 0;
    // Each life's pid, which its lease owner id (`host:pid:random`) and ledger rows carry.
    let mut pids = Vec::new();
    while kills < kills_wanted {
        // Every other life runs in proof mode; the flag is set while no daemon runs.
        let proof = kills % 2 == 1;
        proof_lives += usize::from(proof);
        set_proof_mode(db, proof).await;
        let mut child = spawn_run(dir, &db.url);
        pids.push(child.id());
        // A restarted daemon first waits out the dead one's lease; kill it while it works.
        wait_until_holder(db, &mut child).await;
        wait_for_progress(db, &mut child, n, marks[kills]).await;
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..=PAST_MARK_MS))).await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        kills += 1;
    }
    set_proof_mode(db, false).await;
    let child = spawn_run(dir, &db.url);
    pids.push(child.id());
    drain(db, child, Duration::from_secs(900)).await;
    let chaos_time = start.elapsed();

    // Nothing lost, nothing stuck, nothing over its attempts.
    let counts = db.store.actions().count_by_status().await.unwrap();
    assert_eq!(counts[&ActionStatus::Success], n as i64, "every action is SUCCESS: {counts:?}");
    assert_eq!(counts[&ActionStatus::Running], 0);
    let actions = actions_by_key(db, n).await;
    assert!(actions.values().all(|a| a.attempts <= a.max_attempts), "no attempt count over its max");

    let mut ticks = db.store.ledger().recent_ticks(1_000_000).await.unwrap();
    ticks.reverse();
    assert!(ticks.windows(2).all(|w| w[0].epoch <= w[1].epoch), "ledger epochs never decrease");
    let epochs = ticks.last().map_or(0, |t| t.epoch);
    if let Some(check) = db.store.sqlite_pragma("integrity_check").await.unwrap() {
        assert_eq!(check, "ok");
    }

    // Every recorded artifact is on disk with the sha256 its log row holds.
    let out = run(bin(dir).args(["--database-url", &db.url, "--json", "artifacts", "verify"]));
    assert!(out.status.success(), "artifacts verify: {}", stderr(&out));
    let verified = json(&out);

    let logs = db.store.history().logs(None, 1_000_000).await.unwrap();
    let (successes, rescues) = successes_and_rescues(&logs);
    let requests = requests_by_key(&sink, &actions);
    let (proofs, temp_files) = artifacts_by_key(&artifacts, &actions);

    // Each rescued attempt was claimed by a life that was then killed, one at most per kill.
    for t in &ticks {
        let pid: u32 = t.owner.split(':').nth(1).and_then(|p| p.parse().ok()).expect("owner id names a pid");
        assert!(pids.contains(&pid), "a tick by a stranger: {t:?}");
    }
    let mut killed_in_flight: BTreeMap<usize, &Rescue> = BTreeMap::new();
    for r in &rescues {
        let life = pids.iter().position(|&p| p == r.pid);
        assert!(life.is_some_and(|l| l < kills), "{r:?}: claimed by a worker of no killed life");
        let earlier = killed_in_flight.insert(life.unwrap(), r);
        assert!(earlier.is_none(), "two claims in flight at one kill: {earlier:?} and {r:?}");
    }

    // Each action's side effects, held against its attempts and the kills.
    let mut dup = Duplicates::default();
    let (mut sent_real, mut proved) = (0usize, 0usize);
    // The actions (by number) that finished in proof mode, for the uninterrupted run.
    let mut in_proof_mode = BTreeSet::new();
    let mut by_kind: BTreeMap<Kind, usize> = BTreeMap::new();
    for a in actions.values() {
        let kind = Kind::of_type(&a.action_type);
        *by_kind.entry(kind).or_insert(0) += 1;
        let key = &a.idempotency_key;
        let mut rescued: Vec<i32> = rescues.iter().filter(|r| r.action_id == a.id).map(|r| r.attempt).collect();
        rescued.sort_unstable();
        assert_eq!(
            rescued,
            (1..a.attempts).collect::<Vec<_>>(),
            "{key}: every attempt but the last was in flight at a kill and rescued"
        );
        let rescues = rescued.len();
        let done = successes.get(&a.id).map_or(&[][..], Vec::as_slice);
        assert_eq!(done.len(), 1, "{key}: one success row: {done:?}");
        let proof_success = done[0].message.contains(" succeeded (proof,");
        if proof_success {
            in_proof_mode.insert(index_of(key));
        }
        let dups = if kind == Kind::Noop {
            assert!(done[0].artifact_ref.is_none(), "{key}: a NOOP writes no artifact");
            dup.noop_reruns += rescues;
            rescues
        } else {
            let sent = requests.get(key).copied().unwrap_or(0);
            let written = proofs.get(key).map_or(&[][..], Vec::as_slice);
            if proof_success {
                proved += 1;
                let recorded = done[0].artifact_ref.as_deref().map(PathBuf::from);
                assert!(
                    recorded.as_ref().is_some_and(|r| written.contains(r)),
                    "{key}: its proof {recorded:?} is on disk among {written:?}"
                );
            } else {
                sent_real += 1;
                assert!(sent >= 1, "{key}: succeeded for real, so the server saw it");
            }
            let effects = sent + written.len();
            assert!(effects <= a.attempts as usize, "{key}: {effects} side effects from {} attempts", a.attempts);
            dup.requests += sent.saturating_sub(1);
            dup.artifacts += written.len().saturating_sub(1);
            dup.sent_and_proved += usize::from(sent >= 1 && !written.is_empty());
            effects - 1
        };
        assert!(dups <= rescues, "{key}: {dups} duplicate side effects, {rescues} rescued in-flight attempts");
    }
    assert_eq!(verified["checked"], proved, "one verified artifact per proof-mode success: {verified}");
    assert_eq!(verified["ok"], proved, "{verified}");
    assert!(proved > 0 && sent_real > 0, "both modes did work: {proved} proved, {sent_real} sent");
    let duplicates = dup.total();
    assert!(duplicates <= kills, "{duplicates} duplicate side effects for {kills} kills: {dup:?}");

    let (base_real, base_proof) = baseline(db.store.backend(), n, &in_proof_mode).await;

    eprintln!(
        "chaos[{:?}]: {n} actions ({} NOOP, {} WEBHOOK, {} POST_SOCIAL), {kills} SIGKILLs ({} with an attempt in flight), \
         {proof_lives} of {} lives in proof mode; outbound: {sent_real} sent to the recording server, {proved} proof \
         artifacts (verified); duplicate side effects {duplicates} <= {kills} kills: {} repeated request(s), {} repeated \
         artifact(s), {} sent and also proved, {} NOOP re-run(s), each the attempt in flight at a kill and rescued \
         ({} rescues); {temp_files} temp file(s) left by kills mid-write; epochs 1..{epochs}; drained in {:.1}s \
         (uninterrupted, the same actions in the same modes: {:.1}s = {} real in {:.1}s + {} proof in {:.1}s)",
        db.store.backend(),
        by_kind.get(&Kind::Noop).copied().unwrap_or(0),
        by_kind.get(&Kind::Webhook).copied().unwrap_or(0),
        by_kind.get(&Kind::Social).copied().unwrap_or(0),
        killed_in_flight.len(),
        kills + 1,
        dup.requests,
        dup.artifacts,
        dup.sent_and_proved,
        dup.noop_reruns,
        rescues.len(),
        chaos_time.as_secs_f64(),
        (base_real + base_proof).as_secs_f64(),
        n - in_proof_mode.len(),
        base_real.as_secs_f64(),
        in_proof_mode.len(),
        base_proof.as_secs_f64(),
    );
}
