//! Identity: API keys → tenant + capabilities.
//!
//! `KeyStore` creates, lists and revokes keys (only their SHA-256 is stored);
//! the [`Caller`] extractor authenticates `Authorization: Bearer <key>` on every
//! request through a [`KeyCache`] (a revocation takes effect within its
//! lifetime), and [`Caller::require`] checks a capability.

mod cache;
mod caller;
mod domain;
mod failures;
mod store;

pub use cache::KeyCache;
pub use caller::{bearer, Caller};
pub use domain::{ApiKey, Capability, IdentityError, TenantId};
pub use failures::AuthFailures;
pub use store::{KeyRecord, KeyStore};
