//! The Redis [`VerdictLedger`]: one script sets
//! `<prefix>policy:verdict:<tenant>:<turn id>` with `NX`, until past the
//! verdict's expiry (see [`super::ledger::claimed_until`]), atomically on the server, so exactly one instance of a fleet
//! accepts each verdict. Like the training lock's scripts, it refuses to act
//! once the caller's deadline has passed: a command delivered after Steward
//! answered 503 must not burn the caller's verdict.

use std::time::Duration;

use fred::prelude::*;
use futures_util::future::BoxFuture;

use super::ledger::{LedgerError, VerdictLedger};

const CLAIM: &str = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) \
if now > tonumber(ARGV[2]) then return redis.error_reply('STEWARD_LATE command arrived after its deadline') end \
if redis.call('SET', KEYS[1], '1', 'NX', 'EXAT', ARGV[1]) then return 1 end \
return 0";

/// How far apart Steward's and Redis's clocks may be before every claim is refused as late.
const CLOCK_SKEW_MS: i64 = 1_000;

pub struct RedisLedger {
    client: Client,
    prefix: String,
    timeout: Duration,
}

impl RedisLedger {
    /// Claims through `client` (connected by the caller), with keys under `prefix`.
    pub fn new(client: Client, prefix: &str, timeout: Duration) -> Self {
        Self { client, prefix: prefix.to_owned(), timeout }
    }
}

impl VerdictLedger for RedisLedger {
    fn claim<'a>(&'a self, tenant: &'a str, turn_id: &'a str, until: u64) -> BoxFuture<'a, Result<bool, LedgerError>> {
        Box::pin(async move {
            let key = format!("{}policy:verdict:{tenant}:{turn_id}", self.prefix);
            let deadline = crate::db::now_ms() + self.timeout.as_millis() as i64 + CLOCK_SKEW_MS;
            let client = crate::redis_client::one_shot(&self.client, self.timeout);
            let call = client.eval::<i64, _, _, _>(CLAIM, vec![key], vec![until.to_string(), deadline.to_string()]);
            let claimed = crate::redis_client::bounded(self.timeout, call).await.map_err(LedgerError::Unavailable)?;
            Ok(claimed == 1)
        })
    }
}
