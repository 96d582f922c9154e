//! `orchestrator`: a monitor–decide–execute rule engine over a durable action queue.
//!
//! See `ARCHITECTURE.md` for the code map and the path of one tick through it.

pub mod model;
pub mod store;
