//! Invariants a program can see, checked over the source tree the way rust-analyzer's
//! `xtask/src/tidy.rs` does: every source file opens with a `//!` paragraph, only `src/store/`
//! speaks to the database library or holds SQL text (the examples included), only `src/cli/`
//! prints to stdout, the README's command table names the commands `--help` has, no two
//! modules import each other round a cycle, and ARCHITECTURE.md's module graph is the one the
//! imports make. ARCHITECTURE.md states these; a statement alone drifts, so each is a test here.
//!
//! Each check is a function from a file's path and text to its violations (`file:line: what`),
//! so that it can be run on a doctored input below and shown to fail. The checks read code with
//! a small lexer that sets comments and string literals apart: a `sea_orm` in a comment or in a
//! log filter string (`"sea_orm=warn"`) is not a use of it, and a `SELECT` in a comment is not
//! SQL text.

use std::fmt;
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// One broken invariant, where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Violation {
    file: String,
    line: usize,
    what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.what)
    }
}

fn violation(file: &str, line: usize, what: impl Into<String>) -> Violation {
    Violation { file: file.to_string(), line, what: what.into() }
}

/// A source file split by the lexer: the code of each line with comments removed and every
/// string literal's contents blanked, and the string literals with the line they start on.
struct Lexed {
    code: Vec<String>,
    strings: Vec<(usize, String)>,
}

/// Lexes enough of Rust to set code, comments and string literals apart: line and (nested)
/// block comments, `"..."` with escapes, raw strings `r#"..."#`, byte strings, and char
/// literals told apart from lifetimes.
fn lex(text: &str) -> Lexed {
    let chars: Vec<char> = text.chars().collect();
    let mut code = vec![String::new()];
    let mut strings = Vec::new();
    let mut i = 0;
    let mut line = 1;
    let newline = |code: &mut Vec<String>, line: &mut usize| {
        code.push(String::new());
        *line += 1;
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '\n' {
            newline(&mut code, &mut line);
            i += 1;
        } else if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if chars[i] == '\n' {
                        newline(&mut code, &mut line);
                    }
                    i += 1;
                }
            }
        } else if let Some((hashes, open)) = raw_string_start(&chars, i) {
            // r"..." / r#"..."# / br#"..."#: no escapes; ends at a quote and as many hashes.
            let start_line = line;
            let mut s = String::new();
            i = open + 1;
            while i < chars.len() {
                if chars[i] == '"' && (0..hashes).all(|k| chars.get(i + 1 + k) == Some(&'#')) {
                    i += 1 + hashes;
                    break;
                }
                if chars[i] == '\n' {
                    newline(&mut code, &mut line);
                }
                s.push(chars[i]);
                i += 1;
            }
            code.last_mut().unwrap().push_str("\"\"");
            strings.push((start_line, s));
        } else if c == '"' || (c == 'b' && next == Some('"') && !ident_before(&chars, i)) {
            let start_line = line;
            let mut s = String::new();
            i += if c == 'b' { 2 } else { 1 };
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    s.push(chars[i]);
                    i += 1;
                }
                if let Some(&ch) = chars.get(i) {
                    if ch == '\n' {
                        newline(&mut code, &mut line);
                    }
                    s.push(ch);
                }
                i += 1;
            }
            i += 1;
            code.last_mut().unwrap().push_str("\"\"");
            strings.push((start_line, s));
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}', '"') or a lifetime ('a): a lifetime has no
            // closing quote right after its first character.
            if next == Some('\\') {
                i += 3; // the quote, the backslash and the escaped character
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
                code.last_mut().unwrap().push_str("' '");
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
                code.last_mut().unwrap().push_str("' '");
            } else {
                code.last_mut().unwrap().push(c);
                i += 1;
            }
        } else {
            code.last_mut().unwrap().push(c);
            i += 1;
        }
    }
    Lexed { code, strings }
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn ident_before(chars: &[char], i: usize) -> bool {
    i > 0 && is_ident(chars[i - 1])
}

/// At `r"`, `r#"`, `br"`, `br#"` (not inside an identifier): the number of hashes and the index
/// of the opening quote.
fn raw_string_start(chars: &[char], i: usize) -> Option<(usize, usize)> {
    if ident_before(chars, i) {
        return None;
    }
    let mut j = i;
    if chars.get(j) == Some(&'b') {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let mut hashes = 0;
    while chars.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    (chars.get(j) == Some(&'"')).then_some((hashes, j))
}

/// Where `word` occurs in `line` as a whole token (not part of a longer identifier).
fn find_token(line: &str, word: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = line[from..].find(word).map(|p| p + from) {
        let before = line[..at].chars().next_back();
        let after = line[at + word.len()..].chars().next();
        let starts = !before.is_some_and(is_ident);
        let ends = !word.ends_with(is_ident) || !after.is_some_and(is_ident);
        if starts && ends {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

/// Every file is explained where it starts: its first line is a `//!` doc comment.
fn check_module_doc(file: &str, text: &str) -> Vec<Violation> {
    match text.lines().next() {
        Some(first) if first.starts_with("//!") => Vec::new(),
        _ => vec![violation(file, 1, "the file does not open with a `//!` paragraph saying what it is for")],
    }
}

/// The crates that speak to the database. `store` owns them (ARCHITECTURE.md, "Only `store`
/// imports `sea_orm`"); sqlx and sea-query are the same door by other names.
const DATABASE_CRATES: &[&str] = &["sea_orm", "sea_query", "sqlx"];

/// Only `src/store/` names the database crates in code (`use sea_orm::..`, `sea_orm::Foo`).
fn check_database_crates(file: &str, text: &str) -> Vec<Violation> {
    let mut out = Vec::new();
    for (n, line) in lex(text).code.iter().enumerate() {
        for krate in DATABASE_CRATES {
            if find_token(line, krate).is_some() {
                out.push(violation(file, n + 1, format!("`{krate}` is used outside src/store/")));
            }
        }
    }
    out
}

/// What writes to stdout: the print macros and the handles to it.
const STDOUT_WRITERS: &[&str] = &["println!", "print!", "io::stdout", "stdout()"];

/// Only `src/cli/` prints to stdout; everything else logs to stderr through `tracing`.
fn check_stdout(file: &str, text: &str) -> Vec<Violation> {
    let mut out = Vec::new();
    for (n, line) in lex(text).code.iter().enumerate() {
        // `stdout()` as a free call (after `use std::io::stdout`), not a method such as a
        // child process's `.stdout(Stdio::piped())`.
        let hit = STDOUT_WRITERS.iter().find(|writer| {
            find_token(line, writer).is_some_and(|at| !(writer.starts_with("stdout") && line[..at].ends_with('.')))
        });
        if let Some(writer) = hit {
            out.push(violation(file, n + 1, format!("`{writer}` writes to stdout outside src/cli/")));
        }
    }
    out
}

/// What writes to stdout or stderr directly: the print macros and the handles to both.
const STD_STREAM_WRITERS: &[&str] =
    &["println!", "print!", "eprintln!", "eprint!", "io::stdout", "io::stderr", "stdout()", "stderr()"];

/// Only `src/cli/stdio.rs` touches stdout and stderr (CONVENTIONS 19: one function that handles
/// a closed pipe and a full disk); the print macros panic on both.
fn check_std_streams(file: &str, text: &str) -> Vec<Violation> {
    let mut out = Vec::new();
    for (n, line) in lex(text).code.iter().enumerate() {
        let hit = STD_STREAM_WRITERS.iter().find(|writer| {
            find_token(line, writer).is_some_and(|at| !(writer.starts_with("std") && line[..at].ends_with('.')))
        });
        if let Some(writer) = hit {
            out.push(violation(file, n + 1, format!("`{writer}` writes past src/cli/stdio.rs")));
        }
    }
    out
}

/// SQL as text: keyword pairs that start a statement, in upper case as this code base writes
/// SQL. A pair must appear in order in one string literal.
const SQL_SHAPES: &[(&str, &str)] = &[
    ("SELECT", "FROM"),
    ("INSERT", "INTO"),
    ("UPDATE", "SET"),
    ("DELETE", "FROM"),
    ("CREATE", "TABLE"),
    ("CREATE", "INDEX"),
    ("ALTER", "TABLE"),
    ("DROP", "TABLE"),
    ("CREATE", "SCHEMA"),
    ("DROP", "SCHEMA"),
    ("CREATE", "DATABASE"),
    ("DROP", "DATABASE"),
];

/// SQL text lives in `src/store/` (CONVENTIONS: "a caller never builds SQL text of its own").
fn check_sql(file: &str, text: &str) -> Vec<Violation> {
    let mut out = Vec::new();
    for (line, s) in lex(text).strings {
        for (first, then) in SQL_SHAPES {
            let at = find_token(&s, first);
            if let Some(at) = at
                && find_token(&s[at + first.len()..], then).is_some()
            {
                out.push(violation(file, line, format!("SQL text ({first} .. {then}) outside src/store/")));
                break;
            }
        }
    }
    out
}

/// The command names in the README's command table (the first table under `## Commands`): each
/// backticked span of a row's first cell starts with a command and, for a command with
/// subcommands, its subcommand. Returns (line, "command" or "command sub").
fn readme_commands(readme: &str, with_subcommands: &[String]) -> Result<Vec<(usize, String)>, String> {
    let lines: Vec<&str> = readme.lines().collect();
    let start = lines.iter().position(|l| l.trim() == "## Commands").ok_or("no `## Commands` section")?;
    let mut out = Vec::new();
    let mut in_table = false;
    for (n, line) in lines.iter().enumerate().skip(start + 1) {
        if line.starts_with("## ") {
            break;
        }
        if !line.starts_with('|') {
            if in_table {
                break;
            }
            continue;
        }
        if !in_table {
            in_table = true; // the header row
            continue;
        }
        if line.starts_with("| ---") {
            continue;
        }
        // The first cell ends at the first `|` outside backticks (`\|` is an escaped bar).
        let mut cell = String::new();
        let mut ticked = false;
        for c in line[1..].chars() {
            if c == '`' {
                ticked = !ticked;
            }
            if c == '|' && !ticked && !cell.ends_with('\\') {
                break;
            }
            cell.push(c);
        }
        // The commands are the cell's leading backticked spans, separated by commas; what
        // follows, such as "(`-` for stdin)", is prose.
        let mut rest = cell.trim_start();
        let mut spans = Vec::new();
        while let Some(open) = rest.strip_prefix('`') {
            let Some(close) = open.find('`') else { break };
            spans.push(&open[..close]);
            rest = open[close + 1..].trim_start();
            match rest.strip_prefix(',') {
                Some(after) => rest = after.trim_start(),
                None => break,
            }
        }
        for span in spans {
            let mut words = span.split_whitespace();
            let Some(command) = words.next() else { continue };
            let name = match words.next() {
                Some(sub) if with_subcommands.iter().any(|c| c == command) && !sub.starts_with(['-', '[']) => {
                    format!("{command} {sub}")
                }
                _ => command.to_string(),
            };
            out.push((n + 1, name));
        }
    }
    if out.is_empty() {
        return Err("no command table under `## Commands`".to_string());
    }
    Ok(out)
}

/// The names `--help` lists: every visible subcommand, and every visible subcommand of those
/// (`actions list`), as "command" or "command sub". clap's own `help` is left out.
fn clap_commands(cmd: &clap::Command) -> (Vec<String>, Vec<String>) {
    let visible = |c: &clap::Command| {
        c.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help").cloned().collect::<Vec<_>>()
    };
    let mut names = Vec::new();
    let mut parents = Vec::new();
    for sub in visible(cmd) {
        let inner = visible(&sub);
        if inner.is_empty() {
            names.push(sub.get_name().to_string());
        } else {
            parents.push(sub.get_name().to_string());
            names.extend(inner.iter().map(|s| format!("{} {}", sub.get_name(), s.get_name())));
        }
    }
    (names, parents)
}

/// The README's command table and `--help` agree: the table names no command clap lacks, and
/// clap has no command the table leaves out.
fn check_readme_commands(file: &str, readme: &str, cmd: &clap::Command) -> Vec<Violation> {
    let (names, parents) = clap_commands(cmd);
    let listed = match readme_commands(readme, &parents) {
        Ok(listed) => listed,
        Err(e) => return vec![violation(file, 1, e)],
    };
    let mut out = Vec::new();
    for (line, name) in &listed {
        if !names.contains(name) {
            out.push(violation(file, *line, format!("the command table names `{name}`, which `--help` does not list")));
        }
    }
    let table = listed.first().map_or(1, |(line, _)| *line);
    for name in &names {
        if !listed.iter().any(|(_, n)| n == name) {
            out.push(violation(file, table, format!("`{name}` is in `--help` but not in the command table")));
        }
    }
    out
}

/// A test file takes what it shares with others from `tests/it/support/` (and the
/// `backend_tests!` macro), never from another test file: `crate::queue::noop` would make the
/// queue tests a library of the others.
fn check_test_imports(file: &str, text: &str) -> Vec<Violation> {
    let lexed = lex(text);
    let mut out = Vec::new();
    for (i, code) in lexed.code.iter().enumerate() {
        let mut rest = code.as_str();
        while let Some(at) = find_token(rest, "crate") {
            let after = &rest[at + "crate".len()..];
            if let Some(path) = after.strip_prefix("::") {
                let module: String = path.chars().take_while(|c| is_ident(*c)).collect();
                if !module.is_empty() && module != "support" && module != "backend_tests" {
                    out.push(violation(
                        file,
                        i + 1,
                        format!("`crate::{module}::..` is another test file: shared helpers live in tests/it/support/"),
                    ));
                }
            }
            rest = after;
        }
    }
    out
}

/// The paths ARCHITECTURE.md's code map names, with their lines: a top-level entry (`src/x.rs`,
/// `src/store/`, `tests/it/`) is a path from the crate root; an entry indented by two spaces
/// (`  mod.rs`, `  config/environment.rs`, `  ledger.rs, logs.rs`) names paths in the last top-level
/// directory entry (or beside the last top-level file). The bool says whether the entry is
/// such a nested directory, which stands for the files in it.
fn code_map_entries(arch: &str) -> Result<Vec<(usize, String, bool)>, String> {
    let start = arch.find("## Code map").ok_or("ARCHITECTURE.md has no `## Code map`")?;
    let first = arch[..start].lines().count();
    let mut lines = arch[start..].lines().enumerate().map(|(i, l)| (first + i + 1, l));
    lines.by_ref().find(|(_, l)| l.starts_with("```")).ok_or("the code map has no code block")?;
    let names = |text: &str| -> Vec<String> {
        let head = text.split("  ").next().unwrap_or("");
        head.split(", ").map(|n| n.trim().to_string()).filter(|n| !n.is_empty()).collect()
    };
    let mut out = Vec::new();
    let mut base = String::new();
    for (at, line) in lines {
        if line.starts_with("```") {
            return Ok(out);
        }
        if let Some(nested) = line.strip_prefix("  ").filter(|l| !l.starts_with(' ')) {
            for name in names(nested) {
                out.push((at, format!("{base}{name}"), name.ends_with('/')));
            }
        } else if !line.starts_with(' ') {
            for name in names(line) {
                base = if name.ends_with('/') {
                    name.clone()
                } else {
                    name.rsplit_once('/').map_or(String::new(), |(dir, _)| format!("{dir}/"))
                };
                out.push((at, name, false));
            }
        }
    }
    Err("the code map's code block does not end".into())
}

/// The code map and the tree agree: every path it names exists (a `*` matches within a file
/// name), and every `.rs` file under `src/` is named, itself or by a nested directory entry.
/// Every bullet of ARCHITECTURE.md's "Invariants" section ends "Tested by `file::test`, ...",
/// and each test it names is a function of `tests/it/<file>.rs` (`has_test` says).
fn check_invariants(arch: &str, has_test: &dyn Fn(&str, &str) -> bool) -> Vec<Violation> {
    let lines: Vec<&str> = arch.lines().collect();
    let Some(start) = lines.iter().position(|l| l.trim() == "## Invariants") else {
        return vec![violation("ARCHITECTURE.md", 1, "no \"## Invariants\" section")];
    };
    let end = lines[start + 1..].iter().position(|l| l.starts_with("## ")).map_or(lines.len(), |e| start + 1 + e);
    // Each bullet with its continuation lines joined, and the line it starts on.
    let mut bullets: Vec<(usize, String)> = Vec::new();
    for (i, l) in lines.iter().enumerate().take(end).skip(start) {
        if l.starts_with("- **") {
            bullets.push((i + 1, l.to_string()));
        } else if let (Some(b), true) = (bullets.last_mut(), l.starts_with("  ")) {
            b.1.push(' ');
            b.1.push_str(l.trim());
        }
    }
    let mut out = Vec::new();
    for (at, text) in &bullets {
        let title = text.trim_start_matches("- **").split("**").next().unwrap_or_default();
        let named: Vec<&str> = match text.rsplit_once("Tested by ") {
            Some((_, tail)) => tail.split('`').skip(1).step_by(2).collect(),
            None => Vec::new(),
        };
        if named.is_empty() {
            out.push(violation(
                "ARCHITECTURE.md",
                *at,
                format!("the invariant \"{title}\" names no test (end it \"Tested by `file::test`.\")"),
            ));
        }
        for name in named {
            if !name.split_once("::").is_some_and(|(file, test)| has_test(file, test)) {
                out.push(violation("ARCHITECTURE.md", *at, format!("`{name}` is not a test in tests/it/")));
            }
        }
    }
    if bullets.is_empty() {
        out.push(violation("ARCHITECTURE.md", start + 1, "the Invariants section lists none"));
    }
    out
}

fn check_code_map(arch: &str, root: &Path, src_files: &[String]) -> Vec<Violation> {
    let entries = match code_map_entries(arch) {
        Ok(e) => e,
        Err(e) => return vec![violation("ARCHITECTURE.md", 1, e)],
    };
    let mut out = Vec::new();
    for (at, path, _) in &entries {
        let exists = match path.split_once('*') {
            None => root.join(path).exists(),
            Some((before, after)) => {
                let (dir, prefix) = before.rsplit_once('/').map_or(("", before), |(d, p)| (d, p));
                std::fs::read_dir(root.join(dir)).into_iter().flatten().flatten().any(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.starts_with(prefix) && name.ends_with(after)
                })
            }
        };
        if !exists {
            out.push(violation("ARCHITECTURE.md", *at, format!("the code map names `{path}`, which does not exist")));
        }
    }
    for file in src_files {
        let named = entries.iter().any(|(_, path, dir)| path == file || (*dir && file.starts_with(path.as_str())));
        if !named {
            out.push(violation("ARCHITECTURE.md", 1, format!("`{file}` is not in the code map")));
        }
    }
    out
}

/// A function longer than this many lines (signature to closing brace) is to be split, unless
/// [`LONG_FUNCTIONS`] names it with a reason.
const MAX_FUNCTION_LINES: usize = 100;

/// The functions allowed past [`MAX_FUNCTION_LINES`]: (file, name, at most this many lines,
/// why). The bound is each one's length when it was listed, so none of them grows; shorten one
/// and lower its bound, split one and take it off.
const LONG_FUNCTIONS: &[(&str, &str, usize, &str)] = &[
    ("src/rules/sandbox.rs", "register_constructors", 128, "one registration per decision constructor, a flat list"),
    ("src/snapshot.rs", "build_with", 124, "the snapshot's bounded queries in order; a flat list of reads"),
    ("src/rules/mod.rs", "decision_from_json", 103, "one arm per decision kind"),
    ("src/rules/fixtures.rs", "run_case", 103, "one `rules test` case: set up, run, compare"),
];

/// Each function's name, first line and length in lines, found in the lexed code (so braces in
/// strings, chars and comments do not count). A declaration without a body is not a function
/// here.
fn function_lengths(text: &str) -> Vec<(String, usize, usize)> {
    let code = lex(text).code;
    let mut out = Vec::new();
    for (i, line) in code.iter().enumerate() {
        let Some(at) = find_token(line, "fn") else { continue };
        let name: String = line[at + 2..].trim_start().chars().take_while(|c| is_ident(*c)).collect();
        if name.is_empty() {
            continue; // `fn(` is a type
        }
        let mut depth = 0usize;
        let mut opened = false;
        let mut end = None;
        'lines: for (j, l) in code.iter().enumerate().skip(i) {
            let from = if j == i { at } else { 0 };
            for c in l[from..].chars() {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => {
                        depth = depth.saturating_sub(1);
                        if opened && depth == 0 {
                            end = Some(j);
                            break 'lines;
                        }
                    }
                    ';' if !opened => break 'lines,
                    _ => {}
                }
            }
        }
        if let Some(end) = end {
            out.push((name, i + 1, end - i + 1));
        }
    }
    out
}

/// No function is over [`MAX_FUNCTION_LINES`] lines but those [`LONG_FUNCTIONS`] lists, and
/// none of those past its bound.
fn check_function_lengths(file: &str, text: &str) -> Vec<Violation> {
    let mut out = Vec::new();
    for (name, at, lines) in function_lengths(text) {
        let listed = LONG_FUNCTIONS.iter().find(|(f, n, _, _)| *f == file && *n == name);
        match listed {
            Some((_, _, bound, _)) if lines > *bound => out.push(violation(
                file,
                at,
                format!(
                    "`{name}` is {lines} lines, past the {bound} tidy.rs allows it: shorten it, do not raise the bound"
                ),
            )),
            None if lines > MAX_FUNCTION_LINES => out.push(violation(
                file,
                at,
                format!(
                    "`{name}` is {lines} lines (at most {MAX_FUNCTION_LINES}): split it, or list it in tidy.rs with why"
                ),
            )),
            _ => {}
        }
    }
    out
}

/// A statement that writes rows of `actions`, as SQL text or through its sea-orm entity.
const ACTIONS_WRITES: &[&str] = &["UPDATE actions", "INSERT INTO actions", "DELETE FROM actions"];
const ACTIONS_ENTITY_WRITES: &[&str] =
    &["actions::ActiveModel", "actions::Entity::insert", "actions::Entity::update", "actions::Entity::delete"];

/// The state machine's files (`src/store/actions/`, one per family of operations, the `Op`
/// table in `mod.rs`). `read.rs` beside them reads `actions` and writes only log rows, so it is
/// not among them.
const STATE_MACHINE_FILES: &[&str] = &[
    "src/store/actions/mod.rs",
    "src/store/actions/enqueue.rs",
    "src/store/actions/claim.rs",
    "src/store/actions/complete.rs",
    "src/store/actions/edit.rs",
    "src/store/actions/sweep.rs",
    "src/store/actions/approval.rs",
];

/// Only the state machine ([`STATE_MACHINE_FILES`]) writes to `actions`: every change of an
/// action is one of its named operations (ARCHITECTURE.md, "The action state machine").
fn check_actions_writes(file: &str, text: &str) -> Vec<Violation> {
    let lexed = lex(text);
    let mut out = Vec::new();
    for (line, s) in &lexed.strings {
        if let Some(w) = ACTIONS_WRITES.iter().find(|w| s.contains(**w)) {
            out.push(violation(
                file,
                *line,
                format!("`{w}` outside the state machine: make it an operation of the state machine (store/actions/)"),
            ));
        }
    }
    for (i, code) in lexed.code.iter().enumerate() {
        if let Some(w) = ACTIONS_ENTITY_WRITES.iter().find(|w| code.contains(**w)) {
            out.push(violation(
                file,
                i + 1,
                format!("`{w}` outside the state machine: make it an operation of the state machine (store/actions/)"),
            ));
        }
    }
    out.sort_by_key(|v| v.line);
    out
}

/// Pieces of the due condition and of the claim order, as they would appear written out.
const WRITTEN_ONCE: &[(&str, &str)] = &[
    ("not_before <=", "the due condition (store::due_sql)"),
    ("expires_at IS NULL OR", "the due condition (store::due_sql)"),
    ("priority DESC", "the claim order (store::CLAIM_ORDER_SQL, claim_order_of, claim_rank)"),
];

/// The due condition and the claim order are written once, in `src/store/mod.rs`: no string
/// literal elsewhere spells them out.
fn check_written_once(file: &str, text: &str) -> Vec<Violation> {
    let mut out = Vec::new();
    for (line, s) in lex(text).strings {
        for (piece, what) in WRITTEN_ONCE {
            if s.contains(piece) {
                out.push(violation(file, line, format!("`{piece}` writes out {what} again: use it from there")));
            }
        }
    }
    out
}

/// The top-level module of the crate a file of `src/` belongs to: `src/x.rs` and every file
/// under `src/x/` are module `x`. The crate root (`main.rs`, `lib.rs`) is no module.
fn module_of(file: &str) -> Option<String> {
    let rest = file.strip_prefix("src/")?;
    let top = rest.split('/').next()?;
    let name = top.strip_suffix(".rs").unwrap_or(top);
    (rest.contains('/') || !matches!(name, "main" | "lib")).then(|| name.to_string())
}

/// The first segment of every `crate::` path in the code of `text` (a `crate::{a, b::c}` group
/// gives each of its names), with its line. `super::` is left out: from a file of module `x`
/// it names `x` or one of its files, never another module.
fn crate_paths(text: &str) -> Vec<(String, usize)> {
    let code = lex(text).code.join("\n");
    let line_at = |at: usize| code[..at].matches('\n').count() + 1;
    let ident = |s: &str| s.trim_start().chars().take_while(|c| is_ident(*c)).collect::<String>();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = find_token(&code[from..], "crate").map(|p| p + from) {
        from = at + "crate".len();
        let Some(path) = code[from..].trim_start().strip_prefix("::") else { continue };
        let path = path.trim_start();
        let Some(group) = path.strip_prefix('{') else {
            out.push((ident(path), line_at(at)));
            continue;
        };
        // The group's names at its own depth: each item's first segment.
        let (mut depth, mut item_start) = (0usize, true);
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => item_start = true,
                c if item_start && is_ident(c) && depth == 0 => {
                    item_start = false;
                    out.push((ident(&group[i..]), line_at(at)));
                }
                _ => {}
            }
        }
    }
    out.retain(|(name, _)| !name.is_empty());
    out
}

/// An import of one module by another: the first place it is made.
type Edges = std::collections::BTreeMap<(String, String), (String, usize)>;

/// The module graph of `files` (path, text): an edge `x -> y` wherever a file of module `x`
/// names `crate::y`, `y` being a module of `files` other than `x`.
fn module_graph(files: &[(String, String)]) -> Edges {
    let modules: std::collections::BTreeSet<String> = files.iter().filter_map(|(f, _)| module_of(f)).collect();
    let mut edges = Edges::new();
    for (file, text) in files {
        let Some(from) = module_of(file) else { continue };
        for (to, line) in crate_paths(text) {
            if to != from && modules.contains(&to) {
                edges.entry((from.clone(), to)).or_insert_with(|| (file.clone(), line));
            }
        }
    }
    edges
}

/// The modules `from` reaches through the edges, `from` included.
fn reach(edges: &Edges, from: &str) -> std::collections::BTreeSet<String> {
    let mut seen = std::collections::BTreeSet::from([from.to_string()]);
    let mut stack = vec![from.to_string()];
    while let Some(m) = stack.pop() {
        for (_, to) in edges.keys().filter(|(f, _)| *f == m) {
            if seen.insert(to.clone()) {
                stack.push(to.clone());
            }
        }
    }
    seen
}

/// No import cycle between modules: one violation per knot of modules that import each other,
/// naming its shortest cycle through its first module (`config -> adapters -> config`) at the
/// first import of that cycle.
fn check_module_cycles(files: &[(String, String)]) -> Vec<Violation> {
    let edges = module_graph(files);
    let mut out = Vec::new();
    let mut reported = std::collections::BTreeSet::new();
    let modules: std::collections::BTreeSet<&String> = edges.keys().map(|(f, _)| f).collect();
    for &start in &modules {
        if reported.contains(start) {
            continue;
        }
        // The shortest way back to `start`, breadth first.
        let mut back: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start.clone()]);
        let mut closing = None;
        while let Some(m) = queue.pop_front() {
            for (_, to) in edges.keys().filter(|(f, _)| *f == m) {
                if to == start {
                    closing = Some(m.clone());
                    break;
                }
                if !back.contains_key(to) {
                    back.insert(to.clone(), m.clone());
                    queue.push_back(to.clone());
                }
            }
            if closing.is_some() {
                break;
            }
        }
        let Some(mut m) = closing else { continue };
        let mut cycle = vec![m.clone()];
        while m != *start {
            m = back[&m].clone();
            cycle.insert(0, m.clone());
        }
        cycle.push(start.clone());
        let knot = reach(&edges, start);
        reported.extend(knot.into_iter().filter(|k| reach(&edges, k).contains(start)));
        let (file, line) = &edges[&(cycle[0].clone(), cycle[1].clone())];
        out.push(violation(file, *line, format!("import cycle between modules: {}", cycle.join(" -> "))));
    }
    out
}

/// One module's line of the drawn graph: where, the module, and what it imports (each with
/// the line naming it).
type Drawn = (usize, String, Vec<(usize, String)>);

/// ARCHITECTURE.md's module graph: the code block under `## Module graph`, one line per
/// module, `x -> a, b` (what `x` imports; a line may continue indented) or `x` alone, listed
/// top to bottom. Returns (line, module, what it imports with the line naming each).
fn doc_graph(arch: &str) -> Result<Vec<Drawn>, String> {
    let start = arch.find("## Module graph").ok_or("ARCHITECTURE.md has no `## Module graph`")?;
    let first = arch[..start].lines().count();
    let mut lines = arch[start..].lines().enumerate().map(|(i, l)| (first + i + 1, l));
    lines.by_ref().find(|(_, l)| l.starts_with("```")).ok_or("the module graph has no code block")?;
    let mut out: Vec<Drawn> = Vec::new();
    let names = |at: usize, list: &str| -> Vec<(usize, String)> {
        list.split(',').map(str::trim).filter(|n| !n.is_empty()).map(|n| (at, n.to_string())).collect()
    };
    for (at, line) in lines {
        if line.starts_with("```") {
            return Ok(out);
        }
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with(' ') {
            let last = out.last_mut().ok_or(format!("ARCHITECTURE.md:{at}: a continuation before any module"))?;
            last.2.extend(names(at, line));
            continue;
        }
        let (module, list) = line.split_once("->").unwrap_or((line, ""));
        out.push((at, module.trim().to_string(), names(at, list)));
    }
    Err("the module graph's code block does not end".into())
}

/// ARCHITECTURE.md's module graph is the code's: every module has its line, every arrow it
/// draws is an import and every import is drawn, and every arrow points down (to a module
/// listed below), so that the list is the layering and a cycle cannot be drawn.
fn check_module_graph(arch: &str, files: &[(String, String)]) -> Vec<Violation> {
    const DOC: &str = "ARCHITECTURE.md";
    let drawn = match doc_graph(arch) {
        Ok(d) => d,
        Err(e) => return vec![violation(DOC, 1, e)],
    };
    let edges = module_graph(files);
    let heading = arch.lines().position(|l| l.starts_with("## Module graph")).map_or(1, |i| i + 1);
    let modules: std::collections::BTreeSet<String> = files.iter().filter_map(|(f, _)| module_of(f)).collect();
    let place = |m: &str| drawn.iter().position(|(_, name, _)| name == m);
    let mut out = Vec::new();
    for m in &modules {
        if place(m).is_none() {
            out.push(violation(DOC, heading, format!("module `{m}` has no line in the module graph")));
        }
    }
    for (i, (at, from, tos)) in drawn.iter().enumerate() {
        if !modules.contains(from) {
            out.push(violation(DOC, *at, format!("the module graph names `{from}`, which is not a module of src/")));
        }
        for (at, to) in tos {
            if !edges.contains_key(&(from.clone(), to.clone())) {
                out.push(violation(
                    DOC,
                    *at,
                    format!("the module graph draws `{from} -> {to}`, which no import makes"),
                ));
            } else if place(to).is_some_and(|j| j <= i) {
                out.push(violation(DOC, *at, format!("`{from} -> {to}` points up: `{to}` is listed above `{from}`")));
            }
        }
    }
    for ((from, to), (file, line)) in &edges {
        let named = drawn.iter().any(|(_, f, tos)| f == from && tos.iter().any(|(_, t)| t == to));
        if !named {
            out.push(violation(DOC, heading, format!("`{from} -> {to}` ({file}:{line}) is not in the module graph")));
        }
    }
    out
}

/// Every `.rs` file under `src/` with its text, by path from the crate root.
fn source_files() -> Vec<(String, String)> {
    let root = Path::new(ROOT);
    rust_files(&root.join("src"))
        .iter()
        .map(|p| {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
            let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{rel}: {e}"));
            (rel, text)
        })
        .collect()
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())).flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Runs `check` over every Rust file under `dirs` (relative to the crate root) whose relative
/// path `applies` accepts; fails listing every violation.
fn enforce(dirs: &[&str], applies: impl Fn(&str) -> bool, check: impl Fn(&str, &str) -> Vec<Violation>) {
    let root = Path::new(ROOT);
    let mut all = Vec::new();
    let mut seen = 0;
    for dir in dirs {
        for path in rust_files(&root.join(dir)) {
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
            if !applies(&rel) {
                continue;
            }
            seen += 1;
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
            all.extend(check(&rel, &text));
        }
    }
    assert!(seen > 0, "no files under {dirs:?}: the check would pass vacuously");
    let report: Vec<String> = all.iter().map(Violation::to_string).collect();
    assert!(all.is_empty(), "{} violation(s):\n{}", all.len(), report.join("\n"));
}

#[test]
fn every_source_file_opens_with_a_doc_paragraph() {
    enforce(&["src", "migrations/src"], |_| true, check_module_doc);
}

/// The code that follows `src/`'s rules on the database: the library and the examples that
/// embed it (an example is what a user copies).
const CODE_DIRS: &[&str] = &["src", "examples"];

#[test]
fn only_the_store_uses_the_database_crates() {
    // migrations/ is the schema crate: sea-orm-migration is its whole point.
    enforce(CODE_DIRS, |f| !f.starts_with("src/store/"), check_database_crates);
}

#[test]
fn only_the_cli_prints_to_stdout() {
    // src/main.rs prints nothing to stdout either (its one message goes to stderr), so it gets
    // no exemption.
    enforce(&["src"], |f| !f.starts_with("src/cli/"), check_stdout);
}

#[test]
fn only_stdio_writes_to_stdout_and_stderr() {
    enforce(&["src"], |f| f != "src/cli/stdio.rs", check_std_streams);
}

#[test]
fn a_print_macro_or_stream_handle_past_stdio_is_reported() {
    let text = "//! x\n\
                fn f(cmd: &mut std::process::Command) {\n\
                \x20   cmd.stderr(std::process::Stdio::piped());\n\
                \x20   eprintln!(\"x\");\n\
                \x20   let _ = std::io::stderr();\n\
                \x20   eprint!(\"x\"); // eprintln! in a comment\n\
                \x20   println!(\"x\");\n\
                }\n";
    let lines: Vec<usize> = check_std_streams("src/x.rs", text).iter().map(|v| v.line).collect();
    assert_eq!(lines, [4, 5, 6, 7]);
}

#[test]
fn sql_text_lives_in_the_store() {
    enforce(CODE_DIRS, |f| !f.starts_with("src/store/"), check_sql);
}

#[test]
fn test_files_share_helpers_only_through_support() {
    enforce(&["tests/it"], |f| !f.starts_with("tests/it/support/") && f != "tests/it/main.rs", check_test_imports);
}

#[test]
fn every_invariant_names_a_test_that_exists() {
    let root = Path::new(ROOT);
    let arch = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let has_test = |file: &str, test: &str| {
        let text = std::fs::read_to_string(root.join("tests/it").join(format!("{file}.rs"))).unwrap_or_default();
        function_lengths(&text).iter().any(|(name, _, _)| name == test)
    };
    let found = check_invariants(&arch, &has_test);
    let report: Vec<String> = found.iter().map(Violation::to_string).collect();
    assert!(found.is_empty(), "{} violation(s):\n{}", found.len(), report.join("\n"));
}

#[test]
fn an_invariant_without_a_test_or_naming_a_missing_one_is_reported() {
    let arch = "# A\n\n## Invariants\n\nProse naming `x::y` is not a bullet.\n\n\
                - **Held.** Text\n  over two lines. Tested by `tick::real_one`.\n\
                - **Untested.** Nothing names a test.\n\
                - **Misnamed.** Tested by `tick::gone`, `nofile`.\n\n## Next\n\n- **Elsewhere.** Not checked.\n";
    let has_test = |file: &str, test: &str| file == "tick" && test == "real_one";
    let found: Vec<String> = check_invariants(arch, &has_test).iter().map(Violation::to_string).collect();
    assert_eq!(
        found,
        [
            "ARCHITECTURE.md:9: the invariant \"Untested.\" names no test (end it \"Tested by `file::test`.\")",
            "ARCHITECTURE.md:10: `tick::gone` is not a test in tests/it/",
            "ARCHITECTURE.md:10: `nofile` is not a test in tests/it/",
        ]
    );
    assert_eq!(check_invariants("# none", &has_test).len(), 1, "a missing section is reported");
}

#[test]
fn the_code_map_names_every_source_file_and_only_files_that_exist() {
    let root = Path::new(ROOT);
    let arch = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let files: Vec<String> = rust_files(&root.join("src"))
        .iter()
        .map(|p| p.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/"))
        .collect();
    assert!(files.len() > 40, "{files:?}");
    let found = check_code_map(&arch, root, &files);
    let report: Vec<String> = found.iter().map(Violation::to_string).collect();
    assert!(found.is_empty(), "{} violation(s):\n{}", found.len(), report.join("\n"));
}

#[test]
fn no_function_is_over_100_lines_but_the_listed_ones() {
    enforce(&["src"], |_| true, check_function_lengths);
    // Every listed function still exists and is still long: a stale entry is removed.
    let root = Path::new(ROOT);
    for (file, name, _, _) in LONG_FUNCTIONS {
        let text = std::fs::read_to_string(root.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let len = function_lengths(&text).into_iter().find(|(n, _, _)| n == name).map(|(_, _, l)| l);
        assert!(
            len.is_some_and(|l| l > MAX_FUNCTION_LINES),
            "{file}: `{name}` is listed as long but is {len:?} lines: take it off LONG_FUNCTIONS"
        );
    }
}

#[test]
fn only_the_state_machine_writes_to_actions() {
    // src/store/bench.rs fabricates the benchmarks' history in bulk, which no operation could
    // in a bench's time; the program never calls it (its module doc).
    enforce(CODE_DIRS, |f| !STATE_MACHINE_FILES.contains(&f) && f != "src/store/bench.rs", check_actions_writes);
    // A file renamed or gone from the list would leave its successor unchecked or exempt.
    for file in STATE_MACHINE_FILES {
        assert!(Path::new(ROOT).join(file).exists(), "{file} is in STATE_MACHINE_FILES but does not exist");
    }
}

#[test]
fn a_write_to_actions_outside_the_state_machine_is_reported() {
    let text = "//! UPDATE actions in a doc is prose\n\
                const A: &str = \"UPDATE actions SET part_key = 1\";\n\
                const B: &str = \"SELECT * FROM actions\"; // DELETE FROM actions\n\
                fn f() { let m = actions::ActiveModel { ..Default::default() }; }\n\
                const C: &str = \"UPDATE action_log SET x = 1\";\n";
    let lines: Vec<usize> = check_actions_writes("src/x.rs", text).iter().map(|v| v.line).collect();
    assert_eq!(lines, [2, 4]);
    // The reads beside the state machine are not exempt.
    assert!(!STATE_MACHINE_FILES.contains(&"src/store/actions/read.rs"));
}

#[test]
fn the_due_condition_and_the_claim_order_are_written_once() {
    enforce(&["src"], |f| f != "src/store/mod.rs", check_written_once);
}

#[test]
fn no_import_cycle_between_modules() {
    let files = source_files();
    assert!(module_graph(&files).len() > 20, "the graph is read");
    let found = check_module_cycles(&files);
    let report: Vec<String> = found.iter().map(Violation::to_string).collect();
    assert!(found.is_empty(), "{} violation(s):\n{}", found.len(), report.join("\n"));
}

#[test]
fn the_module_graph_in_architecture_is_the_code_s() {
    let arch = std::fs::read_to_string(Path::new(ROOT).join("ARCHITECTURE.md")).unwrap();
    let found = check_module_graph(&arch, &source_files());
    let report: Vec<String> = found.iter().map(Violation::to_string).collect();
    assert!(found.is_empty(), "{} violation(s):\n{}", found.len(), report.join("\n"));
}

#[test]
fn the_readme_command_table_matches_help() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let cmd = <orchestrator::cli::Cli as clap::CommandFactory>::command();
    let found = check_readme_commands("README.md", &readme, &cmd);
    let report: Vec<String> = found.iter().map(Violation::to_string).collect();
    assert!(found.is_empty(), "{} violation(s):\n{}", found.len(), report.join("\n"));
}

// Each check fails on a doctored input, so a pass above means something.

#[test]
fn a_file_without_its_doc_paragraph_is_reported() {
    assert_eq!(check_module_doc("src/x.rs", "//! Does x.\n\nfn x() {}\n"), []);
    let found = check_module_doc("src/x.rs", "/// an item doc is not a module doc\nfn x() {}\n");
    assert_eq!(
        found.iter().map(Violation::to_string).collect::<Vec<_>>(),
        ["src/x.rs:1: the file does not open with a `//!` paragraph saying what it is for"]
    );
    assert_eq!(check_module_doc("src/x.rs", "").len(), 1, "an empty file has no doc either");
}

#[test]
fn a_database_crate_outside_the_store_is_reported_at_its_line() {
    let text = "//! Talks of sea_orm in a comment: fine.\n\
                fn f() {\n\
                \x20   let filter = \"info,sqlx=warn,sea_orm=warn\"; // a log filter, not a use\n\
                \x20   let db: sea_orm::DatabaseConnection = todo!();\n\
                }\n\
                use sea_orm::{EntityTrait};\n\
                /* sqlx in a block comment */ fn g(_: my_sea_orm_like::X) {}\n";
    let found = check_database_crates("src/tick.rs", text);
    let at: Vec<String> = found.iter().map(Violation::to_string).collect();
    assert_eq!(
        at,
        ["src/tick.rs:4: `sea_orm` is used outside src/store/", "src/tick.rs:6: `sea_orm` is used outside src/store/"]
    );
}

#[test]
fn printing_to_stdout_outside_the_cli_is_reported() {
    let text = "//! x\n\
                fn f(cmd: &mut std::process::Command) {\n\
                \x20   eprintln!(\"to stderr: println!(..) in a string\");\n\
                \x20   cmd.stdout(std::process::Stdio::piped());\n\
                \x20   println!(\"hello\");\n\
                \x20   let _ = std::io::stdout();\n\
                \x20   print!(\"x\"); // println! in a comment\n\
                \x20   let out = stdout();\n\
                }\n";
    let lines: Vec<usize> = check_stdout("src/x.rs", text).iter().map(|v| v.line).collect();
    assert_eq!(lines, [5, 6, 7, 8]);
}

#[test]
fn sql_text_outside_the_store_is_reported() {
    let text = "//! SELECT x FROM y in a doc is prose\n\
                const A: &str = \"SELECT id FROM actions WHERE status = 'DLQ'\";\n\
                const B: &str = r#\"UPDATE control_flags\n    SET paused = 1\"#;\n\
                const C: &str = \"please select a file from the list\"; // SELECT .. FROM\n\
                const D: &[&str] = &[\"GET\", \"POST\", \"DELETE\"];\n\
                fn f() -> String { format!(\"DELETE FROM {} WHERE id = ?\", \"t\") }\n\
                const E: char = '\"'; const F: &str = \"INSERT INTO t VALUES (1)\";\n";
    let lines: Vec<usize> = check_sql("src/x.rs", text).iter().map(|v| v.line).collect();
    assert_eq!(lines, [2, 3, 7, 8]);
}

#[test]
fn an_example_speaking_sql_or_sea_orm_is_reported() {
    let text = "//! A bench: `CREATE DATABASE` in a doc is prose.\n\
                async fn f(stats: &sea_orm::DatabaseConnection, admin: &Store) {\n\
                \x20   admin.execute_unprepared(&format!(\"CREATE DATABASE {name}\")).await;\n\
                \x20   let sql = format!(\"SELECT count(*) FROM pg_stat_activity WHERE datname = '{}'\", n);\n\
                \x20   admin.bench().create_database(&name).await; // DROP SCHEMA x in a comment\n\
                }\n";
    let sql: Vec<usize> = check_sql("examples/bench.rs", text).iter().map(|v| v.line).collect();
    assert_eq!(sql, [3, 4]);
    let crates: Vec<String> =
        check_database_crates("examples/bench.rs", text).iter().map(Violation::to_string).collect();
    assert_eq!(crates, ["examples/bench.rs:2: `sea_orm` is used outside src/store/"]);
    // And the examples are among the files checked.
    assert!(rust_files(&Path::new(ROOT).join(CODE_DIRS[1])).iter().any(|p| p.ends_with("bench.rs")));
}

#[test]
fn a_test_file_importing_another_is_reported() {
    let text = "//! x\n\
                use crate::support::{TestDb, noop};\n\
                use crate::queue::noop; // crate::tick::ran in a comment\n\
                use crate::backend_tests;\n\
                fn f() { crate::tick::ran(); let s = \"crate::http_api::x\"; }\n";
    let lines: Vec<usize> = check_test_imports("tests/it/x.rs", text).iter().map(|v| v.line).collect();
    assert_eq!(lines, [3, 5]);
}

#[test]
fn a_code_map_that_disagrees_with_the_tree_is_reported() {
    let arch = "# A\n\n## Code map\n\n```\n\
                src/main.rs          thin\n\
                src/store/           the store\n\
                \x20 mod.rs             connect\n\
                \x20 gone.rs, lease.rs  one missing, one there\n\
                \x20                    a continuation line: mod.rs is prose here\n\
                src/config.rs        config\n\
                \x20 config/environment.rs  nested beside the file\n\
                src/adapters/        adapters\n\
                \x20 webhook/           a directory stands for its files\n\
                tests/it/            tests\n\
                \x20 hostile*.rs        a pattern\n\
                ```\n";
    let files: Vec<String> = [
        "src/main.rs",
        "src/store/mod.rs",
        "src/store/lease.rs",
        "src/store/notify.rs",
        "src/config.rs",
        "src/config/environment.rs",
        "src/adapters/webhook/mod.rs",
        "src/adapters/mod.rs",
    ]
    .map(String::from)
    .to_vec();
    let found: Vec<String> = check_code_map(arch, Path::new(ROOT), &files).iter().map(Violation::to_string).collect();
    assert_eq!(
        found,
        [
            "ARCHITECTURE.md:9: the code map names `src/store/gone.rs`, which does not exist",
            "ARCHITECTURE.md:1: `src/store/notify.rs` is not in the code map",
            "ARCHITECTURE.md:1: `src/adapters/mod.rs` is not in the code map",
        ]
    );
}

#[test]
fn a_long_function_is_reported_and_braces_in_strings_do_not_count() {
    let body = |n: usize| "    let _ = 1;\n".repeat(n);
    let text = format!(
        "//! x\nfn short() {{\n    let s = \"}}}}\"; let c = '}}'; // }}\n}}\n\
         pub async fn long(x: u8) -> u8 {{\n{}    x\n}}\n\
         fn declared();\n",
        body(99)
    );
    let lengths = function_lengths(&text);
    assert_eq!(lengths, [("short".to_string(), 2, 3), ("long".to_string(), 5, 102)]);
    let found: Vec<String> = check_function_lengths("src/x.rs", &text).iter().map(Violation::to_string).collect();
    assert_eq!(found, ["src/x.rs:5: `long` is 102 lines (at most 100): split it, or list it in tidy.rs with why"]);
    // A listed function past its bound (whichever is listed first).
    let (file, name, bound, _) = LONG_FUNCTIONS[0];
    let listed = format!("//! x\nfn {name}() {{\n{}}}\n", body(bound + 1));
    let found: Vec<String> = check_function_lengths(file, &listed).iter().map(Violation::to_string).collect();
    let lines = bound + 3;
    assert_eq!(
        found,
        [format!(
            "{file}:2: `{name}` is {lines} lines, past the {bound} tidy.rs allows it: shorten it, do not raise the bound"
        )]
    );
}

#[test]
fn a_due_condition_or_claim_order_written_out_again_is_reported() {
    let text = "//! not_before <= now in a doc is prose\n\
                const A: &str = \"SELECT id FROM actions WHERE status = 'PENDING' AND not_before <= $1\";\n\
                // ORDER BY priority DESC in a comment\n\
                const B: &str = \"ORDER BY f.priority DESC, f.not_before\";\n\
                const C: &str = \"ORDER BY created_at DESC\";\n";
    let lines: Vec<usize> = check_written_once("src/x.rs", text).iter().map(|v| v.line).collect();
    assert_eq!(lines, [2, 4]);
}

#[test]
fn a_readme_command_table_that_disagrees_with_help_is_reported() {
    let cmd = clap::Command::new("orchestrator")
        .subcommand(clap::Command::new("run-once"))
        .subcommand(clap::Command::new("status"))
        .subcommand(clap::Command::new("secret").hide(true))
        .subcommand(
            clap::Command::new("actions").subcommand(clap::Command::new("list")).subcommand(clap::Command::new("show")),
        );
    let readme = "# x\n\n## Commands\n\nGlobal options.\n\n\
                  | command | what it does |\n\
                  | --- | --- |\n\
                  | `run-once [--dry-run]` | one tick |\n\
                  | `actions list [--status S]`, `actions shoe ID` | actions |\n\
                  | `stauts` | typo |\n\
                  | `run-once` (`-` and `--x` are prose) | a command, then prose |\n\
                  | `pause \\| x` | not a command |\n\n\
                  ## Next\n";
    let found: Vec<String> =
        check_readme_commands("README.md", readme, &cmd).iter().map(Violation::to_string).collect();
    assert_eq!(
        found,
        [
            "README.md:10: the command table names `actions shoe`, which `--help` does not list",
            "README.md:11: the command table names `stauts`, which `--help` does not list",
            "README.md:13: the command table names `pause`, which `--help` does not list",
            "README.md:9: `status` is in `--help` but not in the command table",
            "README.md:9: `actions show` is in `--help` but not in the command table",
        ]
    );
    assert_eq!(check_readme_commands("README.md", "# no table\n", &cmd).len(), 1);
}

/// A small crate for the graph checks: `config` and `adapters` import each other (once through
/// a group spread over lines), `limits` imports `config`, and what is not an import is there
/// too (a comment, a string, `pub(crate)`, `super::`, a name that is no module).
fn synthetic_crate() -> Vec<(String, String)> {
    [
        ("src/lib.rs", "//! root\npub mod config;\npub mod adapters;\n"),
        ("src/main.rs", "//! main\nuse crate::config::Config;\n"),
        ("src/model.rs", "//! bottom\npub(crate) fn f() {} // crate::config in a comment\n"),
        ("src/config.rs", "//! x\nuse crate::{\n    adapters::Registry,\n    model,\n};\nuse crate::VERSION;\n"),
        ("src/config/key.rs", "//! x\nuse super::Config;\nconst S: &str = \"crate::limits\";\n"),
        ("src/adapters/mod.rs", "//! x\nmod webhook;\n"),
        ("src/adapters/webhook.rs", "//! x\n\nfn f() { let _ = crate::config::key::Key; }\n"),
        ("src/limits.rs", "//! x\nuse crate::config::parse_duration;\nuse crate::model::{self, Clock};\n"),
    ]
    .map(|(f, t)| (f.to_string(), t.to_string()))
    .to_vec()
}

#[test]
fn the_module_graph_is_read_from_code_only() {
    assert_eq!(module_of("src/config/key.rs").as_deref(), Some("config"));
    assert_eq!(module_of("src/limits.rs").as_deref(), Some("limits"));
    assert_eq!(module_of("src/lib.rs"), None);
    let edges: Vec<String> = module_graph(&synthetic_crate())
        .iter()
        .map(|((from, to), (file, line))| format!("{from} -> {to} ({file}:{line})"))
        .collect();
    assert_eq!(
        edges,
        [
            "adapters -> config (src/adapters/webhook.rs:3)",
            "config -> adapters (src/config.rs:2)",
            "config -> model (src/config.rs:2)",
            "limits -> config (src/limits.rs:2)",
            "limits -> model (src/limits.rs:3)",
        ]
    );
}

#[test]
fn an_import_cycle_between_modules_is_reported_naming_it() {
    let found: Vec<String> = check_module_cycles(&synthetic_crate()).iter().map(Violation::to_string).collect();
    assert_eq!(found, ["src/adapters/webhook.rs:3: import cycle between modules: adapters -> config -> adapters"]);
    // A longer cycle is named whole, once.
    let mut files = synthetic_crate();
    files.retain(|(f, _)| f != "src/adapters/webhook.rs");
    files.push(("src/model.rs".into(), "//! x\nuse crate::limits::Rate;\n".into()));
    let found: Vec<String> = check_module_cycles(&files).iter().map(Violation::to_string).collect();
    assert_eq!(found, ["src/config.rs:2: import cycle between modules: config -> model -> limits -> config"]);
}

#[test]
fn a_module_graph_that_disagrees_with_the_code_is_reported() {
    let files = synthetic_crate();
    let good = "# A\n\n## Module graph\n\n```\nlimits -> config,\n    model\nconfig -> adapters, model\nadapters\nmodel\n```\n";
    // The drawing of a cycle: the arrow back up is refused, whatever the imports.
    let found: Vec<String> = check_module_graph(good, &files).iter().map(Violation::to_string).collect();
    assert_eq!(
        found,
        ["ARCHITECTURE.md:3: `adapters -> config` (src/adapters/webhook.rs:3) is not in the module graph",]
    );
    let up = good.replace("adapters\nmodel", "adapters -> config\nmodel");
    let found: Vec<String> = check_module_graph(&up, &files).iter().map(Violation::to_string).collect();
    assert_eq!(found, ["ARCHITECTURE.md:9: `adapters -> config` points up: `config` is listed above `adapters`"]);
    let wrong =
        good.replace("config -> adapters, model\n", "config -> adapters, limits, rules\n").replace("model\n```", "```");
    let found: Vec<String> = check_module_graph(&wrong, &files).iter().map(Violation::to_string).collect();
    assert_eq!(
        found,
        [
            "ARCHITECTURE.md:3: module `model` has no line in the module graph",
            "ARCHITECTURE.md:8: the module graph draws `config -> limits`, which no import makes",
            "ARCHITECTURE.md:8: the module graph draws `config -> rules`, which no import makes",
            "ARCHITECTURE.md:3: `adapters -> config` (src/adapters/webhook.rs:3) is not in the module graph",
            "ARCHITECTURE.md:3: `config -> model` (src/config.rs:2) is not in the module graph",
        ]
    );
    assert_eq!(check_module_graph("# no graph\n", &files).len(), 1);
}
