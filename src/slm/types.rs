//! Requests to and events from the model.

use serde::{Deserialize, Serialize};

use crate::error::{Code, ErrorCode};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    /// A tool's result (OpenAI facade), answering an assistant's tool call.
    Tool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
    /// An assistant message's calls of tools (OpenAI facade).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<super::ToolCall>>,
    /// A tool message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into(), tool_calls: None, tool_call_id: None }
    }
}

/// Sampling parameters a caller may set.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GenerationParams {
    pub max_tokens: u32,
    pub temperature: Option<f32>,
    pub seed: Option<i64>,
    pub top_p: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    /// Return each answer token's log probability (OpenAI's `logprobs`).
    pub logprobs: bool,
    /// With `logprobs`: this many most likely tokens at each position (0 to 20).
    pub top_logprobs: Option<u8>,
}

/// Headers every dispatch carries.
#[derive(Debug, Clone)]
pub struct DispatchContext {
    /// Whose turn it is (for fair turns at the model server; never sent upstream).
    pub tenant: String,
    pub constitution_hash: String,
    pub policy_verdict: String,
    pub traceparent: String,
}

/// Whether any of a turn's answer reached its client (see [`ModelRequest::released`]).
pub type Released = std::sync::Arc<std::sync::atomic::AtomicBool>;

#[derive(Debug, Clone)]
pub struct ModelRequest {
    /// The model name the turn resolved to (`crate::slm::ModelCatalog`); its upstreams answer.
    pub model: std::sync::Arc<str>,
    pub messages: Vec<ChatMessage>,
    pub params: GenerationParams,
    /// Sequences that end the answer where the model would write them (up to 4; empty: none).
    pub stop: std::sync::Arc<[String]>,
    /// Tools the model may call and the format of its answer (default: plain text).
    pub form: std::sync::Arc<super::AnswerForm>,
    pub context: DispatchContext,
    /// Set by the answer's reader once any of it reached the client: until then a failed
    /// attempt may move to another server (held-back text is discarded); after, it cannot.
    pub released: Released,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ModelEvent {
    /// A piece of the answer.
    Delta(String),
    /// A piece of a call of a tool.
    ToolCall(super::ToolCallPart),
    /// The log probabilities of the tokens of the `Delta` that follows
    /// (OpenAI's `logprobs.content` entries, as the server gave them).
    Logprobs(Vec<serde_json::Value>),
    /// Why the model stopped (`stop`, `length`, …).
    Finish(String),
    Usage(Usage),
    /// The request went to this model server, as this attempt of the turn
    /// (the router's; before any of that attempt's answer).
    Attempt {
        upstream: std::sync::Arc<str>,
        attempt: u32,
    },
    /// That attempt failed before any of the answer reached the client, for `reason` (an
    /// `slm_upstream_requests` outcome); the router tries another server.
    Failover {
        upstream: std::sync::Arc<str>,
        attempt: u32,
        reason: &'static str,
    },
}

impl ModelEvent {
    /// Whether the event is part of the answer (text or a tool call), not news about it.
    pub fn is_answer(&self) -> bool {
        matches!(self, Self::Delta(_) | Self::ToolCall(_))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SlmError {
    #[error("model server unreachable")]
    Unavailable(#[source] reqwest::Error),
    #[error("model server sent no {} in time", .0.awaited())]
    Timeout(Deadline),
    #[error("model server answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("model stream broke")]
    Stream(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("model server sent an unreadable chunk: {0}")]
    Protocol(String),
    #[error("no model server may be tried: every upstream failed this turn or is cooling down")]
    NoUpstream,
}

/// Which of the model call's deadlines passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// No response headers or no first content in time (`slm.first_token_timeout`).
    FirstToken,
    /// Silent between two events too long (`slm.idle_timeout`).
    Idle,
    /// The whole answer took too long (`slm.total_timeout`).
    Total,
}

impl Deadline {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FirstToken => "first_token_deadline",
            Self::Idle => "idle_deadline",
            Self::Total => "total_deadline",
        }
    }

    fn awaited(self) -> &'static str {
        match self {
            Self::FirstToken => "first token",
            Self::Idle => "event",
            Self::Total => "complete answer",
        }
    }
}

impl SlmError {
    /// Why a turn stopped on this error, as a metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Timeout(deadline) => deadline.as_str(),
            Self::Unavailable(_) | Self::NoUpstream => "model_unavailable",
            Self::Status { .. } | Self::Stream(_) | Self::Protocol(_) => "model_error",
        }
    }
}

impl ErrorCode for SlmError {
    fn code(&self) -> Code {
        match self {
            Self::Unavailable(_) | Self::NoUpstream => Code::ModelUnavailable,
            Self::Timeout(_) => Code::ModelTimeout,
            Self::Status { .. } | Self::Stream(_) | Self::Protocol(_) => Code::ModelError,
        }
    }
}
