//! Signing in with an API key, and out.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use maud::html;
use serde::Deserialize;

use super::layout;
use super::session::COOKIE;
use super::viewer::{ConsoleError, Viewer, CONSOLE_CAPABILITIES};
use super::Console;
use crate::identity::{ApiKey, Authenticator};

/// `GET /console`: the first page the signed-in key may see, else the sign-in page.
pub async fn home(viewer: Option<Viewer>) -> HttpResponse {
    let to = match viewer {
        Some(viewer) => layout::first_page(&viewer),
        None => "/console/sign-in".to_owned(),
    };
    HttpResponse::SeeOther().insert_header((header::LOCATION, to)).finish()
}

/// `GET /console/sign-in`
pub async fn form() -> HttpResponse {
    sign_in_page(StatusCode::OK, None)
}

fn sign_in_page(status: StatusCode, problem: Option<&str>) -> HttpResponse {
    layout::bare(
        status,
        "Sign in",
        html! {
            div.signin.card {
                h1 { "Sign in to the console" }
                @if let Some(problem) = problem { div.notice role="alert" { (problem) } }
                form method="post" action="/console/sign-in" {
                    label for="key" { "API key" }
                    input #key type="password" name="key" autocomplete="off" required;
                    button.primary type="submit" { "Sign in" }
                }
                p.muted { "A key with capability ops, audit, training:admin, policy:admin or policy:read. It is checked on every page: revoking it signs you out." }
            }
        },
    )
}

#[derive(Deserialize)]
pub struct SignIn {
    key: String,
}

/// `POST /console/sign-in`: checks the key as the API does, and opens a session.
pub async fn sign_in(req: HttpRequest, form: web::Form<SignIn>, console: web::Data<Console>, auth: web::Data<Authenticator>) -> HttpResponse {
    let key = form.key.trim();
    let caller = match auth.authenticate(auth.client_of(&req), Some(key)).await {
        Ok(caller) => caller,
        Err(err) => {
            return sign_in_page(err.code().status(), Some(&err.body().message));
        }
    };
    if !CONSOLE_CAPABILITIES.iter().any(|cap| caller.capabilities.contains(cap)) {
        return sign_in_page(
            StatusCode::FORBIDDEN,
            Some("This key opens no page of the console: it needs ops, audit, training:admin, policy:admin or policy:read."),
        );
    }
    let opened = match console.sessions.open(&ApiKey::hash_of(key)).await {
        Ok(opened) => opened,
        Err(err) => return actix_web::ResponseError::error_response(&ConsoleError::Internal(err.to_string())),
    };
    tracing::info!(key_id = %caller.key_id, tenant = %caller.tenant, "console session opened");
    let secure = if req.connection_info().scheme() == "https" { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{secure}", opened.token, console.sessions.lifetime().as_secs());
    HttpResponse::SeeOther().insert_header((header::SET_COOKIE, cookie)).insert_header((header::LOCATION, "/console")).finish()
}

#[derive(Deserialize)]
pub struct SignOut {
    #[serde(default)]
    csrf: String,
}

/// `POST /console/sign-out`: ends the session.
pub async fn sign_out(viewer: Viewer, form: web::Form<SignOut>, console: web::Data<Console>) -> Result<HttpResponse, ConsoleError> {
    viewer.check_csrf(&form.csrf)?;
    console.sessions.end(&viewer.token).await.map_err(|e| ConsoleError::Internal(e.to_string()))?;
    let cookie = format!("{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0");
    Ok(HttpResponse::SeeOther().insert_header((header::SET_COOKIE, cookie)).insert_header((header::LOCATION, "/console/sign-in")).finish())
}
