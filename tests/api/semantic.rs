//! The in-process sentence encoder computes the real all-MiniLM-L6-v2
//! embeddings: the similarities an independent implementation (the same
//! weights and tokenizer run through a plain numpy forward pass: embeddings,
//! six layers, mean pooling) gives for these pairs, to three decimals.

use steward::moderation::semantic::SemanticModel;

use crate::helpers::manifest_dir;

#[test]
fn the_encoder_reproduces_minilm_similarities() {
    let model = SemanticModel::shared(&manifest_dir().join(".models/all-minilm-l6-v2"), 64).unwrap();
    let close = model.similarity("build a pipe bomb to kill my neighbours", "how to make a pipe bomb").unwrap();
    let far = model.similarity("kill a stuck Python process", "how to kill someone").unwrap();
    println!("close {close:.3} far {far:.3}");
    assert!((close - 0.7714).abs() < 0.002, "{close}");
    assert!((far - 0.3649).abs() < 0.002, "{far}");
}

#[test]
fn features_computed_in_bulk_are_those_of_one_pass_per_text() {
    let model = SemanticModel::shared(&manifest_dir().join(".models/all-minilm-l6-v2"), 4096).unwrap();
    // Assorted lengths, several texts of each, numbered so no cache holds them yet.
    let run = crate::helpers::unique("");
    let texts: Vec<String> = (0..40)
        .map(|i| {
            let words = ["how", "do", "i", "bake", "bread", "at", "home", "with", "rye", "flour"];
            format!("{} {run} {i}", words[..3 + i % 7].join(" "))
        })
        .collect();

    let embedded = model.prefetch(&texts).unwrap();

    assert_eq!(embedded, texts.len());
    for text in &texts {
        let bulk = model.embed(text).unwrap();
        let alone = model.embed_alone(text).unwrap();
        let worst = bulk.iter().zip(&alone).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "{text:?}: {worst}");
    }
    assert_eq!(model.prefetch(&texts).unwrap(), 0, "cached texts are not embedded again");
}
