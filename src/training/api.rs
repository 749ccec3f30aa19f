//! `/v1/training/*`: enable, renew, disable (capability `training:admin`) and
//! status (`training:admin` or `chat`). The tenant is always the caller's own.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::lock::LockInfo;
use super::service::{Actor, TrainingService};
use crate::db::rfc3339;
use crate::error::{ApiError, Code};
use crate::identity::{Caller, Capability};
use crate::web::trace_of;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/training/enable", web::post().to(enable))
        .route("/v1/training/renew", web::post().to(renew))
        .route("/v1/training/disable", web::post().to(disable))
        .route("/v1/training/status", web::get().to(status));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnableBody {
    ttl_seconds: u64,
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewBody {
    lock_token: String,
    ttl_seconds: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisableBody {
    lock_token: String,
}

/// Checks `training:admin`, auditing a refusal as `training.denied`.
async fn admin(caller: &Caller, req: &HttpRequest, service: &TrainingService, what: &str) -> Result<(), ApiError> {
    if let Err(err) = caller.require(Capability::TrainingAdmin) {
        let trace = trace_of(req);
        let actor = Actor { tenant: caller.tenant.as_str(), key_id: &caller.key_id, trace: &trace };
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

fn lock_json(state: &str, lock: &LockInfo) -> serde_json::Value {
    json!({
        "state": state,
        "owner": lock.owner,
        "fencing_token": lock.fencing_token,
        "expires_at": rfc3339(lock.expires_at_ms()),
        "ttl_seconds": lock.ttl_ms as f64 / 1000.0,
        "reason": lock.reason,
    })
}

async fn enable(req: HttpRequest, caller: Caller, body: web::Json<EnableBody>, service: web::Data<TrainingService>) -> Result<HttpResponse, ApiError> {
    admin(&caller, &req, &service, "enable").await?;
    let reason = body.reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err(ApiError::new(Code::InvalidRequest, "reason must be 1-500 characters"));
    }
    let ttl = ttl(&service, body.ttl_seconds)?;
    let trace = trace_of(&req);
    let lock = service.enable(&Actor { tenant: caller.tenant.as_str(), key_id: &caller.key_id, trace: &trace }, ttl, reason).await?;
    let mut body = lock_json("enabled", &lock);
    body["lock_token"] = json!(lock.token);
    Ok(HttpResponse::Ok().json(body))
}

async fn renew(req: HttpRequest, caller: Caller, body: web::Json<RenewBody>, service: web::Data<TrainingService>) -> Result<HttpResponse, ApiError> {
    admin(&caller, &req, &service, "renew").await?;
    let ttl = ttl(&service, body.ttl_seconds)?;
    let trace = trace_of(&req);
    let lock = service.renew(&Actor { tenant: caller.tenant.as_str(), key_id: &caller.key_id, trace: &trace }, &body.lock_token, ttl).await?;
    Ok(HttpResponse::Ok().json(lock_json("enabled", &lock)))
}

async fn disable(req: HttpRequest, caller: Caller, body: web::Json<DisableBody>, service: web::Data<TrainingService>) -> Result<HttpResponse, ApiError> {
    admin(&caller, &req, &service, "disable").await?;
    let trace = trace_of(&req);
    let lock = service.disable(&Actor { tenant: caller.tenant.as_str(), key_id: &caller.key_id, trace: &trace }, &body.lock_token).await?;
    Ok(HttpResponse::Ok().json(json!({ "state": "disabled", "owner": lock.owner, "fencing_token": lock.fencing_token })))
}

async fn status(caller: Caller, service: web::Data<TrainingService>) -> Result<HttpResponse, ApiError> {
    if caller.require(Capability::TrainingAdmin).is_err() {
        caller.require(Capability::Chat)?;
    }
    let body = match service.status(caller.tenant.as_str()).await? {
        Some(lock) => lock_json("enabled", &lock),
        None => {
            json!({ "state": "disabled", "owner": null, "fencing_token": null, "expires_at": null })
        }
    };
    Ok(HttpResponse::Ok().json(body))
}
