//! AdamW with a warmup + cosine/constant learning-rate schedule, global gradient-norm clipping
//! and gradient accumulation.
//!
//! Our own rather than `candle_nn::AdamW` because a bit-for-bit `--resume` needs the moment
//! estimates saved and restored, and candle's optimiser keeps them private. The update is
//! torch's `AdamW` (decoupled weight decay, bias-corrected moments); the moments (and, for
//! bf16/f16 weights, an f32 master copy) are kept in f32.

use std::cell::RefCell;
use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Storage, Tensor, Var};
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
/// optimiser's parameter order, times a pending scale factor (clipping sets it; the update
/// applies it while it reads the gradients, so clipping a 0.5B model copies nothing).
#[derive(Debug, Clone)]
pub struct Grads {
    g: Vec<Option<Tensor>>,
    factor: f64,
}

impl Grads {
    /// The gradient of parameter `i` (without the pending factor, see [`Grads::factor`]), if
    /// any micro-batch gave it one.
    pub fn get(&self, i: usize) -> Option<&Tensor> {
        self.g.get(i).and_then(Option::as_ref)
    }

    /// The factor every gradient is multiplied by when used (1 until [`Grads::scale`]).
    pub fn factor(&self) -> f64 {
        self.factor
    }

    /// Global L2 norm over all gradients (factor included).
    pub fn norm(&self) -> Result<f64> {
        let mut s = 0f64;
        for g in self.g.iter().flatten() {
            s += match with_f32(g, sum_of_squares) {
                Some(x) => x,
                None => g
                    .to_dtype(DType::F64)?
                    .sqr()?
                    .sum_all()?
                    .to_scalar::<f64>()?,
            };
        }
        Ok(s.sqrt() * self.factor.abs())
    }

    /// Multiply every gradient by `k` (lazily: see [`Grads::factor`]).
    pub fn scale(&mut self, k: f64) -> Result<()> {
        self.factor *= k;
        Ok(())
    }

    /// Apply the pending factor to the tensors themselves.
    fn materialise(&mut self) -> Result<()> {
        if self.factor != 1.0 {
            for g in self.g.iter_mut().flatten() {
                *g = (&*g * self.factor)?;
            }
            self.factor = 1.0;
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

/// Σ x² of an f32 slice, in f64 (blocks summed in f32 first so the loop vectorises; a block of
/// 256 squares loses nothing that matters to a clipping threshold).
fn sum_of_squares(x: &[f32]) -> f64 {
    x.chunks(256)
        .map(|c| c.iter().map(|v| v * v).sum::<f32>() as f64)
        .sum()
}

/// Run `f` on the data of a contiguous f32 CPU tensor; `None` for any other tensor.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    if t.dtype() != DType::F32 {
        return None;
    }
    let (storage, layout) = t.storage_and_layout();
    let (start, end) = layout.contiguous_offsets()?;
    match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => Some(f(&v[start..end])),
        _ => None,
    }
}

/// An in-place op that hands the tensor's f32 data to a closure, once.
struct WithMut<F, R> {
    f: RefCell<Option<F>>,
    out: RefCell<Option<R>>,
}

impl<F: FnOnce(&mut [f32]) -> R, R> InplaceOp1 for WithMut<F, R> {
    fn name(&self) -> &'static str {
        "adamw-in-place"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let (CpuStorage::F32(v), Some((start, end))) = (storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("adamw-in-place: not a contiguous f32 tensor")
        };
        let f = self.f.borrow_mut().take();
        if let Some(f) = f {
            *self.out.borrow_mut() = Some(f(&mut v[start..end]));
        }
        Ok(())
    }
}

/// Run `f` on the data of a contiguous f32 CPU tensor, writable in place; `None` for any other
/// tensor. Everything sharing the tensor's storage (clones, views) sees the writes.
fn with_f32_mut<R>(t: &Tensor, f: impl FnOnce(&mut [f32]) -> R) -> Option<R> {
    if t.dtype() != DType::F32 || !t.device().is_cpu() || !t.is_contiguous() {
        return None;
    }
    let op = WithMut {
        f: RefCell::new(Some(f)),
        out: RefCell::new(None),
    };
    t.inplace_op1(&op).ok()?;
    op.out.into_inner()
}

/// Scalars of one AdamW update.
#[derive(Debug, Clone, Copy)]
struct Update {
    beta1: f32,
    beta2: f32,
    /// 1 / (1 − β₁ᵗ), 1 / (1 − β₂ᵗ).
    inv_bc1: f32,
    inv_bc2: f32,
    eps: f32,
    lr: f32,
    /// 1 − lr·weight_decay (1 for parameters without decay).
    keep: f32,
    /// The gradients' pending factor.
    grad_factor: f32,
}

/// The whole AdamW update of one parameter in one pass over its four arrays (candle ops would
/// make a dozen passes and as many fresh buffers: 11.6 s of a 28-s Qwen2.5-0.5B step).
fn fused_update(w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], u: Update) {
    let body = |w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]| {
        for (((w, m), v), g) in w.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
            let g = g * u.grad_factor;
            *m = u.beta1 * *m + (1.0 - u.beta1) * g;
            *v = u.beta2 * *v + (1.0 - u.beta2) * g * g;
            let step = (*m * u.inv_bc1) / ((*v * u.inv_bc2).sqrt() + u.eps);
            *w = *w * u.keep - u.lr * step;
        }
    };
    let threads = candle_core::utils::get_num_threads().max(1);
    // Below ~1M elements a thread costs more than it saves.
    if threads == 1 || w.len() < 1 << 20 {
        return body(w, m, v, g);
    }
    let chunk = w.len().div_ceil(threads);
    std::thread::scope(|s| {
        for (((w, m), v), g) in w
            .chunks_mut(chunk)
            .zip(m.chunks_mut(chunk))
            .zip(v.chunks_mut(chunk))
            .zip(g.chunks(chunk))
        {
            s.spawn(move || body(w, m, v, g));
        }
    });
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
            factor: 1.0,
        }
    }

    /// Add the gradients of one micro-batch's backward pass (already scaled by the caller, e.g.
    /// by 1/accumulation steps).
    pub fn accumulate(&self, grads: &mut Grads, store: &GradStore) -> Result<()> {
        grads.materialise()?;
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
            let keep = if p.decay && c.weight_decay != 0.0 {
                1.0 - lr * c.weight_decay
            } else {
                1.0
            };
            let u = Update {
                beta1: c.beta1 as f32,
                beta2: c.beta2 as f32,
                inv_bc1: (1.0 / bc1) as f32,
                inv_bc2: (1.0 / bc2) as f32,
                eps: c.eps as f32,
                lr: lr as f32,
                keep: keep as f32,
                grad_factor: grads.factor as f32,
            };
            if !fused_step(p, g, u)? {
                step_with_ops(p, g, grads.factor, c, bc1, bc2, lr)?;
            }
        }
        Ok(())
    }

    /// The optimiser state as named tensors (`m.<name>`, `v.<name>`, `master.<name>`), for
    /// checkpoints. They share storage with the optimiser, which updates it in place: write them
    /// out before the next [`AdamW::step`], or `copy()` them to keep a snapshot.
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

/// The update in place on f32 CPU state (the weights themselves, or their f32 master copy);
/// `false` when the tensors are of another kind (f64, GPU), for [`step_with_ops`].
fn fused_step(p: &mut Param, g: &Tensor, u: Update) -> Result<bool> {
    let w = match &p.master {
        Some(m) => m.clone(),
        None => p.var.as_tensor().clone(),
    };
    // Four distinct storages (the moments are created per parameter, the weights are the var's
    // own), so the nested in-place borrows below never alias.
    let done = with_f32_mut(&p.m, |m| {
        with_f32_mut(&p.v, |v| {
            with_f32_mut(&w, |w| {
                with_f32(g, |g| {
                    if g.len() != w.len() {
                        return false;
                    }
                    fused_update(w, m, v, g, u);
                    true
                })
            })
        })
    })
    .flatten()
    .flatten()
    .flatten()
    .unwrap_or(false);
    if done && let Some(master) = &p.master {
        p.var.set(&master.to_dtype(p.var.dtype())?)?;
    }
    Ok(done)
}

/// The same update as a chain of tensor ops: any dtype, any device.
fn step_with_ops(
    p: &mut Param,
    g: &Tensor,
    factor: f64,
    c: AdamWConfig,
    bc1: f64,
    bc2: f64,
    lr: f64,
) -> Result<()> {
    let g = if factor != 1.0 {
        (g * factor)?
    } else {
        g.clone()
    };
    let w = match &p.master {
        Some(m) => m.clone(),
        None => p.var.as_tensor().detach(),
    };
    p.m = ((&p.m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
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
    Ok(())
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
            factor: 1.0,
        };
        let n = g.clip(1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-6);
        assert!((g.norm().unwrap() - 1.0).abs() < 1e-5);
        // Lazily: the factor is pending, the tensor untouched until an update reads it.
        assert!((g.factor() - 1.0 / (5.0 + 1e-6)).abs() < 1e-12);
        assert_eq!(g.get(0).unwrap().to_vec1::<f32>().unwrap(), [3.0, 4.0]);
        // Below the limit nothing changes.
        let before = g.get(0).unwrap().to_vec1::<f32>().unwrap();
        g.clip(10.0).unwrap();
        assert_eq!(g.get(0).unwrap().to_vec1::<f32>().unwrap(), before);
    }

    /// The fused in-place update (f32 on the CPU) against the tensor-op chain it replaces, over
    /// three updates with weight decay, a clipped (lazily scaled) gradient, and a parameter big
    /// enough to be split across threads.
    #[test]
    fn fused_update_matches_tensor_ops() {
        let dev = Device::Cpu;
        let cfg = AdamWConfig::default();
        for len in [1000usize, (1 << 20) + 7] {
            let w0: Vec<f32> = (0..len)
                .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                .collect();
            let var = |_: ()| {
                Var::from_tensor(&Tensor::from_vec(w0.clone(), (1, len), &dev).unwrap()).unwrap()
            };
            let (va, vb) = (var(()), var(()));
            let mut fused = AdamW::new(vec![("w".into(), va.clone())], cfg).unwrap();
            let mut ops = AdamW::new(vec![("w".into(), vb.clone())], cfg).unwrap();
            // Shares the first moment's storage: only an in-place (fused) update changes it.
            let m_alias = fused.state_tensors()["m.w"].clone();
            for s in 0..3usize {
                let g: Vec<f32> = (0..len)
                    .map(|i| (((i + 31 * s) * 104_729) % 2001) as f32 / 1000.0 - 1.0)
                    .collect();
                let mut grads = fused.zero_grads();
                grads.g[0] = Some(Tensor::from_vec(g, (1, len), &dev).unwrap());
                if s == 1 {
                    grads.scale(0.25).unwrap();
                }
                let lr = 1e-2;
                fused.step(&grads, lr).unwrap();
                ops.step += 1;
                let t = ops.step as i32;
                let (b1, b2) = (1.0 - cfg.beta1.powi(t), 1.0 - cfg.beta2.powi(t));
                let g = grads.g[0].as_ref().unwrap();
                step_with_ops(&mut ops.params[0], g, grads.factor, cfg, b1, b2, lr).unwrap();
            }
            let a = va
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let b = vb
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let worst = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(
                worst < 1e-6,
                "len {len}: fused and op-chain weights differ by {worst}"
            );
            // The moments too (they are what a resumed run continues from).
            let (ma, mb) = (fused.state_tensors(), ops.state_tensors());
            for k in ["m.w", "v.w"] {
                let x = ma[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let y = mb[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let worst = x
                    .iter()
                    .zip(&y)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                assert!(worst < 1e-6, "len {len}: {k} differs by {worst}");
            }
            assert_ne!(a, w0, "the update moved nothing");
            let alias = m_alias.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(
                alias.iter().any(|x| *x != 0.0),
                "the fused path did not run (the moments were replaced, not updated in place)"
            );
        }
    }
}
