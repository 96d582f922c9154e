//! Proof artifacts: where they go, how they are named, how they are written.
//!
//! A name is built from the UTC time, a sanitized form of the idempotency key and a short hash
//! of the raw key, so that no key (`../../etc/passwd`, an absolute path, NUL, 10,000
//! characters, unicode) can leave the artifacts directory, and distinct keys never collide.
//! Files are written to a temporary name, synced, then renamed into place. [`verify`] reads them
//! back and checks each against the sha256 the execution log recorded.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

/// Longest sanitized key kept in a file name.
pub const MAX_KEY_CHARS: usize = 64;

/// A written artifact: where, and the sha256 of its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    pub path: PathBuf,
    pub sha256: String,
}

/// The key reduced to `[A-Za-z0-9._-]`, at most [`MAX_KEY_CHARS`] long, never `.` or `..`.
pub fn sanitize_key(key: &str) -> String {
    let mut s: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' { c } else { '_' })
        .take(MAX_KEY_CHARS)
        .collect();
    if s.chars().all(|c| c == '.') {
        s = s.replace('.', "_");
    }
    if s.is_empty() { "_".to_string() } else { s }
}

/// A directory component from a name (an action type): lower case, sanitized.
pub fn sanitize_dir(name: &str) -> String {
    sanitize_key(&name.to_ascii_lowercase())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `<dir>/<subdir>/<UTC timestamp>_<sanitized key>-<short hash>.<ext>`.
pub fn artifact_path(dir: &Path, subdir: &str, key: &str, ext: &str, at: DateTime<Utc>) -> PathBuf {
    let short = &sha256_hex(key.as_bytes())[..12];
    let name = format!("{}_{}-{short}.{}", at.format("%Y%m%dT%H%M%S%.3fZ"), sanitize_key(key), sanitize_key(ext));
    dir.join(sanitize_dir(subdir)).join(name)
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename) and returns its sha256.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<Artifact> {
    let parent = path.parent().ok_or_else(|| std::io::Error::other("artifact path has no parent directory"))?;
    std::fs::create_dir_all(parent)?;
    let tmp = parent.join(format!("{TMP_PREFIX}{:016x}", fastrand::u64(..)));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| Artifact { path: path.to_path_buf(), sha256: sha256_hex(bytes) })
}

/// The prefix of a temporary file [`write_atomic`] renames into place.
pub const TMP_PREFIX: &str = ".tmp-";

/// Removes leftover temporary files (`.tmp-*`, from an attempt killed mid-write) under `dir`
/// whose last change is older than `older_than`; a younger one may belong to a write in flight.
/// Returns how many were removed. A missing `dir` is no error; symlinks are not followed.
pub fn remove_stale_tmp(dir: &Path, older_than: std::time::Duration) -> std::io::Result<u64> {
    let now = std::time::SystemTime::now();
    let mut removed = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
                continue;
            }
            if !kind.is_file() || !entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                continue;
            }
            let modified = entry.metadata()?.modified()?;
            if now.duration_since(modified).is_ok_and(|age| age >= older_than) {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(removed)
}

/// One recorded artifact that is missing or whose bytes no longer match.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BadArtifact {
    pub log_id: i64,
    pub action_id: i64,
    pub path: String,
    pub expected_sha256: String,
    /// `None` when the file could not be read.
    pub actual_sha256: Option<String>,
    /// Why it is bad: `missing`, `mismatch` or the read error.
    pub problem: String,
}

/// What `artifacts verify` found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    pub checked: usize,
    pub ok: usize,
    pub missing: Vec<BadArtifact>,
    pub mismatched: Vec<BadArtifact>,
    /// Recorded by a worker on another host and not reachable here (`problem` names the host):
    /// not checked, not a failure. Verify them on their host, or share `artifacts_dir`.
    pub elsewhere: Vec<BadArtifact>,
}

impl VerifyReport {
    pub fn all_ok(&self) -> bool {
        self.missing.is_empty() && self.mismatched.is_empty()
    }
}

/// The host a log row's attempt ran on, from its `[worker host:pid:id]` suffix.
fn worker_host(message: &str) -> Option<&str> {
    let worker = message.rsplit_once("[worker ")?.1.strip_suffix(']')?;
    worker.split(':').next().filter(|h| !h.is_empty())
}

/// Recomputes the sha256 of every artifact the log rows name (relative paths resolve against
/// the current directory, as they were written). A file that is not here and was written by a
/// worker on another host than `this_host` is listed apart, unchecked.
pub fn verify(rows: &[crate::model::LogRow], this_host: &str) -> VerifyReport {
    let mut report = VerifyReport::default();
    for row in rows {
        let Some(path) = &row.artifact_ref else { continue };
        report.checked += 1;
        let expected = row.artifact_sha256.clone().unwrap_or_default();
        let bad = |actual: Option<String>, problem: String| BadArtifact {
            log_id: row.id,
            action_id: row.action_id,
            path: path.clone(),
            expected_sha256: expected.clone(),
            actual_sha256: actual,
            problem,
        };
        match sha256_file(Path::new(path)) {
            Ok(actual) if actual == expected => report.ok += 1,
            Ok(actual) => report.mismatched.push(bad(Some(actual), "mismatch".into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match worker_host(&row.message) {
                Some(host) if host != this_host => {
                    report.checked -= 1;
                    report.elsewhere.push(bad(None, format!("on host {host}")));
                }
                _ => report.missing.push(bad(None, "missing".into())),
            },
            Err(e) => report.missing.push(bad(None, format!("unreadable: {e}"))),
        }
    }
    report
}

/// The sha256 of a file's bytes, read in blocks.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_tmp_files_go_and_fresh_ones_and_artifacts_stay() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("proof_social");
        std::fs::create_dir_all(&sub).unwrap();
        let old = sub.join(".tmp-00000000000000aa");
        let fresh = sub.join(".tmp-00000000000000bb");
        let artifact = sub.join("20260101T000000.000Z_k-abc.txt");
        for p in [&old, &fresh, &artifact] {
            std::fs::write(p, b"x").unwrap();
        }
        let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        for p in [&old, &artifact] {
            std::fs::File::options().write(true).open(p).unwrap().set_modified(two_hours_ago).unwrap();
        }
        assert_eq!(remove_stale_tmp(dir.path(), std::time::Duration::from_secs(3600)).unwrap(), 1);
        assert!(!old.exists() && fresh.exists() && artifact.exists());
        assert_eq!(remove_stale_tmp(&dir.path().join("missing"), std::time::Duration::ZERO).unwrap(), 0);
    }

    #[test]
    fn hostile_keys_stay_inside_the_directory() {
        let dir = Path::new("/srv/artifacts");
        let at = Utc::now();
        let long = "k".repeat(10_000);
        for key in ["../../etc/passwd", "/etc/passwd", "a\0b", "..", ".", "ключ/✓", long.as_str(), ""] {
            let p = artifact_path(dir, "proof_social", key, "txt", at);
            assert_eq!(p.parent(), Some(dir.join("proof_social").as_path()), "{key:?} -> {p:?}");
            let name = p.file_name().unwrap().to_str().unwrap();
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)), "{name}");
            assert!(name.len() < 120, "{name}");
        }
    }

    #[test]
    fn hostile_subdirs_and_extensions_stay_inside_too() {
        let dir = Path::new("/srv/artifacts");
        for sub in ["..", "../../etc", "/abs", "a\0b", "PROOF_SOCIAL"] {
            let p = artifact_path(dir, sub, "k", "../../x", Utc::now());
            assert_eq!(p.parent().and_then(Path::parent), Some(dir), "{sub:?} -> {p:?}");
            let name = p.file_name().unwrap().to_str().unwrap();
            assert!(!name.contains('/') && name.ends_with(".._.._x"), "{name}");
        }
    }

    #[test]
    fn verify_finds_changed_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let row = |id: i64, path: &Path, sha: &str| crate::model::LogRow {
            id,
            action_id: id,
            tick_id: None,
            ts: Utc::now(),
            level: crate::model::LogLevel::Info,
            message: String::new(),
            artifact_ref: Some(path.display().to_string()),
            artifact_sha256: Some(sha.to_string()),
        };
        let good = write_atomic(&dir.path().join("a/good.txt"), b"good").unwrap();
        let bad = write_atomic(&dir.path().join("a/bad.txt"), b"bad").unwrap();
        std::fs::write(&bad.path, b"changed").unwrap();
        let gone = dir.path().join("a/gone.txt");
        let r =
            verify(&[row(1, &good.path, &good.sha256), row(2, &bad.path, &bad.sha256), row(3, &gone, "00")], "here");
        assert_eq!((r.checked, r.ok), (3, 1));
        assert_eq!(r.mismatched.iter().map(|b| b.log_id).collect::<Vec<_>>(), [2]);
        assert_eq!(r.mismatched[0].actual_sha256.as_deref(), Some(sha256_hex(b"changed").as_str()));
        assert_eq!((r.missing[0].log_id, r.missing[0].problem.as_str()), (3, "missing"));
        assert!(!r.all_ok());

        // A file written by a worker on another host is listed apart; one of this host's is missing.
        let on = |id: i64, host: &str| crate::model::LogRow {
            message: format!("NOOP succeeded (proof, attempt 1/3, 1 ms): ok [worker {host}:42:abcd]"),
            ..row(id, &gone, "00")
        };
        let r = verify(&[on(4, "other"), on(5, "here"), row(6, &good.path, &good.sha256)], "here");
        assert_eq!((r.checked, r.ok), (2, 1));
        assert_eq!(
            r.elsewhere.iter().map(|b| (b.log_id, b.problem.as_str())).collect::<Vec<_>>(),
            [(4, "on host other")]
        );
        assert_eq!(r.missing.iter().map(|b| b.log_id).collect::<Vec<_>>(), [5]);
        // Reachable here (a shared directory): checked like any other, whoever wrote it.
        let shared = crate::model::LogRow { message: on(7, "other").message, ..row(7, &good.path, &good.sha256) };
        let r = verify(&[shared], "here");
        assert!(r.all_ok() && r.elsewhere.is_empty() && r.ok == 1);
    }

    #[test]
    fn distinct_keys_do_not_collide() {
        let at = Utc::now();
        let a = artifact_path(Path::new("d"), "t", "a/b", "txt", at);
        let b = artifact_path(Path::new("d"), "t", "a_b", "txt", at);
        assert_ne!(a, b);
    }

    #[test]
    fn written_bytes_match_their_hash() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x").join("a.txt");
        let art = write_atomic(&p, b"hello").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"hello");
        assert_eq!(art.sha256, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        let leftovers: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
    }
}
