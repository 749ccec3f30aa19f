//! The gateway's turns over a WebSocket (`GET /v1/chat/stream`, see
//! [`crate::socket`]): a `turn` message carries the fields of the POST body
//! ([`ChatBody`]).

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use serde_json::{Map, Value};

use super::chat::ChatBody;
use super::service::Gateway;
use crate::error::ApiError;
use crate::identity::Caller;
use crate::orchestrator::TurnStop;
use crate::socket::{fields, frame, session_frame, Frames, SocketSettings, Started, TurnSource};
use crate::telemetry::TraceContext;

impl TurnSource for Gateway {
    fn socket_settings(&self) -> SocketSettings {
        SocketSettings { keepalive: self.keepalive, auth_timeout: self.socket_auth_timeout, max_message_chars: self.limits.max_message_chars }
    }

    fn start<'a>(&'a self, caller: &'a Caller, turn: Map<String, Value>, trace: TraceContext, stop: TurnStop) -> BoxFuture<'a, Result<Started, ApiError>> {
        Box::pin(async move {
            let input = fields::<ChatBody>(turn)?.into_input(&self.limits, "chat_socket", trace, stop)?;
            let admission = self.admit(caller, input).await?;
            let turn_id = admission.turn_id.clone();
            let verdict = admission.signed.verdict.header_value();
            let session = session_frame(&admission.session(&verdict));
            let id = turn_id.clone();
            let rest: Frames = admission.outcome.into_events().map(move |event| frame(id.as_str(), &event)).boxed();
            Ok(Started { turn_id, frames: futures_util::stream::once(async move { session }).chain(rest).boxed() })
        })
    }
}
