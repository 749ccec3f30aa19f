//! The console's page chrome (navigation by capability, the sign-out form),
//! its two static files (served with a long cache, named by their digest,
//! linked with an integrity hash), and the security headers of every
//! console response.

use std::sync::LazyLock;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpResponse};
use base64::Engine;
use maud::{html, Markup, DOCTYPE};
use sha2::{Digest, Sha256, Sha384};

use super::viewer::Viewer;
use crate::identity::Capability;

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// A static file: its URL (named by its digest, so it may be cached for
/// good) and its subresource-integrity hash.
struct Asset {
    url: String,
    integrity: String,
    body: &'static str,
    content_type: &'static str,
}

impl Asset {
    fn new(name: &str, extension: &str, body: &'static str, content_type: &'static str) -> Self {
        let digest = hex::encode(&Sha256::digest(body.as_bytes())[..8]);
        let integrity = format!("sha384-{}", base64::engine::general_purpose::STANDARD.encode(Sha384::digest(body.as_bytes())));
        Self { url: format!("/console/assets/{name}.{digest}.{extension}"), integrity, body, content_type }
    }
}

static ASSETS: LazyLock<[Asset; 2]> =
    LazyLock::new(|| [Asset::new("console", "css", CSS, "text/css; charset=utf-8"), Asset::new("console", "js", JS, "text/javascript; charset=utf-8")]);

/// `GET /console/assets/{file}`: a static file, cached for a year (its name changes with its content).
pub async fn asset(file: web::Path<String>) -> HttpResponse {
    match ASSETS.iter().find(|a| a.url.rsplit('/').next() == Some(file.as_str())) {
        Some(asset) => {
            HttpResponse::Ok().content_type(asset.content_type).insert_header((header::CACHE_CONTROL, "public, max-age=31536000, immutable")).body(asset.body)
        }
        None => message(StatusCode::NOT_FOUND, "Not found", "no such file"),
    }
}

/// The headers of every console response: no script but the console's own,
/// no framing, no referrer, nothing cached but the static files.
pub fn security_headers() -> actix_web::middleware::DefaultHeaders {
    actix_web::middleware::DefaultHeaders::new()
        .add((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'; object-src 'none'",
        ))
        .add((header::X_FRAME_OPTIONS, "DENY"))
        .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .add((header::REFERRER_POLICY, "no-referrer"))
        .add((header::CACHE_CONTROL, "no-store"))
}

/// The pages in the navigation, and who sees each.
const PAGES: [(&str, &str, &[Capability]); 5] = [
    ("overview", "Overview", &[Capability::Ops, Capability::Audit]),
    ("turns", "Turns", &[Capability::Ops, Capability::Audit]),
    ("training", "Training", &[Capability::TrainingAdmin, Capability::Ops]),
    ("constitution", "Constitution", &[Capability::PolicyAdmin, Capability::PolicyRead, Capability::Ops]),
    ("keys", "Keys", &[Capability::Ops]),
];

/// The first page `viewer` may see.
pub fn first_page(viewer: &Viewer) -> String {
    let page = PAGES.iter().find(|(_, _, caps)| caps.iter().any(|c| viewer.can(*c))).map_or("overview", |(name, _, _)| name);
    format!("/console/{page}")
}

/// A page of the console for a signed-in viewer.
pub fn page(viewer: &Viewer, here: &str, title: &str, body: Markup) -> HttpResponse {
    let markup = html! {
        header.top {
            a.brand href="/console" { "Steward" }
            @for (name, label, caps) in PAGES {
                @if caps.iter().any(|c| viewer.can(*c)) {
                    a.here[name == here] href={ "/console/" (name) } { (label) }
                }
            }
            span.who { (viewer.caller.tenant) " · " (viewer.caller.key_id) }
            form method="post" action="/console/sign-out" {
                input type="hidden" name="csrf" value=(viewer.csrf);
                button type="submit" { "Sign out" }
            }
        }
        main { h1 { (title) } (body) }
    };
    respond(StatusCode::OK, title, markup)
}

/// A page outside the signed-in chrome (sign-in, errors).
pub fn bare(status: StatusCode, title: &str, body: Markup) -> HttpResponse {
    respond(status, title, html! { header.top { a.brand href="/console" { "Steward" } } main { (body) } })
}

/// A page that says one thing.
pub fn message(status: StatusCode, title: &str, text: &str) -> HttpResponse {
    bare(status, title, html! { h1 { (title) } p { (text) } p { a href="/console" { "Back to the console" } } })
}

fn respond(status: StatusCode, title: &str, body: Markup) -> HttpResponse {
    let [css, js] = &*ASSETS;
    let document = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Steward" }
                link rel="stylesheet" href=(css.url) integrity=(css.integrity);
                script src=(js.url) integrity=(js.integrity) defer {}
            }
            body { (body) }
        }
    };
    HttpResponse::build(status).content_type("text/html; charset=utf-8").body(document.into_string())
}

/// Text as the reader should see it, whatever it holds (maud escapes it).
pub fn text(value: &str) -> Markup {
    html! { div.text { (value) } }
}

/// An inline SVG bar chart of `bars` (label, value, class), `title` for readers.
pub fn bars(title: &str, bars: &[(String, u64, &'static str)]) -> Markup {
    let max = bars.iter().map(|b| b.1).max().unwrap_or(0).max(1) as f64;
    let width = 1000.0 / bars.len().max(1) as f64;
    let label_every = (bars.len() / 12).max(1);
    html! {
        svg.chart viewBox="0 0 1000 140" preserveAspectRatio="none" role="img" aria-label=(title) {
            title { (title) }
            @for (i, (label, value, class)) in bars.iter().enumerate() {
                @let height = 110.0 * (*value as f64) / max;
                rect class=(class) x=(format!("{:.1}", i as f64 * width + 1.0)) y=(format!("{:.1}", 115.0 - height))
                    width=(format!("{:.1}", (width - 2.0).max(1.0))) height=(format!("{:.1}", height)) {
                    title { (label) ": " (value) }
                }
                @if i % label_every == 0 {
                    text x=(format!("{:.1}", i as f64 * width + 2.0)) y="135" { (label) }
                }
            }
        }
    }
}
