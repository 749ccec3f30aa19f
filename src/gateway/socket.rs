//! `GET /v1/chat/stream` as a WebSocket (`actix-ws`): many turns per socket,
//! one at a time, with the same admission and the same events as the SSE
//! route.
//!
//! Client messages (JSON text frames):
//! - `{"type":"auth","key":"…"}` — only when the key came neither in
//!   `Authorization: Bearer` nor as a `steward.key.<key>` subprotocol
//!   (browsers cannot set headers); it must come within
//!   `server.socket_auth_timeout_ms`;
//! - `{"type":"turn","message":"…","session_id"?,"max_tokens"?,"temperature"?,"seed"?}`;
//! - `{"type":"cancel","turn_id":"…"}`: ends the running turn: the model
//!   request is aborted, `turn.cancelled` stored, then its `done`
//!   (`finish_reason: cancelled`) is sent.
//!
//! Server frames: `{"type":"session"|"delta"|"refusal"|"error"|"done","turn_id":…, …}`
//! with the SSE events' fields; an `error` with no `turn_id` answers a
//! message that started no turn. Pings every `server.keepalive_ms`. Close
//! codes: 1008 (not authenticated, or the key lacks `chat`), 1009 (a frame
//! over `server.body_limit_bytes`), 1003 (a binary frame), 1011 (internal).

use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, Session};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::service::{Admitted, Gateway, TurnInput};
use crate::error::{ApiError, Code};
use crate::identity::{bearer, Caller, KeyCache};
use crate::orchestrator::EventData;
use crate::orchestrator::{FinishReason, TurnEvent};
use crate::telemetry::TraceContext;
use tokio_util::sync::CancellationToken;

/// The subprotocol the server speaks; offer it with `steward.key.<key>`.
pub const PROTOCOL: &str = "steward.v1";
const KEY_PROTOCOL: &str = "steward.key.";

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientMessage {
    Auth { key: String },
    Turn { message: String, session_id: Option<String>, max_tokens: Option<u32>, temperature: Option<f32>, seed: Option<i64> },
    Cancel { turn_id: String },
}

/// A turn's frames, until its `done`.
type Frames = futures_util::stream::BoxStream<'static, Value>;

pub async fn chat_socket(req: HttpRequest, body: web::Payload, gateway: web::Data<Gateway>, keys: web::Data<KeyCache>) -> Result<HttpResponse, ApiError> {
    let key = bearer(&req).or_else(|| protocol_key(&req));
    let (response, session, stream) = actix_ws::handle_with_protocols(&req, body, &[PROTOCOL])
        .map_err(|e| ApiError::new(Code::InvalidRequest, format!("GET /v1/chat/stream is a WebSocket: {e} (POST streams server-sent events)")))?;
    let limit = gateway.limits.max_message_chars * 4 + 4096;
    let stream = stream.max_frame_size(limit).aggregate_continuations().max_continuation_size(limit);
    actix_web::rt::spawn(serve(session, stream, gateway.into_inner(), keys.into_inner(), key));
    Ok(response)
}

/// The key offered as a `steward.key.<key>` subprotocol.
fn protocol_key(req: &HttpRequest) -> Option<String> {
    let offered = req.headers().get(actix_web::http::header::SEC_WEBSOCKET_PROTOCOL)?.to_str().ok()?;
    offered.split(',').find_map(|p| p.trim().strip_prefix(KEY_PROTOCOL)).filter(|k| !k.is_empty()).map(str::to_owned)
}

fn close(code: CloseCode, description: &str) -> Option<CloseReason> {
    Some(CloseReason { code, description: Some(description.to_owned()) })
}

/// One socket, until either side closes it.
async fn serve(
    mut session: Session,
    mut stream: AggregatedMessageStream,
    gateway: std::sync::Arc<Gateway>,
    keys: std::sync::Arc<KeyCache>,
    key: Option<String>,
) {
    let caller = match key {
        Some(key) => Caller::from_key(&keys, &key).await.map_err(|e| e.to_string()),
        None => first_auth(&mut stream, gateway.socket_auth_timeout, &keys).await,
    };
    let caller = match caller {
        Ok(caller) => caller,
        Err(why) => {
            let _ = session.close(close(CloseCode::Policy, &why)).await;
            return;
        }
    };
    let reason = Connection { gateway: &gateway, caller: &caller, session: &mut session, turn: None }.run(&mut stream).await;
    let _ = session.close(reason).await;
}

/// Waits for `{"type":"auth"}` as the first message.
async fn first_auth(stream: &mut AggregatedMessageStream, within: Duration, keys: &KeyCache) -> Result<Caller, String> {
    let first = tokio::time::timeout(within, stream.next()).await.map_err(|_| "no key within the authentication timeout".to_owned())?;
    let Some(Ok(AggregatedMessage::Text(text))) = first else { return Err("the first message must be {\"type\":\"auth\",\"key\":…}".into()) };
    match serde_json::from_str::<ClientMessage>(&text) {
        Ok(ClientMessage::Auth { key }) => Caller::from_key(keys, &key).await.map_err(|e| e.to_string()),
        _ => Err("the first message must be {\"type\":\"auth\",\"key\":…}".into()),
    }
}

struct Running {
    turn_id: String,
    cancel: CancellationToken,
    frames: Frames,
}

struct Connection<'a> {
    gateway: &'a Gateway,
    caller: &'a Caller,
    session: &'a mut Session,
    /// The running turn: its id, what cancels it, and the frames still to send.
    turn: Option<Running>,
}

impl Connection<'_> {
    /// Serves messages, turn frames and pings until the socket ends; the close reason.
    async fn run(&mut self, stream: &mut AggregatedMessageStream) -> Option<CloseReason> {
        let mut ping = tokio::time::interval(self.gateway.keepalive);
        ping.tick().await;
        loop {
            let next_frame = async {
                match self.turn.as_mut() {
                    Some(running) => running.frames.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                message = stream.next() => match message {
                    None | Some(Ok(AggregatedMessage::Close(_))) => return None,
                    Some(Err(actix_ws::ProtocolError::Overflow)) => return close(CloseCode::Size, "frame too large"),
                    Some(Err(_)) => return close(CloseCode::Protocol, "malformed frame"),
                    Some(Ok(AggregatedMessage::Binary(_))) => return close(CloseCode::Unsupported, "binary frames are not accepted"),
                    Some(Ok(AggregatedMessage::Ping(bytes))) => {
                        if self.session.pong(&bytes).await.is_err() {
                            return None;
                        }
                    }
                    Some(Ok(AggregatedMessage::Pong(_))) => {}
                    Some(Ok(AggregatedMessage::Text(text))) => {
                        if !self.handle(&text).await {
                            return None;
                        }
                    }
                },
                frame = next_frame => {
                    let frame = frame.unwrap_or_else(|| json!({ "type": "done", "finish_reason": FinishReason::Error }));
                    let done = frame["type"] == "done";
                    if !self.send(frame).await {
                        return None;
                    }
                    if done {
                        self.turn = None;
                    }
                }
                _ = ping.tick() => {
                    if self.session.ping(b"").await.is_err() {
                        return None;
                    }
                }
            }
        }
    }

    async fn send(&mut self, frame: Value) -> bool {
        self.session.text(frame.to_string()).await.is_ok()
    }

    /// One client message; false once the socket is gone.
    async fn handle(&mut self, text: &str) -> bool {
        let message = match serde_json::from_str::<ClientMessage>(text) {
            Ok(message) => message,
            Err(e) => return self.send(error_frame(None, Code::InvalidRequest, &format!("unreadable message: {e}"))).await,
        };
        match message {
            ClientMessage::Auth { .. } => self.send(error_frame(None, Code::InvalidRequest, "this socket is authenticated already")).await,
            ClientMessage::Cancel { turn_id } => match &self.turn {
                // The turn aborts the model request, is stored as cancelled, then sends its `done`.
                Some(running) if running.turn_id == turn_id => {
                    running.cancel.cancel();
                    tracing::info!(turn_id = %turn_id, tenant = %self.caller.tenant, "turn cancelled by the client");
                    true
                }
                _ => self.send(error_frame(Some(&turn_id), Code::NotFound, "no running turn has this id")).await,
            },
            ClientMessage::Turn { .. } if self.turn.is_some() => {
                let running = self.turn.as_ref().map(|r| r.turn_id.clone());
                self.send(error_frame(running.as_deref(), Code::TurnInProgress, "a turn is running on this socket: wait for its done, or cancel it")).await
            }
            ClientMessage::Turn { message, session_id, max_tokens, temperature, seed } => {
                match self.start(message, session_id, max_tokens, temperature, seed).await {
                    Ok(running) => {
                        self.turn = Some(running);
                        true
                    }
                    Err(err) => self.send(error_frame(None, err.code(), &err.body().message)).await,
                }
            }
        }
    }

    async fn start(
        &mut self,
        message: String,
        session_id: Option<String>,
        max_tokens: Option<u32>,
        temperature: Option<f32>,
        seed: Option<i64>,
    ) -> Result<Running, ApiError> {
        let gateway = self.gateway;
        let params = gateway.limits.params(max_tokens, temperature, seed)?;
        let cancel = CancellationToken::new();
        let trace = TraceContext::new_root();
        let input =
            TurnInput { route: "chat_socket", session_id, message, preamble: Vec::new(), params, trace, started: Instant::now(), cancel: cancel.clone() };
        let admission = gateway.admit(self.caller, input).await?;
        let turn_id = admission.turn_id.clone();
        let session = json!({
            "type": "session",
            "turn_id": turn_id,
            "session_id": admission.session_id,
            "trace_id": admission.trace.trace_id,
            "constitution_hash": admission.signed.constitution_hash.as_str(),
            "policy_verdict": admission.signed.verdict.header_value(),
        });
        let id = turn_id.clone();
        let rest: Frames = match admission.outcome {
            Admitted::Refused(hit) => futures_util::stream::iter(
                [TurnEvent::Refusal(hit), TurnEvent::Done { finish_reason: FinishReason::Refused, usage: None }].map(move |e| frame(&id, &e)),
            )
            .boxed(),
            Admitted::Streaming(turn) => turn.map(move |event| frame(&id, &event)).boxed(),
        };
        Ok(Running { turn_id, cancel, frames: futures_util::stream::once(async move { session }).chain(rest).boxed() })
    }
}

/// A turn event as a socket frame: the SSE event's data with its `type` and `turn_id`.
fn frame(turn_id: &str, event: &TurnEvent) -> Value {
    let (name, data) = event.sse();
    let mut fields = match data {
        EventData::Delta { content } => Map::from_iter([("content".to_owned(), Value::from(content))]),
        EventData::Other(Value::Object(map)) => map,
        EventData::Other(other) => Map::from_iter([("data".to_owned(), other)]),
    };
    fields.insert("type".into(), name.into());
    fields.insert("turn_id".into(), turn_id.into());
    Value::Object(fields)
}

fn error_frame(turn_id: Option<&str>, code: Code, message: &str) -> Value {
    json!({ "type": "error", "turn_id": turn_id, "code": code.name(), "message": message })
}
