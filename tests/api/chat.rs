//! The governed chat path against the real model.

use serde_json::json;
use steward::durations::NonZeroDuration;
use steward::orchestrator::FinishReason;
use steward::policy::Constitution;

use crate::helpers::{manifest_dir, spawn_app, spawn_app_with, Storage};

#[tokio::test]
async fn an_allowed_turn_streams_session_deltas_then_done_with_usage_and_governance_headers() {
    let app = spawn_app().await;
    let (_, key) = app.chat_key().await;

    let sse = app.chat(&key, &json!({ "message": "Say hello to me.", "max_tokens": 12, "temperature": 0 })).await;

    let names = sse.names();
    assert_eq!(names.first(), Some(&"session"), "{names:?}");
    assert_eq!(names.last(), Some(&"done"), "{names:?}");
    assert!(names[1..names.len() - 1].iter().all(|n| *n == "delta") && names.len() >= 3, "{names:?}");
    assert!(!sse.text().is_empty());

    let expected_hash = Constitution::load(&manifest_dir().join("config/constitution.toml")).unwrap().hash();
    assert_eq!(sse.header("x-constitution-hash"), expected_hash.as_str());
    assert_eq!(sse.header("x-policy-verdict"), "allow");
    assert_eq!(sse.header("content-type"), "text/event-stream");
    let session = sse.first("session");
    assert_eq!(session["constitution_hash"], expected_hash.as_str());
    assert_eq!(session["policy_verdict"], "allow");
    assert_eq!(sse.header("x-session-id"), session["session_id"]);
    assert_eq!(sse.header("x-trace-id"), session["trace_id"]);
    assert!(sse.header("traceparent").contains(session["trace_id"].as_str().unwrap()));

    let done = sse.first("done");
    assert!(["stop", "length"].contains(&done["finish_reason"].as_str().unwrap()), "{done}");
    let completion = done["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=12).contains(&completion), "{done}");
    assert!(done["usage"]["prompt_tokens"].as_u64().unwrap() > 0);

    let turns = app.store.turns(&session["session_id"].as_str().unwrap().parse().unwrap()).await.unwrap();
    assert_eq!(turns.len(), 1);
    assert_eq!(turns[0].assistant_message, sse.text(), "the stored answer is what the client received");
}

#[tokio::test]
async fn an_incoming_traceparent_is_continued_in_the_response() {
    let app = spawn_app().await;
    let (_, key) = app.chat_key().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";

    let response = app
        .http
        .post(format!("{}/v1/chat/stream", app.address))
        .bearer_auth(&key)
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&json!({ "message": "Hi", "max_tokens": 4 }))
        .send()
        .await
        .unwrap();
    let sse = crate::helpers::read_sse(response).await;

    assert_eq!(sse.header("x-trace-id"), trace_id);
    assert_eq!(sse.first("session")["trace_id"], trace_id);
}

#[tokio::test]
async fn a_second_turn_in_the_same_session_sends_the_history() {
    let app = spawn_app().await;
    let (_, key) = app.chat_key().await;
    let first = app.chat(&key, &json!({ "message": "My name is Ada.", "max_tokens": 16, "temperature": 0 })).await;
    let session_id = first.first("session")["session_id"].as_str().unwrap().to_owned();
    let first_usage = &first.first("done")["usage"];

    let second = app.chat(&key, &json!({ "message": "What is my name?", "session_id": session_id, "max_tokens": 8, "temperature": 0 })).await;

    assert_eq!(second.first("session")["session_id"], session_id.as_str());
    // The model server's own token count proves the earlier exchange was in the prompt:
    // the second prompt holds the first prompt, the first answer and the new message.
    let second_prompt = second.first("done")["usage"]["prompt_tokens"].as_u64().unwrap();
    let first_prompt = first_usage["prompt_tokens"].as_u64().unwrap();
    let first_answer = first_usage["completion_tokens"].as_u64().unwrap();
    assert!(second_prompt >= first_prompt + first_answer, "second prompt {second_prompt} < {first_prompt} + {first_answer}");
    assert_eq!(app.store.turns(&session_id.parse().unwrap()).await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_turn_whose_model_server_is_unreachable_ends_with_an_error_event() {
    let app = spawn_app_with(Storage::Sqlite, |s| s.slm.base_url = "http://127.0.0.1:9/v1".into()).await;
    let (_, key) = app.chat_key().await;

    let sse = app.chat(&key, &json!({ "message": "Hello?", "max_tokens": 4 })).await;

    assert_eq!(sse.names(), vec!["session", "error", "done"]);
    assert_eq!(sse.first("error")["code"], "model_unavailable");
    assert_eq!(sse.first("done")["finish_reason"], "error");
}

#[tokio::test]
async fn the_chat_path_works_on_postgresql() {
    let app = spawn_app_with(Storage::Postgres, |_| {}).await;
    let (_, key) = app.chat_key().await;

    let first = app.chat(&key, &json!({ "message": "Name a colour.", "max_tokens": 6 })).await;
    let session_id = first.first("session")["session_id"].as_str().unwrap().to_owned();
    let second = app.chat(&key, &json!({ "message": "Another one.", "session_id": session_id, "max_tokens": 6 })).await;

    assert_eq!(second.names().last(), Some(&"done"));
    assert_eq!(app.store.turns(&session_id.parse().unwrap()).await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_client_that_hangs_up_stops_the_generation_and_the_turn_is_recorded_cancelled() {
    use futures_util::StreamExt;
    let model = crate::moderation::PrivateModelServer::start().await;
    let port = model.port;
    let app = spawn_app_with(Storage::Sqlite, |s| s.slm.base_url = format!("http://127.0.0.1:{port}/v1")).await;
    let (_, key) = app.chat_key().await;
    let response = app.post("/v1/chat/stream", Some(&key), &json!({ "message": "Write a very long story about the sea.", "max_tokens": 2000 })).await;
    let session = response.headers()["x-session-id"].to_str().unwrap().to_owned();
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("event: delta") {
        seen.push_str(&String::from_utf8_lossy(&body.next().await.unwrap().unwrap()));
    }
    assert!(model.busy().await, "the model is generating");

    drop(body);

    let hung_up = std::time::Instant::now();
    while model.busy().await {
        assert!(hung_up.elapsed() < std::time::Duration::from_secs(2), "the model server kept generating after the client left");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (_, predicted) = model.counters().await;
    assert!(predicted < 2000.0, "generation stopped early: {predicted} tokens");
    let mut turns = Vec::new();
    for _ in 0..50 {
        turns = app.store.turns(&session.parse().unwrap()).await.unwrap();
        if !turns.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(turns.len(), 1);
    assert_eq!(turns[0].finish_reason, FinishReason::Cancelled);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("steward_turn_interruptions_total{route=\"chat_stream\",reason=\"client_disconnected\"} 1"), "{metrics}");
    assert!(metrics.contains("steward_active_streams{route=\"chat_stream\"} 0"), "{metrics}");
}

#[tokio::test]
async fn a_client_that_hangs_up_before_the_first_token_is_noticed_at_once() {
    let model = crate::moderation::PrivateModelServer::start().await;
    let port = model.port;
    let app = spawn_app_with(Storage::Sqlite, |s| {
        s.slm.base_url = format!("http://127.0.0.1:{port}/v1");
        // Only the phrase lexicon: the long message reaches the model quickly.
        s.moderation.semantic = steward::config::SemanticSwitch::Off;
    })
    .await;
    let (_, key) = app.chat_key().await;
    // A long prompt: the model reads it for a while before its first token.
    let long = "The harbour was quiet and the boats rested by the old pier. ".repeat(24);
    let response = app.post("/v1/chat/stream", Some(&key), &json!({ "message": format!("{long}Summarise this."), "max_tokens": 64 })).await;
    let session = response.headers()["x-session-id"].to_str().unwrap().to_owned();

    drop(response);

    let hung_up = std::time::Instant::now();
    let mut turns = Vec::new();
    while turns.is_empty() {
        assert!(hung_up.elapsed() < std::time::Duration::from_secs(10), "the hang-up was never noticed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        turns = app.store.turns(&session.parse().unwrap()).await.unwrap();
    }
    assert_eq!((turns[0].finish_reason, turns[0].assistant_message.as_str()), (FinishReason::Cancelled, ""), "cancelled before any content reached the client");
    assert!(hung_up.elapsed() < std::time::Duration::from_secs(3), "noticed {:?} after the hang-up", hung_up.elapsed());
    // Steward closed its model request at once; llama.cpp notices a closed connection only when it
    // next writes, after reading the whole prompt.
    while model.busy().await {
        assert!(hung_up.elapsed() < std::time::Duration::from_secs(60), "the model server kept working after the client left");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    eprintln!("model slot free {:?} after the hang-up", hung_up.elapsed());
}

#[tokio::test]
async fn a_first_token_deadline_shorter_than_the_model_takes_fails_the_turn_and_frees_the_model() {
    let model = crate::moderation::PrivateModelServer::start().await;
    let port = model.port;
    let app = spawn_app_with(Storage::Sqlite, |s| {
        s.slm.base_url = format!("http://127.0.0.1:{port}/v1");
        s.slm.first_token_timeout = NonZeroDuration::from_millis(20);
    })
    .await;
    let (_, key) = app.chat_key().await;
    let long = "The harbour was quiet and the boats rested by the old pier. ".repeat(24);

    let sse = app.chat(&key, &json!({ "message": format!("{long}Summarise this."), "max_tokens": 32 })).await;

    assert_eq!(sse.names(), ["session", "error", "done"], "{:?}", sse.events);
    assert_eq!(sse.first("error")["code"], "model_timeout");
    assert_eq!(sse.first("done")["finish_reason"], "error");
    let session_id = sse.first("session")["session_id"].as_str().unwrap();
    let events = app.outbox("conversation.events").await;
    let failed = events.iter().find(|e| e["session_id"] == session_id && e["type"] == "turn.failed").expect("turn.failed recorded");
    assert_eq!(failed["data"]["code"], "model_timeout");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("steward_turn_interruptions_total{route=\"chat_stream\",reason=\"first_token_deadline\"} 1"), "{metrics}");
    let failed_at = std::time::Instant::now();
    while model.busy().await {
        assert!(failed_at.elapsed() < std::time::Duration::from_secs(10), "the model server kept working after the deadline");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_model_server_that_dies_mid_stream_fails_the_turn_cleanly_and_the_next_turn_works_once_it_is_back() {
    use futures_util::StreamExt;
    let mut model = crate::moderation::PrivateModelServer::start().await;
    let port = model.port;
    let app = spawn_app_with(Storage::Sqlite, |s| s.slm.base_url = format!("http://127.0.0.1:{port}/v1")).await;
    let (_, key) = app.chat_key().await;
    let response = app.post("/v1/chat/stream", Some(&key), &json!({ "message": "Write a very long story about the sea.", "max_tokens": 2000 })).await;
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("event: delta") {
        seen.push_str(&String::from_utf8_lossy(&body.next().await.unwrap().unwrap()));
    }

    model.crash().await;

    let rest = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(chunk) = body.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
    })
    .await;
    assert!(rest.is_ok(), "the stream hung after the model server died: {seen}");
    assert!(seen.contains("event: error\ndata: {\"code\":\"model_error\"") || seen.contains("event: error\ndata: {\"code\":\"model_unavailable\""), "{seen}");
    assert!(seen.trim_end().ends_with("\"finish_reason\":\"error\",\"usage\":null}"), "{seen}");
    let events = app.outbox("conversation.events").await;
    assert!(events.iter().any(|e| e["type"] == "turn.failed" && e["data"]["stage"] == "model"), "turn.failed recorded");

    let down = app.chat(&key, &json!({ "message": "Say hi.", "max_tokens": 2 })).await;
    assert_eq!(down.first("error")["code"], "model_unavailable");
    model.restart().await;
    let back = app.chat(&key, &json!({ "message": "Say hi.", "max_tokens": 8 })).await;
    // The model served the turn (a couple of tokens may be only whitespace, so no delta is required).
    let done = back.first("done");
    assert!(done["finish_reason"] == "length" || done["finish_reason"] == "stop", "{:?}", back.events);
    assert!(done["usage"]["completion_tokens"].as_u64() > Some(0), "{:?}", back.events);
    assert!(!back.names().contains(&"error"), "{:?}", back.events);
}

#[tokio::test]
async fn a_model_silent_past_the_idle_deadline_after_its_first_token_ends_the_turn_with_model_timeout() {
    // The local model takes milliseconds per token, so a 1 ms idle deadline always passes
    // between two of them; the first-token deadline stays at a minute.
    let app = spawn_app_with(Storage::Sqlite, |s| s.slm.idle_timeout = NonZeroDuration::from_millis(1)).await;
    let (_, key) = app.chat_key().await;
    let started = std::time::Instant::now();

    let sse = app.chat(&key, &json!({ "message": "Write a short poem about the sea.", "max_tokens": 48 })).await;

    assert_eq!(sse.first("error")["code"], "model_timeout", "{:?}", sse.events);
    assert_eq!(sse.first("done")["finish_reason"], "error");
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "the idle deadline ended the turn, not the first-token one");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("steward_turn_interruptions_total{route=\"chat_stream\",reason=\"idle_deadline\"} 1"), "{metrics}");
}
