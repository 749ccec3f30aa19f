//! Per-tenant limits on chat turns: concurrent streams, and requests per
//! second with a burst (GCRA), configured per tenant with defaults
//! (`limits`, `limits.tenants.<tenant>`). The counters live in a
//! [`LimitStore`]: Redis, shared by every instance ([`RedisLimits`]), or this
//! process ([`MemoryLimits`], for a single instance). Over a limit a turn is
//! refused before any moderation or model work with 429 `rate_limited` and a
//! `Retry-After`. If the store cannot be reached the turn goes on (limits
//! protect the service; they must not take chat down with Redis) and
//! `limits_store_failures_total` counts it.

mod memory;
#[cfg(feature = "redis")]
mod redis;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Deserialize;
use tokio_util::task::TaskTracker;

pub use memory::MemoryLimits;
#[cfg(feature = "redis")]
pub use redis::RedisLimits;

use crate::error::{ApiError, Code};
use crate::telemetry::Metrics;

/// One tenant's limits; 0 means none.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantLimits {
    pub max_concurrent_streams: u32,
    pub requests_per_second: f64,
    /// Requests a tenant may make at once after a quiet spell.
    pub burst: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("limit store unavailable: {0}")]
pub struct LimitError(pub String);

/// What the store made of one turn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Counted {
    /// Admitted; `slot` if a stream slot is now held for it.
    Admitted { slot: bool },
    /// Over the request rate: wait this long.
    Rate(Duration),
    /// Every stream slot is taken.
    Streams,
}

/// Where the counters live.
pub trait LimitStore: Send + Sync {
    /// Counts one turn of `tenant` in one step (one round trip): first a
    /// request from its rate (GCRA: one per `1 / requests_per_second`, up to
    /// `burst` at once; skipped at 0), then one of its
    /// `max_concurrent_streams` slots for `id` (skipped at 0), held at most
    /// `lease`, so an instance that dies cannot keep it.
    fn count<'a>(&'a self, tenant: &'a str, id: &'a str, limits: TenantLimits, lease: Duration) -> BoxFuture<'a, Result<Counted, LimitError>>;
    /// Gives the slot of `id` back.
    fn close(&self, tenant: String, id: String) -> BoxFuture<'static, ()>;
}

/// Why a turn was refused.
#[derive(Debug, thiserror::Error)]
pub enum Limited {
    #[error("the tenant has {limit} streams open, its limit")]
    Streams { limit: u32 },
    #[error("the tenant is over its request rate; retry in {} ms", retry_after.as_millis())]
    Rate { retry_after: Duration },
}

impl Limited {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Streams { .. } => "streams",
            Self::Rate { .. } => "rate",
        }
    }

    fn retry_after(&self) -> Duration {
        match self {
            // A stream slot frees when some turn ends: a second is a fair guess.
            Self::Streams { .. } => Duration::from_secs(1),
            Self::Rate { retry_after } => *retry_after,
        }
    }
}

impl From<Limited> for ApiError {
    fn from(limited: Limited) -> Self {
        ApiError::new(Code::RateLimited, limited.to_string()).with_retry_after(limited.retry_after())
    }
}

pub struct Limiter {
    store: Arc<dyn LimitStore>,
    defaults: TenantLimits,
    tenants: HashMap<String, TenantLimits>,
    /// Longest a stream slot is held (a turn cannot outlive the model's total deadline).
    lease: Duration,
    metrics: Arc<Metrics>,
    tasks: TaskTracker,
}

impl Limiter {
    pub fn new(
        store: Arc<dyn LimitStore>,
        defaults: TenantLimits,
        tenants: HashMap<String, TenantLimits>,
        lease: Duration,
        metrics: Arc<Metrics>,
        tasks: TaskTracker,
    ) -> Self {
        Self { store, defaults, tenants, lease, metrics, tasks }
    }

    /// Admits one turn of `tenant`: a request from its rate, then a stream
    /// slot, held by the permit until it drops.
    pub async fn admit(&self, tenant: &str, turn_id: &str) -> Result<Permit, Limited> {
        let limits = self.tenants.get(tenant).copied().unwrap_or(self.defaults);
        let refused = |limited: Limited| {
            self.metrics.rate_limited(limited.as_str());
            tracing::info!(tenant, limit = limited.as_str(), "turn refused: over the tenant's limit");
            limited
        };
        if limits.requests_per_second <= 0.0 && limits.max_concurrent_streams == 0 {
            return Ok(Permit { slot: None });
        }
        let limits = TenantLimits { burst: limits.burst.max(1), ..limits };
        match self.store.count(tenant, turn_id, limits, self.lease).await {
            Ok(Counted::Admitted { slot: true }) => Ok(Permit { slot: Some((self.store.clone(), tenant.to_owned(), turn_id.to_owned(), self.tasks.clone())) }),
            Ok(Counted::Admitted { slot: false }) => Ok(Permit { slot: None }),
            Ok(Counted::Rate(retry_after)) => Err(refused(Limited::Rate { retry_after })),
            Ok(Counted::Streams) => Err(refused(Limited::Streams { limit: limits.max_concurrent_streams })),
            Err(err) => {
                self.unavailable(&err);
                Ok(Permit { slot: None })
            }
        }
    }

    fn unavailable(&self, err: &LimitError) {
        self.metrics.limits_store_failure();
        tracing::warn!(error = %err, "tenant limits not applied: the limit store is unavailable");
    }
}

/// A stream slot, given back when dropped.
pub struct Permit {
    slot: Option<(Arc<dyn LimitStore>, String, String, TaskTracker)>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some((store, tenant, id, tasks)) = self.slot.take() {
            tasks.spawn(store.close(tenant, id));
        }
    }
}
