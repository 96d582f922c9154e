//! How a tick ends: its status and the notes of its ledger row, judged from what its stages
//! reported. Pure: no store, no clock; the tick gathers the facts and writes the row.
//!
//! The counts have columns of their own; the notes say what the counts cannot: a brake (a
//! throttle, a full limit, the deadline, a lost lease), writes the fence refused, and for an
//! idle tick whether work is waiting for its time, so nothing hides the queue.

use std::time::Duration;

use crate::model::TickStatus;
use crate::services::dispatcher::{Drained, LeftIdle};

/// What a tick's stages reported, past the decisions.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// This instance executes (false: `run --no-execute`, whose counts are the workers').
    pub execute: bool,
    /// Due actions at the snapshot.
    pub due_now: i64,
    /// Pending and retrying actions at the snapshot, due or not.
    pub queued: i64,
    pub drained: Drained,
    /// The cap an applied `throttle` set below the tick's budget, and the rules that set it.
    pub throttled_to: Option<u32>,
    pub throttled_by: Vec<String>,
    /// `max_tick_seconds`, when the tick ran into it.
    pub deadline_reached: Option<Duration>,
    pub lease_lost: bool,
    /// Attempts this instance ran between its previous tick and this one, as new work woke it
    /// (attempted, succeeded): in no tick's counts, so the note says them.
    pub ran_between: (u32, u32),
}

impl Facts {
    /// The throttle held work back: it used its whole allowance and more was due than it
    /// allowed.
    fn held_back(&self) -> Option<u32> {
        let started = self.drained.attempted + self.drained.unstarted;
        self.throttled_to.filter(|n| started >= *n && self.due_now > i64::from(*n))
    }

    /// The work-conserving invariant needs checking: work was due at the snapshot, the tick had
    /// budget and no brake, and nothing ran (what the decisions shed or postponed by name is no
    /// longer due: [`LeftIdle`] counts what still is).
    pub fn needs_conserving_check(&self) -> bool {
        let d = &self.drained;
        self.execute
            && d.attempted == 0
            && d.unstarted == 0
            && self.held_back().is_none()
            && d.store_error.is_none()
            && !self.lease_lost
            && self.due_now > 0
    }

    /// The tick stopped on its own budget (`max_actions_per_tick` or the deadline, not a
    /// throttle) rather than on an empty queue: the daemon starts the next one at once.
    pub fn budget_spent(&self) -> bool {
        let d = &self.drained;
        self.execute
            && d.store_error.is_none()
            && !self.lease_lost
            && ((d.remaining == 0 && self.throttled_to.is_none()) || self.deadline_reached.is_some())
    }

    /// The status, and `notes` (the earlier stages') with this tick's own added.
    pub fn judge(&self, idle: &LeftIdle, mut notes: Vec<String>) -> (TickStatus, Vec<String>) {
        let d = &self.drained;
        if !self.execute {
            notes.push(format!(
                "leader only (--no-execute): {} outcome(s) recorded by workers since the last tick",
                d.attempted
            ));
        }
        if d.unstarted > 0 {
            notes.push(format!("{} claimed action(s) returned to PENDING unstarted", d.unstarted));
        }
        let (between, between_ok) = self.ran_between;
        if between > 0 {
            notes
                .push(format!("{between} attempt(s) ran since the last tick as work arrived ({between_ok} succeeded)"));
        }
        if let Some(max) = self.deadline_reached {
            notes.push(format!("max_tick_seconds ({:.1}s) reached", max.as_secs_f64()));
        }
        if self.lease_lost {
            notes.push("lease lost mid-tick: stopped starting actions".into());
        }
        if d.rejected_writes > 0 {
            notes.push(format!("{} fenced write(s) rejected", d.rejected_writes));
        }
        let held_back = self.held_back();
        if let Some(n) = held_back {
            let by = self.throttled_by.join(", ");
            notes.insert(0, format!("throttled to {n} by rule {by} ({} due at the snapshot)", self.due_now));
        }
        if idle.held > 0 && (idle.held_by_windows.is_empty() || !idle.held_by.is_empty()) {
            notes.push(format!("held by limits: {}", idle.held_by.join(", ")));
        }
        if !idle.held_by_windows.is_empty() {
            notes.push(format!("held by windows: {}", idle.held_by_windows.join(", ")));
        }
        if idle.unheld > 0 {
            tracing::error!(due = idle.unheld, "work-conserving invariant broken: due work left idle");
            notes.push(format!("work-conserving invariant broken: {} due action(s) left idle", idle.unheld));
        }
        let status = if let Some(e) = &d.store_error {
            notes.push(format!("could not record outcomes: {e}"));
            TickStatus::Fail
        } else if d.attempted > 0 && d.succeeded < d.attempted {
            TickStatus::Partial
        } else if held_back.is_some() || idle.held > 0 {
            TickStatus::Throttled
        } else if d.attempted == 0 {
            TickStatus::Idle
        } else {
            TickStatus::Success
        };
        if status == TickStatus::Idle {
            notes.insert(0, self.idle_note());
        }
        (status, notes)
    }

    /// What an idle tick says first: whether work waits for workers, for its time, or not at all.
    fn idle_note(&self) -> String {
        let waiting = self.queued - self.due_now;
        if !self.execute && self.due_now > 0 {
            format!("{} due, waiting for workers", self.due_now)
        } else if waiting > 0 && self.due_now == 0 {
            format!("nothing due ({waiting} waiting for their not_before)")
        } else {
            "nothing due".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ran(attempted: u32, succeeded: u32) -> Drained {
        Drained { attempted, succeeded, remaining: 100, ..Drained::default() }
    }

    fn facts(due_now: i64, drained: Drained) -> Facts {
        Facts { execute: true, due_now, queued: due_now, drained, ..Facts::default() }
    }

    #[test]
    fn counts_make_the_status() {
        let none = LeftIdle::default();
        assert_eq!(facts(3, ran(3, 3)).judge(&none, vec![]).0, TickStatus::Success);
        assert_eq!(facts(3, ran(3, 2)).judge(&none, vec![]).0, TickStatus::Partial);
        let failed = Drained { store_error: Some("disk full".into()), ..ran(1, 1) };
        let (status, notes) = facts(3, failed).judge(&none, vec!["rule note".into()]);
        assert_eq!(status, TickStatus::Fail);
        assert_eq!(notes, ["rule note", "could not record outcomes: disk full"]);
    }

    #[test]
    fn an_idle_tick_says_what_waits() {
        let none = LeftIdle::default();
        assert_eq!(facts(0, ran(0, 0)).judge(&none, vec![]).1, ["nothing due"]);
        let later = Facts { queued: 4, ..facts(0, ran(0, 0)) };
        assert_eq!(later.judge(&none, vec![]).1, ["nothing due (4 waiting for their not_before)"]);
        let leader = Facts { execute: false, ..facts(5, ran(0, 0)) };
        assert_eq!(
            leader.judge(&none, vec![]).1,
            [
                "5 due, waiting for workers",
                "leader only (--no-execute): 0 outcome(s) recorded by workers since the last tick"
            ]
        );
        assert!(!leader.needs_conserving_check(), "a leader that executes nothing leaves due work to the workers");
        let between = Facts { ran_between: (3, 2), ..facts(0, ran(0, 0)) };
        assert_eq!(
            between.judge(&none, vec![]),
            (
                TickStatus::Idle,
                vec![
                    "nothing due".to_string(),
                    "3 attempt(s) ran since the last tick as work arrived (2 succeeded)".into()
                ]
            ),
            "what ran between ticks is in no tick's counts: the next one says it"
        );
    }

    #[test]
    fn brakes_are_named_and_throttle_the_status() {
        let throttled = Facts { throttled_to: Some(2), throttled_by: vec!["brake".into()], ..facts(9, ran(2, 2)) };
        let (status, notes) = throttled.judge(&LeftIdle::default(), vec![]);
        assert_eq!(status, TickStatus::Throttled);
        assert_eq!(notes[0], "throttled to 2 by rule brake (9 due at the snapshot)");
        assert!(!throttled.budget_spent(), "a throttle is a brake, not a spent budget");

        let idle = facts(7, ran(0, 0));
        assert!(idle.needs_conserving_check());
        let held = LeftIdle {
            held: 7,
            held_by: vec!["SLOW max_running 2 (7 waiting)".into()],
            unheld: 0,
            ..Default::default()
        };
        let (status, notes) = idle.judge(&held, vec![]);
        assert_eq!(status, TickStatus::Throttled);
        assert_eq!(notes, ["held by limits: SLOW max_running 2 (7 waiting)"]);
    }

    #[test]
    fn due_work_left_idle_with_no_brake_is_a_broken_invariant() {
        let left = LeftIdle { held: 0, held_by: vec![], unheld: 3, ..Default::default() };
        let (status, notes) = facts(3, ran(0, 0)).judge(&left, vec![]);
        assert_eq!(status, TickStatus::Idle);
        assert_eq!(notes, ["nothing due", "work-conserving invariant broken: 3 due action(s) left idle"]);
    }

    #[test]
    fn a_spent_budget_starts_the_next_tick_at_once() {
        assert!(Facts { drained: Drained { remaining: 0, ..ran(5, 5) }, ..facts(9, ran(0, 0)) }.budget_spent());
        assert!(!facts(9, ran(5, 5)).budget_spent(), "budget left: the queue ran dry");
        let deadline = Facts { deadline_reached: Some(Duration::from_secs(30)), ..facts(9, ran(5, 5)) };
        assert!(deadline.budget_spent());
        assert!(deadline.judge(&LeftIdle::default(), vec![]).1.contains(&"max_tick_seconds (30.0s) reached".into()));
        let lost = Facts { lease_lost: true, ..deadline };
        assert!(!lost.budget_spent(), "a lost lease stops the daemon's next tick from starting at once");
    }
}
