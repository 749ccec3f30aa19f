//! The outbox: appending events (placing each conversation event in its
//! session's hash chain inside the same transaction), reading unpublished rows
//! in order (`outbox_pending`), marking them published (deleting them from
//! `outbox_pending`; `outbox` itself is never changed), the relay lease and
//! pending statistics.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::{json, Value};
use sqlx::Row;

use super::model::{canonical_bytes, hash_of_canonical, ConversationEvent, NewEvent, ZERO_HASH};
use crate::db::{now_ms, runs, Backend, Database};

/// A state change that commits in the same transaction as the events
/// beside it (the transactional outbox), e.g. the finished turn's row. It
/// must be idempotent: a retried batch runs it again. A guarded write whose
/// condition is gone fails with `sqlx::Error::RowNotFound`: its job is then
/// not stored, and its caller gets `EventsError::Conflict`.
pub trait TxWrite: std::any::Any + Send + Sync + std::fmt::Debug {
    fn write<'c>(&'c self, conn: &'c mut sqlx::AnyConnection) -> BoxFuture<'c, Result<(), sqlx::Error>>;

    /// For writes that go many rows per statement (a turn's row): their kind
    /// and the function that writes every write of that kind in a batch at
    /// once, after the batch's other writes, in their order. `None`: written
    /// alone, where it stands in the batch.
    fn batched(&self) -> Option<(&'static str, BatchWrite)> {
        None
    }
}

/// Writes several writes of one kind (see [`TxWrite::batched`]) in a transaction;
/// it reads each back as its own type through `&dyn Any`.
pub type BatchWrite = for<'c> fn(&'c [&'c dyn TxWrite], &'c mut sqlx::AnyConnection, Backend) -> BoxFuture<'c, Result<(), sqlx::Error>>;

/// Something to put in the outbox.
#[derive(Debug, Clone)]
pub enum Pending {
    /// A conversation event; the outbox assigns its `seq` and `prev_hash`.
    Conversation(NewEvent),
    /// A ready record (e.g. a checkpoint), published as is.
    Record { topic: String, key: String, event_type: String, payload: Value, headers: Value },
    /// An audit record (`training.audit`, `policy.audit`): the outbox chains
    /// it, per `topic` and `key`, as it chains a session's events, adding
    /// `chain` (the key), `seq` and `prev_hash` to its payload.
    Chained { topic: String, key: String, event_type: String, payload: Value, headers: Value },
    /// A state change committed with the events.
    Write(Arc<dyn TxWrite>),
}

impl Pending {
    /// An audit record of `event_type` on `topic`, chained under `key`, with
    /// the record headers every audit topic carries (the trace, the key as
    /// `x-tenant`, the type).
    pub fn audit(topic: &str, key: &str, event_type: &str, payload: Value, trace: &crate::telemetry::TraceContext) -> Self {
        let mut headers = json!({
            "traceparent": trace.header(),
            "x-tenant": key,
            "x-event-type": event_type,
            "content-type": "application/json",
        });
        if let Some(state) = &trace.tracestate {
            headers["tracestate"] = json!(state);
        }
        Self::Chained { topic: topic.to_owned(), key: key.to_owned(), event_type: event_type.to_owned(), payload, headers }
    }
}

/// An unpublished row, as the relay reads it.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub topic: String,
    pub key: String,
    pub payload: String,
    /// Kafka record headers, name → value.
    pub headers: Vec<(String, String)>,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct OutboxStore {
    db: Database,
    conversation_topic: String,
}

impl OutboxStore {
    pub fn new(db: Database, conversation_topic: impl Into<String>) -> Self {
        Self { db, conversation_topic: conversation_topic.into() }
    }

    /// Appends a batch in one transaction. Chains are locked in key order so
    /// concurrent writers (other instances) cannot deadlock or fork a chain.
    /// `batch` holds the items or references to them (the writer's groups borrow their jobs' items).
    pub async fn append<P: std::borrow::Borrow<Pending> + Sync>(&self, batch: &[P]) -> Result<(), sqlx::Error> {
        let mut tx = self.db.pool().begin().await?;
        let mut keys: Vec<(String, &str)> = batch
            .iter()
            .map(std::borrow::Borrow::borrow)
            .filter_map(|p| match p {
                Pending::Conversation(e) => Some((e.context.chain_key(), "")),
                Pending::Chained { topic, key, .. } => Some((audit_chain_key(topic, key), topic.as_str())),
                Pending::Record { .. } | Pending::Write(_) => None,
            })
            .collect();
        keys.sort();
        keys.dedup();
        let mut heads = read_heads(&mut tx, self.db.backend(), &keys).await?;
        let fencing = fencing_high_water(&mut tx, batch).await?;
        let now = now_ms();
        let mut rows = Vec::with_capacity(batch.len());
        let mut grouped: Vec<(&'static str, BatchWrite, Vec<&dyn TxWrite>)> = Vec::new();
        for item in batch {
            match item.borrow() {
                Pending::Conversation(new) => {
                    let chain = new.context.chain_key();
                    let (seq, prev) = heads.get(&chain).cloned().unwrap_or((0, ZERO_HASH.to_owned()));
                    let mut event = ConversationEvent::chained(new, seq + 1, prev);
                    if let (Some(true), Some(token), Some(&newest)) = (event.training_mode, event.training_fencing_token, fencing.get(&event.tenant)) {
                        // A stale holder's late events are not trusted as training data.
                        if token < newest {
                            event.training_mode = Some(false);
                            event.training_fencing_rejected = true;
                        }
                    }
                    let event = serde_json::to_value(event).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
                    // Serialised once: the canonical form is both what the chain hashes and the payload.
                    let payload = canonical_bytes(&event);
                    heads.insert(chain.clone(), (seq + 1, hash_of_canonical(&payload)));
                    let headers = conversation_headers(new);
                    rows.push(NewRow {
                        topic: self.conversation_topic.clone(),
                        key: chain,
                        session_id: Some(new.context.session_id.to_string()),
                        event_type: new.kind.as_str().to_owned(),
                        payload: String::from_utf8(payload).map_err(|e| sqlx::Error::Encode(Box::new(e)))?,
                        headers: headers.to_string(),
                    });
                }
                Pending::Chained { topic, key, event_type, payload, headers } => {
                    let chain = audit_chain_key(topic, key);
                    let (seq, prev) = heads.get(&chain).cloned().unwrap_or((0, ZERO_HASH.to_owned()));
                    let mut payload = payload.clone();
                    payload["chain"] = json!(key);
                    payload["seq"] = json!(seq + 1);
                    payload["prev_hash"] = json!(prev);
                    let canonical = canonical_bytes(&payload);
                    heads.insert(chain, (seq + 1, hash_of_canonical(&canonical)));
                    let payload = String::from_utf8(canonical).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
                    rows.push(NewRow::record(topic, key, event_type, payload, headers));
                }
                Pending::Record { topic, key, event_type, payload, headers } => rows.push(NewRow::record(topic, key, event_type, payload.to_string(), headers)),
                Pending::Write(write) => match write.batched() {
                    None => write.write(&mut tx).await?,
                    Some((kind, writer)) => match grouped.iter_mut().find(|(k, _, _)| *k == kind) {
                        Some((_, _, writes)) => writes.push(&**write),
                        None => grouped.push((kind, writer, vec![&**write])),
                    },
                },
            }
        }
        let backend = self.db.backend();
        for (_, writer, writes) in &grouped {
            writer(writes, &mut tx, backend).await?;
        }
        // Many rows per statement: ids follow the order of the rows, so each chain's events keep their order.
        for chunk in runs(&rows, ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO outbox (topic, record_key, session_id, event_type, payload, headers, created_at) VALUES {} RETURNING id",
                backend.values(chunk.len(), 7)
            );
            let mut insert = sqlx::query_scalar::<_, i64>(&sql);
            for row in chunk {
                insert = insert.bind(&row.topic).bind(&row.key).bind(&row.session_id).bind(&row.event_type).bind(&row.payload).bind(&row.headers).bind(now);
            }
            let ids = insert.fetch_all(&mut *tx).await?;
            let sql = format!("INSERT INTO outbox_pending (id, created_at) VALUES {}", backend.values(ids.len(), 2));
            let mut pending = sqlx::query(&sql);
            for id in ids {
                pending = pending.bind(id).bind(now);
            }
            pending.execute(&mut *tx).await?;
        }
        write_heads(&mut tx, self.db.backend(), &keys, &heads, now).await?;
        tx.commit().await
    }

    /// The oldest unpublished rows, in id order.
    pub async fn pending(&self, limit: i64) -> Result<Vec<OutboxRow>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT o.id, o.topic, o.record_key, o.payload, o.headers, o.created_at \
             FROM outbox_pending p JOIN outbox o ON o.id = p.id ORDER BY p.id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let headers: String = r.try_get("headers")?;
                let headers: serde_json::Map<String, Value> = serde_json::from_str(&headers).unwrap_or_default();
                Ok(OutboxRow {
                    id: r.try_get("id")?,
                    topic: r.try_get("topic")?,
                    key: r.try_get("record_key")?,
                    payload: r.try_get("payload")?,
                    headers: headers.into_iter().filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_owned()))).collect(),
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    pub async fn mark_published(&self, ids: &[i64]) -> Result<(), sqlx::Error> {
        for chunk in runs(ids, 512) {
            // One row of as many parameters as ids: `($1, $2, …)`, the `IN` list.
            let sql = format!("DELETE FROM outbox_pending WHERE id IN {}", self.db.backend().values(1, chunk.len()));
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(*id);
            }
            query.execute(self.db.pool()).await?;
        }
        Ok(())
    }

    /// Whether the database answers: tells an outage from a write that can never succeed.
    pub async fn reachable(&self) -> bool {
        self.db.ping().await.is_ok()
    }

    /// (pending rows, age in ms of the oldest).
    pub async fn pending_stats(&self) -> Result<(i64, Option<i64>), sqlx::Error> {
        let row = sqlx::query("SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM outbox_pending").fetch_one(self.db.pool()).await?;
        let oldest: Option<i64> = row.try_get("oldest")?;
        Ok((row.try_get("n")?, oldest.map(|t| (now_ms() - t).max(0))))
    }

    /// Takes or renews the relay lease; true if `holder` holds it now.
    pub async fn acquire_lease(&self, name: &str, holder: &str, lease_ms: i64) -> Result<bool, sqlx::Error> {
        let now = now_ms();
        let done = sqlx::query(
            "INSERT INTO relay_leases (name, holder, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE relay_leases.expires_at < $4 OR relay_leases.holder = excluded.holder",
        )
        .bind(name)
        .bind(holder)
        .bind(now + lease_ms)
        .bind(now)
        .execute(self.db.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives the lease up (on shutdown) so another relay takes over at once.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM relay_leases WHERE name = $1 AND holder = $2").bind(name).bind(holder).execute(self.db.pool()).await?;
        Ok(())
    }

    /// Stored events after `after_id`, oldest first: (id, payload).
    /// The newest `limit` rows of `topic`, newest first.
    pub async fn newest(&self, topic: &str, limit: i64) -> Result<Vec<(i64, String)>, sqlx::Error> {
        let rows =
            sqlx::query("SELECT id, payload FROM outbox WHERE topic = $1 ORDER BY id DESC LIMIT $2").bind(topic).bind(limit).fetch_all(self.db.pool()).await?;
        rows.iter().map(|r| Ok((r.try_get("id")?, r.try_get("payload")?))).collect()
    }

    pub async fn tail(&self, topic: &str, session_id: Option<&str>, after_id: i64, limit: i64) -> Result<Vec<(i64, String)>, sqlx::Error> {
        let rows = sqlx::query("SELECT id, payload FROM outbox WHERE topic = $1 AND id > $2 AND ($3 = '' OR session_id = $3) ORDER BY id LIMIT $4")
            .bind(topic)
            .bind(after_id)
            .bind(session_id.unwrap_or_default())
            .bind(limit)
            .fetch_all(self.db.pool())
            .await?;
        rows.iter().map(|r| Ok((r.try_get("id")?, r.try_get("payload")?))).collect()
    }
}

/// Most rows per multi-row statement (a power of two: see [`runs`]); 7
/// parameters each stays far below either backend's limit.
const ROWS_PER_STATEMENT: usize = 128;

/// Each chain's head (last seq, last hash), keyed by chain.
type Heads = HashMap<String, (i64, String)>;

/// Creates the chain heads that do not exist yet and reads them all, many
/// chains per statement. `keys` are sorted: the upsert's update takes each
/// row lock on PostgreSQL (as `FOR UPDATE` would) in that order, held until
/// commit, so a concurrent writer of the same session waits for this chain
/// and two writers cannot deadlock.
async fn read_heads(tx: &mut sqlx::AnyConnection, backend: Backend, keys: &[(String, &str)]) -> Result<Heads, sqlx::Error> {
    let mut heads = HashMap::with_capacity(keys.len());
    for chunk in runs(keys, ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO event_chains (chain_key, topic, last_seq, last_hash) VALUES {} \
             ON CONFLICT (chain_key) DO UPDATE SET chain_key = excluded.chain_key \
             RETURNING chain_key, last_seq, last_hash",
            backend.values(chunk.len(), 4)
        );
        let mut query = sqlx::query(&sql);
        for (key, topic) in chunk {
            query = query.bind(key).bind(*topic).bind(0_i64).bind(ZERO_HASH);
        }
        for row in query.fetch_all(&mut *tx).await? {
            heads.insert(row.try_get("chain_key")?, (row.try_get::<i64, _>("last_seq")?, row.try_get::<String, _>("last_hash")?));
        }
    }
    Ok(heads)
}

/// The newest training-lock fencing token the database has seen, for each
/// tenant whose events in `batch` claim training mode (read in the batch's
/// transaction, so a lock granted meanwhile is seen by what commits after it).
async fn fencing_high_water<P: std::borrow::Borrow<Pending>>(tx: &mut sqlx::AnyConnection, batch: &[P]) -> Result<HashMap<String, u64>, sqlx::Error> {
    let mut tenants: Vec<&str> = batch
        .iter()
        .map(std::borrow::Borrow::borrow)
        .filter_map(|p| match p {
            Pending::Conversation(e) if e.context.training_mode == Some(true) => Some(e.context.tenant.as_str()),
            _ => None,
        })
        .collect();
    tenants.sort_unstable();
    tenants.dedup();
    let mut high = HashMap::new();
    for tenant in tenants {
        let row = sqlx::query("SELECT high_water FROM training_fencing WHERE tenant = $1").bind(tenant).fetch_optional(&mut *tx).await?;
        if let Some(row) = row {
            high.insert(tenant.to_owned(), row.try_get::<i64, _>("high_water")? as u64);
        }
    }
    Ok(high)
}

/// Moves each chain's head to its last appended event (at `now`), many chains per statement.
async fn write_heads(tx: &mut sqlx::AnyConnection, backend: Backend, keys: &[(String, &str)], heads: &Heads, now: i64) -> Result<(), sqlx::Error> {
    let moved: Vec<(&String, &(i64, String))> = keys.iter().filter_map(|(k, _)| heads.get(k).map(|h| (k, h))).collect();
    for chunk in runs(&moved, ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO event_chains (chain_key, last_seq, last_hash, last_at) VALUES {} \
             ON CONFLICT (chain_key) DO UPDATE SET last_seq = excluded.last_seq, last_hash = excluded.last_hash, last_at = excluded.last_at",
            backend.values(chunk.len(), 4)
        );
        let mut query = sqlx::query(&sql);
        for (key, (seq, hash)) in chunk {
            query = query.bind(*key).bind(*seq).bind(hash).bind(now);
        }
        query.execute(&mut *tx).await?;
    }
    Ok(())
}

/// Where an audit topic's chain is kept in `event_chains`: apart from the
/// sessions' `tenant:session` keys and from another topic's chain of the
/// same record key.
pub(super) fn audit_chain_key(topic: &str, key: &str) -> String {
    format!("{topic}|{key}")
}

/// One outbox row about to be inserted.
struct NewRow {
    topic: String,
    key: String,
    session_id: Option<String>,
    event_type: String,
    payload: String,
    headers: String,
}

impl NewRow {
    /// A row of a record that belongs to no session.
    fn record(topic: &str, key: &str, event_type: &str, payload: String, headers: &Value) -> Self {
        Self { topic: topic.to_owned(), key: key.to_owned(), session_id: None, event_type: event_type.to_owned(), payload, headers: headers.to_string() }
    }
}

fn conversation_headers(new: &NewEvent) -> Value {
    let c = &new.context;
    let mut headers = json!({
        "traceparent": c.traceparent,
        "x-constitution-hash": c.constitution_hash,
        "x-policy-verdict": c.policy_verdict,
        "x-tenant": c.tenant,
        "x-event-type": new.kind.as_str(),
        "content-type": "application/json",
    });
    if let Some(state) = &c.tracestate {
        headers["tracestate"] = json!(state);
    }
    headers
}
