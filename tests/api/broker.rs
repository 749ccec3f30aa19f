//! Real Kafka-protocol brokers for the tests (`tansu`): the suite's shared
//! broker (memory storage, started by `scripts/test.sh`) and private brokers
//! with SQLite storage for tests that stop and restart one. Plus a plain
//! rskafka consumer and producer, to see what any Kafka client sees.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;
use rskafka::BackoffConfig;
use serde_json::Value;

/// The shared broker's address.
pub fn shared_broker() -> String {
    std::env::var("STEWARD_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

pub async fn client(broker: &str) -> Client {
    let backoff =
        BackoffConfig { init_backoff: Duration::from_millis(50), max_backoff: Duration::from_millis(500), base: 2.0, deadline: Some(Duration::from_secs(10)) };
    ClientBuilder::new(vec![broker.to_owned()]).backoff_config(backoff).build().await.expect("broker reachable (STEWARD_TEST_KAFKA)")
}

/// One record as a consumer reads it.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub partition: i32,
    pub key: String,
    pub headers: BTreeMap<String, String>,
    pub value: Value,
    pub raw: Vec<u8>,
}

/// Every record of `topic`, partition by partition, in offset order; empty if the topic does not exist.
pub async fn consume(broker: &str, topic: &str) -> Vec<Consumed> {
    let client = client(broker).await;
    let Some(t) = client.list_topics().await.unwrap().into_iter().find(|t| t.name == topic) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for partition in t.partitions {
        let pc = client.partition_client(topic, partition, UnknownTopicHandling::Retry).await.unwrap();
        let mut offset = 0;
        loop {
            let (records, high) = pc.fetch_records(offset, 1..10_000_000, 20).await.unwrap();
            for r in &records {
                let raw = r.record.value.clone().unwrap_or_default();
                out.push(Consumed {
                    partition,
                    key: String::from_utf8(r.record.key.clone().unwrap_or_default()).unwrap(),
                    headers: r.record.headers.iter().map(|(k, v)| (k.clone(), String::from_utf8(v.clone()).unwrap())).collect(),
                    value: serde_json::from_slice(&raw).unwrap_or(Value::Null),
                    raw,
                });
                offset = r.offset + 1;
            }
            if records.is_empty() || offset >= high {
                break;
            }
        }
    }
    out
}

/// Polls `topic` until `done` holds for what it holds, or panics after `secs`.
pub async fn wait_for(broker: &str, topic: &str, secs: u64, done: impl Fn(&[Consumed]) -> bool) -> Vec<Consumed> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let records = consume(broker, topic).await;
        if done(&records) {
            return records;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting on {topic}: {} records: {:#?}",
            records.len(),
            records.iter().map(|r| &r.value).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates a one-partition topic and produces `records` to it in order.
pub async fn produce_copy(broker: &str, topic: &str, records: &[Consumed]) {
    let client = client(broker).await;
    client.controller_client().unwrap().create_topic(topic, 1, 1, 5_000).await.unwrap();
    let pc = client.partition_client(topic, 0, UnknownTopicHandling::Retry).await.unwrap();
    let batch = records
        .iter()
        .map(|r| Record {
            key: Some(r.key.clone().into_bytes()),
            value: Some(r.raw.clone()),
            headers: r.headers.iter().map(|(k, v)| (k.clone(), v.clone().into_bytes())).collect(),
            timestamp: rskafka::chrono::Utc::now(),
        })
        .collect();
    pc.produce(batch, Compression::NoCompression).await.unwrap();
}

/// A broker of this test's own, storing to SQLite in a temp dir, so it can be
/// killed and restarted with its data.
pub struct PrivateBroker {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

fn tansu() -> String {
    std::env::var("STEWARD_TEST_TANSU").unwrap_or_else(|_| "tansu".into())
}

impl PrivateBroker {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut broker = Self { child: None, port, dir: tempfile::tempdir().unwrap() };
        broker.spawn().await;
        broker
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(tansu())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "sqlite://tansu.db", "--silent"])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu (STEWARD_TEST_TANSU)");
        self.child = Some(child);
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("tansu did not listen on {}", self.port);
    }

    /// Sends a signal to the broker process: `STOP` freezes it (connections stay open, nothing
    /// is answered), `CONT` thaws it.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("the broker runs").id().to_string();
        let status = Command::new("kill").args([&format!("-{signal}"), &pid]).status().expect("run kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// SIGKILL: the broker gets no chance to flush or say goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Does to `topic` what retention does once `before_ms` is past its
    /// `retention.ms`: deletes every record written before it, from the
    /// broker's own storage (tansu runs retention every ten minutes, with no
    /// setting to run it sooner, so the test stops the broker, deletes, and
    /// starts it again). Returns how many records went.
    pub async fn apply_retention(&mut self, topic: &str, before_ms: i64) -> u64 {
        self.delete_records(topic, "timestamp < $2", before_ms, None).await
    }

    /// Deletes one record of `topic` by partition and offset, as someone with access to the
    /// broker's disks could. (Not a partition's last: tansu then reports the partition empty.)
    pub async fn delete_record(&mut self, topic: &str, partition: i32, offset: i64) -> u64 {
        self.delete_records(topic, "offset_id = $2", offset, Some(partition)).await
    }

    async fn delete_records(&mut self, topic: &str, condition: &str, value: i64, partition: Option<i32>) -> u64 {
        use sqlx::sqlite::SqliteConnectOptions;
        use sqlx::{ConnectOptions, Connection};
        self.kill();
        let file = self.dir.path().join("tansu.db");
        let mut conn = SqliteConnectOptions::new().filename(&file).connect().await.expect("open the broker's storage");
        let sql = format!(
            "DELETE FROM record WHERE topition IN \
             (SELECT tp.id FROM topition tp JOIN topic t ON t.id = tp.topic WHERE t.name = $1 AND ($3 < 0 OR tp.partition = $3)) AND {condition}"
        );
        let query = sqlx::query(&sql).bind(topic).bind(value).bind(partition.unwrap_or(-1));
        let deleted = query.execute(&mut conn).await.expect("delete records").rows_affected();
        conn.close().await.unwrap();
        self.spawn().await;
        deleted
    }

    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.kill();
    }
}
