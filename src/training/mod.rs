//! Training mode: admins switch their tenant into training mode (its
//! conversations are marked for capture) through an exclusive, expiring,
//! fenced lock — in Redis ([`RedisLockStore`]) or, for a single instance, in
//! process ([`InMemoryLockStore`]). Every transition, refusal and expiry is a
//! `training.audit/v1` record through the outbox.
//!
//! Entry points: [`configure`] (the `/v1/training/*` routes),
//! [`TrainingService::mark`] (the chat path's view of a tenant), [`watch`]
//! (expiry audits and the state gauge).

pub(crate) mod api;
mod denials;
mod fencing;
mod lock;
mod memory;
#[cfg(feature = "redis")]
mod redis;
mod service;
mod watcher;

pub use crate::events::Via;
pub use api::configure;
pub use fencing::{FencingLedger, LiveLock};
pub use lock::{Acquired, Expired, LockError, LockInfo, LockRequest, LockStore, Owned};
pub use memory::InMemoryLockStore;
#[cfg(feature = "redis")]
pub use redis::RedisLockStore;
pub use service::{Actor, TrainingError, TrainingMark, TrainingService, TrainingSettings, AUDIT_SCHEMA};
pub use watcher::watch;
