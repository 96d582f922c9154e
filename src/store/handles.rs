//! The store's surface grouped by concern: one handle per noun over the one pool, so that a
//! reader finds an operation by what it is about (`store.actions().claim(..)`,
//! `store.limits().set_limit(..)`, `store.ledger().begin_tick(..)`). Each handle borrows the
//! [`Store`]; it holds nothing of its own and costs nothing to make.
//!
//! The operations live with their SQL in the files of each concern (`actions/`, `limits/`,
//! `ledger.rs`, ...), each as `impl handles::X<'_>`; this file only names the handles. `Store`
//! itself keeps what belongs to the pool: connect, migrate, the clock, ping, close, backup.
//! It must not hold an operation.

use super::Store;

macro_rules! handles {
    ($($(#[$doc:meta])* $accessor:ident => $name:ident;)+) => {
        $(
            $(#[$doc])*
            #[derive(Clone, Copy, Debug)]
            pub struct $name<'a> {
                pub(in crate::store) store: &'a Store,
            }
        )+

        impl Store {
            $(
                $(#[$doc])*
                pub fn $accessor(&self) -> $name<'_> {
                    $name { store: self }
                }
            )+
        }
    };
}

handles! {
    /// The actions: the state machine's operations (enqueue, claim, complete, edits, sweeps),
    /// the dry pick, and the reads and counts of actions.
    actions => Actions;
    /// Limits per type: the base and its overrides, a config's write, the usage view.
    limits => Limits;
    /// The ledger: a tick's row opened and closed, ticks read back, their stats.
    ledger => Ledger;
    /// The rules' records: rule states, cooldowns, decisions.
    decisions => Decisions;
    /// The control flags: paused, killed, proof mode, the rules' throttle.
    flags => Flags;
    /// The lease: acquire, release, read, and whether a fence still holds.
    lease => Lease;
    /// The worker registry: register, heartbeat, list, deregister, prune.
    workers => Workers;
    /// Execution logs and the pruning of history past its retention.
    history => History;
    /// PostgreSQL wake-ups: NOTIFY and a worker's LISTEN.
    notify => Notify;
    /// Schedules: the config's and an operator's, paused and resumed, and a leader's fenced fire.
    schedules => Schedules;
    /// Maintenance windows: open, list, end.
    windows => Windows;
}
