//! Next-token selection: greedy by default; temperature, top-k and top-p with a seeded RNG.

use rand::{rngs::StdRng, Rng, SeedableRng};

#[derive(Debug, Clone, Copy)]
pub struct SamplerConfig {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// 0 means no top-k cut.
    pub top_k: usize,
    /// 1 means no nucleus cut.
    pub top_p: f32,
    pub seed: u64,
}

pub struct Sampler {
    cfg: SamplerConfig,
    rng: StdRng,
    probs: Vec<(f32, u32)>,
}

/// Index of the largest value; the first one on ties, as `torch.argmax` does.
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Self {
        Sampler {
            cfg,
            rng: StdRng::seed_from_u64(cfg.seed),
            probs: Vec::new(),
        }
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.cfg.temperature <= 0.0 || self.cfg.top_k == 1 {
            return argmax(logits);
        }
        let t = self.cfg.temperature;
        self.probs.clear();
        self.probs
            .extend(logits.iter().enumerate().map(|(i, &l)| (l / t, i as u32)));
        let desc = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if self.cfg.top_k > 0 && self.cfg.top_k < self.probs.len() {
            self.probs.select_nth_unstable_by(self.cfg.top_k - 1, desc);
            self.probs.truncate(self.cfg.top_k);
        }
        self.probs.sort_unstable_by(desc);
        let max = self.probs[0].0;
        let mut sum = 0.0;
        for p in self.probs.iter_mut() {
            p.0 = (p.0 - max).exp();
            sum += p.0;
        }
        let mut keep = self.probs.len();
        if self.cfg.top_p < 1.0 {
            let mut cum = 0.0;
            for (i, p) in self.probs.iter().enumerate() {
                cum += p.0 / sum;
                if cum >= self.cfg.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        let total: f32 = self.probs[..keep].iter().map(|p| p.0).sum();
        let mut r = self.rng.random::<f32>() * total;
        for p in &self.probs[..keep] {
            r -= p.0;
            if r <= 0.0 {
                return p.1;
            }
        }
        self.probs[keep - 1].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_max() {
        let mut s = Sampler::new(SamplerConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        });
        assert_eq!(s.sample(&[1.0, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn seeded_sampling_repeats_and_respects_top_k() {
        let logits: Vec<f32> = (0..100).map(|i| (i % 7) as f32).collect();
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: 3,
            top_p: 0.95,
            seed: 42,
        };
        let (mut a, mut b) = (Sampler::new(cfg), Sampler::new(cfg));
        let xs: Vec<u32> = (0..50).map(|_| a.sample(&logits)).collect();
        let ys: Vec<u32> = (0..50).map(|_| b.sample(&logits)).collect();
        assert_eq!(xs, ys);
        // The three largest logits are 6 at indices 6, 13, 20 (ties broken by index).
        assert!(xs.iter().all(|&i| [6, 13, 20].contains(&i)), "{xs:?}");
    }
}
