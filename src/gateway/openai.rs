//! `POST /v1/chat/completions`: the OpenAI-compatible facade, streaming and
//! not, so OpenAI SDKs work by changing their base URL. Each call is a new
//! session whose earlier messages come from the request. Refusals use
//! OpenAI's own shape: `message.refusal` / `delta.refusal` with
//! `finish_reason: "content_filter"`.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::service::{Gateway, TurnInput};
use crate::error::{ApiError, Code};
use crate::identity::Caller;
use crate::orchestrator::{FinishReason, TurnEvent};
use crate::slm::{ChatMessage, GenerationParams, Role, Usage};
use crate::web::{sse_body, sse_data, trace_of, Governance};

/// The request fields Steward honours. Others are accepted only at the value that asks for
/// nothing (`n: 1`, `top_p: 1`, `tools: []`, …); otherwise, and for a field OpenAI's API is not
/// known to have, the request is refused with 400 `unsupported_parameter` naming it (`param`),
/// unless the tenant is lenient (`openai.lenient`), which ignores unknown fields.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = ChatCompletionRequest)]
pub struct CompletionBody {
    /// A model name of `[[slm.models]]` the tenant may use (its default otherwise); an unknown
    /// name is refused with `unknown_model`, one the tenant may not use with `model_not_allowed`.
    model: Option<String>,
    /// Earlier messages, then the user's message last.
    #[schema(min_items = 1)]
    messages: Vec<IncomingMessage>,
    /// Answer as `chat.completion.chunk` server-sent events.
    #[serde(default)]
    stream: bool,
    #[schema(minimum = 1)]
    max_tokens: Option<u32>,
    /// Preferred over `max_tokens` when both are given.
    #[schema(minimum = 1)]
    max_completion_tokens: Option<u32>,
    #[schema(minimum = 0.0, maximum = 2.0)]
    temperature: Option<f32>,
    seed: Option<i64>,
    stream_options: Option<StreamOptions>,
    /// The app's own id of its end user: recorded with the turn (`turn.received`'s `end_user`),
    /// never sent to the model.
    #[schema(max_length = 256)]
    user: Option<String>,
    /// Up to 4 sequences that end the answer where the model would write them (not included).
    stop: Option<StopField>,
    #[schema(minimum = 0.0, maximum = 1.0)]
    top_p: Option<f32>,
    #[schema(minimum = -2.0, maximum = 2.0)]
    presence_penalty: Option<f32>,
    #[schema(minimum = -2.0, maximum = 2.0)]
    frequency_penalty: Option<f32>,
}

/// OpenAI's `stop`: one sequence or several.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum StopField {
    One(String),
    Many(Vec<String>),
}

impl StopField {
    /// The sequences, checked: 1 to 4, none empty, each at most 64 characters.
    fn sequences(self) -> Result<Vec<String>, ApiError> {
        let all = match self {
            Self::One(one) => vec![one],
            Self::Many(many) => many,
        };
        if all.len() > 4 || all.iter().any(|s| s.is_empty() || s.chars().count() > 64) {
            return Err(ApiError::new(Code::InvalidRequest, "stop must be 1 to 4 non-empty sequences of at most 64 characters").with_param("stop"));
        }
        Ok(all)
    }
}

/// `top_p` in 0..=1 and the penalties in -2..=2, as OpenAI's API takes them.
fn sampling(body: &CompletionBody) -> Result<(), ApiError> {
    let ranges =
        [("top_p", body.top_p, 0.0, 1.0), ("presence_penalty", body.presence_penalty, -2.0, 2.0), ("frequency_penalty", body.frequency_penalty, -2.0, 2.0)];
    for (name, value, low, high) in ranges {
        if value.is_some_and(|v| !(low..=high).contains(&v)) {
            return Err(ApiError::new(Code::InvalidRequest, format!("{name} must be between {low} and {high}")).with_param(name));
        }
    }
    Ok(())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct StreamOptions {
    /// End the stream with a chunk carrying the usage.
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct IncomingMessage {
    /// `system`, `developer`, `user` or `assistant`.
    role: String,
    content: Option<Content>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct Part {
    /// Only `text` parts are accepted.
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

/// A whole answer (`stream` false).
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ChatCompletion {
    id: String,
    /// `chat.completion`
    object: &'static str,
    created: u64,
    model: String,
    choices: Vec<Choice>,
    usage: Option<Usage>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Choice {
    index: u32,
    message: AssistantMessage,
    /// `stop`, `length` or `content_filter` (refused).
    finish_reason: &'static str,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct AssistantMessage {
    /// `assistant`
    role: &'static str,
    /// The answer; null when it was refused.
    content: Option<String>,
    /// The refusal message, when it was refused.
    refusal: Option<String>,
}

/// A turn that failed after it started, in OpenAI's error shape.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct OpenAiError {
    error: OpenAiErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct OpenAiErrorDetail {
    message: String,
    #[serde(rename = "type")]
    kind: &'static str,
    /// A stable Steward error code.
    code: &'static str,
    /// The request field the error is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    param: Option<String>,
}

impl OpenAiError {
    fn new(code: Code, message: String) -> Self {
        let (code, kind, _) = code.describe();
        Self { error: OpenAiErrorDetail { message, kind, code, param: None } }
    }

    /// An error about one of the request's fields (its `model`, or a parameter
    /// Steward does not honour), in OpenAI's shape naming the field, for the
    /// SDKs to report it as OpenAI's own.
    fn of_param(err: &ApiError) -> Option<HttpResponse> {
        let code = err.code();
        if !matches!(code, Code::UnknownModel | Code::ModelNotAllowed | Code::UnsupportedParameter) {
            return None;
        }
        let mut body = Self::new(code, err.body().message);
        body.error.param = err.param().map(str::to_owned);
        Some(HttpResponse::build(code.status()).json(body))
    }
}

fn to_message(m: IncomingMessage) -> Result<ChatMessage, ApiError> {
    let role = match m.role.as_str() {
        "system" | "developer" => Role::System,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        other => return Err(ApiError::new(Code::InvalidRequest, format!("unsupported message role `{other}`"))),
    };
    let content = match m.content {
        None => String::new(),
        Some(Content::Text(text)) => text,
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for part in parts {
                match (part.kind.as_str(), part.text) {
                    ("text", Some(t)) => text.push_str(&t),
                    (kind, _) => return Err(ApiError::new(Code::InvalidRequest, format!("unsupported content part `{kind}`"))),
                }
            }
            text
        }
    };
    Ok(ChatMessage::new(role, content))
}

/// Splits the request into earlier messages and the final user message.
fn split_messages(messages: Vec<IncomingMessage>) -> Result<(Vec<ChatMessage>, String), ApiError> {
    let mut messages = messages.into_iter().map(to_message).collect::<Result<Vec<_>, _>>()?;
    match messages.pop() {
        Some(last) if last.role == Role::User => Ok((messages, last.content)),
        _ => Err(ApiError::new(Code::InvalidRequest, "messages must end with a user message")),
    }
}

fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Refused => "content_filter",
        FinishReason::Length => "length",
        _ => "stop",
    }
}

fn usage_json(usage: Option<Usage>) -> Value {
    usage.map_or(Value::Null, |u| json!(u))
}

/// OpenAI-compatible chat completions (stream and non-stream)
///
/// Every caller message is moderated, each on its own and all joined. A system or developer
/// message is refused with 400 `system_prompt_not_allowed` unless the tenant is configured
/// `after_operator` (then it follows the operator's system prompt). Earlier messages get the same
/// size and NUL checks as the last. A turn that fails after it started answers with its error's
/// status in OpenAI's error shape.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "chat", request_body = CompletionBody, security(("bearer" = [])),
    responses(
        (status = 200, description = "a chat.completion, or chat.completion.chunk events when `stream` is true",
            content((ChatCompletion = "application/json"), (crate::responses::CompletionChunkEvent = "text/event-stream"))),
        crate::responses::KeyErrors,
        crate::responses::BodyErrors,
        (status = 403, response = crate::responses::Problem),
        (status = 503, description = "the model or another dependency is unavailable",
            content((crate::error::ErrorBody = "application/problem+json"), (OpenAiError = "application/json"))),
        (status = 504, description = "the model did not answer in time", body = OpenAiError),
    ))]
pub async fn completions(
    req: HttpRequest,
    caller: Caller,
    body: web::Json<serde_json::Map<String, Value>>,
    gateway: web::Data<Gateway>,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let body = body.into_inner();
    let screened = match super::openai_params::screen(&body, gateway.openai_lenient.of(caller.tenant.as_str())) {
        Ok(screened) => screened,
        Err(err) => return OpenAiError::of_param(&err).ok_or(err),
    };
    if !screened.ignored.is_empty() {
        gateway.metrics.openai_ignored_parameters(screened.ignored.len());
        // Names come from the client: a bounded sample of them, each cut short, is logged.
        let sample: Vec<String> = screened.ignored.iter().take(10).map(|name| name.chars().take(64).collect()).collect();
        tracing::info!(tenant = %caller.tenant, count = screened.ignored.len(), ignored = ?sample, "unknown request fields ignored (openai.lenient)");
    }
    let body: CompletionBody =
        serde_json::from_value(Value::Object(body)).map_err(|e| ApiError::new(Code::InvalidRequest, format!("invalid request body: {e}")))?;
    if body.user.as_ref().is_some_and(|u| u.chars().count() > 256) {
        return Err(ApiError::new(Code::InvalidRequest, "user must be at most 256 characters").with_param("user"));
    }
    sampling(&body)?;
    let params = GenerationParams {
        top_p: body.top_p,
        presence_penalty: body.presence_penalty,
        frequency_penalty: body.frequency_penalty,
        ..gateway.limits.params(body.max_completion_tokens.or(body.max_tokens), body.temperature, body.seed)?
    };
    let stop_sequences = body.stop.map(StopField::sequences).transpose()?.unwrap_or_default();
    let (preamble, message) = split_messages(body.messages)?;
    let input = TurnInput {
        route: "chat_completions",
        session_id: None,
        message,
        preamble,
        params,
        model: body.model,
        end_user: body.user,
        stop_sequences: stop_sequences.into(),
        trace: trace_of(&req),
        started,
        stop: Default::default(),
    };
    let admission = match gateway.admit(&caller, input).await {
        Ok(admission) => admission,
        Err(err) => return OpenAiError::of_param(&err).ok_or(err),
    };
    let verdict = admission.signed.verdict.header_value();
    let meta = Meta {
        id: format!("chatcmpl-{}", admission.turn_id),
        created: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default(),
        model: admission.model.to_string(),
    };
    let events = admission.outcome.into_events();
    let governance = Governance {
        constitution_hash: admission.signed.constitution_hash.as_str(),
        policy_verdict: &verdict,
        session_id: admission.session_id.as_str(),
        trace: &admission.trace,
    };
    if body.stream {
        let include_usage = body.stream_options.is_some_and(|o| o.include_usage);
        let frames = streamed(meta, events, include_usage);
        return Ok(governance.sse_response().body(sse_body(frames, gateway.keepalive)));
    }
    let (status, json) = collected(meta, events).await;
    let mut response = HttpResponse::build(status);
    governance.apply(&mut response);
    Ok(response.json(json))
}

struct Meta {
    id: String,
    created: u64,
    model: String,
}

impl Meta {
    fn chunk(&self, delta: Value, finish: Option<&str>) -> String {
        json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
        })
        .to_string()
    }
}

fn streamed(meta: Meta, events: crate::orchestrator::TurnStream, include_usage: bool) -> impl futures_util::Stream<Item = actix_web_lab::sse::Event> {
    async_stream::stream! {
        yield sse_data(meta.chunk(json!({ "role": "assistant", "content": "" }), None));
        let mut events = events;
        while let Some(event) = events.next().await {
            match event {
                TurnEvent::Delta(text) => yield sse_data(meta.chunk(json!({ "content": text }), None)),
                TurnEvent::Refusal(hit) => yield sse_data(meta.chunk(json!({ "refusal": hit.message }), None)),
                TurnEvent::Error { code, message } => yield sse_data(serde_json::to_string(&OpenAiError::new(code, message)).unwrap_or_default()),
                TurnEvent::Done { finish_reason: reason, usage } => {
                    if reason != FinishReason::Error {
                        yield sse_data(meta.chunk(json!({}), Some(finish_reason(reason))));
                    }
                    if include_usage {
                        let chunk = json!({ "id": meta.id, "object": "chat.completion.chunk", "created": meta.created,
                            "model": meta.model, "choices": [], "usage": usage_json(usage) });
                        yield sse_data(chunk.to_string());
                    }
                }
            }
        }
        yield sse_data("[DONE]");
    }
}

async fn collected(meta: Meta, mut events: crate::orchestrator::TurnStream) -> (actix_web::http::StatusCode, Value) {
    let (mut content, mut refusal, mut done) = (String::new(), None, None);
    while let Some(event) = events.next().await {
        match event {
            TurnEvent::Delta(text) => content.push_str(&text),
            TurnEvent::Refusal(hit) => refusal = Some(hit.message),
            TurnEvent::Error { code, message } => return (code.status(), json!(OpenAiError::new(code, message))),
            TurnEvent::Done { finish_reason, usage } => done = Some((finish_reason, usage)),
        }
    }
    let (reason, usage) = done.unwrap_or((FinishReason::Error, None));
    let message = match refusal {
        Some(text) => AssistantMessage { role: "assistant", content: None, refusal: Some(text) },
        None => AssistantMessage { role: "assistant", content: Some(content), refusal: None },
    };
    let body = ChatCompletion {
        id: meta.id,
        object: "chat.completion",
        created: meta.created,
        model: meta.model,
        choices: vec![Choice { index: 0, message, finish_reason: finish_reason(reason) }],
        usage,
    };
    (actix_web::http::StatusCode::OK, json!(body))
}
