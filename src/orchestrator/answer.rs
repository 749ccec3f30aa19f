//! The streamed answer's moderation: the lexicon's output guard, which holds
//! back only text that could still become a listed phrase, and the semantic
//! layer's judgement of each finished sentence.

use std::sync::Arc;

use crate::moderation::{GuardStep, Hit, Moderator, OutputGuard, SentenceBuffer};
use crate::telemetry::Metrics;

pub struct AnswerGuard {
    guard: OutputGuard,
    /// `None` when the semantic layer is off.
    sentences: Option<SentenceBuffer>,
    moderator: Moderator,
    metrics: Arc<Metrics>,
}

impl AnswerGuard {
    pub fn new(moderator: &Moderator, metrics: Arc<Metrics>) -> Self {
        Self { guard: moderator.output_guard(), sentences: moderator.output_sentences(), moderator: moderator.clone(), metrics }
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

    /// The answer ended: the text held back, and its last pieces to judge.
    pub fn end(&mut self) -> (String, Vec<String>) {
        let rest = self.guard.finish();
        let last = self.sentences.as_mut().map(|s| s.push(&rest).into_iter().chain(s.finish()).collect()).unwrap_or_default();
        (rest, last)
    }

    /// Judges finished pieces of the answer with the semantic layer. A
    /// failure of the layer is logged and lets the answer go on: the input
    /// passed every layer, and the lexicon still guards the output.
    pub async fn judge(&self, pieces: Vec<String>) -> Option<Hit> {
        if pieces.is_empty() {
            return None;
        }
        let started = std::time::Instant::now();
        // Boxed: the judgement's future would otherwise size every running turn's stream.
        let judged = Box::pin(self.moderator.judge_output(pieces)).await;
        self.metrics.moderation_check("output", started.elapsed());
        match judged {
            Ok(hit) => hit,
            Err(err) => {
                tracing::error!(error = %err, "output moderation failed; the answer goes on under the lexicon alone");
                None
            }
        }
    }
}
