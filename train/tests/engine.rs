//! The training engine against references: transformers' logits, core's inference decoder,
//! finite differences, hand-computed optimiser steps (unit tests), and bit-exact resume.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use dgpo_core::model::{CandleModel, LanguageModel, LoadOptions};
use train::checkpoint::{MetricsLog, list_checkpoints};
use train::loss;
use train::model::{Batch, ModelOptions, TrainModel, config_json};
use train::optim::{AdamWConfig, Decay, Schedule};
use train::trainer::{Example, TrainConfig, Trainer};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

struct Reference {
    ids: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

fn reference(dir: &Path) -> Reference {
    let text = std::fs::read_to_string(dir.join("reference.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    Reference {
        ids: v["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect(),
        logits: v["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect()
            })
            .collect(),
    }
}

fn load(name: &str, opts: &ModelOptions) -> TrainModel {
    TrainModel::load(&fixture(name), opts).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

fn logits_of(m: &TrainModel, ids: &[u32]) -> Vec<Vec<f32>> {
    let b = Batch::new(&[ids.to_vec()], None, 0, m.device()).unwrap();
    m.logits(&b)
        .unwrap()
        .i(0)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec2()
        .unwrap()
}

fn core_logits(dir: &Path, ids: &[u32]) -> Vec<Vec<f32>> {
    let m = CandleModel::from_hf_folder(dir, &LoadOptions::default()).unwrap();
    let mut s = m.new_session().unwrap();
    s.feed_all(ids).unwrap()
}

#[test]
fn logits_match_transformers_and_core() {
    for name in ["tiny-qwen2", "tiny-llama"] {
        let r = reference(&fixture(name));
        let m = load(name, &ModelOptions::default());
        let ours = logits_of(&m, &r.ids);
        let d = max_diff(&ours, &r.logits);
        eprintln!("{name}: max |logit diff| vs transformers {d:.2e}");
        assert!(d < 1e-4, "{name}: |ours − transformers| = {d}");
        let d = max_diff(&ours, &core_logits(&fixture(name), &r.ids));
        assert!(d < 1e-4, "{name}: |ours − core inference| = {d}");
    }
}

#[test]
fn bf16_model_stays_close_to_f32() {
    let r = reference(&fixture("tiny-qwen2"));
    let m = load(
        "tiny-qwen2",
        &ModelOptions {
            dtype: DType::BF16,
            ..Default::default()
        },
    );
    let d = max_diff(&logits_of(&m, &r.ids), &r.logits);
    // bf16 keeps 8 bits of mantissa: logits of magnitude ~2 move by a few hundredths.
    eprintln!("bf16 vs transformers f32: max |logit diff| {d:.3}");
    assert!(d < 0.1, "bf16 vs transformers f32: {d}");
}

#[test]
fn right_padded_batch_equals_single_sequences() {
    let r = reference(&fixture("tiny-qwen2"));
    let m = load("tiny-qwen2", &ModelOptions::default());
    let seqs = vec![r.ids.clone(), r.ids[..7].to_vec(), r.ids[3..15].to_vec()];
    let batch = Batch::new(&seqs, None, 509, m.device()).unwrap();
    let lp = m.token_logprobs(&batch).unwrap().to_vec2::<f32>().unwrap();
    for (i, s) in seqs.iter().enumerate() {
        let one = Batch::new(std::slice::from_ref(s), None, 509, m.device()).unwrap();
        let lp1 = m.token_logprobs(&one).unwrap().to_vec2::<f32>().unwrap();
        for j in 0..s.len() - 1 {
            assert!((lp[i][j] - lp1[0][j]).abs() < 1e-5, "seq {i} pos {j}");
        }
        // And against transformers' logits for the full sequence (log-softmax by hand).
        if i == 0 {
            for j in 0..s.len() - 1 {
                let row = &r.logits[j];
                let mx = row.iter().cloned().fold(f32::MIN, f32::max);
                let lse = mx + row.iter().map(|x| (x - mx).exp()).sum::<f32>().ln();
                let want = row[s[j + 1] as usize] - lse;
                assert!(
                    (lp[0][j] - want).abs() < 1e-4,
                    "pos {j}: {} vs {want}",
                    lp[0][j]
                );
            }
        }
    }
    let want: Vec<f32> = (0..3)
        .map(|i| if 1 + i < seqs[1].len() { 1.0 } else { 0.0 })
        .collect();
    let tm = batch.target_mask.to_vec2::<f32>().unwrap();
    assert_eq!(&tm[1][..3], want.as_slice());
    assert_eq!(tm[1].iter().sum::<f32>() as usize, seqs[1].len() - 1);
}

/// The f64 student (tiny Qwen2) and teacher (tiny Llama) of the gradient checks, and two
/// overlapping slices (9 and 6 tokens) of the reference sequence.
fn f64_pair() -> (TrainModel, TrainModel, Vec<Vec<u32>>) {
    let opts = ModelOptions {
        dtype: DType::F64,
        ..Default::default()
    };
    let r = reference(&fixture("tiny-qwen2"));
    let seqs = vec![r.ids[..9].to_vec(), r.ids[4..10].to_vec()];
    (load("tiny-qwen2", &opts), load("tiny-llama", &opts), seqs)
}

/// A batch of `f64_pair`'s two sequences with gaps in what is learnt (11 learnt rows).
fn gappy_batch(seqs: &[Vec<u32>], device: &candle_core::Device) -> Batch {
    let learn = vec![
        vec![false, true, true, false, true, true, true, true, true],
        vec![false, false, true, true, true, true],
    ];
    Batch::new(seqs, Some(&learn), 509, device).unwrap()
}

/// Causal attention in query blocks (the training default from 128 tokens on) gives the whole
/// score matrix's logits and gradients, in f64, for block sizes that do and do not divide the
/// length, on a right-padded batch (padding keys masked too) and on the tiny Llama's
/// grouped-query heads.
#[test]
fn blocked_causal_attention_equals_the_full_score_matrix() {
    let (mut student, mut teacher, seqs) = f64_pair();
    let learn = vec![vec![true; 9], vec![true; 6]];
    let batch = Batch::new(&seqs, Some(&learn), 509, student.device()).unwrap();
    for m in [&mut student, &mut teacher] {
        let mut run = |rows: usize| {
            m.set_attention_block(rows);
            let z = m.logits(&batch).unwrap();
            let loss = z.sqr().unwrap().mean_all().unwrap();
            let g = loss.backward().unwrap();
            let grads: Vec<(String, Tensor)> = m
                .named_vars()
                .into_iter()
                .map(|(n, v)| (n, g.get(v.as_tensor()).unwrap().clone()))
                .collect();
            (z, grads)
        };
        let (z0, g0) = run(0);
        for rows in [1, 3, 4, 8] {
            let (z, g) = run(rows);
            let d = max_abs_diff(&z0, &z);
            assert!(d < 1e-12, "block {rows}: logits differ by {d}");
            for ((name, a), (_, b)) in g0.iter().zip(&g) {
                let d = max_abs_diff(a, b);
                assert!(d < 1e-12, "block {rows}, {name}: gradients differ by {d}");
            }
        }
        m.set_attention_block(dgpo_core::model::decoder::ATTENTION_BLOCK_ROWS);
    }
}

/// Gradient checkpointing (`TrainModel::loss_and_grads` with `checkpoint`) gives the plain
/// backward pass's loss and every weight's gradient, in f64: for the Qwen2 student with tied
/// embeddings (the embedding's gradient comes from the head and the input), the GQA Llama
/// teacher, with and without blocked attention, and for a critic's value head; and the
/// no-gradient scoring forward equals the tracked one.
#[test]
fn gradient_checkpointing_gives_the_plain_backward_pass() {
    let (mut student, mut teacher, seqs) = f64_pair();
    let batch = gappy_batch(&seqs, student.device());
    let critic = load(
        "tiny-qwen2",
        &ModelOptions {
            dtype: DType::F64,
            value_head: true,
            seed: 3,
            ..Default::default()
        },
    );
    let check = |m: &TrainModel, what: &str, loss_of: &dyn Fn(&TrainModel, &Tensor) -> Tensor| {
        let (l0, g0) = m
            .loss_and_grads(&batch, false, |h| Ok(loss_of(m, h)))
            .unwrap();
        let (l1, g1) = m
            .loss_and_grads(&batch, true, |h| Ok(loss_of(m, h)))
            .unwrap();
        let d = max_abs_diff(&l0, &l1);
        assert!(d < 1e-12, "{what}: losses differ by {d}");
        let vars = m.named_vars();
        let mut compared = 0;
        for (name, var) in &vars {
            match (g0.get(var.as_tensor()), g1.get(var.as_tensor())) {
                (Some(a), Some(b)) => {
                    let d = max_abs_diff(a, b);
                    assert!(d < 1e-12, "{what}, {name}: gradients differ by {d}");
                    compared += 1;
                }
                (None, None) => {}
                (a, b) => panic!(
                    "{what}, {name}: gradient {} vs checkpointed {}",
                    a.is_some(),
                    b.is_some()
                ),
            }
        }
        // Only a critic's unused vocabulary head (untied in this fixture) has no gradient.
        assert!(
            compared + 1 >= vars.len(),
            "{what}: {compared} of {} compared",
            vars.len()
        );
    };
    let policy = |m: &TrainModel, h: &Tensor| {
        let z = m.target_logits_of(&batch, h).unwrap();
        (z.sqr().unwrap().mean_all().unwrap() + z.mean_all().unwrap()).unwrap()
    };
    for (m, name) in [(&mut student, "qwen2"), (&mut teacher, "llama")] {
        for rows in [0, 3] {
            m.set_attention_block(rows);
            check(m, &format!("{name}, attention block {rows}"), &policy);
        }
        m.set_attention_block(dgpo_core::model::decoder::ATTENTION_BLOCK_ROWS);
        let d = max_abs_diff(
            &m.hidden(&batch).unwrap(),
            &m.hidden_no_grad(&batch).unwrap(),
        );
        assert_eq!(d, 0.0, "{name}: scoring forward differs by {d}");
        let d = max_abs_diff(
            &m.target_logits(&batch).unwrap(),
            &m.target_logits_no_grad(&batch).unwrap(),
        );
        assert_eq!(d, 0.0, "{name}: scoring logits differ by {d}");
    }
    let value =
        |m: &TrainModel, h: &Tensor| m.values(h).unwrap().sqr().unwrap().mean_all().unwrap();
    check(&critic, "critic", &value);
}

/// The head and loss a chunk of learnt rows at a time (`loss_and_grads_by_rows`, for real
/// models' vocabularies) gives every weight the gradient of the whole-batch loss, in f64: the
/// distillation loss (a mean over rows; the method weights each chunk's mean by its rows) of the tied
/// Qwen2 student against the teacher's rows, with and without checkpointing, for chunks that
/// do and do not divide the 11 learnt rows; and the chunks see the rows in order, once.
#[test]
fn row_chunks_give_the_whole_batch_gradients() {
    let (mut student, teacher, seqs) = f64_pair();
    let batch = gappy_batch(&seqs, student.device());
    let n = batch.target_rows.len();
    assert_eq!(
        n, 11,
        "learnt rows (the first token of each sequence is never a target)"
    );
    let tl = teacher.target_logits_no_grad(&batch).unwrap();
    let targets = batch.target_ids_tensor(student.device()).unwrap();
    let grads = |m: &TrainModel, checkpoint: bool| {
        let mut seen = Vec::new();
        let g = m
            .loss_and_grads_by_rows(&batch, checkpoint, |z, rows| {
                seen.extend(rows.clone());
                let k = rows.len();
                let d = train::loss::distill_loss_rows(
                    &tl.narrow(0, rows.start, k)?,
                    z,
                    &targets.narrow(0, rows.start, k)?,
                    0.5,
                )?;
                Ok(d.loss)
            })
            .unwrap();
        assert_eq!(seen, (0..n).collect::<Vec<_>>(), "chunk {}", m.row_chunk());
        g
    };
    let whole = grads(&student, false);
    let vars = student.named_vars();
    for checkpoint in [false, true] {
        for chunk in [1, 5, n] {
            student.set_row_chunk(Some(chunk));
            let g = grads(&student, checkpoint);
            for (name, var) in &vars {
                let (a, b) = (whole.get(var.as_tensor()), g.get(var.as_tensor()));
                let (Some(a), Some(b)) = (a, b) else {
                    panic!("{name}: a gradient is missing (chunk {chunk})");
                };
                let d = max_abs_diff(a, b);
                assert!(
                    d < 1e-12,
                    "checkpoint {checkpoint}, chunk {chunk}, {name}: gradients differ by {d}"
                );
            }
        }
    }
    student.set_row_chunk(None);
    // The chunk size follows the vocabulary: every row of a tiny model fits one chunk.
    assert!(student.row_chunk() >= 4096, "{}", student.row_chunk());
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// The row form the losses use (logits of learnt positions only) gives the full form's values
/// and gradients, in f64: the distillation loss of `target_logits` against the masked one of
/// `logits`, for every weight of the student; and per-target values scatter back to their
/// positions.
#[test]
fn row_form_losses_equal_the_masked_full_forms() {
    let (student, teacher, seqs) = f64_pair();
    let learn = vec![
        vec![false, false, true, true, false, false, true, true, true],
        vec![false, true, true, true, false, true],
    ];
    let batch = Batch::new(&seqs, Some(&learn), 509, student.device()).unwrap();
    // Row-major: sequence 0 positions 1, 2, 5, 6, 7; sequence 1 (t = 9) positions 0, 1, 2, 4.
    assert_eq!(batch.target_rows, vec![1, 2, 5, 6, 7, 9, 10, 11, 13]);
    assert_eq!(batch.target_ids.len(), 9);
    assert_eq!(batch.target_ids[0], seqs[0][2]);
    assert_eq!(batch.target_ids[8], seqs[1][5]);
    let tgt = batch.target_ids_tensor(student.device()).unwrap();
    for alpha in [1.0, 0.3] {
        let full = loss::distill_loss(
            &teacher.logits(&batch).unwrap().detach(),
            &student.logits(&batch).unwrap(),
            &batch.ids,
            &batch.target_mask,
            alpha,
        )
        .unwrap();
        let rows = loss::distill_loss_rows(
            &teacher.target_logits(&batch).unwrap().detach(),
            &student.target_logits(&batch).unwrap(),
            &tgt,
            alpha,
        )
        .unwrap();
        assert!((full.kl - rows.kl).abs() < 1e-12 && (full.ce - rows.ce).abs() < 1e-12);
        let (gf, gr) = (full.loss.backward().unwrap(), rows.loss.backward().unwrap());
        for (name, var) in student.named_vars() {
            let a = gf.get(var.as_tensor()).unwrap();
            let b = gr.get(var.as_tensor()).unwrap();
            let d = max_abs_diff(a, b);
            assert!(d < 1e-12, "alpha {alpha}, {name}: gradients differ by {d}");
        }
    }
    // Per-target values go back to their positions, the rest filled.
    let vals: Vec<f32> = (1..=9).map(|v| v as f32).collect();
    let back = batch.scatter_targets(&vals, -1.0).unwrap();
    assert_eq!(back[0], vec![-1.0, 1.0, 2.0, -1.0, -1.0, 3.0, 4.0, 5.0]);
    assert_eq!(back[1], vec![6.0, 7.0, 8.0, -1.0, 9.0]);
    let e = batch
        .scatter_targets(&vals[..3], 0.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 values for 9 learnt positions"), "{e}");
    let none = Batch::new(
        &seqs,
        Some(&[vec![false; 9], vec![false; 6]]),
        509,
        student.device(),
    )
    .unwrap();
    let e = student.target_logits(&none).unwrap_err().to_string();
    assert!(e.contains("no learnt position"), "{e}");
}

#[test]
fn saved_folder_loads_in_core_with_identical_logits() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["tiny-qwen2", "tiny-llama"] {
        let m = load(name, &ModelOptions::default());
        let out = tmp.path().join(name);
        m.save(&out).unwrap();
        // For scripts/check_hf_roundtrip.py (transformers side, run by hand where torch exists).
        if let Some(keep) = std::env::var_os("DGPO_KEEP_SAVED") {
            m.save(&Path::new(&keep).join(name)).unwrap();
        }
        m.save(&out).unwrap(); // replacing an existing folder works too
        for f in ["model.safetensors", "config.json", "tokenizer.json"] {
            assert!(out.join(f).exists(), "{name}: {f} missing");
        }
        let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(
            leftovers.is_empty(),
            "temporary folders left: {leftovers:?}"
        );
        let r = reference(&fixture(name));
        let a = core_logits(&fixture(name), &r.ids);
        let b = core_logits(&out, &r.ids);
        assert_eq!(a, b, "{name}: core logits changed after our save");
        // HF metadata and names: transformers needs `format: pt`; tied heads are not saved.
        let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(
            meta.metadata()
                .as_ref()
                .and_then(|m| m.get("format"))
                .map(String::as_str),
            Some("pt")
        );
        let has_head = st.names().contains(&"lm_head.weight");
        assert_eq!(
            has_head,
            name == "tiny-qwen2",
            "{name}: lm_head presence vs tie_word_embeddings"
        );
    }
}

#[test]
fn value_head_round_trips_and_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = ModelOptions {
        value_head: true,
        seed: 7,
        ..Default::default()
    };
    let m = load("tiny-qwen2", &opts);
    let r = reference(&fixture("tiny-qwen2"));
    let batch = Batch::new(&[r.ids.clone(), r.ids[..5].to_vec()], None, 509, m.device()).unwrap();
    let h = m.hidden(&batch).unwrap();
    let v = m.values(&h).unwrap();
    assert_eq!(v.dims(), &[2, r.ids.len()]);
    let grads = v.sum_all().unwrap().backward().unwrap();
    let vars = m.named_vars();
    let w = &vars.iter().find(|(n, _)| n == "score.weight").unwrap().1;
    assert!(
        grads.get(w.as_tensor()).is_some(),
        "value head got no gradient"
    );
    let q = &vars
        .iter()
        .find(|(n, _)| n == "model.layers.0.self_attn.q_proj.weight")
        .unwrap()
        .1;
    assert!(
        grads.get(q.as_tensor()).is_some(),
        "trunk got no gradient through the head"
    );
    m.save(&tmp.path().join("critic")).unwrap();
    let back = TrainModel::load(&tmp.path().join("critic"), &opts).unwrap();
    let v2 = back.values(&back.hidden(&batch).unwrap()).unwrap();
    assert_eq!(v.to_vec2::<f32>().unwrap(), v2.to_vec2::<f32>().unwrap());
    // The critic folder still loads as a plain causal LM in core (extra `score.*` ignored).
    let a = core_logits(&tmp.path().join("critic"), &r.ids);
    assert!(max_diff(&a, &r.logits) < 1e-4);
}

/// Analytic gradients of per-token log-probs and of the forward KL agree with central finite
/// differences (f64 model, so the differences are accurate to ~1e-9).
#[test]
fn gradients_match_finite_differences() {
    let (student, teacher, seqs) = f64_pair();
    let learn = vec![
        vec![false, false, true, true, false, false, true, true, true],
        vec![false, true, true, true, true, true],
    ];
    let batch = Batch::new(&seqs, Some(&learn), 509, student.device()).unwrap();
    let tl = teacher.logits(&batch).unwrap().detach();
    // Arbitrary weights on each log-prob make every position count differently.
    let coef = Tensor::arange(0u32, 16, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .reshape((2, 8))
        .unwrap()
        .affine(0.1, -0.7)
        .unwrap();
    let objective = |m: &TrainModel| -> Tensor {
        let logits = m.logits(&batch).unwrap();
        let lp = train::model::token_logprobs(&logits, &batch.ids).unwrap();
        let a = (lp * &coef).unwrap().sum_all().unwrap();
        let kl = loss::forward_kl(&tl, &logits, &batch.target_mask).unwrap();
        (a + kl).unwrap()
    };
    let grads = objective(&student).backward().unwrap();
    let vars = student.named_vars();
    let mut missing = Vec::new();
    let mut checked = 0;
    let mut worst = 0f64;
    for (k, (name, var)) in vars.iter().enumerate() {
        let Some(g) = grads.get(var.as_tensor()) else {
            missing.push(name.clone());
            continue;
        };
        let flat = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let gflat = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        // Two entries per tensor, spread by a fixed stride.
        for e in [k * 7 % flat.len(), (k * 131 + 17) % flat.len()] {
            let eps = 1e-5;
            let shape = var.as_tensor().shape().clone();
            let at = |delta: f64| -> f64 {
                let mut w = flat.clone();
                w[e] += delta;
                var.set(&Tensor::from_vec(w, shape.clone(), &Device::Cpu).unwrap())
                    .unwrap();
                objective(&student).to_scalar::<f64>().unwrap()
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            at(0.0);
            let an = gflat[e];
            let err = (fd - an).abs() / (fd.abs().max(an.abs()).max(1e-3));
            worst = worst.max(err);
            assert!(
                err < 1e-5,
                "{name}[{e}]: analytic {an} vs finite difference {fd}"
            );
            checked += 1;
        }
    }
    assert!(missing.is_empty(), "vars without gradient: {missing:?}");
    assert_eq!(checked, 2 * vars.len());
    eprintln!("gradient check: {checked} entries, worst relative error {worst:.2e}");
}

fn toy_examples(n: usize, len: usize, vocab: u32, seed: u32) -> Vec<Example> {
    // Deterministic sequences with structure (arithmetic progressions) so a model can fit them;
    // the first 3 tokens are an unlearnt "prompt", and lengths vary so batches are padded.
    (0..n)
        .map(|i| {
            let l = len - (i % 3);
            let start = (i as u32 * 37 + seed) % vocab;
            let stride = 1 + (i as u32 % 5);
            let ids: Vec<u32> = (0..l as u32)
                .map(|k| (start + k * stride) % vocab)
                .collect();
            let learn = (0..l).map(|k| k >= 3).collect();
            Example { ids, learn }
        })
        .collect()
}

fn cfg(total: usize, save_every: usize) -> TrainConfig {
    TrainConfig {
        schedule: Schedule::with_ratio(3e-3, 0.1, total, Decay::Cosine { min_ratio: 0.1 }),
        adamw: AdamWConfig::default(),
        micro_batch: 2,
        grad_accum: 2,
        max_grad_norm: 1.0,
        seed: 42,
        alpha: 1.0,
        save_every,
        keep_last: 2,
        threads: 1,
        gradient_checkpointing: false,
    }
}

fn weights(m: &TrainModel) -> BTreeMap<String, Vec<f32>> {
    m.named_vars()
        .into_iter()
        .map(|(n, v)| {
            (
                n,
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            )
        })
        .collect()
}

/// An interrupted run resumed from its checkpoint ends with exactly the weights, optimiser
/// trajectory and metrics of an uninterrupted run.
#[test]
fn resume_is_bit_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let data = toy_examples(10, 12, 512, 3);
    let total = 6;
    let full_dir = tmp.path().join("full");
    let full = load("tiny-qwen2", &ModelOptions::default());
    let mut t = Trainer::new(&full, None, &data, cfg(total, 2), &full_dir, 509).unwrap();
    let full_metrics = t.run(total).unwrap();
    drop(t);

    let part_dir = tmp.path().join("part");
    {
        let m = load("tiny-qwen2", &ModelOptions::default());
        let mut t = Trainer::new(&m, None, &data, cfg(total, 2), &part_dir, 509).unwrap();
        t.run(4).unwrap();
        // A step past the last checkpoint, then the "crash": its metrics line must be dropped.
        t.run(5).unwrap();
    }
    // Simulate the kill after step 5: remove its checkpoint (none was due) — only 2 and 4 exist.
    let steps: Vec<usize> = list_checkpoints(&part_dir)
        .unwrap()
        .into_iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(steps, vec![2, 4], "keep_last = 2 keeps the newest two");
    let m = load("tiny-qwen2", &ModelOptions::default());
    let mut t = Trainer::new(&m, None, &data, cfg(total, 2), &part_dir, 509).unwrap();
    assert_eq!(t.resume().unwrap(), Some(4));
    t.run(total).unwrap();
    assert_eq!(
        weights(&m),
        weights(&full),
        "resumed weights differ from the uninterrupted run"
    );
    let a = MetricsLog::read(&full_dir.join("metrics.jsonl")).unwrap();
    let b = MetricsLog::read(&part_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(a.len(), total);
    assert_eq!(
        b.iter().map(|m| m.step).collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (x.loss, x.lr, x.grad_norm),
            (y.loss, y.lr, y.grad_norm),
            "step {}",
            x.step
        );
    }
    assert_eq!(full_metrics.len(), total);
    assert!(full_dir.join("metrics.png").exists());
    // The final checkpoint holds the final weights, as an HF folder core can load.
    let last = list_checkpoints(&full_dir).unwrap().pop().unwrap();
    assert_eq!(last.0, total);
    let back = TrainModel::load(&last.1.join("model"), &ModelOptions::default()).unwrap();
    assert_eq!(weights(&back), weights(&full));
}

#[test]
fn sft_loss_goes_down() {
    let tmp = tempfile::tempdir().unwrap();
    let data = toy_examples(8, 16, 512, 11);
    let m = load("tiny-qwen2", &ModelOptions::default());
    let mut c = cfg(40, 0);
    c.schedule = Schedule::with_ratio(1e-2, 0.05, 40, Decay::Cosine { min_ratio: 0.1 });
    let mut t = Trainer::new(&m, None, &data, c, tmp.path(), 509).unwrap();
    let ms = t.run(40).unwrap();
    let first = ms[0].loss;
    let last: f64 = ms[ms.len() - 4..].iter().map(|m| m.loss).sum::<f64>() / 4.0;
    eprintln!("SFT loss: step 1 {first:.3}, mean of the last 4 steps {last:.3}");
    // Random init: CE ≈ ln(512) ≈ 6.2. The progressions are learnable from context.
    assert!(first > 5.0, "first loss {first}");
    assert!(last < 0.5, "loss after 40 steps {last} (from {first})");
}

/// Data parallelism splits each micro-batch into slices weighted by their learnt tokens, so
/// 1, 2 and 3 threads make the same updates up to float rounding, also when a slice has no
/// learnt token at all (it is skipped, not a 0/0): the two 39-40-token sequences without one are
/// a slice of their own, as `balanced_slices` cuts by length (their slice pads to 2 × 40
/// tokens; the eight 10-12-token ones to 8 × 12 together, or 4 × 12 in each of two slices).
/// Computing the logits 7 learnt rows at a time (`TrainModel::set_row_chunk`, what real
/// models' vocabularies get) makes the same updates too, with and without threads.
#[test]
fn data_parallel_threads_and_row_chunks_make_the_same_updates() {
    let tmp = tempfile::tempdir().unwrap();
    let mut data = toy_examples(10, 12, 512, 7);
    for (e, long) in data[..2].iter_mut().zip(toy_examples(2, 40, 512, 9)) {
        *e = Example {
            learn: vec![false; long.ids.len()],
            ids: long.ids,
        };
    }
    let lens: Vec<usize> = data.iter().map(|e| e.ids.len()).collect();
    for threads in [2, 3] {
        let slices = train::trainer::balanced_slices(&lens, threads);
        // Sorted by length: data[1] has 39 tokens, data[0] 40.
        assert_eq!(slices.last().unwrap(), &vec![1, 0], "{slices:?}");
        assert_eq!(slices.len(), threads);
    }
    let teacher = load("tiny-llama", &ModelOptions::default());
    for with_teacher in [false, true] {
        let run = |threads: usize, chunk: Option<usize>| {
            let mut m = load("tiny-qwen2", &ModelOptions::default());
            m.set_row_chunk(chunk);
            let mut c = cfg(3, 0);
            // The whole set in each micro-batch, so every update has the unlearnt slice.
            c.micro_batch = 10;
            // Adam divides by √v + ε: with the default ε (1e-8) a weight whose gradient is
            // rounding noise (~1e-9) moves by ±lr whichever its sign, in either run. ε 1e-6
            // keeps such weights still, so the comparison below sees the real updates.
            c.adamw.eps = 1e-6;
            c.threads = threads;
            let dir = tmp
                .path()
                .join(format!("{with_teacher}-{threads}-{chunk:?}"));
            let t_ref = with_teacher.then_some(&teacher);
            let mut t = Trainer::new(&m, t_ref, &data, c, &dir, 509).unwrap();
            let ms = t.run(3).unwrap();
            (weights(&m), ms)
        };
        let (w1, m1) = run(1, None);
        let start = weights(&load("tiny-qwen2", &ModelOptions::default()));
        for (threads, chunk) in [(2, None), (3, None), (1, Some(7)), (2, Some(7))] {
            let (w, m) = run(threads, chunk);
            // Adam divides by √v, so where a gradient is near 0 its rounding shows in the
            // update: compare the difference of the runs to how far the weights moved.
            let (mut worst, mut moved) = (0f32, 0f32);
            for (name, a) in &w1 {
                for ((x, y), s0) in a.iter().zip(&w[name]).zip(&start[name]) {
                    worst = worst.max((x - y).abs());
                    moved = moved.max((x - s0).abs());
                }
            }
            eprintln!(
                "teacher {with_teacher}, {threads} threads, row chunk {chunk:?}: max weight difference {worst:.2e}, max move {moved:.2e}"
            );
            assert!(
                moved > 1e-3 && worst < 0.01 * moved,
                "teacher {with_teacher}, {threads} threads, row chunk {chunk:?}: weights differ by {worst} (moved {moved})"
            );
            for (x, y) in m1.iter().zip(&m) {
                assert!((x.loss - y.loss).abs() < 1e-5, "{} vs {}", x.loss, y.loss);
                assert!(x.loss.is_finite() && (x.grad_norm - y.grad_norm).abs() < 1e-4);
                assert_eq!(x.target_tokens, y.target_tokens);
                if with_teacher {
                    assert!((x.kl.unwrap() - y.kl.unwrap()).abs() < 1e-5);
                }
            }
        }
    }
    let mut c = cfg(3, 0);
    c.threads = 0;
    let m = load("tiny-qwen2", &ModelOptions::default());
    let e = Trainer::new(&m, None, &data, c, tmp.path(), 509)
        .err()
        .unwrap();
    assert!(e.to_string().contains("threads"), "{e}");
}

#[test]
fn kd_reduces_forward_kl_and_refuses_vocab_mismatch() {
    let tmp = tempfile::tempdir().unwrap();
    let data = toy_examples(6, 10, 512, 5);
    let teacher = load("tiny-llama", &ModelOptions::default());
    let student = load("tiny-qwen2", &ModelOptions::default());
    let mut c = cfg(20, 0);
    c.schedule = Schedule::with_ratio(1e-2, 0.0, 20, Decay::Constant);
    let mut t = Trainer::new(&student, Some(&teacher), &data, c.clone(), tmp.path(), 509).unwrap();
    let ms = t.run(20).unwrap();
    let (k0, k1) = (ms[0].kl.unwrap(), ms[19].kl.unwrap());
    eprintln!("KD forward KL: step 1 {k0:.4}, step 20 {k1:.4}");
    assert!(k1 < 0.5 * k0, "forward KL {k0} → {k1}");

    // A teacher with another vocabulary is refused before any training.
    let mut dc = student.config().clone();
    dc.vocab_size = 256;
    let small = TrainModel::new_random(
        dc.clone(),
        config_json(&dc, None, None),
        b"{}".to_vec(),
        &ModelOptions::default(),
    )
    .unwrap();
    let e = Trainer::new(&student, Some(&small), &data, c, tmp.path(), 509)
        .err()
        .expect("vocab mismatch must be refused")
        .to_string();
    assert!(e.contains("256") && e.contains("512"), "{e}");
}

/// KD with the teacher's logits cached per example makes the updates that scoring the teacher
/// on every batch makes (the cached rows are the teacher's own, scored unpadded), over two
/// epochs of the data, with one and two data-parallel threads; the cache fills with exactly the
/// examples drawn so far.
#[test]
fn kd_with_cached_teacher_logits_matches_online_scoring() {
    let tmp = tempfile::tempdir().unwrap();
    let data = toy_examples(6, 10, 512, 13);
    let teacher = load("tiny-llama", &ModelOptions::default());
    for threads in [1, 2] {
        let run_chunked = |budget: Option<usize>, steps: usize, chunk: Option<usize>| {
            let mut m = load("tiny-qwen2", &ModelOptions::default());
            m.set_row_chunk(chunk);
            let mut c = cfg(6, 0);
            c.adamw.eps = 1e-6;
            c.threads = threads;
            let dir = tmp.path().join(format!("{threads}-{budget:?}-{steps}"));
            let mut t = Trainer::new(&m, Some(&teacher), &data, c, &dir, 509).unwrap();
            if let Some(b) = budget {
                t.set_teacher_cache_budget(b);
            }
            let ms = t.run(steps).unwrap();
            let filled = t.teacher_cache_filled();
            drop(t);
            (weights(&m), ms, filled)
        };
        let run = |budget, steps| run_chunked(budget, steps, None);
        let (w_on, m_on, f_on) = run(Some(0), 6);
        assert_eq!(f_on, None, "a zero budget scores online");
        // Online, the teacher's logits are made one row chunk at a time with the student's.
        let (w_rows, m_rows, _) = run_chunked(Some(0), 6, Some(3));
        for (x, y) in m_on.iter().zip(&m_rows) {
            assert!(
                (x.kl.unwrap() - y.kl.unwrap()).abs() < 1e-5
                    && (x.loss - y.loss).abs() < 1e-5
                    && (x.grad_norm - y.grad_norm).abs() < 1e-4,
                "chunks of 3 rows: {x:?} vs {y:?}"
            );
        }
        for (name, a) in &w_on {
            let d = a
                .iter()
                .zip(&w_rows[name])
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-5, "chunks of 3 rows, {name}: weights differ by {d}");
        }
        // One update of 2 micro-batches of 2 draws 4 of the 6 examples.
        assert_eq!(run(None, 1).2, Some(4));
        let (w_c, m_c, f_c) = run(None, 6);
        assert_eq!(f_c, Some(6));
        for (x, y) in m_on.iter().zip(&m_c) {
            assert!(
                (x.kl.unwrap() - y.kl.unwrap()).abs() < 1e-5,
                "{x:?} vs {y:?}"
            );
            assert!((x.loss - y.loss).abs() < 1e-5 && (x.grad_norm - y.grad_norm).abs() < 1e-4);
        }
        let start = weights(&load("tiny-qwen2", &ModelOptions::default()));
        let (mut worst, mut moved) = (0f32, 0f32);
        for (name, a) in &w_on {
            for ((x, y), s0) in a.iter().zip(&w_c[name]).zip(&start[name]) {
                worst = worst.max((x - y).abs());
                moved = moved.max((x - s0).abs());
            }
        }
        assert!(
            moved > 1e-3 && worst < 0.01 * moved,
            "{threads} threads: cached and online KD differ by {worst} (moved {moved})"
        );
    }
}

#[test]
fn bad_folders_are_reported_with_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let e = TrainModel::load(tmp.path(), &ModelOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("config.json is missing"), "{e}");
    // A checkpoint missing a tensor names it.
    let m = load("tiny-llama", &ModelOptions::default());
    let out = tmp.path().join("m");
    m.save(&out).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    cfg["num_hidden_layers"] = 3.into();
    std::fs::write(out.join("config.json"), cfg.to_string()).unwrap();
    let e = TrainModel::load(&out, &ModelOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("model.layers.2.input_layernorm.weight"), "{e}");
}

/// A trained model's saved folder exports to GGUF (core's exporter) and the GGUF model gives
/// the trained model's logits.
#[test]
fn trained_model_exports_to_gguf_with_same_logits() {
    use dgpo_core::model::export::{Quant, export_gguf};
    let tmp = tempfile::tempdir().unwrap();
    let data = toy_examples(4, 10, 512, 9);
    let m = load("tiny-qwen2", &ModelOptions::default());
    let mut t = Trainer::new(&m, None, &data, cfg(3, 0), &tmp.path().join("exp"), 509).unwrap();
    t.run(3).unwrap();
    let folder = tmp.path().join("trained");
    m.save(&folder).unwrap();
    let r = reference(&fixture("tiny-qwen2"));
    let ours = logits_of(&m, &r.ids);
    assert!(
        max_diff(&ours, &r.logits) > 1e-3,
        "training changed nothing"
    );
    for (q, tol) in [(Quant::F32, 1e-4f32), (Quant::F16, 2e-2)] {
        let out = tmp.path().join(format!("m-{q:?}.gguf"));
        export_gguf(&folder, &out, q).unwrap();
        let g = CandleModel::from_gguf(&out, &LoadOptions::default()).unwrap();
        let mut s = g.new_session().unwrap();
        let d = max_diff(&ours, &s.feed_all(&r.ids).unwrap());
        eprintln!("GGUF {q:?} vs trained model: max |logit diff| {d}");
        assert!(d < tol, "{q:?}: {d}");
    }
}
