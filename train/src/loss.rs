//! Losses: masked cross-entropy, full-vocabulary forward KL, and their mix for cold-start KD.
//!
//! All per-position tensors follow [`crate::Batch`]'s convention: column `j` is the prediction
//! of token `j + 1`, and `mask` (b, t − 1) is 1 on learnt targets. Masked-out positions
//! (padding, prompt, `<information>` observations, invalid-action messages) contribute nothing,
//! and means are over the learnt tokens of the whole batch (TAID's token-level average).

use candle_core::{D, DType, Tensor};
use dgpo_core::{Error, Result};

/// The value of a 0-d tensor of any float dtype.
pub fn scalar(x: &Tensor) -> Result<f64> {
    Ok(x.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// Losses are computed in f32 for f32/bf16/f16 models (a bf16 log-softmax over a large
/// vocabulary loses too much), and in f64 for f64 models (gradient checks).
pub fn wide(x: &Tensor) -> Result<Tensor> {
    Ok(match wide_dtype(x.dtype()) {
        d if d == x.dtype() => x.clone(),
        d => x.to_dtype(d)?,
    })
}

/// The dtype [`wide`] computes losses in for a model of dtype `d`.
pub fn wide_dtype(d: DType) -> DType {
    match d {
        DType::F64 => DType::F64,
        _ => DType::F32,
    }
}

/// `Σ x·m / max(Σ m, 1)`: a mean over masked positions that is 0, not NaN, for an empty mask.
pub fn masked_mean(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask.to_dtype(x.dtype())?;
    let num = (x * &m)?.sum_all()?;
    let den = scalar(&m.sum_all()?)?.max(1.0);
    Ok((num / den)?)
}

/// Cross-entropy of the batch's own next tokens: mean over the mask of −log p(y_{j+1}).
pub fn cross_entropy(logits: &Tensor, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let lp = crate::model::token_logprobs(logits, ids)?;
    masked_mean(&lp.neg()?, mask)
}

/// Per-position forward KL(p_teacher ‖ p_student) over the full vocabulary, (b, t − 1), at
/// temperature 1. The teacher side is detached: only the student gets gradients.
pub fn forward_kl_per_token(teacher_logits: &Tensor, student_logits: &Tensor) -> Result<Tensor> {
    let (bt, tt, vt) = teacher_logits.dims3()?;
    let (bs, ts, vs) = student_logits.dims3()?;
    if vt != vs {
        return Err(Error::invalid(format!(
            "teacher vocabulary ({vt}) differs from the student's ({vs}): forward KL needs the same tokenizer"
        )));
    }
    if (bt, tt) != (bs, ts) {
        return Err(Error::invalid(format!(
            "teacher logits are ({bt}, {tt}) positions, student logits ({bs}, {ts})"
        )));
    }
    let t = ts - 1;
    let (wt, ws) = (wide(teacher_logits)?, wide(student_logits)?);
    if dgpo_core::model::fused::supported(&ws) && wt.dtype() == ws.dtype() {
        // One pass over both logits each way (the composed ops below make a dozen).
        return dgpo_core::model::fused::forward_kl(&ws, &wt, t);
    }
    let lt =
        candle_nn::ops::log_softmax(&wide(&teacher_logits.narrow(1, 0, t)?.detach())?, D::Minus1)?;
    let ls = candle_nn::ops::log_softmax(&wide(&student_logits.narrow(1, 0, t)?)?, D::Minus1)?;
    let pt = lt.exp()?;
    // Σ_v p_T (log p_T − log p_S). The p_T log p_T part is a constant for the student (TAID
    // drops it); keeping it makes the value a true KL (0 when the two agree) for the logs.
    Ok((pt * (lt - ls)?)?.sum(D::Minus1)?)
}

/// Masked mean forward KL.
pub fn forward_kl(
    teacher_logits: &Tensor,
    student_logits: &Tensor,
    mask: &Tensor,
) -> Result<Tensor> {
    masked_mean(&forward_kl_per_token(teacher_logits, student_logits)?, mask)
}

/// The parts of the cold-start distillation loss.
#[derive(Debug, Clone)]
pub struct DistillLoss {
    /// `(1 − α)·CE + α·FKL`, the tensor to back-propagate.
    pub loss: Tensor,
    /// Cross-entropy on the teacher's tokens.
    pub ce: f64,
    /// Forward KL.
    pub kl: f64,
}

/// `(1 − α)·CE + α·FKL` on teacher-forced tokens `ids` (TAID's `distil_ratio` = α; α = 1 is pure
/// forward KL, the cold start the DGPO authors used). A term whose weight is 0 is not built.
pub fn distill_loss(
    teacher_logits: &Tensor,
    student_logits: &Tensor,
    ids: &Tensor,
    mask: &Tensor,
    alpha: f64,
) -> Result<DistillLoss> {
    check_alpha(alpha)?;
    let kl = forward_kl(teacher_logits, student_logits, mask)?;
    let ce = cross_entropy(student_logits, ids, mask)?;
    mix(kl, ce, alpha)
}

fn check_alpha(alpha: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&alpha) {
        return Err(Error::invalid(format!(
            "alpha must be in [0, 1], got {alpha}"
        )));
    }
    Ok(())
}

/// `(1 − α)·CE + α·FKL` from the two means (a term whose weight is 0 is not built).
fn mix(kl: Tensor, ce: Tensor, alpha: f64) -> Result<DistillLoss> {
    let (klv, cev) = (scalar(&kl)?, scalar(&ce)?);
    let loss = if alpha == 1.0 {
        kl
    } else if alpha == 0.0 {
        ce
    } else {
        ((ce * (1.0 - alpha))? + (kl * alpha)?)?
    };
    Ok(DistillLoss {
        loss,
        ce: cev,
        kl: klv,
    })
}

/// Cross-entropy in row form: the mean of `−log p(target)` over row logits (n, vocab) of
/// learnt positions ([`crate::TrainModel::target_logits`]); equal to [`cross_entropy`] of the
/// full logits under the batch's target mask.
pub fn cross_entropy_rows(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    Ok(crate::model::row_logprobs(logits, targets)?
        .neg()?
        .mean_all()?)
}

/// Forward KL(p_teacher ‖ p_student) per row of (n, vocab) logits of learnt positions, (n,);
/// the row form of [`forward_kl_per_token`].
pub fn forward_kl_rows(teacher_logits: &Tensor, student_logits: &Tensor) -> Result<Tensor> {
    let (nt, vt) = teacher_logits.dims2()?;
    let (ns, vs) = student_logits.dims2()?;
    if vt != vs {
        return Err(Error::invalid(format!(
            "teacher vocabulary ({vt}) differs from the student's ({vs}): forward KL needs the same tokenizer"
        )));
    }
    if nt != ns {
        return Err(Error::invalid(format!(
            "teacher logits have {nt} rows, student logits {ns}"
        )));
    }
    let (wt, ws) = (wide(&teacher_logits.detach())?, wide(student_logits)?);
    if dgpo_core::model::fused::supported(&ws) && wt.dtype() == ws.dtype() {
        // Each row is a batch of one position.
        let k = dgpo_core::model::fused::forward_kl(&ws.unsqueeze(1)?, &wt.unsqueeze(1)?, 1)?;
        return Ok(k.squeeze(1)?);
    }
    let lt = candle_nn::ops::log_softmax(&wt, D::Minus1)?;
    let ls = candle_nn::ops::log_softmax(&ws, D::Minus1)?;
    Ok((lt.exp()? * (lt - ls)?)?.sum(D::Minus1)?)
}

/// [`distill_loss`] in row form: `(1 − α)·CE + α·FKL` over row logits (n, vocab) of the learnt
/// positions and the tokens they predict (n,).
pub fn distill_loss_rows(
    teacher_logits: &Tensor,
    student_logits: &Tensor,
    targets: &Tensor,
    alpha: f64,
) -> Result<DistillLoss> {
    check_alpha(alpha)?;
    let kl = forward_kl_rows(teacher_logits, student_logits)?.mean_all()?;
    let ce = cross_entropy_rows(student_logits, targets)?;
    mix(kl, ce, alpha)
}

/// Sampled-token KL estimate `log π_student(y_t) − log π_teacher(y_t)` (the `kl` / k1 estimator
/// of DGPO's reward penalty), (b, t − 1), from per-token log-probs.
pub fn k1_kl(student_logprobs: &Tensor, teacher_logprobs: &Tensor) -> Result<Tensor> {
    Ok((student_logprobs - teacher_logprobs)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t3(v: &[f32], shape: (usize, usize, usize)) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    fn lse(x: &[f64]) -> f64 {
        let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
    }

    // One sequence of 3 tokens over a 3-token vocabulary: two predicted positions.
    const S: [f32; 9] = [1.0, 2.0, 0.5, 0.0, -1.0, 3.0, 9.0, 9.0, 9.0];
    const T: [f32; 9] = [0.5, 0.5, 2.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0];

    #[test]
    fn cross_entropy_matches_hand_computation() {
        let logits = t3(&S, (1, 3, 3));
        let ids = Tensor::new(&[[0u32, 1, 2]], &Device::Cpu).unwrap();
        // Position 0 predicts token 1 from logits [1,2,0.5]; position 1 predicts 2 from [0,-1,3].
        let nll0 = lse(&[1.0, 2.0, 0.5]) - 2.0;
        let nll1 = lse(&[0.0, -1.0, 3.0]) - 3.0;
        let mask = Tensor::new(&[[1f32, 1.0]], &Device::Cpu).unwrap();
        let ce = cross_entropy(&logits, &ids, &mask)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        assert!((ce - (nll0 + nll1) / 2.0).abs() < 1e-6, "{ce}");
        // Masking position 1 (an observation token) leaves position 0 alone.
        let mask = Tensor::new(&[[1f32, 0.0]], &Device::Cpu).unwrap();
        let ce = cross_entropy(&logits, &ids, &mask)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        assert!((ce - nll0).abs() < 1e-6, "{ce}");
    }

    #[test]
    fn forward_kl_matches_hand_computation() {
        let s = t3(&S, (1, 3, 3));
        let t = t3(&T, (1, 3, 3));
        let kl = |tl: &[f64], sl: &[f64]| -> f64 {
            let (zt, zs) = (lse(tl), lse(sl));
            tl.iter()
                .zip(sl)
                .map(|(a, b)| (a - zt).exp() * ((a - zt) - (b - zs)))
                .sum()
        };
        let k0 = kl(&[0.5, 0.5, 2.0], &[1.0, 2.0, 0.5]);
        let k1 = kl(&[1.0, 1.0, 1.0], &[0.0, -1.0, 3.0]);
        let per = forward_kl_per_token(&t, &s)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert!((per[0][0] as f64 - k0).abs() < 1e-6 && (per[0][1] as f64 - k1).abs() < 1e-6);
        let mask = Tensor::new(&[[0f32, 1.0]], &Device::Cpu).unwrap();
        let m = forward_kl(&t, &s, &mask)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        assert!((m - k1).abs() < 1e-6);
        // KL of a distribution with itself is 0; the mix with α = 0.5 is half CE, half KL.
        let z = forward_kl(&s, &s, &mask)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(z.abs() < 1e-6);
        let ids = Tensor::new(&[[0u32, 1, 2]], &Device::Cpu).unwrap();
        let d = distill_loss(&t, &s, &ids, &mask, 0.5).unwrap();
        let l = d.loss.to_scalar::<f32>().unwrap() as f64;
        assert!((l - 0.5 * (d.ce + d.kl)).abs() < 1e-6);
        assert!((d.ce - (lse(&[0.0, -1.0, 3.0]) - 3.0)).abs() < 1e-6);
    }

    /// The row forms over the learnt positions equal the masked full forms.
    #[test]
    fn row_forms_equal_the_masked_full_forms() {
        let s = t3(&S, (1, 3, 3));
        let t = t3(&T, (1, 3, 3));
        let ids = Tensor::new(&[[0u32, 1, 2]], &Device::Cpu).unwrap();
        // Only position 1 (predicting token 2) is learnt.
        let mask = Tensor::new(&[[0f32, 1.0]], &Device::Cpu).unwrap();
        let row = |x: &Tensor| x.narrow(1, 1, 1).unwrap().squeeze(0).unwrap();
        let tgt = Tensor::new(&[2u32], &Device::Cpu).unwrap();
        let f = |x: Tensor| x.to_scalar::<f32>().unwrap();
        let ce_full = f(cross_entropy(&s, &ids, &mask).unwrap());
        let ce_rows = f(cross_entropy_rows(&row(&s), &tgt).unwrap());
        assert!((ce_full - ce_rows).abs() < 1e-6, "{ce_full} vs {ce_rows}");
        let kl_full = f(forward_kl(&t, &s, &mask).unwrap());
        let kl_rows = forward_kl_rows(&row(&t), &row(&s)).unwrap();
        assert_eq!(kl_rows.dims(), &[1]);
        assert!((kl_full - f(kl_rows.sum_all().unwrap())).abs() < 1e-6);
        let d = distill_loss(&t, &s, &ids, &mask, 0.3).unwrap();
        let r = distill_loss_rows(&row(&t), &row(&s), &tgt, 0.3).unwrap();
        assert!((d.ce - r.ce).abs() < 1e-6 && (d.kl - r.kl).abs() < 1e-6);
        assert!((f(d.loss) - f(r.loss)).abs() < 1e-6);
        let e = forward_kl_rows(&row(&t), &s.squeeze(0).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 rows") && e.contains("3"), "{e}");
    }

    #[test]
    fn vocab_mismatch_is_refused() {
        let s = t3(&S, (1, 3, 3));
        let t = Tensor::zeros((1, 3, 4), DType::F32, &Device::Cpu).unwrap();
        let e = forward_kl_per_token(&t, &s).unwrap_err().to_string();
        assert!(e.contains("vocabulary (4)") && e.contains("(3)"), "{e}");
    }

    #[test]
    fn empty_mask_gives_zero_not_nan() {
        let s = t3(&S, (1, 3, 3));
        let ids = Tensor::new(&[[0u32, 1, 2]], &Device::Cpu).unwrap();
        let mask = Tensor::zeros((1, 2), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(
            cross_entropy(&s, &ids, &mask)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
    }
}
