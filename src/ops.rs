//! Operations endpoints: `/healthz` (the process is up), `/readyz` (each
//! dependency answers, from [`Readiness`]), `/metrics` (Prometheus), `/openapi.json` and the JSON 404.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use crate::error::{ApiError, Code};
use crate::identity::{bearer, Caller, Capability, KeyCache};
use crate::readiness::Readiness;
use crate::telemetry::Metrics;

/// Who may read the operations endpoints.
#[derive(Debug, Clone, Copy)]
pub struct OpsAccess {
    /// `/metrics` only for a key with capability `ops` (`server.metrics_require_ops`).
    pub metrics_require_ops: bool,
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

/// Fails unless the request carries a key with capability `ops`.
async fn require_ops(req: &HttpRequest, keys: &KeyCache) -> Result<(), ApiError> {
    let key = bearer(req).ok_or_else(|| ApiError::new(Code::Unauthenticated, "this endpoint needs a key with capability ops"))?;
    Caller::from_key(keys, &key).await?.require(Capability::Ops)?;
    Ok(())
}

/// The last background readiness report: each dependency's status for
/// anyone, and why one is down for a key with capability `ops`.
async fn readyz(req: HttpRequest, readiness: web::Data<Readiness>, keys: web::Data<KeyCache>) -> Result<HttpResponse, ApiError> {
    let report = readiness.current();
    let body = if bearer(&req).is_some() {
        require_ops(&req, &keys).await?;
        (*report).clone()
    } else {
        report.summary()
    };
    let mut response = if report.ready() { HttpResponse::Ok() } else { HttpResponse::ServiceUnavailable() };
    Ok(response.json(body))
}

async fn metrics(req: HttpRequest, metrics: web::Data<Metrics>, access: web::Data<OpsAccess>, keys: web::Data<KeyCache>) -> Result<HttpResponse, ApiError> {
    if access.metrics_require_ops {
        require_ops(&req, &keys).await?;
    }
    Ok(HttpResponse::Ok().content_type("application/openmetrics-text; version=1.0.0; charset=utf-8").body(metrics.encode()))
}

/// Unknown paths and methods.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(Code::NotFound, "no such endpoint"))
}
