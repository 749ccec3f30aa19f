//! One dispatch per signed verdict. When the orchestrator accepts a verdict
//! that came over HTTP, it claims the verdict's turn until the verdict
//! expires; the same headers presented again, to this instance or any other
//! sharing the ledger, are refused (`policy_verdict_replayed`). The claim is
//! made only after the signature checked out, so nobody can burn another
//! caller's turn id with forged headers.
//!
//! [`MemoryLedger`] serves a single instance; the Redis adapter
//! (`ledger_redis.rs`) serves a fleet.

use std::collections::HashMap;
use std::sync::Mutex;

use futures_util::future::BoxFuture;

use crate::error::{Code, ErrorCode};

/// How far apart the clocks of Steward's instances and the ledger's server may be.
pub const CLOCK_SKEW_ALLOWANCE_S: u64 = 2;

/// Until when a verdict expiring at `expires_at` is claimed: a verdict is accepted to the
/// end of its `expires_at` second (by the accepting instance's clock), so its claim must
/// outlive that second, by the skew allowance, on any instance's clock and the ledger's.
pub fn claimed_until(expires_at: u64) -> u64 {
    expires_at.saturating_add(1 + CLOCK_SKEW_ALLOWANCE_S)
}

/// Where claimed verdicts are remembered.
pub trait VerdictLedger: Send + Sync {
    /// Claims the verdict of `turn_id` (of `tenant`) until `until` (Unix
    /// seconds, from [`claimed_until`]); false if it had been claimed already.
    fn claim<'a>(&'a self, tenant: &'a str, turn_id: &'a str, until: u64) -> BoxFuture<'a, Result<bool, LedgerError>>;
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("the verdict ledger is unreachable: {0}")]
    Unavailable(String),
}

impl ErrorCode for LedgerError {
    fn code(&self) -> Code {
        Code::PolicyRegistryUnavailable
    }
}

/// Claims held in this process, each until its verdict expires.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    claims: Mutex<Claims>,
}

#[derive(Debug, Default)]
struct Claims {
    /// `tenant\nturn id` → expiry (Unix seconds).
    until: HashMap<String, u64>,
    /// Size at which expired claims are next swept out.
    sweep_at: usize,
}

impl MemoryLedger {
    pub fn new() -> Self {
        Self::default()
    }

    fn claim_at(&self, tenant: &str, turn_id: &str, expires_at: u64, now: u64) -> bool {
        let mut claims = self.claims.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if claims.until.len() >= claims.sweep_at {
            // Expired claims can go: their verdicts fail the signature check first.
            claims.until.retain(|_, until| *until >= now);
            claims.sweep_at = (claims.until.len() * 2).max(1024);
        }
        let key = format!("{tenant}\n{turn_id}");
        match claims.until.get(&key) {
            Some(until) if *until >= now => false,
            _ => {
                claims.until.insert(key, expires_at);
                true
            }
        }
    }
}

impl VerdictLedger for MemoryLedger {
    fn claim<'a>(&'a self, tenant: &'a str, turn_id: &'a str, until: u64) -> BoxFuture<'a, Result<bool, LedgerError>> {
        let claimed = self.claim_at(tenant, turn_id, until, unix_now());
        Box::pin(async move { Ok(claimed) })
    }
}

/// Seconds since the Unix epoch, the clock of verdict expiries and claims.
pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turn_is_claimed_once_until_its_verdict_expires() {
        let ledger = MemoryLedger::new();
        assert!(ledger.claim_at("acme", "t1", 100, 50));
        assert!(!ledger.claim_at("acme", "t1", 100, 99), "the same verdict again");
        assert!(ledger.claim_at("other", "t1", 100, 99), "another tenant's turn of the same id");
        assert!(ledger.claim_at("acme", "t1", 200, 101), "after expiry the claim is gone (the verdict is invalid by then)");
    }

    #[test]
    fn expired_claims_are_swept_so_memory_stays_bounded() {
        let ledger = MemoryLedger::new();
        for i in 0..10_000u64 {
            // Each claim expires one second after it is made.
            assert!(ledger.claim_at("acme", &format!("t{i}"), i + 1, i));
        }
        let held = ledger.claims.lock().unwrap().until.len();
        assert!(held <= 2048, "{held} claims held");
    }
}
