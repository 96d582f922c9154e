//! Embedding `orchestrator` as a library: register your own action type and run ticks.
//!
//! ```text
//! cargo run --example custom_adapter            # a temporary SQLite database
//! cargo run --example custom_adapter -- my.db   # or a database of your choice
//! ```
//!
//! The `GREET` adapter below says what it would do in proof mode (`render_proof`, pure) and
//! does it in real mode (`execute`). The engine enforces proof mode, retries, fencing and the
//! ledger; the adapter only knows its own action type.

use orchestrator::adapters::{Adapter, AdapterError, ExecContext, Outcome, Proof, Registry};
use orchestrator::config::Config;
use orchestrator::model::Action;
use orchestrator::queue::{self, EnqueueRequest};
use orchestrator::store::{FlagChange, Store, StoreOptions};
use orchestrator::tick::{Engine, TickOutcome};

struct Greet;

fn name(action: &Action) -> Result<&str, AdapterError> {
    action
        .payload
        .get("name")
        .and_then(|v| v.as_str())
        .ok_or_else(|| AdapterError::permanent("GREET payload needs a string field 'name'"))
}

#[async_trait::async_trait]
impl Adapter for Greet {
    fn action_type(&self) -> &str {
        "GREET"
    }

    fn render_proof(&self, action: &Action) -> Result<Option<Proof>, AdapterError> {
        let body = format!("would greet {}\n", name(action)?);
        Ok(Some(Proof { subdir: "greet".into(), extension: "txt".into(), body: body.into_bytes() }))
    }

    async fn execute(&self, _ctx: &ExecContext, action: &Action) -> Result<Outcome, AdapterError> {
        Ok(Outcome { message: format!("hello, {}!", name(action)?) })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let url = match std::env::args().nth(1) {
        Some(path) => path,
        None => format!("sqlite:{}", scratch.path().join("example.db").display()),
    };
    let store = Store::open(&url, &StoreOptions::default()).await?;
    let mut config = Config::defaults();
    config.database_url = url;
    config.artifacts_dir = scratch.path().join("artifacts");

    let mut registry = Registry::builtin();
    registry.register(Greet);
    let engine = Engine::new(store.clone(), config.clone(), registry);

    for who in ["Ada", "Grace"] {
        let req = EnqueueRequest {
            action_type: "GREET".into(),
            payload: serde_json::json!({ "name": who }),
            idempotency_key: None,
            priority: 0,
            not_before: None,
            max_attempts: None,
            expires_at: None,
            traceparent: None,
            require_approval: false,
        };
        queue::enqueue(&store, &req, config.max_attempts).await?;
    }

    // One tick in proof mode (the default): artifacts only.
    report(engine.tick().await?);
    // Then real mode.
    store.flags().set_flags(FlagChange { proof_mode: Some(false), ..Default::default() }).await?;
    queue::enqueue(
        &store,
        &EnqueueRequest {
            action_type: "GREET".into(),
            payload: serde_json::json!({ "name": "Linus" }),
            idempotency_key: None,
            priority: 0,
            not_before: None,
            max_attempts: None,
            expires_at: None,
            traceparent: None,
            require_approval: false,
        },
        config.max_attempts,
    )
    .await?;
    report(engine.tick().await?);
    for log in store.history().logs(None, 10).await? {
        println!("log: {} {}", log.level, log.message);
    }
    engine.release().await?;
    Ok(())
}

fn report(outcome: TickOutcome) {
    match outcome {
        TickOutcome::Ran(r) => println!("tick #{} {}: {}", r.tick_id, r.status, r.notes),
        TickOutcome::NotLeader { owner, .. } => println!("another instance ({owner}) holds the lease"),
    }
}
