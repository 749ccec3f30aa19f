//! `steward moderation prepare|eval|fit|train`: the labelled-data tools over the configured moderator.

use anyhow::Context;
use clap::Subcommand;

use super::eval::{self, Evasion};
use super::semantic::SemanticModel;
use crate::config::Settings;
use crate::policy::Constitution;

#[derive(Debug, Subcommand)]
pub enum ModerationCommand {
    /// Load the moderation model and compute what Steward keeps beside it
    /// (the distilled static table, the embedded exemplars of the configured
    /// constitution), so the next start is quick; install scripts run it.
    Prepare,
    /// Judge every row of a labelled JSON-lines file with every layer and
    /// print the rates per category; `--evasions` also judges each harmful
    /// row disguised with every known evasion.
    Eval {
        file: std::path::PathBuf,
        #[arg(long)]
        evasions: bool,
        /// Also print every row judged wrongly.
        #[arg(long)]
        mistakes: bool,
    },
    /// Choose the semantic layer's numbers on the training rows (the
    /// constitution's exemplars) by cross-validation; prints a `[semantic]` table.
    Fit {
        file: std::path::PathBuf,
        /// Highest share of harmless training rows the rule may refuse.
        #[arg(long, default_value_t = 0.03)]
        max_false_refusals: f64,
        #[arg(long, default_value_t = 5)]
        folds: usize,
    },
    /// Train the semantic layer's classifier on labelled rows (e.g.
    /// tests/data/moderation/corpus.jsonl), write it into
    /// `moderation.classifier_dir` under its digest, and print the
    /// `[semantic]` table that names it.
    Train {
        file: std::path::PathBuf,
        /// Highest share of the held harmless rows (each judged by a classifier trained without it) the request threshold may refuse.
        #[arg(long, default_value_t = 0.025)]
        max_false_refusals: f64,
        /// Training steps (full-batch AdamW) of each network.
        #[arg(long, default_value_t = 1500)]
        steps: usize,
        /// Train on the first this many rows only (a quick check of the pipeline).
        #[arg(long)]
        rows: Option<usize>,
    },
}

pub async fn run(settings: &Settings, command: ModerationCommand) -> anyhow::Result<()> {
    let constitution = Constitution::load(&settings.policy.constitution)?;
    let moderator = || super::moderator(&settings.moderation, &constitution);
    match command {
        ModerationCommand::Prepare => {
            moderator()?;
            let on = matches!(settings.moderation.semantic, crate::config::SemanticSwitch::On);
            eprintln!(
                "moderation ready ({}; model_dir {})",
                if on { "semantic layer on" } else { "semantic layer off" },
                settings.moderation.model_dir.display()
            );
        }
        ModerationCommand::Eval { file, evasions, mistakes } => {
            let rows = eval::load(&file)?;
            let moderator = moderator()?;
            let report = eval::evaluate(&moderator, &rows).await?;
            println!("{}: {} rows\n{report}", file.display(), rows.len());
            if mistakes {
                for (row, refused_as) in &report.mistakes {
                    println!("  wrong [{}] refused as {:?}: {}", row.category, refused_as, row.text);
                }
            }
            if evasions {
                for technique in Evasion::ALL {
                    let disguised: Vec<_> = eval::evasions(&rows).into_iter().filter(|(e, _)| *e == technique).map(|(_, r)| r).collect();
                    let report = eval::evaluate(&moderator, &disguised).await?;
                    println!("evasion {:<16} {:>4} harmful, {:>5.1}% refused", technique.as_str(), report.total.harmful, 100.0 * report.total.refusal_rate());
                }
            }
        }
        ModerationCommand::Train { file, max_false_refusals, steps, rows } => train(settings, &constitution, &file, max_false_refusals, steps, rows)?,
        ModerationCommand::Fit { file, max_false_refusals, folds } => {
            let rows = eval::load(&file)?;
            let moderator = moderator()?;
            let model = SemanticModel::shared(&settings.moderation.model_dir, settings.moderation.cache_entries)?;
            let categories: Vec<String> = constitution.categories.iter().map(|c| c.name.clone()).collect();
            let points = eval::fit_points(&moderator, &model, &categories, &rows, folds)?;
            let (rule, _) = eval::fit(&points, max_false_refusals).context("no threshold meets --max-false-refusals")?;
            // Texts unlike every harmful example are left alone, at the cost of 2% of the rule's refusals.
            let rule = eval::Rule { min_similarity: eval::fit_min_similarity(&points, rule, 0.02), ..rule };
            let counts = eval::counts(&points, rule);
            if let Some((_, alone)) = eval::fit_static(&points, max_false_refusals) {
                println!("# the static stage alone, at the same budget: {:.1}% of harmful refused", 100.0 * alone.refusal_rate());
            }
            let (allow_below, refuse_from, decided) = eval::fit_band(&points, rule);
            println!(
                "[semantic]\nthreshold = {:.4}\nmin_similarity = {:.4}\noutput_threshold = {:.4}\nstatic_allow_below = {:.4}\nstatic_refuse_from = {:.4}\n\
                 # {folds}-fold cross-validation on {} training rows: {:.1}% of {} harmful refused, {:.1}% of {} harmless refused;\n\
                 # the static stage decides {:.1}% of them without the transformer",
                rule.threshold,
                rule.min_similarity,
                eval::fit_output(&points),
                allow_below,
                refuse_from,
                rows.len(),
                100.0 * counts.refusal_rate(),
                counts.harmful,
                100.0 * counts.false_refusal_rate(),
                counts.harmless,
                100.0 * decided,
            );
        }
    }
    Ok(())
}

/// `steward moderation train`: trains, writes the classifier, prints its table.
fn train(
    settings: &Settings,
    constitution: &Constitution,
    file: &std::path::Path,
    max_false_refusals: f64,
    steps: usize,
    rows: Option<usize>,
) -> anyhow::Result<()> {
    use super::train::{self, Options};
    let mut labelled = eval::load(file)?;
    labelled.truncate(rows.unwrap_or(usize::MAX));
    let model = SemanticModel::shared(&settings.moderation.model_dir, settings.moderation.cache_entries)?;
    let categories: Vec<String> = constitution.categories.iter().map(|c| c.name.clone()).collect();
    let mut options = Options { max_false_refusals, ..Options::default() };
    options.deep.steps = steps;
    options.fast.steps = steps;
    let started = std::time::Instant::now();
    let trained = train::train(&model, &categories, &labelled, &options)?;
    let digest = trained.head.save(&settings.moderation.classifier_dir)?;
    let r = trained.rule;
    let v = trained.validation;
    println!(
        "[semantic]\nclassifier = \"{digest}\"\nthreshold = {:.4}\nmin_similarity = -1.0\noutput_threshold = {:.1}\nstatic_allow_below = {:.4}\nstatic_refuse_from = {:.4}\n\
         # trained on {} rows of {} in {:.0} s; the {} rows of {}, each judged by a classifier trained without it ({}-fold):\n\
         # {:.1}% of {} harmful refused, {:.1}% of {} harmless refused; the static stage decides {:.1}% of them alone",
        r.threshold,
        r.output_threshold,
        r.static_allow_below,
        r.static_refuse_from,
        trained.rows,
        file.display(),
        started.elapsed().as_secs_f64(),
        v.harmful + v.harmless,
        options.held_source,
        options.folds,
        100.0 * v.harmful_refused as f64 / v.harmful.max(1) as f64,
        v.harmful,
        100.0 * v.harmless_refused as f64 / v.harmless.max(1) as f64,
        v.harmless,
        100.0 * v.decided_by_static,
    );
    eprintln!("classifier {digest} written to {}", settings.moderation.classifier_dir.display());
    Ok(())
}
