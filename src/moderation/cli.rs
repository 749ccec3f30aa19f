//! `steward moderation eval|fit`: the labelled-data tools over the configured moderator.

use anyhow::Context;

use super::eval::{self, Evasion};
use super::semantic::SemanticModel;
use crate::cli::ModerationCommand;
use crate::config::Settings;
use crate::policy::Constitution;

pub async fn run(settings: &Settings, command: ModerationCommand) -> anyhow::Result<()> {
    let constitution = Constitution::load(&settings.policy.constitution)?;
    let moderator = crate::app::moderator(settings, &constitution)?;
    match command {
        ModerationCommand::Prepare => {
            let on = matches!(settings.moderation.semantic, crate::config::SemanticSwitch::On);
            eprintln!(
                "moderation ready ({}; model_dir {})",
                if on { "semantic layer on" } else { "semantic layer off" },
                settings.moderation.model_dir.display()
            );
        }
        ModerationCommand::Eval { file, evasions, mistakes } => {
            let rows = eval::load(&file)?;
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
        ModerationCommand::Fit { file, max_false_refusals, folds } => {
            let rows = eval::load(&file)?;
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
