//! The decision pipeline, after the rules ran: dedupe by (kind, target) keeping the highest
//! priority (an alert's target is its key, and its rule counts too: `Decision::dedupe_key`), sort by priority (descending) then rule name, cap at `max_decisions_per_tick`,
//! apply the cooldown, hold back what a paused system must not do. Every decision that does not
//! survive is kept with the reason it was suppressed.
//!
//! Pure: the cooldowns come in as a set, nothing is read or written.

use std::collections::BTreeSet;

use super::Decision;

/// Why a decision was not applied: the model's vocabulary, so that the store can read it back.
pub use crate::model::Suppressed;

/// A decision and what the pipeline made of it.
#[derive(Clone, Debug)]
pub struct Planned {
    pub decision: Decision,
    /// `None`: to be applied.
    pub suppressed: Option<Suppressed>,
}

/// Runs the pipeline. `cooling` holds the (rule, kind, target) still in their cooldown.
pub fn plan(
    decisions: Vec<Decision>,
    max: usize,
    cooling: &BTreeSet<(String, String, String)>,
    paused: bool,
) -> Vec<Planned> {
    let mut sorted = decisions;
    sorted.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.rule.cmp(&b.rule)));
    let mut seen: BTreeSet<(String, String, String)> = BTreeSet::new();
    let mut out = Vec::with_capacity(sorted.len());
    let mut kept = 0usize;
    for d in sorted {
        let key = d.dedupe_key();
        let suppressed = if !seen.insert(key.clone()) {
            Some(Suppressed::Dedupe)
        } else if kept >= max {
            Some(Suppressed::Cap)
        } else {
            kept += 1;
            if cooling.contains(&(d.rule.clone(), key.0, key.1)) {
                Some(Suppressed::Cooldown)
            } else if paused && !d.kind.allowed_while_paused() {
                Some(Suppressed::Paused)
            } else {
                None
            }
        };
        out.push(Planned { decision: d, suppressed });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Kind;

    fn d(rule: &str, kind: Kind, priority: u8) -> Decision {
        Decision { rule: rule.into(), kind, priority, reason: "r".into() }
    }

    #[test]
    fn dedupe_sort_cap_cooldown_paused() {
        let ds = vec![
            d("b", Kind::Retry { id: 1 }, 3),
            d("a", Kind::Retry { id: 1 }, 7),
            d("c", Kind::Rebalance, 9),
            d("a", Kind::Dlq { id: 2 }, 7),
            d("z", Kind::Cancel { id: 3 }, 1),
            d("y", Kind::Resume, 1),
        ];
        let cooling: BTreeSet<_> = [("a".to_string(), "dlq".to_string(), "2".to_string())].into();
        let p = plan(ds, 3, &cooling, true);
        let got: Vec<(String, &str, Option<&str>)> = p
            .iter()
            .map(|p| (p.decision.rule.clone(), p.decision.kind.name(), p.suppressed.map(|s| s.as_str())))
            .collect();
        assert_eq!(
            got,
            vec![
                ("c".into(), "rebalance", Some("paused")),
                ("a".into(), "retry", Some("paused")),
                ("a".into(), "dlq", Some("cooldown")),
                ("b".into(), "retry", Some("dedupe")),
                ("y".into(), "resume", Some("cap")),
                ("z".into(), "cancel", Some("cap")),
            ]
        );
    }

    #[test]
    fn alerts_are_one_per_rule_and_key_whatever_their_message() {
        let alert = |rule: &str, message: &str, key: &str| {
            let kind =
                Kind::Alert { severity: crate::model::Severity::Warning, message: message.into(), key: key.into() };
            d(rule, kind, 5)
        };
        let ds = vec![
            alert("a", "3 bad ticks", "bad_ticks"),
            alert("a", "4 bad ticks", "bad_ticks"),
            alert("b", "3 bad ticks", "bad_ticks"),
            alert("a", "other", "other"),
        ];
        let cooling: BTreeSet<_> = [("b".to_string(), "alert".to_string(), "bad_ticks".to_string())].into();
        let got: Vec<(String, String, Option<&str>)> = plan(ds, 10, &cooling, false)
            .iter()
            .map(|p| (p.decision.rule.clone(), p.decision.kind.target(), p.suppressed.map(|s| s.as_str())))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a".into(), "bad_ticks".into(), None),
                ("a".into(), "bad_ticks".into(), Some("dedupe")),
                ("a".into(), "other".into(), None),
                ("b".into(), "bad_ticks".into(), Some("cooldown")),
            ]
        );
    }
}
