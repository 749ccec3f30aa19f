//! Per-tenant limits against the real model server and a real Redis shared
//! by two instances: concurrent streams, the request rate and tokens per
//! minute, 429 `rate_limited` with `Retry-After` over them, other tenants
//! unaffected.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use steward::identity::Capability;

use crate::helpers::{spawn_app_with, unique, Storage, TestApp};
use crate::training::redis_url;

async fn instance(prefix: &str, adjust: impl FnOnce(&mut steward::config::Settings) + Send + 'static) -> TestApp {
    let prefix = prefix.to_owned();
    spawn_app_with(Storage::Sqlite, move |s| {
        s.redis.url = steward::config::Secret::new(redis_url());
        s.redis.key_prefix = prefix;
        adjust(s);
    })
    .await
}

#[tokio::test]
async fn with_a_stream_limit_of_n_n_plus_50_simultaneous_streams_across_two_instances_give_n_streams_and_50_answers_of_429() {
    const N: usize = 3;
    let prefix = format!("{}:", unique("steward-test-"));
    let limits = |s: &mut steward::config::Settings| {
        s.limits.max_concurrent_streams = N as u32;
        s.limits.requests_per_second = 1000.0;
        s.limits.burst = 1000;
    };
    let (a, b) = (instance(&prefix, limits).await, instance(&prefix, limits).await);
    let tenant = unique("busy-");
    let keys = [a.key(&tenant, &[Capability::Chat]).await, b.key(&tenant, &[Capability::Chat]).await];
    let body = json!({ "message": "Write a very long story about the sea.", "max_tokens": 400 });

    let requests = (0..N + 50).map(|i| {
        let (app, key) = if i % 2 == 0 { (&a, &keys[0]) } else { (&b, &keys[1]) };
        app.post("/v1/chat/stream", Some(key), &body)
    });
    let responses = futures_util::future::join_all(requests).await;

    let (mut streams, mut limited) = (Vec::new(), 0);
    for response in responses {
        match response.status().as_u16() {
            200 => streams.push(response),
            429 => {
                assert!(response.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
                let error: Value = response.json().await.unwrap();
                assert_eq!(error["code"], "rate_limited", "{error}");
                limited += 1;
            }
            other => panic!("unexpected status {other}: {}", response.text().await.unwrap()),
        }
    }
    assert_eq!((streams.len(), limited), (N, 50));

    // Another tenant's turn runs meanwhile.
    let other = unique("quiet-");
    let key = a.key(&other, &[Capability::Chat]).await;
    let turn = a.chat(&key, &json!({ "message": "Name a colour.", "max_tokens": 4 })).await;
    assert!(!turn.names().contains(&"error"), "{:?}", turn.events);
    assert_eq!(turn.names().last(), Some(&"done"));

    // A stream that ends gives its slot back.
    let first = streams.remove(0);
    let mut body = first.bytes_stream();
    assert!(body.next().await.is_some());
    drop(body);
    let mut admitted = false;
    for _ in 0..50 {
        let response = b.post("/v1/chat/stream", Some(&keys[1]), &json!({ "message": "Say hi.", "max_tokens": 2 })).await;
        if response.status() == 200 {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(admitted, "the freed slot was never given to a new stream");
    let metrics = a.get("/metrics").await.text().await.unwrap() + &b.get("/metrics").await.text().await.unwrap();
    let counted: f64 = metrics.lines().filter_map(|l| l.strip_prefix("rate_limited_total{limit=\"streams\"} ")).map(|v| v.parse::<f64>().unwrap()).sum();
    assert!(counted >= 50.0, "{counted}");
}

/// An instance whose tenants may start two turns, then one every two seconds;
/// a chat key of a new tenant, and a short turn's body.
async fn burst_of_two(tenant: &str) -> (TestApp, String, Value) {
    let prefix = format!("{}:", unique("steward-test-"));
    let app = instance(&prefix, |s| {
        s.limits.requests_per_second = 0.5;
        s.limits.burst = 2;
    })
    .await;
    let key = app.key(&unique(tenant), &[Capability::Chat]).await;
    (app, key, json!({ "message": "Say hi.", "max_tokens": 2 }))
}

#[tokio::test]
async fn over_its_request_rate_a_tenant_gets_429_with_retry_after_over_sse_and_websocket() {
    let (app, key, body) = burst_of_two("chatty-").await;
    assert_eq!(app.post("/v1/chat/stream", Some(&key), &body).await.status(), 200);
    assert_eq!(app.post("/v1/chat/stream", Some(&key), &body).await.status(), 200);

    let third = app.post("/v1/chat/stream", Some(&key), &body).await;

    assert_eq!(third.status(), 429);
    assert_eq!(third.headers()["retry-after"], "2");
    let error: Value = third.json().await.unwrap();
    assert_eq!(error["code"], "rate_limited");
    let wait = error["retry_after_ms"].as_u64().unwrap();
    assert!((1500..=2000).contains(&wait), "{wait}");

    let url = app.address.replace("http://", "ws://") + "/v1/chat/stream";
    let mut request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    use futures_util::SinkExt;
    socket.send(tokio_tungstenite::tungstenite::Message::text(json!({ "type": "turn", "message": "Say hi.", "max_tokens": 2 }).to_string())).await.unwrap();
    let frame = loop {
        match socket.next().await.unwrap().unwrap() {
            tokio_tungstenite::tungstenite::Message::Text(text) => break serde_json::from_str::<Value>(&text).unwrap(),
            _ => continue,
        }
    };
    assert_eq!(frame["type"], "error");
    assert_eq!(frame["code"], "rate_limited", "{frame}");
    assert!(frame["retry_after_ms"].as_u64().unwrap() > 0, "{frame}");
}

#[tokio::test]
async fn over_its_tokens_per_minute_a_tenant_waits_for_what_its_turns_really_used_across_instances() {
    let prefix = format!("{}:", unique("steward-test-"));
    // 60 tokens a minute: one token a second.
    let limits = |s: &mut steward::config::Settings| s.limits.tokens_per_minute = 60;
    let (a, b) = (instance(&prefix, limits).await, instance(&prefix, limits).await);
    let tenant = unique("wordy-");
    let keys = [a.key(&tenant, &[Capability::Chat]).await, b.key(&tenant, &[Capability::Chat]).await];

    let started = std::time::Instant::now();
    let first = a.chat(&keys[0], &json!({ "message": "Name a colour.", "max_tokens": 4 })).await;
    let usage = &first.first("done")["usage"];
    let used = usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap();
    assert!(used > 4 + 4, "the model's usage ({usage}) is more than the turn reserved: the test needs it to be");
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The other instance sees the first turn's usage, not its reservation: a turn asking for
    // the minute's whole 60 waits until the tokens used are paid back.
    let second = b.post("/v1/chat/stream", Some(&keys[1]), &json!({ "message": "Name a fruit.", "max_tokens": 100 })).await;

    assert_eq!(second.status(), 429);
    let error: Value = second.json().await.unwrap();
    assert_eq!(error["code"], "rate_limited", "{error}");
    assert!(error["message"].as_str().unwrap().contains("tokens per minute"), "{error}");
    let wait = error["retry_after_ms"].as_u64().unwrap();
    let owed = used * 1000;
    // Less the time since the first turn was admitted, which is at most what has passed since before it.
    let passed = started.elapsed().as_millis() as u64;
    assert!(wait <= owed && wait + passed + 100 >= owed, "waits {wait} ms for {used} tokens used at a second each, {passed} ms on");

    // A small turn fits once the minute has room for it; other tenants never waited.
    let other = a.key(&unique("quiet-"), &[Capability::Chat]).await;
    let turn = a.chat(&other, &json!({ "message": "Name a colour.", "max_tokens": 4 })).await;
    assert_eq!(turn.names().last(), Some(&"done"), "{:?}", turn.events);
    let metrics = b.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("rate_limited_total{limit=\"tokens\"} 1"), "{metrics}");
}

#[tokio::test]
async fn a_tenants_turns_are_still_counted_after_redis_forgets_the_limit_scripts() {
    let (app, key, body) = burst_of_two("forgetful-").await;
    assert_eq!(app.post("/v1/chat/stream", Some(&key), &body).await.status(), 200);

    // The scripts are sent by their digest; a server that lost them (a restart, a failover) is sent their text again.
    let flushed = std::process::Command::new("redis-cli").args(["-u", &redis_url(), "SCRIPT", "FLUSH"]).output().expect("redis-cli");
    assert!(flushed.status.success() && String::from_utf8_lossy(&flushed.stdout).trim() == "OK", "{flushed:?}");

    assert_eq!(app.post("/v1/chat/stream", Some(&key), &body).await.status(), 200, "counted after the flush");
    let third = app.post("/v1/chat/stream", Some(&key), &body).await;
    assert_eq!(third.status(), 429, "the burst of two was used up across the flush");
    assert_eq!(third.json::<Value>().await.unwrap()["code"], "rate_limited");
}
