//! Test support, one concern per file: `db` (a fresh database per test on both backends),
//! `process` (the real binary and a daemon under test), `http` (requests to a server under
//! test). The common names are re-exported here.

pub mod db;
pub mod http;
pub mod process;

pub use db::{PG_ENV, TestDb, fence, worker};
pub use process::{artifacts_under, bin, json, run, stderr, stdout};
