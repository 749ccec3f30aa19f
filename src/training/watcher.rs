//! The lock watcher: every `training.expiry_check` it claims lapsed locks
//! (each lapse goes to exactly one instance, see `LockStore::claim_expired`),
//! audits them as `training.expired`; finds locks the ledger holds that the
//! lock store lost (seen gone on two checks in a row), and audits them as
//! `training.lost` (or `training.expired`, past their TTL); and refreshes the
//! `training_mode_state{tenant}` gauge from the lock store — so every
//! instance reports the same state, not a local flag.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::fencing::LiveLock;
use super::lock::LockInfo;
use super::service::{Actor, TrainingService};
use crate::events::Via;
use crate::telemetry::{Metrics, TraceContext};

pub async fn watch(service: Arc<TrainingService>, metrics: Arc<Metrics>, every: Duration, cancel: CancellationToken) {
    // Locks seen gone at the last check: claimed only when still gone at the next, so a
    // release between the store and its ledger record is not taken for a loss.
    let mut gone = HashSet::new();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        match service.store().claim_expired().await {
            Ok(expired) => {
                for lapse in expired {
                    let trace = TraceContext::new_root();
                    let actor = Actor { tenant: &lapse.tenant, key_id: "steward:expiry-watcher", trace: &trace, via: Via::Steward };
                    let lock = LockInfo {
                        token: String::new(),
                        owner: lapse.owner.clone(),
                        reason: lapse.reason.clone(),
                        fencing_token: lapse.fencing_token,
                        ttl_ms: 0,
                    };
                    if let Err(err) = service.expired(&actor, &lock).await {
                        tracing::error!(tenant = %lapse.tenant, error = %err, "could not audit a lapsed training lock");
                    }
                }
            }
            Err(err) => {
                metrics.lock_store_failure();
                tracing::debug!(error = %err, "expiry check skipped: lock store unavailable")
            }
        }
        gone = find_vanished(&service, every, gone).await;
        refresh_gauges(&service, &metrics).await;
    }
}

/// Locks the ledger holds and the lock store does not; those already gone
/// at the last check are audited. A lock near the end of its TTL (either
/// side, as Steward's and the store's clocks may differ) is left to the
/// store's expiry claim for a while first.
async fn find_vanished(service: &TrainingService, every: Duration, before: HashSet<(String, u64)>) -> HashSet<(String, u64)> {
    let grace_ms = (every * 10).max(Duration::from_secs(5)).as_millis() as i64;
    let Ok(held) = service.ledger().held().await else { return before };
    let mut gone = HashSet::new();
    for lock in held {
        let now = crate::db::now_ms();
        if lock.until_ms - grace_ms < now && now < lock.until_ms + grace_ms {
            continue;
        }
        match service.store().status(&lock.tenant).await {
            Ok(Some(live)) if live.fencing_token == lock.fencing_token => {}
            Ok(_) => {
                let key = (lock.tenant.clone(), lock.fencing_token);
                if before.contains(&key) {
                    audit_vanished(service, &lock).await;
                } else {
                    gone.insert(key);
                }
            }
            // The store cannot be read: nothing can be said of its locks.
            Err(_) => return before,
        }
    }
    gone
}

async fn audit_vanished(service: &TrainingService, lock: &LiveLock) {
    let trace = TraceContext::new_root();
    let actor = Actor { tenant: &lock.tenant, key_id: "steward:lock-watcher", trace: &trace, via: Via::Steward };
    match service.vanished(&actor, lock).await {
        Ok(true) => tracing::warn!(tenant = %lock.tenant, fencing_token = lock.fencing_token, "a training lock vanished from the lock store; audited"),
        Ok(false) => {}
        Err(err) => tracing::error!(tenant = %lock.tenant, error = %err, "could not audit a vanished training lock"),
    }
}

async fn refresh_gauges(service: &TrainingService, metrics: &Metrics) {
    let Ok(tenants) = service.store().tenants().await else {
        return;
    };
    for tenant in tenants {
        match service.store().status(&tenant).await {
            Ok(lock) => metrics.training_state(&tenant, Some(lock.is_some())),
            // Unreadable: drop the series rather than report a state we could not read.
            Err(_) => metrics.training_state(&tenant, None),
        }
    }
}
