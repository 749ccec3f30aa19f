//! Streaming output moderation with a bounded hold-back window.
//!
//! The guard keeps `held`, the raw model output received but not yet sent.
//! On every chunk it normalises `held` (see [`super::normalize`], with its map
//! back to raw byte offsets) and scans it with the phrase automaton. Without a
//! match it releases a raw prefix, ending at a *safe cut* (a place where
//! normalising the two parts separately gives the same text), and keeps:
//!
//! * the *provisional tail*: the open last normalisation segment (a following
//!   combining mark could still change it), the last word (it may grow, and
//!   a digit in it may turn out to be leetspeak) and a spelled-out word that
//!   may go on (`k.i.l` before `.l`); and
//! * before it, the longest run of final normalised chars that is a proper
//!   prefix of some phrase (at most `L - 1` chars, `L` being the longest
//!   phrase; usually none or a few).
//!
//! Why nothing released can ever belong to a match: every char before the
//! tail is final and has been scanned, so a future match must contain a char
//! at or after the tail's first normalised index `s`. If it starts at `i < s`,
//! the final chars `[i, s)` already spell the beginning of its phrase, i.e.
//! they are a proper prefix of a phrase; the release stops at a cut at or
//! before the smallest such `i`. So ordinary text streams about one word
//! behind the model, and only text that could be the start of a phrase waits.

use std::sync::Arc;

use super::normalize::{normalize_mapped, Cut};
use super::phrases::PhraseIndex;
use super::Hit;

/// Held text beyond which a cut is forced (see `OutputGuard::forced_cut`).
const MAX_HELD_BYTES: usize = 2048;
/// What a forced cut keeps at least: more than a 48-char phrase can take (and
/// four bytes for each char of the longest phrase when that is more).
const FORCED_KEEP_BYTES: usize = 256;

/// One step of the output guard.
#[derive(Debug, Clone, PartialEq)]
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
        // Release up to the last safe cut before both the provisional tail and
        // any final text that could still grow into a phrase.
        let closed = mapped.text.char_indices().nth(mapped.open.index).map_or(mapped.text.len(), |(i, _)| i);
        let pending = self.index.pending_start(&mapped.text[..closed]);
        let cut = mapped.cuts.iter().rev().find(|c| c.index <= pending && c.raw <= mapped.open.raw).filter(|c| c.raw > 0);
        let Some(Cut { index: released_chars, raw: cut_byte }) = cut.copied().or_else(|| self.forced_cut(&mapped)) else {
            return GuardStep::Release(String::new());
        };
        // The last released normalised char carries the whitespace state.
        if let Some(last) = released_chars.checked_sub(1).and_then(|i| mapped.chars.get(i)) {
            self.after_space = last.ch == ' ';
        }
        let rest = self.held.split_off(cut_byte);
        GuardStep::Release(std::mem::replace(&mut self.held, rest))
    }

    /// A cut for text that never offers a safe one (one endless word, an
    /// endless spelled-out run), so the held text stays bounded: at a segment
    /// start that keeps the last [`FORCED_KEEP_BYTES`]. No phrase can cross it:
    /// the whole held text was just scanned, and anything that ends after it
    /// and starts before the cut would be longer than the longest phrase.
    fn forced_cut(&self, mapped: &super::normalize::Mapped) -> Option<Cut> {
        let keep = FORCED_KEEP_BYTES.max(4 * (self.index.longest_chars() + 1));
        let limit = self.held.len().checked_sub(keep).filter(|_| self.held.len() > MAX_HELD_BYTES.max(2 * keep))?;
        let last = mapped.chars.partition_point(|c| c.raw_start <= limit).checked_sub(1)?;
        let raw = mapped.chars.get(last)?.raw_start;
        let index = mapped.chars.partition_point(|c| c.raw_start < raw);
        (raw > 0).then_some(Cut { index, raw })
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
