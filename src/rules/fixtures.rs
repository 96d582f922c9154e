//! `rules test`: fixtures in `rules/tests/*.yaml`, in the spirit of `promtool test rules`.
//!
//! A fixture file names the rules it exercises (or all) and lists cases: a partial snapshot
//! (merged over [`Snapshot::example`](crate::snapshot::Snapshot::example)), an optional `state`,
//! optional `params`, the decisions expected (kind, and optionally target and priority), the
//! decisions that must be absent, and optionally the state expected afterwards. Pure: it reads
//! the fixture files and evaluates rules; no store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::RulesConfig;
use super::{Decision, RuleSet};

/// A fixture file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureFile {
    /// The rules the cases evaluate (all of them when absent).
    #[serde(default)]
    pub rules: Option<Vec<String>>,
    pub cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    #[serde(default)]
    pub snapshot: Option<serde_yaml::Value>,
    /// Each rule's state before the run, by rule name.
    #[serde(default)]
    pub state: BTreeMap<String, serde_yaml::Value>,
    /// `rules.params` for this case, by rule name.
    #[serde(default)]
    pub params: BTreeMap<String, serde_yaml::Value>,
    #[serde(default)]
    pub expect: Vec<Pattern>,
    #[serde(default)]
    pub absent: Vec<Pattern>,
    /// The state expected afterwards (a subset), by rule name.
    #[serde(default)]
    pub expect_state: BTreeMap<String, serde_yaml::Value>,
}

/// Matches decisions: kind, and target and priority when given.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pattern {
    pub kind: String,
    #[serde(default)]
    pub target: Option<serde_yaml::Value>,
    #[serde(default)]
    pub priority: Option<u8>,
    #[serde(default)]
    pub rule: Option<String>,
}

impl Pattern {
    fn target_text(&self) -> Option<String> {
        self.target.as_ref().map(|t| match t {
            serde_yaml::Value::String(s) => s.clone(),
            serde_yaml::Value::Number(n) => n.to_string(),
            other => serde_yaml::to_string(other).unwrap_or_default().trim().to_string(),
        })
    }

    fn matches(&self, d: &Decision) -> bool {
        d.kind.name() == self.kind
            && self.target_text().is_none_or(|t| t == d.kind.target())
            && self.priority.is_none_or(|p| p == d.priority)
            && self.rule.as_ref().is_none_or(|r| *r == d.rule)
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(t) = self.target_text() {
            write!(f, " target={t}")?;
        }
        if let Some(p) = self.priority {
            write!(f, " priority={p}")?;
        }
        if let Some(r) = &self.rule {
            write!(f, " rule={r}")?;
        }
        Ok(())
    }
}

/// The result of one case.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CaseResult {
    pub file: PathBuf,
    pub name: String,
    pub passed: bool,
    /// What differed, line by line (`- expected ...`, `+ got ...`).
    pub diff: Vec<String>,
}

/// Runs every `*.yaml` under `dir/tests` against the rules of `dir`. Errors reading or
/// compiling are reported as failed cases, never as panics.
pub fn run_dir(dir: &Path, cfg: &RulesConfig) -> Result<Vec<CaseResult>, super::RulesError> {
    let tests = dir.join("tests");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&tests) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect(),
        Err(source) => return Err(super::RulesError::Dir { dir: tests, source }),
    };
    files.sort();
    let sources: Vec<(PathBuf, String)> = super::rule_files(dir)?
        .into_iter()
        .map(|p| {
            super::read_rule_file(&p).map(|t| (p.clone(), t)).map_err(|e| {
                super::RulesError::Invalid(vec![super::Diagnostic {
                    rule: super::stem(&p),
                    file: p.clone(),
                    line: 1,
                    column: 1,
                    message: format!("cannot read: {e}"),
                }])
            })
        })
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for file in files {
        out.extend(run_file(&file, &sources, cfg));
    }
    Ok(out)
}

fn run_file(file: &Path, sources: &[(PathBuf, String)], cfg: &RulesConfig) -> Vec<CaseResult> {
    let broken = |name: &str, why: String| CaseResult {
        file: file.to_path_buf(),
        name: name.into(),
        passed: false,
        diff: vec![why],
    };
    let text = match crate::input::read_text_capped(file, crate::input::MAX_FIXTURE_BYTES, "a rule fixture") {
        Ok(t) => t,
        Err(e) => return vec![broken("(file)", format!("cannot read: {e}"))],
    };
    let fixture: FixtureFile = match serde_yaml::from_str(&text) {
        Ok(f) => f,
        Err(e) => return vec![broken("(file)", format!("not a valid fixture: {e}"))],
    };
    fixture.cases.iter().map(|case| run_case(file, &fixture, case, sources, cfg)).collect()
}

fn yaml_to_json(v: &serde_yaml::Value) -> Result<Value, String> {
    serde_json::to_value(v).map_err(|e| e.to_string())
}

/// Deep-merges `over` into `base` (objects key by key; anything else replaces).
pub fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

fn run_case(
    file: &Path,
    fixture: &FixtureFile,
    case: &Case,
    sources: &[(PathBuf, String)],
    cfg: &RulesConfig,
) -> CaseResult {
    let mut diff = Vec::new();
    let result = |diff: Vec<String>| CaseResult {
        file: file.to_path_buf(),
        name: case.name.clone(),
        passed: diff.is_empty(),
        diff,
    };
    let mut cfg = cfg.clone();
    for (rule, p) in &case.params {
        match yaml_to_json(p) {
            Ok(v) => {
                cfg.params.insert(rule.clone(), v);
            }
            Err(e) => return result(vec![format!("params.{rule}: {e}")]),
        }
    }
    let set = match RuleSet::from_sources(sources.to_vec(), &cfg) {
        Ok(s) => s,
        Err(diags) => return result(diags.iter().map(|d| d.to_string()).collect()),
    };
    let mut snap = serde_json::to_value(crate::snapshot::Snapshot::example()).unwrap_or(Value::Null);
    if let Some(partial) = &case.snapshot {
        match yaml_to_json(partial) {
            Ok(p) => merge(&mut snap, &p),
            Err(e) => return result(vec![format!("snapshot: {e}")]),
        }
    }
    let mut states = BTreeMap::new();
    for (rule, s) in &case.state {
        match yaml_to_json(s) {
            Ok(v) => {
                states.insert(rule.clone(), v);
            }
            Err(e) => return result(vec![format!("state.{rule}: {e}")]),
        }
    }
    let only: Vec<String> = match &fixture.rules {
        Some(names) => {
            for n in names {
                if !set.names().contains(&n.as_str()) {
                    diff.push(format!("no rule named {n:?} in the rules directory"));
                }
            }
            names.clone()
        }
        None => set.names().iter().map(|s| s.to_string()).collect(),
    };
    let runs = set.evaluate_only(&snap, &states, &only);
    let mut got: Vec<Decision> = Vec::new();
    for r in &runs {
        if let Some(e) = &r.error {
            diff.push(format!("! rule failed: {e}"));
        }
        for d in &r.invalid {
            diff.push(format!("! invalid decision: {d}"));
        }
        got.extend(r.decisions.iter().cloned());
    }
    let show = |d: &Decision| {
        format!("{} target={} priority={} rule={} ({})", d.kind.name(), d.kind.target(), d.priority, d.rule, d.reason)
    };
    for p in &case.expect {
        if !got.iter().any(|d| p.matches(d)) {
            diff.push(format!("- expected: {p}"));
        }
    }
    for p in &case.absent {
        for d in got.iter().filter(|d| p.matches(d)) {
            diff.push(format!("+ unexpected ({p} must be absent): {}", show(d)));
        }
    }
    // A mismatch shows everything the rules decided, to read the diff against.
    if diff.iter().any(|l| l.starts_with("- ") || l.starts_with("+ ")) {
        diff.extend(got.iter().map(|d| format!("  got: {}", show(d))));
        if got.is_empty() {
            diff.push("  got: no decisions".into());
        }
    }
    for (rule, want) in &case.expect_state {
        let want = match yaml_to_json(want) {
            Ok(v) => v,
            Err(e) => {
                diff.push(format!("expect_state.{rule}: {e}"));
                continue;
            }
        };
        let have = runs.iter().find(|r| &r.rule == rule).map(|r| r.state.clone()).unwrap_or(Value::Null);
        let mut merged = have.clone();
        merge(&mut merged, &want);
        if merged != have {
            diff.push(format!("- expected state of {rule} to include: {want}"));
            diff.push(format!("+ state of {rule}: {have}"));
        }
    }
    result(diff)
}
