//! The supervised loop shared by SFT and cold-start KD: seeded data order, gradient
//! accumulation, clipping, AdamW with a schedule, metrics and checkpoints with resume.
//!
//! KD reads the frozen teacher's logits from [`crate::teacher_cache`] (each example scored
//! once, alone) when they fit its budget, and every loss is computed on the logits of learnt
//! positions only ([`TrainModel::target_logits`]).
//!
//! Determinism: the data order of epoch `e` is a shuffle seeded by `seed + e`, and the examples
//! of update `s` are fixed slots of that order, so a resumed run needs only the step counter
//! (plus weights and optimiser state) to continue exactly where the uninterrupted run would be.

use std::path::{Path, PathBuf};
use std::time::Instant;

use dgpo_core::agent::Rollout;
use dgpo_core::{Error, Result};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{
    MetricsLog, StepMetrics, TrainState, list_checkpoints, load_checkpoint, save_checkpoint,
};
use crate::loss;
use crate::model::{Batch, TrainModel};
use crate::optim::{AdamW, AdamWConfig, Schedule};
use crate::teacher_cache::TeacherCache;

/// One training sequence: token ids and which of them the loss learns (false for the prompt,
/// `<information>` observations and invalid-action messages).
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Per token: learnt or not.
    pub learn: Vec<bool>,
}

impl Example {
    /// A teacher (or student) rollout of the agent loop as a training example: the prompt is
    /// not learnt, generated tokens are, observation tokens (`<information>` blocks,
    /// invalid-action messages) are not. The ids are the rollout's own, never re-tokenised.
    pub fn from_rollout(r: &Rollout) -> Result<Example> {
        if r.response_ids.len() != r.response_mask.len() {
            return Err(Error::invalid(format!(
                "rollout has {} response ids but {} mask entries",
                r.response_ids.len(),
                r.response_mask.len()
            )));
        }
        let mut ids = r.prompt_ids.clone();
        ids.extend_from_slice(&r.response_ids);
        let mut learn = vec![false; r.prompt_ids.len()];
        learn.extend(r.response_mask.iter().map(|&m| m == 1));
        Ok(Example { ids, learn })
    }
}

/// Settings of a supervised run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Learning-rate schedule (its `total_steps` is the run length).
    pub schedule: Schedule,
    /// AdamW settings.
    pub adamw: AdamWConfig,
    /// Sequences per forward pass.
    pub micro_batch: usize,
    /// Micro-batches per optimiser update.
    pub grad_accum: usize,
    /// Global gradient-norm clip (0 disables).
    pub max_grad_norm: f64,
    /// Seed of the data order.
    pub seed: u64,
    /// KD mix: `(1 − α)·CE + α·FKL` (ignored without a teacher: plain CE / SFT).
    pub alpha: f64,
    /// Save a checkpoint every this many updates (0: never, except at the end).
    pub save_every: usize,
    /// Checkpoints kept (0 keeps all).
    pub keep_last: usize,
    /// Threads that compute one micro-batch's gradient together, each on a slice of its
    /// sequences (data parallelism; the gradient is the same up to float rounding). For models
    /// whose matrices are too small for candle's own kernel threading (the tiny presets, run
    /// with `CANDLE_NUM_THREADS=1`); leave 1 for larger models, whose kernels use the cores.
    #[serde(default = "one")]
    pub threads: usize,
    /// Recompute each block's activations in the backward pass instead of keeping them
    /// ([`TrainModel::loss_and_grads`]): for long trajectories of real models, where the
    /// attention scores of every layer would not fit. The same gradients, one more forward
    /// pass.
    #[serde(default)]
    pub gradient_checkpointing: bool,
}

fn one() -> usize {
    1
}

/// What one slice of a micro-batch contributes: its gradient (already weighted by its share
/// of the micro-batch's target tokens) and its metrics.
struct SliceOut {
    grads: candle_core::backprop::GradStore,
    loss: f64,
    kl: f64,
    ce: f64,
}

/// Splits a micro-batch of sequences with these lengths into at most `parts` slices for the
/// data-parallel threads, as positions into `lens`, so that the slowest slice is as fast as
/// it can be: a slice costs about its padded size (sequences × longest), and the threads wait
/// for the slowest. Sorted by length and cut where that maximum is smallest, a micro-batch of
/// 8 teacher trajectories (216-451 tokens) pads to 84% real tokens in the slowest slice,
/// against 78% when cut in halves in data order (the gradient is the same either way: each
/// slice is weighted by its share of the target tokens). Ties keep data order, so a run stays
/// deterministic.
pub fn balanced_slices(lens: &[usize], parts: usize) -> Vec<Vec<usize>> {
    let n = lens.len();
    let parts = parts.clamp(1, n.max(1));
    if parts == 1 || n <= 1 {
        return vec![(0..n).collect()];
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| lens[i]);
    // cost[k][j]: the smallest slowest-slice cost of cutting the first j sorted sequences into
    // k slices; a slice of sorted positions a..j costs (j − a)·len(j − 1). O(parts·n²), n ≤ 64.
    let len = |j: usize| lens[order[j]];
    let inf = usize::MAX;
    let mut cost = vec![vec![inf; n + 1]; parts + 1];
    let mut cut = vec![vec![0usize; n + 1]; parts + 1];
    cost[0][0] = 0;
    for k in 1..=parts {
        for j in 1..=n {
            for a in (k - 1)..j {
                if cost[k - 1][a] == inf {
                    continue;
                }
                let c = cost[k - 1][a].max((j - a) * len(j - 1));
                if c < cost[k][j] {
                    cost[k][j] = c;
                    cut[k][j] = a;
                }
            }
        }
    }
    // Fewer slices when they are as fast (one thread fewer to start).
    let best = (1..=parts)
        .min_by_key(|&k| (cost[k][n], k))
        .expect("parts >= 1");
    let mut out = Vec::with_capacity(best);
    let (mut k, mut j) = (best, n);
    while k > 0 {
        let a = cut[k][j];
        out.push(order[a..j].to_vec());
        (k, j) = (k - 1, a);
    }
    out.reverse();
    out
}

/// Runs SFT (no teacher) or KD (with a teacher) over a fixed example set.
pub struct Trainer<'a> {
    student: &'a TrainModel,
    teacher: Option<&'a TrainModel>,
    data: &'a [Example],
    cfg: TrainConfig,
    opt: AdamW,
    exp: PathBuf,
    pad: u32,
    metrics: Option<MetricsLog>,
    order: Option<(usize, Vec<usize>)>,
    /// The frozen teacher's logits per example, when they fit the budget (KD only).
    teacher_cache: Option<TeacherCache>,
}

/// Where a slice's teacher distributions come from: the cache, or a forward pass of the batch.
#[derive(Clone, Copy)]
struct TeacherSide<'a> {
    model: &'a TrainModel,
    cache: Option<&'a TeacherCache>,
    data: &'a [Example],
}

impl<'a> TeacherSide<'a> {
    /// The teacher's side of `batch` (whose row `k` is example `idx[k]`) at its learnt
    /// positions, in [`Batch::target_rows`] order.
    fn target_rows(&self, idx: &[usize], batch: &Batch) -> Result<TeacherRows<'a>> {
        Ok(match self.cache {
            Some(c) => TeacherRows::Logits(c.target_logits(self.model, self.data, idx, batch)?),
            None => TeacherRows::Hidden(self.model, self.model.target_hidden_no_grad(batch)?),
        })
    }
}

/// A slice's teacher distributions: the cached logits (n, vocab), or the teacher's hidden
/// states at the learnt rows (n, hidden), projected onto the vocabulary one row chunk at a
/// time as the student's loss asks for them, so that a real model's teacher holds one
/// chunk of logits instead of the slice's (0.6 MB per learnt row for Qwen2.5's vocabulary).
enum TeacherRows<'a> {
    Logits(candle_core::Tensor),
    Hidden(&'a TrainModel, candle_core::Tensor),
}

impl TeacherRows<'_> {
    /// Detached teacher logits of the learnt rows `rows`, (rows.len(), vocab).
    fn logits(&self, rows: std::ops::Range<usize>) -> Result<candle_core::Tensor> {
        let (start, m) = (rows.start, rows.len());
        match self {
            TeacherRows::Logits(t) => Ok(t.narrow(0, start, m)?),
            TeacherRows::Hidden(model, h) => {
                Ok(model.row_logits(&h.narrow(0, start, m)?)?.detach())
            }
        }
    }
}

impl<'a> Trainer<'a> {
    /// Set up a run writing to `exp`. Teacher/student vocabulary mismatch and malformed
    /// examples are refused here, before any training.
    pub fn new(
        student: &'a TrainModel,
        teacher: Option<&'a TrainModel>,
        data: &'a [Example],
        cfg: TrainConfig,
        exp: &Path,
        pad: u32,
    ) -> Result<Trainer<'a>> {
        if let Some(t) = teacher
            && t.vocab_size() != student.vocab_size()
        {
            return Err(Error::invalid(format!(
                "teacher vocabulary size {} differs from the student's {}: forward KL needs the same tokenizer",
                t.vocab_size(),
                student.vocab_size()
            )));
        }
        if data.is_empty() {
            return Err(Error::invalid("no training examples"));
        }
        if cfg.micro_batch == 0 || cfg.grad_accum == 0 || cfg.threads == 0 {
            return Err(Error::invalid(
                "micro_batch, grad_accum and threads must be at least 1",
            ));
        }
        let v = student.vocab_size() as u32;
        for (i, e) in data.iter().enumerate() {
            if e.ids.len() != e.learn.len() || e.ids.len() < 2 {
                return Err(Error::invalid(format!(
                    "example {i}: {} tokens, {} mask entries (need ≥ 2 tokens and one entry each)",
                    e.ids.len(),
                    e.learn.len()
                )));
            }
            if let Some(bad) = e.ids.iter().find(|&&t| t >= v) {
                return Err(Error::invalid(format!(
                    "example {i}: token id {bad} is outside the student's vocabulary of {v}"
                )));
            }
        }
        let opt = AdamW::new(student.named_vars(), cfg.adamw)?;
        let teacher_cache = teacher.and_then(|t| {
            TeacherCache::new(t, data, pad, crate::teacher_cache::DEFAULT_BUDGET_BYTES)
        });
        Ok(Trainer {
            student,
            teacher,
            data,
            cfg,
            opt,
            exp: exp.to_path_buf(),
            pad,
            metrics: None,
            order: None,
            teacher_cache,
        })
    }

    /// Cap the memory of the teacher's logit cache (KD; see [`crate::teacher_cache`]) at
    /// `bytes`, dropping what it holds: a cap below what the examples need, `0` included,
    /// scores the teacher on every batch instead.
    pub fn set_teacher_cache_budget(&mut self, bytes: usize) {
        self.teacher_cache = self
            .teacher
            .and_then(|t| TeacherCache::new(t, self.data, self.pad, bytes));
    }

    /// Examples whose teacher logits are cached so far (`None`: no cache).
    pub fn teacher_cache_filled(&self) -> Option<usize> {
        self.teacher_cache.as_ref().map(TeacherCache::filled)
    }

    /// Updates completed.
    pub fn step(&self) -> usize {
        self.opt.step_count()
    }

    /// Continue from the newest checkpoint under the experiment folder, if any; returns its step.
    pub fn resume(&mut self) -> Result<Option<usize>> {
        let Some((_, dir)) = list_checkpoints(&self.exp)?.pop() else {
            return Ok(None);
        };
        let st = load_checkpoint(&dir, self.student, &mut self.opt)?;
        if st.seed != self.cfg.seed || st.data_len != self.data.len() {
            return Err(Error::format(
                dir.join("state.json"),
                format!(
                    "checkpoint was made with seed {} on {} examples; this run has seed {} and {} examples",
                    st.seed,
                    st.data_len,
                    self.cfg.seed,
                    self.data.len()
                ),
            ));
        }
        tracing::info!(step = st.step, dir = %dir.display(), "resumed");
        Ok(Some(st.step))
    }

    fn example_at(&mut self, pos: usize) -> usize {
        let n = self.data.len();
        let epoch = pos / n;
        if self.order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut perm: Vec<usize> = (0..n).collect();
            let mut rng = StdRng::seed_from_u64(self.cfg.seed.wrapping_add(epoch as u64));
            perm.shuffle(&mut rng);
            self.order = Some((epoch, perm));
        }
        self.order.as_ref().expect("set above").1[pos % n]
    }

    /// One optimiser update over `grad_accum` micro-batches.
    pub fn train_step(&mut self) -> Result<StepMetrics> {
        let t0 = Instant::now();
        let s = self.opt.step_count();
        let (b, a) = (self.cfg.micro_batch, self.cfg.grad_accum);
        let mut grads = self.opt.zero_grads();
        let (mut loss_sum, mut kl_sum, mut ce_sum, mut tokens, mut targets) =
            (0.0, 0.0, 0.0, 0, 0.0);
        for k in 0..a {
            let idx: Vec<usize> = (0..b)
                .map(|j| self.example_at((s * a + k) * b + j))
                .collect();
            // The micro-batch's loss is a mean over its target tokens; a slice's mean weighted
            // by its share of those tokens sums to it, so splitting changes no gradient.
            let lens: Vec<usize> = idx.iter().map(|&i| self.data[i].ids.len()).collect();
            let mut slices = Vec::with_capacity(self.cfg.threads);
            for part in balanced_slices(&lens, self.cfg.threads) {
                let part: Vec<usize> = part.iter().map(|&j| idx[j]).collect();
                let seqs: Vec<Vec<u32>> = part.iter().map(|&i| self.data[i].ids.clone()).collect();
                let learn: Vec<Vec<bool>> =
                    part.iter().map(|&i| self.data[i].learn.clone()).collect();
                let batch = Batch::new(&seqs, Some(&learn), self.pad, self.student.device())?;
                tokens += batch.token_count();
                let n = batch.target_count()?;
                slices.push((batch, n, part));
            }
            let total: f64 = slices.iter().map(|(_, n, _)| n).sum();
            targets += total;
            let jobs: Vec<(Batch, f64, Vec<usize>)> = slices
                .into_iter()
                // A slice with no learnt token has no loss (its masked mean would be 0/0).
                .filter(|(_, n, _)| *n > 0.0)
                .map(|(batch, n, part)| (batch, n / total / a as f64, part))
                .collect();
            let (student, alpha) = (self.student, self.cfg.alpha);
            let checkpoint = self.cfg.gradient_checkpointing;
            let teacher = self.teacher.map(|model| TeacherSide {
                model,
                cache: self.teacher_cache.as_ref(),
                data: self.data,
            });
            let outs: Vec<Result<SliceOut>> = if jobs.len() <= 1 {
                jobs.iter()
                    .map(|(batch, w, part)| {
                        slice_pass(student, teacher, alpha, batch, part, *w, checkpoint)
                    })
                    .collect()
            } else {
                std::thread::scope(|scope| {
                    let handles: Vec<_> = jobs
                        .iter()
                        .map(|(batch, w, part)| {
                            scope.spawn(move || {
                                slice_pass(student, teacher, alpha, batch, part, *w, checkpoint)
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| {
                            h.join().unwrap_or_else(|_| {
                                Err(Error::invalid("a data-parallel training thread panicked"))
                            })
                        })
                        .collect()
                })
            };
            // Summed in slice order, so a run is deterministic for a given thread count.
            for out in outs {
                let out = out?;
                loss_sum += out.loss;
                kl_sum += out.kl;
                ce_sum += out.ce;
                self.opt.accumulate(&mut grads, &out.grads)?;
            }
        }
        let grad_norm = if self.cfg.max_grad_norm > 0.0 {
            grads.clip(self.cfg.max_grad_norm)?
        } else {
            grads.norm()?
        };
        let lr = self.cfg.schedule.lr(s);
        self.opt.step(&grads, lr)?;
        let secs = t0.elapsed().as_secs_f64().max(1e-9);
        // The slices' metrics are weighted as their losses: they sum to the update's mean.
        Ok(StepMetrics {
            step: s + 1,
            loss: loss_sum,
            kl: self.teacher.map(|_| kl_sum),
            ce: Some(ce_sum),
            lr,
            grad_norm,
            tokens_per_s: tokens as f64 / secs,
            target_tokens: targets,
        })
    }

    fn save(&self) -> Result<PathBuf> {
        let state = TrainState {
            step: self.opt.step_count(),
            seed: self.cfg.seed,
            data_len: self.data.len(),
            config: serde_json::to_value(&self.cfg).expect("config serialises"),
        };
        save_checkpoint(
            &self.exp,
            self.student,
            &self.opt,
            &state,
            self.cfg.keep_last,
        )
    }

    /// Train until `until` updates are done (at most the schedule's total), logging metrics
    /// and saving checkpoints every `save_every` updates and at the end. Returns the metrics of
    /// the updates made by this call.
    pub fn run(&mut self, until: usize) -> Result<Vec<StepMetrics>> {
        let until = until.min(self.cfg.schedule.total_steps);
        if self.metrics.is_none() {
            self.metrics = Some(MetricsLog::open(&self.exp, self.opt.step_count())?);
        }
        let mut out = Vec::new();
        let start = self.opt.step_count();
        // Hidden automatically when stderr is not a terminal (tests, logs to files).
        let bar = indicatif::ProgressBar::new(until.saturating_sub(start) as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} step {pos}/{len} [{bar:30}] {msg} elapsed {elapsed} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        while self.opt.step_count() < until {
            let m = self.train_step()?;
            bar.inc(1);
            bar.set_message(format!(
                "loss {:.4} lr {:.2e} {:.0} tok/s",
                m.loss, m.lr, m.tokens_per_s
            ));
            tracing::debug!(
                step = m.step,
                loss = m.loss,
                lr = m.lr,
                grad_norm = m.grad_norm,
                "step"
            );
            self.metrics.as_mut().expect("opened above").write(&m)?;
            let step = m.step;
            out.push(m);
            let every = self.cfg.save_every;
            if (every > 0 && step.is_multiple_of(every)) || step == self.cfg.schedule.total_steps {
                self.save()?;
            }
        }
        bar.finish_and_clear();
        let log = self.exp.join("metrics.jsonl");
        if log.exists() {
            crate::plot::plot_metrics(&MetricsLog::read(&log)?, &self.exp.join("metrics.png"))?;
        }
        if let Some(m) = out.last() {
            tracing::info!(
                step = m.step,
                loss = m.loss,
                lr = m.lr,
                "training reached step"
            );
        }
        Ok(out)
    }
}

/// Loss and weighted gradient of one slice of a micro-batch (`weight`: its share of the update;
/// `idx`: the examples of the batch's rows).
fn slice_pass(
    student: &TrainModel,
    teacher: Option<TeacherSide<'_>>,
    alpha: f64,
    batch: &Batch,
    idx: &[usize],
    weight: f64,
    checkpoint: bool,
) -> Result<SliceOut> {
    let targets = batch.target_ids_tensor(student.device())?;
    // The teacher's body runs before the student's graph exists; its head, chunk by chunk
    // with the student's.
    let teacher_rows = match teacher {
        Some(t) => Some(t.target_rows(idx, batch)?),
        None => None,
    };
    let n = batch.target_rows.len();
    let mut parts = (0.0, 0.0, 0.0);
    // Logits of the learnt positions only (every other position is masked out of the loss), a
    // chunk of rows at a time when they are many (real models' vocabularies).
    let grads = student.loss_and_grads_by_rows(batch, checkpoint, |logits, rows| {
        let m = rows.len();
        let targets = targets.narrow(0, rows.start, m)?;
        let (l, kl, ce) = match &teacher_rows {
            Some(t) => {
                let tl = t.logits(rows)?;
                let d = loss::distill_loss_rows(&tl, logits, &targets, alpha)?;
                (d.loss, d.kl, d.ce)
            }
            None => {
                let ce = loss::cross_entropy_rows(logits, &targets)?;
                let v = loss::scalar(&ce)?;
                (ce, 0.0, v)
            }
        };
        // The chunk's means, weighted by its share of the rows as the gradients are.
        let share = m as f64 / n as f64;
        parts.0 += loss::scalar(&l)? * share;
        parts.1 += kl * share;
        parts.2 += ce * share;
        Ok((l * weight)?)
    })?;
    let (loss, kl, ce) = parts;
    Ok(SliceOut {
        grads,
        loss: loss * weight,
        kl: kl * weight,
        ce: ce * weight,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;

    /// The slowest slice's padded size: what `balanced_slices` minimises.
    fn slowest(lens: &[usize], slices: &[Vec<usize>]) -> usize {
        slices
            .iter()
            .map(|s| s.len() * s.iter().map(|&i| lens[i]).max().unwrap_or(0))
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn balanced_slices_by_hand() {
        // Halves in data order pad to 4·400 = 1600; the five shortest (5·240) and the three
        // longest (3·400) to 1200.
        let lens = [400, 200, 220, 210, 230, 380, 390, 240];
        let s = balanced_slices(&lens, 2);
        assert_eq!(s, vec![vec![1, 3, 2, 4, 7], vec![5, 6, 0]]);
        assert_eq!(slowest(&lens, &s), 1200);
        // One long sequence alone against seven short ones: 1·1000 vs 7·100.
        let lens = [100, 100, 1000, 100, 100, 100, 100, 100];
        assert_eq!(
            balanced_slices(&lens, 2),
            vec![vec![0, 1, 3, 4, 5, 6, 7], vec![2]]
        );
        // Equal lengths split evenly, ties in data order; one slice when there is one thread
        // or one sequence; never more slices than sequences.
        assert_eq!(balanced_slices(&[5; 5], 2), vec![vec![0, 1], vec![2, 3, 4]]);
        assert_eq!(balanced_slices(&[3, 1, 2], 1), vec![vec![0, 1, 2]]);
        assert_eq!(balanced_slices(&[7], 4), vec![vec![0]]);
        assert_eq!(balanced_slices(&[7, 9], 4), vec![vec![0], vec![1]]);
        assert_eq!(balanced_slices(&[], 2), vec![Vec::<usize>::new()]);
    }

    /// Against brute force over every assignment of the sequences to the threads (not only
    /// cuts of the sorted order): the slowest slice is never slower than the best one, and
    /// the slices cover every position exactly once.
    #[test]
    fn balanced_slices_match_brute_force() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..300 {
            let n = rng.random_range(1..=7);
            let parts = rng.random_range(1..=3);
            let lens: Vec<usize> = (0..n).map(|_| rng.random_range(1..=40)).collect();
            let got = balanced_slices(&lens, parts);
            let mut seen: Vec<usize> = got.iter().flatten().copied().collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "{lens:?}");
            assert!(got.len() <= parts && got.iter().all(|s| !s.is_empty()));
            let mut best = usize::MAX;
            for code in 0..parts.pow(n as u32) {
                let mut slices = vec![Vec::new(); parts];
                let mut c = code;
                for i in 0..n {
                    slices[c % parts].push(i);
                    c /= parts;
                }
                best = best.min(slowest(&lens, &slices));
            }
            assert_eq!(slowest(&lens, &got), best, "{lens:?} in {parts}");
        }
    }

    #[test]
    fn rollout_masks_prompt_and_observations() {
        let r = Rollout {
            prompt_ids: vec![1, 2, 3],
            response_ids: vec![4, 5, 6, 7],
            response_mask: vec![1, 0, 0, 1],
            logprobs: vec![0.0; 4],
        };
        let e = Example::from_rollout(&r).unwrap();
        assert_eq!(e.ids, vec![1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(e.learn, vec![false, false, false, true, false, false, true]);
        let bad = Rollout {
            response_mask: vec![1],
            ..r
        };
        assert!(Example::from_rollout(&bad).is_err());
    }
}
