//! Building a synthetic dataset folder on first use, each step cached.
//!
//! `<data_root>/<name>/` receives, in order, and each only when absent:
//! `corpus.jsonl`, `train.jsonl`, `test.jsonl` (the world), `tokenizer.json` (BPE on the corpus
//! and the training prompts) and `trajectories.jsonl` (oracle rollouts of the training
//! questions through core's agent loop over BM25 on the corpus, one token-level
//! [`Rollout`] per line). Every file is written to a temporary name and renamed, so an
//! interrupted build resumes at the first missing file.

use std::path::{Path, PathBuf};

use dgpo_core::agent::{AgentConfig, Rollout};
use dgpo_core::corpus::load_jsonl;
use dgpo_core::protocol::user_prompt;
use dgpo_core::retrieve::MemoryRetriever;
use dgpo_core::{Error, Result};

use super::oracle::{oracle_rollouts, oracle_turns};
use super::world::{World, WorldConfig, write_lines};
use super::{SPECIAL_TOKENS, train_bpe};

/// What to build.
#[derive(Debug, Clone)]
pub struct PrepareConfig {
    /// The world.
    pub world: WorldConfig,
    /// BPE vocabulary size (an upper bound: merges stop when the texts have no more pairs).
    /// Large enough that every name of the world is one token: copying a name from the
    /// question into a search is then copying one or two tokens, which a tiny model learns in
    /// a few hundred updates; at 1024 names were three to five pieces and a 2M-parameter
    /// teacher had not learnt to copy them after 300 updates (test EM 0.01).
    pub vocab_size: usize,
    /// Agent settings of the oracle runs (Search-R1 defaults; no chat template: the synthetic
    /// tokenizer has none).
    pub agent: AgentConfig,
}

impl Default for PrepareConfig {
    fn default() -> Self {
        PrepareConfig {
            world: WorldConfig::default(),
            vocab_size: 4096,
            agent: AgentConfig {
                chat_template: false,
                ..Default::default()
            },
        }
    }
}

/// Environment variable naming a JSON file with a [`WorldConfig`] that replaces the default
/// world of `synth` (experiments with other world sizes; give each its own `$DATA_ROOT`).
pub const WORLD_ENV: &str = "TRAIN_WORLD";

impl PrepareConfig {
    /// The settings for the dataset folder `dir`: the world of the file named by
    /// `$TRAIN_WORLD` when it is set (a folder built from another world is then refused by
    /// [`prepare`]), else the world recorded in `dir/world.json` by an earlier build, else the
    /// default world.
    pub fn for_folder(dir: &Path) -> Result<PrepareConfig> {
        let mut cfg = PrepareConfig::default();
        let (p, from_env) = match std::env::var_os(WORLD_ENV) {
            Some(p) => (PathBuf::from(p), true),
            None => (dir.join(WORLD_FILE), false),
        };
        if from_env || p.exists() {
            let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
            cfg.world = serde_json::from_str(&text)
                .map_err(|e| Error::format(&p, format!("not a world configuration: {e}")))?;
        }
        Ok(cfg)
    }
}

/// The world's settings, written beside it.
pub const WORLD_FILE: &str = "world.json";

/// The files of a prepared dataset folder.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The folder.
    pub dir: PathBuf,
    /// Steps that were built by this call (the others were cached), by file name.
    pub built: Vec<&'static str>,
}

impl Prepared {
    /// `corpus.jsonl`.
    pub fn corpus(&self) -> PathBuf {
        self.dir.join("corpus.jsonl")
    }
    /// `tokenizer.json`.
    pub fn tokenizer(&self) -> PathBuf {
        self.dir.join("tokenizer.json")
    }
    /// `trajectories.jsonl`.
    pub fn trajectories(&self) -> PathBuf {
        self.dir.join("trajectories.jsonl")
    }
}

/// The synthetic tokenizer as core's tokenizer, `<|im_end|>` ending generation.
pub fn load_tokenizer(path: &Path) -> Result<dgpo_core::tokenizer::Tokenizer> {
    let inner = dgpo_core::tokenizer::Tokenizer::from_file(path)?;
    let end = inner
        .token_to_id(SPECIAL_TOKENS[2])
        .ok_or_else(|| Error::format(path, format!("no {} token", SPECIAL_TOKENS[2])))?;
    let eot = inner.token_to_id(SPECIAL_TOKENS[0]);
    let mut eos = vec![end];
    eos.extend(eot);
    Ok(dgpo_core::tokenizer::Tokenizer::new(
        inner, eos, None, false,
    ))
}

/// One line of `trajectories.jsonl`: a rollout's token ids and mask (sampling log-probs are
/// not stored: they are NaN on observation tokens, which JSON cannot hold).
#[derive(serde::Serialize, serde::Deserialize)]
struct TrajectoryRow {
    prompt_ids: Vec<u32>,
    response_ids: Vec<u32>,
    response_mask: Vec<u8>,
}

/// Write rollouts in the `trajectories.jsonl` format (ids and masks; log-probs are dropped),
/// atomically.
pub fn write_rollouts(path: &Path, rollouts: &[Rollout]) -> Result<()> {
    let lines: Vec<String> = rollouts
        .iter()
        .map(|r| {
            let row = TrajectoryRow {
                prompt_ids: r.prompt_ids.clone(),
                response_ids: r.response_ids.clone(),
                response_mask: r.response_mask.clone(),
            };
            serde_json::to_string(&row).expect("rows serialise")
        })
        .collect();
    write_lines(path, &lines)
}

/// Read `trajectories.jsonl` (log-probs come back as NaN).
pub fn read_rollouts(path: &Path) -> Result<Vec<Rollout>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let r: TrajectoryRow =
                serde_json::from_str(l).map_err(|e| Error::line(path, i + 1, format!("{e}")))?;
            if r.response_ids.len() != r.response_mask.len() {
                return Err(Error::line(
                    path,
                    i + 1,
                    "response_ids and response_mask differ in length",
                ));
            }
            Ok(Rollout {
                logprobs: vec![f32::NAN; r.response_ids.len()],
                prompt_ids: r.prompt_ids,
                response_ids: r.response_ids,
                response_mask: r.response_mask,
            })
        })
        .collect()
}

/// Build (or reuse) the dataset folder `dir`.
pub fn prepare(dir: &Path, cfg: &PrepareConfig) -> Result<Prepared> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut built = Vec::new();
    let world_files = ["corpus.jsonl", "train.jsonl", "test.jsonl"];
    // The world is cheap and deterministic: regenerate it in memory whenever a later step
    // needs it, write it only when a file is missing.
    let world = World::generate(&cfg.world)?;
    // The world's settings sit beside it, so a folder from other settings is refused instead
    // of silently mixed with this world's questions.
    let wp = dir.join(WORLD_FILE);
    let spec = serde_json::to_string_pretty(&cfg.world).expect("world configs serialise");
    if let Ok(old) = std::fs::read_to_string(&wp)
        && old.trim_end() != spec
    {
        return Err(Error::format(
            &wp,
            "this dataset folder was built from another world configuration ($TRAIN_WORLD); give this world its own $DATA_ROOT or remove the folder",
        ));
    }
    if world_files.iter().any(|f| !dir.join(f).exists()) {
        tracing::info!(dir = %dir.display(), "writing the synthetic world");
        world.write(dir)?;
        built.extend(world_files);
    }
    if !wp.exists() {
        write_lines(&wp, &[spec])?;
    }
    let tp = dir.join("tokenizer.json");
    if !tp.exists() {
        tracing::info!(path = %tp.display(), "training the BPE tokenizer");
        let passages = load_jsonl(&dir.join("corpus.jsonl"))?;
        let texts: Vec<String> = passages
            .iter()
            .map(|p| p.contents())
            .chain(world.train.iter().map(|q| user_prompt(&q.question)))
            // The agent's own turns too, so that "<think> I need to search for" is a few
            // tokens rather than a spelling exercise for a tiny model.
            .chain(world.train.iter().flat_map(oracle_turns))
            .collect();
        train_bpe(&texts, cfg.vocab_size, &tp)?;
        built.push("tokenizer.json");
    }
    let rp = dir.join("trajectories.jsonl");
    if !rp.exists() {
        tracing::info!(path = %rp.display(), n = world.train.len(), "running the oracle");
        let tok = load_tokenizer(&tp)?;
        let retriever = MemoryRetriever::new(load_jsonl(&dir.join("corpus.jsonl"))?);
        let rollouts = oracle_rollouts(&tok, &retriever, &world.train, &cfg.agent)?;
        write_rollouts(&rp, &rollouts)?;
        built.push("trajectories.jsonl");
    }
    Ok(Prepared {
        dir: dir.to_path_buf(),
        built,
    })
}
