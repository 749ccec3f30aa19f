//! Time to first token through Steward versus calling the model server
//! directly, same prompt, same run, interleaved request by request.
//!
//! Needs a model server (`scripts/model-server.sh start 8091 4`):
//! `STEWARD_BENCH_SLM_URL=http://127.0.0.1:8091/v1 cargo bench --bench ttft`.
//! `STEWARD_BENCH_ROUNDS` sets the number of request pairs (default 40).

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod stats;

use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{json, Value};
use steward::app::Application;
use steward::config::{Secret, Settings};
use steward::db::Database;
use steward::identity::{Capability, KeyStore, TenantId};

use stats::report;

const PROMPT: &str = "Write one sentence about the sea.";

/// Time from sending `request` to the first SSE event whose data satisfies `is_content`.
async fn first_content(request: reqwest::RequestBuilder, is_content: impl Fn(&str, &str) -> bool) -> Duration {
    let started = Instant::now();
    let response = request.send().await.expect("request");
    assert!(response.status().is_success(), "status {}", response.status());
    let mut events = response.bytes_stream().eventsource();
    let mut first = None;
    while let Some(event) = events.next().await {
        let event = event.expect("sse");
        if first.is_none() && is_content(&event.event, &event.data) {
            first = Some(started.elapsed());
        }
    }
    first.expect("no content")
}

#[tokio::main]
async fn main() {
    let slm = std::env::var("STEWARD_BENCH_SLM_URL").unwrap_or_else(|_| "http://127.0.0.1:8091/v1".into());
    let rounds: usize = std::env::var("STEWARD_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = Settings::load_from(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config")).expect("config");
    settings.server.bind = "127.0.0.1:0".into();
    settings.slm.base_url = slm.clone();
    settings.policy.signing_key = Secret::new("bench-signing-key-0123456789abcdef0123");
    settings.policy.constitution = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/constitution.toml");
    settings.telemetry.log_level = "error".into();
    settings.limits.requests_per_second = 0.0;
    settings.limits.max_concurrent_streams = 0;
    settings.limits.tokens_per_minute = 0;
    settings.database.url = Secret::new(format!("sqlite://{}?mode=rwc", dir.path().join("bench.db").display()));
    steward::telemetry::init_logging("json", "error");
    let app = Application::build(&settings).await.expect("build");
    let steward = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let db = Database::connect(settings.database.url.expose(), 1).await.expect("db");
    let (_, key) = KeyStore::new(db).create(&TenantId::parse("bench").expect("tenant"), &[Capability::Chat]).await.expect("key");

    let http = reqwest::Client::new();
    let direct_body = json!({
        "model": settings.slm.model,
        "messages": [{ "role": "system", "content": settings.slm.system_prompt }, { "role": "user", "content": PROMPT }],
        "stream": true, "stream_options": { "include_usage": true }, "max_tokens": 8, "temperature": 0,
    });
    let steward_body = json!({ "message": PROMPT, "max_tokens": 8, "temperature": 0 });
    let direct_content = |_: &str, data: &str| {
        serde_json::from_str::<Value>(data).ok().is_some_and(|v| v["choices"][0]["delta"]["content"].as_str().is_some_and(|c| !c.is_empty()))
    };
    let steward_content = |event: &str, _: &str| event == "delta";

    let (mut direct, mut through, mut added) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds + 3 {
        let d = first_content(http.post(format!("{slm}/chat/completions")).json(&direct_body), direct_content).await;
        let s = first_content(http.post(format!("{steward}/v1/chat/stream")).bearer_auth(key.expose()).json(&steward_body), steward_content).await;
        if round >= 3 {
            // The first rounds warm connections and the model server's prompt cache.
            direct.push(d.as_secs_f64() * 1e3);
            through.push(s.as_secs_f64() * 1e3);
            added.push((s.as_secs_f64() - d.as_secs_f64()) * 1e3);
        }
    }
    println!("time to first token, prompt {PROMPT:?}, max_tokens 8, temperature 0, {rounds} interleaved pairs");
    report("direct to model server", direct);
    report("through Steward", through);
    report("added by Steward (paired)", added);
}
