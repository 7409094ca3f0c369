//! `train`: cold-start knowledge distillation, then DGPO, for compact search agents.
//!
//! Usage: `train <data> <student> <teacher> <exp> [--phase kd|rl|all]`. The training engine is
//! being built (see the project's issues); this binary already validates its arguments.

use anyhow::{Result, bail};
use clap::Parser;

/// Train a compact search agent with DGPO.
#[derive(Parser, Debug)]
#[command(name = "train", version, about)]
struct Args {
    /// Dataset name under $DATA_ROOT (e.g. `synth`, `nq_hotpotqa`).
    data: String,
    /// Student model: HF folder, preset name or HF-cache id.
    student: String,
    /// Teacher model: HF folder, GGUF file, preset name or HF-cache id.
    teacher: String,
    /// Experiment name (folder under $EXP_ROOT).
    exp: String,
    /// Which phase to run.
    #[arg(long, default_value = "all")]
    phase: String,
}

fn main() -> Result<()> {
    let args = Args::parse();
    bail!(
        "training is not implemented in this build yet (asked: data={} student={} teacher={} exp={} phase={})",
        args.data,
        args.student,
        args.teacher,
        args.exp,
        args.phase
    )
}
