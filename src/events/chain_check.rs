//! One session's chain checked by the logic of `steward audit verify`
//! ([`super::audit::verify_against`]): its events as this database's outbox
//! holds them, against the newest signed checkpoint that covers the chain.

use std::collections::BTreeMap;

use ed25519_dalek::VerifyingKey;
use serde_json::Value;

use super::audit::{verify_against, ProblemKind, SessionReport};
use super::checkpoint::verified;
use super::OutboxStore;

/// How many of the newest checkpoint records are searched for the chain's head.
const CHECKPOINTS_SEARCHED: i64 = 500;

/// The verdict on a chain, in the words an auditor reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainState {
    /// Every link holds, and the chain reaches the head a checkpoint signed (if one did).
    Intact,
    /// Events a signed checkpoint covers are gone from the end (or the whole chain is).
    Truncated,
    /// A link is broken: an event changed, missing inside the chain, or not the one signed.
    Altered,
}

impl ChainState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Intact => "intact",
            Self::Truncated => "truncated",
            Self::Altered => "altered",
        }
    }
}

/// What checking a chain found.
#[derive(Debug)]
pub struct ChainCheck {
    pub state: ChainState,
    pub report: SessionReport,
    /// The signed checkpoint the chain was held against: when it was made and the `seq` it signed.
    pub checkpoint: Option<(String, i64)>,
    /// Why a checkpoint naming the chain was not used (its signature is not the configured key's).
    pub checkpoint_problem: Option<String>,
}

/// Checks the chain `tenant:session` of `conversation_topic`; `key` is the
/// checkpoint key's public half (`None`: no checkpoints are signed here).
pub async fn check_session(
    outbox: &OutboxStore,
    conversation_topic: &str,
    checkpoint_topic: &str,
    tenant: &str,
    session: &str,
    key: Option<&VerifyingKey>,
) -> Result<ChainCheck, sqlx::Error> {
    let chain = format!("{tenant}:{session}");
    let events: Vec<Value> =
        outbox.tail(conversation_topic, Some(session), 0, i64::MAX).await?.into_iter().filter_map(|(_, payload)| serde_json::from_str(&payload).ok()).collect();
    let (mut checkpointed, mut checkpoint, mut checkpoint_problem) = (BTreeMap::new(), None, None);
    if let Some(key) = key {
        for (_, payload) in outbox.newest(checkpoint_topic, CHECKPOINTS_SEARCHED).await? {
            let Ok(record) = serde_json::from_str::<Value>(&payload) else { continue };
            let names_chain = record["heads"].as_array().is_some_and(|heads| heads.iter().any(|h| h["chain"] == chain.as_str()));
            if record["topic"] != conversation_topic || !names_chain {
                continue;
            }
            match verified(&record, key) {
                Ok(heads) => {
                    if let Some(head) = heads.into_iter().find(|h| h.chain == chain) {
                        checkpoint = Some((record["created_at"].as_str().unwrap_or_default().to_owned(), head.seq));
                        checkpointed.insert(chain.clone(), head);
                    }
                }
                Err(problem) => checkpoint_problem = Some(problem),
            }
            break;
        }
    }
    let report = verify_against(events, checkpointed).into_iter().find(|r| r.session == chain).unwrap_or_else(|| SessionReport {
        session: chain.clone(),
        from_seq: 1,
        events: 0,
        redelivered: 0,
        status: "intact",
        problems: Vec::new(),
    });
    let state = if report.problems.iter().any(|p| !matches!(p.kind, ProblemKind::Truncated | ProblemKind::Deleted)) || checkpoint_problem.is_some() {
        ChainState::Altered
    } else if report.problems.is_empty() {
        ChainState::Intact
    } else {
        ChainState::Truncated
    };
    Ok(ChainCheck { state, report, checkpoint, checkpoint_problem })
}
