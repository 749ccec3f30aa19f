//! Per-tenant limits on chat turns: concurrent streams, requests per second
//! with a burst (GCRA), and model tokens per minute (a GCRA over tokens: a
//! turn reserves its prompt's estimate plus its `max_tokens` when admitted,
//! and the reservation is settled to the usage the model reports when it
//! ends), configured per tenant with defaults
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

pub use memory::{gcra, MemoryLimits};
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
    /// Model tokens (prompt and completion) per minute, a minute's worth at once.
    #[serde(default)]
    pub tokens_per_minute: u32,
}

impl TenantLimits {
    /// The GCRA emission interval of one token, ms (0: no token limit).
    fn token_interval_ms(&self) -> f64 {
        if self.tokens_per_minute > 0 {
            60_000.0 / f64::from(self.tokens_per_minute)
        } else {
            0.0
        }
    }
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
    /// Over the tokens per minute: wait this long.
    Tokens(Duration),
    /// Every stream slot is taken.
    Streams,
}

/// Where the counters live.
pub trait LimitStore: Send + Sync {
    /// Counts one turn of `tenant` in one step (one round trip), all or
    /// nothing: a request from its rate (GCRA: one per
    /// `1 / requests_per_second`, up to `burst` at once; skipped at 0),
    /// `tokens` from its tokens per minute (skipped at 0), and one of its
    /// `max_concurrent_streams` slots for `id` (skipped at 0), held at most
    /// `lease`, so an instance that dies cannot keep it.
    fn count<'a>(&'a self, tenant: &'a str, id: &'a str, limits: TenantLimits, tokens: u32, lease: Duration) -> BoxFuture<'a, Result<Counted, LimitError>>;
    /// Ends a turn in one step (one round trip): gives its stream slot back
    /// (`slot`, if it held one) and charges `tokens` more to the tenant's
    /// tokens per minute (fewer if negative: a refund; nothing at 0).
    fn release(&self, tenant: String, limits: TenantLimits, slot: Option<String>, tokens: i64) -> BoxFuture<'static, ()>;
}

/// Why a turn was refused.
#[derive(Debug, thiserror::Error)]
pub enum Limited {
    #[error("the tenant has {limit} streams open, its limit")]
    Streams { limit: u32 },
    #[error("the tenant is over its request rate; retry in {} ms", retry_after.as_millis())]
    Rate { retry_after: Duration },
    #[error("the tenant is over its model tokens per minute; retry in {} ms", retry_after.as_millis())]
    Tokens { retry_after: Duration },
}

impl Limited {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Streams { .. } => "streams",
            Self::Rate { .. } => "rate",
            Self::Tokens { .. } => "tokens",
        }
    }

    fn retry_after(&self) -> Duration {
        match self {
            // A stream slot frees when some turn ends: a second is a fair guess.
            Self::Streams { .. } => Duration::from_secs(1),
            Self::Rate { retry_after } | Self::Tokens { retry_after } => *retry_after,
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

    /// Admits one turn of `tenant` expected to use up to `tokens` model
    /// tokens: a request from its rate, the tokens, and a stream slot, held by
    /// the permit until it drops.
    pub async fn admit(&self, tenant: &str, turn_id: &str, tokens: u32) -> Result<Permit, Limited> {
        let limits = self.tenants.get(tenant).copied().unwrap_or(self.defaults);
        let refused = |limited: Limited| {
            self.metrics.rate_limited(limited.as_str());
            tracing::info!(tenant, limit = limited.as_str(), "turn refused: over the tenant's limit");
            limited
        };
        if limits.requests_per_second <= 0.0 && limits.max_concurrent_streams == 0 && limits.tokens_per_minute == 0 {
            return Ok(Permit::unlimited());
        }
        let limits = TenantLimits { burst: limits.burst.max(1), ..limits };
        // A turn asking for more than a minute's worth could never pass: it costs a minute's worth.
        let tokens = if limits.tokens_per_minute > 0 { tokens.min(limits.tokens_per_minute) } else { 0 };
        let admitted = |slot: bool| Permit {
            held: Some(Reservation {
                store: self.store.clone(),
                tenant: tenant.to_owned(),
                tasks: self.tasks.clone(),
                slot: slot.then(|| turn_id.to_owned()),
                limits,
                reserved: tokens,
                settle: 0,
            }),
        };
        match self.store.count(tenant, turn_id, limits, tokens, self.lease).await {
            Ok(Counted::Admitted { slot }) => Ok(admitted(slot)),
            Ok(Counted::Rate(retry_after)) => Err(refused(Limited::Rate { retry_after })),
            Ok(Counted::Tokens(retry_after)) => Err(refused(Limited::Tokens { retry_after })),
            Ok(Counted::Streams) => Err(refused(Limited::Streams { limit: limits.max_concurrent_streams })),
            Err(err) => {
                self.unavailable(&err);
                Ok(Permit::unlimited())
            }
        }
    }

    fn unavailable(&self, err: &LimitError) {
        self.metrics.limits_store_failure();
        tracing::warn!(error = %err, "tenant limits not applied: the limit store is unavailable");
    }
}

/// What an admitted turn holds: its stream slot and its reservation of
/// tokens, both given back in one step when it drops; the reservation is
/// settled by [`Permit::used`] (kept whole if the turn never says).
pub struct Permit {
    held: Option<Reservation>,
}

struct Reservation {
    store: Arc<dyn LimitStore>,
    tenant: String,
    tasks: TaskTracker,
    /// The id the stream slot is held under.
    slot: Option<String>,
    limits: TenantLimits,
    /// Tokens reserved at admission (0: no token limit).
    reserved: u32,
    /// Tokens to charge (or, negative, refund) when the turn ends.
    settle: i64,
}

impl Permit {
    fn unlimited() -> Self {
        Self { held: None }
    }

    /// The turn used `tokens` (prompt and completion): the tenant is charged
    /// those instead of its reservation.
    pub fn used(&mut self, tokens: u32) {
        if let Some(held) = self.held.as_mut().filter(|h| h.reserved > 0) {
            held.settle = i64::from(tokens) - i64::from(held.reserved);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(Reservation { store, tenant, tasks, slot, limits, settle, .. }) = self.held.take() {
            if slot.is_some() || settle != 0 {
                tasks.spawn(store.release(tenant, limits, slot, settle));
            }
        }
    }
}
