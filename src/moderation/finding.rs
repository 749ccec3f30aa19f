//! What moderation found: the refused category as the user reads it
//! ([`Hit`]), and which layer decided with what score — recorded with every
//! refusal (`turn.refused`), so an auditor reads not only the category but
//! what found it.

use serde::Serialize;

/// The moderation layer that refused a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// A listed phrase or pattern (after normalisation).
    Lexicon,
    /// The semantic layer's first stage: the distilled static embedding.
    SemanticStatic,
    /// The semantic layer's transformer stage.
    Semantic,
    /// The operator's own guard service (`moderation.guard`).
    Guard,
}

impl Layer {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lexicon => "lexicon",
            Self::SemanticStatic => "semantic_static",
            Self::Semantic => "semantic",
            Self::Guard => "guard",
        }
    }
}

/// One refusal category that matched.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Hit {
    /// Stable category code, e.g. `S9`.
    pub code: String,
    /// Stable snake_case category name, e.g. `indiscriminate_weapons`.
    pub category: String,
    /// User-facing refusal message.
    pub message: String,
    /// The layer that found it.
    pub layer: Layer,
    /// The semantic layer's score (see [`Finding::score`]); none for the lexicon.
    pub score: Option<f32>,
}

/// What the semantic layer found in a refused text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Finding {
    /// The constitution category's index.
    pub category: usize,
    /// The deciding stage's score: with a trained classifier the harmful
    /// probability, with the exemplar rule the linear score.
    pub score: f32,
    pub layer: Layer,
}

impl Finding {
    /// A refusal by the transformer stage.
    pub fn semantic(scores: crate::moderation::semantic::Scores) -> Self {
        Self { category: scores.category, score: scores.score, layer: Layer::Semantic }
    }
}
