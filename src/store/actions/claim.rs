//! The claim: due actions taken by one worker under one fresh claim token, in one statement
//! (or, with limited types, exactly the ids the limited pick chose: `store/limits/pick.rs`);
//! the throttle a claim takes from and gives back to; and `pick`, the dry run's read-only
//! version of the same selection.
//!
//! It must not choose rows by any other order or due condition than `store::CLAIM_ORDER_SQL`
//! and `store::due_sql`, and it judges no limit (the limited pick does the counting).

use sea_orm::{ConnectionTrait, DatabaseTransaction, EntityTrait, Value};

use super::super::entities::{self, actions};
use super::super::{Backend, Context, Store, StoreError};
use super::Op;
use crate::limits::OVERFLOW_PARTITION;
use crate::model::{self, Action};

/// Who claims, and on what terms.
#[derive(Clone, Debug)]
pub struct Claimer {
    /// The registered worker that runs the attempts: the claim lands only while its
    /// registration is live (heartbeat younger than `worker_ttl`, by the database's clock).
    pub worker: String,
    pub worker_ttl: std::time::Duration,
    /// The action types it serves; empty: every type.
    pub types: Vec<String>,
    /// Each attempt's deadline from its claim: `start_within` (how long a claimed attempt may
    /// wait for a free slot) plus the type's timeout, else `default_timeout` (each already
    /// capped by `action_timeout_seconds`).
    pub type_timeouts: Vec<(String, std::time::Duration)>,
    pub default_timeout: std::time::Duration,
    pub start_within: std::time::Duration,
    /// This claimer's config enforces proof mode: every attempt it claims runs in proof.
    pub proof_enforced: bool,
    /// The lease epoch when the claimer is the lease holder's own executor (kept in
    /// `claimed_epoch` for the record; fencing uses the token).
    pub epoch: Option<i64>,
    /// Per partitioned limit, how many partition values are tracked (`limit_partitions`).
    pub limit_partitions: usize,
}

impl Claimer {
    /// True when it claims actions of `action_type`.
    pub fn serves(&self, action_type: &str) -> bool {
        self.types.is_empty() || self.types.iter().any(|t| t == action_type)
    }
}

/// An action claimed by a worker: it is `RUNNING` under `token`, attempt `attempt`.
#[derive(Clone, Debug)]
pub struct Claimed {
    /// The row as claimed. Its `decode_error` is set when a stored value could not be read;
    /// such a claim goes to [`Store::quarantine`] instead of an adapter.
    pub action: Action,
    /// The claim token: every write about this attempt is fenced by it.
    pub token: i64,
    /// The value of `attempts` after the claim: the attempt this run is.
    pub attempt: i32,
    /// The mode this attempt runs in, read atomically with the claim: true for proof.
    pub proof: bool,
}

/// The claim, with `{pick}` the rows to claim ([`PICK_DUE`], or the ids a limited claim picked),
/// `{from}` the claimable statuses, `{deadline}` the per-type deadline and `{now}` the
/// statement's time. It lands only while the
/// worker's registration is live and no brake (paused, killed) is set; the mode is read from
/// the flags in the same statement.
const CLAIM: &str = "\
UPDATE actions SET status = 'RUNNING', attempts = attempts + 1, claimed_epoch = $1, claimed_at = {now},
       updated_at = {now}, claim_token = $2, claimed_by = $3, claim_deadline = {deadline},
       claim_proof = (SELECT proof_mode FROM control_flags WHERE id = 1) OR $4
WHERE id IN ({pick}) AND {from}
  AND EXISTS (SELECT 1 FROM workers WHERE id = $3 AND heartbeat_at > {live_after})
  AND NOT EXISTS (SELECT 1 FROM control_flags WHERE paused OR killed)
RETURNING *";

/// The due rows an unlimited claim takes, `{n}` of them, with `{due}` the due condition,
/// `{types}` the type filter (or nothing) and `{order}` the claim order. The claim and the dry
/// run both pick with it.
const PICK_DUE: &str = "SELECT id FROM actions WHERE {due}{types} ORDER BY {order} LIMIT {n}{lock}";

/// `CASE action_type <whens> ELSE <default> END`, or just `default` when there is no `WHEN`.
fn case_of_type(whens: &str, default: &str) -> String {
    if whens.is_empty() { default.to_string() } else { format!("CASE action_type{whens} ELSE {default} END") }
}

impl Store {
    /// A claim token unique for all time: PostgreSQL's `claim_tokens` sequence, or SQLite's
    /// counter row (one writer, so the increment is atomic), taken on `conn` (in a claim's own
    /// transaction on SQLite, the increment commits with the claim, one commit fewer).
    pub(in crate::store) async fn next_claim_token<C: ConnectionTrait>(&self, conn: &C) -> Result<i64, StoreError> {
        let sql = match self.backend {
            Backend::Postgres => "SELECT nextval('claim_tokens') AS token",
            Backend::Sqlite => "UPDATE claim_tokens SET last = last + 1 RETURNING last AS token",
        };
        let row = conn.query_one_raw(self.stmt(sql, [])).await.doing("taking a claim token")?;
        let row = row.ok_or_else(|| StoreError::Internal("the claim token sequence returned nothing".into()))?;
        row.try_get::<i64>("", "token").doing("taking a claim token")
    }

    /// Takes up to `n` starts from the throttle in force; `None` when there is none.
    async fn take_throttle(&self, n: u64) -> Result<Option<u64>, StoreError> {
        let want = i64::try_from(n).unwrap_or(i64::MAX);
        match self.backend {
            Backend::Postgres => {
                // The row lock serializes claimers only while a throttle is in force.
                let sql = "WITH old AS (SELECT throttle_remaining AS r FROM control_flags \
                             WHERE id = 1 AND throttle_until > now() AND throttle_remaining IS NOT NULL FOR UPDATE) \
                           UPDATE control_flags SET throttle_remaining = GREATEST(old.r - $1, 0) FROM old \
                           WHERE control_flags.id = 1 RETURNING LEAST(old.r, $1) AS granted";
                let row =
                    self.db.query_one_raw(self.stmt(sql, [want.into()])).await.doing("taking from the throttle")?;
                match row {
                    None => Ok(None),
                    Some(r) => Ok(Some(
                        u64::try_from(r.try_get::<i64>("", "granted").doing("taking from the throttle")?).unwrap_or(0),
                    )),
                }
            }
            Backend::Sqlite => {
                let now = self.now();
                let read = "SELECT throttle_remaining AS r FROM control_flags \
                            WHERE id = 1 AND throttle_until > $1 AND throttle_remaining IS NOT NULL";
                let quick = self.db.query_one_raw(self.stmt(read, [now.into()])).await.doing("reading the throttle")?;
                if quick.is_none() {
                    return Ok(None);
                }
                // One writer: read and take under the write lock.
                let txn = self.begin_write().await?;
                let row = txn.query_one_raw(self.stmt(read, [now.into()])).await.doing("reading the throttle")?;
                let Some(row) = row else {
                    txn.commit().await.doing("reading the throttle")?;
                    return Ok(None);
                };
                let left: i64 = row.try_get::<i64>("", "r").doing("reading the throttle")?.max(0);
                let granted = left.min(want);
                txn.execute_raw(
                    self.stmt(
                        "UPDATE control_flags SET throttle_remaining = $1 WHERE id = 1",
                        [(left - granted).into()],
                    ),
                )
                .await
                .doing("taking from the throttle")?;
                txn.commit().await.doing("taking from the throttle")?;
                Ok(Some(u64::try_from(granted).unwrap_or(0)))
            }
        }
    }

    /// Returns `n` unused starts to the throttle still in force.
    async fn give_back_throttle(&self, n: u64) -> Result<(), StoreError> {
        if n == 0 {
            return Ok(());
        }
        let now = match self.backend {
            Backend::Postgres => "now()".to_string(),
            Backend::Sqlite => "$2".to_string(),
        };
        let sql = format!(
            "UPDATE control_flags SET throttle_remaining = throttle_remaining + $1 \
             WHERE id = 1 AND throttle_until > {now} AND throttle_remaining IS NOT NULL"
        );
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let values: Vec<Value> = match self.backend {
            Backend::Postgres => vec![n.into()],
            Backend::Sqlite => vec![n.into(), self.now().into()],
        };
        self.db.execute_raw(self.stmt(&sql, values)).await.doing("giving back to the throttle")?;
        Ok(())
    }

    /// Up to `n` due actions under one fresh token: the one-statement claim when none of the
    /// types the claimer serves is limited, else the limited claim (`limits/claim.rs`). In dispatch
    /// order.
    async fn claim_up_to(&self, claimer: &Claimer, n: u64) -> Result<Vec<Claimed>, StoreError> {
        let mut limits = self.limits_in_force().await?;
        limits.retain(|l| claimer.serves(&l.action_type));
        let closed = crate::limits::outside_hours(&mut limits, self.now());
        let mut claimed = if limits.is_empty() {
            // Open windows and allowed hours leave their rows out of the pick; none: the
            // statement is as ever.
            let held = self.held_filter(&self.db, &closed).await?;
            let token = self.next_claim_token(&self.db).await?;
            let (sql, values) = self.claim_sql(claimer, token, Pick::Due(n), &held);
            match self.backend {
                Backend::Postgres => {
                    let txn = self.begin_write().await?;
                    self.walk_due_in_order(&txn).await?;
                    let rows = claimed_rows(self, &txn, token, sql, values).await?;
                    txn.commit().await.doing("committing a claim")?;
                    rows
                }
                Backend::Sqlite => claimed_rows(self, &self.db, token, sql, values).await?,
            }
        } else {
            self.claim_limited(claimer, n, &limits, &closed, claimer.limit_partitions).await?
        };
        claimed.sort_by_key(|c| crate::store::claim_rank(c.action.priority.into(), c.action.not_before, c.action.id));
        Ok(claimed)
    }

    /// PostgreSQL: the statements that follow in `txn` walk the due indexes in claim order
    /// instead of sorting the due set. The planner chooses between the two from its statistics,
    /// and the due set can grow from nothing to millions of rows between two of autovacuum's
    /// analyses: a plan made from the old ones sorts every due row on every claim (20 ms a claim
    /// of 512 at 50k due, against 0.5 ms for the walk, and growing with the backlog).
    /// Nothing on SQLite, whose planner takes the index for `ORDER BY … LIMIT`.
    pub(in crate::store) async fn walk_due_in_order(&self, txn: &DatabaseTransaction) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            txn.execute_unprepared("SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off")
                .await
                .doing("choosing the claim's plan")?;
        }
        Ok(())
    }

    /// Sets the partition key (`part_key`, `expr` computing it from the payload) of the waiting
    /// rows of `action_type` that have none, or with `all` (the type's `partition_by` changed)
    /// of all its waiting and running rows, and with it whether the key counts in the overflow
    /// partition (`part_overflow`: 1 unless the key is `''` or a value `limit_state` tracks);
    /// how many were keyed. A running row keeps its key and mark, kept true by this and by
    /// [`Store::mark_tracked_rows`], and takes them back with it when a completion returns it
    /// to waiting (`RETRY`, an unstart); the other ways back (a rescue, a requeue) set them to
    /// `NULL`, and the next claim keys the row against the partitions tracked then. Not a
    /// status change, but a write to `actions`, so it is here with the others: the limited
    /// claim calls it under the type's gate.
    pub(in crate::store) async fn key_waiting_rows(
        &self,
        txn: &DatabaseTransaction,
        action_type: &str,
        expr: &str,
        all: bool,
    ) -> Result<u64, StoreError> {
        // The rows without a key are found through the index, not among all the type's. A new
        // path keys every row that can come back to waiting, waiting or running, in one
        // statement: on PostgreSQL a row that a completion returns meanwhile is found in either
        // state and keyed all the same.
        let hint = if self.backend == Backend::Sqlite { " INDEXED BY ix_actions_due_part" } else { "" };
        let waiting = format!("action_type = $1 AND {}", Op::Claim.status_in());
        let which = if all {
            format!(
                "id IN (SELECT id FROM actions{hint} WHERE {waiting} \
                 UNION ALL SELECT id FROM actions WHERE status = 'RUNNING' AND action_type = $1) \
                 AND status IN ('PENDING', 'RETRY', 'RUNNING')"
            )
        } else {
            format!("{waiting} AND part_key IS NULL")
        };
        let hint = if all { "" } else { hint };
        // The gate row (partition `''`) is always there: `''` counts in its own partition.
        let overflow = format!(
            "CASE WHEN {expr} <> '{OVERFLOW_PARTITION}' AND EXISTS (SELECT 1 FROM limit_state s \
             WHERE s.action_type = $1 AND s.part = {expr}) THEN 0 ELSE 1 END"
        );
        let sql = format!("UPDATE actions{hint} SET part_key = {expr}, part_overflow = {overflow} WHERE {which}");
        Ok(txn
            .execute_raw(self.stmt(&sql, [action_type.into()]))
            .await
            .doing("computing partition keys")?
            .rows_affected())
    }

    /// The waiting and running rows of `action_type` keyed with a value of `values` (a JSON
    /// array) that a claim has just started to track: they no longer count in the overflow
    /// partition (a running row keeps its mark for when it comes back to waiting).
    pub(in crate::store) async fn mark_tracked_rows(
        &self,
        txn: &DatabaseTransaction,
        action_type: &str,
        values: &str,
    ) -> Result<u64, StoreError> {
        let hint = if self.backend == Backend::Sqlite { " INDEXED BY ix_actions_due_part" } else { "" };
        let elems = match self.backend {
            Backend::Sqlite => "(SELECT value FROM json_each($2))",
            Backend::Postgres => "(SELECT json_array_elements_text($2::json))",
        };
        // One statement over both (the waiting ones through `ix_actions_due_part`, the running
        // ones among the type's running rows): on PostgreSQL a row that a completion returns to
        // waiting meanwhile is found in either state and marked all the same.
        let marked = "action_type = $1 AND part_key IN {elems} AND part_overflow = 1".replace("{elems}", elems);
        let sql = format!(
            "UPDATE actions SET part_overflow = 0 WHERE id IN \
             (SELECT id FROM actions{hint} WHERE {} AND {marked} \
              UNION ALL SELECT id FROM actions WHERE status = 'RUNNING' AND {marked}) \
             AND status IN ('PENDING', 'RETRY', 'RUNNING') AND part_overflow = 1",
            Op::Claim.status_in()
        );
        Ok(txn
            .execute_raw(self.stmt(&sql, [action_type.into(), values.into()]))
            .await
            .doing("marking tracked partition keys")?
            .rows_affected())
    }

    /// The claim statement for `claimer` under `token`, of what `pick` says, leaving out what
    /// `held` (the open windows' condition, or nothing) holds.
    pub(in crate::store) fn claim_sql(
        &self,
        claimer: &Claimer,
        token: i64,
        pick: Pick<'_>,
        held: &str,
    ) -> (String, Vec<Value>) {
        let n = match pick {
            Pick::Due(n) => i64::try_from(n).unwrap_or(i64::MAX),
            Pick::Ids(_) => 0,
        };
        let mut values: Vec<Value> = vec![
            claimer.epoch.into(),
            token.into(),
            claimer.worker.as_str().into(),
            claimer.proof_enforced.into(),
            n.into(),
        ];
        let mut bind = |v: Value| {
            values.push(v);
            format!("${}", values.len())
        };
        let types = types_filter(claimer, &mut bind);
        let pick = match pick {
            Pick::Due(_) => PICK_DUE
                .replace("{due}", &crate::store::due_sql("{now}"))
                .replace("{order}", crate::store::CLAIM_ORDER_SQL),
            Pick::Ids(json) => ids_in_json(self.backend, &bind(json.to_string().into())),
        };
        let sql = match self.backend {
            Backend::Postgres => {
                let secs = |d: std::time::Duration| d.as_secs_f64();
                let mut whens = String::new();
                for (t, d) in &claimer.type_timeouts {
                    let (t, d) = (bind(t.as_str().into()), bind(secs(claimer.start_within.saturating_add(*d)).into()));
                    whens.push_str(&format!(" WHEN {t} THEN {d}"));
                }
                let default = bind(secs(claimer.start_within.saturating_add(claimer.default_timeout)).into());
                let deadline = format!("now() + ({}) * interval '1 second'", case_of_type(&whens, &default));
                let live_after = format!("now() - {} * interval '1 second'", bind(secs(claimer.worker_ttl).into()));
                CLAIM
                    .replace("{pick}", &pick)
                    .replace("{deadline}", &deadline)
                    .replace("{live_after}", &live_after)
                    .replace("{now}", "now()")
                    .replace("{lock}", " FOR UPDATE SKIP LOCKED")
            }
            Backend::Sqlite => {
                let now = self.now();
                let at = |d: std::time::Duration| model::later_saturating(now, claimer.start_within.saturating_add(d));
                let mut whens = String::new();
                for (t, d) in &claimer.type_timeouts {
                    let (t, d) = (bind(t.as_str().into()), bind(at(*d).into()));
                    whens.push_str(&format!(" WHEN {t} THEN {d}"));
                }
                let default = bind(at(claimer.default_timeout).into());
                let deadline = case_of_type(&whens, &default);
                let live_after = bind(model::earlier_saturating(now, claimer.worker_ttl).into());
                let now = bind(now.into());
                CLAIM
                    .replace("{pick}", &pick)
                    .replace("{deadline}", &deadline)
                    .replace("{live_after}", &live_after)
                    .replace("{now}", &now)
                    .replace("{lock}", "")
            }
        }
        .replace("{from}", &Op::Claim.status_in())
        .replace("{n}", "$5")
        // Last: `held` holds literals, which no later replacement may touch.
        .replace("{types}", &format!("{types}{held}"));
        (sql, values)
    }
}

impl crate::store::handles::Actions<'_> {
    /// `claim`: up to `n` due actions for `claimer`, in one statement under one fresh claim
    /// token, so two claimers can never take the same row. Each row is stamped with the token,
    /// the worker, its deadline and the mode it runs in. Nothing is claimed while paused or
    /// killed, or once the worker's registration is dead. Returns them in dispatch order.
    /// A row whose stored values cannot be read is claimed like any other, with its
    /// `decode_error` set, so that the caller can quarantine it.
    pub async fn claim(self, claimer: &Claimer, n: u64) -> Result<Vec<Claimed>, StoreError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let Some(granted) = self.store.take_throttle(n).await? else {
            return self.store.claim_up_to(claimer, n).await;
        };
        if granted == 0 {
            return Ok(Vec::new());
        }
        let claimed = self.store.claim_up_to(claimer, granted).await;
        // What the throttle granted and the claim did not use goes back to it.
        let used = claimed.as_ref().map_or(0, |c| c.len() as u64);
        self.store.give_back_throttle(granted - used).await?;
        claimed
    }

    /// The rows `claim(claimer, n)` would take now, in claim order, claiming nothing: the
    /// claim's own pick ([`PICK_DUE`], or the limited pick), in a transaction that is rolled
    /// back (the limited pick takes its types' gates and computes new rows' partition keys
    /// there). `config_limits` are filled in first where the database holds no base limit, as
    /// a claiming process does with its config's before its first claim. What the claim checks
    /// besides (the worker's registration, the paused and killed flags, a stored throttle) is
    /// the caller's to apply. `run-once --dry-run` lists these.
    pub async fn pick(
        self,
        claimer: &Claimer,
        n: u64,
        config_limits: Option<&std::collections::BTreeMap<String, crate::limits::LimitSpec>>,
    ) -> Result<Vec<Action>, StoreError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let txn = self.store.begin_write().await?;
        if let Some(limits) = config_limits {
            self.store.write_config_limits_in(&txn, limits, crate::store::ConfigLimits::Fill).await?;
        }
        let mut limits = crate::store::limits::read_limits(self.store, &txn, self.store.now()).await?;
        limits.retain(|l| l.enforced() && claimer.serves(&l.action_type));
        let closed = crate::limits::outside_hours(&mut limits, self.store.now());
        let ids: Vec<i64> = if limits.is_empty() {
            self.store.walk_due_in_order(&txn).await?;
            let mut values: Vec<Value> = vec![i64::try_from(n).unwrap_or(i64::MAX).into()];
            let mut bind = |v: Value| {
                values.push(v);
                format!("${}", values.len())
            };
            let types = types_filter(claimer, &mut bind);
            let now = match self.store.backend {
                Backend::Postgres => "now()".to_string(),
                Backend::Sqlite => bind(self.store.now().into()),
            };
            let held = self.store.held_filter(&txn, &closed).await?;
            let sql = PICK_DUE
                .replace("{due}", &crate::store::due_sql(&now))
                .replace("{order}", crate::store::CLAIM_ORDER_SQL)
                .replace("{n}", "$1")
                .replace("{lock}", "")
                .replace("{types}", &format!("{types}{held}"));
            let rows = txn.query_all_raw(self.store.stmt(&sql, values)).await.doing("picking due actions")?;
            rows.iter().map(|r| r.try_get::<i64>("", "id")).collect::<Result<_, _>>().doing("picking due actions")?
        } else {
            let mut refs: Vec<&crate::limits::TypeLimit> = limits.iter().collect();
            refs.sort_by(|a, b| a.action_type.cmp(&b.action_type));
            let picked = self.store.pick_limited(&txn, claimer, n, &refs, &closed, claimer.limit_partitions).await?;
            picked.chosen.into_iter().map(|(id, _, _)| id).collect()
        };
        let ids = serde_json::Value::from(ids).to_string();
        let sql = format!(
            "SELECT * FROM actions WHERE id IN ({}) ORDER BY {}",
            ids_in_json(self.store.backend, "$1"),
            crate::store::CLAIM_ORDER_SQL
        );
        let rows = actions::Entity::find()
            .from_raw_sql(self.store.stmt(&sql, [ids.into()]))
            .all(&txn)
            .await
            .doing("reading the picked actions")?;
        txn.rollback().await.doing("ending a dry pick")?;
        entities::convert_all(rows)
    }
}

/// What a claim statement takes.
pub(in crate::store) enum Pick<'a> {
    /// Up to this many due rows, in claim order.
    Due(u64),
    /// Exactly these ids (a JSON array), picked by a limited claim.
    Ids(&'a str),
}

/// The claimer's type filter (` AND action_type IN (...)`, or nothing), its names bound by `bind`.
fn types_filter(claimer: &Claimer, bind: &mut impl FnMut(Value) -> String) -> String {
    if claimer.types.is_empty() {
        return String::new();
    }
    let list: Vec<String> = claimer.types.iter().map(|t| bind(t.as_str().into())).collect();
    format!(" AND action_type IN ({})", list.join(", "))
}

/// `SELECT` of the ids in the JSON array bound at `at` (e.g. `$5`).
pub(in crate::store) fn ids_in_json(backend: Backend, at: &str) -> String {
    match backend {
        Backend::Postgres => format!("SELECT (json_array_elements_text({at}::json))::bigint"),
        Backend::Sqlite => format!("SELECT value FROM json_each({at})"),
    }
}

/// Runs a claim statement and reads what it claimed.
pub(in crate::store) async fn claimed_rows<C: ConnectionTrait>(
    store: &Store,
    conn: &C,
    token: i64,
    sql: String,
    values: Vec<Value>,
) -> Result<Vec<Claimed>, StoreError> {
    let rows =
        actions::Entity::find().from_raw_sql(store.stmt(&sql, values)).all(conn).await.doing("claiming actions")?;
    Ok(entities::convert_all::<_, Action>(rows)?
        .into_iter()
        .map(|action| Claimed {
            token,
            attempt: action.attempts,
            proof: action.claim.as_ref().is_none_or(|c| c.proof),
            action,
        })
        .collect())
}
