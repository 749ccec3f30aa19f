//! The limit store in Redis, shared by every instance: each operation is one
//! Lua script on the server's clock. The request rate is a GCRA (one key per
//! tenant holding its next theoretical arrival time); stream slots are a
//! sorted set per tenant scored by each slot's lease end, so a slot of an
//! instance that died frees itself.

use std::time::Duration;

use fred::prelude::*;
use futures_util::future::BoxFuture;

use super::{LimitError, LimitStore};

const TAKE: &str = "local t = redis.call('TIME') local now = t[1] * 1000 + t[2] / 1000 \
local interval = tonumber(ARGV[1]) local burst = tonumber(ARGV[2]) \
local tat = tonumber(redis.call('GET', KEYS[1]) or now) if tat < now then tat = now end \
local allowed_from = tat + interval - interval * burst \
if allowed_from > now then return tostring(allowed_from - now) end \
redis.call('SET', KEYS[1], tostring(tat + interval), 'PX', math.ceil(tat + interval - now) + 1000) \
return '0'";

const OPEN: &str = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) \
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) \
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end \
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1]) \
redis.call('PEXPIRE', KEYS[1], ARGV[3]) \
return 1";

pub struct RedisLimits {
    client: Client,
    prefix: String,
    timeout: Duration,
}

impl RedisLimits {
    /// Limits through `client`, a connection the caller shares (see `redis_client`).
    pub fn new(client: Client, prefix: &str, timeout: Duration) -> Self {
        Self { client, prefix: prefix.to_owned(), timeout }
    }

    fn key(&self, kind: &str, tenant: &str) -> String {
        format!("{}limits:{kind}:{tenant}", self.prefix)
    }

    async fn eval<T: FromValue>(&self, script: &str, key: String, args: Vec<String>) -> Result<T, LimitError> {
        let client = crate::redis_client::one_shot(&self.client, self.timeout);
        crate::redis_client::bounded(self.timeout, client.eval::<T, _, _, _>(script, vec![key], args)).await.map_err(LimitError)
    }
}

impl LimitStore for RedisLimits {
    fn take<'a>(&'a self, tenant: &'a str, per_second: f64, burst: u32) -> BoxFuture<'a, Result<Option<Duration>, LimitError>> {
        Box::pin(async move {
            let interval_ms = 1000.0 / per_second;
            let wait: String = self.eval(TAKE, self.key("rate", tenant), vec![interval_ms.to_string(), burst.to_string()]).await?;
            let wait_ms: f64 = wait.parse().map_err(|_| LimitError(format!("unexpected reply {wait:?}")))?;
            Ok((wait_ms > 0.0).then(|| Duration::from_secs_f64(wait_ms / 1000.0)))
        })
    }

    fn open<'a>(&'a self, tenant: &'a str, id: &'a str, limit: u32, lease: Duration) -> BoxFuture<'a, Result<bool, LimitError>> {
        Box::pin(async move {
            let args = vec![id.to_owned(), limit.to_string(), lease.as_millis().to_string()];
            let opened: i64 = self.eval(OPEN, self.key("streams", tenant), args).await?;
            Ok(opened == 1)
        })
    }

    fn close(&self, tenant: String, id: String) -> BoxFuture<'static, ()> {
        let (client, key, timeout) = (crate::redis_client::one_shot(&self.client, self.timeout), self.key("streams", &tenant), self.timeout);
        Box::pin(async move {
            // Not given back (Redis unreachable): the slot frees itself when its lease ends.
            if let Err(error) = crate::redis_client::bounded(timeout, client.zrem::<i64, _, _>(key, id)).await {
                tracing::warn!(error, tenant, "a stream slot was not given back; it frees itself at its lease end");
            }
        })
    }
}
