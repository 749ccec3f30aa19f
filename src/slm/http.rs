//! OpenAI-compatible streaming adapter (vLLM, llama.cpp, Ollama, TGI): the
//! request, the answer's events read by [`SseData`], each chunk parsed into
//! [`ModelEvent`]s, under the connect, first-token, idle and total deadlines.

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::time::{timeout_at, Instant};

use super::clients::PerThread;
use super::sse::SseData;
use super::types::{Deadline, ModelEvent, ModelRequest, SlmError, Usage};
use super::ToolCallPart;
use super::{ModelClient, ModelStream};
use crate::policy::headers;

/// The four limits on a dispatch.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// From dispatch to the first content.
    pub first_token: Duration,
    /// Longest silence between two events once content flows.
    pub idle: Duration,
    pub total: Duration,
}

pub struct HttpModelClient {
    /// A client per dispatching thread (see [`PerThread`]).
    http: PerThread,
    base_url: String,
    model: String,
    timeouts: Timeouts,
    /// Sent as `Authorization: Bearer`, for a server that asks for a key.
    api_key: Option<String>,
}

impl HttpModelClient {
    pub fn new(base_url: &str, model: &str, timeouts: Timeouts, api_key: Option<String>) -> Result<Self, SlmError> {
        let connect = timeouts.connect;
        let http =
            PerThread::new(move || reqwest::Client::builder().connect_timeout(connect).tcp_nodelay(true).pool_idle_timeout(Duration::from_secs(60)).build())
                .map_err(SlmError::Unavailable)?;
        Ok(Self { http, base_url: base_url.trim_end_matches('/').to_owned(), model: model.to_owned(), timeouts, api_key })
    }

    fn body(&self, request: &ModelRequest) -> serde_json::Value {
        let mut body = json!({
            "model": self.model,
            "messages": request.messages,
            "stream": true,
            "stream_options": { "include_usage": true },
            "max_tokens": request.params.max_tokens,
        });
        if let Some(t) = request.params.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(seed) = request.params.seed {
            body["seed"] = json!(seed);
        }
        let p = &request.params;
        for (name, value) in [("top_p", p.top_p), ("presence_penalty", p.presence_penalty), ("frequency_penalty", p.frequency_penalty)] {
            if let Some(value) = value {
                body[name] = json!(value);
            }
        }
        if !request.stop.is_empty() {
            body["stop"] = json!(request.stop);
        }
        if p.logprobs {
            body["logprobs"] = json!(true);
            if let Some(n) = p.top_logprobs {
                body["top_logprobs"] = json!(n);
            }
        }
        for (name, value) in request.form.fields() {
            body[name] = value;
        }
        body
    }
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<UsageChunk>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Delta,
    finish_reason: Option<String>,
    logprobs: Option<LogprobsChunk>,
}

#[derive(Deserialize)]
struct LogprobsChunk {
    content: Option<Vec<serde_json::Value>>,
}

#[derive(Deserialize, Default)]
struct Delta {
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<ToolCallDelta>,
}

#[derive(Deserialize)]
struct ToolCallDelta {
    #[serde(default)]
    index: u32,
    id: Option<String>,
    #[serde(default)]
    function: FunctionDelta,
}

#[derive(Deserialize, Default)]
struct FunctionDelta {
    name: Option<String>,
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct UsageChunk {
    prompt_tokens: u32,
    completion_tokens: u32,
}

/// The events one SSE `data:` payload carries.
fn parse_chunk(data: &str) -> Result<Vec<ModelEvent>, SlmError> {
    let chunk: Chunk = serde_json::from_str(data).map_err(|e| SlmError::Protocol(e.to_string()))?;
    let mut events = Vec::new();
    for choice in chunk.choices {
        if let Some(entries) = choice.logprobs.and_then(|l| l.content).filter(|c| !c.is_empty()) {
            events.push(ModelEvent::Logprobs(entries));
        }
        if let Some(content) = choice.delta.content.filter(|c| !c.is_empty()) {
            events.push(ModelEvent::Delta(content));
        }
        for call in choice.delta.tool_calls {
            let FunctionDelta { name, arguments } = call.function;
            events.push(ModelEvent::ToolCall(ToolCallPart { index: call.index, id: call.id, name, arguments: arguments.unwrap_or_default() }));
        }
        if let Some(reason) = choice.finish_reason {
            events.push(ModelEvent::Finish(reason));
        }
    }
    if let Some(u) = chunk.usage {
        let usage = Usage { prompt_tokens: u.prompt_tokens, completion_tokens: u.completion_tokens, total_tokens: u.prompt_tokens + u.completion_tokens };
        events.push(ModelEvent::Usage(usage));
    }
    Ok(events)
}

impl ModelClient for HttpModelClient {
    fn stream(&self, request: ModelRequest) -> ModelStream {
        let started = Instant::now();
        let deadline = started + self.timeouts.total;
        let first_deadline = started + self.timeouts.first_token;
        let idle = self.timeouts.idle;
        // Boxed, so that the request's future (a kilobyte and more) is freed once the
        // answer's headers are in, instead of sizing the stream for as long as it runs.
        let mut post = self
            .http
            .get()
            .post(format!("{}/chat/completions", self.base_url))
            .header(headers::CONSTITUTION_HASH, &request.context.constitution_hash)
            .header(headers::POLICY_VERDICT, &request.context.policy_verdict)
            .header("traceparent", &request.context.traceparent)
            .json(&self.body(&request));
        if let Some(key) = &self.api_key {
            post = post.bearer_auth(key);
        }
        let send = Box::pin(post.send());
        Box::pin(async_stream::try_stream! {
            let response = match timeout_at(first_deadline.min(deadline), send).await {
                Err(_) => Err(SlmError::Timeout(if Instant::now() >= deadline { Deadline::Total } else { Deadline::FirstToken }))?,
                Ok(Err(e)) if e.is_connect() => Err(SlmError::Unavailable(e))?,
                Ok(Err(e)) => Err(SlmError::Stream(Box::new(e)))?,
                Ok(Ok(r)) => r,
            };
            if !response.status().is_success() {
                let status = response.status().as_u16();
                let body = timeout_at(deadline, Box::pin(response.text())).await.ok().and_then(Result::ok).unwrap_or_default().chars().take(300).collect();
                Err(SlmError::Status { status, body })?;
                return;
            }
            let mut body = response.bytes_stream();
            let (mut sse, mut events) = (SseData::default(), Vec::new());
            let mut seen_content = false;
            // One timer for the three deadlines: an event only notes its time, and the
            // timer, when it fires, either ends the stream or moves to the next due time.
            let due = |seen_content: bool, last: Instant| if seen_content { (last + idle).min(deadline) } else { first_deadline.min(deadline) };
            let mut last = Instant::now();
            let timer = tokio::time::sleep_until(due(false, last));
            tokio::pin!(timer);
            'read: loop {
                let next = tokio::select! {
                    biased;
                    next = body.next() => Some(next),
                    () = &mut timer => None,
                };
                let Some(next) = next else {
                    let (now, at) = (Instant::now(), due(seen_content, last));
                    if now >= at {
                        let which = if now >= deadline { Deadline::Total } else if seen_content { Deadline::Idle } else { Deadline::FirstToken };
                        Err(SlmError::Timeout(which))?;
                    }
                    timer.as_mut().reset(at);
                    continue;
                };
                last = Instant::now();
                let Some(bytes) = next else { break };
                let bytes = bytes.map_err(|e| SlmError::Stream(Box::new(e)))?;
                sse.feed(&bytes, &mut events).map_err(|_| SlmError::Protocol("an event that is not UTF-8".into()))?;
                for data in std::mem::take(&mut events) {
                    let data = data.trim();
                    if data == "[DONE]" {
                        break 'read;
                    }
                    if data.is_empty() {
                        continue;
                    }
                    for item in parse_chunk(data)? {
                        if !seen_content && item.is_answer() {
                            // From the first content on, the idle deadline applies, and it may be
                            // nearer than the first-token deadline the timer is set for.
                            seen_content = true;
                            timer.as_mut().reset(due(true, last));
                        }
                        yield item;
                    }
                }
            }
        })
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), SlmError>> {
        Box::pin(async move {
            let url = format!("{}/models", self.base_url);
            let mut get = self.http.get().get(url).timeout(self.timeouts.connect);
            if let Some(key) = &self.api_key {
                get = get.bearer_auth(key);
            }
            let response = get.send().await.map_err(SlmError::Unavailable)?;
            if response.status().is_success() {
                Ok(())
            } else {
                Err(SlmError::Status { status: response.status().as_u16(), body: String::new() })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_finish_and_usage_chunks() {
        let events = parse_chunk(r#"{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#).unwrap();
        assert_eq!(events, vec![ModelEvent::Delta("Hi".into())]);
        let events = parse_chunk(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#).unwrap();
        assert_eq!(events, vec![ModelEvent::Finish("length".into())]);
        let events = parse_chunk(r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#).unwrap();
        assert_eq!(events, vec![ModelEvent::Usage(Usage { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 })]);
    }

    #[test]
    fn parses_the_pieces_of_a_streamed_tool_call() {
        let first =
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"get_weather","arguments":"{"}}]}}]}"#;
        let part = ToolCallPart { index: 0, id: Some("c1".into()), name: Some("get_weather".into()), arguments: "{".into() };
        assert_eq!(parse_chunk(first).unwrap(), vec![ModelEvent::ToolCall(part)]);
        let next = r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"}"}}]},"finish_reason":"tool_calls"}]}"#;
        let part = ToolCallPart { index: 0, id: None, name: None, arguments: "}".into() };
        assert_eq!(parse_chunk(next).unwrap(), vec![ModelEvent::ToolCall(part), ModelEvent::Finish("tool_calls".into())]);
    }

    #[test]
    fn the_log_probabilities_of_a_piece_come_before_it() {
        let chunk =
            r#"{"choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":{"content":[{"token":"Hi","logprob":-0.5,"bytes":[72,105],"top_logprobs":[]}]}}]}"#;
        let events = parse_chunk(chunk).unwrap();
        assert!(matches!(&events[0], ModelEvent::Logprobs(entries) if entries[0]["token"] == "Hi"), "{events:?}");
        assert_eq!(events[1], ModelEvent::Delta("Hi".into()));
    }

    #[test]
    fn rejects_a_chunk_that_is_not_json() {
        assert!(matches!(parse_chunk("{not json"), Err(SlmError::Protocol(_))));
    }

    #[test]
    fn sse_framing_survives_arbitrary_network_chunking() {
        let body = ": keep-alive\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\r\n\r\ndata: [DONE]\n\n";
        for split in 1..body.len() {
            let (mut sse, mut data) = (SseData::default(), Vec::new());
            for piece in body.as_bytes().chunks(split) {
                sse.feed(piece, &mut data).unwrap();
            }
            assert_eq!(data.len(), 3, "split {split}");
            assert_eq!(data[2], "[DONE]");
            assert_eq!(parse_chunk(&data[0]).unwrap(), vec![ModelEvent::Delta("Hel".into())]);
        }
    }
}
