//! Constitution (`policy:admin` or `policy:read`): the tenant's active
//! document, its activations as `policy.audit` recorded them, and a
//! side-by-side diff between two of its versions.

use actix_web::{web, HttpRequest, HttpResponse};
use maud::html;
use serde::Deserialize;

use super::diff::side_by_side;
use super::layout;
use super::viewer::{ConsoleError, Viewer};
use super::Console;
use crate::events::Via;
use crate::identity::Capability;
use crate::policy::{ConstitutionHash, PolicyApi};

const READERS: [Capability; 2] = [Capability::PolicyAdmin, Capability::PolicyRead];

/// Who sees the page: the readers of the tenant's documents, and `ops` (every tenant's active hash, without text).
const VIEWERS: [Capability; 3] = [Capability::PolicyAdmin, Capability::PolicyRead, Capability::Ops];

/// `GET /console/constitution`
pub async fn page(viewer: Viewer, console: web::Data<Console>, policy: web::Data<PolicyApi>) -> Result<HttpResponse, ConsoleError> {
    viewer.require_any(&VIEWERS)?;
    let mut per_tenant = Vec::new();
    if viewer.can(Capability::Ops) {
        per_tenant = console.tenants().await?.into_iter().filter_map(|t| policy.judges.current(&t).ok().map(|judge| (t, judge))).collect();
    }
    let per_tenant = html! {
        @if !per_tenant.is_empty() {
            h2 { "Active per tenant" }
            table { thead { tr { th { "Tenant" } th { "Constitution" } th { "Hash" } } }
                tbody { @for (tenant, judge) in &per_tenant { tr {
                    td { (tenant) } td { (judge.constitution.name) " " (judge.constitution.version) } td.mono { (judge.hash) }
                } } } }
        }
    };
    if !viewer.can(Capability::PolicyAdmin) && !viewer.can(Capability::PolicyRead) {
        return Ok(layout::page(&viewer, "constitution", "Constitution", per_tenant));
    }
    let tenant = viewer.caller.tenant.as_str();
    let judge = policy.judges.current(tenant).map_err(|e| ConsoleError::Internal(e.to_string()))?;
    let records = console.audit_records(&console.topics.policy, 50, |r| r["tenant"] == tenant || r["scope"] == "default").await?;
    let active = judge.hash.as_str();
    // Every version this tenant may compare: the active one, those its activations name, those its turns were judged under.
    let mut versions: Vec<String> = policy.store.constitutions_of(tenant).await.map_err(|e| ConsoleError::Internal(e.to_string()))?;
    versions.extend(records.iter().flat_map(|r| [&r["hash"], &r["previous_hash"]]).filter_map(|h| h.as_str().map(str::to_owned)));
    versions.push(active.to_owned());
    versions.sort();
    versions.dedup();
    let body = html! {
        (per_tenant)
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
        @if viewer.can(Capability::PolicyAdmin) {
            h2 { "Try a candidate" }
            form.card method="post" action="/console/constitution/dry-run" {
                input type="hidden" name="csrf" value=(viewer.csrf);
                label { "The candidate document (TOML), pasted or edited here" }
                textarea name="document" rows="12" required { (judge.text) }
                // Shown by the script, which reads the chosen file into the text above.
                label.file-load hidden { "or read from a file: " input type="file" accept=".toml,text/plain,application/toml" data-load-into="document"; }
                label { "Judge the turns of the last " input name="since" value="24h" size="5"; }
                button.primary type="submit" { "Dry run" }
            }
        }
        h2 { "The document" }
        (layout::text(&judge.text))
    };
    Ok(layout::page(&viewer, "constitution", "Constitution", body))
}

#[derive(Deserialize)]
pub struct Candidate {
    #[serde(default)]
    csrf: String,
    document: String,
    #[serde(default)]
    since: String,
    /// The hash the confirmation named (activate only).
    #[serde(default)]
    hash: String,
}

/// `POST /console/constitution/dry-run`: what the candidate would change on the
/// tenant's stored turns, and the way to activate it.
pub async fn dry_run(viewer: Viewer, form: web::Form<Candidate>, policy: web::Data<PolicyApi>) -> Result<HttpResponse, ConsoleError> {
    viewer.check_csrf(&form.csrf)?;
    viewer.require_any(&[Capability::PolicyAdmin])?;
    let Candidate { document, since, .. } = form.into_inner();
    let since = if since.trim().is_empty() { "24h".to_owned() } else { since.trim().to_owned() };
    let reads_turns = viewer.can(Capability::Audit) || viewer.can(Capability::Ops);
    let body = match policy.dry_run(&viewer.caller, document.clone(), &since, 1000).await {
        Err(err) => html! { div.notice role="alert" { (err.body().message) } p { a href="/console/constitution" { "Back" } } },
        Ok((judge, report)) => html! {
            p { "Candidate " strong { (judge.constitution.name) " " (judge.constitution.version) } ", " span.mono { (judge.hash) } "." }
            p { (report.turns) " turns of the last " (since) ": " (report.judged) " judged again, " (report.withheld) " withheld (refused on input, stored without text)." }
            table {
                thead { tr { th { "Change" } th { "Category" } th { "Turns" } } }
                tbody {
                    @for (code, n) in &report.allow_to_refuse { tr { td.refuse { "allowed → refused" } td { (code) } td { (n) } } }
                    @for (code, n) in &report.refuse_to_allow { tr { td.allow { "refused → allowed" } td { (code) } td { (n) } } }
                    @if report.category_changed > 0 { tr { td { "refused under another category" } td {} td { (report.category_changed) } } }
                }
            }
            @if !report.samples.is_empty() {
                h2 { "The turns that would change" }
                @if !reads_turns { p.muted { "Opening a turn needs the audit capability." } }
                table { thead { tr { th { "Turn" } th { "Before" } th { "Under the candidate" } } }
                    tbody { @for change in &report.samples { tr {
                        td.mono { @if reads_turns { a href={ "/console/turns/" (change.turn_id) } { (change.turn_id) } } @else { (change.turn_id) } }
                        td.mono { (change.from) } td.mono { (change.to) }
                    } } } }
            }
            form.card method="post" action="/console/constitution/activate" {
                input type="hidden" name="csrf" value=(viewer.csrf);
                input type="hidden" name="document" value=(document);
                input type="hidden" name="hash" value=(judge.hash);
                p { "Activate " span.mono { (judge.hash) } " for tenant " (viewer.caller.tenant) "? Every instance judges its turns by it within policy.staleness; it is recorded in policy.audit." }
                button.primary type="submit" { "Activate " (judge.hash) }
            }
        },
    };
    Ok(layout::page(&viewer, "constitution", "Dry run", body))
}

/// `POST /console/constitution/activate`: the candidate whose hash the confirmation named.
pub async fn activate(req: HttpRequest, viewer: Viewer, form: web::Form<Candidate>, policy: web::Data<PolicyApi>) -> Result<HttpResponse, ConsoleError> {
    viewer.check_csrf(&form.csrf)?;
    viewer.require_any(&[Capability::PolicyAdmin])?;
    let named = crate::policy::Constitution::from_toml_str(&form.document).map(|c| c.hash().to_string()).unwrap_or_default();
    let body = if named != form.hash {
        html! { div.notice role="alert" { "The document is not the one the confirmation named: nothing was activated." } }
    } else {
        match policy.activate(&viewer.caller, &form.document, &crate::web::trace_of(&req), Via::Console).await {
            Ok(outcome) => html! {
                p.allow { "Active for " (viewer.caller.tenant) ": " span.mono { (outcome.hash) } @if let Some(previous) = &outcome.previous_hash { " (before: " span.mono { (previous) } ")" } "." }
                @if !outcome.changed { p.muted { "It was active already: nothing changed." } }
            },
            Err(err) => html! { div.notice role="alert" { (err.body().message) } },
        }
    };
    Ok(layout::page(&viewer, "constitution", "Activate", html! { (body) p { a href="/console/constitution" { "Back to the constitution" } } }))
}

/// `GET /console/constitution/{hash}`: one of the viewer's tenant's documents (the
/// active one, or one its turns were judged under), as the API's
/// `GET /v1/policy/constitutions/{hash}` gives it to any key of that tenant.
pub async fn document(viewer: Viewer, hash: web::Path<String>, policy: web::Data<PolicyApi>) -> Result<HttpResponse, ConsoleError> {
    let hash = ConstitutionHash::parse(&hash).map_err(|_| ConsoleError::NotFound("constitution"))?;
    let tenant = viewer.caller.tenant.as_str();
    let (constitution, text) = policy.document_of(tenant, &hash).await.map_err(|_| ConsoleError::NotFound("constitution of this tenant"))?;
    let active = policy.judges.current(tenant).ok().map(|judge| judge.hash.to_string());
    let body = html! {
        table {
            tr { th { "Name" } td { (constitution.name) " " (constitution.version) } }
            tr { th { "Hash" } td.mono { (hash) } }
            tr { th { "For " (tenant) } td {
                @match &active {
                    Some(active) if active == hash.as_str() => { "active now" },
                    Some(active) => { "not active now; "
                        @if viewer.can(Capability::PolicyRead) || viewer.can(Capability::PolicyAdmin) {
                            a href={ "/console/constitution/diff?from=" (hash) "&to=" (active) } { "what changed since" }
                        } @else { "the active one is " span.mono { (active) } }
                    },
                    None => { "no constitution is active" },
                }
            } }
        }
        (layout::text(&text))
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
