//! Relay throughput to a real broker, beside a plain rskafka produce loop on
//! the same rows in the same run; and the outbox's cost per turn under
//! concurrent load (group commit).
//!
//! Needs a broker (`scripts/tansu.sh start 19092`):
//! `STEWARD_BENCH_KAFKA=127.0.0.1:19092 cargo bench --bench relay`.
//! `STEWARD_BENCH_EVENTS` sets the number of events (default 20000).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::record::Record;
use serde_json::json;
use steward::db::Database;
use steward::durations::NonZeroDuration;
use steward::events::kafka::{connect, partition_for, KafkaPublisher};
use steward::events::{EventLog, EventType, KafkaSettings, NewEvent, OutboxSettings, OutboxStore, Pending, Relay, TurnContext};
use steward::telemetry::Metrics;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const PARTITIONS: i32 = 3;

fn event(session: usize, kind: EventType) -> Pending {
    let context = TurnContext {
        tenant: "bench".into(),
        session_id: format!("session-{session}").parse().unwrap(),
        turn_id: steward::ids::TurnId::mint(),
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        tracestate: None,
        constitution_hash: format!("sha256:{}", "ab".repeat(32)),
        policy_verdict: "allow".into(),
        training_mode: Some(false),
        training_fencing_token: None,
        training_mode_source: "lock_store".into(),
    };
    Pending::Conversation(NewEvent::new(context, kind, json!({ "model": "m", "max_tokens": 8, "history_messages": 1, "content_included": false })))
}

async fn fresh_outbox(topic: &str) -> (OutboxStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::connect(&format!("sqlite://{}?mode=rwc", dir.path().join("bench.db").display()), 4).await.expect("db");
    db.migrate().await.expect("migrate");
    (OutboxStore::new(db, topic), dir)
}

/// Rows per relay round and per plain produce round (`STEWARD_BENCH_BATCH`, default 500 as in config).
fn batch() -> u32 {
    std::env::var("STEWARD_BENCH_BATCH").ok().and_then(|v| v.parse().ok()).unwrap_or(500)
}

async fn relay_throughput(broker: &str, n: usize) -> (f64, Vec<steward::events::OutboxRow>) {
    let topic = format!("bench.relay.{}", uuid::Uuid::new_v4().simple());
    let (store, _dir) = fresh_outbox(&topic).await;
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let batch: Vec<Pending> = chunk.iter().map(|i| event(i % 200, EventType::Dispatched)).collect();
        store.append(&batch).await.expect("append");
    }
    let t = Instant::now();
    let rows = store.pending(n as i64).await.expect("rows");
    let read_ms = t.elapsed().as_secs_f64() * 1e3;
    println!("(reading {n} pending rows from the outbox alone: {read_ms:.1} ms, {:.1} µs/row)", read_ms * 1e3 / n as f64);
    let publisher = Arc::new(KafkaPublisher::new(KafkaSettings {
        brokers: vec![broker.to_owned()],
        conversation_topic: topic.clone(),
        training_topic: format!("{topic}.training"),
        policy_topic: format!("{topic}.policy"),
        checkpoint_topic: format!("{topic}.checkpoints"),
        partitions: PARTITIONS,
        replication_factor: 1,
        request_deadline: NonZeroDuration::from_secs(5),
        max_record_bytes: NonZeroUsize::new(1_000_000).unwrap(),
    }));
    use steward::events::EventPublisher;
    publisher.prepare().await.expect("broker ready");
    let relay = Relay {
        store: store.clone(),
        publisher: Some(publisher),
        metrics: Arc::new(Metrics::new()),
        settings: OutboxSettings {
            batch_size: NonZeroU32::new(batch()).expect("STEWARD_BENCH_BATCH of at least 1"),
            poll_interval: NonZeroDuration::from_millis(5),
            max_backoff: NonZeroDuration::from_millis(200),
            lease: NonZeroDuration::from_secs(10),
        },
        drain: Duration::from_secs(1),
        committed: Arc::new(Notify::new()),
    };
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(relay.run(cancel.clone()));
    loop {
        if store.pending_stats().await.expect("stats").0 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    cancel.cancel();
    let _ = task.await;
    (n as f64 / elapsed.as_secs_f64(), rows)
}

async fn plain_produce_throughput(broker: &str, rows: &[steward::events::OutboxRow]) -> f64 {
    let topic = format!("bench.plain.{}", uuid::Uuid::new_v4().simple());
    let client = connect(&[broker.to_owned()], Duration::from_secs(5)).await.expect("broker");
    client.controller_client().expect("controller").create_topic(topic.as_str(), PARTITIONS, 1, 5_000).await.expect("topic");
    let mut partitions = Vec::new();
    for p in 0..PARTITIONS {
        partitions.push(client.partition_client(topic.as_str(), p, UnknownTopicHandling::Retry).await.expect("partition"));
    }
    let started = Instant::now();
    for batch in rows.chunks(batch() as usize) {
        let mut groups: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
        for r in batch {
            groups.entry(partition_for(r.key.as_bytes(), PARTITIONS)).or_default().push(Record {
                key: Some(r.key.as_bytes().to_vec()),
                value: Some(r.payload.as_bytes().to_vec()),
                headers: r.headers.iter().map(|(k, v)| (k.clone(), v.as_bytes().to_vec())).collect(),
                timestamp: rskafka::chrono::Utc::now(),
            });
        }
        for (p, records) in groups {
            partitions[p as usize].produce(records, Compression::NoCompression).await.expect("produce");
        }
    }
    rows.len() as f64 / started.elapsed().as_secs_f64()
}

/// 64 concurrent "turns", each queuing two events and waiting for a durable third.
async fn outbox_cost_per_turn(turns: usize) -> (f64, f64) {
    let (store, _dir) = fresh_outbox("bench.writer").await;
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let log = EventLog::start(store, Arc::new(Notify::new()), Arc::new(Metrics::new()), cancel.clone(), Duration::from_secs(5), &tracker);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut waits = Vec::new();
            for turn in (worker..turns).step_by(64) {
                log.emit(vec![event(turn, EventType::Received), event(turn, EventType::Dispatched)]).await.expect("emit");
                let t = Instant::now();
                log.emit_durable(vec![event(turn, EventType::Completed)]).await.expect("durable");
                waits.push(t.elapsed().as_secs_f64() * 1e3);
            }
            waits
        }));
    }
    let mut waits = Vec::new();
    for t in tasks {
        waits.extend(t.await.expect("task"));
    }
    let elapsed = started.elapsed();
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    waits.sort_by(f64::total_cmp);
    (elapsed.as_secs_f64() * 1e3 / turns as f64, waits[waits.len() / 2])
}

#[tokio::main]
async fn main() {
    let broker = std::env::var("STEWARD_BENCH_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".into());
    let n: usize = std::env::var("STEWARD_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let (relay, rows) = relay_throughput(&broker, n).await;
    let plain = plain_produce_throughput(&broker, &rows).await;
    println!("{n} events, {PARTITIONS} partitions, batches of {}", batch());
    println!("relay (outbox -> Kafka, marks published)  {relay:>10.0} events/s");
    println!("plain rskafka produce loop                {plain:>10.0} events/s");
    println!("relay / plain                             {:>10.2}", relay / plain);
    let turns = 6_400;
    let (per_turn, median_wait) = outbox_cost_per_turn(turns).await;
    println!("outbox under 64 concurrent turns: {per_turn:.3} ms of writer time per turn (3 events), median wait for durability {median_wait:.2} ms");
}
