//! The language-model client: the [`ModelClient`] port; its
//! OpenAI-compatible HTTP adapter ([`HttpModelClient`]), which streams
//! `POST {base_url}/chat/completions` with `stream: true` and turns the SSE
//! body into [`ModelEvent`]s under connect, first-token, idle and total
//! timeouts; and the [`Router`] over several such servers, with failover
//! before the first token and a circuit breaker per server.

mod catalog;
mod circuit;
mod clients;
mod early;
mod fair;
mod form;
mod http;
mod router;
mod sse;
mod types;

use std::pin::Pin;

use futures_util::future::BoxFuture;
use futures_util::Stream;

pub use catalog::{ModelCatalog, ModelRefusal};
pub use circuit::{CircuitSettings, CircuitState};
pub use early::start_now;
pub use fair::{FairGate, FairModelClient};
pub use form::{AnswerForm, FormatCheck, FunctionCall, ResponseFormat, ToolCall, ToolCallPart, ToolCalls};
pub use http::{HttpModelClient, Timeouts};
pub use router::{Router, Upstream, UpstreamHealth};
pub use types::{ChatMessage, Deadline, DispatchContext, GenerationParams, ModelEvent, ModelRequest, Released, Role, SlmError, Usage};

/// Model output as it arrives.
pub type ModelStream = Pin<Box<dyn Stream<Item = Result<ModelEvent, SlmError>> + Send>>;

/// The port the orchestrator dispatches through.
pub trait ModelClient: Send + Sync {
    /// Starts a streamed completion; connection errors arrive as the first item.
    fn stream(&self, request: ModelRequest) -> ModelStream;
    /// Whether the model server answers, for readiness.
    fn ready(&self) -> BoxFuture<'_, Result<(), SlmError>>;
}
