//! Who is looking: the signed-in key behind a console request, as an
//! extractor; and the console's errors, each an HTML page (or, for a browser
//! that is not signed in, the way to the sign-in page).

use std::future::Future;
use std::pin::Pin;

use actix_web::http::{header, StatusCode};
use actix_web::{dev::Payload, web, FromRequest, HttpRequest, HttpResponse, ResponseError};

use super::session::{csrf_matches, COOKIE};
use super::Console;
use crate::identity::{Authenticator, Caller, Capability};

/// The capabilities that open the console; a key with none of them is refused at sign-in.
pub const CONSOLE_CAPABILITIES: [Capability; 5] =
    [Capability::Ops, Capability::Audit, Capability::TrainingAdmin, Capability::PolicyAdmin, Capability::PolicyRead];

/// A signed-in console user: the key's caller and the session's CSRF token.
pub struct Viewer {
    pub caller: Caller,
    pub csrf: String,
    /// The session's cookie token (to end it at sign-out).
    pub token: String,
}

impl Viewer {
    pub fn can(&self, cap: Capability) -> bool {
        self.caller.capabilities.contains(&cap)
    }

    /// Fails with 403 unless the key carries one of `caps`.
    pub fn require_any(&self, caps: &[Capability]) -> Result<(), ConsoleError> {
        if caps.iter().any(|cap| self.can(*cap)) {
            Ok(())
        } else {
            Err(ConsoleError::Forbidden(caps.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(" or ")))
        }
    }

    /// The tenant whose record this viewer reads: `None` (every tenant) for `ops`.
    pub fn tenant_scope(&self) -> Option<&str> {
        (!self.can(Capability::Ops)).then(|| self.caller.tenant.as_str())
    }

    /// Fails with 403 unless a form's CSRF token is this session's.
    pub fn check_csrf(&self, sent: &str) -> Result<(), ConsoleError> {
        if csrf_matches(&self.csrf, sent) {
            Ok(())
        } else {
            Err(ConsoleError::Csrf)
        }
    }
}

/// The session token a request's cookie carries.
fn session_token(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('=').map(str::to_owned))
        .filter(|token| !token.is_empty())
}

impl FromRequest for Viewer {
    type Error = ConsoleError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ConsoleError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let console = req.app_data::<web::Data<Console>>().cloned();
        let auth = req.app_data::<web::Data<Authenticator>>().cloned();
        let client = auth.as_ref().and_then(|auth| auth.client_of(req));
        let token = session_token(req);
        Box::pin(async move {
            let (Some(console), Some(auth)) = (console, auth) else {
                return Err(ConsoleError::Internal("the console is not configured".into()));
            };
            let token = token.ok_or(ConsoleError::SignIn)?;
            let live = console.sessions.find(&token).await.map_err(|e| ConsoleError::Internal(e.to_string()))?.ok_or(ConsoleError::SignIn)?;
            // The key again, as every API request checks it: revoked, its sessions end.
            let caller = match auth.authenticate_hash(client, &live.key_hash).await {
                Ok(caller) => caller,
                Err(err) if err.code() == crate::error::Code::RateLimited => return Err(ConsoleError::Busy),
                Err(_) => return Err(ConsoleError::SignIn),
            };
            Ok(Viewer { caller, csrf: live.csrf, token })
        })
    }
}

/// Why a console request was not served.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// Not signed in, or the session or its key ended: to the sign-in page.
    #[error("sign in to continue")]
    SignIn,
    #[error("this page needs a key with capability {0}")]
    Forbidden(String),
    #[error("the form's CSRF token is missing or wrong: reload the page and try again")]
    Csrf,
    #[error("no such {0}")]
    NotFound(&'static str),
    #[error("too many requests with this key: wait a moment")]
    Busy,
    #[error("the console could not answer")]
    Internal(String),
}

impl ResponseError for ConsoleError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::SignIn => StatusCode::SEE_OTHER,
            Self::Forbidden(_) | Self::Csrf => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Busy => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::Internal(cause) = self {
            tracing::error!(cause = %cause, "console request failed");
        }
        if let Self::SignIn = self {
            return HttpResponse::SeeOther().insert_header((header::LOCATION, "/console/sign-in")).finish();
        }
        super::layout::message(self.status_code(), "Not possible", &self.to_string())
    }
}
