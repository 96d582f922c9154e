//! Bounded reading of the files the program is given (the config, rule files, rule fixtures):
//! every read has a size cap and says so clearly when a file is over it, so that a path to
//! `/dev/zero` or a huge file costs an error, not the machine's memory.
//!
//! Also the small checks every reader of text input shares: a leading UTF-8 byte order mark,
//! and whether a rule file may be loaded at all (a regular file inside its directory, or a
//! symlink that resolves to one). It reads files; it never parses their contents.

use std::io::Read;
use std::path::Path;

/// The largest config file read: a config is a few KB of YAML.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// The largest rule file read.
pub const MAX_RULE_FILE_BYTES: u64 = 1 << 20;
/// The largest rule fixture file read (fixtures carry snapshots, so more room).
pub const MAX_FIXTURE_BYTES: u64 = 16 << 20;

/// The UTF-8 byte order mark some editors put at the start of a file.
pub const BOM: &str = "\u{feff}";

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("larger than the limit of {limit} bytes for {what}")]
    TooLarge { what: &'static str, limit: u64 },
    #[error("not valid UTF-8 (at byte {0})")]
    NotUtf8(usize),
}

impl ReadError {
    /// The file was missing (for optional files).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadError::Io(e) if e.kind() == std::io::ErrorKind::NotFound)
    }
}

/// Reads at most `limit` bytes of `path`; a longer file (or an endless one such as
/// `/dev/zero`) is an error naming `what` and the limit.
pub fn read_capped(path: &Path, limit: u64, what: &'static str) -> Result<Vec<u8>, ReadError> {
    let f = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    f.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge { what, limit });
    }
    Ok(bytes)
}

/// [`read_capped`] as UTF-8 text, with a leading byte order mark removed.
pub fn read_text_capped(path: &Path, limit: u64, what: &'static str) -> Result<String, ReadError> {
    let bytes = read_capped(path, limit, what)?;
    let text = String::from_utf8(bytes).map_err(|e| ReadError::NotUtf8(e.utf8_error().valid_up_to()))?;
    Ok(match text.strip_prefix(BOM) {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

/// Whether a directory entry may be loaded as a rule file: a regular file, or a symlink that
/// resolves to a regular file inside `dir`. The reason for a refusal is one line and quotes
/// nothing from the file or the link.
pub fn check_rule_file(dir: &Path, path: &Path) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("cannot inspect: {}", e.kind()))?;
    if meta.file_type().is_file() {
        return Ok(());
    }
    if !meta.file_type().is_symlink() {
        return Err("refused: not a regular file".into());
    }
    let target = std::fs::canonicalize(path)
        .map_err(|e| format!("refused: a symlink that cannot be resolved ({})", e.kind()))?;
    let root = std::fs::canonicalize(dir).map_err(|e| format!("cannot resolve the rules directory ({})", e.kind()))?;
    if !target.starts_with(&root) {
        return Err("refused: a symlink that resolves outside rules_dir".into());
    }
    let target_meta = std::fs::metadata(&target).map_err(|e| format!("cannot inspect: {}", e.kind()))?;
    if !target_meta.is_file() {
        return Err("refused: a symlink to something that is not a regular file".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endless_and_large_files_are_refused_with_the_limit() {
        let e = read_capped(Path::new("/dev/zero"), 1024, "a config file").unwrap_err();
        assert_eq!(e.to_string(), "larger than the limit of 1024 bytes for a config file");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![b'a'; 1024]).unwrap();
        assert_eq!(read_capped(&p, 1024, "x").unwrap().len(), 1024, "exactly the limit is read");
        std::fs::write(&p, vec![b'a'; 1025]).unwrap();
        assert!(matches!(read_capped(&p, 1024, "x"), Err(ReadError::TooLarge { .. })));
    }

    #[test]
    fn a_leading_bom_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "\u{feff}a: 1\n").unwrap();
        assert_eq!(read_text_capped(&p, 100, "x").unwrap(), "a: 1\n");
    }

    #[cfg(unix)]
    #[test]
    fn rule_files_must_be_regular_files_inside_the_directory() {
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret.txt");
        std::fs::write(&secret, "password=hunter2").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a.rhai"), "()").unwrap();
        std::os::unix::fs::symlink(d.join("a.rhai"), d.join("b.rhai")).unwrap();
        std::os::unix::fs::symlink(&secret, d.join("c.rhai")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", d.join("d.rhai")).unwrap();
        std::fs::create_dir(d.join("e.rhai")).unwrap();
        assert_eq!(check_rule_file(d, &d.join("a.rhai")), Ok(()));
        assert_eq!(check_rule_file(d, &d.join("b.rhai")), Ok(()));
        let e = check_rule_file(d, &d.join("c.rhai")).unwrap_err();
        assert_eq!(e, "refused: a symlink that resolves outside rules_dir");
        assert!(check_rule_file(d, &d.join("d.rhai")).unwrap_err().contains("outside rules_dir"));
        assert_eq!(check_rule_file(d, &d.join("e.rhai")).unwrap_err(), "refused: not a regular file");
    }
}
