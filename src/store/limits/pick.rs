//! The limited pick: which due rows a claim that serves limited types takes, in claim order,
//! as a sequence of named steps inside the claim's transaction ([`Store::pick_limited`]):
//! 1. [`lock_gates`]: each limited type's gate row, locked in type order (the database's time
//!    read with it);
//! 2. [`Store::key_partitions`]: the partition key of new waiting rows (of all of them when
//!    `partition_by` changed);
//! 3. `usage::read_usage`: what each (type, partition) has in use;
//! 4. [`Picking::start`]: what each (type, partition) has left at the start;
//! 5. per pass (at most [`PICK_PASSES`]): [`Store::walk`] (the first due rows of the types not
//!    left out), [`Store::keyed_candidates`] (a partitioned type with a full partition, by its
//!    keys), [`merge`] (both in claim order, what may come later deferred) and [`Picking::take`]
//!    (each row into its partition while it has room).
//!
//! The claim (`claim.rs`) and the dry run (`actions/claim.rs`'s `pick`) both pick through here.
//! It reads and counts; it must not write an action (the keys are the state machine's write,
//! `key_waiting_rows`) and it must not judge a limit: what is left is `LimitSpec::remaining`'s.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction, Value};

use super::super::actions::Claimer;
use super::super::{Backend, Context, Store, StoreError};
use super::usage::Usage;
use super::{day_of, i, in_list, json_elems, lit, part_case, part_expr};
use crate::limits::{LimitField, OVERFLOW_PARTITION, TypeLimit};

/// At most this many passes of the limited claim's pick (each pass leaves out what the one
/// before found full); a batch still short after them is topped up by the next claim.
const PICK_PASSES: usize = 8;

/// Keys computed by one claim from which PostgreSQL's statistics of `actions` are read again.
const ANALYZE_AFTER_KEYS: u64 = 1000;

/// A limited claim that leaves something out picks per due type when there are at most this
/// many due types (else in one walk of the due index).
const PER_TYPE_PICK_MAX: usize = 32;

/// What each (type, partition) has left: how many more rows it may take, and the limit that
/// bounds it (`None`: unlimited).
pub(super) type Room = HashMap<(String, String), (u64, Option<LimitField>)>;

/// A row chosen: `(id, type, partition)`.
pub(super) type Chosen = (i64, String, String);

/// What [`Store::pick_limited`] chose: `(id, type, partition)` in claim order, and what it
/// read and counted on the way, which the claim records.
pub(in crate::store) struct LimitedPick {
    pub(in crate::store) chosen: Vec<Chosen>,
    pub(super) held_back: HashMap<String, LimitField>,
    pub(super) usage: Usage,
    pub(super) adding: HashMap<String, HashSet<String>>,
    pub(super) left: Room,
    pub(super) full_at_start: HashSet<(String, String)>,
    pub(super) now: DateTime<Utc>,
    /// The condition the pick added for open windows and allowed hours (see [`Picking::held`]).
    pub(super) held: String,
    /// How many partition keys step 2 computed.
    pub(super) keyed: u64,
}

/// A pick in progress: what the types use and have left, and what the passes chose so far.
pub(super) struct Picking<'a> {
    refs: &'a [&'a TypeLimit],
    by_type: HashMap<&'a str, &'a TypeLimit>,
    usage: Usage,
    now: DateTime<Utc>,
    today: String,
    cap: usize,
    want_total: usize,
    left: Room,
    adding: HashMap<String, HashSet<String>>,
    chosen: Vec<Chosen>,
    held_back: HashMap<String, LimitField>,
    /// At the partition cap, walk the tracked partitions' rows in claim order
    /// ([`Store::tracked_walk`]) before probing each tracked value (off in tests, to compare).
    pub(super) walk_tracked: bool,
    /// What open maintenance windows hold (`store/windows.rs`, ` AND NOT (...)`), added to
    /// every due condition of the pick; empty when none is open.
    pub(super) held: String,
}

impl<'a> Picking<'a> {
    /// Step 4: what each (type, partition) with something in use in `usage` has left at `now`
    /// (every type's `''`, and a partitioned type's overflow, among them), for a pick of up to
    /// `n` rows with at most `cap` partition values tracked per type. A tracked value with
    /// nothing in use has a fresh partition's room, computed when a row of it is taken; it is
    /// listed here only when that room is none (then it is full from the start). At the cap
    /// that leaves a thousand rooms uncomputed at every claim.
    pub(super) fn start(refs: &'a [&'a TypeLimit], usage: Usage, now: DateTime<Utc>, cap: usize, n: u64) -> Self {
        let today = day_of(now);
        let by_type: HashMap<&str, &TypeLimit> = refs.iter().map(|l| (l.action_type.as_str(), *l)).collect();
        let mut left = Room::new();
        let mut known: Vec<(String, String)> = usage.used.keys().cloned().collect();
        known.extend(usage.state.keys().cloned());
        for l in refs {
            known.push((l.action_type.clone(), String::new()));
            if l.effective.partition_by.is_some() {
                known.push((l.action_type.clone(), OVERFLOW_PARTITION.to_string()));
                if l.effective.room(0, 0, 0).0 == 0 {
                    let tracked = usage.tracked.get(&l.action_type).into_iter().flatten();
                    known.extend(tracked.map(|p| (l.action_type.clone(), p.clone())));
                }
            }
        }
        for key in known {
            if let Some(l) = by_type.get(key.0.as_str()) {
                left.entry(key.clone()).or_insert_with(|| usage.left(l, &key.1, &today));
            }
        }
        Picking {
            refs,
            by_type,
            usage,
            now,
            today,
            cap,
            want_total: usize::try_from(n).unwrap_or(usize::MAX),
            left,
            adding: HashMap::new(),
            chosen: Vec::new(),
            held_back: HashMap::new(),
            walk_tracked: true,
            held: String::new(),
        }
    }

    /// The (type, partition) pairs with nothing left.
    fn full(&self) -> HashSet<(String, String)> {
        self.left.iter().filter(|(_, (n, _))| *n == 0).map(|(k, _)| k.clone()).collect()
    }

    /// Whether some (type, partition) has nothing left.
    fn any_full(&self) -> bool {
        self.left.values().any(|(n, _)| *n == 0)
    }

    /// How many more rows the batch takes.
    fn want(&self) -> usize {
        self.want_total - self.chosen.len()
    }

    /// The partitioned types picked by their keys, never walked: those with a full partition,
    /// and those at the partition cap whose overflow has less room than the batch wants (a
    /// walk would step over the overflow's backlog past what it can take).
    pub(super) fn keyed_types(&self) -> Vec<&'a TypeLimit> {
        let want = self.want();
        self.refs.iter().copied().filter(|l| self.full_parts(l).is_some_and(|f| f.keyed(want))).collect()
    }

    /// The full partitions of partitioned type `l` (`None` for an unpartitioned type): the
    /// tracked values (and `''`) with nothing left and, when there is no room to track another
    /// value, the tracked values and what the overflow partition has left.
    fn full_parts(&self, l: &TypeLimit) -> Option<FullParts> {
        l.effective.partition_by.as_ref()?;
        let t = &l.action_type;
        let values: Vec<String> = self
            .left
            .iter()
            .filter(|((ty, p), (n, _))| ty == t && *n == 0 && p != OVERFLOW_PARTITION)
            .map(|((_, p), _)| p.clone())
            .collect();
        let tracked: Vec<String> = self
            .usage
            .tracked
            .get(t)
            .into_iter()
            .flatten()
            .chain(self.adding.get(t).into_iter().flatten())
            .cloned()
            .collect();
        let overflow = self.left.get(&(t.clone(), OVERFLOW_PARTITION.to_string())).map_or(0, |(n, _)| *n);
        let at_cap = (tracked.len() >= self.cap).then_some((tracked, overflow));
        Some(FullParts { values, at_cap })
    }

    /// Whether the walk leaves type `t` out: picked by its keys, or unpartitioned and full.
    fn left_out(&self, t: &str, keyed: &[&TypeLimit]) -> bool {
        keyed.iter().any(|l| l.action_type == t)
            || self.by_type.get(t).is_some_and(|l| {
                l.effective.partition_by.is_none()
                    && self.left.get(&(t.to_string(), String::new())).is_some_and(|(n, _)| *n == 0)
            })
    }

    /// Step 8: takes `rows` (in claim order) while the batch has room, each into its (type,
    /// partition) when that has room left (a new partition value is tracked while there is room
    /// to track it, else it counts in the overflow). Returns whether a row was skipped for a
    /// full one; its type is then held back by the limit that was full.
    pub(super) fn take(&mut self, rows: Vec<Candidate>) -> bool {
        let mut skipped = false;
        for c in rows {
            if self.chosen.len() >= self.want_total {
                break;
            }
            let Some(l) = self.by_type.get(c.action_type.as_str()) else {
                self.chosen.push((c.id, c.action_type, String::new()));
                continue;
            };
            let part = self.usage.resolve(l, &c.part, self.cap, &mut self.adding);
            let key = (c.action_type.clone(), part.clone());
            let slot = self.left.entry(key).or_insert_with(|| self.usage.left(l, &part, &self.today));
            if slot.0 > 0 {
                slot.0 -= 1;
                self.chosen.push((c.id, c.action_type, part));
            } else {
                skipped = true;
                if let Some(f) = slot.1 {
                    self.held_back.entry(c.action_type).or_insert(f);
                }
            }
        }
        skipped
    }

    fn finish(self, full_at_start: HashSet<(String, String)>) -> LimitedPick {
        let Picking { chosen, held_back, usage, adding, left, now, held, .. } = self;
        LimitedPick { chosen, held_back, usage, adding, left, full_at_start, now, held, keyed: 0 }
    }
}

#[cfg(test)]
impl Picking<'_> {
    /// What (type, partition) has left now.
    pub(super) fn room(&self, (t, p): (&str, &str)) -> Option<(u64, Option<LimitField>)> {
        let listed = self.left.get(&(t.to_string(), p.to_string())).copied();
        listed.or_else(|| self.by_type.get(t).map(|l| self.usage.left(l, p, &self.today)))
    }

    pub(super) fn chosen(&self) -> &[Chosen] {
        &self.chosen
    }

    pub(super) fn usage(&self) -> &Usage {
        &self.usage
    }

    pub(super) fn finish_for_test(self) -> LimitedPick {
        self.finish(HashSet::new())
    }
}

impl Store {
    /// The rows a limited claim of `n` for `claimer` takes now, in claim order, with what it
    /// read to choose them, leaving out the rows of the `closed` types (outside their allowed
    /// hours) and those open windows hold; claims nothing. In `txn`, which takes the gates of `refs` (sorted
    /// by type) and computes the partition keys of new rows. The steps are the module doc's.
    pub(in crate::store) async fn pick_limited(
        &self,
        txn: &DatabaseTransaction,
        claimer: &Claimer,
        n: u64,
        refs: &[&TypeLimit],
        closed: &[String],
        partitions_cap: usize,
    ) -> Result<LimitedPick, StoreError> {
        let (now, keyed_for) = lock_gates(self, txn, refs).await?;
        let keyed = self.key_partitions(txn, refs, &keyed_for).await?;
        let usage = super::usage::read_usage(self, txn, refs, now).await?;
        let mut picking = Picking::start(refs, usage, now, partitions_cap, n);
        picking.held = self.held_filter(txn, closed).await?;
        let picked = self.pick_passes(txn, claimer, picking).await?;
        Ok(LimitedPick { keyed, ..picked })
    }

    /// Steps 5 to 8 from pick `p` as step 4 left it: the passes, until the batch is full or a
    /// pass leaves nothing out.
    pub(super) async fn pick_passes(
        &self,
        txn: &DatabaseTransaction,
        claimer: &Claimer,
        mut p: Picking<'_>,
    ) -> Result<LimitedPick, StoreError> {
        let full_at_start = p.full();
        let mut due_types: Option<Vec<String>> = None;
        for _pass in 0..PICK_PASSES {
            let want = p.want();
            let keyed = p.keyed_types();
            if (p.any_full() || !keyed.is_empty()) && due_types.is_none() {
                due_types = Some(self.due_type_list(txn).await?);
            }
            let walked = self.walk(txn, claimer, &p, &keyed, want, due_types.as_deref()).await?;
            let walked_all = walked.len() < want;
            let mut keyed_rows = Vec::new();
            let mut bound: Option<Rank> = None;
            for l in &keyed {
                let (found, incomplete_from) = self.keyed_candidates(txn, l, &p, want).await?;
                keyed_rows.extend(found);
                bound = bound.into_iter().chain(incomplete_from).min();
            }
            let (rows, deferred) = merge(walked, walked_all, keyed_rows, bound);
            let skipped = p.take(rows);
            if p.want() == 0 || (walked_all && !deferred) || (!skipped && !deferred) {
                break;
            }
        }
        Ok(p.finish(full_at_start))
    }

    /// Step 5, the walk: the first `want` due rows, in claim order, of the types the claimer
    /// serves, leaving out the unpartitioned types that are full, the types picked by their
    /// keys (`keyed`) and the ids already chosen. With something full or keyed, one walk in
    /// claim order would step over every row of it (a held backlog of a higher priority: all of
    /// it, at every claim); instead each due type (`due_types`, when there are few) gives its first
    /// rows through its own index, and the claim order is taken over those.
    pub(super) async fn walk(
        &self,
        txn: &DatabaseTransaction,
        claimer: &Claimer,
        p: &Picking<'_>,
        keyed: &[&TypeLimit],
        want: usize,
        due_types: Option<&[String]>,
    ) -> Result<Vec<Candidate>, StoreError> {
        let mut values: Vec<Value> = Vec::new();
        let exclude = exclusions(p, keyed)?;
        let types = claimer_types(claimer, &mut values);
        values.push(p.now.into());
        let now_at = format!("${}", values.len());
        values.push(i(want as u64).into());
        let limit_at = format!("${}", values.len());
        let lock = if self.backend == Backend::Postgres { " FOR UPDATE SKIP LOCKED" } else { "" };
        let due = format!("{}{types}{exclude}{}", super::super::due_sql(&now_at), p.held);
        let order = super::super::CLAIM_ORDER_SQL;
        let pick = match due_types {
            Some(list)
                if (p.any_full() || !keyed.is_empty()) && !list.is_empty() && list.len() <= PER_TYPE_PICK_MAX =>
            {
                let mut parts = Vec::new();
                // SQLite's planner, seeing few types, would rather walk the due index.
                let index_hint = match self.backend {
                    Backend::Sqlite => " INDEXED BY ix_actions_due_type",
                    Backend::Postgres => "",
                };
                for t in list.iter().filter(|t| claimer.serves(t) && !p.left_out(t, keyed)) {
                    values.push(t.as_str().into());
                    parts.push(format!(
                        "SELECT id FROM (SELECT id FROM actions{index_hint} WHERE action_type = ${} AND {due} \
                         ORDER BY {order} LIMIT {limit_at}) t{}",
                        values.len(),
                        parts.len()
                    ));
                }
                if parts.is_empty() { None } else { Some(format!("id IN ({}) AND {due}", parts.join(" UNION ALL "))) }
            }
            _ => Some(due),
        };
        let Some(pick) = pick else { return Ok(Vec::new()) };
        let part_sql = part_case(self.backend, p.refs)?;
        let sql = format!(
            "SELECT id, action_type, {part_sql} AS part, CAST(priority AS BIGINT) AS prio, not_before \
             FROM actions WHERE {pick} ORDER BY {order} LIMIT {limit_at}{lock}"
        );
        self.candidates(txn, &sql, values, "picking limited work").await
    }

    /// The candidates that `sql` selects (`id, action_type, part, prio, not_before`), in claim
    /// order. SQLite's driver hands rows over one at a time, about 3 µs each, three times what
    /// SQLite takes to find them (130 rows of the walk of the tracked partitions: 0.55 ms
    /// against 0.14): there they come as one JSON array, in claim order, unless a `not_before`
    /// is not RFC 3339 text (then as rows, which the driver reads in every form it takes).
    async fn candidates(
        &self,
        txn: &DatabaseTransaction,
        sql: &str,
        values: Vec<Value>,
        doing: &'static str,
    ) -> Result<Vec<Candidate>, StoreError> {
        if self.backend == Backend::Sqlite {
            let packed = format!(
                "SELECT json_group_array(json_array(id, action_type, part, prio, not_before) \
                 ORDER BY prio DESC, not_before, id) AS rows FROM ({sql})"
            );
            let row = txn.query_one_raw(self.stmt(&packed, values.clone())).await.doing(doing)?;
            let text = match row {
                Some(r) => r.try_get::<Option<String>>("", "rows").doing(doing)?,
                None => None,
            };
            if let Some(found) = Candidate::unpack(text.as_deref().unwrap_or("[]")) {
                return Ok(found);
            }
        }
        let rows = txn.query_all_raw(self.stmt(sql, values)).await.doing(doing)?;
        rows.iter().map(Candidate::read).collect()
    }

    /// The types with claimable rows, up to one more than [`PER_TYPE_PICK_MAX`]: a skip scan of
    /// `ix_actions_due_type`, one index probe per type.
    async fn due_type_list(&self, txn: &DatabaseTransaction) -> Result<Vec<String>, StoreError> {
        let sql = format!(
            "WITH RECURSIVE t(x) AS ( \
               SELECT (SELECT action_type FROM actions WHERE {c} ORDER BY action_type LIMIT 1) \
               UNION ALL \
               SELECT (SELECT action_type FROM actions WHERE {c} AND action_type > t.x ORDER BY action_type LIMIT 1) \
               FROM t WHERE t.x IS NOT NULL) \
             SELECT x AS action_type FROM t WHERE x IS NOT NULL LIMIT {}",
            PER_TYPE_PICK_MAX + 1,
            c = super::super::CLAIMABLE_SQL
        );
        let rows = txn.query_all_raw(self.stmt(&sql, [])).await.doing("listing due types")?;
        rows.iter().map(|r| r.try_get::<String>("", "action_type").doing("listing due types")).collect()
    }

    /// Step 5, by keys: candidates of partitioned type `l`, which has a full partition, and the
    /// claim order from which they are incomplete (`None`: they are all there is). The keys
    /// that may take a row are the type's tracked values (and `''`) that are not full when the
    /// overflow is full with no room to track another, else every key among its waiting rows
    /// (a skip scan of `ix_actions_due_part`, one probe per key) but the full ones. Of those,
    /// each key's first waiting row is read (one probe per key), and only the `want` keys
    /// whose first row comes first in claim order give their first rows, as many as a
    /// partition of the type could take (at most `want`): a key after them cannot take a row
    /// before the first row of the `want + 1`-th, which is the bound returned. Every row the
    /// walk in claim order could choose before that bound is among them; the rows of a full
    /// partition are not read.
    pub(super) async fn keyed_candidates(
        &self,
        txn: &DatabaseTransaction,
        l: &TypeLimit,
        p: &Picking<'_>,
        want: usize,
    ) -> Result<(Vec<Candidate>, Option<Rank>), StoreError> {
        let Some(full) = p.full_parts(l) else { return Ok((Vec::new(), None)) };
        // A fresh partition's room bounds every partition's: no value takes more rows than that.
        let fresh = l.effective.remaining(0, 0, 0).into_iter().flatten().min().unwrap_or(u64::MAX);
        let per_key = usize::try_from(fresh).unwrap_or(usize::MAX).min(want);
        if per_key == 0 {
            return Ok((Vec::new(), None));
        }
        if p.walk_tracked
            && let Some(found) = self.tracked_walk(txn, l, p, &full, want, per_key).await?
        {
            return Ok(found);
        }
        let keys_wanted = want.saturating_add(1);
        let mut values: Vec<Value> = vec![l.action_type.as_str().into(), p.now.into()];
        let keys = self.keys_with_room(full, &mut values);
        let due = format!("action_type = $1 AND {}{}{}", super::super::due_sql("$2"), chosen_sql(&p.chosen), p.held);
        let order = format!("ORDER BY {}", super::super::CLAIM_ORDER_SQL);
        let f_order = super::super::claim_order_of("f");
        let by_key = self.by_key_hint();
        let sql = match self.backend {
            // No row lock: claimers of the type take turns at its gate, and the claim of the
            // rows chosen lands only on rows still waiting.
            Backend::Postgres => format!(
                "WITH RECURSIVE {keys}, \
                 k(x) AS (SELECT v.x FROM v CROSS JOIN LATERAL \
                   (SELECT priority, not_before, id FROM actions WHERE part_key = v.x AND {due} {order} LIMIT 1) f \
                   ORDER BY {f_order} LIMIT {keys_wanted}) \
                 SELECT b.id, b.action_type, b.part_key AS part, b.prio, b.not_before FROM k CROSS JOIN LATERAL \
                   (SELECT id, action_type, part_key, CAST(priority AS BIGINT) AS prio, not_before FROM actions \
                    WHERE part_key = k.x AND {due} {order} LIMIT {per_key}) b"
            ),
            Backend::Sqlite => format!(
                "WITH RECURSIVE {keys}, \
                 k(x) AS (SELECT v.x FROM v JOIN actions f ON f.id = \
                   (SELECT id FROM actions{by_key} WHERE part_key = v.x AND {due} {order} LIMIT 1) \
                   ORDER BY {f_order} LIMIT {keys_wanted}) \
                 SELECT a.id, a.action_type, a.part_key AS part, CAST(a.priority AS BIGINT) AS prio, a.not_before \
                 FROM k JOIN actions a ON a.id IN \
                   (SELECT id FROM actions{by_key} WHERE part_key = k.x AND {due} {order} LIMIT {per_key})"
            ),
        };
        let rows = self.candidates(txn, &sql, values, "picking partitioned work").await?;
        // Each key's first row; with more keys than `want`, the first row of the last one bounds
        // what is complete.
        let mut firsts: HashMap<&str, Rank> = HashMap::new();
        for c in &rows {
            let first = firsts.entry(c.part.as_str()).or_insert_with(|| c.rank());
            if c.rank() < *first {
                *first = c.rank();
            }
        }
        let bound = if firsts.len() >= keys_wanted { firsts.into_values().max() } else { None };
        Ok((rows, bound))
    }

    /// Step 5, by keys at the partition cap: no value can be tracked, so the keys that may take
    /// a row are the tracked values (and `''`) that are not full, and the untracked values,
    /// which share the overflow partition. The tracked values' waiting rows are the type's rows
    /// marked out of the overflow (`part_overflow = 0`, `ix_actions_due_tracked`); they are
    /// walked in claim order, at most `2 × want + 8` of them: the rows of full partitions are
    /// passed over, and each key gives at most `per_key`, as the probes would. The overflow's
    /// rows (`part_overflow = 1`, the same index) give the first of them it has room for, and
    /// the next: no later one can be taken. The candidates are complete up to the last tracked row read
    /// (the bound) when the walk stopped at its limit. `None` (the probes then) when the walk
    /// does not apply: below the cap, with values tracked by this very claim (their rows are
    /// marked when it records them), with few keys to probe, or when the walk met too many rows
    /// it could not take to fill the batch.
    async fn tracked_walk(
        &self,
        txn: &DatabaseTransaction,
        l: &TypeLimit,
        p: &Picking<'_>,
        full: &FullParts,
        want: usize,
        per_key: usize,
    ) -> Result<Option<(Vec<Candidate>, Option<Rank>)>, StoreError> {
        let Some((known, overflow_room)) = &full.at_cap else { return Ok(None) };
        if p.adding.get(&l.action_type).is_some_and(|a| !a.is_empty()) {
            return Ok(None);
        }
        let mut with_room: HashSet<&str> = known.iter().map(String::as_str).collect();
        with_room.insert("");
        for v in &full.values {
            with_room.remove(v.as_str());
        }
        if with_room.len() <= want {
            return Ok(None);
        }
        let limit = want.saturating_mul(2).saturating_add(8);
        // The overflow's first rows while it has room, and the one after, which the take holds
        // back (and counts so) when it reaches it; none when it is full (`held_back` probes it).
        let overflow_limit = match usize::try_from(*overflow_room).unwrap_or(usize::MAX) {
            0 => 0,
            room => room.min(want).saturating_add(1),
        };
        let mut values: Vec<Value> = vec![l.action_type.as_str().into(), p.now.into(), i(limit as u64).into()];
        let hint = match self.backend {
            Backend::Sqlite => " INDEXED BY ix_actions_due_tracked",
            Backend::Postgres => "",
        };
        let walk = |overflow: u8, limit_at: &str| {
            format!(
                "SELECT * FROM (SELECT id, action_type, part_key AS part, CAST(priority AS BIGINT) AS prio, not_before \
                 FROM actions{hint} WHERE action_type = $1 AND part_overflow = {overflow} AND {}{}{} \
                 ORDER BY {} LIMIT {limit_at}) w{overflow}",
                super::super::due_sql("$2"),
                chosen_sql(&p.chosen),
                p.held,
                super::super::CLAIM_ORDER_SQL
            )
        };
        let sql = if overflow_limit == 0 {
            walk(0, "$3")
        } else {
            values.push(i(overflow_limit as u64).into());
            format!("{} UNION ALL {}", walk(0, "$3"), walk(1, "$4"))
        };
        let mut rows = self.candidates(txn, &sql, values, "picking tracked partitions").await?;
        rows.sort_by_key(Candidate::rank);
        let known: HashSet<&str> = known.iter().map(String::as_str).collect();
        let is_tracked = |c: &Candidate| c.part.is_empty() || known.contains(c.part.as_str());
        let tracked_read: Vec<Rank> = rows.iter().filter(|c| is_tracked(c)).map(Candidate::rank).collect();
        let bound = if tracked_read.len() >= limit { tracked_read.last().copied() } else { None };
        let mut per: HashMap<String, usize> = HashMap::new();
        let mut found = Vec::new();
        for c in rows {
            if !is_tracked(&c) {
                // The overflow's: no more of them than it has room for.
                found.push(c);
                continue;
            }
            if !with_room.contains(c.part.as_str()) {
                continue;
            }
            let n = per.entry(c.part.clone()).or_default();
            if *n < per_key {
                *n += 1;
                found.push(c);
            }
        }
        let before_bound = found.iter().filter(|c| bound.as_ref().is_none_or(|b| c.rank() < *b)).count();
        if bound.is_some() && before_bound < want {
            return Ok(None);
        }
        Ok(Some((found, bound)))
    }

    /// Whether [`Store::keyed_candidates`] of `l` takes the walk of the tracked rows now.
    #[cfg(test)]
    pub(super) async fn walks_tracked(
        &self,
        txn: &DatabaseTransaction,
        l: &TypeLimit,
        p: &Picking<'_>,
        want: usize,
    ) -> Result<bool, StoreError> {
        let Some(full) = p.full_parts(l) else { return Ok(false) };
        let fresh = l.effective.remaining(0, 0, 0).into_iter().flatten().min().unwrap_or(u64::MAX);
        let per_key = usize::try_from(fresh).unwrap_or(usize::MAX).min(want);
        Ok(self.tracked_walk(txn, l, p, &full, want, per_key).await?.is_some())
    }

    /// SQLite is told the partition key index; PostgreSQL's statistics are kept current for it
    /// (see [`Store::key_partitions`]).
    fn by_key_hint(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => " INDEXED BY ix_actions_due_part",
            Backend::Postgres => "",
        }
    }

    /// The `v(x)` of [`Store::keyed_candidates`] (type at `$1`): the keys of the type that may
    /// take a row, its lists bound into `values`.
    fn keys_with_room(&self, full: FullParts, values: &mut Vec<Value>) -> String {
        match full.at_cap {
            // Every untracked value is full: the keys with room are among the tracked ones.
            Some((mut known, 0)) => {
                known.push(String::new());
                known.retain(|k| !full.values.contains(k));
                values.push(serde_json::Value::from(known).to_string().into());
                format!("v(x) AS {}", json_elems(self.backend, values.len()))
            }
            _ => {
                let mut cond = String::new();
                if !full.values.is_empty() {
                    values.push(serde_json::Value::from(full.values).to_string().into());
                    cond = format!(" AND x NOT IN {}", json_elems(self.backend, values.len()));
                }
                let (by_key, claimable) = (self.by_key_hint(), super::super::CLAIMABLE_SQL);
                format!(
                    "s(x) AS ( \
                       SELECT (SELECT part_key FROM actions{by_key} WHERE action_type = $1 AND {claimable} \
                         AND part_key IS NOT NULL ORDER BY part_key LIMIT 1) \
                       UNION ALL \
                       SELECT (SELECT part_key FROM actions{by_key} WHERE action_type = $1 AND {claimable} \
                         AND part_key > s.x ORDER BY part_key LIMIT 1) FROM s WHERE s.x IS NOT NULL), \
                     v(x) AS (SELECT x FROM s WHERE x IS NOT NULL{cond})"
                )
            }
        }
    }

    /// Step 2: computes the partition key of the waiting rows of each partitioned type that
    /// have none (new rows; nothing when the gates saw none), or of all of them when the type's
    /// `partition_by` is not the path its keys were computed for (`keyed_for`, read with the
    /// gates); then records that path. Returns how many keys it computed.
    pub(super) async fn key_partitions(
        &self,
        txn: &DatabaseTransaction,
        refs: &[&TypeLimit],
        keyed_for: &KeyedFor,
    ) -> Result<u64, StoreError> {
        let mut total = 0;
        for l in refs {
            let Some(path) = &l.effective.partition_by else { continue };
            let path_text = path.to_string();
            let (keyed_path, unkeyed) = keyed_for.get(&l.action_type).cloned().unwrap_or((None, true));
            let current = keyed_path.as_deref() == Some(path_text.as_str());
            if current && !unkeyed {
                continue;
            }
            let keyed = self.key_waiting_rows(txn, &l.action_type, &part_expr(self.backend, path), !current).await?;
            total += keyed;
            // PostgreSQL plans the keyed pick by its statistics: read while the keys were not
            // there (a backlog just enqueued, the column just added), they make a walk of the
            // type's rows per key look cheap. A burst of new keys is counted before it is used
            // (ANALYZE samples, in this transaction, which sees its own keys).
            if self.backend == Backend::Postgres && keyed >= ANALYZE_AFTER_KEYS {
                txn.execute_unprepared("ANALYZE actions").await.doing("counting partition keys")?;
            }
            if !current {
                txn.execute_raw(self.stmt(
                    "UPDATE limit_state SET part_path = $2 WHERE action_type = $1 AND part = ''",
                    [l.action_type.as_str().into(), path_text.into()],
                ))
                .await
                .doing("computing partition keys")?;
            }
        }
        Ok(total)
    }
}

/// Step 7: the walk's rows and the keyed types' candidates merged in claim order. The walk gave
/// the first `want` rows of the other types; a keyed type's candidate after the last of them
/// waits for the next pass (a row the walk did not reach may come before it), unless the walk
/// found all there was (`walked_all`). So does any row from `bound` on, where a keyed type's
/// candidates are incomplete. Returns the rows in claim order and whether any was deferred.
pub(super) fn merge(
    mut walked: Vec<Candidate>,
    walked_all: bool,
    keyed: Vec<Candidate>,
    bound: Option<Rank>,
) -> (Vec<Candidate>, bool) {
    let walk_end = if walked_all { None } else { walked.last().map(Candidate::rank) };
    let mut deferred = false;
    let before_bound = |c: &Candidate| bound.as_ref().is_none_or(|b| c.rank() < *b);
    walked.retain(|c| {
        let keep = before_bound(c);
        deferred |= !keep;
        keep
    });
    for c in keyed {
        if walk_end.as_ref().is_none_or(|h| c.rank() < *h) && before_bound(&c) {
            walked.push(c);
        } else {
            deferred = true;
        }
    }
    walked.sort_by_key(Candidate::rank);
    (walked, deferred)
}

/// The walk's `AND ...` leaving out the unpartitioned types that are full, the types picked by
/// their partition keys (`keyed`), and the ids already chosen.
fn exclusions(p: &Picking<'_>, keyed: &[&TypeLimit]) -> Result<String, StoreError> {
    let mut sql = String::new();
    let mut left_out = Vec::new();
    for l in p.refs {
        if p.left_out(&l.action_type, keyed) {
            left_out.push(lit(&l.action_type)?);
        }
    }
    if !left_out.is_empty() {
        sql.push_str(&format!(" AND action_type NOT IN ({})", left_out.join(", ")));
    }
    sql.push_str(&chosen_sql(&p.chosen));
    Ok(sql)
}

/// The claimer's type filter, bound into `values`.
fn claimer_types(claimer: &Claimer, values: &mut Vec<Value>) -> String {
    if claimer.types.is_empty() {
        return String::new();
    }
    let mut list = Vec::new();
    for t in &claimer.types {
        values.push(t.as_str().into());
        list.push(format!("${}", values.len()));
    }
    format!(" AND action_type IN ({})", list.join(", "))
}

/// Step 1: locks the gate row of each type (creating the missing ones), in type order so that
/// two claimers never wait on each other in a cycle. Returns the time the claim counts by (the
/// database's on PostgreSQL, read in the same statement) and, per type, what [`KeyedFor`] says.
pub(super) async fn lock_gates(
    store: &Store,
    txn: &DatabaseTransaction,
    refs: &[&TypeLimit],
) -> Result<(DateTime<Utc>, KeyedFor), StoreError> {
    // PostgreSQL's clock, read in the same statement (the transaction's time), decides the
    // window and the day, as it does for every claim; SQLite's store clock likewise.
    let (lock, now) = match store.backend {
        Backend::Postgres => (" FOR UPDATE", "now()"),
        Backend::Sqlite => ("", "NULL"),
    };
    // Whether a waiting row has no key yet: one probe of the partition key index.
    let hint = if store.backend == Backend::Sqlite { " INDEXED BY ix_actions_due_part" } else { "" };
    let select = format!(
        "SELECT action_type, part_path, {now} AS now, CASE WHEN EXISTS (SELECT 1 FROM actions a{hint} \
           WHERE a.action_type = limit_state.action_type AND a.{} AND a.part_key IS NULL) THEN 1 ELSE 0 END AS unkeyed \
         FROM limit_state WHERE part = '' AND action_type IN ({}) ORDER BY action_type{lock}",
        super::super::CLAIMABLE_SQL,
        in_list(refs)?
    );
    let mut rows = txn.query_all_raw(store.stmt(&select, [])).await.doing("locking limit gates")?;
    if rows.len() != refs.len() {
        for l in refs {
            txn.execute_raw(store.stmt(
                "INSERT INTO limit_state (action_type, part) VALUES ($1, '') ON CONFLICT (action_type, part) DO NOTHING",
                [l.action_type.as_str().into()],
            ))
            .await
            .doing("creating limit gates")?;
        }
        rows = txn.query_all_raw(store.stmt(&select, [])).await.doing("locking limit gates")?;
    }
    let mut keyed_for = HashMap::new();
    for r in &rows {
        let t: String = r.try_get("", "action_type").doing("locking limit gates")?;
        let path = r.try_get::<Option<String>>("", "part_path").doing("locking limit gates")?;
        let unkeyed = r.try_get::<i32>("", "unkeyed").doing("locking limit gates")? != 0;
        keyed_for.insert(t, (path, unkeyed));
    }
    let now = match (store.backend, rows.first()) {
        (Backend::Postgres, Some(r)) => r.try_get::<DateTime<Utc>>("", "now").doing("locking limit gates")?,
        _ => store.now(),
    };
    Ok((now, keyed_for))
}

/// Per limited type, read with its gate: the `partition_by` its keys were computed for, and
/// whether a waiting row has no key yet.
pub(super) type KeyedFor = HashMap<String, (Option<String>, bool)>;

/// The full partitions of a partitioned type (see [`Picking::full_parts`]).
struct FullParts {
    /// Tracked values (and `''`) with nothing left.
    values: Vec<String>,
    /// When no value can be tracked: the tracked values, and how many more rows the overflow
    /// partition, where every other value counts, may take (none: every other value is full).
    at_cap: Option<(Vec<String>, u64)>,
}

impl FullParts {
    /// Whether the type is picked by its keys in a pass that wants `want` rows: a partition is
    /// full, or the overflow cannot take them all at the cap.
    fn keyed(&self, want: usize) -> bool {
        !self.values.is_empty()
            || self.at_cap.as_ref().is_some_and(|(_, room)| usize::try_from(*room).unwrap_or(usize::MAX) < want)
    }
}

/// A place in the claim order: priority (highest first), then `not_before`, then id.
pub(super) type Rank = super::super::ClaimRank;

/// A due row a limited claim may pick: its type, raw partition value and claim order.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Candidate {
    pub(super) id: i64,
    pub(super) action_type: String,
    pub(super) part: String,
    pub(super) priority: i64,
    pub(super) not_before: DateTime<Utc>,
}

impl Candidate {
    fn read(r: &sea_orm::QueryResult) -> Result<Candidate, StoreError> {
        let doing = "picking limited work";
        Ok(Candidate {
            id: r.try_get("", "id").doing(doing)?,
            action_type: r.try_get("", "action_type").doing(doing)?,
            part: r.try_get::<Option<String>>("", "part").doing(doing)?.unwrap_or_default(),
            priority: r.try_get("", "prio").doing(doing)?,
            not_before: r.try_get("", "not_before").doing(doing)?,
        })
    }

    /// The candidates of a JSON array of `[id, action_type, part, prio, not_before]`; `None`
    /// when it does not read so (a `not_before` that is not RFC 3339 text among them).
    pub(super) fn unpack(text: &str) -> Option<Vec<Candidate>> {
        let rows: Vec<(i64, String, Option<String>, i64, String)> = serde_json::from_str(text).ok()?;
        rows.into_iter()
            .map(|(id, action_type, part, priority, not_before)| {
                let not_before = DateTime::parse_from_rfc3339(&not_before).ok()?.with_timezone(&Utc);
                Some(Candidate { id, action_type, part: part.unwrap_or_default(), priority, not_before })
            })
            .collect()
    }

    /// Its place in the claim order.
    pub(super) fn rank(&self) -> Rank {
        super::super::claim_rank(self.priority, self.not_before, self.id)
    }
}

/// ` AND id NOT IN (...)` for the ids already chosen (integers formatted here, not input).
fn chosen_sql(chosen: &[Chosen]) -> String {
    if chosen.is_empty() {
        return String::new();
    }
    let ids: Vec<String> = chosen.iter().map(|(id, _, _)| id.to_string()).collect();
    format!(" AND id NOT IN ({})", ids.join(", "))
}
