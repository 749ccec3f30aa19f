//! How a running turn ended, typed once: its finish reason, its metric
//! outcome, its terminal event and that event's data, and the frames its
//! client receives after the answer are all derived here, in one place each.

use super::pacing::StopReason;
use super::recorder::refused_data;
use super::turn::{FinishReason, TurnEvent};
use crate::error::Code;
use crate::events::TurnData;
use crate::moderation::Hit;
use crate::slm::Usage;
use crate::telemetry::RequestOutcome;

/// The end of a turn that started streaming.
#[derive(Debug, Clone, PartialEq)]
pub enum TurnOutcome {
    /// The model finished its answer (`stop` or `length`).
    Completed(FinishReason),
    /// Output moderation cut the answer.
    Refused(Hit),
    /// Ended before its answer did, and not by a fault.
    Cancelled(CancelReason),
    /// Failed after it started.
    Failed(Failure),
}

/// Why a turn was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// The client asked (a WebSocket `cancel`).
    Requested,
    /// Steward shut down and the turn outlived the grace period.
    Shutdown,
    /// The client went away (its stream was dropped).
    ClientDisconnected,
}

impl CancelReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => StopReason::CancelRequested.as_str(),
            Self::Shutdown => StopReason::Shutdown.as_str(),
            Self::ClientDisconnected => "client_disconnected",
        }
    }
}

/// A turn's failure after it started.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The model server failed; `reason` labels the metric.
    Model { code: Code, message: String, reason: &'static str },
    /// The client did not read the answer in time.
    ClientTooSlow,
    /// The operator's guard gave no decision on the answer, and the tenant's guard fails closed.
    Guard,
}

impl Failure {
    /// The model server failed after the answer began reaching the client
    /// (its failover came too late to be invisible).
    pub fn upstream_lost() -> Self {
        Self::Model { code: Code::ModelError, message: crate::error::generic_message(Code::ModelError).to_owned(), reason: "model_error" }
    }

    /// The model server's failure, as the client is told it.
    pub fn model(err: crate::slm::SlmError) -> Self {
        let reason = err.reason();
        let public = crate::error::ApiError::from(err);
        Self::Model { code: public.code(), message: public.body().message, reason }
    }
}

impl TurnOutcome {
    /// The outcome of a turn stopped early by its [`super::TurnStop`].
    pub fn stopped(reason: StopReason) -> Self {
        match reason {
            StopReason::CancelRequested => Self::Cancelled(CancelReason::Requested),
            StopReason::Shutdown => Self::Cancelled(CancelReason::Shutdown),
            StopReason::ClientTooSlow => Self::Failed(Failure::ClientTooSlow),
        }
    }

    pub fn finish_reason(&self) -> FinishReason {
        match self {
            Self::Completed(finish) => *finish,
            Self::Refused(_) => FinishReason::Refused,
            Self::Cancelled(_) => FinishReason::Cancelled,
            Self::Failed(_) => FinishReason::Error,
        }
    }

    /// The request metric's outcome (a cancelled turn was allowed and answered in part).
    pub fn request_outcome(&self) -> RequestOutcome {
        match self {
            Self::Completed(_) | Self::Cancelled(_) => RequestOutcome::Allow,
            Self::Refused(_) => RequestOutcome::Refuse,
            Self::Failed(_) => RequestOutcome::Error,
        }
    }

    /// The label of `stream_interrupted_total`, for a turn that did not run to its end.
    pub fn interruption(&self) -> Option<&'static str> {
        match self {
            Self::Completed(_) | Self::Refused(_) => None,
            Self::Cancelled(reason) => Some(reason.as_str()),
            Self::Failed(Failure::Model { reason, .. }) => Some(reason),
            Self::Failed(Failure::ClientTooSlow) => Some(StopReason::ClientTooSlow.as_str()),
            Self::Failed(Failure::Guard) => Some(Code::GuardUnavailable.name()),
        }
    }

    /// The terminal event's data. `ended` is what only the recorder knows.
    pub fn event_data(&self, ended: &Ended<'_>) -> TurnData {
        match self {
            Self::Completed(finish) => {
                TurnData::Completed { model: ended.model.to_owned(), finish_reason: finish.as_str(), usage: ended.usage, duration_ms: ended.duration_ms }
            }
            Self::Refused(hit) => refused_data("output", std::slice::from_ref(hit), None, ended.guard.cloned()),
            Self::Cancelled(reason) => TurnData::Cancelled { reason: reason.as_str(), emitted_chars: ended.emitted_chars() },
            Self::Failed(Failure::Model { code, .. }) => TurnData::Failed { code: code.name(), stage: "model", emitted_chars: None },
            Self::Failed(Failure::ClientTooSlow) => {
                TurnData::Failed { code: Code::ClientTooSlow.name(), stage: "client", emitted_chars: Some(ended.emitted_chars()) }
            }
            Self::Failed(Failure::Guard) => {
                TurnData::Failed { code: Code::GuardUnavailable.name(), stage: "output_moderation", emitted_chars: Some(ended.emitted_chars()) }
            }
        }
    }

    /// What the client receives after the answer: the refusal or error the
    /// outcome names, then `done`. A turn whose end could not be stored says
    /// so instead of a `done` that promises durability.
    pub fn frames(self, stored: bool, usage: Option<Usage>) -> Vec<TurnEvent> {
        let finish_reason = self.finish_reason();
        let mut frames = match self {
            Self::Refused(hit) => vec![TurnEvent::Refusal(hit)],
            // The model's error is the client's news whether or not the turn was stored.
            Self::Failed(Failure::Model { code, message, .. }) => {
                return vec![TurnEvent::Error { code, message }, TurnEvent::Done { finish_reason, usage }];
            }
            Self::Failed(Failure::ClientTooSlow) if stored => {
                vec![TurnEvent::Error { code: Code::ClientTooSlow, message: "the client did not read the answer in time".into() }]
            }
            Self::Failed(Failure::Guard) => {
                vec![TurnEvent::Error { code: Code::GuardUnavailable, message: "the guard gave no decision on the answer".into() }]
            }
            _ => Vec::new(),
        };
        if stored {
            frames.push(TurnEvent::Done { finish_reason, usage });
        } else {
            frames.push(TurnEvent::Error { code: Code::Internal, message: "the turn's events could not be stored".into() });
            frames.push(TurnEvent::Done { finish_reason: FinishReason::Error, usage });
        }
        frames
    }
}

/// What a turn's end knows beyond its outcome, for the terminal event's data.
#[derive(Debug, Clone, Copy)]
pub struct Ended<'a> {
    pub model: &'a str,
    pub usage: Option<Usage>,
    pub duration_ms: u64,
    /// The answer that reached the client (counted only by the outcomes that report it).
    pub emitted: &'a str,
    /// The operator's guard, when one is configured (named by a refusal it decided).
    pub guard: Option<&'a crate::moderation::guard::GuardInfo>,
}

impl Ended<'_> {
    fn emitted_chars(&self) -> usize {
        self.emitted.chars().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit() -> Hit {
        Hit { code: "S1".into(), category: "violent_crimes".into(), message: "no".into(), layer: crate::moderation::Layer::Semantic, score: Some(0.9) }
    }

    fn names(frames: &[TurnEvent]) -> Vec<&'static str> {
        frames.iter().map(|f| f.sse().0).collect()
    }

    #[test]
    fn a_stored_end_sends_its_refusal_or_error_then_done_with_its_finish_reason() {
        let cases = [
            (TurnOutcome::Completed(FinishReason::Length), vec!["done"], FinishReason::Length),
            (TurnOutcome::Refused(hit()), vec!["refusal", "done"], FinishReason::Refused),
            (TurnOutcome::Cancelled(CancelReason::Requested), vec!["done"], FinishReason::Cancelled),
            (TurnOutcome::Failed(Failure::ClientTooSlow), vec!["error", "done"], FinishReason::Error),
        ];
        for (outcome, expected, finish) in cases {
            let frames = outcome.clone().frames(true, None);
            assert_eq!(names(&frames), expected, "{outcome:?}");
            assert_eq!(frames.last(), Some(&TurnEvent::Done { finish_reason: finish, usage: None }), "{outcome:?}");
        }
    }

    #[test]
    fn an_end_that_was_not_stored_says_so_instead_of_promising_durability() {
        for outcome in [TurnOutcome::Completed(FinishReason::Stop), TurnOutcome::Cancelled(CancelReason::Shutdown), TurnOutcome::Failed(Failure::ClientTooSlow)]
        {
            let frames = outcome.frames(false, None);
            assert_eq!(names(&frames), ["error", "done"]);
            assert!(matches!(&frames[0], TurnEvent::Error { code: Code::Internal, .. }));
            assert_eq!(frames[1], TurnEvent::Done { finish_reason: FinishReason::Error, usage: None });
        }
        let refused = TurnOutcome::Refused(hit()).frames(false, None);
        assert_eq!(names(&refused), ["refusal", "error", "done"], "the refusal is still the client's news");
    }

    #[test]
    fn a_model_failure_reaches_the_client_whether_or_not_it_was_stored() {
        let failure = TurnOutcome::Failed(Failure::Model { code: Code::ModelUnavailable, message: "the model failed".into(), reason: "upstream_error" });
        for stored in [true, false] {
            let frames = failure.clone().frames(stored, None);
            assert_eq!(frames[0], TurnEvent::Error { code: Code::ModelUnavailable, message: "the model failed".into() });
            assert_eq!(frames[1], TurnEvent::Done { finish_reason: FinishReason::Error, usage: None });
        }
    }

    #[test]
    fn each_outcome_names_its_event_data_and_its_metric() {
        let ended = Ended { model: "m", usage: None, duration_ms: 5, emitted: "Rivers!", guard: None };
        let cancelled = TurnOutcome::Cancelled(CancelReason::ClientDisconnected);
        assert_eq!(cancelled.event_data(&ended), TurnData::Cancelled { reason: "client_disconnected", emitted_chars: 7 });
        assert_eq!(cancelled.interruption(), Some("client_disconnected"));
        let slow = TurnOutcome::stopped(StopReason::ClientTooSlow);
        assert_eq!(slow.event_data(&ended), TurnData::Failed { code: "client_too_slow", stage: "client", emitted_chars: Some(7) });
        assert_eq!(slow.request_outcome(), RequestOutcome::Error);
        let refused = TurnOutcome::Refused(hit());
        assert_eq!(refused.event_data(&ended).to_value()["layer"], "semantic");
        assert_eq!(refused.interruption(), None);
        assert_eq!(TurnOutcome::Completed(FinishReason::Stop).event_data(&ended).to_value()["duration_ms"], 5);
        let unguarded = TurnOutcome::Failed(Failure::Guard);
        assert_eq!(unguarded.event_data(&ended), TurnData::Failed { code: "guard_unavailable", stage: "output_moderation", emitted_chars: Some(7) });
        assert_eq!(unguarded.interruption(), Some("guard_unavailable"));
        assert_eq!(
            unguarded.frames(true, None)[0],
            TurnEvent::Error { code: Code::GuardUnavailable, message: "the guard gave no decision on the answer".into() }
        );
    }
}
