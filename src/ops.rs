//! Operations endpoints: `/healthz` (the process is up), `/readyz` (each
//! dependency answers, from [`Readiness`]), `/metrics` (Prometheus),
//! and the JSON 404 (`/openapi.json` is [`crate::openapi`]'s).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use crate::error::{ApiError, Code};
use crate::identity::{bearer, Authenticator, Capability};
use crate::readiness::Readiness;
use crate::telemetry::Metrics;

/// Who may read the operations endpoints.
#[derive(Debug, Clone, Copy)]
pub struct OpsAccess {
    /// `/metrics` only for a key with capability `ops` (`server.metrics_require_ops`).
    pub metrics_require_ops: bool,
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz)).route("/readyz", web::get().to(readyz)).route("/metrics", web::get().to(metrics));
}

/// `/healthz`'s answer.
#[derive(Serialize, utoipa::ToSchema)]
struct Health {
    /// `ok`
    status: &'static str,
}

/// The process is up
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "ok", body = Health)))]
pub(crate) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// Fails unless the request carries a key with capability `ops`.
async fn require_ops(req: &HttpRequest, auth: &Authenticator) -> Result<(), ApiError> {
    let key = bearer(req).ok_or_else(|| ApiError::new(Code::Unauthenticated, "this endpoint needs a key with capability ops"))?;
    auth.authenticate(auth.client_of(req), Some(&key)).await?.require(Capability::Ops)?;
    Ok(())
}

/// Each dependency: database, model, broker, redis
///
/// The last background readiness report: each dependency's status for anyone, and why one is
/// down for a key with capability `ops` (a key without it is refused).
#[utoipa::path(get, path = "/readyz", tag = "operations", security((), ("bearer" = [])),
    responses(
        (status = 200, description = "ready", body = crate::readiness::Report),
        crate::responses::KeyErrors,
        (status = 403, response = crate::responses::Problem),
        (status = 503, description = "not ready: the database or the model does not answer", body = crate::readiness::Report),
    ))]
pub(crate) async fn readyz(req: HttpRequest, readiness: web::Data<Readiness>, auth: web::Data<Authenticator>) -> Result<HttpResponse, ApiError> {
    let report = readiness.current();
    let body = if bearer(&req).is_some() {
        require_ops(&req, &auth).await?;
        (*report).clone()
    } else {
        report.summary()
    };
    let mut response = if report.ready() { HttpResponse::Ok() } else { HttpResponse::ServiceUnavailable() };
    Ok(response.json(body))
}

/// Prometheus metrics (OpenMetrics text); behind capability `ops` with `server.metrics_require_ops`
#[utoipa::path(get, path = "/metrics", tag = "operations", security((), ("bearer" = [])),
    responses(
        (status = 200, description = "OpenMetrics text", body = String, content_type = "application/openmetrics-text"),
        crate::responses::KeyErrors,
        (status = 403, response = crate::responses::Problem),
    ))]
pub(crate) async fn metrics(
    req: HttpRequest,
    metrics: web::Data<Metrics>,
    access: web::Data<OpsAccess>,
    auth: web::Data<Authenticator>,
) -> Result<HttpResponse, ApiError> {
    if access.metrics_require_ops {
        require_ops(&req, &auth).await?;
    }
    Ok(HttpResponse::Ok().content_type("application/openmetrics-text; version=1.0.0; charset=utf-8").body(metrics.encode()))
}

/// Unknown paths and methods.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(Code::NotFound, "no such endpoint"))
}
