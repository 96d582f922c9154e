//! The periodic jobs the processes are made of, each a named service with one job.
//!
//! The tick (`tick/mod.rs`) is a short sequence of their calls, as ARCHITECTURE.md's tick path
//! says; `runtime` assembles `run`, `worker` and `serve` from them. A service reads and writes
//! through the store and judges through `health` and `limits`; none prints or parses
//! arguments, and none starts another: `runtime` and the tick decide what runs when.
//!
//! - [`rescuer`]: RUNNING actions whose worker died go back to the queue.
//! - [`expirer`]: actions past their deadline move to the DLQ.
//! - [`approvals`]: renders what waiting approvals will send; cancels the overdue ones.
//! - [`notifier`]: wakes idle workers when work became due by time alone.
//! - [`decider`]: the live rule set, the rules run on a snapshot, their decisions applied.
//! - [`dispatcher`]: claims due actions, runs them through the executor, records outcomes.
//! - [`registration`]: this process's row in `workers`, kept alive by a heartbeat.
//! - [`pruner`]: removes history past its retention, and leftover artifact files.
//! - [`limits_writer`]: writes the config's `limits:` into the database.
//! - [`scheduler`]: enqueues the schedules' due slots as the holder; writes the config's `schedules:`.

pub mod approvals;
pub mod decider;
pub mod dispatcher;
pub mod expirer;
pub mod limits_writer;
pub mod notifier;
pub mod pruner;
pub mod registration;
pub mod rescuer;
pub mod scheduler;
