//! Backups: an online, consistent copy of a SQLite database taken while daemons and workers
//! write to it (`VACUUM INTO`, one read transaction), checked before it is given its name; and,
//! on PostgreSQL, the `pg_dump` line that does the same job there.
//!
//! It never overwrites a file and never changes the live database.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sea_orm::ConnectionTrait;

use super::{Backend, Context, Store, StoreError};
use crate::model::ActionStatus;

/// What a backup holds: the file, its size and what it was checked to contain.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Backup {
    pub file: PathBuf,
    pub bytes: u64,
    /// `PRAGMA integrity_check` on the copy: `ok`.
    pub integrity: String,
    /// Actions by status in the copy: the queue at the moment of the backup.
    pub actions: BTreeMap<ActionStatus, i64>,
    /// The newest tick in the copy's ledger.
    pub last_tick: Option<i64>,
}

impl Store {
    /// Copies the database into `dest` (a new file) while others go on writing: SQLite's
    /// `VACUUM INTO` reads one snapshot, so the copy is the database as of one instant. The copy
    /// is written under a temporary name beside `dest`, checked with `PRAGMA integrity_check`,
    /// synced, and only then renamed to `dest`. PostgreSQL is refused: see [`pg_dump_advice`].
    pub async fn backup_into(&self, dest: &Path) -> Result<Backup, StoreError> {
        if self.backend != Backend::Sqlite {
            return Err(StoreError::Invalid("backup copies SQLite databases; on PostgreSQL use pg_dump".into()));
        }
        if dest.as_os_str().is_empty() {
            return Err(StoreError::Invalid("backup needs a file name".into()));
        }
        if dest.exists() {
            return Err(StoreError::Invalid(format!(
                "{} exists; a backup never overwrites a file: name a new one or move that one away",
                dest.display()
            )));
        }
        let dir = match dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let partial = dir.join(format!(".{name}.partial-{:016x}", fastrand::u64(..)));
        let result = self.backup_via(&partial, dest).await;
        if result.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        result
    }

    async fn backup_via(&self, partial: &Path, dest: &Path) -> Result<Backup, StoreError> {
        let io = |doing: &str, cause| StoreError::File { doing: format!("{doing} {}", dest.display()), cause };
        let target = partial.to_str().ok_or_else(|| {
            StoreError::Invalid(format!("{} is not a UTF-8 path; SQLite cannot be given it", dest.display()))
        })?;
        self.db
            .execute_raw(self.stmt("VACUUM INTO $1", [target.into()]))
            .await
            .doing("copying the database (VACUUM INTO)")?;
        let (integrity, actions, last_tick) = inspect_copy(partial).await.map_err(|e| {
            StoreError::Internal(format!("the copy of the database cannot be read back ({e}); nothing was kept"))
        })?;
        if integrity != "ok" {
            return Err(StoreError::Internal(format!(
                "the copy of the database failed its integrity check ({integrity}); nothing was kept"
            )));
        }
        std::fs::File::open(partial).and_then(|f| f.sync_all()).map_err(|e| io("syncing the copy for", e))?;
        if dest.exists() {
            return Err(StoreError::Invalid(format!(
                "{} appeared while the backup ran; a backup never overwrites a file",
                dest.display()
            )));
        }
        std::fs::rename(partial, dest).map_err(|e| io("naming the copy", e))?;
        if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            // The rename is durable once the directory is synced; a failure here leaves a
            // complete file that a crash might unname, so it is reported, not hidden.
            std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(|e| io("syncing the directory of", e))?;
        }
        let bytes = std::fs::metadata(dest).map_err(|e| io("reading the size of", e))?.len();
        Ok(Backup { file: dest.to_path_buf(), bytes, integrity, actions, last_tick })
    }
}

/// Opens the copy read-only on a connection of its own: its integrity check, its actions by
/// status and its newest tick.
async fn inspect_copy(file: &Path) -> Result<(String, BTreeMap<ActionStatus, i64>, Option<i64>), sea_orm::sqlx::Error> {
    use sea_orm::sqlx::{Connection as _, Row as _};
    let opts = sea_orm::sqlx::sqlite::SqliteConnectOptions::new().filename(file).read_only(true);
    let mut conn = sea_orm::sqlx::SqliteConnection::connect_with(&opts).await?;
    let checks: Vec<String> = sea_orm::sqlx::query_scalar("PRAGMA integrity_check").fetch_all(&mut conn).await?;
    let mut actions: BTreeMap<ActionStatus, i64> = ActionStatus::ALL.iter().map(|s| (*s, 0)).collect();
    for row in
        sea_orm::sqlx::query("SELECT status, COUNT(*) AS n FROM actions GROUP BY status").fetch_all(&mut conn).await?
    {
        let status: String = row.try_get("status")?;
        if let Ok(s) = status.parse::<ActionStatus>() {
            actions.insert(s, row.try_get("n")?);
        }
    }
    let last_tick: Option<i64> =
        sea_orm::sqlx::query_scalar("SELECT MAX(id) FROM tick_ledger").fetch_one(&mut conn).await?;
    conn.close().await?;
    Ok((checks.join("; "), actions, last_tick))
}

/// What to run instead of `backup` on PostgreSQL: the `pg_dump` line for this database (the
/// schema of `options[search_path]`, if the URL names one; the password left out) and the
/// `pg_restore` line that brings it back.
pub fn pg_dump_advice(url: &str, file: &Path) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let schema = query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        matches!(k, "options[search_path]" | "options%5Bsearch_path%5D").then(|| v.to_string())
    });
    let base = super::redact_url(base);
    let file = file.display();
    let schema_flag = schema.map(|s| format!(" --schema='{s}'")).unwrap_or_default();
    format!(
        "backup copies SQLite databases; on PostgreSQL take the copy with pg_dump, which is consistent while \
         the daemon runs: `pg_dump --format=custom{schema_flag} --file='{file}' '{base}'`, and restore it into \
         an empty database, daemons and workers stopped, with `pg_restore --dbname='{base}' '{file}'` \
         (a password comes from PGPASSWORD or ~/.pgpass)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pg_dump_line_names_the_schema_and_hides_the_password() {
        let a = pg_dump_advice("postgres://u:pw@h:5432/db?options[search_path]=q1&x=1", Path::new("/b/q.dump"));
        assert!(
            a.contains("pg_dump --format=custom --schema='q1' --file='/b/q.dump' 'postgres://u:***@h:5432/db'"),
            "{a}"
        );
        assert!(a.contains("pg_restore --dbname='postgres://u:***@h:5432/db' '/b/q.dump'"), "{a}");
        assert!(!a.contains("pw"), "{a}");
        let a = pg_dump_advice("postgres://u@h/db", Path::new("q.dump"));
        assert!(a.contains("pg_dump --format=custom --file='q.dump' 'postgres://u@h/db'"), "{a}");
    }
}
