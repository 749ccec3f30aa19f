//! Policy: the active constitutions (each named by its hash, `sha256:<64
//! hex>`) and signed per-turn verdicts.
//!
//! The [`ConstitutionRegistry`] holds every document by hash and the active
//! one per tenant (Redis for a fleet, this process otherwise); [`Judges`] is
//! the instance's copy of it, with a moderator per active constitution, kept
//! current in the background and refused once older than its staleness bound.
//! Each activation is recorded in `policy.audit` ([`AuditEntry`]).
//!
//! [`PolicyEngine::sign`] turns a moderation decision into a [`SignedVerdict`]
//! (HMAC-SHA256 over tenant, session, turn, message digest, generation
//! parameters, verdict, hash and expiry);
//! [`PolicyEngine::verify`] is the single check the orchestrator applies to the
//! three policy headers, whether they came over HTTP or from the gateway in
//! process; [`PolicyEngine::accept`] adds, for headers that came over HTTP,
//! the claim in a [`VerdictLedger`] that makes each verdict good once.

pub(crate) mod api;
mod audit;
pub mod cli;
pub mod constitution;
mod dry_run;
mod judges;
mod ledger;
#[cfg(feature = "redis")]
mod ledger_redis;
mod registry;
#[cfg(feature = "redis")]
mod registry_redis;
mod verdict;

pub use api::{configure, PolicyApi};
pub use audit::{AuditEntry, AuditType, AUDIT_SCHEMA};
pub use constitution::{Constitution, ConstitutionHash};
pub use dry_run::{dry_run, replay, Change, DryRunReport, PastTurn, Replayed};
pub use judges::{BuildModerator, Freshness, Judge, JudgeError, Judges};
pub use ledger::{LedgerError, MemoryLedger, VerdictLedger};
#[cfg(feature = "redis")]
pub use ledger_redis::RedisLedger;
pub use registry::{Activation, ActiveSet, ConstitutionRegistry, MemoryRegistry, RegistryError, Scope};
#[cfg(feature = "redis")]
pub use registry_redis::RedisRegistry;
pub use verdict::{PolicyEngine, PolicyError, PolicyHeaders, SignedVerdict, TurnRef, Verdict};

/// Header names of the policy contract.
pub mod headers {
    pub const CONSTITUTION_HASH: &str = "x-constitution-hash";
    pub const POLICY_VERDICT: &str = "x-policy-verdict";
    pub const POLICY_SIGNATURE: &str = "x-policy-signature";
}
