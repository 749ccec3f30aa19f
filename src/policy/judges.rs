//! The instance's copy of the registry: for each active constitution, its
//! document and the moderator built from it — a [`Judge`]. Turns take their
//! judge from this copy, with no registry round trip; a background task keeps
//! it current, re-reading the registry at a quarter of the staleness bound and
//! at once when an activation is announced.
//!
//! A copy older than the bound is not trusted: [`Judges::current`] refuses
//! (`policy_registry_unavailable`) unless failing open was chosen in the
//! settings. A turn keeps the judge it started with, so a rotation never
//! changes the rules halfway through an answer.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::audit::{AuditEntry, AuditType, Auditor};
use super::constitution::{Constitution, ConstitutionHash};
use super::registry::{Activation, ActiveSet, ConstitutionRegistry, RegistryError, Scope};
use crate::moderation::Moderator;
use crate::telemetry::TraceContext;

/// The actor of a seeding record.
const SEED_ACTOR: &str = "steward:seed";

/// One constitution, ready to judge with.
#[derive(Debug)]
pub struct Judge {
    pub hash: ConstitutionHash,
    pub constitution: Constitution,
    /// The document's text, as activated (comments included).
    pub text: String,
    pub moderator: Arc<Moderator>,
}

/// Builds the moderator for a constitution (the configured layers).
pub type BuildModerator = Arc<dyn Fn(&Constitution) -> anyhow::Result<Moderator> + Send + Sync>;

/// How the copy is kept and trusted.
#[derive(Debug, Clone, Copy)]
pub struct Freshness {
    /// The copy is trusted this long after the read it came from.
    pub staleness: Duration,
    /// Judge from an older copy instead of refusing turns.
    pub fail_open: bool,
}

/// Why no judge could be given.
#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    #[error("the constitution registry has not been read for {0:?}, longer than the staleness bound")]
    Stale(Duration),
    #[error("no constitution is active for this tenant")]
    NoneActive,
    #[error("the active constitution {0} cannot be used by this instance (see its log)")]
    Unusable(ConstitutionHash),
}

/// How many judges of constitutions no longer active are kept for turns
/// admitted under them.
const RETIRED_KEPT: usize = 8;

pub struct Judges {
    registry: Arc<dyn ConstitutionRegistry>,
    build: BuildModerator,
    freshness: Freshness,
    /// The configured file's constitution: the default of an empty registry.
    seed: Arc<Judge>,
    auditor: Auditor,
    held: RwLock<Arc<Held>>,
    changed: Arc<Notify>,
    /// One refresh at a time (the background task's, an activating
    /// request's), so an older read never replaces a newer one.
    refreshing: tokio::sync::Mutex<()>,
}

/// One read of the registry, with the judges it needs.
struct Held {
    set: ActiveSet,
    judges: HashMap<ConstitutionHash, Arc<Judge>>,
    /// Judges no longer active, newest last.
    retired: Vec<Arc<Judge>>,
    /// Active hashes this instance cannot judge by (a document it cannot
    /// parse or build, e.g. written by a newer version), with why. A document
    /// never changes under its hash, so they are not tried again.
    unusable: HashMap<ConstitutionHash, String>,
    /// When the read began.
    read_at: Instant,
}

impl Judges {
    /// A copy holding only `seed` (the configured file's constitution) as
    /// the default, not yet read from the registry: stale until the first
    /// [`Judges::refresh`].
    pub fn new(registry: Arc<dyn ConstitutionRegistry>, build: BuildModerator, freshness: Freshness, seed: Arc<Judge>, auditor: Auditor) -> Self {
        let set = ActiveSet { version: 0, default: Some(seed.hash.clone()), tenants: HashMap::new() };
        let never = Instant::now().checked_sub(freshness.staleness + Duration::from_millis(1)).unwrap_or_else(Instant::now);
        let judges = HashMap::from([(seed.hash.clone(), seed.clone())]);
        let held = Held { set, judges, retired: Vec::new(), unusable: HashMap::new(), read_at: never };
        Self {
            registry,
            build,
            freshness,
            seed,
            auditor,
            held: RwLock::new(Arc::new(held)),
            changed: Arc::new(Notify::new()),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// Makes the configured file the default of a registry that has none (a
    /// new registry, or one that lost its data), and records it.
    async fn seed_empty(&self, set: &ActiveSet) -> Result<Option<ActiveSet>, RefreshError> {
        if set.default.is_some() || !self.registry.seed(&self.seed.hash, &self.seed.text).await? {
            return Ok(None);
        }
        let seeded = self.registry.active().await?;
        if set.version > 0 || self.version() > 0 {
            tracing::warn!(hash = %self.seed.hash, "the constitution registry had lost its data: the configured file is the default again");
        } else {
            tracing::info!(hash = %self.seed.hash, "the configured constitution seeded the registry");
        }
        let activation = Activation { previous: None, version: seeded.version, changed: true };
        let entry = AuditEntry {
            kind: AuditType::Seeded,
            scope: &Scope::Default,
            actor: SEED_ACTOR,
            constitution: &self.seed.constitution,
            hash: &self.seed.hash,
            activation: &activation,
            trace: &TraceContext::new_root(),
        };
        if let Err(err) = self.auditor.record(&entry).await {
            tracing::error!(error = %err, "the seeding of the constitution registry could not be recorded");
        }
        Ok(Some(seeded))
    }

    pub fn registry(&self) -> &Arc<dyn ConstitutionRegistry> {
        &self.registry
    }

    fn held(&self) -> Arc<Held> {
        self.held.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The judge of `tenant`'s turns now.
    pub fn current(&self, tenant: &str) -> Result<Arc<Judge>, JudgeError> {
        let held = self.held();
        let age = held.read_at.elapsed();
        if age > self.freshness.staleness && !self.freshness.fail_open {
            return Err(JudgeError::Stale(age));
        }
        let hash = held.set.for_tenant(tenant).ok_or(JudgeError::NoneActive)?;
        held.judges.get(hash).cloned().ok_or_else(|| JudgeError::Unusable(hash.clone()))
    }

    /// A judge this instance holds for `hash`, active or recently retired.
    pub fn get(&self, hash: &ConstitutionHash) -> Option<Arc<Judge>> {
        let held = self.held();
        held.judges.get(hash).or_else(|| held.retired.iter().find(|j| &j.hash == hash)).cloned()
    }

    /// The registry's version in the copy.
    pub fn version(&self) -> u64 {
        self.held().set.version
    }

    /// Reads the registry and builds the judges of hashes new to this
    /// instance; the copy changes only once everything it names is ready.
    pub async fn refresh(&self) -> Result<(), RefreshError> {
        let _one = self.refreshing.lock().await;
        let read_at = Instant::now();
        let mut set = self.registry.active().await?;
        if let Some(seeded) = self.seed_empty(&set).await? {
            set = seeded;
        }
        let old = self.held();
        let mut judges = HashMap::with_capacity(old.judges.len());
        let mut unusable: HashMap<ConstitutionHash, String> =
            old.unusable.iter().filter(|(h, _)| set.hashes().any(|a| a == *h)).map(|(h, w)| (h.clone(), w.clone())).collect();
        for hash in set.hashes() {
            if judges.contains_key(hash) || unusable.contains_key(hash) {
                continue;
            }
            let judge = match self.get(hash) {
                Some(judge) => judge,
                None => match self.build_judge(hash).await {
                    Ok(judge) => judge,
                    Err(RefreshError::Registry(err)) => return Err(err.into()),
                    // One bad document stops its own tenants' turns, not everyone's.
                    Err(err) => {
                        tracing::error!(hash = %hash, error = %err, "an active constitution cannot be used: turns judged by it are refused");
                        unusable.insert(hash.clone(), err.to_string());
                        continue;
                    }
                },
            };
            judges.insert(hash.clone(), judge);
        }
        let mut retired: Vec<Arc<Judge>> = old.retired.iter().filter(|j| !judges.contains_key(&j.hash)).cloned().collect();
        retired.extend(old.judges.values().filter(|j| !judges.contains_key(&j.hash)).cloned());
        let excess = retired.len().saturating_sub(RETIRED_KEPT);
        retired.drain(..excess);
        if set != old.set {
            tracing::info!(version = set.version, default = ?set.default.as_ref().map(ConstitutionHash::as_str), tenants = set.tenants.len(),
                "active constitutions changed");
        }
        *self.held.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(Held { set, judges, retired, unusable, read_at });
        Ok(())
    }

    async fn build_judge(&self, hash: &ConstitutionHash) -> Result<Arc<Judge>, RefreshError> {
        let text = self.registry.document(hash).await?.ok_or_else(|| RefreshError::Missing(hash.clone()))?;
        let build = self.build.clone();
        let expected = hash.clone();
        // Parsing and building the moderator (embedding the examples) is CPU work.
        tokio::task::spawn_blocking(move || {
            let constitution = Constitution::from_toml_str(&text).map_err(|e| RefreshError::Invalid(expected.clone(), e.to_string()))?;
            if constitution.hash() != expected {
                return Err(RefreshError::Invalid(expected, format!("the stored document hashes to {}", constitution.hash())));
            }
            let moderator = build(&constitution).map_err(|e| RefreshError::Invalid(expected.clone(), format!("{e:#}")))?;
            tracing::info!(hash = %expected, name = %constitution.name, version = %constitution.version, "constitution loaded from the registry");
            Ok(Arc::new(Judge { hash: expected, constitution, text, moderator: Arc::new(moderator) }))
        })
        .await
        .map_err(|e| RefreshError::Invalid(hash.clone(), e.to_string()))?
    }

    /// Keeps the copy current until `cancel`: a read at a quarter of the
    /// staleness bound and on every announced activation.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let watcher = tokio::spawn(self.registry.watch(self.changed.clone(), cancel.clone()));
        let every = (self.freshness.staleness / 4).max(Duration::from_millis(10));
        let mut failing = false;
        loop {
            match self.refresh().await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!(version = self.version(), "constitution registry readable again");
                }
                Ok(()) => {}
                Err(err) if !failing => {
                    failing = true;
                    tracing::warn!(error = %err, "constitution registry read failed; judging from the local copy until it is stale");
                }
                Err(_) => {}
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = self.changed.notified() => {}
                () = tokio::time::sleep(every) => {}
            }
        }
        let _ = watcher.await;
    }
}

/// Why the copy could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("constitution {0} is active but its document is not in the registry")]
    Missing(ConstitutionHash),
    #[error("constitution {0} in the registry cannot be used: {1}")]
    Invalid(ConstitutionHash, String),
}
