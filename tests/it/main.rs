//! The one integration-test binary: store, queue, lease and tick tests against SQLite and
//! PostgreSQL, the main flows through the real `orchestrator` binary, and the invariants of the
//! source tree (`tidy`). Helpers live in `support/`.

// A test that unwraps fails loudly, which is what a test should do.
#![allow(clippy::unwrap_used)]

mod support;

mod allowed_hours;
mod approvals;
mod backup;
mod bounds;
mod chaos;
mod cli;
mod command;
mod conserving;
mod decide;
mod environment;
mod execute;
mod hostile;
mod lease;
mod limit_writes;
mod limits_surface;
mod liveness;
mod machine;
mod one_queue;
mod partition_cap;
mod pgbouncer;
mod queue;
mod runbook;
mod schedules;
mod services;
mod startup;
mod store;
mod tick;
mod type_limits;
mod verify;
mod windows;

mod alertmanager;
mod browser;
mod faults;
mod grafana;
mod hostile_http;
mod http_api;
mod http_live;
mod instances;
mod model;
mod operator;
mod otel;
mod output;
mod tidy;
mod workers;
