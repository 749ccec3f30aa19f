//! `POST /v1/chat/completions`: the OpenAI-compatible facade, streaming and
//! not, so OpenAI SDKs work by changing their base URL. Each call is a new
//! session whose earlier messages come from the request. Refusals use
//! OpenAI's own shape: `message.refusal` / `delta.refusal` with
//! `finish_reason: "content_filter"`; so do errors, all of them, in OpenAI's
//! error shape. Tools are governed: the model's calls reach the app only once
//! judged (`message.tool_calls` / `delta.tool_calls`, `finish_reason:
//! "tool_calls"`), and a tool's result is judged as input like the user's.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::openai_form::{FormFields, ResponseFormatField, ToolChoice, ToolDef};
use super::openai_messages::{split_messages, IncomingMessage, Split};
use super::service::{Gateway, TurnInput};
use crate::error::{ApiError, Code};
use crate::identity::Caller;
use crate::orchestrator::{FinishReason, TurnEvent};
use crate::slm::{GenerationParams, ToolCall, Usage};
use crate::web::{sse_body, sse_data, trace_of, Governance};

/// The request fields Steward honours. Others are accepted only at the value that asks for
/// nothing (`n: 1`, `logprobs: false`, …); otherwise, and for a field OpenAI's API is not
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
    /// Return each answer token's log probability (not with `tools`).
    logprobs: Option<bool>,
    /// With `logprobs`: this many most likely tokens at each position.
    #[schema(minimum = 0, maximum = 20)]
    top_logprobs: Option<u8>,
    /// Tools the model may call (at most 128; the tenant's `openai.allowed_tools` may limit
    /// their names: 403 `tool_not_allowed`). Each call is judged as output before it reaches
    /// the app; a harmful one ends the answer with `content_filter`.
    #[schema(max_items = 128)]
    tools: Option<Vec<ToolDef>>,
    tool_choice: Option<ToolChoice>,
    parallel_tool_calls: Option<bool>,
    /// `json_object` or `json_schema` (forwarded: the model server constrains its answer by it);
    /// the whole answer is checked against it and the turn records the result (`turn.format_checked`).
    response_format: Option<ResponseFormatField>,
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
    /// `stop`, `length`, `tool_calls` or `content_filter` (refused).
    finish_reason: &'static str,
    /// With `logprobs`: `{"content": [...]}`, each answer token's log probability as the model server gave it.
    #[schema(value_type = Option<Object>)]
    logprobs: Option<Value>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct AssistantMessage {
    /// `assistant`
    role: &'static str,
    /// The answer; null when it was refused or is only tool calls.
    content: Option<String>,
    /// The refusal message, when it was refused.
    refusal: Option<String>,
    /// The model's calls of tools, each judged and allowed (`finish_reason` `tool_calls`).
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<Vec<ToolCall>>,
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

    /// Any error of the facade, in OpenAI's shape (naming the request field it
    /// is about, if any), with the status and headers (`Retry-After`) Steward's
    /// own shape would have: the SDKs report it as OpenAI's own.
    fn response(err: &ApiError) -> HttpResponse {
        use actix_web::ResponseError;
        let problem = err.error_response();
        let mut response = HttpResponse::build(problem.status());
        for (name, value) in problem.headers() {
            if name != actix_web::http::header::CONTENT_TYPE {
                response.insert_header((name.clone(), value.clone()));
            }
        }
        let mut body = Self::new(err.code(), err.body().message);
        body.error.param = err.param().map(str::to_owned);
        response.json(body)
    }
}

/// The body extractor's error (malformed, oversized, not JSON) as the [`ApiError`] it carries.
fn body_error(err: &actix_web::Error) -> ApiError {
    match err.as_error::<ApiError>() {
        Some(api) => {
            let api_error = ApiError::new(api.code(), api.body().message);
            match api.param() {
                Some(param) => api_error.with_param(param),
                None => api_error,
            }
        }
        None => ApiError::new(Code::MalformedJson, err.to_string()),
    }
}

fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Refused => "content_filter",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        _ => "stop",
    }
}

fn usage_json(usage: Option<Usage>) -> Value {
    usage.map_or(Value::Null, |u| json!(u))
}

/// OpenAI-compatible chat completions (stream and non-stream)
///
/// Every caller message is moderated, each on its own and all joined: the user's, a tool's
/// result (where an injected instruction is refused as `prompt_injection`) and the arguments of
/// earlier tool calls. A system or developer message is refused with 400
/// `system_prompt_not_allowed` unless the tenant is configured `after_operator` (then it follows
/// the operator's system prompt). Earlier messages get the same size and NUL checks as the last.
/// The model's tool calls are judged as output before they reach the app. Every error, before
/// the turn or after it started, comes in OpenAI's error shape with its status.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "chat", request_body = CompletionBody, security(("bearer" = [])),
    responses(
        (status = 200, description = "a chat.completion, or chat.completion.chunk events when `stream` is true",
            content((ChatCompletion = "application/json"), (crate::responses::CompletionChunkEvent = "text/event-stream"))),
        (status = 400, description = "malformed or invalid, or a field that cannot be honoured (`param` names it)", body = OpenAiError),
        (status = 401, description = "no key, or an unknown or revoked one", body = OpenAiError),
        (status = 403, description = "the key may not chat, use this model or declare this tool", body = OpenAiError),
        (status = 413, description = "the body is over the size limit", body = OpenAiError),
        (status = 415, description = "the body is not `application/json`", body = OpenAiError),
        (status = 429, description = "over the tenant's limits (`Retry-After`)", body = OpenAiError),
        (status = 502, description = "the model failed", body = OpenAiError),
        (status = 503, description = "the model or another dependency is unavailable", body = OpenAiError),
        (status = 504, description = "the model did not answer in time", body = OpenAiError),
    ))]
pub async fn completions(
    req: HttpRequest,
    caller: Result<Caller, ApiError>,
    body: Result<web::Json<serde_json::Map<String, Value>>, actix_web::Error>,
    gateway: web::Data<Gateway>,
) -> HttpResponse {
    let started = Instant::now();
    let answered = match (caller, body) {
        (Err(err), _) => Err(err),
        (Ok(_), Err(err)) => Err(body_error(&err)),
        (Ok(caller), Ok(body)) => complete(&req, &caller, body.into_inner(), &gateway, started).await,
    };
    answered.unwrap_or_else(|err| OpenAiError::response(&err))
}

async fn complete(
    req: &HttpRequest,
    caller: &Caller,
    body: serde_json::Map<String, Value>,
    gateway: &Gateway,
    started: Instant,
) -> Result<HttpResponse, ApiError> {
    let tenant = caller.tenant.as_str();
    let screened = super::openai_params::screen(&body, gateway.openai_lenient.of(tenant))?;
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
    let logprobs = body.logprobs.unwrap_or(false);
    if body.top_logprobs.is_some_and(|n| n > 20 || !logprobs) {
        return Err(ApiError::new(Code::InvalidRequest, "top_logprobs must be 0 to 20, with logprobs true").with_param("top_logprobs"));
    }
    if logprobs && body.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::new(Code::UnsupportedParameter, "`logprobs` cannot be combined with tools here").with_param("logprobs"));
    }
    let params = GenerationParams {
        logprobs,
        top_logprobs: body.top_logprobs.filter(|_| logprobs),
        top_p: body.top_p,
        presence_penalty: body.presence_penalty,
        frequency_penalty: body.frequency_penalty,
        ..gateway.limits.params(body.max_completion_tokens.or(body.max_tokens), body.temperature, body.seed)?
    };
    let stop_sequences = body.stop.map(StopField::sequences).transpose()?.unwrap_or_default();
    let fields =
        FormFields { tools: body.tools, tool_choice: body.tool_choice, parallel_tool_calls: body.parallel_tool_calls, response_format: body.response_format };
    let form = fields.check(gateway.allowed_tools.get(tenant).map(Vec::as_slice))?;
    let Split { earlier, last, tool_call_id } = split_messages(body.messages)?;
    let input = TurnInput {
        route: "chat_completions",
        session_id: None,
        message: last,
        preamble: earlier,
        params,
        model: body.model,
        end_user: body.user,
        stop_sequences: stop_sequences.into(),
        form: form.into(),
        tool_call_id,
        trace: trace_of(req),
        started,
        stop: Default::default(),
    };
    let admission = gateway.admit(caller, input).await?;
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
    let (status, json) = collected(meta, events, params.logprobs).await;
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
        self.chunk_with(delta, finish, None)
    }

    /// A chunk whose delta's tokens have these log probabilities.
    fn chunk_with(&self, delta: Value, finish: Option<&str>, logprobs: Option<Vec<Value>>) -> String {
        let mut choice = json!({ "index": 0, "delta": delta, "finish_reason": finish });
        if let Some(content) = logprobs {
            choice["logprobs"] = json!({ "content": content });
        }
        json!({ "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model, "choices": [choice] }).to_string()
    }
}

fn streamed(meta: Meta, events: crate::orchestrator::TurnStream, include_usage: bool) -> impl futures_util::Stream<Item = actix_web_lab::sse::Event> {
    async_stream::stream! {
        yield sse_data(meta.chunk(json!({ "role": "assistant", "content": "" }), None));
        let mut events = events;
        let mut logprobs = None;
        while let Some(event) = events.next().await {
            match event {
                TurnEvent::Logprobs(entries) => logprobs = Some(entries),
                TurnEvent::Delta(text) => yield sse_data(meta.chunk_with(json!({ "content": text }), None, logprobs.take())),
                TurnEvent::ToolCalls(calls) => {
                    let calls: Vec<Value> = calls.into_iter().enumerate()
                        .map(|(index, call)| json!({ "index": index, "id": call.id, "type": call.kind, "function": call.function }))
                        .collect();
                    yield sse_data(meta.chunk(json!({ "tool_calls": calls }), None));
                }
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

/// The whole answer; `logprobs`: whether the request asked for them.
async fn collected(meta: Meta, mut events: crate::orchestrator::TurnStream, logprobs: bool) -> (actix_web::http::StatusCode, Value) {
    let (mut content, mut refusal, mut done, mut tool_calls) = (String::new(), None, None, None);
    let mut entries = Vec::new();
    while let Some(event) = events.next().await {
        match event {
            TurnEvent::Logprobs(more) => entries.extend(more),
            TurnEvent::Delta(text) => content.push_str(&text),
            TurnEvent::ToolCalls(calls) => tool_calls = Some(calls),
            TurnEvent::Refusal(hit) => refusal = Some(hit.message),
            TurnEvent::Error { code, message } => return (code.status(), json!(OpenAiError::new(code, message))),
            TurnEvent::Done { finish_reason, usage } => done = Some((finish_reason, usage)),
        }
    }
    let (reason, usage) = done.unwrap_or((FinishReason::Error, None));
    let message = match (refusal, tool_calls) {
        (Some(text), _) => AssistantMessage { role: "assistant", content: None, refusal: Some(text), tool_calls: None },
        (None, Some(calls)) => {
            let content = (!content.is_empty()).then_some(content);
            AssistantMessage { role: "assistant", content, refusal: None, tool_calls: Some(calls) }
        }
        (None, None) => AssistantMessage { role: "assistant", content: Some(content), refusal: None, tool_calls: None },
    };
    let body = ChatCompletion {
        id: meta.id,
        object: "chat.completion",
        created: meta.created,
        model: meta.model,
        choices: vec![Choice { index: 0, message, finish_reason: finish_reason(reason), logprobs: logprobs.then(|| json!({ "content": entries })) }],
        usage,
    };
    (actix_web::http::StatusCode::OK, json!(body))
}
