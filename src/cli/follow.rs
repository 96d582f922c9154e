//! `logs --follow` and `ticks --follow`: print the last rows, then new ones as they land, until
//! Ctrl-C (or SIGTERM, or a closed stdout), like `journalctl -f`.
//!
//! Each poll is one autocommit `SELECT` of the rows past a cursor (the last id printed), so a
//! follow holds no transaction and no lock between polls and never slows a writer. Text output
//! is one line per row; `--json` prints one JSON object per line.
//!
//! On PostgreSQL two transactions can commit out of id order, so a poll can see id 11 before id
//! 10 commits. Ids skipped over by the cursor are asked for again for [`GAP_WAIT`], so such a
//! row is still printed (late, and once). SQLite has one writer at a time: ids commit in order.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::output::{self, Out};
use crate::model::TickRow;
use crate::store::{Backend, LogFilter, Store, StoreError};

/// How often a follow looks for new rows.
pub const POLL: Duration = Duration::from_millis(500);
/// How long an id skipped by the cursor is looked for again.
pub const GAP_WAIT: Duration = Duration::from_secs(10);
/// At most this many skipped ids are remembered (a bigger jump is another filter's rows).
const MAX_GAPS: usize = 256;
/// Rows read per poll at most.
const PAGE: u64 = 1000;

/// The last id printed, and the ids skipped over that may still commit.
struct Cursor {
    after: i64,
    gaps: Vec<(i64, Instant)>,
    track_gaps: bool,
}

impl Cursor {
    fn new(after: i64, track_gaps: bool) -> Self {
        Cursor { after, gaps: Vec::new(), track_gaps }
    }

    /// The skipped ids still worth asking for.
    fn gaps(&mut self) -> Vec<i64> {
        self.gaps.retain(|(_, since)| since.elapsed() < GAP_WAIT);
        self.gaps.iter().map(|(id, _)| *id).collect()
    }

    fn saw(&mut self, id: i64) {
        if id <= self.after {
            self.gaps.retain(|(g, _)| *g != id);
            return;
        }
        let skipped = id - self.after - 1;
        if self.track_gaps && skipped > 0 && skipped as usize <= MAX_GAPS {
            let now = Instant::now();
            self.gaps.extend((self.after + 1..id).map(|g| (g, now)));
            let excess = self.gaps.len().saturating_sub(MAX_GAPS);
            self.gaps.drain(..excess);
        }
        self.after = id;
    }
}

/// Writes lines to stdout; `false` once stdout is closed or failing.
fn emit(out: &Out, lines: &[String]) -> bool {
    lines.iter().all(|l| out.line(format_args!("{l}")))
}

fn line<T: Serialize>(out: &Out, row: &T, text: impl FnOnce(&T) -> String) -> String {
    if out.json { serde_json::to_string(row).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")) } else { text(row) }
}

/// Waits one poll interval; `true` when a signal came instead, or when stdout's reader has
/// gone (asked without writing, so an idle follow notices too, like `tail -f`).
struct Stop(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>);

impl Stop {
    fn new() -> Self {
        Stop(Box::pin(crate::runtime::signals::shutdown_signal()))
    }

    async fn wait(&mut self, out: &Out) -> bool {
        tokio::select! {
            _ = &mut self.0 => true,
            _ = tokio::time::sleep(POLL) => !out.wanted(),
        }
    }
}

/// `logs --follow`.
pub async fn logs(store: &Store, filter: &LogFilter, limit: u64, out: &Out) -> Result<(), StoreError> {
    let mut last = store.history().logs_filtered(filter, limit).await?;
    last.reverse();
    let start = match last.last() {
        Some(l) => l.id,
        None => store.history().logs(None, 1).await?.first().map_or(0, |l| l.id),
    };
    let lines: Vec<String> = last.iter().map(|l| line(out, l, output::log_line)).collect();
    if !emit(out, &lines) {
        return Ok(());
    }
    let mut cursor = Cursor::new(start, store.backend() == Backend::Postgres);
    let mut stop = Stop::new();
    while !stop.wait(out).await {
        let gaps = cursor.gaps();
        let rows = store.history().logs_after(cursor.after, &gaps, filter, PAGE).await?;
        let lines: Vec<String> = rows.iter().map(|l| line(out, l, output::log_line)).collect();
        for r in &rows {
            cursor.saw(r.id);
        }
        if !emit(out, &lines) {
            break;
        }
    }
    Ok(())
}

/// The rows of `rows` (ascending) that can be printed now: up to the last finished one. A row
/// still open before it is a tick that died (or another instance's), printed as it stands.
fn settled(rows: &[TickRow]) -> &[TickRow] {
    match rows.iter().rposition(|t| t.finished_at.is_some()) {
        Some(i) => &rows[..=i],
        None => &[],
    }
}

/// `ticks --follow`: a tick is printed once it has finished.
pub async fn ticks(store: &Store, limit: u64, out: &Out) -> Result<(), StoreError> {
    let mut last = store.ledger().recent_ticks(limit).await?;
    last.reverse();
    let shown = settled(&last);
    let start = match (shown.last(), last.first()) {
        (Some(t), _) => t.id,
        (None, Some(first)) => first.id - 1,
        (None, None) => 0,
    };
    let lines: Vec<String> = shown.iter().map(|t| line(out, t, output::tick_line)).collect();
    if !emit(out, &lines) {
        return Ok(());
    }
    let mut after = start;
    let mut stop = Stop::new();
    while !stop.wait(out).await {
        let rows = store.ledger().ticks_after(after, &[], PAGE).await?;
        let shown = settled(&rows);
        let lines: Vec<String> = shown.iter().map(|t| line(out, t, output::tick_line)).collect();
        if let Some(t) = shown.last() {
            after = t.id;
        }
        if !emit(out, &lines) {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_ids_are_asked_for_again_once() {
        let mut c = Cursor::new(10, true);
        c.saw(13);
        assert_eq!((c.after, c.gaps()), (13, vec![11, 12]));
        c.saw(11);
        assert_eq!(c.gaps(), vec![12]);
        c.saw(10_000);
        assert_eq!(c.gaps(), vec![12], "a jump past MAX_GAPS is other rows, not gaps");
        let mut sqlite = Cursor::new(0, false);
        sqlite.saw(5);
        assert!(sqlite.gaps().is_empty());
    }
}
