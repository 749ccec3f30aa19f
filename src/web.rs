//! HTTP plumbing shared by the API modules: SSE framing with keep-alives, the
//! governance headers of every chat response, and JSON extractor errors
//! mapped to stable codes.

use std::convert::Infallible;
use std::time::Duration;

use actix_web::error::JsonPayloadError;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponseBuilder};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::Serialize;

use crate::error::{ApiError, Code};
use crate::telemetry::TraceContext;

/// One SSE event: `event: <name>\ndata: <json>\n\n`. JSON never contains a raw
/// newline, so the data fits one `data:` line.
pub fn sse_frame(name: &str, data: &impl Serialize) -> Bytes {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "{}".into());
    Bytes::from(format!("event: {name}\ndata: {json}\n\n"))
}

/// A bare `data: …` frame (the OpenAI streaming format).
pub fn sse_data(data: &str) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

/// Interleaves `: keep-alive` comments whenever `stream` is silent for `every`.
pub fn with_keepalive<S>(stream: S, every: Duration) -> impl Stream<Item = Result<Bytes, Infallible>>
where
    S: Stream<Item = Bytes> + Unpin,
{
    async_stream::stream! {
        let mut stream = stream;
        loop {
            match tokio::time::timeout(every, stream.next()).await {
                Err(_) => yield Ok(Bytes::from_static(b": keep-alive\n\n")),
                Ok(Some(frame)) => yield Ok(frame),
                Ok(None) => break,
            }
        }
    }
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
    let mut trace = TraceContext::from_incoming(header("traceparent"));
    if trace.tracestate.is_none() && header("traceparent").and_then(TraceContext::parse).is_some() {
        trace.tracestate = header("tracestate").filter(|s| !s.is_empty() && s.len() <= 512).map(str::to_owned);
    }
    trace
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
