//! Test support, one concern per file; a test file takes what it shares with others from here,
//! never from another test file (tidy checks it): `db` (a fresh database per test on both
//! backends, a PostgreSQL database created late), `fixtures` (a NOOP action, the lease, a tick
//! that ran, the shipped rules), `process` (the real binary and a server under test), `daemon`
//! (the binary as a daemon and as workers), `http` (requests to a server under test), `api`
//! (the HTTP API in process), `limits`, `command` and `hostile` (the fixtures of those
//! suites), `peer` (a real HTTP peer for the adapters), `disk` (a tmpfs that fills up). The
//! common names are re-exported here.

pub mod api;
pub mod command;
pub mod daemon;
pub mod db;
pub mod disk;
pub mod fixtures;
pub mod hostile;
pub mod http;
pub mod limits;
pub mod peer;
pub mod process;

pub use db::{PG_ENV, TestDb, fence, worker};
pub use fixtures::{hold, noop, ran};
pub use process::{artifacts_under, bin, json, run, stderr, stdout};
