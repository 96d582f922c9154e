//! The store: the one module that speaks to the database, through sea-orm.
//!
//! It owns the connection (SQLite pragmas, PostgreSQL pool), the migrations, the entities and
//! every query. Hand-written SQL lives here only where the ORM cannot say it: the atomic lease
//! upsert, the `FOR UPDATE SKIP LOCKED` claim, fenced completions and partial-index counts.
//! It decides nothing: which action to retry or when is the caller's business.
//!
//! Its surface is grouped by concern ([`handles`]): `store.actions()`, `store.limits()`,
//! `store.ledger()`, `store.decisions()`, `store.flags()`, `store.lease()`, `store.workers()`,
//! `store.history()`, `store.notify()`; [`Store`] itself keeps what belongs to the pool.
//!
//! Architecture invariant: no other module imports `sea_orm`.

mod actions;
mod backup;
mod bench;
pub use backup::{Backup, pg_dump_advice};
pub use bench::{Bench, DrainSample, DrainTotals};
mod decide;
pub use actions::{APPROVAL_EXPIRED, Approved};
pub use actions::{
    Authority, BulkOutcome, Claimed, Claimer, Completion, CompletionOutcome, CompletionReport, EnqueueOutcome,
    MAX_BULK_IDS, NewAction, Op, RESCUED_ERROR, Refusal, Rescued, quarantine,
};
pub use decide::{DecideRecord, DecisionRow, Fence, LedgerStats, TickDecide, WindowCount};
mod entities;
mod flags;
pub mod handles;
pub use flags::FlagChange;
mod history;
pub use history::{LogFilter, Pace, PruneCutoffs, Pruned};
mod summary;
#[cfg(test)]
mod testing;
pub use lease::Acquired;
pub use summary::{ActionsSummary, OldestDue, PRIORITY_BANDS, TypeCount};
mod ledger;
pub use ledger::{Begun, TickClose, UNFINISHED_NOTE};
mod lease;
mod limits;
mod logs;
mod notify;
mod schedules;
mod windows;
mod workers;
pub use limits::{ConfigLimits, ConfigLimitsWritten, EditRefusal, LimitDisagreement, LimitEdit};
pub use notify::{CHANGE_POLL, WORK_CHANNEL, WorkListener, WorkWaiter};
pub use schedules::{
    ConfigSchedulesWritten, FROM_CONFIG, FROM_OPERATOR, Fire, NewSchedule, NewScheduleView, ScheduleRow,
};
pub use windows::WindowEnd;
pub use workers::{Beat, NewWorker, WorkerRow};

use std::time::Duration;

use migrations::{Migrator, MigratorTrait};

use crate::model::Clock;
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait, Value,
};

pub use actions::ActionFilter;

/// The open statuses (`ActionStatus::OPEN`) as SQL: the predicate of the partial indexes the
/// tick's reads use. The migrations cannot import it; a test checks that they say the same.
pub(crate) const OPEN_SQL: &str = "status IN ('PENDING', 'RUNNING', 'RETRY', 'DLQ')";
/// The statuses a claim takes from (`Op::Claim`), as SQL: the due index's predicate.
pub(crate) const CLAIMABLE_SQL: &str = "status IN ('PENDING', 'RETRY')";

/// Due at `now` (an SQL expression: a bound parameter, or `now()`): claimable, its
/// `not_before` passed, its deadline (if it has one) not. The one due condition: the claim,
/// the limited pick, the dry run and the due counts all take it.
pub(crate) fn due_sql(now: &str) -> String {
    format!("{CLAIMABLE_SQL} AND not_before <= {now} AND (expires_at IS NULL OR expires_at > {now})")
}

/// The claim order: the highest priority first, then the earliest `not_before`, then the
/// oldest id. Every claim and pick sorts by it; [`claim_rank`] is the same order in Rust.
pub(crate) const CLAIM_ORDER_SQL: &str = "priority DESC, not_before, id";

/// [`CLAIM_ORDER_SQL`] on the columns of `table` (an alias in a join).
pub(crate) fn claim_order_of(table: &str) -> String {
    CLAIM_ORDER_SQL.split(", ").map(|c| format!("{table}.{c}")).collect::<Vec<_>>().join(", ")
}

/// A row's place in [`CLAIM_ORDER_SQL`]: smaller comes first.
pub(crate) type ClaimRank = (std::cmp::Reverse<i64>, chrono::DateTime<chrono::Utc>, i64);

/// The rank of a row with these values in the claim order.
pub(crate) fn claim_rank(priority: i64, not_before: chrono::DateTime<chrono::Utc>, id: i64) -> ClaimRank {
    (std::cmp::Reverse(priority), not_before, id)
}

/// Which database engine a store talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Errors from the store. The message always names what the store was doing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid database URL '{url}': {reason}")]
    BadUrl { url: String, reason: String },
    // The cause is part of the message and deliberately not a `source`, so that `{:#}` chains
    // print it once.
    //
    // Unavailable (`DbCause::is_unavailable`): the server refused or dropped the connection, is
    // starting up, or has no such database yet: what waiting can cure (`run` waits for it at
    // start). Otherwise the database answered with a refusal that only a person can fix (a
    // role, a password, a SQLite path that cannot be opened).
    #[error("cannot open database {target}: {cause}")]
    Connect { target: String, cause: DbCause },
    #[error("database error while {doing}: {cause}{}", .cause.pooler_hint())]
    Db { doing: &'static str, cause: DbCause },
    /// The operation found a state that does not allow it (a conflict, not a fault).
    #[error("{0}")]
    Refused(Refusal),
    /// The request itself is invalid (too many ids, an impossible status list): the caller's
    /// fault, whatever the state (HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// Something that should not happen inside the store (not the caller's fault).
    #[error("internal error: {0}")]
    Internal(String),
    #[error("action {0} not found")]
    NotFound(i64),
    /// A file the store writes outside the database (a backup) could not be written.
    #[error("{doing}: {cause}")]
    File { doing: String, cause: std::io::Error },
    #[error("row {table}#{id} holds an invalid value: {reason}")]
    Corrupt { table: &'static str, id: i64, reason: String },
}

impl StoreError {
    /// True when the error says the database could not be reached or answered (as opposed to a
    /// refused request): the daemon backs off and retries these.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Connect { cause, .. } | StoreError::Db { cause, .. } => cause.is_unavailable(),
            _ => false,
        }
    }

    /// What kind of storage fault this is, in a few words that quote nothing from the
    /// database (for the public `/health`): `disk full`, `I/O error`, `read-only storage`,
    /// `database locked`, `database file corrupt`, `database unavailable`, or `database error`
    /// for the rest.
    pub fn storage_fault(&self) -> &'static str {
        if let StoreError::Db { cause, .. } | StoreError::Connect { cause, .. } = self
            && let Some(fault) = cause.fault
        {
            return fault;
        }
        if self.is_unavailable() { "database unavailable" } else { "database error" }
    }
}

/// What the database or its driver said, classified once here, where the driver's error is at
/// hand, so that no caller needs `sea_orm` to tell an outage from a fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbCause {
    message: String,
    unavailable: bool,
    fault: Option<&'static str>,
    pooler_mixup: bool,
}

impl DbCause {
    /// A cause of a failed statement: unavailable when the connection broke or could not be
    /// had, or the server is shutting down.
    fn of(e: &DbErr) -> DbCause {
        let unavailable = match e {
            DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => true,
            e => sqlx_cause(e).is_some_and(sqlx_unavailable),
        };
        DbCause { message: e.to_string(), unavailable, fault: fault_of(e), pooler_mixup: pooler_mixup(e) }
    }

    /// The same cause, judged available or not by what the caller knows better.
    fn unavailable(self, unavailable: bool) -> DbCause {
        DbCause { unavailable, ..self }
    }

    /// What the database or the driver said.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether waiting can cure it (a refused or broken connection, a server starting up or
    /// shutting down, a database not created yet), as opposed to a refusal a person must fix.
    pub fn is_unavailable(&self) -> bool {
        self.unavailable
    }

    /// The storage fault it names, if it names one (see [`StoreError::storage_fault`]).
    pub fn storage_fault(&self) -> Option<&'static str> {
        self.fault
    }

    /// What to add to the message when it says the driver's prepared statements were mixed up
    /// between connections (SQLSTATE 42P05 or 26000): a pooler in transaction mode sits in front
    /// of PostgreSQL. Empty otherwise.
    pub fn pooler_hint(&self) -> &'static str {
        if self.pooler_mixup {
            " (the driver's prepared statements were mixed up between connections: a pooler in transaction \
             mode sits in front of PostgreSQL; PgBouncer needs version 1.21 or later with \
             max_prepared_statements set, or session mode; see docs/SCALING.md)"
        } else {
            ""
        }
    }
}

impl std::fmt::Display for DbCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The storage fault a driver error names, by its I/O kind or SQLite's or PostgreSQL's code.
fn fault_of(e: &DbErr) -> Option<&'static str> {
    let e = sqlx_cause(e)?;
    if let sea_orm::sqlx::Error::Io(io) = e
        && io.kind() == std::io::ErrorKind::StorageFull
    {
        return Some("disk full");
    }
    let code = e.as_database_error().and_then(|d| d.code())?;
    // SQLite's extended result codes keep the primary code in the low byte.
    let sqlite = code.parse::<u32>().ok().map(|c| c & 0xff);
    match (sqlite, code.as_ref()) {
        (Some(13), _) | (_, "53100") => Some("disk full"),
        (Some(10), _) | (_, "58030") => Some("I/O error"),
        (Some(8), _) | (_, "25006") => Some("read-only storage"),
        (Some(5 | 6), _) => Some("database locked"),
        (Some(11), _) => Some("database file corrupt"),
        _ => None,
    }
}

/// A connection that broke or could not be had, or a server shutting down (SQLSTATE class
/// 08, and 57P01-57P03), as opposed to a statement the database refused.
fn sqlx_unavailable(e: &sea_orm::sqlx::Error) -> bool {
    use sea_orm::sqlx::Error as E;
    match e {
        E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => true,
        E::Database(d) => d.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

/// Whether an error says a prepared statement already exists (SQLSTATE 42P05) or does not
/// exist (26000): the driver names its statements per connection, so these mean a pooler in
/// transaction mode hands one server connection to several of ours.
fn pooler_mixup(cause: &DbErr) -> bool {
    let code = sqlx_cause(cause).and_then(|e| e.as_database_error()).and_then(|d| d.code());
    matches!(code.as_deref(), Some("42P05" | "26000"))
}

/// A connection refused for a reason that waiting cures: the server is not answering, is
/// starting up or out of connection slots (SQLSTATE 57P03, 53300), or the database does not
/// exist yet (3D000, e.g. at first boot before it is created). A SQLite file that cannot be
/// opened is not: it is a path or a permission to fix.
fn not_there_yet(backend: Backend, e: &sea_orm::sqlx::Error) -> bool {
    if backend == Backend::Sqlite {
        return false;
    }
    let code = e.as_database_error().and_then(|d| d.code());
    sqlx_unavailable(e) || code.is_some_and(|c| matches!(c.as_ref(), "3D000" | "57P03" | "53300"))
}

/// A pool that could not connect, classified as [`not_there_yet`] says.
fn connect_error(backend: Backend, target: &str, cause: DbErr) -> StoreError {
    let not_there_yet = match &cause {
        DbErr::ConnectionAcquire(_) => backend == Backend::Postgres,
        e => sqlx_cause(e).is_some_and(|e| not_there_yet(backend, e)),
    };
    StoreError::Connect { target: target.to_string(), cause: DbCause::of(&cause).unavailable(not_there_yet) }
}

/// The sqlx error under a sea-orm one, if there is one.
fn sqlx_cause(e: &DbErr) -> Option<&sea_orm::sqlx::Error> {
    match e {
        DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e))
        | DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e))
        | DbErr::Query(sea_orm::RuntimeErr::SqlxError(e)) => Some(e),
        _ => None,
    }
}

trait Context<T> {
    fn doing(self, doing: &'static str) -> Result<T, StoreError>;
}

impl<T> Context<T> for Result<T, DbErr> {
    fn doing(self, doing: &'static str) -> Result<T, StoreError> {
        self.map_err(|cause| StoreError::Db { doing, cause: DbCause::of(&cause) })
    }
}

/// Settings that shape the connection.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// SQLite `synchronous`: `true` for FULL (the default: a commit survives power loss),
    /// `false` for NORMAL.
    pub sqlite_synchronous_full: bool,
    /// How long a SQLite writer waits for the lock before giving up.
    pub busy_timeout: Duration,
    /// Pool size.
    pub max_connections: u32,
    /// PostgreSQL: whether claimers may `LISTEN` for work (`postgres_listen`).
    pub listen: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            sqlite_synchronous_full: true,
            busy_timeout: Duration::from_secs(5),
            max_connections: 8,
            listen: true,
        }
    }
}

/// How soon an open that met a new SQLite file locked by another opener tries again.
const OPEN_RETRY: Duration = Duration::from_millis(50);

/// A connected, migrated database.
#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
    /// SQLite with `synchronous=FULL` only: one connection with `synchronous=NORMAL` for the
    /// writes whose durability a power cut cannot matter to (see `store.ledger().begin_tick`).
    relaxed: Option<DatabaseConnection>,
    backend: Backend,
    /// Every time this store writes or compares (on SQLite, all of them) comes from here.
    clock: Clock,
    /// Wakes this process's own claimer when a write of this process made work due (an API
    /// enqueue, say), on either backend; other processes hear a `NOTIFY` (PostgreSQL) or
    /// see the change at their next look ([`WorkWaiter`]).
    local_wake: std::sync::Arc<tokio::sync::Notify>,
    /// The windows not yet over as last read, and the signature they were read under
    /// (`windows.rs`): a claim re-reads them only when the signature changes.
    windows_seen: std::sync::Arc<std::sync::Mutex<windows::Seen>>,
    /// PostgreSQL: whether a claimer may `LISTEN` ([`StoreOptions::listen`]).
    listen: bool,
    /// PostgreSQL: set while a `VACUUM` this process started after a burst of partition keys
    /// runs (`limits/claim.rs`), so that bursts close together start one.
    vacuuming: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Turns what a user typed into (backend, URL sqlx understands). A bare path means SQLite.
pub fn normalize_url(raw: &str) -> Result<(Backend, String), StoreError> {
    let bad = |reason: &str| StoreError::BadUrl { url: redact_url(raw), reason: reason.to_string() };
    let url = raw.trim();
    if url.is_empty() {
        return Err(bad("it is empty"));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok((Backend::Postgres, url.to_string()));
    }
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let rest = rest.trim_start_matches("//");
        if rest.is_empty() || rest.starts_with('?') {
            return Err(bad("no SQLite file named (use sqlite:PATH, e.g. sqlite:orchestrator.db)"));
        }
        let sep = if rest.contains('?') { '&' } else { '?' };
        let url =
            if rest.contains("mode=") { format!("sqlite://{rest}") } else { format!("sqlite://{rest}{sep}mode=rwc") };
        return Ok((Backend::Sqlite, url));
    }
    if let Some((scheme, _)) = url.split_once("://") {
        return Err(bad(&format!("unsupported scheme '{scheme}' (use sqlite:PATH or postgres://USER@HOST/DB)")));
    }
    if url.contains('\0') {
        return Err(bad("it contains a NUL byte"));
    }
    Ok((Backend::Sqlite, format!("sqlite://{url}?mode=rwc")))
}

/// The URL with any password replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// Opens one connection directly, so that an unreachable database fails at once with its real
/// cause ("connection refused", "unable to open database file") instead of a pool timeout.
/// SQLite in WAL mode creates `<db>-wal` and `<db>-shm` next to the database, so its directory
/// must be writable; otherwise the first write fails with a bare "attempt to write a readonly
/// database". This says which directory and why, up front.
fn sqlite_dir_writable(file: &std::path::Path) -> Result<(), String> {
    let name = file.to_string_lossy();
    if name.is_empty() || name == ":memory:" || name.starts_with("file::memory:") {
        return Ok(());
    }
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let probe = dir.join(format!(".orchestrator-write-probe-{}", std::process::id()));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!(
            "the directory {} is not writable ({e}); SQLite writes its -wal and -shm files next to the \
             database, so the directory must be writable by this user",
            dir.display()
        )),
    }
}

/// Whether a SQLite connection going back to the pool may stay there: only if it is outside
/// any transaction. Every commit path (each `begin_write` in this module, the migrations) ends
/// here when its connection is released, so this is the one place that makes sure no pooled
/// connection keeps a transaction, and with it the write lock, open.
///
/// Why it is needed: when `COMMIT` fails (`SQLITE_FULL` on a full disk), SQLite rolls the
/// transaction back itself, but the driver counts it as still open. The `ROLLBACK` it queues
/// when the transaction is dropped then fails ("no transaction is active") and the count stays
/// at one, so every later transaction on that connection is taken for a nested one: its `BEGIN`
/// becomes a `SAVEPOINT` that opens a real transaction, and the first of its releases to fail
/// leaves that transaction open for good, holding the write lock while this process reports
/// its writes as committed. Every other writer, this daemon's own lease renewal included, then
/// gets "database is locked" until the connection is closed (RELIABILITY.md, "SQLite full
/// disk"). The ping first runs whatever rollback is queued; a connection still counted inside
/// a transaction after it is closed (which rolls back anything SQLite still holds) and the
/// pool opens a fresh one when it needs it.
async fn settled_or_closed(conn: &mut sea_orm::sqlx::SqliteConnection) -> Result<bool, sea_orm::sqlx::Error> {
    use sea_orm::sqlx::Connection as _;
    conn.ping().await?;
    if conn.is_in_transaction() {
        tracing::warn!(
            "a SQLite connection was left inside a transaction (a commit or rollback failed); closing it so that \
             it cannot hold the write lock"
        );
        return Ok(false);
    }
    Ok(true)
}

async fn probe(backend: Backend, url: &str, target: &str) -> Result<(), StoreError> {
    use sea_orm::sqlx::{ConnectOptions as _, Connection as _};
    let fail = |e: sea_orm::sqlx::Error| StoreError::Connect {
        target: target.to_string(),
        cause: DbCause::of(&DbErr::Conn(sea_orm::RuntimeErr::Internal(e.to_string())))
            .unavailable(not_there_yet(backend, &e)),
    };
    let attempt = async {
        match backend {
            Backend::Sqlite => {
                let opts = sea_orm::sqlx::sqlite::SqliteConnectOptions::from_url(
                    &url.parse().map_err(|e| StoreError::BadUrl { url: target.to_string(), reason: format!("{e}") })?,
                )
                .map_err(fail)?
                .create_if_missing(true);
                let conn = sea_orm::sqlx::SqliteConnection::connect_with(&opts).await.map_err(fail)?;
                conn.close().await.map_err(fail)?;
                sqlite_dir_writable(opts.get_filename()).map_err(|why| StoreError::Connect {
                    target: target.to_string(),
                    cause: DbCause::of(&DbErr::Conn(sea_orm::RuntimeErr::Internal(why))).unavailable(false),
                })
            }
            Backend::Postgres => {
                let opts = sea_orm::sqlx::postgres::PgConnectOptions::from_url(
                    &url.parse().map_err(|e| StoreError::BadUrl { url: target.to_string(), reason: format!("{e}") })?,
                )
                .map_err(fail)?;
                let conn = sea_orm::sqlx::PgConnection::connect_with(&opts).await.map_err(fail)?;
                conn.close().await.map_err(fail)
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Connect {
            target: target.to_string(),
            cause: DbCause::of(&DbErr::Conn(sea_orm::RuntimeErr::Internal("no answer within 10 s".into())))
                .unavailable(true),
        }),
    }
}

impl Store {
    /// Connects (creating a SQLite file if missing) and applies pending migrations.
    ///
    /// Two processes opening a new SQLite file at once (a worker and the leader started
    /// together) race to switch it to WAL, which SQLite settles by answering one of them
    /// "database is locked" at once, without its busy timeout: such an open is tried again,
    /// every [`OPEN_RETRY`], for as long as the busy timeout.
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Store, StoreError> {
        let started = std::time::Instant::now();
        loop {
            let opened = match Store::connect(url, options).await {
                Ok(store) => store.migrate().await.map(|()| store),
                Err(e) => Err(e),
            };
            match opened {
                Err(e) if e.storage_fault() == "database locked" && started.elapsed() < options.busy_timeout => {
                    tokio::time::sleep(OPEN_RETRY).await;
                }
                opened => return opened,
            }
        }
    }

    /// Connects without migrating.
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Store, StoreError> {
        let (backend, url) = normalize_url(url)?;
        let target = redact_url(&url);
        let connect_options = |full_sync: bool, max_connections: u32| {
            let mut opt = ConnectOptions::new(url.clone());
            opt.sqlx_logging(false)
                .max_connections(max_connections)
                .min_connections(0)
                .connect_timeout(Duration::from_secs(5))
                .acquire_timeout(Duration::from_secs(10))
                .idle_timeout(Duration::from_secs(300));
            match backend {
                Backend::Sqlite => {
                    let sync = if full_sync { SqliteSynchronous::Full } else { SqliteSynchronous::Normal };
                    let busy = options.busy_timeout;
                    opt.map_sqlx_sqlite_opts(move |o| {
                        o.create_if_missing(true)
                            .journal_mode(SqliteJournalMode::Wal)
                            .synchronous(sync)
                            .busy_timeout(busy)
                            .foreign_keys(true)
                            .statement_cache_capacity(256)
                    })
                    .map_sqlx_sqlite_pool_opts(|o| o.after_release(|conn, _| Box::pin(settled_or_closed(conn))));
                }
                Backend::Postgres => {
                    // Every statement here is short. With 1M rows of history a cached generic
                    // plan of the snapshot's windowed count went parallel and spent 12-16 ms
                    // starting workers to scan nothing; no statement of ours gains from them.
                    opt.map_sqlx_postgres_opts(|o| {
                        o.application_name("orchestrator").options([("max_parallel_workers_per_gather", "0")])
                    });
                }
            }
            opt
        };
        probe(backend, &url, &target).await?;
        let db = Database::connect(connect_options(options.sqlite_synchronous_full, options.max_connections))
            .await
            .map_err(|cause| connect_error(backend, &target, cause))?;
        let relaxed = if backend == Backend::Sqlite && options.sqlite_synchronous_full {
            Some(
                Database::connect(connect_options(false, 1))
                    .await
                    .map_err(|cause| connect_error(backend, &target, cause))?,
            )
        } else {
            None
        };
        Ok(Store {
            db,
            relaxed,
            backend,
            clock: Clock::real(),
            local_wake: Default::default(),
            windows_seen: Default::default(),
            listen: options.listen,
            vacuuming: Default::default(),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// This store, reading time from `clock` (a scenario's shifted clock); the connection is
    /// shared with the original.
    pub fn with_clock(mut self, clock: Clock) -> Store {
        self.clock = clock;
        self
    }

    /// The clock this store reads.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Now, by this store's clock (the wall clock unless [`Store::with_clock`] said otherwise).
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }

    /// Applies pending migrations under a lock, so concurrent starts do not race each other.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        if let Ok(pending) = Migrator::get_pending_migrations_read_only(&self.db).await
            && pending.is_empty()
        {
            return Ok(());
        }
        let txn = self.begin_write().await?;
        if self.backend == Backend::Postgres {
            // Any constant works; it only has to be the same for every instance.
            txn.execute_unprepared("SELECT pg_advisory_xact_lock(7243901)").await.doing("locking for migrations")?;
        }
        Migrator::up(&txn, None).await.doing("applying migrations")?;
        txn.commit().await.doing("committing migrations")
    }

    /// How many migrations are not applied yet (0: the schema is current).
    pub async fn pending_migrations(&self) -> Result<usize, StoreError> {
        Ok(Migrator::get_pending_migrations_read_only(&self.db).await.doing("reading applied migrations")?.len())
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db.ping().await.doing("checking the connection")
    }

    /// Closes the pool (lets SQLite checkpoint its WAL).
    pub async fn close(self) -> Result<(), StoreError> {
        if let Some(relaxed) = self.relaxed {
            relaxed.close().await.doing("closing the connection")?;
        }
        self.db.close().await.doing("closing the connection")
    }

    /// A read-then-write transaction: `BEGIN IMMEDIATE` on SQLite, so that the write lock is
    /// taken up front and a busy timeout can cure contention.
    async fn begin_write(&self) -> Result<DatabaseTransaction, StoreError> {
        self.db
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await
            .doing("starting a write transaction")
    }

    fn stmt(&self, sql: &str, values: impl IntoIterator<Item = Value>) -> Statement {
        Statement::from_sql_and_values(self.db_backend(), sql, values)
    }

    fn db_backend(&self) -> DbBackend {
        match self.backend {
            Backend::Sqlite => DbBackend::Sqlite,
            Backend::Postgres => DbBackend::Postgres,
        }
    }

    /// The value of a SQLite pragma as this store's connections see it (`None` on PostgreSQL).
    pub async fn sqlite_pragma(&self, name: &str) -> Result<Option<String>, StoreError> {
        if self.backend != Backend::Sqlite || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Ok(None);
        }
        let row = self.db.query_one_raw(self.stmt(&format!("PRAGMA {name}"), [])).await.doing("reading a pragma")?;
        Ok(match row {
            Some(r) => {
                r.try_get_by_index::<String>(0).or_else(|_| r.try_get_by_index::<i64>(0).map(|v| v.to_string())).ok()
            }
            None => None,
        })
    }

    /// Runs raw SQL with no results; for tests and fault injection tools, never for user input.
    pub async fn execute_unprepared(&self, sql: &str) -> Result<u64, StoreError> {
        Ok(self.db.execute_unprepared(sql).await.doing("running SQL")?.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ActionStatus;

    #[test]
    fn status_lists_are_written_once() {
        assert_eq!(OPEN_SQL, actions::status_in(ActionStatus::OPEN));
        assert_eq!(CLAIMABLE_SQL, actions::status_in(Op::Claim.from()));
        // The migrations' partial indexes must carry the same predicates, or the planner will
        // not use them for the queries above.
        let core = include_str!("../../migrations/src/m20261123_000001_core.rs");
        let decide = include_str!("../../migrations/src/m20261123_000003_decide.rs");
        assert!(core.contains(&format!("WHERE {OPEN_SQL}")), "core migration's open index");
        assert!(core.contains(&format!("WHERE {CLAIMABLE_SQL}")), "core migration's due index");
        assert!(decide.contains(&format!("WHERE {OPEN_SQL}")), "decide migration's open index");
    }

    #[test]
    fn the_claim_order_in_sql_and_in_rust_agree() {
        assert_eq!(claim_order_of("f"), "f.priority DESC, f.not_before, f.id");
        let t = |s: &str| s.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
        let (early, late) = (t("2026-01-01T00:00:00Z"), t("2026-01-02T00:00:00Z"));
        // priority DESC, then not_before, then id.
        let mut rows = [(1, late, 5), (2, late, 9), (2, early, 9), (2, late, 3), (1, early, 1)];
        rows.sort_by_key(|(p, nb, id)| claim_rank(*p, *nb, *id));
        assert_eq!(rows, [(2, early, 9), (2, late, 3), (2, late, 9), (1, early, 1), (1, late, 5)]);
        assert_eq!(
            due_sql("$1"),
            "status IN ('PENDING', 'RETRY') AND not_before <= $1 AND (expires_at IS NULL OR expires_at > $1)"
        );
    }

    #[test]
    fn an_unwritable_sqlite_directory_is_named_with_the_reason() {
        // /proc refuses new files even to root, so this holds whoever runs the tests.
        let e = sqlite_dir_writable(std::path::Path::new("/proc/orchestrator.db")).unwrap_err();
        assert!(e.starts_with("the directory /proc is not writable ("), "{e}");
        assert!(e.contains("-wal and -shm"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(sqlite_dir_writable(&dir.path().join("o.db")), Ok(()));
        assert_eq!(sqlite_dir_writable(std::path::Path::new(":memory:")), Ok(()));
    }

    #[test]
    fn bare_paths_and_sqlite_urls_mean_sqlite() {
        assert_eq!(
            normalize_url("orchestrator.db").unwrap(),
            (Backend::Sqlite, "sqlite://orchestrator.db?mode=rwc".into())
        );
        assert_eq!(normalize_url("sqlite:x.db").unwrap().1, "sqlite://x.db?mode=rwc");
        assert_eq!(normalize_url("sqlite:///tmp/x.db").unwrap().1, "sqlite:///tmp/x.db?mode=rwc");
        assert_eq!(normalize_url("sqlite://x.db?mode=ro").unwrap().1, "sqlite://x.db?mode=ro");
        assert_eq!(normalize_url("postgres://u@h/db").unwrap().0, Backend::Postgres);
    }

    #[test]
    fn bad_urls_say_why() {
        let e = normalize_url("mysql://root@h/db").unwrap_err().to_string();
        assert!(e.contains("unsupported scheme 'mysql'"), "{e}");
        assert!(normalize_url("  ").unwrap_err().to_string().contains("empty"));
        assert!(normalize_url("sqlite:").unwrap_err().to_string().contains("no SQLite file"));
    }

    #[test]
    fn a_database_error_is_classified_once_and_keeps_its_message() {
        let broken = DbErr::Conn(sea_orm::RuntimeErr::Internal("connection reset".into()));
        let e = StoreError::Db { doing: "reading decisions", cause: DbCause::of(&broken) };
        assert!(e.is_unavailable());
        assert_eq!(e.storage_fault(), "database unavailable");
        assert_eq!(e.to_string(), format!("database error while reading decisions: {broken}"));
        let refused = DbErr::Custom("no such table".into());
        let e = StoreError::Db { doing: "reading decisions", cause: DbCause::of(&refused) };
        assert!(!e.is_unavailable());
        assert_eq!(e.storage_fault(), "database error");
        let StoreError::Db { cause, .. } = &e else { unreachable!() };
        assert_eq!(
            (cause.message(), cause.pooler_hint(), cause.storage_fault()),
            (refused.to_string().as_str(), "", None)
        );
        // A connection's verdict is the caller's, who knows the backend.
        let e =
            connect_error(Backend::Sqlite, "sqlite://x.db", DbErr::ConnectionAcquire(sea_orm::ConnAcquireErr::Timeout));
        assert!(!e.is_unavailable(), "{e}");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact_url("postgres://u:secret@h:5432/db?x=1"), "postgres://u:***@h:5432/db?x=1");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://a.db"), "sqlite://a.db");
    }
}
