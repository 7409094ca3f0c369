//! Training throughput on this CPU: tokens per second of one optimiser update (forward,
//! backward, AdamW) for the `tiny` preset's shape and for one Qwen2.5-0.5B-shaped step (random
//! weights: speed does not depend on weight values).
//!
//! `cargo bench -p train --bench train_throughput` prints both; `BENCH_QWEN=0` skips the 0.5B
//! step (it needs about 10 GB of memory: f32 weights, gradients and two AdamW moments),
//! `BENCH_PRESETS=0` the presets, `BENCH_QWEN_STEPS=N` times N 0.5B updates (default 1).
//! Run it on an otherwise idle machine: with a busy core, every rayon-parallel op waits for
//! the descheduled thread and the numbers drop several-fold.
//! The peer: `scripts/bench_train_torch.py` times the same steps (same shapes, batch, sequence
//! length and thread count) in PyTorch + transformers on CPU, in the same run, when `python3`
//! can import torch (`pip install torch transformers`); the bench prints the ratio. Without
//! torch it says so and prints our numbers alone.
//!
//! On a GPU (a build with `--features cuda`): `BENCH_DEVICE=cuda BENCH_DTYPE=bf16` places the
//! models there (`dgpo_core::model::Placement`), synchronises the device before each clock
//! read, and runs the peer with `--device cuda --dtype bf16` (autocast). The real-shape step of
//! issue 7 is `BENCH_DEVICE=cuda BENCH_DTYPE=bf16 BENCH_PRESETS=0 BENCH_QWEN_STEPS=5 cargo bench
//! -p train --features cuda --bench train_throughput`.

use std::time::Instant;

use dgpo_core::model::Placement;
use dgpo_core::model::decoder::{Arch, DecoderConfig, RopeStyle};
use train::model::{Batch, ModelOptions, TrainModel, config_json};
use train::optim::{AdamWConfig, Decay, Schedule};
use train::presets::PresetConfig;
use train::trainer::{Example, TrainConfig, Trainer};

fn examples(n: usize, len: usize, vocab: u32) -> Vec<Example> {
    // A fixed pseudo-random stream (no RNG dependency on the bench's side).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            let ids = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % vocab as u64) as u32
                })
                .collect();
            Example {
                ids,
                learn: vec![true; len],
            }
        })
        .collect()
}

/// The same update timed in PyTorch (median seconds), or why not.
/// Where the bench runs: `$BENCH_DEVICE` (cpu, cuda, cuda:N) and `$BENCH_DTYPE` (f32, bf16, f16).
fn placement_names() -> (String, String) {
    let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    (var("BENCH_DEVICE", "cpu"), var("BENCH_DTYPE", "f32"))
}

fn torch_peer(dc: &DecoderConfig, batch: usize, seq: usize, steps: usize) -> Result<f64, String> {
    let (device, dtype) = placement_names();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/bench_train_torch.py"
    );
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|t| t.parse::<usize>().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(["--threads", &threads.to_string()])
        .args(["--steps", &steps.to_string()])
        .args(["--batch", &batch.to_string(), "--seq", &seq.to_string()])
        .args(["--vocab", &dc.vocab_size.to_string()])
        .args(["--hidden", &dc.hidden_size.to_string()])
        .args(["--intermediate", &dc.intermediate_size.to_string()])
        .args(["--layers", &dc.num_layers.to_string()])
        .args(["--heads", &dc.num_heads.to_string()])
        .args(["--kv-heads", &dc.num_kv_heads.to_string()])
        .args(["--device", &device, "--dtype", &dtype])
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(err.lines().last().unwrap_or("failed").to_string());
    }
    // The script's last line: `update_s <seconds>`.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("update_s "))
        .next_back()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| "no `update_s` line in the script's output".to_string())
}

/// Median seconds of `steps` updates (after one warm-up update) and of forward+backward alone.
fn bench(name: &str, dc: DecoderConfig, batch: usize, seq: usize, steps: usize, warmup: bool) {
    let t0 = Instant::now();
    // The model and its optimiser state are dropped before the PyTorch peer starts: the 0.5B
    // step needs ~13 GB on each side, more than a small machine holds twice.
    let (sf, sb) = {
        let (device, dtype) = placement_names();
        let placement = Placement::parse(&device, &dtype).expect("BENCH_DEVICE / BENCH_DTYPE");
        let m = TrainModel::new_random(
            dc.clone(),
            config_json(&dc, None, None),
            b"{}".to_vec(),
            &ModelOptions::on(&placement),
        )
        .expect("model");
        // GPU kernels run asynchronously: wait for them before reading the clock.
        let sync = || m.device().synchronize().expect("synchronize");
        let params: usize = m
            .named_vars()
            .iter()
            .map(|(_, v)| v.as_tensor().elem_count())
            .sum();
        eprintln!(
            "{name}: {:.1}M parameters, initialised in {:.1} s",
            params as f64 / 1e6,
            t0.elapsed().as_secs_f64()
        );
        let data = examples(batch * (steps + 1), seq, dc.vocab_size as u32);
        let tmp = tempfile::tempdir().expect("tempdir");
        let cfg = TrainConfig {
            schedule: Schedule::with_ratio(1e-4, 0.0, steps + 1, Decay::Constant),
            adamw: AdamWConfig::default(),
            micro_batch: batch,
            grad_accum: 1,
            max_grad_norm: 1.0,
            seed: 0,
            alpha: 1.0,
            save_every: 0,
            keep_last: 1,
            threads: 1,
            gradient_checkpointing: false,
        };
        let mut tr = Trainer::new(&m, None, &data, cfg, tmp.path(), 0).expect("trainer");
        if warmup {
            tr.train_step().expect("warm-up step");
        }
        let mut full = Vec::new();
        for _ in 0..steps {
            sync();
            let t = Instant::now();
            tr.train_step().expect("step");
            sync();
            full.push(t.elapsed().as_secs_f64());
        }
        let seqs: Vec<Vec<u32>> = data[..batch].iter().map(|e| e.ids.clone()).collect();
        let b = Batch::new(&seqs, None, 0, m.device()).expect("batch");
        let mut fb = Vec::new();
        for _ in 0..steps {
            sync();
            let t = Instant::now();
            let logits = m.logits(&b).expect("forward");
            let l = train::loss::cross_entropy(&logits, &b.ids, &b.target_mask).expect("loss");
            let _g = l.backward().expect("backward");
            sync();
            fb.push(t.elapsed().as_secs_f64());
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        (med(&mut full), med(&mut fb))
    };
    let tokens = (batch * seq) as f64;
    println!(
        "{name}: batch {batch} x seq {seq}: update {sf:.3} s ({:.0} tokens/s), forward+backward {sb:.3} s ({:.0} tokens/s), AdamW+clip {:.3} s; median of {steps}",
        tokens / sf,
        tokens / sb,
        (sf - sb).max(0.0)
    );
    if std::env::var("BENCH_TORCH").as_deref() == Ok("0") {
        return;
    }
    train::release_freed_memory();
    match torch_peer(&dc, batch, seq, steps) {
        Ok(t) => println!(
            "{name}: PyTorch peer, same update: {t:.3} s ({:.0} tokens/s); ours / PyTorch = {:.2}x tokens/s",
            tokens / t,
            t / sf
        ),
        Err(e) => println!("{name}: PyTorch peer skipped ({e})"),
    }
}

fn main() {
    train::keep_freed_memory();
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
    let (device, dtype) = placement_names();
    println!(
        "training throughput, {dtype} on {device} ({threads} CPU threads, {} cores available)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let p = PresetConfig::default();
    let presets = std::env::var("BENCH_PRESETS").as_deref() != Ok("0");
    for (name, spec) in [("tiny", p.tiny), ("tiny-teacher", p.teacher)]
        .into_iter()
        .filter(|_| presets)
    {
        bench(name, spec.shape.decoder(1024), 8, 128, 10, true);
        bench(
            &format!("{name} (seq 384)"),
            spec.shape.decoder(1024),
            4,
            384,
            5,
            true,
        );
    }
    if std::env::var("BENCH_QWEN").as_deref() != Ok("0") {
        let qwen = DecoderConfig {
            arch: Arch::Qwen2,
            vocab_size: 151_936,
            hidden_size: 896,
            intermediate_size: 4864,
            num_layers: 24,
            num_heads: 14,
            num_kv_heads: 2,
            head_dim: 64,
            max_position: 32_768,
            rope_theta: 1_000_000.0,
            rms_norm_eps: 1e-6,
            tie_embeddings: true,
            attention_bias: true,
            rope_style: RopeStyle::Half,
            rope_scaling: None,
        };
        // One warm-up update, as the PyTorch peer does: the first step faults in every buffer
        // (weights' gradients, AdamW moments, 300-MB logits), which cost more than the
        // arithmetic of a step here (46 s first vs 17 s warm on one core).
        let steps = std::env::var("BENCH_QWEN_STEPS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
        bench("Qwen2.5-0.5B shape", qwen, 1, 512, steps, true);
    }
}
