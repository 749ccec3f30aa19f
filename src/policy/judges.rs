//! The instance's copy of the registry: for each active constitution, its
//! document and the moderator built from it — a [`Judge`]. Turns take their
//! judge from this copy, with no registry round trip; a background task keeps
//! it current, re-reading the registry at a quarter of the staleness bound and
//! at once when an activation is announced.
//!
//! A copy older than the bound is not trusted: [`Judges::current`] refuses
//! (`policy_registry_unavailable`) unless failing open was chosen in the
//! settings. A read is installed at once; the judge of a hash new to the
//! instance is built in the background, and only its tenants wait for it.
//! A turn keeps the judge it started with, so a rotation never changes the
//! rules halfway through an answer.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::audit::{AuditEntry, AuditType};
use super::constitution::{Constitution, ConstitutionHash};
use super::registry::{Activation, ActiveSet, ConstitutionRegistry, RegistryError, Scope};
use crate::events::AuditTrail;
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
    /// Judge from an older copy (or, before the first read, the configured
    /// file) instead of refusing turns.
    pub fail_open: bool,
}

/// Why no judge could be given.
#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    #[error("the constitution registry has not been read within the staleness bound ({0:?})")]
    Stale(Duration),
    #[error("no constitution is active for this tenant")]
    NoneActive,
    #[error("the active constitution {0} is still being loaded by this instance")]
    Loading(ConstitutionHash),
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
    auditor: AuditTrail,
    held: RwLock<Arc<Snapshot>>,
    /// Woken by the registry's announcements.
    changed: Arc<Notify>,
    /// Woken when a judge is built (or found unusable).
    built: Notify,
    /// One refresh at a time (the background task's, an activating
    /// request's), so an older read never replaces a newer one.
    refreshing: tokio::sync::Mutex<()>,
    /// Hashes whose judge is being built, off the refresh path: a slow build
    /// must not keep the copy from being renewed.
    building: Mutex<HashSet<ConstitutionHash>>,
}

/// One read of the registry, with the judges it names that are ready.
#[derive(Clone)]
struct Snapshot {
    set: ActiveSet,
    judges: HashMap<ConstitutionHash, Arc<Judge>>,
    /// Judges no longer active (or not yet), newest last.
    retired: Vec<Arc<Judge>>,
    /// Active hashes this instance cannot judge by (a document it cannot
    /// parse or build, e.g. written by a newer version), with why. A document
    /// never changes under its hash, so they are not tried again.
    unusable: HashMap<ConstitutionHash, String>,
    /// When the read began; `None` before the first.
    read_at: Option<Instant>,
}

impl Snapshot {
    fn retire(&mut self, judge: Arc<Judge>) {
        if !self.retired.iter().any(|j| j.hash == judge.hash) {
            self.retired.push(judge);
        }
        let excess = self.retired.len().saturating_sub(RETIRED_KEPT);
        self.retired.drain(..excess);
    }

    fn find(&self, hash: &ConstitutionHash) -> Option<&Arc<Judge>> {
        self.judges.get(hash).or_else(|| self.retired.iter().find(|j| &j.hash == hash))
    }
}

impl Judges {
    /// A copy holding only `seed` (the configured file's constitution) as
    /// the default, not yet read from the registry: stale until the first
    /// [`Judges::refresh`].
    pub fn new(registry: Arc<dyn ConstitutionRegistry>, build: BuildModerator, freshness: Freshness, seed: Arc<Judge>, auditor: AuditTrail) -> Self {
        let set = ActiveSet { version: 0, default: Some(seed.hash.clone()), tenants: HashMap::new() };
        let judges = HashMap::from([(seed.hash.clone(), seed.clone())]);
        let held = Snapshot { set, judges, retired: Vec::new(), unusable: HashMap::new(), read_at: None };
        Self {
            registry,
            build,
            freshness,
            seed,
            auditor,
            held: RwLock::new(Arc::new(held)),
            changed: Arc::new(Notify::new()),
            built: Notify::new(),
            refreshing: tokio::sync::Mutex::new(()),
            building: Mutex::new(HashSet::new()),
        }
    }

    pub fn registry(&self) -> &Arc<dyn ConstitutionRegistry> {
        &self.registry
    }

    fn held(&self) -> Arc<Snapshot> {
        self.held.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Changes the copy under its lock (no await inside).
    fn update(&self, change: impl FnOnce(&mut Snapshot)) {
        let mut held = self.held.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next = Snapshot::clone(&held);
        change(&mut next);
        *held = Arc::new(next);
    }

    /// The judge of `tenant`'s turns now.
    pub fn current(&self, tenant: &str) -> Result<Arc<Judge>, JudgeError> {
        let held = self.held();
        let fresh = held.read_at.is_some_and(|at| at.elapsed() <= self.freshness.staleness);
        if !fresh && !self.freshness.fail_open {
            return Err(JudgeError::Stale(self.freshness.staleness));
        }
        let hash = held.set.for_tenant(tenant).ok_or(JudgeError::NoneActive)?;
        match held.judges.get(hash) {
            Some(judge) => Ok(judge.clone()),
            None if held.unusable.contains_key(hash) => Err(JudgeError::Unusable(hash.clone())),
            None => Err(JudgeError::Loading(hash.clone())),
        }
    }

    /// A judge this instance holds for `hash`, active or recently retired.
    pub fn get(&self, hash: &ConstitutionHash) -> Option<Arc<Judge>> {
        self.held().find(hash).cloned()
    }

    /// Hands over a judge built elsewhere in the process (an activating
    /// request's), so the next refresh needs no build for its hash.
    pub fn adopt(&self, judge: Arc<Judge>) {
        if self.get(&judge.hash).is_none() {
            self.update(|held| held.retire(judge));
        }
    }

    /// The registry's version in the copy.
    pub fn version(&self) -> u64 {
        self.held().set.version
    }

    /// Reads the registry and installs what it says at once; judges of
    /// hashes new to this instance are built in the background (their
    /// tenants' turns wait with 503 until then, everyone else's go on).
    pub async fn refresh(self: &Arc<Self>) -> Result<(), RefreshError> {
        let _one = self.refreshing.lock().await;
        let read_at = Instant::now();
        let mut set = self.registry.active().await?;
        if let Some(seeded) = self.seed_empty(&set).await? {
            set = seeded;
        }
        let mut missing = Vec::new();
        self.update(|held| {
            if set != held.set {
                tracing::info!(version = set.version, default = ?set.default.as_ref().map(ConstitutionHash::as_str), tenants = set.tenants.len(),
                    "active constitutions changed");
            }
            let mut judges = HashMap::with_capacity(held.judges.len());
            for hash in set.hashes() {
                match held.find(hash) {
                    Some(judge) => {
                        judges.insert(hash.clone(), judge.clone());
                    }
                    None if held.unusable.contains_key(hash) => {}
                    None => missing.push(hash.clone()),
                }
            }
            for judge in held.judges.values().filter(|j| !judges.contains_key(&j.hash)).cloned().collect::<Vec<_>>() {
                held.retire(judge);
            }
            held.retired.retain(|j| !judges.contains_key(&j.hash));
            held.unusable.retain(|hash, _| set.hashes().any(|h| h == hash));
            held.judges = judges;
            held.set = set;
            held.read_at = Some(read_at);
        });
        for hash in missing {
            self.spawn_build(hash);
        }
        Ok(())
    }

    /// Makes the configured file the default of a registry that has none (a
    /// new registry, or one that lost its data), and records it; the set to
    /// use instead of `set`, if it changed.
    async fn seed_empty(&self, set: &ActiveSet) -> Result<Option<ActiveSet>, RefreshError> {
        if set.default.is_some() {
            return Ok(None);
        }
        if !self.registry.seed(&self.seed.hash, &self.seed.text).await? {
            // Another instance seeded it meanwhile.
            return Ok(Some(self.registry.active().await?));
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
            via: crate::events::Via::Steward,
        };
        if let Err(err) = self.auditor.commit(vec![entry.pending(&self.auditor.topic)]).await {
            tracing::error!(error = %err, "the seeding of the constitution registry could not be recorded");
        }
        Ok(Some(seeded))
    }

    /// Builds the judge of `hash` in the background, once at a time per hash.
    fn spawn_build(self: &Arc<Self>, hash: ConstitutionHash) {
        if !self.building.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(hash.clone()) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let built = this.build_judge(&hash).await;
            this.update(|held| match built {
                Ok(judge) if held.set.hashes().any(|h| h == &hash) => {
                    held.judges.insert(hash.clone(), judge);
                }
                Ok(judge) => held.retire(judge),
                Err(RefreshError::Invalid(_, why)) => {
                    tracing::error!(hash = %hash, error = %why, "an active constitution cannot be used: turns judged by it are refused");
                    held.unusable.insert(hash.clone(), why);
                }
                // Not for good (Redis, a missing document): the next read tries again.
                Err(err) => tracing::warn!(hash = %hash, error = %err, "an active constitution could not be loaded yet"),
            });
            this.building.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&hash);
            this.built.notify_waiters();
        });
    }

    /// Waits, at most `within`, until every active constitution is ready or
    /// known unusable; whether they all are.
    pub async fn settled(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let built = self.built.notified();
            tokio::pin!(built);
            built.as_mut().enable();
            let held = self.held();
            if held.set.hashes().all(|h| held.judges.contains_key(h) || held.unusable.contains_key(h)) {
                return true;
            }
            if tokio::time::timeout_at(deadline, built).await.is_err() {
                return false;
            }
        }
    }

    async fn build_judge(&self, hash: &ConstitutionHash) -> Result<Arc<Judge>, RefreshError> {
        let text = self.registry.document(hash).await?.ok_or_else(|| RefreshError::Missing(hash.clone()))?;
        let (build, expected) = (self.build.clone(), hash.clone());
        // Parsing and building the moderator (embedding the examples) is CPU work.
        let built = tokio::task::spawn_blocking(move || {
            let constitution = Constitution::from_toml_str(&text).map_err(|e| RefreshError::Invalid(expected.clone(), e.to_string()))?;
            if constitution.hash() != expected {
                return Err(RefreshError::Invalid(expected, format!("the stored document hashes to {}", constitution.hash())));
            }
            let moderator = build(&constitution).map_err(|e| RefreshError::Invalid(expected.clone(), format!("{e:#}")))?;
            tracing::info!(hash = %expected, name = %constitution.name, version = %constitution.version, "constitution loaded from the registry");
            Ok(Arc::new(Judge { hash: expected, constitution, text, moderator: Arc::new(moderator) }))
        })
        .await;
        built.map_err(|e| RefreshError::Build(hash.clone(), e.to_string()))?
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
    #[error("building the judge of constitution {0} failed: {1}")]
    Build(ConstitutionHash, String),
}
