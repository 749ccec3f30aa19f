//! The expiry watcher: every `training.expiry_check_ms` it claims lapsed locks
//! (each lapse goes to exactly one instance, see `LockStore::claim_expired`),
//! audits them as `training.expired`, and refreshes the
//! `training_mode_state{tenant}` gauge from the lock store — so every
//! instance reports the same state, not a local flag.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::lock::LockInfo;
use super::service::{Actor, TrainingService};
use crate::telemetry::{Metrics, TraceContext};

pub async fn watch(service: Arc<TrainingService>, metrics: Arc<Metrics>, every: Duration, cancel: CancellationToken) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        match service.store().claim_expired().await {
            Ok(expired) => {
                for lapse in expired {
                    let trace = TraceContext::new_root();
                    let actor = Actor { tenant: &lapse.tenant, key_id: "steward:expiry-watcher", trace: &trace };
                    let lock = LockInfo {
                        token: String::new(),
                        owner: lapse.owner.clone(),
                        reason: lapse.reason.clone(),
                        fencing_token: lapse.fencing_token,
                        ttl_ms: 0,
                    };
                    if let Err(err) = service.transition(&actor, "expired", Some(&lock), &lapse.reason).await {
                        tracing::error!(tenant = %lapse.tenant, error = %err, "could not audit a lapsed training lock");
                    }
                }
            }
            Err(err) => {
                metrics.lock_store_failure();
                tracing::debug!(error = %err, "expiry check skipped: lock store unavailable")
            }
        }
        refresh_gauges(&service, &metrics).await;
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
