//! The constitution's exemplars as embeddings, and the decision rule over them.
//!
//! A text is scored against every category's harmful `examples` (the highest
//! cosine similarity per category) and against all `allowed_examples`, the
//! harmless look-alikes (the highest overall). It is refused under the
//! category with the best harmful score when that score reaches the
//! `threshold` and beats the best look-alike by at least the `margin`. Both
//! numbers live in the constitution, fitted on the training part of a
//! labelled set (`steward moderation fit`).

use super::cache::Vector;

/// The fitted decision rule (the constitution's `[semantic]` table).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rule {
    pub threshold: f32,
    pub margin: f32,
}

/// Exemplar embeddings, one row per exemplar.
#[derive(Debug, Default)]
pub struct Bank {
    /// (category index, embedding) per harmful example.
    harmful: Vec<(usize, Vector)>,
    /// Embeddings of every allowed look-alike.
    allowed: Vec<Vector>,
    categories: usize,
}

/// How a text scored against the bank.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scores {
    /// The category whose example is closest.
    pub category: usize,
    /// Cosine similarity to that example.
    pub harmful: f32,
    /// Cosine similarity to the closest allowed look-alike (-1 if there is none).
    pub allowed: f32,
}

impl Bank {
    pub fn new(categories: usize) -> Self {
        Self { categories, ..Self::default() }
    }

    pub fn add_harmful(&mut self, category: usize, vector: Vector) {
        self.harmful.push((category, vector));
    }

    pub fn add_allowed(&mut self, vector: Vector) {
        self.allowed.push(vector);
    }

    pub fn is_empty(&self) -> bool {
        self.harmful.is_empty()
    }

    /// Scores `v` (unit length), leaving out exemplars equal to `skip` (for
    /// leave-one-out fitting; `None` in service).
    pub fn scores(&self, v: &[f32], skip: Option<&[f32]>) -> Option<Scores> {
        let same = |e: &Vector| skip.is_some_and(|s| s == &e[..]);
        let mut best: Option<(usize, f32)> = None;
        for (category, e) in self.harmful.iter().filter(|(_, e)| !same(e)) {
            let s = dot(v, e);
            if best.is_none_or(|(_, b)| s > b) {
                best = Some((*category, s));
            }
        }
        let allowed = self.allowed.iter().filter(|e| !same(e)).map(|e| dot(v, e)).fold(-1.0f32, f32::max);
        best.filter(|(c, _)| *c < self.categories).map(|(category, harmful)| Scores { category, harmful, allowed })
    }
}

impl Rule {
    /// Whether these scores refuse.
    pub fn refuses(&self, s: &Scores) -> bool {
        s.harmful >= self.threshold && s.harmful - s.allowed >= self.margin
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn unit(x: f32, y: f32) -> Vector {
        let n = (x * x + y * y).sqrt();
        Arc::from(vec![x / n, y / n])
    }

    #[test]
    fn refuses_near_an_example_unless_a_look_alike_is_nearer() {
        let mut bank = Bank::new(2);
        bank.add_harmful(1, unit(1.0, 0.0));
        bank.add_allowed(unit(0.0, 1.0));
        let rule = Rule { threshold: 0.8, margin: 0.1 };
        let near_harm = bank.scores(&unit(1.0, 0.2), None).unwrap_or_else(|| panic!("no scores"));
        assert_eq!(near_harm.category, 1);
        assert!(rule.refuses(&near_harm));
        let between = bank.scores(&unit(1.0, 0.9), None).unwrap_or_else(|| panic!("no scores"));
        assert!(!rule.refuses(&between), "{between:?}");
        // Leaving the only example out leaves nothing to score against.
        assert!(bank.scores(&unit(1.0, 0.0), Some(&unit(1.0, 0.0))).is_none());
    }
}
