//! Operations endpoints: `/healthz` (the process is up), `/readyz` (each
//! dependency answers), `/metrics` (Prometheus) and the JSON 404.

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::db::Database;
use crate::error::{ApiError, Code};
use crate::slm::ModelClient;
use crate::telemetry::Metrics;

/// What readiness checks.
pub struct Dependencies {
    pub database: Database,
    pub model: Arc<dyn ModelClient>,
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
    let (db, model) = tokio::join!(deps.database.ping(), deps.model.ready());
    let check = |r: Result<(), String>| match r {
        Ok(()) => json!({ "status": "up" }),
        Err(e) => json!({ "status": "down", "error": e }),
    };
    let ready = db.is_ok() && model.is_ok();
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": {
            "database": check(db.map_err(|e| e.to_string())),
            "model": check(model.map_err(|e| crate::error::error_chain(&e))),
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
