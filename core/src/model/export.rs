//! Export an HF model folder to a GGUF file that llama.cpp and candle both load.
//!
//! Tensor names and metadata follow llama.cpp's converter (`convert_hf_to_gguf.py`): HF names map
//! to `token_embd`, `blk.N.attn_q`, …; Llama's Q/K rows are permuted for llama.cpp's
//! adjacent-pair rotation (Qwen2 needs no permutation); the tokenizer (`tokenizer.ggml.*`) and the
//! chat template travel inside the file. The file is written to a temporary name and renamed,
//! so an interrupted export never leaves a half-written model behind.

use std::io::BufWriter;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use super::decoder::{Arch, DecoderConfig};
use crate::{Error, Result};

/// Weight format of the exported 2-D matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quant {
    /// 32-bit floats.
    F32,
    /// 16-bit floats.
    F16,
    /// 8-bit blocks (llama.cpp Q8_0).
    Q8_0,
    /// 4-bit k-quants (Q4_K), with Q6_K for the output head, like llama.cpp's Q4_K_M.
    Q4KM,
}

impl std::str::FromStr for Quant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(Quant::F32),
            "f16" => Ok(Quant::F16),
            "q8_0" => Ok(Quant::Q8_0),
            "q4_k_m" | "q4_k" => Ok(Quant::Q4KM),
            o => Err(Error::invalid(format!(
                "unknown quantisation {o:?} (f32, f16, q8_0, q4_k_m)"
            ))),
        }
    }
}

impl Quant {
    fn dtype(self, name: &str) -> GgmlDType {
        match self {
            Quant::F32 => GgmlDType::F32,
            Quant::F16 => GgmlDType::F16,
            Quant::Q8_0 => GgmlDType::Q8_0,
            Quant::Q4KM
                if name == "output.weight"
                    || name.ends_with("attn_v.weight")
                    || name.ends_with("ffn_down.weight") =>
            {
                GgmlDType::Q6K
            }
            Quant::Q4KM => GgmlDType::Q4K,
        }
    }

    /// llama.cpp's `general.file_type` code.
    fn file_type(self) -> u32 {
        match self {
            Quant::F32 => 0,
            Quant::F16 => 1,
            Quant::Q8_0 => 7,
            Quant::Q4KM => 15,
        }
    }
}

/// Permute Q/K rows from HF's half rotation to llama.cpp's adjacent-pair rotation
/// (the inverse of what the decoder's `RopeStyle::Interleaved` undoes).
fn permute_qk(w: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = w.dims().to_vec();
    let rows = dims[0];
    let rest: usize = dims[1..].iter().product();
    let head = rows / heads;
    Ok(w.reshape((heads, 2, head / 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}

/// The pre-tokenizer name llama.cpp should use for a tokenizer.json, from its split regex.
pub fn detect_pre_tokenizer(tok: &serde_json::Value) -> Result<&'static str> {
    let text = tok
        .get("pre_tokenizer")
        .map(|p| p.to_string())
        .unwrap_or_default();
    if text.contains(r"\\p{N}{1,3}") {
        return Ok("llama-bpe");
    }
    if text.contains(r"[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}|") {
        return Ok("qwen2");
    }
    if text.contains("ByteLevel") {
        return Ok("gpt2");
    }
    Err(Error::Tokenizer(format!(
        "cannot tell which llama.cpp pre-tokenizer matches this tokenizer.json (pre_tokenizer {text})"
    )))
}

/// Export the HF folder `dir` to `out` with the given quantisation.
pub fn export_gguf(dir: &Path, out: &Path, quant: Quant) -> Result<()> {
    let cfg_path = dir.join("config.json");
    let cfg: DecoderConfig = super::hf::read_config(&cfg_path)?;
    let files = super::hf::safetensors_files(dir)?;
    // SAFETY: read-only mapping of files we do not modify.
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }
        .map_err(|e| Error::format(&files[0], format!("cannot read safetensors: {e}")))?;
    let dev = Device::Cpu;
    let get = |name: &str| -> Result<Tensor> {
        st.load(name, &dev)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|e| Error::format(dir, format!("tensor {name}: {e}")))
    };
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (hf, gg, _) in super::import::tensor_map(&cfg) {
        tensors.push((gg, get(&hf)?));
    }
    if cfg.arch == Arch::Llama {
        for (name, t) in tensors.iter_mut() {
            if name.contains("attn_q.") {
                *t = permute_qk(t, cfg.num_heads)?;
            } else if name.contains("attn_k.") {
                *t = permute_qk(t, cfg.num_kv_heads)?;
            }
        }
    }
    let mut qtensors = Vec::with_capacity(tensors.len());
    for (name, t) in &tensors {
        let want = if t.rank() == 2 {
            quant.dtype(name)
        } else {
            GgmlDType::F32
        };
        let last = *t.dims().last().unwrap_or(&0);
        // k-quants need rows that are multiples of 256: fall back like llama.cpp's quantizer
        // (Q4_K -> Q5_0, Q6_K -> Q8_0), then to F16 for rows that fit no block at all.
        let want = match want {
            GgmlDType::Q4K if !last.is_multiple_of(256) => GgmlDType::Q5_0,
            GgmlDType::Q6K if !last.is_multiple_of(256) => GgmlDType::Q8_0,
            d => d,
        };
        let dtype = if last.is_multiple_of(want.block_size()) {
            want
        } else {
            GgmlDType::F16
        };
        qtensors.push((name.clone(), QTensor::quantize(t, dtype)?));
    }

    // Metadata.
    let a = cfg.arch.name();
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.into())),
        (
            "general.name".into(),
            Value::String(
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
        ),
        ("general.file_type".into(), Value::U32(quant.file_type())),
        ("general.quantization_version".into(), Value::U32(2)),
        (
            format!("{a}.block_count"),
            Value::U32(cfg.num_layers as u32),
        ),
        (
            format!("{a}.context_length"),
            Value::U32(cfg.max_position as u32),
        ),
        (
            format!("{a}.embedding_length"),
            Value::U32(cfg.hidden_size as u32),
        ),
        (
            format!("{a}.feed_forward_length"),
            Value::U32(cfg.intermediate_size as u32),
        ),
        (
            format!("{a}.attention.head_count"),
            Value::U32(cfg.num_heads as u32),
        ),
        (
            format!("{a}.attention.head_count_kv"),
            Value::U32(cfg.num_kv_heads as u32),
        ),
        (
            format!("{a}.rope.freq_base"),
            Value::F32(cfg.rope_theta as f32),
        ),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
        (
            format!("{a}.rope.dimension_count"),
            Value::U32(cfg.head_dim as u32),
        ),
        (format!("{a}.vocab_size"), Value::U32(cfg.vocab_size as u32)),
    ];
    if cfg.head_dim * cfg.num_heads != cfg.hidden_size {
        md.push((
            format!("{a}.attention.key_length"),
            Value::U32(cfg.head_dim as u32),
        ));
        md.push((
            format!("{a}.attention.value_length"),
            Value::U32(cfg.head_dim as u32),
        ));
    }
    if cfg.rope_scaling.is_some() {
        return Err(Error::format(
            &cfg_path,
            "exporting rope_scaling (llama3) models is not supported yet",
        ));
    }
    let tok_path = dir.join("tokenizer.json");
    let tok_text = std::fs::read_to_string(&tok_path).map_err(|e| Error::io(&tok_path, e))?;
    let tok_json: serde_json::Value = serde_json::from_str(&tok_text)
        .map_err(|e| Error::format(&tok_path, format!("not valid JSON: {e}")))?;
    let pre = detect_pre_tokenizer(&tok_json).map_err(|e| e.in_file(&tok_path))?;
    let tok = crate::tokenizer::Tokenizer::from_file(&tok_path)?;
    let tc_path = dir.join("tokenizer_config.json");
    let tok_cfg: Option<serde_json::Value> = match std::fs::read_to_string(&tc_path) {
        Ok(t) => Some(
            serde_json::from_str(&t)
                .map_err(|e| Error::format(&tc_path, format!("not valid JSON: {e}")))?,
        ),
        Err(_) => None,
    };
    let (template, bos, eos) = tok_cfg
        .as_ref()
        .and_then(crate::chat::template_from_tokenizer_config)
        .map(|(t, b, e)| (Some(t), b, e))
        .unwrap_or((None, String::new(), String::new()));
    let bos_id = tok.token_to_id(&bos);
    let eos_id = tok.token_to_id(&eos);
    let add_bos = tok_cfg
        .as_ref()
        .and_then(|c| c.get("add_bos_token"))
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    md.extend(
        crate::tokenizer::gguf::gguf_tokenizer_metadata(
            &tok_json,
            pre,
            cfg.vocab_size,
            bos_id,
            eos_id,
            add_bos,
        )
        .map_err(|e| e.in_file(&tok_path))?,
    );
    if let Some(t) = template {
        md.push(("tokenizer.chat_template".into(), Value::String(t)));
    }

    write_gguf_atomic(out, &md, &qtensors)
}

/// Write a GGUF file at `out` from metadata and tensors: to a temporary file next to it, synced,
/// then renamed, so a crash never leaves a half-written model.
pub fn write_gguf_atomic(
    out: &Path,
    md: &[(String, Value)],
    qtensors: &[(String, QTensor)],
) -> Result<()> {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        out.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model.gguf".into()),
        std::process::id()
    ));
    let result = (|| -> Result<()> {
        let f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut w = BufWriter::new(f);
        let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let t_refs: Vec<(&str, &QTensor)> = qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut w, &md_refs, &t_refs)
            .map_err(|e| Error::format(&tmp, format!("writing GGUF: {e}")))?;
        let f = w
            .into_inner()
            .map_err(|e| Error::io(&tmp, e.into_error()))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
