//! Input and streaming output moderation under the active constitution.
//!
//! Three layers, each cheaper than the next, all over one canonical form of
//! the text ([`normalize`]: confusables, ignorables, case, leetspeak and
//! spelled-out words undone): the phrase lexicon and patterns
//! ([`Moderator::check_messages`]), then the semantic layer ([`semantic`]).
//! [`Moderator::judge_messages`] runs them over every caller-supplied message
//! of a turn. On the way out, [`Moderator::output_guard`] returns an
//! [`OutputGuard`] that holds back only text that could still become a listed
//! phrase, so the client never receives a character of one, and
//! [`Moderator::output_sentences`] cuts the released answer into the pieces
//! [`Moderator::judge_output`] judges semantically.
//!
//! [`eval`] measures all of it on labelled data; [`cli`] is `steward moderation`.

mod build;
pub mod cli;
pub mod eval;
mod finding;
pub mod guard;
mod matcher;
pub mod normalize;
mod phrases;
pub mod semantic;
mod sentences;
pub mod train;
mod window;

#[cfg(test)]
mod tests;

pub use build::{candidate_moderator, moderator};
pub use finding::{Finding, Hit, Layer};
pub use matcher::{Decision, Moderator, DEFAULT_OUTPUT_WINDOW};
pub use semantic::{Semantic, SemanticError};
pub use sentences::SentenceBuffer;
pub use window::{GuardStep, OutputGuard};

use crate::policy::constitution::ConstitutionError;

/// Why a [`Moderator`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ModerationError {
    /// The constitution breaks a validation rule.
    #[error(transparent)]
    Constitution(#[from] ConstitutionError),
    /// The phrase automaton could not be built.
    #[error("cannot build the phrase automaton: {0}")]
    Phrases(#[from] aho_corasick::BuildError),
    /// The pattern set could not be compiled (e.g. too large).
    #[error("cannot compile the constitution patterns: {0}")]
    Patterns(#[from] regex::Error),
    /// The semantic layer could not load or run.
    #[error(transparent)]
    Semantic(#[from] SemanticError),
    /// The blocking thread running the semantic layer failed.
    #[error("the moderation worker failed: {0}")]
    Worker(String),
}

impl crate::error::ErrorCode for ModerationError {
    /// Moderation that cannot judge is the server's fault; its cause is logged, never sent.
    fn code(&self) -> crate::error::Code {
        crate::error::Code::Internal
    }
}
