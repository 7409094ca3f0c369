//! Phase 2: DGPO, distillation-guided policy optimisation, and its baselines PPO and GRPO on
//! the same code.
//!
//! One RL step: the student answers `questions_per_step` training questions (`group_size`
//! rollouts each) through core's agent loop with its current weights ([`rollout`]); each
//! rollout gets an exact-match outcome reward on its last generated token; a batched,
//! gradient-free pass scores the sampled tokens under the student (old log-probs), the
//! reference and the critic (micro-batches on `update_threads` threads); then PPO epochs of
//! mini-batch updates follow ([`algo`] holds the numbers). The policy's logits are computed at
//! generated positions only ([`TrainModel::target_logits`]): no loss reads the vocabulary
//! distribution at prompt or observation positions, which are most of an agent rollout (the
//! base student's: ~70 generated tokens of ~520).
//!
//! The three algorithms differ only in the reference model, where its KL goes, and the
//! advantage:
//!
//! | | reference | KL | advantage |
//! |---|---|---|---|
//! | [`Algo::Dgpo`] | the teacher | `−β·(log π_s − log π_t)` in the token reward, failed rollouts only (all with `selective = false`); β = `teacher_kl_coef` | GAE with a critic |
//! | [`Algo::Ppo`] | the initial student, frozen | the same penalty on every rollout, weight `kl_coef` | GAE with a critic |
//! | [`Algo::Grpo`] | the initial student, frozen | `kl_coef · low_var_kl` in the loss (Search-R1's GRPO) | group-normalised outcome, no critic |
//!
//! Observation tokens (`<information>` blocks, invalid-action messages) and the prompt take part
//! in no loss, no KL and no advantage: the GAE recursion runs over generated tokens only.
//!
//! Files under the experiment folder:
//! ```text
//! <exp>/init-policy/                 the student at the start (tokenizer and chat template of
//!                                    the policy; the PPO/GRPO reference; the critic's init)
//! <exp>/checkpoints/step-N/          actor: HF model folder, AdamW state, state.json
//! <exp>/critic/checkpoints/step-N/   critic (with its value head `score.*`), same layout
//! <exp>/rl_metrics.jsonl             one RlMetrics per step
//! <exp>/rl_curves.png                titled panels: reward mean, KL to the reference,
//!                                    searches and response tokens per rollout, actor grad norm
//! ```
//! A resumed run continues from the newest step that has both checkpoints and replays the
//! uninterrupted run exactly: question order and sampling seeds are functions of (seed, step).
//!
//! Speed on small CPUs: candle runs every op on its own spinning thread pool, sized by
//! `CANDLE_NUM_THREADS` (else `RAYON_NUM_THREADS`, else the physical cores). For tiny models the
//! ops are too small to split and the spinning competes with everything else: on a busy 2-core
//! machine an RL step of 8 rollouts of a 1-layer model took 0.30 s with `CANDLE_NUM_THREADS=1`
//! against 1.0–1.3 s with 2 (see the ignored test `rl_step_timing`). Rollouts are parallel
//! across questions instead ([`RlConfig::rollout_threads`]); results do not depend on either
//! setting.

pub mod algo;
pub mod rollout;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use dgpo_core::agent::AgentConfig;
use dgpo_core::retrieve::Retriever;
use dgpo_core::sampling::SamplingParams;
use dgpo_core::{Error, Result};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{
    TrainState, checkpoint_dir, list_checkpoints, load_checkpoint, save_checkpoint,
};
use crate::data::QaRow;
use crate::loss::scalar;
use crate::model::{Batch, ModelOptions, TrainModel, row_logprobs};
use crate::optim::{AdamW, AdamWConfig, Decay, Schedule};

use self::algo::{
    entropy_rows, failed, gae, grpo_advantages, low_var_kl, pad_rows, policy_loss, token_rewards,
    value_loss, whiten,
};
use self::rollout::{Sampled, live_policy, mix, run_rollouts};

/// Which policy-optimisation algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Algo {
    /// PPO whose reference is the teacher, its KL applied to failed rollouts only.
    #[default]
    Dgpo,
    /// PPO with a KL penalty to the frozen initial student on every rollout.
    Ppo,
    /// GRPO: group-normalised outcome advantages, no critic, KL loss to the initial student.
    Grpo,
}

impl FromStr for Algo {
    type Err = Error;
    fn from_str(s: &str) -> Result<Algo> {
        match s.to_ascii_lowercase().as_str() {
            "dgpo" => Ok(Algo::Dgpo),
            "ppo" => Ok(Algo::Ppo),
            "grpo" => Ok(Algo::Grpo),
            o => Err(Error::invalid(format!(
                "unknown RL algorithm {o:?} (dgpo, ppo, grpo)"
            ))),
        }
    }
}

impl std::fmt::Display for Algo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Algo::Dgpo => "dgpo",
            Algo::Ppo => "ppo",
            Algo::Grpo => "grpo",
        })
    }
}

/// Settings of an RL run. [`Default`] is the DGPO paper's (the authors' `train_dgpo.sh` and
/// veRL's `ppo_trainer.yaml`), noted per field; [`RlConfig::paper`] gives each baseline's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RlConfig {
    /// Algorithm (DGPO).
    pub algo: Algo,
    /// RL steps, each one rollout phase and its updates (1000). The learning-rate schedules
    /// span this many steps.
    pub steps: usize,
    /// Stop once this many steps are done, with a checkpoint, even if `steps` is larger (to
    /// split a run; the schedules still follow `steps`). None: run to `steps`.
    pub stop_after: Option<usize>,
    /// Seed of the question order and of every rollout's sampler (0).
    pub seed: u64,
    /// PPO and GRPO: weight of the KL to the frozen initial student (0.001, fixed; Search-R1's
    /// GRPO KL-loss weight is also 0.001).
    pub kl_coef: f64,
    /// DGPO: β, the weight of the KL to the teacher on failed rollouts (the paper's 0.001).
    /// Separate from `kl_coef` because the two KLs do different jobs: PPO's holds the policy
    /// near where it started, DGPO's pulls a failing student toward a better model, and a
    /// setting tuned for one says nothing about the other.
    pub teacher_kl_coef: f64,
    /// DGPO: apply the teacher KL to failed rollouts only (true); false is the ablation with
    /// the KL on every rollout.
    pub selective: bool,
    /// Questions per step (512).
    pub questions_per_step: usize,
    /// Rollouts per question (1; Search-R1's GRPO uses 5).
    pub group_size: usize,
    /// Passes over a step's rollouts (1).
    pub ppo_epochs: usize,
    /// Rollouts per optimiser update (256).
    pub mini_batch: usize,
    /// Rollouts per forward pass; mini-batches accumulate gradients over these (the paper's
    /// 128 for the actor is a GPU memory setting; 8 here suits CPUs).
    pub micro_batch: usize,
    /// Actor peak learning rate (1e-6).
    pub actor_lr: f64,
    /// Actor linear warmup as a fraction of `steps` (0.285), constant after.
    pub actor_warmup_ratio: f64,
    /// Critic peak learning rate (1e-5).
    pub critic_lr: f64,
    /// Critic warmup fraction (0.015), constant after.
    pub critic_warmup_ratio: f64,
    /// PPO ratio clip ε (0.2).
    pub clip_eps: f64,
    /// Critic value clip (0.5).
    pub value_clip: f64,
    /// Entropy bonus coefficient (0.001).
    pub entropy_coef: f64,
    /// GAE discount γ (1).
    pub gamma: f64,
    /// GAE λ (1).
    pub lambda: f64,
    /// Global gradient-norm clip for actor and critic (1.0; 0 disables).
    pub max_grad_norm: f64,
    /// Agent turns with retrieval, plus one answer-only turn (4).
    pub max_turns: usize,
    /// Passages per search (3).
    pub top_k: usize,
    /// Rollout sampling temperature (1.0).
    pub temperature: f64,
    /// Rollout nucleus mass (1.0: off).
    pub top_p: f64,
    /// New tokens per turn (500).
    pub max_turn_tokens: usize,
    /// Observation tokens kept per `<information>` block (500).
    pub max_obs_tokens: usize,
    /// Checkpoint every this many steps (50), and at the end.
    pub save_every: usize,
    /// Checkpoints kept (3; 0 keeps all).
    pub keep_last: usize,
    /// Threads running rollouts in parallel (0: one per available core).
    pub rollout_threads: usize,
    /// Threads computing a mini-batch's micro-batches in parallel in the PPO update (1). For
    /// the tiny presets, whose kernels run single-threaded; the gradient is the same (summed
    /// in micro-batch order), each thread holds one micro-batch's activations.
    pub update_threads: usize,
    /// Measure the KL penalty as the full-vocabulary forward KL(π_ref ‖ π_s) at each generated
    /// position (the project page's formula) instead of the sampled-token estimate
    /// `log π_s(y) − log π_ref(y)` that the authors' code uses (false).
    pub full_kl: bool,
    /// Padding id of the training batches (any id: padding is masked out of attention).
    pub pad_id: u32,
    /// Recompute each block's activations in the backward pass of the PPO update instead of
    /// keeping them ([`TrainModel::loss_and_grads`]): the memory of one block's attention
    /// scores, not of every block's, for one more forward pass (veRL's
    /// `enable_gradient_checkpointing`, on in Search-R1's scripts).
    pub gradient_checkpointing: bool,
}

impl Default for RlConfig {
    fn default() -> Self {
        RlConfig {
            algo: Algo::Dgpo,
            steps: 1000,
            stop_after: None,
            seed: 0,
            kl_coef: 0.001,
            teacher_kl_coef: 0.001,
            selective: true,
            questions_per_step: 512,
            group_size: 1,
            ppo_epochs: 1,
            mini_batch: 256,
            micro_batch: 8,
            actor_lr: 1e-6,
            actor_warmup_ratio: 0.285,
            critic_lr: 1e-5,
            critic_warmup_ratio: 0.015,
            clip_eps: 0.2,
            value_clip: 0.5,
            entropy_coef: 0.001,
            gamma: 1.0,
            lambda: 1.0,
            max_grad_norm: 1.0,
            max_turns: 4,
            top_k: 3,
            temperature: 1.0,
            top_p: 1.0,
            max_turn_tokens: 500,
            max_obs_tokens: 500,
            save_every: 50,
            keep_last: 3,
            rollout_threads: 0,
            update_threads: 1,
            full_kl: false,
            pad_id: 0,
            gradient_checkpointing: true,
        }
    }
}

impl RlConfig {
    /// The published settings of `algo`: DGPO's defaults; PPO the same with its own initial
    /// policy as reference; GRPO with 5 rollouts per question (Search-R1's `n_agent`).
    pub fn paper(algo: Algo) -> RlConfig {
        RlConfig {
            algo,
            group_size: if algo == Algo::Grpo { 5 } else { 1 },
            ..Default::default()
        }
    }

    /// Refuse settings that cannot run (zero sizes, rates out of range), naming the field.
    pub fn validate(&self) -> Result<()> {
        let pos = [
            ("steps", self.steps),
            ("questions_per_step", self.questions_per_step),
            ("group_size", self.group_size),
            ("ppo_epochs", self.ppo_epochs),
            ("mini_batch", self.mini_batch),
            ("micro_batch", self.micro_batch),
            ("max_turn_tokens", self.max_turn_tokens),
        ];
        for (k, v) in pos {
            if v == 0 {
                return Err(Error::invalid(format!("RL config: {k} must be at least 1")));
            }
        }
        if !(self.clip_eps > 0.0 && self.clip_eps < 1.0) {
            return Err(Error::invalid(format!(
                "RL config: clip_eps must be in (0, 1), got {}",
                self.clip_eps
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) || self.temperature < 0.0 {
            return Err(Error::invalid(
                "RL config: top_p must be in (0, 1] and temperature ≥ 0",
            ));
        }
        if self.kl_coef < 0.0
            || self.teacher_kl_coef < 0.0
            || self.entropy_coef < 0.0
            || self.value_clip <= 0.0
        {
            return Err(Error::invalid(
                "RL config: kl_coef, teacher_kl_coef and entropy_coef must be ≥ 0, value_clip > 0",
            ));
        }
        Ok(())
    }

    /// The weight of the KL to this run's reference: `teacher_kl_coef` for DGPO (whose
    /// reference is the teacher), `kl_coef` for PPO and GRPO.
    pub fn kl_weight(&self) -> f64 {
        match self.algo {
            Algo::Dgpo => self.teacher_kl_coef,
            Algo::Ppo | Algo::Grpo => self.kl_coef,
        }
    }

    fn agent(&self, chat_template: bool) -> AgentConfig {
        AgentConfig {
            max_turns: self.max_turns,
            topk: self.top_k,
            max_turn_tokens: self.max_turn_tokens,
            max_obs_tokens: self.max_obs_tokens,
            sampling: SamplingParams {
                temperature: self.temperature,
                top_p: self.top_p,
                seed: self.seed,
            },
            chat_template,
        }
    }
}

/// One line of `rl_metrics.jsonl`: what one RL step did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RlMetrics {
    /// Steps completed (1-based).
    pub step: usize,
    /// Mean outcome reward (EM) of the step's rollouts.
    pub reward_mean: f64,
    /// Fraction of rollouts that did not fail (reward ≥ 0.1; equals `reward_mean` while the
    /// reward is binary EM).
    pub success_rate: f64,
    /// Fraction of rollouts that gave an answer at all.
    pub answered: f64,
    /// Mean KL to the reference over all generated tokens (the teacher for DGPO): the
    /// sampled-token estimate `log π_s − log π_ref`, or the full forward KL with `full_kl`;
    /// None without a reference.
    pub kl: Option<f64>,
    /// The same mean over the tokens that were penalised (DGPO: failed rollouts only).
    pub kl_penalised: Option<f64>,
    /// Fraction of rollouts whose tokens got the KL penalty.
    pub penalised_frac: f64,
    /// Clipped policy loss (mean over updates).
    pub policy_loss: f64,
    /// Clipped value loss; None without a critic.
    pub value_loss: Option<f64>,
    /// Mean entropy of the policy on generated tokens.
    pub entropy: f64,
    /// Fraction of generated tokens whose ratio was clipped.
    pub clip_frac: f64,
    /// `mean(log π_old − log π)` during the updates.
    pub approx_kl: f64,
    /// Fraction of tokens whose value was clipped; None without a critic.
    pub value_clip_frac: Option<f64>,
    /// Actor gradient norm before clipping (mean over updates).
    pub grad_norm: f64,
    /// Critic gradient norm before clipping; None without a critic.
    pub critic_grad_norm: Option<f64>,
    /// Actor learning rate of the step.
    pub actor_lr: f64,
    /// Critic learning rate; None without a critic.
    pub critic_lr: Option<f64>,
    /// Mean generated tokens per rollout.
    pub response_len: f64,
    /// Mean observation tokens per rollout.
    pub observation_len: f64,
    /// Mean executed searches per rollout.
    pub searches: f64,
    /// Rollouts with 0, 1, 2 and 3 or more executed searches.
    #[serde(default)]
    pub searches_hist: [usize; 4],
    /// Mean reward of those rollouts (None for an empty bucket): which behaviour the outcome
    /// reward favours at this step.
    #[serde(default)]
    pub reward_by_searches: [Option<f64>; 4],
    /// Generated tokens per second of the rollout phase.
    pub tokens_per_s: f64,
    /// Seconds spent generating rollouts.
    pub rollout_s: f64,
    /// Seconds spent scoring and updating.
    pub update_s: f64,
    /// Seconds of the whole step.
    pub step_s: f64,
    /// The process's peak resident memory (MB, [`crate::peak_resident_mb`]) after the rollouts,
    /// after the scoring pass and after the update; None off Linux. A peak since the start,
    /// so a phase that needs more than every earlier one shows as a rise.
    #[serde(default)]
    pub peak_rss_mb: Option<[f64; 3]>,
}

const METRICS_FILE: &str = "rl_metrics.jsonl";

/// Read an `rl_metrics.jsonl` file.
pub fn read_metrics(path: &Path) -> Result<Vec<RlMetrics>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| Error::line(path, i + 1, format!("{e}"))))
        .collect()
}

/// Keep only the lines of steps ≤ `upto` (a run killed after its last checkpoint left more).
fn truncate_metrics(path: &Path, upto: usize) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let kept: Vec<RlMetrics> = read_metrics(path)?
        .into_iter()
        .filter(|m| m.step <= upto)
        .collect();
    let mut body = String::new();
    for m in &kept {
        body.push_str(&serde_json::to_string(m).expect("metrics serialise"));
        body.push('\n');
    }
    let tmp = path.with_extension("jsonl.tmp");
    std::fs::write(&tmp, body).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

fn append_metrics(path: &Path, m: &RlMetrics) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    writeln!(
        f,
        "{}",
        serde_json::to_string(m).expect("metrics serialise")
    )
    .map_err(|e| Error::io(path, e))
}

/// Plot one run's curves, one titled panel each: mean reward, KL to the reference, searches
/// and response tokens per rollout (the two that show a policy collapsing to short or
/// search-free rollouts), and the actor's gradient norm.
pub fn plot_rl(metrics: &[RlMetrics], path: &Path) -> Result<()> {
    let series = |f: &dyn Fn(&RlMetrics) -> Option<f64>| crate::plot::rl_series(metrics, f);
    crate::plot::plot_panels(
        &[
            ("mean reward per step", series(&|m| Some(m.reward_mean))),
            ("kl to reference (nats/token)", series(&|m| m.kl)),
            ("searches per rollout", series(&|m| Some(m.searches))),
            (
                "response tokens per rollout",
                series(&|m| Some(m.response_len)),
            ),
            ("actor grad norm", series(&|m| Some(m.grad_norm))),
        ],
        path,
    )
}

/// Whether the KL-to-reference penalty goes into the token rewards of a rollout with outcome
/// `score`: DGPO on failed rollouts only (every rollout when `selective` is off), PPO on every
/// rollout, GRPO never (its KL is a loss term).
pub fn kl_applies(algo: Algo, selective: bool, score: f32) -> bool {
    match algo {
        Algo::Dgpo => !selective || failed(score),
        Algo::Ppo => true,
        Algo::Grpo => false,
    }
}

/// One rollout prepared for the updates; per-position vectors have `ids.len() − 1` entries.
struct Prepared {
    ids: Vec<u32>,
    learn: Vec<bool>,
    mask: Vec<f32>,
    old_logp: Vec<f32>,
    ref_logp: Option<Vec<f32>>,
    /// Full-vocabulary forward KL to the reference per position (with `full_kl`).
    full_kl: Option<Vec<f32>>,
    values: Option<Vec<f32>>,
    adv: Vec<f32>,
    ret: Vec<f32>,
}

enum Reference<'a> {
    None,
    Borrowed(&'a TrainModel),
    Owned(Box<TrainModel>),
}

impl Reference<'_> {
    fn get(&self) -> Option<&TrainModel> {
        match self {
            Reference::None => None,
            Reference::Borrowed(m) => Some(m),
            Reference::Owned(m) => Some(m),
        }
    }
}

/// One micro-batch of the PPO update: its gradients (scaled by `1/nm`, the mini-batch's
/// micro-batch count) and metrics.
struct MicroOut {
    actor: GradStore,
    /// Value loss, value clip fraction and the critic's gradients (PPO, DGPO).
    critic: Option<(f64, f64, GradStore)>,
    policy_loss: f64,
    entropy: f64,
    clip_frac: f64,
    approx_kl: f64,
}

/// Policy (and value) loss and gradients of one micro-batch of prepared rollouts. Free of
/// `Run` so that micro-batches can run on parallel threads (`RlConfig::update_threads`).
fn micro_pass(
    student: &TrainModel,
    reference: Option<&TrainModel>,
    critic: Option<&TrainModel>,
    cfg: &RlConfig,
    items: &[&Prepared],
    nm: f64,
) -> Result<MicroOut> {
    let batch = items_batch(items, cfg, student)?;
    let dev = student.device();
    if batch.target_rows.is_empty() {
        // No generated token (every rollout ran out of context at once): no loss, no gradient.
        return Ok(MicroOut {
            actor: GradStore::default(),
            critic: critic.map(|_| (0.0, 0.0, GradStore::default())),
            policy_loss: 0.0,
            entropy: 0.0,
            clip_frac: 0.0,
            approx_kl: 0.0,
        });
    }
    // The losses' dtype (f32, or f64 for f64 models): what `row_logprobs` returns.
    let dt = crate::loss::wide_dtype(student.dtype());
    let n = batch.target_rows.len();
    let targets = batch.target_ids_tensor(dev)?;
    // A per-position vector of each rollout at its generated positions, in the order of the
    // batch's target rows (rollout by rollout, position by position).
    let at_targets = |f: &dyn Fn(&Prepared) -> &[f32]| -> Result<Tensor> {
        let mut v = Vec::with_capacity(n);
        for p in items {
            let src = f(p);
            v.extend(
                p.mask
                    .iter()
                    .zip(src)
                    .filter(|(m, _)| **m > 0.0)
                    .map(|(_, x)| *x),
            );
        }
        if v.len() != n {
            return Err(Error::invalid(format!(
                "{} per-position values for {n} generated positions",
                v.len()
            )));
        }
        Ok(Tensor::from_vec(v, n, dev)?.to_dtype(dt)?)
    };
    let all = Tensor::ones(n, dt, dev)?;
    let old = at_targets(&|p| &p.old_logp)?;
    let adv = at_targets(&|p| &p.adv)?;
    let rf = if cfg.algo == Algo::Grpo && cfg.kl_weight() > 0.0 && reference.is_some() {
        Some(at_targets(&|p| p.ref_logp.as_deref().unwrap_or(&[]))?)
    } else {
        None
    };
    let mut stats = (0.0, 0.0, 0.0, 0.0);
    // The policy's logits at generated positions only (the losses read no other position), a
    // chunk of rows at a time when they are many (real models' vocabularies). Every term is a
    // mean over the rows, as `loss_and_grads_by_rows` wants; the statistics are weighted by the
    // chunk's share of the rows as its gradients are.
    let actor =
        student.loss_and_grads_by_rows(&batch, cfg.gradient_checkpointing, |logits, r| {
            let (m, share) = (r.len(), r.len() as f64 / n as f64);
            let part = |t: &Tensor| t.narrow(0, r.start, m);
            let logp = row_logprobs(logits, &part(&targets)?)?;
            let pl = policy_loss(
                &logp,
                &part(&old)?,
                &part(&adv)?,
                &part(&all)?,
                cfg.clip_eps,
            )?;
            let ent = entropy_rows(logits)?.mean_all()?;
            let mut loss = (&pl.loss - (&ent * cfg.entropy_coef)?)?;
            if let Some(rf) = &rf {
                let kl = low_var_kl(&logp, &part(rf)?)?.mean_all()?;
                loss = (loss + (kl * cfg.kl_weight())?)?;
            }
            stats.0 += scalar(&pl.loss)? * share;
            stats.1 += scalar(&ent)? * share;
            stats.2 += pl.clip_frac * share;
            stats.3 += pl.approx_kl * share;
            Ok((loss / nm)?)
        })?;
    let (policy_loss, entropy, clip_frac, approx_kl) = stats;
    let critic = match critic {
        Some(c) => {
            // Values are one number a position: the critic keeps the padded (b, t − 1) form.
            let w = batch.ids.dim(1)? - 1;
            let col = |f: &dyn Fn(&Prepared) -> &[f32]| -> Result<Tensor> {
                let r: Vec<&[f32]> = items.iter().map(|p| f(p)).collect();
                pad_rows(&r, w, dt, dev)
            };
            let mask = batch.target_mask.to_dtype(dt)?;
            let old_v = col(&|p| p.values.as_deref().unwrap_or(&[]))?;
            let ret = col(&|p| &p.ret)?;
            let mut stats = (0.0, 0.0);
            let (_, grads) = c.loss_and_grads(&batch, cfg.gradient_checkpointing, |h| {
                let v = crate::loss::wide(&c.values(h)?.narrow(1, 0, w)?)?;
                let vl = value_loss(&v, &old_v, &ret, &mask, cfg.value_clip)?;
                stats = (scalar(&vl.loss)?, vl.clip_frac);
                Ok((vl.loss / nm)?)
            })?;
            Some((stats.0, stats.1, grads))
        }
        None => None,
    };
    Ok(MicroOut {
        actor,
        critic,
        policy_loss,
        entropy,
        clip_frac,
        approx_kl,
    })
}

/// The right-padded batch of prepared rollouts, on the student's device.
fn items_batch(items: &[&Prepared], cfg: &RlConfig, student: &TrainModel) -> Result<Batch> {
    let seqs: Vec<Vec<u32>> = items.iter().map(|p| p.ids.clone()).collect();
    let learn: Vec<Vec<bool>> = items.iter().map(|p| p.learn.clone()).collect();
    Batch::new(&seqs, Some(&learn), cfg.pad_id, student.device())
}

/// What scoring one micro-batch gives, per rollout: the student's log-probs (the PPO ratio's
/// denominator), the reference's log-probs and full KL when there is a reference, the critic's
/// values when there is a critic.
struct Scored {
    old: Vec<Vec<f32>>,
    refs: Option<Vec<Vec<f32>>>,
    fkl: Option<Vec<Vec<f32>>>,
    vals: Option<Vec<Vec<f32>>>,
}

/// Score one micro-batch without gradients. Free of `Run` so that micro-batches can be
/// scored on parallel threads.
fn score_micro(
    student: &TrainModel,
    reference: Option<&TrainModel>,
    critic: Option<&TrainModel>,
    cfg: &RlConfig,
    items: &[&Prepared],
) -> Result<Scored> {
    let batch = items_batch(items, cfg, student)?;
    let lens: Vec<usize> = batch.lens.iter().map(|n| n - 1).collect();
    // Generated positions only (the rest is read under the mask alone, as 0).
    let targets = batch.target_ids_tensor(student.device())?;
    let per_position = |x: &Tensor| -> Result<Vec<Vec<f32>>> {
        batch.scatter_targets(&x.to_dtype(DType::F32)?.to_vec1::<f32>()?, 0.0)
    };
    let (mut refs, mut fkl) = (None, None);
    let old = if batch.target_rows.is_empty() {
        // No generated token: nothing is read under the mask.
        let zeros = batch.scatter_targets(&[], 0.0)?;
        refs = reference.map(|_| zeros.clone());
        fkl = (reference.is_some() && cfg.full_kl).then(|| zeros.clone());
        zeros
    } else {
        // The logits are (learnt rows × vocabulary): the student's and the reference's are
        // read side by side one row chunk at a time, so scoring holds two chunks of them
        // instead of two whole micro-batches' (3.9 GB each for four 1,600-token rollouts of
        // Qwen2.5). The tiny presets' micro-batches are one chunk.
        let s_rows = student.target_hidden_no_grad(&batch)?;
        let r_rows = match reference {
            Some(m) => Some((m, m.target_hidden_no_grad(&batch)?)),
            None => None,
        };
        let (n, chunk) = (s_rows.dim(0)?, student.row_chunk());
        let (mut old_lp, mut ref_lp, mut fkl_rows) = (Vec::new(), Vec::new(), Vec::new());
        for start in (0..n).step_by(chunk) {
            let m = chunk.min(n - start);
            let tg = targets.narrow(0, start, m)?;
            let s_logits = student.row_logits(&s_rows.narrow(0, start, m)?)?;
            old_lp.push(row_logprobs(&s_logits, &tg)?);
            if let Some((r, h)) = &r_rows {
                let r_logits = r.row_logits(&h.narrow(0, start, m)?)?;
                ref_lp.push(row_logprobs(&r_logits, &tg)?);
                if cfg.full_kl {
                    fkl_rows.push(crate::loss::forward_kl_rows(&r_logits, &s_logits)?);
                }
            }
        }
        if r_rows.is_some() {
            refs = Some(per_position(&Tensor::cat(&ref_lp, 0)?)?);
            if cfg.full_kl {
                fkl = Some(per_position(&Tensor::cat(&fkl_rows, 0)?)?);
            }
        }
        per_position(&Tensor::cat(&old_lp, 0)?)?
    };
    let vals = match critic {
        Some(c) => {
            let v = c.values(&c.hidden_no_grad(&batch)?)?.detach();
            let t = v.dim(1)?;
            Some(rows(&v.narrow(1, 0, t - 1)?, &lens)?)
        }
        None => None,
    };
    Ok(Scored {
        old,
        refs,
        fkl,
        vals,
    })
}

/// `f` on each item of one wave, each on a scoped thread of its own (inline for a single item),
/// results in item order; a panicking thread becomes an error naming `what`.
fn run_wave<T: Sync, R: Send>(
    wave: &[T],
    what: &str,
    f: impl Fn(&T) -> Result<R> + Sync,
) -> Vec<Result<R>> {
    if wave.len() == 1 {
        return vec![f(&wave[0])];
    }
    std::thread::scope(|sc| {
        let f = &f;
        let hs: Vec<_> = wave.iter().map(|x| sc.spawn(move || f(x))).collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::invalid(format!("a {what} thread panicked"))))
            })
            .collect()
    })
}

/// Rows of a (b, w) tensor as f32 vectors cut to `lens[i]` entries.
fn rows(t: &Tensor, lens: &[usize]) -> Result<Vec<Vec<f32>>> {
    let v = t.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    Ok(v.into_iter()
        .zip(lens)
        .map(|(mut r, &n)| {
            r.truncate(n);
            r
        })
        .collect())
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

fn opt_mean(xs: &[f64], on: bool) -> Option<f64> {
    on.then(|| mean(xs))
}

struct Run<'a> {
    student: &'a TrainModel,
    /// Generates with the student's live weights (built once: see [`live_policy`]).
    policy: dgpo_core::model::CandleModel,
    reference: Reference<'a>,
    critic: Option<TrainModel>,
    actor_opt: AdamW,
    critic_opt: Option<AdamW>,
    actor_sched: Schedule,
    critic_sched: Schedule,
    questions: &'a [QaRow],
    retriever: &'a dyn Retriever,
    cfg: &'a RlConfig,
    exp: PathBuf,
    threads: usize,
    order: Option<(usize, Vec<usize>)>,
}

impl Run<'_> {
    fn question_at(&mut self, pos: usize) -> usize {
        let n = self.questions.len();
        let epoch = pos / n;
        if self.order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut perm: Vec<usize> = (0..n).collect();
            perm.shuffle(&mut StdRng::seed_from_u64(
                self.cfg.seed.wrapping_add(epoch as u64),
            ));
            self.order = Some((epoch, perm));
        }
        self.order.as_ref().expect("set above").1[pos % n]
    }

    /// Old log-probs, reference log-probs and values of every rollout, without gradients, in
    /// right-padded micro-batches.
    fn score(&self, samples: &[Sampled]) -> Result<Vec<Prepared>> {
        let mut out: Vec<Prepared> = samples
            .iter()
            .map(|s| {
                let r = &s.rollout;
                let mut ids = r.prompt_ids.clone();
                ids.extend_from_slice(&r.response_ids);
                let mut learn = vec![false; r.prompt_ids.len()];
                learn.extend(r.response_mask.iter().map(|&m| m == 1));
                let mask = learn[1..].iter().map(|&l| f32::from(u8::from(l))).collect();
                Prepared {
                    ids,
                    learn,
                    mask,
                    old_logp: Vec::new(),
                    ref_logp: None,
                    full_kl: None,
                    values: None,
                    adv: Vec::new(),
                    ret: Vec::new(),
                }
            })
            .collect();
        let v = self.student.vocab_size() as u32;
        for (i, p) in out.iter().enumerate() {
            if p.ids.len() < 2 {
                return Err(Error::invalid(format!(
                    "rollout {i} has fewer than 2 tokens"
                )));
            }
            if let Some(bad) = p.ids.iter().find(|&&t| t >= v) {
                return Err(Error::invalid(format!(
                    "rollout {i}: token id {bad} is outside the student's vocabulary of {v}"
                )));
            }
        }
        // Micro-batches are scored `update_threads` at a time (kernels are single-threaded on
        // the tiny presets, so one micro-batch at a time left a core idle); each micro-batch's
        // numbers do not depend on which thread scored it.
        let mb = self.cfg.micro_batch;
        let starts: Vec<usize> = (0..out.len()).step_by(mb).collect();
        let (student, reference, critic, cfg) = (
            self.student,
            self.reference.get(),
            self.critic.as_ref(),
            self.cfg,
        );
        let mut scored = Vec::with_capacity(starts.len());
        for wave in starts.chunks(cfg.update_threads.max(1)) {
            let pass = |start: usize| {
                let end = (start + mb).min(out.len());
                let items: Vec<&Prepared> = out[start..end].iter().collect();
                score_micro(student, reference, critic, cfg, &items)
            };
            for o in run_wave(wave, "scoring", |&st| pass(st)) {
                scored.push(o?);
            }
        }
        // Moved, not copied, into the rollouts they score.
        for (&start, sc) in starts.iter().zip(scored) {
            let mut refs = sc.refs.map(Vec::into_iter);
            let mut fkl = sc.fkl.map(Vec::into_iter);
            let mut vals = sc.vals.map(Vec::into_iter);
            for (p, old) in out[start..].iter_mut().zip(sc.old) {
                p.old_logp = old;
                p.ref_logp = refs.as_mut().and_then(Iterator::next);
                p.full_kl = fkl.as_mut().and_then(Iterator::next);
                p.values = vals.as_mut().and_then(Iterator::next);
            }
        }
        Ok(out)
    }

    fn step(&mut self, step: usize) -> Result<RlMetrics> {
        let t0 = Instant::now();
        let cfg = self.cfg;
        let (q, g) = (cfg.questions_per_step, cfg.group_size);
        let mut jobs = Vec::with_capacity(q * g);
        for k in 0..q {
            let qi = self.question_at(step * q + k);
            for j in 0..g {
                jobs.push((qi, k, mix(cfg.seed, step as u64, (k * g + j) as u64)));
            }
        }
        // The policy's weights are views of the student's: it generates with this step's
        // weights without any copy.
        let agent =
            cfg.agent(dgpo_core::model::LanguageModel::chat_template(&self.policy).is_some());
        let samples = run_rollouts(
            &self.policy,
            self.retriever,
            self.questions,
            &jobs,
            &agent,
            self.threads,
        )?;
        let rollout_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let peak_rollouts = crate::peak_resident_mb();

        let mut prep = self.score(&samples)?;
        let peak_scored = crate::peak_resident_mb();
        let scores: Vec<f32> = samples.iter().map(|s| s.score).collect();
        // Token rewards and advantages.
        let (mut kl_all, mut kl_pen, mut n_all, mut n_pen, mut penalised) =
            (0f64, 0f64, 0f64, 0f64, 0usize);
        match cfg.algo {
            Algo::Dgpo | Algo::Ppo => {
                for (p, &s) in prep.iter_mut().zip(&scores) {
                    let kl: Vec<f32> = match (&p.full_kl, &p.ref_logp) {
                        (Some(f), _) => f.clone(),
                        (None, Some(r)) => p.old_logp.iter().zip(r).map(|(a, b)| a - b).collect(),
                        (None, None) => vec![0.0; p.mask.len()],
                    };
                    let pen = p.ref_logp.is_some() && kl_applies(cfg.algo, cfg.selective, s);
                    penalised += usize::from(pen);
                    for (&k, &m) in kl.iter().zip(&p.mask) {
                        if m > 0.0 {
                            kl_all += k as f64;
                            n_all += 1.0;
                            if pen {
                                kl_pen += k as f64;
                                n_pen += 1.0;
                            }
                        }
                    }
                    let r = token_rewards(s, &kl, &p.mask, cfg.kl_weight() as f32, pen);
                    let values = p.values.as_ref().expect("PPO and DGPO have a critic");
                    let (a, ret) = gae(&r, values, &p.mask, cfg.gamma as f32, cfg.lambda as f32);
                    p.adv = a;
                    p.ret = ret;
                }
                let masks: Vec<Vec<f32>> = prep.iter().map(|p| p.mask.clone()).collect();
                let mut advs: Vec<Vec<f32>> = prep
                    .iter_mut()
                    .map(|p| std::mem::take(&mut p.adv))
                    .collect();
                whiten(&mut advs, &masks);
                for (p, a) in prep.iter_mut().zip(advs) {
                    p.adv = a;
                }
            }
            Algo::Grpo => {
                let groups: Vec<usize> = samples.iter().map(|s| s.group).collect();
                let a = grpo_advantages(&scores, &groups, 1e-6);
                for (p, &ai) in prep.iter_mut().zip(&a) {
                    p.adv = p.mask.iter().map(|&m| m * ai).collect();
                    p.ret = vec![0.0; p.mask.len()];
                    if let Some(r) = &p.ref_logp {
                        for ((&o, &rr), &m) in p.old_logp.iter().zip(r).zip(&p.mask) {
                            if m > 0.0 {
                                kl_all += (o - rr) as f64;
                                n_all += 1.0;
                            }
                        }
                    }
                }
            }
        }

        // PPO epochs over mini-batches.
        let actor_lr = self.actor_sched.lr(step);
        let critic_lr = self.critic_sched.lr(step);
        let (mut pls, mut vls, mut ents, mut cfs, mut aks, mut vcfs, mut gns, mut cgns) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        for epoch in 0..cfg.ppo_epochs {
            let mut perm: Vec<usize> = (0..prep.len()).collect();
            perm.shuffle(&mut StdRng::seed_from_u64(mix(
                cfg.seed,
                step as u64,
                (1u64 << 40) + epoch as u64,
            )));
            for mbatch in perm.chunks(cfg.mini_batch) {
                let micros: Vec<&[usize]> = mbatch.chunks(cfg.micro_batch).collect();
                let nm = micros.len() as f64;
                let mut ag = self.actor_opt.zero_grads();
                let mut cg = self.critic_opt.as_ref().map(AdamW::zero_grads);
                let (student, refm, critic) =
                    (self.student, self.reference.get(), self.critic.as_ref());
                let pass = |micro: &[usize]| {
                    let items: Vec<&Prepared> = micro.iter().map(|&i| &prep[i]).collect();
                    micro_pass(student, refm, critic, cfg, &items, nm)
                };
                // `update_threads` micro-batches at a time, accumulated in micro-batch order
                // (one at a time, as soon as it is done, when sequential: less memory).
                for wave in micros.chunks(cfg.update_threads.max(1)) {
                    for out in run_wave(wave, "PPO update", |m| pass(m)) {
                        let out = out?;
                        pls.push(out.policy_loss);
                        ents.push(out.entropy);
                        cfs.push(out.clip_frac);
                        aks.push(out.approx_kl);
                        self.actor_opt.accumulate(&mut ag, &out.actor)?;
                        if let (Some((vl, vcf, store)), Some(cg)) = (out.critic, cg.as_mut()) {
                            vls.push(vl);
                            vcfs.push(vcf);
                            self.critic_opt
                                .as_ref()
                                .expect("critic has an optimiser")
                                .accumulate(cg, &store)?;
                        }
                    }
                }
                let gn = if cfg.max_grad_norm > 0.0 {
                    ag.clip(cfg.max_grad_norm)?
                } else {
                    ag.norm()?
                };
                gns.push(gn);
                self.actor_opt.step(&ag, actor_lr)?;
                if let (Some(opt), Some(mut cg)) = (self.critic_opt.as_mut(), cg) {
                    let gn = if cfg.max_grad_norm > 0.0 {
                        cg.clip(cfg.max_grad_norm)?
                    } else {
                        cg.norm()?
                    };
                    cgns.push(gn);
                    opt.step(&cg, critic_lr)?;
                }
            }
        }

        let n = samples.len() as f64;
        let generated: f64 = samples
            .iter()
            .map(|s| s.trace.generated_tokens as f64)
            .sum();
        // Executed searches per rollout, counted once: for the mean and for the histogram.
        let counts: Vec<usize> = samples.iter().map(|s| s.trace.search_count()).collect();
        let searches = counts.iter().sum::<usize>() as f64;
        let mut hist = [0usize; 4];
        let mut reward_sums = [0f64; 4];
        for (&c, &score) in counts.iter().zip(&scores) {
            hist[c.min(3)] += 1;
            reward_sums[c.min(3)] += score as f64;
        }
        let reward_by_searches =
            std::array::from_fn(|k| (hist[k] > 0).then(|| reward_sums[k] / hist[k] as f64));
        let has_ref = self.reference.get().is_some();
        let has_critic = self.critic.is_some();
        Ok(RlMetrics {
            step: step + 1,
            reward_mean: scores.iter().map(|&s| s as f64).sum::<f64>() / n,
            success_rate: scores.iter().filter(|&&s| !failed(s)).count() as f64 / n,
            answered: samples.iter().filter(|s| s.trace.answer.is_some()).count() as f64 / n,
            kl: has_ref.then(|| kl_all / n_all.max(1.0)),
            kl_penalised: (has_ref && cfg.algo != Algo::Grpo).then(|| kl_pen / n_pen.max(1.0)),
            penalised_frac: penalised as f64 / n,
            policy_loss: mean(&pls),
            value_loss: opt_mean(&vls, has_critic),
            entropy: mean(&ents),
            clip_frac: mean(&cfs),
            approx_kl: mean(&aks),
            value_clip_frac: opt_mean(&vcfs, has_critic),
            grad_norm: mean(&gns),
            critic_grad_norm: opt_mean(&cgns, has_critic),
            actor_lr,
            critic_lr: has_critic.then_some(critic_lr),
            response_len: generated / n,
            observation_len: samples
                .iter()
                .map(|s| s.trace.observation_tokens as f64)
                .sum::<f64>()
                / n,
            searches: searches / n,
            searches_hist: hist,
            reward_by_searches,
            tokens_per_s: generated / rollout_s.max(1e-9),
            rollout_s,
            update_s: t1.elapsed().as_secs_f64(),
            step_s: t0.elapsed().as_secs_f64(),
            peak_rss_mb: match (peak_rollouts, peak_scored, crate::peak_resident_mb()) {
                (Some(a), Some(b), Some(c)) => Some([a, b, c]),
                _ => None,
            },
        })
    }

    fn state(&self, step: usize) -> TrainState {
        TrainState {
            step,
            seed: self.cfg.seed,
            data_len: self.questions.len(),
            config: serde_json::json!({
                "rl": self.cfg,
                "actor_updates": self.actor_opt.step_count(),
                "critic_updates": self.critic_opt.as_ref().map(AdamW::step_count),
            }),
        }
    }

    /// Critic first, then the actor: the actor's checkpoint completes a step.
    fn save(&self, step: usize) -> Result<()> {
        let st = self.state(step);
        if let (Some(c), Some(o)) = (&self.critic, &self.critic_opt) {
            save_checkpoint(&self.exp.join("critic"), c, o, &st, self.cfg.keep_last)?;
        }
        save_checkpoint(
            &self.exp,
            self.student,
            &self.actor_opt,
            &st,
            self.cfg.keep_last,
        )?;
        Ok(())
    }

    /// Load the newest step that has every checkpoint it needs; returns the step.
    fn resume(&mut self) -> Result<Option<usize>> {
        for (step, dir) in list_checkpoints(&self.exp)?.into_iter().rev() {
            let cdir = checkpoint_dir(&self.exp.join("critic"), step);
            if self.critic.is_some() && !cdir.join("state.json").exists() {
                tracing::warn!(
                    step,
                    "actor checkpoint without a critic checkpoint: skipped"
                );
                continue;
            }
            let st = load_checkpoint(&dir, self.student, &mut self.actor_opt)?;
            let sp = dir.join("state.json");
            let algo = st.config.pointer("/rl/algo").and_then(|a| a.as_str());
            if st.seed != self.cfg.seed
                || st.data_len != self.questions.len()
                || algo != Some(&self.cfg.algo.to_string())
            {
                return Err(Error::format(
                    sp,
                    format!(
                        "checkpoint was made by {} with seed {} on {} questions; this run is {} with seed {} on {} questions",
                        algo.unwrap_or("?"),
                        st.seed,
                        st.data_len,
                        self.cfg.algo,
                        self.cfg.seed,
                        self.questions.len()
                    ),
                ));
            }
            // load_checkpoint counts one optimiser update per step; an RL step makes several.
            let updates = |k: &str| -> Result<usize> {
                st.config
                    .get(k)
                    .and_then(|v| v.as_u64())
                    .map(|v| v as usize)
                    .ok_or_else(|| Error::format(&sp, format!("state.json lacks {k}")))
            };
            let a = updates("actor_updates")?;
            let t = self.actor_opt.state_tensors();
            self.actor_opt.load_state(t, a)?;
            if let (Some(c), Some(o)) = (&self.critic, self.critic_opt.as_mut()) {
                load_checkpoint(&cdir, c, o)?;
                let cu = updates("critic_updates")?;
                let t = o.state_tensors();
                o.load_state(t, cu)?;
            }
            tracing::info!(step, dir = %dir.display(), "RL run resumed");
            return Ok(Some(step));
        }
        Ok(None)
    }
}

/// Run the RL phase: `student` (updated in place) learns to answer `questions` with
/// `retriever` under `cfg.algo`; DGPO needs the `teacher`. Checkpoints, metrics and curves go
/// to `exp_dir` (see the module docs); with `resume`, the run continues from the newest
/// complete checkpoint there (or starts fresh if there is none). Returns the metrics of the
/// steps run by this call.
pub fn train_rl(
    student: &TrainModel,
    teacher: Option<&TrainModel>,
    questions: &[QaRow],
    retriever: &dyn Retriever,
    cfg: &RlConfig,
    exp_dir: &Path,
    resume: bool,
) -> Result<Vec<RlMetrics>> {
    cfg.validate()?;
    if questions.is_empty() {
        return Err(Error::invalid("no training questions for the RL phase"));
    }
    if cfg.algo == Algo::Dgpo && teacher.is_none() {
        return Err(Error::invalid(
            "DGPO needs a teacher: it is the reference model of the KL penalty",
        ));
    }
    if let Some(t) = teacher
        && t.vocab_size() != student.vocab_size()
    {
        return Err(Error::invalid(format!(
            "teacher vocabulary size {} differs from the student's {}: the KL needs the same tokenizer",
            t.vocab_size(),
            student.vocab_size()
        )));
    }
    std::fs::create_dir_all(exp_dir).map_err(|e| Error::io(exp_dir, e))?;
    let existing = list_checkpoints(exp_dir)?;
    if !resume && !existing.is_empty() {
        return Err(Error::invalid(format!(
            "{} already holds RL checkpoints (up to step {}): resume, or use a new experiment folder",
            exp_dir.display(),
            existing.last().map_or(0, |c| c.0)
        )));
    }
    let init_dir = exp_dir.join("init-policy");
    if existing.is_empty() {
        student.save(&init_dir)?;
    } else if !init_dir.join("config.json").exists() {
        return Err(Error::format(
            &init_dir,
            "the run's initial policy is missing: it holds the tokenizer and the reference",
        ));
    }
    let load = |value_head: bool| {
        TrainModel::load(
            &init_dir,
            &ModelOptions {
                dtype: student.dtype(),
                device: student.device().clone(),
                value_head,
                seed: cfg.seed,
            },
        )
    };
    let critic = match cfg.algo {
        Algo::Dgpo | Algo::Ppo => Some(load(true)?),
        Algo::Grpo => None,
    };
    let reference = match (cfg.algo, teacher) {
        (Algo::Dgpo, Some(t)) => Reference::Borrowed(t),
        (Algo::Grpo, _) if cfg.kl_weight() == 0.0 => Reference::None,
        _ => Reference::Owned(Box::new(load(false)?)),
    };
    let actor_opt = AdamW::new(student.named_vars(), AdamWConfig::default())?;
    let critic_opt = match &critic {
        Some(c) => Some(AdamW::new(c.named_vars(), AdamWConfig::default())?),
        None => None,
    };
    let threads = if cfg.rollout_threads > 0 {
        cfg.rollout_threads
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    };
    let mut run = Run {
        student,
        policy: live_policy(student, &init_dir)?,
        reference,
        critic,
        actor_opt,
        critic_opt,
        actor_sched: Schedule::with_ratio(
            cfg.actor_lr,
            cfg.actor_warmup_ratio,
            cfg.steps,
            Decay::Constant,
        ),
        critic_sched: Schedule::with_ratio(
            cfg.critic_lr,
            cfg.critic_warmup_ratio,
            cfg.steps,
            Decay::Constant,
        ),
        questions,
        retriever,
        cfg,
        exp: exp_dir.to_path_buf(),
        threads,
        order: None,
    };
    let start = match (resume, existing.last()) {
        (true, Some((newest, _))) => run.resume()?.ok_or_else(|| {
            Error::invalid(format!(
                "{}: no complete RL checkpoint to resume from (the newest actor checkpoint, step {newest}, has no critic checkpoint beside it)",
                exp_dir.display()
            ))
        })?,
        _ => 0,
    };
    let log = exp_dir.join(METRICS_FILE);
    if start == 0 && log.exists() {
        std::fs::remove_file(&log).map_err(|e| Error::io(&log, e))?;
    }
    truncate_metrics(&log, start)?;
    let end = cfg.stop_after.map_or(cfg.steps, |s| s.min(cfg.steps));
    tracing::info!(
        algo = %cfg.algo,
        start,
        end,
        rollouts_per_step = cfg.questions_per_step * cfg.group_size,
        threads,
        retriever = %retriever.describe(),
        "RL phase"
    );
    // Hidden automatically when stderr is not a terminal.
    let bar = indicatif::ProgressBar::new(end.saturating_sub(start) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} RL step {pos}/{len} [{bar:30}] {msg} elapsed {elapsed} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut out = Vec::new();
    for step in start..end {
        let m = run.step(step)?;
        bar.inc(1);
        bar.set_message(format!(
            "reward {:.3} kl {:.4} {:.0} tok/s",
            m.reward_mean,
            m.kl.unwrap_or(0.0),
            m.tokens_per_s
        ));
        tracing::info!(
            step = m.step,
            reward = m.reward_mean,
            kl = m.kl,
            policy_loss = m.policy_loss,
            value_loss = m.value_loss,
            entropy = m.entropy,
            step_s = m.step_s,
            peak_rss_mb = ?m.peak_rss_mb,
            "RL step"
        );
        append_metrics(&log, &m)?;
        out.push(m);
        let done = step + 1;
        if (cfg.save_every > 0 && done.is_multiple_of(cfg.save_every)) || done == end {
            run.save(done)?;
        }
    }
    bar.finish_and_clear();
    if log.exists() {
        plot_rl(&read_metrics(&log)?, &exp_dir.join("rl_curves.png"))?;
    }
    Ok(out)
}
