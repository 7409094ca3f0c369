//! The Llama-family decoder (Llama, SmolLM2, Qwen2/2.5) in candle, one file.
//!
//! Why our own and not `candle_transformers::models::{qwen2, llama, quantized_*}`:
//! - the agent needs logits at *every* position (scoring, parity tests, training) and a KV cache
//!   that can be rewound (stop strings, prefix cache); candle-transformers returns only the last
//!   position and has no rewind;
//! - training needs gradients through every op: candle's fused rms_norm/softmax/rope have no
//!   backward pass, so [`Ops::Differentiable`] swaps in the slow, differentiable versions;
//! - one code path serves dense (safetensors) and quantised (GGUF) weights, so parity between the
//!   two formats is a property of the weights, not of two implementations.
//!
//! Grouped-query attention is computed without materialising repeated K/V: the query heads that
//! share a KV head are folded into the row dimension of one matmul. A training pass over a fresh
//! sequence computes causal attention in blocks of query rows, each against the keys up to its
//! last row only ([`Decoder::set_attention_block`]): the masked upper triangle is never computed.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{D, DType, Device, Module, Tensor};

use crate::{Error, Result};

/// Supported architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Llama 2/3, SmolLM2 (no attention bias by default).
    Llama,
    /// Qwen2 / Qwen2.5 (bias on q, k, v).
    Qwen2,
}

impl Arch {
    /// The name used by GGUF's `general.architecture` and HF's `model_type`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }
}

/// How rotary embeddings pair up dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Rotate the two halves of the head (HF `rotate_half`, llama.cpp "NEOX"): Qwen2 everywhere,
    /// Llama in HF safetensors.
    Half,
    /// Rotate adjacent pairs (llama.cpp "NORM"): Llama in GGUF, whose Q/K rows the converter
    /// permuted into this layout.
    Interleaved,
}

/// Llama-3 style frequency scaling (`rope_scaling.rope_type = "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Scaling {
    /// Scaling factor for low frequencies.
    pub factor: f64,
    /// Low-frequency boundary factor.
    pub low_freq_factor: f64,
    /// High-frequency boundary factor.
    pub high_freq_factor: f64,
    /// Context length the model was pretrained with.
    pub original_max_position: usize,
}

/// Shape and hyper-parameters of a decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    /// Architecture.
    pub arch: Arch,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Number of transformer blocks.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (GQA).
    pub num_kv_heads: usize,
    /// Per-head dimension.
    pub head_dim: usize,
    /// Longest supported context.
    pub max_position: usize,
    /// RoPE base.
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Output head shares the embedding matrix.
    pub tie_embeddings: bool,
    /// Bias on the q/k/v projections.
    pub attention_bias: bool,
    /// Rotary pairing.
    pub rope_style: RopeStyle,
    /// Optional Llama-3 rope scaling.
    pub rope_scaling: Option<Llama3Scaling>,
}

impl DecoderConfig {
    /// Check internal consistency (heads divide, sizes non-zero).
    pub fn validate(&self) -> Result<()> {
        let c = self;
        if c.vocab_size == 0 || c.hidden_size == 0 || c.num_layers == 0 || c.num_heads == 0 {
            return Err(Error::invalid("model config has a zero dimension"));
        }
        if c.num_kv_heads == 0 || !c.num_heads.is_multiple_of(c.num_kv_heads) {
            return Err(Error::invalid(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                c.num_heads, c.num_kv_heads
            )));
        }
        if !c.head_dim.is_multiple_of(2) {
            return Err(Error::invalid(format!(
                "head_dim {} must be even for RoPE",
                c.head_dim
            )));
        }
        Ok(())
    }
}

/// Which implementation of the normalisation/softmax/rope ops to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ops {
    /// candle's fused kernels: fast, no backward pass (inference).
    Fused,
    /// Composed elementary ops: slower, differentiable (training).
    Differentiable,
}

/// A linear layer over dense or quantised weights, `y = x Wᵀ (+ b)`.
#[derive(Debug, Clone)]
pub enum Linear {
    /// Dense f32 (or f16/bf16) weight of shape (out, in).
    Dense(candle_nn::Linear),
    /// GGML-quantised weight.
    Quant {
        /// The weight.
        w: QMatMul,
        /// Optional bias.
        b: Option<Tensor>,
    },
}

/// From this many rows on, a quantised matmul dequantises the weight and runs a dense GEMM.
///
/// candle's quantised CPU matmul computes one row-by-row dot product at a time (good for the
/// single-row decode step, which is bound by reading the weights); a prompt of hundreds of rows
/// is compute-bound, and a blocked f32 GEMM over the weight dequantised once beats it by far.
pub const PREFILL_GEMM_MIN_ROWS: usize = 32;

impl Linear {
    /// Apply the layer.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (w, b) = match self {
            Linear::Dense(l) => return Ok(l.forward(x)?),
            Linear::Quant { w, b } => (w, b),
        };
        let y = match w {
            QMatMul::QTensor(q) if x.elem_count() / x.dim(D::Minus1)? >= PREFILL_GEMM_MIN_ROWS => {
                let wd = q.dequantize(x.device())?;
                x.broadcast_matmul(&wd.t()?)?
            }
            QMatMul::QTensor(q)
                if super::quant_kernels::handles(q.dtype())
                    && x.device().is_cpu()
                    && x.dtype() == DType::F32 =>
            {
                // Formats candle computes with scalar code (Q5_0 is most of Qwen2.5-0.5B's
                // Q4_K_M file): our vectorised kernel, see `quant_kernels`.
                let mut dims = x.dims().to_vec();
                let k = dims.pop().unwrap_or(1);
                let rows = x.elem_count() / k.max(1);
                let xs = x.flatten_all()?.to_vec1::<f32>()?;
                let y = super::quant_kernels::matmul(q, &xs, rows)?;
                dims.push(q.shape().dims()[0]);
                Tensor::from_vec(y, dims, x.device())?
            }
            w => w.forward(x)?,
        };
        Ok(match b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// Token embedding table, dense or quantised (GGUF tables are looked up without dequantising).
#[derive(Debug, Clone)]
pub enum Embedding {
    /// Dense (vocab, hidden).
    Dense(Tensor),
    /// Quantised (vocab, hidden).
    Quant(Arc<QTensor>),
}

impl Embedding {
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        Ok(match self {
            Embedding::Dense(w) => {
                let h = w.dim(1)?;
                w.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, h))?
            }
            Embedding::Quant(q) => q.embedding(ids)?.to_dtype(DType::F32)?,
        })
    }
}

/// Weights of one transformer block.
#[derive(Debug, Clone)]
pub struct Block {
    /// Pre-attention RMSNorm weight.
    pub attn_norm: Tensor,
    /// Query projection.
    pub q: Linear,
    /// Key projection.
    pub k: Linear,
    /// Value projection.
    pub v: Linear,
    /// Output projection.
    pub o: Linear,
    /// Pre-MLP RMSNorm weight.
    pub ffn_norm: Tensor,
    /// Gate projection.
    pub gate: Linear,
    /// Up projection.
    pub up: Linear,
    /// Down projection.
    pub down: Linear,
}

/// All weights of a decoder.
#[derive(Debug, Clone)]
pub struct Weights {
    /// Token embedding.
    pub embed: Embedding,
    /// Blocks in order.
    pub blocks: Vec<Block>,
    /// Final RMSNorm weight.
    pub norm: Tensor,
    /// Output projection to the vocabulary.
    pub lm_head: Linear,
    /// Optional per-frequency divisors (GGUF `rope_freqs.weight`, Llama-3 scaling baked in).
    pub rope_freqs: Option<Vec<f32>>,
}

/// Key/value cache of one sequence. Buffers grow geometrically and can be rewound, so stop-string
/// trimming and prefix reuse never copy the prefix.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no token is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forget everything after the first `len` tokens.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Append (1, kv_heads, t, head_dim) keys and values for `layer`; return views of the whole
    /// cached sequence.
    fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        if self.layers.len() <= layer {
            self.layers.resize(layer + 1, None);
        }
        let (b, h, t, d) = k.dims4()?;
        let need = self.len + t;
        let cap = self.layers[layer]
            .as_ref()
            .map(|(k, _)| k.dim(2))
            .transpose()?
            .unwrap_or(0);
        if need > cap {
            let new_cap = (need.max(cap * 2)).next_multiple_of(64);
            let nk = Tensor::zeros((b, h, new_cap, d), k.dtype(), k.device())?;
            let nv = Tensor::zeros((b, h, new_cap, d), v.dtype(), v.device())?;
            if let Some((ok, ov)) = &self.layers[layer]
                && self.len > 0
            {
                nk.slice_set(&ok.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                nv.slice_set(&ov.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
            }
            self.layers[layer] = Some((nk, nv));
        }
        let (bk, bv) = self.layers[layer].as_ref().expect("allocated above");
        bk.slice_set(&k.contiguous()?, 2, self.len)?;
        bv.slice_set(&v.contiguous()?, 2, self.len)?;
        Ok((bk.narrow(2, 0, need)?, bv.narrow(2, 0, need)?))
    }

    fn advance(&mut self, t: usize) {
        self.len += t;
    }
}

/// A decoder: configuration, weights and rotary tables.
#[derive(Debug, Clone)]
pub struct Decoder {
    cfg: DecoderConfig,
    w: Weights,
    cos: Tensor,
    sin: Tensor,
    ops: Ops,
    device: Device,
    attention_block: usize,
}

/// Query rows per block of the training pass's causal attention (see
/// [`Decoder::set_attention_block`]).
pub const ATTENTION_BLOCK_ROWS: usize = 128;

fn inv_freqs(cfg: &DecoderConfig, divisors: Option<&[f32]>) -> Vec<f64> {
    let d = cfg.head_dim;
    let mut f: Vec<f64> = (0..d / 2)
        .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / d as f64))
        .collect();
    if let Some(s) = cfg.rope_scaling {
        // Llama 3.1 scaling, as in HF `_compute_llama3_parameters`.
        let low_wavelen = s.original_max_position as f64 / s.low_freq_factor;
        let high_wavelen = s.original_max_position as f64 / s.high_freq_factor;
        for x in f.iter_mut() {
            let wavelen = 2.0 * std::f64::consts::PI / *x;
            if wavelen > low_wavelen {
                *x /= s.factor;
            } else if wavelen >= high_wavelen {
                let smooth = (s.original_max_position as f64 / wavelen - s.low_freq_factor)
                    / (s.high_freq_factor - s.low_freq_factor);
                *x = (1.0 - smooth) * *x / s.factor + smooth * *x;
            }
        }
    }
    if let Some(div) = divisors {
        for (x, d) in f.iter_mut().zip(div) {
            *x /= *d as f64;
        }
    }
    f
}

impl Decoder {
    /// Assemble a decoder from weights.
    pub fn new(cfg: DecoderConfig, w: Weights, ops: Ops, device: &Device) -> Result<Self> {
        cfg.validate()?;
        let inv = inv_freqs(&cfg, w.rope_freqs.as_deref());
        let n = cfg.max_position;
        let half = cfg.head_dim / 2;
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for p in 0..n {
            for f in &inv {
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        let cos = Tensor::from_vec(cos, (n, half), device)?;
        let sin = Tensor::from_vec(sin, (n, half), device)?;
        Ok(Decoder {
            cfg,
            w,
            cos,
            sin,
            ops,
            device: device.clone(),
            attention_block: ATTENTION_BLOCK_ROWS,
        })
    }

    /// Query rows per block of causal attention in a differentiable (training) pass over a
    /// fresh sequence; 0 computes the whole score matrix at once.
    ///
    /// Why blocks: under the causal mask a query attends only to keys at or before it, so the
    /// upper triangle of the (t, t) score matrix is all −∞ and its softmax weights exactly 0.
    /// Block `i` (queries `[s, e)`) multiplies only keys `[0, e)`: with blocks of 128 rows a
    /// 520-token trajectory computes 60 % of the scores, softmax and weighted sum, and the
    /// backward pass as much. The result is the full form's up to float rounding (sums over
    /// fewer exact zeros, split differently into SIMD lanes).
    pub fn set_attention_block(&mut self, rows: usize) {
        self.attention_block = rows;
    }

    /// The query block of [`Decoder::set_attention_block`].
    pub fn attention_block(&self) -> usize {
        self.attention_block
    }

    /// The configuration.
    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    /// The weights.
    pub fn weights(&self) -> &Weights {
        &self.w
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Float type of the activations (that of the final norm's weight; quantised GGUF weights
    /// compute in f32).
    pub fn dtype(&self) -> DType {
        self.w.norm.dtype()
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let eps = self.cfg.rms_norm_eps as f32;
        Ok(match self.ops {
            Ops::Fused => candle_nn::ops::rms_norm(&x.contiguous()?, w, eps)?,
            Ops::Differentiable => candle_nn::ops::rms_norm_slow(x, w, eps)?,
        })
    }

    fn rope(&self, x: &Tensor, offset: usize, t: usize) -> Result<Tensor> {
        // The tables are f32; bf16/f64 activations (training) need them in their own dtype.
        let cos = self.cos.narrow(0, offset, t)?.to_dtype(x.dtype())?;
        let sin = self.sin.narrow(0, offset, t)?.to_dtype(x.dtype())?;
        use candle_nn::rotary_emb as re;
        Ok(match (self.ops, self.cfg.rope_style) {
            (Ops::Fused, RopeStyle::Half) => re::rope(x, &cos, &sin)?,
            (Ops::Fused, RopeStyle::Interleaved) => re::rope_i(x, &cos, &sin)?,
            (Ops::Differentiable, RopeStyle::Half) => re::rope_slow(x, &cos, &sin)?,
            (Ops::Differentiable, RopeStyle::Interleaved) => re::rope_i_slow(x, &cos, &sin)?,
        })
    }

    fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self.ops {
            Ops::Fused => candle_nn::ops::softmax_last_dim(x)?,
            Ops::Differentiable => candle_nn::ops::softmax(x, D::Minus1)?,
        })
    }

    /// Hidden states after the final norm, (b, t, hidden), for token ids (b, t).
    ///
    /// With a cache (batch 1), the tokens continue the cached sequence and are appended to it;
    /// without one, they are a fresh causal sequence. `key_mask`, if given, is (b, t) with 1
    /// for real tokens and 0 for padding (right-padded batches, no cache).
    pub fn forward_hidden(
        &self,
        ids: &Tensor,
        mut cache: Option<&mut KvCache>,
        key_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let offset = cache.as_ref().map_or(0, |c| c.len());
        if cache.is_some() && b != 1 {
            return Err(Error::invalid("the KV cache supports batch size 1 only"));
        }
        let mut x = self.embed(ids)?;
        let mask = self.mask(b, t, offset, key_mask, x.dtype())?;
        for li in 0..self.w.blocks.len() {
            x = self.block_at(li, &x, mask.as_ref(), offset, cache.as_deref_mut())?;
        }
        if let Some(cache) = cache {
            cache.advance(t);
        }
        self.final_norm(&x)
    }

    /// Token embeddings of ids (b, t): the input of block 0.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.w.embed.forward(ids)
    }

    /// The additive attention mask of a fresh (uncached) sequence of token ids (b, t), in
    /// `dtype`, for [`Decoder::block`]: causal, plus the padding keys of `key_mask` (b, t).
    pub fn fresh_mask(
        &self,
        ids: &Tensor,
        key_mask: Option<&Tensor>,
        dtype: DType,
    ) -> Result<Option<Tensor>> {
        let (b, t) = ids.dims2()?;
        self.mask(b, t, 0, key_mask, dtype)
    }

    /// Block `layer` on the hidden states `x` (b, t, hidden) of a fresh sequence, with the
    /// mask of [`Decoder::fresh_mask`]. [`Decoder::embed`], the blocks in order and
    /// [`Decoder::final_norm`] compute [`Decoder::forward_hidden`]; run one at a time, they let
    /// training recompute a block's activations in the backward pass instead of keeping them
    /// (gradient checkpointing).
    pub fn block(&self, layer: usize, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        if layer >= self.w.blocks.len() {
            return Err(Error::invalid(format!(
                "block {layer} of a model with {} blocks",
                self.w.blocks.len()
            )));
        }
        self.block_at(layer, x, mask, 0, None)
    }

    /// The final RMSNorm, after the last block.
    pub fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        self.rms_norm(x, &self.w.norm)
    }

    /// Additive mask (b or 1, 1, 1, t, offset + t): causal, plus padding keys when given;
    /// `None` for a single cached token without padding (it may see every key).
    fn mask(
        &self,
        b: usize,
        t: usize,
        offset: usize,
        key_mask: Option<&Tensor>,
        dtype: DType,
    ) -> Result<Option<Tensor>> {
        let total = offset + t;
        if total > self.cfg.max_position {
            return Err(Error::invalid(format!(
                "context of {total} tokens exceeds the model's maximum of {}",
                self.cfg.max_position
            )));
        }
        if t <= 1 && key_mask.is_none() {
            return Ok(None);
        }
        let mut m = vec![0f32; t * total];
        for i in 0..t {
            for j in (offset + i + 1)..total {
                m[i * total + j] = f32::NEG_INFINITY;
            }
        }
        let m = Tensor::from_vec(m, (1, 1, 1, t, total), &self.device)?;
        let m = match key_mask {
            Some(km) => {
                let pad = ((km.to_dtype(DType::F32)?.affine(1.0, -1.0)?) * 1e9)?
                    .reshape((b, 1, 1, 1, total))?;
                m.broadcast_add(&pad)?
            }
            None => m,
        };
        // Built in f32; non-f32 activations (training) add it in their own dtype.
        Ok(Some(if m.dtype() != dtype {
            m.to_dtype(dtype)?
        } else {
            m
        }))
    }

    /// Block `li` on `x` (b, t, hidden) at position `offset`, appending to `cache` when given.
    fn block_at(
        &self,
        li: usize,
        x: &Tensor,
        mask: Option<&Tensor>,
        offset: usize,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let c = &self.cfg;
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let scale = 1.0 / (hd as f64).sqrt();
        let blk = &self.w.blocks[li];
        let h = self.rms_norm(x, &blk.attn_norm)?;
        let q = blk
            .q
            .forward(&h)?
            .reshape((b, t, nh, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let k = blk
            .k
            .forward(&h)?
            .reshape((b, t, nkv, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let v = blk
            .v
            .forward(&h)?
            .reshape((b, t, nkv, hd))?
            .transpose(1, 2)?;
        let q = self.rope(&q, offset, t)?;
        let k = self.rope(&k, offset, t)?;
        let (k, v) = match cache {
            Some(cache) => cache.append(li, &k, &v)?,
            None => (k, v.contiguous()?),
        };
        let y = match mask {
            // Training on a fresh sequence: skip the masked upper triangle.
            Some(m)
                if offset == 0
                    && self.ops == Ops::Differentiable
                    && self.attention_block > 0
                    && t > self.attention_block
                    && super::fused::supported(&q) =>
            {
                self.blocked_attention(&q, &k, &v, m, scale)?
            }
            _ => self.full_attention(&q, &k, &v, mask, scale)?,
        };
        let x = (x + blk.o.forward(&y)?)?;
        let h = self.rms_norm(&x, &blk.ffn_norm)?;
        let g = candle_nn::ops::silu(&blk.gate.forward(&h)?)?;
        let u = blk.up.forward(&h)?;
        Ok((x + blk.down.forward(&(g * u)?)?)?)
    }

    /// Self-attention over the whole (t, total) score matrix: `q` is (b, nh, t, hd) after rope,
    /// `k` and `v` (b, nkv, total, hd) with the cached keys first, `mask` the additive
    /// (mb, 1, 1, t, total) mask when there is one. Returns (b, t, nh·hd).
    fn full_attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        scale: f64,
    ) -> Result<Tensor> {
        let (b, nh, t, hd) = q.dims4()?;
        let (nkv, total) = (k.dim(1)?, k.dim(2)?);
        let rep = nh / nkv;
        // Fold the `rep` query heads of each KV head into rows: (b, nkv, rep*t, hd).
        let q = q.reshape((b, nkv, rep * t, hd))?;
        let att = q.matmul(&k.t()?)?;
        let att = match mask {
            // Training: one differentiable pass instead of seven composed ops (see fused).
            Some(m) if self.ops == Ops::Differentiable && super::fused::supported(&att) => {
                let m = m.reshape((m.dim(0)?, t, total))?;
                super::fused::masked_softmax(&att.reshape((b, nh, t, total))?, &m, scale)?
                    .reshape((b, nkv, rep * t, total))?
            }
            Some(m) => self.softmax(
                &(att * scale)?
                    .reshape((b, nkv, rep, t, total))?
                    .broadcast_add(m)?
                    .reshape((b, nkv, rep * t, total))?,
            )?,
            None => self.softmax(&(att * scale)?)?,
        };
        let y = att.matmul(&v.contiguous()?)?; // (b, nkv, rep*t, hd)
        Ok(y.reshape((b, nh, t, hd))?
            .transpose(1, 2)?
            .reshape((b, t, nh * hd))?)
    }

    /// Causal self-attention of a fresh sequence in query blocks (see
    /// [`Decoder::set_attention_block`]). `q` is (b, nh, t, hd) after rope, `k` and `v`
    /// (b, nkv, t, hd) contiguous, `mask` the additive (mb, 1, 1, t, t) causal-and-padding
    /// mask. Returns the heads' outputs as (b, t, nh·hd).
    fn blocked_attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &Tensor,
        scale: f64,
    ) -> Result<Tensor> {
        let (b, nh, t, hd) = q.dims4()?;
        let nkv = k.dim(1)?;
        let rep = nh / nkv;
        let q = q.reshape((b, nkv, rep, t, hd))?;
        let mask = mask.reshape((mask.dim(0)?, t, t))?;
        let mut ys = Vec::with_capacity(t.div_ceil(self.attention_block));
        let mut s = 0;
        while s < t {
            let e = (s + self.attention_block).min(t);
            let len = e - s;
            // The rep query heads of a KV head folded into rows, as in the unblocked form.
            let qb = q
                .narrow(3, s, len)?
                .contiguous()?
                .reshape((b, nkv, rep * len, hd))?;
            let kb = k.narrow(2, 0, e)?.contiguous()?;
            let vb = v.narrow(2, 0, e)?.contiguous()?;
            let mb = mask.narrow(1, s, len)?.narrow(2, 0, e)?.contiguous()?;
            let att = qb.matmul(&kb.t()?)?.reshape((b, nh, len, e))?;
            let p = super::fused::masked_softmax(&att, &mb, scale)?;
            let y = p.reshape((b, nkv, rep * len, e))?.matmul(&vb)?;
            ys.push(y.reshape((b, nh, len, hd))?);
            s = e;
        }
        Ok(Tensor::cat(&ys, 2)?
            .transpose(1, 2)?
            .reshape((b, t, nh * hd))?)
    }

    /// Project hidden states to vocabulary logits.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.w.lm_head.forward(hidden)
    }

    /// Logits at every position, (b, t, vocab).
    pub fn forward_all(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let h = self.forward_hidden(ids, cache, None)?;
        self.logits(&h)
    }

    /// Logits of the last position only, (b, vocab): skips the vocabulary projection of the
    /// other positions, which for a 150k vocabulary dominates prefill otherwise.
    pub fn forward_last(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let h = self.forward_hidden(ids, cache, None)?;
        let t = h.dim(1)?;
        let last = h.narrow(1, t - 1, 1)?;
        Ok(self.logits(&last)?.squeeze(1)?)
    }
}
