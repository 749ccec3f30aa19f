//! The streamed answer's moderation: the lexicon's output guard, which holds
//! back only text that could still become a listed phrase, the semantic
//! layer's judgement of each finished sentence and, where one is configured,
//! the operator's guard's judgement of the sentences the semantic layer let by.

use std::sync::Arc;

use super::outcome::{Failure, TurnOutcome};
use crate::events::TurnData;
use crate::moderation::guard::{GuardFailure, GuardPolicy, GuardStage};
use crate::moderation::{Decision, GuardStep, Hit, Moderator, OutputGuard, SentenceBuffer};
use crate::policy::Judge;
use crate::telemetry::Metrics;

/// The operator's guard over one turn's answer.
struct AnswerCheck {
    policy: GuardPolicy,
    judge: Arc<Judge>,
    tenant: String,
    /// `turn.guard_skipped` is recorded once per turn.
    skipped: bool,
}

pub struct AnswerGuard {
    guard: OutputGuard,
    /// `None` when neither the semantic layer nor a guard judges sentences.
    sentences: Option<SentenceBuffer>,
    /// Whether the semantic layer is on.
    semantic: bool,
    moderator: Moderator,
    metrics: Arc<Metrics>,
    /// `None` without a guard.
    check: Option<AnswerCheck>,
}

/// What judging a piece of the answer decided.
pub enum Judged {
    /// The answer goes on; `note` is an event to record (the guard skipped, failing open).
    Goes { note: Option<TurnData> },
    /// The turn ends here: refused, or failed because the guard gave no decision.
    Ends(TurnOutcome),
}

impl AnswerGuard {
    pub fn new(judge: &Arc<Judge>, policy: &GuardPolicy, tenant: &str, metrics: Arc<Metrics>) -> Self {
        let moderator = &judge.moderator;
        let check = policy.guarded.then(|| AnswerCheck { policy: policy.clone(), judge: judge.clone(), tenant: tenant.to_owned(), skipped: false });
        let from_semantic = moderator.output_sentences();
        let semantic = from_semantic.is_some();
        let sentences = from_semantic.or_else(|| check.is_some().then(|| moderator.sentence_buffer()));
        Self { guard: moderator.output_guard(), sentences, semantic, moderator: Moderator::clone(moderator), metrics, check }
    }

    /// The next piece of the model's answer: the text now safe to send and
    /// the sentences it finished (to judge once it is sent), or the
    /// lexicon's cut.
    pub fn push(&mut self, text: &str) -> Result<(String, Vec<String>), Hit> {
        match self.guard.push(text) {
            GuardStep::Release(safe) => {
                let pieces = self.sentences.as_mut().map(|s| s.push(&safe)).unwrap_or_default();
                Ok((safe, pieces))
            }
            GuardStep::Refuse(hit) => Err(hit),
        }
    }

    /// Starts the answer over (its model server failed before any of it was
    /// released, and another one answers): what was held back is dropped.
    pub fn restart(&mut self) {
        self.guard = self.moderator.output_guard();
        if self.sentences.is_some() {
            self.sentences = Some(self.moderator.sentence_buffer());
        }
    }

    /// The answer ended: the text held back, and its last pieces to judge.
    pub fn end(&mut self) -> (String, Vec<String>) {
        let rest = self.guard.finish();
        let last = self.sentences.as_mut().map(|s| s.push(&rest).into_iter().chain(s.finish()).collect()).unwrap_or_default();
        (rest, last)
    }

    /// Judges a text apart from the streamed answer, whole (a tool call's
    /// arguments, which never reach the app unless allowed): as output — the
    /// lexicon, then its sentences by the semantic layer and the guard — and
    /// also as a request, since a call's arguments are most often one (a
    /// search query, a message to send) that output judgement, made to find
    /// harmful answers, lets by. A failure of the semantic layer lets it go
    /// on, as for the answer.
    pub async fn judge_apart(&mut self, text: &str) -> Judged {
        let started = std::time::Instant::now();
        let as_request = Box::pin(self.moderator.judge_messages(vec![text.to_owned()])).await;
        self.metrics.moderation_check("tool_call", started.elapsed());
        match as_request {
            Ok(Decision::Refuse(hits)) if !hits.is_empty() => return Judged::Ends(TurnOutcome::Refused(hits[0].clone())),
            Ok(_) => {}
            Err(err) => tracing::error!(error = %err, "moderation of a tool call as a request failed; it is judged as output alone"),
        }
        let mut lexicon = self.moderator.output_guard();
        let mut whole = match lexicon.push(text) {
            GuardStep::Release(safe) => safe,
            GuardStep::Refuse(hit) => return Judged::Ends(TurnOutcome::Refused(hit)),
        };
        whole.push_str(&lexicon.finish());
        if self.sentences.is_none() {
            return Judged::Goes { note: None };
        }
        let mut sentences = self.moderator.sentence_buffer();
        let mut pieces = sentences.push(&whole);
        pieces.extend(sentences.finish());
        self.judge(pieces).await
    }

    /// Judges finished pieces of the answer with the semantic layer, then
    /// with the guard. A failure of the semantic layer is logged and lets the
    /// answer go on: the input passed every layer, and the lexicon still
    /// guards the output. The guard's failure follows the tenant's
    /// `on_failure`: the turn fails (`guard_unavailable`) or goes on, said once.
    pub async fn judge(&mut self, pieces: Vec<String>) -> Judged {
        if pieces.is_empty() {
            return Judged::Goes { note: None };
        }
        let for_guard = self.check.is_some().then(|| pieces.clone());
        if self.semantic {
            let started = std::time::Instant::now();
            // Boxed: the judgement's future would otherwise size every running turn's stream.
            let judged = Box::pin(self.moderator.judge_output(pieces)).await;
            self.metrics.moderation_check("output", started.elapsed());
            match judged {
                Ok(Some(hit)) => return Judged::Ends(TurnOutcome::Refused(hit)),
                Ok(None) => {}
                Err(err) => tracing::error!(error = %err, "output moderation failed; the answer goes on under the lexicon alone"),
            }
        }
        let (Some(check), Some(pieces)) = (self.check.as_mut(), for_guard) else { return Judged::Goes { note: None } };
        let asked = std::time::Instant::now();
        let answer = Box::pin(check.policy.guard.judge(&check.judge.constitution, GuardStage::Output, &pieces)).await;
        self.metrics.moderation_check("guard", asked.elapsed());
        match answer {
            Ok(hits) => match hits.into_iter().next() {
                Some(hit) => Judged::Ends(TurnOutcome::Refused(hit)),
                None => Judged::Goes { note: None },
            },
            Err(err) => {
                tracing::warn!(tenant = %check.tenant, error = %err, reason = err.reason(), "the guard gave no decision on the answer");
                match check.policy.failure.of(&check.tenant) {
                    GuardFailure::Closed => Judged::Ends(TurnOutcome::Failed(Failure::Guard)),
                    GuardFailure::Open if std::mem::replace(&mut check.skipped, true) => Judged::Goes { note: None },
                    GuardFailure::Open => {
                        let note = TurnData::guard_skipped("output", check.policy.info(&check.judge.constitution), err.reason());
                        Judged::Goes { note: Some(note) }
                    }
                }
            }
        }
    }
}
