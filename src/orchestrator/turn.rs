//! What a turn is made of: the request, the events it streams, its errors.

use std::pin::Pin;
use std::time::Instant;

use futures_util::Stream;
use serde::Serialize;

use crate::error::{Code, ErrorCode};
use crate::identity::TenantId;
use crate::ids::{SessionId, TurnId};
use crate::moderation::Hit;
use crate::policy::PolicyError;
use crate::slm::{ChatMessage, GenerationParams, Usage};
use crate::telemetry::TraceContext;

/// One user turn to run.
#[derive(Debug, Clone)]
pub struct TurnRequest {
    pub tenant: TenantId,
    pub session_id: SessionId,
    pub turn_id: TurnId,
    pub message: String,
    /// Messages supplied by the caller ahead of the stored history (the OpenAI
    /// facade's earlier messages); empty for `/v1/chat/stream`.
    pub preamble: Vec<ChatMessage>,
    pub params: GenerationParams,
    /// Sequences that end the answer (OpenAI's `stop`; empty: none).
    pub stop_sequences: std::sync::Arc<[String]>,
    /// Tools the model may call and the answer's format (OpenAI facade; default: plain text).
    pub form: std::sync::Arc<crate::slm::AnswerForm>,
    /// Set when the turn's message is a tool's result (OpenAI facade): it goes
    /// to the model as `role: tool`, answering this call, not as the user's.
    pub tool_call_id: Option<String>,
    /// The model the turn asked for, resolved against the catalog (`crate::slm::ModelCatalog`).
    pub model: std::sync::Arc<str>,
    pub trace: TraceContext,
    /// Metric label of the entry point (`chat_stream`, `conversation_step`, …).
    pub route: &'static str,
    /// When the request arrived, for time-to-first-token and duration.
    pub started: Instant,
    /// What the caller already knows of the session: the in-process gateway
    /// has checked ownership (or minted the id), so the orchestrator need not
    /// ask the database again. Over HTTP it is always `None`.
    pub session_known: Option<super::SessionState>,
    /// The tenant's training mode when the turn arrived (marks its events).
    pub training: crate::training::TrainingMark,
    /// Where the turn's policy headers came from.
    pub origin: Origin,
    /// Stops the turn early: on the client's explicit request (a WebSocket
    /// `cancel`: it ends as cancelled, durably, before its `done`) or when
    /// the client stops reading (`client_too_slow`).
    pub stop: super::TurnStop,
}

/// Where a turn's policy headers came from.
#[derive(Debug, Clone)]
pub enum Origin {
    /// The gateway in this process: it emitted `turn.received` with its own
    /// admission decision, and its headers never left the process. The turn
    /// is judged to the end under the constitution the gateway judged it by,
    /// even if another is activated meanwhile.
    Gateway(std::sync::Arc<crate::policy::Judge>),
    /// A caller of the orchestrator's HTTP routes: the orchestrator emits
    /// `turn.received`, and the verdict is claimed so it is good only once.
    Http,
}

/// What a running turn emits, in order: deltas, then at most one refusal or
/// error, then exactly one `Done`.
#[derive(Debug, Clone, PartialEq)]
pub enum TurnEvent {
    Delta(String),
    /// The model's calls of tools, each judged and allowed (OpenAI facade; before `Done`).
    ToolCalls(Vec<crate::slm::ToolCall>),
    /// The log probabilities of the tokens of the `Delta` that follows (OpenAI facade's `logprobs`).
    Logprobs(Vec<serde_json::Value>),
    Refusal(Hit),
    Error {
        code: Code,
        message: String,
    },
    Done {
        finish_reason: FinishReason,
        usage: Option<Usage>,
    },
}

/// Why a turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    Stop,
    Length,
    /// The model called tools: the app runs them and sends their results.
    ToolCalls,
    Refused,
    Cancelled,
    Error,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::ToolCalls => "tool_calls",
            Self::Refused => "refused",
            Self::Cancelled => "cancelled",
            Self::Error => "error",
        }
    }

    /// The finish reason of its stored name ([`FinishReason::as_str`]).
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Stop, Self::Length, Self::ToolCalls, Self::Refused, Self::Cancelled, Self::Error].into_iter().find(|f| f.as_str() == name)
    }

    /// Maps the model server's finish reason.
    pub fn from_model(reason: &str) -> Self {
        match reason {
            "length" => Self::Length,
            "tool_calls" => Self::ToolCalls,
            _ => Self::Stop,
        }
    }
}

pub type TurnStream = Pin<Box<dyn Stream<Item = TurnEvent> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("no session with this id for your tenant")]
    SessionNotFound,
    #[error("conversation store failed")]
    Store(#[from] sqlx::Error),
}

impl ErrorCode for OrchestratorError {
    fn code(&self) -> Code {
        match self {
            Self::Policy(e) => e.code(),
            Self::SessionNotFound => Code::SessionNotFound,
            Self::Store(_) => Code::Internal,
        }
    }
}

impl TurnEvent {
    /// SSE event name and JSON data, as DESIGN.md defines them.
    pub fn sse(&self) -> (&'static str, EventData<'_>) {
        match self {
            Self::Delta(content) => ("delta", EventData::Delta(DeltaData { content })),
            Self::ToolCalls(tool_calls) => ("tool_calls", EventData::ToolCalls(ToolCallsData { tool_calls })),
            Self::Logprobs(content) => ("logprobs", EventData::Logprobs(LogprobsData { content })),
            Self::Refusal(hit) => ("refusal", EventData::Refusal(RefusalData { category: &hit.category, code: &hit.code, message: &hit.message })),
            Self::Error { code, message } => ("error", EventData::Error(ErrorData { code: code.name(), message })),
            Self::Done { finish_reason, usage } => ("done", EventData::Done(DoneData { finish_reason: *finish_reason, usage: *usage })),
        }
    }
}

/// The JSON data of a turn's SSE event (and, with `type` and `turn_id`
/// added, of its WebSocket frame). Each borrows from the event, so a delta,
/// sent once per token or so, costs no copy of its text.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum EventData<'a> {
    Delta(DeltaData<'a>),
    ToolCalls(ToolCallsData<'a>),
    Logprobs(LogprobsData<'a>),
    Refusal(RefusalData<'a>),
    Error(ErrorData<'a>),
    Done(DoneData),
}

/// `session`: the first event of every turn, with what it is judged under.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionData<'a> {
    pub session_id: &'a str,
    pub turn_id: &'a str,
    pub trace_id: &'a str,
    /// The constitution the turn is judged under, `sha256:<hex>`.
    #[schema(pattern = "^sha256:[0-9a-f]{64}$")]
    pub constitution_hash: &'a str,
    /// `allow`, or `refuse:<categories>`.
    pub policy_verdict: &'a str,
}

/// `delta`: the next piece of the answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeltaData<'a> {
    pub content: &'a str,
}

/// `tool_calls`: the model's calls of tools, judged and allowed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ToolCallsData<'a> {
    pub tool_calls: &'a [crate::slm::ToolCall],
}

/// `logprobs`: the log probabilities of the next delta's tokens.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LogprobsData<'a> {
    #[schema(value_type = Vec<Object>)]
    pub content: &'a [serde_json::Value],
}

/// `refusal`: the turn was refused (on input) or cut (on output).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RefusalData<'a> {
    /// Stable snake_case category name, e.g. `indiscriminate_weapons`.
    pub category: &'a str,
    /// Stable category code, e.g. `S9`.
    pub code: &'a str,
    /// The message to show the user.
    pub message: &'a str,
}

/// `error`: the turn failed after it started; `code` is a stable error code.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorData<'a> {
    pub code: &'static str,
    pub message: &'a str,
}

/// `done`: the last event of every turn.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DoneData {
    pub finish_reason: FinishReason,
    /// The model's token counts, when it reported them.
    pub usage: Option<crate::slm::Usage>,
}

/// How many times `max_message_chars` a message may grow to when normalised (ordinary text
/// stays about its size; full case folding at most doubles it).
pub const MAX_EXPANSION: usize = 3;

/// The most NFKC can multiply a text's length by (U+FDFA becomes 18 characters; UAX #15).
const NFKC_MAX_GROWTH: usize = 18;

/// Limits and defaults applied to every turn request, whichever the entry point.
#[derive(Debug, Clone, Copy)]
pub struct TurnLimits {
    pub max_message_chars: usize,
    pub default_max_tokens: u32,
    pub max_tokens_limit: u32,
}

impl TurnLimits {
    /// Rejects an empty or oversized message.
    pub fn check_message(&self, message: &str) -> Result<(), crate::error::ApiError> {
        use crate::error::{ApiError, Code};
        if message.trim().is_empty() {
            return Err(ApiError::new(Code::EmptyMessage, "message must not be empty"));
        }
        if message.contains('\0') {
            return Err(ApiError::new(Code::InvalidRequest, "message must not contain NUL characters"));
        }
        let chars = message.chars().count();
        if chars > self.max_message_chars {
            return Err(ApiError::new(Code::MessageTooLong, format!("message has {chars} characters; the limit is {}", self.max_message_chars)));
        }
        // Moderation works on the compatibility form (NFKC), where one code point can become
        // 18 (U+FDFA): a message is also bounded by what it expands to, counted with an early stop.
        let expanded_limit = self.max_message_chars.saturating_mul(MAX_EXPANSION);
        // NFKC grows a text at most 18-fold (UAX #15): a message that short cannot pass the bound,
        // and the usual turn pays no second normalisation.
        let may_pass = chars.saturating_mul(NFKC_MAX_GROWTH) > expanded_limit;
        if may_pass && unicode_normalization::UnicodeNormalization::nfkc(message).take(expanded_limit + 1).count() > expanded_limit {
            let why = format!(
                "message expands to more than {expanded_limit} characters when normalised (NFKC); the limit is {MAX_EXPANSION} times {}",
                self.max_message_chars
            );
            return Err(ApiError::new(Code::MessageTooLong, why));
        }
        Ok(())
    }

    /// Rejects an earlier message (OpenAI facade) that is oversized or holds
    /// NUL; unlike the last message it may be empty (an assistant's tool call).
    pub fn check_earlier(&self, message: &str) -> Result<(), crate::error::ApiError> {
        if message.is_empty() {
            return Ok(());
        }
        self.check_message(message)
    }

    /// Validated generation parameters.
    pub fn params(&self, max_tokens: Option<u32>, temperature: Option<f32>, seed: Option<i64>) -> Result<GenerationParams, crate::error::ApiError> {
        use crate::error::{ApiError, Code};
        let max_tokens = max_tokens.unwrap_or(self.default_max_tokens);
        if max_tokens == 0 || max_tokens > self.max_tokens_limit {
            return Err(ApiError::new(Code::InvalidRequest, format!("max_tokens must be between 1 and {}", self.max_tokens_limit)));
        }
        if let Some(t) = temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err(ApiError::new(Code::InvalidRequest, "temperature must be between 0 and 2"));
            }
        }
        Ok(GenerationParams { max_tokens, temperature, seed, ..GenerationParams::default() })
    }
}
