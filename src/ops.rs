//! Operations endpoints: `/healthz` (the process is up), `/readyz` (each
//! dependency answers), `/metrics` (Prometheus), `/openapi.json` and the JSON 404.

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::db::Database;
use crate::error::{ApiError, Code};
use crate::events::EventPublisher;
use crate::slm::ModelClient;
use crate::telemetry::Metrics;

/// What readiness checks.
pub struct Dependencies {
    pub database: Database,
    pub model: Arc<dyn ModelClient>,
    /// `None` in embedded mode (no broker configured).
    pub broker: Option<Arc<dyn EventPublisher>>,
    /// `None` when training locks are held in process.
    #[cfg(feature = "redis")]
    pub redis: Option<Arc<crate::training::RedisLockStore>>,
    #[cfg(not(feature = "redis"))]
    pub redis: Option<()>,
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/openapi.json", web::get().to(openapi));
}

/// The API description, kept beside the code in `docs/openapi.json`.
async fn openapi() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(include_str!("../docs/openapi.json"))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

async fn readyz(deps: web::Data<Dependencies>) -> HttpResponse {
    let broker_check = async {
        match &deps.broker {
            None => None,
            Some(broker) => Some(broker.ready().await.map_err(|e| e.to_string())),
        }
    };
    let redis_check = async {
        #[cfg(feature = "redis")]
        if let Some(redis) = &deps.redis {
            return Some(redis.ping().await.map_err(|e| e.to_string()));
        }
        None
    };
    let (db, model, broker, redis) = tokio::join!(deps.database.ping(), deps.model.ready(), broker_check, redis_check);
    let check = |r: Result<(), String>| match r {
        Ok(()) => json!({ "status": "up" }),
        Err(e) => json!({ "status": "down", "error": e }),
    };
    // The broker and Redis are reported but do not gate readiness: chat works while it is down
    // (events wait in the outbox).
    let ready = db.is_ok() && model.is_ok();
    let broker = match broker {
        None => {
            json!({ "status": "disabled", "detail": "no brokers configured; events stay in the outbox" })
        }
        Some(result) => check(result),
    };
    let redis = match redis {
        None => json!({ "status": "disabled", "detail": "training locks are held in process" }),
        Some(result) => check(result),
    };
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": {
            "redis": redis,
            "database": check(db.map_err(|e| e.to_string())),
            "model": check(model.map_err(|e| crate::error::error_chain(&e))),
            "broker": broker,
        }
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn metrics(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok().content_type("application/openmetrics-text; version=1.0.0; charset=utf-8").body(metrics.encode())
}

/// Unknown paths and methods.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(Code::NotFound, "no such endpoint"))
}
