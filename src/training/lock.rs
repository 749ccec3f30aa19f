//! The `LockStore` port: an exclusive, expiring, fenced lock per tenant.
//!
//! Semantics every adapter honours (one behaviour suite runs against each):
//! acquiring succeeds only when no live lock exists and then takes a fencing
//! token greater than every earlier one of that tenant and than `floor` (the
//! highest one Steward's database has seen, should the store have lost its own); renew and release
//! succeed only for the holder's token; a lock that lapses without release is
//! reported by exactly one `claim_expired` call, however many instances ask.

use std::time::Duration;

use futures_util::future::BoxFuture;

/// A live lock. `token` is the holder's secret; never show it to others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    pub token: String,
    pub owner: String,
    pub reason: String,
    pub fencing_token: u64,
    /// Remaining time to live.
    pub ttl_ms: u64,
}

impl LockInfo {
    /// Unix ms at which the lock lapses, from its remaining TTL.
    pub fn expires_at_ms(&self) -> i64 {
        crate::db::now_ms() + self.ttl_ms as i64
    }
}

/// What an acquisition attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    Acquired(LockInfo),
    /// Someone holds it; here is their lock.
    Held(LockInfo),
}

/// What a renew or release found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owned {
    Done(LockInfo),
    /// The token is not the holder's (or no lock is held).
    NotOwner(Option<LockInfo>),
}

/// A lock that lapsed without being released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    pub tenant: String,
    pub owner: String,
    pub reason: String,
    pub fencing_token: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("lock store unavailable: {0}")]
    Unavailable(String),
    #[error("lock store answered something unexpected: {0}")]
    Protocol(String),
}

/// What [`LockStore::acquire`] asks for.
#[derive(Debug, Clone, Copy)]
pub struct LockRequest<'a> {
    pub tenant: &'a str,
    /// The key id that will own the lock.
    pub owner: &'a str,
    pub reason: &'a str,
    /// The digest of the lock token its owner holds.
    pub token: &'a str,
    pub ttl: Duration,
    /// The fencing token the new one must exceed (the durable ledger's last).
    pub floor: u64,
}

pub trait LockStore: Send + Sync {
    fn acquire<'a>(&'a self, request: LockRequest<'a>) -> BoxFuture<'a, Result<Acquired, LockError>>;
    fn renew<'a>(&'a self, tenant: &'a str, token: &'a str, ttl: Duration) -> BoxFuture<'a, Result<Owned, LockError>>;
    fn release<'a>(&'a self, tenant: &'a str, token: &'a str) -> BoxFuture<'a, Result<Owned, LockError>>;
    fn status<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Result<Option<LockInfo>, LockError>>;
    /// Locks that lapsed since the last call, each returned to exactly one caller.
    fn claim_expired(&self) -> BoxFuture<'_, Result<Vec<Expired>, LockError>>;
    /// Tenants that have held a lock, for the state gauge.
    fn tenants(&self) -> BoxFuture<'_, Result<Vec<String>, LockError>>;
}
