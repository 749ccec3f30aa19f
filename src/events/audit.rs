//! `steward audit verify`: reads a chained topic back from Kafka —
//! `conversation.events`, or an audit topic — and checks every chain (a
//! session's events, or an audit topic's records of one key): `seq` from 1
//! without gaps, each `prev_hash` equal to the SHA-256 of the previous
//! event's canonical form — reporting missing, duplicated, reordered and
//! altered events. Identical redeliveries (same `event_id`, same bytes) are
//! expected under at-least-once delivery and only counted. Given the heads of
//! signed checkpoints ([`super::checkpoint`]), it also finds a chain whose
//! last events were removed (`truncated`), one deleted whole (`deleted`), and
//! a well-chained event that is not the one checkpointed (`forged`).
//!
//! It reads in one pass and keeps, per chain, only the last [`WINDOW`]·2
//! links, so its memory grows with the number of chains, not of events. When
//! retention has deleted a partition's oldest records, the chains there are
//! checked from their first retained event, and a checkpoint head older than
//! the retained records is outside the window it verified (which it reports).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use super::checkpoint::Head;
use super::model::{event_hash, ZERO_HASH};

/// How many events behind the newest of its chain an event may arrive and
/// still be placed (reordered) rather than reported missing; twice as many
/// are kept to recognise a redelivered copy. A relay that crashes
/// republishes at most one batch (`outbox.batch_size`, 500 by default).
pub const WINDOW: i64 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProblemKind {
    Missing,
    Duplicated,
    Reordered,
    Altered,
    /// Fewer events than a signed checkpoint covers.
    Truncated,
    /// No event left of a chain a signed checkpoint covers.
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

/// The verdict on one chain (`tenant:session_id`, or an audit record key).
#[derive(Debug, Clone, Serialize)]
pub struct SessionReport {
    pub session: String,
    /// The first `seq` checked: 1, unless retention took the chain's start.
    pub from_seq: i64,
    pub events: usize,
    pub redelivered: usize,
    pub status: &'static str,
    pub problems: Vec<Problem>,
}

/// What a verification covered.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Window {
    /// False when retention has deleted the oldest records of a partition.
    pub complete: bool,
    /// The time (ms) of the newest first-retained record among trimmed
    /// partitions: a checkpoint head written before it is outside the window.
    pub retained_from_ms: Option<i64>,
    /// Each partition's offsets read, `[from, to)`.
    pub partitions: Vec<PartitionRange>,
    /// Checkpointed chains left unchecked because retention took their events.
    pub outside: usize,
    /// When the earliest signed checkpoint still retained was made.
    pub earliest_checkpoint: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionRange {
    pub partition: i32,
    pub from_offset: i64,
    pub to_offset: i64,
}

/// One accepted event of a chain.
struct Link {
    event_id: String,
    prev_hash: String,
    hash: String,
}

struct Chain {
    /// The first seq checked.
    from: i64,
    /// The last links accepted (at most 2·[`WINDOW`]).
    links: BTreeMap<i64, Link>,
    max_seq: i64,
    /// Every seq up to this one has been checked …
    settled: i64,
    /// … and this is the hash of the event there, if it was there.
    settled_hash: Option<String>,
    events: usize,
    redelivered: usize,
    problems: Vec<Problem>,
    /// The last run of missing seqs reported: its problem's index, and its last seq.
    last_missing: Option<(usize, i64)>,
}

impl Chain {
    fn new(from: i64) -> Self {
        let (links, problems) = (BTreeMap::new(), Vec::new());
        Self { from, links, max_seq: 0, settled: from - 1, settled_hash: None, events: 0, redelivered: 0, problems, last_missing: None }
    }

    fn problem(&mut self, seq: i64, kind: ProblemKind, detail: impl Into<String>) {
        self.problems.push(Problem { seq, kind, detail: detail.into() });
    }

    fn push(&mut self, seq: i64, id: &str, prev_hash: &str, hash: String, anchor: Option<&Head>) {
        if let Some(seen) = self.links.get(&seq) {
            match (seen.event_id == id, seen.hash == hash) {
                (true, true) => self.redelivered += 1,
                (true, false) => self.problem(seq, ProblemKind::Altered, format!("event_id {id} seen twice with different content")),
                (false, _) => {
                    let detail = format!("events {} and {id} both claim this seq", seen.event_id);
                    self.problem(seq, ProblemKind::Duplicated, detail);
                }
            }
            return;
        }
        if seq <= self.settled {
            let detail = format!("arrived after seq {}, too far behind to be checked (more than {WINDOW} events)", self.max_seq);
            self.problem(seq, ProblemKind::Reordered, detail);
            return;
        }
        if seq < self.max_seq {
            self.problem(seq, ProblemKind::Reordered, format!("arrived after seq {}", self.max_seq));
        }
        self.links.insert(seq, Link { event_id: id.to_owned(), prev_hash: prev_hash.to_owned(), hash });
        self.events += 1;
        self.max_seq = self.max_seq.max(seq);
        self.settle_to(self.max_seq - WINDOW, anchor);
        if self.links.len() as i64 > 2 * WINDOW {
            self.links = self.links.split_off(&(self.max_seq - 2 * WINDOW));
        }
    }

    /// Settles every seq up to `target`. A run of seqs with no event is one
    /// `missing` problem, settled in one step: a forged event with a huge `seq`
    /// costs what any event costs, not a step per seq it skipped.
    fn settle_to(&mut self, target: i64, anchor: Option<&Head>) {
        while self.settled < target {
            let next = self.settled + 1;
            match self.links.range(next..=target).next().map(|(seq, _)| *seq) {
                Some(seq) if seq == next => self.settle(anchor),
                found => {
                    let last = found.map_or(target, |seq| seq - 1);
                    self.missing(next, last);
                    (self.settled, self.settled_hash) = (last, None);
                }
            }
        }
    }

    /// Reports seqs `from..=to` missing, as one problem with a run just before it.
    fn missing(&mut self, from: i64, to: i64) {
        let index = match self.last_missing {
            Some((index, until)) if until == from - 1 => {
                let problem = &mut self.problems[index];
                problem.detail = format!("no events with seq {} to {to}", problem.seq);
                index
            }
            _ => {
                let detail = if from == to { "no event with this seq".to_owned() } else { format!("no events with seq {from} to {to}") };
                self.problem(from, ProblemKind::Missing, detail);
                self.problems.len() - 1
            }
        };
        self.last_missing = Some((index, to));
    }

    /// Checks the next unsettled seq: there, linked to the one before, and
    /// the event a checkpoint signed if one covers it.
    fn settle(&mut self, anchor: Option<&Head>) {
        let seq = self.settled + 1;
        self.settled = seq;
        let Some(link) = self.links.get(&seq) else {
            // `settle_to` settles runs of absent seqs itself.
            self.settled_hash = None;
            return;
        };
        let (prev_hash, hash) = (link.prev_hash.clone(), link.hash.clone());
        if seq == 1 && prev_hash != ZERO_HASH {
            self.problem(seq, ProblemKind::Altered, "first event's prev_hash is not the zero hash");
        } else if self.settled_hash.as_ref().is_some_and(|previous| *previous != prev_hash) {
            self.problem(seq - 1, ProblemKind::Altered, format!("its hash does not match the prev_hash of seq {seq}"));
        }
        if anchor.is_some_and(|a| a.seq == seq && a.hash != hash) {
            self.problem(seq, ProblemKind::Forged, "this event is not the one the signed checkpoint covers");
        }
        self.settled_hash = Some(hash);
    }
}

/// Checks chains read in one pass, in the order consumers read them (per
/// partition, by offset).
#[derive(Default)]
pub struct Verifier {
    chains: BTreeMap<String, Chain>,
    /// chain → the head of its newest signed checkpoint.
    checkpointed: BTreeMap<String, Head>,
    /// Partitions whose oldest records retention deleted.
    trimmed: BTreeSet<i32>,
    /// A trimmed partition waiting for its first record's time.
    awaiting_first: BTreeSet<i32>,
    window: Window,
}

impl Verifier {
    /// A verifier that checks chains against `checkpointed` (chain → newest
    /// signed head), the earliest of those checkpoints made at `earliest_checkpoint`.
    pub fn new(checkpointed: BTreeMap<String, Head>, earliest_checkpoint: Option<String>) -> Self {
        Self { checkpointed, window: Window { complete: true, earliest_checkpoint, ..Window::default() }, ..Self::default() }
    }

    /// A partition is about to be read from `from_offset` (its earliest retained) to `to_offset`.
    pub fn partition(&mut self, partition: i32, from_offset: i64, to_offset: i64) {
        self.window.partitions.push(PartitionRange { partition, from_offset, to_offset });
        if from_offset > 0 {
            self.window.complete = false;
            self.trimmed.insert(partition);
            self.awaiting_first.insert(partition);
        }
    }

    /// A record of `partition`, written at `timestamp_ms`, that is not to be
    /// checked (another tenant's, say): it still tells where retention stopped.
    pub fn skip(&mut self, partition: i32, timestamp_ms: i64) {
        if self.awaiting_first.remove(&partition) {
            self.window.retained_from_ms = Some(self.window.retained_from_ms.map_or(timestamp_ms, |t| t.max(timestamp_ms)));
        }
    }

    /// The next record of `partition`, written at `timestamp_ms`.
    pub fn record(&mut self, partition: i32, timestamp_ms: i64, event: &Value) {
        self.skip(partition, timestamp_ms);
        let (Some(key), Some(seq), Some(id), Some(prev_hash)) =
            (chain_of(event), event["seq"].as_i64(), event["event_id"].as_str(), event["prev_hash"].as_str())
        else {
            let key = chain_of(event).unwrap_or_else(|| "?".into());
            let seq = event["seq"].as_i64().unwrap_or(-1);
            let chain = self.chains.entry(key).or_insert_with(|| Chain::new(1));
            chain.problem(seq, ProblemKind::Altered, "event lacks a chain field");
            return;
        };
        let from = if self.trimmed.contains(&partition) { seq.max(1) } else { 1 };
        let anchor = self.checkpointed.get(&key);
        self.chains.entry(key).or_insert_with(|| Chain::new(from)).push(seq, id, prev_hash, event_hash(event), anchor);
    }

    /// Settles every chain; the reports, chain by chain, and the window verified.
    pub fn finish(mut self) -> (Vec<SessionReport>, Window) {
        for key in self.checkpointed.keys() {
            self.chains.entry(key.clone()).or_insert_with(|| Chain::new(1));
        }
        if !self.awaiting_first.is_empty() {
            // A partition retention emptied: any head written until now may be gone with it.
            self.window.retained_from_ms = Some(crate::db::now_ms());
        }
        let retained_from = self.window.retained_from_ms;
        let mut reports = Vec::with_capacity(self.chains.len());
        for (key, mut chain) in self.chains {
            let anchor = self.checkpointed.get(&key);
            chain.settle_to(chain.max_seq, anchor);
            if let Some(head) = anchor {
                let taken_by_retention = retained_from.is_some_and(|from| head.written_ms < from);
                if chain.events == 0 && taken_by_retention || head.seq < chain.from {
                    self.window.outside += 1;
                } else if chain.events == 0 {
                    let detail = format!("a signed checkpoint covers {} events of this chain; none is left", head.seq);
                    chain.problem(head.seq, ProblemKind::Deleted, detail);
                } else if chain.max_seq < head.seq {
                    let detail = format!("a signed checkpoint covers {} events; the last left is seq {}", head.seq, chain.max_seq);
                    chain.problem(head.seq, ProblemKind::Truncated, detail);
                }
            }
            chain.problems.sort_by_key(|p| p.seq);
            reports.push(SessionReport {
                session: key,
                from_seq: chain.from,
                events: chain.events,
                redelivered: chain.redelivered,
                status: if chain.problems.is_empty() { "intact" } else { "broken" },
                problems: chain.problems,
            });
        }
        (reports, self.window)
    }
}

/// The chain an event belongs to: an audit record names it (`chain`), a
/// conversation event is in its session's (`tenant:session_id`).
fn chain_of(event: &Value) -> Option<String> {
    if let Some(chain) = event["chain"].as_str() {
        return Some(chain.to_owned());
    }
    Some(format!("{}:{}", event["tenant"].as_str()?, event["session_id"].as_str()?))
}

/// Verifies events given in the order consumers read them, all from one
/// untrimmed partition, without checkpoints.
pub fn verify(events: impl IntoIterator<Item = Value>) -> Vec<SessionReport> {
    verify_against(events, BTreeMap::new())
}

/// Verifies events as [`verify`] does, and against `checkpointed`: chain →
/// its newest signed head.
pub fn verify_against(events: impl IntoIterator<Item = Value>, checkpointed: BTreeMap<String, Head>) -> Vec<SessionReport> {
    let mut verifier = Verifier::new(checkpointed, None);
    verifier.partition(0, 0, 0);
    for event in events {
        verifier.record(0, 0, &event);
    }
    verifier.finish().0
}

/// What [`read`] hands over, in order: each partition, then its records.
#[derive(Debug)]
pub enum Item {
    /// A partition is about to be read, from its earliest retained offset to its high watermark.
    Partition { partition: i32, from_offset: i64, to_offset: i64 },
    /// A record's value (JSON; `null` if it is not) and when it was written.
    Record { partition: i32, timestamp_ms: i64, value: Value },
}

/// Reads every retained record of `topic` (all partitions, from the earliest
/// retained offset to the high watermark), handing each to `each` as it is
/// fetched, so nothing but one fetch is held.
#[cfg(feature = "kafka")]
pub async fn read(brokers: &[String], topic: &str, deadline: std::time::Duration, mut each: impl FnMut(Item)) -> Result<(), String> {
    use rskafka::client::partition::{OffsetAt, UnknownTopicHandling};
    let client = super::kafka::connect(brokers, deadline).await.map_err(|e| e.to_string())?;
    let topics = client.list_topics().await.map_err(|e| e.to_string())?;
    let partitions = topics.into_iter().find(|t| t.name == topic).ok_or_else(|| format!("topic {topic} does not exist"))?.partitions;
    for partition in partitions {
        let pc = client.partition_client(topic, partition, UnknownTopicHandling::Error).await.map_err(|e| e.to_string())?;
        let earliest = pc.get_offset(OffsetAt::Earliest).await.map_err(|e| e.to_string())?.max(0);
        let to_offset = pc.get_offset(OffsetAt::Latest).await.map_err(|e| e.to_string())?;
        let mut offset = earliest;
        let mut announced = false;
        while offset < to_offset {
            let (records, _) = pc.fetch_records(offset, 1..10_000_000, 500).await.map_err(|e| e.to_string())?;
            if !announced {
                // Where the partition really starts: its first record, or its end if retention emptied it.
                let from_offset = records.first().map_or(to_offset, |r| r.offset);
                each(Item::Partition { partition, from_offset, to_offset });
                announced = true;
            }
            if records.is_empty() {
                break;
            }
            for r in records {
                offset = r.offset + 1;
                let value = r.record.value.as_deref().and_then(|v| serde_json::from_slice(v).ok()).unwrap_or(Value::Null);
                each(Item::Record { partition, timestamp_ms: r.record.timestamp.timestamp_millis(), value });
            }
        }
        if !announced {
            each(Item::Partition { partition, from_offset: to_offset.max(0), to_offset });
        }
    }
    Ok(())
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
    fn a_forged_event_with_a_huge_seq_is_reported_in_bounded_time() {
        let mut events = chain(3);
        let mut forged = events[2].clone();
        forged["seq"] = json!(i64::MAX - 1);
        events.push(forged);
        events.extend(chain(5).into_iter().skip(3));
        let started = std::time::Instant::now();

        let got = kinds(events);

        assert!(started.elapsed() < std::time::Duration::from_secs(1), "{:?}", started.elapsed());
        // seq 4 and 5 arrive after the forgery (reordered, too far behind), the gap is one problem.
        assert_eq!(got.iter().filter(|(_, kind)| *kind == ProblemKind::Missing).count(), 1, "{got:?}");
        assert!(got.contains(&(4, ProblemKind::Missing)), "{got:?}");
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
        let checkpointed = BTreeMap::from([("t:s".to_owned(), Head { chain: "t:s".into(), seq, hash, written_ms: 0 })]);
        verify_against(events, checkpointed).remove(0).problems.iter().map(|p| (p.seq, p.kind)).collect()
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

    #[test]
    fn audit_records_are_chained_by_the_key_they_name() {
        let mut events = chain(3);
        for e in &mut events {
            let o = e.as_object_mut().unwrap();
            o.remove("session_id");
            o.insert("chain".into(), json!("acme"));
        }
        // Re-chain: the hashes changed with the fields.
        let mut prev = ZERO_HASH.to_owned();
        for e in &mut events {
            e["prev_hash"] = json!(prev);
            prev = event_hash(e);
        }
        let report = verify(events.clone()).remove(0);
        assert_eq!((report.session.as_str(), report.status, report.events), ("acme", "intact", 3));
        events.remove(1);
        assert_eq!(kinds(events), [(2, ProblemKind::Missing)]);
    }

    #[test]
    fn a_long_chain_is_checked_keeping_only_a_window_of_links() {
        let mut events = chain(3 * WINDOW + 10);
        events.swap(2000, 2001);
        let mut verifier = Verifier::new(BTreeMap::new(), None);
        verifier.partition(0, 0, 0);
        let mut most = 0;
        for e in &events {
            verifier.record(0, 0, e);
            most = most.max(verifier.chains["t:s"].links.len());
        }
        assert!(most as i64 <= 2 * WINDOW + 1, "kept {most} links");
        let report = verifier.finish().0.remove(0);
        assert_eq!(report.problems.iter().map(|p| (p.seq, p.kind)).collect::<Vec<_>>(), [(2001, ProblemKind::Reordered)]);
        assert_eq!(report.events as i64, 3 * WINDOW + 10);
    }

    #[test]
    fn an_event_far_behind_its_chain_is_reported_not_placed() {
        let mut events = chain(WINDOW + 20);
        let late = events.remove(3);
        events.push(late);
        let got = kinds(events);
        assert_eq!(got.iter().map(|p| p.1).collect::<Vec<_>>(), [ProblemKind::Missing, ProblemKind::Reordered], "{got:?}");
    }

    #[test]
    fn after_retention_chains_are_checked_from_their_first_retained_event() {
        let old = chain(6);
        let head = |seq: i64, written_ms: i64| Head { chain: "t:s".into(), seq, hash: event_hash(&old[seq as usize - 1]), written_ms };
        let run = |from: usize, checkpointed: Option<Head>| {
            let mut verifier = Verifier::new(checkpointed.into_iter().map(|h| (h.chain.clone(), h)).collect(), None);
            verifier.partition(0, 40, 50);
            let mut other = chain(1).remove(0);
            other["session_id"] = json!("o");
            verifier.record(0, 1_000, &other);
            for e in &old[from..] {
                verifier.record(0, 1_000, e);
            }
            let (reports, window) = verifier.finish();
            (reports.into_iter().find(|r| r.session == "t:s").unwrap(), window)
        };
        let (report, window) = run(3, Some(head(6, 2_000)));
        assert_eq!((report.status, report.from_seq, report.events), ("intact", 4, 3), "{report:?}");
        assert_eq!((window.complete, window.retained_from_ms, window.outside), (false, Some(1_000), 0));

        // A checkpoint of events retention took is outside the window, not a deletion …
        let (report, window) = run(6, Some(head(6, 500)));
        assert_eq!((report.status, window.outside), ("intact", 1), "{report:?}");
        let (report, _) = run(6, Some(head(6, 2_000)));
        assert_eq!(report.problems.iter().map(|p| p.kind).collect::<Vec<_>>(), [ProblemKind::Deleted]);
        // … but one written after the retained records still proves a truncation …
        let (report, _) = run(3, Some(head(6, 2_000)));
        assert!(report.problems.is_empty());
        let mut verifier = Verifier::new(BTreeMap::from([("t:s".to_owned(), head(6, 2_000))]), None);
        verifier.partition(0, 40, 50);
        for e in &old[3..5] {
            verifier.record(0, 1_000, e);
        }
        let kinds: Vec<_> = verifier.finish().0.remove(0).problems.iter().map(|p| p.kind).collect();
        assert_eq!(kinds, [ProblemKind::Truncated]);
        // … and a forgery inside the window.
        let mut forged = old.clone();
        forged[5]["data"] = json!({ "forged": true });
        let mut verifier = Verifier::new(BTreeMap::from([("t:s".to_owned(), head(6, 2_000))]), None);
        verifier.partition(0, 40, 50);
        for e in &forged[3..] {
            verifier.record(0, 1_000, e);
        }
        let kinds: Vec<_> = verifier.finish().0.remove(0).problems.iter().map(|p| p.kind).collect();
        assert_eq!(kinds, [ProblemKind::Forged]);
    }
}
