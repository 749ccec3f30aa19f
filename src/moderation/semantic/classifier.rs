//! One constitution's judgement over the shared model: its exemplars embedded
//! by both stages, the scorers fitted on them, and the cascade between them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use super::bank::{Bank, Rule, Scores};
use super::{SemanticError, SemanticModel};
use crate::moderation::normalize::normalize;
use crate::policy::constitution::{Constitution, SemanticRule};

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
    /// Every example, normalised: harmful ones first, then allowed ones.
    pub fn texts(&self) -> Vec<String> {
        self.harmful.iter().map(|(_, e)| e).chain(&self.allowed).map(|e| normalize(e)).collect()
    }

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

/// Whether a classifier's embedded examples are written to the model directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exemplars {
    /// Kept (`exemplars-<digest>.bin`), so the next start reads them instead of embedding again.
    Keep,
    /// Embedded in memory only (a candidate that is only tried).
    Discard,
}

impl Classifier {
    /// The classifier for `constitution`, built once per process and
    /// constitution hash while anything holds it (constitutions come and go
    /// with activations: none is kept for good).
    /// `exemplars` says whether the embedded examples are kept on disk for the next build.
    pub fn shared(model: Arc<SemanticModel>, constitution: &Constitution, exemplars: Exemplars) -> Result<Arc<Self>, SemanticError> {
        static BUILT: OnceLock<Mutex<HashMap<String, Weak<Classifier>>>> = OnceLock::new();
        let key = format!("{}|{:p}", constitution.hash(), Arc::as_ptr(&model));
        let built = || BUILT.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(classifier) = built().get(&key).and_then(Weak::upgrade) {
            return Ok(classifier);
        }
        // Embedding and fitting happen outside the lock: one document's fit never holds up another's.
        let examples = Examples::of(constitution);
        if exemplars == Exemplars::Keep {
            model.remember(&examples.texts())?;
        }
        let classifier = Arc::new(Self::new(model, &examples, &constitution.semantic)?);
        let mut built = built();
        built.retain(|_, held| held.strong_count() > 0);
        // Built twice at once: keep the first, so every holder shares one.
        if let Some(first) = built.get(&key).and_then(Weak::upgrade) {
            return Ok(first);
        }
        built.insert(key, Arc::downgrade(&classifier));
        Ok(classifier)
    }

    /// Embeds the examples (normalised like any input) with both models, fits
    /// both scorers, and judges with the constitution's `numbers`.
    pub fn new(model: Arc<SemanticModel>, examples: &Examples, numbers: &SemanticRule) -> Result<Self, SemanticError> {
        let (mut bank, mut fast) = (Bank::default(), Bank::default());
        for (category, example) in &examples.harmful {
            let text = normalize(example);
            bank.add_harmful(*category, model.embed(&text)?);
            fast.add_harmful(*category, Arc::from(model.embed_static(&model.token_ids(&text)?)));
        }
        for example in &examples.allowed {
            let text = normalize(example);
            bank.add_allowed(model.embed(&text)?);
            fast.add_allowed(Arc::from(model.embed_static(&model.token_ids(&text)?)));
        }
        bank.fit();
        fast.fit();
        let min_similarity = numbers.min_similarity as f32;
        Ok(Self {
            model,
            bank,
            fast,
            rule: Rule { threshold: numbers.threshold as f32, min_similarity },
            output: Rule { threshold: numbers.output_threshold as f32, min_similarity },
            allow_below: numbers.static_allow_below as f32,
            refuse_from: numbers.static_refuse_from as f32,
        })
    }

    /// The refused category's index, if this normalised text is refused:
    /// the static stage decides the clear cases, the transformer the rest.
    pub fn judge(&self, normalized: &str) -> Result<Option<usize>, SemanticError> {
        if normalized.trim().is_empty() {
            return Ok(None);
        }
        // Tokenised once, for both stages.
        let ids = self.model.token_ids(normalized)?;
        match self.route(self.fast.scores(&self.model.embed_static(&ids))) {
            Route::Allow => Ok(None),
            Route::Refuse(category) => Ok(Some(category)),
            Route::Transformer => {
                let v = self.model.embed_tokenized(normalized, &ids)?;
                Ok(self.bank.scores(&v).filter(|s| self.rule.refuses(s)).map(|s| s.category))
            }
        }
    }

    /// Bulk judging's warm-up: of these normalised inputs, embeds together
    /// the ones the static stage leaves to the transformer, and of these
    /// normalised answer pieces (all judged by the transformer) every one,
    /// so that judging them next finds each in the cache. Returns how many
    /// texts it embedded; decisions are unchanged.
    pub fn prefetch(&self, inputs: &[String], pieces: &[String]) -> Result<usize, SemanticError> {
        let mut needed: Vec<String> = Vec::with_capacity(inputs.len() + pieces.len());
        for text in inputs.iter().filter(|t| !t.trim().is_empty()) {
            let ids = self.model.token_ids(text)?;
            if self.route(self.fast.scores(&self.model.embed_static(&ids))) == Route::Transformer {
                needed.push(text.clone());
            }
        }
        needed.extend(pieces.iter().filter(|p| !p.trim().is_empty()).cloned());
        self.model.prefetch(&needed)
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
        Ok(self.fast.scores(&self.model.embed_static(&self.model.token_ids(normalized)?)))
    }

    pub fn rule(&self) -> Rule {
        self.rule
    }
}
