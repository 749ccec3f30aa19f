//! Console sessions, kept in the shared database so any instance behind a
//! load balancer serves them. The browser holds a random token in a cookie
//! (`HttpOnly`, `SameSite=Strict`, `Secure` over TLS); the server keeps only
//! the token's SHA-256, with the SHA-256 of the API key signed in with, a
//! CSRF token, and when the session began and was last seen. Every request
//! checks the key again, so a revoked key ends its sessions within
//! `identity.key_cache`.

use std::time::Duration;

use rand::RngCore;
use serde::Deserialize;
use sqlx::Row;

use crate::db::{now_ms, Database};
use crate::durations::NonZeroDuration;

/// The cookie holding the session's token.
pub const COOKIE: &str = "steward_console";

/// `[console]`: how long a signed-in browser stays signed in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSettings {
    /// Ends a session this long after its last request.
    pub idle_timeout: NonZeroDuration,
    /// Ends a session this long after its sign-in, however busy.
    pub max_lifetime: NonZeroDuration,
}

/// A session just opened: the cookie's token and the session's CSRF token.
pub struct Opened {
    pub token: String,
    pub csrf: String,
}

/// A live session: the key it was opened with (as its hash) and its CSRF token.
pub struct Live {
    pub key_hash: String,
    pub csrf: String,
}

#[derive(Clone)]
pub struct ConsoleSessions {
    db: Database,
    idle: Duration,
    lifetime: Duration,
}

/// How stale `seen_at` may grow before a request writes it again (so a
/// page's requests do not each write a row).
const TOUCH_EVERY_MS: i64 = 60_000;

impl ConsoleSessions {
    pub fn new(db: Database, settings: &ConsoleSettings) -> Self {
        Self { db, idle: settings.idle_timeout.get(), lifetime: settings.max_lifetime.get() }
    }

    /// How long the browser should keep the cookie.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Opens a session for the key whose hash is `key_hash`.
    pub async fn open(&self, key_hash: &str) -> Result<Opened, sqlx::Error> {
        let (token, csrf) = (random_token(), random_token());
        let now = now_ms();
        sqlx::query("INSERT INTO console_sessions (token_hash, key_hash, csrf, created_at, seen_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(hash(&token))
            .bind(key_hash)
            .bind(&csrf)
            .bind(now)
            .bind(now)
            .execute(self.db.pool())
            .await?;
        Ok(Opened { token, csrf })
    }

    /// The live session of `token`: none if it never was, was ended, or
    /// outlived its idle or absolute lifetime.
    pub async fn find(&self, token: &str) -> Result<Option<Live>, sqlx::Error> {
        let token_hash = hash(token);
        let row = sqlx::query("SELECT key_hash, csrf, created_at, seen_at FROM console_sessions WHERE token_hash = $1 AND ended_at IS NULL")
            .bind(&token_hash)
            .fetch_optional(self.db.pool())
            .await?;
        let Some(row) = row else { return Ok(None) };
        let (created, seen): (i64, i64) = (row.try_get("created_at")?, row.try_get("seen_at")?);
        let now = now_ms();
        if now - seen >= millis(self.idle) || now - created >= millis(self.lifetime) {
            return Ok(None);
        }
        if now - seen >= TOUCH_EVERY_MS {
            sqlx::query("UPDATE console_sessions SET seen_at = $1 WHERE token_hash = $2").bind(now).bind(&token_hash).execute(self.db.pool()).await?;
        }
        Ok(Some(Live { key_hash: row.try_get("key_hash")?, csrf: row.try_get("csrf")? }))
    }

    /// Ends the session of `token` (sign-out).
    pub async fn end(&self, token: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE console_sessions SET ended_at = $1 WHERE token_hash = $2 AND ended_at IS NULL")
            .bind(now_ms())
            .bind(hash(token))
            .execute(self.db.pool())
            .await?;
        Ok(())
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// 256 random bits, hex.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn hash(token: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether a form's CSRF token is the session's, compared in constant time.
pub fn csrf_matches(expected: &str, sent: &str) -> bool {
    expected.len() == sent.len() && expected.bytes().zip(sent.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csrf_token_matches_only_itself() {
        let token = random_token();
        assert!(csrf_matches(&token, &token.clone()));
        assert!(!csrf_matches(&token, &random_token()));
        assert!(!csrf_matches(&token, ""));
        assert!(!csrf_matches(&token, &token[..10]));
    }
}
