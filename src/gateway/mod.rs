//! Gateway: the chat app's entry points.
//!
//! [`Gateway::admit`] runs the governed part of every turn — capability,
//! limits, session ownership, input moderation, signed verdict — and hands an
//! allowed turn to the orchestrator through the in-process
//! [`Conversation`](crate::orchestrator::Conversation) port. `chat` serves
//! `POST /v1/chat/stream` (SSE); `openai` serves the OpenAI-compatible
//! `POST /v1/chat/completions`.

mod chat;
mod openai;
mod service;
mod socket;

pub use service::{Admission, Admitted, CallerSystemPolicy, Gateway, TurnInput};

use actix_web::web;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/chat/stream", web::post().to(chat::chat_stream))
        .route("/v1/chat/stream", web::get().to(crate::socket::upgrade::<Gateway>))
        .route("/v1/chat/completions", web::post().to(openai::completions));
}
