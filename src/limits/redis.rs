//! The limit store in Redis, shared by every instance: a turn is counted by
//! one Lua script on the server's clock (one round trip) and ended by
//! another (its slot given back, its tokens settled), each sent by its
//! digest ([`Script`]). The request rate and the tokens per minute are GCRAs
//! (a key per tenant holding its next theoretical arrival time, of a request
//! or of a token); stream slots are a sorted set per tenant scored by each
//! slot's lease end, so a slot of an instance that died frees itself.

use std::sync::LazyLock;
use std::time::Duration;

use fred::prelude::*;
use futures_util::future::BoxFuture;

use super::{Counted, LimitError, LimitStore, TenantLimits};
use crate::redis_client::Script;

/// One turn, as `LimitStore::count`: KEYS = the tenant's rate key, stream
/// set and tokens key; ARGV = request emission interval in ms (0: no rate),
/// burst, stream limit (0: none), stream id, lease in ms, token emission
/// interval in ms (0: no token limit), tokens a minute, tokens this turn.
/// Every limit is checked before any is taken. Replies `{kind, detail}`.
const COUNT: &str = "local t = redis.call('TIME') local now = t[1] * 1000 + t[2] / 1000 \
local interval = tonumber(ARGV[1]) local rate_tat = nil \
if interval > 0 then \
  local tat = tonumber(redis.call('GET', KEYS[1]) or now) if tat < now then tat = now end \
  local allowed_from = tat + interval - interval * tonumber(ARGV[2]) \
  if allowed_from > now then return {'rate', tostring(allowed_from - now)} end \
  rate_tat = tat + interval \
end \
local token_interval = tonumber(ARGV[6]) local cost = tonumber(ARGV[8]) local token_tat = nil \
if token_interval > 0 and cost > 0 then \
  local tat = tonumber(redis.call('GET', KEYS[3]) or now) if tat < now then tat = now end \
  local allowed_from = tat + token_interval * cost - token_interval * tonumber(ARGV[7]) \
  if allowed_from > now then return {'tokens', tostring(allowed_from - now)} end \
  token_tat = tat + token_interval * cost \
end \
local limit = tonumber(ARGV[3]) local ms = math.floor(now) \
if limit > 0 then \
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ms) \
  if redis.call('ZCARD', KEYS[2]) >= limit then return {'streams', '0'} end \
end \
if rate_tat then redis.call('SET', KEYS[1], tostring(rate_tat), 'PX', math.ceil(rate_tat - now) + 1000) end \
if token_tat then redis.call('SET', KEYS[3], tostring(token_tat), 'PX', math.ceil(token_tat - now) + 1000) end \
if limit == 0 then return {'admitted', '0'} end \
redis.call('ZADD', KEYS[2], ms + tonumber(ARGV[5]), ARGV[4]) \
redis.call('PEXPIRE', KEYS[2], ARGV[5]) \
return {'admitted', '1'}";

/// Ends a turn, as `LimitStore::release`: KEYS = the tenant's stream set and
/// tokens key; ARGV = the stream id ('' if it held no slot), then how far to
/// move the tenant's token arrival time, in ms (negative: a refund; never
/// before now; 0: not at all).
const RELEASE: &str = "if ARGV[1] ~= '' then redis.call('ZREM', KEYS[1], ARGV[1]) end \
local by = tonumber(ARGV[2]) if by == 0 then return 0 end \
local t = redis.call('TIME') local now = t[1] * 1000 + t[2] / 1000 \
local tat = tonumber(redis.call('GET', KEYS[2]) or now) if tat < now then tat = now end \
tat = tat + by \
if tat <= now then redis.call('DEL', KEYS[2]) return 0 end \
redis.call('SET', KEYS[2], tostring(tat), 'PX', math.ceil(tat - now) + 1000) return 1";

static COUNT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(COUNT));
static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE));

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
    fn count<'a>(&'a self, tenant: &'a str, id: &'a str, limits: TenantLimits, tokens: u32, lease: Duration) -> BoxFuture<'a, Result<Counted, LimitError>> {
        Box::pin(async move {
            let interval_ms = if limits.requests_per_second > 0.0 { 1000.0 / limits.requests_per_second } else { 0.0 };
            let keys = vec![self.key("rate", tenant), self.key("streams", tenant), self.key("tokens", tenant)];
            let args = vec![
                interval_ms.to_string(),
                limits.burst.to_string(),
                limits.max_concurrent_streams.to_string(),
                id.to_owned(),
                lease.as_millis().to_string(),
                limits.token_interval_ms().to_string(),
                limits.tokens_per_minute.to_string(),
                tokens.to_string(),
            ];
            let client = crate::redis_client::one_shot(&self.client, self.timeout);
            let reply = COUNT_SCRIPT.run::<Vec<String>>(&client, &keys, &args);
            let reply = crate::redis_client::bounded(self.timeout, reply).await.map_err(LimitError)?;
            match reply.iter().map(String::as_str).collect::<Vec<_>>()[..] {
                ["admitted", slot] => Ok(Counted::Admitted { slot: slot == "1" }),
                ["streams", _] => Ok(Counted::Streams),
                [kind @ ("rate" | "tokens"), wait_ms] => {
                    let wait_ms: f64 = wait_ms.parse().map_err(|_| LimitError(format!("unexpected wait {wait_ms:?}")))?;
                    let wait = Duration::from_secs_f64(wait_ms / 1000.0);
                    Ok(if kind == "rate" { Counted::Rate(wait) } else { Counted::Tokens(wait) })
                }
                _ => Err(LimitError(format!("unexpected reply {reply:?}"))),
            }
        })
    }

    fn release(&self, tenant: String, limits: TenantLimits, slot: Option<String>, tokens: i64) -> BoxFuture<'static, ()> {
        let client = crate::redis_client::one_shot(&self.client, self.timeout);
        let keys = vec![self.key("streams", &tenant), self.key("tokens", &tenant)];
        let by_ms = limits.token_interval_ms() * tokens as f64;
        let timeout = self.timeout;
        let args = [slot.unwrap_or_default(), by_ms.to_string()];
        Box::pin(async move {
            let released = RELEASE_SCRIPT.run::<i64>(&client, &keys, &args);
            // Not done (Redis unreachable): the slot frees itself at its lease end, and the tenant
            // keeps its reservation, which is at most a minute's worth.
            if let Err(error) = crate::redis_client::bounded(timeout, released).await {
                tracing::warn!(error, tenant, "a turn's stream slot or token reservation was not given back");
            }
        })
    }
}
