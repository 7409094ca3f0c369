//! The frozen teacher's logits on a fixed set of distillation examples, computed once per
//! example and reused on every later pass.
//!
//! Why: cold-start KD passes over the same teacher trajectories many times (the tiny demo's
//! 2,400 updates of 8 sequences see each of its few hundred kept trajectories dozens of
//! times), and the teacher does not change, so scoring it on every batch recomputes the same
//! distributions. At the tiny presets' sizes (2.0M teacher, 1.0M student) the teacher's
//! forward pass is about a third of a KD update.
//!
//! Two choices keep a run reproducible and the cache small:
//! - each example is scored alone (a batch of one, no padding), so its logits do not depend on
//!   which batch first needed them: a resumed run reads the same numbers as the uninterrupted
//!   one, and the cache is filled lazily (an example never drawn is never scored);
//! - only the rows the loss reads are kept: the positions that predict a learnt token, as
//!   [`TrainModel::target_logits`] gives them. Prompt, `<information>`, invalid-action and
//!   padding positions are masked out of every loss.
//!
//! The cache holds `learnt tokens × vocabulary` values in the teacher's dtype; [`TeacherCache::new`]
//! refuses (returns `None`) when that exceeds a memory budget, and the trainer then scores the
//! teacher online as before.

use std::sync::OnceLock;

use candle_core::{DType, Tensor};
use dgpo_core::{Error, Result};

use crate::model::{Batch, TrainModel};
use crate::trainer::Example;

/// Default budget of [`TeacherCache::new`]: 3 GiB.
pub const DEFAULT_BUDGET_BYTES: usize = 3 << 30;

/// The teacher's logits at the learnt positions of each example, filled on first use.
pub struct TeacherCache {
    /// Per example: (learnt positions, vocab).
    rows: Vec<OnceLock<Tensor>>,
    pad: u32,
}

impl TeacherCache {
    /// Bytes a full cache of `data` takes for a teacher of `vocab` tokens in `dtype`.
    pub fn bytes_needed(data: &[Example], vocab: usize, dtype: DType) -> usize {
        let rows: usize = data
            .iter()
            .map(|e| e.learn.iter().skip(1).filter(|&&l| l).count())
            .sum();
        rows * vocab * dtype.size_in_bytes()
    }

    /// A cache for `data` scored by `teacher`, or `None` when the full cache would take more
    /// than `budget_bytes` or the teacher is not on the CPU (the caller then scores the teacher
    /// on every batch). Not on a GPU: there the teacher's forward pass is cheap and memory is
    /// what runs out (a 150k vocabulary makes 0.6 MB of logits per learnt token in f32).
    pub fn new(
        teacher: &TrainModel,
        data: &[Example],
        pad: u32,
        budget_bytes: usize,
    ) -> Option<TeacherCache> {
        if !teacher.device().is_cpu() {
            return None;
        }
        let need = Self::bytes_needed(data, teacher.vocab_size(), teacher.dtype());
        if need > budget_bytes {
            tracing::info!(
                need_mib = need >> 20,
                budget_mib = budget_bytes >> 20,
                "teacher logits exceed the cache budget: scoring the teacher on every batch"
            );
            return None;
        }
        tracing::debug!(need_mib = need >> 20, "caching the teacher's logits");
        Some(TeacherCache {
            rows: (0..data.len()).map(|_| OnceLock::new()).collect(),
            pad,
        })
    }

    /// Examples scored so far.
    pub fn filled(&self) -> usize {
        self.rows.iter().filter(|r| r.get().is_some()).count()
    }

    /// The rows of example `i`, (learnt positions, vocab), scoring it alone first if it is
    /// not cached yet.
    fn rows(&self, teacher: &TrainModel, data: &[Example], i: usize) -> Result<&Tensor> {
        let slot = self.rows.get(i).ok_or_else(|| {
            Error::invalid(format!(
                "example {i} is outside the teacher cache of {} examples",
                self.rows.len()
            ))
        })?;
        if let Some(r) = slot.get() {
            return Ok(r);
        }
        let e = &data[i];
        let batch = Batch::new(
            std::slice::from_ref(&e.ids),
            Some(std::slice::from_ref(&e.learn)),
            self.pad,
            teacher.device(),
        )?;
        let rows = if batch.target_rows.is_empty() {
            Tensor::zeros((0, teacher.vocab_size()), teacher.dtype(), teacher.device())?
        } else {
            teacher.target_logits_no_grad(&batch)?
        };
        // Two threads never score the same example (a micro-batch's slices are disjoint), so
        // a lost race would only drop an identical copy.
        let _ = slot.set(rows);
        Ok(slot.get().expect("set above"))
    }

    /// The teacher's logits at the learnt positions of `batch`, whose row `k` is example
    /// `idx[k]`: (n, vocab) in [`Batch::target_rows`] order, as the teacher's
    /// [`TrainModel::target_logits`] of the batch gives them.
    pub fn target_logits(
        &self,
        teacher: &TrainModel,
        data: &[Example],
        idx: &[usize],
        batch: &Batch,
    ) -> Result<Tensor> {
        let b = batch.lens.len();
        if idx.len() != b {
            return Err(Error::invalid(format!(
                "{} example indices for a batch of {b} sequences",
                idx.len()
            )));
        }
        let mut parts = Vec::with_capacity(b);
        for (k, &i) in idx.iter().enumerate() {
            let r = self.rows(teacher, data, i)?;
            if data[i].ids.len() != batch.lens[k] {
                return Err(Error::invalid(format!(
                    "example {i} has {} tokens but batch row {k} has {}",
                    data[i].ids.len(),
                    batch.lens[k]
                )));
            }
            parts.push(r);
        }
        let t = Tensor::cat(&parts, 0)?;
        if t.dim(0)? != batch.target_rows.len() {
            return Err(Error::invalid(format!(
                "the examples have {} learnt positions, the batch {}",
                t.dim(0)?,
                batch.target_rows.len()
            )));
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelOptions, config_json};
    use crate::presets::Shape;
    use candle_core::IndexOp;

    fn teacher() -> TrainModel {
        let shape = Shape {
            hidden: 32,
            intermediate: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
        };
        let dc = shape.decoder(97);
        let cj = config_json(&dc, None, None);
        TrainModel::new_random(dc, cj, b"{}".to_vec(), &ModelOptions::default()).unwrap()
    }

    fn example(len: usize, seed: u32, learnt: impl Fn(usize) -> bool) -> Example {
        Example {
            ids: (0..len as u32).map(|k| (k * 7 + seed) % 97).collect(),
            learn: (0..len).map(learnt).collect(),
        }
    }

    /// The cached rows of a padded batch are the teacher's own batched logits at the positions
    /// that predict a learnt token, in `target_rows` order, whichever batch first scored an
    /// example.
    #[test]
    fn cached_rows_are_the_teachers_logits_at_learnt_positions() {
        let t = teacher();
        let data = vec![
            example(9, 1, |k| k >= 3),
            // An "observation" in the middle: tokens 6..9 are not learnt.
            example(14, 5, |k| k >= 2 && !(6..9).contains(&k)),
            example(5, 2, |_| false),
        ];
        let cache = TeacherCache::new(&t, &data, 0, usize::MAX).unwrap();
        assert_eq!(cache.filled(), 0);
        // Another order than the data's; example 1 is first scored in another row.
        for idx in [vec![1, 0], vec![0, 2, 1]] {
            let seqs: Vec<Vec<u32>> = idx.iter().map(|&i| data[i].ids.clone()).collect();
            let learn: Vec<Vec<bool>> = idx.iter().map(|&i| data[i].learn.clone()).collect();
            let batch = Batch::new(&seqs, Some(&learn), 0, t.device()).unwrap();
            let online = t.logits(&batch).unwrap();
            let cached = cache.target_logits(&t, &data, &idx, &batch).unwrap();
            assert_eq!(cached.dims(), &[batch.target_rows.len(), 97]);
            let tt = batch.ids.dim(1).unwrap();
            let mut r = 0;
            for (k, &i) in idx.iter().enumerate() {
                for j in 0..data[i].ids.len() - 1 {
                    if !data[i].learn[j + 1] {
                        continue;
                    }
                    assert_eq!(batch.target_rows[r] as usize, k * tt + j);
                    let c = cached.i(r).unwrap().to_vec1::<f32>().unwrap();
                    let o = online.i((k, j)).unwrap().to_vec1::<f32>().unwrap();
                    let d = c
                        .iter()
                        .zip(&o)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max);
                    assert!(d < 1e-4, "example {i} position {j}: differs by {d}");
                    r += 1;
                }
            }
            assert_eq!(r, batch.target_rows.len());
        }
        assert_eq!(cache.filled(), 3);
        // Rows for 6 + 9 learnt targets, none for the third example.
        assert_eq!(
            TeacherCache::bytes_needed(&data, 97, DType::F32),
            (6 + 9) * 97 * 4
        );
        // A budget below that refuses the cache; mismatched batches are errors.
        assert!(TeacherCache::new(&t, &data, 0, (6 + 9) * 97 * 4 - 1).is_none());
        let batch = Batch::new(&[data[0].ids.clone()], None, 0, t.device()).unwrap();
        let e = cache
            .target_logits(&t, &data, &[0, 1], &batch)
            .unwrap_err()
            .to_string();
        assert!(e.contains("2 example indices for a batch of 1"), "{e}");
        let e = cache
            .target_logits(&t, &data, &[1], &batch)
            .unwrap_err()
            .to_string();
        assert!(e.contains("example 1 has 14 tokens"), "{e}");
        // Example 0 learnt as a whole (no mask) has more targets than its cached rows.
        let e = cache
            .target_logits(&t, &data, &[0], &batch)
            .unwrap_err()
            .to_string();
        assert!(e.contains("6 learnt positions, the batch 8"), "{e}");
    }
}
