//! Readiness, checked in the background: every `server.readiness_refresh`
//! one task asks each dependency (database, model, broker, Redis) with the
//! clients Steward already holds, and `/readyz` serves the last report — a
//! flood of probes costs nothing and builds no client. The report anyone may
//! read names each dependency and its status; why one is down (which can
//! carry internal addresses) is only for a key with capability `ops`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::db::Database;
use crate::events::EventPublisher;
use crate::slm::Router;

/// What readiness checks.
pub struct Dependencies {
    pub database: Database,
    /// The model servers, each checked (the model is up while any is).
    pub model: Arc<Router>,
    /// `None` in embedded mode (no broker configured).
    pub broker: Option<Arc<dyn EventPublisher>>,
    /// `None` when training locks are held in process.
    #[cfg(feature = "redis")]
    pub redis: Option<Arc<crate::training::RedisLockStore>>,
    #[cfg(not(feature = "redis"))]
    pub redis: Option<()>,
}

/// One dependency's state.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Check {
    /// `up`, `down` or `disabled`.
    pub status: &'static str,
    /// Why it is down or disabled (details only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The last readiness report.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Report {
    /// `ready` when the database and the model answer (the broker and Redis
    /// are reported but do not gate readiness: chat works while they are down).
    pub status: &'static str,
    /// When the checks ran, in Unix ms.
    pub checked_at_ms: i64,
    pub checks: BTreeMap<&'static str, Check>,
}

impl Report {
    pub fn ready(&self) -> bool {
        self.status == "ready"
    }

    /// The report without the reasons, for callers without `ops`.
    pub fn summary(&self) -> Self {
        let checks = self.checks.iter().map(|(name, check)| (*name, Check { status: check.status, detail: None })).collect();
        Self { checks, ..self.clone() }
    }
}

pub struct Readiness {
    deps: Dependencies,
    last: RwLock<Arc<Report>>,
}

impl Readiness {
    /// Runs the checks once (at most `every` long) and then every `every` until `cancel`.
    pub async fn start(deps: Dependencies, every: Duration, cancel: &CancellationToken, tasks: &TaskTracker) -> Arc<Self> {
        let pending = Report { status: "not_ready", checked_at_ms: 0, checks: BTreeMap::new() };
        let readiness = Arc::new(Self { deps, last: RwLock::new(Arc::new(pending)) });
        let _ = tokio::time::timeout(every, readiness.refresh()).await;
        let (this, cancel) = (readiness.clone(), cancel.clone());
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
                this.refresh().await;
            }
        });
        readiness
    }

    /// The last report.
    pub fn current(&self) -> Arc<Report> {
        self.last.read().map(|r| r.clone()).unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    async fn refresh(&self) {
        let report = Arc::new(self.check().await);
        match self.last.write() {
            Ok(mut last) => *last = report,
            Err(poisoned) => *poisoned.into_inner() = report,
        }
    }

    async fn check(&self) -> Report {
        let deps = &self.deps;
        let broker = async {
            match &deps.broker {
                None => None,
                Some(broker) => Some(broker.ready().await.map_err(|e| e.to_string())),
            }
        };
        let redis = async {
            #[cfg(feature = "redis")]
            if let Some(redis) = &deps.redis {
                return Some(redis.ping().await.map_err(|e| e.to_string()));
            }
            None
        };
        let (database, upstreams, broker, redis) = tokio::join!(deps.database.ping(), deps.model.checks(), broker, redis);
        let model_up = upstreams.iter().any(|(_, result)| result.is_ok());
        let ready = database.is_ok() && model_up;
        let checks = BTreeMap::from([
            ("database", check(database.map_err(|e| e.to_string()))),
            ("model", model_check(model_up, &upstreams)),
            ("broker", broker.map_or_else(|| disabled("no brokers configured; events stay in the outbox"), check)),
            ("redis", redis.map_or_else(|| disabled("training locks are held in process"), check)),
        ]);
        Report { status: if ready { "ready" } else { "not_ready" }, checked_at_ms: crate::db::now_ms(), checks }
    }
}

/// Up while any model server answers; the detail names each with its circuit.
fn model_check(up: bool, upstreams: &[(crate::slm::UpstreamHealth, Result<(), crate::slm::SlmError>)]) -> Check {
    let detail = upstreams
        .iter()
        .map(|(health, result)| {
            let answers = match result {
                Ok(()) => "up".to_owned(),
                Err(err) => format!("down ({})", crate::error::error_chain(err)),
            };
            format!("{}: {answers}, circuit {}, {} under way", health.name, health.state.as_str(), health.outstanding)
        })
        .collect::<Vec<_>>()
        .join("; ");
    Check { status: if up { "up" } else { "down" }, detail: Some(detail) }
}

fn check(result: Result<(), String>) -> Check {
    match result {
        Ok(()) => Check { status: "up", detail: None },
        Err(e) => Check { status: "down", detail: Some(e) },
    }
}

fn disabled(why: &str) -> Check {
    Check { status: "disabled", detail: Some(why.to_owned()) }
}
