//! Input and streaming output moderation under the active constitution.
//!
//! [`Moderator::check_input`] matches a whole user message (phrases and
//! patterns); [`Moderator::output_guard`] returns an [`OutputGuard`] that
//! moderates a streamed answer chunk by chunk, holding back only as much text
//! as the longest phrase needs, so the client never receives any character of
//! a matched phrase. All matching runs on normalised text (see [`normalize`]).

pub mod cli;
pub mod eval;
mod matcher;
pub mod normalize;
pub mod semantic;
mod sentences;
mod window;

#[cfg(test)]
mod tests;

pub use matcher::{Decision, Hit, Moderator, DEFAULT_OUTPUT_WINDOW};
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
