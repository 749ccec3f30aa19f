//! Identity: API keys → tenant + capabilities.
//!
//! `KeyStore` creates, lists and revokes keys (only their SHA-256 is stored);
//! the [`Caller`] extractor authenticates `Authorization: Bearer <key>` on every
//! request through the [`Authenticator`] (a [`KeyCache`], where a revocation
//! takes effect within its lifetime, under the failed-authentication bound of
//! the client address), and [`Caller::require`] checks a capability.

mod authenticator;
mod cache;
mod caller;
mod client;
mod domain;
mod failures;
mod pace;
mod store;

pub use authenticator::Authenticator;
pub use cache::KeyCache;
pub use caller::{bearer, Caller};
pub use client::{ForwardedHeader, TrustedProxies};
pub use domain::{ApiKey, Capability, IdentityError, TenantId};
pub use failures::AuthFailures;
pub use pace::KeyPace;
pub use store::{KeyRecord, KeyStore};
