//! The limited claim: one transaction that takes the gates and picks (`pick.rs`), claims
//! exactly the rows picked through the state machine's claim statement, and records what they
//! used: the window's starts, the day's budget, newly tracked partitions (and their waiting
//! rows marked out of the overflow) and the counters of work held back.
//!
//! It must not write `actions` itself (the claim of the ids is `actions/claim.rs`'s), nor judge
//! a limit: it records what the pick counted.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction, Value};

use super::super::actions::{Claimed, Claimer, Pick, claimed_rows};
use super::super::{Backend, Context, Store, StoreError};
use super::pick::{Chosen, LimitedPick};
use super::usage::Usage;
use super::{day_of, i, json_elems, lit, part_expr, window_conds};
use crate::limits::{LimitField, OVERFLOW_PARTITION, PayloadPath, TypeLimit};

/// A claim that computed at least this many partition keys vacuums `actions` after it commits
/// ([`Store::vacuum_in_background`]); fewer leave too few dead index entries to matter (10k:
/// about 70 index pages, 0.14 ms a claim) until autovacuum.
pub(super) const VACUUM_AFTER_KEYS: u64 = 10_000;

/// A `limit_state` row a claim writes: (type, partition, budget day, used, exhausted at). A
/// row without a day is a newly tracked partition, written only when missing.
pub(super) type StateWrite = (String, String, Option<String>, u64, Option<DateTime<Utc>>);

/// What a limited claim records ([`what_to_record`]).
#[derive(Debug, Default, PartialEq)]
pub(super) struct Record {
    /// `[type, partition, token, starts]` per rated (type, partition).
    pub(super) starts: Vec<serde_json::Value>,
    pub(super) states: Vec<StateWrite>,
}

impl Store {
    /// The claim of up to `n` due actions when some of `limits` (each served by the claimer)
    /// are in force; see the module doc. Returns the rows claimed, not yet sorted.
    pub(in crate::store) async fn claim_limited(
        &self,
        claimer: &Claimer,
        n: u64,
        limits: &[TypeLimit],
        closed: &[String],
        partitions_cap: usize,
    ) -> Result<Vec<Claimed>, StoreError> {
        let txn = self.begin_write().await?;
        let token = self.next_claim_token(&txn).await?;
        let mut refs: Vec<&TypeLimit> = limits.iter().collect();
        refs.sort_by(|a, b| a.action_type.cmp(&b.action_type));
        let pick = self.pick_limited(&txn, claimer, n, &refs, closed, partitions_cap).await?;
        let held_back = self.held_back(&txn, &refs, &pick).await?;
        let claimed = if pick.chosen.is_empty() {
            Vec::new()
        } else {
            self.claim_ids(&txn, claimer, token, &pick.chosen).await?
        };
        let per_key = starts_per_key(&refs, &pick.chosen, &claimed);
        let record = what_to_record(&refs, &pick.usage, &per_key, &pick.adding, token, pick.now);
        self.record_starts(&txn, &record, pick.now).await?;
        self.mark_tracked(&txn, &pick.adding).await?;
        self.count_blocked(&txn, &held_back).await?;
        self.drop_old_starts(&txn, &refs, token, pick.now).await?;
        txn.commit().await.doing("committing a limited claim")?;
        if pick.keyed >= VACUUM_AFTER_KEYS {
            self.vacuum_in_background();
        }
        Ok(claimed)
    }

    /// PostgreSQL: `VACUUM actions` in the background, once a claim has computed a burst of
    /// partition keys. Keying a row rewrites an indexed column, so each row keyed leaves its
    /// entry without a key in `ix_actions_due_part` (and its old entries in the other indexes)
    /// until a vacuum. Every later limited claim's probe for rows without a key passes them:
    /// after 100k rows keyed at once, 1.4 ms of a 10 ms claim at the partition cap, and the
    /// claim as a whole 3.5 to 4 ms slower than after a vacuum, for up to a minute until
    /// autovacuum comes (BENCHMARKS.md, "The partition cap"). One at a time per process, none
    /// while another session vacuums the table (`SKIP_LOCKED`); a failure is only logged, as
    /// autovacuum will do the same work later. Nothing on SQLite, which keeps no dead entries.
    fn vacuum_in_background(&self) {
        use std::sync::atomic::Ordering;
        if self.backend != Backend::Postgres || self.vacuuming.swap(true, Ordering::AcqRel) {
            return;
        }
        let (db, vacuuming) = (self.db.clone(), self.vacuuming.clone());
        tokio::spawn(async move {
            if let Err(e) = db.execute_unprepared("VACUUM (SKIP_LOCKED) actions").await {
                tracing::warn!(error = %e, "cannot vacuum actions after a burst of partition keys; autovacuum will");
            }
            vacuuming.store(false, Ordering::Release);
        });
    }

    /// The types whose due work this claim held back, with the limit that held each: those the
    /// pick skipped a row of, and those with due work in a partition that was full at the start
    /// (one probe per type, for the blocked counters).
    pub(super) async fn held_back(
        &self,
        txn: &DatabaseTransaction,
        refs: &[&TypeLimit],
        pick: &LimitedPick,
    ) -> Result<HashMap<String, LimitField>, StoreError> {
        let mut held_back = pick.held_back.clone();
        for l in refs {
            if held_back.contains_key(&l.action_type) {
                continue;
            }
            let full: Vec<&(String, String)> = pick.full_at_start.iter().filter(|(t, _)| *t == l.action_type).collect();
            if full.is_empty() {
                continue;
            }
            if let Some(f) = self.blocked_probe(txn, l, &full, pick).await? {
                held_back.insert(l.action_type.clone(), f);
            }
        }
        Ok(held_back)
    }

    /// Whether type `l` has due work in a partition that was full at the start, which no open
    /// window holds; the limit that held it when so.
    async fn blocked_probe(
        &self,
        txn: &DatabaseTransaction,
        l: &TypeLimit,
        full: &[&(String, String)],
        pick: &LimitedPick,
    ) -> Result<Option<LimitField>, StoreError> {
        let LimitedPick { left, usage, now, held, .. } = pick;
        let mut values: Vec<Value> = vec![(*now).into()];
        let cond = match &l.effective.partition_by {
            None => String::new(),
            Some(path) => {
                let parts: Vec<String> =
                    full.iter().map(|(_, p)| p.clone()).filter(|p| p != OVERFLOW_PARTITION).collect();
                let overflow = full.iter().any(|(_, p)| p == OVERFLOW_PARTITION);
                let known = usage.tracked.get(&l.action_type).into_iter().flatten();
                match full_partitions(self.backend, path, parts, overflow.then_some(known), &mut values) {
                    Some(cond) => format!(" AND {cond}"),
                    None => String::new(),
                }
            }
        };
        let sql = format!(
            "SELECT 1 AS one FROM actions WHERE {} AND action_type = {}{cond}{held} LIMIT 1",
            super::super::due_sql("$1"),
            lit(&l.action_type)?
        );
        let found = txn.query_one_raw(self.stmt(&sql, values)).await.doing("probing held-back work")?.is_some();
        Ok(if found { full.iter().find_map(|k| left.get(*k).and_then(|(_, f)| *f)) } else { None })
    }

    /// The fenced claim of exactly the rows picked.
    async fn claim_ids(
        &self,
        txn: &DatabaseTransaction,
        claimer: &Claimer,
        token: i64,
        chosen: &[Chosen],
    ) -> Result<Vec<Claimed>, StoreError> {
        let ids: Vec<i64> = chosen.iter().map(|(id, _, _)| *id).collect();
        let ids = serde_json::Value::from(ids).to_string();
        let (sql, values) = self.claim_sql(claimer, token, Pick::Ids(&ids), "");
        claimed_rows(self, txn, token, sql, values).await
    }

    /// Writes the window's starts and the `limit_state` rows of [`what_to_record`].
    pub(super) async fn record_starts(
        &self,
        txn: &DatabaseTransaction,
        record: &Record,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if !record.starts.is_empty() {
            let sql = match self.backend {
                Backend::Sqlite => {
                    "INSERT INTO limit_starts (action_type, part, token, started_at, n) \
                     SELECT value ->> 0, value ->> 1, value ->> 2, $2, value ->> 3 FROM json_each($1) WHERE true \
                     ON CONFLICT (action_type, part, token) DO UPDATE SET n = limit_starts.n + excluded.n"
                }
                Backend::Postgres => {
                    "INSERT INTO limit_starts (action_type, part, token, started_at, n) \
                     SELECT r ->> 0, r ->> 1, (r ->> 2)::bigint, $2, (r ->> 3)::bigint FROM json_array_elements($1::json) AS r \
                     ON CONFLICT (action_type, part, token) DO UPDATE SET n = limit_starts.n + excluded.n"
                }
            };
            let starts = serde_json::Value::from(record.starts.clone()).to_string();
            txn.execute_raw(self.stmt(sql, [starts.into(), now.into()])).await.doing("recording limited starts")?;
        }
        for (t, part, day, used, exhausted) in &record.states {
            let sql = match day {
                Some(_) => {
                    "INSERT INTO limit_state (action_type, part, budget_day, budget_used, budget_exhausted_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (action_type, part) DO UPDATE SET \
                     budget_day = excluded.budget_day, budget_used = excluded.budget_used, \
                     budget_exhausted_at = excluded.budget_exhausted_at"
                }
                None => {
                    "INSERT INTO limit_state (action_type, part, budget_day, budget_used, budget_exhausted_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (action_type, part) DO NOTHING"
                }
            };
            let values: [Value; 5] =
                [t.as_str().into(), part.as_str().into(), day.clone().into(), i(*used).into(), (*exhausted).into()];
            txn.execute_raw(self.stmt(sql, values)).await.doing("recording the budget")?;
        }
        Ok(())
    }

    /// The waiting rows of the partitions this claim started to track (`adding`) leave the
    /// overflow: from now on the walk of the tracked rows (`ix_actions_due_tracked`) finds them.
    pub(super) async fn mark_tracked(
        &self,
        txn: &DatabaseTransaction,
        adding: &HashMap<String, HashSet<String>>,
    ) -> Result<(), StoreError> {
        for (t, values) in adding {
            if !values.is_empty() {
                let values: Vec<String> = values.iter().cloned().collect();
                self.mark_tracked_rows(txn, t, &serde_json::Value::from(values).to_string()).await?;
            }
        }
        Ok(())
    }

    /// Counts one held-back claim on each type's gate row, under the limit that held it.
    pub(super) async fn count_blocked(
        &self,
        txn: &DatabaseTransaction,
        held_back: &HashMap<String, LimitField>,
    ) -> Result<(), StoreError> {
        for (t, f) in held_back {
            let col = match f {
                LimitField::MaxRunning => "blocked_running",
                LimitField::Rate => "blocked_rate",
                LimitField::DailyBudget => "blocked_budget",
            };
            txn.execute_raw(self.stmt(
                &format!("UPDATE limit_state SET {col} = {col} + 1 WHERE action_type = $1 AND part = ''"),
                [t.as_str().into()],
            ))
            .await
            .doing("counting held-back work")?;
        }
        Ok(())
    }

    /// Starts older than their type's window count for nothing any more; they only take room,
    /// so one claim in 16 (by its token) drops them.
    pub(super) async fn drop_old_starts(
        &self,
        txn: &DatabaseTransaction,
        refs: &[&TypeLimit],
        token: i64,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if token % 16 != 0 {
            return Ok(());
        }
        let mut values: Vec<Value> = Vec::new();
        let conds = window_conds(refs, now, "<=", &mut values)?;
        if !conds.is_empty() {
            txn.execute_raw(self.stmt(&format!("DELETE FROM limit_starts WHERE {}", conds.join(" OR ")), values))
                .await
                .doing("dropping old starts")?;
        }
        Ok(())
    }
}

/// How many of the rows chosen landed, per limited (type, partition).
pub(super) fn starts_per_key(
    refs: &[&TypeLimit],
    chosen: &[Chosen],
    claimed: &[Claimed],
) -> BTreeMap<(String, String), u64> {
    let landed: HashSet<i64> = claimed.iter().map(|c| c.action.id).collect();
    let mut per_key: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (id, t, part) in chosen {
        if landed.contains(id) && refs.iter().any(|l| &l.action_type == t) {
            *per_key.entry((t.clone(), part.clone())).or_default() += 1;
        }
    }
    per_key
}

/// What a claim under `token` that started `per_key` records at `now`: a window row per rated
/// (type, partition), the day's budget use of each budgeted one (exhausted since the first
/// claim that used it up), and a row for each newly tracked partition (`adding`).
pub(super) fn what_to_record(
    refs: &[&TypeLimit],
    usage: &Usage,
    per_key: &BTreeMap<(String, String), u64>,
    adding: &HashMap<String, HashSet<String>>,
    token: i64,
    now: DateTime<Utc>,
) -> Record {
    let today = day_of(now);
    let mut out = Record::default();
    for ((t, part), k) in per_key {
        let Some(l) = refs.iter().find(|l| &l.action_type == t) else { continue };
        if l.effective.rate.is_some() {
            out.starts.push(serde_json::json!([t, part, token, k]));
        }
        if let Some(budget) = l.effective.daily_budget {
            let old = usage.state.get(&(t.clone(), part.clone())).cloned().unwrap_or_default();
            let same_day = old.day.as_deref() == Some(today.as_str());
            let used = if same_day { old.used } else { 0 } + k;
            let exhausted =
                if used >= budget { Some(old.exhausted_at.filter(|_| same_day).unwrap_or(now)) } else { None };
            out.states.push((t.clone(), part.clone(), Some(today.clone()), used, exhausted));
        }
    }
    // Newly tracked partitions get their row even without a budget.
    for (t, parts) in adding {
        for p in parts {
            if !out.states.iter().any(|(st, sp, ..)| st == t && sp == p) {
                out.states.push((t.clone(), p.clone(), None, 0, None));
            }
        }
    }
    out
}

/// The rows of a partitioned type that fall in a full partition: its value among `full`, or,
/// when the overflow partition is full (`overflow_known`: the tracked values), a value that is
/// none of those nor missing. `None` when no partition is full. Lists are bound into `values`.
fn full_partitions<'a>(
    backend: Backend,
    path: &PayloadPath,
    full: Vec<String>,
    overflow_known: Option<impl Iterator<Item = &'a String>>,
    values: &mut Vec<Value>,
) -> Option<String> {
    let expr = part_expr(backend, path);
    let mut conds = Vec::new();
    if !full.is_empty() {
        values.push(serde_json::Value::from(full).to_string().into());
        conds.push(format!("{expr} IN {}", json_elems(backend, values.len())));
    }
    if let Some(known) = overflow_known {
        let mut known: Vec<String> = known.cloned().collect();
        known.push(String::new());
        values.push(serde_json::Value::from(known).to_string().into());
        conds.push(format!("{expr} NOT IN {}", json_elems(backend, values.len())));
    }
    (!conds.is_empty()).then(|| format!("({})", conds.join(" OR ")))
}
