//! HTTP plumbing shared by the API modules: SSE events (`actix-web-lab`) with keep-alives, the
//! governance headers of every chat response, and JSON extractor errors
//! mapped to stable codes.

use std::time::Duration;

use actix_web::error::JsonPayloadError;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponseBuilder};
use actix_web_lab::sse::{self, Sse};
use actix_web_lab::util::InfallibleStream;
use futures_util::Stream;
use serde::Serialize;

use crate::error::{ApiError, Code};
use crate::telemetry::TraceContext;

/// One SSE event, `event: <name>` with its JSON on one `data:` line (JSON
/// never contains a raw newline).
pub fn sse_event(name: &'static str, data: &impl Serialize) -> sse::Event {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "{}".to_owned());
    sse::Data::new(json).event(name).into()
}

/// A bare `data: …` event (the OpenAI streaming format).
pub fn sse_data(data: impl Into<String>) -> sse::Event {
    sse::Data::new(data.into()).into()
}

/// An event stream as a response body (`actix-web-lab`'s): `: keep-alive`
/// comments every `every`, also while a turn waits for its first token.
pub fn sse_body<S>(events: S, every: Duration) -> Sse<InfallibleStream<S>>
where
    S: Stream<Item = sse::Event> + 'static,
{
    Sse::from_infallible_stream(events).with_keep_alive(every)
}

/// The headers every chat response carries.
pub struct Governance<'a> {
    pub constitution_hash: &'a str,
    pub policy_verdict: &'a str,
    pub session_id: &'a str,
    pub trace: &'a TraceContext,
}

impl Governance<'_> {
    pub fn apply(&self, builder: &mut HttpResponseBuilder) {
        builder
            .insert_header(("x-constitution-hash", self.constitution_hash))
            .insert_header(("x-policy-verdict", self.policy_verdict))
            .insert_header(("x-session-id", self.session_id))
            .insert_header(("x-trace-id", self.trace.trace_id.as_str()))
            .insert_header(("traceparent", self.trace.header()));
    }

    /// Starts an SSE response with these headers.
    pub fn sse_response(&self) -> HttpResponseBuilder {
        let mut builder = actix_web::HttpResponse::Ok();
        builder
            .insert_header((header::CONTENT_TYPE, "text/event-stream"))
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .insert_header(("x-accel-buffering", "no"));
        self.apply(&mut builder);
        builder
    }
}

/// The incoming trace context of a request, continued with a new span.
pub fn trace_of(req: &HttpRequest) -> TraceContext {
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    TraceContext::from_incoming(header("traceparent"), header("tracestate").filter(|s| s.len() <= 512))
}

/// JSON bodies: size limit and errors as stable codes.
pub fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default().limit(limit).error_handler(|err, _req| {
        let api = match &err {
            JsonPayloadError::ContentType => ApiError::new(Code::UnsupportedMediaType, "expected Content-Type: application/json"),
            JsonPayloadError::Overflow { limit } | JsonPayloadError::OverflowKnownLength { limit, .. } => {
                ApiError::new(Code::PayloadTooLarge, format!("request body exceeds {limit} bytes"))
            }
            JsonPayloadError::Deserialize(e) if e.is_data() => ApiError::new(Code::InvalidRequest, e.to_string()),
            JsonPayloadError::Deserialize(e) => ApiError::new(Code::MalformedJson, format!("malformed JSON: {e}")),
            other => ApiError::new(Code::InvalidRequest, other.to_string()),
        };
        api.into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{stream, StreamExt};

    async fn wire(events: Vec<sse::Event>, every: Duration, gap: Duration) -> String {
        use actix_web::body::MessageBody;
        let paced = stream::iter(events).then(move |event| async move {
            tokio::time::sleep(gap).await;
            event
        });
        let body = sse_body(Box::pin(paced), every);
        let bytes = actix_web::body::to_bytes(body.boxed()).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn an_event_names_itself_and_carries_its_data_on_one_line() {
        let events = vec![sse_event("delta", &serde_json::json!({ "content": "two\nlines \"quoted\"" })), sse_data("[DONE]")];
        // (Keep-alive comments, which every SSE client skips, aside.)
        let wire = wire(events, Duration::from_secs(60), Duration::ZERO).await.replace(": keep-alive\n\n", "");
        assert_eq!(wire, "event: delta\ndata: {\"content\":\"two\\nlines \\\"quoted\\\"\"}\n\ndata: [DONE]\n\n");
    }

    #[tokio::test]
    async fn a_silent_stream_gets_keep_alive_comments() {
        // Two events 260 ms apart, with a comment due every 50 ms.
        let events = vec![sse_event("delta", &serde_json::json!({})), sse_event("done", &serde_json::json!({}))];
        let wire = wire(events, Duration::from_millis(50), Duration::from_millis(130)).await;
        let comments = wire.matches(": keep-alive\n\n").count();
        assert!((2..=7).contains(&comments), "{comments} comments in 260 ms at one per 50 ms: {wire:?}");
        assert!(wire.ends_with("event: done\ndata: {}\n\n"), "the stream ends with its last event: {wire:?}");
    }
}
