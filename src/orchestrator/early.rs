//! Overlapped dispatch: a turn's model request started while its input is
//! still being judged. The orchestrator builds the prompt and starts the
//! request ([`crate::slm::start_now`]); nothing of the answer is read until
//! the gateway hands it back to [`super::Conversation::start_turn`] with an
//! allowing verdict. Dropping an [`EarlyDispatch`] aborts its request.

use crate::config::DispatchMode;
use crate::events::TurnData;
use crate::slm::{GenerationParams, ModelStream, Released};
use crate::telemetry::TraceContext;

/// What the model server sends as the verdict of a request started before it.
pub const PENDING_VERDICT: &str = "pending";

/// A turn's model request, running ahead of its verdict.
pub struct EarlyDispatch {
    model: ModelStream,
    /// The model call's span (its id travelled in the request's traceparent).
    model_call: TraceContext,
    /// The `turn.dispatched` event's data: the request was sent whatever the verdict.
    dispatched: TurnData,
    released: Released,
}

impl EarlyDispatch {
    pub(super) fn new(model: ModelStream, model_call: TraceContext, dispatched: TurnData, released: Released) -> Self {
        Self { model, model_call, dispatched, released }
    }

    /// The answer to read, for an allowed turn.
    pub(super) fn into_dispatch(self) -> Dispatch {
        Dispatch { stream: self.model, model_call: self.model_call, data: self.dispatched, released: self.released }
    }

    /// Ends the request unread (the model server frees its slot) and returns
    /// `turn.dispatched`'s data, for a turn refused on input.
    pub fn abort(self) -> TurnData {
        self.dispatched
    }
}

/// A turn's model request as the orchestrator reads it.
pub(super) struct Dispatch {
    pub stream: ModelStream,
    /// The model call's span (its id travels in the request's traceparent).
    pub model_call: TraceContext,
    /// `turn.dispatched`'s data, before the attempt names its upstream.
    pub data: TurnData,
    /// Set once any of the answer reached the client (the router fails over only before).
    pub released: Released,
}

/// `turn.dispatched` of one attempt: `template` naming its upstream and number.
pub(super) fn attempt_data(template: &TurnData, upstream: &str, number: u32) -> TurnData {
    let mut data = template.clone();
    if let TurnData::Dispatched { upstream: named, attempt, .. } = &mut data {
        *named = Some(upstream.to_owned());
        *attempt = Some(number);
    }
    data
}

/// `turn.dispatched`'s data, whichever way the request started.
pub(super) fn dispatched_data(model: &str, params: GenerationParams, prompt_messages: usize, mode: DispatchMode) -> TurnData {
    TurnData::Dispatched {
        model: model.to_owned(),
        max_tokens: params.max_tokens,
        history_messages: prompt_messages.saturating_sub(1),
        dispatch: mode.as_str(),
        upstream: None,
        attempt: None,
    }
}
