//! `POST /v1/chat/stream`: one turn as server-sent events — `session`, then
//! `delta`s, at most one `refusal` or `error`, then `done`.

use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::{stream, StreamExt};
use serde::Deserialize;

use super::service::{Gateway, TurnInput};
use crate::error::{ApiError, Code};
use crate::identity::Caller;
use crate::orchestrator::{FinishReason, TurnEvent, TurnLimits, TurnStop};
use crate::telemetry::TraceContext;
use crate::web::{sse_body, sse_event, trace_of, Governance};

/// One chat turn.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ChatRequest)]
pub struct ChatBody {
    /// The user's message.
    #[schema(min_length = 1)]
    message: String,
    /// Continue this session (a UUID an earlier turn returned); a new one otherwise.
    #[schema(format = Uuid)]
    session_id: Option<String>,
    /// At most this many tokens in the answer (default `slm.default_max_tokens`, at most `slm.max_tokens_limit`).
    #[schema(minimum = 1)]
    max_tokens: Option<u32>,
    #[schema(minimum = 0.0, maximum = 2.0)]
    temperature: Option<f32>,
    seed: Option<i64>,
    /// A model name of `[[slm.models]]` the tenant may use (its default otherwise).
    model: Option<String>,
}

impl ChatBody {
    /// The turn as the gateway admits it, arriving now on `route`.
    pub(super) fn into_input(self, limits: &TurnLimits, route: &'static str, trace: TraceContext, stop: TurnStop) -> Result<TurnInput, ApiError> {
        let params = limits.params(self.max_tokens, self.temperature, self.seed)?;
        Ok(TurnInput {
            route,
            session_id: self.session_id,
            message: self.message,
            preamble: Vec::new(),
            params,
            model: self.model,
            end_user: None,
            stop_sequences: Default::default(),
            form: Default::default(),
            tool_call_id: None,
            trace,
            started: Instant::now(),
            stop,
        })
    }
}

fn frame(event: &TurnEvent) -> actix_web_lab::sse::Event {
    let (name, data) = event.sse();
    sse_event(name, &data)
}

/// One chat turn as server-sent events: session, delta*, refusal|error?, done
///
/// The response carries the headers x-constitution-hash, x-policy-verdict, x-session-id,
/// x-trace-id and traceparent.
#[utoipa::path(post, path = "/v1/chat/stream", tag = "chat", request_body = ChatBody, security(("bearer" = [])),
    responses(
        (status = 200, description = "the turn's events", body = crate::responses::ChatEvent, content_type = "text/event-stream"),
        crate::responses::KeyErrors,
        crate::responses::BodyErrors,
        (status = 403, response = crate::responses::Problem),
        (status = 404, response = crate::responses::Problem),
        (status = 503, description = "the active constitution cannot be known (the registry copy is older than policy.staleness): \
            one `error` event (policy_registry_unavailable) and `done`; or another dependency is unavailable",
            content((crate::responses::ChatEvent = "text/event-stream"), (crate::error::ErrorBody = "application/problem+json"))),
    ))]
pub async fn chat_stream(req: HttpRequest, caller: Caller, body: web::Json<ChatBody>, gateway: web::Data<Gateway>) -> Result<HttpResponse, ApiError> {
    let input = body.into_inner().into_input(&gateway.limits, "chat_stream", trace_of(&req), Default::default())?;
    let admission = match gateway.admit(&caller, input).await {
        Ok(admission) => admission,
        Err(err) if err.code() == Code::PolicyRegistryUnavailable => return Ok(unjudged(&err)),
        Err(err) => return Err(err),
    };
    let verdict = admission.signed.verdict.header_value();
    let session = sse_event("session", &admission.session(&verdict));
    let rest = admission.outcome.into_events().map(|event| frame(&event)).boxed();
    let frames = stream::once(async move { session }).chain(rest);
    let governance = Governance {
        constitution_hash: admission.signed.constitution_hash.as_str(),
        policy_verdict: &verdict,
        session_id: admission.session_id.as_str(),
        trace: &admission.trace,
    };
    Ok(governance.sse_response().body(sse_body(frames, gateway.keepalive)))
}

/// No turn can be judged while the active constitution is unknown: a 503
/// whose stream ends with the `error` event a chat client reads, then `done`.
fn unjudged(err: &ApiError) -> HttpResponse {
    let error = TurnEvent::Error { code: err.code(), message: err.body().message };
    let done = TurnEvent::Done { finish_reason: FinishReason::Error, usage: None };
    let events = stream::iter([frame(&error), frame(&done)]);
    HttpResponse::ServiceUnavailable()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .body(actix_web_lab::sse::Sse::from_infallible_stream(events))
}
