//! API key storage over the shared database.

use sqlx::Row;

use super::domain::{ApiKey, Capability, IdentityError, TenantId};
use crate::db::{now_ms, Database};

/// A stored key, without its secret.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyRecord {
    pub id: String,
    pub tenant: String,
    pub capabilities: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    /// When the key was last used (Unix ms), at most [`KeyStore::USE_RECORDED_EVERY`] stale; `None` if never.
    pub last_used_at: Option<i64>,
}

/// Creates, finds and revokes API keys.
#[derive(Debug, Clone)]
pub struct KeyStore {
    db: Database,
}

impl KeyStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Stores a new key and returns its record and the key, which is never stored.
    pub async fn create(&self, tenant: &TenantId, caps: &[Capability]) -> Result<(KeyRecord, ApiKey), IdentityError> {
        let key = ApiKey::generate();
        let record = KeyRecord {
            id: format!("key_{}", uuid::Uuid::now_v7().simple()),
            tenant: tenant.as_str().to_owned(),
            capabilities: Capability::join(caps),
            created_at: now_ms(),
            revoked_at: None,
            last_used_at: None,
        };
        sqlx::query("INSERT INTO api_keys (id, tenant, capabilities, key_hash, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(&record.id)
            .bind(&record.tenant)
            .bind(&record.capabilities)
            .bind(ApiKey::hash_of(key.expose()))
            .bind(record.created_at)
            .execute(self.db.pool())
            .await
            .map_err(IdentityError::Store)?;
        Ok((record, key))
    }

    /// The live (not revoked) key with this secret, if any.
    pub async fn find_active(&self, key: &str) -> Result<Option<KeyRecord>, IdentityError> {
        self.find_active_by_hash(&ApiKey::hash_of(key)).await
    }

    /// The live key whose secret hashes to `hash`, if any.
    pub async fn find_active_by_hash(&self, hash: &str) -> Result<Option<KeyRecord>, IdentityError> {
        let row = sqlx::query("SELECT id, tenant, capabilities, created_at, revoked_at, last_used_at FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL")
            .bind(hash)
            .fetch_optional(self.db.pool())
            .await
            .map_err(IdentityError::Store)?;
        row.map(|r| record_from(&r)).transpose()
    }

    pub async fn list(&self) -> Result<Vec<KeyRecord>, IdentityError> {
        let rows = sqlx::query("SELECT id, tenant, capabilities, created_at, revoked_at, last_used_at FROM api_keys ORDER BY created_at, id")
            .fetch_all(self.db.pool())
            .await
            .map_err(IdentityError::Store)?;
        rows.iter().map(record_from).collect()
    }

    /// How stale a key's recorded last use may be: each instance records a key's use at most this often.
    pub const USE_RECORDED_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

    /// Records that key `id` was used at `at` (Unix ms).
    pub async fn used(&self, id: &str, at: i64) -> Result<(), IdentityError> {
        sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2").bind(at).bind(id).execute(self.db.pool()).await.map_err(IdentityError::Store)?;
        Ok(())
    }

    /// Revokes a key; revoking twice is not an error.
    pub async fn revoke(&self, id: &str) -> Result<(), IdentityError> {
        let done = sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2")
            .bind(now_ms())
            .bind(id)
            .execute(self.db.pool())
            .await
            .map_err(IdentityError::Store)?;
        if done.rows_affected() == 0 {
            return Err(IdentityError::NoSuchKey(id.to_owned()));
        }
        Ok(())
    }
}

fn record_from(row: &sqlx::any::AnyRow) -> Result<KeyRecord, IdentityError> {
    Ok(KeyRecord {
        id: row.try_get("id").map_err(IdentityError::Store)?,
        tenant: row.try_get("tenant").map_err(IdentityError::Store)?,
        capabilities: row.try_get("capabilities").map_err(IdentityError::Store)?,
        created_at: row.try_get("created_at").map_err(IdentityError::Store)?,
        revoked_at: row.try_get("revoked_at").map_err(IdentityError::Store)?,
        last_used_at: row.try_get("last_used_at").map_err(IdentityError::Store)?,
    })
}
