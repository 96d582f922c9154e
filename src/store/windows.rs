//! The `windows` rows: open (add, or fenced for a rule), list, end, the config's written whole
//! (`replace_config`); and what the claim leaves out while windows are open
//! ([`Store::held_filter`]): the rows not yet over, re-read only when their signature changes.
//!
//! When no window is open the filter is empty and every claim statement is exactly what it is
//! without windows. It decides nothing of what a window means (`crate::windows` says when one
//! is open); it turns the open ones into a condition on the due rows, so that held rows are
//! stepped over in claim order and never block the rows behind them.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, Value};

use super::{Backend, Context, Fence, Store, StoreError};
use crate::windows::{self, Matcher, Recurrence, Window, WindowSpec};

/// What `end` did.
#[derive(Clone, Debug, PartialEq)]
pub enum WindowEnd {
    /// It is ended now.
    Ended(Window),
    /// It was already ended, or past its end.
    AlreadyOver(Window),
    /// No window has that id.
    NotFound,
}

const COLUMNS: &str = "id, action_types, field_path, field_value, starts_at, ends_at, cron, duration_seconds, \
                       time_zone, reason, opened_by, created_at, ended_at";

impl crate::store::handles::Windows<'_> {
    /// Opens a window (checked whole first); the stored row.
    pub async fn add(self, spec: &WindowSpec) -> Result<Window, StoreError> {
        self.insert(spec, None).await
    }

    /// A rule's window: written only while `fence`'s lease epoch holds, in the same statement
    /// (refused as fenced otherwise).
    pub async fn add_fenced(self, fence: &Fence, spec: &WindowSpec) -> Result<Window, StoreError> {
        self.insert(spec, Some(fence)).await
    }

    async fn insert(self, spec: &WindowSpec, fence: Option<&Fence>) -> Result<Window, StoreError> {
        spec.check().map_err(StoreError::Internal)?;
        let now = self.store.now();
        let types = serde_json::to_string(&spec.matcher.types).map_err(|e| StoreError::Internal(e.to_string()))?;
        let (path, value) = match &spec.matcher.field {
            Some(f) => (Some(f.path.to_string()), Some(f.value.clone())),
            None => (None, None),
        };
        let r = spec.recurrence.as_ref();
        let mut values: Vec<Value> = vec![
            types.into(),
            path.into(),
            value.into(),
            spec.starts_at.into(),
            spec.ends_at.into(),
            r.map(|r| r.cron().to_string()).into(),
            r.map(|r| i64::try_from(r.duration.as_secs()).unwrap_or(i64::MAX)).into(),
            r.map(|r| r.time_zone.name().to_string()).into(),
            spec.reason.as_str().into(),
            spec.opened_by.as_str().into(),
            now.into(),
        ];
        let fenced = match fence {
            None => String::new(),
            Some(f) => {
                values.push(f.lease_name.as_str().into());
                values.push(f.epoch.into());
                " WHERE EXISTS (SELECT 1 FROM leases WHERE name = $12 AND epoch = $13)".to_string()
            }
        };
        let sql = format!(
            "INSERT INTO windows (action_types, field_path, field_value, starts_at, ends_at, cron, duration_seconds, \
             time_zone, reason, opened_by, created_at) SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11{fenced} \
             RETURNING {COLUMNS}"
        );
        let row = self.store.db.query_one_raw(self.store.stmt(&sql, values)).await.doing("opening a window")?;
        match (row, fence) {
            (Some(row), _) => read_window(&row),
            (None, Some(f)) => Err(super::Refusal::Fenced(f.epoch).into()),
            (None, None) => Err(StoreError::Internal("opening a window returned no row".into())),
        }
    }

    /// The windows not yet over (not ended, and not past their end), or with `all` every
    /// window ever opened; newest first.
    pub async fn list(self, all: bool) -> Result<Vec<Window>, StoreError> {
        let (sql, values): (String, Vec<Value>) = if all {
            (format!("SELECT {COLUMNS} FROM windows ORDER BY id DESC"), vec![])
        } else {
            (format!("SELECT {COLUMNS} FROM windows WHERE {LIVE} ORDER BY id DESC"), vec![self.store.now().into()])
        };
        let rows = self.store.db.query_all_raw(self.store.stmt(&sql, values)).await.doing("listing windows")?;
        rows.iter().map(read_window).collect()
    }

    /// Ends window `id` now (it holds nothing from the next claim on).
    pub async fn end(self, id: i64) -> Result<WindowEnd, StoreError> {
        let now = self.store.now();
        let sql = format!(
            "UPDATE windows SET ended_at = $2 WHERE id = $1 AND ended_at IS NULL \
             AND (ends_at IS NULL OR ends_at > $2) RETURNING {COLUMNS}"
        );
        let row = self
            .store
            .db
            .query_one_raw(self.store.stmt(&sql, [id.into(), now.into()]))
            .await
            .doing("ending a window")?;
        if let Some(row) = row {
            return Ok(WindowEnd::Ended(read_window(&row)?));
        }
        let sql = format!("SELECT {COLUMNS} FROM windows WHERE id = $1");
        let row = self.store.db.query_one_raw(self.store.stmt(&sql, [id.into()])).await.doing("ending a window")?;
        Ok(match row {
            Some(r) => WindowEnd::AlreadyOver(read_window(&r)?),
            None => WindowEnd::NotFound,
        })
    }

    /// Each window open now with the due actions it holds (a row two windows hold counts in
    /// both): what a tick that left due work idle names in its ledger note.
    pub async fn held_due(self) -> Result<Vec<(Window, i64)>, StoreError> {
        let mut out = Vec::new();
        for w in self.open_now().await? {
            let cond = matcher_sql(self.store.backend, &w.spec.matcher)?;
            let sql = format!("SELECT COUNT(*) AS n FROM actions WHERE {} AND {cond}", super::due_sql("$1"));
            let row = self
                .store
                .db
                .query_one_raw(self.store.stmt(&sql, [self.store.now().into()]))
                .await
                .doing("counting held actions")?;
            let n: i64 = match row {
                Some(r) => r.try_get("", "n").doing("counting held actions")?,
                None => 0,
            };
            out.push((w, n));
        }
        Ok(out)
    }

    /// The due actions the windows `open` (as [`Self::open_now`] read them) hold, each counted
    /// once however many hold it, leaving out those of `except` (types a full limit holds
    /// already, counted there): work that waits by design, which the workload score does not
    /// count as saturation. No window: no query.
    pub async fn held_count<'w>(
        self,
        open: impl IntoIterator<Item = &'w Window>,
        except: &[String],
    ) -> Result<i64, StoreError> {
        let Some(cond) = any_held_sql(self.store.backend, open.into_iter().map(|w| &w.spec.matcher))? else {
            return Ok(0);
        };
        let mut values: Vec<Value> = vec![self.store.now().into()];
        let mut sql = format!("SELECT COUNT(*) AS n FROM actions WHERE {} AND {cond}", super::due_sql("$1"));
        if !except.is_empty() {
            let list: Vec<String> = except
                .iter()
                .map(|t| {
                    values.push(t.as_str().into());
                    format!("${}", values.len())
                })
                .collect();
            sql.push_str(&format!(" AND action_type NOT IN ({})", list.join(", ")));
        }
        let row = self.store.db.query_one_raw(self.store.stmt(&sql, values)).await.doing("counting held actions")?;
        match row {
            Some(r) => r.try_get("", "n").doing("counting held actions"),
            None => Ok(0),
        }
    }

    /// Writes the config's recurring windows (`run`, at start): a window of the config that a
    /// live `config <name>` row already says exactly is kept; one that differs replaces it (the
    /// old row is ended); a `config <name>` row whose name the config no longer has is ended.
    /// Returns (opened, ended).
    pub async fn replace_config(
        self,
        declared: &std::collections::BTreeMap<String, windows::ConfigWindow>,
    ) -> Result<(usize, usize), StoreError> {
        let now = self.store.now();
        let live = self.list(false).await?;
        let ours: Vec<&Window> = live.iter().filter(|w| w.spec.opened_by.starts_with("config ")).collect();
        let (mut opened, mut ended) = (0, 0);
        let mut keep = std::collections::BTreeSet::new();
        for (name, cw) in declared {
            let spec = cw.spec(name, now).map_err(|e| StoreError::Internal(format!("windows.{name}: {e}")))?;
            let same = |w: &&&Window| {
                w.spec.opened_by == spec.opened_by
                    && w.spec.matcher == spec.matcher
                    && w.spec.recurrence == spec.recurrence
                    && w.spec.reason == spec.reason
            };
            match ours.iter().find(same) {
                Some(w) => {
                    keep.insert(w.id);
                }
                None => {
                    keep.insert(self.add(&spec).await?.id);
                    opened += 1;
                }
            }
        }
        for w in ours.iter().filter(|w| !keep.contains(&w.id)) {
            if matches!(self.end(w.id).await?, WindowEnd::Ended(_)) {
                ended += 1;
            }
        }
        Ok((opened, ended))
    }

    /// The windows open now, by the store's clock.
    pub async fn open_now(self) -> Result<Vec<Window>, StoreError> {
        let now = self.store.now();
        Ok(self
            .store
            .live_windows(&self.store.db)
            .await?
            .iter()
            .filter(|w| w.open_at(now).is_some())
            .cloned()
            .collect())
    }
}

/// The rows that may be open at `$1`: not ended, not past their end (`ix_windows_live`).
const LIVE: &str = "ended_at IS NULL AND (ends_at IS NULL OR ends_at > $1)";

/// The windows not yet over as a process last read them, with the signature they were read
/// under: the newest id (a window added) and how many are not yet over (one ended, deleted, or
/// past its end). A claim reads the signature (two index reads) and the rows only when it
/// changed, so a thousand windows cost a claim no more than a few.
#[derive(Debug, Default)]
pub(in crate::store) struct Seen {
    signature: Option<(i64, i64)>,
    live: Arc<Vec<Window>>,
    /// The claim's condition over `live`, and the stretch of time it holds for: from when it
    /// was computed until the first time a window of `live` opens or closes.
    held: Option<(DateTime<Utc>, DateTime<Utc>, String)>,
}

impl Store {
    /// The windows not yet over, read on `conn` (or as last read, when nothing changed since).
    async fn live_windows<C: ConnectionTrait>(&self, conn: &C) -> Result<Arc<Vec<Window>>, StoreError> {
        let doing = "reading open windows";
        let now: Value = self.now().into();
        let sig = format!(
            "SELECT (SELECT COALESCE(MAX(id), 0) FROM windows) AS top, \
             (SELECT COUNT(*) FROM windows WHERE {LIVE}) AS live"
        );
        let row = conn.query_one_raw(self.stmt(&sig, [now.clone()])).await.doing(doing)?;
        let signature = match row {
            Some(r) => Some((r.try_get::<i64>("", "top").doing(doing)?, r.try_get::<i64>("", "live").doing(doing)?)),
            None => None,
        };
        if let Ok(seen) = self.windows_seen.lock()
            && signature.is_some()
            && seen.signature == signature
        {
            return Ok(seen.live.clone());
        }
        let sql = format!("SELECT {COLUMNS} FROM windows WHERE {LIVE}");
        let rows = conn.query_all_raw(self.stmt(&sql, [now])).await.doing(doing)?;
        let live: Arc<Vec<Window>> = Arc::new(rows.iter().map(read_window).collect::<Result<_, _>>()?);
        if let Ok(mut seen) = self.windows_seen.lock() {
            *seen = Seen { signature, live: live.clone(), held: None };
        }
        Ok(live)
    }

    /// The condition a claim adds to its due rows while windows are open or `closed` types are
    /// outside their allowed hours (` AND NOT (...)`), or nothing when none is: then the claim's
    /// statement is exactly what it is without windows. Read on `conn` (inside the claim's
    /// transaction where it has one).
    pub(in crate::store) async fn held_filter<C: ConnectionTrait>(
        &self,
        conn: &C,
        closed: &[String],
    ) -> Result<String, StoreError> {
        let now = self.now();
        let live = self.live_windows(conn).await?;
        let open = live.iter().filter(|w| w.open_at(now).is_some()).map(|w| &w.spec.matcher);
        if !closed.is_empty() {
            // Allowed hours change with the limits a claim reads each time: not kept.
            let hours = Matcher { types: closed.to_vec(), field: None };
            return held_sql(self.backend, open.chain([&hours]));
        }
        if let Ok(seen) = self.windows_seen.lock()
            && Arc::ptr_eq(&seen.live, &live)
            && let Some((from, until, sql)) = &seen.held
            && *from <= now
            && now < *until
        {
            return Ok(sql.clone());
        }
        let sql = held_sql(self.backend, open)?;
        // The first time any of them opens or closes: until then the condition stands.
        let until = live
            .iter()
            .filter_map(|w| w.open_at(now).map(|(_, until)| until).or_else(|| w.next_open(now)))
            .min()
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        if let Ok(mut seen) = self.windows_seen.lock()
            && Arc::ptr_eq(&seen.live, &live)
        {
            seen.held = Some((now, until, sql.clone()));
        }
        Ok(sql)
    }
}

/// ` AND NOT (m1 OR m2 ...)` over `matchers`, or `""` for none.
pub(in crate::store) fn held_sql<'a>(
    backend: Backend,
    matchers: impl Iterator<Item = &'a Matcher>,
) -> Result<String, StoreError> {
    Ok(any_held_sql(backend, matchers)?.map(|c| format!(" AND NOT {c}")).unwrap_or_default())
}

/// `(m1 OR m2 ...)`: a row any of `matchers` holds; `None` for none.
fn any_held_sql<'a>(
    backend: Backend,
    matchers: impl Iterator<Item = &'a Matcher>,
) -> Result<Option<String>, StoreError> {
    // The types held whole go in one `IN` list, however many windows name them: a thousand
    // open windows of a few types make one short condition.
    let mut whole: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    let mut conds: Vec<String> = Vec::new();
    for m in matchers {
        match m.field {
            None => whole.extend(m.types.iter().map(String::as_str)),
            Some(_) => conds.push(matcher_sql(backend, m)?),
        }
    }
    if !whole.is_empty() {
        let types = Matcher { types: whole.into_iter().map(str::to_string).collect(), field: None };
        conds.insert(0, matcher_sql(backend, &types)?);
    }
    conds.sort();
    conds.dedup();
    Ok(if conds.is_empty() { None } else { Some(format!("({})", conds.join(" OR "))) })
}

/// The condition on a row of `actions` that `m` holds, with its values as literals.
fn matcher_sql(backend: Backend, m: &Matcher) -> Result<String, StoreError> {
    let types: Result<Vec<String>, StoreError> = m.types.iter().map(|t| super::limits::lit(t)).collect();
    let cond = format!("action_type IN ({})", types?.join(", "));
    Ok(match &m.field {
        None => cond,
        Some(f) => {
            // The value goes in as hex, which no quoting rule of either backend (nor a
            // PostgreSQL without standard_conforming_strings) can read as anything but text.
            let hex = hex::encode(f.value.as_bytes());
            let value = match backend {
                Backend::Sqlite => format!("CAST(X'{hex}' AS TEXT)"),
                Backend::Postgres => format!("convert_from(decode('{hex}', 'hex'), 'UTF8')"),
            };
            format!("({cond} AND {} = {value})", super::limits::part_expr(backend, &f.path))
        }
    })
}

/// A row of `windows`, each stored value checked again as the CLI checks it: a row edited by
/// hand into something a window cannot be is an error naming the window, never a guess.
fn read_window(r: &sea_orm::QueryResult) -> Result<Window, StoreError> {
    let get = "reading a window";
    let id: i64 = r.try_get("", "id").doing(get)?;
    let bad = |what: String| StoreError::Internal(format!("window {id}: {what}"));
    let types: String = r.try_get("", "action_types").doing(get)?;
    let types: Vec<String> = serde_json::from_str(&types).map_err(|e| bad(format!("action_types: {e}")))?;
    windows::check_types(&types).map_err(bad)?;
    let path: Option<String> = r.try_get("", "field_path").doing(get)?;
    let value: Option<String> = r.try_get("", "field_value").doing(get)?;
    let field = match (path, value) {
        (Some(p), Some(v)) => Some(windows::field_match(&p, &v).map_err(bad)?),
        (None, None) => None,
        _ => return Err(bad("field_path and field_value must be set together".into())),
    };
    let cron: Option<String> = r.try_get("", "cron").doing(get)?;
    let secs: Option<i64> = r.try_get("", "duration_seconds").doing(get)?;
    let tz: Option<String> = r.try_get("", "time_zone").doing(get)?;
    let recurrence = match (cron, secs, tz) {
        (Some(c), Some(s), Some(z)) => {
            let d = std::time::Duration::from_secs(u64::try_from(s).unwrap_or(0));
            Some(Recurrence::parse(&c, d, &z).map_err(bad)?)
        }
        (None, None, None) => None,
        _ => return Err(bad("cron, duration_seconds and time_zone must be set together".into())),
    };
    let ends_at: Option<DateTime<Utc>> = r.try_get("", "ends_at").doing(get)?;
    Ok(Window {
        id,
        spec: WindowSpec {
            matcher: Matcher { types, field },
            starts_at: r.try_get("", "starts_at").doing(get)?,
            ends_at,
            recurrence,
            reason: r.try_get("", "reason").doing(get)?,
            opened_by: r.try_get("", "opened_by").doing(get)?,
        },
        created_at: r.try_get("", "created_at").doing(get)?,
        ended_at: r.try_get("", "ended_at").doing(get)?,
    })
}
