//! Atomic, resumable checkpoints and the per-step metrics log.
//!
//! Layout under an experiment folder:
//! ```text
//! <exp>/checkpoints/step-00000040/model/           HF folder (loads in core and transformers)
//! <exp>/checkpoints/step-00000040/optimizer.safetensors   AdamW moments (+ f32 master weights)
//! <exp>/checkpoints/step-00000040/state.json       step, seed, data size, training config
//! <exp>/metrics.jsonl                              one JSON object per optimiser step
//! ```
//! A checkpoint is written into a hidden temporary sibling and renamed into place, so a process
//! killed at any moment leaves only complete checkpoints under `step-*` names.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use dgpo_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::model::{TrainModel, replace_dir, sibling};
use crate::optim::AdamW;

/// What a checkpoint records besides tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimiser updates completed.
    pub step: usize,
    /// Seed of the run (data order).
    pub seed: u64,
    /// Number of training examples (a resume on different data is refused).
    pub data_len: usize,
    /// The training configuration, for the record.
    pub config: serde_json::Value,
}

/// Folder of the checkpoint at `step`.
pub fn checkpoint_dir(exp: &Path, step: usize) -> PathBuf {
    exp.join("checkpoints").join(format!("step-{step:08}"))
}

/// Completed checkpoints, oldest first, as (step, folder).
pub fn list_checkpoints(exp: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let root = exp.join("checkpoints");
    if !root.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(&root).map_err(|e| Error::io(&root, e))? {
        let e = e.map_err(|e| Error::io(&root, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = name.strip_prefix("step-")
            && let Ok(step) = n.parse::<usize>()
            && e.path().join("state.json").exists()
        {
            out.push((step, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Save model, optimiser and state as checkpoint `state.step`, atomically, then delete all but
/// the newest `keep_last` checkpoints (0 keeps all).
pub fn save_checkpoint(
    exp: &Path,
    model: &TrainModel,
    opt: &AdamW,
    state: &TrainState,
    keep_last: usize,
) -> Result<PathBuf> {
    let dir = checkpoint_dir(exp, state.step);
    let tmp = sibling(&dir, "tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    let mdir = tmp.join("model");
    std::fs::create_dir_all(&mdir).map_err(|e| Error::io(&mdir, e))?;
    model.write_folder(&mdir, model.dtype())?;
    let opt_path = tmp.join("optimizer.safetensors");
    let st: Vec<(String, Tensor)> = opt
        .state_tensors()
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    safetensors::serialize_to_file(st.iter().map(|(n, t)| (n.as_str(), t)), None, &opt_path)
        .map_err(|e| Error::format(&opt_path, format!("cannot write: {e}")))?;
    let sp = tmp.join("state.json");
    let text = serde_json::to_string_pretty(state).expect("state serialises");
    std::fs::write(&sp, text).map_err(|e| Error::io(&sp, e))?;
    replace_dir(&tmp, &dir)?;
    if keep_last > 0 {
        let all = list_checkpoints(exp)?;
        if all.len() > keep_last {
            for (_, old) in &all[..all.len() - keep_last] {
                std::fs::remove_dir_all(old).map_err(|e| Error::io(old, e))?;
            }
        }
    }
    tracing::info!(step = state.step, dir = %dir.display(), "checkpoint saved");
    Ok(dir)
}

/// Restore model weights and optimiser state from checkpoint folder `dir`.
pub fn load_checkpoint(dir: &Path, model: &TrainModel, opt: &mut AdamW) -> Result<TrainState> {
    let sp = dir.join("state.json");
    let text = std::fs::read_to_string(&sp).map_err(|e| Error::io(&sp, e))?;
    let state: TrainState =
        serde_json::from_str(&text).map_err(|e| Error::format(&sp, format!("bad state: {e}")))?;
    let mp = dir.join("model").join("model.safetensors");
    let w = candle_core::safetensors::load(&mp, model.device())
        .map_err(|e| Error::format(&mp, format!("cannot read: {e}")))?;
    let names: Vec<String> = model.named_vars().into_iter().map(|(n, _)| n).collect();
    let mut weights = BTreeMap::new();
    for n in names {
        let t = w
            .get(&n)
            .ok_or_else(|| Error::format(&mp, format!("missing tensor {n}")))?;
        weights.insert(n, t.clone());
    }
    model.set_weights(&weights)?;
    let op = dir.join("optimizer.safetensors");
    let o = candle_core::safetensors::load(&op, model.device())
        .map_err(|e| Error::format(&op, format!("cannot read: {e}")))?;
    opt.load_state(o.into_iter().collect(), state.step)
        .map_err(|e| e.in_file(&op))?;
    Ok(state)
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Optimiser updates completed (1-based).
    pub step: usize,
    /// Training loss (mean over the step's micro-batches).
    pub loss: f64,
    /// Forward KL part, when distilling.
    pub kl: Option<f64>,
    /// Cross-entropy part.
    pub ce: Option<f64>,
    /// Learning rate used for this update.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens (padding excluded) per second of wall time.
    pub tokens_per_s: f64,
    /// Learnt target tokens in the step.
    pub target_tokens: f64,
}

/// Appends [`StepMetrics`] to `<exp>/metrics.jsonl`.
pub struct MetricsLog {
    path: PathBuf,
}

impl MetricsLog {
    /// Open the log; lines for steps after `resume_step` (left by a run killed after its last
    /// checkpoint) are dropped so the log matches the resumed run.
    pub fn open(exp: &Path, resume_step: usize) -> Result<MetricsLog> {
        std::fs::create_dir_all(exp).map_err(|e| Error::io(exp, e))?;
        let path = exp.join("metrics.jsonl");
        if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<StepMetrics>(l).is_ok_and(|m| m.step <= resume_step)
                })
                .collect();
            let tmp = path.with_extension("jsonl.tmp");
            let mut body = kept.join("\n");
            if !body.is_empty() {
                body.push('\n');
            }
            std::fs::write(&tmp, body).map_err(|e| Error::io(&tmp, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        }
        Ok(MetricsLog { path })
    }

    /// Append one step.
    pub fn write(&mut self, m: &StepMetrics) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| Error::io(&self.path, e))?;
        let line = serde_json::to_string(m).expect("metrics serialise");
        writeln!(f, "{line}").map_err(|e| Error::io(&self.path, e))
    }

    /// Read every step of a log.
    pub fn read(path: &Path) -> Result<Vec<StepMetrics>> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| Error::line(path, i + 1, format!("{e}")))
            })
            .collect()
    }
}
