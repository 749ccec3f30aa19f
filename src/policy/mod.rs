//! Policy: the active constitution (its hash, `sha256:<64 hex>`) and signed
//! per-turn verdicts.
//!
//! [`PolicyEngine::sign`] turns a moderation decision into a [`SignedVerdict`]
//! (HMAC-SHA256 over tenant, session, turn, message digest, generation
//! parameters, verdict, hash and expiry);
//! [`PolicyEngine::verify`] is the single check the orchestrator applies to the
//! three policy headers, whether they came over HTTP or from the gateway in
//! process; [`PolicyEngine::accept`] adds, for headers that came over HTTP,
//! the claim in a [`VerdictLedger`] that makes each verdict good once.

mod api;
pub mod cli;
pub mod constitution;
mod dry_run;
mod ledger;
#[cfg(feature = "redis")]
mod ledger_redis;
mod verdict;

pub use api::{configure, ActiveDocument, PolicyApi};
pub use constitution::{Constitution, ConstitutionHash};
pub use dry_run::{dry_run, Change, DryRunReport, PastTurn};
pub use ledger::{LedgerError, MemoryLedger, VerdictLedger};
#[cfg(feature = "redis")]
pub use ledger_redis::RedisLedger;
pub use verdict::{PolicyEngine, PolicyError, PolicyHeaders, SignedVerdict, TurnRef, Verdict};

/// Header names of the policy contract.
pub mod headers {
    pub const CONSTITUTION_HASH: &str = "x-constitution-hash";
    pub const POLICY_VERDICT: &str = "x-policy-verdict";
    pub const POLICY_SIGNATURE: &str = "x-policy-signature";
}
