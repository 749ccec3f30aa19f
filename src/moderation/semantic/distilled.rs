//! A static embedding model distilled from the transformer (the model2vec
//! method): every vocabulary token is run through the encoder once, on its
//! own, and its vector kept; a text's embedding is then the weighted mean of
//! its tokens' vectors — a table look-up per token, microseconds per message
//! instead of milliseconds. It is the first stage of the cascade (see
//! [`super::Classifier`]): it decides the clear cases and sends the uncertain
//! band to the transformer.
//!
//! Token weights follow Zipf's law over BERT's vocabulary, whose word pieces
//! are ordered by frequency from id 1996 on: `ln(1 + rank)`, so frequent
//! words ("the", "how") count for less than rare ones ("anthrax").
//!
//! Distilling takes tens of seconds, so the table is written next to the
//! model (`static-embeddings.bin`) and read from there afterwards.

use std::path::Path;

use super::encoder::{normalize, Encoder};
use super::{table, SemanticError};

/// The file the distilled table is kept in, inside the model directory.
pub const FILE: &str = "static-embeddings.bin";
/// Tokens distilled per forward pass.
const BATCH: usize = 256;
/// First id of BERT's frequency-ordered word pieces (below: padding, unused slots, single characters).
const FIRST_RANKED: usize = 1996;

/// One vector per vocabulary token, row-major.
#[derive(Debug)]
pub struct Distilled {
    dim: usize,
    rows: Vec<f32>,
}

impl Distilled {
    /// Reads the table from `dir`, or distils it from `encoder` and writes it there.
    pub fn load_or_distill(dir: &Path, encoder: &Encoder) -> Result<Self, SemanticError> {
        let path = dir.join(FILE);
        let (vocab, dim) = (encoder.vocab_size(), encoder.dim());
        if let Some(rows) = table::read(&path, vocab, dim) {
            return Ok(Self { dim, rows });
        }
        let started = std::time::Instant::now();
        tracing::info!(tokens = vocab, "distilling static embeddings from the moderation model (once)");
        let mut rows = Vec::with_capacity(vocab * dim);
        let ids: Vec<u32> = (0..vocab as u32).collect();
        for chunk in ids.chunks(BATCH) {
            for mut v in encoder.embed_single_tokens(chunk)? {
                normalize(&mut v);
                rows.extend_from_slice(&v);
            }
        }
        tracing::info!(seconds = started.elapsed().as_secs(), "static embeddings distilled");
        if let Err(err) = table::write(&path, vocab, dim, &rows) {
            tracing::warn!(path = %path.display(), error = %err, "cannot keep the distilled table; it will be distilled again next start");
        }
        Ok(Self { dim, rows })
    }

    /// The static embedding of a text's token ids (unit length; zeros for no tokens).
    pub fn embed(&self, ids: &[u32]) -> Vec<f32> {
        let mut sum = vec![0.0f32; self.dim];
        for &id in ids {
            let id = id as usize;
            let Some(row) = self.rows.get(id * self.dim..(id + 1) * self.dim) else {
                continue;
            };
            let weight = ((id.saturating_sub(FIRST_RANKED) + 1) as f32).ln_1p();
            sum.iter_mut().zip(row).for_each(|(s, x)| *s += weight * x);
        }
        normalize(&mut sum);
        sum
    }
}
