//! Language models behind one interface: weights + tokenizer + chat template
//! ([`LanguageModel`]) and per-sequence state with a KV cache ([`Session`]).
//!
//! Backends: [`CandleModel`] (pure Rust; HF safetensors folders and GGUF files) and, with the
//! `llama` feature, llama.cpp through `llama-cpp-2`.

mod candle_backend;
pub mod decoder;
pub mod export;
pub mod fused;
pub mod gguf;
pub mod hf;
pub mod import;
pub mod placement;
pub mod quant_kernels;

pub use candle_backend::CandleModel;
pub use decoder::{Arch, Decoder, DecoderConfig, KvCache, Ops};
pub use placement::Placement;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::chat::ChatTemplate;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// What a loaded model is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Architecture.
    pub arch: Arch,
    /// Backend name (`candle`, `llama.cpp`).
    pub backend: String,
    /// File or folder it was loaded from.
    pub path: PathBuf,
    /// Longest context a session may hold.
    pub context_length: usize,
    /// Vocabulary size of the output layer.
    pub vocab_size: usize,
}

/// A loaded model, shareable between threads; each conversation gets its own [`Session`].
pub trait LanguageModel: Send + Sync {
    /// Description.
    fn info(&self) -> &ModelInfo;
    /// The tokenizer.
    fn tokenizer(&self) -> &Tokenizer;
    /// The chat template, when the model ships one.
    fn chat_template(&self) -> Option<&ChatTemplate>;
    /// A fresh sequence with an empty KV cache.
    fn new_session(&self) -> Result<Box<dyn Session + '_>>;
}

/// One sequence being decoded: the KV cache and its position.
pub trait Session: Send {
    /// Append `tokens` (non-empty) and return the logits after the last one.
    fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>>;
    /// Append `tokens` and return the logits after each of them.
    fn feed_all(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>>;
    /// Tokens in the cache.
    fn len(&self) -> usize;
    /// Whether the cache is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Drop everything after the first `len` tokens.
    fn truncate(&mut self, len: usize) -> Result<()>;
    /// Largest number of tokens the session can hold.
    fn capacity(&self) -> usize;
}

/// Which backend runs a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// llama.cpp for GGUF files when compiled in, candle otherwise.
    #[default]
    Auto,
    /// candle (pure Rust).
    Candle,
    /// llama.cpp (feature `llama`).
    Llama,
}

impl std::str::FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(BackendKind::Auto),
            "candle" => Ok(BackendKind::Candle),
            "llama" | "llama.cpp" | "llamacpp" => Ok(BackendKind::Llama),
            other => Err(Error::invalid(format!(
                "unknown backend {other:?} (auto, candle, llama)"
            ))),
        }
    }
}

/// Options for [`load`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// A `tokenizer.json` overriding the model's own.
    pub tokenizer: Option<PathBuf>,
    /// Backend choice.
    pub backend: BackendKind,
    /// CPU threads for llama.cpp (candle uses rayon's pool: set `RAYON_NUM_THREADS`).
    pub threads: Option<usize>,
    /// Cap on the context length (saves memory on small devices).
    pub max_context: Option<usize>,
    /// Device and float type of an HF folder's weights in candle (GGUF files stay on the CPU).
    pub placement: Placement,
}

impl LoadOptions {
    /// The defaults, with HF folders loaded on `placement`.
    pub fn on(placement: &Placement) -> LoadOptions {
        LoadOptions {
            placement: placement.clone(),
            ..Default::default()
        }
    }
}

/// Whether `path` looks like a GGUF file (by magic, not by name).
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

/// Load a model: an HF folder (config.json + safetensors) or a GGUF file.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Arc<dyn LanguageModel>> {
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
        ));
    }
    if path.is_dir() {
        if opts.backend == BackendKind::Llama {
            return Err(Error::invalid(format!(
                "{}: the llama.cpp backend needs a GGUF file (export the folder with `train export`)",
                path.display()
            )));
        }
        return Ok(Arc::new(CandleModel::from_hf_folder(path, opts)?));
    }
    if !is_gguf(path) {
        return Err(Error::format(
            path,
            "not a GGUF file (bad magic) and not a model folder",
        ));
    }
    let use_llama = match opts.backend {
        BackendKind::Candle => false,
        BackendKind::Llama => true,
        BackendKind::Auto => cfg!(feature = "llama"),
    };
    if use_llama {
        #[cfg(feature = "llama")]
        {
            return Ok(Arc::new(crate::llama::LlamaModel::load(path, opts)?));
        }
        #[cfg(not(feature = "llama"))]
        return Err(Error::invalid(
            "this build has no llama.cpp backend (rebuild with --features llama) ",
        ));
    }
    Ok(Arc::new(CandleModel::from_gguf(path, opts)?))
}
