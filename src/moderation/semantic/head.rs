//! The trained classifier: two small networks over the encoder's features,
//! one over the transformer's (`deep`) and one over the distilled static
//! embedding (`fast`, the cascade's first stage). Each maps a text's features
//! through one hidden ReLU layer to a harmful logit and one logit per
//! category. They are trained by `steward moderation train` ([`super::train`])
//! and kept in one safetensors file whose SHA-256 is the classifier's digest:
//! the constitution names that digest, so its hash changes with the weights.
//!
//! Inference is plain `f32` arithmetic (two matrix-vector products, well
//! under a millisecond), the same on every machine for the same file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use sha2::{Digest, Sha256};

use super::SemanticError;
use crate::policy::constitution::ClassifierDigest;

/// One network: `features → ReLU(w1·x + b1) → w2·h + b2`, or with no hidden
/// layer (`hidden` 0) linear, `w2·x + b2`; output 0 is the harmful logit,
/// output 1 + i the logit of category i.
#[derive(Debug, Clone, PartialEq)]
pub struct Net {
    pub inputs: usize,
    pub hidden: usize,
    pub outputs: usize,
    /// `hidden × inputs`, row-major (empty when linear).
    pub w1: Vec<f32>,
    pub b1: Vec<f32>,
    /// `outputs × hidden` (`outputs × inputs` when linear), row-major.
    pub w2: Vec<f32>,
    pub b2: Vec<f32>,
}

/// What a network says of one text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judgement {
    /// Probability that the text is harmful.
    pub harmful: f32,
    /// Index (in the classifier's category list) of the most likely category.
    pub category: usize,
}

impl Net {
    /// The raw outputs for one feature vector.
    pub fn logits(&self, x: &[f32]) -> Vec<f32> {
        if self.hidden == 0 {
            return self.w2.chunks_exact(self.inputs.max(1)).zip(&self.b2).map(|(row, b)| dot(row, x) + b).collect();
        }
        let hidden: Vec<f32> = self.w1.chunks_exact(self.inputs.max(1)).zip(&self.b1).map(|(row, b)| (dot(row, x) + b).max(0.0)).collect();
        self.w2.chunks_exact(self.hidden).zip(&self.b2).map(|(row, b)| dot(row, &hidden) + b).collect()
    }

    /// Width of the last layer's input.
    fn last_inputs(&self) -> usize {
        if self.hidden == 0 {
            self.inputs
        } else {
            self.hidden
        }
    }

    /// The harmful probability and the likeliest category among `allowed` (indices; all when empty).
    pub fn judge(&self, x: &[f32], allowed: &[usize]) -> Judgement {
        let logits = self.logits(x);
        let harmful = sigmoid(logits.first().copied().unwrap_or(f32::NEG_INFINITY));
        let categories = logits.get(1..).unwrap_or_default();
        let likelier = |a: &usize, b: &usize| categories[*a].total_cmp(&categories[*b]);
        let category = if allowed.is_empty() {
            (0..categories.len()).max_by(likelier)
        } else {
            allowed.iter().copied().filter(|&i| i < categories.len()).max_by(likelier)
        };
        let category = category.unwrap_or(0);
        Judgement { harmful, category }
    }

    fn check(&self, name: &str) -> Result<(), SemanticError> {
        let ok = self.w1.len() == self.hidden * self.inputs
            && self.b1.len() == self.hidden
            && self.w2.len() == self.outputs * self.last_inputs()
            && self.b2.len() == self.outputs
            && self.outputs >= 1;
        if ok {
            Ok(())
        } else {
            Err(SemanticError::Model(format!("classifier network `{name}` has inconsistent shapes")))
        }
    }
}

/// The trained classifier: both networks and the categories they name.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    /// Category names, in output order (`outputs - 1` of them).
    pub categories: Vec<String>,
    pub deep: Net,
    pub fast: Net,
}

impl Head {
    /// The file name a classifier with this digest is kept under.
    pub fn file_name(digest: &ClassifierDigest) -> String {
        format!("{}.safetensors", digest.hex())
    }

    /// Reads the classifier named `digest` from `dir`, checking the digest.
    pub fn load(dir: &Path, digest: &ClassifierDigest) -> Result<Self, SemanticError> {
        let path: PathBuf = dir.join(Self::file_name(digest));
        let bytes = std::fs::read(&path).map_err(|source| SemanticError::Missing { path: path.clone(), source })?;
        let found = digest_of(&bytes);
        if &found != digest {
            return Err(SemanticError::Model(format!("{} holds classifier {found}, not {digest}", path.display())));
        }
        Self::from_bytes(&bytes)
    }

    /// Parses a classifier file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SemanticError> {
        let bad = |e: String| SemanticError::Model(format!("classifier file: {e}"));
        let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
        let categories: Vec<String> = metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get("categories"))
            .map(|c| serde_json::from_str(c))
            .transpose()
            .map_err(|e| bad(e.to_string()))?
            .ok_or_else(|| bad("no category list".into()))?;
        let tensors = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
        let read = |name: &str| -> Result<(Vec<usize>, Vec<f32>), SemanticError> {
            let t = tensors.tensor(name).map_err(|e| bad(format!("{name}: {e}")))?;
            if t.dtype() != Dtype::F32 {
                return Err(bad(format!("{name} is not f32")));
            }
            let data = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            Ok((t.shape().to_vec(), data))
        };
        let net = |prefix: &str| -> Result<Net, SemanticError> {
            let (s2, w2) = read(&format!("{prefix}.w2"))?;
            let (_, b2) = read(&format!("{prefix}.b2"))?;
            let outputs = s2.first().copied().unwrap_or(0);
            // A linear network has no hidden layer: its w2 reads the features.
            let (hidden, inputs, w1, b1) = if tensors.names().iter().any(|n| **n == format!("{prefix}.w1")) {
                let (s1, w1) = read(&format!("{prefix}.w1"))?;
                let (_, b1) = read(&format!("{prefix}.b1"))?;
                (s1.first().copied().unwrap_or(0), s1.get(1).copied().unwrap_or(0), w1, b1)
            } else {
                (0, s2.get(1).copied().unwrap_or(0), Vec::new(), Vec::new())
            };
            let net = Net { inputs, hidden, outputs, w1, b1, w2, b2 };
            net.check(prefix)?;
            Ok(net)
        };
        let head = Self { categories, deep: net("deep")?, fast: net("fast")? };
        if head.deep.outputs != head.categories.len() + 1 || head.fast.outputs != head.categories.len() + 1 {
            return Err(bad("the outputs do not match the category list".into()));
        }
        Ok(head)
    }

    /// The classifier as a safetensors file (tensor order and metadata fixed, so equal weights give equal bytes).
    pub fn to_bytes(&self) -> Result<Vec<u8>, SemanticError> {
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (prefix, net) in [("deep", &self.deep), ("fast", &self.fast)] {
            if net.hidden > 0 {
                owned.push((format!("{prefix}.w1"), vec![net.hidden, net.inputs], bytes(&net.w1)));
                owned.push((format!("{prefix}.b1"), vec![net.hidden], bytes(&net.b1)));
            }
            owned.push((format!("{prefix}.w2"), vec![net.outputs, net.last_inputs()], bytes(&net.w2)));
            owned.push((format!("{prefix}.b2"), vec![net.outputs], bytes(&net.b2)));
        }
        let views = owned
            .iter()
            .map(|(name, shape, data)| TensorView::new(Dtype::F32, shape.clone(), data).map(|v| (name.clone(), v)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SemanticError::Model(e.to_string()))?;
        let categories = serde_json::to_string(&self.categories).map_err(|e| SemanticError::Model(e.to_string()))?;
        // One metadata entry: the library writes a map's entries in hash order.
        let metadata = HashMap::from([("categories".to_owned(), categories)]);
        safetensors::serialize(views, Some(metadata)).map_err(|e| SemanticError::Model(e.to_string()))
    }

    /// Writes the classifier into `dir` under its digest; returns the digest.
    pub fn save(&self, dir: &Path) -> Result<ClassifierDigest, SemanticError> {
        let bytes = self.to_bytes()?;
        let digest = digest_of(&bytes);
        let path = dir.join(Self::file_name(&digest));
        let io = |source| SemanticError::Missing { path: path.clone(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::write(&path, &bytes).map_err(io)?;
        Ok(digest)
    }
}

/// The digest of a classifier file's bytes.
pub fn digest_of(bytes: &[u8]) -> ClassifierDigest {
    ClassifierDigest(Sha256::digest(bytes).into())
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(inputs: usize, hidden: usize, outputs: usize, seed: f32) -> Net {
        let fill = |n: usize, k: f32| (0..n).map(|i| ((i as f32 + k) * 0.37).sin() * 0.5).collect();
        Net {
            inputs,
            hidden,
            outputs,
            w1: fill(hidden * inputs, seed),
            b1: fill(hidden, seed + 1.0),
            w2: fill(outputs * hidden, seed + 2.0),
            b2: fill(outputs, seed + 3.0),
        }
    }

    #[test]
    fn a_classifier_file_reads_back_equal_and_its_digest_names_it() {
        let linear = Net { inputs: 3, hidden: 0, outputs: 3, w1: vec![], b1: vec![], w2: (0..9).map(|i| i as f32 / 9.0).collect(), b2: vec![0.1, 0.2, 0.3] };
        let head = Head { categories: vec!["a".into(), "b".into()], deep: net(6, 4, 3, 0.0), fast: linear };
        let dir = tempfile::tempdir().unwrap();
        let digest = head.save(dir.path()).unwrap();
        assert_eq!(Head::load(dir.path(), &digest).unwrap(), head);
        assert_eq!(head.save(dir.path()).unwrap(), digest, "equal weights give equal bytes");
        let other = ClassifierDigest([7; 32]);
        std::fs::copy(dir.path().join(Head::file_name(&digest)), dir.path().join(Head::file_name(&other))).unwrap();
        assert!(Head::load(dir.path(), &other).is_err(), "a file whose bytes do not hash to its name is refused");
    }

    #[test]
    fn the_category_is_chosen_among_the_allowed_ones() {
        let mut n = net(2, 2, 4, 1.0);
        n.w2 = vec![0.0; 8];
        n.b2 = vec![3.0, 0.1, 2.0, 1.0];
        let all = n.judge(&[1.0, 1.0], &[]);
        assert_eq!(all.category, 1);
        assert!((all.harmful - sigmoid(3.0)).abs() < 1e-6);
        assert_eq!(n.judge(&[1.0, 1.0], &[0, 2]).category, 2);
    }
}
