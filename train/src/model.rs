//! Trainable Qwen2/Llama models: core's [`Decoder`] in its differentiable mode over a `VarMap`.
//!
//! Why no second implementation: `dgpo_core::model::decoder` already has [`Ops::Differentiable`]
//! (slow rms_norm, softmax and rope with a backward pass, explicit causal + padding mask, no KV
//! cache when none is passed), so training and inference share one forward pass and parity
//! between them is a property of the weights. This module adds what only training needs:
//! weights as `Var`s, right-padded batches, per-token log-probs, an optional value head (critic),
//! and saving an HF folder atomically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::backprop::GradStore;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use dgpo_core::model::decoder::DecoderConfig;
pub use dgpo_core::model::hf::config_json;
use dgpo_core::model::hf::dtype_name;
use dgpo_core::model::{Decoder, Ops, Placement, hf};
use dgpo_core::{Error, Result};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Name of the value head's weight, (1, hidden): the same names as transformers'
/// `*ForTokenClassification` with `num_labels = 1` (veRL's critic), so a critic folder loads there.
pub const VALUE_HEAD_WEIGHT: &str = "score.weight";
/// Name of the value head's bias, (1).
pub const VALUE_HEAD_BIAS: &str = "score.bias";

/// Files copied from the source folder into every saved folder when present (the tokenizer and
/// chat template travel with the weights so a checkpoint is a complete model).
const SIDE_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
];

/// How to load or create a trainable model.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    /// Dtype of the weights and activations (f32 by default; bf16 for large models; f64 for
    /// gradient checks).
    pub dtype: DType,
    /// Device (CPU by default; CUDA with the `cuda` feature).
    pub device: Device,
    /// Add a value head (critic). Loaded from the folder when it has one, else initialised.
    pub value_head: bool,
    /// Seed for any freshly initialised weights.
    pub seed: u64,
}

impl ModelOptions {
    /// Options for a model on `placement` (no value head, seed 0).
    pub fn on(placement: &Placement) -> ModelOptions {
        ModelOptions {
            dtype: placement.dtype,
            device: placement.device.clone(),
            ..Default::default()
        }
    }
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            dtype: DType::F32,
            device: Device::Cpu,
            value_head: false,
            seed: 0,
        }
    }
}

/// A right-padded batch of token sequences.
///
/// Position `j` of the per-token outputs ([`TrainModel::token_logprobs`], [`Batch::target_mask`])
/// is the prediction of token `j + 1` from tokens `0..=j`, so they have `t − 1` columns.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Token ids, (b, t) u32, padded on the right.
    pub ids: Tensor,
    /// 1 for real tokens, 0 for padding, (b, t) f32.
    pub attention: Tensor,
    /// 1 where the predicted token is a real token that the loss learns (not padding, not a
    /// prompt or observation token), (b, t − 1) f32.
    pub target_mask: Tensor,
    /// Real length of each sequence.
    pub lens: Vec<usize>,
    /// The positions the loss learns (where `target_mask` is 1), in row-major order, as flat
    /// indices `i·t + j` into the batch's `b·t` positions: position `j` of sequence `i`
    /// predicts its token `j + 1`. The rows of [`TrainModel::target_logits`].
    pub target_rows: Vec<u32>,
    /// The token each of `target_rows` predicts.
    pub target_ids: Vec<u32>,
}

impl Batch {
    /// Pad `seqs` on the right with `pad`. `learn[i][k]` says whether token `k` of sequence `i`
    /// is a target (learnt); `None` learns every token after the first.
    pub fn new(
        seqs: &[Vec<u32>],
        learn: Option<&[Vec<bool>]>,
        pad: u32,
        device: &Device,
    ) -> Result<Batch> {
        if seqs.is_empty() {
            return Err(Error::invalid("empty batch"));
        }
        let t = seqs.iter().map(Vec::len).max().unwrap_or(0);
        if t < 2 {
            return Err(Error::invalid(
                "every batch needs a sequence of at least 2 tokens",
            ));
        }
        if let Some(l) = learn {
            if l.len() != seqs.len() {
                return Err(Error::invalid(
                    "learn mask count differs from the sequence count",
                ));
            }
            for (i, (s, m)) in seqs.iter().zip(l).enumerate() {
                if s.len() != m.len() {
                    return Err(Error::invalid(format!(
                        "sequence {i}: {} tokens but {} mask entries",
                        s.len(),
                        m.len()
                    )));
                }
            }
        }
        let b = seqs.len();
        let mut ids = vec![pad; b * t];
        let mut att = vec![0f32; b * t];
        let mut tgt = vec![0f32; b * (t - 1)];
        let (mut target_rows, mut target_ids) = (Vec::new(), Vec::new());
        for (i, s) in seqs.iter().enumerate() {
            for (k, &id) in s.iter().enumerate() {
                ids[i * t + k] = id;
                att[i * t + k] = 1.0;
                if k >= 1 && learn.is_none_or(|l| l[i][k]) {
                    tgt[i * (t - 1) + k - 1] = 1.0;
                    target_rows.push((i * t + k - 1) as u32);
                    target_ids.push(id);
                }
            }
        }
        Ok(Batch {
            ids: Tensor::from_vec(ids, (b, t), device)?,
            attention: Tensor::from_vec(att, (b, t), device)?,
            target_mask: Tensor::from_vec(tgt, (b, t - 1), device)?,
            lens: seqs.iter().map(Vec::len).collect(),
            target_rows,
            target_ids,
        })
    }

    /// Number of learnt target tokens.
    pub fn target_count(&self) -> Result<f64> {
        crate::loss::scalar(&self.target_mask.sum_all()?)
    }

    /// Tokens in the batch, padding excluded.
    pub fn token_count(&self) -> usize {
        self.lens.iter().sum()
    }

    /// [`Batch::target_ids`] as a (n,) u32 tensor on `device`.
    pub fn target_ids_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::new(self.target_ids.as_slice(), device)?)
    }

    /// Split per-target values (in [`Batch::target_rows`] order) into one vector per sequence
    /// of `lens[i] − 1` positions, with `fill` at the positions no loss learns.
    pub fn scatter_targets(&self, values: &[f32], fill: f32) -> Result<Vec<Vec<f32>>> {
        if values.len() != self.target_rows.len() {
            return Err(Error::invalid(format!(
                "{} values for {} learnt positions",
                values.len(),
                self.target_rows.len()
            )));
        }
        let t = self.ids.dim(1)?;
        let mut out: Vec<Vec<f32>> = self
            .lens
            .iter()
            .map(|&n| vec![fill; n.saturating_sub(1)])
            .collect();
        for (&r, &v) in self.target_rows.iter().zip(values) {
            let (i, j) = (r as usize / t, r as usize % t);
            out[i][j] = v;
        }
        Ok(out)
    }
}

/// A trainable decoder: every weight is a [`Var`] of a [`VarMap`].
pub struct TrainModel {
    cfg: DecoderConfig,
    varmap: VarMap,
    decoder: Decoder,
    value_head: Option<(Var, Var)>,
    /// config.json as read (or generated), rewritten with the saved dtype.
    config_json: serde_json::Value,
    /// Side files (tokenizer etc.) by file name.
    side_files: BTreeMap<String, Vec<u8>>,
    dtype: DType,
    device: Device,
    /// [`TrainModel::set_row_chunk`]'s override of [`TrainModel::row_chunk`].
    row_chunk: Option<usize>,
}

/// HF tensor names a decoder of this shape needs, in a fixed order.
pub fn expected_names(cfg: &DecoderConfig) -> Vec<String> {
    let mut n = vec!["model.embed_tokens.weight".to_string()];
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}");
        n.push(format!("{p}.input_layernorm.weight"));
        for x in ["q", "k", "v"] {
            n.push(format!("{p}.self_attn.{x}_proj.weight"));
            if cfg.attention_bias {
                n.push(format!("{p}.self_attn.{x}_proj.bias"));
            }
        }
        n.push(format!("{p}.self_attn.o_proj.weight"));
        n.push(format!("{p}.post_attention_layernorm.weight"));
        for x in ["gate", "up", "down"] {
            n.push(format!("{p}.mlp.{x}_proj.weight"));
        }
    }
    n.push("model.norm.weight".into());
    if !cfg.tie_embeddings {
        n.push("lm_head.weight".into());
    }
    n
}

fn shape_of(cfg: &DecoderConfig, name: &str) -> Vec<usize> {
    let (h, i, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let (q, kv) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
    let last = name.rsplit('.').nth(1).unwrap_or("");
    let bias = name.ends_with(".bias");
    match (last, bias) {
        ("embed_tokens", _) | ("lm_head", _) => vec![cfg.vocab_size, h],
        ("q_proj", false) => vec![q, h],
        ("q_proj", true) => vec![q],
        ("k_proj" | "v_proj", false) => vec![kv, h],
        ("k_proj" | "v_proj", true) => vec![kv],
        ("o_proj", _) => vec![h, q],
        ("gate_proj" | "up_proj", _) => vec![i, h],
        ("down_proj", _) => vec![h, i],
        _ => vec![h], // norms
    }
}

/// Gaussian samples (Box–Muller) from a seeded generator: candle's CPU `randn` cannot be seeded.
fn normal(rng: &mut StdRng, n: usize, std: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let a = 2.0 * std::f64::consts::PI * u2;
        out.push((r * a.cos()) as f32);
        if out.len() < n {
            out.push((r * a.sin()) as f32);
        }
    }
    out
}

fn candle_err(path: &Path, what: &str, e: candle_core::Error) -> Error {
    Error::format(path, format!("{what}: {e}"))
}

impl TrainModel {
    /// Load an HF folder (config.json + safetensors + tokenizer.json) as trainable vars.
    pub fn load(dir: &Path, opts: &ModelOptions) -> Result<TrainModel> {
        let cfg_path = dir.join("config.json");
        if !cfg_path.exists() {
            return Err(Error::format(
                dir,
                "not a model folder: config.json is missing",
            ));
        }
        let cfg = hf::read_config(&cfg_path)?;
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let config_json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(&cfg_path, format!("not valid JSON: {e}")))?;
        let files = hf::safetensors_files(dir)?;
        // SAFETY: read-only mapping; the tensors are copied into vars before it is dropped.
        let st = unsafe { MmapedSafetensors::multi(&files) }
            .map_err(|e| candle_err(&files[0], "cannot read safetensors", e))?;
        let mut tensors = BTreeMap::new();
        for name in expected_names(&cfg) {
            let t = st
                .load(&name, &opts.device)
                .map_err(|e| candle_err(dir, &format!("tensor {name}"), e))?;
            let want = shape_of(&cfg, &name);
            if t.dims() != want.as_slice() {
                return Err(Error::format(
                    dir,
                    format!(
                        "tensor {name} has shape {:?}, config.json implies {want:?}",
                        t.dims()
                    ),
                ));
            }
            tensors.insert(name, t);
        }
        let have_head = st.get(VALUE_HEAD_WEIGHT).is_ok();
        if opts.value_head && have_head {
            for n in [VALUE_HEAD_WEIGHT, VALUE_HEAD_BIAS] {
                let t = st
                    .load(n, &opts.device)
                    .map_err(|e| candle_err(dir, &format!("tensor {n}"), e))?;
                tensors.insert(n.to_string(), t);
            }
        }
        let mut side_files = BTreeMap::new();
        for f in SIDE_FILES {
            let p = dir.join(f);
            if p.exists() {
                side_files.insert(
                    f.to_string(),
                    std::fs::read(&p).map_err(|e| Error::io(&p, e))?,
                );
            }
        }
        Self::from_tensors(cfg, config_json, side_files, tensors, opts)
    }

    /// A freshly initialised model (normal(0, 0.02) matrices, unit norms, zero biases) from a
    /// seeded generator, with `tokenizer_json` as its tokenizer.
    pub fn new_random(
        cfg: DecoderConfig,
        config_json: serde_json::Value,
        tokenizer_json: Vec<u8>,
        opts: &ModelOptions,
    ) -> Result<TrainModel> {
        cfg.validate()?;
        let mut rng = StdRng::seed_from_u64(opts.seed);
        let mut tensors = BTreeMap::new();
        for name in expected_names(&cfg) {
            let shape = shape_of(&cfg, &name);
            let n: usize = shape.iter().product();
            let data = if name.ends_with("norm.weight") {
                vec![1f32; n]
            } else if name.ends_with(".bias") {
                vec![0f32; n]
            } else {
                normal(&mut rng, n, 0.02)
            };
            tensors.insert(name, Tensor::from_vec(data, shape, &opts.device)?);
        }
        let mut side_files = BTreeMap::new();
        side_files.insert("tokenizer.json".to_string(), tokenizer_json);
        Self::from_tensors(cfg, config_json, side_files, tensors, opts)
    }

    fn from_tensors(
        cfg: DecoderConfig,
        config_json: serde_json::Value,
        side_files: BTreeMap<String, Vec<u8>>,
        tensors: BTreeMap<String, Tensor>,
        opts: &ModelOptions,
    ) -> Result<TrainModel> {
        let varmap = VarMap::new();
        {
            let mut data = varmap.data().lock().expect("fresh varmap");
            for (name, t) in &tensors {
                data.insert(name.clone(), Var::from_tensor(&t.to_dtype(opts.dtype)?)?);
            }
        }
        let value_head = if opts.value_head {
            let mut data = varmap.data().lock().expect("fresh varmap");
            if !data.contains_key(VALUE_HEAD_WEIGHT) {
                // Small random weights as transformers initialises `score` (not zeros: a zero head
                // gives the trunk no gradient on the first critic step).
                let mut rng = StdRng::seed_from_u64(opts.seed ^ 0x5eed_c71c);
                let w = normal(&mut rng, cfg.hidden_size, 0.02);
                let w = Tensor::from_vec(w, (1, cfg.hidden_size), &opts.device)?
                    .to_dtype(opts.dtype)?;
                let b = Tensor::zeros(1, opts.dtype, &opts.device)?;
                data.insert(VALUE_HEAD_WEIGHT.into(), Var::from_tensor(&w)?);
                data.insert(VALUE_HEAD_BIAS.into(), Var::from_tensor(&b)?);
            }
            Some((
                data[VALUE_HEAD_WEIGHT].clone(),
                data[VALUE_HEAD_BIAS].clone(),
            ))
        } else {
            None
        };
        let vb = VarBuilder::from_varmap(&varmap, opts.dtype, &opts.device);
        let w = hf::weights_from_var_builder(&cfg, &vb)?;
        let decoder = Decoder::new(cfg.clone(), w, Ops::Differentiable, &opts.device)?;
        Ok(TrainModel {
            cfg,
            varmap,
            decoder,
            value_head,
            config_json,
            side_files,
            dtype: opts.dtype,
            device: opts.device.clone(),
            row_chunk: None,
        })
    }

    /// The decoder configuration.
    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    /// The underlying decoder (shares the vars: optimiser updates are seen at once).
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// Query rows per block of the training pass's causal attention (0: unblocked); see
    /// [`Decoder::set_attention_block`]. Tests compare the two forms.
    pub fn set_attention_block(&mut self, rows: usize) {
        self.decoder.set_attention_block(rows);
    }

    /// Set the learnt rows per chunk of [`TrainModel::row_chunk`] (`None`: sized by
    /// [`ROW_CHUNK_BYTES`]). Tests chunk the tiny models' few rows with it.
    pub fn set_row_chunk(&mut self, rows: Option<usize>) {
        self.row_chunk = rows;
    }

    /// Vocabulary size of the output layer.
    pub fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    /// Weight dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether the model has a value head.
    pub fn has_value_head(&self) -> bool {
        self.value_head.is_some()
    }

    /// The tokenizer.json bytes, if the model has one.
    pub fn tokenizer_json(&self) -> Option<&[u8]> {
        self.side_files.get("tokenizer.json").map(Vec::as_slice)
    }

    /// Every trainable var with its HF name, sorted by name (a fixed order for optimiser state
    /// and checkpoints).
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let data = self.varmap.data().lock().expect("varmap lock");
        let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Overwrite the named vars with `values` (same shapes); unknown names are an error.
    pub fn set_weights(&self, values: &BTreeMap<String, Tensor>) -> Result<()> {
        let data = self.varmap.data().lock().expect("varmap lock");
        for (name, t) in values {
            let var = data
                .get(name)
                .ok_or_else(|| Error::invalid(format!("no weight named {name}")))?;
            var.set(&t.to_dtype(self.dtype)?.to_device(&self.device)?)?;
        }
        Ok(())
    }

    /// Hidden states after the final norm, (b, t, hidden).
    pub fn hidden(&self, batch: &Batch) -> Result<Tensor> {
        self.decoder
            .forward_hidden(&batch.ids, None, Some(&batch.attention))
    }

    /// [`TrainModel::hidden`] without gradient tracking, for scoring passes (old log-probs,
    /// reference, teacher, values). Every block's output is detached, so its activations (the
    /// attention scores are (b, heads, t, t)) are freed once the next block has read it: the
    /// memory of one block, as in inference, instead of a graph of all of them that lives until
    /// the result is detached. Same operations, same numbers.
    pub fn hidden_no_grad(&self, batch: &Batch) -> Result<Tensor> {
        let d = &self.decoder;
        let mut x = d.embed(&batch.ids)?.detach();
        let mask = d.fresh_mask(&batch.ids, Some(&batch.attention), x.dtype())?;
        for l in 0..d.config().num_layers {
            x = d.block(l, &x, mask.as_ref())?.detach();
        }
        Ok(d.final_norm(&x)?.detach())
    }

    /// [`TrainModel::target_logits`] without gradient tracking (see
    /// [`TrainModel::hidden_no_grad`]).
    pub fn target_logits_no_grad(&self, batch: &Batch) -> Result<Tensor> {
        let h = self.hidden_no_grad(batch)?;
        Ok(self.target_logits_of(batch, &h)?.detach())
    }

    /// The hidden states at the batch's learnt rows, (n, hidden), without gradient tracking:
    /// what scoring passes project onto the vocabulary one row chunk at a time
    /// ([`TrainModel::row_logits`], [`TrainModel::row_chunk`]).
    pub fn target_hidden_no_grad(&self, batch: &Batch) -> Result<Tensor> {
        if batch.target_rows.is_empty() {
            return Err(Error::invalid("the batch has no learnt position"));
        }
        let h = self.hidden_no_grad(batch)?;
        Ok(self.target_hidden(batch, &h)?.detach())
    }

    /// Logits (m, vocab) of hidden rows (m, hidden): the head alone.
    pub fn row_logits(&self, rows: &Tensor) -> Result<Tensor> {
        self.decoder.logits(rows)
    }

    /// The scalar `loss_of(hidden)` of a batch, where `hidden` is [`TrainModel::hidden`]'s
    /// output, and the gradients of every var it depends on.
    ///
    /// With `checkpoint` (gradient checkpointing), the forward pass keeps only each block's
    /// input (b, t, hidden); the backward pass recomputes one block at a time from the top and
    /// pulls the gradient through it (the vector-Jacobian product of `sum(block(x) · g)`).
    /// Memory then holds one block's activations instead of all of them: on agent trajectories
    /// of thousands of tokens the attention scores of every layer are what runs out first
    /// (SmolLM2-135M, four 2-3k-token rollouts: over 24 GB without, see README). It costs one
    /// more forward pass of the blocks. The gradients are those of the plain backward pass (the
    /// same operations in the same order; equal to 1e-12 in f64 in the tests).
    pub fn loss_and_grads(
        &self,
        batch: &Batch,
        checkpoint: bool,
        loss_of: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<(Tensor, GradStore)> {
        if !checkpoint {
            let loss = loss_of(&self.hidden(batch)?)?;
            let grads = detached(loss.backward()?);
            return Ok((loss.detach(), grads));
        }
        let d = &self.decoder;
        let embedded = d.embed(&batch.ids)?;
        let mask = d.fresh_mask(&batch.ids, Some(&batch.attention), embedded.dtype())?;
        let layers = d.config().num_layers;
        // Each block's input, detached: the block's own activations are dropped at once.
        let mut inputs = Vec::with_capacity(layers);
        let mut x = embedded.detach();
        for l in 0..layers {
            let y = d.block(l, &x, mask.as_ref())?.detach();
            inputs.push(x);
            x = y;
        }
        // The top: final norm, head and loss, with the last block's output as a leaf.
        let top = Var::from_tensor(&x)?;
        drop(x);
        let loss = loss_of(&d.final_norm(top.as_tensor())?)?;
        let mut grads = detached(loss.backward()?);
        let mut g = grads
            .remove(top.as_tensor())
            .ok_or_else(|| Error::invalid("the loss does not depend on the hidden states"))?;
        for l in (0..layers).rev() {
            let input = Var::from_tensor(&inputs[l])?;
            inputs.truncate(l);
            let y = d.block(l, input.as_tensor(), mask.as_ref())?;
            let mut gs = detached((y * &g)?.sum_all()?.backward()?);
            g = gs.remove(input.as_tensor()).ok_or_else(|| {
                Error::invalid(format!("block {l}'s output does not depend on its input"))
            })?;
            grads.extend(gs)?;
        }
        grads.extend(detached((embedded * &g)?.sum_all()?.backward()?))?;
        Ok((loss.detach(), grads))
    }

    /// Learnt rows whose logits [`TrainModel::loss_and_grads_by_rows`] computes at once: as
    /// many as fit [`ROW_CHUNK_BYTES`] of (rows × vocabulary) logits in f32 (1,365 rows for
    /// SmolLM2's 49,152 tokens, 441 for Qwen2.5's 151,936; every row of the tiny presets).
    pub fn row_chunk(&self) -> usize {
        let row_bytes = self.vocab_size() * self.dtype.size_in_bytes().max(4);
        self.row_chunk.unwrap_or(ROW_CHUNK_BYTES / row_bytes).max(1)
    }

    /// The gradients of a loss that is a mean over the batch's learnt rows
    /// ([`Batch::target_rows`]), computing the logits [`TrainModel::row_chunk`] rows at a time.
    ///
    /// `loss_of_rows(logits, rows)` gets the (m, vocab) logits of the learnt rows `rows` (a
    /// range of `0..n`) and returns the loss of those rows as a mean over them; each chunk's
    /// loss is weighted by m / n here, so the chunks add up to the batch's mean. With one
    /// chunk (`n ≤ row_chunk`) this is [`TrainModel::loss_and_grads`] with `target_logits_of`
    /// in front, operation for operation. With several, the head and the loss run forward and
    /// backward one chunk at a time against a detached copy of the rows' hidden states, and
    /// the rows' gradient is then pulled through the body as `sum(rows · g)`, with or without
    /// `checkpoint`: the (rows × vocabulary) logits and the loss's copies of them exist for one
    /// chunk only. On agent trajectories of real models they are the largest activation
    /// (Qwen2.5's 151,936 tokens make 0.6 MB of logits per learnt token in f32, and the loss
    /// and its backward pass keep several). The gradients are the same up to the order of the
    /// head's sums (1e-12 in f64 in the tests).
    pub fn loss_and_grads_by_rows(
        &self,
        batch: &Batch,
        checkpoint: bool,
        mut loss_of_rows: impl FnMut(&Tensor, std::ops::Range<usize>) -> Result<Tensor>,
    ) -> Result<GradStore> {
        let n = batch.target_rows.len();
        if n == 0 {
            return Err(Error::invalid("the batch has no learnt position"));
        }
        let chunk = self.row_chunk();
        if n <= chunk {
            let (_, grads) = self.loss_and_grads(batch, checkpoint, |h| {
                loss_of_rows(&self.target_logits_of(batch, h)?, 0..n)
            })?;
            return Ok(grads);
        }
        let mut head = GradStore::default();
        let (_, mut grads) = self.loss_and_grads(batch, checkpoint, |h| {
            let rows = self.target_hidden(batch, h)?;
            let mut g_rows = Vec::with_capacity(n.div_ceil(chunk));
            for start in (0..n).step_by(chunk) {
                let m = chunk.min(n - start);
                let x = Var::from_tensor(&rows.narrow(0, start, m)?.detach())?;
                let mean = loss_of_rows(&self.decoder.logits(x.as_tensor())?, start..start + m)?;
                let mut gs = detached((mean * (m as f64 / n as f64))?.backward()?);
                g_rows.push(gs.remove(x.as_tensor()).ok_or_else(|| {
                    Error::invalid("the loss does not depend on the learnt rows")
                })?);
                head.extend(gs)?;
            }
            // The surrogate whose gradient through the body is the loss's.
            Ok((rows * Tensor::cat(&g_rows, 0)?)?.sum_all()?)
        })?;
        grads.extend(head)?;
        Ok(grads)
    }

    /// Logits at every position, (b, t, vocab).
    pub fn logits(&self, batch: &Batch) -> Result<Tensor> {
        let h = self.hidden(batch)?;
        self.decoder.logits(&h)
    }

    /// Logits at the batch's learnt positions only ([`Batch::target_rows`]), (n, vocab).
    ///
    /// Every loss reads the logits of learnt positions alone: prompt, `<information>`,
    /// invalid-action and padding positions are masked out. Projecting only these rows onto
    /// the vocabulary skips the head and the losses' vocabulary-wide softmax elsewhere, which
    /// on agent trajectories (two thirds observations and prompt) is most of the positions.
    pub fn target_logits(&self, batch: &Batch) -> Result<Tensor> {
        if batch.target_rows.is_empty() {
            return Err(Error::invalid("the batch has no learnt position"));
        }
        self.target_logits_of(batch, &self.hidden(batch)?)
    }

    /// [`TrainModel::target_logits`] from the batch's hidden states (b, t, hidden), as
    /// [`TrainModel::hidden`] or the `loss_of` argument of [`TrainModel::loss_and_grads`]
    /// gives them.
    pub fn target_logits_of(&self, batch: &Batch, hidden: &Tensor) -> Result<Tensor> {
        if batch.target_rows.is_empty() {
            return Err(Error::invalid("the batch has no learnt position"));
        }
        self.decoder.logits(&self.target_hidden(batch, hidden)?)
    }

    /// The hidden states (b, t, hidden) at the batch's learnt positions, (n, hidden).
    fn target_hidden(&self, batch: &Batch, hidden: &Tensor) -> Result<Tensor> {
        let (b, t, d) = hidden.dims3()?;
        let rows = Tensor::new(batch.target_rows.as_slice(), &self.device)?;
        Ok(hidden.reshape((b * t, d))?.index_select(&rows, 0)?)
    }

    /// Values of the critic head at every position, (b, t), from hidden states.
    pub fn values(&self, hidden: &Tensor) -> Result<Tensor> {
        let (w, b) = self.value_head.as_ref().ok_or_else(|| {
            Error::invalid("this model has no value head (load it with value_head)")
        })?;
        let v = hidden
            .broadcast_matmul(&w.as_tensor().t()?)?
            .broadcast_add(b.as_tensor())?;
        Ok(v.squeeze(D::Minus1)?)
    }

    /// Per-token log-probs of the batch's own next tokens, (b, t − 1), in f32.
    pub fn token_logprobs(&self, batch: &Batch) -> Result<Tensor> {
        let logits = self.logits(batch)?;
        token_logprobs(&logits, &batch.ids)
    }

    /// Save as an HF folder at `dir` (model.safetensors with HF names, config.json,
    /// tokenizer.json and the other side files), atomically: everything is written to a
    /// temporary sibling folder that then replaces `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.save_as(dir, self.dtype)
    }

    /// [`TrainModel::save`] with the weights converted to `dtype`.
    pub fn save_as(&self, dir: &Path, dtype: DType) -> Result<()> {
        let tmp = sibling(dir, "tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        self.write_folder(&tmp, dtype)?;
        replace_dir(&tmp, dir)
    }

    /// Write the HF files into an existing folder (not atomic on its own).
    pub fn write_folder(&self, dir: &Path, dtype: DType) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (name, var) in self.named_vars() {
            let t = var.as_tensor().to_dtype(dtype)?.to_device(&Device::Cpu)?;
            tensors.push((name, t));
        }
        let path = dir.join("model.safetensors");
        // transformers refuses safetensors whose metadata lacks `format` = pt.
        let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(
            tensors.iter().map(|(n, t)| (n.as_str(), t)),
            Some(meta),
            &path,
        )
        .map_err(|e| Error::format(&path, format!("cannot write safetensors: {e}")))?;
        let mut cfg = self.config_json.clone();
        cfg["torch_dtype"] = dtype_name(dtype).into();
        let p = dir.join("config.json");
        let text = serde_json::to_string_pretty(&cfg).expect("json values serialise");
        std::fs::write(&p, text).map_err(|e| Error::io(&p, e))?;
        for (name, bytes) in &self.side_files {
            let p = dir.join(name);
            std::fs::write(&p, bytes).map_err(|e| Error::io(&p, e))?;
        }
        Ok(())
    }
}

/// Log-probs of `ids[:, 1:]` under `logits[:, :-1]`, (b, t − 1), computed in f32 (f64 for f64
/// models).
pub fn token_logprobs(logits: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (_, t, _) = logits.dims3()?;
    let wide = crate::loss::wide(logits)?;
    if dgpo_core::model::fused::supported(&wide) {
        // One pass over the logits each way (the composed ops below make a dozen).
        let tgt = ids.narrow(1, 1, t - 1)?.contiguous()?;
        return dgpo_core::model::fused::target_logprobs(&wide, &tgt);
    }
    let lp =
        candle_nn::ops::log_softmax(&crate::loss::wide(&logits.narrow(1, 0, t - 1)?)?, D::Minus1)?;
    let tgt = ids.narrow(1, 1, t - 1)?.contiguous()?.unsqueeze(2)?;
    Ok(lp.gather(&tgt, 2)?.squeeze(2)?)
}

/// Log-probs of `targets` (n,) under row logits (n, vocab): (n,), in f32 (f64 for f64
/// models). The row form of [`token_logprobs`], for [`TrainModel::target_logits`].
pub fn row_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let wide = crate::loss::wide(logits)?;
    let tgt = targets.to_dtype(DType::U32)?.contiguous()?.unsqueeze(1)?;
    if dgpo_core::model::fused::supported(&wide) {
        // Each row is a batch of one position.
        let lp = dgpo_core::model::fused::target_logprobs(&wide.unsqueeze(1)?, &tgt)?;
        return Ok(lp.squeeze(1)?);
    }
    let lp = candle_nn::ops::log_softmax(&wide, D::Minus1)?;
    Ok(lp.gather(&tgt, 1)?.squeeze(1)?)
}

/// `store` with every gradient detached from the graph that computed it.
///
/// candle detaches the gradients of inner nodes as its backward pass goes, but a weight's
/// gradient is left as the op that made it (say `grad · xᵀ`), which holds that op's inputs:
/// forward activations. Kept as they are, the gradients of a micro-batch hold its whole
/// forward pass (every block's attention scores) until the optimiser has read them, and a
/// checkpointed block's recomputed activations would outlive its turn (measured: +1 GB per
/// block of SmolLM2-135M on four 2.7k-token rollouts).
pub fn detached(store: GradStore) -> GradStore {
    let mut out = GradStore::default();
    for id in store.get_ids() {
        if let Some(g) = store.get_id(*id) {
            out.insert_id(*id, g.detach());
        }
    }
    out
}

/// Logits memory that [`TrainModel::row_chunk`] sizes a chunk of learnt rows to: 256 MiB.
pub const ROW_CHUNK_BYTES: usize = 256 << 20;

/// `<dir>.<tag>-<pid>` next to `dir`.
pub(crate) fn sibling(dir: &Path, tag: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.with_file_name(format!(".{name}.{tag}-{}", std::process::id()))
}

/// Make the fully written folder `tmp` appear at `dir`, replacing any old one. A reader sees
/// the old folder or the new one, never a half-written one (a crash between the two renames
/// leaves the old folder under its backup name, and the new one complete at `dir`... or `tmp`).
pub(crate) fn replace_dir(tmp: &Path, dir: &Path) -> Result<()> {
    if let Some(parent) = dir.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let old = sibling(dir, "old");
    if dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(tmp, dir).map_err(|e| Error::io(dir, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}
