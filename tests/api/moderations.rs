//! `POST /v1/moderations`: OpenAI's moderation API, answered by Steward's
//! constitution, called with the official OpenAI Python SDK.

use serde_json::{json, Value};
use steward::identity::Capability;

use crate::helpers::{assert_error, spawn_app, unique};

#[tokio::test]
async fn the_official_openai_sdk_gets_stewards_verdict_from_the_moderation_endpoint_and_each_check_is_recorded() {
    let app = spawn_app().await;
    let tenant = unique("tenant-");
    let key = app.key(&tenant, &[Capability::Moderate]).await;
    let seen = crate::openai::with_openai_sdk("openai_moderation_check.py", &app, &key).await;

    let active = app.settings.policy.constitution.clone();
    let (constitution, _) = steward::policy::constitution::Constitution::read(&active).unwrap();
    assert_eq!(seen["constitution_hash"], constitution.hash().as_str(), "{seen}");
    assert_eq!(seen["model"], format!("steward:{}@{}", constitution.name, constitution.version));
    let (refused, allowed) = (&seen["results"][0], &seen["results"][1]);
    assert_eq!(
        (refused["flagged"].as_bool(), refused["violence"].as_bool(), refused["illicit_violent"].as_bool()),
        (Some(true), Some(true), Some(true)),
        "{seen}"
    );
    assert_eq!(refused["hate"], false);
    assert_eq!(refused["violence_score"], 1.0, "decided by the lexicon: {seen}");
    assert_eq!(refused["steward"]["verdict"], "refuse:S1");
    assert_eq!(refused["steward"]["categories"][0]["layer"], "lexicon");
    assert_eq!((allowed["flagged"].as_bool(), allowed["violence_score"].as_f64()), (Some(false), Some(0.0)), "{seen}");
    assert_eq!(allowed["steward"]["verdict"], "allow");
    assert_eq!(seen["one"], json!({ "flagged": false, "count": 1 }));

    // Each request is one moderation.checked event, in a chain of its own, without the text.
    let checks: Vec<Value> = app.outbox("conversation.events").await.into_iter().filter(|e| e["tenant"] == tenant.as_str()).collect();
    assert_eq!(checks.len(), 2, "{checks:?}");
    assert!(checks.iter().all(|e| e["type"] == "moderation.checked" && e["seq"] == 1));
    let first = &checks[0];
    assert_eq!(first["policy_verdict"], "refuse:S1");
    assert_eq!(
        first["data"],
        json!({ "inputs": 2, "flagged": 1, "input_chars": 63, "categories": [{ "code": "S1", "category": "violent_crimes" }], "content_included": false })
    );
    assert!(!first.to_string().contains("kill someone"), "the text is not in the record");
}

#[tokio::test]
async fn the_moderation_endpoint_needs_the_moderate_capability_and_a_text() {
    let app = spawn_app().await;
    let tenant = unique("tenant-");
    let chat = app.key(&tenant, &[Capability::Chat]).await;
    let moderate = app.key(&tenant, &[Capability::Moderate]).await;
    assert_error(app.post("/v1/moderations", Some(&chat), &json!({ "input": "hello" })).await, 403, "forbidden").await;
    assert_error(app.post("/v1/moderations", Some(&moderate), &json!({ "input": [] })).await, 400, "invalid_request").await;
    assert_error(app.post("/v1/moderations", Some(&moderate), &json!({ "input": "" })).await, 400, "empty_message").await;
    assert_error(app.post("/v1/moderations", Some(&moderate), &json!({ "input": 3 })).await, 400, "invalid_request").await;
    assert_error(app.post("/v1/moderations", None, &json!({ "input": "hello" })).await, 401, "unauthenticated").await;
}
