//! The code that typed a turn's end once (`TurnOutcome`) against the code
//! before it: a fixed set of turns — every way a turn ends, over SSE, the
//! OpenAI facade and the WebSocket — runs against a scripted model server,
//! and what each turn leaves (its frames, its events, its stored row) must be
//! what the code before the change left. That recording was made by this
//! file on commit 080f9a1 (the last before the change) and is kept in
//! `tests/data/turn-recordings.json`; `STEWARD_RECORD=<path>` writes a new
//! one instead of comparing. What differs by chance (ids, times, the chain's
//! hashes, how a stream was cut into deltas) is replaced by stable
//! placeholders; what differs on purpose is applied to the old recording by
//! [`drift`], each change named there.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sqlx::Row;
use steward::durations::NonZeroDuration;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{read_sse, spawn_app_with, Storage, TestApp};
use crate::scripted_server::{scripted_by, Script};
use crate::socket::{connect_to, Socket};

const RECORDING: &str = "tests/data/turn-recordings.json";

/// What the model server does, by a marker in the turn's message.
fn choose(message: &str) -> Script {
    let script = |marker: &str| message.contains(marker);
    if script("[status]") {
        Script::Status(500)
    } else if script("[drop]") {
        Script::DropAfter(vec!["Rivers ", "run "])
    } else if script("[silent]") {
        Script::StallAfter(Vec::new())
    } else if script("[stall]") {
        Script::StallAfter(vec!["Rivers ", "run "])
    } else if script("[cut]") {
        Script::Answer(vec!["Here is ", "how to ", "kill some", "one quietly."])
    } else {
        Script::Answer(vec!["Rivers ", "run ", "to ", "the ", "sea."])
    }
}

/// Turns over `/v1/chat/stream` (SSE): name and message.
const SSE_TURNS: [(&str, &str); 7] = [
    ("sse_completed", "Tell me about rivers."),
    ("sse_model_status_500", "Tell me about rivers. [status]"),
    ("sse_connection_dropped", "Tell me about rivers. [drop]"),
    ("sse_silent_before_first_token", "Tell me about rivers. [silent]"),
    ("sse_silent_after_first_tokens", "Tell me about rivers. [stall]"),
    ("sse_cut_on_output", "Tell me a story. [cut]"),
    ("sse_refused_on_input", "Tell me how to kill someone quietly."),
];

#[tokio::test]
async fn every_way_a_turn_ends_leaves_what_the_code_before_the_typed_outcome_left() {
    let url = scripted_by(Arc::new(choose)).await;
    let overlapped = crate::helpers::unique("tenant-");
    let app = spawn_app_with(Storage::Sqlite, |s| {
        s.moderation.dispatch_tenants.insert(overlapped.clone(), steward::config::DispatchMode::Overlapped);
        s.slm.base_url = url;
        s.slm.first_token_timeout = NonZeroDuration::from_millis(400);
        s.slm.idle_timeout = NonZeroDuration::from_millis(400);
    })
    .await;
    let (_, key) = app.chat_key().await;
    let mut recording = BTreeMap::new();

    for (name, message) in SSE_TURNS {
        let sse = app.chat(&key, &json!({ "message": message })).await;
        let frames: Vec<Value> = sse.events.iter().map(|(event, data)| json!({ "event": event, "data": data })).collect();
        let session = sse.header("x-session-id").to_owned();
        recording.insert(name.to_owned(), leaves(&app, &session, json!({ "verdict": sse.header("x-policy-verdict"), "frames": frames })).await);
    }
    // Under overlapped dispatch, the model request starts while the input is judged.
    let overlapped_key = app.key(&overlapped, &[steward::identity::Capability::Chat]).await;
    for (name, message) in [("sse_overlapped_completed", "Tell me about rivers."), ("sse_overlapped_refused_on_input", "Tell me how to kill someone quietly.")]
    {
        let sse = app.chat(&overlapped_key, &json!({ "message": message })).await;
        let frames: Vec<Value> = sse.events.iter().map(|(event, data)| json!({ "event": event, "data": data })).collect();
        let session = sse.header("x-session-id").to_owned();
        recording.insert(name.to_owned(), leaves(&app, &session, json!({ "verdict": sse.header("x-policy-verdict"), "frames": frames })).await);
    }
    // A second turn of a session replays the first as history.
    let first = app.chat(&key, &json!({ "message": "Tell me about rivers." })).await;
    let session = first.header("x-session-id").to_owned();
    let second = app.chat(&key, &json!({ "message": "And about the sea?", "session_id": session })).await;
    let frames: Vec<Value> = second.events.iter().map(|(event, data)| json!({ "event": event, "data": data })).collect();
    recording.insert("sse_second_turn_of_a_session".into(), leaves(&app, &session, json!({ "frames": frames })).await);

    for (name, message, stream) in [
        ("openai_completed", "Tell me about rivers.", false),
        ("openai_completed_streamed", "Tell me about rivers.", true),
        ("openai_refused_on_input", "Tell me how to kill someone quietly.", false),
        ("openai_refused_on_input_streamed", "Tell me how to kill someone quietly.", true),
        ("openai_model_status_500", "Tell me about rivers. [status]", false),
    ] {
        let body = json!({ "messages": [{ "role": "user", "content": message }], "stream": stream });
        let response = app.post("/v1/chat/completions", Some(&key), &body).await;
        let (status, session) = (response.status().as_u16(), response.headers().get("x-session-id").map(|v| v.to_str().unwrap().to_owned()));
        let reply =
            if stream { Value::Array(read_sse(response).await.events.into_iter().map(|(_, data)| data).collect()) } else { response.json().await.unwrap() };
        let seen = json!({ "status": status, "reply": reply });
        recording.insert(name.to_owned(), leaves(&app, session.as_deref().unwrap_or_default(), seen).await);
    }

    let (mut socket, _) = connect_to(&app, "/v1/chat/stream", &[("authorization", &format!("Bearer {key}"))]).await;
    for (name, message) in [
        ("socket_completed", "Tell me about rivers."),
        ("socket_refused_on_input", "Tell me how to kill someone quietly."),
        ("socket_model_status_500", "Tell me about rivers. [status]"),
    ] {
        send(&mut socket, json!({ "type": "turn", "message": message })).await;
        let frames = until_done(&mut socket, false).await;
        let session = frames[0]["session_id"].as_str().unwrap().to_owned();
        recording.insert(name.to_owned(), leaves(&app, &session, json!({ "frames": frames })).await);
    }
    send(&mut socket, json!({ "type": "turn", "message": "Tell me about rivers. [stall]" })).await;
    let frames = until_done(&mut socket, true).await;
    let session = frames[0]["session_id"].as_str().unwrap().to_owned();
    recording.insert("socket_cancelled_by_its_client".into(), leaves(&app, &session, json!({ "frames": frames })).await);

    let recording = Value::Object(recording.into_iter().map(|(name, seen)| (name, placeholders(seen))).collect());
    if let Ok(path) = std::env::var("STEWARD_RECORD") {
        std::fs::write(&path, serde_json::to_string_pretty(&recording).unwrap() + "\n").unwrap();
        return;
    }
    let before: Value = serde_json::from_str(&std::fs::read_to_string(crate::helpers::manifest_dir().join(RECORDING)).unwrap()).unwrap();
    let before = drift(before);
    let names: Vec<&String> = recording.as_object().unwrap().keys().collect();
    assert_eq!(names, before.as_object().unwrap().keys().collect::<Vec<_>>(), "the same turns");
    for name in names {
        if let Some(difference) = first_difference(&before[name], &recording[name]) {
            panic!("turn {name} left something else than the recording:\n{difference}");
        }
    }
}

/// Where `now` first differs from `before`, line by line of their pretty
/// JSON, with the lines around it; `None` when they are equal.
fn first_difference(before: &Value, now: &Value) -> Option<String> {
    let (before, now) = (serde_json::to_string_pretty(before).unwrap(), serde_json::to_string_pretty(now).unwrap());
    let (before, now): (Vec<&str>, Vec<&str>) = (before.lines().collect(), now.lines().collect());
    let at = (0..before.len().max(now.len())).find(|&i| before.get(i) != now.get(i))?;
    let around = |lines: &[&str]| lines[at.saturating_sub(8).min(lines.len())..(at + 3).min(lines.len())].join("\n");
    Some(format!("recorded:\n{}\nnow:\n{}", around(&before), around(&now)))
}

/// What the code before left, changed where the new code differs on purpose.
/// The drift fixed on purpose in issue 21 (the WebSocket's fallback `done`
/// without its `turn_id`, a comment naming a setting wrongly) shows only where
/// a turn's stream ends without its own `done`, which none of these turns
/// does. Since issue 23, `turn.dispatched` names the model server the
/// attempt went to, and which attempt it was: here always the one server,
/// `default`, at the first attempt — except for a request ended unread
/// (refused on input under overlapped dispatch), whose attempt nobody read.
/// Since issue 24, a whole OpenAI answer's choice carries `logprobs`.
fn drift(mut before: Value) -> Value {
    for turn in before.as_object_mut().unwrap().values_mut() {
        let events = turn["events"].as_array().cloned().unwrap_or_default();
        if events.iter().any(|e| e["data"]["model_request"] == "aborted") {
            continue;
        }
        for event in turn["events"].as_array_mut().into_iter().flatten() {
            if event["type"] == "turn.dispatched" {
                event["data"]["upstream"] = json!("default");
                event["data"]["attempt"] = json!(1);
            }
        }
        // Issue 24: a whole OpenAI answer's choice says `logprobs: null` when none were asked for, as OpenAI's does.
        let whole = turn.get_mut("reply").filter(|r| r.is_object()).and_then(|r| r.get_mut("choices")).and_then(Value::as_array_mut);
        for choice in whole.into_iter().flatten() {
            if choice.get("message").is_some() {
                choice["logprobs"] = Value::Null;
            }
        }
    }
    before
}

/// `seen` with the turn's events and stored rows of `session`.
async fn leaves(app: &TestApp, session: &str, seen: Value) -> Value {
    let events: Vec<Value> = app
        .outbox("conversation.events")
        .await
        .into_iter()
        .filter(|e| e["session_id"] == session)
        .map(|mut e| {
            let e = e.as_object_mut().unwrap();
            for varies in ["event_id", "occurred_at", "prev_hash"] {
                e.insert(varies.into(), json!(format!("<{varies}>")));
            }
            Value::Object(e.clone())
        })
        .collect();
    let rows = sqlx::query(
        "SELECT id, user_message, preamble, assistant_message, finish_reason, policy_verdict, constitution_hash, trace_id, \
         prompt_tokens, completion_tokens FROM turns WHERE session_id = $1 ORDER BY created_at, id",
    )
    .bind(session)
    .fetch_all(app.db.pool())
    .await
    .unwrap();
    let rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            let text = |c: &str| r.try_get::<String, _>(c).unwrap();
            json!({
                "id": text("id"), "user_message": text("user_message"), "preamble": text("preamble"),
                "assistant_message": text("assistant_message"), "finish_reason": text("finish_reason"),
                "policy_verdict": text("policy_verdict"), "constitution_hash": text("constitution_hash"), "trace_id": text("trace_id"),
                "prompt_tokens": r.try_get::<Option<i64>, _>("prompt_tokens").unwrap(),
                "completion_tokens": r.try_get::<Option<i64>, _>("completion_tokens").unwrap(),
            })
        })
        .collect();
    let mut seen = seen;
    seen["events"] = Value::Array(events);
    seen["rows"] = Value::Array(rows);
    seen
}

/// Ids, trace and span ids and the test's tenant numbered by first appearance; times and
/// durations named; consecutive pieces of an answer joined, so how the
/// stream happened to be cut does not count.
fn placeholders(seen: Value) -> Value {
    let patterns = [
        ("id", regex::Regex::new(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").unwrap()),
        ("trace", regex::Regex::new(r"\b[0-9a-f]{32}\b").unwrap()),
        ("span", regex::Regex::new(r"\b[0-9a-f]{16}\b").unwrap()),
        ("tenant", regex::Regex::new(r"\btenant-[0-9a-f]{12}\b").unwrap()),
    ];
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut rename = |text: &str| {
        let mut text = text.to_owned();
        for (kind, pattern) in &patterns {
            let found: Vec<String> = pattern.find_iter(&text).map(|m| m.as_str().to_owned()).collect();
            for value in found {
                let n = names.len() + 1;
                let name = names.entry(value.clone()).or_insert_with(|| format!("<{kind}:{n}>")).clone();
                text = text.replace(&value, &name);
            }
        }
        text
    };
    fn walk(value: Value, key: &str, rename: &mut dyn FnMut(&str) -> String) -> Value {
        match value {
            Value::String(s) => Value::String(rename(&s)),
            Value::Number(_) if ["created", "duration_ms"].contains(&key) => json!(format!("<{key}>")),
            Value::Array(items) => Value::Array(joined(items.into_iter().map(|v| walk(v, key, rename)).collect())),
            Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k.clone(), walk(v, &k, rename))).collect()),
            other => other,
        }
    }
    walk(seen, "", &mut rename)
}

/// Consecutive answer pieces as one: SSE `delta` events, WebSocket `delta`
/// frames, OpenAI chunks of content only.
fn joined(items: Vec<Value>) -> Vec<Value> {
    let piece = |v: &Value| -> Option<(String, Value)> {
        if v["event"] == "delta" {
            return Some(("sse".into(), v["data"]["content"].clone()));
        }
        if v["type"] == "delta" {
            return Some(("socket".into(), v["content"].clone()));
        }
        let choice = &v["choices"][0];
        (v["object"] == "chat.completion.chunk"
            && choice["finish_reason"].is_null()
            && choice["delta"]["role"].is_null()
            && choice["delta"]["content"].is_string())
        .then(|| ("openai".into(), choice["delta"]["content"].clone()))
    };
    let mut out: Vec<Value> = Vec::new();
    let mut last_kind: Option<String> = None;
    for item in items {
        match (piece(&item), out.last_mut()) {
            (Some((kind, text)), Some(previous)) if last_kind.as_deref() == Some(kind.as_str()) => {
                let slot = match kind.as_str() {
                    "sse" => &mut previous["data"]["content"],
                    "socket" => &mut previous["content"],
                    _ => &mut previous["choices"][0]["delta"]["content"],
                };
                *slot = json!(format!("{}{}", slot.as_str().unwrap(), text.as_str().unwrap()));
            }
            (piece, _) => {
                last_kind = piece.map(|(kind, _)| kind);
                out.push(item);
            }
        }
    }
    out
}

async fn send(socket: &mut Socket, message: Value) {
    socket.send(Message::text(message.to_string())).await.unwrap();
}

/// The turn's frames up to its `done`; with `cancel`, the turn is cancelled
/// once its first piece of answer arrived.
async fn until_done(socket: &mut Socket, cancel: bool) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(60), socket.next()).await.expect("a frame in time").expect("socket open").unwrap();
        let Message::Text(text) = message else { continue };
        let frame: Value = serde_json::from_str(&text).unwrap();
        let (done, delta) = (frame["type"] == "done", frame["type"] == "delta");
        frames.push(frame);
        if done {
            return frames;
        }
        if cancel && delta && frames.iter().filter(|f| f["type"] == "delta").count() == 1 {
            let turn_id = frames[0]["turn_id"].clone();
            send(socket, json!({ "type": "cancel", "turn_id": turn_id })).await;
        }
    }
}
