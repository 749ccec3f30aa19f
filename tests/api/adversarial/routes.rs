//! Floods of authenticated requests: every route is paced per key, and
//! refusals of the training routes do not flood the audit trail.

use futures_util::StreamExt;
use serde_json::json;
use steward::identity::Capability;

use crate::helpers::{assert_error, spawn_app, spawn_app_with, unique, Storage};

#[tokio::test]
async fn a_key_flooding_the_training_routes_with_refused_requests_leaves_one_denied_record() {
    let app = spawn_app().await;
    let tenant = unique("tenant-");
    let chat = app.key(&tenant, &[Capability::Chat]).await;
    let body = json!({ "ttl_seconds": 60, "reason": "flood" });

    for _ in 0..50 {
        assert_error(app.post("/v1/training/enable", Some(&chat), &body).await, 403, "forbidden").await;
    }

    let denied: Vec<_> = app.outbox("training.audit").await.into_iter().filter(|r| r["tenant"] == tenant.as_str()).collect();
    assert_eq!(denied.len(), 1, "one record per key and minute: {denied:#?}");
    assert_eq!((denied[0]["type"].as_str(), denied[0]["folded"].as_u64()), (Some("training.denied"), Some(0)));
    assert!(crate::training::audit_validator().is_valid(&denied[0]), "{:#}", denied[0]);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    let counted = format!("training_mode_transitions_total{{tenant=\"{tenant}\",action=\"denied\"}} 50");
    assert!(metrics.contains(&counted), "every refusal is counted: {metrics}");
}

#[tokio::test]
async fn every_authenticated_route_is_paced_per_key() {
    let app = spawn_app_with(Storage::Sqlite, |s| {
        s.identity.requests_per_second_per_key = 1.0;
        s.identity.burst_per_key = 5;
    })
    .await;
    let tenant = unique("tenant-");
    let (flooder, neighbour) = (app.key(&tenant, &[Capability::Chat]).await, app.key(&tenant, &[Capability::Chat]).await);
    for _ in 0..5 {
        assert_eq!(app.get_with("/v1/policy/constitution", &flooder).await.status(), 200);
    }

    let refused = app.get_with("/v1/training/status", &flooder).await;

    assert!(refused.headers().contains_key("retry-after"));
    assert_error(refused, 429, "rate_limited").await;
    assert_eq!(app.get_with("/v1/training/status", &neighbour).await.status(), 200, "another key is paced apart");
}

#[tokio::test]
async fn a_tenant_opening_sessions_as_fast_as_it_can_gets_its_rate_and_every_other_opening_stores_nothing() {
    let app = spawn_app_with(Storage::Sqlite, |s| {
        s.limits.requests_per_second = 5.0;
        s.limits.burst = 10;
    })
    .await;
    let (tenant, key) = app.chat_key().await;
    let started = std::time::Instant::now();
    let openings = futures_util::stream::iter(0..300)
        .map(|_| async { app.post("/v1/chat/stream", Some(&key), &json!({ "message": "Hi", "max_tokens": 1 })).await })
        .buffer_unordered(32)
        .then(|response| async move {
            let status = response.status().as_u16();
            let _ = response.bytes().await;
            status
        })
        .collect::<Vec<u16>>()
        .await;
    let elapsed = started.elapsed();

    let admitted = openings.iter().filter(|s| **s == 200).count();
    assert_eq!(admitted + openings.iter().filter(|s| **s == 429).count(), 300, "each opening is served or refused 429");
    assert!(admitted as f64 <= 10.0 + 5.0 * elapsed.as_secs_f64() + 1.0, "{admitted} admitted in {elapsed:?}");
    let sessions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sessions WHERE tenant = $1").bind(&tenant).fetch_one(app.db.pool()).await.unwrap();
    assert_eq!(sessions as usize, admitted, "a refused opening stores nothing");
}
