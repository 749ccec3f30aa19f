//! `steward moderation train`: the semantic layer's classifier learned from
//! labelled rows instead of fitted on a constitution's few examples.
//!
//! Every row is normalised like any input and turned into features twice:
//! by the transformer (kept in the model directory, since that is the slow
//! part) and by the distilled static model; one network is fitted per
//! feature kind ([`net`]). The numbers of the constitution's `[semantic]`
//! table are chosen on the rows most like what users write — the project's
//! own hand-written training rows ([`Options::held_source`]) — each judged by
//! a classifier trained without it (k-fold): the threshold that refuses at
//! most `max_false_refusals` of the harmless ones, and the static stage's
//! band (outside it the static network decides alone). Those rows count more
//! in training ([`Options::held_weight`]), since the public sets are less
//! like them. The answer threshold is [`NO_ANSWERS`]: the rows are requests,
//! and on answers the classifier is not calibrated (it cut a benign answer on
//! stopping a Python process), so streamed answers are left to the lexicon.
//!
//! Everything is deterministic: the same rows, seed and settings give the
//! same weights and so the same digest.

mod net;

pub use net::Fit;

use sha2::{Digest, Sha256};

pub use super::eval::UNLABELLED;

use super::eval::{Label, Row};
use super::normalize::normalize;
use super::semantic::{Head, Net, SemanticModel};
use crate::policy::constitution::SemanticRule;

/// The `output_threshold` that leaves streamed answers to the lexicon: a trained classifier
/// judges answers only under a threshold below this.
pub const NO_ANSWERS: f64 = 1.0;

/// How the classifier is trained and its numbers chosen.
#[derive(Debug, Clone)]
pub struct Options {
    /// The transformer features' network.
    pub deep: Fit,
    /// The static features' network.
    pub fast: Fit,
    /// Share of harmless held rows the request threshold may refuse.
    pub max_false_refusals: f64,
    /// The source of the rows the numbers are chosen on (each judged by a classifier trained without it).
    pub held_source: String,
    /// How much more a held-source row counts in training than a row of the public sets.
    pub held_weight: f32,
    /// Folds of the held rows.
    pub folds: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self { deep: Fit::default(), fast: Fit::default(), max_false_refusals: 0.025, held_source: "project/train".into(), held_weight: 20.0, folds: 5 }
    }
}

/// The trained classifier, its numbers, and how it did on the held rows.
#[derive(Debug)]
pub struct Trained {
    pub head: Head,
    /// The `[semantic]` numbers chosen on the held rows (`classifier` left for the caller to set).
    pub rule: SemanticRule,
    pub rows: usize,
    /// Rates on the held rows, each judged by the fold's classifier that never saw it.
    pub validation: Validation,
}

/// Rates on the held rows at the chosen numbers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Validation {
    pub harmful: usize,
    pub harmful_refused: usize,
    pub harmless: usize,
    pub harmless_refused: usize,
    /// Share of held rows the static stage decided alone.
    pub decided_by_static: f64,
}

/// Rows as the networks see them.
struct Data {
    deep: Vec<f32>,
    deep_dim: usize,
    fast: Vec<f32>,
    fast_dim: usize,
    label: Vec<f32>,
    weight: Vec<f32>,
    category: Vec<Option<u32>>,
    categories: usize,
}

impl Data {
    /// Fits both networks on the rows `take` keeps.
    fn fit(&self, options: &Options, take: impl Fn(usize) -> bool) -> anyhow::Result<(Net, Net)> {
        let idx: Vec<usize> = (0..self.label.len()).filter(|&i| take(i)).collect();
        let pick = |v: &[f32]| idx.iter().map(|&i| v[i]).collect::<Vec<f32>>();
        let (label, weight) = (pick(&self.label), pick(&self.weight));
        let category: Vec<Option<u32>> = idx.iter().map(|&i| self.category[i]).collect();
        let net = |x: &[f32], dim: usize, fit: &Fit| -> anyhow::Result<Net> {
            let x: Vec<f32> = idx.iter().flat_map(|&i| x[i * dim..(i + 1) * dim].iter().copied()).collect();
            let batch = net::Batch { x: &x, inputs: dim, harmful: &label, weight: &weight, category: &category, categories: self.categories };
            Ok(net::fit(&batch, fit)?)
        };
        Ok((net(&self.deep, self.deep_dim, &options.deep)?, net(&self.fast, self.fast_dim, &options.fast)?))
    }

    /// Harmful probabilities of row `i` by both networks.
    fn judge(&self, (deep, fast): &(Net, Net), i: usize) -> (f32, f32) {
        let d = deep.judge(&self.deep[i * self.deep_dim..(i + 1) * self.deep_dim], &[]).harmful;
        let f = fast.judge(&self.fast[i * self.fast_dim..(i + 1) * self.fast_dim], &[]).harmful;
        (d, f)
    }
}

/// Trains the classifier for `categories` (the constitution's names, in its order) on `rows`.
pub fn train(model: &SemanticModel, categories: &[String], rows: &[Row], options: &Options) -> anyhow::Result<Trained> {
    if let Some(row) = rows.iter().find(|r| r.label == Label::Harmful && r.category != UNLABELLED && !categories.contains(&r.category)) {
        anyhow::bail!("row category {:?} is not in the constitution (or {UNLABELLED:?}): {}", row.category, row.text);
    }
    let texts: Vec<String> = rows.iter().map(|r| normalize(&r.text)).collect();
    let deep = model.features_kept(&texts)?;
    let fast: Vec<f32> = texts.iter().map(|t| Ok(model.embed_static(&model.token_ids(t)?))).collect::<Result<Vec<_>, anyhow::Error>>()?.concat();
    let held: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].source == options.held_source).collect();
    let harmless_held = held.iter().filter(|&&i| rows[i].label == Label::Harmless).count();
    if held.len() < 2 * options.folds || harmless_held == 0 {
        anyhow::bail!("too few rows from {:?} to choose the numbers on ({} rows, {harmless_held} harmless)", options.held_source, held.len());
    }
    let data = Data {
        deep_dim: model.features_dim(),
        fast_dim: fast.len() / rows.len().max(1),
        deep,
        fast,
        label: rows.iter().map(|r| if r.label == Label::Harmful { 1.0 } else { 0.0 }).collect(),
        weight: rows.iter().map(|r| if r.source == options.held_source { options.held_weight } else { 1.0 }).collect(),
        category: rows
            .iter()
            .map(|r| match r.label {
                Label::Harmful => categories.iter().position(|c| *c == r.category).map(|i| i as u32),
                Label::Harmless => None,
            })
            .collect(),
        categories: categories.len(),
    };

    // Each held row judged by a classifier trained without its fold.
    let fold_of = |i: usize| fold(&texts[i], options.folds);
    let mut judged = vec![(0.0f32, 0.0f32); rows.len()];
    for k in 0..options.folds {
        let nets = data.fit(options, |i| !(rows[i].source == options.held_source && fold_of(i) == k))?;
        held.iter().filter(|&&i| fold_of(i) == k).for_each(|&i| judged[i] = data.judge(&nets, i));
    }
    let harmful: Vec<bool> = held.iter().map(|&i| rows[i].label == Label::Harmful).collect();
    let deep_p: Vec<f32> = held.iter().map(|&i| judged[i].0).collect();
    let fast_p: Vec<f32> = held.iter().map(|&i| judged[i].1).collect();
    let harmless_p: Vec<f32> = deep_p.iter().zip(&harmful).filter(|(_, h)| !**h).map(|(p, _)| *p).collect();
    let threshold = threshold_for(&harmless_p, options.max_false_refusals);
    let refused: Vec<bool> = deep_p.iter().map(|p| *p >= threshold).collect();
    let (allow_below, refuse_from) = band(&fast_p, &refused);

    let mut v = Validation::default();
    let mut decided = 0usize;
    for (k, &h) in harmful.iter().enumerate() {
        let (by_static, refuses) = match fast_p[k] {
            p if p < allow_below => (true, false),
            p if p >= refuse_from => (true, true),
            _ => (false, refused[k]),
        };
        decided += usize::from(by_static);
        let (total, refused) = if h { (&mut v.harmful, &mut v.harmful_refused) } else { (&mut v.harmless, &mut v.harmless_refused) };
        *total += 1;
        *refused += usize::from(refuses);
    }
    v.decided_by_static = decided as f64 / harmful.len().max(1) as f64;

    let (deep, fast) = data.fit(options, |_| true)?;
    let rule = SemanticRule {
        classifier: None,
        threshold: round4(threshold),
        min_similarity: -1.0,
        output_threshold: NO_ANSWERS,
        static_allow_below: round4(allow_below),
        static_refuse_from: round4(refuse_from),
    };
    Ok(Trained { head: Head { categories: categories.to_vec(), deep, fast }, rule, rows: rows.len(), validation: v })
}

/// The fold of a normalised text, by its hash.
fn fold(text: &str, folds: usize) -> usize {
    let digest = Sha256::digest(text.as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) as usize % folds.max(1)
}

/// The lowest probability threshold that refuses at most `share` of these harmless rows' probabilities.
fn threshold_for(harmless: &[f32], share: f64) -> f32 {
    let mut sorted = harmless.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let allowed = (share * sorted.len() as f64).floor() as usize;
    sorted.get(allowed).map_or(0.5, |p| next_above(*p)).max(0.05)
}

/// The static stage's band: below `allow_below` at most 1% of the rows the
/// transformer's network refuses; from `refuse_from` at most 0.5% of the ones it allows.
fn band(fast: &[f32], refused: &[bool]) -> (f32, f32) {
    let mut refused_p: Vec<f32> = fast.iter().zip(refused).filter(|(_, r)| **r).map(|(p, _)| *p).collect();
    let mut allowed_p: Vec<f32> = fast.iter().zip(refused).filter(|(_, r)| !**r).map(|(p, _)| *p).collect();
    refused_p.sort_by(f32::total_cmp);
    allowed_p.sort_by(|a, b| b.total_cmp(a));
    let allow_below = refused_p.get((0.01 * refused_p.len() as f64).floor() as usize).copied().unwrap_or(0.0);
    let refuse_from = allowed_p.get((0.005 * allowed_p.len() as f64).floor() as usize).map_or(1.0, |p| next_above(*p));
    if allow_below > refuse_from {
        (refuse_from, refuse_from)
    } else {
        (allow_below, refuse_from)
    }
}

/// A value just above `p` that survives rounding to four places.
fn next_above(p: f32) -> f32 {
    ((p as f64 * 10_000.0).floor() + 1.0) as f32 / 10_000.0
}

fn round4(x: f32) -> f64 {
    (x as f64 * 10_000.0).round() / 10_000.0
}
