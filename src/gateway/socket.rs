//! The gateway's turns over a WebSocket (`GET /v1/chat/stream`, see
//! [`crate::socket`]): a `turn` message carries the fields of the POST body.

use std::time::Instant;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::service::{Admitted, Gateway, TurnInput};
use crate::error::ApiError;
use crate::identity::Caller;
use crate::orchestrator::{FinishReason, TurnEvent, TurnStop};
use crate::socket::{fields, frame, Frames, SocketSettings, Started, TurnSource};
use crate::telemetry::TraceContext;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatTurn {
    message: String,
    session_id: Option<String>,
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    seed: Option<i64>,
}

impl TurnSource for Gateway {
    fn socket_settings(&self) -> SocketSettings {
        SocketSettings { keepalive: self.keepalive, auth_timeout: self.socket_auth_timeout, max_message_chars: self.limits.max_message_chars }
    }

    fn start<'a>(&'a self, caller: &'a Caller, turn: Map<String, Value>, trace: TraceContext, stop: TurnStop) -> BoxFuture<'a, Result<Started, ApiError>> {
        Box::pin(async move {
            let turn: ChatTurn = fields(turn)?;
            let params = self.limits.params(turn.max_tokens, turn.temperature, turn.seed)?;
            let input = TurnInput {
                route: "chat_socket",
                session_id: turn.session_id,
                message: turn.message,
                preamble: Vec::new(),
                params,
                trace,
                started: Instant::now(),
                stop,
            };
            let admission = self.admit(caller, input).await?;
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
            Ok(Started { turn_id, frames: futures_util::stream::once(async move { session }).chain(rest).boxed() })
        })
    }
}
