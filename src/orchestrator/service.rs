//! The orchestrator service: policy check, history, dispatch, output
//! moderation and recording of each turn.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;

use super::store::{ConversationStore, SessionState, TurnRecord};
use super::turn::{FinishReason, OrchestratorError, TurnEvent, TurnRequest, TurnStream};
use super::Conversation;
use crate::db::now_ms;
use crate::error::ApiError;
use crate::moderation::{GuardStep, Moderator};
use crate::policy::{PolicyEngine, PolicyError, PolicyHeaders, SignedVerdict, TurnRef, Verdict};
use crate::slm::{ChatMessage, DispatchContext, ModelClient, ModelEvent, ModelRequest, Role, Usage};
use crate::telemetry::{Metrics, RequestOutcome};

#[derive(Debug, Clone)]
pub struct OrchestratorSettings {
    pub system_prompt: String,
    pub max_history_turns: u32,
}

pub struct Orchestrator {
    policy: Arc<PolicyEngine>,
    moderator: Arc<Moderator>,
    model: Arc<dyn ModelClient>,
    store: ConversationStore,
    metrics: Arc<Metrics>,
    settings: OrchestratorSettings,
}

impl Orchestrator {
    pub fn new(
        policy: Arc<PolicyEngine>,
        moderator: Arc<Moderator>,
        model: Arc<dyn ModelClient>,
        store: ConversationStore,
        metrics: Arc<Metrics>,
        settings: OrchestratorSettings,
    ) -> Self {
        Self { policy, moderator, model, store, metrics, settings }
    }

    async fn prompt(&self, request: &TurnRequest) -> Result<Vec<ChatMessage>, OrchestratorError> {
        let tenant = request.tenant.as_str();
        let history = match self.store.session_state(tenant, &request.session_id).await? {
            SessionState::Foreign => return Err(OrchestratorError::SessionNotFound),
            SessionState::New => Vec::new(),
            SessionState::Owned => self.store.history(tenant, &request.session_id, self.settings.max_history_turns).await?,
        };
        let mut messages = Vec::with_capacity(history.len() + request.preamble.len() + 2);
        let has_system = request.preamble.iter().any(|m| m.role == Role::System);
        if !has_system && !self.settings.system_prompt.is_empty() {
            messages.push(ChatMessage::new(Role::System, &self.settings.system_prompt));
        }
        messages.extend(request.preamble.iter().cloned());
        messages.extend(history);
        messages.push(ChatMessage::new(Role::User, &request.message));
        Ok(messages)
    }

    fn run(&self, request: TurnRequest, signed: SignedVerdict, messages: Vec<ChatMessage>) -> TurnStream {
        let context = DispatchContext {
            constitution_hash: signed.constitution_hash.to_string(),
            policy_verdict: signed.verdict.header_value(),
            traceparent: request.trace.child().header(),
        };
        let mut model = self.model.stream(ModelRequest { messages, params: request.params, context });
        let mut guard = self.moderator.output_guard();
        let metrics = self.metrics.clone();
        let mut recorder = Recorder::new(self.store.clone(), self.metrics.clone(), &request, &signed);
        Box::pin(async_stream::stream! {
            let mut finish = FinishReason::Stop;
            while let Some(item) = model.next().await {
                match item {
                    Ok(ModelEvent::Delta(text)) => match guard.push(&text) {
                        GuardStep::Release(safe) if safe.is_empty() => {}
                        GuardStep::Release(safe) => {
                            recorder.emitted(&safe);
                            yield TurnEvent::Delta(safe);
                        }
                        GuardStep::Refuse(hit) => {
                            metrics.moderation_refusal("output", &hit.category);
                            recorder.finish(FinishReason::Refused, RequestOutcome::Refuse).await;
                            yield TurnEvent::Refusal(hit);
                            yield TurnEvent::Done { finish_reason: FinishReason::Refused, usage: recorder.usage };
                            return;
                        }
                    },
                    Ok(ModelEvent::Finish(reason)) => finish = FinishReason::from_model(&reason),
                    Ok(ModelEvent::Usage(usage)) => recorder.usage = Some(usage),
                    Err(err) => {
                        let public = ApiError::from(err);
                        recorder.finish(FinishReason::Error, RequestOutcome::Error).await;
                        yield TurnEvent::Error { code: public.code(), message: public.body().message };
                        yield TurnEvent::Done { finish_reason: FinishReason::Error, usage: None };
                        return;
                    }
                }
            }
            let rest = guard.finish();
            if !rest.is_empty() {
                recorder.emitted(&rest);
                yield TurnEvent::Delta(rest);
            }
            recorder.finish(finish, RequestOutcome::Allow).await;
            yield TurnEvent::Done { finish_reason: finish, usage: recorder.usage };
        })
    }
}

impl Conversation for Orchestrator {
    fn start_turn(&self, request: TurnRequest, policy: PolicyHeaders) -> BoxFuture<'_, Result<TurnStream, OrchestratorError>> {
        Box::pin(async move {
            let turn = TurnRef { tenant: request.tenant.as_str(), session_id: &request.session_id, turn_id: &request.turn_id };
            let signed = self.policy.verify(turn, &policy)?;
            if let Verdict::Refuse(_) = signed.verdict {
                return Err(PolicyError::Refused.into());
            }
            let messages = self.prompt(&request).await?;
            Ok(self.run(request, signed, messages))
        })
    }
}

/// Accumulates a running turn and stores it once, when it ends — or, if the
/// client goes away first, as `cancelled` from `Drop`.
struct Recorder {
    store: ConversationStore,
    metrics: Arc<Metrics>,
    record: Option<TurnRecord>,
    route: &'static str,
    started: std::time::Instant,
    first_token_seen: bool,
    usage: Option<Usage>,
}

impl Recorder {
    fn new(store: ConversationStore, metrics: Arc<Metrics>, request: &TurnRequest, signed: &SignedVerdict) -> Self {
        let record = TurnRecord {
            turn_id: request.turn_id.clone(),
            session_id: request.session_id.clone(),
            tenant: request.tenant.as_str().to_owned(),
            user_message: request.message.clone(),
            assistant_message: String::new(),
            finish_reason: FinishReason::Cancelled.as_str().into(),
            policy_verdict: signed.verdict.header_value(),
            constitution_hash: signed.constitution_hash.to_string(),
            trace_id: request.trace.trace_id.clone(),
            prompt_tokens: None,
            completion_tokens: None,
            created_at: now_ms(),
        };
        Self { store, metrics, record: Some(record), route: request.route, started: request.started, first_token_seen: false, usage: None }
    }

    fn emitted(&mut self, text: &str) {
        if !self.first_token_seen {
            self.first_token_seen = true;
            self.metrics.first_token(self.route, self.started.elapsed());
        }
        self.metrics.delta(self.route);
        if let Some(record) = self.record.as_mut() {
            record.assistant_message.push_str(text);
        }
    }

    fn take(&mut self, finish: FinishReason, outcome: RequestOutcome) -> Option<TurnRecord> {
        let mut record = self.record.take()?;
        record.finish_reason = finish.as_str().into();
        record.prompt_tokens = self.usage.map(|u| i64::from(u.prompt_tokens));
        record.completion_tokens = self.usage.map(|u| i64::from(u.completion_tokens));
        self.metrics.request(self.route, outcome, self.started.elapsed());
        tracing::info!(
            trace_id = %record.trace_id, tenant = %record.tenant, session_id = %record.session_id, turn_id = %record.turn_id,
            finish_reason = %record.finish_reason, elapsed_ms = self.started.elapsed().as_millis() as u64, "turn finished"
        );
        Some(record)
    }

    /// Stores the turn before the client sees `done`.
    async fn finish(&mut self, finish: FinishReason, outcome: RequestOutcome) {
        if let Some(record) = self.take(finish, outcome) {
            store_turn(&self.store, &record).await;
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let Some(record) = self.take(FinishReason::Cancelled, RequestOutcome::Allow) else { return };
        let store = self.store.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            // The client is gone; the task only writes one row, so shutdown losing it loses a cancelled turn's record at worst.
            runtime.spawn(async move { store_turn(&store, &record).await });
        }
    }
}

async fn store_turn(store: &ConversationStore, record: &TurnRecord) {
    if let Err(err) = store.record(record).await {
        tracing::error!(trace_id = %record.trace_id, turn_id = %record.turn_id, error = %crate::error::error_chain(&err), "could not store turn");
    }
}
