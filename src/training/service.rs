//! Training mode: the admin operations over the [`LockStore`], their audit
//! records (`training.audit/v1`, through the outbox), metrics and logs, and a
//! short-lived view of each tenant's state for the chat path (so a turn costs
//! no Redis round trip while the state is fresh).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::RngCore;
use serde_json::json;

use super::denials::{Denial, Denials};
use super::fencing::{ClaimLost, Ended, FencingLedger, Granted, LiveLock};
use super::lock::{Acquired, LockError, LockInfo, LockRequest, LockStore, Owned};
use crate::db::rfc3339;
use crate::durations::NonZeroDuration;
use crate::error::{Code, ErrorCode};
use crate::events::{AuditTrail, Pending, Via};
use crate::telemetry::{Metrics, TraceContext};

pub const AUDIT_SCHEMA: &str = "training.audit/v1";

#[derive(Debug, thiserror::Error)]
pub enum TrainingError {
    #[error("training mode is held by {owner} until {expires_at}")]
    Held { owner: String, expires_at: String },
    #[error("this lock token does not hold the training lock")]
    NotOwner,
    #[error(transparent)]
    Store(#[from] LockError),
    #[error("events could not be stored")]
    Audit(#[from] crate::events::EventsError),
    #[error("the fencing ledger could not be read")]
    Ledger(#[from] sqlx::Error),
}

impl ErrorCode for TrainingError {
    fn code(&self) -> Code {
        match self {
            Self::Held { .. } => Code::TrainingLockHeld,
            Self::NotOwner => Code::TrainingLockNotOwner,
            Self::Store(_) => Code::LockStoreUnavailable,
            Self::Audit(_) | Self::Ledger(_) => Code::Internal,
        }
    }
}

/// Whether a tenant's turns are captured for training, and how that was decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainingMark {
    /// `None` when the lock store could not be read: unknown, not guessed.
    pub enabled: Option<bool>,
    pub fencing_token: Option<u64>,
    /// `lock_store` (read from it within `training.state_cache`) or `lock_store_unavailable`.
    pub source: &'static str,
}

/// Who asked, for audit records.
pub struct Actor<'a> {
    pub tenant: &'a str,
    pub key_id: &'a str,
    pub trace: &'a TraceContext,
    pub via: Via,
}

/// `[training]`: the lock's bounds and how its state is read.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSettings {
    /// Longer requested TTLs are clamped to this.
    pub max_ttl: NonZeroDuration,
    /// How often lapsed locks are looked for (the bound on `training.expired` delay).
    pub expiry_check: NonZeroDuration,
    /// How long the chat path trusts its last read of a tenant's state.
    #[serde(deserialize_with = "crate::durations::deserialize")]
    pub state_cache: Duration,
}

pub struct TrainingService {
    store: Arc<dyn LockStore>,
    ledger: FencingLedger,
    /// Where transitions are recorded (`kafka.training_topic`).
    audit: AuditTrail,
    metrics: Arc<Metrics>,
    settings: TrainingSettings,
    /// tenant → (read at, lock): the chat path's view, refreshed after `state_cache`.
    view: Mutex<HashMap<String, (Instant, Option<LockInfo>)>>,
    /// Folds a key's repeated denials into one record per window.
    denials: Denials,
}

impl TrainingService {
    pub fn new(store: Arc<dyn LockStore>, ledger: FencingLedger, audit: AuditTrail, metrics: Arc<Metrics>, settings: TrainingSettings) -> Self {
        Self { store, ledger, audit, metrics, settings, view: Mutex::new(HashMap::new()), denials: Denials::default() }
    }

    pub fn store(&self) -> &Arc<dyn LockStore> {
        &self.store
    }

    pub fn ledger(&self) -> &FencingLedger {
        &self.ledger
    }

    /// TTL requested, clamped to `training.max_ttl`.
    pub fn clamp(&self, ttl_seconds: u64) -> Duration {
        Duration::from_secs(ttl_seconds).min(self.settings.max_ttl.get())
    }

    pub async fn enable(&self, actor: &Actor<'_>, ttl: Duration, reason: &str) -> Result<LockInfo, TrainingError> {
        let mut bytes = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let token = hex::encode(bytes);
        // Above every token Steward's database has seen: a lock store that lost its memory cannot hand one out again.
        let floor = self.ledger.high_water(actor.tenant).await?;
        match self.store.acquire(LockRequest { tenant: actor.tenant, owner: actor.key_id, reason, token: &digest(&token), ttl, floor }).await {
            Ok(Acquired::Acquired(info)) => {
                if let Err(err) = self.transition(actor, Transition::Enabled, Some(&info), reason, vec![granted(actor.tenant, &info)]).await {
                    // Nobody will ever see this lock's token: release it rather than lock the tenant out.
                    let _ = self.store.release(actor.tenant, &info.token).await;
                    return Err(err);
                }
                self.remember(actor.tenant, Some(info.clone()));
                // The store keeps only the token's digest; the caller gets the token itself, once.
                Ok(LockInfo { token, ..info })
            }
            Ok(Acquired::Held(info)) => {
                self.transition(actor, Transition::Denied, Some(&info), &format!("already held by {}", info.owner), Vec::new()).await?;
                Err(TrainingError::Held { owner: info.owner.clone(), expires_at: rfc3339(info.expires_at_ms()) })
            }
            Err(err) => Err(err.into()),
        }
    }

    pub async fn renew(&self, actor: &Actor<'_>, token: &str, ttl: Duration) -> Result<LockInfo, TrainingError> {
        let outcome = self.store.renew(actor.tenant, &digest(token), ttl).await?;
        self.owned(actor, Transition::Renewed, outcome).await
    }

    pub async fn disable(&self, actor: &Actor<'_>, token: &str) -> Result<LockInfo, TrainingError> {
        let outcome = self.store.release(actor.tenant, &digest(token)).await?;
        let result = self.owned(actor, Transition::Disabled, outcome).await;
        if result.is_ok() {
            self.remember(actor.tenant, None);
        }
        result
    }

    /// Renewed or Disabled by its owner, or denied to someone else.
    async fn owned(&self, actor: &Actor<'_>, action: Transition, outcome: Owned) -> Result<LockInfo, TrainingError> {
        let renewed = action == Transition::Renewed;
        match outcome {
            Owned::Done(info) => {
                let write = if renewed {
                    granted(actor.tenant, &info)
                } else {
                    Pending::Write(Arc::new(Ended { tenant: actor.tenant.to_owned(), fencing_token: info.fencing_token }))
                };
                self.transition(actor, action, Some(&info), &info.reason.clone(), vec![write]).await?;
                if renewed {
                    self.remember(actor.tenant, Some(info.clone()));
                }
                Ok(info)
            }
            Owned::NotOwner(current) => {
                let verb = if renewed { "renew" } else { "disable" };
                self.transition(actor, Transition::Denied, current.as_ref(), &format!("{verb} with a token that does not hold the lock"), Vec::new()).await?;
                Err(TrainingError::NotOwner)
            }
        }
    }

    /// Audits a caller without `training:admin`.
    pub async fn deny(&self, actor: &Actor<'_>, why: &str) -> Result<(), TrainingError> {
        self.transition(actor, Transition::Denied, None, why, Vec::new()).await
    }

    /// Audits a lapsed lock (claimed from the lock store by this instance) as `training.expired`.
    pub(super) async fn expired(&self, actor: &Actor<'_>, lock: &LockInfo) -> Result<(), TrainingError> {
        let ended = Pending::Write(Arc::new(Ended { tenant: actor.tenant.to_owned(), fencing_token: lock.fencing_token }));
        self.transition(actor, Transition::Expired, Some(lock), &lock.reason, vec![ended]).await
    }

    /// Audits a lock the ledger holds but the lock store no longer has, and
    /// that nobody audited: as `training.lost` when it vanished before its
    /// TTL ran out (a restart that lost its data, a failover, an eviction),
    /// as `training.expired` when it lapsed but its expiry was never
    /// recorded (the store lost its expiry index, or the instance that
    /// claimed it died first). Claimed in the same transaction as the
    /// record, so of all the instances that notice, exactly one records it;
    /// false if another did.
    pub(super) async fn vanished(&self, actor: &Actor<'_>, held: &LiveLock) -> Result<bool, TrainingError> {
        let claim = Pending::Write(Arc::new(ClaimLost { tenant: held.tenant.clone(), fencing_token: held.fencing_token }));
        let lock = LockInfo { token: String::new(), owner: held.owner.clone(), reason: String::new(), fencing_token: held.fencing_token, ttl_ms: 0 };
        let (action, why) = if held.until_ms > crate::db::now_ms() {
            (Transition::Lost, "the lock vanished from the lock store before it was disabled or expired")
        } else {
            (Transition::Expired, "the lock lapsed and its expiry was not recorded by the lock store's watcher")
        };
        match self.transition(actor, action, Some(&lock), why, vec![claim]).await {
            Ok(()) => {
                self.remember(actor.tenant, None);
                Ok(true)
            }
            Err(TrainingError::Audit(crate::events::EventsError::Conflict)) => Ok(false),
            Err(err) => Err(err),
        }
    }

    pub async fn status(&self, tenant: &str) -> Result<Option<LockInfo>, TrainingError> {
        let info = self.store.status(tenant).await?;
        self.metrics.training_state(tenant, Some(info.is_some()));
        self.remember(tenant, info.clone());
        Ok(info)
    }

    /// The chat path's view: fresh enough, or read again; unknown if unreadable.
    pub async fn mark(&self, tenant: &str) -> TrainingMark {
        let cached = self.view.lock().ok().and_then(|v| v.get(tenant).cloned());
        if let Some((read_at, lock)) = cached {
            let lapsed = lock.as_ref().is_some_and(|l| read_at.elapsed().as_millis() as u64 >= l.ttl_ms);
            if read_at.elapsed() < self.settings.state_cache && !lapsed {
                return mark_of(lock.as_ref());
            }
        }
        match self.store.status(tenant).await {
            Ok(lock) => {
                self.remember(tenant, lock.clone());
                mark_of(lock.as_ref())
            }
            Err(err) => {
                self.metrics.lock_store_failure();
                tracing::warn!(tenant, error = %err, "training state unknown: lock store unreadable");
                TrainingMark { enabled: None, fencing_token: None, source: "lock_store_unavailable" }
            }
        }
    }

    fn remember(&self, tenant: &str, lock: Option<LockInfo>) {
        if let Ok(mut view) = self.view.lock() {
            view.insert(tenant.to_owned(), (Instant::now(), lock));
        }
    }

    /// Records a transition: audit record (durable), counter, log line.
    /// `writes` commit in the same transaction as the record.
    async fn transition(
        &self,
        actor: &Actor<'_>,
        action: Transition,
        lock: Option<&LockInfo>,
        reason: &str,
        writes: Vec<Pending>,
    ) -> Result<(), TrainingError> {
        let folded = match action {
            Transition::Denied => match self.denials.check(actor.key_id) {
                Denial::Fold => {
                    self.metrics.training_transition(actor.tenant, action.as_str());
                    return Ok(());
                }
                Denial::Record { folded } => Some(folded),
            },
            _ => None,
        };
        let occurred_at = rfc3339(crate::db::now_ms());
        let event_type = action.event_type();
        let mut record = json!({
            "schema": AUDIT_SCHEMA,
            "event_id": uuid::Uuid::now_v7().to_string(),
            "type": event_type,
            "tenant": actor.tenant,
            "actor": actor.key_id,
            "lock_owner": lock.map(|l| l.owner.clone()),
            "fencing_token": lock.map(|l| l.fencing_token),
            "ttl_ms": lock.map(|l| l.ttl_ms),
            "reason": reason,
            "occurred_at": occurred_at,
            "trace_id": actor.trace.trace_id,
            "via": actor.via.as_str(),
        });
        if let Some(folded) = folded {
            record["folded"] = json!(folded);
        }
        let pending = self.audit.record(actor.tenant, event_type, record, actor.trace);
        self.audit.commit(writes.into_iter().chain([pending]).collect()).await?;
        self.metrics.training_transition(actor.tenant, action.as_str());
        if let Some(on) = action.state() {
            self.metrics.training_state(actor.tenant, Some(on));
        }
        tracing::info!(
            tenant = actor.tenant, action = action.as_str(), actor = actor.key_id, lock_owner = lock.map(|l| l.owner.as_str()),
            fencing_token = lock.map(|l| l.fencing_token), occurred_at = %occurred_at, trace_id = %actor.trace.trace_id, reason,
            "training mode transition"
        );
        Ok(())
    }
}

/// A training-mode transition, as audited (`training.<action>`) and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transition {
    Enabled,
    Renewed,
    Disabled,
    Expired,
    Lost,
    Denied,
}

impl Transition {
    fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "enabled",
            Self::Renewed => "renewed",
            Self::Disabled => "disabled",
            Self::Expired => "expired",
            Self::Lost => "lost",
            Self::Denied => "denied",
        }
    }

    /// The audit record's type.
    fn event_type(self) -> &'static str {
        match self {
            Self::Enabled => "training.enabled",
            Self::Renewed => "training.renewed",
            Self::Disabled => "training.disabled",
            Self::Expired => "training.expired",
            Self::Lost => "training.lost",
            Self::Denied => "training.denied",
        }
    }

    /// Training mode's state after it (`None`: a denial changes nothing).
    fn state(self) -> Option<bool> {
        match self {
            Self::Enabled | Self::Renewed => Some(true),
            Self::Disabled | Self::Expired | Self::Lost => Some(false),
            Self::Denied => None,
        }
    }
}

/// What the lock store holds instead of the token: someone reading Redis
/// cannot take over a lock with what they read.
fn digest(token: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The ledger's record of a lock just granted or renewed.
fn granted(tenant: &str, info: &LockInfo) -> Pending {
    let held = LiveLock { tenant: tenant.to_owned(), fencing_token: info.fencing_token, owner: info.owner.clone(), until_ms: info.expires_at_ms() };
    Pending::Write(Arc::new(Granted(held)))
}

fn mark_of(lock: Option<&LockInfo>) -> TrainingMark {
    TrainingMark { enabled: Some(lock.is_some()), fencing_token: lock.map(|l| l.fencing_token), source: "lock_store" }
}
