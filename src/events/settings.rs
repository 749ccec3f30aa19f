//! The `[kafka]` and `[outbox]` sections of the configuration: where the
//! trail is published, and how the relay drains the outbox to it.

use std::num::{NonZeroU32, NonZeroUsize};

use serde::Deserialize;

use crate::durations::NonZeroDuration;

/// `[kafka]`: the broker and the topics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// Bootstrap brokers, `host:port`. Empty = events stay in the outbox (embedded mode).
    pub brokers: Vec<String>,
    pub conversation_topic: String,
    pub training_topic: String,
    /// Where constitution activations are recorded (`policy.audit/v1`).
    pub policy_topic: String,
    /// Where signed checkpoints of `conversation_topic` go.
    pub checkpoint_topic: String,
    /// Partitions of topics Steward creates.
    pub partitions: i32,
    pub replication_factor: i16,
    /// Longest a broker call may take, retries included (rskafka retries forever by default).
    pub request_deadline: NonZeroDuration,
    /// Largest record (and produce batch) the relay sends; a larger record
    /// goes to `<topic>.dlq` instead. Kafka's own default limit is 1 MiB.
    pub max_record_bytes: NonZeroUsize,
}

impl KafkaSettings {
    /// Every topic Steward publishes to.
    pub fn topics(&self) -> [&str; 4] {
        [&self.conversation_topic, &self.training_topic, &self.policy_topic, &self.checkpoint_topic]
    }
}

/// `[outbox]`: how the relay publishes what the outbox holds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxSettings {
    /// Most rows the relay publishes per round.
    pub batch_size: NonZeroU32,
    /// How often the relay looks for rows when not woken by a commit.
    pub poll_interval: NonZeroDuration,
    /// Cap of the relay's exponential backoff while the broker is down.
    pub max_backoff: NonZeroDuration,
    /// How long a relay's lease lasts without renewal.
    pub lease: NonZeroDuration,
}
