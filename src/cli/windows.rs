//! `orchestrator windows list|add|end`: the operator's maintenance windows, held in the
//! database (`store/windows.rs`), which every claimer on every host reads at each claim.
//!
//! Each flag is parsed by `crate::windows` inside clap, so a bad cron expression, time zone,
//! type or field is a usage error (exit 2) naming the flag before anything is read. It decides
//! nothing about what a window holds (the claim does) and prints only through `output::Out`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{ArgGroup, Subcommand};

use super::{exit, fail, output};
use crate::store::{Store, WindowEnd};
use crate::windows::{self, FieldMatch, Matcher, Recurrence, WindowSpec, WindowView};

/// Who a window from the command line is recorded as opened by.
const OPENED_BY: &str = "operator";

#[derive(Debug, Subcommand)]
pub enum WindowsCommand {
    /// The windows not yet over (with --all, every window ever opened), newest first: what
    /// each holds, whether it is open now and until when, when it opens next.
    List {
        /// Every window, ended and past ones too.
        #[arg(long)]
        all: bool,
    },
    /// Open a window: from --from (default now) until --until or for --for, or recurring
    /// (--cron and --duration in --tz). Matching actions are not claimed while it is open;
    /// other work flows past them; their deadlines still apply.
    #[command(group = ArgGroup::new("when").required(true).args(["until", "lasts", "cron"]))]
    Add {
        /// An action type it holds (repeat for more), e.g. --type WEBHOOK.
        #[arg(long = "type", value_name = "ACTION_TYPE", required = true, value_parser = parse_type)]
        types: Vec<String>,
        /// Hold only actions whose payload field has this value, e.g. payload.partner=acme.
        #[arg(long, value_name = "payload.FIELD=VALUE", value_parser = |s: &str| windows::parse_field(s))]
        field: Option<FieldMatch>,
        /// When it opens (a recurring one: from when it applies), RFC 3339; default now.
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        from: Option<DateTime<Utc>>,
        /// When it closes (a recurring one: until when it applies), RFC 3339.
        #[arg(long, value_name = "TIME", value_parser = parse_time, conflicts_with = "lasts")]
        until: Option<DateTime<Utc>>,
        /// How long it stays open from --from, e.g. 30m or 2h.
        #[arg(long = "for", value_name = "DURATION", value_parser = |s: &str| crate::config::parse_duration(s),
              conflicts_with = "cron")]
        lasts: Option<Duration>,
        /// Recur at each occurrence of this five-field cron expression, e.g. "0 2 * * SUN".
        #[arg(long, value_name = "EXPR", requires = "duration")]
        cron: Option<String>,
        /// How long each occurrence stays open, e.g. 1h (with --cron).
        #[arg(long, value_name = "DURATION", requires = "cron",
              value_parser = |s: &str| crate::config::parse_duration(s))]
        duration: Option<Duration>,
        /// The IANA time zone the cron expression is read in, e.g. Europe/Madrid.
        #[arg(long = "tz", value_name = "ZONE", default_value = "UTC", requires = "cron")]
        time_zone: String,
        /// Why, shown beside it in `windows list`, the API and the page (at most 500 characters).
        #[arg(long, value_name = "TEXT", required = true, value_parser = |s: &str| windows::check_reason(s))]
        reason: String,
    },
    /// End window ID now: what it held is claimed again from every claimer's next claim.
    End {
        /// The window's id, as `windows list` shows it.
        id: i64,
    },
}

fn parse_type(s: &str) -> Result<String, String> {
    crate::queue::validate_type(s).map(|()| s.to_string())
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("'{}' is not an RFC 3339 time (e.g. 2026-12-06T02:00:00Z): {e}", s.escape_debug()))
}

pub(super) async fn run(cmd: WindowsCommand, store: &Store, out: &output::Out) -> anyhow::Result<()> {
    match cmd {
        WindowsCommand::List { all } => {
            let now = store.now();
            let list: Vec<WindowView> = store.windows().list(all).await?.into_iter().map(|w| w.view(now)).collect();
            if out.json {
                out.print_json(&list);
            } else if list.is_empty() {
                say!(out, "no windows");
            } else {
                for w in &list {
                    say!(out, "{}", line(w));
                }
            }
        }
        WindowsCommand::Add { types, field, from, until, lasts, cron, duration, time_zone, reason } => {
            let starts_at = from.unwrap_or_else(|| store.now());
            let recurrence = match (cron, duration) {
                (Some(c), Some(d)) => Some(
                    Recurrence::parse(&c, d, &time_zone)
                        .map_err(|e| fail(exit::USAGE, format!("--{}", e.replacen("time_zone", "tz", 1))))?,
                ),
                _ => None,
            };
            let ends_at = match (until, lasts) {
                (Some(u), _) => Some(u),
                (None, Some(d)) => {
                    Some(crate::model::later(starts_at, d).map_err(|e| fail(exit::USAGE, format!("--for: {e}")))?)
                }
                (None, None) => None,
            };
            let spec = WindowSpec {
                matcher: Matcher { types, field },
                starts_at,
                ends_at,
                recurrence,
                reason,
                opened_by: OPENED_BY.into(),
            };
            spec.check().map_err(|e| fail(exit::USAGE, e))?;
            let w = store.windows().add(&spec).await?.view(store.now());
            out.message(&w, &format!("opened {}", line(&w)));
        }
        WindowsCommand::End { id } => match store.windows().end(id).await? {
            WindowEnd::Ended(w) => {
                let w = w.view(store.now());
                out.message(&w, &format!("ended {}", line(&w)));
            }
            WindowEnd::AlreadyOver(_) => return Err(fail(exit::ERROR, format!("window {id} is already over"))),
            WindowEnd::NotFound => return Err(fail(exit::ERROR, format!("no window has id {id}"))),
        },
    }
    Ok(())
}

/// One window on one line.
fn line(v: &WindowView) -> String {
    let w = &v.window;
    let t = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%SZ").to_string();
    let state = match (v.open, v.open_until, v.next_open, w.ended_at) {
        (true, Some(u), _, _) => format!("OPEN until {}", t(u)),
        (_, _, _, Some(e)) => format!("ended {}", t(e)),
        (_, _, Some(n), _) => format!("opens {}", t(n)),
        _ => "over".to_string(),
    };
    let field = w.spec.matcher.field.as_ref().map(|f| format!(" where {}={}", f.path, f.value)).unwrap_or_default();
    let when = match &w.spec.recurrence {
        Some(r) => {
            format!("every '{}' {} for {}", r.cron(), r.time_zone.name(), humantime::format_duration(r.duration))
        }
        None => format!("{} to {}", t(w.spec.starts_at), w.spec.ends_at.map_or("-".into(), t)),
    };
    let reason: String = w.spec.reason.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    format!(
        "#{} {state}  holds {}{field}  {when}  by {}: {reason}",
        w.id,
        w.spec.matcher.types.join(","),
        w.spec.opened_by
    )
}
