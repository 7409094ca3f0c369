//! Tokenizers: a thin wrapper over HF `tokenizers`, loaded from `tokenizer.json` or rebuilt
//! from GGUF metadata ([`gguf`]), plus incremental detokenisation for streaming.

pub mod gguf;
mod stream;

pub use stream::TokenStream;

use std::path::Path;

use crate::{Error, Result};

/// A tokenizer plus the special ids the agent loop needs.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    eos_ids: Vec<u32>,
    bos_id: Option<u32>,
    add_bos: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.inner.get_vocab_size(true))
            .field("eos_ids", &self.eos_ids)
            .field("bos_id", &self.bos_id)
            .finish()
    }
}

impl Tokenizer {
    /// Wrap a `tokenizers` tokenizer. `eos_ids` end generation; `bos_id` is prepended to
    /// prompts when `add_bos` is set (Llama-style models).
    pub fn new(
        inner: tokenizers::Tokenizer,
        eos_ids: Vec<u32>,
        bos_id: Option<u32>,
        add_bos: bool,
    ) -> Self {
        Tokenizer {
            inner,
            eos_ids,
            bos_id,
            add_bos,
        }
    }

    /// Load `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<tokenizers::Tokenizer> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| Error::format(path, format!("not a valid tokenizer.json: {e}")))
    }

    /// The underlying HF tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Ids that end generation.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Replace the end-of-generation ids.
    pub fn set_eos_ids(&mut self, ids: Vec<u32>) {
        self.eos_ids = ids;
    }

    /// Beginning-of-sequence id, if the model uses one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Whether prompts start with BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Id of a token string (special tokens included), if present.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Encode text. Special-token strings (e.g. `<|im_start|>`) in `text` become their ids, as
    /// chat templates require; no BOS/EOS is added (callers add BOS via [`Tokenizer::add_bos`]).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encode a prompt: BOS first when the model wants it.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if self.add_bos
            && let Some(b) = self.bos_id
        {
            ids.push(b);
        }
        ids.extend(self.encode(text)?);
        Ok(ids)
    }

    /// Decode ids to text (special tokens are kept, so protocol text round-trips).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }
}
