//! The orchestrator service: policy check, history, dispatch, output
//! moderation and recording of each turn.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;

use super::answer::{AnswerGuard, Judged};
use super::early::{attempt_data, dispatched_data, Dispatch, EarlyDispatch, PENDING_VERDICT};
use super::form::{format_checked, judge_tool_calls, HeldLogprobs};
use super::outcome::{Failure, TurnOutcome};
use super::pacing::{paced, Pacing};
use super::recorder::{turn_context, Recorder};
use super::store::{ConversationStore, SessionState};
use super::turn::{FinishReason, OrchestratorError, Origin, TurnEvent, TurnRequest, TurnStream};
use super::Conversation;
use crate::config::DispatchMode;
use crate::events::{EventLog, TurnData};
use crate::policy::{ConstitutionHash, Judge, Judges, PolicyEngine, PolicyError, PolicyHeaders, SignedVerdict, TurnRef, Verdict};
use crate::slm::{start_now, ChatMessage, DispatchContext, ModelClient, ModelEvent, ModelRequest, ModelStream, Released, Role, ToolCalls};
use crate::telemetry::{Metrics, TraceContext};

#[derive(Debug, Clone)]
pub struct OrchestratorSettings {
    /// The operator's guard, which judges the answer's sentences the semantic layer let by.
    pub guard: crate::moderation::guard::GuardPolicy,
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
        match &request.tool_call_id {
            None => messages.push(ChatMessage::new(Role::User, &request.message)),
            Some(call) => messages.push(ChatMessage { tool_call_id: Some(call.clone()), ..ChatMessage::new(Role::Tool, &request.message) }),
        }
        Ok(messages)
    }

    /// The turn's model request (started on its first read) and the model call's span.
    fn model_request(
        &self,
        request: &TurnRequest,
        messages: Vec<ChatMessage>,
        hash: &ConstitutionHash,
        verdict: String,
    ) -> (ModelStream, TraceContext, Released) {
        // The model call's own span: its id travels in the model request's traceparent.
        let model_call = request.trace.child();
        let context = DispatchContext {
            tenant: request.tenant.as_str().to_owned(),
            constitution_hash: hash.to_string(),
            policy_verdict: verdict,
            traceparent: model_call.header(),
        };
        let released = Released::default();
        let request = ModelRequest {
            model: request.model.clone(),
            messages,
            params: request.params,
            stop: request.stop_sequences.clone(),
            form: request.form.clone(),
            context,
            released: released.clone(),
        };
        (self.model.stream(request), model_call, released)
    }

    /// Drives the turn: streams the answer through output moderation until it
    /// ends, is cut, fails or is stopped, then hands the [`TurnOutcome`] to
    /// the recorder, which stores it and gives the last frames.
    ///
    /// `dispatched` is the template of the turn's `turn.dispatched`: one is
    /// recorded for each attempt the model client reports (naming its
    /// upstream), each failed-over attempt as `turn.upstream_failed`.
    fn run(&self, request: TurnRequest, signed: SignedVerdict, judge: &Arc<Judge>, model: Dispatch) -> TurnStream {
        let Dispatch { stream: mut model, model_call, data: dispatched, released } = model;
        let mut answer = AnswerGuard::new(judge, &self.settings.guard, request.tenant.as_str(), self.metrics.clone());
        let stop = request.stop.clone();
        let form = request.form.clone();
        let turn_id = request.turn_id.clone();
        let context = turn_context(&request, &signed);
        let mut recorder = Recorder::new(self.metrics.clone(), self.events.clone(), context, &request, &signed, &request.model);
        recorder.model_call = Some(model_call);
        recorder.guard = self.settings.guard.guarded.then(|| (self.settings.guard.clone(), judge.clone()));
        let turn = Box::pin(async_stream::stream! {
            let mut finish = FinishReason::Stop;
            // Registered once for the whole answer, not once per token.
            let stopped = stop.stopped();
            tokio::pin!(stopped);
            let mut attempted = false;
            let mut calls = ToolCalls::default();
            let mut logprobs = HeldLogprobs::default();
            let outcome = loop {
                let next = tokio::select! {
                    biased;
                    reason = &mut stopped => break TurnOutcome::stopped(reason),
                    item = model.next() => item,
                };
                let Some(item) = next else {
                    // The answer's last pieces are judged before `done`.
                    let (rest, last) = answer.end();
                    let entries = logprobs.rest();
                    if !entries.is_empty() {
                        yield TurnEvent::Logprobs(entries);
                    }
                    if !rest.is_empty() {
                        recorder.emitted(&rest);
                        yield TurnEvent::Delta(rest);
                    }
                    match answer.judge(last).await {
                        Judged::Ends(outcome) => break outcome,
                        Judged::Goes { note } => {
                            if let Some(note) = note {
                                recorder.record(note).await;
                            }
                            if calls.is_empty() {
                                break TurnOutcome::Completed(finish);
                            }
                            // The calls reach the app only once each was judged, all of them or none.
                            let calls = std::mem::take(&mut calls).finish(turn_id.as_str());
                            if let Some(outcome) = judge_tool_calls(&calls, &form, &mut answer, &recorder).await {
                                break outcome;
                            }
                            yield TurnEvent::ToolCalls(calls);
                            break TurnOutcome::Completed(FinishReason::ToolCalls);
                        }
                    }
                };
                match item {
                    Ok(ModelEvent::Delta(text)) => {
                        let (safe, pieces) = match answer.push(&text) {
                            Ok(released) => released,
                            Err(hit) => break TurnOutcome::Refused(hit),
                        };
                        if !safe.is_empty() {
                            released.store(true, std::sync::atomic::Ordering::Release);
                            let entries = logprobs.release(safe.len());
                            if !entries.is_empty() {
                                yield TurnEvent::Logprobs(entries);
                            }
                            recorder.emitted(&safe);
                            yield TurnEvent::Delta(safe);
                        }
                        match answer.judge(pieces).await {
                            Judged::Ends(outcome) => break outcome,
                            Judged::Goes { note: Some(note) } => recorder.record(note).await,
                            Judged::Goes { note: None } => {}
                        }
                    }
                    Ok(ModelEvent::ToolCall(part)) => calls.push(part),
                    Ok(ModelEvent::Logprobs(entries)) => logprobs.push(entries),
                    Ok(ModelEvent::Finish(reason)) => finish = FinishReason::from_model(&reason),
                    Ok(ModelEvent::Usage(usage)) => recorder.usage = Some(usage),
                    Ok(ModelEvent::Attempt { upstream, attempt }) => {
                        attempted = true;
                        recorder.record(attempt_data(&dispatched, &upstream, attempt)).await;
                    }
                    Ok(ModelEvent::Failover { upstream, attempt, reason }) => {
                        recorder.record(TurnData::UpstreamFailed { upstream: upstream.to_string(), attempt, reason }).await;
                        if released.load(std::sync::atomic::Ordering::Acquire) {
                            // Text reached the client after the router decided (it ran ahead): the turn cannot move.
                            break TurnOutcome::Failed(Failure::upstream_lost());
                        }
                        // Nothing reached the client: what the failed attempt said is dropped, the next one starts afresh.
                        answer.restart();
                        calls = ToolCalls::default();
                        logprobs = HeldLogprobs::default();
                        finish = FinishReason::Stop;
                        recorder.usage = None;
                    }
                    Err(err) => break TurnOutcome::Failed(Failure::model(err)),
                }
            };
            if !attempted {
                // The request never reached a model server (no slot in time, the client left first).
                recorder.record(dispatched).await;
            }
            // The model request ends first (and with it the call's slot at the model server),
            // however the answer ended; the turn's end is durable before its `done`.
            drop(model);
            if matches!(outcome, TurnOutcome::Completed(FinishReason::Stop | FinishReason::Length)) {
                if let Some(checked) = format_checked(&form, recorder.answer()) {
                    recorder.record(checked).await;
                }
            }
            for frame in recorder.conclude(outcome).await {
                yield frame;
            }
        });
        paced(turn, request.stop, self.settings.pacing.clone())
    }
}

impl Conversation for Orchestrator {
    fn start_turn(&self, request: TurnRequest, policy: PolicyHeaders, early: Option<EarlyDispatch>) -> BoxFuture<'_, Result<TurnStream, OrchestratorError>> {
        Box::pin(async move {
            let turn = TurnRef {
                tenant: request.tenant.as_str(),
                session_id: request.session_id.as_str(),
                turn_id: request.turn_id.as_str(),
                message: &request.message,
                params: request.params,
                stop: &request.stop_sequences,
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
            let dispatch = match early {
                // Started before the verdict; its answer is read from here on.
                Some(early) => early.into_dispatch(),
                None => {
                    let messages = self.prompt(&request).await?;
                    let data = dispatched_data(&request.model, request.params, messages.len(), DispatchMode::AfterVerdict);
                    let (stream, model_call, released) = self.model_request(&request, messages, &signed.constitution_hash, signed.verdict.header_value());
                    Dispatch { stream, model_call, data, released }
                }
            };
            let context = turn_context(&request, &signed);
            if matches!(request.origin, Origin::Http) {
                let data = TurnData::Received { route: request.route, message_chars: request.message.chars().count(), end_user: None };
                self.events.turn(&context, data).await;
            }
            Ok(self.run(request, signed, &judge, dispatch))
        })
    }

    fn dispatch_early<'a>(&'a self, request: &'a TurnRequest, constitution: &'a ConstitutionHash) -> BoxFuture<'a, Result<EarlyDispatch, OrchestratorError>> {
        Box::pin(async move {
            let messages = self.prompt(request).await?;
            let dispatched = dispatched_data(&request.model, request.params, messages.len(), DispatchMode::Overlapped);
            let (model, model_call, released) = self.model_request(request, messages, constitution, PENDING_VERDICT.to_owned());
            Ok(EarlyDispatch::new(start_now(model), model_call, dispatched, released))
        })
    }
}
