//! Import a GGUF file as an HF model folder: the inverse of [`super::export`].
//!
//! Training reads safetensors weights (a GGUF file has no gradients to give), but small models
//! often ship only as GGUF, as do the real models this project can install (see the README's
//! Models section). The import dequantises every tensor into `model.safetensors` under HF names,
//! undoes llama.cpp's Q/K row permutation for Llama, and writes `config.json`, the tokenizer
//! rebuilt from the `tokenizer.ggml.*` metadata as `tokenizer.json`, the chat template and
//! special tokens as `tokenizer_config.json`, and the end-of-generation ids as
//! `generation_config.json`. A quantised file imports to its dequantised weights: the folder
//! computes what the GGUF file computes, up to the activations' rounding in the quantised
//! kernels, not what the original full-precision model computed.
//!
//! The folder is written under a temporary name next to `out` and renamed when complete; an
//! existing `out` is refused, so nothing is overwritten and a failed import leaves nothing.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::decoder::{Arch, DecoderConfig};
use super::gguf::GgufFile;
use super::hf::{config_json, dtype_name};
use crate::tokenizer::gguf::tokenizer_from_gguf;
use crate::{Error, Result};

/// Undo [`super::export`]'s Q/K permutation: llama.cpp's adjacent-pair rotation back to HF's
/// half rotation (rows `(heads, head/2, 2)` → `(heads, 2, head/2)`).
fn unpermute_qk(w: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = w.dims().to_vec();
    let rest: usize = dims[1..].iter().product();
    let head = dims[0] / heads.max(1);
    Ok(w.reshape((heads, head / 2, 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}

/// `cfg`'s tensors in GGUF file order: HF name, GGUF name (llama.cpp's converter) and shape.
/// Export and import share it, so the two directions cannot disagree on a name.
pub(crate) fn tensor_map(cfg: &DecoderConfig) -> Vec<(String, String, Vec<usize>)> {
    let (h, i, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let (q, kv) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
    let mut m = vec![(
        "model.embed_tokens.weight".to_string(),
        "token_embd.weight".to_string(),
        vec![cfg.vocab_size, h],
    )];
    for l in 0..cfg.num_layers {
        let mut push = |hf: &str, gg: &str, shape: Vec<usize>| {
            m.push((
                format!("model.layers.{l}.{hf}"),
                format!("blk.{l}.{gg}"),
                shape,
            ))
        };
        push("input_layernorm.weight", "attn_norm.weight", vec![h]);
        push("self_attn.q_proj.weight", "attn_q.weight", vec![q, h]);
        push("self_attn.k_proj.weight", "attn_k.weight", vec![kv, h]);
        push("self_attn.v_proj.weight", "attn_v.weight", vec![kv, h]);
        if cfg.attention_bias {
            push("self_attn.q_proj.bias", "attn_q.bias", vec![q]);
            push("self_attn.k_proj.bias", "attn_k.bias", vec![kv]);
            push("self_attn.v_proj.bias", "attn_v.bias", vec![kv]);
        }
        push("self_attn.o_proj.weight", "attn_output.weight", vec![h, q]);
        push(
            "post_attention_layernorm.weight",
            "ffn_norm.weight",
            vec![h],
        );
        push("mlp.gate_proj.weight", "ffn_gate.weight", vec![i, h]);
        push("mlp.up_proj.weight", "ffn_up.weight", vec![i, h]);
        push("mlp.down_proj.weight", "ffn_down.weight", vec![h, i]);
    }
    m.push((
        "model.norm.weight".into(),
        "output_norm.weight".into(),
        vec![h],
    ));
    if !cfg.tie_embeddings {
        m.push((
            "lm_head.weight".into(),
            "output.weight".into(),
            vec![cfg.vocab_size, h],
        ));
    }
    m
}

/// Import the GGUF file `gguf` as an HF folder at `out` (which must not exist), with the
/// weights stored as `dtype` (f32, bf16 or f16).
pub fn import_gguf(gguf: &Path, out: &Path, dtype: DType) -> Result<()> {
    if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
        return Err(Error::invalid(format!(
            "importing to {dtype:?}: the weights can be stored as f32, bf16 or f16"
        )));
    }
    if out.exists() {
        return Err(Error::io(
            out,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "already exists; the import writes a new folder",
            ),
        ));
    }
    let mut file = GgufFile::open(gguf)?;
    let cfg = file.decoder_config()?;
    if file.has_tensor("rope_freqs.weight") {
        return Err(Error::format(
            gguf,
            "rope_freqs (Llama 3 rope scaling) cannot be imported yet: config.json would need its rope_scaling",
        ));
    }
    let tok = tokenizer_from_gguf(file.metadata()).map_err(|e| e.in_file(gguf))?;

    let cpu = Device::Cpu;
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (hf, gg, shape) in tensor_map(&cfg) {
        let t = file.tensor(&gg, &shape, &cpu)?.dequantize(&cpu)?;
        let t = match (cfg.arch, gg.contains("attn_q."), gg.contains("attn_k.")) {
            (Arch::Llama, true, _) => unpermute_qk(&t, cfg.num_heads)?,
            (Arch::Llama, _, true) => unpermute_qk(&t, cfg.num_kv_heads)?,
            _ => t,
        };
        tensors.push((hf, t.to_dtype(dtype)?));
    }

    let token_text = |id: Option<u32>| id.and_then(|i| tok.tokenizer.id_to_token(i));
    let (bos, eos) = (token_text(tok.bos_id), token_text(tok.eos_id));
    let mut config = config_json(&cfg, tok.bos_id, tok.eos_id);
    config["torch_dtype"] = dtype_name(dtype).into();
    let mut tok_cfg = serde_json::json!({
        "add_bos_token": tok.add_bos,
        "bos_token": bos,
        "eos_token": eos,
        "model_max_length": cfg.max_position,
    });
    if let Some(t) = &tok.chat_template {
        tok_cfg["chat_template"] = t.clone().into();
    }
    let eos_ids: Vec<u32> = tok.eos_id.into_iter().chain(tok.eot_ids.clone()).collect();
    let gen_cfg = serde_json::json!({ "bos_token_id": tok.bos_id, "eos_token_id": eos_ids });
    let tok_json = tok
        .tokenizer
        .to_string(true)
        .map_err(|e| Error::Tokenizer(format!("{}: cannot serialise: {e}", gguf.display())))?;

    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let tmp = parent.join(format!(".{name}.import-{}", std::process::id()));
    let result = (|| -> Result<()> {
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let st = tmp.join("model.safetensors");
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(
            tensors.iter().map(|(n, t)| (n.as_str(), t)),
            Some(meta),
            &st,
        )
        .map_err(|e| Error::format(&st, format!("cannot write safetensors: {e}")))?;
        for (file, value) in [
            ("config.json", &config),
            ("tokenizer_config.json", &tok_cfg),
            ("generation_config.json", &gen_cfg),
        ] {
            let p = tmp.join(file);
            let text = serde_json::to_string_pretty(value).expect("json values serialise");
            std::fs::write(&p, text).map_err(|e| Error::io(&p, e))?;
        }
        let p = tmp.join("tokenizer.json");
        std::fs::write(&p, &tok_json).map_err(|e| Error::io(&p, e))?;
        std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_the_export_permutation() {
        // Two heads of four rows, three columns: export's permutation, then ours.
        let w = Tensor::arange(0f32, 24.0, &Device::Cpu)
            .unwrap()
            .reshape((8, 3))
            .unwrap();
        let permuted = w
            .reshape((2, 2, 2, 3))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((8, 3))
            .unwrap();
        // Head 0's rows 0,1 | 2,3 interleave to 0,2,1,3.
        let rows: Vec<f32> = permuted.get(1).unwrap().to_vec1().unwrap();
        assert_eq!(rows, [6.0, 7.0, 8.0]);
        let back = unpermute_qk(&permuted, 2).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
    }
}
