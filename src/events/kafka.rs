//! The Kafka adapter of [`EventPublisher`], over `rskafka`: connects lazily
//! (the chat path never waits for the broker), creates missing topics,
//! partitions by record key with Kafka's own murmur2 partitioner (so other
//! producers agree on placement), and produces each partition's rows as one
//! ordered batch, in batches bounded in bytes. Every broker call has a
//! deadline, so a broker that accepts connections but never answers ends the
//! round instead of stalling the relay. A record the broker can never accept
//! (over `kafka.max_record_bytes`, or refused as too large) goes to the
//! topic's dead-letter topic `<topic>.dlq` — its key and headers, the reason
//! in `x-dlq-reason`, and a summary of the event (the whole event stays in the
//! outbox table) — instead of blocking its partition.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;
use rskafka::BackoffConfig;
use tokio::sync::Mutex;

use super::outbox::OutboxRow;
use super::relay::{EventPublisher, PublishError, Published};
use super::KafkaSettings;

#[derive(Default)]
struct Connection {
    client: Option<Arc<Client>>,
    partitions: HashMap<String, i32>,
    clients: HashMap<(String, i32), Arc<PartitionClient>>,
}

pub struct KafkaPublisher {
    settings: KafkaSettings,
    /// The settings' topics and their dead-letter topics.
    topics: Vec<String>,
    /// Longest a broker call may take.
    deadline: Duration,
    connection: Mutex<Connection>,
}

/// Connects with a bounded retry, so a dead broker fails fast.
pub async fn connect(brokers: &[String], deadline: Duration) -> Result<Client, PublishError> {
    let backoff = BackoffConfig { init_backoff: Duration::from_millis(50), max_backoff: Duration::from_millis(500), base: 2.0, deadline: Some(deadline) };
    let build = ClientBuilder::new(brokers.to_vec()).client_id("steward").backoff_config(backoff).build();
    match tokio::time::timeout(deadline + Duration::from_millis(500), build).await {
        Err(_) => Err(PublishError::Unreachable(format!("no answer from {brokers:?} within {deadline:?}"))),
        Ok(Err(err)) => Err(PublishError::Unreachable(err.to_string())),
        Ok(Ok(client)) => Ok(client),
    }
}

impl KafkaPublisher {
    /// A publisher for the settings' topics, each with its dead-letter topic.
    pub fn new(settings: KafkaSettings) -> Self {
        let topics = settings.topics().map(str::to_owned);
        let topics = topics.iter().cloned().chain(topics.iter().map(|t| dead_letter_topic(t))).collect();
        Self { deadline: settings.request_deadline.get(), topics, settings, connection: Mutex::new(Connection::default()) }
    }

    /// Bounds a broker call by the deadline.
    async fn within<T>(&self, what: &str, call: impl std::future::Future<Output = Result<T, KafkaError>>) -> Result<T, PublishError> {
        tokio::time::timeout(self.deadline, call).await.map_err(|_| self.no_answer(what))?.map_err(unreachable)
    }

    fn no_answer(&self, what: &str) -> PublishError {
        PublishError::Unreachable(format!("{what}: no answer within {:?}", self.deadline))
    }

    async fn client(&self, conn: &mut Connection) -> Result<Arc<Client>, PublishError> {
        if let Some(client) = &conn.client {
            return Ok(client.clone());
        }
        let client = Arc::new(connect(&self.settings.brokers, self.deadline).await?);
        conn.client = Some(client.clone());
        Ok(client)
    }

    async fn ensure_topics(&self, conn: &mut Connection) -> Result<(), PublishError> {
        let client = self.client(conn).await?;
        let existing = self.within("list topics", client.list_topics()).await?;
        let controller = client.controller_client().map_err(unreachable)?;
        for topic in &self.topics {
            if existing.iter().any(|t| &t.name == topic) {
                continue;
            }
            let created = controller.create_topic(topic.as_str(), self.settings.partitions, self.settings.replication_factor, 5_000);
            match tokio::time::timeout(self.deadline, created).await.map_err(|_| self.no_answer("create topic"))? {
                Ok(()) => tracing::info!(topic, partitions = self.settings.partitions, "created topic"),
                Err(KafkaError::ServerError { protocol_error: ProtocolError::TopicAlreadyExists, .. }) => {}
                Err(err) => return Err(PublishError::Broker(format!("create topic {topic}: {err}"))),
            }
        }
        let topics = self.within("list topics", client.list_topics()).await?;
        let partitions: HashMap<String, i32> = topics.into_iter().map(|t| (t.name, t.partitions.len() as i32)).collect();
        // A topic just created may list no partitions yet: placing keys now would put them all
        // in partition 0 and move them later, breaking per-key order. Not ready until it has them.
        if let Some(topic) = self.topics.iter().find(|t| partitions.get(*t).copied().unwrap_or(0) < 1) {
            return Err(PublishError::Broker(format!("topic {topic} has no partitions yet")));
        }
        conn.partitions = partitions;
        Ok(())
    }

    async fn partition_client(&self, conn: &mut Connection, topic: &str, partition: i32) -> Result<Arc<PartitionClient>, PublishError> {
        let key = (topic.to_owned(), partition);
        if let Some(client) = conn.clients.get(&key) {
            return Ok(client.clone());
        }
        let client = self.client(conn).await?;
        let pc = Arc::new(self.within("partition leader", client.partition_client(topic, partition, UnknownTopicHandling::Error)).await?);
        conn.clients.insert(key, pc.clone());
        Ok(pc)
    }

    async fn publish_rows(&self, rows: &[OutboxRow]) -> Published {
        let mut conn = self.connection.lock().await;
        let mut out = Published::default();
        if conn.partitions.is_empty() {
            if let Err(err) = self.ensure_topics(&mut conn).await {
                *conn = Connection::default();
                out.error = Some(err);
                return out;
            }
        }
        // Group by (topic, partition), keeping id order inside each group.
        let mut groups: BTreeMap<(String, i32), Vec<&OutboxRow>> = BTreeMap::new();
        for row in rows {
            let Some(&count) = conn.partitions.get(&row.topic) else {
                *conn = Connection::default();
                out.error = Some(PublishError::Broker(format!("topic {} does not exist", row.topic)));
                return out;
            };
            groups.entry((row.topic.clone(), partition_for(row.key.as_bytes(), count))).or_default().push(row);
        }
        for ((topic, partition), group) in groups {
            if let Err(err) = self.publish_partition(&mut conn, &topic, partition, &group, &mut out).await {
                // This partition's remaining rows stay pending and go first next time; others proceed.
                conn.clients.remove(&(topic, partition));
                out.error = Some(err);
            }
        }
        if out.error.is_some() {
            *conn = Connection::default();
        }
        out
    }

    /// One partition's rows, in order, in batches of at most
    /// `max_record_bytes`; stops at the first failure other than a record
    /// the broker can never take, which is dead-lettered.
    async fn publish_partition(
        &self,
        conn: &mut Connection,
        topic: &str,
        partition: i32,
        group: &[&OutboxRow],
        out: &mut Published,
    ) -> Result<(), PublishError> {
        let limit = self.settings.max_record_bytes.get();
        // Once the broker refuses a batch as too large, its limit is below ours: one row at a time.
        let mut one_by_one = false;
        let mut start = 0;
        while start < group.len() {
            let first = record_bytes(group[start]);
            if first > limit {
                self.dead_letter(conn, group[start], format!("record of {first} bytes is over kafka.max_record_bytes ({limit})"), out).await?;
                start += 1;
                continue;
            }
            let (mut end, mut bytes) = (start + 1, first);
            while !one_by_one && end < group.len() && bytes + record_bytes(group[end]) <= limit {
                bytes += record_bytes(group[end]);
                end += 1;
            }
            let batch = &group[start..end];
            let pc = self.partition_client(conn, topic, partition).await?;
            let produce = pc.produce(batch.iter().map(|r| record(r)).collect(), Compression::NoCompression);
            match tokio::time::timeout(self.deadline, produce).await.map_err(|_| self.no_answer("produce"))? {
                Ok(_) => out.ids.extend(batch.iter().map(|r| r.id)),
                Err(err) if too_large(&err) && batch.len() > 1 => {
                    one_by_one = true;
                    continue;
                }
                Err(err) if too_large(&err) => self.dead_letter(conn, batch[0], format!("the broker refused the record: {err}"), out).await?,
                Err(err) => return Err(unreachable(err)),
            }
            start = end;
        }
        Ok(())
    }

    /// Publishes what the dead-letter topic keeps of `row`, and counts `row` as done.
    async fn dead_letter(&self, conn: &mut Connection, row: &OutboxRow, reason: String, out: &mut Published) -> Result<(), PublishError> {
        let topic = dead_letter_topic(&row.topic);
        let partitions = conn.partitions.get(&topic).copied().unwrap_or(1);
        let pc = self.partition_client(conn, &topic, partition_for(row.key.as_bytes(), partitions)).await?;
        self.within("produce to the dead-letter topic", pc.produce(vec![dead_letter_record(row, &reason)], Compression::NoCompression)).await?;
        out.ids.push(row.id);
        out.dead_lettered.push((row.id, reason));
        Ok(())
    }
}

/// Where records of `topic` that the broker cannot take go.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

fn too_large(err: &KafkaError) -> bool {
    matches!(err, KafkaError::ServerError { protocol_error: ProtocolError::MessageTooLarge | ProtocolError::RecordListTooLarge, .. })
}

/// A record's size as the broker counts it, near enough: key, value and headers.
fn record_bytes(row: &OutboxRow) -> usize {
    row.key.len() + row.payload.len() + row.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
}

/// What the dead-letter topic keeps of a record the broker cannot take: its
/// key and headers, the reason (also in `x-dlq-reason`), and the event's
/// identity; the whole event stays in the outbox table under `outbox_id`.
fn dead_letter_record(row: &OutboxRow, reason: &str) -> Record {
    let event: serde_json::Value = serde_json::from_str(&row.payload).unwrap_or_default();
    let value = serde_json::json!({
        "outbox_id": row.id, "topic": row.topic, "bytes": row.payload.len(), "reason": reason,
        "event_id": event.get("event_id"), "type": event.get("type"), "session_id": event.get("session_id"), "seq": event.get("seq"),
    });
    let mut record = record(row);
    record.value = Some(value.to_string().into_bytes());
    record.headers.insert("x-dlq-reason".into(), reason.as_bytes().to_vec());
    record.headers.insert("x-dlq-original-topic".into(), row.topic.as_bytes().to_vec());
    record
}

fn unreachable(err: KafkaError) -> PublishError {
    PublishError::Unreachable(err.to_string())
}

fn record(row: &OutboxRow) -> Record {
    let timestamp = chrono::DateTime::from_timestamp_millis(row.created_at).unwrap_or_else(chrono::Utc::now);
    Record {
        key: Some(row.key.as_bytes().to_vec()),
        value: Some(row.payload.as_bytes().to_vec()),
        headers: row.headers.iter().map(|(k, v)| (k.clone(), v.as_bytes().to_vec())).collect(),
        timestamp,
    }
}

impl EventPublisher for KafkaPublisher {
    fn prepare(&self) -> BoxFuture<'_, Result<(), PublishError>> {
        Box::pin(async move {
            let mut conn = self.connection.lock().await;
            let result = self.ensure_topics(&mut conn).await;
            if result.is_err() {
                *conn = Connection::default();
            }
            result
        })
    }

    fn publish<'a>(&'a self, rows: &'a [OutboxRow]) -> BoxFuture<'a, Published> {
        Box::pin(self.publish_rows(rows))
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), PublishError>> {
        Box::pin(async move {
            // The relay's own connection, made once and kept: a readiness check builds no client.
            let mut conn = self.connection.lock().await;
            let client = self.client(&mut conn).await?;
            let result = self.within("list topics", client.list_topics()).await.map(|_| ());
            if result.is_err() {
                *conn = Connection::default();
            }
            result
        })
    }
}

/// Kafka's default partitioner: `toPositive(murmur2(key)) % partitions`.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) % partitions.max(1) as u32) as i32
}

/// MurmurHash2 as the Java client implements it (seed 0x9747b28c).
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() == 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_client() {
        // Reference values from Apache Kafka's UtilsTest.testMurmur2.
        let cases: [(&[u8], i32); 4] =
            [(b"21", -973_932_308), (b"foobar", -790_332_482), (b"a-little-bit-long-string", -985_981_536), (b"a-little-bit-longer-string", -1_486_304_829)];
        for (input, expected) in cases {
            assert_eq!(murmur2(input) as i32, expected, "{:?}", std::str::from_utf8(input));
        }
    }

    #[test]
    fn a_key_always_lands_in_the_same_partition() {
        let p = partition_for(b"acme:session-1", 3);
        assert!((0..3).contains(&p));
        assert_eq!(p, partition_for(b"acme:session-1", 3));
    }
}
