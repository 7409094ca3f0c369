//! Incremental detokenisation.
//!
//! Decoding one token at a time breaks multi-byte characters split across byte-level BPE tokens
//! and drops the spaces some decoders add between tokens. The standard fix (used by TGI and
//! candle's examples) decodes a short window of recent tokens and emits only the stable suffix.

use super::Tokenizer;
use crate::Result;

/// Turns a growing token sequence into text increments.
#[derive(Debug, Clone, Default)]
pub struct TokenStream {
    tokens: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl TokenStream {
    /// An empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Tokens pushed so far.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Push a token; returns the new text it completes (possibly empty while a multi-byte
    /// character is still incomplete).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.tokens.push(id);
        let prev = tok.decode(&self.tokens[self.prefix_offset..self.read_offset])?;
        let cur = tok.decode(&self.tokens[self.prefix_offset..])?;
        if cur.len() > prev.len() && !cur.ends_with('\u{fffd}') && cur.starts_with(&prev) {
            let new = cur[prev.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.tokens.len();
            Ok(new)
        } else {
            Ok(String::new())
        }
    }

    /// Text of any tokens not yet emitted (call at the end).
    pub fn flush(&mut self, tok: &Tokenizer) -> Result<String> {
        let prev = tok.decode(&self.tokens[self.prefix_offset..self.read_offset])?;
        let cur = tok.decode(&self.tokens[self.prefix_offset..])?;
        self.prefix_offset = self.tokens.len();
        self.read_offset = self.tokens.len();
        Ok(cur.get(prev.len()..).unwrap_or("").to_string())
    }
}
