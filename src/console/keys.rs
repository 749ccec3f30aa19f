//! Keys (capability `ops`): every tenant's API keys with their capabilities,
//! a new key (its secret shown once, never stored), and revocation.

use actix_web::{web, HttpResponse};
use maud::{html, Markup};
use serde::Deserialize;

use super::layout;
use super::viewer::{ConsoleError, Viewer};
use super::Console;
use crate::identity::{Capability, KeyStore, TenantId};

const OPERATORS: [Capability; 1] = [Capability::Ops];

/// The capabilities a key may be given here, in the order they are offered.
const OFFERED: [Capability; 7] =
    [Capability::Chat, Capability::Moderate, Capability::Audit, Capability::TrainingAdmin, Capability::PolicyAdmin, Capability::PolicyRead, Capability::Ops];

/// `GET /console/keys`
pub async fn page(viewer: Viewer, console: web::Data<Console>) -> Result<HttpResponse, ConsoleError> {
    viewer.require_any(&OPERATORS)?;
    render(&viewer, &console.keys, None).await
}

async fn render(viewer: &Viewer, keys: &KeyStore, outcome: Option<Markup>) -> Result<HttpResponse, ConsoleError> {
    let mut listed = keys.list().await.map_err(|e| ConsoleError::Internal(e.to_string()))?;
    listed.sort_by(|a, b| (a.revoked_at.is_some(), &a.tenant, b.created_at).cmp(&(b.revoked_at.is_some(), &b.tenant, a.created_at)));
    let body = html! {
        @if let Some(outcome) = outcome { (outcome) }
        form.card method="post" action="/console/keys/create" {
            h3 { "A new key" }
            input type="hidden" name="csrf" value=(viewer.csrf);
            label { "Tenant " input name="tenant" required pattern="[A-Za-z0-9_.\\-]{1,64}"; }
            @for cap in OFFERED {
                label { input type="checkbox" name="capability" value=(cap.as_str()); " " (cap.as_str()) } " "
            }
            button.primary type="submit" { "Create" }
        }
        h2 { "Keys" }
        table {
            thead { tr { th { "Tenant" } th { "Key" } th { "Capabilities" } th { "Created" } th { "Last used" } th { "State" } th {} } }
            tbody { @for key in &listed { tr {
                td { (key.tenant) }
                td.mono { (key.id) }
                td { (key.capabilities) }
                td.mono { (crate::db::rfc3339(key.created_at)) }
                td.mono { @match key.last_used_at { Some(at) => (crate::db::rfc3339(at)), None => span.muted { "never" } } }
                td { @match key.revoked_at { Some(at) => span.bad { "revoked " (crate::db::rfc3339(at)) }, None => span.allow { "live" } } }
                td { @if key.revoked_at.is_none() {
                    form method="post" action="/console/keys/revoke" {
                        input type="hidden" name="csrf" value=(viewer.csrf);
                        input type="hidden" name="id" value=(key.id);
                        button type="submit" { "Revoke" }
                    }
                } }
            } } }
        }
    };
    Ok(layout::page(viewer, "keys", "Keys", body))
}

/// `POST /console/keys/create`, a form of `csrf`, `tenant` and `capability` (repeated).
pub async fn create(viewer: Viewer, form: web::Form<Vec<(String, String)>>, console: web::Data<Console>) -> Result<HttpResponse, ConsoleError> {
    let (fields, keys) = (form.into_inner(), &console.keys);
    let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or_default();
    viewer.check_csrf(field("csrf"))?;
    viewer.require_any(&OPERATORS)?;
    let caps: Result<Vec<Capability>, _> = fields.iter().filter(|(k, _)| k == "capability").map(|(_, v)| Capability::parse(v)).collect();
    let outcome = match (TenantId::parse(field("tenant").trim()), caps) {
        (Ok(tenant), Ok(caps)) if !caps.is_empty() => match keys.create(&tenant, &caps).await {
            Ok((record, key)) => {
                tracing::info!(key_id = %record.id, tenant = %tenant, capabilities = %record.capabilities, by = %viewer.caller.key_id, "key created from the console");
                html! { div.card { p { "Key " span.mono { (record.id) } " for " (tenant) " (" (record.capabilities) "). Its secret, shown this once:" } p.mono { (key.expose()) } } }
            }
            Err(err) => return Err(ConsoleError::Internal(err.to_string())),
        },
        (Err(err), _) => html! { div.notice role="alert" { (err.to_string()) } },
        (_, Err(err)) => html! { div.notice role="alert" { (err.to_string()) } },
        _ => html! { div.notice role="alert" { "Choose at least one capability." } },
    };
    render(&viewer, keys, Some(outcome)).await
}

#[derive(Deserialize)]
pub struct Revoke {
    #[serde(default)]
    csrf: String,
    id: String,
}

/// `POST /console/keys/revoke`
pub async fn revoke(viewer: Viewer, form: web::Form<Revoke>, console: web::Data<Console>) -> Result<HttpResponse, ConsoleError> {
    viewer.check_csrf(&form.csrf)?;
    viewer.require_any(&OPERATORS)?;
    let keys = &console.keys;
    let outcome = match keys.revoke(&form.id).await {
        Ok(()) => {
            tracing::info!(key_id = %form.id, by = %viewer.caller.key_id, "key revoked from the console");
            html! { p.allow { "Key " span.mono { (form.id) } " revoked: it stops working on every instance within identity.key_cache." } }
        }
        Err(err) => html! { div.notice role="alert" { (err.to_string()) } },
    };
    render(&viewer, keys, Some(outcome)).await
}
