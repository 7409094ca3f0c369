//! Rollouts: the student plays core's agent loop with its current weights.
//!
//! The policy is a [`CandleModel`] over a decoder whose weights are *views* of the student's
//! trained tensors (detached: no autograd bookkeeping during generation). The optimiser updates
//! those tensors in place, so the same policy model generates with the newest weights at every
//! step without copying or reloading them. Token ids, the generated/observation mask and the
//! trace come from [`Agent::run_with`]: ids are appended as generated, never re-tokenised.
//!
//! Reproducibility: rollout `k` of step `s` samples with the seed `mix(seed, s, k)`, so a step's
//! rollouts do not depend on what ran before it (a resumed run replays them exactly) nor on
//! which thread ran them.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::Tensor;
use dgpo_core::agent::{Agent, AgentConfig, Rollout};
use dgpo_core::model::decoder::{Block, Embedding, Linear, Weights};
use dgpo_core::model::{CandleModel, Decoder, LanguageModel, LoadOptions, Ops};
use dgpo_core::retrieve::Retriever;
use dgpo_core::trace::Trace;
use dgpo_core::{Error, Result};

use crate::data::QaRow;
use crate::model::TrainModel;
use crate::phases::exact_match;

/// SplitMix64 of a combination of the inputs: independent seeds per (run, step, rollout).
pub fn mix(seed: u64, step: u64, k: u64) -> u64 {
    let mut z = seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(step.wrapping_mul(0xbf58_476d_1ce4_e5b9))
        .wrapping_add(k.wrapping_mul(0x94d0_49bb_1331_11eb))
        .wrapping_add(0x2545_f491_4f6c_dd1d);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn detach_linear(l: &Linear) -> Linear {
    match l {
        Linear::Dense(d) => Linear::Dense(candle_nn::Linear::new(
            d.weight().detach(),
            d.bias().map(Tensor::detach),
        )),
        q => q.clone(),
    }
}

/// The student's weights as detached views (same storage, no gradient tracking).
fn detached_weights(w: &Weights) -> Weights {
    Weights {
        embed: match &w.embed {
            Embedding::Dense(t) => Embedding::Dense(t.detach()),
            q => q.clone(),
        },
        blocks: w
            .blocks
            .iter()
            .map(|b| Block {
                attn_norm: b.attn_norm.detach(),
                q: detach_linear(&b.q),
                k: detach_linear(&b.k),
                v: detach_linear(&b.v),
                o: detach_linear(&b.o),
                ffn_norm: b.ffn_norm.detach(),
                gate: detach_linear(&b.gate),
                up: detach_linear(&b.up),
                down: detach_linear(&b.down),
            })
            .collect(),
        norm: w.norm.detach(),
        lm_head: detach_linear(&w.lm_head),
        rope_freqs: w.rope_freqs.clone(),
    }
}

/// A generating model over the student's live weights, with the tokenizer, end-of-generation
/// ids and chat template of the HF folder `dir` (the student as saved at the start of the run).
pub fn live_policy(student: &TrainModel, dir: &Path) -> Result<CandleModel> {
    let d = student.decoder();
    let dec = Decoder::new(
        d.config().clone(),
        detached_weights(d.weights()),
        Ops::Fused,
        d.device(),
    )?;
    CandleModel::with_decoder(dir, dec, &LoadOptions::default())
}

/// One finished rollout.
#[derive(Debug, Clone)]
pub struct Sampled {
    /// Index of its question in the step's question list.
    pub question: usize,
    /// Group (question slot of the step): GRPO normalises within it.
    pub group: usize,
    /// Token ids and the generated/observation mask.
    pub rollout: Rollout,
    /// The agent's trace.
    pub trace: Trace,
    /// Outcome reward: 1 for an exact-match answer, else 0.
    pub score: f32,
}

/// Run `jobs` = (question index, group, sampling seed) through the agent loop on `threads`
/// threads; results come back in job order.
pub fn run_rollouts(
    policy: &dyn LanguageModel,
    retriever: &dyn Retriever,
    questions: &[QaRow],
    jobs: &[(usize, usize, u64)],
    agent: &AgentConfig,
    threads: usize,
) -> Result<Vec<Sampled>> {
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<Result<Sampled>>>> =
        Mutex::new((0..jobs.len()).map(|_| None).collect());
    let work = || {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(&(q, group, seed)) = jobs.get(i) else {
                break;
            };
            let mut cfg = agent.clone();
            cfg.sampling.seed = seed;
            let a = Agent::new(policy, retriever, cfg);
            let row = &questions[q];
            let r = a
                .run_with(&row.question, &mut |_| {}, &|| false)
                .map(|(trace, rollout)| {
                    let score = trace
                        .answer
                        .as_deref()
                        .is_some_and(|x| exact_match(x, &row.golden_answers));
                    Sampled {
                        question: q,
                        group,
                        rollout,
                        trace,
                        score: if score { 1.0 } else { 0.0 },
                    }
                });
            let failed = r.is_err();
            out.lock().expect("no thread panics holding it")[i] = Some(r);
            if failed {
                // Stop the others early: the step fails anyway.
                next.store(jobs.len(), Ordering::Relaxed);
            }
        }
    };
    let threads = threads.clamp(1, jobs.len().max(1));
    std::thread::scope(|s| {
        for _ in 1..threads {
            s.spawn(work);
        }
        work();
    });
    let results = out.into_inner().expect("threads joined");
    let mut v = Vec::with_capacity(jobs.len());
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Some(r) => v.push(r?),
            None => return Err(Error::invalid(format!("rollout {i} did not run"))),
        }
    }
    Ok(v)
}
