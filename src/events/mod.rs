//! Events: the auditable trail of every turn.
//!
//! Events are written to the outbox table first ([`EventLog`], group commit)
//! — durable before the client sees `done` — and a [`Relay`] publishes them
//! to Kafka (`conversation.events`, key `tenant:session_id`) through the
//! [`EventPublisher`] port. Without a broker (embedded mode) they stay in the
//! outbox, readable with `steward events tail`. Each session's events form a
//! hash chain (`seq`, `prev_hash`) that `steward audit verify` checks.

pub mod audit;
pub mod chain_check;
pub mod checkpoint;
#[cfg(feature = "kafka")]
pub mod kafka;
mod model;
mod outbox;
mod relay;
mod settings;
mod turn_data;
mod writer;

pub use model::{canonical_bytes, event_hash, ConversationEvent, EventType, NewEvent, TurnContext, CONVERSATION_SCHEMA, ZERO_HASH};
pub use outbox::{BatchWrite, OutboxRow, OutboxStore, Pending, TxWrite};
pub use relay::{EventPublisher, PublishError, Relay};
pub use settings::{KafkaSettings, OutboxSettings};
pub use turn_data::{RefusedCategory, TurnData};
pub use writer::{EventLog, EventsError};

/// Where an audited change was asked for, as its record's `via` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The HTTP API.
    Api,
    /// The browser console.
    Console,
    /// The command line (`steward constitution activate`).
    Cli,
    /// Steward itself (the lock watcher, the first constitution's seed).
    Steward,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Console => "console",
            Self::Cli => "cli",
            Self::Steward => "steward",
        }
    }
}

/// An audit topic (`training.audit`, `policy.audit`) and the writer its
/// records go through.
#[derive(Clone)]
pub struct AuditTrail {
    pub events: EventLog,
    pub topic: String,
}

impl AuditTrail {
    /// A record of `event_type` on this trail, chained under `key` (see [`Pending::audit`]).
    pub fn record(&self, key: &str, event_type: &str, payload: serde_json::Value, trace: &crate::telemetry::TraceContext) -> Pending {
        Pending::audit(&self.topic, key, event_type, payload, trace)
    }

    /// Stores `items` (records of this trail and the writes that go with them) before returning.
    pub async fn commit(&self, items: Vec<Pending>) -> Result<(), EventsError> {
        self.events.emit_durable(items).await
    }
}

impl EventLog {
    /// Queues one conversation event (written with the next commit).
    pub async fn turn(&self, context: &TurnContext, data: TurnData) {
        let item = Pending::Conversation(NewEvent::turn(context.clone(), &data));
        if let Err(err) = self.emit(vec![item]).await {
            tracing::error!(error = %err, turn_id = %context.turn_id, event = data.kind().as_str(), "event not queued");
        }
    }

    /// Stores one conversation event, and all queued before it, before
    /// returning; false (and logged) if it could not be stored.
    pub async fn turn_durable(&self, context: &TurnContext, data: TurnData) -> bool {
        let kind = data.kind();
        let item = Pending::Conversation(NewEvent::turn(context.clone(), &data));
        match self.emit_durable(vec![item]).await {
            Ok(()) => true,
            Err(err) => {
                tracing::error!(error = %err, turn_id = %context.turn_id, event = kind.as_str(), "event not stored");
                false
            }
        }
    }
}
