//! `train`: cold-start knowledge distillation, then DGPO, for compact search agents.
//!
//! Usage: `train <data> <student> <teacher> <exp> [--phase kd|rl|all]`, and
//! `train export <checkpoint> --out model.gguf [--quant f16|q8_0|q4_k_m]`. This is a thin layer
//! over the `train` library.

use std::path::PathBuf;

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
    /// Which phase to run.
    #[arg(long, default_value = "all")]
    phase: String,
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
            let (Some(data), Some(student), Some(teacher), Some(exp)) =
                (cli.data, cli.student, cli.teacher, cli.exp)
            else {
                bail!(
                    "usage: train <data> <student> <teacher> <exp> [--phase kd|rl|all] (or `train export`)"
                );
            };
            bail!(
                "the training phases are not wired into the CLI yet (asked: data={data} student={student} teacher={teacher} exp={exp} phase={}); the engine is in the `train` library",
                cli.phase
            )
        }
    }
}
