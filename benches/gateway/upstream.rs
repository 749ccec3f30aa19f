//! The replay upstream: a real HTTP server that answers every
//! `POST /v1/chat/completions` with an OpenAI-format stream of a fixed answer
//! (token count, first-token delay and per-token delay configurable), run in
//! a process of its own so its memory and CPU are its own.

use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use bytes::Bytes;

/// What every answer looks like.
#[derive(Debug, Clone, Copy)]
pub struct Replay {
    pub tokens: usize,
    pub first_delay: Duration,
    pub token_delay: Duration,
}

impl Replay {
    pub fn to_args(self) -> Vec<String> {
        vec![self.tokens.to_string(), self.first_delay.as_micros().to_string(), self.token_delay.as_micros().to_string()]
    }

    pub fn from_args(args: &[String]) -> Self {
        let n = |i: usize| args.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Self { tokens: n(0) as usize, first_delay: Duration::from_micros(n(1)), token_delay: Duration::from_micros(n(2)) }
    }
}

/// The words of the answer, cycled: plain sentences that no moderation layer refuses.
const WORDS: [&str; 16] =
    [" The", " sea", " is", " calm", " and", " the", " light", " is", " soft.", " Boats", " rest", " by", " the", " old", " pier.", " Gulls"];

fn chunk(content: Option<&str>, finish: Option<&str>) -> Bytes {
    let delta = match content {
        Some(text) => serde_json::json!({ "role": "assistant", "content": text }),
        None => serde_json::json!({}),
    };
    let body = serde_json::json!({
        "id": "chatcmpl-replay", "object": "chat.completion.chunk", "created": 0, "model": "replay",
        "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
    });
    Bytes::from(format!("data: {body}\n\n"))
}

fn usage(tokens: usize) -> Bytes {
    let body = serde_json::json!({
        "id": "chatcmpl-replay", "object": "chat.completion.chunk", "created": 0, "model": "replay", "choices": [],
        "usage": { "prompt_tokens": 12, "completion_tokens": tokens, "total_tokens": 12 + tokens },
    });
    Bytes::from(format!("data: {body}\n\n"))
}

async fn completions(replay: web::Data<Replay>, _body: web::Bytes) -> HttpResponse {
    let replay = **replay;
    let frames = async_stream::stream! {
        if !replay.first_delay.is_zero() {
            tokio::time::sleep(replay.first_delay).await;
        }
        for i in 0..replay.tokens {
            if i > 0 && !replay.token_delay.is_zero() {
                tokio::time::sleep(replay.token_delay).await;
            }
            yield Ok::<_, std::convert::Infallible>(chunk(Some(WORDS[i % WORDS.len()]), None));
        }
        yield Ok(chunk(None, Some("length")));
        yield Ok(usage(replay.tokens));
        yield Ok(Bytes::from_static(b"data: [DONE]\n\n"));
    };
    HttpResponse::Ok().content_type("text/event-stream").insert_header(("cache-control", "no-cache")).streaming(frames)
}

/// Serves on `port` until killed (the bench kills it at the end).
pub fn serve(port: u16, replay: Replay) -> std::io::Result<()> {
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(replay))
                .app_data(web::PayloadConfig::new(1 << 20))
                .route("/v1/chat/completions", web::post().to(completions))
                .route("/health", web::get().to(HttpResponse::Ok))
        })
        .tcp_nodelay(true)
        .backlog(4096)
        .max_connection_rate(4096)
        .max_connections(50_000)
        .workers(2)
        .bind(("127.0.0.1", port))?
        .run()
        .await
    })
}
