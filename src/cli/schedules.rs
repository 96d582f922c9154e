//! `orchestrator schedules list|add|remove|pause|resume|run-now`: the operator's hand on the
//! schedules the leader fires (`services/scheduler.rs`), held in the database.
//!
//! `add` takes the same fields as a config entry under `schedules:` and checks them the same
//! way (`crate::schedules`); a bad cron, zone or payload is a usage error naming the field. A
//! schedule the config declares is the config's: `remove` refuses it, `pause` and `resume` act
//! on it. Nothing here computes a slot (`crate::schedules` does) or prints by itself.

use clap::Subcommand;

use super::{exit, fail, output};
use crate::config::Config;
use crate::schedules::{Misfire, ScheduleSpec, view};
use crate::services::scheduler;
use crate::store::{Authority, Store, StoreError};

#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    /// Every schedule: its cron and zone, what it enqueues, its state, its last and next fire.
    List,
    /// Add a schedule (its slots count from now). The config's `schedules:` is the other way.
    Add {
        /// The schedule's name: letters, digits, '_', '-', '.'.
        name: String,
        /// Five-field cron expression, e.g. '30 2 * * *', or a nickname such as @daily.
        #[arg(long)]
        cron: String,
        /// IANA time zone the cron reads its wall clock in.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        /// Action type each slot enqueues.
        #[arg(long = "type", value_name = "ACTION_TYPE")]
        action_type: String,
        /// Payload of each enqueued action (a JSON object).
        #[arg(long, default_value = "{}")]
        payload: String,
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i32,
        /// Attempts per action; default: the config's max_attempts.
        #[arg(long)]
        max_attempts: Option<u32>,
        /// Each action's deadline, from its slot, e.g. 1h.
        #[arg(long, value_parser = crate::settings::parse_duration)]
        deadline: Option<std::time::Duration>,
        /// Slots found late: skip them, fire once for all, or fire all (up to --catch-up-cap).
        #[arg(long, default_value = "once", value_parser = |s: &str| s.parse::<Misfire>())]
        misfire: Misfire,
        #[arg(long, default_value_t = 10)]
        catch_up_cap: u32,
        /// How late a slot may be seen and still fire as on time.
        #[arg(long, default_value = "5m", value_parser = crate::settings::parse_duration)]
        misfire_grace: std::time::Duration,
    },
    /// Remove a schedule an operator added (one the config declares is removed there).
    Remove { name: String },
    /// Stop firing a schedule until `resume`; slots that fall due meanwhile are not fired.
    Pause {
        name: String,
        /// Why, shown by `schedules list`.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Fire a paused schedule again, from its next slot.
    Resume { name: String },
    /// Enqueue the schedule's action now, outside its slots (its own idempotency key).
    RunNow { name: String },
}

pub(super) async fn run(
    cmd: SchedulesCommand,
    config: &Config,
    store: &Store,
    out: &output::Out,
) -> anyhow::Result<()> {
    match cmd {
        SchedulesCommand::List => {
            out.schedules(&store.schedules().list().await?.into_iter().map(view).collect::<Vec<_>>())
        }
        SchedulesCommand::Add {
            name,
            cron,
            timezone,
            action_type,
            payload,
            priority,
            max_attempts,
            deadline,
            misfire,
            catch_up_cap,
            misfire_grace,
        } => {
            let payload =
                crate::queue::parse_payload(&payload).map_err(|e| fail(exit::USAGE, format!("--payload: {e}")))?;
            let spec = ScheduleSpec {
                cron,
                timezone,
                action_type,
                payload,
                priority,
                max_attempts,
                deadline,
                misfire,
                catch_up_cap,
                misfire_grace,
                enabled: true,
            };
            let def = scheduler::stored(&name, &spec, config.max_attempts).map_err(|e| fail(exit::USAGE, e))?;
            let row = store.schedules().add(&def).await.map_err(refused)?;
            out.schedules(&[view(row)]);
        }
        SchedulesCommand::Remove { name } => {
            store.schedules().remove(&name).await.map_err(refused)?;
            out.message(&serde_json::json!({ "name": name, "removed": true }), &format!("removed schedule {name}"));
        }
        SchedulesCommand::Pause { name, reason } => {
            let changed = store
                .schedules()
                .set_paused(Authority::Operator, &name, true, reason.as_deref())
                .await
                .map_err(refused)?;
            let text =
                if changed { format!("paused schedule {name}") } else { format!("schedule {name} was already paused") };
            out.message(&serde_json::json!({ "name": name, "paused": true, "changed": changed }), &text);
        }
        SchedulesCommand::Resume { name } => {
            let changed =
                store.schedules().set_paused(Authority::Operator, &name, false, None).await.map_err(refused)?;
            let text = if changed {
                format!("resumed schedule {name}: it fires from its next slot")
            } else {
                format!("schedule {name} was not paused")
            };
            out.message(&serde_json::json!({ "name": name, "paused": false, "changed": changed }), &text);
        }
        SchedulesCommand::RunNow { name } => {
            let done = scheduler::run_now(store, &name, &config.enqueue_defaults()).await.map_err(refused)?;
            let text = format!("schedule {name}: enqueued action {} ({})", done.id, done.status);
            out.message(&done, &text);
        }
    }
    Ok(())
}

/// A refusal (no such schedule, a name taken, the config's) exits 1 with its message.
fn refused(e: StoreError) -> anyhow::Error {
    match e {
        StoreError::Refused(r) => fail(exit::ERROR, r.to_string()),
        other => other.into(),
    }
}
