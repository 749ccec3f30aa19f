//! The limit store in Redis, shared by every instance: a turn is counted by
//! one Lua script on the server's clock (one round trip), its slot given
//! back by one `ZREM`. The request rate is a GCRA (one key per
//! tenant holding its next theoretical arrival time); stream slots are a
//! sorted set per tenant scored by each slot's lease end, so a slot of an
//! instance that died frees itself.

use std::time::Duration;

use fred::prelude::*;
use futures_util::future::BoxFuture;

use super::{Counted, LimitError, LimitStore, TenantLimits};

/// One turn, as `LimitStore::count`: KEYS = the tenant's rate key and
/// stream set; ARGV = emission interval in ms (0: no rate), burst, stream
/// limit (0: none), stream id, lease in ms. Replies `{kind, detail}`.
const COUNT: &str = "local t = redis.call('TIME') local now = t[1] * 1000 + t[2] / 1000 \
local interval = tonumber(ARGV[1]) \
if interval > 0 then \
  local tat = tonumber(redis.call('GET', KEYS[1]) or now) if tat < now then tat = now end \
  local allowed_from = tat + interval - interval * tonumber(ARGV[2]) \
  if allowed_from > now then return {'rate', tostring(allowed_from - now)} end \
  redis.call('SET', KEYS[1], tostring(tat + interval), 'PX', math.ceil(tat + interval - now) + 1000) \
end \
local limit = tonumber(ARGV[3]) \
if limit == 0 then return {'admitted', '0'} end \
local ms = math.floor(now) \
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ms) \
if redis.call('ZCARD', KEYS[2]) >= limit then return {'streams', '0'} end \
redis.call('ZADD', KEYS[2], ms + tonumber(ARGV[5]), ARGV[4]) \
redis.call('PEXPIRE', KEYS[2], ARGV[5]) \
return {'admitted', '1'}";

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
}

impl LimitStore for RedisLimits {
    fn count<'a>(&'a self, tenant: &'a str, id: &'a str, limits: TenantLimits, lease: Duration) -> BoxFuture<'a, Result<Counted, LimitError>> {
        Box::pin(async move {
            let interval_ms = if limits.requests_per_second > 0.0 { 1000.0 / limits.requests_per_second } else { 0.0 };
            let keys = vec![self.key("rate", tenant), self.key("streams", tenant)];
            let args = vec![
                interval_ms.to_string(),
                limits.burst.to_string(),
                limits.max_concurrent_streams.to_string(),
                id.to_owned(),
                lease.as_millis().to_string(),
            ];
            let client = crate::redis_client::one_shot(&self.client, self.timeout);
            let reply = client.eval::<Vec<String>, _, _, _>(COUNT, keys, args);
            let reply = crate::redis_client::bounded(self.timeout, reply).await.map_err(LimitError)?;
            match reply.iter().map(String::as_str).collect::<Vec<_>>()[..] {
                ["admitted", slot] => Ok(Counted::Admitted { slot: slot == "1" }),
                ["streams", _] => Ok(Counted::Streams),
                ["rate", wait_ms] => {
                    let wait_ms: f64 = wait_ms.parse().map_err(|_| LimitError(format!("unexpected wait {wait_ms:?}")))?;
                    Ok(Counted::Rate(Duration::from_secs_f64(wait_ms / 1000.0)))
                }
                _ => Err(LimitError(format!("unexpected reply {reply:?}"))),
            }
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
