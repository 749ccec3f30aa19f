//! The `conversation.event/v1` record: its fields, its per-type `data`, its
//! canonical form and the hash chain that makes a session's events
//! tamper-evident (`seq` from 1 without gaps, `prev_hash` = SHA-256 of the
//! previous event's canonical form).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::ids::{SessionId, TurnId};

pub const CONVERSATION_SCHEMA: &str = "conversation.event/v1";

/// `prev_hash` of the first event of a session.
pub const ZERO_HASH: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// What happened to a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "turn.received")]
    Received,
    #[serde(rename = "turn.refused")]
    Refused,
    #[serde(rename = "turn.dispatched")]
    Dispatched,
    #[serde(rename = "turn.completed")]
    Completed,
    #[serde(rename = "turn.cancelled")]
    Cancelled,
    #[serde(rename = "turn.failed")]
    Failed,
    #[serde(rename = "turn.upstream_failed")]
    UpstreamFailed,
    #[serde(rename = "moderation.checked")]
    Checked,
    #[serde(rename = "turn.guard_skipped")]
    GuardSkipped,
    #[serde(rename = "turn.tool_call")]
    ToolCall,
    #[serde(rename = "turn.format_checked")]
    FormatChecked,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Received => "turn.received",
            Self::Refused => "turn.refused",
            Self::Dispatched => "turn.dispatched",
            Self::Completed => "turn.completed",
            Self::Cancelled => "turn.cancelled",
            Self::Failed => "turn.failed",
            Self::UpstreamFailed => "turn.upstream_failed",
            Self::Checked => "moderation.checked",
            Self::GuardSkipped => "turn.guard_skipped",
            Self::ToolCall => "turn.tool_call",
            Self::FormatChecked => "turn.format_checked",
        }
    }
}

/// The fields every event of one turn shares.
#[derive(Debug, Clone)]
pub struct TurnContext {
    pub tenant: String,
    pub session_id: SessionId,
    pub turn_id: TurnId,
    pub trace_id: String,
    /// `traceparent` to put on the Kafka record.
    pub traceparent: String,
    pub tracestate: Option<String>,
    pub constitution_hash: String,
    pub policy_verdict: String,
    /// `None` when the training state could not be read.
    pub training_mode: Option<bool>,
    pub training_fencing_token: Option<u64>,
    /// How `training_mode` was decided.
    pub training_mode_source: String,
}

impl TurnContext {
    /// The chain (and Kafka record key) a session's events belong to.
    pub fn chain_key(&self) -> String {
        format!("{}:{}", self.tenant, self.session_id)
    }
}

/// An event before the outbox gives it its place in the session's chain. Its
/// id and time are fixed when it is created, so a retried write keeps them.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub context: TurnContext,
    pub kind: EventType,
    pub data: Value,
    pub event_id: String,
    pub occurred_at: String,
}

impl NewEvent {
    pub fn new(context: TurnContext, kind: EventType, data: Value) -> Self {
        Self { context, kind, data, event_id: uuid::Uuid::now_v7().to_string(), occurred_at: crate::db::rfc3339(crate::db::now_ms()) }
    }

    /// A turn's event, of the type its data says.
    pub fn turn(context: TurnContext, data: &super::TurnData) -> Self {
        Self::new(context, data.kind(), data.to_value())
    }
}

/// A published event, as consumers read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationEvent {
    pub schema: String,
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub occurred_at: String,
    pub tenant: String,
    pub session_id: String,
    pub turn_id: String,
    pub trace_id: String,
    pub constitution_hash: String,
    pub policy_verdict: String,
    pub training_mode: Option<bool>,
    pub training_fencing_token: Option<u64>,
    pub training_mode_source: String,
    /// Set when the turn carried a training lock older than the newest the
    /// database has seen: `training_mode` is then false (absent otherwise).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub training_fencing_rejected: bool,
    pub seq: i64,
    pub prev_hash: String,
    pub data: Value,
}

impl ConversationEvent {
    /// Places `new` in its chain after an event whose hash is `prev_hash`.
    pub fn chained(new: &NewEvent, seq: i64, prev_hash: String) -> Self {
        let c = &new.context;
        Self {
            schema: CONVERSATION_SCHEMA.into(),
            event_id: new.event_id.clone(),
            kind: new.kind,
            occurred_at: new.occurred_at.clone(),
            tenant: c.tenant.clone(),
            session_id: c.session_id.to_string(),
            turn_id: c.turn_id.to_string(),
            trace_id: c.trace_id.clone(),
            constitution_hash: c.constitution_hash.clone(),
            policy_verdict: c.policy_verdict.clone(),
            training_mode: c.training_mode,
            training_fencing_token: c.training_fencing_token,
            training_mode_source: c.training_mode_source.clone(),
            training_fencing_rejected: false,
            seq,
            prev_hash,
            data: new.data.clone(),
        }
    }

    pub fn chain_key(&self) -> String {
        format!("{}:{}", self.tenant, self.session_id)
    }
}

/// Canonical bytes of any JSON value: object keys sorted, no whitespace.
/// Written in one pass, sorting each object's keys as it goes (whatever
/// order the map keeps), without copying the value.
pub fn canonical_bytes(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                // Writing a string or a scalar to a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, key);
                out.push(b':');
                write_canonical(item, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => {
            let _ = serde_json::to_writer(&mut *out, scalar);
        }
    }
}

/// `sha256:<hex>` of an event's canonical form: the next event's `prev_hash`.
pub fn event_hash(event: &Value) -> String {
    hash_of_canonical(&canonical_bytes(event))
}

/// `sha256:<hex>` of canonical bytes already written (see [`canonical_bytes`]).
pub fn hash_of_canonical(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_form_ignores_key_order_and_whitespace() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": {"y": [1, 2], "x": null}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":null,"y":[1,2]},"b":1}"#).unwrap();
        assert_eq!(canonical_bytes(&a), canonical_bytes(&b));
        assert_eq!(canonical_bytes(&a), br#"{"a":{"x":null,"y":[1,2]},"b":1}"#);
        assert_eq!(event_hash(&a), event_hash(&b));
        assert_ne!(event_hash(&a), event_hash(&json!({"b": 2, "a": {"x": null, "y": [1, 2]}})));
    }

    #[test]
    fn event_types_serialise_as_dotted_names() {
        assert_eq!(serde_json::to_value(EventType::Dispatched).unwrap(), json!("turn.dispatched"));
        assert_eq!(ZERO_HASH.len(), "sha256:".len() + 64);
    }
}
