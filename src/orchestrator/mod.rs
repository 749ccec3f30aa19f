//! Orchestrator: runs one allowed turn — checks the signed policy verdict,
//! replays the session's history to the model, streams the answer through
//! output moderation and records the finished turn.
//!
//! The gateway calls it in process through the [`Conversation`] port; split
//! deployments call the same code over HTTP (`POST /v1/conversation/step` and
//! `/v1/conversation/stream`, see [`configure`]).

mod answer;
pub(crate) mod api;
mod early;
mod form;
mod outcome;
mod pacing;
mod recorder;
mod service;
mod socket;
mod store;
mod turn;

use futures_util::future::BoxFuture;

pub use api::{configure, OrchestratorApi};
pub use early::EarlyDispatch;
pub use outcome::{CancelReason, Failure, TurnOutcome};
pub use pacing::{Pacing, StopReason, TurnStop};
pub use recorder::{refused_data, turn_context};
pub use service::{Orchestrator, OrchestratorSettings};
pub use store::{ConversationStore, Judged, RecordTurn, Refusals, SessionState, StoredTurn, TurnFilter, TurnRecord, WITHHELD_TEXT};
pub use turn::{
    DeltaData, DoneData, ErrorData, EventData, FinishReason, LogprobsData, OrchestratorError, Origin, RefusalData, SessionData, ToolCallsData, TurnEvent,
    TurnLimits, TurnRequest, TurnStream,
};

use crate::policy::{ConstitutionHash, PolicyHeaders};

/// The orchestrator's port, as the gateway sees it.
pub trait Conversation: Send + Sync {
    /// Verifies the policy headers for this turn and starts it. Errors come
    /// before any output; once the stream exists, failures arrive as
    /// [`TurnEvent::Error`].
    /// `early`: the turn's model request, started by [`Conversation::dispatch_early`].
    fn start_turn(&self, request: TurnRequest, policy: PolicyHeaders, early: Option<EarlyDispatch>) -> BoxFuture<'_, Result<TurnStream, OrchestratorError>>;

    /// Overlapped dispatch: builds the turn's prompt and starts its model
    /// request before the verdict, under the constitution the turn is judged by.
    fn dispatch_early<'a>(&'a self, request: &'a TurnRequest, constitution: &'a ConstitutionHash) -> BoxFuture<'a, Result<EarlyDispatch, OrchestratorError>>;
}
