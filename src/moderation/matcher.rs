//! The compiled constitution: one Aho-Corasick automaton over every category's
//! normalised phrases, one `RegexSet` over the input-only patterns, and the
//! input check built on them.

use std::ops::ControlFlow;
use std::sync::Arc;

use regex::RegexSet;

use super::normalize::{fold, normalize, normalize_phrase};
use super::phrases::PhraseIndex;
use super::semantic::Semantic;
use super::sentences::SentenceBuffer;
use super::window::OutputGuard;
use super::{Finding, Hit, Layer, ModerationError};
use crate::policy::constitution::Constitution;

/// [`Semantic::judge`] (requests) or [`Semantic::judge_output`] (answers).
type JudgeFn = fn(&Semantic, &str) -> Result<Option<Finding>, super::SemanticError>;

/// Input longer than this (bytes, all messages) is moderated on a blocking thread.
const INLINE_BYTES: usize = 4096;

/// Default of `moderation.output_window_chars`.
pub const DEFAULT_OUTPUT_WINDOW: usize = 400;

/// Outcome of a moderation check.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing matched.
    Allow,
    /// Every distinct category hit, in constitution order.
    Refuse(Vec<Hit>),
}

/// Input and output moderation under one constitution. Build once and share
/// (it is `Send + Sync`; a clone shares the phrase index, the patterns and the semantic layer).
#[derive(Debug, Clone)]
pub struct Moderator {
    phrases: Arc<PhraseIndex>,
    patterns: RegexSet,
    /// `patterns` index → category index.
    pattern_category: Vec<usize>,
    semantic: Semantic,
    /// Longest stretch of streamed output between two semantic checks, in chars.
    output_window_chars: usize,
}

impl Moderator {
    /// The phrase lexicon alone (`moderation.semantic = "off"`).
    pub fn new(constitution: &Constitution) -> Result<Self, ModerationError> {
        Self::with_semantic(constitution, Semantic::Off, DEFAULT_OUTPUT_WINDOW)
    }

    /// Compiles the constitution's phrases and patterns (validating it first)
    /// and judges with `semantic` too; streamed output is judged at sentence
    /// ends, at least every `output_window_chars`.
    pub fn with_semantic(constitution: &Constitution, semantic: Semantic, output_window_chars: usize) -> Result<Self, ModerationError> {
        constitution.validate()?;
        let mut phrases = Vec::new();
        let mut phrase_category = Vec::new();
        let mut patterns = Vec::new();
        let mut pattern_category = Vec::new();
        for (i, rule) in constitution.categories.iter().enumerate() {
            for phrase in &rule.phrases {
                phrases.push(normalize_phrase(phrase));
                phrase_category.push(i);
            }
            for pattern in &rule.patterns {
                patterns.push(pattern.as_str());
                pattern_category.push(i);
            }
        }
        let hits = constitution
            .categories
            .iter()
            .map(|r| Hit { code: r.code.clone(), category: r.name.clone(), message: r.message.clone(), layer: Layer::Lexicon, score: None })
            .collect();
        let index = PhraseIndex::new(&phrases, phrase_category, hits)?;
        Ok(Self { phrases: Arc::new(index), patterns: RegexSet::new(patterns)?, pattern_category, semantic, output_window_chars: output_window_chars.max(1) })
    }

    /// Checks a user input: phrases (one automaton pass) over the normalised
    /// text, patterns (`RegexSet` passes) over the folded and normalised text.
    pub fn check_input(&self, text: &str) -> Decision {
        self.check_normalized(text, &normalize(text))
    }

    /// [`Moderator::check_input`] with the text's normalised form already made.
    fn check_normalized(&self, text: &str, normalized: &str) -> Decision {
        let mut matched = vec![false; self.phrases.hits.len()];
        let mut mark = |category: Option<usize>| {
            if let Some(slot) = category.and_then(|i| matched.get_mut(i)) {
                *slot = true;
            }
        };
        for found in self.phrases.automaton.find_overlapping_iter(normalized) {
            mark(self.phrases.phrase_category.get(found.pattern().as_usize()).copied());
        }
        // Patterns see both forms: the folded one keeps digits and symbols as
        // written (card numbers, e-mail addresses), the full one reads disguises.
        let folded = fold(text);
        for form in [folded.as_str(), normalized] {
            for i in self.patterns.matches(form).iter() {
                mark(self.pattern_category.get(i).copied());
            }
        }
        let hits: Vec<Hit> = matched.iter().enumerate().filter(|(_, hit)| **hit).filter_map(|(i, _)| self.phrases.hit(Some(i))).collect();
        if hits.is_empty() {
            Decision::Allow
        } else {
            Decision::Refuse(hits)
        }
    }

    /// Checks every caller-supplied message of a turn, each on its own and
    /// all joined, so a phrase split across messages is found too.
    pub fn check_messages(&self, messages: &[&str]) -> Decision {
        self.check_forms(&judged_forms(messages.iter().map(|m| (*m).to_owned()).collect()))
    }

    /// The lexicon's decision over (text, normalised text) pairs, hits in constitution order.
    fn check_forms(&self, forms: &[(String, String)]) -> Decision {
        let mut hits: Vec<Hit> = Vec::new();
        for decision in forms.iter().map(|(text, normalized)| self.check_normalized(text, normalized)) {
            if let Decision::Refuse(found) = decision {
                hits.extend(found);
            }
        }
        let order = |hit: &Hit| self.phrases.hits.iter().position(|h| h.code == hit.code);
        hits.sort_by_key(order);
        hits.dedup_by(|a, b| a.code == b.code);
        if hits.is_empty() {
            Decision::Allow
        } else {
            Decision::Refuse(hits)
        }
    }

    /// Judges every caller-supplied message of a turn with every layer: the
    /// lexicon ([`Moderator::check_messages`]), then, if it allowed them, the
    /// semantic layer on each message and on all of them joined (on a
    /// blocking thread: it is CPU work).
    pub async fn judge_messages(&self, messages: Vec<String>) -> Result<Decision, ModerationError> {
        if messages.iter().map(String::len).sum::<usize>() > INLINE_BYTES {
            // Long input (normalisation can multiply it): every layer on a blocking thread, so the
            // async workers that stream everyone's turns never wait on one caller's text.
            let this = self.clone();
            let judged = tokio::task::spawn_blocking(move || this.judge_messages_now(messages)).await;
            return judged.map_err(|e| ModerationError::Worker(e.to_string()))?;
        }
        match self.lexicon_first(messages) {
            ControlFlow::Break(decision) => Ok(decision),
            ControlFlow::Continue(pieces) => Ok(self.decision(self.judge_blocking(pieces, Semantic::judge).await?)),
        }
    }

    /// [`Self::judge_messages`] on this thread.
    fn judge_messages_now(&self, messages: Vec<String>) -> Result<Decision, ModerationError> {
        match self.lexicon_first(messages) {
            ControlFlow::Break(decision) => Ok(decision),
            ControlFlow::Continue(pieces) => Ok(self.decision(first_refused(&self.semantic, &pieces, Semantic::judge)?)),
        }
    }

    /// Normalises each text once, for both layers: the lexicon's refusal (or its allowance when
    /// the semantic layer is off), else the normalised pieces the semantic layer is to judge.
    fn lexicon_first(&self, messages: Vec<String>) -> ControlFlow<Decision, Vec<String>> {
        let forms = judged_forms(messages);
        let decision = self.check_forms(&forms);
        if matches!(decision, Decision::Refuse(_)) || !self.semantic.is_on() {
            return ControlFlow::Break(decision);
        }
        ControlFlow::Continue(forms.into_iter().map(|(_, normalized)| normalized).collect())
    }

    /// The decision on the semantic layer's first refusal, if any.
    fn decision(&self, found: Option<Finding>) -> Decision {
        self.hit_of(found).map_or(Decision::Allow, |hit| Decision::Refuse(vec![hit]))
    }

    /// The category's hit, as the semantic layer found it.
    fn hit_of(&self, found: Option<Finding>) -> Option<Hit> {
        let found = found?;
        let hit = self.phrases.hit(Some(found.category))?;
        Some(Hit { layer: found.layer, score: Some(found.score), ..hit })
    }

    /// Judges pieces of a streamed answer with the semantic layer (the
    /// lexicon judges output through the [`OutputGuard`]).
    pub async fn judge_output(&self, pieces: Vec<String>) -> Result<Option<Hit>, ModerationError> {
        let found = self.judge_blocking(pieces.iter().map(|p| normalize(p)).collect(), Semantic::judge_output).await?;
        Ok(self.hit_of(found))
    }

    /// The first refused category among `pieces` (already normalised).
    async fn judge_blocking(&self, pieces: Vec<String>, judge: JudgeFn) -> Result<Option<Finding>, ModerationError> {
        let semantic = self.semantic.clone();
        let judged = tokio::task::spawn_blocking(move || first_refused(&semantic, &pieces, judge)).await;
        judged.map_err(|e| ModerationError::Worker(e.to_string()))?
    }

    /// Before judging many past turns at once (the constitution dry run):
    /// runs the semantic layer's model, in bulk, over what it will judge of
    /// these turns — each turn's messages as [`Moderator::judge_messages`]
    /// forms them (unless the lexicon refuses them) and each answer's pieces
    /// as [`Moderator::output_sentences`] cuts them — and keeps the results in
    /// its cache. Decisions are unchanged; CPU work for a blocking thread.
    pub fn prefetch(&self, turns: &[(Vec<String>, &str)]) -> Result<usize, ModerationError> {
        if !self.semantic.is_on() {
            return Ok(0);
        }
        let (mut inputs, mut pieces) = (Vec::new(), Vec::new());
        for (messages, answer) in turns {
            let forms = judged_forms(messages.clone());
            if matches!(self.check_forms(&forms), Decision::Allow) {
                inputs.extend(forms.into_iter().map(|(_, normalized)| normalized));
            }
            let mut sentences = SentenceBuffer::new(self.output_window_chars);
            pieces.extend(sentences.push(answer).into_iter().chain(sentences.finish()).map(|p| normalize(&p)));
        }
        Ok(self.semantic.prefetch(&inputs, &pieces)?)
    }

    /// A fresh guard for one streamed answer (phrases only).
    pub fn output_guard(&self) -> OutputGuard {
        OutputGuard::new(Arc::clone(&self.phrases))
    }

    /// Where a streamed answer is cut into pieces for [`Moderator::judge_output`]
    /// (`None` when the semantic layer is off).
    pub fn output_sentences(&self) -> Option<SentenceBuffer> {
        self.semantic.is_on().then(|| self.sentence_buffer())
    }

    /// A buffer cutting the answer into the pieces judged after the lexicon
    /// (by the semantic layer, or by the operator's guard without it).
    pub fn sentence_buffer(&self) -> SentenceBuffer {
        SentenceBuffer::new(self.output_window_chars)
    }

    /// Length of the longest phrase, in normalised chars.
    pub fn longest_phrase_chars(&self) -> usize {
        self.phrases.longest_chars()
    }
}

/// What a turn's messages are judged as: each message, and all of them
/// joined when there are several, each with its normalised form.
/// The first category `judge` refuses among `pieces` (already normalised).
fn first_refused(semantic: &Semantic, pieces: &[String], judge: JudgeFn) -> Result<Option<Finding>, ModerationError> {
    for piece in pieces {
        if let Some(found) = judge(semantic, piece)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

fn judged_forms(messages: Vec<String>) -> Vec<(String, String)> {
    let joined = (messages.len() > 1).then(|| messages.join("\n"));
    messages
        .into_iter()
        .chain(joined)
        .map(|text| {
            let normalized = normalize(&text);
            (text, normalized)
        })
        .collect()
}
