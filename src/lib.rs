//! `orchestrator`: a monitor–decide–execute rule engine over a durable action queue.
//!
//! One tick (see [`tick::Engine::tick`]) runs the loop: [`lease`] → [`snapshot`] (monitor) →
//! decide → [`executor`] with [`adapters`] (execute) → the tick ledger (record). [`store`] is
//! the only module that talks to the database. `ARCHITECTURE.md` has the code map and the
//! invariants.

pub mod adapters;
pub mod artifacts;
pub mod cli;
pub mod config;
pub mod decide;
mod executor;
pub mod explain;
mod health;
pub mod heartbeat;
pub mod http;
mod input;
pub mod lease;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod queue;
pub mod rules;
pub mod runtime;
pub mod scenario;
pub mod schedules;
pub mod services;
pub mod settings;
pub mod snapshot;
mod status;
pub mod store;
pub mod telemetry;
pub mod tick;
pub mod windows;
pub mod worker;
