//! Measuring moderation on labelled data: the rates a constitution achieves,
//! per category, through the real [`Moderator`] (every layer).
//!
//! Data are JSON lines `{"text", "label": "harmful"|"harmless", "category"}`;
//! a harmless row's category is the one it looks like. [`evasion`] derives,
//! from harmful rows, the disguised variants the normaliser must see through;
//! [`fit`] chooses the semantic layer's numbers on the training part.

mod evasion;
mod fit;

pub use crate::moderation::semantic::Rule;
pub use evasion::{evasions, Evasion};
pub use fit::{counts, fit, fit_band, fit_min_similarity, fit_output, fit_points, fit_static, FitPoint};

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

use super::{Decision, ModerationError, Moderator};

/// Category of a harmful row whose category is not known (a benchmark's behaviours): measured,
/// and in training it teaches the harmful output only.
pub const UNLABELLED: &str = "unlabelled";

/// One labelled request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Row {
    pub text: String,
    pub label: Label,
    pub category: String,
    /// Where the row comes from (the training corpus says; tests/data/moderation/README.md).
    #[serde(default)]
    pub source: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    Harmful,
    Harmless,
}

/// Reads a JSON-lines file of [`Row`]s, or a plain-text file (`.txt`) of
/// harmful requests, one per line, whose category is not labelled (a public
/// benchmark's behaviours).
pub fn load(path: &Path) -> anyhow::Result<Vec<Row>> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "txt") {
        let source = path.display().to_string();
        let harmful = |line: &str| Row { text: line.trim().to_owned(), label: Label::Harmful, category: UNLABELLED.to_owned(), source: source.clone() };
        return Ok(text.lines().filter(|line| !line.trim().is_empty()).map(harmful).collect());
    }
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| serde_json::from_str(line).with_context(|| format!("{}:{}: not a labelled row", path.display(), i + 1)))
        .collect()
}

/// Counts for one category (or the total).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub harmful: usize,
    pub harmful_refused: usize,
    pub harmless: usize,
    pub harmless_refused: usize,
}

impl Counts {
    /// Share of harmful rows refused (1 when there are none).
    pub fn refusal_rate(&self) -> f64 {
        ratio(self.harmful_refused, self.harmful, 1.0)
    }
    /// Share of harmless rows refused (0 when there are none).
    pub fn false_refusal_rate(&self) -> f64 {
        ratio(self.harmless_refused, self.harmless, 0.0)
    }
    fn add(&mut self, label: Label, refused: bool) {
        match label {
            Label::Harmful => {
                self.harmful += 1;
                self.harmful_refused += usize::from(refused);
            }
            Label::Harmless => {
                self.harmless += 1;
                self.harmless_refused += usize::from(refused);
            }
        }
    }
}

fn ratio(n: usize, d: usize, empty: f64) -> f64 {
    if d == 0 {
        empty
    } else {
        n as f64 / d as f64
    }
}

/// Rates per category and in total, plus the rows judged wrongly.
#[derive(Debug, Default)]
pub struct Report {
    pub categories: BTreeMap<String, Counts>,
    pub total: Counts,
    /// Harmful rows allowed and harmless rows refused.
    pub mistakes: Vec<(Row, Option<String>)>,
    /// Refused harmful rows with a labelled category: (labelled, refused as) → count.
    pub confusion: BTreeMap<(String, String), usize>,
}

impl Report {
    /// Share of refused harmful rows (with a labelled category) whose refusal names that category.
    pub fn category_accuracy(&self) -> f64 {
        let total: usize = self.confusion.values().sum();
        let right: usize = self.confusion.iter().filter(|((l, r), _)| l == r).map(|(_, n)| n).sum();
        ratio(right, total, 1.0)
    }
}

/// Judges every row with the moderator's input path (all layers).
pub async fn evaluate(moderator: &Moderator, rows: &[Row]) -> Result<Report, ModerationError> {
    let mut report = Report::default();
    // The model runs over texts of one length together first (the dry run's way); decisions are unchanged.
    for chunk in rows.chunks(1024) {
        let turns: Vec<(Vec<String>, &str)> = chunk.iter().map(|r| (vec![r.text.clone()], "")).collect();
        let moderator = moderator.clone();
        tokio::task::spawn_blocking(move || moderator.prefetch(&turns).map(|_| ())).await.map_err(|e| ModerationError::Worker(e.to_string()))??;
    }
    for row in rows {
        let decision = moderator.judge_messages(vec![row.text.clone()]).await?;
        let refused_as = match &decision {
            Decision::Allow => None,
            Decision::Refuse(hits) => hits.first().map(|h| h.category.clone()),
        };
        let refused = refused_as.is_some();
        report.categories.entry(row.category.clone()).or_default().add(row.label, refused);
        report.total.add(row.label, refused);
        if let (Label::Harmful, Some(refused_as)) = (row.label, &refused_as) {
            if row.category != UNLABELLED {
                *report.confusion.entry((row.category.clone(), refused_as.clone())).or_default() += 1;
            }
        }
        if refused != (row.label == Label::Harmful) {
            report.mistakes.push((row.clone(), refused_as));
        }
    }
    Ok(report)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<27} {:>8} {:>9} {:>9} {:>10}", "category", "harmful", "refused", "harmless", "refused")?;
        let line = |f: &mut fmt::Formatter<'_>, name: &str, c: &Counts| {
            writeln!(f, "{:<27} {:>8} {:>8.1}% {:>9} {:>9.1}%", name, c.harmful, 100.0 * c.refusal_rate(), c.harmless, 100.0 * c.false_refusal_rate())
        };
        for (name, counts) in &self.categories {
            line(f, name, counts)?;
        }
        line(f, "TOTAL", &self.total)?;
        if !self.confusion.is_empty() {
            writeln!(f, "refusals naming the labelled category: {:.1}%", 100.0 * self.category_accuracy())?;
        }
        Ok(())
    }
}
