//! Floods of authenticated requests: every route is paced per key, and
//! refusals of the training routes do not flood the audit trail.

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
