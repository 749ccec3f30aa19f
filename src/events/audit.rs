//! `steward audit verify`: reads `conversation.events` back from Kafka and
//! checks every session's hash chain — `seq` from 1 without gaps, each
//! `prev_hash` equal to the SHA-256 of the previous event's canonical form —
//! reporting missing, duplicated, reordered and altered events. Identical
//! redeliveries (same `event_id`, same bytes) are expected under
//! at-least-once delivery and only counted. Given the heads of signed
//! checkpoints ([`super::checkpoint`]), it also finds a session whose last
//! events were removed (`truncated`), one deleted whole (`deleted`), and a
//! well-chained event that is not the one checkpointed (`forged`).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::Value;

use super::model::{event_hash, ZERO_HASH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProblemKind {
    Missing,
    Duplicated,
    Reordered,
    Altered,
    /// Fewer events than a signed checkpoint covers.
    Truncated,
    /// No event left of a session a signed checkpoint covers.
    Deleted,
    /// The event at a checkpointed `seq` is not the one the checkpoint signed.
    Forged,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub seq: i64,
    pub kind: ProblemKind,
    pub detail: String,
}

/// The verdict on one session (`tenant:session_id`).
#[derive(Debug, Clone, Serialize)]
pub struct SessionReport {
    pub session: String,
    pub events: usize,
    pub redelivered: usize,
    pub status: &'static str,
    pub problems: Vec<Problem>,
}

/// One accepted event of a chain.
struct Link {
    event_id: String,
    prev_hash: String,
    hash: String,
}

#[derive(Default)]
struct Chain {
    /// event_id → hash of the first copy seen.
    by_id: HashMap<String, String>,
    by_seq: BTreeMap<i64, Link>,
    max_seq: i64,
    redelivered: usize,
    problems: Vec<Problem>,
}

/// Verifies events given in the order consumers read them (per partition, by offset).
pub fn verify(events: impl IntoIterator<Item = Value>) -> Vec<SessionReport> {
    verify_against(events, &BTreeMap::new())
}

/// Verifies events as [`verify`] does, and against `checkpointed`: chain →
/// (seq, hash) of its newest signed checkpoint.
pub fn verify_against(events: impl IntoIterator<Item = Value>, checkpointed: &BTreeMap<String, (i64, String)>) -> Vec<SessionReport> {
    let mut chains: BTreeMap<String, Chain> = BTreeMap::new();
    for event in events {
        let (Some(tenant), Some(session), Some(seq), Some(id), Some(_)) =
            (event["tenant"].as_str(), event["session_id"].as_str(), event["seq"].as_i64(), event["event_id"].as_str(), event["prev_hash"].as_str())
        else {
            let key = format!("{}:{}", event["tenant"].as_str().unwrap_or("?"), event["session_id"].as_str().unwrap_or("?"));
            let seq = event["seq"].as_i64().unwrap_or(-1);
            chains.entry(key).or_default().problems.push(Problem { seq, kind: ProblemKind::Altered, detail: "event lacks a chain field".into() });
            continue;
        };
        let chain = chains.entry(format!("{tenant}:{session}")).or_default();
        let hash = event_hash(&event);
        match chain.by_id.get(id) {
            Some(seen) if *seen == hash => {
                chain.redelivered += 1;
                continue;
            }
            Some(_) => {
                chain.problems.push(Problem { seq, kind: ProblemKind::Altered, detail: format!("event_id {id} seen twice with different content") });
                continue;
            }
            None => {}
        }
        chain.by_id.insert(id.to_owned(), hash.clone());
        if let Some(other) = chain.by_seq.get(&seq) {
            let detail = format!("events {} and {id} both claim this seq", other.event_id);
            chain.problems.push(Problem { seq, kind: ProblemKind::Duplicated, detail });
            continue;
        }
        if seq < chain.max_seq {
            chain.problems.push(Problem { seq, kind: ProblemKind::Reordered, detail: format!("arrived after seq {}", chain.max_seq) });
        }
        chain.max_seq = chain.max_seq.max(seq);
        let prev_hash = event["prev_hash"].as_str().unwrap_or_default().to_owned();
        chain.by_seq.insert(seq, Link { event_id: id.to_owned(), prev_hash, hash });
    }
    for chain in checkpointed.keys() {
        chains.entry(chain.clone()).or_default();
    }
    chains
        .into_iter()
        .map(|(session, chain)| {
            let head = checkpointed.get(&session);
            report(session, chain, head)
        })
        .collect()
}

fn report(session: String, mut chain: Chain, checkpointed: Option<&(i64, String)>) -> SessionReport {
    if let Some((seq, hash)) = checkpointed {
        let (seq, last) = (*seq, chain.max_seq);
        if chain.by_seq.is_empty() {
            chain.problems.push(Problem {
                seq,
                kind: ProblemKind::Deleted,
                detail: format!("a signed checkpoint covers {seq} events of this session; none is left"),
            });
        } else if last < seq {
            chain.problems.push(Problem {
                seq,
                kind: ProblemKind::Truncated,
                detail: format!("a signed checkpoint covers {seq} events; the last left is seq {last}"),
            });
        } else if chain.by_seq.get(&seq).is_some_and(|link| &link.hash != hash) {
            chain.problems.push(Problem { seq, kind: ProblemKind::Forged, detail: "this event is not the one the signed checkpoint covers".into() });
        }
    }
    for seq in 1..=chain.max_seq {
        let Some(link) = chain.by_seq.get(&seq) else {
            chain.problems.push(Problem { seq, kind: ProblemKind::Missing, detail: "no event with this seq".into() });
            continue;
        };
        if seq == 1 {
            if link.prev_hash != ZERO_HASH {
                chain.problems.push(Problem { seq, kind: ProblemKind::Altered, detail: "first event's prev_hash is not the zero hash".into() });
            }
            continue;
        }
        if let Some(previous) = chain.by_seq.get(&(seq - 1)) {
            if previous.hash != link.prev_hash {
                chain.problems.push(Problem {
                    seq: seq - 1,
                    kind: ProblemKind::Altered,
                    detail: format!("its hash does not match the prev_hash of seq {seq}"),
                });
            }
        }
    }
    chain.problems.sort_by_key(|p| p.seq);
    SessionReport {
        session,
        events: chain.by_seq.len(),
        redelivered: chain.redelivered,
        status: if chain.problems.is_empty() { "intact" } else { "broken" },
        problems: chain.problems,
    }
}

/// Reads every record of `topic` (all partitions, from offset 0 to the high watermark).
#[cfg(feature = "kafka")]
pub async fn consume(brokers: &[String], topic: &str, deadline: std::time::Duration) -> Result<Vec<Value>, String> {
    use rskafka::client::partition::UnknownTopicHandling;
    let client = super::kafka::connect(brokers, deadline).await.map_err(|e| e.to_string())?;
    let topics = client.list_topics().await.map_err(|e| e.to_string())?;
    let partitions = topics.into_iter().find(|t| t.name == topic).ok_or_else(|| format!("topic {topic} does not exist"))?.partitions;
    let mut values = Vec::new();
    for partition in partitions {
        let pc = client.partition_client(topic, partition, UnknownTopicHandling::Error).await.map_err(|e| e.to_string())?;
        let mut offset = 0;
        loop {
            let (records, high_watermark) = pc.fetch_records(offset, 1..10_000_000, 50).await.map_err(|e| e.to_string())?;
            for r in &records {
                let value = r.record.value.as_deref().and_then(|v| serde_json::from_slice(v).ok()).unwrap_or(Value::Null);
                values.push(value);
                offset = r.offset + 1;
            }
            if offset >= high_watermark || records.is_empty() {
                break;
            }
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn chain(n: i64) -> Vec<Value> {
        let mut prev = ZERO_HASH.to_owned();
        (1..=n)
            .map(|seq| {
                let e = json!({ "tenant": "t", "session_id": "s", "seq": seq, "event_id": format!("e{seq}"), "prev_hash": prev, "data": {} });
                prev = event_hash(&e);
                e
            })
            .collect()
    }

    fn kinds(events: Vec<Value>) -> Vec<(i64, ProblemKind)> {
        verify(events).remove(0).problems.iter().map(|p| (p.seq, p.kind)).collect()
    }

    #[test]
    fn an_untouched_chain_is_intact_even_with_redeliveries() {
        let mut events = chain(4);
        events.push(events[1].clone());
        let report = verify(events).remove(0);
        assert_eq!((report.status, report.events, report.redelivered), ("intact", 4, 1));
    }

    #[test]
    fn a_removed_event_is_missing() {
        let mut events = chain(4);
        events.remove(2);
        assert_eq!(kinds(events), [(3, ProblemKind::Missing)]);
    }

    #[test]
    fn an_altered_event_breaks_the_next_link() {
        let mut events = chain(4);
        events[1]["data"] = json!({ "forged": true });
        assert_eq!(kinds(events), [(2, ProblemKind::Altered)]);
    }

    #[test]
    fn swapped_events_are_reordered() {
        let mut events = chain(4);
        events.swap(1, 2);
        assert_eq!(kinds(events), [(2, ProblemKind::Reordered)]);
    }

    fn against_checkpoint(events: Vec<Value>, seq: i64, hash: String) -> Vec<(i64, ProblemKind)> {
        let checkpointed = BTreeMap::from([("t:s".to_owned(), (seq, hash))]);
        verify_against(events, &checkpointed).remove(0).problems.iter().map(|p| (p.seq, p.kind)).collect()
    }

    #[test]
    fn what_the_chain_alone_cannot_show_a_signed_checkpoint_does() {
        let events = chain(4);
        let head = event_hash(&events[3]);
        assert_eq!(against_checkpoint(events.clone(), 4, head.clone()), [], "untouched");
        assert_eq!(against_checkpoint(events[..3].to_vec(), 4, head.clone()), [(4, ProblemKind::Truncated)], "the last event removed");
        assert_eq!(against_checkpoint(Vec::new(), 4, head.clone()), [(4, ProblemKind::Deleted)], "the session removed");
        let mut forged = events.clone();
        forged[3]["data"] = json!({ "forged": true });
        assert_eq!(kinds(forged.clone()), [], "well chained: the chain alone sees nothing");
        assert_eq!(against_checkpoint(forged, 4, head), [(4, ProblemKind::Forged)]);
    }

    #[test]
    fn a_second_event_with_the_same_seq_is_duplicated() {
        let mut events = chain(3);
        let mut forged = events[2].clone();
        forged["event_id"] = json!("other");
        events.push(forged);
        assert_eq!(kinds(events), [(3, ProblemKind::Duplicated)]);
    }
}
