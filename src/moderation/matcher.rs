//! The compiled constitution: one Aho-Corasick automaton over every category's
//! normalised phrases, one `RegexSet` over the input-only patterns, and the
//! input check built on them.

use std::collections::HashSet;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};
use regex::RegexSet;

use super::normalize::{normalize, normalize_phrase};
use super::window::OutputGuard;
use super::ModerationError;
use crate::policy::constitution::Constitution;

/// Outcome of a moderation check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing matched.
    Allow,
    /// Every distinct category hit, in constitution order.
    Refuse(Vec<Hit>),
}

/// One refusal category that matched.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Hit {
    /// Stable category code, e.g. `S9`.
    pub code: String,
    /// Stable snake_case category name, e.g. `indiscriminate_weapons`.
    pub category: String,
    /// User-facing refusal message.
    pub message: String,
}

/// The phrase automaton, shared by the moderator and every output guard.
#[derive(Debug)]
pub(super) struct PhraseIndex {
    automaton: AhoCorasick,
    /// Automaton pattern id → category index.
    phrase_category: Vec<usize>,
    /// One hit per category, in constitution order.
    hits: Vec<Hit>,
    /// Length of the longest normalised phrase, in chars.
    longest_chars: usize,
    /// Every non-empty proper prefix of every normalised phrase: the text
    /// that could still grow into a match and so must be held back.
    prefixes: HashSet<String>,
}

impl PhraseIndex {
    /// The category of the first phrase match in normalised `text`, if any.
    pub(super) fn first_hit(&self, text: &str) -> Option<Hit> {
        let found = self.automaton.find(text)?;
        self.hit(self.phrase_category.get(found.pattern().as_usize()).copied())
    }

    /// The char index where the longest suffix of `text` that is a proper
    /// prefix of some phrase starts (`text.chars().count()` if there is none):
    /// everything before it can no longer be part of a match.
    pub(super) fn pending_start(&self, text: &str) -> usize {
        let starts: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        let first = starts.len().saturating_sub(self.longest_chars.saturating_sub(1));
        (first..starts.len()).find(|&i| self.prefixes.contains(&text[starts[i]..])).unwrap_or(starts.len())
    }

    fn hit(&self, category: Option<usize>) -> Option<Hit> {
        category.and_then(|i| self.hits.get(i)).cloned()
    }
}

/// Input and output moderation under one constitution. Build once and share
/// (it is `Send + Sync`; clones of the phrase index are reference-counted).
#[derive(Debug)]
pub struct Moderator {
    phrases: Arc<PhraseIndex>,
    patterns: RegexSet,
    /// `patterns` index → category index.
    pattern_category: Vec<usize>,
}

impl Moderator {
    /// Compiles the constitution's phrases and patterns (validating it first).
    pub fn new(constitution: &Constitution) -> Result<Self, ModerationError> {
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
        let longest_chars = phrases.iter().map(|p| p.chars().count()).max().unwrap_or(0);
        let automaton = AhoCorasick::builder().match_kind(MatchKind::Standard).build(&phrases)?;
        let hits = constitution
            .categories
            .iter()
            .map(|r| Hit { code: r.code.clone(), category: r.name.clone(), message: r.message.clone() })
            .collect();
        let prefixes = phrases
            .iter()
            .flat_map(|p| p.char_indices().skip(1).map(move |(end, _)| p[..end].to_owned()))
            .collect();
        let index = PhraseIndex { automaton, phrase_category, hits, longest_chars, prefixes };
        Ok(Self { phrases: Arc::new(index), patterns: RegexSet::new(patterns)?, pattern_category })
    }

    /// Checks a user input: phrases (one automaton pass) and patterns (one
    /// `RegexSet` pass) over the normalised text.
    pub fn check_input(&self, text: &str) -> Decision {
        let normalized = normalize(text);
        let mut matched = vec![false; self.phrases.hits.len()];
        let mut mark = |category: Option<usize>| {
            if let Some(slot) = category.and_then(|i| matched.get_mut(i)) {
                *slot = true;
            }
        };
        for found in self.phrases.automaton.find_overlapping_iter(&normalized) {
            mark(self.phrases.phrase_category.get(found.pattern().as_usize()).copied());
        }
        for i in self.patterns.matches(&normalized).iter() {
            mark(self.pattern_category.get(i).copied());
        }
        let hits: Vec<Hit> = matched
            .iter()
            .enumerate()
            .filter(|(_, hit)| **hit)
            .filter_map(|(i, _)| self.phrases.hit(Some(i)))
            .collect();
        if hits.is_empty() {
            Decision::Allow
        } else {
            Decision::Refuse(hits)
        }
    }

    /// A fresh guard for one streamed answer (phrases only).
    pub fn output_guard(&self) -> OutputGuard {
        OutputGuard::new(Arc::clone(&self.phrases))
    }

    /// Length of the longest phrase, in normalised chars.
    pub fn longest_phrase_chars(&self) -> usize {
        self.phrases.longest_chars
    }
}
