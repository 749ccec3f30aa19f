//! Hostile bodies: text that multiplies when normalised, and JSON nested or
//! sized to exhaust a parser, on every route that reads a body.

use serde_json::json;
use steward::identity::Capability;

use crate::helpers::{assert_error, spawn_app, unique};

#[tokio::test]
async fn a_message_that_expands_past_its_bound_when_normalised_is_400_before_any_moderation() {
    let app = spawn_app().await;
    let (_, key) = app.chat_key().await;
    // 3,000 characters (9 KB), each U+FDFA, which NFKC turns into 18: 54,000 characters to moderate.
    let message = "\u{FDFA}".repeat(3000);

    let response = app.post("/v1/chat/stream", Some(&key), &json!({ "message": message, "max_tokens": 2 })).await;

    let body = assert_error(response, 400, "message_too_long").await;
    assert!(body["message"].as_str().unwrap().contains("normalised"), "{body}");
    let ordinary = app.chat(&key, &json!({ "message": "Straße, ﬁle and Ⅻ are fine.", "max_tokens": 2 })).await;
    assert_eq!(ordinary.names().last(), Some(&"done"));
}

#[tokio::test]
async fn deeply_nested_json_is_a_400_on_every_route_that_reads_json() {
    let app = spawn_app().await;
    let tenant = unique("tenant-");
    let key = app.key(&tenant, &[Capability::Chat, Capability::TrainingAdmin, Capability::PolicyAdmin]).await;
    // 20,000 levels in 40 KB: under the body limit, far past serde_json's recursion limit (128).
    let nested = format!("{{\"message\":{}1{}}}", "[".repeat(20_000), "]".repeat(20_000));
    for path in
        ["/v1/chat/stream", "/v1/chat/completions", "/v1/training/enable", "/v1/training/renew", "/v1/training/disable", "/v1/policy/constitution/dry-run"]
    {
        let response = app
            .http
            .post(format!("{}{path}", app.address))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(nested.clone())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        assert_eq!(status, 400, "{path}: {body}");
        // The OpenAI facade answers in OpenAI's error shape.
        let code = body["code"].as_str().or(body["error"]["code"].as_str()).unwrap_or_default();
        assert!(["malformed_json", "invalid_request"].contains(&code), "{path}: {body}");
    }
    assert_eq!(app.get_with("/v1/training/status", &key).await.status(), 200, "the service is unharmed");
}
