//! One constitution's judgement over the shared model: its exemplars embedded
//! by both stages, the scorers fitted on them, and the cascade between them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use super::bank::{Bank, Rule, Scores};
use super::{SemanticError, SemanticModel};
use crate::moderation::normalize::normalize;
use crate::policy::constitution::Constitution;

/// How the cascade's first stage routes a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Allow,
    Refuse(usize),
    Transformer,
}

/// Exemplars as (category index, text) and allowed texts, as a constitution lists them.
#[derive(Debug, Clone, Default)]
pub struct Examples {
    pub harmful: Vec<(usize, String)>,
    pub allowed: Vec<String>,
}

impl Examples {
    pub fn of(constitution: &Constitution) -> Self {
        let mut examples = Self::default();
        for (i, category) in constitution.categories.iter().enumerate() {
            examples.harmful.extend(category.examples.iter().map(|e| (i, e.clone())));
            examples.allowed.extend(category.allowed_examples.iter().cloned());
        }
        examples
    }
}

/// One constitution's exemplars and rule over a shared model.
#[derive(Debug)]
pub struct Classifier {
    model: Arc<SemanticModel>,
    /// Exemplars embedded by the transformer, with the scorer fitted on them.
    bank: Bank,
    /// The same for the distilled static model.
    fast: Bank,
    rule: Rule,
    /// The rule for pieces of streamed answers.
    output: Rule,
    allow_below: f32,
    refuse_from: f32,
}

impl Classifier {
    /// The classifier for `constitution`, built once per process and constitution hash.
    pub fn shared(model: Arc<SemanticModel>, constitution: &Constitution) -> Result<Arc<Self>, SemanticError> {
        static BUILT: OnceLock<Mutex<HashMap<String, Arc<Classifier>>>> = OnceLock::new();
        let key = format!("{}|{:p}", constitution.hash(), Arc::as_ptr(&model));
        let mut built = BUILT.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(classifier) = built.get(&key) {
            return Ok(classifier.clone());
        }
        let s = &constitution.semantic;
        let mut classifier = Self::new(model, &Examples::of(constitution), s.threshold as f32, [s.static_allow_below, s.static_refuse_from])?;
        let min_similarity = s.min_similarity as f32;
        classifier.rule.min_similarity = min_similarity;
        classifier.output = Rule { threshold: s.output_threshold as f32, min_similarity };
        let classifier = Arc::new(classifier);
        built.insert(key, classifier.clone());
        Ok(classifier)
    }

    /// Embeds the examples (normalised like any input) with both models and fits both scorers.
    pub fn new(model: Arc<SemanticModel>, examples: &Examples, threshold: f32, band: [f64; 2]) -> Result<Self, SemanticError> {
        let (mut bank, mut fast) = (Bank::default(), Bank::default());
        let harmful: Vec<String> = examples.harmful.iter().map(|(_, e)| normalize(e)).collect();
        let allowed: Vec<String> = examples.allowed.iter().map(|e| normalize(e)).collect();
        let features = model.embed_all(&[harmful.clone(), allowed.clone()].concat())?;
        let (harmful_features, allowed_features) = features.split_at(harmful.len().min(features.len()));
        for (((category, _), text), v) in examples.harmful.iter().zip(&harmful).zip(harmful_features) {
            bank.add_harmful(*category, v.clone());
            fast.add_harmful(*category, Arc::from(model.embed_static(text)?));
        }
        for (text, v) in allowed.iter().zip(allowed_features) {
            bank.add_allowed(v.clone());
            fast.add_allowed(Arc::from(model.embed_static(text)?));
        }
        bank.fit();
        fast.fit();
        Ok(Self {
            model,
            bank,
            fast,
            rule: Rule { threshold, min_similarity: -1.0 },
            output: Rule { threshold, min_similarity: -1.0 },
            allow_below: band[0] as f32,
            refuse_from: band[1] as f32,
        })
    }

    /// The refused category's index, if this normalised text is refused:
    /// the static stage decides the clear cases, the transformer the rest.
    pub fn judge(&self, normalized: &str) -> Result<Option<usize>, SemanticError> {
        if normalized.trim().is_empty() {
            return Ok(None);
        }
        match self.route(self.fast_scores(normalized)?) {
            Route::Allow => Ok(None),
            Route::Refuse(category) => Ok(Some(category)),
            Route::Transformer => Ok(self.scores(normalized)?.filter(|s| self.rule.refuses(s)).map(|s| s.category)),
        }
    }

    /// The refused category's index, if this normalised piece of a streamed
    /// answer is refused (the transformer alone, at the output threshold).
    pub fn judge_output(&self, normalized: &str) -> Result<Option<usize>, SemanticError> {
        if normalized.trim().is_empty() {
            return Ok(None);
        }
        Ok(self.scores(normalized)?.filter(|s| self.output.refuses(s)).map(|s| s.category))
    }

    /// The cascade's first-stage decision for static scores.
    pub fn route(&self, fast: Option<Scores>) -> Route {
        match fast {
            None => Route::Transformer,
            Some(s) if s.score < self.allow_below => Route::Allow,
            Some(s) if s.score >= self.refuse_from => Route::Refuse(s.category),
            Some(_) => Route::Transformer,
        }
    }

    /// Transformer scores of a normalised text (`None` without examples).
    pub fn scores(&self, normalized: &str) -> Result<Option<Scores>, SemanticError> {
        Ok(self.bank.scores(&self.model.embed(normalized)?))
    }

    /// Static-stage scores of a normalised text.
    pub fn fast_scores(&self, normalized: &str) -> Result<Option<Scores>, SemanticError> {
        Ok(self.fast.scores(&self.model.embed_static(normalized)?))
    }

    pub fn rule(&self) -> Rule {
        self.rule
    }
}
