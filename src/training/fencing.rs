//! The training lock's ledger in Steward's own database: the highest fencing
//! token ever granted per tenant, and the lock last granted and not yet
//! ended. Acquisition takes `max(redis, ledger) + 1`, so a Redis that lost
//! its memory cannot hand out a token again; and a lock that vanished from
//! Redis without a `disabled` or `expired` record is found here and claimed
//! as lost by exactly one instance ([`ClaimLost`] commits with its audit
//! record, or neither does).

use futures_util::future::BoxFuture;
use sqlx::Row;

use crate::db::Database;
use crate::events::TxWrite;

/// A lock the ledger holds as live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveLock {
    pub tenant: String,
    pub fencing_token: u64,
    pub owner: String,
    /// Unix ms its TTL ends, as last granted or renewed.
    pub until_ms: i64,
}

#[derive(Clone)]
pub struct FencingLedger {
    db: Database,
}

impl FencingLedger {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// The highest fencing token ever granted to `tenant` (0 if none).
    pub async fn high_water(&self, tenant: &str) -> Result<u64, sqlx::Error> {
        let row = sqlx::query("SELECT high_water FROM training_fencing WHERE tenant = $1").bind(tenant).fetch_optional(self.db.pool()).await?;
        Ok(row.map(|r| r.try_get::<i64, _>("high_water")).transpose()?.unwrap_or(0) as u64)
    }

    /// Every lock the ledger holds as live.
    pub async fn held(&self) -> Result<Vec<LiveLock>, sqlx::Error> {
        let rows = sqlx::query("SELECT tenant, held_token, held_owner, held_until FROM training_fencing WHERE held_token IS NOT NULL")
            .fetch_all(self.db.pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(LiveLock {
                    tenant: r.try_get("tenant")?,
                    fencing_token: r.try_get::<i64, _>("held_token")? as u64,
                    owner: r.try_get("held_owner")?,
                    until_ms: r.try_get("held_until")?,
                })
            })
            .collect()
    }
}

/// A lock granted or renewed: raises the high-water mark and holds it as live.
#[derive(Debug)]
pub struct Granted(pub LiveLock);

impl TxWrite for Granted {
    fn write<'c>(&'c self, conn: &'c mut sqlx::AnyConnection) -> BoxFuture<'c, Result<(), sqlx::Error>> {
        Box::pin(async move {
            let held = &self.0;
            sqlx::query(
                "INSERT INTO training_fencing (tenant, high_water, held_token, held_owner, held_until) VALUES ($1, $2, $2, $3, $4) \
                 ON CONFLICT (tenant) DO UPDATE SET \
                 high_water = CASE WHEN training_fencing.high_water > excluded.high_water THEN training_fencing.high_water ELSE excluded.high_water END, \
                 held_token = excluded.held_token, held_owner = excluded.held_owner, held_until = excluded.held_until",
            )
            .bind(&held.tenant)
            .bind(held.fencing_token as i64)
            .bind(&held.owner)
            .bind(held.until_ms)
            .execute(conn)
            .await?;
            Ok(())
        })
    }
}

/// A lock disabled or expired: no longer held (if it still is the one held).
#[derive(Debug)]
pub struct Ended {
    pub tenant: String,
    pub fencing_token: u64,
}

impl TxWrite for Ended {
    fn write<'c>(&'c self, conn: &'c mut sqlx::AnyConnection) -> BoxFuture<'c, Result<(), sqlx::Error>> {
        Box::pin(async move {
            end(conn, &self.tenant, self.fencing_token).await?;
            Ok(())
        })
    }
}

/// Claims a vanished lock (lost, or expired unaudited): fails the whole transaction (with
/// [`sqlx::Error::RowNotFound`], so its `training.lost` record is not
/// written either) when another instance claimed it first or it ended meanwhile.
#[derive(Debug)]
pub struct ClaimLost {
    pub tenant: String,
    pub fencing_token: u64,
}

impl TxWrite for ClaimLost {
    fn write<'c>(&'c self, conn: &'c mut sqlx::AnyConnection) -> BoxFuture<'c, Result<(), sqlx::Error>> {
        Box::pin(async move {
            match end(conn, &self.tenant, self.fencing_token).await? {
                0 => Err(sqlx::Error::RowNotFound),
                _ => Ok(()),
            }
        })
    }
}

async fn end(conn: &mut sqlx::AnyConnection, tenant: &str, fencing_token: u64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("UPDATE training_fencing SET held_token = NULL, held_owner = NULL, held_until = NULL WHERE tenant = $1 AND held_token = $2")
        .bind(tenant)
        .bind(fencing_token as i64)
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}
