//! The constitution registry: every constitution document by its hash, the
//! active hash of each tenant that has its own and the default for the rest,
//! and a version counter that every activation moves on.
//!
//! [`MemoryRegistry`] serves a single instance (embedded mode); the Redis
//! adapter (`registry_redis.rs`) serves a fleet, and tells every instance of
//! each activation. Instances judge from a local copy ([`super::Judges`]),
//! never from the registry on a turn's path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::constitution::ConstitutionHash;
use crate::error::{Code, ErrorCode};

/// Where an activation applies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every tenant without a constitution of its own.
    Default,
    /// One tenant.
    Tenant(String),
}

impl Scope {
    /// The tenant, or `None` for the default.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Self::Default => None,
            Self::Tenant(t) => Some(t),
        }
    }
}

/// The active hashes, as one read of the registry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActiveSet {
    /// Moves on with every activation.
    pub version: u64,
    pub default: Option<ConstitutionHash>,
    pub tenants: HashMap<String, ConstitutionHash>,
}

impl ActiveSet {
    /// The hash `tenant`'s turns are judged under.
    pub fn for_tenant(&self, tenant: &str) -> Option<&ConstitutionHash> {
        self.tenants.get(tenant).or(self.default.as_ref())
    }

    /// Every hash some scope has active.
    pub fn hashes(&self) -> impl Iterator<Item = &ConstitutionHash> {
        self.default.iter().chain(self.tenants.values())
    }
}

/// What an activation changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activation {
    /// The hash the scope had before (for a tenant: its own, not the default).
    pub previous: Option<ConstitutionHash>,
    /// The registry's version after the activation.
    pub version: u64,
    /// False when the hash was already active in the scope (nothing moved on).
    pub changed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("the constitution registry is unreachable: {0}")]
    Unavailable(String),
    #[error("the constitution registry holds something unreadable: {0}")]
    Corrupt(String),
}

impl ErrorCode for RegistryError {
    fn code(&self) -> Code {
        match self {
            Self::Unavailable(_) => Code::PolicyRegistryUnavailable,
            Self::Corrupt(_) => Code::Internal,
        }
    }
}

/// Where constitutions and their activations are kept.
pub trait ConstitutionRegistry: Send + Sync {
    /// The active hashes and the version.
    fn active(&self) -> BoxFuture<'_, Result<ActiveSet, RegistryError>>;

    /// A stored document's text, as it was activated.
    fn document<'a>(&'a self, hash: &'a ConstitutionHash) -> BoxFuture<'a, Result<Option<String>, RegistryError>>;

    /// Stores `text` (whose hash is `hash`) and makes it active in `scope`, in
    /// one step, then tells every instance.
    fn activate<'a>(&'a self, scope: &'a Scope, hash: &'a ConstitutionHash, text: &'a str) -> BoxFuture<'a, Result<Activation, RegistryError>>;

    /// Makes `hash` the default only if there is none yet (the configured
    /// file seeds an empty registry); true if it did.
    fn seed<'a>(&'a self, hash: &'a ConstitutionHash, text: &'a str) -> BoxFuture<'a, Result<bool, RegistryError>>;

    /// Wakes `changed` whenever an activation is announced, until `cancel`.
    fn watch(&self, changed: Arc<Notify>, cancel: CancellationToken) -> BoxFuture<'static, ()>;
}

/// The registry of one process.
#[derive(Debug, Default)]
pub struct MemoryRegistry {
    state: Mutex<MemoryState>,
    changed: Arc<Notify>,
}

#[derive(Debug, Default)]
struct MemoryState {
    documents: HashMap<ConstitutionHash, String>,
    active: ActiveSet,
}

impl MemoryRegistry {
    fn state(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ConstitutionRegistry for MemoryRegistry {
    fn active(&self) -> BoxFuture<'_, Result<ActiveSet, RegistryError>> {
        let active = self.state().active.clone();
        Box::pin(async move { Ok(active) })
    }

    fn document<'a>(&'a self, hash: &'a ConstitutionHash) -> BoxFuture<'a, Result<Option<String>, RegistryError>> {
        let text = self.state().documents.get(hash).cloned();
        Box::pin(async move { Ok(text) })
    }

    fn activate<'a>(&'a self, scope: &'a Scope, hash: &'a ConstitutionHash, text: &'a str) -> BoxFuture<'a, Result<Activation, RegistryError>> {
        let activation = {
            let mut state = self.state();
            state.documents.entry(hash.clone()).or_insert_with(|| text.to_owned());
            let active = &mut state.active;
            let previous = match scope {
                Scope::Default => active.default.clone(),
                Scope::Tenant(t) => active.tenants.get(t).cloned(),
            };
            let changed = previous.as_ref() != Some(hash);
            if changed {
                active.version += 1;
                match scope {
                    Scope::Default => active.default = Some(hash.clone()),
                    Scope::Tenant(t) => {
                        active.tenants.insert(t.clone(), hash.clone());
                    }
                }
            }
            Activation { previous, version: active.version, changed }
        };
        if activation.changed {
            self.changed.notify_waiters();
        }
        Box::pin(async move { Ok(activation) })
    }

    fn seed<'a>(&'a self, hash: &'a ConstitutionHash, text: &'a str) -> BoxFuture<'a, Result<bool, RegistryError>> {
        let seeded = {
            let mut state = self.state();
            state.documents.entry(hash.clone()).or_insert_with(|| text.to_owned());
            let empty = state.active.default.is_none();
            if empty {
                state.active.default = Some(hash.clone());
                state.active.version += 1;
            }
            empty
        };
        Box::pin(async move { Ok(seeded) })
    }

    fn watch(&self, changed: Arc<Notify>, cancel: CancellationToken) -> BoxFuture<'static, ()> {
        let mine = self.changed.clone();
        Box::pin(async move {
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = mine.notified() => changed.notify_one(),
                }
            }
        })
    }
}
