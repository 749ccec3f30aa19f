//! Identity: keys, capabilities and tenant isolation.

use serde_json::json;
use steward::identity::Capability;

use std::time::{Duration, Instant};

use crate::helpers::{assert_error, spawn_app, spawn_app_with, unique, Storage};

fn turn() -> serde_json::Value {
    json!({ "message": "Hello", "max_tokens": 4 })
}

#[tokio::test]
async fn a_request_without_a_key_is_401() {
    let app = spawn_app().await;
    assert_error(app.post("/v1/chat/stream", None, &turn()).await, 401, "unauthenticated").await;
}

#[tokio::test]
async fn an_unknown_key_is_401() {
    let app = spawn_app().await;
    assert_error(app.post("/v1/chat/stream", Some("stw_not_a_real_key"), &turn()).await, 401, "unauthenticated").await;
}

#[tokio::test]
async fn a_revoked_key_is_401() {
    let app = spawn_app().await;
    let tenant = unique("tenant-");
    let key = app.key(&tenant, &[Capability::Chat]).await;
    let id = app.keys.list().await.unwrap().into_iter().find(|k| k.tenant == tenant).unwrap().id;

    app.keys.revoke(&id).await.unwrap();

    assert_error(app.post("/v1/chat/stream", Some(&key), &turn()).await, 401, "unauthenticated").await;
}

#[tokio::test]
async fn a_revoked_key_that_was_in_use_stops_working_within_the_key_cache_bound() {
    let app = spawn_app_with(Storage::Sqlite, |s| s.identity.key_cache = Duration::from_millis(300)).await;
    let tenant = unique("tenant-");
    // A chat key may read its tenant's training status: an authenticated request without a model call.
    let key = app.key(&tenant, &[Capability::Chat]).await;
    assert_eq!(app.get_with("/v1/training/status", &key).await.status(), 200, "the key is in use (and now remembered)");
    let id = app.keys.list().await.unwrap().into_iter().find(|k| k.tenant == tenant).unwrap().id;

    app.keys.revoke(&id).await.unwrap();
    let revoked = Instant::now();

    loop {
        let status = app.get_with("/v1/training/status", &key).await.status();
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(revoked.elapsed() < Duration::from_millis(300 + 700), "still accepted {:?} after revocation", revoked.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_error(app.get_with("/v1/training/status", &key).await, 401, "unauthenticated").await;
}

#[tokio::test]
async fn a_wrong_key_sent_again_is_refused_from_memory_without_reading_the_database() {
    let app = spawn_app_with(Storage::Postgres, |s| s.identity.key_cache = Duration::from_millis(60_000)).await;
    let wrong = format!("stw_{}", unique("wrong"));
    assert_error(app.get_with("/v1/training/status", &wrong).await, 401, "unauthenticated").await;

    // Nothing can read the key table now: a lookup waits for this lock.
    let mut blocker = app.db.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE").execute(&mut *blocker).await.unwrap();

    let again = tokio::time::timeout(Duration::from_secs(2), app.get_with("/v1/training/status", &wrong)).await;
    let other = tokio::time::timeout(Duration::from_millis(500), app.get_with("/v1/training/status", "stw_never_seen_before")).await;
    blocker.rollback().await.unwrap();

    assert_error(again.expect("the same wrong key is answered from memory"), 401, "unauthenticated").await;
    assert!(other.is_err(), "a key never seen is looked up (and waits for the lock): the memory is what answered");
}

#[tokio::test]
async fn a_key_without_the_chat_capability_is_403() {
    let app = spawn_app().await;
    let key = app.key(&unique("tenant-"), &[Capability::TrainingAdmin]).await;
    assert_error(app.post("/v1/chat/stream", Some(&key), &turn()).await, 403, "forbidden").await;
}

#[tokio::test]
async fn tenant_b_cannot_continue_tenant_a_session() {
    let app = spawn_app().await;
    let (_, key_a) = app.chat_key().await;
    let (_, key_b) = app.chat_key().await;
    let first = app.chat(&key_a, &turn()).await;
    let session_id = first.first("session")["session_id"].as_str().unwrap().to_owned();

    let response = app.post("/v1/chat/stream", Some(&key_b), &json!({ "message": "Hi", "session_id": session_id })).await;

    assert_error(response, 404, "session_not_found").await;
    assert_eq!(app.store.turns(&session_id.parse().unwrap()).await.unwrap().len(), 1, "tenant B added nothing to A's session");
}

#[tokio::test]
async fn an_unknown_session_id_is_404() {
    let app = spawn_app().await;
    let (_, key) = app.chat_key().await;
    let response = app.post("/v1/chat/stream", Some(&key), &json!({ "message": "Hi", "session_id": uuid::Uuid::now_v7() })).await;
    assert_error(response, 404, "session_not_found").await;
}

#[tokio::test]
async fn an_address_that_sends_too_many_unknown_keys_is_refused_before_any_lookup() {
    let app = spawn_app_with(Storage::Sqlite, |s| s.identity.max_failed_auth_per_minute = 3).await;
    let (_, key) = app.chat_key().await;
    let body = json!({ "message": "Say hi.", "max_tokens": 2 });
    for guess in ["stw_guess1", "stw_guess2", "stw_guess3"] {
        assert_error(app.post("/v1/chat/stream", Some(guess), &body).await, 401, "unauthenticated").await;
    }

    let refused = app.post("/v1/chat/stream", Some("stw_guess4"), &body).await;

    assert_eq!(refused.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap(), 60);
    assert_error(refused, 429, "rate_limited").await;
    // For the rest of its minute the address is refused whatever key it sends.
    assert_error(app.post("/v1/chat/stream", Some(&key), &body).await, 429, "rate_limited").await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("rate_limited_total{limit=\"failed_auth\"} 2"), "{metrics}");
}
