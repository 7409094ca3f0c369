//! Loading HF model folders: `config.json` plus one or several `*.safetensors` files.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::decoder::{
    Arch, Block, Decoder, DecoderConfig, Embedding, Linear, Llama3Scaling, Ops, RopeStyle, Weights,
};
use crate::{Error, Result};

#[derive(Deserialize)]
struct RopeScalingJson {
    rope_type: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<usize>,
}

#[derive(Deserialize)]
struct ConfigJson {
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    max_position_embeddings: Option<usize>,
    rope_theta: Option<f64>,
    rms_norm_eps: Option<f64>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    rope_scaling: Option<RopeScalingJson>,
    /// transformers 5 writes `rope_parameters` (with `rope_theta` inside) instead of
    /// `rope_theta` + `rope_scaling`.
    rope_parameters: Option<serde_json::Value>,
    hidden_act: Option<String>,
}

/// An HF `config.json` for a decoder created from scratch (transformers reads these keys).
pub fn config_json(cfg: &DecoderConfig, bos: Option<u32>, eos: Option<u32>) -> serde_json::Value {
    let arch = match cfg.arch {
        Arch::Qwen2 => "Qwen2ForCausalLM",
        Arch::Llama => "LlamaForCausalLM",
    };
    let mut v = serde_json::json!({
        "architectures": [arch],
        "model_type": cfg.arch.name(),
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_position,
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": cfg.attention_bias,
        "hidden_act": "silu",
        "torch_dtype": "float32",
        "use_cache": true,
    });
    if cfg.arch == Arch::Qwen2 {
        v["use_sliding_window"] = false.into();
        v["sliding_window"] = serde_json::Value::Null;
        v["max_window_layers"] = cfg.num_layers.into();
    }
    if let Some(b) = bos {
        v["bos_token_id"] = b.into();
    }
    if let Some(e) = eos {
        v["eos_token_id"] = e.into();
    }
    v
}

/// transformers' `torch_dtype` name of a float type.
pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        DType::F64 => "float64",
        _ => "float32",
    }
}

/// Parse an HF `config.json` into a [`DecoderConfig`]. Unknown architectures are refused with
/// the file and the `model_type` named.
pub fn read_config(path: &Path) -> Result<DecoderConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let c: ConfigJson = serde_json::from_str(&text)
        .map_err(|e| Error::format(path, format!("not a valid model config: {e}")))?;
    let arch = match c.model_type.as_deref() {
        Some("qwen2") => Arch::Qwen2,
        Some("llama") => Arch::Llama,
        Some(other) => {
            return Err(Error::format(
                path,
                format!(
                    "unsupported architecture (model_type) {other:?}: dgpo runs \"qwen2\" and \"llama\""
                ),
            ));
        }
        None => return Err(Error::format(path, "missing \"model_type\"")),
    };
    if let Some(act) = c.hidden_act.as_deref()
        && act != "silu"
    {
        return Err(Error::format(
            path,
            format!("unsupported hidden_act {act:?} (only silu)"),
        ));
    }
    let mut rope_theta = c.rope_theta;
    let mut rope_scaling_json = c.rope_scaling;
    if let Some(p) = &c.rope_parameters {
        rope_theta = rope_theta.or_else(|| p.get("rope_theta").and_then(|v| v.as_f64()));
        if rope_scaling_json.is_none() {
            rope_scaling_json = serde_json::from_value(p.clone()).ok();
        }
    }
    let rope_scaling = match rope_scaling_json {
        None => None,
        Some(s) => {
            let kind = s.rope_type.or(s.kind).unwrap_or_default();
            match kind.as_str() {
                "llama3" => Some(Llama3Scaling {
                    factor: s.factor.unwrap_or(8.0),
                    low_freq_factor: s.low_freq_factor.unwrap_or(1.0),
                    high_freq_factor: s.high_freq_factor.unwrap_or(4.0),
                    original_max_position: s.original_max_position_embeddings.unwrap_or(8192),
                }),
                "default" | "" => None,
                other => {
                    return Err(Error::format(
                        path,
                        format!("unsupported rope_scaling type {other:?}"),
                    ));
                }
            }
        }
    };
    let cfg = DecoderConfig {
        arch,
        vocab_size: c.vocab_size,
        hidden_size: c.hidden_size,
        intermediate_size: c.intermediate_size,
        num_layers: c.num_hidden_layers,
        num_heads: c.num_attention_heads,
        num_kv_heads: c.num_key_value_heads.unwrap_or(c.num_attention_heads),
        head_dim: c
            .head_dim
            .unwrap_or(c.hidden_size / c.num_attention_heads.max(1)),
        max_position: c.max_position_embeddings.unwrap_or(4096),
        rope_theta: rope_theta.unwrap_or(10_000.0),
        rms_norm_eps: c.rms_norm_eps.unwrap_or(1e-6),
        tie_embeddings: c.tie_word_embeddings.unwrap_or(false),
        attention_bias: c.attention_bias.unwrap_or(arch == Arch::Qwen2),
        rope_style: RopeStyle::Half,
        rope_scaling,
    };
    cfg.validate().map_err(|e| e.in_file(path))?;
    Ok(cfg)
}

/// The safetensors files of a folder: the shards named by `model.safetensors.index.json`, else
/// `model.safetensors`, else every `*.safetensors` (sorted).
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(&index, format!("not valid JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::format(&index, "missing \"weight_map\""))?;
        let mut files: Vec<PathBuf> = map
            .values()
            .filter_map(|f| f.as_str())
            .map(|f| dir.join(f))
            .collect();
        files.sort();
        files.dedup();
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::format(
            dir,
            "no *.safetensors file in the model folder",
        ));
    }
    Ok(files)
}

/// Build decoder weights from a var builder using HF tensor names. Works for memory-mapped
/// checkpoints (inference) and for a `VarMap` (training: every weight becomes a trainable var).
pub fn weights_from_var_builder(
    cfg: &DecoderConfig,
    vb: &VarBuilder,
) -> candle_core::Result<Weights> {
    let (h, i, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let (nh, nkv) = (cfg.num_heads, cfg.num_kv_heads);
    let m = vb.pp("model");
    let embed = m.pp("embed_tokens").get((cfg.vocab_size, h), "weight")?;
    let lin = |vb: VarBuilder, out: usize, inp: usize, bias: bool| -> candle_core::Result<Linear> {
        let w = vb.get((out, inp), "weight")?;
        let b = if bias {
            Some(vb.get(out, "bias")?)
        } else {
            None
        };
        Ok(Linear::Dense(candle_nn::Linear::new(w, b)))
    };
    let mut blocks = Vec::with_capacity(cfg.num_layers);
    for l in 0..cfg.num_layers {
        let b = m.pp("layers").pp(l);
        let a = b.pp("self_attn");
        let mlp = b.pp("mlp");
        blocks.push(Block {
            attn_norm: b.pp("input_layernorm").get(h, "weight")?,
            q: lin(a.pp("q_proj"), nh * hd, h, cfg.attention_bias)?,
            k: lin(a.pp("k_proj"), nkv * hd, h, cfg.attention_bias)?,
            v: lin(a.pp("v_proj"), nkv * hd, h, cfg.attention_bias)?,
            o: lin(a.pp("o_proj"), h, nh * hd, false)?,
            ffn_norm: b.pp("post_attention_layernorm").get(h, "weight")?,
            gate: lin(mlp.pp("gate_proj"), i, h, false)?,
            up: lin(mlp.pp("up_proj"), i, h, false)?,
            down: lin(mlp.pp("down_proj"), h, i, false)?,
        });
    }
    let norm = m.pp("norm").get(h, "weight")?;
    let lm_head = if cfg.tie_embeddings {
        Linear::Dense(candle_nn::Linear::new(embed.clone(), None))
    } else {
        lin(vb.pp("lm_head"), cfg.vocab_size, h, false)?
    };
    Ok(Weights {
        embed: Embedding::Dense(embed),
        blocks,
        norm,
        lm_head,
        rope_freqs: None,
    })
}

/// Load a decoder from an HF folder, converting weights to `dtype` (f32 on CPU).
pub fn load_decoder(dir: &Path, dtype: DType, device: &Device, ops: Ops) -> Result<Decoder> {
    let cfg_path = dir.join("config.json");
    if !cfg_path.exists() {
        return Err(Error::format(
            dir,
            "not a model folder: config.json is missing",
        ));
    }
    let cfg = read_config(&cfg_path)?;
    let files = safetensors_files(dir)?;
    for f in &files {
        if !f.exists() {
            return Err(Error::format(
                f,
                "safetensors shard listed in the index is missing",
            ));
        }
    }
    // SAFETY: the files are memory-mapped read-only; like every mmap-based loader we assume
    // they are not modified while the model is alive.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, device) }
        .map_err(|e| Error::format(&files[0], format!("cannot read safetensors: {e}")))?;
    let w = weights_from_var_builder(&cfg, &vb).map_err(|e| {
        let shown = if files.len() == 1 {
            files[0].clone()
        } else {
            dir.to_path_buf()
        };
        Error::format(shown, format!("bad weights: {e}"))
    })?;
    Decoder::new(cfg, w, ops, device)
}
