//! `edge`: run compact search agents on a device.
//!
//! Subcommands: `ask` (one question, steps printed as they happen), and the index, eval and
//! serve commands.

mod ask;
mod eval;
mod index;
mod serve;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Compact Search-R1 agents on laptops and small devices.
#[derive(Parser)]
#[command(name = "edge", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ask one question: the agent thinks, searches the corpus and answers.
    Ask(ask::AskArgs),
    /// Serve the agent, the retriever and the model over HTTP (loopback by default).
    Serve(serve::ServeArgs),
    /// Build, import, inspect and search disk indexes.
    Index(index::IndexArgs),
    /// Evaluate models on a QA dataset: EM/F1 and ARCap, as JSON, a table and a chart.
    Eval(eval::EvalArgs),
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DGPO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> Result<()> {
    init_tracing();
    let cli = Cli::parse();
    match cli.command {
        Command::Ask(args) => ask::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Index(args) => index::run(args),
        Command::Eval(args) => eval::run(args),
    }
}
