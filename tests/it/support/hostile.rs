//! The hostile-input corpus: its cases, loaded from files, and the escapes they are written in.

use std::path::Path;

use orchestrator::store::{ActionFilter, Store};

/// Expands the corpus' generators: `@big:N`, `@nested:N`, `@long:N`, `@types:N` (N distinct
/// action types, comma-separated: `T0,T1,...`; `@types:N:FROM` starts at `T<FROM>`, so that a
/// long list can be split over arguments, each under the kernel's 128 KiB).
pub fn expand(text: &str) -> String {
    let mut out = text.to_string();
    for (tag, make) in [
        ("@big:", (|n: usize| format!("{{\"a\":\"{}\"}}", "x".repeat(n))) as fn(usize) -> String),
        ("@nested:", |n| format!("{{\"a\":{}{}}}", "[".repeat(n), "]".repeat(n))),
        ("@long:", |n| "k".repeat(n)),
    ] {
        while let Some(start) = out.find(tag) {
            let digits: String = out[start + tag.len()..].chars().take_while(char::is_ascii_digit).collect();
            let n: usize = digits.parse().expect("a number after the generator tag");
            out.replace_range(start..start + tag.len() + digits.len(), &make(n));
        }
    }
    while let Some(start) = out.find("@types:") {
        let spec: String =
            out[start + "@types:".len()..].chars().take_while(|c| c.is_ascii_digit() || *c == ':').collect();
        let (n, from) = spec.split_once(':').unwrap_or((&spec, "0"));
        let (n, from): (usize, usize) = (n.parse().expect("a count"), from.parse().expect("a first number"));
        let list = (from..from + n).map(|i| format!("T{i}")).collect::<Vec<_>>().join(",");
        out.replace_range(start..start + "@types:".len() + spec.len(), &list);
    }
    out
}

pub fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

/// Every case of every `*.yaml` file in `tests/<dir>`, in file order, with its file's stem.
pub fn load_cases<T: serde::de::DeserializeOwned>(dir: &str) -> Vec<(String, T)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut cases = Vec::new();
    for f in files.into_iter().filter(|f| f.extension().is_some_and(|e| e == "yaml")) {
        let text = std::fs::read_to_string(&f).unwrap();
        let list: Vec<T> = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let file = f.file_stem().unwrap().to_string_lossy().into_owned();
        cases.extend(list.into_iter().map(|c| (file.clone(), c)));
    }
    cases
}

/// Everything an operator could see in the database, as one comparable value: a hostile input
/// is refused when this is the same before and after it.
pub async fn visible_state(store: &Store) -> serde_json::Value {
    serde_json::json!({
        "flags": store.flags().get().await.unwrap(),
        "lease": store.lease().get("orchestrator").await.unwrap(),
        "actions": store.actions().list_actions(&ActionFilter { limit: 1_000_000, ..Default::default() }).await.unwrap(),
        "ticks": store.ledger().recent_ticks(1_000_000).await.unwrap(),
        "logs": store.history().logs(None, 1_000_000).await.unwrap(),
        "limits": store.limits().list().await.unwrap(),
    })
}
