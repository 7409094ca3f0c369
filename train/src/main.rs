//! `train`: cold-start knowledge distillation, then DGPO, for compact search agents.
//!
//! Usage: `train <data> <student> <teacher> <exp> [--phase sft|kd] [--kd-source tgo|sgo]`
//! (the RL phase is in `train::rl`), `train preset <name> <data>`,
//! `train eval <data> <model>...`,
//! `train export <checkpoint> --out model.gguf [--quant f16|q8_0|q4_k_m]` and
//! `train import <model.gguf> --out <folder>` (a GGUF file as a trainable HF folder).
//!
//! `<data>` is a folder (or a train file) of Search-R1 rows, or a name under `$DATA_ROOT`
//! (`synth` is built on first use). Models are HF folders, GGUF files (teacher only, for
//! generation), presets (`tiny`, `tiny-teacher`, built on first use under
//! `$EXP_ROOT/presets/<data>/`) or `org/name` ids in the local Hugging Face cache. This is a
//! thin layer over the `train` library.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use dgpo_core::agent::AgentConfig;
use dgpo_core::model::Placement;
use dgpo_core::model::export::{Quant, export_gguf};
use train::evaluate::{EvalOptions, em_table, evaluate_models, write_report};
use train::phases::{DataSet, KdConfig, KdSource};

/// Train a compact search agent with DGPO.
#[derive(Parser, Debug)]
#[command(name = "train", version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Dataset: a folder or train file of Search-R1 parquet/JSONL rows, or a name under
    /// $DATA_ROOT (e.g. `synth`, built on first use).
    data: Option<String>,
    /// Student model: HF folder, preset name or HF-cache id.
    student: Option<String>,
    /// Teacher model: HF folder, GGUF file, preset name or HF-cache id (`-` for none, SFT).
    teacher: Option<String>,
    /// Experiment name (folder under $EXP_ROOT) or path.
    exp: Option<String>,
    /// Which phase to run: `all` (the replication: KD, then PPO, GRPO and DGPO, then the
    /// evaluation of every model; see `train::demo`), `sft` (CE on the data folder's
    /// trajectories.jsonl), `kd` (cold-start distillation, see --kd-source) or `rl` (one RL run
    /// of --algo from the student, DGPO unless named).
    #[arg(long, default_value = "all")]
    phase: String,
    /// RL algorithms, comma-separated `ppo`, `grpo`, `dgpo` [default: `all`: ppo,grpo,dgpo;
    /// `rl`: dgpo, and `rl` runs exactly one].
    #[arg(long, alias = "algo")]
    algos: Option<String>,
    /// `all`: seeds 0..N (KD and RL run once per seed; the table shows mean ± half-range).
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// RL updates per algorithm [paper: 1005; tiny presets: 30].
    #[arg(long)]
    rl_steps: Option<usize>,
    /// RL questions per step [paper: 512; tiny: 16].
    #[arg(long)]
    questions_per_step: Option<usize>,
    /// RL PPO mini-batch, in rollouts [paper: 256; tiny: 16].
    #[arg(long)]
    rl_mini_batch: Option<usize>,
    /// Rollouts per forward pass of the RL scoring and update (memory grows with it; the
    /// gradient of a mini-batch does not depend on it) [default: 8].
    #[arg(long)]
    rl_micro_batch: Option<usize>,
    /// GRPO rollouts per question [paper: 5; tiny: 4].
    #[arg(long)]
    group_size: Option<usize>,
    /// PPO and GRPO: weight of the KL to the frozen initial student [paper: 0.001; tiny: 0.01].
    #[arg(long)]
    kl_coef: Option<f64>,
    /// DGPO: β, the weight of the KL to the teacher on failed rollouts [paper: 0.001; tiny: 1]
    /// (docs/demo/history.md: at 1 the tiny student moves toward its teacher; at 0.001-0.05 it
    /// stays where KD left it).
    #[arg(long)]
    teacher_kl_coef: Option<f64>,
    /// Actor learning rate [paper: 1e-6; tiny: 1e-4].
    #[arg(long)]
    actor_lr: Option<f64>,
    /// Critic learning rate [paper: 1e-5; tiny: 1e-3].
    #[arg(long)]
    critic_lr: Option<f64>,
    /// Fraction of the training questions (the last ones) kept for RL alone: KD distils on the
    /// rest (`--phase all|kd`), RL trains on these (`all|rl`). 0 = the paper's setting, both on
    /// every question. See `train::phases::split_rl_holdout`.
    #[arg(long, default_value_t = 0.0)]
    rl_holdout: f64,
    /// RL on this many fresh people instead of the training questions (`all|rl`; a synthetic
    /// data folder's world only): people whose names join training people's given and family
    /// names, with new facts, their passages added to RL's corpus, five questions each, drawn
    /// per seed; the test split and its corpus are untouched. 0 = the paper's setting. See
    /// `train::synth::fresh`.
    #[arg(long, default_value_t = 0)]
    rl_fresh_people: usize,
    /// Ablation: apply the KL penalty on every rollout, not only on failed ones.
    #[arg(long)]
    no_selective: bool,
    /// KD trajectories: `tgo` (the teacher's correct trajectories) or `sgo` (the student's own
    /// sampled trajectories, refreshed --sgo-rounds times), with the teacher's distributions.
    #[arg(long, default_value = "tgo")]
    kd_source: String,
    /// SGO: generation rounds over the run.
    #[arg(long, default_value_t = 4)]
    sgo_rounds: usize,
    /// TGO: distil on this many name-swapped copies of the teacher's trajectories instead of
    /// the trajectories themselves (the training people's names permuted, so the student
    /// cannot memorise their facts; needs a synthetic data folder's world.json). 15 sees each
    /// copy about once in the tiny KD. Off by default: on the tiny presets it halved the
    /// student's test EM (seed 0: 0.065 against 0.115; docs/demo/history.md).
    #[arg(long, default_value_t = 0)]
    kd_name_swaps: usize,
    /// Optimiser updates [default: 100; the tiny presets' KD: 2400].
    #[arg(long)]
    steps: Option<usize>,
    /// Peak learning rate [default: 1e-4; the tiny presets' KD: 2e-3].
    #[arg(long)]
    lr: Option<f64>,
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
    /// Seed of the data order (and of SGO sampling).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Continue from the newest checkpoint of the experiment.
    #[arg(long)]
    resume: bool,
    /// KD: at most this many training questions for the agent runs.
    #[arg(long)]
    max_questions: Option<usize>,
    /// New-token cap per agent turn: KD's generations, RL's rollouts and the evaluations
    /// [default: 500; `all` and `rl` with the tiny defaults: 128].
    #[arg(long, value_parser = at_least_one)]
    max_turn_tokens: Option<usize>,
    /// Corpus JSONL searched with BM25 (default: the data folder's corpus.jsonl).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Disk index directory built by `edge index build` (instead of a corpus).
    #[arg(long)]
    index: Option<PathBuf>,
    /// Questions run in parallel (generation and evaluation).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Evaluate on this many test questions (`all`: every model; `kd`: student before/after
    /// and teacher). 200 = all 200 of the default `synth` world's test questions.
    #[arg(long, default_value_t = 200)]
    eval_limit: usize,
    /// Skip the evaluation after KD.
    #[arg(long)]
    no_eval: bool,
    /// Threads computing each supervised (SFT/KD) micro-batch together, on slices of its
    /// sequences [default: the cores with `--defaults tiny`, else 1 (candle's kernels thread)].
    #[arg(long)]
    train_threads: Option<usize>,
    /// Hyper-parameter defaults: `tiny` (rates, lengths and thread use sized for the tiny
    /// presets) or `paper` (the paper's, for 0.5B-scale models). Default: `tiny` when the
    /// student is a preset name, else `paper`; say `tiny` when continuing from a checkpoint of
    /// a tiny preset (e.g. `--phase rl` from `seed-0/kd/final`).
    #[arg(long, value_parser = ["tiny", "paper"])]
    defaults: Option<String>,
    /// Where the student, its critic and reference, and the teacher train and generate: `cpu`,
    /// `cuda` or `cuda:N` (a build with `--features cuda`). Evaluation runs there too.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Float type of the models: `f32`, `bf16` (real models on a GPU: half the weights' and
    /// activations' memory), `f16`.
    /// The optimiser keeps f32 master weights and moments for bf16/f16 parameters.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Recompute each transformer block's activations in the backward pass (SFT, KD and the
    /// PPO update) instead of keeping them: the memory of one block's attention scores instead
    /// of every block's, for one more forward pass [default: true, false for the tiny presets].
    #[arg(long, value_name = "BOOL")]
    gradient_checkpointing: Option<bool>,
}

impl Cli {
    /// Whether the tiny presets' defaults apply to this run (see `--defaults`).
    fn tiny_defaults(&self, student: &str) -> bool {
        match self.defaults.as_deref() {
            Some(d) => d == "tiny",
            None => train::presets::is_preset(student),
        }
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Build (or reuse) a preset model from a dataset folder and print its folder.
    Preset {
        /// `tiny` or `tiny-teacher`.
        name: String,
        /// Dataset (as for training; `synth` is built on first use).
        data: String,
    },
    /// Evaluate models (EM, ARCap) on a dataset split, with BM25 over its corpus.jsonl.
    Eval {
        /// Dataset (as for training).
        data: String,
        /// Models: HF folders, GGUF files, presets or HF-cache ids.
        #[arg(required = true)]
        models: Vec<String>,
        /// Split file stem.
        #[arg(long, default_value = "test")]
        split: String,
        /// Only the first N questions.
        #[arg(long)]
        limit: Option<usize>,
        /// Skip the evidence-given generations (ARCap Source Referencing / Thinking).
        #[arg(long)]
        no_evidence: bool,
        /// Write results.json and summary.md here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Questions evaluated in parallel (default: one per core).
        #[arg(long)]
        concurrency: Option<usize>,
        /// Device of HF-folder models: `cpu`, `cuda`, `cuda:N` (GGUF files run on the CPU).
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Float type of HF-folder models: `f32`, `bf16`, `f16`.
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// New-token cap per agent turn (the demo evaluates the tiny presets at 128).
        #[arg(long, default_value_t = AgentConfig::default().max_turn_tokens,
              value_parser = at_least_one)]
        max_turn_tokens: usize,
        /// Search turns before the final answer-only turn.
        #[arg(long, default_value_t = AgentConfig::default().max_turns)]
        max_turns: usize,
        /// Passages per search.
        #[arg(long, default_value_t = AgentConfig::default().topk, value_parser = at_least_one)]
        topk: usize,
    },
    /// Import a GGUF file as a trainable HF folder (dequantised weights, config, tokenizer,
    /// chat template): the inverse of `export`.
    Import {
        /// The GGUF file (qwen2 or llama architecture, byte-level BPE tokenizer).
        gguf: PathBuf,
        /// The HF folder to create (it must not exist).
        #[arg(long)]
        out: PathBuf,
        /// Float type of the stored weights: f32, bf16, f16.
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
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
    train::keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match &cli.cmd {
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
                checkpoint.clone()
            };
            export_gguf(&dir, out, q)
                .with_context(|| format!("exporting {} to {}", dir.display(), out.display()))?;
            tracing::info!(out = %out.display(), ?q, "exported");
            Ok(())
        }
        Some(Cmd::Import { gguf, out, dtype }) => {
            let dtype = Placement::parse("cpu", dtype)?.dtype;
            dgpo_core::model::import::import_gguf(gguf, out, dtype)
                .with_context(|| format!("importing {} to {}", gguf.display(), out.display()))?;
            tracing::info!(out = %out.display(), "imported");
            Ok(())
        }
        Some(Cmd::Preset { name, data }) => {
            if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
                // As in `run` for the tiny presets: one kernel thread, the cores share each
                // micro-batch (`TrainConfig::threads`). SAFETY: no other thread exists yet.
                unsafe {
                    std::env::set_var("CANDLE_NUM_THREADS", "1");
                    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
                        std::env::set_var("RAYON_NUM_THREADS", "1");
                    }
                };
            }
            let ds = DataSet::resolve(data, &root("DATA_ROOT", "data"))?;
            let t0 = std::time::Instant::now();
            let dir = train::presets::build_preset(
                name,
                &ds.dir,
                &root("EXP_ROOT", "exp"),
                &train::presets::PresetConfig::from_env()?,
            )?;
            tracing::info!(secs = t0.elapsed().as_secs_f64(), "preset ready");
            println!("{}", dir.display());
            Ok(())
        }
        Some(Cmd::Eval {
            data,
            models,
            split,
            limit,
            no_evidence,
            out,
            concurrency,
            device,
            dtype,
            max_turn_tokens,
            max_turns,
            topk,
        }) => {
            let ds = DataSet::resolve(data, &root("DATA_ROOT", "data"))?;
            let exp_root = root("EXP_ROOT", "exp");
            let named = models
                .iter()
                .map(|m| {
                    let p = train::presets::resolve_model(m, &ds.dir, &exp_root)?;
                    Ok((m.clone(), p))
                })
                .collect::<Result<Vec<_>>>()?;
            let opts = EvalOptions {
                limit: *limit,
                evidence: !no_evidence,
                concurrency: concurrency.unwrap_or_else(train::phases::default_concurrency),
                placement: Placement::parse(device, dtype)?,
                agent: AgentConfig {
                    max_turn_tokens: *max_turn_tokens,
                    max_turns: *max_turns,
                    topk: *topk,
                    ..Default::default()
                },
            };
            let report = evaluate_models(&named, &ds.dir, split, &opts)?;
            if let Some(o) = out {
                write_report(&report, o)?;
            }
            println!("{}", em_table(&report));
            Ok(())
        }
        None => {
            let (Some(data), Some(student), Some(teacher), Some(exp)) = (
                cli.data.as_deref(),
                cli.student.as_deref(),
                cli.teacher.as_deref(),
                cli.exp.as_deref(),
            ) else {
                bail!(
                    "usage: train <data> <student> <teacher> <exp> [--phase sft|kd] (or `train preset|eval|export`)"
                );
            };
            run(&cli, data, student, teacher, exp)
        }
    }
}

/// A count flag that must be 1 or more: refused by clap with the flag named, before anything
/// is loaded or written.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be 1 or more".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn root(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

fn train_config(cli: &Cli) -> Result<train::trainer::TrainConfig> {
    use train::optim::{AdamWConfig, Decay, Schedule};
    let decay = match cli.decay.as_str() {
        "cosine" => Decay::Cosine { min_ratio: 0.0 },
        "constant" => Decay::Constant,
        o => bail!("unknown --decay {o:?} (cosine, constant)"),
    };
    Ok(train::trainer::TrainConfig {
        schedule: Schedule::with_ratio(
            cli.lr.unwrap_or(1e-4),
            cli.warmup_ratio,
            cli.steps.unwrap_or(100),
            decay,
        ),
        adamw: AdamWConfig::default(),
        micro_batch: cli.micro_batch,
        grad_accum: cli.grad_accum,
        max_grad_norm: cli.max_grad_norm,
        seed: cli.seed,
        alpha: cli.alpha,
        save_every: cli.save_every,
        keep_last: cli.keep_last,
        threads: cli.train_threads.unwrap_or(1),
        gradient_checkpointing: false,
    })
}

/// Vocabulary size in a model's config.json, or (GGUF) from the loaded model.
fn vocab_of(path: &Path) -> Result<usize> {
    if path.is_dir() {
        Ok(dgpo_core::model::hf::read_config(&path.join("config.json"))?.vocab_size)
    } else {
        Ok(dgpo_core::model::load(path, &Default::default())?
            .info()
            .vocab_size)
    }
}

fn run(cli: &Cli, data: &str, student: &str, teacher: &str, exp: &str) -> Result<()> {
    if cli.tiny_defaults(student) && std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // The tiny presets' matrices are too small for candle's thread pool, whose workers spin
        // while waiting (measured: 0.3 s per RL step on one thread, 1.0-1.4 s on two); the
        // agent rollouts run in parallel over questions instead. Set before any candle op.
        // The training threads split the work instead (`TrainConfig::threads`,
        // `RlConfig::update_threads`), and candle's rayon-parallel ops (softmax, copies) then
        // only contend with them: teacher-shaped SFT 2,689 tok/s with rayon on 2 threads and no
        // split, 2,980 with both, 3,343 with the split and rayon on 1.
        // SAFETY: no other thread exists yet.
        unsafe {
            std::env::set_var("CANDLE_NUM_THREADS", "1");
            if std::env::var_os("RAYON_NUM_THREADS").is_none() {
                std::env::set_var("RAYON_NUM_THREADS", "1");
            }
        };
    }
    // Refused (an unknown phase, device or algorithm, a build without CUDA, a list of
    // algorithms for one RL run) before any data, preset or model is built or read.
    let placement = Placement::parse(&cli.device, &cli.dtype)?;
    check_flags(cli, student)?;
    let ds = DataSet::resolve(data, &root("DATA_ROOT", "data"))?;
    let exp_root = root("EXP_ROOT", "exp");
    let exp_dir = if Path::new(exp).is_absolute() {
        PathBuf::from(exp)
    } else {
        exp_root.join(exp)
    };
    let mut cfg = train_config(cli)?;
    cfg.gradient_checkpointing = gradient_checkpointing(cli, cli.tiny_defaults(student));
    if cli.tiny_defaults(student) && cli.train_threads.is_none() {
        // Single-threaded kernels (above): the cores share each micro-batch instead.
        cfg.threads = train::phases::default_concurrency();
    }
    let student_dir = train::presets::resolve_model(student, &ds.dir, &exp_root)?;
    if !student_dir.is_dir() {
        bail!(
            "student {} is not an HF folder: training needs safetensors weights (GGUF is for inference)",
            student_dir.display()
        );
    }
    match cli.phase.as_str() {
        "sft" => {
            let p = ds.dir.join("trajectories.jsonl");
            let rs = train::synth::prepare::read_rollouts(&p)?;
            let ex = rs
                .iter()
                .map(train::trainer::Example::from_rollout)
                .collect::<dgpo_core::Result<Vec<_>>>()?;
            let (fin, _) =
                train::phases::run_sft(&student_dir, &ex, &exp_dir, &cfg, cli.resume, &placement)?;
            tracing::info!(dir = %fin.display(), "final model saved");
            Ok(())
        }
        "kd" => {
            let source: KdSource = cli.kd_source.parse()?;
            let teacher_path = train::presets::resolve_model(teacher, &ds.dir, &exp_root)?;
            // Refused before anything is read or generated.
            let (tv, sv) = (vocab_of(&teacher_path)?, vocab_of(&student_dir)?);
            if tv != sv {
                bail!(
                    "teacher {teacher} has a vocabulary of {tv}, student {student} of {sv}: forward KL needs the same tokenizer"
                );
            }
            let mut qs = ds.train_questions()?;
            if let Some(n) = cli.max_questions {
                qs.truncate(n);
            }
            let (qs, _) = train::phases::split_rl_holdout(&qs, cli.rl_holdout)?;
            let retriever = open_retriever(cli, &ds)?;
            let concurrency = cli
                .concurrency
                .unwrap_or_else(train::phases::default_concurrency);
            let default_agent = AgentConfig::default();
            let kd_agent = AgentConfig {
                max_turn_tokens: cli.max_turn_tokens.unwrap_or(default_agent.max_turn_tokens),
                ..default_agent
            };
            let kd = KdConfig {
                train: kd_config(cli, cfg, cli.tiny_defaults(student)),
                source,
                agent: kd_agent.clone(),
                sgo_rounds: cli.sgo_rounds,
                concurrency,
                resume: cli.resume,
                name_swaps: kd_name_swaps(cli, &ds.dir, &student_dir, source)?,
                placement: placement.clone(),
            };
            let t0 = std::time::Instant::now();
            let out = train::phases::run_kd(
                &student_dir,
                &teacher_path,
                qs,
                retriever.as_ref(),
                &exp_dir,
                &kd,
            )?;
            tracing::info!(
                dir = %out.final_dir.display(),
                kept = out.kept,
                tried = out.tried,
                secs = t0.elapsed().as_secs_f64(),
                "KD done; final model saved"
            );
            if !cli.no_eval && ds.test.is_some() && ds.corpus.is_some() && cli.eval_limit > 0 {
                let t1 = std::time::Instant::now();
                let models = vec![
                    (format!("{student} (before KD)"), student_dir.clone()),
                    (
                        format!("{student} after KD ({})", cli.kd_source),
                        out.final_dir,
                    ),
                    (format!("{teacher} (teacher)"), teacher_path),
                ];
                let opts = EvalOptions {
                    limit: Some(cli.eval_limit),
                    evidence: false,
                    concurrency,
                    agent: kd_agent,
                    placement,
                };
                let report = evaluate_models(&models, &ds.dir, "test", &opts)?;
                let table = em_table(&report);
                write_report(&report, &exp_dir.join("eval"))?;
                tracing::info!(secs = t1.elapsed().as_secs_f64(), "evaluated");
                println!("{table}");
            }
            Ok(())
        }
        "all" | "rl" => {
            let teacher_path = train::presets::resolve_model(teacher, &ds.dir, &exp_root)?;
            let (tv, sv) = (vocab_of(&teacher_path)?, vocab_of(&student_dir)?);
            if tv != sv {
                bail!(
                    "teacher {teacher} has a vocabulary of {tv}, student {student} of {sv}: forward KL needs the same tokenizer"
                );
            }
            if !teacher_path.is_dir() {
                bail!(
                    "teacher {} is a GGUF file: the RL phase scores the teacher's log-probs in training mode and needs an HF folder",
                    teacher_path.display()
                );
            }
            let mut qs = ds.train_questions()?;
            if let Some(n) = cli.max_questions {
                qs.truncate(n);
            }
            let retriever = open_retriever(cli, &ds)?;
            let tiny = cli.tiny_defaults(student);
            let rl = rl_config(cli, tiny)?;
            let algos = rl_algorithms(cli)?;
            let concurrency = cli
                .concurrency
                .unwrap_or_else(train::phases::default_concurrency);
            let agent = AgentConfig {
                max_turn_tokens: rl.max_turn_tokens,
                ..Default::default()
            };
            if cli.phase == "rl" {
                let algo = algos[0];
                let on = train::ModelOptions::on(&placement);
                let s = train::TrainModel::load(&student_dir, &on)?;
                let t = train::TrainModel::load(&teacher_path, &on)?;
                // Groups are GRPO's baseline; PPO and DGPO have a critic and sample each
                // question once (as in the demo) unless --group-size says otherwise.
                let group_size = match (algo, cli.group_size) {
                    (_, Some(g)) => g,
                    (train::rl::Algo::Grpo, None) => rl.group_size,
                    _ => 1,
                };
                let cfg = train::rl::RlConfig {
                    algo,
                    seed: cli.seed,
                    group_size,
                    ..rl
                };
                let teacher_ref = (algo == train::rl::Algo::Dgpo).then_some(&t);
                let (_, rl_qs) = train::phases::split_rl_holdout(&qs, cli.rl_holdout)?;
                train::synth::fresh::one_question_source(cli.rl_holdout, cli.rl_fresh_people)?;
                // RL on fresh people searches the corpus with their passages added.
                let fresh = match cli.rl_fresh_people {
                    0 => None,
                    n => {
                        let env = train::synth::fresh::fresh_environment(&ds.dir, n, cli.seed)?;
                        let r = dgpo_core::retrieve::MemoryRetriever::new(env.corpus);
                        Some((r, env.questions))
                    }
                };
                let (rl_qs, r): (&[train::data::QaRow], &dyn dgpo_core::retrieve::Retriever) =
                    match &fresh {
                        Some((r, qs)) => (qs, r),
                        None => (rl_qs, retriever.as_ref()),
                    };
                train::rl::train_rl(&s, teacher_ref, rl_qs, r, &cfg, &exp_dir, cli.resume)?;
                let fin = exp_dir.join("final");
                s.save(&fin)?;
                tracing::info!(dir = %fin.display(), "RL done; final model saved");
                return Ok(());
            }
            let kd_train = kd_config(cli, cfg, tiny);
            let kd_source: KdSource = cli.kd_source.parse()?;
            let name_swaps = kd_name_swaps(cli, &ds.dir, &student_dir, kd_source)?;
            let demo = train::demo::DemoConfig {
                data_dir: ds.dir.clone(),
                student: student_dir.clone(),
                teacher: teacher_path,
                exp_dir: exp_dir.clone(),
                seeds: (0..cli.seeds.max(1)).collect(),
                kd: KdConfig {
                    train: kd_train,
                    source: kd_source,
                    agent: agent.clone(),
                    sgo_rounds: cli.sgo_rounds,
                    concurrency,
                    resume: true,
                    name_swaps,
                    placement: placement.clone(),
                },
                rl,
                algos,
                eval: EvalOptions {
                    limit: Some(cli.eval_limit),
                    evidence: !cli.no_eval,
                    concurrency,
                    agent,
                    placement,
                },
                rl_holdout: cli.rl_holdout,
                rl_fresh_people: cli.rl_fresh_people,
            };
            let report = train::demo::run_demo(&demo, &qs, retriever.as_ref())?;
            println!("{}", train::demo::em_markdown(&report, demo.seeds.len()));
            println!(
                "wall time {:.0} s; report: {}",
                report.total_secs,
                exp_dir.join("demo.md").display()
            );
            Ok(())
        }
        o => check_phase(o),
    }
}

/// Supervised settings for KD: the general defaults (100 updates at 1e-4) suit 0.5B models; the
/// tiny presets distil at the rates they were pretrained with, for longer. `--phase kd` and
/// `--phase all` share it, so a KD run alone trains the student the demo would.
fn kd_config(
    cli: &Cli,
    mut cfg: train::trainer::TrainConfig,
    tiny: bool,
) -> train::trainer::TrainConfig {
    if tiny {
        // Reading the answer out of a retrieved passage comes late, as it did for the teacher:
        // test EM (seed 0, 200 questions) 0.08 after 800 updates at 1e-3, 0.175 after 1800 at
        // 2e-3; the demo's first KD (200 updates at 1e-3) left a student that only guessed.
        // A flag given explicitly wins.
        let steps = cli.steps.unwrap_or(2400);
        let lr = cli.lr.unwrap_or(2e-3);
        cfg.schedule =
            train::optim::Schedule::with_ratio(lr, cli.warmup_ratio, steps, cfg.schedule.decay);
    }
    cfg
}

/// Name-swapped KD copies (`--kd-name-swaps`), with the swap of the data folder's world.
fn kd_name_swaps(
    cli: &Cli,
    data_dir: &Path,
    student_dir: &Path,
    source: KdSource,
) -> Result<Option<train::synth::name_swap::SwapCopies>> {
    let copies = cli.kd_name_swaps;
    if copies == 0 {
        return Ok(None);
    }
    if source != KdSource::Tgo {
        bail!("--kd-name-swaps applies to --kd-source tgo (the teacher's trajectories)");
    }
    let tok = train::synth::prepare::load_tokenizer(&student_dir.join("tokenizer.json"))?;
    let swap = train::synth::name_swap::NameSwap::for_data_folder(data_dir, &tok)?;
    Ok(Some(train::synth::name_swap::SwapCopies { swap, copies }))
}

/// Refuse a `--phase` that is none of the four.
fn check_phase(phase: &str) -> Result<()> {
    match phase {
        "all" | "sft" | "kd" | "rl" => Ok(()),
        o => bail!("unknown --phase {o:?} (all, sft, kd, rl)"),
    }
}

/// Every check of the flags that needs no file: the phase, the training settings, KD's
/// source and RL's algorithms and settings for the phases that use them. Run before anything
/// is built, so that a typo costs a second, not a preset build.
fn check_flags(cli: &Cli, student: &str) -> Result<()> {
    check_phase(&cli.phase)?;
    train_config(cli)?;
    if matches!(cli.phase.as_str(), "all" | "kd") {
        cli.kd_source.parse::<KdSource>()?;
    }
    if matches!(cli.phase.as_str(), "all" | "rl") {
        rl_algorithms(cli)?;
        rl_config(cli, cli.tiny_defaults(student))?;
    }
    Ok(())
}

/// The RL algorithms to run: `--algos` as given, else every baseline and DGPO for `all` (the
/// paper's comparison) and DGPO alone for `rl`. `rl` runs one algorithm, so a list is refused
/// rather than cut to its first name.
fn rl_algorithms(cli: &Cli) -> Result<Vec<train::rl::Algo>> {
    let default = if cli.phase == "rl" {
        "dgpo"
    } else {
        "ppo,grpo,dgpo"
    };
    let algos: Vec<train::rl::Algo> = cli
        .algos
        .as_deref()
        .unwrap_or(default)
        .split(',')
        .map(|a| a.trim().parse())
        .collect::<dgpo_core::Result<_>>()?;
    if cli.phase == "rl" && algos.len() != 1 {
        let names: Vec<String> = algos.iter().map(|a| a.to_string()).collect();
        bail!(
            "--phase rl runs one algorithm, but --algos names {}: {} (the demo, --phase all, \
             runs several)",
            algos.len(),
            names.join(", ")
        );
    }
    Ok(algos)
}

/// `--gradient-checkpointing`, else on for models given as folders and off for the tiny
/// presets, whose trajectories (at most 4 × 128 new tokens) keep every block's activations in
/// memory easily. The same rule for SFT/KD and the PPO update.
fn gradient_checkpointing(cli: &Cli, tiny: bool) -> bool {
    cli.gradient_checkpointing.unwrap_or(!tiny)
}

/// RL settings: the paper's values, or (for the tiny presets) values sized for a laptop run;
/// any flag given wins.
fn rl_config(cli: &Cli, tiny: bool) -> Result<train::rl::RlConfig> {
    let mut c = train::rl::RlConfig::default();
    if tiny {
        c.steps = 30;
        c.questions_per_step = 16;
        c.mini_batch = 16;
        c.micro_batch = 8;
        c.group_size = 4;
        c.kl_coef = 0.01;
        c.teacher_kl_coef = 1.0;
        c.actor_lr = 1e-4;
        c.critic_lr = 1e-3;
        c.actor_warmup_ratio = 0.0;
        c.critic_warmup_ratio = 0.0;
        c.max_turn_tokens = 128;
        c.save_every = 10;
        // Single-threaded kernels (see `run`): the cores share the PPO update's micro-batches.
        c.update_threads = train::phases::default_concurrency();
    }
    c.gradient_checkpointing = gradient_checkpointing(cli, tiny);
    c.steps = cli.rl_steps.unwrap_or(c.steps);
    c.questions_per_step = cli.questions_per_step.unwrap_or(c.questions_per_step);
    c.mini_batch = cli.rl_mini_batch.unwrap_or(c.mini_batch);
    c.micro_batch = cli.rl_micro_batch.unwrap_or(c.micro_batch);
    c.group_size = cli.group_size.unwrap_or(c.group_size);
    c.kl_coef = cli.kl_coef.unwrap_or(c.kl_coef);
    c.teacher_kl_coef = cli.teacher_kl_coef.unwrap_or(c.teacher_kl_coef);
    c.actor_lr = cli.actor_lr.unwrap_or(c.actor_lr);
    c.critic_lr = cli.critic_lr.unwrap_or(c.critic_lr);
    c.max_turn_tokens = cli.max_turn_tokens.unwrap_or(c.max_turn_tokens);
    c.selective = !cli.no_selective;
    c.keep_last = cli.keep_last;
    c.validate()?;
    Ok(c)
}

/// The retriever behind the agent loop: --index, else --corpus, else the data folder's corpus.
fn open_retriever(
    cli: &Cli,
    ds: &DataSet,
) -> Result<std::sync::Arc<dyn dgpo_core::retrieve::Retriever>> {
    use dgpo_core::retrieve::{RetrieverSpec, open};
    let spec = match (&cli.index, &cli.corpus, &ds.corpus) {
        (Some(dir), _, _) => RetrieverSpec::Index {
            dir: dir.clone(),
            embedder: None,
        },
        (None, Some(c), _) | (None, None, Some(c)) => RetrieverSpec::Corpus(c.clone()),
        (None, None, None) => bail!(
            "no retriever: {} has no corpus.jsonl; pass --corpus corpus.jsonl or --index DIR",
            ds.dir.display()
        ),
    };
    Ok(open(&spec)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("train").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn defaults_follow_the_student_unless_named() {
        let ckpt = "exp/demo/seed-0/kd/final";
        let cli = parse(&["synth", ckpt, "tiny-teacher", "e", "--phase", "rl"]);
        assert!(
            !cli.tiny_defaults(ckpt),
            "a checkpoint path is not a preset"
        );
        assert!(cli.tiny_defaults("tiny"));
        let paper = rl_config(&cli, cli.tiny_defaults(ckpt)).unwrap();
        assert_eq!(
            (paper.actor_lr, paper.kl_coef, paper.teacher_kl_coef),
            (1e-6, 0.001, 0.001)
        );

        let cli = parse(&["synth", ckpt, "tiny-teacher", "e", "--defaults", "tiny"]);
        assert!(cli.tiny_defaults(ckpt));
        let tiny = rl_config(&cli, cli.tiny_defaults(ckpt)).unwrap();
        assert_eq!(
            (tiny.actor_lr, tiny.max_turn_tokens, tiny.steps),
            (1e-4, 128, 30)
        );
        assert_eq!((tiny.kl_coef, tiny.teacher_kl_coef), (0.01, 1.0));
        // Each flag sets its own coefficient only.
        let cli = parse(&[
            "synth",
            "tiny",
            "tiny-teacher",
            "e",
            "--teacher-kl-coef",
            "0.3",
        ]);
        let c = rl_config(&cli, true).unwrap();
        assert_eq!((c.kl_coef, c.teacher_kl_coef), (0.01, 0.3));
        // The per-turn cap reaches RL's rollouts under either profile.
        let cli = parse(&["synth", "tiny", "t", "e", "--max-turn-tokens", "64"]);
        assert_eq!(rl_config(&cli, true).unwrap().max_turn_tokens, 64);
        assert_eq!(rl_config(&cli, false).unwrap().max_turn_tokens, 64);
        assert_eq!(paper.max_turn_tokens, 500);

        let cli = parse(&["synth", "tiny", "t", "e", "--defaults", "paper"]);
        assert!(!cli.tiny_defaults("tiny"));
        assert!(Cli::try_parse_from(["train", "d", "s", "t", "e", "--defaults", "huge"]).is_err());
    }

    #[test]
    fn rl_runs_dgpo_unless_told_and_one_algorithm_only() {
        use train::rl::Algo;
        let algos = |args: &[&str]| {
            let base = ["synth", "tiny", "tiny-teacher", "e"];
            rl_algorithms(&parse(&[&base[..], args].concat()))
        };
        assert_eq!(algos(&["--phase", "rl"]).unwrap(), vec![Algo::Dgpo]);
        assert_eq!(
            algos(&["--phase", "rl", "--algo", "grpo"]).unwrap(),
            vec![Algo::Grpo]
        );
        assert_eq!(
            algos(&[]).unwrap(),
            vec![Algo::Ppo, Algo::Grpo, Algo::Dgpo],
            "the demo compares all three"
        );
        assert_eq!(
            algos(&["--algos", "dgpo, ppo"]).unwrap(),
            vec![Algo::Dgpo, Algo::Ppo]
        );
        let e = algos(&["--phase", "rl", "--algos", "ppo,dgpo"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("one algorithm") && e.contains("2"), "{e}");
        assert!(algos(&["--algos", "a2c"]).is_err());
    }

    #[test]
    fn kd_defaults_are_the_same_for_phase_kd_and_phase_all() {
        let schedule = |args: &[&str]| {
            let cli = parse(args);
            let s =
                kd_config(&cli, train_config(&cli).unwrap(), cli.tiny_defaults("tiny")).schedule;
            (s.total_steps, s.lr)
        };
        for phase in ["kd", "all"] {
            assert_eq!(
                schedule(&["synth", "tiny", "tiny-teacher", "e", "--phase", phase]),
                (2400, 2e-3),
                "--phase {phase} on the tiny preset"
            );
            assert_eq!(
                schedule(&["synth", "tiny", "t", "e", "--phase", phase, "--steps", "50"]),
                (50, 2e-3),
                "an explicit --steps wins"
            );
            // The general defaults given explicitly are honoured too (they were once taken
            // for "not given" because the flags compared their value to the default).
            assert_eq!(
                schedule(&[
                    "synth", "tiny", "t", "e", "--phase", phase, "--steps", "100", "--lr", "1e-4"
                ]),
                (100, 1e-4),
                "an explicit --steps 100 --lr 1e-4 wins"
            );
            assert_eq!(
                schedule(&[
                    "synth",
                    "tiny",
                    "t",
                    "e",
                    "--phase",
                    phase,
                    "--defaults",
                    "paper"
                ]),
                (100, 1e-4),
                "--defaults paper keeps the general defaults"
            );
        }
    }
}
