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
use tokio::time::Instant;

use crate::error::{ApiError, Code};
use crate::telemetry::TraceContext;

/// One SSE event: `event: <name>\ndata: <json>\n\n`. JSON never contains a raw
/// newline, so the data fits one `data:` line.
pub fn sse_frame(name: &str, data: &impl Serialize) -> Bytes {
    let mut frame = Vec::with_capacity(FRAME_CAPACITY);
    frame.extend_from_slice(b"event: ");
    frame.extend_from_slice(name.as_bytes());
    frame.extend_from_slice(b"\ndata: ");
    let start = frame.len();
    if serde_json::to_writer(&mut frame, data).is_err() {
        frame.truncate(start);
        frame.extend_from_slice(b"{}");
    }
    frame.extend_from_slice(b"\n\n");
    Bytes::from(frame)
}

/// Room for a typical frame (a delta of a few tokens), so it is built in one allocation.
const FRAME_CAPACITY: usize = 128;

/// A bare `data: …` frame (the OpenAI streaming format).
pub fn sse_data(data: &str) -> Bytes {
    let mut frame = Vec::with_capacity(data.len() + 8);
    frame.extend_from_slice(b"data: ");
    frame.extend_from_slice(data.as_bytes());
    frame.extend_from_slice(b"\n\n");
    Bytes::from(frame)
}

/// Interleaves `: keep-alive` comments whenever `stream` is silent for `every`.
///
/// One timer serves the whole stream: a frame only notes when it was sent,
/// and the timer, when it fires, either sends a comment or moves to `every`
/// after the last frame. (A timeout per frame would register and cancel a
/// timer for every token.)
pub fn with_keepalive<S>(stream: S, every: Duration) -> impl Stream<Item = Result<Bytes, Infallible>>
where
    S: Stream<Item = Bytes> + Unpin,
{
    async_stream::stream! {
        let mut stream = stream;
        let mut last = Instant::now();
        let tick = tokio::time::sleep_until(last + every);
        tokio::pin!(tick);
        loop {
            tokio::select! {
                biased;
                next = stream.next() => match next {
                    Some(frame) => {
                        last = Instant::now();
                        yield Ok(frame);
                    }
                    None => break,
                },
                () = &mut tick => {
                    let due = last + every;
                    if Instant::now() >= due {
                        last = Instant::now();
                        tick.as_mut().reset(last + every);
                        yield Ok(Bytes::from_static(b": keep-alive\n\n"));
                    } else {
                        tick.as_mut().reset(due);
                    }
                }
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
    use futures_util::stream;

    #[test]
    fn a_frame_names_its_event_and_carries_its_data_on_one_line() {
        let frame = sse_frame("delta", &serde_json::json!({ "content": "two\nlines \"quoted\"" }));
        assert_eq!(&frame[..], b"event: delta\ndata: {\"content\":\"two\\nlines \\\"quoted\\\"\"}\n\n");
        assert_eq!(&sse_data("[DONE]")[..], b"data: [DONE]\n\n");
    }

    async fn collect(frames: impl Stream<Item = Result<Bytes, Infallible>>) -> Vec<Bytes> {
        frames.map(|f| f.unwrap_or_else(|never| match never {})).collect().await
    }

    #[tokio::test]
    async fn a_silent_stream_gets_keep_alive_comments_and_a_busy_one_none() {
        const COMMENT: &[u8] = b": keep-alive\n\n";
        // Silent for 260 ms between two frames, with a comment due every 50 ms.
        let silent = stream::iter([0u64, 260]).then(|wait| async move {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            Bytes::from_static(b"event: delta\ndata: {}\n\n")
        });
        let frames = collect(with_keepalive(Box::pin(silent), Duration::from_millis(50))).await;
        let comments = frames.iter().filter(|f| &f[..] == COMMENT).count();
        assert!((2..=5).contains(&comments), "{comments} comments in 260 ms of silence at one per 50 ms");
        assert_ne!(&frames[0][..], COMMENT, "the first frame was sent at once");
        assert_ne!(&frames[frames.len() - 1][..], COMMENT, "the stream ends with its last frame");

        // A frame every 5 ms keeps a 200 ms keep-alive from ever firing.
        let busy = stream::iter(0..20).then(|_| async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Bytes::from_static(b"event: delta\ndata: {}\n\n")
        });
        let frames = collect(with_keepalive(Box::pin(busy), Duration::from_millis(200))).await;
        assert_eq!(frames.len(), 20);
        assert!(frames.iter().all(|f| &f[..] != COMMENT));
    }
}
