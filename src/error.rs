//! The one table of error codes and the JSON error body every endpoint returns.
//!
//! Each module's error enum implements [`ErrorCode`]; handlers return
//! `Result<_, ApiError>` and use `?`, thanks to the blanket `From<T: ErrorCode>`.
//! Server-side failures (5xx) answer with a generic message; the full cause
//! chain goes to the log instead.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// Every stable error code Steward can answer with: (code, kind, HTTP status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    MalformedJson,
    UnsupportedMediaType,
    PayloadTooLarge,
    InvalidRequest,
    EmptyMessage,
    MessageTooLong,
    SystemPromptNotAllowed,
    NotFound,
    MethodNotAllowed,
    Unauthenticated,
    Forbidden,
    SessionNotFound,
    PolicyHeadersMissing,
    ConstitutionMismatch,
    PolicyVerdictInvalid,
    PolicyVerdictExpired,
    PolicyRefused,
    PolicyVerdictReplayed,
    PolicyRegistryUnavailable,
    TurnInProgress,
    ClientTooSlow,
    RateLimited,
    TrainingLockHeld,
    TrainingLockNotOwner,
    LockStoreUnavailable,
    UnknownModel,
    ModelNotAllowed,
    GuardUnavailable,
    UnsupportedParameter,
    ToolNotAllowed,
    ModelUnavailable,
    ModelTimeout,
    ModelError,
    Internal,
}

impl Code {
    /// `(code, type, status)` for this entry of the table.
    pub const fn describe(self) -> (&'static str, &'static str, u16) {
        use Code::*;
        match self {
            MalformedJson => ("malformed_json", "invalid_request", 400),
            UnsupportedMediaType => ("unsupported_media_type", "invalid_request", 415),
            PayloadTooLarge => ("payload_too_large", "invalid_request", 413),
            InvalidRequest => ("invalid_request", "invalid_request", 400),
            EmptyMessage => ("empty_message", "invalid_request", 400),
            MessageTooLong => ("message_too_long", "invalid_request", 400),
            SystemPromptNotAllowed => ("system_prompt_not_allowed", "invalid_request", 400),
            NotFound => ("not_found", "invalid_request", 404),
            MethodNotAllowed => ("method_not_allowed", "invalid_request", 405),
            Unauthenticated => ("unauthenticated", "auth", 401),
            Forbidden => ("forbidden", "auth", 403),
            SessionNotFound => ("session_not_found", "invalid_request", 404),
            PolicyHeadersMissing => ("policy_headers_missing", "policy", 400),
            ConstitutionMismatch => ("constitution_mismatch", "policy", 409),
            PolicyVerdictInvalid => ("policy_verdict_invalid", "policy", 403),
            PolicyVerdictExpired => ("policy_verdict_expired", "policy", 403),
            PolicyRefused => ("policy_refused", "policy", 403),
            PolicyVerdictReplayed => ("policy_verdict_replayed", "policy", 403),
            PolicyRegistryUnavailable => ("policy_registry_unavailable", "upstream", 503),
            TurnInProgress => ("turn_in_progress", "invalid_request", 409),
            ClientTooSlow => ("client_too_slow", "client", 408),
            RateLimited => ("rate_limited", "rate_limit", 429),
            TrainingLockHeld => ("training_lock_held", "training", 409),
            TrainingLockNotOwner => ("training_lock_not_owner", "training", 409),
            LockStoreUnavailable => ("lock_store_unavailable", "upstream", 503),
            UnknownModel => ("unknown_model", "invalid_request", 400),
            ModelNotAllowed => ("model_not_allowed", "auth", 403),
            GuardUnavailable => ("guard_unavailable", "upstream", 503),
            UnsupportedParameter => ("unsupported_parameter", "invalid_request", 400),
            ToolNotAllowed => ("tool_not_allowed", "auth", 403),
            ModelUnavailable => ("model_unavailable", "upstream", 502),
            ModelTimeout => ("model_timeout", "upstream", 504),
            ModelError => ("model_error", "upstream", 502),
            Internal => ("internal", "internal", 500),
        }
    }

    pub const fn name(self) -> &'static str {
        self.describe().0
    }

    pub fn status(self) -> StatusCode {
        StatusCode::from_u16(self.describe().2).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

/// Implemented by every module error that can reach a client.
pub trait ErrorCode: std::error::Error {
    fn code(&self) -> Code;
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub code: &'static str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub status: u16,
    pub message: String,
    /// With `rate_limited`: when to try again (also the `Retry-After` header, in whole seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// The request field the error is about (`unsupported_parameter`, `unknown_model`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
}

/// What handlers return on failure.
#[derive(Debug)]
pub struct ApiError {
    code: Code,
    message: String,
    retry_after: Option<std::time::Duration>,
    param: Option<String>,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), retry_after: None, param: None }
    }

    /// Names the request field the error is about.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn param(&self) -> Option<&str> {
        self.param.as_deref()
    }

    /// Tells the client when to try again (`Retry-After`).
    pub fn with_retry_after(mut self, after: std::time::Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub fn code(&self) -> Code {
        self.code
    }

    pub fn body(&self) -> ErrorBody {
        let (code, kind, status) = self.code.describe();
        ErrorBody {
            code,
            kind,
            status,
            message: self.message.clone(),
            retry_after_ms: self.retry_after.map(|d| d.as_millis().max(1) as u64),
            param: self.param.clone(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.name(), self.message)
    }
}

impl<T: ErrorCode> From<T> for ApiError {
    fn from(err: T) -> Self {
        let code = err.code();
        if code.status().is_server_error() {
            tracing::error!(code = code.name(), error = %error_chain(&err), "request failed");
            return Self::new(code, generic_message(code));
        }
        Self::new(code, err.to_string())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        response.insert_header((header::CONTENT_TYPE, "application/problem+json"));
        if let Some(after) = self.retry_after {
            // Whole seconds, rounded up: never earlier than the limit allows.
            response.insert_header((header::RETRY_AFTER, after.as_secs_f64().ceil().max(1.0).to_string()));
        }
        response.json(self.body())
    }
}

/// What a client is told of a server-side failure of this code (never its cause).
pub(crate) fn generic_message(code: Code) -> &'static str {
    match code {
        Code::ModelUnavailable => "the language model is unavailable",
        Code::ModelTimeout => "the language model did not answer in time",
        Code::ModelError => "the language model failed",
        Code::LockStoreUnavailable => "the training lock store is unavailable",
        Code::PolicyRegistryUnavailable => "the policy registry is unavailable",
        _ => "internal error",
    }
}

/// `err: cause: cause…`, for logs.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
