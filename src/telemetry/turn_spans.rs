//! The spans of a turn, built here only (GenAI semantic conventions where
//! they apply): the turn itself, its model call, its input moderation. The
//! callers say what they know; each function asks [`spans::enabled`] first,
//! so nothing is built when no exporter is configured.

use std::time::{Duration, SystemTime};

use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;

use super::spans::{self, FinishedSpan};
use super::TraceContext;
use crate::slm::Usage;

/// What a finished turn's span says.
pub struct TurnSpan<'a> {
    /// The turn's trace (its span id is the turn's).
    pub trace: &'a TraceContext,
    pub route: &'static str,
    pub started: SystemTime,
    pub session_id: &'a str,
    pub turn_id: &'a str,
    pub tenant: &'a str,
    pub policy_verdict: &'a str,
    pub constitution_hash: &'a str,
    /// `stop`, `length`, `refused`, `cancelled` or `error`.
    pub finish_reason: &'static str,
    /// Whether the turn failed (its span's status is then an error).
    pub failed: bool,
}

/// The turn's span.
pub fn turn(span: &TurnSpan<'_>) {
    if !spans::enabled() {
        return;
    }
    spans::record(FinishedSpan {
        name: format!("turn {}", span.route),
        kind: SpanKind::Server,
        trace: span.trace,
        span_id: &span.trace.span_id,
        parent_span_id: span.trace.parent_span_id.as_deref(),
        start: span.started,
        end: SystemTime::now(),
        attributes: vec![
            KeyValue::new("gen_ai.conversation.id", span.session_id.to_owned()),
            KeyValue::new("steward.turn_id", span.turn_id.to_owned()),
            KeyValue::new("steward.tenant", span.tenant.to_owned()),
            KeyValue::new("steward.policy_verdict", span.policy_verdict.to_owned()),
            KeyValue::new("steward.constitution_hash", span.constitution_hash.to_owned()),
            KeyValue::new("steward.finish_reason", span.finish_reason),
        ],
        error: span.failed.then(|| "the turn failed".to_owned()),
    });
}

/// What the model call of a turn did.
pub struct ModelCall<'a> {
    /// The call's own span (its id went out in the request's traceparent).
    pub call: &'a TraceContext,
    pub model: &'a str,
    pub max_tokens: u32,
    pub usage: Option<Usage>,
    /// From the request to the first content.
    pub first_chunk: Option<Duration>,
}

/// The turn's model call, under the turn's span.
pub fn model_call(turn: &TurnSpan<'_>, call: &ModelCall<'_>) {
    if !spans::enabled() {
        return;
    }
    let mut attributes = vec![
        KeyValue::new("gen_ai.operation.name", "chat"),
        KeyValue::new("gen_ai.provider.name", "openai"),
        KeyValue::new("gen_ai.request.model", call.model.to_owned()),
        KeyValue::new("gen_ai.request.max_tokens", i64::from(call.max_tokens)),
        KeyValue::new("gen_ai.conversation.id", turn.session_id.to_owned()),
        KeyValue::new("gen_ai.response.finish_reasons", opentelemetry::Value::Array(vec![opentelemetry::StringValue::from(turn.finish_reason)].into())),
    ];
    if let Some(usage) = call.usage {
        attributes.push(KeyValue::new("gen_ai.usage.input_tokens", i64::from(usage.prompt_tokens)));
        attributes.push(KeyValue::new("gen_ai.usage.output_tokens", i64::from(usage.completion_tokens)));
    }
    if let Some(first) = call.first_chunk {
        attributes.push(KeyValue::new("steward.time_to_first_chunk_ms", first.as_secs_f64() * 1e3));
    }
    spans::record(FinishedSpan {
        name: format!("chat {}", call.model),
        kind: SpanKind::Client,
        trace: call.call,
        span_id: &call.call.span_id,
        parent_span_id: Some(&turn.trace.span_id),
        start: turn.started,
        end: SystemTime::now(),
        attributes,
        error: turn.failed.then(|| "the turn failed".to_owned()),
    });
}

/// The input moderation of a turn, which took `took` and refused the first of
/// `refused` (`(category, code)`), or allowed.
pub fn input_moderation(trace: &TraceContext, took: Duration, refused: Option<(&str, &str)>, constitution_hash: &str) {
    if !spans::enabled() {
        return;
    }
    let span = trace.child();
    let end = SystemTime::now();
    let mut attributes = vec![
        KeyValue::new("steward.moderation.stage", "input"),
        KeyValue::new("steward.moderation.decision", if refused.is_some() { "refuse" } else { "allow" }),
        KeyValue::new("steward.constitution_hash", constitution_hash.to_owned()),
    ];
    if let Some((category, code)) = refused {
        attributes.push(KeyValue::new("steward.moderation.category", category.to_owned()));
        attributes.push(KeyValue::new("steward.moderation.code", code.to_owned()));
    }
    spans::record(FinishedSpan {
        name: "moderation input".into(),
        kind: SpanKind::Internal,
        trace,
        span_id: &span.span_id,
        parent_span_id: Some(&trace.span_id),
        start: end - took,
        end,
        attributes,
        error: None,
    });
}
