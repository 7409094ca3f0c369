//! Rebuild a tokenizer from GGUF metadata. (Temporary stub: replaced by the full module.)

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;

use crate::{Error, Result};

/// What a GGUF file says about its tokenizer.
pub struct GgufTokenizer {
    /// The rebuilt tokenizer.
    pub tokenizer: tokenizers::Tokenizer,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: bool,
    /// Other end-of-generation ids.
    pub eot_ids: Vec<u32>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

/// Build from `tokenizer.ggml.*` metadata.
pub fn tokenizer_from_gguf(_md: &HashMap<String, Value>) -> Result<GgufTokenizer> {
    Err(Error::Tokenizer(
        "GGUF tokenizers are not supported yet".into(),
    ))
}

/// GGUF `tokenizer.ggml.*` metadata for a tokenizer.json.
pub fn gguf_tokenizer_metadata(
    _tokenizer_json: &serde_json::Value,
    _pre: &str,
    _vocab_size: usize,
    _bos_id: Option<u32>,
    _eos_id: Option<u32>,
    _add_bos: bool,
) -> Result<Vec<(String, Value)>> {
    Err(Error::Tokenizer(
        "GGUF tokenizers are not supported yet".into(),
    ))
}
