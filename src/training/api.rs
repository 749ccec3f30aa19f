//! `/v1/training/*`: enable, renew, disable (capability `training:admin`) and
//! status (`training:admin` or `chat`). The tenant is always the caller's own.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use super::lock::LockInfo;
use super::service::{Actor, TrainingService};
use crate::db::rfc3339;
use crate::error::{ApiError, Code};
use crate::events::Via;
use crate::identity::{Caller, Capability};
use crate::web::trace_of;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/training/enable", web::post().to(enable))
        .route("/v1/training/renew", web::post().to(renew))
        .route("/v1/training/disable", web::post().to(disable))
        .route("/v1/training/status", web::get().to(status));
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnableBody {
    /// How long the lock holds unless renewed (clamped to `training.max_ttl`).
    #[schema(minimum = 1)]
    ttl_seconds: u64,
    /// Why, for the audit record.
    #[schema(min_length = 1, max_length = 500)]
    reason: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RenewBody {
    /// The token `enable` returned.
    lock_token: String,
    #[schema(minimum = 1)]
    ttl_seconds: u64,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DisableBody {
    /// The token `enable` returned.
    lock_token: String,
}

/// The tenant's training state.
#[derive(Serialize, utoipa::ToSchema)]
struct TrainingState<'a> {
    /// `enabled` or `disabled`.
    state: &'static str,
    /// Who holds (or held) the lock.
    owner: Option<&'a str>,
    /// Grows with every lock granted, never goes back.
    fencing_token: Option<u64>,
    expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    /// The holder's token, shown once, by `enable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    lock_token: Option<&'a str>,
}

impl<'a> TrainingState<'a> {
    fn enabled(lock: &'a LockInfo) -> Self {
        Self {
            state: "enabled",
            owner: Some(&lock.owner),
            fencing_token: Some(lock.fencing_token),
            expires_at: Some(rfc3339(lock.expires_at_ms())),
            ttl_seconds: Some(lock.ttl_ms as f64 / 1000.0),
            reason: Some(&lock.reason),
            lock_token: None,
        }
    }

    fn disabled(lock: Option<&'a LockInfo>) -> Self {
        Self {
            state: "disabled",
            owner: lock.map(|l| l.owner.as_str()),
            fencing_token: lock.map(|l| l.fencing_token),
            expires_at: None,
            ttl_seconds: None,
            reason: None,
            lock_token: None,
        }
    }
}

/// Checks `training:admin`, auditing a refusal as `training.denied`.
async fn admin(caller: &Caller, req: &HttpRequest, service: &TrainingService, what: &str) -> Result<(), ApiError> {
    if let Err(err) = caller.require(Capability::TrainingAdmin) {
        let trace = trace_of(req);
        let actor = Actor { tenant: caller.tenant.as_str(), key_id: &caller.key_id, trace: &trace, via: Via::Api };
        service.deny(&actor, &format!("{what} without the training:admin capability")).await?;
        return Err(err.into());
    }
    Ok(())
}

fn ttl(service: &TrainingService, seconds: u64) -> Result<std::time::Duration, ApiError> {
    if seconds == 0 {
        return Err(ApiError::new(Code::InvalidRequest, "ttl_seconds must be at least 1"));
    }
    Ok(service.clamp(seconds))
}

/// Take the tenant's training lock (training:admin)
#[utoipa::path(post, path = "/v1/training/enable", tag = "training", request_body = EnableBody, security(("bearer" = [])),
    responses(
        (status = 200, description = "the lock, with its token (shown once)", body = TrainingState),
        crate::responses::KeyErrors,
        crate::responses::BodyErrors,
        (status = 403, response = crate::responses::Problem),
        (status = 409, response = crate::responses::Problem),
        (status = 503, response = crate::responses::Problem),
    ))]
pub(crate) async fn enable(
    req: HttpRequest,
    caller: Caller,
    body: web::Json<EnableBody>,
    service: web::Data<TrainingService>,
) -> Result<HttpResponse, ApiError> {
    admin(&caller, &req, &service, "enable").await?;
    let reason = body.reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err(ApiError::new(Code::InvalidRequest, "reason must be 1-500 characters"));
    }
    let ttl = ttl(&service, body.ttl_seconds)?;
    let trace = trace_of(&req);
    let lock = service.enable(&Actor { tenant: caller.tenant.as_str(), key_id: &caller.key_id, trace: &trace, via: Via::Api }, ttl, reason).await?;
    Ok(HttpResponse::Ok().json(TrainingState { lock_token: Some(&lock.token), ..TrainingState::enabled(&lock) }))
}

/// Extend the lock (holder's token)
#[utoipa::path(post, path = "/v1/training/renew", tag = "training", request_body = RenewBody, security(("bearer" = [])),
    responses(
        (status = 200, description = "the lock", body = TrainingState),
        crate::responses::KeyErrors,
        crate::responses::BodyErrors,
        (status = 403, response = crate::responses::Problem),
        (status = 409, response = crate::responses::Problem),
        (status = 503, response = crate::responses::Problem),
    ))]
pub(crate) async fn renew(req: HttpRequest, caller: Caller, body: web::Json<RenewBody>, service: web::Data<TrainingService>) -> Result<HttpResponse, ApiError> {
    admin(&caller, &req, &service, "renew").await?;
    let ttl = ttl(&service, body.ttl_seconds)?;
    let trace = trace_of(&req);
    let lock = service.renew(&Actor { tenant: caller.tenant.as_str(), key_id: &caller.key_id, trace: &trace, via: Via::Api }, &body.lock_token, ttl).await?;
    Ok(HttpResponse::Ok().json(TrainingState::enabled(&lock)))
}

/// Release the lock (holder's token)
#[utoipa::path(post, path = "/v1/training/disable", tag = "training", request_body = DisableBody, security(("bearer" = [])),
    responses(
        (status = 200, description = "disabled", body = TrainingState),
        crate::responses::KeyErrors,
        crate::responses::BodyErrors,
        (status = 403, response = crate::responses::Problem),
        (status = 409, response = crate::responses::Problem),
        (status = 503, response = crate::responses::Problem),
    ))]
pub(crate) async fn disable(
    req: HttpRequest,
    caller: Caller,
    body: web::Json<DisableBody>,
    service: web::Data<TrainingService>,
) -> Result<HttpResponse, ApiError> {
    admin(&caller, &req, &service, "disable").await?;
    let trace = trace_of(&req);
    let lock = service.disable(&Actor { tenant: caller.tenant.as_str(), key_id: &caller.key_id, trace: &trace, via: Via::Api }, &body.lock_token).await?;
    Ok(HttpResponse::Ok().json(TrainingState::disabled(Some(&lock))))
}

/// The tenant's training state (training:admin or chat)
#[utoipa::path(get, path = "/v1/training/status", tag = "training", security(("bearer" = [])),
    responses(
        (status = 200, description = "state", body = TrainingState),
        crate::responses::KeyErrors,
        (status = 403, response = crate::responses::Problem),
        (status = 503, response = crate::responses::Problem),
    ))]
pub(crate) async fn status(caller: Caller, service: web::Data<TrainingService>) -> Result<HttpResponse, ApiError> {
    if caller.require(Capability::TrainingAdmin).is_err() {
        caller.require(Capability::Chat)?;
    }
    let lock = service.status(caller.tenant.as_str()).await?;
    Ok(HttpResponse::Ok().json(lock.as_ref().map_or(TrainingState::disabled(None), TrainingState::enabled)))
}
