//! Token sampling: greedy, temperature and nucleus (top-p), seeded.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

/// How to pick the next token.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f64,
    /// Nucleus mass in (0, 1]; 1 disables top-p.
    pub top_p: f64,
    /// RNG seed.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding (evaluation).
    pub fn greedy() -> Self {
        Self::default()
    }
}

/// A stateful sampler (owns the RNG so a seeded run is reproducible).
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    scratch: Vec<(f32, u32)>,
}

/// The token picked and its log-probability under the sampling distribution's base
/// (temperature-1, un-truncated) softmax: what RL needs as `log π(y_t)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampled {
    /// Token id.
    pub token: u32,
    /// `log softmax(logits)[token]` at temperature 1.
    pub logprob: f32,
}

fn log_softmax_at(logits: &[f32], idx: usize) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    (logits[idx] - max) - sum.ln() as f32
}

impl Sampler {
    /// A sampler for `params`.
    pub fn new(params: SamplingParams) -> Self {
        Sampler {
            params,
            rng: StdRng::seed_from_u64(params.seed),
            scratch: Vec::new(),
        }
    }

    /// The parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Pick a token from `logits` (NaNs are never picked).
    pub fn sample(&mut self, logits: &[f32]) -> Sampled {
        if self.params.temperature <= 0.0 {
            let token = argmax(logits);
            return Sampled {
                token,
                logprob: log_softmax_at(logits, token as usize),
            };
        }
        let (token, normaliser) = self.sample_temperature(logits);
        let logprob = match normaliser {
            // At temperature 1 the sampler has already summed the softmax normaliser: a second
            // pass over a 150k vocabulary cost 1.1 ms per token (5% of a 0.5B decode step).
            Some((max, total)) => (logits[token as usize] - max) - total.ln() as f32,
            None => log_softmax_at(logits, token as usize),
        };
        Sampled { token, logprob }
    }

    /// The sampled token, and at temperature 1 over NaN-free logits the (max, Σ exp(l − max))
    /// pair of the full softmax, summed before any top-p truncation.
    fn sample_temperature(&mut self, logits: &[f32]) -> (u32, Option<(f32, f64)>) {
        let t = self.params.temperature as f32;
        let max = logits
            .iter()
            .copied()
            .filter(|l| !l.is_nan())
            .fold(f32::NEG_INFINITY, f32::max);
        self.scratch.clear();
        let mut total = 0f64;
        for (i, &l) in logits.iter().enumerate() {
            if l.is_nan() {
                continue;
            }
            let p = ((l - max) / t).exp();
            total += p as f64;
            self.scratch.push((p, i as u32));
        }
        let normaliser = (t == 1.0 && self.scratch.len() == logits.len()).then_some((max, total));
        if self.params.top_p < 1.0 {
            let keep_mass = self.params.top_p * total;
            // The nucleus is usually a few dozen tokens of a 150k vocabulary: select the k most
            // likely (linear time), and sort only those once they hold the nucleus' mass
            // (growing k otherwise). The order is total (ties by id), so the sorted prefix is
            // exactly that of a full sort, which took 4.4 ms per token at Qwen's vocabulary.
            let by_p = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
            let mut k = 256;
            loop {
                if k >= self.scratch.len() {
                    self.scratch.sort_unstable_by(by_p);
                    break;
                }
                self.scratch.select_nth_unstable_by(k - 1, by_p);
                let head: f64 = self.scratch[..k].iter().map(|x| x.0 as f64).sum();
                // The margin covers the f64 rounding of summing in another order.
                if head > keep_mass * (1.0 + 1e-12) {
                    self.scratch[..k].sort_unstable_by(by_p);
                    break;
                }
                k *= 8;
            }
            let mut acc = 0f64;
            let mut n = 0;
            for (p, _) in &self.scratch {
                acc += *p as f64;
                n += 1;
                if acc >= keep_mass {
                    break;
                }
            }
            self.scratch.truncate(n.max(1));
            total = acc;
        }
        let mut r = self.rng.random::<f64>() * total;
        for &(p, i) in &self.scratch {
            r -= p as f64;
            if r <= 0.0 {
                return (i, normaliser);
            }
        }
        (self.scratch.last().map(|x| x.1).unwrap_or(0), normaliser)
    }
}

/// Index of the largest logit (first one on ties), ignoring NaN.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax_with_logprob() {
        let mut s = Sampler::new(SamplingParams::greedy());
        let out = s.sample(&[0.0, 2.0, 1.0, f32::NAN]);
        assert_eq!(out.token, 1);
        let expect = 2.0 - (1f32 + 2f32.exp() + 1f32.exp()).ln();
        // NaN is excluded from argmax but poisons nothing else here except the normaliser;
        // use finite logits for the log-prob check.
        let out2 = s.sample(&[0.0, 2.0, 1.0]);
        assert!((out2.logprob - expect).abs() < 1e-6);
    }

    #[test]
    fn sampling_follows_distribution_and_is_seeded() {
        let logits = [0.0f32, (3f32).ln(), f32::NEG_INFINITY];
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            seed: 7,
        });
        let n = 20_000;
        let ones = (0..n).filter(|_| s.sample(&logits).token == 1).count();
        let frac = ones as f64 / n as f64;
        assert!((frac - 0.75).abs() < 0.02, "{frac}");
        let a: Vec<u32> = {
            let mut s = Sampler::new(SamplingParams {
                temperature: 1.0,
                top_p: 1.0,
                seed: 3,
            });
            (0..50).map(|_| s.sample(&logits).token).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(SamplingParams {
                temperature: 1.0,
                top_p: 1.0,
                seed: 3,
            });
            (0..50).map(|_| s.sample(&logits).token).collect()
        };
        assert_eq!(a, b);
    }

    #[test]
    fn sampled_logprob_is_the_temperature_one_log_softmax_on_every_path() {
        // A Qwen-sized vocabulary with a spread of logits, a masked token and a hot one.
        let mut rng = StdRng::seed_from_u64(5);
        let mut logits: Vec<f32> = (0..151_936)
            .map(|_| rng.random::<f32>() * 20.0 - 10.0)
            .collect();
        logits[7] = f32::NEG_INFINITY;
        logits[11] = 14.0;
        for (temperature, top_p) in [(1.0, 1.0), (1.0, 0.9), (0.7, 1.0), (1.3, 0.5)] {
            let mut s = Sampler::new(SamplingParams {
                temperature,
                top_p,
                seed: 2,
            });
            for _ in 0..20 {
                let out = s.sample(&logits);
                let want = log_softmax_at(&logits, out.token as usize);
                assert!(
                    (out.logprob - want).abs() < 1e-5,
                    "T {temperature} top-p {top_p}: {} vs {want}",
                    out.logprob
                );
            }
        }
        // NaN logits leave the reused normaliser aside: the log-prob is the reference's (NaN).
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            seed: 2,
        });
        let out = s.sample(&[0.0, 1.0, f32::NAN]);
        assert_ne!(out.token, 2);
        assert!(out.logprob.is_nan());
    }

    #[test]
    fn top_p_cuts_the_tail() {
        // p = [0.6, 0.3, 0.1]; top_p 0.8 keeps the first two only.
        let logits = [0.6f32.ln(), 0.3f32.ln(), 0.1f32.ln()];
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 0.8,
            seed: 1,
        });
        for _ in 0..2000 {
            assert_ne!(s.sample(&logits).token, 2);
        }
    }

    /// The nucleus by a full sort of the vocabulary: the reference for the partial selection.
    fn reference_top_p(logits: &[f32], t: f32, top_p: f64, r: f64) -> u32 {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut v: Vec<(f32, u32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (((l - max) / t).exp(), i as u32))
            .collect();
        let total: f64 = v.iter().map(|x| x.0 as f64).sum();
        v.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let (mut acc, mut n) = (0f64, 0);
        for (p, _) in &v {
            acc += *p as f64;
            n += 1;
            if acc >= top_p * total {
                break;
            }
        }
        v.truncate(n.max(1));
        let mut r = r * acc;
        for &(p, i) in &v {
            r -= p as f64;
            if r <= 0.0 {
                return i;
            }
        }
        v.last().unwrap().1
    }

    #[test]
    fn top_p_by_partial_selection_equals_a_full_sort() {
        // Qwen-sized vocabularies, peaked and flat, nuclei from a few tokens to most of the
        // vocabulary (so the selection grows k and falls back to the full sort).
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut uniform = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64
        };
        for (spread, top_p, t) in [
            (2000.0, 0.9, 1.0),
            (12.0, 0.9, 1.0),
            (3.0, 0.5, 0.7),
            (0.5, 0.99, 1.0),
            (8.0, 0.95, 1.3),
        ] {
            let logits: Vec<f32> = (0..151_936).map(|_| (uniform() * spread) as f32).collect();
            let params = SamplingParams {
                temperature: t,
                top_p,
                seed: 11,
            };
            let mut s = Sampler::new(params);
            // The sampler draws one uniform per token: replay the same stream.
            let mut rng = StdRng::seed_from_u64(11);
            for _ in 0..20 {
                let r = rng.random::<f64>();
                let want = reference_top_p(&logits, t as f32, top_p, r);
                assert_eq!(
                    s.sample(&logits).token,
                    want,
                    "spread {spread}, top_p {top_p}"
                );
            }
        }
    }
}
