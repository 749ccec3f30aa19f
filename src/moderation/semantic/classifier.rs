//! One constitution's judgement over the shared model: either the trained
//! classifier it names ([`Head`]) or, without one, its exemplars embedded by
//! both stages with the linear scorers fitted on them; and the cascade
//! between the static stage and the transformer.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use super::bank::{Bank, Rule, Scores};
use super::head::Head;
use super::{SemanticError, SemanticModel};
use crate::moderation::normalize::normalize;
use crate::moderation::{Finding, Layer};
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

/// One constitution's judgement over a shared model.
#[derive(Debug)]
pub struct Classifier {
    model: Arc<SemanticModel>,
    scorer: Scorer,
    allow_below: f32,
    refuse_from: f32,
}

/// What scores a text.
#[derive(Debug)]
enum Scorer {
    /// The linear scorers fitted on the constitution's examples.
    Exemplars {
        /// Exemplars embedded by the transformer, with the scorer fitted on them.
        bank: Bank,
        /// The same for the distilled static model.
        fast: Bank,
        rule: Rule,
        /// The rule for pieces of streamed answers.
        output: Rule,
    },
    /// The trained classifier the constitution names.
    Trained {
        head: Head,
        /// The constitution's category index of each of the head's categories (`None`: not in this constitution).
        to_constitution: Vec<Option<usize>>,
        /// The head's categories this constitution has: a refusal names one of them.
        present: Vec<usize>,
        threshold: f32,
        output_threshold: f32,
    },
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
    /// with activations: none is kept for good). A constitution that names a
    /// trained classifier reads it from `classifiers` (checked against its
    /// digest); otherwise `exemplars` says whether its embedded examples are
    /// kept on disk for the next build.
    pub fn shared(model: Arc<SemanticModel>, classifiers: &Path, constitution: &Constitution, exemplars: Exemplars) -> Result<Arc<Self>, SemanticError> {
        static BUILT: OnceLock<Mutex<HashMap<String, Weak<Classifier>>>> = OnceLock::new();
        let key = format!("{}|{:p}|{}", constitution.hash(), Arc::as_ptr(&model), classifiers.display());
        let built = || BUILT.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(classifier) = built().get(&key).and_then(Weak::upgrade) {
            return Ok(classifier);
        }
        // Embedding and fitting happen outside the lock: one document's fit never holds up another's.
        let classifier = Arc::new(match constitution.semantic.classifier {
            Some(digest) => Self::trained(model, Head::load(classifiers, &digest)?, constitution),
            None => {
                let examples = Examples::of(constitution);
                if exemplars == Exemplars::Keep {
                    model.remember(&examples.texts())?;
                }
                Self::new(model, &examples, &constitution.semantic)?
            }
        });
        let mut built = built();
        built.retain(|_, held| held.strong_count() > 0);
        // Built twice at once: keep the first, so every holder shares one.
        if let Some(first) = built.get(&key).and_then(Weak::upgrade) {
            return Ok(first);
        }
        built.insert(key, Arc::downgrade(&classifier));
        Ok(classifier)
    }

    /// Judges with a trained classifier, at the constitution's numbers.
    pub fn trained(model: Arc<SemanticModel>, head: Head, constitution: &Constitution) -> Self {
        let to_constitution: Vec<Option<usize>> = head.categories.iter().map(|name| constitution.categories.iter().position(|c| c.name == *name)).collect();
        let present = (0..to_constitution.len()).filter(|&i| to_constitution[i].is_some()).collect();
        let numbers = &constitution.semantic;
        Self {
            model,
            scorer: Scorer::Trained { head, to_constitution, present, threshold: numbers.threshold as f32, output_threshold: numbers.output_threshold as f32 },
            allow_below: numbers.static_allow_below as f32,
            refuse_from: numbers.static_refuse_from as f32,
        }
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
            scorer: Scorer::Exemplars {
                bank,
                fast,
                rule: Rule { threshold: numbers.threshold as f32, min_similarity },
                output: Rule { threshold: numbers.output_threshold as f32, min_similarity },
            },
            allow_below: numbers.static_allow_below as f32,
            refuse_from: numbers.static_refuse_from as f32,
        })
    }

    /// What refused this normalised text, if it is refused: the static stage
    /// decides the clear cases, the transformer the rest.
    pub fn judge(&self, normalized: &str) -> Result<Option<Finding>, SemanticError> {
        if normalized.trim().is_empty() {
            return Ok(None);
        }
        // Tokenised once, for both stages.
        let ids = self.model.token_ids(normalized)?;
        let fast = self.static_scores(&ids);
        match self.route(fast) {
            Route::Allow => Ok(None),
            Route::Refuse(category) => Ok(Some(Finding { category, score: fast.map_or(0.0, |s| s.score), layer: Layer::SemanticStatic })),
            Route::Transformer => {
                let v = self.model.embed_tokenized(normalized, &ids)?;
                Ok(self.deep_scores(&v).filter(|s| self.refuses(s, false)).map(Finding::semantic))
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
            if self.route(self.static_scores(&self.model.token_ids(text)?)) == Route::Transformer {
                needed.push(text.clone());
            }
        }
        needed.extend(pieces.iter().filter(|p| !p.trim().is_empty()).cloned());
        self.model.prefetch(&needed)
    }

    /// The refused category's index, if this normalised piece of a streamed
    /// answer is refused (the transformer alone, at the output threshold).
    pub fn judge_output(&self, normalized: &str) -> Result<Option<Finding>, SemanticError> {
        if normalized.trim().is_empty() {
            return Ok(None);
        }
        Ok(self.scores(normalized)?.filter(|s| self.refuses(s, true)).map(Finding::semantic))
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
    /// With a trained classifier, `score` is the harmful probability.
    pub fn scores(&self, normalized: &str) -> Result<Option<Scores>, SemanticError> {
        Ok(self.deep_scores(&self.model.embed(normalized)?))
    }

    /// Static-stage scores of a normalised text.
    pub fn fast_scores(&self, normalized: &str) -> Result<Option<Scores>, SemanticError> {
        Ok(self.static_scores(&self.model.token_ids(normalized)?))
    }

    /// The linear rule for requests, when the examples judge (`None` with a trained classifier).
    pub fn rule(&self) -> Option<Rule> {
        match &self.scorer {
            Scorer::Exemplars { rule, .. } => Some(*rule),
            Scorer::Trained { .. } => None,
        }
    }

    fn static_scores(&self, ids: &[u32]) -> Option<Scores> {
        let v = self.model.embed_static(ids);
        match &self.scorer {
            Scorer::Exemplars { fast, .. } => fast.scores(&v),
            Scorer::Trained { head, to_constitution, present, .. } => trained_scores(&head.fast, &v, to_constitution, present),
        }
    }

    fn deep_scores(&self, v: &[f32]) -> Option<Scores> {
        match &self.scorer {
            Scorer::Exemplars { bank, .. } => bank.scores(v),
            Scorer::Trained { head, to_constitution, present, .. } => trained_scores(&head.deep, v, to_constitution, present),
        }
    }

    fn refuses(&self, s: &Scores, output: bool) -> bool {
        match &self.scorer {
            Scorer::Exemplars { rule, output: out, .. } => if output { out } else { rule }.refuses(s),
            // An answer threshold of 1 or more: answers are left to the lexicon (see `train::NO_ANSWERS`).
            Scorer::Trained { output_threshold, .. } if output => *output_threshold < 1.0 && s.score >= *output_threshold,
            Scorer::Trained { threshold, .. } => s.score >= *threshold,
        }
    }
}

/// A trained network's judgement as [`Scores`]: the harmful probability and
/// the likeliest of the constitution's categories (`nearest` is 1: no example is involved).
fn trained_scores(net: &super::head::Net, v: &[f32], to_constitution: &[Option<usize>], present: &[usize]) -> Option<Scores> {
    let judgement = net.judge(v, present);
    let category = to_constitution.get(judgement.category).copied().flatten()?;
    Some(Scores { category, score: judgement.harmful, nearest: 1.0 })
}
