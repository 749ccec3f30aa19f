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
