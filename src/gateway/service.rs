//! The governed admission of a turn, shared by every chat entry point.

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::config::{CallerSystemPrompt, DispatchMode, PerTenant};
use crate::db::now_ms;
use crate::error::{ApiError, Code};
use crate::events::{EventLog, NewEvent, Pending, TurnData};
use crate::identity::{Caller, Capability};
use crate::ids::{SessionId, TurnId};
use crate::moderation::guard::{GuardFailure, GuardPolicy, GuardStage};
use crate::moderation::{Decision, Hit};
use crate::orchestrator::{
    refused_data, turn_context, Conversation, ConversationStore, EarlyDispatch, FinishReason, OrchestratorError, Origin, RecordTurn, SessionData, SessionState,
    TurnEvent, TurnLimits, TurnOutcome, TurnRecord, TurnRequest, TurnStream, WITHHELD_TEXT,
};
use crate::policy::{Judge, Judges, PolicyEngine, PolicyError, SignedVerdict, TurnRef, Verdict};
use crate::slm::{ChatMessage, GenerationParams, Role};
use crate::telemetry::turn_spans::{self, TurnSpan};
use crate::telemetry::{Metrics, RequestOutcome, TraceContext};

pub struct Gateway {
    /// The constitution each tenant's turns are judged under, with its moderator.
    pub judges: Arc<Judges>,
    pub policy: Arc<PolicyEngine>,
    pub conversation: Arc<dyn Conversation>,
    pub store: ConversationStore,
    pub metrics: Arc<Metrics>,
    pub events: EventLog,
    pub training: Arc<crate::training::TrainingService>,
    pub limits: TurnLimits,
    pub keepalive: Duration,
    /// How long a WebSocket may take to send its key.
    pub socket_auth_timeout: Duration,
    /// The model names a turn may ask for, per tenant.
    pub models: Arc<crate::slm::ModelCatalog>,
    /// Whether a tenant's callers may add system messages after the operator's.
    pub caller_system: PerTenant<CallerSystemPrompt>,
    /// When a tenant's model requests start: after the verdict, or overlapped with moderation.
    pub dispatch: PerTenant<DispatchMode>,
    /// Store the text of turns refused on input instead of withholding it.
    pub store_refused_text: bool,
    /// Per-tenant concurrent streams and request rate.
    pub limiter: Arc<crate::limits::Limiter>,
    /// The operator's guard, asked after the other layers allow a turn's input.
    pub guard: GuardPolicy,
    /// Whether the OpenAI facade ignores a tenant's unknown request fields instead of refusing them.
    pub openai_lenient: PerTenant<bool>,
    /// Per tenant, the only tool names the OpenAI facade's requests may declare (none listed: any).
    pub allowed_tools: Arc<std::collections::HashMap<String, Vec<String>>>,
}

/// A turn as a chat entry point received it.
pub struct TurnInput {
    pub route: &'static str,
    /// `None` starts a new session.
    pub session_id: Option<String>,
    pub message: String,
    /// Earlier messages supplied by the caller (OpenAI facade); moderated too.
    pub preamble: Vec<ChatMessage>,
    pub params: GenerationParams,
    /// The model name asked for (`None`: the tenant's default).
    pub model: Option<String>,
    /// The app's own id of its end user (OpenAI's `user`), recorded with the turn, never sent upstream.
    pub end_user: Option<String>,
    /// Sequences that end the answer (OpenAI's `stop`; empty: none).
    pub stop_sequences: Arc<[String]>,
    /// Tools the model may call and the answer's format (OpenAI facade; default: plain text).
    pub form: Arc<crate::slm::AnswerForm>,
    /// Set when `message` is a tool's result answering this call (OpenAI facade).
    pub tool_call_id: Option<String>,
    pub trace: TraceContext,
    pub started: Instant,
    /// Ends the turn early (see [`TurnRequest::stop`]).
    pub stop: crate::orchestrator::TurnStop,
}

/// An admitted turn: its identity, its signed verdict and what follows.
pub struct Admission {
    /// The model the turn resolved to.
    pub model: Arc<str>,
    pub session_id: SessionId,
    pub turn_id: TurnId,
    pub trace: TraceContext,
    pub signed: SignedVerdict,
    pub outcome: Admitted,
}

pub enum Admitted {
    /// Input moderation refused the turn; no answer reached anyone.
    Refused(Hit),
    /// The orchestrator is running the turn.
    Streaming(TurnStream),
}

impl Admitted {
    /// The turn's events after its `session`: a refused turn's `refusal` and `done`, or the running turn's.
    pub fn into_events(self) -> TurnStream {
        match self {
            // Its end was stored with its refusal, as a running turn's is.
            Self::Refused(hit) => Box::pin(futures_util::stream::iter(TurnOutcome::Refused(hit).frames(true, None))),
            Self::Streaming(turn) => turn,
        }
    }
}

impl Admission {
    /// The turn's `session` event; `verdict` is the signed verdict's header value.
    pub fn session<'a>(&'a self, verdict: &'a str) -> SessionData<'a> {
        SessionData {
            session_id: self.session_id.as_str(),
            turn_id: self.turn_id.as_str(),
            trace_id: &self.trace.trace_id,
            constitution_hash: self.signed.constitution_hash.as_str(),
            policy_verdict: verdict,
        }
    }
}

impl Gateway {
    pub async fn admit(&self, caller: &Caller, input: TurnInput) -> Result<Admission, ApiError> {
        let (route, started) = (input.route, input.started);
        let result = self.try_admit(caller, input).await;
        if let Err(err) = &result {
            self.metrics.request(route, RequestOutcome::Rejected, started.elapsed());
            tracing::info!(route, tenant = %caller.tenant, code = err.code().name(), "turn rejected");
        }
        result
    }

    async fn try_admit(&self, caller: &Caller, input: TurnInput) -> Result<Admission, ApiError> {
        caller.require(Capability::Chat)?;
        let model = self.models.resolve(caller.tenant.as_str(), input.model.as_deref()).map_err(|e| ApiError::from(e).with_param("model"))?;
        // The tenant's limits first: a turn over them costs no moderation and no model work.
        let turn_id = TurnId::mint();
        let mut permit = self.limiter.admit(caller.tenant.as_str(), turn_id.as_str(), expected_tokens(&input)).await?;
        self.limits.check_message(&input.message)?;
        for earlier in &input.preamble {
            self.limits.check_earlier(&earlier.content)?;
            // A replayed tool call's arguments are judged as input too: the same bounds.
            for call in earlier.tool_calls.iter().flatten() {
                self.limits.check_earlier(&call.function.arguments)?;
            }
        }
        let tenant = caller.tenant.as_str();
        if input.preamble.iter().any(|m| m.role == Role::System) && self.caller_system.of(tenant) != CallerSystemPrompt::AfterOperator {
            return Err(ApiError::new(
                Code::SystemPromptNotAllowed,
                "system and developer messages are not accepted for this tenant: the operator's system prompt applies",
            ));
        }
        let (session_id, session_known) = self.session(tenant, input.session_id.as_deref()).await?;
        // The constitution this turn is judged under, from start to end.
        let judge = self.judges.current(tenant).map_err(PolicyError::from)?;
        // Every message is judged as input: a tool's result (text from outside that the model
        // will read) as much as the user's, and the arguments of earlier tool calls the caller replays.
        let replayed_calls = input.preamble.iter().flat_map(|m| m.tool_calls.iter().flatten()).map(crate::slm::ToolCall::judged_text);
        let texts = input.preamble.iter().map(|m| m.content.clone()).filter(|t| !t.is_empty()).chain(replayed_calls).chain([input.message.clone()]).collect();
        let training = self.training.mark(tenant).await;
        let received_data = TurnData::Received { route: input.route, message_chars: input.message.chars().count(), end_user: input.end_user.clone() };
        let request = TurnRequest {
            tenant: caller.tenant.clone(),
            session_id,
            turn_id,
            message: input.message,
            preamble: input.preamble,
            params: input.params,
            stop_sequences: input.stop_sequences,
            form: input.form,
            tool_call_id: input.tool_call_id,
            model,
            trace: input.trace.clone(),
            route: input.route,
            started: input.started,
            origin: Origin::Gateway(judge.clone()),
            stop: input.stop,
            session_known: Some(session_known),
            training,
        };

        let (hits, early, skipped) = self.judge(&judge, texts, &request).await?;
        let verdict = verdict_of(&hits);
        let turn = TurnRef {
            tenant,
            session_id: request.session_id.as_str(),
            turn_id: request.turn_id.as_str(),
            message: &request.message,
            params: request.params,
            stop: &request.stop_sequences,
        };
        let signed = self.policy.sign(turn, verdict, &judge.hash);
        let context = turn_context(&request, &signed);
        let received = NewEvent::turn(context.clone(), &received_data);
        if !hits.is_empty() {
            permit.used(0);
            return self.refuse(request, signed, &judge, hits, received, early.and_then(Result::ok)).await;
        }

        let (session_id, turn_id, model) = (request.session_id.clone(), request.turn_id.clone(), request.model.clone());
        let mut first = vec![Pending::Conversation(received)];
        first.extend(skipped.map(|data| Pending::Conversation(NewEvent::turn(context.clone(), &data))));
        self.events.emit(first).await?;
        let started = match early.transpose() {
            Ok(early) => self.conversation.start_turn(request, signed.headers(), early).await,
            Err(err) => Err(err),
        };
        let stream = match started {
            Ok(stream) => stream,
            Err(err) => {
                let code = crate::error::ErrorCode::code(&err).name();
                let _ = self.events.turn_durable(&context, TurnData::Failed { code, stage: "admission", emitted_chars: None }).await;
                return Err(err.into());
            }
        };
        tracing::info!(trace_id = %input.trace.trace_id, span_id = %input.trace.span_id, tenant, session_id = %session_id,
            turn_id = %turn_id, "turn dispatched");
        Ok(Admission { model, session_id, turn_id, trace: input.trace, signed, outcome: Admitted::Streaming(holding(stream, permit)) })
    }

    /// Judges the turn's messages and returns every refused category (none:
    /// allowed), then, when they are allowed and a guard is configured, the
    /// guard's. Under overlapped dispatch the model request starts meanwhile;
    /// it comes back with the judgement, to be read or aborted. A guard that
    /// gives no decision fails the turn (`guard_unavailable`) or, for a tenant
    /// whose guard fails open, lets it through with a `turn.guard_skipped`.
    async fn judge(
        &self,
        judge: &Judge,
        texts: Vec<String>,
        request: &TurnRequest,
    ) -> Result<(Vec<Hit>, Option<Result<EarlyDispatch, OrchestratorError>>, Option<TurnData>), ApiError> {
        let guarded_texts = self.guard.guarded.then(|| texts.clone());
        let judging = async {
            let started = Instant::now();
            let decision = judge.moderator.judge_messages(texts).await;
            let guarded = match (&decision, guarded_texts) {
                (Ok(Decision::Allow), Some(texts)) => {
                    let asked = Instant::now();
                    let answer = self.guard.guard.judge(&judge.constitution, GuardStage::Input, &texts).await;
                    self.metrics.moderation_check("guard", asked.elapsed());
                    Some(answer)
                }
                _ => None,
            };
            ((decision, guarded), started.elapsed())
        };
        let ((decision, took), early) = match self.dispatch.of(request.tenant.as_str()) {
            DispatchMode::AfterVerdict => (judging.await, None),
            DispatchMode::Overlapped => {
                let (judged, early) = tokio::join!(judging, self.conversation.dispatch_early(request, &judge.hash));
                (judged, Some(early))
            }
        };
        let (decision, guarded) = decision;
        let (hits, skipped) = match (decision?, guarded) {
            (Decision::Refuse(hits), _) => (hits, None),
            (Decision::Allow, None) => (Vec::new(), None),
            (Decision::Allow, Some(Ok(hits))) => (hits, None),
            (Decision::Allow, Some(Err(err))) => {
                let tenant = request.tenant.as_str();
                tracing::warn!(tenant, error = %err, reason = err.reason(), "the guard gave no decision");
                match self.guard.failure.of(tenant) {
                    GuardFailure::Closed => return Err(err.into()),
                    GuardFailure::Open => (Vec::new(), Some(TurnData::guard_skipped("input", self.guard.info(&judge.constitution), err.reason()))),
                }
            }
        };
        self.metrics.moderation_check("input", took);
        let first = hits.first().map(|h| (h.category.as_str(), h.code.as_str()));
        turn_spans::input_moderation(&request.trace, took, first, judge.hash.as_str());
        Ok((hits, early, skipped))
    }

    /// The turn's session: a new one, or the caller's own (a UUID an earlier turn of its tenant returned).
    async fn session(&self, tenant: &str, asked: Option<&str>) -> Result<(SessionId, SessionState), ApiError> {
        let Some(id) = asked else {
            return Ok((SessionId::mint(), SessionState::New));
        };
        let id = SessionId::from(
            uuid::Uuid::parse_str(id).map_err(|_| ApiError::new(Code::InvalidRequest, "session_id must be a UUID returned by an earlier turn"))?,
        );
        match self.store.session_state(tenant, &id).await.map_err(OrchestratorError::Store)? {
            SessionState::Owned => Ok((id, SessionState::Owned)),
            SessionState::New | SessionState::Foreign => Err(OrchestratorError::SessionNotFound.into()),
        }
    }

    /// Records a turn refused on input — its events (with the model request
    /// started early, aborted here), its row and its span — and admits it as refused.
    async fn refuse(
        &self,
        request: TurnRequest,
        signed: SignedVerdict,
        judge: &Judge,
        hits: Vec<Hit>,
        received: NewEvent,
        early: Option<EarlyDispatch>,
    ) -> Result<Admission, ApiError> {
        for hit in &hits {
            self.metrics.moderation_refusal("input", &hit.category);
        }
        let context = turn_context(&request, &signed);
        let mut events = vec![Pending::Conversation(received)];
        // A request started before the verdict ends here, unread: the model received it and its answer is discarded.
        let model_request = match early {
            Some(early) => {
                events.push(Pending::Conversation(NewEvent::turn(context.clone(), &early.abort())));
                Some("aborted")
            }
            None => None,
        };
        // What judged is named only when the guard refused (its digest is not free).
        let by_guard = hits.first().is_some_and(|h| h.layer == crate::moderation::Layer::Guard);
        let refused = refused_data("input", &hits, model_request, by_guard.then(|| self.guard.info(&judge.constitution)).flatten());
        events.push(Pending::Conversation(NewEvent::turn(context, &refused)));
        let TurnRequest { tenant, session_id, turn_id, message, preamble, trace, route, started, model, .. } = request;
        let mut record = refusal_record(tenant.as_str(), &session_id, &turn_id, &trace, &signed);
        if self.store_refused_text {
            record.user_message = message;
            record.preamble = serde_json::to_string(&preamble).unwrap_or_else(|_| "[]".into());
        }
        events.push(Pending::Write(Arc::new(RecordTurn(record))));
        self.events.emit_durable(events).await?;
        self.metrics.request(route, RequestOutcome::Refuse, started.elapsed());
        if crate::telemetry::spans::enabled() {
            turn_spans::turn(&TurnSpan {
                trace: &trace,
                route,
                started: std::time::SystemTime::now() - started.elapsed(),
                session_id: session_id.as_str(),
                turn_id: turn_id.as_str(),
                tenant: tenant.as_str(),
                policy_verdict: &signed.verdict.header_value(),
                constitution_hash: signed.constitution_hash.as_str(),
                finish_reason: FinishReason::Refused.as_str(),
                failed: false,
            });
        }
        let first = hits.into_iter().next().ok_or_else(|| ApiError::new(Code::Internal, "a refusal without a category"))?;
        tracing::info!(trace_id = %trace.trace_id, span_id = %trace.span_id, tenant = %tenant, session_id = %session_id,
            turn_id = %turn_id, category = %first.category, code = %first.code, "turn refused by input moderation");
        Ok(Admission { model, session_id, turn_id, trace, signed, outcome: Admitted::Refused(first) })
    }
}

/// The verdict of these refused categories (none: allowed).
pub(super) fn verdict_of(hits: &[Hit]) -> Verdict {
    if hits.is_empty() {
        Verdict::Allow
    } else {
        Verdict::Refuse(hits.iter().map(|h| h.code.clone()).collect())
    }
}

/// The tokens a turn may use, for the tenant's tokens per minute: its
/// prompt, estimated at four characters a token, and its `max_tokens`. The
/// usage the model reports settles it when the turn ends.
fn expected_tokens(input: &TurnInput) -> u32 {
    let chars: usize = input.preamble.iter().map(|m| m.content.chars().count()).sum::<usize>() + input.message.chars().count();
    u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX).saturating_add(input.params.max_tokens)
}

/// The turn's stream, holding its stream slot until it ends or is dropped,
/// and settling its tokens to the usage its end reports.
fn holding(turn: TurnStream, permit: crate::limits::Permit) -> TurnStream {
    use futures_util::StreamExt;
    Box::pin(futures_util::stream::unfold((turn, permit), |(mut turn, mut permit)| async move {
        let event = turn.next().await?;
        if let TurnEvent::Done { usage: Some(usage), .. } = &event {
            permit.used(usage.prompt_tokens.saturating_add(usage.completion_tokens));
        }
        Some((event, (turn, permit)))
    }))
}

/// A turn refused on input, as stored: without its text (the gateway puts
/// the text back when `chat.store_refused_text` is on).
fn refusal_record(tenant: &str, session_id: &SessionId, turn_id: &TurnId, trace: &TraceContext, signed: &SignedVerdict) -> TurnRecord {
    TurnRecord {
        turn_id: turn_id.clone(),
        session_id: session_id.clone(),
        tenant: tenant.to_owned(),
        user_message: WITHHELD_TEXT.into(),
        preamble: "[]".into(),
        assistant_message: String::new(),
        finish_reason: FinishReason::Refused,
        policy_verdict: signed.verdict.header_value(),
        constitution_hash: signed.constitution_hash.to_string(),
        trace_id: trace.trace_id.clone(),
        prompt_tokens: None,
        completion_tokens: None,
        created_at: now_ms(),
        output_code: None,
    }
}
