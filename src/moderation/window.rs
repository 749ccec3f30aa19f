//! Streaming output moderation with a bounded hold-back window.
//!
//! The guard keeps `held`, the raw model output received but not yet sent.
//! On every chunk it normalises `held` (with a map back to raw byte offsets)
//! and scans it with the phrase automaton. Without a match it releases a raw
//! prefix and keeps as the tail:
//!
//! * the *open* last normalisation segment (a following combining mark could
//!   still change it, e.g. `e` + U+0301 → `é`), and
//! * before it, the longest run of final normalised chars that is a proper
//!   prefix of some phrase (at most `L - 1` chars, `L` being the longest
//!   phrase; usually none or a few).
//!
//! Why nothing released can ever belong to a match: every char before the
//! open segment is final and has been scanned, so a future match must contain
//! a char at or after the open segment's first normalised index `s`. If it
//! starts at `i < s`, the final chars `[i, s)` already spell the beginning of
//! its phrase, i.e. they are a proper prefix of a phrase; the release stops at
//! the smallest such `i`. Releases happen at segment starts, which are char
//! boundaries. So ordinary text streams with a lag of about one character,
//! and only text that could be the start of a phrase waits.

use std::sync::Arc;

use super::matcher::{Hit, PhraseIndex};
use super::normalize::normalize_mapped;

/// One step of the output guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardStep {
    /// Text that is safe to send now (may be empty while text is held back).
    Release(String),
    /// A phrase matched: send the refusal and nothing more of the answer.
    Refuse(Hit),
}

/// Moderates one streamed answer. `Send`; create one per answer with
/// [`super::Moderator::output_guard`].
#[derive(Debug)]
pub struct OutputGuard {
    index: Arc<PhraseIndex>,
    /// Raw text received but not yet released.
    held: String,
    /// Whether the normalised text released so far ends in a space, so that
    /// whitespace collapsing continues exactly across a release.
    after_space: bool,
    /// Set once a phrase matched; the guard then refuses for good.
    refused: Option<Hit>,
}

impl OutputGuard {
    pub(super) fn new(index: Arc<PhraseIndex>) -> Self {
        Self { index, held: String::new(), after_space: false, refused: None }
    }

    /// Feed the next chunk of model output; returns text that is now safe to send, or the refusal.
    ///
    /// After a refusal every further call returns the same refusal.
    pub fn push(&mut self, chunk: &str) -> GuardStep {
        if let Some(hit) = &self.refused {
            return GuardStep::Refuse(hit.clone());
        }
        self.held.push_str(chunk);
        let mapped = normalize_mapped(&self.held, self.after_space);
        if let Some(hit) = self.index.first_hit(&mapped.text) {
            self.held.clear();
            self.refused = Some(hit.clone());
            return GuardStep::Refuse(hit);
        }
        let closed_chars = mapped.closed_chars();
        let closed_bytes = mapped.text.char_indices().nth(closed_chars).map_or(mapped.text.len(), |(i, _)| i);
        let cut_char = self.index.pending_start(&mapped.text[..closed_bytes]);
        let cut_byte = mapped.chars.get(cut_char).map_or(mapped.open_segment_start, |c| c.raw_start);
        if cut_byte == 0 || !self.held.is_char_boundary(cut_byte) {
            return GuardStep::Release(String::new());
        }
        // Normalised chars of the released segments are exactly those that
        // start before the cut; the last of them carries the whitespace state.
        let released_chars = mapped.chars.partition_point(|c| c.raw_start < cut_byte);
        if let Some(last) = released_chars.checked_sub(1).and_then(|i| mapped.chars.get(i)) {
            self.after_space = last.ch == ' ';
        }
        let rest = self.held.split_off(cut_byte);
        GuardStep::Release(std::mem::replace(&mut self.held, rest))
    }

    /// End of stream: releases whatever is still held (the held text was already checked).
    ///
    /// Returns an empty string if the guard refused.
    pub fn finish(&mut self) -> String {
        if self.refused.is_some() {
            self.held.clear();
        }
        std::mem::take(&mut self.held)
    }

    /// Whether a phrase has matched.
    pub fn is_refused(&self) -> bool {
        self.refused.is_some()
    }

    /// The raw text currently held back.
    #[cfg(test)]
    pub(super) fn held(&self) -> &str {
        &self.held
    }
}
