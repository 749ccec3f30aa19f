//! `steward moderation train` is reproducible: the same rows, seed and
//! settings give the same classifier file, byte for byte, from a clean state
//! (no kept features), on the real model.

use std::path::Path;

use steward::moderation::eval;
use steward::moderation::semantic::SemanticModel;
use steward::moderation::train::{self, Options};
use steward::policy::Constitution;

use crate::helpers::manifest_dir;

/// A model directory of its own (the model's files linked), so its kept features start empty.
fn fresh_model_dir(dir: &Path) {
    let model = manifest_dir().join(".models/all-minilm-l6-v2");
    for name in ["config.json", "tokenizer.json", "model.safetensors", "static-embeddings.bin"] {
        std::os::unix::fs::symlink(model.join(name), dir.join(name)).unwrap();
    }
}

#[tokio::test]
async fn training_twice_from_a_clean_state_gives_the_same_classifier_digest() {
    let constitution = Constitution::load(&manifest_dir().join("config/constitution.toml")).unwrap();
    let categories: Vec<String> = constitution.categories.iter().map(|c| c.name.clone()).collect();
    // The project's rows (every category, both labels) and the first public ones after them.
    let rows: Vec<eval::Row> = eval::load(&manifest_dir().join("tests/data/moderation/corpus.jsonl")).unwrap().into_iter().take(480).collect();
    let mut options = Options::default();
    options.deep.steps = 60;
    options.fast.steps = 60;
    let mut digests = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        fresh_model_dir(dir.path());
        let (rows, categories, options, path) = (rows.clone(), categories.clone(), options.clone(), dir.path().to_owned());
        let digest = tokio::task::spawn_blocking(move || {
            let model = SemanticModel::shared(&path, 1024).unwrap();
            let trained = train::train(&model, &categories, &rows, &options).unwrap();
            assert!(path.read_dir().unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with("features-")), "features are kept");
            trained.head.save(&path.join("classifiers")).unwrap()
        })
        .await
        .unwrap();
        digests.push(digest);
    }
    assert_eq!(digests[0], digests[1], "two trainings from a clean state differ");
}
