//! Signed checkpoints of the conversation trail. Every
//! `events.checkpoint_interval` (and at shutdown) Steward publishes, on
//! `kafka.checkpoint_topic`, records that commit to the head `(seq, hash)`
//! of every chain that changed since a checkpoint last covered it — session
//! chains of the conversation topic and the per-key chains of the audit
//! topics, one run of records per topic, each listing its heads with a Merkle
//! root over them — signed with an Ed25519 key
//! (`events.checkpoint_key`). The hash chain alone cannot show that a
//! session's last events were removed, that a whole session was deleted, or
//! that a chain was forged and re-linked; a verifier holding the public key
//! (`steward keys audit-public`) can, up to the last checkpoint.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use super::model::canonical_bytes;
use super::outbox::{Pending, TxWrite};
use super::writer::EventLog;
use crate::db::Database;

pub const CHECKPOINT_SCHEMA: &str = "conversation.checkpoint/v1";
/// Heads per record, so a record stays far below the broker's size limit.
const HEADS_PER_RECORD: usize = 500;

/// The key checkpoints are signed with.
pub struct CheckpointKey(SigningKey);

/// Why a configured checkpoint key is refused.
#[derive(Debug, thiserror::Error)]
#[error("events.checkpoint_key must be a 32-byte random seed in base64 (44 characters; `steward keys audit-generate` makes one): {0}")]
pub struct WeakKey(pub &'static str);

impl CheckpointKey {
    /// From the configured seed: 32 random bytes in base64 (or 64 hex
    /// characters). A passphrase is refused: the public key is in every
    /// checkpoint, so a guessable seed could be found offline. None if empty.
    pub fn from_secret(secret: &str) -> Result<Option<Self>, WeakKey> {
        use base64::Engine;
        let secret = secret.trim();
        if secret.is_empty() {
            return Ok(None);
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(secret)
            .ok()
            .filter(|b| b.len() == 32)
            .or_else(|| hex::decode(secret).ok().filter(|b| b.len() == 32))
            .ok_or(WeakKey("it is not 32 bytes in base64 or hex"))?;
        let seed: [u8; 32] = bytes.try_into().map_err(|_| WeakKey("it is not 32 bytes"))?;
        // Not proof of randomness, but the degenerate seeds a person might type are caught.
        if seed.iter().all(|b| *b == seed[0]) {
            return Err(WeakKey("all its bytes are the same"));
        }
        Ok(Some(Self(SigningKey::from_bytes(&seed))))
    }

    /// A new random seed, in base64.
    pub fn generate() -> String {
        use base64::Engine;
        let mut seed = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
        base64::engine::general_purpose::STANDARD.encode(seed)
    }

    /// The public key, hex: what `audit verify --public-key` takes.
    pub fn public_hex(&self) -> String {
        hex::encode(self.0.verifying_key().to_bytes())
    }
}

/// A chain's head: its name (`tenant:session_id` for a session, the record
/// key on an audit topic), its last `seq` and that event's hash, and when the
/// head was written (ms; 0 if unknown), which tells a verifier whether
/// retention may have taken the event since.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub chain: String,
    pub seq: i64,
    pub hash: String,
    #[serde(default)]
    pub written_ms: i64,
}

/// The Merkle root over heads sorted by chain: each leaf the SHA-256 of
/// `chain \0 seq \0 hash`, each parent the SHA-256 of its two children (an
/// odd node goes up as it is).
pub fn merkle_root(heads: &[Head]) -> String {
    let mut level: Vec<[u8; 32]> = heads.iter().map(|h| Sha256::digest(format!("{}\0{}\0{}", h.chain, h.seq, h.hash).as_bytes()).into()).collect();
    if level.is_empty() {
        return hex::encode(Sha256::digest(b""));
    }
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [left, right] => Sha256::new().chain_update(left).chain_update(right).finalize().into(),
                [single] => *single,
                _ => unreachable!("chunks of two"),
            })
            .collect();
    }
    hex::encode(level[0])
}

/// A signed checkpoint record over `heads` (sorted by chain).
pub fn signed(key: &CheckpointKey, topic: &str, heads: &[Head]) -> Value {
    let mut record = json!({
        "schema": CHECKPOINT_SCHEMA,
        "checkpoint_id": uuid::Uuid::now_v7().to_string(),
        "created_at": crate::db::rfc3339(crate::db::now_ms()),
        "topic": topic,
        "heads": heads,
        "root": merkle_root(heads),
        "public_key": key.public_hex(),
    });
    let signature = key.0.sign(&canonical_bytes(&record));
    record["signature"] = hex::encode(signature.to_bytes()).into();
    record
}

/// Reads a public key given in hex.
pub fn public_key(hex_key: &str) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = hex::decode(hex_key.trim()).ok().and_then(|b| b.try_into().ok()).ok_or("a public key is 64 hex characters")?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("not an Ed25519 public key: {e}"))
}

/// A checkpoint record's heads, if `key` signed it and its root matches them.
pub fn verified(record: &Value, key: &VerifyingKey) -> Result<Vec<Head>, String> {
    let mut unsigned = record.clone();
    let signature = unsigned.as_object_mut().and_then(|o| o.remove("signature")).ok_or("no signature")?;
    let signature: [u8; 64] = signature.as_str().and_then(|s| hex::decode(s).ok()).and_then(|b| b.try_into().ok()).ok_or("unreadable signature")?;
    key.verify(&canonical_bytes(&unsigned), &Signature::from_bytes(&signature)).map_err(|_| "the signature is not this key's".to_owned())?;
    let heads: Vec<Head> = serde_json::from_value(record["heads"].clone()).map_err(|e| format!("unreadable heads: {e}"))?;
    if record["root"].as_str() != Some(merkle_root(&heads).as_str()) {
        return Err("the root does not match the heads".into());
    }
    Ok(heads)
}

/// Publishes checkpoints of the chains that changed.
pub struct Checkpointer {
    pub db: Database,
    pub events: EventLog,
    pub key: CheckpointKey,
    /// Where checkpoints go.
    pub topic: String,
    /// The topic of the session chains (the audit topics' chains name theirs).
    pub conversation_topic: String,
}

impl Checkpointer {
    /// Checkpoints every chain whose head moved since a checkpoint last
    /// covered it (by any instance), one run of records per topic; how many.
    pub async fn checkpoint(&self) -> Result<usize, String> {
        let rows = sqlx::query("SELECT topic, chain_key, last_seq, last_hash, last_at FROM event_chains WHERE last_seq > checkpointed_seq")
            .fetch_all(self.db.pool())
            .await
            .map_err(|e| e.to_string())?;
        let mut by_topic: BTreeMap<String, Vec<(String, Head)>> = BTreeMap::new();
        for row in rows {
            let topic: String = row.try_get("topic").map_err(|e| e.to_string())?;
            let stored: String = row.try_get("chain_key").map_err(|e| e.to_string())?;
            let (topic, chain) = match topic.as_str() {
                "" => (self.conversation_topic.clone(), stored.clone()),
                audit => (audit.to_owned(), stored.strip_prefix(&format!("{audit}|")).unwrap_or(&stored).to_owned()),
            };
            let head = Head {
                chain,
                seq: row.try_get("last_seq").map_err(|e| e.to_string())?,
                hash: row.try_get("last_hash").map_err(|e| e.to_string())?,
                written_ms: row.try_get("last_at").map_err(|e| e.to_string())?,
            };
            by_topic.entry(topic).or_default().push((stored, head));
        }
        let mut covered = 0;
        for (topic, mut heads) in by_topic {
            heads.sort_by(|a, b| a.1.chain.cmp(&b.1.chain));
            for chunk in heads.chunks(HEADS_PER_RECORD) {
                let listed: Vec<Head> = chunk.iter().map(|(_, h)| h.clone()).collect();
                let record = Pending::Record {
                    topic: self.topic.clone(),
                    key: "checkpoint".into(),
                    event_type: "conversation.checkpoint".into(),
                    payload: signed(&self.key, &topic, &listed),
                    headers: json!({ "x-event-type": "conversation.checkpoint", "content-type": "application/json" }),
                };
                let done = Arc::new(Covered(chunk.iter().map(|(stored, h)| (stored.clone(), h.seq)).collect()));
                self.events.emit_durable(vec![record, Pending::Write(done)]).await.map_err(|e| e.to_string())?;
                covered += chunk.len();
            }
        }
        Ok(covered)
    }

    /// Checkpoints every `every` until `cancel` (the last one is the shutdown's, see `Application`).
    pub async fn run(self: Arc<Self>, every: Duration, cancel: CancellationToken) {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            if let Err(err) = self.checkpoint().await {
                tracing::warn!(error = %err, "checkpoint not written; the next one covers its chains");
            }
        }
    }
}

/// Records, with the checkpoint that covers them, how far each chain is
/// covered (stored chain key → seq); never moves a mark back.
#[derive(Debug)]
struct Covered(Vec<(String, i64)>);

impl TxWrite for Covered {
    fn write<'c>(&'c self, conn: &'c mut sqlx::AnyConnection) -> BoxFuture<'c, Result<(), sqlx::Error>> {
        Box::pin(async move {
            for (chain, seq) in &self.0 {
                sqlx::query("UPDATE event_chains SET checkpointed_seq = $1 WHERE chain_key = $2 AND checkpointed_seq < $1")
                    .bind(*seq)
                    .bind(chain)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads() -> Vec<Head> {
        (1..=3).map(|i| Head { chain: format!("t:s{i}"), seq: i, hash: format!("sha256:{i}"), written_ms: 0 }).collect()
    }

    #[test]
    fn a_signed_checkpoint_verifies_with_its_key_only_and_only_untouched() {
        let key = CheckpointKey::from_secret(&CheckpointKey::generate()).unwrap().unwrap();
        let record = signed(&key, "conversation.events", &heads());
        let public = public_key(&key.public_hex()).unwrap();
        assert_eq!(verified(&record, &public).unwrap(), heads());

        let other = public_key(&CheckpointKey::from_secret(&CheckpointKey::generate()).unwrap().unwrap().public_hex()).unwrap();
        assert!(verified(&record, &other).is_err(), "another key's");
        let mut forged = record.clone();
        forged["heads"][1]["seq"] = 1.into();
        assert!(verified(&forged, &public).is_err(), "heads changed after signing");
    }

    #[test]
    fn a_passphrase_or_a_short_or_degenerate_seed_is_refused() {
        for weak in ["correct horse battery staple", "c2hvcnQ=", &"00".repeat(32), &"A".repeat(43)] {
            assert!(CheckpointKey::from_secret(weak).is_err(), "{weak}");
        }
        assert!(CheckpointKey::from_secret("").unwrap().is_none(), "empty: no checkpoints");
        let generated = CheckpointKey::generate();
        assert_eq!(generated.len(), 44);
        assert!(CheckpointKey::from_secret(&generated).unwrap().is_some());
    }

    #[test]
    fn the_root_depends_on_every_head() {
        let mut changed = heads();
        changed[2].hash = "sha256:x".into();
        assert_ne!(merkle_root(&heads()), merkle_root(&changed));
        assert_ne!(merkle_root(&heads()[..2]), merkle_root(&heads()));
    }
}
