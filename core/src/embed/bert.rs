//! BERT-family sentence encoders (MiniLM, e5, bge) on candle, from a local HF folder.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use serde::{Deserialize, Serialize};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::{Embedder, EmbedderSpec, Fnv64, Role, l2_normalize};
use crate::{Error, Result};

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Attention-masked mean of the last hidden state (MiniLM, e5).
    Mean,
    /// The `[CLS]` token's last hidden state (bge).
    Cls,
}

/// Pooling, prefixes and length caps of a BERT embedder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertOptions {
    /// Pooling.
    pub pooling: Pooling,
    /// Prepended to queries (e5: `query: `).
    pub query_prefix: String,
    /// Prepended to passages (e5: `passage: `).
    pub passage_prefix: String,
    /// Token cap for queries (special tokens included).
    pub max_len_query: usize,
    /// Token cap for passages.
    pub max_len_passage: usize,
}

impl Default for BertOptions {
    fn default() -> Self {
        BertOptions {
            pooling: Pooling::Mean,
            query_prefix: String::new(),
            passage_prefix: String::new(),
            max_len_query: 256,
            max_len_passage: 512,
        }
    }
}

impl BertOptions {
    /// Guess the options from the folder: sentence-transformers' `1_Pooling/config.json` when
    /// present, otherwise the model family in the folder name (`bge` → CLS pooling and its
    /// query instruction, `e5` → `query: `/`passage: `), otherwise mean pooling, no prefixes.
    pub fn detect(dir: &Path) -> BertOptions {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        let mut o = BertOptions::default();
        if name.contains("e5") {
            o.query_prefix = "query: ".into();
            o.passage_prefix = "passage: ".into();
        }
        if name.contains("bge") {
            o.pooling = Pooling::Cls;
            if name.contains("en") {
                // bge-*-en(-v1.5)'s recommended instruction for short query → passage search.
                o.query_prefix = "Represent this sentence for searching relevant passages: ".into();
            }
        }
        if name.contains("minilm") {
            // sentence-transformers truncates all-MiniLM-* inputs at 256 word pieces.
            o.max_len_passage = 256;
        }
        if let Ok(text) = std::fs::read_to_string(dir.join("sentence_bert_config.json"))
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            && let Some(n) = v["max_seq_length"].as_u64()
        {
            o.max_len_query = n as usize;
            o.max_len_passage = n as usize;
        }
        if let Ok(text) = std::fs::read_to_string(dir.join("1_Pooling/config.json"))
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        {
            if v["pooling_mode_cls_token"].as_bool() == Some(true) {
                o.pooling = Pooling::Cls;
            } else if v["pooling_mode_mean_tokens"].as_bool() == Some(true) {
                o.pooling = Pooling::Mean;
            }
        }
        o
    }
}

/// A BERT encoder with its tokenizer.
pub struct BertEmbedder {
    model: BertModel,
    tokenizer: Tokenizer,
    options: BertOptions,
    dir: PathBuf,
    dim: usize,
    max_positions: usize,
    fingerprint: u64,
}

/// Texts per forward pass: bounds memory (batch × len² attention) while keeping GEMMs large.
const SUB_BATCH: usize = 32;

impl BertEmbedder {
    /// Load `dir` (config.json, tokenizer.json, model.safetensors).
    pub fn load(dir: &Path, options: BertOptions) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let config: Config = serde_json::from_str(&text)
            .map_err(|e| Error::format(&cfg_path, format!("not a BERT config: {e}")))?;
        let weights = dir.join("model.safetensors");
        if !weights.exists() {
            return Err(Error::format(
                dir,
                "no model.safetensors in the embedder folder",
            ));
        }
        // SAFETY: the file is memory-mapped read-only; like every mmap user we assume nobody
        // truncates it while the embedder is alive.
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &Device::Cpu)
                .map_err(|e| Error::format(&weights, e.to_string()))?
        };
        let model =
            BertModel::load(vb, &config).map_err(|e| Error::format(&weights, e.to_string()))?;
        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| Error::format(&tok_path, format!("tokenizer: {e}")))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id: config.pad_token_id as u32,
            ..Default::default()
        }));
        let fingerprint = fingerprint(&[&cfg_path, &weights])?;
        Ok(BertEmbedder {
            model,
            tokenizer,
            options,
            dir: dir.to_path_buf(),
            dim: config.hidden_size,
            max_positions: config.max_position_embeddings,
            fingerprint,
        })
    }

    /// The options in use.
    pub fn options(&self) -> &BertOptions {
        &self.options
    }

    fn forward(&self, texts: &[String], max_len: usize) -> Result<Vec<Vec<f32>>> {
        let mut tok = self.tokenizer.clone();
        tok.with_truncation(Some(TruncationParams {
            max_length: max_len,
            ..Default::default()
        }))
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let enc = tok
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let b = enc.len();
        let t = enc.first().map_or(0, |e| e.get_ids().len());
        let ids: Vec<u32> = enc.iter().flat_map(|e| e.get_ids().to_vec()).collect();
        let mask: Vec<u32> = enc
            .iter()
            .flat_map(|e| e.get_attention_mask().to_vec())
            .collect();
        let dev = &Device::Cpu;
        let ids = Tensor::from_vec(ids, (b, t), dev)?;
        let mask_t = Tensor::from_vec(mask, (b, t), dev)?;
        let types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &types, Some(&mask_t))?; // (b, t, h)
        let pooled = match self.options.pooling {
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean => {
                let m = mask_t.to_dtype(DType::F32)?.unsqueeze(2)?; // (b, t, 1)
                let sum = hidden.broadcast_mul(&m)?.sum(1)?; // (b, h)
                let count = m.sum(1)?.clamp(1e-9, f64::MAX)?; // (b, 1)
                sum.broadcast_div(&count)?
            }
        };
        let mut rows: Vec<Vec<f32>> = pooled.to_vec2()?;
        rows.iter_mut().for_each(|r| l2_normalize(r));
        Ok(rows)
    }
}

/// FNV over config and weights: the identity of the vectors, independent of where the folder
/// lives. Hashing 100-500 MB costs well under a second, once per open.
fn fingerprint(files: &[&Path]) -> Result<u64> {
    let mut h = Fnv64::default();
    for f in files {
        let file = std::fs::File::open(f).map_err(|e| Error::io(f, e))?;
        // SAFETY: read-only map of a file we only read.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(f, e))?;
        // Word-at-a-time: 8x faster than the bytewise FNV on large weight files.
        let mut x = h.0;
        let chunks = map.chunks_exact(8);
        let tail = chunks.remainder();
        for c in chunks {
            x ^= u64::from_le_bytes(c.try_into().expect("8 bytes"));
            x = x.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h.0 = x;
        h.update(tail);
    }
    Ok(h.0)
}

impl Embedder for BertEmbedder {
    fn id(&self) -> String {
        let name = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let o = &self.options;
        format!(
            "bert:{name}:{:016x}:{:?}:q={:?}:p={:?}:{}/{}",
            self.fingerprint,
            o.pooling,
            o.query_prefix,
            o.passage_prefix,
            o.max_len_query,
            o.max_len_passage
        )
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn embed(&self, texts: &[&str], role: Role) -> Result<Vec<Vec<f32>>> {
        let (prefix, max_len) = match role {
            Role::Query => (&self.options.query_prefix, self.options.max_len_query),
            Role::Passage => (&self.options.passage_prefix, self.options.max_len_passage),
        };
        let max_len = max_len.min(self.max_positions).max(2);
        let texts: Vec<String> = texts.iter().map(|t| format!("{prefix}{t}")).collect();
        // Group texts of similar length so that padding wastes little compute, then restore
        // the caller's order.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].len());
        let mut out = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(SUB_BATCH) {
            let batch: Vec<String> = chunk.iter().map(|&i| texts[i].clone()).collect();
            for (&i, v) in chunk.iter().zip(self.forward(&batch, max_len)?) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    fn spec(&self) -> EmbedderSpec {
        EmbedderSpec::Bert {
            dir: self.dir.clone(),
            options: self.options.clone(),
        }
    }
}
