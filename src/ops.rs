//! Operations endpoints: `/healthz` (the process is up), `/readyz` (each
//! dependency answers), `/metrics` (Prometheus) and the JSON 404.

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
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics));
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
    let (db, model, broker) = tokio::join!(deps.database.ping(), deps.model.ready(), broker_check);
    let check = |r: Result<(), String>| match r {
        Ok(()) => json!({ "status": "up" }),
        Err(e) => json!({ "status": "down", "error": e }),
    };
    // The broker is reported but does not gate readiness: chat works while it is down
    // (events wait in the outbox).
    let ready = db.is_ok() && model.is_ok();
    let broker = match broker {
        None => json!({ "status": "disabled", "detail": "no brokers configured; events stay in the outbox" }),
        Some(result) => check(result),
    };
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": {
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
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(metrics.encode())
}

/// Unknown paths and methods.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(Code::NotFound, "no such endpoint"))
}
