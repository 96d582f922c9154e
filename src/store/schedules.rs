//! The `schedules` rows: the config's written (replacing what an earlier config declared), an
//! operator's added and removed, paused and resumed (by an operator, or a rule under the
//! lease), read; and a leader's fire: the slot's actions inserted and the schedule's mark moved
//! in one transaction, under the lease's fence and only from the mark it read, so that a slot
//! is enqueued once across restarts, leader changes and two leaders racing.
//!
//! It judges no cron and computes no slot (`crate::schedules` does); it stores what it is given.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, Value};

use super::actions::{Authority, NewAction, Refusal, insert_fenced};
use super::{Context, Fence, StoreError};

/// Who declared a schedule.
pub const FROM_CONFIG: &str = "config";
pub const FROM_OPERATOR: &str = "operator";

/// A schedule's definition as stored (checked by the caller).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewSchedule {
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub action_type: String,
    /// Canonical JSON text of an object.
    pub payload_json: String,
    pub priority: i32,
    pub max_attempts: i32,
    pub deadline_seconds: Option<i64>,
    pub misfire: String,
    pub catch_up_cap: i32,
    pub misfire_grace_seconds: i64,
    pub enabled: bool,
}

/// One schedule as stored, with what its leaders fired.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ScheduleRow {
    #[serde(flatten)]
    pub def: NewScheduleView,
    /// `config` or `operator`.
    pub source: String,
    pub paused: bool,
    pub paused_reason: Option<String>,
    /// Slots after this (and after `last_slot`) are due: its creation, its last resume, or the
    /// last change of its timing.
    pub since: DateTime<Utc>,
    /// The last slot fired or passed over: the exactly-once mark.
    pub last_slot: Option<DateTime<Utc>>,
    pub last_fired_at: Option<DateTime<Utc>>,
    /// Not due before this (a lower bound the leader keeps); `None`: not known yet.
    pub next_slot: Option<DateTime<Utc>>,
    pub fires: i64,
    pub misfires: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The definition's fields, as shown (the payload as JSON, not text).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NewScheduleView {
    pub name: String,
    pub cron: String,
    pub timezone: String,
    #[serde(rename = "type")]
    pub action_type: String,
    pub payload: serde_json::Value,
    pub priority: i32,
    pub max_attempts: i32,
    pub deadline_seconds: Option<i64>,
    pub misfire: String,
    pub catch_up_cap: i32,
    pub misfire_grace_seconds: i64,
    pub enabled: bool,
}

impl ScheduleRow {
    /// Where slots start counting: after the later of `since` and `last_slot`.
    pub fn after(&self) -> DateTime<Utc> {
        self.last_slot.map_or(self.since, |l| l.max(self.since))
    }
}

/// What writing a config's `schedules:` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigSchedulesWritten {
    pub written: Vec<String>,
    /// Config schedules an earlier config declared that this one does not: removed.
    pub removed: Vec<String>,
    /// Schedules an operator had added under a name this config declares: now the config's.
    pub taken_over: Vec<String>,
}

/// A leader's fire of one schedule.
#[derive(Clone, Debug)]
pub struct Fire<'a> {
    pub name: &'a str,
    /// The mark as the leader read it: the fire lands only if it is still that.
    pub read_mark: Option<DateTime<Utc>>,
    /// The new mark: the latest due slot.
    pub mark: DateTime<Utc>,
    /// The slot after `mark`.
    pub next_slot: Option<DateTime<Utc>>,
    /// The definition's timing as the leader read it: the fire lands only if it still is.
    pub cron: &'a str,
    pub timezone: &'a str,
    pub actions: &'a [NewAction],
    pub missed: u64,
}

const COLUMNS: &str = "name, source, cron, timezone, action_type, payload_json, priority, max_attempts, \
                       deadline_seconds, misfire, catch_up_cap, misfire_grace_seconds, enabled, paused, \
                       paused_reason, since, last_slot, last_fired_at, next_slot, fires, misfires, created_at, updated_at";

impl crate::store::handles::Schedules<'_> {
    /// Every schedule, by name.
    pub async fn list(self) -> Result<Vec<ScheduleRow>, StoreError> {
        self.first(i64::MAX).await
    }

    /// The first `n` schedules by name.
    pub async fn first(self, n: i64) -> Result<Vec<ScheduleRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM schedules ORDER BY name LIMIT $1");
        let rows = self.store.db.query_all_raw(self.store.stmt(&sql, [n.into()])).await.doing("listing schedules")?;
        rows.iter().map(row).collect()
    }

    /// The running schedules that may have a slot due at `now`: their next slot is not after it,
    /// or not known yet.
    pub async fn due(self, now: DateTime<Utc>) -> Result<Vec<ScheduleRow>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM schedules WHERE (next_slot IS NULL OR next_slot <= $1) AND enabled AND NOT paused \
             ORDER BY name"
        );
        let rows =
            self.store.db.query_all_raw(self.store.stmt(&sql, [now.into()])).await.doing("reading due schedules")?;
        rows.iter().map(row).collect()
    }

    /// Records `name`'s next slot, found with no slot due, if its timing and mark are still
    /// `read`'s: a later change (a new cron, a resume, a fire) is never overwritten with a
    /// bound computed before it.
    pub async fn set_next(self, read: &ScheduleRow, next_slot: Option<DateTime<Utc>>) -> Result<(), StoreError> {
        let sql = "UPDATE schedules SET next_slot = $1 WHERE name = $2 AND cron = $3 AND timezone = $4 AND since = $5 \
                   AND (last_slot = $6 OR (last_slot IS NULL AND $7))";
        let values: [Value; 7] = [
            next_slot.into(),
            read.def.name.as_str().into(),
            read.def.cron.as_str().into(),
            read.def.timezone.as_str().into(),
            read.since.into(),
            read.last_slot.into(),
            read.last_slot.is_none().into(),
        ];
        self.store.db.execute_raw(self.store.stmt(sql, values)).await.doing("noting a schedule's next slot")?;
        Ok(())
    }

    /// One schedule by name.
    pub async fn get(self, name: &str) -> Result<ScheduleRow, StoreError> {
        read_one(self.store, &self.store.db, name).await
    }

    /// Replaces the config's schedules with `defs`: each written (a definition that changed its
    /// timing, or was switched back on, counts its slots from now), config schedules not named
    /// removed. Pauses, marks and counts stay. One transaction.
    pub async fn write_config(self, defs: &[NewSchedule]) -> Result<ConfigSchedulesWritten, StoreError> {
        let now = self.store.now();
        let txn = self.store.begin_write().await?;
        let existing: Vec<ScheduleRow> = {
            let sql = format!("SELECT {COLUMNS} FROM schedules ORDER BY name");
            let rows = txn.query_all_raw(self.store.stmt(&sql, [])).await.doing("reading schedules")?;
            rows.iter().map(row).collect::<Result<_, _>>()?
        };
        let mut done = ConfigSchedulesWritten::default();
        for def in defs {
            match existing.iter().find(|r| r.def.name == def.name) {
                None => insert(self.store, &txn, def, FROM_CONFIG, now).await?,
                Some(old) => {
                    if old.source == FROM_OPERATOR {
                        done.taken_over.push(def.name.clone());
                    }
                    let retimed = old.def.cron != def.cron
                        || old.def.timezone != def.timezone
                        || (def.enabled && !old.def.enabled);
                    let since = if retimed { now } else { old.since };
                    update_def(self.store, &txn, def, FROM_CONFIG, (since, retimed), now).await?;
                }
            }
            done.written.push(def.name.clone());
        }
        for old in existing.iter().filter(|r| r.source == FROM_CONFIG) {
            if !defs.iter().any(|d| d.name == old.def.name) {
                txn.execute_raw(
                    self.store.stmt("DELETE FROM schedules WHERE name = $1", [old.def.name.as_str().into()]),
                )
                .await
                .doing("removing a schedule")?;
                done.removed.push(old.def.name.clone());
            }
        }
        txn.commit().await.doing("committing the config's schedules")?;
        Ok(done)
    }

    /// Adds an operator's schedule; its slots count from now. Refused if the name is taken.
    pub async fn add(self, def: &NewSchedule) -> Result<ScheduleRow, StoreError> {
        let txn = self.store.begin_write().await?;
        if let Ok(old) = read_one(self.store, &txn, &def.name).await {
            return Err(Refusal::Schedule(format!(
                "schedule '{}' exists (declared by {}); remove it first, or pick another name",
                def.name, old.source
            ))
            .into());
        }
        insert(self.store, &txn, def, FROM_OPERATOR, self.store.now()).await?;
        let added = read_one(self.store, &txn, &def.name).await?;
        txn.commit().await.doing("committing a schedule")?;
        Ok(added)
    }

    /// Removes an operator's schedule. One the config declares is refused: the config would
    /// write it back at the next start.
    pub async fn remove(self, name: &str) -> Result<(), StoreError> {
        let txn = self.store.begin_write().await?;
        let old = read_one(self.store, &txn, name).await?;
        if old.source == FROM_CONFIG {
            return Err(Refusal::Schedule(format!(
                "schedule '{name}' is declared in the config's `schedules:`; remove it there (or set \
                 `enabled: false`), or pause it with `schedules pause {name}`"
            ))
            .into());
        }
        txn.execute_raw(self.store.stmt("DELETE FROM schedules WHERE name = $1", [name.into()]))
            .await
            .doing("removing a schedule")?;
        txn.commit().await.doing("committing a schedule's removal")
    }

    /// Pauses or resumes `name` (an operator, or a rule under the lease's fence). A resume counts
    /// slots from now: what fell due while paused is not fired. Resuming a schedule its
    /// definition switches off is refused. Returns whether the state changed.
    pub async fn set_paused(
        self,
        auth: Authority<'_>,
        name: &str,
        paused: bool,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        let txn = self.store.begin_write().await?;
        let old = read_one(self.store, &txn, name).await?;
        if !paused && !old.def.enabled {
            return Err(Refusal::Schedule(format!(
                "schedule '{name}' is switched off by its definition (enabled: false), not paused; \
                 switch it on where it is declared ({})",
                old.source
            ))
            .into());
        }
        if old.paused == paused {
            return Ok(false);
        }
        let now = self.store.now();
        let since = if paused { old.since } else { now };
        let (fence_sql, fence_values) = fence_clause(auth, 5);
        let sql = format!(
            "UPDATE schedules SET paused = $1, paused_reason = $2, since = $3, updated_at = $4, next_slot = NULL \
             WHERE name = $5{fence_sql}"
        );
        let mut values: Vec<Value> =
            vec![paused.into(), reason.map(str::to_string).into(), since.into(), now.into(), name.into()];
        values.extend(fence_values);
        let n = txn.execute_raw(self.store.stmt(&sql, values)).await.doing("pausing a schedule")?.rows_affected();
        if n == 0
            && let Authority::Lease(f) = auth
        {
            return Err(Refusal::Fenced(f.epoch).into());
        }
        txn.commit().await.doing("committing a schedule's pause")?;
        Ok(true)
    }

    /// A leader's fire: moves `fire.name`'s mark from `read_mark` to `mark` and inserts the
    /// slots' actions (keys that exist are skipped), all or nothing, under `fence`. `Ok(None)`:
    /// the mark had moved (another leader fired it first); nothing was written. Returns the
    /// actions created.
    pub async fn fire(self, fence: &Fence, fire: &Fire<'_>) -> Result<Option<u64>, StoreError> {
        let now = self.store.now();
        let txn = self.store.begin_write().await?;
        // The mark first: on PostgreSQL its row lock orders two leaders that read the same mark.
        let sql = format!(
            "UPDATE schedules SET last_slot = $1, last_fired_at = $2, fires = fires + $3, misfires = misfires + $4, \
             updated_at = $2, next_slot = $8 WHERE name = $5 AND (last_slot = $6 OR (last_slot IS NULL AND $7)) \
             AND cron = $9 AND timezone = $10{}",
            fence_clause(Authority::Lease(fence), 10).0
        );
        let mut values: Vec<Value> = vec![
            fire.mark.into(),
            now.into(),
            (fire.actions.len() as i64).into(),
            (fire.missed.min(i64::MAX as u64) as i64).into(),
            fire.name.into(),
            fire.read_mark.into(),
            fire.read_mark.is_none().into(),
            fire.next_slot.into(),
            fire.cron.into(),
            fire.timezone.into(),
        ];
        values.extend(fence_clause(Authority::Lease(fence), 10).1);
        let moved = txn.execute_raw(self.store.stmt(&sql, values)).await.doing("marking a schedule's slot")?;
        if moved.rows_affected() == 0 {
            drop(txn);
            if !self.store.lease().fence_holds(fence).await? {
                return Err(Refusal::Fenced(fence.epoch).into());
            }
            return Ok(None);
        }
        let mut created = 0;
        for new in fire.actions {
            created += insert_fenced(self.store, &txn, fence, new, now).await?;
        }
        txn.commit().await.doing("committing a schedule's fire")?;
        if created > 0 {
            self.store.wake_claimers().await;
        }
        Ok(Some(created))
    }
}

/// ` AND <the lease is at the fence's epoch>` for a rule's write, nothing for an operator's, with
/// its values numbered after `after`.
fn fence_clause(auth: Authority<'_>, after: usize) -> (String, Vec<Value>) {
    match auth {
        Authority::Operator => (String::new(), Vec::new()),
        Authority::Lease(f) => (
            format!(" AND {}", super::actions::fence_sql(after + 1, after + 2)),
            vec![f.lease_name.as_str().into(), f.epoch.into()],
        ),
    }
}

async fn read_one<C: ConnectionTrait>(store: &super::Store, conn: &C, name: &str) -> Result<ScheduleRow, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM schedules WHERE name = $1");
    let found = conn.query_one_raw(store.stmt(&sql, [name.into()])).await.doing("reading a schedule")?;
    match found {
        Some(r) => row(&r),
        None => Err(Refusal::NoSchedule(name.to_string()).into()),
    }
}

async fn insert<C: ConnectionTrait>(
    store: &super::Store,
    conn: &C,
    def: &NewSchedule,
    source: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO schedules ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, false, \
         NULL, $14, NULL, NULL, NULL, 0, 0, $14, $14)"
    );
    let mut values = def_values(def, source);
    values.push(now.into());
    conn.execute_raw(store.stmt(&sql, values)).await.doing("adding a schedule")?;
    Ok(())
}

/// Rewrites a schedule's definition; `retimed` (a new cron or zone, or switched back on) forgets
/// its next slot, so the leader looks at it at its next tick.
async fn update_def<C: ConnectionTrait>(
    store: &super::Store,
    conn: &C,
    def: &NewSchedule,
    source: &str,
    (since, retimed): (DateTime<Utc>, bool),
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let sql = "UPDATE schedules SET source = $2, cron = $3, timezone = $4, action_type = $5, payload_json = $6, \
               priority = $7, max_attempts = $8, deadline_seconds = $9, misfire = $10, catch_up_cap = $11, \
               misfire_grace_seconds = $12, enabled = $13, since = $14, updated_at = $15, \
               next_slot = CASE WHEN $16 THEN NULL ELSE next_slot END WHERE name = $1";
    let mut values = def_values(def, source);
    values.push(since.into());
    values.push(now.into());
    values.push(retimed.into());
    conn.execute_raw(store.stmt(sql, values)).await.doing("writing a schedule")?;
    Ok(())
}

/// `$1..$13`: the name, the source and the definition, in [`COLUMNS`]' order.
fn def_values(def: &NewSchedule, source: &str) -> Vec<Value> {
    vec![
        def.name.as_str().into(),
        source.into(),
        def.cron.as_str().into(),
        def.timezone.as_str().into(),
        def.action_type.as_str().into(),
        def.payload_json.as_str().into(),
        def.priority.into(),
        def.max_attempts.into(),
        def.deadline_seconds.into(),
        def.misfire.as_str().into(),
        def.catch_up_cap.into(),
        def.misfire_grace_seconds.into(),
        def.enabled.into(),
    ]
}

fn row(r: &sea_orm::QueryResult) -> Result<ScheduleRow, StoreError> {
    let get = "reading a schedule";
    let name: String = r.try_get("", "name").doing(get)?;
    let payload_json: String = r.try_get("", "payload_json").doing(get)?;
    let payload = serde_json::from_str(&payload_json)
        .map_err(|e| StoreError::Internal(format!("schedule '{name}' holds a payload that is not JSON: {e}")))?;
    Ok(ScheduleRow {
        def: NewScheduleView {
            cron: r.try_get("", "cron").doing(get)?,
            timezone: r.try_get("", "timezone").doing(get)?,
            action_type: r.try_get("", "action_type").doing(get)?,
            payload,
            priority: r.try_get("", "priority").doing(get)?,
            max_attempts: r.try_get("", "max_attempts").doing(get)?,
            deadline_seconds: r.try_get("", "deadline_seconds").doing(get)?,
            misfire: r.try_get("", "misfire").doing(get)?,
            catch_up_cap: r.try_get("", "catch_up_cap").doing(get)?,
            misfire_grace_seconds: r.try_get("", "misfire_grace_seconds").doing(get)?,
            enabled: r.try_get("", "enabled").doing(get)?,
            name,
        },
        source: r.try_get("", "source").doing(get)?,
        paused: r.try_get("", "paused").doing(get)?,
        paused_reason: r.try_get("", "paused_reason").doing(get)?,
        since: r.try_get("", "since").doing(get)?,
        last_slot: r.try_get("", "last_slot").doing(get)?,
        last_fired_at: r.try_get("", "last_fired_at").doing(get)?,
        next_slot: r.try_get("", "next_slot").doing(get)?,
        fires: r.try_get("", "fires").doing(get)?,
        misfires: r.try_get("", "misfires").doing(get)?,
        created_at: r.try_get("", "created_at").doing(get)?,
        updated_at: r.try_get("", "updated_at").doing(get)?,
    })
}
