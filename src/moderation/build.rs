//! A constitution's [`Moderator`], built from the moderation settings: the
//! phrase lexicon, and the semantic layer (its shared model and the
//! classifier the constitution names) when it is on.

use anyhow::Context;

use super::semantic::{Classifier, Exemplars, SemanticModel};
use super::{Moderator, Semantic};
use crate::config::{ModerationSettings, SemanticSwitch};
use crate::policy::Constitution;

/// The moderator with the configured layers; a missing model is an error naming the setting.
pub fn moderator(settings: &ModerationSettings, constitution: &Constitution) -> anyhow::Result<Moderator> {
    build(settings, constitution, Exemplars::Keep)
}

/// The moderator of a candidate constitution that is only tried (a dry run): the same
/// judgement, but nothing of it is written to disk.
pub fn candidate_moderator(settings: &ModerationSettings, constitution: &Constitution) -> anyhow::Result<Moderator> {
    build(settings, constitution, Exemplars::Discard)
}

fn build(m: &ModerationSettings, constitution: &Constitution, exemplars: Exemplars) -> anyhow::Result<Moderator> {
    let semantic = match m.semantic {
        SemanticSwitch::Off => {
            tracing::warn!("moderation.semantic is off: only the phrase lexicon judges");
            Semantic::Off
        }
        SemanticSwitch::On => {
            let started = std::time::Instant::now();
            let model = SemanticModel::shared(&m.model_dir, m.cache_entries)
                .with_context(|| format!("Failed to load the moderation model (moderation.model_dir = {})", m.model_dir.display()))?;
            let classifier = Classifier::shared(model, &m.classifier_dir, constitution, exemplars)
                .with_context(|| format!("Failed to load the constitution's classifier (moderation.classifier_dir = {})", m.classifier_dir.display()))?;
            tracing::info!(model_dir = %m.model_dir.display(), ms = started.elapsed().as_millis() as u64, "semantic moderation ready");
            Semantic::On(classifier)
        }
    };
    Moderator::with_semantic(constitution, semantic, m.output_window_chars).context("Failed to build the moderator")
}
