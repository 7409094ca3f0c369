//! AdamW with a warmup + cosine/constant learning-rate schedule, global gradient-norm clipping
//! and gradient accumulation.
//!
//! Our own rather than `candle_nn::AdamW` because a bit-for-bit `--resume` needs the moment
//! estimates saved and restored, and candle's optimiser keeps them private. The update is
//! torch's `AdamW` (decoupled weight decay, bias-corrected moments); the moments (and, for
//! bf16/f16 weights, an f32 master copy) are kept in f32.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use dgpo_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// How the learning rate decays after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    /// Stay at the peak (veRL's `constant` warmup schedule, the DGPO actor and critic).
    Constant,
    /// Half-cosine from the peak down to `min_ratio × peak` at the last step (TAID's KD).
    Cosine {
        /// Final learning rate as a fraction of the peak.
        min_ratio: f64,
    },
}

/// Learning-rate schedule: linear warmup then [`Decay`], as transformers'
/// `get_{constant,cosine}_schedule_with_warmup` (the rate for update `s` is `lr(s)`, `s` from 0,
/// so with warmup the first update has rate 0, as there).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Peak learning rate.
    pub lr: f64,
    /// Warmup updates: `floor(warmup_ratio × total_steps)` (veRL's rounding).
    pub warmup_steps: usize,
    /// Total optimiser updates.
    pub total_steps: usize,
    /// Decay after warmup.
    pub decay: Decay,
}

impl Schedule {
    /// A schedule with warmup given as a fraction of the total.
    pub fn with_ratio(lr: f64, warmup_ratio: f64, total_steps: usize, decay: Decay) -> Schedule {
        Schedule {
            lr,
            warmup_steps: (warmup_ratio * total_steps as f64) as usize,
            total_steps,
            decay,
        }
    }

    /// Learning rate of update `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * step as f64 / self.warmup_steps.max(1) as f64;
        }
        match self.decay {
            Decay::Constant => self.lr,
            Decay::Cosine { min_ratio } => {
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
                let c = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                self.lr * (min_ratio + (1.0 - min_ratio) * c)
            }
        }
    }
}

/// AdamW hyper-parameters (torch defaults, HF's weight decay 0.01).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay, applied to matrices only (not to norms and biases, as HF's
    /// Trainer groups them).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// Accumulated gradients, one f32 (f64 for f64 weights) tensor per parameter, in the
/// optimiser's parameter order.
#[derive(Debug, Clone)]
pub struct Grads {
    g: Vec<Option<Tensor>>,
}

impl Grads {
    /// The gradient of parameter `i`, if any micro-batch gave it one.
    pub fn get(&self, i: usize) -> Option<&Tensor> {
        self.g.get(i).and_then(Option::as_ref)
    }

    /// Global L2 norm over all gradients.
    pub fn norm(&self) -> Result<f64> {
        let mut s = 0f64;
        for g in self.g.iter().flatten() {
            s += g
                .to_dtype(DType::F64)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f64>()?;
        }
        Ok(s.sqrt())
    }

    /// Multiply every gradient by `k`.
    pub fn scale(&mut self, k: f64) -> Result<()> {
        for g in self.g.iter_mut().flatten() {
            *g = (&*g * k)?;
        }
        Ok(())
    }

    /// Clip to global norm `max_norm` as torch's `clip_grad_norm_` (factor
    /// `max_norm / (norm + 1e-6)`, only when below 1); returns the norm before clipping.
    pub fn clip(&mut self, max_norm: f64) -> Result<f64> {
        let n = self.norm()?;
        if !n.is_finite() {
            return Err(Error::invalid(format!(
                "gradient norm is {n}: the loss diverged"
            )));
        }
        let k = max_norm / (n + 1e-6);
        if k < 1.0 {
            self.scale(k)?;
        }
        Ok(n)
    }
}

struct Param {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
    /// f32 master weights for reduced-precision vars.
    master: Option<Tensor>,
    decay: bool,
}

fn state_dtype(d: DType) -> DType {
    if d == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// AdamW over named vars.
pub struct AdamW {
    params: Vec<Param>,
    cfg: AdamWConfig,
    step: usize,
}

impl AdamW {
    /// An optimiser over `vars` (their order is the parameter order).
    pub fn new(vars: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<AdamW> {
        let mut params = Vec::with_capacity(vars.len());
        for (name, var) in vars {
            let t = var.as_tensor();
            let sd = state_dtype(t.dtype());
            let master = if t.dtype() != sd {
                Some(t.to_dtype(sd)?.detach())
            } else {
                None
            };
            params.push(Param {
                m: t.zeros_like()?.to_dtype(sd)?,
                v: t.zeros_like()?.to_dtype(sd)?,
                decay: t.rank() >= 2,
                name,
                var,
                master,
            });
        }
        Ok(AdamW {
            params,
            cfg,
            step: 0,
        })
    }

    /// Updates taken so far.
    pub fn step_count(&self) -> usize {
        self.step
    }

    /// Empty gradients for accumulation.
    pub fn zero_grads(&self) -> Grads {
        Grads {
            g: vec![None; self.params.len()],
        }
    }

    /// Add the gradients of one micro-batch's backward pass (already scaled by the caller, e.g.
    /// by 1/accumulation steps).
    pub fn accumulate(&self, grads: &mut Grads, store: &GradStore) -> Result<()> {
        for (i, p) in self.params.iter().enumerate() {
            if let Some(g) = store.get(p.var.as_tensor()) {
                let g = g.to_dtype(state_dtype(g.dtype()))?;
                grads.g[i] = Some(match grads.g[i].take() {
                    Some(a) => (a + g)?,
                    None => g,
                });
            }
        }
        Ok(())
    }

    /// Names of the parameters that got no gradient (a sign of a broken graph).
    pub fn missing_grads(&self, grads: &Grads) -> Vec<String> {
        self.params
            .iter()
            .zip(&grads.g)
            .filter(|(_, g)| g.is_none())
            .map(|(p, _)| p.name.clone())
            .collect()
    }

    /// One AdamW update with learning rate `lr`.
    pub fn step(&mut self, grads: &Grads, lr: f64) -> Result<()> {
        self.step += 1;
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        for (p, g) in self.params.iter_mut().zip(&grads.g) {
            let Some(g) = g else { continue };
            let w = match &p.master {
                Some(m) => m.clone(),
                None => p.var.as_tensor().detach(),
            };
            p.m = ((&p.m * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            p.v = ((&p.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((&p.v / bc2)?.sqrt()? + c.eps)?;
            let upd = ((&p.m / bc1)? / denom)?;
            let w = if p.decay && c.weight_decay != 0.0 {
                (&w * (1.0 - lr * c.weight_decay))?
            } else {
                w
            };
            let w = (w - (upd * lr)?)?;
            match &mut p.master {
                Some(m) => {
                    p.var.set(&w.to_dtype(p.var.dtype())?)?;
                    *m = w;
                }
                None => p.var.set(&w)?,
            }
        }
        Ok(())
    }

    /// The optimiser state as named tensors (`m.<name>`, `v.<name>`, `master.<name>`), for
    /// checkpoints.
    pub fn state_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for p in &self.params {
            out.insert(format!("m.{}", p.name), p.m.clone());
            out.insert(format!("v.{}", p.name), p.v.clone());
            if let Some(m) = &p.master {
                out.insert(format!("master.{}", p.name), m.clone());
            }
        }
        out
    }

    /// Restore the state saved by [`AdamW::state_tensors`] after `step` updates.
    pub fn load_state(&mut self, mut t: BTreeMap<String, Tensor>, step: usize) -> Result<()> {
        for p in &mut self.params {
            let mut take = |k: String, like: &Tensor| -> Result<Tensor> {
                let x = t
                    .remove(&k)
                    .ok_or_else(|| Error::invalid(format!("optimiser state lacks {k}")))?;
                if x.dims() != like.dims() {
                    return Err(Error::invalid(format!(
                        "optimiser state {k} has shape {:?}, the model {:?}",
                        x.dims(),
                        like.dims()
                    )));
                }
                Ok(x.to_dtype(like.dtype())?.to_device(like.device())?)
            };
            p.m = take(format!("m.{}", p.name), &p.m)?;
            p.v = take(format!("v.{}", p.name), &p.v)?;
            if let Some(m) = &p.master {
                let m = take(format!("master.{}", p.name), m)?;
                p.master = Some(m);
            }
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_matches_transformers_formulas() {
        let s = Schedule::with_ratio(1e-3, 0.1, 100, Decay::Cosine { min_ratio: 0.0 });
        assert_eq!(s.warmup_steps, 10);
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(5) - 5e-4).abs() < 1e-12);
        assert!((s.lr(10) - 1e-3).abs() < 1e-12);
        // Halfway through the decay: cos(π/2) → half the peak.
        assert!((s.lr(55) - 5e-4).abs() < 1e-12);
        assert!(s.lr(100).abs() < 1e-12);
        let c = Schedule::with_ratio(1e-6, 0.285, 1000, Decay::Constant);
        assert_eq!(c.warmup_steps, 285);
        assert!((c.lr(999) - 1e-6).abs() < 1e-18);
        assert!((c.lr(100) - 1e-6 * 100.0 / 285.0).abs() < 1e-18);
    }

    /// Two AdamW updates of a 2-vector, computed by hand (torch's formulas).
    #[test]
    fn adamw_matches_hand_computation() {
        let w0 = [1.0f64, -2.0];
        let var = Var::from_tensor(&Tensor::new(&[[w0[0], w0[1]]], &Device::Cpu).unwrap()).unwrap();
        let cfg = AdamWConfig {
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], cfg).unwrap();
        let gs = [[0.5f64, -1.0], [0.25, 2.0]];
        let lr = 0.01;
        let (mut w, mut m, mut v) = (w0, [0.0; 2], [0.0; 2]);
        for (s, g) in gs.iter().enumerate() {
            let mut grads = opt.zero_grads();
            grads.g[0] = Some(Tensor::new(&[[g[0], g[1]]], &Device::Cpu).unwrap());
            opt.step(&grads, lr).unwrap();
            let t = (s + 1) as i32;
            for i in 0..2 {
                m[i] = 0.9 * m[i] + 0.1 * g[i];
                v[i] = 0.999 * v[i] + 0.001 * g[i] * g[i];
                let mh = m[i] / (1.0 - 0.9f64.powi(t));
                let vh = v[i] / (1.0 - 0.999f64.powi(t));
                w[i] = w[i] * (1.0 - lr * 0.1) - lr * mh / (vh.sqrt() + 1e-8);
            }
        }
        let got = var.as_tensor().to_vec2::<f64>().unwrap();
        for i in 0..2 {
            assert!((got[0][i] - w[i]).abs() < 1e-12, "{got:?} vs {w:?}");
        }
    }

    /// bf16 weights are updated through an f32 master copy: many updates smaller than bf16's
    /// resolution still add up (pure bf16 updates would round every one of them away).
    #[test]
    fn bf16_weights_keep_an_f32_master_copy() {
        let w = Tensor::new(&[1f32, 1.0], &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let var = Var::from_tensor(&w).unwrap();
        let cfg = AdamWConfig {
            weight_decay: 0.0,
            ..Default::default()
        };
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], cfg).unwrap();
        assert!(opt.state_tensors().contains_key("master.w"));
        for _ in 0..100 {
            let mut g = opt.zero_grads();
            g.g[0] = Some(Tensor::new(&[1f32, -1.0], &Device::Cpu).unwrap());
            // Each AdamW step moves by ≈ lr = 1e-4, far below bf16's spacing of 2^-7 at 1.0.
            opt.step(&g, 1e-4).unwrap();
        }
        assert_eq!(var.dtype(), DType::BF16);
        let v = var
            .as_tensor()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let m = opt.state_tensors()["master.w"].to_vec1::<f32>().unwrap();
        assert!(
            (m[0] - 0.99).abs() < 1e-4 && (m[1] - 1.01).abs() < 1e-4,
            "{m:?}"
        );
        assert!(v[0] < 1.0 && v[1] > 1.0, "{v:?}");
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let mut g = Grads {
            g: vec![Some(Tensor::new(&[3f32, 4.0], &Device::Cpu).unwrap()), None],
        };
        let n = g.clip(1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-6);
        assert!((g.norm().unwrap() - 1.0).abs() < 1e-5);
        // Below the limit nothing changes.
        let before = g.get(0).unwrap().to_vec1::<f32>().unwrap();
        g.clip(10.0).unwrap();
        assert_eq!(g.get(0).unwrap().to_vec1::<f32>().unwrap(), before);
    }
}
