//! Fitting one classifier network ([`Net`]) with candle's autograd: full-batch
//! AdamW over a class-balanced, row-weighted loss, from weights drawn by a
//! seeded generator, so the same data, seed and settings give the same weights.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};

use crate::moderation::semantic::Net;

/// How one network is trained.
#[derive(Debug, Clone, Copy)]
pub struct Fit {
    pub seed: u64,
    /// Width of the hidden layer; 0 for a linear network.
    pub hidden: usize,
    pub steps: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
}

impl Default for Fit {
    fn default() -> Self {
        Self { seed: 20, hidden: 0, steps: 1500, learning_rate: 2e-2, weight_decay: 1e-4 }
    }
}

/// Training rows as tensors' worth of data.
pub struct Batch<'a> {
    /// `rows × inputs`, row-major.
    pub x: &'a [f32],
    pub inputs: usize,
    /// 1 harmful, 0 harmless.
    pub harmful: &'a [f32],
    /// How much each row counts, relative to the others of its class.
    pub weight: &'a [f32],
    /// The category index of a harmful row whose category is known; `None` otherwise.
    pub category: &'a [Option<u32>],
    pub categories: usize,
}

/// Trains a network on `batch`; the loss is the class-balanced binary
/// cross-entropy of the harmful output plus the category-balanced
/// cross-entropy of the category outputs over rows with a known category.
pub fn fit(batch: &Batch<'_>, fit: &Fit) -> candle_core::Result<Net> {
    let dev = Device::Cpu;
    let n = batch.harmful.len();
    let outputs = batch.categories + 1;
    let x = Tensor::from_slice(batch.x, (n, batch.inputs), &dev)?;
    let y = Tensor::from_slice(batch.harmful, n, &dev)?;
    // Each class weighs half of the loss, its rows in proportion to their weight.
    let class_total =
        |harmful: bool| batch.harmful.iter().zip(batch.weight).filter(|(h, _)| (**h > 0.5) == harmful).map(|(_, w)| w).sum::<f32>().max(f32::MIN_POSITIVE);
    let (positives, negatives) = (class_total(true), class_total(false));
    let weights: Vec<f32> = batch.harmful.iter().zip(batch.weight).map(|(&h, &w)| w * if h > 0.5 { 0.5 / positives } else { 0.5 / negatives }).collect();
    let weights = Tensor::from_vec(weights, n, &dev)?;
    // Each known category weighs the same in total, however many rows it has.
    let mut per_category = vec![0usize; batch.categories];
    batch.category.iter().flatten().for_each(|&c| per_category[c as usize] += 1);
    let present = per_category.iter().filter(|&&k| k > 0).count().max(1) as f32;
    let category_weights: Vec<f32> = batch.category.iter().map(|c| c.map_or(0.0, |c| 1.0 / (present * per_category[c as usize] as f32))).collect();
    let category_weights = Tensor::from_vec(category_weights, n, &dev)?;
    let targets = Tensor::from_vec(batch.category.iter().map(|c| c.unwrap_or(0)).collect::<Vec<u32>>(), (n, 1), &dev)?;

    let mut rng = SplitMix(fit.seed);
    let mut init = |len: usize, fan_in: usize| -> candle_core::Result<Var> {
        let bound = (1.0 / fan_in as f64).sqrt() as f32;
        Var::from_vec((0..len).map(|_| rng.uniform(bound)).collect::<Vec<f32>>(), len, &dev)
    };
    let last_inputs = if fit.hidden == 0 { batch.inputs } else { fit.hidden };
    let w1 = init(fit.hidden * batch.inputs, batch.inputs)?;
    let b1 = Var::zeros(fit.hidden, DType::F32, &dev)?;
    let w2 = init(outputs * last_inputs, last_inputs)?;
    let b2 = Var::zeros(outputs, DType::F32, &dev)?;
    let params = ParamsAdamW { lr: fit.learning_rate, weight_decay: fit.weight_decay, ..Default::default() };
    let mut vars = vec![w2.clone(), b2.clone()];
    if fit.hidden > 0 {
        vars.extend([w1.clone(), b1.clone()]);
    }
    let mut optimizer = AdamW::new(vars, params)?;
    for _ in 0..fit.steps {
        let last = if fit.hidden == 0 { x.clone() } else { x.matmul(&w1.reshape((fit.hidden, batch.inputs))?.t()?)?.broadcast_add(&b1)?.relu()? };
        let out = last.matmul(&w2.reshape((outputs, last_inputs))?.t()?)?.broadcast_add(&b2)?;
        let z = out.narrow(1, 0, 1)?.squeeze(1)?;
        // softplus(z) - y·z, computed stably: relu(z) + ln(1 + e^-|z|) - y·z.
        let softplus = (z.relu()? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
        let bce = ((softplus - (&z * &y)?)? * &weights)?.sum_all()?;
        let log_probs = candle_nn::ops::log_softmax(&out.narrow(1, 1, batch.categories)?, 1)?;
        let picked = log_probs.gather(&targets, 1)?.squeeze(1)?;
        let ce = (picked * &category_weights)?.sum_all()?.neg()?;
        optimizer.backward_step(&(bce + ce)?)?;
    }
    let values = |v: &Var| v.as_tensor().flatten_all()?.to_vec1::<f32>();
    Ok(Net { inputs: batch.inputs, hidden: fit.hidden, outputs, w1: values(&w1)?, b1: values(&b1)?, w2: values(&w2)?, b2: values(&b2)? })
}

/// SplitMix64: a small, fixed pseudo-random sequence for the initial weights.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[-bound, bound)`.
    fn uniform(&mut self, bound: f32) -> f32 {
        let unit = (self.next() >> 40) as f32 / (1u64 << 24) as f32;
        (2.0 * unit - 1.0) * bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_separable_set_is_learned_and_the_same_seed_gives_the_same_weights() {
        // Two clusters: harmful ones near +x (category 1), harmless near -x.
        let mut x = Vec::new();
        let (mut harmful, mut category) = (Vec::new(), Vec::new());
        for i in 0..40 {
            let s = if i % 2 == 0 { 1.0 } else { -1.0 };
            x.extend_from_slice(&[s, 0.1 * (i as f32).sin(), 0.5]);
            harmful.push(if s > 0.0 { 1.0 } else { 0.0 });
            category.push((s > 0.0).then_some(1));
        }
        let weight = vec![1.0; harmful.len()];
        let batch = Batch { x: &x, inputs: 3, harmful: &harmful, weight: &weight, category: &category, categories: 2 };
        for hidden in [0, 8] {
            let settings = Fit { hidden, steps: 300, learning_rate: 5e-2, ..Fit::default() };
            let net = fit(&batch, &settings).unwrap();
            let plus = net.judge(&[1.0, 0.0, 0.5], &[]);
            let minus = net.judge(&[-1.0, 0.0, 0.5], &[]);
            assert!(plus.harmful > 0.9 && minus.harmful < 0.1, "hidden {hidden}: {plus:?} {minus:?}");
            assert_eq!(plus.category, 1);
            assert_eq!(fit(&batch, &settings).unwrap(), net, "the same seed gives the same weights");
        }
    }
}
