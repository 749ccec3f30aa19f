//! The orchestrator's turns over a WebSocket (`GET /v1/conversation/stream`,
//! see [`crate::socket`]): a `turn` message carries the fields of the POST
//! body and the three policy headers as `constitution_hash`,
//! `policy_verdict` and `policy_signature`.

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::api::{begin, Arrival, OrchestratorApi, StepBody};
use super::SessionData;
use crate::error::ApiError;
use crate::identity::Caller;
use crate::policy::PolicyHeaders;
use crate::socket::{fields, frame, session_frame, SocketSettings, Started, TurnSource};
use crate::telemetry::TraceContext;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignedTurn {
    session_id: String,
    turn_id: String,
    message: String,
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    seed: Option<i64>,
    model: Option<String>,
    constitution_hash: Option<String>,
    policy_verdict: Option<String>,
    policy_signature: Option<String>,
}

impl TurnSource for OrchestratorApi {
    fn socket_settings(&self) -> SocketSettings {
        SocketSettings { keepalive: self.keepalive, auth_timeout: self.socket_auth_timeout, max_message_chars: self.limits.max_message_chars }
    }

    fn start<'a>(
        &'a self,
        caller: &'a Caller,
        turn: Map<String, Value>,
        trace: TraceContext,
        stop: super::TurnStop,
    ) -> BoxFuture<'a, Result<Started, ApiError>> {
        Box::pin(async move {
            let turn: SignedTurn = fields(turn)?;
            let policy = PolicyHeaders { constitution_hash: turn.constitution_hash, verdict: turn.policy_verdict, signature: turn.policy_signature };
            let arrival = Arrival { route: "conversation_socket", policy, trace, stop };
            let body = StepBody {
                session_id: turn.session_id,
                turn_id: turn.turn_id,
                message: turn.message,
                max_tokens: turn.max_tokens,
                temperature: turn.temperature,
                seed: turn.seed,
                model: turn.model,
            };
            let (stream, policy, request) = begin(arrival, caller.clone(), body, self).await?;
            let session = session_frame(&SessionData {
                session_id: request.session_id.as_str(),
                turn_id: request.turn_id.as_str(),
                trace_id: &request.trace.trace_id,
                constitution_hash: policy.constitution_hash.as_deref().unwrap_or_default(),
                policy_verdict: policy.verdict.as_deref().unwrap_or_default(),
            });
            let id = request.turn_id.clone();
            let frames = futures_util::stream::once(async move { session }).chain(stream.map(move |event| frame(id.as_str(), &event))).boxed();
            Ok(Started { turn_id: request.turn_id, frames })
        })
    }
}
