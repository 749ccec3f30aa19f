//! Every way a turn can end, made to happen on purpose: a real HTTP server
//! (raw HTTP/1.1 over a socket, chunked like a model server's stream) answers
//! Steward's model requests from a script, so the mid-stream error, the stall
//! before or after the first token and the dropped connection come when the
//! test says, and the real client in Steward meets them as it would in
//! production. The end-to-end tests with the real model server stay.

use std::time::Duration;

use serde_json::{json, Value};
use steward::orchestrator::FinishReason;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::{spawn_app_with, Storage, TestApp};

/// What the scripted server does with each model request.
#[derive(Debug, Clone)]
enum Script {
    /// Streams these pieces, then `finish_reason` and `[DONE]`.
    Answer(Vec<&'static str>),
    /// Streams these pieces, then closes the connection mid-body.
    DropAfter(Vec<&'static str>),
    /// Streams these pieces, then says nothing more.
    StallAfter(Vec<&'static str>),
    /// Answers with this HTTP status.
    Status(u16),
}

/// A model server that follows `script` for every request, on a free port.
async fn scripted(script: Script) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else { return };
            tokio::spawn(serve(socket, script.clone()));
        }
    });
    format!("http://{address}/v1")
}

async fn serve(mut socket: TcpStream, script: Script) {
    // The request: headers, then a body of content-length bytes.
    let mut request = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        let Ok(n) = socket.read(&mut buffer).await else { return };
        if n == 0 {
            return;
        }
        request.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&request);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
                .unwrap_or(0);
            if request.len() >= end + 4 + length {
                break;
            }
        }
    }
    let pieces = match &script {
        Script::Status(status) => {
            let body = "{\"error\":{\"message\":\"scripted failure\"}}";
            let head = format!("HTTP/1.1 {status} Scripted\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
            let _ = socket.write_all(format!("{head}{body}").as_bytes()).await;
            return;
        }
        Script::Answer(pieces) | Script::DropAfter(pieces) | Script::StallAfter(pieces) => pieces.clone(),
    };
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    if socket.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    for piece in pieces {
        if send(&mut socket, &chunk(json!({ "content": piece }), Value::Null)).await.is_err() {
            return;
        }
    }
    match script {
        Script::Answer(_) => {
            let _ = send(&mut socket, &chunk(json!({}), json!("stop"))).await;
            let _ = send(&mut socket, "data: [DONE]\n\n").await;
            let _ = socket.write_all(b"0\r\n\r\n").await;
        }
        // Gone mid-body: no last chunk.
        Script::DropAfter(_) => drop(socket),
        Script::StallAfter(_) => {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        Script::Status(_) => {}
    }
}

fn chunk(delta: Value, finish: Value) -> String {
    let body = json!({ "id": "scripted", "object": "chat.completion.chunk", "created": 0, "model": "scripted",
        "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }] });
    format!("data: {body}\n\n")
}

/// One HTTP chunk holding `data`.
async fn send(socket: &mut TcpStream, data: &str) -> std::io::Result<()> {
    socket.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes()).await?;
    socket.flush().await
}

/// An app whose model server follows `script`, with short model deadlines.
async fn app_scripted(script: Script) -> TestApp {
    let url = scripted(script).await;
    spawn_app_with(Storage::Sqlite, |s| {
        s.slm.base_url = url;
        s.slm.first_token_timeout_ms = 400;
        s.slm.idle_timeout_ms = 400;
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
    let turns = app.store.turns(&session_id).await.unwrap();
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
    assert_eq!(app.store.turns(&session_id).await.unwrap()[0].finish_reason, FinishReason::Error);
}

#[tokio::test]
async fn a_connection_dropped_mid_answer_is_a_failure_not_a_finished_answer() {
    let app = app_scripted(Script::DropAfter(vec!["Rivers ", "run "])).await;
    let (_, key) = app.chat_key().await;

    let sse = app.chat(&key, &json!({ "message": "Tell me about rivers." })).await;

    assert_eq!(sse.first("done")["finish_reason"], "error", "{:?}", sse.events);
    assert_eq!(sse.first("error")["code"], "model_error");
    let session_id = sse.header("x-session-id").to_owned();
    let turns = app.store.turns(&session_id).await.unwrap();
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
    assert_eq!(app.store.turns(&session_id).await.unwrap()[0].assistant_message, received, "the stored answer is what the client received");
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
    let turns = app.store.turns(&session_id).await.unwrap();
    assert_eq!((turns[0].finish_reason, turns[0].assistant_message.as_str()), (FinishReason::Refused, received.as_str()));
    let (types, last) = trail(&app, &session_id).await;
    assert_eq!(types, ["turn.received", "turn.dispatched", "turn.refused"]);
    assert_eq!((last["stage"].as_str(), last["layer"].as_str()), (Some("output"), Some("lexicon")));
    assert!(last.get("score").is_none(), "the lexicon has no score: {last}");
}
