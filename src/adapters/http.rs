//! Outbound HTTP for `WEBHOOK`, `POST_SOCIAL` and `ALERT`: one request to a configured target,
//! signed, bounded in time, and classified into success, retryable or permanent.
//!
//! Every request carries `X-Orchestrator-Idempotency-Key` and, when the target has a secret,
//! `X-Orchestrator-Signature: sha256=<hex HMAC-SHA256 of the body>`. Redirects are not followed.
//! What is logged (the method, the URL without credentials or query, the status and the first KB
//! of the response) never includes a secret, a header value or the signature: a peer that
//! echoes what it received has every configured value of its target that may be a secret (the
//! HMAC key, header values, query values; [`target_secrets`]) and every value under a
//! credential header's name ([`redact_named`]) replaced by `<redacted>`. This module sends
//! what it is given; whether it may send at all is the executor's call.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::AdapterError;
use super::{Secret, WebhookTarget};

/// The request header with the action's idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "X-Orchestrator-Idempotency-Key";
/// The request header with the body's signature.
pub const SIGNATURE_HEADER: &str = "X-Orchestrator-Signature";
/// The W3C trace context of the attempt (ExecContext::traceparent), when there is one.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// How much of a response body is kept for the log.
pub const RESPONSE_LOG_BYTES: usize = 1024;
/// The longest `Retry-After` honoured; a peer cannot park an action for longer.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// A shared HTTP client (connection pool) for every adapter that sends.
#[derive(Clone, Debug)]
pub struct Http {
    client: reqwest::Client,
}

impl Http {
    pub fn new() -> Result<Http, reqwest::Error> {
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
        Ok(Http { client })
    }

    /// Sends `body` to `target` for the action with idempotency key `key`. `timeout` applies
    /// when the target sets none; `traceparent` is sent as the W3C header. Returns a one-line
    /// summary for the execution log.
    pub async fn send(
        &self,
        target: &WebhookTarget,
        key: &str,
        body: Vec<u8>,
        timeout: Duration,
        traceparent: Option<&str>,
    ) -> Result<String, AdapterError> {
        let shown = format!("{} {}", target.method, loggable_url(&target.url));
        let signature = match (&target.secret_env, &target.secret) {
            (Some(var), None) => {
                return Err(AdapterError::retryable(format!(
                    "{shown}: the environment variable {var} (secret_env of target '{}') was not set when the config was loaded, so the body cannot be signed",
                    target.name
                )));
            }
            (_, Some(secret)) => Some(signature(secret, &body)),
            (None, None) => None,
        };
        let method = reqwest::Method::from_bytes(target.method.as_bytes())
            .map_err(|_| AdapterError::permanent(format!("{shown}: invalid method")))?;
        let timeout = target.timeout.unwrap_or(timeout);
        let mut req = self.client.request(method, &target.url).timeout(timeout);
        if !target.headers.keys().any(|k| k.eq_ignore_ascii_case("content-type")) {
            req = req.header(reqwest::header::CONTENT_TYPE, "application/json");
        }
        for (k, v) in &target.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let key_value = reqwest::header::HeaderValue::from_bytes(key.as_bytes()).map_err(|_| {
            AdapterError::permanent(format!("{shown}: the idempotency key cannot be sent as a header value"))
        })?;
        req = req.header(IDEMPOTENCY_HEADER, key_value);
        if let Some(sig) = signature {
            req = req.header(SIGNATURE_HEADER, sig);
        }
        // The W3C trace context, unless the target sets the header itself.
        if let Some(tp) = traceparent
            && !target.headers.keys().any(|k| k.eq_ignore_ascii_case(TRACEPARENT_HEADER))
        {
            req = req.header(TRACEPARENT_HEADER, tp);
        }

        let started = Instant::now();
        let mut resp = match req.body(body).send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return Err(AdapterError::retryable(format!("{shown}: timed out after {:.1}s", timeout.as_secs_f64())));
            }
            Err(e) => return Err(AdapterError::retryable(format!("{shown}: {}", error_chain(&e.without_url())))),
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now()));
        let secrets = target_secrets(target);
        // Past the kept head by the longest secret, so that one the cut would halve is whole.
        let window = RESPONSE_LOG_BYTES + secrets.first().map_or(0, String::len);
        let mut head = Vec::new();
        // The status is the peer's answer; a body cut short (or failing) only shortens the log.
        while let Ok(Some(chunk)) = resp.chunk().await {
            let room = window.saturating_sub(head.len());
            head.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if head.len() >= window {
                break;
            }
        }
        let summary = format!(
            "{shown} (target '{}') -> {status} in {} ms; response: {}",
            target.name,
            started.elapsed().as_millis(),
            quote_peer(&head, &secrets)
        );
        classify(status.as_u16(), summary, retry_after)
    }
}

/// 2xx success; 408, 429 and 5xx retryable (with the peer's `Retry-After`); the rest permanent.
pub fn classify(status: u16, summary: String, retry_after: Option<Duration>) -> Result<String, AdapterError> {
    match status {
        200..=299 => Ok(summary),
        408 | 429 | 500..=599 => Err(AdapterError::Retryable { message: summary, retry_after }),
        300..=399 => Err(AdapterError::permanent(format!("{summary} (redirects are not followed)"))),
        _ => Err(AdapterError::permanent(summary)),
    }
}

/// `sha256=<hex HMAC-SHA256 of body>`, as GitHub signs webhooks.
pub fn signature(secret: &Secret, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()) {
        Ok(m) => m,
        Err(e) => unreachable!("HMAC accepts keys of any length: {e}"),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// `Retry-After` as seconds or an HTTP date, capped at [`MAX_RETRY_AFTER`]; a past date is 0.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let at = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO).min(MAX_RETRY_AFTER))
}

/// The URL without credentials, query or fragment: safe to log.
pub fn loggable_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "<invalid URL>".to_string(),
    }
}

/// The URL with any password, and the values of query parameters named like secrets, replaced:
/// for proof artifacts.
fn proof_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("REDACTED"));
            }
            let pairs: Vec<(String, String)> = u.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
            if pairs.iter().any(|(k, _)| sensitive_header(k)) {
                let mut q = u.query_pairs_mut();
                q.clear();
                for (k, v) in &pairs {
                    q.append_pair(k, if sensitive_header(k) { "REDACTED" } else { v });
                }
            }
            u.to_string()
        }
        Err(_) => "<invalid URL>".to_string(),
    }
}

/// Whether a header's value is shown in proof artifacts.
fn sensitive_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["authorization", "cookie", "token", "secret", "key", "auth", "signature", "password", "session"]
        .iter()
        .any(|s| n.contains(s))
}

/// The request exactly as [`Http::send`] would make it, secrets redacted: for proof artifacts.
pub fn render_request(target: &WebhookTarget, key: &str, body: &[u8]) -> String {
    let mut out = format!("{} {}\n", target.method, proof_url(&target.url));
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    if !target.headers.keys().any(|k| k.eq_ignore_ascii_case("content-type")) {
        headers.insert("Content-Type".into(), "application/json".into());
    }
    for (k, v) in &target.headers {
        let shown = if sensitive_header(k) { "<redacted>".to_string() } else { v.clone() };
        headers.insert(k.clone(), shown);
    }
    headers.insert(IDEMPOTENCY_HEADER.into(), key.to_string());
    match (&target.secret_env, &target.secret) {
        (Some(var), Some(_)) => {
            headers.insert(SIGNATURE_HEADER.into(), format!("sha256=<redacted: HMAC-SHA256 keyed by ${var}>"));
        }
        (Some(var), None) => {
            headers.insert(SIGNATURE_HEADER.into(), format!("<${var} is not set: a real run would fail>"));
        }
        (None, _) => {}
    }
    for (k, v) in &headers {
        let _ = writeln!(out, "{k}: {v}");
    }
    let _ = writeln!(out);
    out.push_str(&String::from_utf8_lossy(body));
    out.push('\n');
    out
}

/// Headers that describe the body or the client, never a credential: their values are not
/// redacted from what a peer answers.
const DESCRIPTIVE_HEADERS: &[&str] = &["content-type", "accept", "user-agent"];
/// A configured value shorter than this is redacted from a peer's answer only when its name
/// looks like a secret's: shorter values (`?v=2`, `?format=json`) would blank out ordinary
/// words of the answer and keep nothing secret.
pub const MIN_SECRET_CHARS: usize = 8;

/// Every value of `target` that is or may be a secret, in each form a peer may quote it in, the
/// longest first: the HMAC key (`secret_env`'s value), each header value (but those of
/// [`DESCRIPTIVE_HEADERS`]) and each query value of the URL, as configured, percent-decoded and
/// JSON-escaped.
pub fn target_secrets(target: &WebhookTarget) -> Vec<String> {
    let mut named: Vec<(String, String)> = Vec::new();
    if let Some(s) = &target.secret {
        named.push(("secret".into(), s.expose().to_string()));
    }
    for (k, v) in &target.headers {
        if !DESCRIPTIVE_HEADERS.iter().any(|d| k.eq_ignore_ascii_case(d)) {
            named.push((k.clone(), v.clone()));
        }
    }
    if let Ok(u) = reqwest::Url::parse(&target.url) {
        for pair in u.query().unwrap_or("").split('&') {
            if let Some((k, v)) = pair.split_once('=') {
                named.push((k.to_string(), v.to_string()));
            }
        }
        named.extend(u.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())));
    }
    let mut out: Vec<String> = Vec::new();
    for (name, value) in named {
        if value.is_empty() || (value.chars().count() < MIN_SECRET_CHARS && !sensitive_header(&name)) {
            continue;
        }
        let escaped = serde_json::to_string(&value).unwrap_or_default();
        let escaped = escaped.trim_matches('"').to_string();
        out.push(value);
        out.push(escaped);
    }
    out.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    out.dedup();
    out
}

/// The head of a peer's answer as the log quotes it: cut after [`RESPONSE_LOG_BYTES`] (or past
/// a secret the cut would halve), every one of `secrets` (longest first, see
/// [`target_secrets`]) replaced by `<redacted>`, as is the start of one that the answer ends in,
/// then the values of [`REDACTED_HEADERS`] ([`redact_named`]), on one printable line.
pub fn quote_peer(head: &[u8], secrets: &[String]) -> String {
    let found = |at: usize, s: &str| head[at..].starts_with(s.as_bytes());
    let mut cut = head.len().min(RESPONSE_LOG_BYTES);
    let mut moved = true;
    while moved {
        moved = false;
        for s in secrets {
            let first = cut.saturating_sub(s.len() - 1);
            if let Some(end) = (first..cut).filter(|&at| found(at, s)).map(|at| at + s.len()).max()
                && end > cut
            {
                cut = end;
                moved = true;
            }
        }
    }
    let mut bytes = head[..cut].to_vec();
    for s in secrets {
        bytes = replace_bytes(&bytes, s.as_bytes(), b"<redacted>");
    }
    // An answer that stops inside a secret still quotes its start.
    for s in secrets {
        let s = s.as_bytes();
        if let Some(k) = (4.min(s.len())..s.len()).rev().find(|&k| bytes.ends_with(&s[..k])) {
            bytes.truncate(bytes.len() - k);
            bytes.extend_from_slice(b"<redacted>");
        }
    }
    printable(redact_named(&String::from_utf8_lossy(&bytes)).as_bytes())
}

/// `bytes` with every occurrence of `from` (not empty) replaced by `to`.
fn replace_bytes(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if !from.is_empty() && bytes[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// Headers whose values are never quoted from a peer, whatever their value: an echoing peer
/// puts them back into what it answers (`authorization: Basic …`).
pub const REDACTED_HEADERS: &[&str] =
    &["authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "x-orchestrator-signature"];

/// `text` with the value after every [`REDACTED_HEADERS`] name replaced by `<redacted>`, in
/// any of the shapes a peer quotes headers in: `Name: value` lines, JSON `"name": "value"`,
/// `name=value`. Names match case-insensitively and as whole words; a quoted value ends at its
/// closing quote, an unquoted one at the end of the line (or `,`, `}`, `&`).
pub fn redact_named(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let bytes = text.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let name = REDACTED_HEADERS
            .iter()
            .filter(|n| lower.as_bytes()[i..].starts_with(n.as_bytes()))
            .max_by_key(|n| n.len())
            .filter(|n| (i == 0 || !word(bytes[i - 1])) && bytes.get(i + n.len()).is_none_or(|b| !word(*b)));
        let Some(name) = name else {
            i += 1;
            continue;
        };
        let mut j = i + name.len();
        let mut separated = false;
        while let Some(&b) = bytes.get(j) {
            match b {
                b':' | b'=' => separated = true,
                b'"' | b'\'' | b' ' | b'\t' => {}
                _ => break,
            }
            // A quote after the separator opens the value.
            if separated && (b == b'"' || b == b'\'') {
                break;
            }
            j += 1;
        }
        if !separated {
            i += 1;
            continue;
        }
        let start = j;
        let end = match bytes.get(j) {
            Some(&q @ (b'"' | b'\'')) => {
                let mut k = j + 1;
                while k < bytes.len() && bytes[k] != q {
                    k += if bytes[k] == b'\\' { 2 } else { 1 };
                }
                k.min(bytes.len())
            }
            _ => {
                let mut k = j;
                while k < bytes.len() && !matches!(bytes[k], b'\r' | b'\n' | b',' | b'}' | b'&') {
                    k += 1;
                }
                k
            }
        };
        // Keep an opening quote; replace what it quotes.
        let value_start = if matches!(bytes.get(start), Some(b'"' | b'\'')) { start + 1 } else { start };
        if end > value_start {
            out.push_str(&text[copied..value_start]);
            out.push_str("<redacted>");
            copied = end;
        }
        i = end.max(i + 1);
    }
    out.push_str(&text[copied..]);
    out
}

/// Bytes as one printable line.
pub fn printable(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let flat: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let trimmed = flat.trim();
    if trimmed.is_empty() { "(empty)".to_string() } else { trimmed.to_string() }
}

/// An error and its causes, without the URL (which may carry credentials).
fn error_chain(e: &reqwest::Error) -> String {
    let mut out = String::new();
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !out.contains(&s) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&s);
        }
        cur = err.source();
    }
    if let Some(url) = e.url() {
        out = out.replace(url.as_str(), &loggable_url(url.as_str()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // RFC 4231 test case 2.
        let sig = signature(&Secret::new("Jefe"), b"what do ya want for nothing?");
        assert_eq!(sig, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:29:30 GMT", now), Some(Duration::from_secs(90)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("99999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn statuses_are_classified() {
        assert!(classify(204, "s".into(), None).is_ok());
        for s in [408, 429, 500, 503] {
            assert!(matches!(classify(s, "s".into(), None), Err(AdapterError::Retryable { .. })), "{s}");
        }
        for s in [301, 400, 401, 404, 422] {
            assert!(matches!(classify(s, "s".into(), None), Err(AdapterError::Permanent { .. })), "{s}");
        }
    }

    #[test]
    fn header_values_are_redacted_by_name_in_every_shape() {
        let echoed = "POST /h HTTP/1.1\r\nAuthorization: Basic dXNlcjpodW50ZXIy\r\nCookie: s=1; t=2\r\nAccept: */*\r\n";
        let r = redact_named(echoed);
        assert!(!r.contains("dXNlcjpodW50ZXIy") && !r.contains("s=1"), "{r}");
        assert!(r.contains("Authorization: <redacted>\r\n") && r.contains("Accept: */*"), "{r}");
        let json = r#"{"headers":{"authorization":"Bearer abc\"def","x-api-key":"k1","proxy-authorization": "p","set-cookie":"c","host":"h"}}"#;
        let r = redact_named(json);
        for secret in ["abc", "def", "k1", "\"p\"", "\"c\""] {
            assert!(!r.contains(secret), "{secret} in {r}");
        }
        assert!(r.contains(r#""host":"h""#), "{r}");
        let r = redact_named("x-orchestrator-signature=sha256=00ff&a=1");
        assert_eq!(r, "x-orchestrator-signature=<redacted>&a=1");
        // Whole words only, and no separator, no redaction.
        assert_eq!(
            redact_named("authorization_code=1; authorization required"),
            "authorization_code=1; authorization required"
        );
        assert_eq!(redact_named("AUTHORIZATION:"), "AUTHORIZATION:");
        assert_eq!(redact_named("é cookie: ü\nx"), "é cookie: <redacted>\nx");
    }

    fn echo_target() -> WebhookTarget {
        WebhookTarget {
            name: "t".into(),
            url: "https://h.example/p?api_key=q-key%2Fsecret-1&format=json&partner=partner-id-42".into(),
            method: "POST".into(),
            headers: BTreeMap::from([
                ("Content-Type".to_string(), "application/json".to_string()),
                ("X-Partner-Token".to_string(), "hdr\"token\"-value".to_string()),
                ("X-Short".to_string(), "abc".to_string()),
            ]),
            secret_env: Some("HOOK_SECRET".into()),
            secret: Some(Secret::new("hmac-key-value")),
            timeout: None,
        }
    }

    #[test]
    fn every_configured_secret_of_a_target_is_redacted_from_what_a_peer_echoes() {
        let secrets = target_secrets(&echo_target());
        for s in ["hmac-key-value", "q-key%2Fsecret-1", "q-key/secret-1", "partner-id-42", "hdr\"token\"-value"] {
            assert!(secrets.iter().any(|x| x == s), "{s} in {secrets:?}");
        }
        assert!(secrets.iter().any(|x| x == r#"hdr\"token\"-value"#), "the JSON-escaped form: {secrets:?}");
        for kept in ["application/json", "json", "abc"] {
            assert!(!secrets.iter().any(|x| x == kept), "{kept} is no secret: {secrets:?}");
        }
        assert!(secrets.windows(2).all(|w| w[0].len() >= w[1].len()), "longest first");
        let echo = r#"GET /p?api_key=q-key%2Fsecret-1&format=json {"key":"q-key/secret-1","hdr":"hdr\"token\"-value","sig":"hmac-key-value","abc":1}"#;
        let quoted = quote_peer(echo.as_bytes(), &secrets);
        assert_eq!(
            quoted,
            r#"GET /p?api_key=<redacted>&format=json {"key":"<redacted>","hdr":"<redacted>","sig":"<redacted>","abc":1}"#
        );
    }

    #[test]
    fn a_secret_at_the_cut_or_at_the_end_of_the_answer_is_not_quoted_in_part() {
        let secrets = target_secrets(&echo_target());
        // The kept head ends inside the secret: the cut moves past it.
        let mut head = vec![b'a'; RESPONSE_LOG_BYTES - 5];
        head.extend_from_slice(b"hmac-key-value and more");
        let quoted = quote_peer(&head, &secrets);
        assert!(quoted.ends_with("a<redacted>") && !quoted.contains("hmac"), "{}", &quoted[quoted.len() - 30..]);
        // The answer itself stops inside a secret.
        let quoted = quote_peer(b"echo: hmac-key-va", &secrets);
        assert_eq!(quoted, "echo: <redacted>");
        // An ordinary head is cut at the limit.
        assert_eq!(quote_peer(&vec![b'b'; 5000], &secrets).len(), RESPONSE_LOG_BYTES);
    }

    #[test]
    fn logged_urls_lose_credentials_and_query() {
        assert_eq!(loggable_url("https://u:pw@h.example/p?token=abc#f"), "https://h.example/p");
        assert_eq!(proof_url("https://u:pw@h.example/p"), "https://u:REDACTED@h.example/p");
        assert_eq!(proof_url("https://h.example/p?a=1&api_key=k"), "https://h.example/p?a=1&api_key=REDACTED");
    }
}
