//! `train`: cold-start knowledge distillation, then DGPO, for compact search agents.
//!
//! Usage: `train <data> <student> <teacher> <exp> [--phase sft|kd]` (the RL phase is not built
//! yet), and
//! `train export <checkpoint> --out model.gguf [--quant f16|q8_0|q4_k_m]`. This is a thin layer
//! over the `train` library.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use dgpo_core::model::export::{Quant, export_gguf};

/// Train a compact search agent with DGPO.
#[derive(Parser, Debug)]
#[command(name = "train", version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Dataset name under $DATA_ROOT (e.g. `synth`, `nq_hotpotqa`).
    data: Option<String>,
    /// Student model: HF folder, preset name or HF-cache id.
    student: Option<String>,
    /// Teacher model: HF folder, GGUF file, preset name or HF-cache id.
    teacher: Option<String>,
    /// Experiment name (folder under $EXP_ROOT).
    exp: Option<String>,
    /// Which phase to run: `sft` (CE on the data folder's trajectories.jsonl) or `kd` (the
    /// teacher answers the training questions, its correct trajectories are distilled).
    #[arg(long, default_value = "kd")]
    phase: String,
    /// Optimiser updates.
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Warmup as a fraction of the steps.
    #[arg(long, default_value_t = 0.0)]
    warmup_ratio: f64,
    /// Decay after warmup: cosine or constant.
    #[arg(long, default_value = "cosine")]
    decay: String,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 4)]
    micro_batch: usize,
    /// Micro-batches per update.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Gradient-norm clip (0 disables).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    /// KD mix: (1 − α)·CE + α·forward KL.
    #[arg(long, default_value_t = 1.0)]
    alpha: f64,
    /// Checkpoint every N updates.
    #[arg(long, default_value_t = 50)]
    save_every: usize,
    /// Checkpoints kept.
    #[arg(long, default_value_t = 3)]
    keep_last: usize,
    /// Seed of the data order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Continue from the newest checkpoint of the experiment.
    #[arg(long)]
    resume: bool,
    /// KD: at most this many training questions for the teacher.
    #[arg(long)]
    max_questions: Option<usize>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Export a checkpoint (or any HF folder) to a GGUF file.
    Export {
        /// A checkpoint folder (`.../checkpoints/step-N`) or an HF model folder.
        checkpoint: PathBuf,
        /// Output GGUF file.
        #[arg(long)]
        out: PathBuf,
        /// Weight format: f32, f16, q8_0, q4_k_m.
        #[arg(long, default_value = "f16")]
        quant: String,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Some(Cmd::Export {
            checkpoint,
            out,
            quant,
        }) => {
            let q: Quant = quant.parse()?;
            // A training checkpoint keeps its HF folder under `model/`.
            let dir = if checkpoint.join("model").join("config.json").exists() {
                checkpoint.join("model")
            } else {
                checkpoint
            };
            export_gguf(&dir, &out, q)
                .with_context(|| format!("exporting {} to {}", dir.display(), out.display()))?;
            tracing::info!(out = %out.display(), ?q, "exported");
            Ok(())
        }
        None => {
            let (Some(data), Some(student), Some(teacher), Some(exp)) = (
                cli.data.clone(),
                cli.student.clone(),
                cli.teacher.clone(),
                cli.exp.clone(),
            ) else {
                bail!(
                    "usage: train <data> <student> <teacher> <exp> [--phase sft|kd] (or `train export`)"
                );
            };
            run(&cli, &data, &student, &teacher, &exp)
        }
    }
}

fn root(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

fn run(cli: &Cli, data: &str, student: &str, teacher: &str, exp: &str) -> Result<()> {
    use train::model::{ModelOptions, TrainModel};
    use train::optim::{AdamWConfig, Decay, Schedule};
    use train::trainer::{Example, TrainConfig, Trainer};

    let data_dir = if Path::new(data).is_dir() {
        PathBuf::from(data)
    } else {
        root("DATA_ROOT", "data").join(data)
    };
    if data == "synth" || data_dir.file_name().is_some_and(|n| n == "synth") {
        train::synth::prepare::prepare(&data_dir, &Default::default())?;
    }
    let exp_dir = if Path::new(exp).is_absolute() {
        PathBuf::from(exp)
    } else {
        root("EXP_ROOT", "exp").join(exp)
    };
    let decay = match cli.decay.as_str() {
        "cosine" => Decay::Cosine { min_ratio: 0.0 },
        "constant" => Decay::Constant,
        o => bail!("unknown --decay {o:?} (cosine, constant)"),
    };
    let cfg = TrainConfig {
        schedule: Schedule::with_ratio(cli.lr, cli.warmup_ratio, cli.steps, decay),
        adamw: AdamWConfig::default(),
        micro_batch: cli.micro_batch,
        grad_accum: cli.grad_accum,
        max_grad_norm: cli.max_grad_norm,
        seed: cli.seed,
        alpha: cli.alpha,
        save_every: cli.save_every,
        keep_last: cli.keep_last,
    };
    let s = TrainModel::load(Path::new(student), &ModelOptions::default())?;
    let pad = 0;
    let (examples, t): (Vec<Example>, Option<TrainModel>) = match cli.phase.as_str() {
        "sft" => {
            let p = data_dir.join("trajectories.jsonl");
            let rs = train::synth::prepare::read_rollouts(&p)?;
            let ex = rs
                .iter()
                .map(Example::from_rollout)
                .collect::<dgpo_core::Result<_>>()?;
            (ex, None)
        }
        "kd" => {
            let t = TrainModel::load(Path::new(teacher), &ModelOptions::default())?;
            if t.vocab_size() != s.vocab_size() {
                bail!(
                    "teacher {teacher} has a vocabulary of {}, student {student} of {}: forward KL needs the same tokenizer",
                    t.vocab_size(),
                    s.vocab_size()
                );
            }
            let mut qs = train::data::read_questions(&data_dir.join("train.jsonl"))?;
            if let Some(n) = cli.max_questions {
                qs.truncate(n);
            }
            let policy = dgpo_core::model::load(Path::new(teacher), &Default::default())?;
            let corpus = data_dir.join("corpus.jsonl");
            let retriever = dgpo_core::retrieve::MemoryRetriever::from_jsonl(&corpus)?;
            let agent = dgpo_core::agent::AgentConfig {
                chat_template: policy.chat_template().is_some(),
                ..Default::default()
            };
            let c = train::phases::collect_correct(
                policy.as_ref(),
                &retriever,
                &qs,
                &agent,
                Some(s.vocab_size()),
            )?;
            if c.examples.is_empty() {
                bail!(
                    "the teacher answered none of the {} questions correctly: nothing to distil",
                    c.tried
                );
            }
            (c.examples, Some(t))
        }
        o => bail!("unknown --phase {o:?} (sft, kd)"),
    };
    let mut tr = Trainer::new(&s, t.as_ref(), &examples, cfg, &exp_dir, pad)?;
    if cli.resume {
        match tr.resume()? {
            Some(step) => tracing::info!(step, "resuming"),
            None => tracing::info!("no checkpoint to resume from; starting fresh"),
        }
    }
    tr.run(cli.steps)?;
    let fin = exp_dir.join("final");
    s.save(&fin)?;
    tracing::info!(dir = %fin.display(), "final model saved");
    Ok(())
}
