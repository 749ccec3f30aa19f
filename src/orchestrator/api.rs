//! The orchestrator's internal HTTP API, for split deployments:
//! `POST /v1/conversation/step` (one turn, JSON) and
//! `POST /v1/conversation/stream` (SSE). Callers authenticate with an API key
//! carrying `chat` and present the signed policy headers of the turn.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::turn::{Origin, TurnEvent, TurnLimits, TurnRequest};
use super::Conversation;
use crate::error::{ApiError, Code};
use crate::identity::{Caller, Capability};
use crate::ids::{SessionId, TurnId};
use crate::policy::{headers, PolicyHeaders};
use crate::telemetry::{Metrics, RequestOutcome};
use crate::web::{sse_body, sse_event, trace_of, Governance};

/// What the orchestrator routes need.
pub struct OrchestratorApi {
    pub conversation: Arc<dyn Conversation>,
    pub training: Arc<crate::training::TrainingService>,
    pub limits: TurnLimits,
    pub metrics: Arc<Metrics>,
    pub keepalive: Duration,
    /// How long a WebSocket may take to send its key.
    pub socket_auth_timeout: Duration,
    /// The model names a turn may ask for.
    pub models: Arc<crate::slm::ModelCatalog>,
}

/// One turn the gateway judged and signed.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = StepRequest)]
pub(crate) struct StepBody {
    /// 1-128 of A-Z a-z 0-9 - _
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9_-]+$")]
    pub session_id: String,
    /// 1-128 of A-Z a-z 0-9 - _
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9_-]+$")]
    pub turn_id: String,
    #[schema(min_length = 1)]
    pub message: String,
    #[schema(minimum = 1)]
    pub max_tokens: Option<u32>,
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f32>,
    pub seed: Option<i64>,
    /// A model name of `[[slm.models]]` the tenant may use (its default otherwise).
    pub model: Option<String>,
}

/// A whole turn's reply.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct StepReply<'a> {
    session_id: &'a str,
    turn_id: &'a str,
    /// The answer (what was sent before a refusal cut it, if one did).
    content: String,
    finish_reason: super::FinishReason,
    usage: Option<crate::slm::Usage>,
    refusal: Option<crate::moderation::Hit>,
    error: Option<StepError>,
}

/// Why a turn failed after it started.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct StepError {
    code: &'static str,
    message: String,
}

/// The policy headers of a turn the gateway judged.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct SignedTurn {
    /// The constitution the turn was judged under.
    #[param(rename = "x-constitution-hash")]
    constitution_hash: String,
    /// `allow` (only allowed turns are run).
    #[param(rename = "x-policy-verdict")]
    policy_verdict: String,
    /// The gateway's signature over the turn, its verdict and generation parameters.
    #[param(rename = "x-policy-signature")]
    policy_signature: String,
}

/// What a signed turn can be refused with besides a key's and a body's
/// errors: 403 (its verdict is forged, expired or replayed), 404 and 409 (its
/// session), 503 (the verdict ledger or the registry is unreachable).
struct SignedTurnErrors;

impl utoipa::IntoResponses for SignedTurnErrors {
    fn responses() -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::Response>> {
        crate::responses::problems(&[403, 404, 409, 503])
    }
}

/// The orchestrator's signed turns over a WebSocket
///
/// As GET /v1/chat/stream (authentication, cancel, frames, close codes), but each `turn` message
/// carries the POST body's fields (`session_id`, `turn_id`, `message`, `max_tokens`?,
/// `temperature`?, `seed`?) and the three policy headers as `constitution_hash`, `policy_verdict`
/// and `policy_signature`; a rejected turn gets an `error` frame with its code
/// (`constitution_mismatch`, `policy_verdict_replayed`, …).
#[utoipa::path(get, path = "/v1/conversation/stream", tag = "orchestrator", security(("bearer" = []), ()),
    responses(
        (status = 101, description = "switching to the WebSocket protocol"),
        (status = 400, response = crate::responses::Problem),
        (status = 429, response = crate::responses::Problem),
    ))]
#[allow(dead_code)]
pub(crate) fn socket() {}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/conversation/step", web::post().to(step))
        .route("/v1/conversation/stream", web::post().to(stream))
        .route("/v1/conversation/stream", web::get().to(crate::socket::upgrade::<OrchestratorApi>));
}

fn policy_headers(req: &HttpRequest) -> PolicyHeaders {
    let get = |name| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    PolicyHeaders { constitution_hash: get(headers::CONSTITUTION_HASH), verdict: get(headers::POLICY_VERDICT), signature: get(headers::POLICY_SIGNATURE) }
}

/// How a turn reached the orchestrator: its route, policy headers, trace and stop.
pub(super) struct Arrival {
    pub route: &'static str,
    pub policy: PolicyHeaders,
    pub trace: crate::telemetry::TraceContext,
    pub stop: super::TurnStop,
}

/// Shared by every route: authenticate, validate, verify the policy and start the turn.
pub(super) async fn begin(
    arrival: Arrival,
    caller: Caller,
    body: StepBody,
    api: &OrchestratorApi,
) -> Result<(super::TurnStream, PolicyHeaders, TurnRequest), ApiError> {
    let Arrival { route, policy, trace, stop } = arrival;
    let started = Instant::now();
    let result = async {
        caller.require(Capability::Chat)?;
        let (session_id, turn_id) = (SessionId::parse(&body.session_id)?, TurnId::parse(&body.turn_id)?);
        api.limits.check_message(&body.message)?;
        let params = api.limits.params(body.max_tokens, body.temperature, body.seed)?;
        let model = api.models.resolve(caller.tenant.as_str(), body.model.as_deref())?;
        let training = api.training.mark(caller.tenant.as_str()).await;
        let request = TurnRequest {
            tenant: caller.tenant,
            session_id,
            turn_id,
            message: body.message,
            preamble: Vec::new(),
            params,
            stop_sequences: Default::default(),
            form: Default::default(),
            tool_call_id: None,
            model,
            trace,
            route,
            started,
            origin: Origin::Http,
            stop,
            session_known: None,
            training,
        };
        let stream = api.conversation.start_turn(request.clone(), policy.clone(), None).await?;
        Ok::<_, ApiError>((stream, policy, request))
    }
    .await;
    if let Err(err) = &result {
        let code = err.code();
        let outcome =
            if code.describe().1 == "policy" || code == Code::PolicyRegistryUnavailable { RequestOutcome::Policy(code) } else { RequestOutcome::Rejected };
        api.metrics.request(route, outcome, started.elapsed());
        tracing::info!(route, code = err.code().name(), "turn rejected");
    }
    result
}

fn arrival(route: &'static str, req: &HttpRequest) -> Arrival {
    Arrival { route, policy: policy_headers(req), trace: trace_of(req), stop: Default::default() }
}

fn governance<'a>(policy: &'a PolicyHeaders, request: &'a TurnRequest) -> Governance<'a> {
    Governance {
        constitution_hash: policy.constitution_hash.as_deref().unwrap_or_default(),
        policy_verdict: policy.verdict.as_deref().unwrap_or_default(),
        session_id: request.session_id.as_str(),
        trace: &request.trace,
    }
}

/// Orchestrator: one allowed turn, whole reply as JSON (needs the signed policy headers)
///
/// 403: policy_verdict_invalid (forged, or signed for another turn, message or generation
/// parameters), policy_verdict_expired (genuine but past its expiry: judge again),
/// policy_verdict_replayed (the verdict was used already). 503: policy_registry_unavailable.
#[utoipa::path(post, path = "/v1/conversation/step", tag = "orchestrator", request_body = StepBody, params(SignedTurn), security(("bearer" = [])),
    responses(
        (status = 200, description = "the reply", body = StepReply),
        crate::responses::KeyErrors,
        crate::responses::BodyErrors,
        SignedTurnErrors,
    ))]
pub(crate) async fn step(req: HttpRequest, caller: Caller, body: web::Json<StepBody>, api: web::Data<OrchestratorApi>) -> Result<HttpResponse, ApiError> {
    let (mut turn, policy, request) = begin(arrival("conversation_step", &req), caller, body.into_inner(), &api).await?;
    let mut content = String::new();
    let (mut refusal, mut error, mut done) = (None, None, None);
    while let Some(event) = turn.next().await {
        match event {
            TurnEvent::Delta(text) => content.push_str(&text),
            // A turn over these routes declares no tools (the OpenAI facade's alone do).
            TurnEvent::ToolCalls(_) | TurnEvent::Logprobs(_) => {}
            TurnEvent::Refusal(hit) => refusal = Some(hit),
            TurnEvent::Error { code, message } => error = Some(StepError { code: code.name(), message }),
            TurnEvent::Done { finish_reason, usage } => done = Some((finish_reason, usage)),
        }
    }
    let (finish_reason, usage) = done.unwrap_or((super::FinishReason::Error, None));
    let mut response = HttpResponse::Ok();
    governance(&policy, &request).apply(&mut response);
    Ok(response.json(StepReply { session_id: request.session_id.as_str(), turn_id: request.turn_id.as_str(), content, finish_reason, usage, refusal, error }))
}

/// Orchestrator: one allowed turn as server-sent events (needs the signed policy headers)
#[utoipa::path(post, path = "/v1/conversation/stream", tag = "orchestrator", request_body = StepBody, params(SignedTurn), security(("bearer" = [])),
    responses(
        (status = 200, description = "the turn's events", body = crate::responses::TurnEventSchema, content_type = "text/event-stream"),
        crate::responses::KeyErrors,
        crate::responses::BodyErrors,
        SignedTurnErrors,
    ))]
pub(crate) async fn stream(req: HttpRequest, caller: Caller, body: web::Json<StepBody>, api: web::Data<OrchestratorApi>) -> Result<HttpResponse, ApiError> {
    let (turn, policy, request) = begin(arrival("conversation_stream", &req), caller, body.into_inner(), &api).await?;
    let frames = turn.map(|event| {
        let (name, data) = event.sse();
        sse_event(name, &data)
    });
    Ok(governance(&policy, &request).sse_response().body(sse_body(frames, api.keepalive)))
}
