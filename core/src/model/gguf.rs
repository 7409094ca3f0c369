//! Loading GGUF files (llama.cpp's format): metadata → [`DecoderConfig`], tensors → weights.
//!
//! Quantised matrices stay quantised (candle's GGML kernels multiply them directly); norms and
//! biases are read as f32. Every tensor's shape is checked against the metadata before use, and
//! the file's length against the tensor table, so a truncated or inconsistent file is refused
//! with the tensor and the file named instead of failing somewhere inside a matmul.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device};

use super::decoder::{
    Arch, Block, Decoder, DecoderConfig, Embedding, Linear, Ops, RopeStyle, Weights,
};
use crate::chat::ChatTemplate;
use crate::tokenizer::Tokenizer;
use crate::tokenizer::gguf::tokenizer_from_gguf;
use crate::{Error, Result};

/// An opened GGUF file: parsed header and metadata, tensors not yet read.
pub struct GgufFile {
    path: std::path::PathBuf,
    content: Content,
    reader: BufReader<File>,
}

fn tensor_bytes(dtype: GgmlDType, elems: usize) -> u64 {
    (elems / dtype.block_size() * dtype.type_size()) as u64
}

impl GgufFile {
    /// Open and parse the header; checks that the file holds every tensor's bytes.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader)
            .map_err(|e| Error::format(path, format!("not a valid GGUF file: {e}")))?;
        for (name, info) in &content.tensor_infos {
            let end = content.tensor_data_offset
                + info.offset
                + tensor_bytes(info.ggml_dtype, info.shape.elem_count());
            if end > len {
                return Err(Error::format(
                    path,
                    format!(
                        "truncated: tensor {name} ends at byte {end} but the file has {len} bytes"
                    ),
                ));
            }
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            content,
            reader,
        })
    }

    /// All metadata.
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    /// The tokenizer and chat template a backend serves this file with. The tokenizer is
    /// rebuilt from the metadata, or read from `tokenizer_json` when given (the metadata still
    /// names BOS/EOS and the template). Every end-of-generation id (EOS, EOT, EOM and the
    /// known end-of-turn control tokens) stops generation, because chat models end their
    /// turn with one of those rather than with EOS.
    pub fn chat_tokenizer(
        &self,
        tokenizer_json: Option<&Path>,
    ) -> Result<(Tokenizer, Option<ChatTemplate>)> {
        let path = self.path.as_path();
        let meta = tokenizer_from_gguf(self.metadata()).map_err(|e| e.in_file(path))?;
        let mut eos: Vec<u32> = meta
            .eos_id
            .into_iter()
            .chain(meta.eot_ids.iter().copied())
            .collect();
        eos.sort_unstable();
        eos.dedup();
        let inner = match tokenizer_json {
            Some(p) => Tokenizer::from_file(p)?,
            None => meta.tokenizer,
        };
        let id_text = |id: Option<u32>| id.and_then(|i| inner.id_to_token(i)).unwrap_or_default();
        let template = match &meta.chat_template {
            Some(src) => Some(
                ChatTemplate::new(src, &id_text(meta.bos_id), &id_text(meta.eos_id))
                    .map_err(|e| e.in_file(path))?,
            ),
            None => None,
        };
        Ok((
            Tokenizer::new(inner, eos, meta.bos_id, meta.add_bos),
            template,
        ))
    }

    /// Whether a tensor is present.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn get(&self, key: &str) -> Result<&Value> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| Error::format(&self.path, format!("missing metadata key {key}")))
    }

    /// A required unsigned integer key.
    pub fn u32(&self, key: &str) -> Result<u32> {
        let v = self.get(key)?;
        v.to_u32()
            .or_else(|_| v.to_u64().map(|v| v as u32))
            .map_err(|e| Error::format(&self.path, format!("metadata key {key}: {e}")))
    }

    /// A required float key.
    pub fn f32(&self, key: &str) -> Result<f32> {
        self.get(key)?
            .to_f32()
            .map_err(|e| Error::format(&self.path, format!("metadata key {key}: {e}")))
    }

    /// A required string key.
    pub fn string(&self, key: &str) -> Result<&str> {
        self.get(key)?
            .to_string()
            .map(|s| s.as_str())
            .map_err(|e| Error::format(&self.path, format!("metadata key {key}: {e}")))
    }

    /// Read a tensor and check its (row-major, candle-order) shape.
    pub fn tensor(&mut self, name: &str, shape: &[usize], device: &Device) -> Result<QTensor> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| Error::format(&self.path, format!("missing tensor {name}")))?;
        if info.shape.dims() != shape {
            return Err(Error::format(
                &self.path,
                format!(
                    "tensor {name} has shape {:?}, expected {shape:?}",
                    info.shape.dims()
                ),
            ));
        }
        self.content
            .tensor(&mut self.reader, name, device)
            .map_err(|e| Error::format(&self.path, format!("cannot read tensor {name}: {e}")))
    }

    /// The decoder configuration described by the metadata.
    pub fn decoder_config(&self) -> Result<DecoderConfig> {
        let arch_name = self.string("general.architecture")?;
        let arch = match arch_name {
            "qwen2" => Arch::Qwen2,
            "llama" => Arch::Llama,
            other => {
                return Err(Error::format(
                    &self.path,
                    format!(
                        "unsupported architecture {other:?}: dgpo runs \"qwen2\" and \"llama\""
                    ),
                ));
            }
        };
        let a = arch.name();
        let embd = self
            .content
            .tensor_infos
            .get("token_embd.weight")
            .ok_or_else(|| Error::format(&self.path, "missing tensor token_embd.weight"))?;
        let dims = embd.shape.dims();
        if dims.len() != 2 {
            return Err(Error::format(
                &self.path,
                format!("token_embd.weight has shape {dims:?}"),
            ));
        }
        let hidden = self.u32(&format!("{a}.embedding_length"))? as usize;
        let heads = self.u32(&format!("{a}.attention.head_count"))? as usize;
        let kv = match self.u32(&format!("{a}.attention.head_count_kv")) {
            Ok(v) => v as usize,
            Err(_) => heads,
        };
        let head_dim = match self.u32(&format!("{a}.attention.key_length")) {
            Ok(v) => v as usize,
            Err(_) => hidden / heads.max(1),
        };
        let rope_theta = self.f32(&format!("{a}.rope.freq_base")).unwrap_or(10_000.0) as f64;
        let cfg = DecoderConfig {
            arch,
            vocab_size: dims[0],
            hidden_size: hidden,
            intermediate_size: self.u32(&format!("{a}.feed_forward_length"))? as usize,
            num_layers: self.u32(&format!("{a}.block_count"))? as usize,
            num_heads: heads,
            num_kv_heads: kv,
            head_dim,
            max_position: self.u32(&format!("{a}.context_length"))? as usize,
            rope_theta,
            rms_norm_eps: self.f32(&format!("{a}.attention.layer_norm_rms_epsilon"))? as f64,
            tie_embeddings: !self.has_tensor("output.weight"),
            attention_bias: self.has_tensor("blk.0.attn_q.bias"),
            // llama.cpp's converter permutes Llama's Q/K rows for adjacent-pair rotation;
            // Qwen2 keeps HF's half rotation (LLAMA_ROPE_TYPE_NEOX).
            rope_style: match arch {
                Arch::Llama => RopeStyle::Interleaved,
                Arch::Qwen2 => RopeStyle::Half,
            },
            rope_scaling: None,
        };
        cfg.validate().map_err(|e| e.in_file(&self.path))?;
        Ok(cfg)
    }

    /// Load the whole decoder. `max_context` caps the rotary tables (and so memory) below the
    /// model's trained context when given.
    pub fn load_decoder(&mut self, device: &Device, max_context: Option<usize>) -> Result<Decoder> {
        let mut cfg = self.decoder_config()?;
        if let Some(m) = max_context {
            cfg.max_position = cfg.max_position.min(m);
        }
        let (h, i, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
        let (nh, nkv) = (cfg.num_heads, cfg.num_kv_heads);
        let dense = |q: QTensor| -> Result<candle_core::Tensor> {
            Ok(q.dequantize(device)?.to_dtype(DType::F32)?)
        };
        let embed = Arc::new(self.tensor("token_embd.weight", &[cfg.vocab_size, h], device)?);
        let mut blocks = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let mut lin = |name: &str, out: usize, inp: usize, bias: bool| -> Result<Linear> {
                let w = self.tensor(&format!("blk.{l}.{name}.weight"), &[out, inp], device)?;
                let b = if bias {
                    Some(dense(self.tensor(
                        &format!("blk.{l}.{name}.bias"),
                        &[out],
                        device,
                    )?)?)
                } else {
                    None
                };
                Ok(Linear::Quant {
                    w: QMatMul::from_qtensor(w)?,
                    b,
                })
            };
            let bias = cfg.attention_bias;
            let q = lin("attn_q", nh * hd, h, bias)?;
            let k = lin("attn_k", nkv * hd, h, bias)?;
            let v = lin("attn_v", nkv * hd, h, bias)?;
            let o = lin("attn_output", h, nh * hd, false)?;
            let gate = lin("ffn_gate", i, h, false)?;
            let up = lin("ffn_up", i, h, false)?;
            let down = lin("ffn_down", h, i, false)?;
            let attn_norm =
                dense(self.tensor(&format!("blk.{l}.attn_norm.weight"), &[h], device)?)?;
            let ffn_norm =
                dense(self.tensor(&format!("blk.{l}.ffn_norm.weight"), &[h], device)?)?;
            blocks.push(Block {
                attn_norm,
                q,
                k,
                v,
                o,
                ffn_norm,
                gate,
                up,
                down,
            });
        }
        let norm = dense(self.tensor("output_norm.weight", &[h], device)?)?;
        let lm_head = if cfg.tie_embeddings {
            Linear::Quant {
                w: QMatMul::from_arc(embed.clone())?,
                b: None,
            }
        } else {
            let w = self.tensor("output.weight", &[cfg.vocab_size, h], device)?;
            Linear::Quant {
                w: QMatMul::from_qtensor(w)?,
                b: None,
            }
        };
        let rope_freqs = if self.has_tensor("rope_freqs.weight") {
            let t = dense(self.tensor("rope_freqs.weight", &[hd / 2], device)?)?;
            Some(t.to_vec1::<f32>()?)
        } else {
            None
        };
        let embed = match embed.dtype() {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                Embedding::Dense(embed.dequantize(device)?.to_dtype(DType::F32)?)
            }
            _ => Embedding::Quant(embed),
        };
        let w = Weights {
            embed,
            blocks,
            norm,
            lm_head,
            rope_freqs,
        };
        Decoder::new(cfg, w, Ops::Fused, device).map_err(|e| e.in_file(&self.path))
    }
}
