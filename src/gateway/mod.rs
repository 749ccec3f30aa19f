//! Gateway: the chat app's entry points.
//!
//! [`Gateway::admit`] runs the governed part of every turn — capability,
//! limits, session ownership, input moderation, signed verdict — and hands an
//! allowed turn to the orchestrator through the in-process
//! [`Conversation`](crate::orchestrator::Conversation) port. `chat` serves
//! `POST /v1/chat/stream` (SSE); `openai` serves the OpenAI-compatible
//! `POST /v1/chat/completions`, and `moderations` OpenAI's `POST /v1/moderations`.

pub(crate) mod chat;
pub(crate) mod moderations;
pub(crate) mod openai;
mod openai_form;
mod openai_messages;
mod openai_params;
mod service;
mod socket;

pub use service::{Admission, Admitted, Gateway, TurnInput};

use actix_web::web;

/// The same turns over a WebSocket: many per socket, one at a time
///
/// Upgrade with the key in `Authorization: Bearer`, as a `steward.key.<key>` subprotocol (offered
/// with `steward.v1`, which the server selects), or in a first message `{"type":"auth","key":"…"}`
/// within server.socket_auth_timeout. Client messages:
/// `{"type":"turn","message","session_id"?,"max_tokens"?,"temperature"?,"seed"?,"model"?}` and
/// `{"type":"cancel","turn_id"}`. Server frames: `session`, `delta`, `refusal`, `error`, `done`
/// (the SSE events' fields, plus `type` and `turn_id`); an `error` without `turn_id` answers a
/// message that started no turn (e.g. `turn_in_progress` while a turn runs). Close codes: 1008 not
/// authenticated, 1009 frame too large, 1003 binary frame.
#[utoipa::path(get, path = "/v1/chat/stream", tag = "chat", security(("bearer" = []), ()),
    responses(
        (status = 101, description = "switching to the WebSocket protocol"),
        (status = 400, response = crate::responses::Problem),
        (status = 429, response = crate::responses::Problem),
    ))]
#[allow(dead_code)]
pub(crate) fn chat_socket() {}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/chat/stream", web::post().to(chat::chat_stream))
        .route("/v1/chat/stream", web::get().to(crate::socket::upgrade::<Gateway>))
        .route("/v1/chat/completions", web::post().to(openai::completions))
        .route("/v1/moderations", web::post().to(moderations::moderations));
}
