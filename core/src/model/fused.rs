//! Fused, differentiable CPU kernels for training: the attention softmax and the three
//! per-token quantities the losses need over the vocabulary (target log-prob, forward KL to a
//! teacher, entropy).
//!
//! Why: candle's fused `softmax_last_dim` has no backward pass, so the differentiable decoder
//! composed the attention softmax of seven elementary ops (scale, mask add, max, subtract,
//! exp, sum, divide), and the losses composed `log_softmax`, `narrow` and `gather` the same way.
//! Each op writes a fresh buffer of the full (batch, heads, t, t) scores or (batch, t, vocab)
//! logits, and its backward zero-fills and adds one more per input (candle accumulates every
//! gradient into a zeroed tensor). On the tiny presets' shapes those passes over the two
//! largest tensors of the step took about half of it (`perf`: `binary_map`, `memset`, `expf`).
//! Here each quantity is one pass forward and one pass backward, row by row, with the same
//! arithmetic (max-subtracted exponentials, f32 or f64 as the input).
//!
//! Each function takes f32 or f64 tensors on the CPU ([`supported`] says whether a tensor
//! qualifies); callers keep the composed ops for other devices and dtypes. Tests check values
//! and gradients against the composed ops.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, WithDType,
};

use crate::{Error, Result};

/// Environment variable that turns the fused kernels off when set to `0` (the composed ops run
/// instead): for benchmarks that time both in one run, and for bisecting a numerical question.
pub const FUSED_ENV: &str = "DGPO_FUSED_KERNELS";

/// Whether the fused kernels take `t`: a CPU tensor of f32 or f64 (and `$DGPO_FUSED_KERNELS` is
/// not `0`).
pub fn supported(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64) && enabled()
}

/// Whether `$DGPO_FUSED_KERNELS` leaves the kernels on (read on every call, so a benchmark can
/// switch within one process; the lookup is negligible next to a kernel).
pub fn enabled() -> bool {
    std::env::var_os(FUSED_ENV).is_none_or(|v| v != "0")
}

/// Float types the kernels run in.
trait Real: WithDType + std::ops::Neg<Output = Self> {
    const NEG_INF: Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn larger(self, o: Self) -> Self;
}

impl Real for f32 {
    const NEG_INF: Self = f32::NEG_INFINITY;
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn ln(self) -> Self {
        f32::ln(self)
    }
    fn larger(self, o: Self) -> Self {
        f32::max(self, o)
    }
}

impl Real for f64 {
    const NEG_INF: Self = f64::NEG_INFINITY;
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn ln(self) -> Self {
        f64::ln(self)
    }
    fn larger(self, o: Self) -> Self {
        f64::max(self, o)
    }
}

/// The contiguous data of a kernel input.
fn data<'a, T: candle_core::WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [T]> {
    let all = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&all[a..b]),
        None => candle_core::bail!("fused kernel: {what} must be contiguous"),
    }
}

/// Evaluate a kernel's body in the float type of `$storage` and wrap its `Vec` as storage of
/// that type: `$t` names the type (f32 or f64) inside `$body`. Other dtypes are refused with
/// `$what` named. One place for the dispatch that every op's `cpu_fwd` needs.
macro_rules! in_float_type {
    ($storage:expr, $what:expr, $t:ident => $body:expr) => {
        match $storage {
            CpuStorage::F32(_) => {
                type $t = f32;
                <$t as WithDType>::to_cpu_storage_owned($body)
            }
            CpuStorage::F64(_) => {
                type $t = f64;
                <$t as WithDType>::to_cpu_storage_owned($body)
            }
            _ => candle_core::bail!("{}: f32 or f64 only", $what),
        }
    };
}

/// Run `f(row_index, row)` over the `row`-sized rows of `out`, on candle's thread count when
/// the work is large enough to pay for the threads (the training presets run one thread per
/// data-parallel slice, so this is serial there).
fn for_rows<T: Send>(out: &mut [T], row: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let rows = out.len() / row.max(1);
    let threads = candle_core::utils::get_num_threads()
        .max(1)
        .min(rows.max(1));
    if threads == 1 || out.len() < 1 << 16 {
        for (r, o) in out.chunks_mut(row.max(1)).enumerate() {
            f(r, o);
        }
        return;
    }
    let per = rows.div_ceil(threads);
    std::thread::scope(|s| {
        for (c, chunk) in out.chunks_mut(per * row).enumerate() {
            let f = &f;
            s.spawn(move || {
                for (k, o) in chunk.chunks_mut(row).enumerate() {
                    f(c * per + k, o);
                }
            });
        }
    });
}

/// The backward kernels' loop over the rows of (b, t, v) logits: `f(row, r, g[r], out_row)`
/// for each row whose position `j < n` has a non-zero incoming gradient, with `r = bi · n + j`
/// its index in the (b, n) output. Every other row's gradient stays 0, so padded and masked
/// positions cost one comparison.
fn for_gradient_rows<T: Real>(
    len: usize,
    g: &[T],
    dims: &[usize],
    n: usize,
    f: impl Fn(usize, usize, T, &mut [T]) + Sync,
) -> Vec<T> {
    let (t, v) = (dims[1], dims[2]);
    let mut out = vec![T::zero(); len];
    for_rows(&mut out, v, |row, o| {
        let (bi, j) = (row / t, row % t);
        if j >= n {
            return;
        }
        let r = bi * n + j;
        if g[r] != T::zero() {
            f(row, r, g[r], o);
        }
    });
    out
}

/// Row maximum and `ln Σ exp(z − max)`; the row's log-sum-exp is their sum.
fn max_and_log_sum<T: Real>(z: &[T]) -> (T, T) {
    let m = z.iter().fold(T::NEG_INF, |a, &b| a.larger(b));
    let mut s = T::zero();
    for &v in z {
        s += (v - m).exp();
    }
    (m, s.ln())
}

// ---------------------------------------------------------------------------------------------
// Attention softmax

/// `softmax(scale · scores + mask)` over the last dimension, differentiable in `scores`.
///
/// `scores` is (b, h, t, s) (query rows of each head, key columns); `mask` is an additive
/// (m, t, s) tensor with `m` 1 (shared by the batch) or `b`, of the scores' dtype: 0 where a key
/// is visible, −∞ (or a large negative number) where it is not. A row with no visible key is 0.
pub fn masked_softmax(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, _, t, s) = scores.dims4()?;
    let (m, mt, ms) = mask.dims3()?;
    if (mt, ms) != (t, s) || (m != 1 && m != b) {
        return Err(Error::invalid(format!(
            "attention mask is {:?}, scores are {:?}",
            mask.dims(),
            scores.dims()
        )));
    }
    if mask.dtype() != scores.dtype() {
        return Err(Error::invalid("attention mask and scores differ in dtype"));
    }
    let op = MaskedSoftmax { scale };
    Ok(scores.contiguous()?.apply_op2(&mask.contiguous()?, op)?)
}

struct MaskedSoftmax {
    scale: f64,
}

fn masked_softmax_rows<T: Real>(x: &[T], mask: &[T], dims: &[usize], scale: f64) -> Vec<T> {
    let (h, t, s) = (dims[1], dims[2], dims[3]);
    let shared = mask.len() == t * s;
    let scale = T::from_f64(scale);
    let mut out = vec![T::zero(); x.len()];
    for_rows(&mut out, s, |r, y| {
        let (bi, i) = (r / (h * t), r % t);
        let mrow = if shared { i } else { bi * t + i };
        let xr = &x[r * s..(r + 1) * s];
        let mr = &mask[mrow * s..(mrow + 1) * s];
        let mut mx = T::NEG_INF;
        for j in 0..s {
            let v = xr[j] * scale + mr[j];
            y[j] = v;
            mx = mx.larger(v);
        }
        if mx == T::NEG_INF {
            y.iter_mut().for_each(|v| *v = T::zero());
            return;
        }
        let mut sum = T::zero();
        for v in y.iter_mut() {
            // Causal rows mask about half their keys: exp(−∞) is 0, without the call.
            *v = if *v == T::NEG_INF {
                T::zero()
            } else {
                (*v - mx).exp()
            };
            sum += *v;
        }
        let inv = T::one() / sum;
        y.iter_mut().for_each(|v| *v *= inv);
    });
    out
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "dgpo-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l1.shape().dims();
        let out = in_float_type!(s1, "masked softmax", T => masked_softmax_rows(
            data::<T>(s1, l1, "scores")?,
            data::<T>(s2, l2, "mask")?,
            dims,
            self.scale,
        ));
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _scores: &Tensor,
        _mask: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = y.apply_op2_no_bwd(&dy.contiguous()?, &SoftmaxGrad { scale: self.scale })?;
        Ok((Some(dx), None))
    }
}

/// `dx = scale · y ⊙ (dy − Σ dy ⊙ y)` per row: the softmax's backward.
struct SoftmaxGrad {
    scale: f64,
}

fn softmax_grad_rows<T: Real>(y: &[T], dy: &[T], s: usize, scale: f64) -> Vec<T> {
    let scale = T::from_f64(scale);
    let mut out = vec![T::zero(); y.len()];
    for_rows(&mut out, s, |r, dx| {
        let (yr, gr) = (&y[r * s..(r + 1) * s], &dy[r * s..(r + 1) * s]);
        let mut dot = T::zero();
        for j in 0..s {
            dot += yr[j] * gr[j];
        }
        for j in 0..s {
            dx[j] = scale * yr[j] * (gr[j] - dot);
        }
    });
    out
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "dgpo-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let s = *l1.shape().dims().last().unwrap_or(&1);
        let out = in_float_type!(s1, "softmax gradient", T => softmax_grad_rows(
            data::<T>(s1, l1, "softmax")?,
            data::<T>(s2, l2, "gradient")?,
            s,
            self.scale,
        ));
        Ok((out, l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// Per-token quantities over the vocabulary

/// Check a (b, t, v) logits tensor against `n` predicted positions; returns (b, t, v).
fn logits_dims(logits: &Tensor, n: usize) -> Result<(usize, usize, usize)> {
    let (b, t, v) = logits.dims3()?;
    if n > t || v == 0 {
        return Err(Error::invalid(format!(
            "{n} positions asked of logits {:?}",
            logits.dims()
        )));
    }
    Ok((b, t, v))
}

/// `log softmax(logits[:, j])[targets[:, j]]` for the first `n = targets.dim(1)` positions:
/// (b, n), differentiable in `logits` (b, t, v). Targets are u32 token ids below `v`.
pub fn target_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (b, n) = targets.dims2()?;
    let (lb, _, v) = logits_dims(logits, n)?;
    if lb != b {
        return Err(Error::invalid(format!(
            "targets {:?} for logits {:?}",
            targets.dims(),
            logits.dims()
        )));
    }
    let targets = targets.to_dtype(DType::U32)?.contiguous()?;
    if let Some(bad) = targets
        .flatten_all()?
        .to_vec1::<u32>()?
        .iter()
        .find(|&&y| y as usize >= v)
    {
        return Err(Error::invalid(format!(
            "target token {bad} is outside the vocabulary of {v}"
        )));
    }
    Ok(logits.contiguous()?.apply_op2(&targets, TargetLogProb)?)
}

/// Row `(bi, j)` of logits laid out (b, t, v) for a (b, n) output index `r`.
fn logit_row<T>(z: &[T], r: usize, n: usize, t: usize, v: usize) -> &[T] {
    let (bi, j) = (r / n, r % n);
    let o = (bi * t + j) * v;
    &z[o..o + v]
}

struct TargetLogProb;

fn target_logprob_rows<T: Real>(z: &[T], y: &[u32], dims: &[usize], n: usize) -> Vec<T> {
    let (t, v) = (dims[1], dims[2]);
    let mut out = vec![T::zero(); y.len()];
    for_rows(&mut out, 1, |r, o| {
        let zr = logit_row(z, r, n, t, v);
        let (m, ls) = max_and_log_sum(zr);
        o[0] = zr[y[r] as usize] - m - ls;
    });
    out
}

impl CustomOp2 for TargetLogProb {
    fn name(&self) -> &'static str {
        "dgpo-target-logprob"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = data::<u32>(s2, l2, "targets")?;
        let tdims = l2.shape().dims();
        let (dims, n) = (l1.shape().dims(), tdims[1]);
        let out = in_float_type!(s1, "target log-probs", T => target_logprob_rows(
            data::<T>(s1, l1, "logits")?,
            y,
            dims,
            n,
        ));
        Ok((out, l2.shape().clone()))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = logits.apply_op3_no_bwd(targets, &grad.contiguous()?, &TargetLogProbGrad)?;
        Ok((Some(g), None))
    }
}

/// `g · (onehot(y) − softmax(z))` on the first `n` positions, 0 on the others.
struct TargetLogProbGrad;

fn target_logprob_grad_rows<T: Real>(
    z: &[T],
    y: &[u32],
    g: &[T],
    dims: &[usize],
    n: usize,
) -> Vec<T> {
    let v = dims[2];
    for_gradient_rows(z.len(), g, dims, n, |row, r, gr, o| {
        let zr = &z[row * v..(row + 1) * v];
        let (m, ls) = max_and_log_sum(zr);
        let lse = m + ls;
        for k in 0..v {
            o[k] = -gr * (zr[k] - lse).exp();
        }
        o[y[r] as usize] += gr;
    })
}

impl CustomOp3 for TargetLogProbGrad {
    fn name(&self) -> &'static str {
        "dgpo-target-logprob-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = data::<u32>(s2, l2, "targets")?;
        let (dims, n) = (l1.shape().dims(), l2.shape().dims()[1]);
        let out = in_float_type!(s1, "target log-prob gradient", T => target_logprob_grad_rows(
            data::<T>(s1, l1, "logits")?,
            y,
            data::<T>(s3, l3, "gradient")?,
            dims,
            n,
        ));
        Ok((out, l1.shape().clone()))
    }
}

/// Per-position forward KL(p_teacher ‖ p_student) = `Σ_v p_T (log p_T − log p_S)` over the first
/// `n` positions of two (b, t, v) logits tensors of one dtype: (b, n), differentiable in the
/// student's logits only (the teacher is a constant).
pub fn forward_kl(student: &Tensor, teacher: &Tensor, n: usize) -> Result<Tensor> {
    let dims = logits_dims(student, n)?;
    if teacher.dims() != student.dims() || teacher.dtype() != student.dtype() {
        return Err(Error::invalid(format!(
            "teacher logits {:?} ({:?}) differ from the student's {:?} ({:?})",
            teacher.dims(),
            teacher.dtype(),
            student.dims(),
            student.dtype()
        )));
    }
    let op = ForwardKl { n, b: dims.0 };
    Ok(student
        .contiguous()?
        .apply_op2(&teacher.detach().contiguous()?, op)?)
}

struct ForwardKl {
    n: usize,
    b: usize,
}

fn forward_kl_rows<T: Real>(s: &[T], te: &[T], dims: &[usize], n: usize) -> Vec<T> {
    let (b, t, v) = (dims[0], dims[1], dims[2]);
    let mut out = vec![T::zero(); b * n];
    for_rows(&mut out, 1, |r, o| {
        let (sr, tr) = (logit_row(s, r, n, t, v), logit_row(te, r, n, t, v));
        let (sm, sl) = max_and_log_sum(sr);
        let (tm, tl) = max_and_log_sum(tr);
        let (s_lse, t_lse) = (sm + sl, tm + tl);
        let mut kl = T::zero();
        for k in 0..v {
            let lt = tr[k] - t_lse;
            kl += lt.exp() * (lt - (sr[k] - s_lse));
        }
        o[0] = kl;
    });
    out
}

impl CustomOp2 for ForwardKl {
    fn name(&self) -> &'static str {
        "dgpo-forward-kl"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l1.shape().dims();
        let out = in_float_type!(s1, "forward KL", T => forward_kl_rows(
            data::<T>(s1, l1, "student logits")?,
            data::<T>(s2, l2, "teacher logits")?,
            dims,
            self.n,
        ));
        Ok((out, Shape::from((self.b, self.n))))
    }

    fn bwd(
        &self,
        student: &Tensor,
        teacher: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g =
            student.apply_op3_no_bwd(teacher, &grad.contiguous()?, &ForwardKlGrad { n: self.n })?;
        Ok((Some(g), None))
    }
}

/// `g · (p_S − p_T)` on the first `n` positions, 0 on the others.
struct ForwardKlGrad {
    n: usize,
}

fn forward_kl_grad_rows<T: Real>(s: &[T], te: &[T], g: &[T], dims: &[usize], n: usize) -> Vec<T> {
    let v = dims[2];
    for_gradient_rows(s.len(), g, dims, n, |row, _, gr, o| {
        let (sr, tr) = (&s[row * v..(row + 1) * v], &te[row * v..(row + 1) * v]);
        let (sm, sl) = max_and_log_sum(sr);
        let (tm, tl) = max_and_log_sum(tr);
        let (s_lse, t_lse) = (sm + sl, tm + tl);
        for k in 0..v {
            o[k] = gr * ((sr[k] - s_lse).exp() - (tr[k] - t_lse).exp());
        }
    })
}

impl CustomOp3 for ForwardKlGrad {
    fn name(&self) -> &'static str {
        "dgpo-forward-kl-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l1.shape().dims();
        let out = in_float_type!(s1, "forward KL gradient", T => forward_kl_grad_rows(
            data::<T>(s1, l1, "student logits")?,
            data::<T>(s2, l2, "teacher logits")?,
            data::<T>(s3, l3, "gradient")?,
            dims,
            self.n,
        ));
        Ok((out, l1.shape().clone()))
    }
}

/// Per-position entropy `−Σ_v p_v log p_v` of `softmax(logits[:, j])` for the first `n`
/// positions: (b, n), differentiable in `logits` (b, t, v).
pub fn entropy(logits: &Tensor, n: usize) -> Result<Tensor> {
    let (b, _, _) = logits_dims(logits, n)?;
    Ok(logits.contiguous()?.apply_op1(Entropy { n, b })?)
}

struct Entropy {
    n: usize,
    b: usize,
}

fn entropy_rows<T: Real>(z: &[T], dims: &[usize], n: usize) -> Vec<T> {
    let (b, t, v) = (dims[0], dims[1], dims[2]);
    let mut out = vec![T::zero(); b * n];
    for_rows(&mut out, 1, |r, o| {
        let zr = logit_row(z, r, n, t, v);
        let (m, ls) = max_and_log_sum(zr);
        let lse = m + ls;
        let mut h = T::zero();
        for &x in zr {
            let lp = x - lse;
            h -= lp.exp() * lp;
        }
        o[0] = h;
    });
    out
}

impl CustomOp1 for Entropy {
    fn name(&self) -> &'static str {
        "dgpo-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l.shape().dims();
        let out = in_float_type!(s, "entropy", T => entropy_rows(
            data::<T>(s, l, "logits")?,
            dims,
            self.n,
        ));
        Ok((out, Shape::from((self.b, self.n))))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        h: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let g = logits.apply_op3_no_bwd(h, &grad.contiguous()?, &EntropyGrad { n: self.n })?;
        Ok(Some(g))
    }
}

/// `∂H/∂z_k = −p_k (log p_k + H)`, times the incoming gradient, on the first `n` positions.
struct EntropyGrad {
    n: usize,
}

fn entropy_grad_rows<T: Real>(z: &[T], h: &[T], g: &[T], dims: &[usize], n: usize) -> Vec<T> {
    let v = dims[2];
    for_gradient_rows(z.len(), g, dims, n, |row, r, gr, o| {
        let zr = &z[row * v..(row + 1) * v];
        let (m, ls) = max_and_log_sum(zr);
        let lse = m + ls;
        for k in 0..v {
            let lp = zr[k] - lse;
            o[k] = -gr * lp.exp() * (lp + h[r]);
        }
    })
}

impl CustomOp3 for EntropyGrad {
    fn name(&self) -> &'static str {
        "dgpo-entropy-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l1.shape().dims();
        let out = in_float_type!(s1, "entropy gradient", T => entropy_grad_rows(
            data::<T>(s1, l1, "logits")?,
            data::<T>(s2, l2, "entropy")?,
            data::<T>(s3, l3, "gradient")?,
            dims,
            self.n,
        ));
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, Device, Var};

    fn rand(shape: &[usize], seed: u64, spread: f64) -> Tensor {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * spread
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// Causal mask for (t, s) with the queries at the end of the keys, plus a padded key.
    fn mask(b: usize, t: usize) -> Tensor {
        let mut m = vec![0f64; b * t * t];
        for bi in 0..b {
            for i in 0..t {
                for j in 0..t {
                    if j > i || (bi == 1 && j == t - 1) {
                        m[(bi * t + i) * t + j] = if j > i { f64::NEG_INFINITY } else { -1e9 };
                    }
                }
            }
        }
        Tensor::from_vec(m, (b, t, t), &Device::Cpu).unwrap()
    }

    #[test]
    fn masked_softmax_matches_the_composed_ops_in_value_and_gradient() {
        let (b, h, t) = (2, 3, 5);
        let x = Var::from_tensor(&rand(&[b, h, t, t], 1, 6.0)).unwrap();
        let w = rand(&[b, h, t, t], 2, 2.0);
        let m = mask(b, t);
        let scale = 0.35;
        let fused = masked_softmax(x.as_tensor(), &m, scale).unwrap();
        let composed = candle_nn::ops::softmax(
            &(x.as_tensor() * scale)
                .unwrap()
                .broadcast_add(&m.unsqueeze(1).unwrap())
                .unwrap(),
            D::Minus1,
        )
        .unwrap();
        assert!(max_diff(&fused, &composed) < 1e-12);
        let gf = (&fused * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gc = (&composed * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let (gf, gc) = (gf.get(&x).unwrap(), gc.get(&x).unwrap());
        assert!(max_diff(gf, gc) < 1e-12, "{}", max_diff(gf, gc));
        // Masked keys get no probability and no gradient; rows sum to 1.
        let row_sums = fused
            .sum(D::Minus1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        assert!(row_sums.iter().all(|s| (s - 1.0).abs() < 1e-12));
        let y = fused.i((0, 0, 0, 1)).unwrap().to_scalar::<f64>().unwrap();
        assert_eq!(y, 0.0);
        let g = gf.i((1, 2, 3, t - 1)).unwrap().to_scalar::<f64>().unwrap();
        assert!(g.abs() < 1e-300);
        // A shared (1, t, s) mask broadcasts over the batch.
        let shared = m.narrow(0, 0, 1).unwrap();
        let f1 = masked_softmax(x.as_tensor(), &shared, scale).unwrap();
        let c1 = candle_nn::ops::softmax(
            &(x.as_tensor() * scale)
                .unwrap()
                .broadcast_add(&shared.unsqueeze(1).unwrap())
                .unwrap(),
            D::Minus1,
        )
        .unwrap();
        assert!(max_diff(&f1, &c1) < 1e-12);
        assert!(masked_softmax(x.as_tensor(), &mask(3, t), scale).is_err());
    }

    #[test]
    fn large_inputs_split_over_threads_give_the_serial_result() {
        // 2 x 2 x 128 x 256 scores: above the threading threshold.
        let (b, h, t, s) = (2, 2, 128, 256);
        let x = rand(&[b, h, t, s], 8, 6.0).to_dtype(DType::F32).unwrap();
        let m = Tensor::zeros((1, t, s), DType::F32, &Device::Cpu).unwrap();
        let fused = masked_softmax(&x, &m, 0.5).unwrap();
        let composed = candle_nn::ops::softmax(&(&x * 0.5).unwrap(), D::Minus1).unwrap();
        let d = max_diff(
            &fused.to_dtype(DType::F64).unwrap(),
            &composed.to_dtype(DType::F64).unwrap(),
        );
        assert!(d < 1e-6, "{d}");
    }

    use candle_core::IndexOp;

    fn composed_log_softmax(z: &Tensor, n: usize) -> Tensor {
        candle_nn::ops::log_softmax(&z.narrow(1, 0, n).unwrap(), D::Minus1).unwrap()
    }

    #[test]
    fn target_logprobs_match_the_composed_ops_in_value_and_gradient() {
        let (b, t, v) = (2, 4, 7);
        let z = Var::from_tensor(&rand(&[b, t, v], 3, 8.0)).unwrap();
        let y = Tensor::new(&[[0u32, 6, 3], [2, 2, 5]], &Device::Cpu).unwrap();
        let w = rand(&[b, t - 1], 4, 2.0);
        let fused = target_logprobs(z.as_tensor(), &y).unwrap();
        let composed = composed_log_softmax(z.as_tensor(), t - 1)
            .gather(&y.unsqueeze(2).unwrap(), 2)
            .unwrap()
            .squeeze(2)
            .unwrap();
        assert!(max_diff(&fused, &composed) < 1e-12);
        let gf = (&fused * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gc = (&composed * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(max_diff(gf.get(&z).unwrap(), gc.get(&z).unwrap()) < 1e-12);
        let bad = Tensor::new(&[[0u32, 7, 3], [2, 2, 5]], &Device::Cpu).unwrap();
        assert!(target_logprobs(z.as_tensor(), &bad).is_err());
    }

    #[test]
    fn forward_kl_and_entropy_match_the_composed_ops_in_value_and_gradient() {
        let (b, t, v) = (2, 4, 7);
        let z = Var::from_tensor(&rand(&[b, t, v], 5, 8.0)).unwrap();
        let zt = rand(&[b, t, v], 6, 8.0);
        let w = rand(&[b, t - 1], 7, 2.0);
        let n = t - 1;
        let ls = composed_log_softmax(z.as_tensor(), n);
        let lt = composed_log_softmax(&zt, n);
        let kl_c = (lt.exp().unwrap() * (&lt - &ls).unwrap())
            .unwrap()
            .sum(D::Minus1)
            .unwrap();
        let kl_f = forward_kl(z.as_tensor(), &zt, n).unwrap();
        assert!(max_diff(&kl_f, &kl_c) < 1e-12);
        let gf = (&kl_f * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (&kl_c * &w).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max_diff(gf.get(&z).unwrap(), gc.get(&z).unwrap()) < 1e-12);
        // A student equal to its teacher has KL 0.
        let same = forward_kl(&zt, &zt, n).unwrap();
        assert!(max_diff(&same, &same.zeros_like().unwrap()) < 1e-12);

        let h_c = (ls.exp().unwrap() * &ls)
            .unwrap()
            .sum(D::Minus1)
            .unwrap()
            .neg()
            .unwrap();
        let h_f = entropy(z.as_tensor(), n).unwrap();
        assert!(max_diff(&h_f, &h_c) < 1e-12);
        let gf = (&h_f * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (&h_c * &w).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max_diff(gf.get(&z).unwrap(), gc.get(&z).unwrap()) < 1e-12);
        assert!(forward_kl(z.as_tensor(), &zt.narrow(1, 0, 2).unwrap(), 1).is_err());
        assert!(entropy(z.as_tensor(), t + 1).is_err());
    }
}
