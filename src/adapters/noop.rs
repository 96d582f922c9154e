//! `NOOP`: succeeds without side effects; for tests, benchmarks and smoke checks.
//!
//! An optional `sleep_ms` in the payload (at most 60,000) makes it take that long, which is how
//! tests exercise timeouts and deadlines through the real binary.

use std::time::Duration;

use super::{Adapter, AdapterError, ExecContext, Outcome, Proof};
use crate::model::Action;

pub struct Noop;

fn sleep_of(action: &Action) -> Result<Option<Duration>, AdapterError> {
    match action.payload.get("sleep_ms") {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(ms) if ms <= 60_000 => Ok(Some(Duration::from_millis(ms))),
            _ => Err(AdapterError::permanent("NOOP payload field 'sleep_ms' must be an integer from 0 to 60000")),
        },
    }
}

#[async_trait::async_trait]
impl Adapter for Noop {
    fn action_type(&self) -> &str {
        "NOOP"
    }

    fn render_proof(&self, action: &Action) -> Result<Option<Proof>, AdapterError> {
        sleep_of(action)?;
        Ok(None)
    }

    async fn execute(&self, _ctx: &ExecContext, action: &Action) -> Result<Outcome, AdapterError> {
        if let Some(d) = sleep_of(action)? {
            tokio::time::sleep(d).await;
        }
        Ok(Outcome { message: "noop".into() })
    }
}
