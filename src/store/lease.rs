//! The lease row: one atomic conditional upsert to acquire or renew, a release, a read. A new
//! term's epoch comes from `lease_epochs`, the highest epoch ever granted, not from the row
//! alone: an operator may delete the row, and the epoch must never go back.
//!
//! On PostgreSQL every time in these statements is the database's `now()`, so instances on
//! machines with skewed clocks agree on who holds the lease. SQLite lives on one machine and
//! is given the caller's clock.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, EntityTrait, Value};

use super::entities::leases;
use super::{Backend, Context, Store, StoreError};
use crate::model::LeaseRow;

// Taking over an expired lease (or one this owner let lapse), or inserting the row, starts a
// new term: its epoch is one more than both the row's and the highest ever granted
// (`lease_epochs`, raised by a trigger in the same statement), so a deleted lease row does not
// bring an old epoch back. Renewing a live lease keeps the epoch. The WHERE makes a live lease
// of another owner untouchable.
const ACQUIRE_PG: &str = "\
INSERT INTO leases (name, owner, epoch, acquired_at, renewed_at, expires_at)
VALUES ($1, $2, (SELECT COALESCE(MAX(last), 0) + 1 FROM lease_epochs), now(), now(),
        now() + $3 * interval '1 second')
ON CONFLICT (name) DO UPDATE SET
  epoch = CASE WHEN leases.owner = excluded.owner AND leases.expires_at > now()
               THEN leases.epoch ELSE GREATEST(leases.epoch + 1, excluded.epoch) END,
  acquired_at = CASE WHEN leases.owner = excluded.owner AND leases.expires_at > now()
                     THEN leases.acquired_at ELSE excluded.acquired_at END,
  owner = excluded.owner,
  renewed_at = excluded.renewed_at,
  expires_at = excluded.expires_at
WHERE leases.owner = excluded.owner OR leases.expires_at <= now()
RETURNING name, owner, epoch, acquired_at, renewed_at, expires_at";

const ACQUIRE_SQLITE: &str = "\
INSERT INTO leases (name, owner, epoch, acquired_at, renewed_at, expires_at)
VALUES ($1, $2, (SELECT COALESCE(MAX(last), 0) + 1 FROM lease_epochs), $3, $3, $4)
ON CONFLICT (name) DO UPDATE SET
  epoch = CASE WHEN leases.owner = excluded.owner AND leases.expires_at > $3
               THEN leases.epoch ELSE MAX(leases.epoch + 1, excluded.epoch) END,
  acquired_at = CASE WHEN leases.owner = excluded.owner AND leases.expires_at > $3
                     THEN leases.acquired_at ELSE excluded.acquired_at END,
  owner = excluded.owner,
  renewed_at = excluded.renewed_at,
  expires_at = excluded.expires_at
WHERE leases.owner = excluded.owner OR leases.expires_at <= $3
RETURNING name, owner, epoch, acquired_at, renewed_at, expires_at";

/// What an acquire-or-renew found.
#[derive(Clone, Debug)]
pub enum Acquired {
    /// The caller holds the lease (new, renewed or taken over).
    Held(LeaseRow),
    /// Another owner holds a live lease.
    HeldByOther(LeaseRow),
}

impl Store {
    /// The acquire-or-renew statement, run on `conn` (the pool or a transaction); when another
    /// owner holds the lease, its row is read on the same connection.
    pub(super) async fn acquire_on(
        &self,
        conn: &impl ConnectionTrait,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Acquired, StoreError> {
        let stmt = match self.backend {
            Backend::Postgres => self.stmt(ACQUIRE_PG, [name.into(), owner.into(), Value::from(ttl.as_secs_f64())]),
            Backend::Sqlite => {
                let now = self.now();
                let expires = crate::model::later_saturating(now, ttl);
                self.stmt(ACQUIRE_SQLITE, [name.into(), owner.into(), now.into(), expires.into()])
            }
        };
        let row = leases::Entity::find().from_raw_sql(stmt).one(conn).await.doing("acquiring the lease")?;
        match row {
            Some(row) => Ok(Acquired::Held(row.into())),
            None => match leases::Entity::find_by_id(name.to_string()).one(conn).await.doing("reading the lease")? {
                Some(row) => Ok(Acquired::HeldByOther(row.into())),
                // Deleted between the two statements: report it as free-but-not-ours; the
                // next tick acquires it.
                None => Err(StoreError::Internal(format!("lease '{name}' vanished while acquiring it"))),
            },
        }
    }

    /// The database's idea of now (PostgreSQL) or this machine's (SQLite).
    pub async fn db_now(&self) -> Result<DateTime<Utc>, StoreError> {
        match self.backend {
            Backend::Sqlite => Ok(self.now()),
            Backend::Postgres => {
                let row = self
                    .db
                    .query_one_raw(self.stmt("SELECT now() AS now", []))
                    .await
                    .doing("reading the database clock")?;
                match row {
                    Some(r) => r.try_get::<DateTime<Utc>>("", "now").doing("reading the database clock"),
                    None => Ok(self.now()),
                }
            }
        }
    }
}

impl crate::store::handles::Lease<'_> {
    /// Acquires or renews the named lease for `owner`, in one atomic statement.
    pub async fn acquire_lease(self, name: &str, owner: &str, ttl: Duration) -> Result<Acquired, StoreError> {
        self.store.acquire_on(&self.store.db, name, owner, ttl).await
    }

    /// Ends `owner`'s hold on the lease now (or anyone's, with `force`). The epoch is kept, so
    /// the next holder's epoch is higher. Returns whether a live lease was released.
    pub async fn release_lease(self, name: &str, owner: Option<&str>) -> Result<bool, StoreError> {
        let (now_sql, mut values): (&str, Vec<Value>) = match self.store.backend {
            Backend::Postgres => ("now()", vec![name.into()]),
            Backend::Sqlite => ("$2", vec![name.into(), self.store.now().into()]),
        };
        let mut sql = format!(
            "UPDATE leases SET expires_at = {now_sql}, renewed_at = {now_sql} \
             WHERE name = $1 AND expires_at > {now_sql}"
        );
        if let Some(owner) = owner {
            values.push(owner.into());
            sql.push_str(&format!(" AND owner = ${}", values.len()));
        }
        let res = self.store.db.execute_raw(self.store.stmt(&sql, values)).await.doing("releasing the lease")?;
        Ok(res.rows_affected() > 0)
    }

    /// The lease row, if one was ever taken.
    pub async fn get(self, name: &str) -> Result<Option<LeaseRow>, StoreError> {
        let row = leases::Entity::find_by_id(name.to_string()).one(&self.store.db).await.doing("reading the lease")?;
        Ok(row.map(Into::into))
    }
}
