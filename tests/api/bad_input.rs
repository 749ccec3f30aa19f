//! Malformed, oversized and empty requests get 4xx with a stable code.

use serde_json::json;

use crate::helpers::{assert_error, spawn_app, TestApp};

async fn raw(app: &TestApp, key: &str, content_type: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
    app.http.post(format!("{}/v1/chat/stream", app.address)).bearer_auth(key).header("content-type", content_type).body(body).send().await.unwrap()
}

#[tokio::test]
async fn malformed_json_is_400_malformed_json() {
    let app = spawn_app().await;
    let (_, key) = app.chat_key().await;
    assert_error(raw(&app, &key, "application/json", "{\"message\": ").await, 400, "malformed_json").await;
}

#[tokio::test]
async fn a_wrong_content_type_is_415() {
    let app = spawn_app().await;
    let (_, key) = app.chat_key().await;
    assert_error(raw(&app, &key, "text/plain", "{\"message\": \"hi\"}").await, 415, "unsupported_media_type").await;
}

#[tokio::test]
async fn an_oversized_body_is_413() {
    let app = spawn_app().await;
    let (_, key) = app.chat_key().await;
    let body = json!({ "message": "a".repeat(app.settings.server.body_limit_bytes + 1) }).to_string();
    assert_error(raw(&app, &key, "application/json", body).await, 413, "payload_too_large").await;
}

#[tokio::test]
async fn an_empty_message_is_400_empty_message() {
    let app = spawn_app().await;
    let (_, key) = app.chat_key().await;
    assert_error(app.post("/v1/chat/stream", Some(&key), &json!({ "message": "  \n " })).await, 400, "empty_message").await;
}

#[tokio::test]
async fn a_message_over_the_character_limit_is_400_message_too_long() {
    let app = spawn_app().await;
    let (_, key) = app.chat_key().await;
    let message = "é".repeat(app.settings.chat.max_message_chars + 1);
    assert_error(app.post("/v1/chat/stream", Some(&key), &json!({ "message": message })).await, 400, "message_too_long").await;
}

#[tokio::test]
async fn unknown_fields_and_wrong_types_are_400_invalid_request() {
    let app = spawn_app().await;
    let (_, key) = app.chat_key().await;
    assert_error(app.post("/v1/chat/stream", Some(&key), &json!({ "message": "hi", "bogus": 1 })).await, 400, "invalid_request").await;
    assert_error(app.post("/v1/chat/stream", Some(&key), &json!({ "message": 42 })).await, 400, "invalid_request").await;
    assert_error(app.post("/v1/chat/stream", Some(&key), &json!({ "message": "hi", "max_tokens": 0 })).await, 400, "invalid_request").await;
    assert_error(app.post("/v1/chat/stream", Some(&key), &json!({ "message": "hi", "session_id": "nope" })).await, 400, "invalid_request").await;
}

#[tokio::test]
async fn an_unknown_path_is_a_json_404() {
    let app = spawn_app().await;
    assert_error(app.get("/v1/nowhere").await, 404, "not_found").await;
}

#[tokio::test]
async fn a_message_with_a_nul_character_is_400_invalid_request() {
    let app = spawn_app().await;
    let (_, key) = app.chat_key().await;
    assert_error(app.post("/v1/chat/stream", Some(&key), &json!({ "message": "hi\u{0}there" })).await, 400, "invalid_request").await;
}
