//! Training: the tenant's lock (owner, fencing token, expiry counting down),
//! enable, renew and disable by the API's rules (the holder's token renews
//! and releases; it is shown once, at enable), and the tenant's recent
//! `training.audit` records; for `ops`, every tenant's lock. Every change is
//! audited `via: console` with the key's id.

use actix_web::{web, HttpRequest, HttpResponse};
use maud::{html, Markup};
use serde::Deserialize;

use super::layout;
use super::viewer::{ConsoleError, Viewer};
use super::Console;
use crate::error::ApiError;
use crate::identity::Capability;
use crate::training::{Actor, TrainingService, Via};

/// Who sees the page: the tenant's admins, and `ops` (every tenant's lock, read-only).
const VIEWERS: [Capability; 2] = [Capability::TrainingAdmin, Capability::Ops];

/// `GET /console/training`
pub async fn page(viewer: Viewer, console: web::Data<Console>, service: web::Data<TrainingService>) -> Result<HttpResponse, ConsoleError> {
    viewer.require_any(&VIEWERS)?;
    render(&viewer, &console, &service, None).await
}

async fn render(viewer: &Viewer, console: &Console, service: &TrainingService, outcome: Option<Markup>) -> Result<HttpResponse, ConsoleError> {
    let tenant = viewer.caller.tenant.as_str();
    let lock = service.status(tenant).await;
    let records = console.audit_records(&console.topics.training, 20, |r| r["tenant"] == tenant).await?;
    let csrf = &viewer.csrf;
    // For ops, every tenant that has a key, with its lock.
    let mut locks = Vec::new();
    if viewer.can(Capability::Ops) {
        // The lock store is asked for every tenant at once, not one after another.
        let tenants = console.tenants().await?;
        let states = futures_util::future::join_all(tenants.iter().map(|t| service.status(t))).await;
        locks = tenants.into_iter().zip(states).map(|(tenant, state)| (tenant, state.ok().flatten())).collect();
    }
    let body = html! {
        @if let Some(outcome) = outcome { (outcome) }
        @if viewer.can(Capability::Ops) {
            h2 { "Every tenant's lock" }
            table {
                thead { tr { th { "Tenant" } th { "Training mode" } th { "Owner" } th { "Fencing token" } th { "Expires in" } } }
                tbody { @for (tenant, lock) in &locks { tr {
                    td { (tenant) }
                    @match lock {
                        Some(lock) => { td.warn { "on" } td { (lock.owner) } td { (lock.fencing_token) } td { span data-countdown=(lock.ttl_ms / 1000) { (lock.ttl_ms / 1000) } " s" } }
                        None => { td.allow { "off" } td {} td {} td {} }
                    }
                } } }
            }
        }
        @if viewer.can(Capability::TrainingAdmin) {
        h2 { "Tenant " (tenant) }
        @match &lock {
            Ok(Some(lock)) => {
                p { "Training mode is " strong.warn { "on" } ": this tenant's conversations are captured for training." }
                table {
                    tr { th { "Owner" } td { (lock.owner) } }
                    tr { th { "Fencing token" } td { (lock.fencing_token) } }
                    tr { th { "Expires" } td { (crate::db::rfc3339(lock.expires_at_ms())) " (in " span data-countdown=(lock.ttl_ms / 1000) { (lock.ttl_ms / 1000) } " s)" } }
                    tr { th { "Reason" } td { (lock.reason) } }
                }
            }
            Ok(None) => p { "Training mode is " strong.allow { "off" } "." },
            Err(err) => div.notice { "The training state cannot be read: " (crate::error::ErrorCode::code(err).name()) },
        }
        div.cards {
            form.card method="post" action="/console/training/enable" {
                h3 { "Enable" }
                input type="hidden" name="csrf" value=(csrf);
                label { "Reason" input name="reason" required maxlength="500"; }
                label { "For (seconds)" input name="ttl_seconds" type="number" min="1" value="3600"; }
                button.primary type="submit" { "Enable training mode" }
            }
            form.card method="post" action="/console/training/renew" {
                h3 { "Renew" }
                input type="hidden" name="csrf" value=(csrf);
                label { "Lock token" input name="lock_token" type="password" autocomplete="off" required; }
                label { "For (seconds)" input name="ttl_seconds" type="number" min="1" value="3600"; }
                button.primary type="submit" { "Renew" }
            }
            form.card method="post" action="/console/training/disable" {
                h3 { "Disable" }
                input type="hidden" name="csrf" value=(csrf);
                label { "Lock token" input name="lock_token" type="password" autocomplete="off" required; }
                button.primary type="submit" { "Disable training mode" }
            }
        }
        h2 { "Recent training.audit records" }
        table {
            thead { tr { th { "When" } th { "Type" } th { "Actor" } th { "Via" } th { "Fencing token" } th { "Reason" } } }
            tbody { @for r in &records { tr {
                td.mono { (r["occurred_at"].as_str().unwrap_or_default()) }
                td.mono { (r["type"].as_str().unwrap_or_default()) }
                td.mono { (r["actor"].as_str().unwrap_or_default()) }
                td { (r["via"].as_str().unwrap_or("api")) }
                td { (r["fencing_token"]) }
                td { (r["reason"].as_str().unwrap_or_default()) }
            } } }
        }
        }
    };
    Ok(layout::page(viewer, "training", "Training mode", body))
}

#[derive(Deserialize)]
pub struct Change {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    lock_token: String,
    ttl_seconds: Option<u64>,
}

/// `POST /console/training/{action}`: enable, renew or disable, as the API does.
pub async fn change(
    req: HttpRequest,
    viewer: Viewer,
    action: web::Path<String>,
    form: web::Form<Change>,
    console: web::Data<Console>,
    service: web::Data<TrainingService>,
) -> Result<HttpResponse, ConsoleError> {
    viewer.check_csrf(&form.csrf)?;
    let trace = crate::web::trace_of(&req);
    let actor = Actor { tenant: viewer.caller.tenant.as_str(), key_id: &viewer.caller.key_id, trace: &trace, via: Via::Console };
    if !viewer.can(Capability::TrainingAdmin) {
        // Refused as the API refuses it: recorded as training.denied.
        let _ = service.deny(&actor, &format!("{action} from the console without the training:admin capability")).await;
        return Err(ConsoleError::Forbidden(Capability::TrainingAdmin.as_str().into()));
    }
    let ttl = service.clamp(form.ttl_seconds.unwrap_or(0).max(1));
    let done = match action.as_str() {
        "enable" => {
            let reason = form.reason.trim();
            if reason.is_empty() || reason.chars().count() > 500 {
                Err("the reason must be 1-500 characters".to_owned())
            } else {
                service
                    .enable(&actor, ttl, reason)
                    .await
                    .map(|lock| html! { div.card { p { "Training mode is on. The lock's token, shown this once — keep it to renew or disable:" } p.mono { (lock.token) } } })
                    .map_err(said)
            }
        }
        "renew" => service.renew(&actor, form.lock_token.trim(), ttl).await.map(|_| html! { p.allow { "Renewed." } }).map_err(said),
        "disable" => service.disable(&actor, form.lock_token.trim()).await.map(|_| html! { p.allow { "Training mode is off." } }).map_err(said),
        _ => return Err(ConsoleError::NotFound("action")),
    };
    let outcome = done.unwrap_or_else(|problem| html! { div.notice role="alert" { (problem) } });
    render(&viewer, &console, &service, Some(outcome)).await
}

/// What a refused change says: the API's message for the caller's errors, the code alone for the server's.
fn said(err: crate::training::TrainingError) -> String {
    ApiError::from(err).body().message
}
