//! The Rhai engine rules run in: strict variables, limits on operations, call depth and
//! string/array/map sizes, no module loading (so no file access: Rhai's core has no file I/O),
//! no `eval`, and a wall-clock budget per rule enforced from `on_progress` (evaluation is
//! synchronous, so a timer cannot interrupt it). Also the decision constructors.

use std::cell::Cell;
use std::time::{Duration, Instant};

use rhai::{Dynamic, EvalAltResult, INT, ImmutableString, Map};

use super::RulesConfig;

thread_local! {
    /// The deadline of the rule being evaluated on this thread.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Checking the clock every operation would cost more than the rule; every 256 is enough.
const CLOCK_EVERY: u64 = 256;
const BUDGET_TOKEN: &str = "wall-clock budget exceeded";

/// Runs `f` with a wall-clock budget for the rule evaluated inside it.
pub fn with_budget<T>(budget: Duration, f: impl FnOnce() -> T) -> T {
    DEADLINE.with(|d| d.set(Some(Instant::now() + budget)));
    let out = f();
    DEADLINE.with(|d| d.set(None));
    out
}

/// A failure as one line for a diagnostic.
pub fn describe(e: &EvalAltResult, budget: Duration) -> String {
    match e {
        EvalAltResult::ErrorTerminated(token, _) if token.to_string() == BUDGET_TOKEN => {
            format!("stopped: the rule exceeded its wall-clock budget of {} ms", budget.as_millis())
        }
        EvalAltResult::ErrorTooManyOperations(_) => "stopped: the rule exceeded max_operations".into(),
        EvalAltResult::ErrorStackOverflow(_) => {
            "stopped: the rule exceeded max_call_depth (call stack too deep)".into()
        }
        EvalAltResult::ErrorDataTooLarge(what, _) => format!("stopped: {what} too large for the sandbox limits"),
        other => {
            // Rhai appends " (line L, position C)"; the diagnostic says where already.
            let text = other.to_string();
            match text.rfind(" (line ") {
                Some(i) => text[..i].to_string(),
                None => text,
            }
        }
    }
}

/// The sandboxed engine with the decision constructors registered.
pub fn engine(cfg: &RulesConfig) -> rhai::Engine {
    let mut e = rhai::Engine::new();
    e.set_strict_variables(true);
    e.set_max_operations(cfg.max_operations);
    e.set_max_call_levels(cfg.max_call_depth);
    e.set_max_expr_depths(64, 64);
    e.set_max_string_size(cfg.max_string_size);
    e.set_max_array_size(cfg.max_array_size);
    e.set_max_map_size(cfg.max_map_size);
    e.set_max_modules(0);
    e.set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
    e.disable_symbol("eval");
    e.on_print(|s| tracing::info!(message = s, "rule print"));
    e.on_debug(|s, _, pos| tracing::debug!(message = s, line = pos.line(), "rule debug"));
    e.on_progress(|ops| {
        if ops % CLOCK_EVERY == 0 {
            let late = DEADLINE.with(|d| d.get().is_some_and(|t| Instant::now() > t));
            if late {
                return Some(Dynamic::from(BUDGET_TOKEN));
            }
        }
        None
    });
    register_constructors(&mut e);
    register_schedule_constructors(&mut e);
    register_enqueue_for_approval(&mut e);
    super::windows::register(&mut e);
    e
}

/// pause_schedule(name, reason[, priority]) and resume_schedule(name, reason[, priority]).
fn register_schedule_constructors(e: &mut rhai::Engine) {
    for kind in ["pause_schedule", "resume_schedule"] {
        e.register_fn(kind, move |name: ImmutableString, reason: ImmutableString| {
            decision(kind, vec![("name", name.into()), ("reason", reason.into())])
        });
        e.register_fn(kind, move |name: ImmutableString, reason: ImmutableString, priority: INT| {
            decision(kind, vec![("name", name.into()), ("reason", reason.into()), ("priority", priority.into())])
        });
    }
}

pub(super) fn decision(kind: &str, fields: Vec<(&str, Dynamic)>) -> Map {
    let mut m = Map::new();
    m.insert("kind".into(), kind.into());
    for (k, v) in fields {
        m.insert(k.into(), v);
    }
    m
}

/// enqueue_for_approval(type, payload, key, reason): an enqueue whose action waits for an
/// operator's approval (`actions approve`) before it can run.
fn register_enqueue_for_approval(e: &mut rhai::Engine) {
    e.register_fn(
        "enqueue_for_approval",
        |t: ImmutableString, payload: Map, key: ImmutableString, reason: ImmutableString| {
            decision(
                "enqueue",
                vec![
                    ("type", t.into()),
                    ("payload", payload.into()),
                    ("key", key.into()),
                    ("reason", reason.into()),
                    ("approval", true.into()),
                ],
            )
        },
    );
}

fn register_constructors(e: &mut rhai::Engine) {
    for kind in ["retry", "dlq", "cancel", "force_run"] {
        e.register_fn(kind, move |id: INT, reason: ImmutableString| {
            decision(kind, vec![("id", id.into()), ("reason", reason.into())])
        });
        e.register_fn(kind, move |id: INT, reason: ImmutableString, priority: INT| {
            decision(kind, vec![("id", id.into()), ("reason", reason.into()), ("priority", priority.into())])
        });
    }
    e.register_fn("reprioritize", |id: INT, to: INT, reason: ImmutableString| {
        decision("reprioritize", vec![("id", id.into()), ("to", to.into()), ("reason", reason.into())])
    });
    e.register_fn("reprioritize", |id: INT, to: INT, reason: ImmutableString, priority: INT| {
        decision(
            "reprioritize",
            vec![("id", id.into()), ("to", to.into()), ("reason", reason.into()), ("priority", priority.into())],
        )
    });
    e.register_fn("postpone", |id: INT, seconds: INT, reason: ImmutableString| {
        decision("postpone", vec![("id", id.into()), ("seconds", seconds.into()), ("reason", reason.into())])
    });
    e.register_fn("postpone", |id: INT, seconds: INT, reason: ImmutableString, priority: INT| {
        decision(
            "postpone",
            vec![
                ("id", id.into()),
                ("seconds", seconds.into()),
                ("reason", reason.into()),
                ("priority", priority.into()),
            ],
        )
    });
    for kind in ["rebalance", "pause", "resume"] {
        e.register_fn(kind, move |reason: ImmutableString| decision(kind, vec![("reason", reason.into())]));
        e.register_fn(kind, move |reason: ImmutableString, priority: INT| {
            decision(kind, vec![("reason", reason.into()), ("priority", priority.into())])
        });
    }
    e.register_fn("throttle", |n: INT, reason: ImmutableString| {
        decision("throttle", vec![("n", n.into()), ("reason", reason.into())])
    });
    e.register_fn("throttle", |n: INT, reason: ImmutableString, priority: INT| {
        decision("throttle", vec![("n", n.into()), ("reason", reason.into()), ("priority", priority.into())])
    });
    // set_limit(type, field, value, seconds, reason[, priority]): value a whole number, or
    // "N/PERIOD" for a rate.
    fn set_limit(
        t: ImmutableString,
        field: ImmutableString,
        value: Dynamic,
        seconds: INT,
        reason: ImmutableString,
    ) -> Map {
        decision(
            "set_limit",
            vec![
                ("type", t.into()),
                ("field", field.into()),
                ("value", value),
                ("seconds", seconds.into()),
                ("reason", reason.into()),
            ],
        )
    }
    e.register_fn("set_limit", set_limit);
    e.register_fn(
        "set_limit",
        |t: ImmutableString,
         field: ImmutableString,
         value: Dynamic,
         seconds: INT,
         reason: ImmutableString,
         priority: INT| {
            let mut d = set_limit(t, field, value, seconds, reason);
            d.insert("priority".into(), priority.into());
            d
        },
    );
    e.register_fn("enqueue", |t: ImmutableString, payload: Map, key: ImmutableString, reason: ImmutableString| {
        decision(
            "enqueue",
            vec![("type", t.into()), ("payload", payload.into()), ("key", key.into()), ("reason", reason.into())],
        )
    });
    e.register_fn(
        "enqueue",
        |t: ImmutableString, payload: Map, key: ImmutableString, reason: ImmutableString, priority: INT| {
            decision(
                "enqueue",
                vec![
                    ("type", t.into()),
                    ("payload", payload.into()),
                    ("key", key.into()),
                    ("reason", reason.into()),
                    ("priority", priority.into()),
                ],
            )
        },
    );
    e.register_fn("alert", |severity: ImmutableString, message: ImmutableString| {
        decision("alert", vec![("severity", severity.into()), ("message", message.into())])
    });
    e.register_fn("alert", |severity: ImmutableString, message: ImmutableString, priority: INT| {
        decision(
            "alert",
            vec![("severity", severity.into()), ("message", message.into()), ("priority", priority.into())],
        )
    });
    // alert(severity, message, key[, priority]): the key names the alert for its cooldown and
    // dedupe (default: the severity), so a message that carries a count is still one alert.
    e.register_fn("alert", |severity: ImmutableString, message: ImmutableString, key: ImmutableString| {
        decision("alert", vec![("severity", severity.into()), ("message", message.into()), ("key", key.into())])
    });
    e.register_fn(
        "alert",
        |severity: ImmutableString, message: ImmutableString, key: ImmutableString, priority: INT| {
            decision(
                "alert",
                vec![
                    ("severity", severity.into()),
                    ("message", message.into()),
                    ("key", key.into()),
                    ("priority", priority.into()),
                ],
            )
        },
    );
}
