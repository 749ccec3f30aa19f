//! Constitution (`policy:admin` or `policy:read`): the tenant's active
//! document, its activations as `policy.audit` recorded them, and a
//! side-by-side diff between two of its versions.

use actix_web::{web, HttpResponse};
use maud::html;
use serde::Deserialize;
use serde_json::Value;

use super::diff::side_by_side;
use super::layout;
use super::viewer::{ConsoleError, Viewer};
use super::Console;
use crate::identity::Capability;
use crate::policy::{ConstitutionHash, PolicyApi};

const READERS: [Capability; 2] = [Capability::PolicyAdmin, Capability::PolicyRead];

/// How many of the newest `policy.audit` records are searched for the tenant's.
const RECORDS_SEARCHED: i64 = 500;

/// `GET /console/constitution`
pub async fn page(viewer: Viewer, console: web::Data<Console>, policy: web::Data<PolicyApi>) -> Result<HttpResponse, ConsoleError> {
    viewer.require_any(&READERS)?;
    let tenant = viewer.caller.tenant.as_str();
    let judge = policy.judges.current(tenant).map_err(|e| ConsoleError::Internal(e.to_string()))?;
    let records: Vec<Value> = console
        .outbox
        .newest(&console.topics.policy, RECORDS_SEARCHED)
        .await
        .map_err(|e| ConsoleError::Internal(e.to_string()))?
        .into_iter()
        .filter_map(|(_, payload)| serde_json::from_str::<Value>(&payload).ok())
        .filter(|r| r["tenant"] == tenant || r["scope"] == "default")
        .take(50)
        .collect();
    let active = judge.hash.as_str();
    // Every version this tenant may compare: the active one, those its activations name, those its turns were judged under.
    let mut versions: Vec<String> = policy.store.constitutions_of(tenant).await.map_err(|e| ConsoleError::Internal(e.to_string()))?;
    versions.extend(records.iter().flat_map(|r| [&r["hash"], &r["previous_hash"]]).filter_map(|h| h.as_str().map(str::to_owned)));
    versions.push(active.to_owned());
    versions.sort();
    versions.dedup();
    let body = html! {
        table {
            tr { th { "Active for " (tenant) } td { (judge.constitution.name) " " (judge.constitution.version) } }
            tr { th { "Hash" } td.mono { (active) } }
        }
        form.filters method="get" action="/console/constitution/diff" {
            label { "Compare" select name="from" { @for v in &versions { option value=(v) selected[v != active] { (v) } } } }
            label { "with" select name="to" { @for v in &versions { option value=(v) selected[v == active] { (v) } } } }
            button.primary type="submit" { "Show what changed" }
        }
        h2 { "Activations" }
        table {
            thead { tr { th { "When" } th { "Type" } th { "Scope" } th { "Name" } th { "Hash" } th { "By" } th {} } }
            tbody { @for r in &records { tr {
                td.mono { (r["occurred_at"].as_str().unwrap_or_default()) }
                td.mono { (r["type"].as_str().unwrap_or_default()) }
                td { (r["scope"].as_str().unwrap_or_default()) }
                td { (r["name"].as_str().unwrap_or_default()) " " (r["version"].as_str().unwrap_or_default()) }
                td.mono { (r["hash"].as_str().unwrap_or_default()) }
                td.mono { (r["actor"].as_str().unwrap_or_default()) }
                td { @if let (Some(hash), Some(previous)) = (r["hash"].as_str(), r["previous_hash"].as_str()) {
                    a href={ "/console/constitution/diff?from=" (previous) "&to=" (hash) } { "what changed" }
                } }
            } } }
        }
        h2 { "The document" }
        (layout::text(&judge.text))
    };
    Ok(layout::page(&viewer, "constitution", "Constitution", body))
}

#[derive(Deserialize)]
pub struct Versions {
    from: String,
    to: String,
}

/// `GET /console/constitution/diff?from=<hash>&to=<hash>`: two of the tenant's versions side by side.
pub async fn diff(viewer: Viewer, versions: web::Query<Versions>, policy: web::Data<PolicyApi>) -> Result<HttpResponse, ConsoleError> {
    viewer.require_any(&READERS)?;
    let tenant = viewer.caller.tenant.as_str();
    let mut texts = Vec::new();
    for hash in [&versions.from, &versions.to] {
        let hash = ConstitutionHash::parse(hash).map_err(|_| ConsoleError::NotFound("constitution"))?;
        let (_, text) = policy.document_of(tenant, &hash).await.map_err(|_| ConsoleError::NotFound("constitution of this tenant"))?;
        texts.push(text);
    }
    let rows = side_by_side(&texts[0], &texts[1]);
    let changed = rows.iter().filter(|r| !r.same()).count();
    let body = html! {
        p { span.mono { (versions.from) } " → " span.mono { (versions.to) } ": " (changed) " lines differ." }
        table.diff {
            thead { tr { th { "#" } th { "Before" } th { "#" } th { "After" } } }
            tbody { @for row in &rows { tr.changed[!row.same()] {
                td.muted { @if let Some((n, _)) = row.left { (n) } }
                td.mono.removed[row.right.is_none() || !row.same()] { @if let Some((_, line)) = row.left { (line) } }
                td.muted { @if let Some((n, _)) = row.right { (n) } }
                td.mono.added[row.left.is_none() || !row.same()] { @if let Some((_, line)) = row.right { (line) } }
            } } }
        }
    };
    Ok(layout::page(&viewer, "constitution", "What changed", body))
}
