//! The constitution's exemplars as embeddings, and the decision rule over them.
//!
//! A linear scorer is fitted on the exemplars when the moderator is built:
//! ridge regression of +1 (a harmful `example`) and -1 (an `allowed_example`,
//! a harmless look-alike) on the features, solved in closed form, so the
//! same constitution always gives the same scorer and the constitution's hash
//! names it. A text is refused when its score reaches the constitution's
//! `threshold`; the refusal names the category of the nearest harmful
//! example. The threshold is chosen on the training part of a labelled set by
//! cross-validation (`steward moderation fit`).

use super::cache::Vector;

/// Ridge penalty: fixed, so a constitution's numbers mean the same everywhere.
pub const RIDGE: f64 = 1.0;

/// The fitted decision rule (the constitution's `[semantic]` table).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rule {
    pub threshold: f32,
    /// The text must also be at least this similar (cosine) to its nearest
    /// harmful example: a text unlike every example (a technical document, a
    /// long paste) lands where a linear score means little, and is left alone.
    pub min_similarity: f32,
}

/// Exemplar embeddings and the scorer fitted on them.
#[derive(Debug, Default)]
pub struct Bank {
    /// (category index, embedding) per harmful example.
    harmful: Vec<(usize, Vector)>,
    allowed: Vec<Vector>,
    linear: Option<Linear>,
}

/// How a text scored against the bank.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scores {
    /// The category of the nearest harmful example.
    pub category: usize,
    /// The linear score: above 0 leans harmful, below 0 harmless.
    pub score: f32,
    /// Cosine similarity to the nearest harmful example.
    pub nearest: f32,
}

impl Bank {
    pub fn add_harmful(&mut self, category: usize, vector: Vector) {
        self.harmful.push((category, vector));
    }

    pub fn add_allowed(&mut self, vector: Vector) {
        self.allowed.push(vector);
    }

    /// Fits the scorer; until then (or without both kinds of examples) nothing scores.
    pub fn fit(&mut self) {
        let harmful: Vec<&[f32]> = self.harmful.iter().map(|(_, v)| &v[..]).collect();
        let allowed: Vec<&[f32]> = self.allowed.iter().map(|v| &v[..]).collect();
        self.linear = Linear::fit(&harmful, &allowed, RIDGE);
    }

    /// Scores `v` (unit length); `None` when there is no fitted scorer.
    pub fn scores(&self, v: &[f32]) -> Option<Scores> {
        let linear = self.linear.as_ref()?;
        let (category, nearest) = self.harmful.iter().map(|(c, e)| (*c, dot(v, e))).max_by(|a, b| a.1.total_cmp(&b.1))?;
        Some(Scores { category, score: linear.score(v), nearest })
    }
}

impl Rule {
    pub fn refuses(&self, s: &Scores) -> bool {
        s.score >= self.threshold && s.nearest >= self.min_similarity
    }
}

/// `w · v + b`, fitted by ridge regression.
#[derive(Debug, Clone)]
struct Linear {
    w: Vec<f32>,
    b: f32,
}

impl Linear {
    /// Ridge regression with an unpenalised bias, solved in its dual form on
    /// centred data: `α = (K + λI)⁻¹ (t - t̄)` with `K = X̃X̃ᵀ`, then `w = X̃ᵀα`
    /// and `b = t̄ - w·x̄`. The system is as large as the number of examples
    /// (hundreds), not the number of features (thousands).
    fn fit(harmful: &[&[f32]], allowed: &[&[f32]], lambda: f64) -> Option<Self> {
        let dim = harmful.first()?.len();
        allowed.first()?;
        let rows: Vec<(&[f32], f64)> = harmful.iter().map(|v| (*v, 1.0)).chain(allowed.iter().map(|v| (*v, -1.0))).collect();
        let n = rows.len();
        let mut mean = vec![0.0f32; dim];
        for (v, _) in &rows {
            mean.iter_mut().zip(v.iter()).for_each(|(m, x)| *m += x / n as f32);
        }
        let t_mean = rows.iter().map(|(_, t)| t).sum::<f64>() / n as f64;
        let centred: Vec<f32> = rows.iter().flat_map(|(v, _)| v.iter().zip(&mean).map(|(x, m)| x - m)).collect();
        let x = candle_core::Tensor::from_vec(centred.clone(), (n, dim), &candle_core::Device::Cpu).ok()?;
        let gram = x.matmul(&x.t().ok()?).ok()?.to_vec2::<f32>().ok()?;
        let mut a: Vec<f64> = gram.iter().flatten().map(|&g| f64::from(g)).collect();
        for i in 0..n {
            a[i * n + i] += lambda;
        }
        let alpha = cholesky_solve(&mut a, rows.iter().map(|(_, t)| t - t_mean).collect(), n)?;
        let mut w = vec![0.0f64; dim];
        for (row, a) in centred.chunks_exact(dim).zip(&alpha) {
            w.iter_mut().zip(row).for_each(|(wi, x)| *wi += a * f64::from(*x));
        }
        let b = t_mean - w.iter().zip(&mean).map(|(wi, m)| wi * f64::from(*m)).sum::<f64>();
        Some(Self { w: w.iter().map(|&x| x as f32).collect(), b: b as f32 })
    }

    fn score(&self, v: &[f32]) -> f32 {
        dot(&self.w, v) + self.b
    }
}

/// Solves `A x = rhs` for symmetric positive-definite `A` (its lower triangle is read), in place.
fn cholesky_solve(a: &mut [f64], mut rhs: Vec<f64>, n: usize) -> Option<Vec<f64>> {
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        if d <= 0.0 {
            return None;
        }
        let d = d.sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / d;
        }
    }
    for i in 0..n {
        let s: f64 = (0..i).map(|k| a[i * n + k] * rhs[k]).sum();
        rhs[i] = (rhs[i] - s) / a[i * n + i];
    }
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|k| a[k * n + i] * rhs[k]).sum();
        rhs[i] = (rhs[i] - s) / a[i * n + i];
    }
    Some(rhs)
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
    fn the_scorer_separates_harmful_from_allowed_examples() {
        let mut bank = Bank::default();
        bank.add_harmful(1, unit(1.0, 0.1));
        bank.add_harmful(2, unit(1.0, -0.1));
        bank.add_allowed(unit(0.1, 1.0));
        bank.add_allowed(unit(-0.1, 1.0));
        assert!(bank.scores(&unit(1.0, 0.0)).is_none(), "nothing scores before the fit");
        bank.fit();
        let harmful = bank.scores(&unit(1.0, 0.05)).unwrap();
        let harmless = bank.scores(&unit(0.0, 1.0)).unwrap();
        assert_eq!(harmful.category, 1);
        assert!(harmful.score > 0.5 && harmless.score < -0.5, "{harmful:?} {harmless:?}");
        let rule = Rule { threshold: 0.0, min_similarity: -1.0 };
        assert!(rule.refuses(&harmful) && !rule.refuses(&harmless));
        // Far from every harmful example, even a harmful-leaning score is not enough.
        assert!(!Rule { min_similarity: 0.999, ..rule }.refuses(&harmful));
    }

    #[test]
    fn cholesky_solves_a_small_system() {
        // [[4, 2], [2, 3]] x = [2, 1]  =>  x = [0.5, 0]
        let mut a = vec![4.0, 0.0, 2.0, 3.0];
        let x = cholesky_solve(&mut a, vec![2.0, 1.0], 2).unwrap();
        assert!((x[0] - 0.5).abs() < 1e-12 && x[1].abs() < 1e-12, "{x:?}");
    }
}
