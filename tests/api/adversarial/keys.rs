//! Attacks on key authentication: lookups abandoned by clients who hang up,
//! and floods of guessed keys (behind proxies, on every route that takes a key).

use std::time::{Duration, Instant};

use serde_json::json;
use steward::identity::Capability;

use crate::helpers::{assert_error, spawn_app_with, unique, Storage};
use crate::socket::{closed_with, connect_to};

fn junk() -> String {
    format!("stw_{}", unique("junk"))
}

#[tokio::test]
async fn clients_that_hang_up_mid_lookup_leave_no_lookup_behind_and_keys_keep_working() {
    let app = spawn_app_with(Storage::Postgres, |s| s.identity.max_failed_auth_per_minute = 0).await;
    let key = app.key(&unique("tenant-"), &[Capability::Chat]).await;
    // Every key lookup waits on this lock while the flood arrives.
    let mut blocker = app.db.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE").execute(&mut *blocker).await.unwrap();

    // 40 clients send random keys and hang up before the lookup can answer.
    let hasty = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    let flood = (0..40).map(|_| hasty.get(format!("{}/v1/training/status", app.address)).bearer_auth(junk()).send());
    for outcome in futures_util::future::join_all(flood).await {
        assert!(outcome.unwrap_err().is_timeout(), "the client gave up first");
    }
    blocker.rollback().await.unwrap();

    // A key never seen before needs a lookup of its own: it is answered at once.
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(4), app.get_with("/v1/training/status", &key)).await;
    let status = status.expect("a fresh key is looked up in time, not stuck behind abandoned lookups").status();
    assert_eq!(status, 200, "after {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn behind_a_trusted_proxy_a_flooding_client_is_refused_and_its_neighbours_are_not() {
    let app = spawn_app_with(Storage::Sqlite, |s| {
        s.identity.max_failed_auth_per_minute = 3;
        s.server.trusted_proxies = vec!["127.0.0.0/8".into()];
    })
    .await;
    let (in_use, fresh) = (app.key(&unique("tenant-"), &[Capability::Chat]).await, app.key(&unique("tenant-"), &[Capability::Chat]).await);
    let status = |key: String, client: &'static str| {
        let request = app.http.get(format!("{}/v1/training/status", app.address)).bearer_auth(key).header("x-forwarded-for", client);
        async move { request.send().await.unwrap() }
    };
    // The flooder's own key was used a moment ago, from the same address.
    assert_eq!(status(in_use.clone(), "198.51.100.1").await.status(), 200);

    for _ in 0..3 {
        assert_error(status(junk(), "198.51.100.1").await, 401, "unauthenticated").await;
    }

    assert_error(status(junk(), "198.51.100.1").await, 429, "rate_limited").await;
    assert_eq!(status(in_use.clone(), "198.51.100.1").await.status(), 200, "a key known live is never refused");
    assert_eq!(status(fresh, "198.51.100.2").await.status(), 200, "another client behind the same proxy is not refused");
    // These proxies write X-Forwarded-For: a Forwarded header is the client's own words, not read
    // (counted under the proxy's address, which has sent nothing unknown).
    let forged = app.http.get(format!("{}/v1/training/status", app.address)).bearer_auth(junk()).header("forwarded", "for=198.51.100.3");
    assert_error(forged.send().await.unwrap(), 401, "unauthenticated").await;
    let through = app.http.get(format!("{}/v1/training/status", app.address)).bearer_auth(junk());
    let through = through.header("forwarded", "for=198.51.100.3").header("x-forwarded-for", "198.51.100.1").send().await.unwrap();
    assert_error(through, 429, "rate_limited").await;
}

#[tokio::test]
async fn forged_forwarding_headers_from_an_untrusted_peer_do_not_spread_a_flood() {
    let app = spawn_app_with(Storage::Sqlite, |s| s.identity.max_failed_auth_per_minute = 3).await;
    for i in 0..3 {
        let request = app.http.get(format!("{}/v1/training/status", app.address)).bearer_auth(junk()).header("x-forwarded-for", format!("203.0.113.{i}"));
        assert_error(request.send().await.unwrap(), 401, "unauthenticated").await;
    }

    let request = app.http.get(format!("{}/v1/training/status", app.address)).bearer_auth(junk()).header("x-forwarded-for", "203.0.113.99");

    assert_error(request.send().await.unwrap(), 429, "rate_limited").await;
}

#[tokio::test]
async fn guessed_keys_on_the_socket_and_ops_routes_count_against_the_same_bound() {
    let app = spawn_app_with(Storage::Sqlite, |s| {
        s.identity.max_failed_auth_per_minute = 3;
        s.server.metrics_require_ops = true;
    })
    .await;
    for _ in 0..2 {
        let (mut socket, _) = connect_to(&app, "/v1/chat/stream", &[("authorization", &format!("Bearer {}", junk()))]).await;
        assert_eq!(closed_with(&mut socket).await, tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Policy);
    }
    assert_error(app.get_with("/readyz", &junk()).await, 401, "unauthenticated").await;

    assert_error(app.get_with("/metrics", &junk()).await, 429, "rate_limited").await;
    assert_error(app.post("/v1/chat/stream", Some(&junk()), &json!({ "message": "Hi" })).await, 429, "rate_limited").await;
    let ops = app.key(&unique("tenant-"), &[Capability::Ops]).await;
    assert_eq!(app.get_with("/metrics", &ops).await.status(), 429, "a key never seen live, from a flooding address, waits out the minute");
}
