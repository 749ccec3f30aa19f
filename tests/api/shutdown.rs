//! SIGTERM under load, against the real `steward` binary, PostgreSQL and the
//! broker: running turns finish or are stopped with their `done`, and every
//! event of every turn that received `session` reaches Kafka, or waits in
//! the outbox for the next start, which publishes it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use sqlx::Row;
use steward::identity::{Capability, KeyStore, TenantId};

use crate::broker::{consume, shared_broker};
use crate::helpers::unique;
use crate::instances::{shared_database, Instance};

/// Every event id the outbox holds for `topic`, with whether it still waits to be published.
async fn outbox_rows(db: &steward::db::Database, topic: &str) -> BTreeMap<String, (String, String, bool)> {
    let rows = sqlx::query("SELECT o.payload, (p.id IS NOT NULL) AS pending FROM outbox o LEFT JOIN outbox_pending p ON p.id = o.id WHERE o.topic = $1")
        .bind(topic)
        .fetch_all(db.pool())
        .await
        .unwrap();
    rows.iter()
        .map(|row| {
            let event: Value = serde_json::from_str(&row.get::<String, _>("payload")).unwrap();
            let id = event["event_id"].as_str().unwrap().to_owned();
            (id, (event["session_id"].as_str().unwrap().to_owned(), event["type"].as_str().unwrap().to_owned(), row.get::<bool, _>("pending")))
        })
        .collect()
}

/// Event ids in Kafka on `topic`, as an independent consumer reads them.
async fn published(topic: &str) -> BTreeSet<String> {
    consume(&shared_broker(), topic).await.iter().map(|r| r.value["event_id"].as_str().unwrap().to_owned()).collect()
}

/// Streams one turn; the session id once `session` arrives, then the whole body.
async fn stream_turn(address: String, key: String, max_tokens: u32, sessions: tokio::sync::mpsc::Sender<String>) -> String {
    let response = reqwest::Client::new()
        .post(format!("{address}/v1/chat/stream"))
        .bearer_auth(key)
        .json(&json!({ "message": "Write a long story about a lighthouse keeper.", "max_tokens": max_tokens }))
        .send()
        .await
        .unwrap();
    let session = response.headers()["x-session-id"].to_str().unwrap().to_owned();
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let mut announced = false;
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else { break };
        text.push_str(&String::from_utf8_lossy(&chunk));
        if !announced && text.contains("event: session") {
            announced = true;
            sessions.send(session.clone()).await.unwrap();
        }
    }
    text
}

#[tokio::test]
async fn sigterm_under_load_loses_no_event_of_a_turn_that_received_its_session_and_the_next_start_publishes_the_rest() {
    let (url, db) = shared_database().await;
    let tenant = unique("shutdown-");
    let (_, key) = KeyStore::new(db.clone()).create(&TenantId::parse(&tenant).unwrap(), &[Capability::Chat]).await.unwrap();
    let topic = unique("conversation.events.");
    let brokers = format!("[\"{}\"]", shared_broker());
    let prefix = format!("{}:", unique("steward-test-"));
    let env = [
        ("STEWARD_KAFKA__BROKERS", brokers.as_str()),
        ("STEWARD_KAFKA__CONVERSATION_TOPIC", topic.as_str()),
        ("STEWARD_SERVER__SHUTDOWN_GRACE", "2s"),
        ("STEWARD_OUTBOX__POLL_INTERVAL", "50ms"),
    ];
    let mut steward = Instance::start_with(&url, &prefix, &env).await;
    // Twelve turns at once: short ones finish within the grace period, long ones outlive it.
    let (tx, mut announced) = tokio::sync::mpsc::channel(12);
    let turns: Vec<_> =
        (0..12).map(|i| tokio::spawn(stream_turn(steward.address.clone(), key.expose().to_owned(), if i % 2 == 0 { 12 } else { 3000 }, tx.clone()))).collect();
    let mut sessions = BTreeSet::new();
    while sessions.len() < 12 {
        let session = tokio::time::timeout(Duration::from_secs(60), announced.recv()).await.expect("every turn got its session").unwrap();
        sessions.insert(session);
    }

    steward.terminate();

    let status = steward.exited(Duration::from_secs(30)).await;
    assert!(status.success(), "steward exited with {status}");
    for (i, turn) in turns.into_iter().enumerate() {
        let body = turn.await.unwrap();
        assert!(body.contains("event: done"), "a turn ended without its done: {body}");
        if i % 2 == 1 {
            assert!(body.contains("event: done\ndata: {\"finish_reason\":\"cancelled\""), "a long turn is stopped when the grace period ends: {body}");
        }
    }
    let rows = outbox_rows(&db, &topic).await;
    let in_kafka = published(&topic).await;
    for session in &sessions {
        let terminal =
            rows.values().filter(|(s, kind, _)| s == session && ["turn.completed", "turn.cancelled", "turn.failed"].contains(&kind.as_str())).count();
        assert_eq!(terminal, 1, "session {session}: its turn's end is in the outbox once");
    }
    let mut waiting = 0;
    for (id, (session, kind, pending)) in &rows {
        assert!(in_kafka.contains(id) || *pending, "{kind} of {session} is neither in Kafka nor waiting in the outbox");
        waiting += usize::from(!in_kafka.contains(id));
    }
    eprintln!("after SIGTERM: {} events, {} in Kafka, {waiting} waiting in the outbox", rows.len(), rows.len() - waiting);
    let cancelled: Vec<Value> = sqlx::query("SELECT payload FROM outbox WHERE topic = $1 AND event_type = 'turn.cancelled'")
        .bind(&topic)
        .fetch_all(db.pool())
        .await
        .unwrap()
        .iter()
        .map(|row| serde_json::from_str::<Value>(&row.get::<String, _>("payload")).unwrap())
        .collect();
    let schema = crate::events::validator();
    assert!(cancelled.iter().all(|e| schema.is_valid(e)), "turn.cancelled does not match its schema: {cancelled:?}");
    let reasons: Vec<&str> = cancelled.iter().map(|e| e["data"]["reason"].as_str().unwrap()).collect();
    // The six long turns at least (short ones may still wait for a model slot when the grace period ends).
    assert!(reasons.len() >= 6 && reasons.iter().all(|r| *r == "shutdown"), "turns stopped when the grace period ended: {reasons:?}");

    // The next start publishes whatever was left.
    let _next = Instance::start_with(&url, &prefix, &env).await;
    let started = std::time::Instant::now();
    loop {
        let in_kafka = published(&topic).await;
        if rows.keys().all(|id| in_kafka.contains(id)) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{} events never published", rows.keys().filter(|id| !in_kafka.contains(*id)).count());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
