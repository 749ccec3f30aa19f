//! The Kafka adapter of [`EventPublisher`], over `rskafka`: connects lazily
//! (the chat path never waits for the broker), creates missing topics,
//! partitions by record key with Kafka's own murmur2 partitioner (so other
//! producers agree on placement), and produces each partition's rows as one
//! ordered batch.

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
use super::relay::{EventPublisher, PublishError};

#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: Vec<String>,
    pub topics: Vec<String>,
    pub partitions: i32,
    pub replication_factor: i16,
    /// Longest a broker call may retry before it fails (rskafka retries forever by default).
    pub deadline: Duration,
}

#[derive(Default)]
struct Connection {
    client: Option<Arc<Client>>,
    partitions: HashMap<String, i32>,
    clients: HashMap<(String, i32), Arc<PartitionClient>>,
}

pub struct KafkaPublisher {
    settings: KafkaSettings,
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
    pub fn new(settings: KafkaSettings) -> Self {
        Self { settings, connection: Mutex::new(Connection::default()) }
    }

    async fn client(&self, conn: &mut Connection) -> Result<Arc<Client>, PublishError> {
        if let Some(client) = &conn.client {
            return Ok(client.clone());
        }
        let client = Arc::new(connect(&self.settings.brokers, self.settings.deadline).await?);
        conn.client = Some(client.clone());
        Ok(client)
    }

    async fn ensure_topics(&self, conn: &mut Connection) -> Result<(), PublishError> {
        let client = self.client(conn).await?;
        let existing = client.list_topics().await.map_err(unreachable)?;
        let controller = client.controller_client().map_err(unreachable)?;
        for topic in &self.settings.topics {
            if existing.iter().any(|t| &t.name == topic) {
                continue;
            }
            match controller.create_topic(topic.as_str(), self.settings.partitions, self.settings.replication_factor, 5_000).await {
                Ok(()) => tracing::info!(topic, partitions = self.settings.partitions, "created topic"),
                Err(KafkaError::ServerError { protocol_error: ProtocolError::TopicAlreadyExists, .. }) => {}
                Err(err) => return Err(PublishError::Broker(format!("create topic {topic}: {err}"))),
            }
        }
        let topics = client.list_topics().await.map_err(unreachable)?;
        let partitions: HashMap<String, i32> = topics.into_iter().map(|t| (t.name, t.partitions.len() as i32)).collect();
        // A topic just created may list no partitions yet: placing keys now would put them all
        // in partition 0 and move them later, breaking per-key order. Not ready until it has them.
        if let Some(topic) = self.settings.topics.iter().find(|t| partitions.get(*t).copied().unwrap_or(0) < 1) {
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
        let pc = Arc::new(client.partition_client(topic, partition, UnknownTopicHandling::Error).await.map_err(unreachable)?);
        conn.clients.insert(key, pc.clone());
        Ok(pc)
    }

    async fn publish_rows(&self, rows: &[OutboxRow]) -> (Vec<i64>, Option<PublishError>) {
        let mut conn = self.connection.lock().await;
        if conn.partitions.is_empty() {
            if let Err(err) = self.ensure_topics(&mut conn).await {
                *conn = Connection::default();
                return (Vec::new(), Some(err));
            }
        }
        // Group by (topic, partition), keeping id order inside each group.
        let mut groups: BTreeMap<(String, i32), Vec<&OutboxRow>> = BTreeMap::new();
        for row in rows {
            let Some(&count) = conn.partitions.get(&row.topic) else {
                *conn = Connection::default();
                return (Vec::new(), Some(PublishError::Broker(format!("topic {} does not exist", row.topic))));
            };
            groups.entry((row.topic.clone(), partition_for(row.key.as_bytes(), count))).or_default().push(row);
        }
        let mut published = Vec::new();
        let mut error = None;
        for ((topic, partition), group) in groups {
            let result = match self.partition_client(&mut conn, &topic, partition).await {
                Ok(pc) => pc.produce(group.iter().map(|r| record(r)).collect(), Compression::NoCompression).await.map_err(unreachable),
                Err(err) => Err(err),
            };
            match result {
                Ok(_) => published.extend(group.iter().map(|r| r.id)),
                Err(err) => {
                    // This partition's rows stay pending and go first next time; others proceed.
                    conn.clients.remove(&(topic.clone(), partition));
                    error = Some(err);
                }
            }
        }
        if error.is_some() {
            *conn = Connection::default();
        }
        (published, error)
    }
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

    fn publish<'a>(&'a self, rows: &'a [OutboxRow]) -> BoxFuture<'a, (Vec<i64>, Option<PublishError>)> {
        Box::pin(self.publish_rows(rows))
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), PublishError>> {
        Box::pin(async move {
            let client = connect(&self.settings.brokers, Duration::from_secs(1)).await?;
            client.list_topics().await.map(|_| ()).map_err(unreachable)
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
