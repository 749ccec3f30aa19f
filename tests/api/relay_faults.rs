//! The relay against a broker that misbehaves, for real: a frozen broker
//! process (SIGSTOP) that keeps its connections open and answers nothing, and
//! a record over the size limit.

use std::time::{Duration, Instant};

use serde_json::json;
use steward::durations::NonZeroDuration;
use steward::events::{EventType, NewEvent, OutboxStore, Pending, TurnContext};

use crate::broker::{consume, shared_broker, wait_for, PrivateBroker};
use crate::events::app_with_broker;
use crate::helpers::{unique, Storage, TestApp};

async fn counter(app: &TestApp, name: &str) -> f64 {
    let metrics = app.get("/metrics").await.text().await.unwrap();
    metrics.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

#[tokio::test]
async fn a_frozen_broker_ends_each_publish_round_within_the_deadline_and_the_events_follow_once_it_thaws() {
    let broker = PrivateBroker::start().await;
    let topic = unique("conversation.events.");
    let app = app_with_broker(Storage::Sqlite, &broker.address(), &topic, |s| {
        s.kafka.request_deadline = NonZeroDuration::from_millis(500);
        s.outbox.lease = NonZeroDuration::from_millis(4000);
        // One partition: the second turn's rows go to the connection the first one opened,
        // so it is the produce request itself that the frozen broker never answers.
        s.kafka.partitions = 1;
    })
    .await;
    let (_, key) = app.chat_key().await;
    let first = app.chat(&key, &json!({ "message": "Name a colour.", "max_tokens": 4 })).await;
    assert_eq!(first.names().last(), Some(&"done"));
    wait_for(&broker.address(), &topic, 30, |records| records.len() >= 3).await;

    broker.signal("STOP");
    let failures_before = counter(&app, "kafka_publish_failures_total ").await;
    let started = Instant::now();
    let second = app.chat(&key, &json!({ "message": "Name a fruit.", "max_tokens": 4 })).await;
    assert_eq!(second.names().last(), Some(&"done"), "the chat path does not wait for the broker");
    let mut failed_after = None;
    while started.elapsed() < Duration::from_secs(10) {
        if counter(&app, "kafka_publish_failures_total ").await > failures_before {
            failed_after = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    broker.signal("CONT");
    let failed_after = failed_after.expect("a publish round against the frozen broker never ended");
    eprintln!("frozen broker: the publish round failed {failed_after:?} after the turn (deadline 500 ms)");

    let records = wait_for(&broker.address(), &topic, 30, |records| records.len() >= 6).await;
    let session = second.first("session")["session_id"].as_str().unwrap();
    assert!(
        records.iter().any(|r| r.value["session_id"] == session && r.value["type"] == "turn.completed"),
        "the second turn's events follow once the broker thaws"
    );
}

#[tokio::test]
async fn a_record_over_the_size_limit_goes_to_the_dead_letter_topic_and_its_session_goes_on() {
    let topic = unique("conversation.events.");
    let app = app_with_broker(Storage::Sqlite, &shared_broker(), &topic, |s| s.kafka.max_record_bytes = std::num::NonZeroUsize::new(100_000).unwrap()).await;
    let session = unique("session-");
    let context = TurnContext {
        tenant: unique("tenant-"),
        session_id: session.parse().unwrap(),
        turn_id: unique("turn-").parse().unwrap(),
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        tracestate: None,
        constitution_hash: "sha256:0".into(),
        policy_verdict: "allow".into(),
        training_mode: Some(false),
        training_fencing_token: None,
        training_mode_source: "lock_store".into(),
    };
    let store = OutboxStore::new(app.db.clone(), topic.as_str());
    let oversized = NewEvent::new(context.clone(), EventType::Completed, json!({ "note": "x".repeat(150_000), "content_included": false }));
    let after = NewEvent::new(context, EventType::Received, json!({ "content_included": false }));
    store.append(&[Pending::Conversation(oversized.clone()), Pending::Conversation(after.clone())]).await.unwrap();

    let main = wait_for(&shared_broker(), &topic, 30, |records| records.iter().any(|r| r.value["event_id"] == after.event_id.as_str())).await;
    assert!(!main.iter().any(|r| r.value["event_id"] == oversized.event_id.as_str()), "the oversized record is not in the topic");
    let dead = consume(&shared_broker(), &format!("{topic}.dlq")).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].value["event_id"], oversized.event_id.as_str());
    assert_eq!(dead[0].value["session_id"], session.as_str());
    assert_eq!(dead[0].value["seq"], 1);
    assert!(dead[0].headers["x-dlq-reason"].contains("over kafka.max_record_bytes (100000)"), "{:?}", dead[0].headers);
    assert_eq!(dead[0].headers["x-dlq-original-topic"], topic);
    assert_eq!(dead[0].key, format!("{}:{session}", after.context.tenant));
    assert_eq!(counter(&app, &format!("kafka_dead_lettered_events_total{{topic=\"{topic}\"}} ")).await, 1.0);
}
