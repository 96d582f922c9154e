//! Build facts for `orchestrator --version`: the git commit the binary was built from and the
//! cargo features it was built with, as `BUILD_GIT_COMMIT` and `BUILD_FEATURES`.
//! Not `ORCHESTRATOR_*`: cargo also sets these in the environment of `cargo run` and
//! `cargo test`, and the binary reads `ORCHESTRATOR_<KEY>` as config (refusing keys it does
//! not know), so the README's `cargo run --release -- run-once` would fail.
//!
//! Never fails the build: without git, or outside a repository (a release tarball, a vendored
//! copy), the commit is `unknown`. It reads the repository; it writes nothing but cargo's lines.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_string());
    println!("cargo::rustc-env=BUILD_GIT_COMMIT={commit}");
    for file in watched() {
        println!("cargo::rerun-if-changed={}", file.display());
    }

    // Cargo sets CARGO_FEATURE_<NAME> for each enabled feature (upper case, `-` as `_`).
    let mut features: Vec<String> = std::env::vars()
        .filter_map(|(k, _)| k.strip_prefix("CARGO_FEATURE_").map(|f| f.to_ascii_lowercase().replace('_', "-")))
        .filter(|f| f != "default")
        .collect();
    features.sort();
    let features = if features.is_empty() { "none".to_string() } else { features.join(",") };
    println!("cargo::rustc-env=BUILD_FEATURES={features}");
}

/// The trimmed output of a successful `git` command run in the package's directory.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_string())
}

/// What a new commit or checkout changes: HEAD (this worktree's), the branches (a folder:
/// cargo looks at every file below it) and packed-refs. Only existing paths, since cargo reruns
/// a script on every build while a watched path is missing.
fn watched() -> Vec<PathBuf> {
    let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) else { return Vec::new() };
    let common = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]).unwrap_or_else(|| git_dir.clone());
    let common = Path::new(&common);
    [Path::new(&git_dir).join("HEAD"), common.join("refs/heads"), common.join("packed-refs")]
        .into_iter()
        .filter(|f| f.exists())
        .collect()
}
