//! Every way a turn can end, made to happen on purpose: a real HTTP server
//! (raw HTTP/1.1 over a socket, chunked like a model server's stream) answers
//! Steward's model requests from a script, so the mid-stream error, the stall
//! before or after the first token and the dropped connection come when the
//! test says, and the real client in Steward meets them as it would in
//! production. The end-to-end tests with the real model server stay.

use std::time::Duration;

use serde_json::{json, Value};
use steward::durations::NonZeroDuration;
use steward::orchestrator::FinishReason;

use crate::helpers::{spawn_app_with, Storage, TestApp};
use crate::scripted_server::{scripted, Script};

/// An app whose model server follows `script`, with short model deadlines.
async fn app_scripted(script: Script) -> TestApp {
    let url = scripted(script).await;
    spawn_app_with(Storage::Sqlite, |s| {
        s.slm.base_url = url;
        s.slm.first_token_timeout = NonZeroDuration::from_millis(400);
        s.slm.idle_timeout = NonZeroDuration::from_millis(400);
    })
    .await
}

/// The turn's events' types and the data of its last one.
async fn trail(app: &TestApp, session_id: &str) -> (Vec<String>, Value) {
    let events = app.outbox("conversation.events").await;
    let mine: Vec<&Value> = events.iter().filter(|e| e["session_id"] == session_id).collect();
    let types = mine.iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect();
    (types, mine.last().map(|e| e["data"].clone()).unwrap_or_default())
}

#[tokio::test]
async fn a_whole_answer_reaches_the_client_and_the_store_as_the_model_sent_it() {
    let app = app_scripted(Script::Answer(vec!["Rivers ", "run ", "to ", "the ", "sea."])).await;
    let (_, key) = app.chat_key().await;

    let sse = app.chat(&key, &json!({ "message": "Tell me about rivers." })).await;

    assert_eq!(sse.text(), "Rivers run to the sea.");
    assert_eq!(sse.first("done")["finish_reason"], "stop");
    let session_id = sse.header("x-session-id").to_owned();
    let turns = app.store.turns(&session_id.parse().unwrap()).await.unwrap();
    assert_eq!((turns[0].finish_reason, turns[0].assistant_message.as_str()), (FinishReason::Stop, "Rivers run to the sea."));
    let (types, last) = trail(&app, &session_id).await;
    assert_eq!(types, ["turn.received", "turn.dispatched", "turn.completed"]);
    assert_eq!(last["finish_reason"], "stop");
}

#[tokio::test]
async fn a_model_server_that_fails_ends_the_turn_as_failed_at_the_model_stage() {
    let app = app_scripted(Script::Status(500)).await;
    let (_, key) = app.chat_key().await;

    let sse = app.chat(&key, &json!({ "message": "Tell me about rivers." })).await;

    assert_eq!(sse.names(), ["session", "error", "done"]);
    assert_eq!(sse.first("error")["code"], "model_error");
    assert_eq!(sse.first("done")["finish_reason"], "error");
    let session_id = sse.header("x-session-id").to_owned();
    let (types, last) = trail(&app, &session_id).await;
    assert_eq!(types, ["turn.received", "turn.dispatched", "turn.failed"]);
    assert_eq!((last["code"].as_str(), last["stage"].as_str()), (Some("model_error"), Some("model")));
    assert_eq!(app.store.turns(&session_id.parse().unwrap()).await.unwrap()[0].finish_reason, FinishReason::Error);
}

#[tokio::test]
async fn a_connection_dropped_mid_answer_is_a_failure_not_a_finished_answer() {
    let app = app_scripted(Script::DropAfter(vec!["Rivers ", "run "])).await;
    let (_, key) = app.chat_key().await;

    let sse = app.chat(&key, &json!({ "message": "Tell me about rivers." })).await;

    assert_eq!(sse.first("done")["finish_reason"], "error", "{:?}", sse.events);
    assert_eq!(sse.first("error")["code"], "model_error");
    let session_id = sse.header("x-session-id").to_owned();
    let turns = app.store.turns(&session_id.parse().unwrap()).await.unwrap();
    assert_eq!(turns[0].finish_reason, FinishReason::Error);
    assert_eq!(turns[0].assistant_message, sse.text(), "the stored answer is what the client received");
    assert_eq!(trail(&app, &session_id).await.0.last().map(String::as_str), Some("turn.failed"));
}

#[tokio::test]
async fn a_model_server_silent_before_its_first_token_ends_the_turn_at_the_first_token_deadline() {
    let app = app_scripted(Script::StallAfter(Vec::new())).await;
    let (_, key) = app.chat_key().await;

    let started = std::time::Instant::now();
    let sse = app.chat(&key, &json!({ "message": "Tell me about rivers." })).await;

    assert_eq!(sse.names(), ["session", "error", "done"]);
    assert_eq!(sse.first("error")["code"], "model_timeout");
    assert!(started.elapsed() < Duration::from_secs(10), "the 400 ms deadline held the turn {:?}", started.elapsed());
    let (types, last) = trail(&app, sse.header("x-session-id")).await;
    assert_eq!(types.last().map(String::as_str), Some("turn.failed"));
    assert_eq!(last["code"], "model_timeout");
}

#[tokio::test]
async fn a_model_server_silent_after_its_first_tokens_ends_the_turn_at_the_idle_deadline_keeping_what_was_sent() {
    let app = app_scripted(Script::StallAfter(vec!["Rivers ", "run "])).await;
    let (_, key) = app.chat_key().await;

    let sse = app.chat(&key, &json!({ "message": "Tell me about rivers." })).await;

    // The output guard holds the last word back until the next one starts it: "Rivers " reached the client.
    let received = sse.text();
    assert!(!received.is_empty() && "Rivers run ".starts_with(&received), "{received:?}");
    assert_eq!(sse.first("error")["code"], "model_timeout");
    assert_eq!(sse.first("done")["finish_reason"], "error");
    let session_id = sse.header("x-session-id").to_owned();
    assert_eq!(app.store.turns(&session_id.parse().unwrap()).await.unwrap()[0].assistant_message, received, "the stored answer is what the client received");
}

#[tokio::test]
async fn an_answer_that_reaches_a_listed_phrase_is_cut_before_any_of_it_and_recorded_as_refused_by_the_lexicon() {
    let app = app_scripted(Script::Answer(vec!["Here is ", "how to ", "kill some", "one quietly."])).await;
    let (_, key) = app.chat_key().await;

    let sse = app.chat(&key, &json!({ "message": "Tell me a story." })).await;

    let names = sse.names();
    assert_eq!(&names[names.len() - 2..], ["refusal", "done"], "{names:?}");
    assert_eq!(sse.first("refusal")["category"], "violent_crimes");
    assert_eq!(sse.first("done")["finish_reason"], "refused");
    let received = sse.text();
    assert!(!received.contains("kill") && "Here is how to ".starts_with(&received), "{received:?}");
    let session_id = sse.header("x-session-id").to_owned();
    let turns = app.store.turns(&session_id.parse().unwrap()).await.unwrap();
    assert_eq!((turns[0].finish_reason, turns[0].assistant_message.as_str()), (FinishReason::Refused, received.as_str()));
    let stored = app.store.turn(&turns[0].id).await.unwrap().unwrap();
    assert_eq!(stored.output_code.as_deref(), sse.first("refusal")["code"].as_str(), "the code it was cut on is stored with the turn");
    let (types, last) = trail(&app, &session_id).await;
    assert_eq!(types, ["turn.received", "turn.dispatched", "turn.refused"]);
    assert_eq!((last["stage"].as_str(), last["layer"].as_str()), (Some("output"), Some("lexicon")));
    assert!(last.get("score").is_none(), "the lexicon has no score: {last}");
}
