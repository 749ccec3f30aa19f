//! The orchestrator service: policy check, history, dispatch, output
//! moderation and recording of each turn.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use serde_json::json;

use super::early::{dispatched_data, EarlyDispatch, PENDING_VERDICT};
use super::pacing::{paced, Pacing, StopReason};
use super::recorder::{refused_data, turn_context, Recorder};
use super::store::{ConversationStore, SessionState};
use super::turn::{FinishReason, OrchestratorError, Origin, TurnEvent, TurnRequest, TurnStream};
use super::Conversation;
use crate::config::DispatchMode;
use crate::error::{ApiError, Code};
use crate::events::{EventLog, EventType};
use crate::moderation::{GuardStep, Hit, Moderator};
use crate::policy::{ConstitutionHash, Judge, Judges, PolicyEngine, PolicyError, PolicyHeaders, SignedVerdict, TurnRef, Verdict};
use crate::slm::{start_now, ChatMessage, DispatchContext, ModelClient, ModelEvent, ModelRequest, ModelStream, Role};
use crate::telemetry::{Metrics, RequestOutcome, TraceContext};

#[derive(Debug, Clone)]
pub struct OrchestratorSettings {
    /// Model name recorded in events.
    pub model: String,
    pub system_prompt: String,
    pub max_history_turns: u32,
    /// Bounds between a running turn and its client.
    pub pacing: Pacing,
}

pub struct Orchestrator {
    policy: Arc<PolicyEngine>,
    judges: Arc<Judges>,
    model: Arc<dyn ModelClient>,
    store: ConversationStore,
    metrics: Arc<Metrics>,
    events: EventLog,
    settings: OrchestratorSettings,
}

impl Orchestrator {
    pub fn new(
        policy: Arc<PolicyEngine>,
        judges: Arc<Judges>,
        model: Arc<dyn ModelClient>,
        store: ConversationStore,
        metrics: Arc<Metrics>,
        events: EventLog,
        settings: OrchestratorSettings,
    ) -> Self {
        Self { policy, judges, model, store, metrics, events, settings }
    }

    async fn prompt(&self, request: &TurnRequest) -> Result<Vec<ChatMessage>, OrchestratorError> {
        let tenant = request.tenant.as_str();
        let state = match request.session_known {
            Some(state) => state,
            None => self.store.session_state(tenant, &request.session_id).await?,
        };
        let history = match state {
            SessionState::Foreign => return Err(OrchestratorError::SessionNotFound),
            SessionState::New => Vec::new(),
            SessionState::Owned => self.store.history(tenant, &request.session_id, self.settings.max_history_turns).await?,
        };
        let mut messages = Vec::with_capacity(history.len() + request.preamble.len() + 2);
        // The operator's system prompt always stands first; a caller's system
        // message (where the tenant allows one) comes after it.
        if !self.settings.system_prompt.is_empty() {
            messages.push(ChatMessage::new(Role::System, &self.settings.system_prompt));
        }
        messages.extend(request.preamble.iter().cloned());
        messages.extend(history);
        messages.push(ChatMessage::new(Role::User, &request.message));
        Ok(messages)
    }

    /// The turn's model request (started on its first read) and the model call's span.
    fn model_request(&self, request: &TurnRequest, messages: Vec<ChatMessage>, hash: &ConstitutionHash, verdict: String) -> (ModelStream, TraceContext) {
        // The model call's own span: its id travels in the model request's traceparent.
        let model_call = request.trace.child();
        let context = DispatchContext {
            tenant: request.tenant.as_str().to_owned(),
            constitution_hash: hash.to_string(),
            policy_verdict: verdict,
            traceparent: model_call.header(),
        };
        (self.model.stream(ModelRequest { messages, params: request.params, context }), model_call)
    }

    fn run(&self, request: TurnRequest, signed: SignedVerdict, judge: &Judge, mut model: ModelStream, model_call: TraceContext) -> TurnStream {
        let mut guard = judge.moderator.output_guard();
        let mut sentences = judge.moderator.output_sentences();
        let moderator = judge.moderator.clone();
        let metrics = self.metrics.clone();
        let route = request.route;
        let stop = request.stop.clone();
        let context = turn_context(&request, &signed);
        let mut recorder = Recorder::new(self.metrics.clone(), self.events.clone(), context, &request, &signed, &self.settings.model);
        recorder.model_call = Some(model_call);
        let turn = Box::pin(async_stream::stream! {
            let mut finish = FinishReason::Stop;
            // The category, and the layer that found it, once the answer must be cut.
            let mut refusal = None;
            // Registered once for the whole answer, not once per token.
            let stopped = stop.stopped();
            tokio::pin!(stopped);
            let mut stopped_for = None;
            loop {
                let next = tokio::select! {
                    biased;
                    reason = &mut stopped => Err(reason),
                    item = model.next() => Ok(item),
                };
                let next = match next {
                    Ok(next) => next,
                    Err(reason) => {
                        stopped_for = Some(reason);
                        break;
                    }
                };
                let Some(item) = next else { break };
                match item {
                    Ok(ModelEvent::Delta(text)) => match guard.push(&text) {
                        GuardStep::Release(safe) => {
                            let pieces = sentences.as_mut().map(|s| s.push(&safe)).unwrap_or_default();
                            if !safe.is_empty() {
                                recorder.emitted(&safe);
                                yield TurnEvent::Delta(safe);
                            }
                            if let Some(hit) = judge_output(&moderator, &metrics, pieces).await {
                                refusal = Some(hit);
                                break;
                            }
                        }
                        GuardStep::Refuse(hit) => {
                            refusal = Some(hit);
                            break;
                        }
                    },
                    Ok(ModelEvent::Finish(reason)) => finish = FinishReason::from_model(&reason),
                    Ok(ModelEvent::Usage(usage)) => recorder.usage = Some(usage),
                    Err(err) => {
                        metrics.interrupted(route, err.reason());
                        let public = ApiError::from(err);
                        let data = json!({ "code": public.code().name(), "stage": "model", "content_included": false });
                        let _ = recorder.finish(FinishReason::Error, RequestOutcome::Error, EventType::Failed, data).await;
                        yield TurnEvent::Error { code: public.code(), message: public.body().message };
                        yield TurnEvent::Done { finish_reason: FinishReason::Error, usage: None };
                        return;
                    }
                }
            }
            // The model request ends first (and with it the call's slot at the model server),
            // however the answer ended; the turn's end is durable before its `done`.
            drop(model);
            if let Some(reason) = stopped_for {
                metrics.interrupted(route, reason.as_str());
                let emitted_chars = recorder.emitted_chars();
                let (finish, stored) = match reason {
                    StopReason::CancelRequested | StopReason::Shutdown => {
                        let data = json!({ "reason": reason.as_str(), "emitted_chars": emitted_chars, "content_included": false });
                        (FinishReason::Cancelled, recorder.finish(FinishReason::Cancelled, RequestOutcome::Allow, EventType::Cancelled, data).await)
                    }
                    StopReason::ClientTooSlow => {
                        let code = Code::ClientTooSlow;
                        let data = json!({ "code": code.name(), "stage": "client", "emitted_chars": emitted_chars, "content_included": false });
                        let stored = recorder.finish(FinishReason::Error, RequestOutcome::Error, EventType::Failed, data).await;
                        if stored {
                            yield TurnEvent::Error { code, message: "the client did not read the answer in time".into() };
                        }
                        (FinishReason::Error, stored)
                    }
                };
                if !stored {
                    yield not_stored();
                    yield TurnEvent::Done { finish_reason: FinishReason::Error, usage: recorder.usage };
                    return;
                }
                yield TurnEvent::Done { finish_reason: finish, usage: recorder.usage };
                return;
            }
            if refusal.is_none() {
                let rest = guard.finish();
                // The answer's last pieces are judged before `done`.
                let last = sentences.as_mut().map(|s| s.push(&rest).into_iter().chain(s.finish()).collect()).unwrap_or_default();
                if !rest.is_empty() {
                    recorder.emitted(&rest);
                    yield TurnEvent::Delta(rest);
                }
                refusal = judge_output(&moderator, &metrics, last).await;
            }
            if let Some(hit) = refusal {
                metrics.moderation_refusal("output", &hit.category);
                let data = refused_data("output", std::slice::from_ref(&hit));
                let stored = recorder.finish(FinishReason::Refused, RequestOutcome::Refuse, EventType::Refused, data).await;
                yield TurnEvent::Refusal(hit);
                if !stored {
                    yield not_stored();
                    yield TurnEvent::Done { finish_reason: FinishReason::Error, usage: recorder.usage };
                    return;
                }
                yield TurnEvent::Done { finish_reason: FinishReason::Refused, usage: recorder.usage };
                return;
            }
            let data = recorder.completion_data(finish);
            if !recorder.finish(finish, RequestOutcome::Allow, EventType::Completed, data).await {
                yield not_stored();
                yield TurnEvent::Done { finish_reason: FinishReason::Error, usage: recorder.usage };
                return;
            }
            yield TurnEvent::Done { finish_reason: finish, usage: recorder.usage };
        });
        paced(turn, request.stop, self.settings.pacing.clone())
    }
}

/// Judges finished pieces of the answer with the semantic layer. A failure
/// of the layer is logged and lets the answer go on: the input passed every
/// layer, and the lexicon still guards the output.
async fn judge_output(moderator: &Moderator, metrics: &Metrics, pieces: Vec<String>) -> Option<Hit> {
    if pieces.is_empty() {
        return None;
    }
    let started = std::time::Instant::now();
    // Boxed: the judgement's future would otherwise size every running turn's stream.
    let judged = Box::pin(moderator.judge_output(pieces)).await;
    metrics.moderation_check("output", started.elapsed());
    match judged {
        Ok(hit) => hit,
        Err(err) => {
            tracing::error!(error = %err, "output moderation failed; the answer goes on under the lexicon alone");
            None
        }
    }
}

impl Conversation for Orchestrator {
    fn start_turn(&self, request: TurnRequest, policy: PolicyHeaders, early: Option<EarlyDispatch>) -> BoxFuture<'_, Result<TurnStream, OrchestratorError>> {
        Box::pin(async move {
            let turn = TurnRef {
                tenant: request.tenant.as_str(),
                session_id: &request.session_id,
                turn_id: &request.turn_id,
                message: &request.message,
                params: request.params,
            };
            // Headers from outside the process must name the tenant's active
            // constitution and are good once; the gateway's never leave it, and
            // name the constitution it judged the turn by.
            let (signed, judge) = match &request.origin {
                Origin::Gateway(judge) => (self.policy.verify(turn, &policy, &judge.hash)?, judge.clone()),
                Origin::Http => {
                    let judge = self.judges.current(turn.tenant).map_err(PolicyError::from)?;
                    (self.policy.accept(turn, &policy, &judge.hash).await?, judge)
                }
            };
            if let Verdict::Refuse(_) = signed.verdict {
                return Err(PolicyError::Refused.into());
            }
            let (model, model_call, dispatched) = match early {
                // Started before the verdict; its answer is read from here on.
                Some(early) => early.into_parts(),
                None => {
                    let messages = self.prompt(&request).await?;
                    let dispatched = dispatched_data(&self.settings.model, request.params, messages.len(), DispatchMode::AfterVerdict);
                    let (model, model_call) = self.model_request(&request, messages, &signed.constitution_hash, signed.verdict.header_value());
                    (model, model_call, dispatched)
                }
            };
            let context = turn_context(&request, &signed);
            if matches!(request.origin, Origin::Http) {
                let data = json!({ "route": request.route, "message_chars": request.message.chars().count(), "content_included": false });
                self.events.turn(&context, EventType::Received, data).await;
            }
            self.events.turn(&context, EventType::Dispatched, dispatched).await;
            Ok(self.run(request, signed, &judge, model, model_call))
        })
    }

    fn dispatch_early<'a>(&'a self, request: &'a TurnRequest, constitution: &'a ConstitutionHash) -> BoxFuture<'a, Result<EarlyDispatch, OrchestratorError>> {
        Box::pin(async move {
            let messages = self.prompt(request).await?;
            let dispatched = dispatched_data(&self.settings.model, request.params, messages.len(), DispatchMode::Overlapped);
            let (model, model_call) = self.model_request(request, messages, constitution, PENDING_VERDICT.to_owned());
            Ok(EarlyDispatch::new(start_now(model), model_call, dispatched))
        })
    }
}

/// The turn ran but its trail could not be stored: the client is told, not handed a `done` that promises durability.
fn not_stored() -> TurnEvent {
    TurnEvent::Error { code: crate::error::Code::Internal, message: "the turn's events could not be stored".into() }
}
