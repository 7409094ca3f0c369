//! The RL phase: hand-computed numbers for token rewards, the selective KL mask, GAE over
//! generated tokens only, whitening, GRPO normalisation and the clipped losses (values and
//! gradients); the live policy; seeded rollouts; and short DGPO/PPO/GRPO runs on the synthetic
//! world with a bit-exact resume.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use dgpo_core::agent::AgentConfig;
use dgpo_core::model::LanguageModel;
use dgpo_core::model::decoder::{Arch, DecoderConfig, RopeStyle};
use dgpo_core::retrieve::MemoryRetriever;
use dgpo_core::sampling::SamplingParams;
use train::data::{QaRow, read_questions};
use train::model::{Batch, ModelOptions, TrainModel, config_json};
use train::rl::algo::{
    entropy_rows, failed, gae, grpo_advantages, policy_loss, token_rewards, value_loss, whiten,
};
use train::rl::rollout::{live_policy, run_rollouts};
use train::rl::{Algo, RlConfig, kl_applies, read_metrics, train_rl};
use train::synth::WorldConfig;
use train::synth::prepare::{PrepareConfig, prepare};

fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
    }
}

#[test]
fn selective_kl_hits_only_failed_rollouts_generated_tokens() {
    // Which rollouts are penalised: DGPO only failed ones (reward < 0.1); the ablation and PPO
    // all; GRPO none (its KL is a loss term, not a reward).
    assert!(failed(0.0) && failed(0.09) && !failed(0.1) && !failed(1.0));
    assert!(kl_applies(Algo::Dgpo, true, 0.0));
    assert!(!kl_applies(Algo::Dgpo, true, 1.0));
    assert!(kl_applies(Algo::Dgpo, false, 1.0));
    assert!(kl_applies(Algo::Ppo, true, 1.0) && kl_applies(Algo::Ppo, true, 0.0));
    assert!(!kl_applies(Algo::Grpo, true, 0.0));
    // Positions 1 and 2 are an observation (KL values there must be ignored).
    let mask = [1.0, 0.0, 0.0, 1.0, 1.0];
    let kl = [0.5, 7.0, -3.0, -0.2, 0.1];
    // Failed rollout: −β·kl on generated tokens, score 0 on the last one.
    let r = token_rewards(0.0, &kl, &mask, 0.01, kl_applies(Algo::Dgpo, true, 0.0));
    close(&r, &[-0.005, 0.0, 0.0, 0.002, -0.001], 1e-7);
    // Correct rollout: no KL at all, the reward 1 on the last generated token.
    let r = token_rewards(1.0, &kl, &mask, 0.01, kl_applies(Algo::Dgpo, true, 1.0));
    close(&r, &[0.0, 0.0, 0.0, 0.0, 1.0], 0.0);
    // Ablation (selective off): the correct rollout is penalised too.
    let r = token_rewards(1.0, &kl, &mask, 0.01, kl_applies(Algo::Dgpo, false, 1.0));
    close(&r, &[-0.005, 0.0, 0.0, 0.002, 0.999], 1e-7);
    // A rollout ending in an observation: the reward goes on its last generated token.
    let r = token_rewards(1.0, &[0.0; 4], &[1.0, 1.0, 0.0, 0.0], 0.01, false);
    close(&r, &[0.0, 1.0, 0.0, 0.0], 0.0);
}

#[test]
fn gae_runs_over_generated_tokens_only() {
    // 5 positions, 2 and 3 an <information> block whose values (9.0) must not be used.
    let mask = [1.0, 1.0, 0.0, 0.0, 1.0];
    let values = [0.5, 0.2, 9.0, 9.0, 0.4];
    let kl = [0.3, -0.1, 5.0, 5.0, 0.2];
    let r = token_rewards(1.0, &kl, &mask, 0.1, true);
    close(&r, &[-0.03, 0.01, 0.0, 0.0, 0.98], 1e-7);
    // γ = λ = 1: δ4 = 0.98 − 0.4 = 0.58; δ1 = 0.01 + 0.4 − 0.2 = 0.21; δ0 = −0.03 + 0.2 − 0.5.
    let (a, ret) = gae(&r, &values, &mask, 1.0, 1.0);
    close(&a, &[0.46, 0.79, 0.0, 0.0, 0.58], 1e-6);
    // Returns are the sums of future rewards.
    close(&ret, &[0.96, 0.99, 0.0, 0.0, 0.98], 1e-6);
    // γ = 0.9, λ = 0.5: A1 = 0.17 + 0.45·0.58, A0 = −0.35 + 0.45·A1.
    let (a, ret) = gae(&r, &values, &mask, 0.9, 0.5);
    close(&a, &[-0.15605, 0.431, 0.0, 0.0, 0.58], 1e-6);
    close(&ret, &[0.34395, 0.631, 0.0, 0.0, 0.98], 1e-6);
}

#[test]
fn whitening_uses_masked_positions_with_unbiased_variance() {
    let mut xs = vec![vec![1.0, 2.0, 7.0], vec![3.0]];
    let masks = vec![vec![1.0, 1.0, 0.0], vec![1.0]];
    whiten(&mut xs, &masks);
    // mean 2, unbiased variance (1 + 0 + 1) / 2 = 1; the masked 7.0 becomes 0.
    close(&xs[0], &[-1.0, 0.0, 0.0], 1e-6);
    close(&xs[1], &[1.0], 1e-6);
}

#[test]
fn grpo_normalises_within_groups() {
    let scores = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1e-6];
    let groups = [0, 0, 0, 0, 1, 1, 1, 2, 3, 3];
    let a = grpo_advantages(&scores, &groups, 1e-6);
    // Group 0: mean 0.5, unbiased std sqrt(1/3); group 1: all equal → 0; group 2 (one
    // sample): mean 0, std 1; group 3: mean 5e-7, std 7.0711e-7, where ε = 1e-6 matters.
    let g0 = 0.5 / ((1.0f64 / 3.0).sqrt() + 1e-6);
    let g3 = 5e-7 / (2f64.sqrt() * 5e-7 + 1e-6);
    let want = [g0, -g0, -g0, g0, 0.0, 0.0, 0.0, 1.0 / (1.0 + 1e-6), -g3, g3].map(|x| x as f32);
    close(&a, &want, 1e-5);
    assert!((g3 - 0.292893).abs() < 1e-5);
}

fn t1(v: &[f64]) -> Tensor {
    Tensor::new(v, &Device::Cpu).unwrap().unsqueeze(0).unwrap()
}

/// The entropy bonus in row form: `−Σ p log p` of each row, by hand, in f64.
#[test]
fn entropy_rows_by_hand() {
    let rows = [[0.0f64, 0.0, 0.0, 0.0], [2.0, 0.0, -1.0, 0.5]];
    let t = Tensor::new(&rows, &Device::Cpu).unwrap();
    let got = entropy_rows(&t).unwrap().to_vec1::<f64>().unwrap();
    for (r, g) in rows.iter().zip(&got) {
        let z: f64 = r.iter().map(|x| x.exp()).sum();
        let h: f64 = -r.iter().map(|x| (x.exp() / z) * (x - z.ln())).sum::<f64>();
        assert!((g - h).abs() < 1e-12, "{g} vs {h}");
    }
    // A uniform row over 4 tokens has entropy ln 4.
    assert!((got[0] - 4f64.ln()).abs() < 1e-12);
}

#[test]
fn ppo_clipping_values_and_gradients() {
    let ratios = [1.5f64, 1.5, 0.5, 0.5, 1.1, 3.0];
    let adv = [1.0, -1.0, -1.0, 1.0, 2.0, 1.0];
    let old = [-1.0, -2.0, -0.5, -3.0, -1.2, -0.7];
    let logp: Vec<f64> = old.iter().zip(&ratios).map(|(o, r)| o + r.ln()).collect();
    let mask = [1.0, 1.0, 1.0, 1.0, 1.0, 0.0];
    let x = Var::from_tensor(&t1(&logp)).unwrap();
    let pl = policy_loss(x.as_tensor(), &t1(&old), &t1(&adv), &t1(&mask), 0.2).unwrap();
    // Per position max(−Aρ, −A·clip(ρ)): −1.2 (clipped), 1.5, 0.8 (clipped), −0.5, −2.2;
    // position 5 is masked out.
    let loss = pl.loss.to_scalar::<f64>().unwrap();
    assert!(
        (loss - (-1.2 + 1.5 + 0.8 - 0.5 - 2.2) / 5.0).abs() < 1e-12,
        "{loss}"
    );
    assert!((pl.clip_frac - 0.4).abs() < 1e-12);
    let ak: f64 = -(0..5).map(|i| ratios[i].ln()).sum::<f64>() / 5.0;
    assert!((pl.approx_kl - ak).abs() < 1e-12);
    // d/dlogp of −Aρ is −Aρ; clipped positions and the masked one get exactly 0, and the
    // in-range position (both branches equal) gets its gradient once, not twice.
    let g = pl.loss.backward().unwrap();
    let g = g.get(x.as_tensor()).unwrap().to_vec2::<f64>().unwrap();
    let want = [0.0, 1.5 / 5.0, 0.0, -0.5 / 5.0, -2.2 / 5.0, 0.0];
    for (a, b) in g[0].iter().zip(want) {
        assert!((a - b).abs() < 1e-12, "{g:?}");
    }
}

#[test]
fn value_clipping_values_and_gradients() {
    let v = Var::from_tensor(&t1(&[1.0, 1.0, 0.2])).unwrap();
    let old = t1(&[0.0, 0.0, 0.0]);
    let ret = t1(&[2.0, 0.0, 1.0]);
    let vl = value_loss(v.as_tensor(), &old, &ret, &t1(&[1.0, 1.0, 1.0]), 0.5).unwrap();
    // V_clip = 0.5, 0.5, 0.2 → max of (1, 2.25), (1, 0.25), (0.64, 0.64).
    let l = vl.loss.to_scalar::<f64>().unwrap();
    assert!((l - 0.5 * (2.25 + 1.0 + 0.64) / 3.0).abs() < 1e-12, "{l}");
    assert!((vl.clip_frac - 1.0 / 3.0).abs() < 1e-12);
    let g = vl.loss.backward().unwrap();
    let g = g.get(v.as_tensor()).unwrap().to_vec2::<f64>().unwrap();
    let want = [0.0, 2.0 * 0.5 / 3.0, 2.0 * (0.2 - 1.0) * 0.5 / 3.0];
    for (a, b) in g[0].iter().zip(want) {
        assert!((a - b).abs() < 1e-12, "{g:?}");
    }
}

#[test]
fn algo_names_parse() {
    assert_eq!("DGPO".parse::<Algo>().unwrap(), Algo::Dgpo);
    assert_eq!("ppo".parse::<Algo>().unwrap(), Algo::Ppo);
    assert_eq!("grpo".parse::<Algo>().unwrap(), Algo::Grpo);
    assert!(
        "dpo"
            .parse::<Algo>()
            .unwrap_err()
            .to_string()
            .contains("dgpo, ppo, grpo")
    );
    let c = RlConfig::default();
    assert_eq!(
        (
            c.kl_coef,
            c.teacher_kl_coef,
            c.clip_eps,
            c.entropy_coef,
            c.actor_lr,
            c.critic_lr
        ),
        (0.001, 0.001, 0.2, 0.001, 1e-6, 1e-5)
    );
    assert_eq!(
        (c.questions_per_step, c.mini_batch, c.steps),
        (512, 256, 1000)
    );
    assert_eq!(RlConfig::paper(Algo::Grpo).group_size, 5);
}

// ---------------------------------------------------------------------------------------------
// The synthetic world and tiny models.

struct World {
    _dir: tempfile::TempDir,
    tokenizer: Vec<u8>,
    vocab: usize,
    retriever: MemoryRetriever,
    questions: Vec<QaRow>,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let cfg = PrepareConfig {
        world: WorldConfig {
            people: 24,
            cities: 4,
            countries: 2,
            ..Default::default()
        },
        vocab_size: 512,
        ..Default::default()
    };
    let p = prepare(dir.path(), &cfg).unwrap();
    let tokenizer = std::fs::read(p.tokenizer()).unwrap();
    let vocab = dgpo_core::tokenizer::Tokenizer::from_file(&p.tokenizer())
        .unwrap()
        .get_vocab_size(true);
    World {
        retriever: MemoryRetriever::from_jsonl(&p.corpus()).unwrap(),
        questions: read_questions(&dir.path().join("train.jsonl")).unwrap(),
        tokenizer,
        vocab,
        _dir: dir,
    }
}

fn tiny(w: &World, seed: u64) -> TrainModel {
    let dc = DecoderConfig {
        arch: Arch::Qwen2,
        vocab_size: w.vocab,
        hidden_size: 32,
        intermediate_size: 64,
        num_layers: 1,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 8,
        max_position: 2048,
        rope_theta: 10000.0,
        rms_norm_eps: 1e-6,
        tie_embeddings: true,
        attention_bias: true,
        rope_style: RopeStyle::Half,
        rope_scaling: None,
    };
    // <|im_end|> (id 2) ends generation, as the synthetic tokenizer's chat turns.
    TrainModel::new_random(
        dc.clone(),
        config_json(&dc, None, Some(2)),
        w.tokenizer.clone(),
        &ModelOptions {
            seed,
            ..Default::default()
        },
    )
    .unwrap()
}

fn weights(m: &TrainModel) -> BTreeMap<String, Vec<f32>> {
    m.named_vars()
        .into_iter()
        .map(|(n, v)| {
            let t = v
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            (n, t.to_vec1::<f32>().unwrap())
        })
        .collect()
}

fn small_cfg(algo: Algo) -> RlConfig {
    RlConfig {
        algo,
        steps: 3,
        questions_per_step: 4,
        group_size: if algo == Algo::Grpo { 2 } else { 1 },
        ppo_epochs: 2,
        mini_batch: 2,
        micro_batch: 2,
        actor_lr: 1e-3,
        actor_warmup_ratio: 0.0,
        critic_lr: 1e-3,
        critic_warmup_ratio: 0.0,
        max_turns: 1,
        max_turn_tokens: 12,
        max_obs_tokens: 48,
        save_every: 1,
        keep_last: 0,
        rollout_threads: 2,
        ..RlConfig::default()
    }
}

#[test]
fn live_policy_generates_with_the_current_weights() {
    let w = world();
    let s = tiny(&w, 1);
    let dir = tempfile::tempdir().unwrap();
    s.save(dir.path()).unwrap();
    let policy = live_policy(&s, dir.path()).unwrap();
    let ids: Vec<u32> = vec![5, 17, 42, 99];
    let feed = |p: &dyn LanguageModel| {
        let mut sess = p.new_session().unwrap();
        sess.feed_all(&ids).unwrap()
    };
    let train_logits = |m: &TrainModel| -> Vec<Vec<f32>> {
        let b = Batch::new(std::slice::from_ref(&ids), None, 0, &Device::Cpu).unwrap();
        m.logits(&b).unwrap().squeeze(0).unwrap().to_vec2().unwrap()
    };
    let before = feed(&policy);
    let tl = train_logits(&s);
    let diff = |a: &[Vec<f32>], b: &[Vec<f32>]| {
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    assert!(
        diff(&before, &tl) < 1e-4,
        "fused and differentiable decoders agree"
    );
    // Change the student's weights as an optimiser would (Var::set); the policy follows.
    let other = tiny(&w, 2);
    let new: BTreeMap<String, Tensor> = other
        .named_vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().copy().unwrap()))
        .collect();
    s.set_weights(&new).unwrap();
    let after = feed(&policy);
    assert!(
        diff(&before, &after) > 1e-3,
        "the policy still sees the old weights"
    );
    assert!(diff(&after, &train_logits(&other)) < 1e-4);
    assert_eq!(policy.tokenizer().eos_ids(), &[2]);
}

#[test]
fn rollouts_are_seeded_per_job_not_per_thread() {
    let w = world();
    let s = tiny(&w, 3);
    let dir = tempfile::tempdir().unwrap();
    s.save(dir.path()).unwrap();
    let policy = live_policy(&s, dir.path()).unwrap();
    let agent = AgentConfig {
        max_turns: 1,
        max_turn_tokens: 16,
        max_obs_tokens: 48,
        sampling: SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            seed: 0,
        },
        chat_template: false,
        ..Default::default()
    };
    let jobs: Vec<(usize, usize, u64)> = (0..5).map(|k| (k % 3, k, 1000 + k as u64)).collect();
    let one = run_rollouts(&policy, &w.retriever, &w.questions, &jobs, &agent, 1).unwrap();
    let three = run_rollouts(&policy, &w.retriever, &w.questions, &jobs, &agent, 3).unwrap();
    for (a, b) in one.iter().zip(&three) {
        assert_eq!(a.rollout.response_ids, b.rollout.response_ids);
        assert_eq!(a.rollout.response_mask, b.rollout.response_mask);
        assert_eq!((a.question, a.group), (b.question, b.group));
    }
    // Different seeds sample different text (temperature 1 over a random model).
    assert_ne!(one[0].rollout.response_ids, one[3].rollout.response_ids);
    // Masks: generated tokens 1, observation tokens 0, one entry per response id.
    for r in &one {
        assert_eq!(r.rollout.response_ids.len(), r.rollout.response_mask.len());
        assert_eq!(
            r.trace.generated_tokens,
            r.rollout.response_mask.iter().filter(|&&m| m == 1).count()
        );
        assert_eq!(
            r.trace.observation_tokens,
            r.rollout.response_mask.iter().filter(|&&m| m == 0).count()
        );
    }
}

#[test]
fn dgpo_resume_replays_the_uninterrupted_run() {
    let w = world();
    let teacher = tiny(&w, 99);
    let cfg = small_cfg(Algo::Dgpo);
    let a_dir = tempfile::tempdir().unwrap();
    let a = tiny(&w, 7);
    let init = weights(&a);
    let t0 = std::time::Instant::now();
    let ma = train_rl(
        &a,
        Some(&teacher),
        &w.questions,
        &w.retriever,
        &cfg,
        a_dir.path(),
        false,
    )
    .unwrap();
    eprintln!(
        "3 DGPO steps of 4 rollouts: {:.2} s ({:.2} s/step)",
        t0.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64() / 3.0
    );
    eprintln!("last step: {:?}", ma[2]);
    assert_eq!(ma.len(), 3);
    assert_ne!(weights(&a), init, "training changed nothing");
    for m in &ma {
        assert!(m.kl.is_some() && m.value_loss.is_some());
        assert!(m.policy_loss.is_finite() && m.entropy > 0.0, "{m:?}");
        assert!(m.response_len > 0.0);
    }
    // Interrupted after step 2, resumed with a fresh copy of the initial student.
    let b_dir = tempfile::tempdir().unwrap();
    let b = tiny(&w, 7);
    let first = RlConfig {
        stop_after: Some(2),
        ..cfg.clone()
    };
    let mb = train_rl(
        &b,
        Some(&teacher),
        &w.questions,
        &w.retriever,
        &first,
        b_dir.path(),
        false,
    )
    .unwrap();
    assert_eq!(mb.len(), 2);
    // A non-resume run into a folder with checkpoints is refused.
    let e = train_rl(
        &b,
        Some(&teacher),
        &w.questions,
        &w.retriever,
        &cfg,
        b_dir.path(),
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("resume"), "{e}");
    let b2 = tiny(&w, 7);
    let mb2 = train_rl(
        &b2,
        Some(&teacher),
        &w.questions,
        &w.retriever,
        &cfg,
        b_dir.path(),
        true,
    )
    .unwrap();
    assert_eq!(mb2.len(), 1);
    assert_eq!(mb2[0].step, 3);
    assert_eq!(
        weights(&b2),
        weights(&a),
        "resumed weights differ from the uninterrupted run"
    );
    assert_eq!(mb2[0].policy_loss, ma[2].policy_loss);
    assert_eq!(mb2[0].value_loss, ma[2].value_loss);
    // Files: checkpoints of actor and critic, metrics of all 3 steps, the curves.
    let log = read_metrics(&b_dir.path().join("rl_metrics.jsonl")).unwrap();
    assert_eq!(log.iter().map(|m| m.step).collect::<Vec<_>>(), [1, 2, 3]);
    // The search-count buckets partition the rollouts and their rewards.
    for m in &log {
        let n: usize = m.searches_hist.iter().sum();
        assert!(n > 0, "step {}: empty search histogram", m.step);
        let mean_searches = m
            .searches_hist
            .iter()
            .enumerate()
            .map(|(k, &c)| (k * c) as f64)
            .sum::<f64>()
            / n as f64;
        assert!(
            mean_searches <= m.searches + 1e-9,
            "step {}: histogram mean {mean_searches} > searches {}",
            m.step,
            m.searches
        );
        let total: f64 = m
            .searches_hist
            .iter()
            .zip(&m.reward_by_searches)
            .map(|(&c, r)| c as f64 * r.unwrap_or(0.0))
            .sum();
        assert!(
            (total / n as f64 - m.reward_mean).abs() < 1e-9,
            "step {}: rewards by search count do not add up to the mean",
            m.step
        );
        for (c, r) in m.searches_hist.iter().zip(&m.reward_by_searches) {
            assert_eq!(
                *c > 0,
                r.is_some(),
                "step {}: bucket/reward mismatch",
                m.step
            );
        }
    }
    for d in [
        "checkpoints/step-00000003/model/model.safetensors",
        "critic/checkpoints/step-00000003/model/model.safetensors",
        "init-policy/tokenizer.json",
        "rl_curves.png",
    ] {
        assert!(b_dir.path().join(d).exists(), "{d} missing");
    }
    // Actor checkpoints without their critic cannot be resumed: a clear error, no fresh start
    // over the old run.
    std::fs::remove_dir_all(b_dir.path().join("critic")).unwrap();
    let e = train_rl(
        &b2,
        Some(&teacher),
        &w.questions,
        &w.retriever,
        &cfg,
        b_dir.path(),
        true,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("no complete RL checkpoint"), "{e}");
}

/// Micro-batches scored (old log-probs, the teacher's log-probs, values) and updated on
/// parallel threads give the same update as one after another, bit for bit: each is computed
/// alone and the gradients are summed in micro-batch order.
#[test]
fn parallel_update_threads_give_the_same_weights() {
    let w = world();
    let teacher = tiny(&w, 12);
    let run = |update_threads: usize| {
        let dir = tempfile::tempdir().unwrap();
        let s = tiny(&w, 11);
        let cfg = RlConfig {
            steps: 1,
            mini_batch: 4,
            micro_batch: 1,
            update_threads,
            ..small_cfg(Algo::Dgpo)
        };
        let m = train_rl(
            &s,
            Some(&teacher),
            &w.questions,
            &w.retriever,
            &cfg,
            dir.path(),
            false,
        )
        .unwrap();
        (weights(&s), m)
    };
    let start = weights(&tiny(&w, 11));
    let (w1, m1) = run(1);
    assert_ne!(w1, start, "the update moved nothing");
    for threads in [2, 3] {
        let (wt, mt) = run(threads);
        assert_eq!(w1, wt, "{threads} update threads");
        for (a, b) in m1.iter().zip(&mt) {
            assert_eq!(
                (a.policy_loss, a.value_loss, a.grad_norm),
                (b.policy_loss, b.value_loss, b.grad_norm)
            );
        }
    }
}

/// The PPO update computing the policy's logits a few rows at a time (as it does for real
/// models' vocabularies) makes the update of the whole micro-batch at once: the same losses,
/// entropy and gradient norm (before clipping and Adam, so a chunk weighted wrongly shows) and
/// weights up to float rounding, for DGPO (critic, teacher) and GRPO (KL to the reference in
/// the loss).
#[test]
fn row_chunks_make_the_same_update() {
    let w = world();
    let teacher = tiny(&w, 12);
    for algo in [Algo::Dgpo, Algo::Grpo] {
        let run = |chunk: Option<usize>| {
            let dir = tempfile::tempdir().unwrap();
            let mut s = tiny(&w, 11);
            s.set_row_chunk(chunk);
            let cfg = RlConfig {
                steps: 1,
                mini_batch: 4,
                micro_batch: 2,
                ..small_cfg(algo)
            };
            let t = (algo == Algo::Dgpo).then_some(&teacher);
            let m = train_rl(&s, t, &w.questions, &w.retriever, &cfg, dir.path(), false).unwrap();
            (weights(&s), m)
        };
        let (w0, m0) = run(None);
        assert_ne!(
            w0,
            weights(&tiny(&w, 11)),
            "{algo}: the update moved nothing"
        );
        for chunk in [1, 7] {
            let (wc, mc) = run(Some(chunk));
            let (a, b) = (&m0[0], &mc[0]);
            for (what, x, y) in [
                ("policy loss", a.policy_loss, b.policy_loss),
                ("entropy", a.entropy, b.entropy),
                ("clip fraction", a.clip_frac, b.clip_frac),
                ("approx KL", a.approx_kl, b.approx_kl),
                ("grad norm", a.grad_norm, b.grad_norm),
                // Scored in chunks too: the reference's log-probs behind the reward's KL.
                ("KL to the reference", a.kl.unwrap(), b.kl.unwrap()),
            ] {
                assert!(
                    (x - y).abs() <= 1e-5 * (1.0 + x.abs()),
                    "{algo}, chunk {chunk}: {what} {x} vs {y}"
                );
            }
            for (name, a) in &w0 {
                let d = a
                    .iter()
                    .zip(&wc[name])
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                // Adam's first step is about lr · sign(g), so where a gradient is near 0 its
                // rounding moves the weight by a fraction of lr (1e-3): bound at 1% of it.
                assert!(
                    d < 1e-5,
                    "{algo}, chunk {chunk}, {name}: weights differ by {d}"
                );
            }
        }
    }
}

#[test]
fn ppo_and_grpo_run_on_the_same_code() {
    let w = world();
    for algo in [Algo::Ppo, Algo::Grpo] {
        let dir = tempfile::tempdir().unwrap();
        let s = tiny(&w, 11);
        let cfg = RlConfig {
            steps: 1,
            ..small_cfg(algo)
        };
        let m = train_rl(
            &s,
            None,
            &w.questions,
            &w.retriever,
            &cfg,
            dir.path(),
            false,
        )
        .unwrap();
        assert_eq!(m.len(), 1);
        // Peak memory after rollouts, scoring and update: a running peak, so never falling.
        let [a, b, c] = m[0].peak_rss_mb.expect("Linux has /proc/self/status");
        assert!(a > 1.0 && a <= b && b <= c, "{a} {b} {c}");
        // The reference is the initial student: before any update the KL to it is 0 (the
        // same weights, the same forward pass).
        let kl = m[0].kl.expect("a reference");
        assert!(kl.abs() < 1e-6, "{algo}: {kl}");
        assert_eq!(m[0].value_loss.is_some(), algo == Algo::Ppo, "{algo}");
        assert_eq!(
            dir.path().join("critic").exists(),
            algo == Algo::Ppo,
            "{algo}"
        );
    }
    // DGPO with the full-vocabulary forward KL as the penalty: a true KL, so ≥ 0 per token,
    // and > 0 against a different teacher.
    let dir = tempfile::tempdir().unwrap();
    let s = tiny(&w, 11);
    let teacher = tiny(&w, 12);
    let cfg = RlConfig {
        steps: 1,
        full_kl: true,
        ..small_cfg(Algo::Dgpo)
    };
    let m = train_rl(
        &s,
        Some(&teacher),
        &w.questions,
        &w.retriever,
        &cfg,
        dir.path(),
        false,
    )
    .unwrap();
    let kl = m[0].kl.unwrap();
    assert!(kl > 1e-4, "{kl}");
    // DGPO without a teacher is refused.
    let dir = tempfile::tempdir().unwrap();
    let s = tiny(&w, 11);
    let e = train_rl(
        &s,
        None,
        &w.questions,
        &w.retriever,
        &small_cfg(Algo::Dgpo),
        dir.path(),
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("teacher"), "{e}");
}

/// Seconds per RL step on a tiny model with short agent turns (run with `--ignored
/// --nocapture`, and compare `CANDLE_NUM_THREADS=1` with the default; a measurement, not a
/// check).
#[test]
#[ignore]
fn rl_step_timing() {
    let w = world();
    let teacher = tiny(&w, 99);
    let s = tiny(&w, 7);
    let dir = tempfile::tempdir().unwrap();
    let cfg = RlConfig {
        steps: 4,
        questions_per_step: 8,
        ppo_epochs: 1,
        mini_batch: 8,
        micro_batch: 4,
        max_turns: 2,
        max_turn_tokens: 32,
        max_obs_tokens: 64,
        save_every: 0,
        ..small_cfg(Algo::Dgpo)
    };
    let m = train_rl(
        &s,
        Some(&teacher),
        &w.questions,
        &w.retriever,
        &cfg,
        dir.path(),
        false,
    )
    .unwrap();
    for x in &m {
        eprintln!(
            "step {}: {:.3} s (rollouts {:.3} s, {:.1} generated + {:.1} observation tokens each; scoring and update {:.3} s)",
            x.step, x.step_s, x.rollout_s, x.response_len, x.observation_len, x.update_s
        );
    }
}

/// Mean full-vocabulary KL(teacher ‖ student) per token over fixed sequences.
fn kl_on(teacher: &TrainModel, student: &TrainModel, seqs: &[Vec<u32>]) -> f64 {
    let b = Batch::new(seqs, None, 0, &Device::Cpu).unwrap();
    let k = train::loss::forward_kl(
        &teacher.logits(&b).unwrap(),
        &student.logits(&b).unwrap(),
        &b.target_mask,
    )
    .unwrap();
    train::loss::scalar(&k).unwrap()
}

/// "Mimic if wrong": every rollout of a random student fails, so DGPO's penalty applies to all
/// of them and, with a strong coefficient, holds the student near the teacher (measured on fixed
/// text), while the same seeded run without it (β = 0) drifts away with its critic's noise.
#[test]
fn dgpo_penalty_keeps_failed_students_near_the_teacher() {
    let w = world();
    let teacher = tiny(&w, 99);
    let tok = dgpo_core::tokenizer::Tokenizer::new(
        tokenizers::Tokenizer::from_bytes(&w.tokenizer).unwrap(),
        vec![2],
        None,
        false,
    );
    let seqs: Vec<Vec<u32>> = w.questions[..4]
        .iter()
        .map(|q| {
            tok.encode(&format!(
                "{}<think> I need to search. </think>\n<search> {} </search>",
                q.question, q.question
            ))
            .unwrap()
        })
        .collect();
    // (PPO's `kl_coef`, DGPO's β)
    let run = |kl_coef: f64, beta: f64| -> (f64, f64) {
        let s = tiny(&w, 7);
        let before = kl_on(&teacher, &s, &seqs);
        let dir = tempfile::tempdir().unwrap();
        let cfg = RlConfig {
            steps: 16,
            kl_coef,
            teacher_kl_coef: beta,
            entropy_coef: 0.0,
            ppo_epochs: 1,
            mini_batch: 4,
            micro_batch: 4,
            actor_lr: 1e-2,
            critic_lr: 1e-2,
            save_every: 0,
            ..small_cfg(Algo::Dgpo)
        };
        let m = train_rl(
            &s,
            Some(&teacher),
            &w.questions,
            &w.retriever,
            &cfg,
            dir.path(),
            false,
        )
        .unwrap();
        assert!(
            m.iter()
                .all(|x| x.reward_mean == 0.0 && x.penalised_frac == 1.0)
        );
        (before, kl_on(&teacher, &s, &seqs))
    };
    let (b1, a1) = run(0.0, 1.0);
    let (b0, a0) = run(0.0, 0.0);
    // PPO's coefficient is not DGPO's: a large one changes nothing in a DGPO run.
    let (_, a_ppo) = run(1.0, 0.0);
    eprintln!(
        "KL(teacher ‖ student) on fixed text: β = 1: {b1:.5} → {a1:.5}; β = 0: {b0:.5} → {a0:.5}; β = 0 with kl_coef 1: {a_ppo:.5}"
    );
    assert_eq!(b1, b0);
    assert!(
        (a_ppo - a0).abs() <= 1e-3 * a0,
        "kl_coef changed a DGPO run: {a_ppo} vs {a0}"
    );
    // Measured: β = 1 ends about 3× closer to the teacher than β = 0.
    assert!(
        a1 < 0.5 * a0,
        "the penalty did not hold the student near the teacher"
    );
}

/// An HF folder student with a chat template (the Qwen2 fixture): the policy wraps prompts in
/// the template, ends turns on the folder's end-of-generation ids, and a PPO step runs.
#[test]
fn hf_folder_student_with_a_chat_template() {
    let w = world();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-qwen2");
    let s = TrainModel::load(&fixture, &ModelOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = RlConfig {
        steps: 1,
        ..small_cfg(Algo::Ppo)
    };
    let m = train_rl(
        &s,
        None,
        &w.questions,
        &w.retriever,
        &cfg,
        dir.path(),
        false,
    )
    .unwrap();
    assert_eq!(m.len(), 1);
    assert!(m[0].response_len > 0.0 && m[0].policy_loss.is_finite());
    let policy = live_policy(&s, &dir.path().join("init-policy")).unwrap();
    assert!(policy.chat_template().is_some());
    let prompt = dgpo_core::agent::build_prompt(&policy, "Who?", true).unwrap();
    assert!(prompt.starts_with("<|im_start|>"), "{prompt}");
    assert!(!policy.tokenizer().eos_ids().is_empty());
}
