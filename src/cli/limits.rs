//! `orchestrator limits list|set|clear|override`: the operator's hand on the per-type limits held
//! in the database (`store/limits.rs`), which every claimer on every host reads.
//!
//! Flags are parsed by `crate::limits` inside clap, so a bad rate, a negative number or an
//! unknown field is a usage error (exit 2) naming the flag before anything is read. `set`
//! merges the fields given into the type's base limits as they stand under the row's lock (so
//! concurrent edits of different fields all land); `clear TYPE FIELD` removes one likewise;
//! `override TYPE FIELD --end` ends one override before it lapses. Nothing here decides what a
//! limit means (the claim does) or prints by itself (`output.rs` renders).

use std::time::Duration;

use clap::{ArgGroup, Subcommand};

use super::{exit, fail, output};
use crate::limits::{self, AllowedHours, BaseField, LimitField, LimitSpec, LimitValue, PayloadPath, Rate, TypeLimit};
use crate::store::{EditRefusal, LimitEdit, Store};

/// Who an override from the command line is recorded as set by.
const SET_BY: &str = "operator";

/// `limits override`'s two forms, as a misuse's error shows them.
const OVERRIDE_USAGE: &str =
    "orchestrator limits override <ACTION_TYPE> <FIELD> <VALUE> --for <DURATION> --reason <TEXT>
       orchestrator limits override <ACTION_TYPE> <FIELD> --end";

#[derive(Debug, Subcommand)]
pub enum LimitsCommand {
    /// Every limited type: its limits and where they came from, overrides in force, what is
    /// running, waiting and left, and the claims each limit held back.
    List,
    /// Set fields of a type's base limits; fields not given keep their value (`limits clear
    /// TYPE FIELD` removes one). A type named in the `run` process's `limits:` config is
    /// rewritten from it at that process's next start or SIGHUP.
    #[command(group = ArgGroup::new("fields").required(true).multiple(true))]
    Set {
        /// Action type, e.g. POST_SOCIAL.
        #[arg(value_parser = parse_type)]
        action_type: String,
        /// At most N attempts of the type running at once, on every host (0 holds the type).
        #[arg(long, value_name = "N", group = "fields", allow_negative_numbers = true,
              value_parser = |s: &str| limits::whole(LimitField::MaxRunning, s))]
        max_running: Option<u64>,
        /// At most N attempt starts in any window of PERIOD, e.g. 300/1h or 50/1s.
        #[arg(long, value_name = "N/PERIOD", group = "fields", allow_hyphen_values = true,
              value_parser = |s: &str| s.parse::<Rate>())]
        rate: Option<Rate>,
        /// At most N attempt starts per UTC day.
        #[arg(long, value_name = "N", group = "fields", allow_negative_numbers = true,
              value_parser = |s: &str| limits::whole(LimitField::DailyBudget, s))]
        daily_budget: Option<u64>,
        /// The same limits per value of this payload field, e.g. payload.partner.
        #[arg(long, value_name = "payload.FIELD", group = "fields",
              value_parser = |s: &str| s.parse::<PayloadPath>())]
        partition_by: Option<PayloadPath>,
        /// The times of day the type's actions may start, HH:MM-HH:MM ZONE, e.g.
        /// "09:00-21:00 Europe/Madrid"; outside them its work waits, blocking nothing else.
        #[arg(long, value_name = "HH:MM-HH:MM ZONE", group = "fields",
              value_parser = |s: &str| s.parse::<AllowedHours>())]
        allowed_hours: Option<AllowedHours>,
    },
    /// Remove a type's limits and overrides, or with FIELD one field of its base limits.
    Clear {
        /// Action type, e.g. POST_SOCIAL.
        #[arg(value_parser = parse_type)]
        action_type: String,
        /// Only this field of the base limits: max_running, rate, daily_budget, partition_by or
        /// allowed_hours.
        #[arg(value_enum)]
        field: Option<BaseField>,
    },
    /// Override one limit of a type for a while (recorded as set by "operator"); it lapses by
    /// itself. A type with no limits gains one until then. With --end, end the override of
    /// FIELD now, whoever set it (a rule's `set_limit` included).
    #[command(override_usage = OVERRIDE_USAGE)]
    Override {
        /// Action type, e.g. POST_SOCIAL.
        #[arg(value_parser = parse_type)]
        action_type: String,
        /// max_running, rate or daily_budget.
        #[arg(value_parser = |s: &str| s.parse::<LimitField>())]
        field: LimitField,
        /// A whole number, or N/PERIOD for rate.
        #[arg(allow_hyphen_values = true, required_unless_present = "end")]
        value: Option<String>,
        /// How long it holds, e.g. 30m or 2h (at most 30 days).
        #[arg(long = "for", value_name = "DURATION", required_unless_present = "end",
              value_parser = |s: &str| crate::config::parse_duration(s).and_then(limits::check_override_lasts))]
        lasts: Option<Duration>,
        /// Why, shown beside it in `limits list`, `status` and the page (at most 500 characters).
        #[arg(long, value_name = "TEXT", required_unless_present = "end",
              value_parser = |s: &str| limits::check_override_reason(s))]
        reason: Option<String>,
        /// End the override of FIELD now instead of setting one (takes no VALUE, --for or
        /// --reason). The type's base limits, if any, hold again at every claimer's next claim.
        #[arg(long, conflicts_with_all = ["value", "lasts", "reason"])]
        end: bool,
    },
}

fn parse_type(s: &str) -> Result<String, String> {
    crate::queue::validate_type(s).map(|()| s.to_string())
}

pub(super) async fn run(cmd: LimitsCommand, store: &Store, out: &output::Out) -> anyhow::Result<()> {
    match cmd {
        LimitsCommand::List => out.limits(&store.limits().limit_usage().await?),
        LimitsCommand::Set { action_type, max_running, rate, daily_budget, partition_by, allowed_hours } => {
            // Merged into the row as it stands under its lock: a concurrent edit of another
            // field lands too.
            let given = LimitSpec { max_running, rate, daily_budget, partition_by, allowed_hours };
            if let Err(why) = store.limits().edit_limit(&action_type, &LimitEdit::Merge(given)).await? {
                let text = match why {
                    EditRefusal::LimitsNothing => format!(
                        "{action_type} would have no limit: give --max-running, --rate, --daily-budget or --allowed-hours with --partition-by"
                    ),
                    other => format!("{action_type}: {other}"),
                };
                return Err(fail(exit::USAGE, text));
            }
            written(store, &action_type, out, "set").await?;
        }
        LimitsCommand::Clear { action_type, field: None } => {
            let cleared = store.limits().clear_limit(&action_type).await?;
            let text = if cleared {
                format!("cleared the limits and overrides of {action_type}")
            } else {
                format!("{action_type} has no limits; nothing cleared")
            };
            out.message(&serde_json::json!({"action_type": action_type, "cleared": cleared}), &text);
        }
        LimitsCommand::Clear { action_type, field: Some(field) } => {
            if let Err(why) = store.limits().edit_limit(&action_type, &LimitEdit::Remove(field)).await? {
                let text = match why {
                    EditRefusal::NoLimits => format!("{action_type} has no limits; nothing to clear"),
                    EditRefusal::NotSet => format!("{action_type} has no base {field}; nothing to clear"),
                    EditRefusal::LimitsNothing => format!(
                        "clearing {field} would leave {action_type} with no limit; `limits clear {action_type}` removes its \
                         limits and overrides"
                    ),
                };
                return Err(fail(exit::ERROR, text));
            }
            written(store, &action_type, out, &format!("cleared {field} of")).await?;
        }
        LimitsCommand::Override { action_type, field, end: true, .. } => {
            let ended = store.limits().clear_limit_override(&action_type, field).await?;
            out.override_ended(&action_type, field, ended, base_of(store, &action_type).await?.as_ref());
        }
        LimitsCommand::Override {
            action_type,
            field,
            value: Some(value),
            lasts: Some(lasts),
            reason: Some(reason),
            ..
        } => {
            let value = LimitValue::parse(field, &value).map_err(|e| fail(exit::USAGE, format!("VALUE: {e}")))?;
            let until = crate::model::later(store.db_now().await?, lasts)
                .map_err(|e| fail(exit::USAGE, format!("--for: {e}")))?;
            store.limits().set_limit_override(None, &action_type, field, value, until, &reason, SET_BY).await?;
            written(store, &action_type, out, &format!("overrode {field} of")).await?;
        }
        LimitsCommand::Override { .. } => {
            // clap requires VALUE, --for and --reason unless --end is given.
            return Err(fail(exit::USAGE, "limits override needs VALUE, --for and --reason, or --end"));
        }
    }
    Ok(())
}

/// The type's row, if it has one.
async fn base_of(store: &Store, action_type: &str) -> anyhow::Result<Option<TypeLimit>> {
    Ok(store.limits().list().await?.into_iter().find(|l| l.action_type == action_type))
}

/// Prints the type's limits as they now stand, after `what` was done.
async fn written(store: &Store, action_type: &str, out: &output::Out, what: &str) -> anyhow::Result<()> {
    let now = base_of(store, action_type)
        .await?
        .ok_or_else(|| fail(exit::ERROR, format!("{action_type}'s limits were written but are no longer there")))?;
    out.type_limit(&now, what);
    Ok(())
}
