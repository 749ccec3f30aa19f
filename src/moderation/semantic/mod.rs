//! The semantic layer: catches harmful requests however they are phrased, by
//! their meaning rather than their words.
//!
//! A sentence-embedding model ([`encoder`], all-MiniLM-L6-v2 through candle)
//! turns the normalised text into a vector; the constitution's `examples` and
//! `allowed_examples` are embedded once into a [`bank::Bank`]; the fitted
//! [`Rule`] decides. In front of it runs a cascade stage: the same texts
//! embedded by a static model distilled from the transformer ([`distilled`]),
//! which decides the clear cases in microseconds and sends only the uncertain
//! band (between the constitution's `static_allow_below` and
//! `static_refuse_from`) to the transformer.
//!
//! The model, its distilled table and an exact-text cache of embeddings are
//! loaded once per process and model directory ([`SemanticModel::shared`]),
//! so rebuilding a moderator (a new constitution) re-embeds only new exemplars.
//!
//! [`Semantic`] is the handle the moderator holds: `Off` (configured away) or
//! `On`, never an `Option` threaded through callers.

mod bank;
mod cache;
mod classifier;
mod distilled;
mod encoder;
mod head;
mod segment;
mod table;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use super::Finding;

pub use bank::{Rule, Scores};
pub use cache::Vector;
pub use classifier::{Classifier, Examples, Exemplars, Route};
pub use head::{Head, Judgement, Net};

use cache::EmbeddingCache;
use distilled::Distilled;
use encoder::Encoder;

/// Why the semantic layer could not load or run.
#[derive(Debug, thiserror::Error)]
pub enum SemanticError {
    /// A model file is missing or unreadable.
    #[error("cannot read the moderation model file {path} (moderation.model_dir; install it with scripts/models.sh, or set moderation.semantic = \"off\"): {source}")]
    Missing { path: PathBuf, source: std::io::Error },
    /// A model file is malformed.
    #[error("the moderation model is unusable: {0}")]
    Model(String),
    /// The forward pass failed.
    #[error("moderation model inference failed: {0}")]
    Inference(#[from] candle_core::Error),
}

/// Most texts [`SemanticModel::prefetch`] runs through the model at once (fewer when they are long: see `TOKENS_PER_PASS`).
pub const BATCH: usize = 256;

/// Most tokens [`SemanticModel::prefetch`] runs through the model at once:
/// bounds a pass's memory (the widest activations and the attention scores
/// are each about 50 MB at this size) whatever the texts' length.
const TOKENS_PER_PASS: usize = 8192;

/// The encoder, its distilled static table and the embedding cache, shared
/// by every classifier of a process.
#[derive(Debug)]
pub struct SemanticModel {
    /// Where the model's files are; the embedded exemplars are kept there too.
    dir: PathBuf,
    encoder: Encoder,
    distilled: Distilled,
    cache: EmbeddingCache,
}

impl SemanticModel {
    /// Loads the model in `dir`, or returns the one this process already loaded from there.
    pub fn shared(dir: &Path, cache_entries: usize) -> Result<Arc<Self>, SemanticError> {
        static LOADED: OnceLock<Mutex<HashMap<PathBuf, Arc<SemanticModel>>>> = OnceLock::new();
        let key = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
        let mut loaded = LOADED.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(model) = loaded.get(&key) {
            return Ok(model.clone());
        }
        let encoder = Encoder::load(dir)?;
        let distilled = Distilled::load_or_distill(dir, &encoder)?;
        let model = Arc::new(Self { dir: key.clone(), encoder, distilled, cache: EmbeddingCache::new(cache_entries) });
        loaded.insert(key, model.clone());
        Ok(model)
    }

    /// The transformer features of an already normalised text, from the cache when seen before.
    pub fn embed(&self, text: &str) -> Result<Vector, SemanticError> {
        match self.cache.get(text) {
            Some(v) => Ok(v),
            None => self.embed_tokenized(text, &self.encoder.token_ids(text)?),
        }
    }

    /// [`SemanticModel::embed`] for a text already tokenised (`ids` from [`SemanticModel::token_ids`]).
    pub fn embed_tokenized(&self, text: &str, ids: &[u32]) -> Result<Vector, SemanticError> {
        if let Some(v) = self.cache.get(text) {
            return Ok(v);
        }
        let v: Vector = Arc::from(self.encoder.features(ids)?);
        self.cache.insert(text, v.clone());
        Ok(v)
    }

    /// The transformer features of a normalised text computed now, one pass
    /// for this text alone, past the cache (for checking the cache's contents).
    pub fn embed_alone(&self, text: &str) -> Result<Vec<f32>, SemanticError> {
        self.encoder.features(&self.encoder.token_ids(text)?)
    }

    /// The WordPiece ids of a text (without `[CLS]` and `[SEP]`).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, SemanticError> {
        self.encoder.token_ids(text)
    }

    /// Cosine similarity of two texts' sentence embeddings (both normalised first).
    pub fn similarity(&self, a: &str, b: &str) -> Result<f32, SemanticError> {
        let embed = |t: &str| self.encoder.sentence_embedding(&super::normalize::normalize(t));
        let (a, b) = (embed(a)?, embed(b)?);
        Ok(a.iter().zip(b.iter()).map(|(x, y)| x * y).sum())
    }

    /// Puts the transformer features of many normalised texts (a
    /// constitution's examples) in the cache, from a file in the model
    /// directory named by their digest when there is one, else by running the
    /// model and writing that file: a restart reads them instead of running
    /// the model over the same examples again.
    pub fn remember(&self, texts: &[String]) -> Result<(), SemanticError> {
        let path = self.kept_file("exemplars", texts);
        let dim = self.encoder.features_dim();
        if let Some(rows) = table::read(&path, texts.len(), dim) {
            texts.iter().zip(rows.chunks_exact(dim.max(1))).for_each(|(t, v)| self.cache.insert(t, Arc::from(v)));
            return Ok(());
        }
        let vectors = texts.iter().map(|t| self.embed(t)).collect::<Result<Vec<_>, _>>()?;
        let flat: Vec<f32> = vectors.iter().flat_map(|v| v.iter().copied()).collect();
        if let Err(err) = table::write(&path, texts.len(), dim, &flat) {
            tracing::warn!(path = %path.display(), error = %err, "cannot keep the embedded exemplars; they will be embedded again next start");
        }
        Ok(())
    }

    /// Puts the transformer features of many normalised texts in the cache,
    /// running the model over texts of one token length together, at most
    /// [`BATCH`] at a time, instead of once per text. Texts already cached,
    /// texts longer than one window, and texts past half of what the cache is
    /// sure to keep (so none is evicted before it is used) are left to
    /// [`SemanticModel::embed`]. For bulk judging (the constitution dry run);
    /// returns how many it embedded.
    pub fn prefetch(&self, texts: &[String]) -> Result<usize, SemanticError> {
        let budget = self.cache.sure_to_survive() / 2;
        let mut by_length: HashMap<usize, Vec<(&str, Vec<u32>)>> = HashMap::new();
        for text in texts.iter().take(budget) {
            if self.cache.get(text).is_none() {
                let ids = self.encoder.token_ids(text)?;
                by_length.entry(ids.len()).or_default().push((text, ids));
            }
        }
        let mut embedded = 0;
        for (length, group) in &mut by_length {
            group.sort_by(|a, b| a.0.cmp(b.0));
            group.dedup_by(|a, b| a.0 == b.0);
            let rows = (TOKENS_PER_PASS / (length + 2)).clamp(1, BATCH);
            for batch in group.chunks(rows) {
                let ids: Vec<&[u32]> = batch.iter().map(|(_, ids)| ids.as_slice()).collect();
                let Some(vectors) = self.encoder.features_of_equal_length(&ids)? else { continue };
                for ((text, _), vector) in batch.iter().zip(vectors) {
                    self.cache.insert(text, Arc::from(vector));
                }
                embedded += batch.len();
            }
        }
        Ok(embedded)
    }

    /// The transformer features of many normalised texts, in order, past the
    /// cache (for training): texts of one token length run through the model
    /// together, like [`SemanticModel::prefetch`]; longer ones one by one.
    pub fn features_many(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, SemanticError> {
        let ids = texts.iter().map(|t| self.encoder.token_ids(t)).collect::<Result<Vec<_>, _>>()?;
        let mut out: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
        let mut by_length: HashMap<usize, Vec<usize>> = HashMap::new();
        ids.iter().enumerate().for_each(|(i, ids)| by_length.entry(ids.len()).or_default().push(i));
        let mut lengths: Vec<_> = by_length.into_iter().collect();
        lengths.sort();
        for (length, group) in lengths {
            let rows = (TOKENS_PER_PASS / (length + 2)).clamp(1, BATCH);
            for batch in group.chunks(rows) {
                let batch_ids: Vec<&[u32]> = batch.iter().map(|&i| ids[i].as_slice()).collect();
                match self.encoder.features_of_equal_length(&batch_ids)? {
                    Some(vectors) => batch.iter().zip(vectors).for_each(|(&i, v)| out[i] = Some(v)),
                    None => {
                        for &i in batch {
                            out[i] = Some(self.encoder.features(&ids[i])?);
                        }
                    }
                }
            }
        }
        Ok(out.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// [`SemanticModel::features_many`], flat (`texts × features_dim`), kept
    /// in a file in the model directory named by the texts' digest, so that
    /// training again on the same rows reads them instead of running the model.
    pub fn features_kept(&self, texts: &[String]) -> Result<Vec<f32>, SemanticError> {
        let path = self.kept_file("features", texts);
        let dim = self.encoder.features_dim();
        if let Some(rows) = table::read(&path, texts.len(), dim) {
            return Ok(rows);
        }
        let flat: Vec<f32> = self.features_many(texts)?.into_iter().flatten().collect();
        if let Err(err) = table::write(&path, texts.len(), dim, &flat) {
            tracing::warn!(path = %path.display(), error = %err, "cannot keep the training features; they will be computed again");
        }
        Ok(flat)
    }

    /// The file in the model directory that keeps something computed from these texts.
    fn kept_file(&self, kind: &str, texts: &[String]) -> PathBuf {
        use sha2::{Digest, Sha256};
        let mut digest = Sha256::new();
        texts.iter().for_each(|t| digest.update(format!("{}\n{t}\n", t.len())));
        self.dir.join(format!("{kind}-{}.bin", &hex::encode(digest.finalize())[..16]))
    }

    /// Length of the transformer features.
    pub fn features_dim(&self) -> usize {
        self.encoder.features_dim()
    }

    /// Number of WordPiece tokens in a text (without `[CLS]` and `[SEP]`).
    pub fn token_count(&self, text: &str) -> Result<usize, SemanticError> {
        Ok(self.encoder.token_ids(text)?.len())
    }

    /// The static (distilled) embedding of an already normalised text.
    pub fn embed_static(&self, ids: &[u32]) -> Vec<f32> {
        self.distilled.embed(ids)
    }
}

/// The moderator's handle on the semantic layer.
#[derive(Debug, Clone)]
pub enum Semantic {
    /// `moderation.semantic = "off"`: only the phrase lexicon judges.
    Off,
    On(Arc<Classifier>),
}

impl Semantic {
    /// The refused category's index for a normalised text (always `None` when off).
    pub fn judge(&self, normalized: &str) -> Result<Option<Finding>, SemanticError> {
        match self {
            Self::Off => Ok(None),
            Self::On(classifier) => classifier.judge(normalized),
        }
    }

    /// Like [`Semantic::judge`], for a piece of a streamed answer.
    pub fn judge_output(&self, normalized: &str) -> Result<Option<Finding>, SemanticError> {
        match self {
            Self::Off => Ok(None),
            Self::On(classifier) => classifier.judge_output(normalized),
        }
    }

    /// [`Classifier::prefetch`] (nothing when off).
    pub fn prefetch(&self, inputs: &[String], pieces: &[String]) -> Result<usize, SemanticError> {
        match self {
            Self::Off => Ok(0),
            Self::On(classifier) => classifier.prefetch(inputs, pieces),
        }
    }

    pub fn is_on(&self) -> bool {
        matches!(self, Self::On(_))
    }
}
