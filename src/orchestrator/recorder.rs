//! Accumulates a running turn and, when it ends, commits the turn row and its
//! terminal event in one outbox transaction (the client sees `done` only
//! after both are durable) — or, if the client goes away first, queues it as
//! cancelled from `Drop` (at once, without a task of its own).

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;

use super::outcome::{CancelReason, Ended, TurnOutcome};
use super::store::{RecordTurn, TurnRecord};
use super::turn::{FinishReason, TurnEvent, TurnRequest};
use crate::db::now_ms;
use crate::events::{EventLog, NewEvent, Pending, RefusedCategory, TurnContext, TurnData};
use crate::policy::SignedVerdict;
use crate::slm::Usage;
use crate::telemetry::turn_spans::{self, ModelCall, TurnSpan};
use crate::telemetry::{Metrics, StreamMetrics};

/// The event context of a turn.
pub fn turn_context(request: &TurnRequest, signed: &SignedVerdict) -> TurnContext {
    TurnContext {
        tenant: request.tenant.as_str().to_owned(),
        session_id: request.session_id.clone(),
        turn_id: request.turn_id.clone(),
        trace_id: request.trace.trace_id.clone(),
        traceparent: request.trace.header(),
        tracestate: request.trace.tracestate.clone(),
        constitution_hash: signed.constitution_hash.to_string(),
        policy_verdict: signed.verdict.header_value(),
        training_mode: request.training.enabled,
        training_fencing_token: request.training.fencing_token,
        training_mode_source: request.training.source.to_owned(),
    }
}

/// `turn.refused`'s data: the stage, the categories, and the layer that
/// decided with its score (the semantic layer's).
pub fn refused_data(
    stage: &'static str,
    hits: &[crate::moderation::Hit],
    model_request: Option<&'static str>,
    guard: Option<crate::moderation::guard::GuardInfo>,
) -> TurnData {
    let guard = guard.filter(|_| hits.first().is_some_and(|h| h.layer == crate::moderation::Layer::Guard));
    let (guard_model, guard_config) = guard.map(|g| (g.model, g.config_digest)).unzip();
    TurnData::Refused {
        stage,
        categories: hits.iter().map(|h| RefusedCategory { code: h.code.clone(), category: h.category.clone() }).collect(),
        layer: hits.first().map(|h| h.layer.as_str()),
        score: hits.first().and_then(|h| h.score),
        model_request,
        guard_model,
        guard_config,
    }
}

pub struct Recorder {
    metrics: Arc<Metrics>,
    events: EventLog,
    context: TurnContext,
    model: String,
    record: Option<TurnRecord>,
    route: &'static str,
    span_id: String,
    started: Instant,
    /// When the last content reached the client (`None` before the first).
    last_emitted: Option<Instant>,
    /// From the request to the first content.
    first_chunk: Option<std::time::Duration>,
    stream: StreamMetrics,
    pub usage: Option<Usage>,
    /// The turn's trace, for its spans.
    trace: crate::telemetry::TraceContext,
    max_tokens: u32,
    started_at: std::time::SystemTime,
    /// The model call's span (its id is in the model request's traceparent).
    pub model_call: Option<crate::telemetry::TraceContext>,
    /// The operator's guard and the turn's judge, when a guard is configured (what
    /// judged is named only when the guard refused the answer).
    pub guard: Option<(crate::moderation::guard::GuardPolicy, std::sync::Arc<crate::policy::Judge>)>,
}

impl Recorder {
    pub fn new(metrics: Arc<Metrics>, events: EventLog, context: TurnContext, request: &TurnRequest, signed: &SignedVerdict, model: &str) -> Self {
        let record = TurnRecord {
            turn_id: request.turn_id.clone(),
            session_id: request.session_id.clone(),
            tenant: request.tenant.as_str().to_owned(),
            user_message: request.message.clone(),
            preamble: serde_json::to_string(&request.preamble).unwrap_or_else(|_| "[]".into()),
            assistant_message: String::new(),
            finish_reason: FinishReason::Cancelled,
            policy_verdict: signed.verdict.header_value(),
            constitution_hash: signed.constitution_hash.to_string(),
            trace_id: request.trace.trace_id.clone(),
            prompt_tokens: None,
            completion_tokens: None,
            created_at: now_ms(),
            output_code: None,
        };
        Self {
            stream: metrics.stream(request.route),
            metrics,
            events,
            context,
            model: model.to_owned(),
            record: Some(record),
            route: request.route,
            span_id: request.trace.span_id.clone(),
            started: request.started,
            last_emitted: None,
            first_chunk: None,
            trace: request.trace.clone(),
            max_tokens: request.params.max_tokens,
            started_at: std::time::SystemTime::now() - request.started.elapsed(),
            model_call: None,
            guard: None,
            usage: None,
        }
    }

    /// Queues one of the turn's events (not awaited to disk: the turn's end is).
    pub async fn record(&self, data: TurnData) {
        self.events.turn(&self.context, data).await;
    }

    /// Text that reached the client.
    pub fn emitted(&mut self, text: &str) {
        let now = Instant::now();
        match self.last_emitted.replace(now) {
            None => {
                self.first_chunk = Some(now - self.started);
                self.metrics.first_token(self.route, now - self.started);
            }
            Some(last) => self.stream.inter_token.observe((now - last).as_secs_f64()),
        }
        self.stream.deltas.inc();
        if let Some(record) = self.record.as_mut() {
            record.assistant_message.push_str(text);
        }
    }

    /// The terminal event's data for `outcome`, naming the operator's guard
    /// only when it refused the answer (its digest is not free).
    fn end_data(&self, outcome: &TurnOutcome) -> TurnData {
        let guard = match outcome {
            TurnOutcome::Refused(hit) if hit.layer == crate::moderation::Layer::Guard => {
                self.guard.as_ref().and_then(|(policy, judge)| policy.info(&judge.constitution))
            }
            _ => None,
        };
        outcome.event_data(&self.ended(guard.as_ref()))
    }

    /// The answer's text that reached the client so far.
    pub fn answer(&self) -> &str {
        self.record.as_ref().map_or("", |r| r.assistant_message.as_str())
    }

    /// What the turn's end knows beyond its outcome (read before the record is taken).
    fn ended<'a>(&'a self, guard: Option<&'a crate::moderation::guard::GuardInfo>) -> Ended<'a> {
        let emitted = self.record.as_ref().map_or("", |r| r.assistant_message.as_str());
        Ended { model: &self.model, usage: self.usage, duration_ms: self.started.elapsed().as_millis() as u64, emitted, guard }
    }

    /// The turn's row as it ended, counted in the metrics, its spans and its log line; `None` once taken.
    fn take(&mut self, outcome: &TurnOutcome) -> Option<TurnRecord> {
        let mut record = self.record.take()?;
        record.finish_reason = outcome.finish_reason();
        record.prompt_tokens = self.usage.map(|u| i64::from(u.prompt_tokens));
        record.completion_tokens = self.usage.map(|u| i64::from(u.completion_tokens));
        self.metrics.request(self.route, outcome.request_outcome(), self.started.elapsed());
        if let Some(reason) = outcome.interruption() {
            self.metrics.interrupted(self.route, reason);
        }
        if let TurnOutcome::Refused(hit) = outcome {
            self.metrics.moderation_refusal("output", &hit.category);
            record.output_code = Some(hit.code.clone());
        }
        self.spans(&record, outcome.finish_reason());
        tracing::info!(
            trace_id = %record.trace_id, span_id = %self.span_id, tenant = %record.tenant, session_id = %record.session_id, turn_id = %record.turn_id,
            finish_reason = record.finish_reason.as_str(), elapsed_ms = self.started.elapsed().as_millis() as u64, "turn finished"
        );
        Some(record)
    }

    /// Ends the turn: commits its row and its terminal event together (one
    /// outbox transaction, shared with whatever else is queued), then returns
    /// the frames the client receives last (see [`TurnOutcome::frames`]). The
    /// commit is awaited in a task of its own: a client leaving mid-write
    /// cannot cut it short.
    ///
    /// The future is boxed: awaited only when a turn ends, it would otherwise
    /// size the stream that every open turn holds for its whole life.
    pub fn conclude(&mut self, outcome: TurnOutcome) -> BoxFuture<'_, Vec<TurnEvent>> {
        let data = self.end_data(&outcome);
        let record = self.take(&outcome);
        Box::pin(async move {
            let stored = match record {
                None => true,
                Some(record) => {
                    let (events, items) = (self.events.clone(), self.terminal(record, &data));
                    let commit = tokio::spawn(async move { events.emit_durable(items).await });
                    match commit.await {
                        Ok(Ok(())) => true,
                        Ok(Err(err)) => {
                            tracing::error!(error = %err, turn_id = %self.context.turn_id, "turn and its events not stored");
                            false
                        }
                        Err(_) => false,
                    }
                }
            };
            outcome.frames(stored, self.usage)
        })
    }

    /// The turn's span and its model call's (see [`turn_spans`]).
    fn spans(&self, record: &TurnRecord, finish: FinishReason) {
        let turn = TurnSpan {
            trace: &self.trace,
            route: self.route,
            started: self.started_at,
            session_id: record.session_id.as_str(),
            turn_id: record.turn_id.as_str(),
            tenant: &record.tenant,
            policy_verdict: &record.policy_verdict,
            constitution_hash: &record.constitution_hash,
            finish_reason: finish.as_str(),
            failed: finish == FinishReason::Error,
        };
        if let Some(call) = &self.model_call {
            let call = ModelCall { call, model: &self.model, max_tokens: self.max_tokens, usage: self.usage, first_chunk: self.first_chunk };
            turn_spans::model_call(&turn, &call);
        }
        turn_spans::turn(&turn);
    }

    fn terminal(&self, record: TurnRecord, data: &TurnData) -> Vec<Pending> {
        vec![Pending::Write(Arc::new(RecordTurn(record))), Pending::Conversation(NewEvent::turn(self.context.clone(), data))]
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stream.ended();
        let outcome = TurnOutcome::Cancelled(CancelReason::ClientDisconnected);
        let data = self.end_data(&outcome);
        let Some(record) = self.take(&outcome) else {
            return;
        };
        // The client is gone: queue the turn and its event; the writer drains its queue on shutdown.
        self.events.queue(self.terminal(record, &data));
    }
}
