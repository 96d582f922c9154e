//! The queue's rules, above the store's queries: what a valid action is, how its idempotency
//! key is derived, bulk enqueue from JSON Lines, and the retry backoff.
//!
//! It validates every input from outside (type, payload, key, priority, schedule) before the
//! store sees it; it never talks SQL. [`validate`] is the one check for every JSON value that
//! enters the database (payloads from the CLI, bulk, the API and rules; rule state), so that
//! what one writer stores every reader can read back.

use std::io::BufRead;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::store::{EnqueueOutcome, NewAction, Store, StoreError};

/// Largest payload accepted, in bytes of JSON text.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;
/// Largest rule state accepted, in bytes of JSON text: it is read and written every tick.
pub const MAX_STATE_BYTES: usize = 256 << 10;
/// Deepest nesting accepted in a stored JSON value (the top-level object is depth 1). Readers
/// parse with serde_json, which refuses more than 127 levels; half of that leaves room for a
/// reader that wraps a stored value (a snapshot sample, an API answer) in its own objects.
pub const MAX_JSON_DEPTH: usize = 64;
/// Longest idempotency key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 200;
pub use crate::model::{MAX_TYPE_LEN, validate_type};
/// Priorities are bounded so that arithmetic on them (boosts, bumps) cannot overflow.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i32> = -1_000_000..=1_000_000;
/// Lines per transaction in bulk enqueue: each commit rewrites the index pages it touched, and
/// derived keys land at random places in the key index, so fewer, larger transactions write
/// far fewer pages (2,000 lines per commit enqueued 32k/s, 20,000 about 78k/s; BENCHMARKS.md).
pub const BULK_BATCH: usize = 20_000;
/// A batch is also written once its lines hold this many bytes, so that memory stays bounded
/// when payloads are large (two batches are held at once: one parsed, one being written).
pub const BULK_BATCH_BYTES: usize = 32 << 20;

/// A queue error: a refused input (naming what was wrong) or a store failure.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An enqueue request as it arrives from the CLI, the API or a rule. Deserialized as is from a
/// JSON Lines row or an API body: `{"action_type", "payload", "idempotency_key"?, "priority"?,
/// "not_before"?, "max_attempts"?, "expires_at"?, "traceparent"?}`, unknown fields refused.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnqueueRequest {
    pub action_type: String,
    pub payload: serde_json::Value,
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub priority: i32,
    pub not_before: Option<DateTime<Utc>>,
    pub max_attempts: Option<u32>,
    /// The deadline; without one, the type's `expire_after` from the config, if any.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// A W3C trace context for the action's first attempt to continue (`enqueue
    /// --traceparent`, the API's `traceparent` header); checked by [`prepare`].
    #[serde(default)]
    pub traceparent: Option<String>,
    /// True: the action waits in `AWAITING_APPROVAL` until an operator approves it (a type
    /// named in `approvals.types` always does).
    #[serde(default)]
    pub require_approval: bool,
}

/// How long an action waits for its approval when the config says nothing (24 h).
pub const DEFAULT_APPROVAL_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// What the config fills in for a request that leaves it out.
#[derive(Clone, Debug, Default)]
pub struct EnqueueDefaults {
    /// `approvals.types`: the action types that always need an approval.
    pub approval_types: std::collections::BTreeSet<String>,
    /// `approvals.expire_after_seconds` (`None`: [`DEFAULT_APPROVAL_EXPIRY`]).
    pub approval_expiry: Option<Duration>,
    /// `max_attempts`.
    pub max_attempts: u32,
    /// `expire_after`: the deadline of a new action of that type, from its enqueue (off, i.e.
    /// no deadline, for a type not named).
    pub expire_after: std::collections::BTreeMap<String, Duration>,
}

impl From<u32> for EnqueueDefaults {
    /// Defaults with this `max_attempts` and no deadlines.
    fn from(max_attempts: u32) -> Self {
        EnqueueDefaults { max_attempts, ..Default::default() }
    }
}

/// Parses payload text, bounded in size and depth, into a JSON object.
pub fn parse_payload(text: &str) -> Result<serde_json::Value, String> {
    if text.len() > MAX_PAYLOAD_BYTES {
        return Err(format!("payload is {} bytes; the limit is {MAX_PAYLOAD_BYTES}", text.len()));
    }
    // serde_json refuses nesting deeper than 128 levels, so hostile depth cannot overflow.
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("payload is not valid JSON: {e}"))?;
    validate("payload", &value, MAX_PAYLOAD_BYTES)?;
    Ok(value)
}

/// The one check for a JSON value about to be stored (a payload, a rule's state): a JSON object,
/// nested at most [`MAX_JSON_DEPTH`] levels, at most `max_bytes` of canonical text. Returns that
/// text, which is what the writer stores. The error names `field`.
///
/// Every value it accepts is read back equal by the store's readers (a property test,
/// `tests/it/queue.rs`, checks that on both backends).
pub fn validate(field: &str, value: &serde_json::Value, max_bytes: usize) -> Result<String, String> {
    if !value.is_object() {
        return Err(format!("{field} must be a JSON object, got {}", json_kind(value)));
    }
    let depth = json_depth(value, MAX_JSON_DEPTH + 1);
    if depth > MAX_JSON_DEPTH {
        return Err(format!(
            "{field} is nested more than {MAX_JSON_DEPTH} levels deep; the limit is {MAX_JSON_DEPTH} \
             (objects and arrays count, the top level is 1)"
        ));
    }
    let text = canonical_json(value);
    if text.len() > max_bytes {
        return Err(format!("{field} is {} bytes; the limit is {max_bytes}", text.len()));
    }
    Ok(text)
}

/// How deeply `v` nests objects and arrays (a scalar is 0, `{}` is 1), counting no further than
/// `stop`. Iterative, so that no input can exhaust the stack.
pub fn json_depth(v: &serde_json::Value, stop: usize) -> usize {
    let mut deepest = 0;
    let mut todo: Vec<(&serde_json::Value, usize)> = vec![(v, 1)];
    while let Some((v, d)) = todo.pop() {
        let children: Box<dyn Iterator<Item = &serde_json::Value>> = match v {
            serde_json::Value::Array(a) => Box::new(a.iter()),
            serde_json::Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        deepest = deepest.max(d);
        if deepest >= stop {
            return deepest;
        }
        todo.extend(children.map(|c| (c, d + 1)));
    }
    deepest
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// JSON text with object keys sorted at every level: the same payload always has the same text.
///
/// `serde_json::Map` is a `BTreeMap` unless serde_json's `preserve_order` feature is on, so the
/// plain serialization is already sorted; the unit test `derived_keys_ignore_key_order` fails if
/// a dependency ever turns that feature on.
pub fn canonical_json(v: &serde_json::Value) -> String {
    v.to_string()
}

/// The key of an action enqueued without one: sha256 of its type and canonical payload.
pub fn derive_key(action_type: &str, canonical_payload: &str) -> String {
    let mut h = Sha256::new();
    h.update(action_type.as_bytes());
    h.update(b"\n");
    h.update(canonical_payload.as_bytes());
    hex::encode(h.finalize())
}

/// Checks an idempotency key: 1 to 200 bytes, no control characters, no path separators.
pub fn validate_key(k: &str) -> Result<(), String> {
    if k.is_empty() {
        return Err("idempotency key must not be empty".into());
    }
    if k.len() > MAX_KEY_BYTES {
        return Err(format!("idempotency key is {} bytes; the limit is {MAX_KEY_BYTES}", k.len()));
    }
    if let Some(c) = k.chars().find(|c| c.is_control()) {
        return Err(format!("idempotency key contains the control character {:?}", c));
    }
    if k.contains('/') || k.contains('\\') || k == "." || k == ".." {
        return Err(format!("idempotency key {k:?} looks like a path; '/', '\\\\', '.' and '..' are not allowed"));
    }
    Ok(())
}

/// Validates a request and fills in its defaults; `now` is the enqueue time (the store's clock).
pub fn prepare(req: &EnqueueRequest, defaults: &EnqueueDefaults, now: DateTime<Utc>) -> Result<NewAction, String> {
    let default_max_attempts = defaults.max_attempts;
    validate_type(&req.action_type)?;
    let payload_json = validate("payload", &req.payload, MAX_PAYLOAD_BYTES)?;
    let idempotency_key = match &req.idempotency_key {
        Some(k) => {
            validate_key(k)?;
            k.clone()
        }
        None => derive_key(&req.action_type, &payload_json),
    };
    if !PRIORITY_RANGE.contains(&req.priority) {
        return Err(format!(
            "priority {} is out of range {}..={}",
            req.priority,
            PRIORITY_RANGE.start(),
            PRIORITY_RANGE.end()
        ));
    }
    if let Some(t) = req.not_before {
        crate::model::check_date("not_before", t)?;
    }
    let max_attempts = req.max_attempts.unwrap_or(default_max_attempts);
    if !(1..=1000).contains(&max_attempts) {
        return Err(format!("max_attempts must be between 1 and 1000, got {max_attempts}"));
    }
    let expires_at = match (req.expires_at, defaults.expire_after.get(&req.action_type)) {
        (Some(t), _) => Some(t),
        (None, Some(d)) => Some(
            chrono::Duration::from_std(*d)
                .ok()
                .and_then(|d| now.checked_add_signed(d))
                .ok_or_else(|| format!("expire_after for {} is too long", req.action_type))?,
        ),
        (None, None) => None,
    };
    if let Some(t) = expires_at
        && t <= now
    {
        return Err(format!("expires_at {} is not in the future", t.to_rfc3339()));
    }
    let traceparent = match &req.traceparent {
        Some(t) => Some(t.parse::<crate::model::TraceParent>()?.to_string()),
        None => None,
    };
    let approval_expires_at = approval_deadline(defaults, &req.action_type, req.require_approval, now)?;
    Ok(NewAction {
        action_type: req.action_type.clone(),
        payload_json,
        idempotency_key,
        priority: req.priority,
        not_before: req.not_before.unwrap_or(now),
        max_attempts: max_attempts as i32,
        expires_at,
        traceparent,
        approval_expires_at,
    })
}

/// When an action enqueued now stops waiting for its approval, if it needs one (asked for, or
/// its type is named in `approvals.types`).
pub fn approval_deadline(
    defaults: &EnqueueDefaults,
    action_type: &str,
    asked: bool,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, String> {
    if !asked && !defaults.approval_types.contains(action_type) {
        return Ok(None);
    }
    let wait = defaults.approval_expiry.unwrap_or(DEFAULT_APPROVAL_EXPIRY);
    chrono::Duration::from_std(wait)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .map(Some)
        .ok_or_else(|| "approvals.expire_after_seconds is too long".to_string())
}

/// Enqueues one action. A duplicate key returns the existing action with `duplicate: true`.
pub async fn enqueue(
    store: &Store,
    req: &EnqueueRequest,
    defaults: impl Into<EnqueueDefaults>,
) -> Result<EnqueueOutcome, QueueError> {
    let new = prepare(req, &defaults.into(), store.now()).map_err(QueueError::Invalid)?;
    Ok(store.actions().enqueue(crate::store::Authority::Operator, &new).await?)
}

/// What a bulk enqueue did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BulkReport {
    pub lines: u64,
    pub created: u64,
    pub duplicates: u64,
}

/// Enqueues JSON Lines in transactions of [`BULK_BATCH`] lines (or [`BULK_BATCH_BYTES`]). Blank
/// lines are skipped. On the first bad line it stops: earlier batches stay committed, and
/// nothing of the bad line's batch is written. The error names the line.
pub async fn enqueue_jsonl(
    store: &Store,
    mut input: impl BufRead,
    defaults: impl Into<EnqueueDefaults>,
) -> Result<BulkReport, QueueError> {
    let defaults = defaults.into();
    let mut report = BulkReport::default();
    let mut in_flight: Option<Insert> = None;
    let mut batch: Vec<NewAction> = Vec::with_capacity(BULK_BATCH);
    let mut batch_bytes = 0usize;
    let mut batch_first_line = 1u64;
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        let n = std::io::Read::take(&mut input, (MAX_PAYLOAD_BYTES + 4096) as u64)
            .read_until(b'\n', &mut buf)
            .map_err(|e| QueueError::Invalid(format!("reading line {}: {e}", line_no + 1)))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let new = match parse_line(&buf, n, &defaults, store.now(), line_no == 1) {
            Ok(Some(new)) => new,
            Ok(None) => continue,
            Err(why) => {
                // Let the batch being written land (or fail) first, so the report is exact.
                settle(&mut in_flight, &mut report).await?;
                return Err(bad_line(line_no, &why, &report, batch_first_line));
            }
        };
        batch.push(new);
        report.lines += 1;
        batch_bytes += n;
        if batch.len() >= BULK_BATCH || batch_bytes >= BULK_BATCH_BYTES {
            // Parse the next batch while this one is written.
            settle(&mut in_flight, &mut report).await?;
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BULK_BATCH));
            batch_bytes = 0;
            in_flight = Some(spawn_insert(store, full));
            batch_first_line = line_no + 1;
        }
    }
    settle(&mut in_flight, &mut report).await?;
    if !batch.is_empty() {
        in_flight = Some(spawn_insert(store, batch));
        settle(&mut in_flight, &mut report).await?;
    }
    Ok(report)
}

/// One line to a validated action; `None` for a blank line. The first line may start with a
/// UTF-8 byte order mark, which is skipped; anywhere else it is named.
fn parse_line(
    buf: &[u8],
    n: usize,
    defaults: &EnqueueDefaults,
    now: DateTime<Utc>,
    first: bool,
) -> Result<Option<NewAction>, String> {
    if buf.last() != Some(&b'\n') && n as u64 >= (MAX_PAYLOAD_BYTES + 4096) as u64 {
        return Err("line is longer than the payload limit allows".into());
    }
    let text = std::str::from_utf8(buf).map_err(|e| format!("not valid UTF-8 (at byte {})", e.valid_up_to()))?;
    let text = match text.strip_prefix(crate::input::BOM) {
        Some(rest) if first => rest,
        Some(_) => {
            return Err("starts with a UTF-8 byte order mark (U+FEFF), allowed only at the start of the file".into());
        }
        None => text,
    };
    if text.trim().is_empty() {
        return Ok(None);
    }
    let req: EnqueueRequest = serde_json::from_str(text).map_err(|e| format!("not a valid action: {e}"))?;
    prepare(&req, defaults, now).map(Some)
}

type Insert = tokio::task::JoinHandle<(u64, Result<u64, StoreError>)>;

fn spawn_insert(store: &Store, batch: Vec<NewAction>) -> Insert {
    let store = store.clone();
    tokio::spawn(async move { (batch.len() as u64, store.actions().enqueue_many(&batch).await) })
}

/// Waits for the batch being written, if any, and counts it.
async fn settle(in_flight: &mut Option<Insert>, report: &mut BulkReport) -> Result<(), QueueError> {
    let Some(task) = in_flight.take() else { return Ok(()) };
    let (len, result) = task.await.map_err(|e| QueueError::Invalid(format!("bulk insert task failed: {e}")))?;
    let created = result?;
    report.created += created;
    report.duplicates += len - created;
    Ok(())
}

fn bad_line(line: u64, why: &str, report: &BulkReport, batch_first_line: u64) -> QueueError {
    let committed = report.created + report.duplicates;
    QueueError::Invalid(format!(
        "line {line}: {why} (nothing from lines {batch_first_line}-{line} was written; \
         {committed} earlier lines were committed: {} created, {} duplicates)",
        report.created, report.duplicates
    ))
}

/// The delay before retry number `attempt` (1-based): exponential from `base`, capped at
/// `max`, with jitter in the upper half so that a burst of failures does not retry in step.
pub fn backoff(attempt: i32, base: Duration, max: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).clamp(0, 62) as u32;
    let full = base.saturating_mul(2u32.saturating_pow(exp.min(31))).min(max);
    let half = full / 2;
    half + full.saturating_sub(half).mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(payload: serde_json::Value) -> EnqueueRequest {
        EnqueueRequest {
            action_type: "NOOP".into(),
            payload,
            idempotency_key: None,
            priority: 0,
            not_before: None,
            max_attempts: None,
            expires_at: None,
            traceparent: None,
            require_approval: false,
        }
    }

    #[test]
    fn derived_keys_ignore_key_order() {
        let a = prepare(&req(json!({"a": 1, "b": {"y": 2, "x": 1}})), &3.into(), crate::model::now()).unwrap();
        let b = prepare(&req(json!({"b": {"x": 1, "y": 2}, "a": 1})), &3.into(), crate::model::now()).unwrap();
        assert_eq!(a.idempotency_key, b.idempotency_key);
        assert_eq!(a.payload_json, r#"{"a":1,"b":{"x":1,"y":2}}"#);
        let c = prepare(
            &EnqueueRequest { action_type: "OTHER".into(), ..req(json!({"a": 1, "b": {"x": 1, "y": 2}})) },
            &3.into(),
            crate::model::now(),
        )
        .unwrap();
        assert_ne!(a.idempotency_key, c.idempotency_key, "the type is part of the key");
    }

    #[test]
    fn payloads_must_be_bounded_objects() {
        assert!(parse_payload("[1]").unwrap_err().contains("must be a JSON object, got an array"));
        assert!(parse_payload("{").unwrap_err().contains("not valid JSON"));
        let deep = "[".repeat(10_000) + "]".repeat(10_000).as_str();
        assert!(parse_payload(&format!("{{\"a\":{deep}}}")).unwrap_err().contains("recursion limit"));
        let huge = format!("{{\"a\":\"{}\"}}", "x".repeat(MAX_PAYLOAD_BYTES));
        assert!(parse_payload(&huge).unwrap_err().contains("the limit is"));
    }

    /// An object nested `depth` levels deep (the top level counts 1).
    fn nested(depth: usize) -> serde_json::Value {
        let mut v = json!({});
        for _ in 1..depth {
            v = serde_json::Value::Object([("a".to_string(), v)].into_iter().collect());
        }
        v
    }

    #[test]
    fn validation_limits_hold_from_both_sides() {
        // Depth: just under is stored and read back equal; just over is refused naming the field.
        let ok = nested(MAX_JSON_DEPTH);
        assert_eq!(json_depth(&ok, usize::MAX), MAX_JSON_DEPTH);
        let text = validate("payload", &ok, MAX_PAYLOAD_BYTES).unwrap();
        assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap(), ok);
        let e = validate("payload", &nested(MAX_JSON_DEPTH + 1), MAX_PAYLOAD_BYTES).unwrap_err();
        assert!(e.starts_with("payload is nested more than 64 levels deep"), "{e}");
        let e = validate("state", &json!({"a": [[[[[[1]]]]]]}), 10).unwrap_err();
        assert!(e.starts_with("state is 19 bytes; the limit is 10"), "{e}");
        // Arrays count like objects.
        let mut arr = json!(1);
        for _ in 0..MAX_JSON_DEPTH {
            arr = json!([arr]);
        }
        assert!(validate("payload", &json!({ "a": arr }), MAX_PAYLOAD_BYTES).is_err());
        // Size: exactly the limit is stored, one byte more is refused.
        let at = |n: usize| json!({ "a": "x".repeat(n - 8) });
        assert_eq!(validate("payload", &at(100), 100).unwrap().len(), 100);
        assert!(validate("payload", &at(101), 100).unwrap_err().contains("101 bytes; the limit is 100"));
        // Shape.
        assert!(validate("state", &json!([1]), 100).unwrap_err().contains("state must be a JSON object, got an array"));
        // The same check behind every entry point.
        let now = crate::model::now();
        assert!(prepare(&req(nested(MAX_JSON_DEPTH + 1)), &3.into(), now).unwrap_err().contains("payload is nested"));
        let deep_text = canonical_json(&nested(MAX_JSON_DEPTH + 1));
        assert!(parse_payload(&deep_text).unwrap_err().contains("payload is nested"));
        assert!(parse_payload(&canonical_json(&nested(MAX_JSON_DEPTH))).is_ok());
    }

    #[test]
    fn a_leading_bom_is_skipped_and_a_later_one_named() {
        let line = "\u{feff}{\"action_type\":\"NOOP\",\"payload\":{}}\n";
        let now = crate::model::now();
        assert!(parse_line(line.as_bytes(), line.len(), &3.into(), now, true).unwrap().is_some());
        let e = parse_line(line.as_bytes(), line.len(), &3.into(), now, false).unwrap_err();
        assert!(e.contains("byte order mark"), "{e}");
    }

    #[test]
    fn depth_of_a_huge_nesting_costs_no_stack() {
        let mut v = json!(0);
        for _ in 0..100_000 {
            v = serde_json::Value::Array(vec![v]);
        }
        assert_eq!(json_depth(&v, MAX_JSON_DEPTH + 1), MAX_JSON_DEPTH + 1);
        // Dropping it recursively would overflow the stack; leak it instead (a test only).
        std::mem::forget(v);
    }

    #[test]
    fn hostile_keys_are_refused() {
        for (k, why) in [
            ("../../etc/passwd", "looks like a path"),
            ("/etc/passwd", "looks like a path"),
            ("..", "looks like a path"),
            ("a\0b", "control character"),
            ("a\nb", "control character"),
            ("", "must not be empty"),
        ] {
            let e = validate_key(k).unwrap_err();
            assert!(e.contains(why), "{k:?}: {e}");
        }
        assert!(validate_key(&"k".repeat(10_000)).unwrap_err().contains("the limit is 200"));
        assert!(validate_key("post-42:v1").is_ok());
        assert!(validate_key("émoji-✓").is_ok());
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let base = Duration::from_secs(10);
        let max = Duration::from_secs(3600);
        for _ in 0..100 {
            let d1 = backoff(1, base, max);
            assert!(d1 >= Duration::from_secs(5) && d1 <= base, "{d1:?}");
            let d3 = backoff(3, base, max);
            assert!(d3 >= Duration::from_secs(20) && d3 <= Duration::from_secs(40), "{d3:?}");
            let d30 = backoff(30, base, max);
            assert!(d30 >= Duration::from_secs(1800) && d30 <= max, "{d30:?}");
        }
        assert_eq!(backoff(5, Duration::ZERO, max), Duration::ZERO);
    }
}
