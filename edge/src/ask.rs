//! `edge ask`: one question through the agent loop.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use dgpo_core::agent::{Agent, AgentConfig, AgentEvent};
use dgpo_core::model::{BackendKind, LoadOptions};
use dgpo_core::retrieve::{Retriever, RetrieverSpec};
use dgpo_core::sampling::SamplingParams;
use dgpo_core::trace::StepAction;

/// Arguments of `edge ask`.
#[derive(Args, Debug)]
pub struct AskArgs {
    /// Model: a GGUF file or an HF folder (config.json + safetensors + tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// tokenizer.json to use instead of the model's own.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Corpus in JSONL (wiki-18 `{"id","contents"}` or `{"id","title","text"}` rows), searched
    /// exactly in memory with BM25.
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Disk index directory built by `edge index build` (searched with its recorded embedder).
    #[arg(long, conflicts_with = "corpus")]
    pub index: Option<PathBuf>,
    /// Backend: auto, candle or llama.
    #[arg(long, default_value = "auto")]
    pub backend: String,
    #[command(flatten)]
    pub turns: TurnArgs,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// RNG seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// CPU threads (llama.cpp backend).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print the trace as one JSON object instead of the live view.
    #[arg(long)]
    pub json: bool,
    /// The question.
    pub question: String,
}

/// The agent loop's settings that `ask` and `eval` share (Search-R1's defaults).
#[derive(Args, Debug, Clone)]
pub struct TurnArgs {
    /// Search turns before the final answer-only turn.
    #[arg(long, default_value_t = 4)]
    pub max_turns: usize,
    /// Passages per search.
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    pub topk: usize,
    /// New-token cap per turn.
    #[arg(long, default_value_t = 500, value_parser = at_least_one)]
    pub max_turn_tokens: usize,
    /// Do not wrap prompts in the model's chat template.
    #[arg(long)]
    pub no_chat_template: bool,
}

/// A count flag that must be 1 or more: refused by clap with the flag named, before a model
/// is loaded.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be 1 or more".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

impl TurnArgs {
    /// The agent configuration these flags give; sampling stays greedy unless the caller
    /// sets it.
    pub fn agent_config(&self) -> AgentConfig {
        AgentConfig {
            max_turns: self.max_turns,
            topk: self.topk,
            max_turn_tokens: self.max_turn_tokens,
            chat_template: !self.no_chat_template,
            ..AgentConfig::default()
        }
    }
}

/// Open the retriever named on the command line (a disk index, or a corpus searched in memory)
/// through core's one factory, so `ask` opens retrievers exactly as `serve`, `eval` and libdgpo do.
pub fn open_retriever(
    corpus: Option<&PathBuf>,
    index: Option<&PathBuf>,
) -> Result<Arc<dyn Retriever>> {
    let spec = match (index, corpus) {
        (Some(dir), _) => RetrieverSpec::Index {
            dir: dir.clone(),
            embedder: None,
        },
        (None, Some(p)) => RetrieverSpec::Corpus(p.clone()),
        (None, None) => bail!("no corpus given: pass --corpus corpus.jsonl or --index DIR"),
    };
    let what = match &spec {
        RetrieverSpec::Index { dir, .. } => format!("opening index {}", dir.display()),
        RetrieverSpec::Corpus(p) => format!("loading corpus {}", p.display()),
        RetrieverSpec::Remote(url) => format!("connecting to {url}"),
    };
    dgpo_core::retrieve::open(&spec).context(what)
}

/// Run `edge ask`.
pub fn run(args: AskArgs) -> Result<()> {
    if args.question.trim().is_empty() {
        bail!("the question is empty");
    }
    let opts = LoadOptions {
        tokenizer: args.tokenizer.clone(),
        backend: args.backend.parse::<BackendKind>()?,
        threads: args.threads,
        max_context: None,
        ..Default::default()
    };
    let model = dgpo_core::model::load(&args.model, &opts)?;
    let retriever = open_retriever(args.corpus.as_ref(), args.index.as_ref())?;
    let cfg = AgentConfig {
        sampling: SamplingParams {
            temperature: args.temperature,
            top_p: args.top_p,
            seed: args.seed,
        },
        ..args.turns.agent_config()
    };
    let agent = Agent::new(model.as_ref(), retriever.as_ref(), cfg);
    let live = !args.json;
    let mut out = std::io::stdout().lock();
    let (trace, _) = agent.run_with(
        &args.question,
        &mut |ev| {
            if !live {
                return;
            }
            match ev {
                AgentEvent::Text(t) => {
                    let _ = write!(out, "{t}");
                    let _ = out.flush();
                }
                AgentEvent::Step(step) => {
                    if let StepAction::Search {
                        docs,
                        executed: true,
                        ..
                    } = &step.action
                    {
                        let _ = writeln!(out);
                        for (i, d) in docs.iter().enumerate() {
                            let _ = writeln!(
                                out,
                                "  [doc {}] {} (id {}, score {:.3})",
                                i + 1,
                                d.title,
                                d.id,
                                d.score
                            );
                        }
                    } else {
                        let _ = writeln!(out);
                    }
                }
            }
        },
        &|| false,
    )?;
    if args.json {
        println!("{}", serde_json::to_string(&trace)?);
    } else {
        let t = &trace.timings;
        println!(
            "\nanswer: {}\n({} steps, {} searches, {} prompt + {} generated + {} observation tokens; prefill {:.0} ms, decode {:.0} ms, retrieval {:.0} ms, total {:.0} ms)",
            trace.answer.as_deref().unwrap_or("(none)"),
            trace.steps.len(),
            trace.search_count(),
            trace.prompt_tokens,
            trace.generated_tokens,
            trace.observation_tokens,
            t.prefill_ms,
            t.decode_ms,
            t.retrieval_ms,
            t.total_ms
        );
    }
    Ok(())
}
