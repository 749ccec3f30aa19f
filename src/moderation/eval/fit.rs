//! Choosing the semantic layer's numbers on the training rows, by cross-validation.

use std::sync::Arc;

use super::{Counts, Label, Row};
use crate::moderation::semantic::{Classifier, Examples, Rule, Scores, SemanticModel};
use crate::moderation::{Decision, ModerationError, Moderator};
use crate::policy::constitution::SemanticRule;

/// One training row's cross-validated scores, and whether the lexicon refuses it anyway.
#[derive(Debug, Clone)]
pub struct FitPoint {
    pub label: Label,
    pub lexicon_refuses: bool,
    /// Transformer scores.
    pub scores: Option<Scores>,
    /// Static-stage scores.
    pub fast: Option<Scores>,
}

/// Scores every training row with a classifier fitted on the other folds
/// (`folds`-fold cross-validation over `rows`, which are the constitution's
/// exemplars), so no row is scored by a scorer that has seen it.
pub fn fit_points(
    moderator: &Moderator,
    model: &Arc<SemanticModel>,
    categories: &[String],
    rows: &[Row],
    folds: usize,
) -> Result<Vec<FitPoint>, ModerationError> {
    let mut points = vec![None; rows.len()];
    for fold in 0..folds {
        let mut examples = Examples::default();
        for (i, row) in rows.iter().enumerate().filter(|(i, _)| i % folds != fold) {
            match (row.label, categories.iter().position(|c| *c == row.category)) {
                (Label::Harmful, Some(category)) => examples.harmful.push((category, row.text.clone())),
                (Label::Harmless, _) => examples.allowed.push(row.text.clone()),
                (Label::Harmful, None) => return Err(ModerationError::Worker(format!("row {i}: unknown category {}", row.category))),
            }
        }
        let classifier = Classifier::new(model.clone(), &examples, &SemanticRule::default())?;
        for (i, row) in rows.iter().enumerate().filter(|(i, _)| i % folds == fold) {
            let lexicon_refuses = matches!(moderator.check_messages(&[row.text.as_str()]), Decision::Refuse(_));
            let text = crate::moderation::normalize::normalize(&row.text);
            let (scores, fast) = (classifier.scores(&text)?, classifier.fast_scores(&text)?);
            points[i] = Some(FitPoint { label: row.label, lexicon_refuses, scores, fast });
        }
    }
    Ok(points.into_iter().flatten().collect())
}

/// The threshold that refuses the most harmful training rows while refusing
/// at most `max_false_refusals` of the harmless ones, with its counts.
pub fn fit(points: &[FitPoint], max_false_refusals: f64) -> Option<(Rule, Counts)> {
    fit_on(points, max_false_refusals, |p| p.scores)
}

/// [`fit`] for the static stage's scores alone (what it would achieve without the transformer).
pub fn fit_static(points: &[FitPoint], max_false_refusals: f64) -> Option<(Rule, Counts)> {
    fit_on(points, max_false_refusals, |p| p.fast)
}

fn fit_on(points: &[FitPoint], max_false_refusals: f64, scores: fn(&FitPoint) -> Option<Scores>) -> Option<(Rule, Counts)> {
    let mut candidates: Vec<f32> = points.iter().filter_map(|p| scores(p).map(|s| s.score)).collect();
    candidates.sort_by(f32::total_cmp);
    candidates.dedup();
    candidates.push(f32::MAX);
    // The lowest threshold within the budget refuses the most.
    candidates.into_iter().find_map(|threshold| {
        let rule = Rule { threshold, min_similarity: -1.0 };
        let mut counts = Counts::default();
        for p in points {
            counts.add(p.label, p.lexicon_refuses || scores(p).is_some_and(|s| rule.refuses(&s)));
        }
        (counts.false_refusal_rate() <= max_false_refusals).then_some((rule, counts))
    })
}

/// What `rule` (with the lexicon) refuses of the training rows.
pub fn counts(points: &[FitPoint], rule: Rule) -> Counts {
    let mut counts = Counts::default();
    for p in points {
        counts.add(p.label, p.lexicon_refuses || p.scores.is_some_and(|s| rule.refuses(&s)));
    }
    counts
}

/// The least similarity to the nearest harmful example that `rule` keeps
/// requiring: the highest value that loses at most `max_lost` of the harmful
/// training rows the rule refuses (their nearest example is in another fold).
pub fn fit_min_similarity(points: &[FitPoint], rule: Rule, max_lost: f64) -> f32 {
    let mut nearest: Vec<f32> =
        points.iter().filter(|p| p.label == Label::Harmful).filter_map(|p| p.scores.filter(|s| rule.refuses(s)).map(|s| s.nearest)).collect();
    nearest.sort_by(f32::total_cmp);
    let lost = ((nearest.len() as f64) * max_lost).floor() as usize;
    nearest.get(lost).copied().unwrap_or(-1.0)
}

/// The output threshold: above the score of every harmless training row, so
/// an answer is cut only where no look-alike request would have been refused.
pub fn fit_output(points: &[FitPoint]) -> f32 {
    let harmless = points.iter().filter(|p| p.label == Label::Harmless);
    harmless.filter_map(|p| p.scores.map(|s| s.score)).fold(f32::MIN, f32::max).next_up()
}

/// The cascade band for `rule`: the static score below which no training row
/// the transformer refuses falls, and from which no row it allows reaches.
/// Returns (allow_below, refuse_from, share of training rows the static stage decides).
pub fn fit_band(points: &[FitPoint], rule: Rule) -> (f32, f32, f64) {
    let judged: Vec<(f32, bool)> = points.iter().filter_map(|p| Some((p.fast?.score, p.scores.as_ref().is_some_and(|s| rule.refuses(s))))).collect();
    let allow_below = judged.iter().filter(|(_, r)| *r).map(|(h, _)| *h).fold(f32::MAX, f32::min);
    let refuse_from = judged.iter().filter(|(_, r)| !*r).map(|(h, _)| *h).fold(f32::MIN, f32::max).next_up();
    let refuse_from = refuse_from.max(allow_below);
    let decided = judged.iter().filter(|(h, _)| *h < allow_below || *h >= refuse_from).count();
    (allow_below, refuse_from, decided as f64 / judged.len().max(1) as f64)
}
