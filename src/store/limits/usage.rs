//! What limited types use: per (type, partition), the `RUNNING` attempts, the starts in the
//! rate's window and the day's budget, read under the gates for a claim (or without them for
//! the usage view `limits list`, the snapshot and `/metrics` show), and the starts an unstart
//! gives back.
//!
//! It counts and reports; what is left of a limit and whether a type is held are judged in
//! `crate::limits` (`LimitSpec::remaining`, `LimitUsage::is_held`).

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction, Value};

use super::super::{Backend, Context, Store, StoreError};
use super::{BUSIEST_PARTITIONS, day_of, in_list, kept_part_case, part_case, read_limits, u, window_conds};
use crate::limits::{LimitField, LimitUsage, OVERFLOW_PARTITION, PartUsage, TypeLimit};

/// Per (type, partition): what is in use.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Used {
    pub(super) running: u64,
    /// Starts in the rate's window.
    pub(super) window: u64,
}

/// Usage of the limited types, read under the gates (or, for a view, without them).
pub(super) struct Usage {
    pub(super) used: HashMap<(String, String), Used>,
    /// Per partitioned type: the tracked partition values.
    pub(super) tracked: HashMap<String, HashSet<String>>,
    /// Per (type, partition) whose `limit_state` row holds something (a budget, a counter):
    /// its budget and blocked counters. A row without one holds nothing.
    pub(super) state: HashMap<(String, String), StateRow>,
}

/// One `limit_state` row: the day's budget use and the blocked counters (gate rows only).
#[derive(Clone, Debug, Default)]
pub(super) struct StateRow {
    pub(super) day: Option<String>,
    pub(super) used: u64,
    pub(super) exhausted_at: Option<DateTime<Utc>>,
    pub(super) blocked: [u64; 3],
}

impl Usage {
    /// The partition a value counts under: itself when tracked (or when there is room to track
    /// it), else the overflow partition.
    pub(super) fn resolve(
        &self,
        limit: &TypeLimit,
        part: &str,
        cap: usize,
        adding: &mut HashMap<String, HashSet<String>>,
    ) -> String {
        if limit.effective.partition_by.is_none() {
            return String::new();
        }
        if part.is_empty() || part == OVERFLOW_PARTITION {
            return part.to_string();
        }
        let tracked = self.tracked.get(&limit.action_type);
        if tracked.is_some_and(|t| t.contains(part)) {
            return part.to_string();
        }
        let new = adding.entry(limit.action_type.clone()).or_default();
        if new.contains(part) {
            return part.to_string();
        }
        if tracked.map_or(0, HashSet::len) + new.len() < cap {
            new.insert(part.to_string());
            part.to_string()
        } else {
            OVERFLOW_PARTITION.to_string()
        }
    }

    /// What (type, partition) has left by [`crate::limits::LimitSpec::room`], given what it
    /// uses (its budget only if spent today).
    pub(super) fn left(&self, limit: &TypeLimit, part: &str, today: &str) -> (u64, Option<LimitField>) {
        let used = self.used.get(&(limit.action_type.clone(), part.to_string())).copied().unwrap_or_default();
        let budget_used = self
            .state
            .get(&(limit.action_type.clone(), part.to_string()))
            .filter(|s| s.day.as_deref() == Some(today))
            .map_or(0, |s| s.used);
        limit.effective.room(used.running, used.window, budget_used)
    }
}

impl Store {
    /// Due actions per limited type.
    async fn waiting_of(&self, limits: &[&TypeLimit], now: DateTime<Utc>) -> Result<BTreeMap<String, u64>, StoreError> {
        self.due_per_type(&format!(" AND action_type IN ({})", in_list(limits)?), now).await
    }

    /// Gives back the rate and budget of attempts that never started (`unstart`): `ids` are
    /// the rows just returned to `PENDING` under `token`s.
    pub(in crate::store) async fn give_back_starts(
        &self,
        txn: &DatabaseTransaction,
        unstarted: &[(i64, i64)],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if unstarted.is_empty() {
            return Ok(());
        }
        let limits: Vec<TypeLimit> = read_limits(self, txn, now).await?;
        let refs: Vec<&TypeLimit> = limits
            .iter()
            .filter(|l| l.enforced() && (l.effective.rate.is_some() || l.effective.daily_budget.is_some()))
            .collect();
        if refs.is_empty() {
            return Ok(());
        }
        let part_sql = part_case(self.backend, &refs)?;
        let ids: Vec<i64> = unstarted.iter().map(|(id, _)| *id).collect();
        let tokens: HashMap<i64, i64> = unstarted.iter().copied().collect();
        let sql = format!(
            "SELECT id, action_type, {part_sql} AS part FROM actions WHERE id IN ({}) AND action_type IN ({})",
            crate::store::actions::ids_in_json(self.backend, "$1"),
            in_list(&refs)?
        );
        let rows = txn
            .query_all_raw(self.stmt(&sql, [serde_json::Value::from(ids).to_string().into()]))
            .await
            .doing("reading unstarted limited work")?;
        let tracked = read_tracked(self, txn, &refs).await?;
        let today = day_of(now);
        let mut back: BTreeMap<(String, String, i64), i64> = BTreeMap::new();
        for r in rows {
            let id: i64 = r.try_get("", "id").doing("reading unstarted limited work")?;
            let t: String = r.try_get("", "action_type").doing("reading unstarted limited work")?;
            let raw: String = r.try_get("", "part").doing("reading unstarted limited work")?;
            let Some(l) = refs.iter().find(|l| l.action_type == t) else { continue };
            let part = counted_part(l, raw, &tracked);
            *back.entry((t, part, tokens.get(&id).copied().unwrap_or(0))).or_default() += 1;
        }
        for ((t, part, token), k) in back {
            txn.execute_raw(self.stmt(
                "UPDATE limit_starts SET n = n - $4 WHERE action_type = $1 AND part = $2 AND token = $3",
                [t.as_str().into(), part.as_str().into(), token.into(), k.into()],
            ))
            .await
            .doing("giving back unstarted starts")?;
            txn.execute_raw(self.stmt(
                "UPDATE limit_state SET budget_used = CASE WHEN budget_used > $4 THEN budget_used - $4 ELSE 0 END, \
                 budget_exhausted_at = NULL WHERE action_type = $1 AND part = $2 AND budget_day = $3",
                [t.as_str().into(), part.as_str().into(), today.as_str().into(), k.into()],
            ))
            .await
            .doing("giving back unstarted budget")?;
        }
        Ok(())
    }
}

impl crate::store::handles::Limits<'_> {
    /// Every limited type's usage: what is running, waiting, and left of each limit.
    pub async fn limit_usage(self) -> Result<Vec<LimitUsage>, StoreError> {
        self.usage(None).await
    }

    /// [`limit_usage`](Self::limit_usage), with the due actions of each type already counted
    /// (`due_by_type`, as `actions().due_counts_by_type()` counts them): the snapshot counts
    /// the due rows once for the queue and the limits, not a second time per limited type (at
    /// the partition cap with 100k rows waiting, 45 ms of a 280 ms SQLite tick).
    pub async fn limit_usage_counted(self, due_by_type: &BTreeMap<String, u64>) -> Result<Vec<LimitUsage>, StoreError> {
        self.usage(Some(due_by_type)).await
    }

    async fn usage(self, due_by_type: Option<&BTreeMap<String, u64>>) -> Result<Vec<LimitUsage>, StoreError> {
        let limits = read_limits(self.store, &self.store.db, self.store.now()).await?;
        if limits.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.store.db_now().await?;
        let refs: Vec<&TypeLimit> = limits.iter().filter(|l| l.enforced()).collect();
        let (usage, waiting) = if refs.is_empty() {
            (Usage { used: HashMap::new(), tracked: HashMap::new(), state: HashMap::new() }, BTreeMap::new())
        } else {
            let waiting = match due_by_type {
                Some(due) => {
                    refs.iter().filter_map(|l| Some((l.action_type.clone(), *due.get(&l.action_type)?))).collect()
                }
                None => self.store.waiting_of(&refs, now).await?,
            };
            (read_usage(self.store, &self.store.db, &refs, now).await?, waiting)
        };
        let today = day_of(now);
        let mut out = Vec::with_capacity(limits.len());
        for l in &limits {
            let t = &l.action_type;
            // Every partition with something in use, plus the one a new value would take.
            let mut parts: BTreeMap<String, PartUsage> = BTreeMap::new();
            for ((ty, p), used) in &usage.used {
                if ty == t {
                    let e = parts
                        .entry(p.clone())
                        .or_insert_with(|| PartUsage { partition: p.clone(), ..Default::default() });
                    e.running += used.running;
                    e.rate_used += used.window;
                }
            }
            for ((ty, p), s) in &usage.state {
                if ty == t
                    && s.day.as_deref() == Some(today.as_str())
                    && (!p.is_empty() || l.effective.partition_by.is_none())
                {
                    let e = parts
                        .entry(p.clone())
                        .or_insert_with(|| PartUsage { partition: p.clone(), ..Default::default() });
                    e.budget_used = s.used;
                }
            }
            // The tightest partition's remainder of each limit (a fresh one when none is in use).
            let mut tightest: [Option<u64>; 3] = l.effective.remaining(0, 0, 0);
            for p in parts.values() {
                let left = l.effective.remaining(p.running, p.rate_used, p.budget_used);
                for (t, l) in tightest.iter_mut().zip(left) {
                    *t = t.zip(l).map(|(a, b)| a.min(b));
                }
            }
            let gate = usage.state.get(&(t.clone(), String::new())).cloned().unwrap_or_default();
            let exhausted = usage
                .state
                .iter()
                .filter(|((ty, _), s)| ty == t && s.day.as_deref() == Some(today.as_str()))
                .filter_map(|(_, s)| s.exhausted_at)
                .min();
            let mut list: Vec<PartUsage> = parts.into_values().collect();
            list.sort_by(|a, b| {
                (b.running, b.rate_used, b.budget_used)
                    .cmp(&(a.running, a.rate_used, a.budget_used))
                    .then(a.partition.cmp(&b.partition))
            });
            let running = list.iter().map(|p| p.running).sum();
            let partitioned = l.effective.partition_by.is_some();
            list.truncate(if partitioned { BUSIEST_PARTITIONS } else { 0 });
            out.push(LimitUsage {
                action_type: t.clone(),
                limit: l.clone(),
                running,
                waiting: waiting.get(t).copied().unwrap_or(0),
                running_remaining: tightest[0],
                rate_remaining: tightest[1],
                budget_remaining: tightest[2],
                budget_exhausted_at: if tightest[2] == Some(0) { exhausted } else { None },
                blocked_running: gate.blocked[0],
                blocked_rate: gate.blocked[1],
                blocked_budget: gate.blocked[2],
                partitions: list,
                partitions_tracked: usage.tracked.get(t).map_or(0, |s| s.len() as u64),
                // The store's clock, as the claim's: what it shows is what the claim does.
                outside_allowed_hours: l.enforced() && l.effective.closed_at(self.store.now()),
            });
        }
        Ok(out)
    }
}

/// The tracked partition values of each partitioned type.
async fn read_tracked<C: ConnectionTrait>(
    store: &Store,
    conn: &C,
    refs: &[&TypeLimit],
) -> Result<HashMap<String, HashSet<String>>, StoreError> {
    let parted: Vec<&TypeLimit> = refs.iter().copied().filter(|l| l.effective.partition_by.is_some()).collect();
    let mut out: HashMap<String, HashSet<String>> = HashMap::new();
    if parted.is_empty() {
        return Ok(out);
    }
    let sql = format!(
        "SELECT action_type, part FROM limit_state WHERE part <> '' AND part <> '{OVERFLOW_PARTITION}' AND action_type IN ({})",
        in_list(&parted)?
    );
    for r in conn.query_all_raw(store.stmt(&sql, [])).await.doing("reading tracked partitions")? {
        let t: String = r.try_get("", "action_type").doing("reading tracked partitions")?;
        let p: String = r.try_get("", "part").doing("reading tracked partitions")?;
        out.entry(t).or_default().insert(p);
    }
    Ok(out)
}

/// Running attempts, window starts and budget rows of the limited types.
pub(super) async fn read_usage<C: ConnectionTrait>(
    store: &Store,
    conn: &C,
    refs: &[&TypeLimit],
    now: DateTime<Utc>,
) -> Result<Usage, StoreError> {
    let mut usage = Usage { used: HashMap::new(), tracked: HashMap::new(), state: HashMap::new() };
    let by_type: HashMap<&str, &TypeLimit> = refs.iter().map(|l| (l.action_type.as_str(), *l)).collect();
    let types = in_list(refs)?;
    // One statement, four parts (`k`): the state rows that hold something (budgets, counters),
    // per type every row's partition as one JSON array (the tracked partitions: at the cap, a
    // thousand of them, read at every claim, from the primary key alone), the running attempts
    // by partition value, and the starts in each rated type's window. A row with nothing in it
    // is only a tracked value: it gets no `StateRow` (its room is a fresh partition's).
    let held = "(budget_day IS NOT NULL OR budget_used <> 0 OR budget_exhausted_at IS NOT NULL \
                OR blocked_running <> 0 OR blocked_rate <> 0 OR blocked_budget <> 0)";
    let parts = match store.backend {
        Backend::Sqlite => "json_group_array(part)",
        Backend::Postgres => "CAST(json_agg(part) AS TEXT)",
    };
    let mut sql = format!(
        "SELECT 's' AS k, action_type, part, 0 AS n, budget_day, budget_used, budget_exhausted_at, \
           blocked_running, blocked_rate, blocked_budget FROM limit_state WHERE action_type IN ({types}) AND {held} \
         UNION ALL \
         SELECT 'p', action_type, {parts}, 0, NULL, 0, NULL, 0, 0, 0 FROM limit_state \
           WHERE action_type IN ({types}) GROUP BY action_type \
         UNION ALL \
         SELECT 'r', action_type, part, COUNT(*), NULL, 0, NULL, 0, 0, 0 FROM (SELECT action_type, {} AS part \
           FROM actions WHERE status = 'RUNNING' AND action_type IN ({types})) r GROUP BY action_type, part",
        kept_part_case(store.backend, refs)?
    );
    let mut values: Vec<Value> = Vec::new();
    let conds = window_conds(refs, now, ">", &mut values)?;
    if !conds.is_empty() {
        sql.push_str(&format!(
            " UNION ALL SELECT 'w', action_type, part, CAST(SUM(n) AS BIGINT), NULL, 0, NULL, 0, 0, 0 \
             FROM limit_starts WHERE {} GROUP BY action_type, part",
            conds.join(" OR ")
        ));
    }
    let doing = "reading what limited types use";
    let mut running: Vec<(String, String, u64)> = Vec::new();
    for r in conn.query_all_raw(store.stmt(&sql, values)).await.doing(doing)? {
        let k: String = r.try_get("", "k").doing(doing)?;
        let t: String = r.try_get("", "action_type").doing(doing)?;
        let p: String = r.try_get("", "part").doing(doing)?;
        let n = u(r.try_get("", "n").doing(doing)?);
        let partitioned = by_type.get(t.as_str()).is_some_and(|l| l.effective.partition_by.is_some());
        match k.as_str() {
            "r" => running.push((t, p, n)),
            "w" => usage.used.entry((t, p)).or_default().window += n,
            "p" => {
                let parts: Vec<String> = serde_json::from_str(&p)
                    .map_err(|e| StoreError::Internal(format!("reading the tracked partitions of {t}: {e}")))?;
                if partitioned {
                    let tracked = usage.tracked.entry(t).or_default();
                    tracked.extend(parts.into_iter().filter(|p| !p.is_empty() && p != OVERFLOW_PARTITION));
                }
            }
            _ => {
                let row = StateRow {
                    day: r.try_get("", "budget_day").doing(doing)?,
                    used: u(r.try_get("", "budget_used").doing(doing)?),
                    exhausted_at: r.try_get("", "budget_exhausted_at").doing(doing)?,
                    blocked: [
                        u(r.try_get("", "blocked_running").doing(doing)?),
                        u(r.try_get("", "blocked_rate").doing(doing)?),
                        u(r.try_get("", "blocked_budget").doing(doing)?),
                    ],
                };
                if partitioned && !p.is_empty() && p != OVERFLOW_PARTITION {
                    usage.tracked.entry(t.clone()).or_default().insert(p.clone());
                }
                usage.state.insert((t, p), row);
            }
        }
    }
    for (t, p, n) in running {
        let Some(l) = by_type.get(t.as_str()) else { continue };
        let part = counted_part(l, p, &usage.tracked);
        usage.used.entry((t, part)).or_default().running += n;
    }
    Ok(usage)
}

/// The partition an already claimed row of type `limit` counts under: `''` for an unpartitioned
/// type, its value when tracked (or missing), else the overflow partition (where it was counted
/// when claimed, the tracked values never shrinking).
fn counted_part(limit: &TypeLimit, raw: String, tracked: &HashMap<String, HashSet<String>>) -> String {
    if limit.effective.partition_by.is_none() {
        String::new()
    } else if raw.is_empty() || tracked.get(&limit.action_type).is_some_and(|s| s.contains(&raw)) {
        raw
    } else {
        OVERFLOW_PARTITION.to_string()
    }
}
