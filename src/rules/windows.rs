//! The rules' maintenance windows: `open_window(types, seconds, reason)` and
//! `open_window(types, "payload.FIELD", value, seconds, reason)` (a breaker that holds WEBHOOK
//! for 30 minutes after a peer fails), their constructors and their check. A rule's window
//! lasts 1 s to [`MAX_RULE_WINDOW`]; longer needs an operator (`windows add`).
//!
//! Like every rule piece it touches no store: the tick applies the decision, fenced
//! (`decide.rs`), and the claim honours it (`store/windows.rs`).

use rhai::{Dynamic, INT, ImmutableString};
use serde_json::Value;

use super::Kind;
use crate::windows::{self, FieldMatch};

/// The longest window a rule may open.
pub const MAX_RULE_WINDOW: std::time::Duration = std::time::Duration::from_secs(86_400);

/// An `open_window` decision from its JSON (`types`: a type or a list of them; `field` with
/// `value`, or neither; `seconds`; `reason`); any other kind is unknown.
pub(super) fn kind_from_json(kind: &str, obj: &serde_json::Map<String, Value>) -> Result<Kind, String> {
    if kind != "open_window" {
        return Err(format!("unknown decision kind {kind:?}"));
    }
    let types: Vec<String> = match obj.get("types") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| {
                t.as_str().map(str::to_string).ok_or_else(|| format!("open_window `types`: {t} is not a type name"))
            })
            .collect::<Result<_, _>>()?,
        _ => return Err("open_window needs `types`: a type, or a list of them".into()),
    };
    windows::check_types(&types).map_err(|e| format!("open_window {e}"))?;
    let field = match (obj.get("field"), obj.get("value")) {
        (None | Some(Value::Null), None | Some(Value::Null)) => None,
        (Some(Value::String(f)), Some(v)) => {
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => return Err(format!("open_window `value`: {other} is not a text, number or bool")),
            };
            Some(windows::field_match(f, &v).map_err(|e| format!("open_window {e}"))?)
        }
        _ => return Err("open_window `field` (payload.FIELD) and `value` go together".into()),
    };
    let seconds = obj.get("seconds").and_then(Value::as_i64).unwrap_or(0);
    let max = MAX_RULE_WINDOW.as_secs();
    let seconds = u64::try_from(seconds)
        .ok()
        .filter(|s| (1..=max).contains(s))
        .ok_or_else(|| format!("open_window `seconds` must be 1 to {max}, got {seconds}"))?;
    let reason = obj.get("reason").and_then(Value::as_str).unwrap_or("");
    windows::check_reason(reason).map_err(|e| format!("open_window {e}"))?;
    Ok(Kind::OpenWindow { types, field, seconds })
}

/// What dedupe and cooldowns key an `open_window` on: its matcher.
pub(super) fn target(types: &[String], field: Option<&FieldMatch>) -> String {
    match field {
        None => format!("window:{}", types.join(",")),
        Some(f) => format!("window:{} {}={}", types.join(","), f.path, f.value),
    }
}

/// Registers `open_window` in the sandbox.
pub(super) fn register(e: &mut rhai::Engine) {
    fn open(types: Dynamic, seconds: INT, reason: ImmutableString) -> rhai::Map {
        super::sandbox::decision(
            "open_window",
            vec![("types", types), ("seconds", seconds.into()), ("reason", reason.into())],
        )
    }
    fn on_field(
        types: Dynamic,
        field: ImmutableString,
        value: Dynamic,
        seconds: INT,
        reason: ImmutableString,
    ) -> rhai::Map {
        let mut d = open(types, seconds, reason);
        d.insert("field".into(), field.into());
        d.insert("value".into(), value);
        d
    }
    e.register_fn("open_window", open);
    e.register_fn("open_window", on_field);
    // Each with an optional last argument, its priority.
    e.register_fn("open_window", |types: Dynamic, seconds: INT, reason: ImmutableString, priority: INT| {
        let mut d = open(types, seconds, reason);
        d.insert("priority".into(), priority.into());
        d
    });
    e.register_fn(
        "open_window",
        |types: Dynamic,
         field: ImmutableString,
         value: Dynamic,
         seconds: INT,
         reason: ImmutableString,
         priority: INT| {
            let mut d = on_field(types, field, value, seconds, reason);
            d.insert("priority".into(), priority.into());
            d
        },
    );
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: Value) -> Result<Kind, String> {
        super::super::decision_from_json("breaker", &v).map(|d| d.kind)
    }

    #[test]
    fn open_window_decisions_are_checked_and_capped() {
        let k = parse(json!({"kind": "open_window", "types": "WEBHOOK", "seconds": 1800, "reason": "peer down"}));
        assert_eq!(k, Ok(Kind::OpenWindow { types: vec!["WEBHOOK".into()], field: None, seconds: 1800 }));
        let k = parse(json!({"kind": "open_window", "types": ["WEBHOOK"], "field": "payload.peer", "value": 7,
                             "seconds": 60, "reason": "x"}))
        .unwrap();
        assert_eq!(k.target(), "window:WEBHOOK payload.peer=7");
        let err = |v: Value| parse(v).unwrap_err();
        assert!(
            err(json!({"kind": "open_window", "types": "WEBHOOK", "seconds": 86_401, "reason": "x"}))
                .contains("`seconds` must be 1 to 86400")
        );
        assert!(
            err(json!({"kind": "open_window", "types": "bad type", "seconds": 60, "reason": "x"})).contains("types")
        );
        assert!(
            err(json!({"kind": "open_window", "types": "WEBHOOK", "seconds": 60, "reason": " "})).contains("reason")
        );
        assert!(
            err(json!({"kind": "open_window", "types": "WEBHOOK", "field": "payload.p", "seconds": 60, "reason": "x"}))
                .contains("go together")
        );
        assert!(err(json!({"kind": "open_windows", "reason": "x"})).contains("unknown decision kind"));
    }
}
