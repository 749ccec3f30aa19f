//! The Redis `LockStore`, over `fred`. Each operation is one Lua script, so
//! it is atomic on the server:
//!
//! - acquire: `SET lock value NX PX ttl` when no lock exists, with a fencing
//!   token from `INCR`, raised above the caller's floor (the value is JSON
//!   holding the holder's token);
//! - renew / release: compare the token, then `PEXPIRE` / `DEL` — never a bare `DEL`;
//! - expiry: every live lock has a member `tenant|fencing|owner|reason` in a
//!   sorted set scored by its expiry; `claim_expired` removes due members whose
//!   lock is gone with `ZREM` inside the script, so exactly one caller gets each.
//!
//! Commands time out (`lock_store_unavailable`) while Redis is unreachable,
//! and carry a deadline the scripts enforce, so a command delivered late does
//! nothing; the client keeps reconnecting in the background.

use std::sync::LazyLock;
use std::time::Duration;

use fred::prelude::*;
use futures_util::future::BoxFuture;
use serde::Deserialize;

use super::lock::{Acquired, Expired, LockError, LockInfo, LockRequest, LockStore, Owned};
use crate::redis_client::Script;

/// Every script starts here: `now` from the server clock, and a refusal to act
/// once the caller's deadline (the last argument) has passed — while Redis is
/// unreachable the client queues commands, and one that arrives after Steward
/// answered 503 must not take or change a lock behind the caller's back.
const PRELUDE: &str = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) \
if now > tonumber(ARGV[#ARGV]) then return redis.error_reply('STEWARD_LATE command arrived after its deadline') end ";

const ACQUIRE: &str = "local current = redis.call('GET', KEYS[1]) \
if current then return {0, current, redis.call('PTTL', KEYS[1])} end \
local fencing = redis.call('INCR', KEYS[2]) \
if fencing <= tonumber(ARGV[6]) then fencing = tonumber(ARGV[6]) + 1 redis.call('SET', KEYS[2], fencing) end \
local value = cjson.encode({token = ARGV[1], owner = ARGV[2], reason = ARGV[3], fencing = fencing}) \
redis.call('SET', KEYS[1], value, 'NX', 'PX', ARGV[4]) \
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ARGV[5] .. '|' .. fencing .. '|' .. ARGV[2] .. '|' .. ARGV[3]) \
redis.call('SADD', KEYS[4], ARGV[5]) \
return {1, value, tonumber(ARGV[4])}";

const RENEW: &str = "local current = redis.call('GET', KEYS[1]) \
if not current then return {0, '', -2} end \
local lock = cjson.decode(current) \
if lock.token ~= ARGV[1] then return {0, current, redis.call('PTTL', KEYS[1])} end \
redis.call('PEXPIRE', KEYS[1], ARGV[2]) \
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[3] .. '|' .. lock.fencing .. '|' .. lock.owner .. '|' .. lock.reason) \
return {1, current, tonumber(ARGV[2])}";

const RELEASE: &str = "local current = redis.call('GET', KEYS[1]) \
if not current then return {0, '', -2} end \
local lock = cjson.decode(current) \
if lock.token ~= ARGV[1] then return {0, current, redis.call('PTTL', KEYS[1])} end \
redis.call('DEL', KEYS[1]) \
redis.call('ZREM', KEYS[2], ARGV[2] .. '|' .. lock.fencing .. '|' .. lock.owner .. '|' .. lock.reason) \
return {1, current, 0}";

const STATUS: &str = "local current = redis.call('GET', KEYS[1]) \
if not current then return {0, '', -2} end \
return {1, current, redis.call('PTTL', KEYS[1])}";

const CLAIM: &str = "local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 100) \
local out = {} \
for _, member in ipairs(due) do \
  local tenant, fencing = string.match(member, '^([^|]*)|([^|]*)|') \
  local current = redis.call('GET', ARGV[1] .. tenant) \
  local live = false \
  if current then live = tostring(cjson.decode(current).fencing) == fencing end \
  if not live then redis.call('ZREM', KEYS[1], member) table.insert(out, member) end \
end \
return out";

/// Every command, bounded by the timeout (see `redis_client::bounded`).
async fn bounded<T>(timeout: Duration, call: impl std::future::Future<Output = Result<T, fred::error::Error>>) -> Result<T, LockError> {
    crate::redis_client::bounded(timeout, call).await.map_err(LockError::Unavailable)
}

/// How far apart Steward's and Redis's clocks may be before every script refuses as late.
const CLOCK_SKEW_MS: i64 = 1_000;

/// Each script after the prelude, sent by its digest.
static ACQUIRE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(format!("{PRELUDE}{ACQUIRE}")));
static RENEW_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(format!("{PRELUDE}{RENEW}")));
static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(format!("{PRELUDE}{RELEASE}")));
static STATUS_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(format!("{PRELUDE}{STATUS}")));
static CLAIM_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(format!("{PRELUDE}{CLAIM}")));

#[derive(Deserialize)]
struct Stored {
    token: String,
    owner: String,
    reason: String,
    fencing: u64,
}

pub struct RedisLockStore {
    client: Client,
    prefix: String,
    timeout: Duration,
}

impl RedisLockStore {
    /// Starts connecting in the background; never waits for Redis.
    pub fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Self, LockError> {
        let client = crate::redis_client::connect(url, timeout).map_err(|e| LockError::Unavailable(e.to_string()))?;
        Ok(Self::new(client, prefix, timeout))
    }

    /// Locks through `client`, a connection the caller shares (see `redis_client`).
    pub fn new(client: Client, prefix: &str, timeout: Duration) -> Self {
        Self { client, prefix: prefix.to_owned(), timeout }
    }

    fn key(&self, name: &str) -> String {
        format!("{}training:{name}", self.prefix)
    }

    fn lock_key(&self, tenant: &str) -> String {
        self.key(&format!("lock:{tenant}"))
    }

    async fn eval(&self, script: &LazyLock<Script>, keys: Vec<String>, mut args: Vec<String>) -> Result<Value, LockError> {
        // The deadline is on Steward's clock and checked on Redis's: allow them a second apart.
        args.push((crate::db::now_ms() + self.timeout.as_millis() as i64 + CLOCK_SKEW_MS).to_string());
        let client = self.commands();
        bounded(self.timeout, script.run::<Value>(&client, &keys, &args)).await
    }

    fn commands(&self) -> fred::clients::WithOptions<Client> {
        crate::redis_client::one_shot(&self.client, self.timeout)
    }

    /// Reads a `{found, value, pttl}` reply.
    fn reply(value: Value) -> Result<(bool, Option<LockInfo>), LockError> {
        let parts: Vec<Value> = value.convert().map_err(|e| LockError::Protocol(e.to_string()))?;
        let [flag, stored, ttl] = <[Value; 3]>::try_from(parts).map_err(|_| LockError::Protocol("expected 3 items".into()))?;
        let flag: i64 = flag.convert().map_err(|e| LockError::Protocol(e.to_string()))?;
        let stored: String = stored.convert().unwrap_or_default();
        let ttl: i64 = ttl.convert().map_err(|e| LockError::Protocol(e.to_string()))?;
        if stored.is_empty() || ttl == -2 {
            return Ok((flag == 1, None));
        }
        let s: Stored = serde_json::from_str(&stored).map_err(|e| LockError::Protocol(e.to_string()))?;
        let info = LockInfo { token: s.token, owner: s.owner, reason: s.reason, fencing_token: s.fencing, ttl_ms: ttl.max(0) as u64 };
        Ok((flag == 1, Some(info)))
    }

    fn owned(value: Value) -> Result<Owned, LockError> {
        match Self::reply(value)? {
            (true, Some(info)) => Ok(Owned::Done(info)),
            (_, info) => Ok(Owned::NotOwner(info)),
        }
    }

    /// Whether Redis answers, for readiness.
    pub async fn ping(&self) -> Result<(), LockError> {
        let client = self.commands();
        bounded(self.timeout, client.ping::<String>(None)).await.map(|_| ())
    }
}

impl LockStore for RedisLockStore {
    fn acquire<'a>(&'a self, request: LockRequest<'a>) -> BoxFuture<'a, Result<Acquired, LockError>> {
        let LockRequest { tenant, owner, reason, token, ttl, floor } = request;
        Box::pin(async move {
            let keys = vec![self.lock_key(tenant), self.key(&format!("fencing:{tenant}")), self.key("expiries"), self.key("tenants")];
            let args = vec![token.into(), owner.into(), reason.into(), ttl.as_millis().to_string(), tenant.into(), floor.to_string()];
            match Self::reply(self.eval(&ACQUIRE_SCRIPT, keys, args).await?)? {
                (true, Some(info)) => Ok(Acquired::Acquired(info)),
                (false, Some(info)) => Ok(Acquired::Held(info)),
                _ => Err(LockError::Protocol("acquire returned no lock".into())),
            }
        })
    }

    fn renew<'a>(&'a self, tenant: &'a str, token: &'a str, ttl: Duration) -> BoxFuture<'a, Result<Owned, LockError>> {
        Box::pin(async move {
            let keys = vec![self.lock_key(tenant), self.key("expiries")];
            Self::owned(self.eval(&RENEW_SCRIPT, keys, vec![token.into(), ttl.as_millis().to_string(), tenant.into()]).await?)
        })
    }

    fn release<'a>(&'a self, tenant: &'a str, token: &'a str) -> BoxFuture<'a, Result<Owned, LockError>> {
        Box::pin(async move {
            let keys = vec![self.lock_key(tenant), self.key("expiries")];
            Self::owned(self.eval(&RELEASE_SCRIPT, keys, vec![token.into(), tenant.into()]).await?)
        })
    }

    fn status<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Result<Option<LockInfo>, LockError>> {
        Box::pin(async move { Ok(Self::reply(self.eval(&STATUS_SCRIPT, vec![self.lock_key(tenant)], vec![]).await?)?.1) })
    }

    fn claim_expired(&self) -> BoxFuture<'_, Result<Vec<Expired>, LockError>> {
        Box::pin(async move {
            let reply = self.eval(&CLAIM_SCRIPT, vec![self.key("expiries")], vec![self.key("lock:")]).await?;
            // An empty array may come back as nil; anything else undecodable is an error, not "none".
            let claimed: Vec<String> = if reply.is_null() { Vec::new() } else { reply.convert().map_err(|e| LockError::Protocol(e.to_string()))? };
            Ok(claimed
                .iter()
                .filter_map(|member| {
                    let mut parts = member.splitn(4, '|');
                    let (tenant, fencing, owner, reason) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
                    Some(Expired { tenant: tenant.into(), owner: owner.into(), reason: reason.into(), fencing_token: fencing.parse().ok()? })
                })
                .collect())
        })
    }

    fn tenants(&self) -> BoxFuture<'_, Result<Vec<String>, LockError>> {
        Box::pin(async move {
            let client = self.commands();
            let mut tenants = bounded(self.timeout, client.smembers::<Vec<String>, _>(self.key("tenants"))).await?;
            // A set has no order; the port's callers get the same order from every adapter.
            tenants.sort();
            Ok(tenants)
        })
    }
}
