//! Turns over a WebSocket (`actix-ws`), for the gateway's `GET
//! /v1/chat/stream` and the orchestrator's `GET /v1/conversation/stream`:
//! many turns per socket, one at a time, with the same admission and the
//! same events as the SSE routes. A [`TurnSource`] starts each turn.
//!
//! Client messages (JSON text frames):
//! - `{"type":"auth","key":"…"}` — only when the key came neither in
//!   `Authorization: Bearer` nor as a `steward.key.<key>` subprotocol
//!   (browsers cannot set headers); it must come within
//!   `server.socket_auth_timeout`;
//! - `{"type":"turn", …}` with the fields of the route's POST body (the
//!   orchestrator's also carry the three policy headers as `constitution_hash`,
//!   `policy_verdict` and `policy_signature`);
//! - `{"type":"cancel","turn_id":"…"}`: ends the running turn: the model
//!   request is aborted, `turn.cancelled` stored, then its `done`
//!   (`finish_reason: cancelled`) is sent.
//!
//! Server frames: `{"type":"session"|"delta"|"refusal"|"error"|"done","turn_id":…, …}`
//! with the SSE events' fields; an `error` with no `turn_id` answers a
//! message that started no turn (a key without `chat` gets `forbidden`
//! there). Pings every `server.keepalive`; a client silent for two
//! intervals, or not reading for one, is dropped (a running turn is then
//! recorded cancelled). Close codes: 1008 (no key, or one Steward does not
//! know, looked up again for every turn), 1009 (a message larger than the
//! longest accepted message can be), 1003 (a binary frame), 1001 (silent
//! client), 1011 (the key store failed).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, Session};
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::{ApiError, Code};
use crate::identity::{bearer, Authenticator, Caller};
use crate::orchestrator::{FinishReason, StopReason, TurnEvent, TurnStop};
use crate::telemetry::TraceContext;

/// The subprotocol the server speaks; offer it with `steward.key.<key>`.
pub const PROTOCOL: &str = "steward.v1";
const KEY_PROTOCOL: &str = "steward.key.";

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMessage {
    Auth {
        key: String,
    },
    /// The route's turn fields, read by its [`TurnSource`].
    Turn(Map<String, Value>),
    Cancel {
        turn_id: String,
    },
}

/// A turn's frames, until its `done`.
pub type Frames = futures_util::stream::BoxStream<'static, Value>;

/// The socket limits of a route.
#[derive(Debug, Clone, Copy)]
pub struct SocketSettings {
    /// Ping interval, and the longest a send may wait.
    pub keepalive: Duration,
    /// How long a socket may take to send its key.
    pub auth_timeout: Duration,
    /// The route's longest accepted message, in characters.
    pub max_message_chars: usize,
}

/// A started turn: its id and its frames, `session` first and `done` last.
pub struct Started {
    pub turn_id: crate::ids::TurnId,
    pub frames: Frames,
}

/// What starts a socket's turns.
pub trait TurnSource: Send + Sync + 'static {
    fn socket_settings(&self) -> SocketSettings;

    /// Starts a turn from the `turn` message's fields, continuing `trace`;
    /// `stop` ends it early (the client's `cancel`).
    fn start<'a>(&'a self, caller: &'a Caller, fields: Map<String, Value>, trace: TraceContext, stop: TurnStop) -> BoxFuture<'a, Result<Started, ApiError>>;
}

/// Reads a route's turn fields (unknown fields are an error, as in the POST bodies).
pub fn fields<T: serde::de::DeserializeOwned>(fields: Map<String, Value>) -> Result<T, ApiError> {
    serde_json::from_value(Value::Object(fields)).map_err(|e| ApiError::new(Code::InvalidRequest, format!("unreadable turn: {e}")))
}

/// Upgrades the request to a socket whose turns `source` starts.
pub async fn upgrade<S: TurnSource>(
    req: HttpRequest,
    body: web::Payload,
    source: web::Data<S>,
    auth: web::Data<Authenticator>,
) -> Result<HttpResponse, ApiError> {
    let key = bearer(&req).or_else(|| protocol_key(&req));
    let client = auth.client_of(&req);
    let parent = req.headers().get("traceparent").and_then(|v| v.to_str().ok()).and_then(TraceContext::parse);
    let (response, session, stream) = actix_ws::handle_with_protocols(&req, body, &[PROTOCOL])
        .map_err(|e| ApiError::new(Code::InvalidRequest, format!("GET {} is a WebSocket: {e} (POST streams server-sent events)", req.path())))?;
    // Room for the longest accepted message even when every character is sent as a `\uXXXX\uXXXX` escape.
    let settings = source.socket_settings();
    let limit = settings.max_message_chars * 12 + 4096;
    let stream = stream.max_frame_size(limit).aggregate_continuations().max_continuation_size(limit);
    let connection = Connection {
        source: source.into_inner(),
        settings,
        auth: auth.into_inner(),
        client,
        key: String::new(),
        tenant: String::new(),
        parent,
        session,
        turn: None,
        closing: None,
        last_heard: tokio::time::Instant::now(),
    };
    actix_web::rt::spawn(connection.serve(stream, key));
    Ok(response)
}

/// The key offered as a `steward.key.<key>` subprotocol.
fn protocol_key(req: &HttpRequest) -> Option<String> {
    let offered = req.headers().get(actix_web::http::header::SEC_WEBSOCKET_PROTOCOL)?.to_str().ok()?;
    offered.split(',').find_map(|p| p.trim().strip_prefix(KEY_PROTOCOL)).filter(|k| !k.is_empty()).map(str::to_owned)
}

/// Why a key is not accepted, as a close reason: 1008, or 1011 when the key
/// store failed (its cause went to the log, not to the client).
fn refused(err: &ApiError) -> Option<CloseReason> {
    if err.code().status().is_server_error() {
        return close(CloseCode::Error, "the key store is unavailable");
    }
    close(CloseCode::Policy, &err.body().message)
}

/// A close reason's text fits a control frame (125 bytes, 2 of them the code).
fn close(code: CloseCode, description: &str) -> Option<CloseReason> {
    let mut end = description.len().min(123);
    while !description.is_char_boundary(end) {
        end -= 1;
    }
    Some(CloseReason { code, description: Some(description[..end].to_owned()) })
}

struct Running {
    turn_id: crate::ids::TurnId,
    stop: TurnStop,
    frames: Frames,
}

/// One socket, until either side closes it.
struct Connection<S> {
    source: Arc<S>,
    settings: SocketSettings,
    auth: Arc<Authenticator>,
    /// The address the socket's keys are counted under (failed-authentication bound).
    client: Option<IpAddr>,
    /// Looked up again for every turn: a key revoked meanwhile stops working.
    key: String,
    tenant: String,
    /// The upgrade request's trace, which every turn continues (else each starts its own).
    parent: Option<TraceContext>,
    session: Session,
    /// The running turn: its id, what cancels it, and the frames still to send.
    turn: Option<Running>,
    /// Set when a message makes the server close the socket.
    closing: Option<CloseReason>,
    /// When the client was last heard from (any frame, pongs included).
    last_heard: tokio::time::Instant,
}

impl<S: TurnSource> Connection<S> {
    async fn serve(mut self, mut stream: AggregatedMessageStream, key: Option<String>) {
        let key = match key {
            Some(key) => Ok(key),
            None => first_auth(&mut stream, self.settings.auth_timeout).await,
        };
        let caller = match key {
            Ok(key) => self.auth.authenticate(self.client, Some(&key)).await.map(|caller| (key, caller)),
            Err(why) => {
                let _ = tokio::time::timeout(self.settings.keepalive, self.session.close(close(CloseCode::Policy, &why))).await;
                return;
            }
        };
        match caller {
            Ok((key, caller)) => {
                self.key = key;
                self.tenant = caller.tenant.as_str().to_owned();
            }
            Err(err) => {
                let _ = tokio::time::timeout(self.settings.keepalive, self.session.close(refused(&err))).await;
                return;
            }
        }
        let reason = self.run(&mut stream).await;
        let wait = self.settings.keepalive;
        // Dropping a running turn records it cancelled and aborts its model request.
        self.turn = None;
        let _ = tokio::time::timeout(wait, self.session.close(reason)).await;
    }

    /// Serves messages, turn frames and pings until the socket ends; the close reason.
    async fn run(&mut self, stream: &mut AggregatedMessageStream) -> Option<CloseReason> {
        let keepalive = self.settings.keepalive;
        let mut ping = tokio::time::interval(keepalive);
        ping.tick().await;
        loop {
            let next_frame = async {
                match self.turn.as_mut() {
                    Some(running) => running.frames.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                message = stream.next() => {
                    self.last_heard = tokio::time::Instant::now();
                    match message {
                        None | Some(Ok(AggregatedMessage::Close(_))) => return None,
                        Some(Err(actix_ws::ProtocolError::Overflow)) => return close(CloseCode::Size, "frame too large"),
                        // actix-ws reports an oversized fragmented message as an I/O error.
                        Some(Err(actix_ws::ProtocolError::Io(e))) if e.to_string().contains("maximum continuation size") => {
                            return close(CloseCode::Size, "message too large");
                        }
                        Some(Err(_)) => return close(CloseCode::Protocol, "malformed frame"),
                        Some(Ok(AggregatedMessage::Binary(_))) => return close(CloseCode::Unsupported, "binary frames are not accepted"),
                        Some(Ok(AggregatedMessage::Ping(bytes))) => {
                            if !self.within(|s| s.pong(&bytes)).await {
                                return None;
                            }
                        }
                        Some(Ok(AggregatedMessage::Pong(_))) => {}
                        Some(Ok(AggregatedMessage::Text(text))) => {
                            if !self.handle(&text).await {
                                return self.closing.take();
                            }
                        }
                    }
                },
                frame = next_frame => {
                    // A turn's frames end with its `done`; should they stop short, the client still gets one.
                    let frame = frame.unwrap_or_else(|| {
                        let turn_id = self.turn.as_ref().map_or("", |r| r.turn_id.as_str());
                        self::frame(turn_id, &TurnEvent::Done { finish_reason: FinishReason::Error, usage: None })
                    });
                    let done = frame["type"] == "done";
                    if !self.send(frame).await {
                        return None;
                    }
                    if done {
                        self.turn = None;
                    }
                }
                _ = ping.tick() => {
                    // A client that answers nothing, not even pongs, is gone (or a half-open connection).
                    if self.last_heard.elapsed() > keepalive * 2 {
                        return close(CloseCode::Away, "no answer to pings");
                    }
                    if !self.within(|s| s.ping(b"")).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Runs a send on the session, at most a keep-alive interval: a client
    /// that stops reading must not hold its turn (and the model) forever.
    async fn within<'s, F, Fut>(&'s mut self, send: F) -> bool
    where
        F: FnOnce(&'s mut Session) -> Fut,
        Fut: std::future::Future<Output = Result<(), actix_ws::Closed>> + 's,
    {
        let wait = self.settings.keepalive;
        matches!(tokio::time::timeout(wait, send(&mut self.session)).await, Ok(Ok(())))
    }

    async fn send(&mut self, frame: Value) -> bool {
        let text = frame.to_string();
        self.within(|s| s.text(text)).await
    }

    /// One client message; false once the socket is gone or must close ([`Connection::closing`]).
    async fn handle(&mut self, text: &str) -> bool {
        let message = match serde_json::from_str::<ClientMessage>(text) {
            Ok(message) => message,
            Err(e) => return self.send(error_frame(None, Code::InvalidRequest, &format!("unreadable message: {e}"))).await,
        };
        match message {
            ClientMessage::Auth { .. } => self.send(error_frame(None, Code::InvalidRequest, "this socket is authenticated already")).await,
            // Once the model has finished, a cancel changes nothing: the turn ends as it would have.
            ClientMessage::Cancel { turn_id } => match &self.turn {
                Some(running) if running.turn_id.as_str() == turn_id => {
                    running.stop.stop(StopReason::CancelRequested);
                    tracing::info!(turn_id = %turn_id, tenant = %self.tenant, "turn cancelled by the client");
                    true
                }
                _ => self.send(error_frame(Some(&turn_id), Code::NotFound, "no running turn has this id")).await,
            },
            ClientMessage::Turn(_) if self.turn.is_some() => {
                let running = self.turn.as_ref().map(|r| r.turn_id.to_string());
                self.send(error_frame(running.as_deref(), Code::TurnInProgress, "a turn is running on this socket: wait for its done, or cancel it")).await
            }
            ClientMessage::Turn(fields) => {
                let caller = match self.auth.authenticate(self.client, Some(&self.key)).await {
                    Ok(caller) => caller,
                    Err(err) => {
                        self.closing = refused(&err);
                        return false;
                    }
                };
                let stop = TurnStop::default();
                let trace = self.parent.as_ref().map_or_else(TraceContext::new_root, TraceContext::child);
                match self.source.start(&caller, fields, trace, stop.clone()).await {
                    Ok(Started { turn_id, frames }) => {
                        self.turn = Some(Running { turn_id, stop, frames });
                        true
                    }
                    Err(err) => {
                        let body = err.body();
                        let mut frame = error_frame(None, err.code(), &body.message);
                        if let Some(after) = body.retry_after_ms {
                            frame["retry_after_ms"] = after.into();
                        }
                        self.send(frame).await
                    }
                }
            }
        }
    }
}

/// Waits for `{"type":"auth","key":…}` as the first message; the key.
async fn first_auth(stream: &mut AggregatedMessageStream, within: Duration) -> Result<String, String> {
    let first = tokio::time::timeout(within, stream.next()).await.map_err(|_| "no key within the authentication timeout".to_owned())?;
    let Some(Ok(AggregatedMessage::Text(text))) = first else { return Err("the first message must be {\"type\":\"auth\",\"key\":…}".into()) };
    match serde_json::from_str::<ClientMessage>(&text) {
        Ok(ClientMessage::Auth { key }) => Ok(key),
        _ => Err("the first message must be {\"type\":\"auth\",\"key\":…}".into()),
    }
}

/// A turn event as a socket frame: the SSE event's data with its `type` and `turn_id`.
pub fn frame(turn_id: &str, event: &TurnEvent) -> Value {
    let (name, data) = event.sse();
    let mut fields = match serde_json::to_value(data) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    fields.insert("type".into(), name.into());
    fields.insert("turn_id".into(), turn_id.into());
    Value::Object(fields)
}

/// A turn's `session` event as a socket frame (it carries its `turn_id`).
pub fn session_frame(session: &crate::orchestrator::SessionData<'_>) -> Value {
    let mut fields = match serde_json::to_value(session) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    fields.insert("type".into(), "session".into());
    Value::Object(fields)
}

fn error_frame(turn_id: Option<&str>, code: Code, message: &str) -> Value {
    json!({ "type": "error", "turn_id": turn_id, "code": code.name(), "message": message })
}
