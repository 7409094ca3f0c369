//! Training a byte-level BPE tokenizer on the synthetic corpus (the presets' models are too
//! small for a 150k vocabulary: most of their weights would be embedding rows never seen).

use std::path::Path;

use dgpo_core::{Error, Result};
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder, TokenizerImpl};

/// Special tokens, ids 0.. in this order: end of text and the ChatML turn markers (the agent
/// prompt uses the Qwen chat template).
pub const SPECIAL_TOKENS: &[&str] = &["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Train a byte-level BPE with at most `vocab_size` tokens on `texts` and save it as a
/// `tokenizer.json` at `out` (written to a temporary file, then renamed).
pub fn train_bpe(texts: &[String], vocab_size: usize, out: &Path) -> Result<Tokenizer> {
    let min = 256 + SPECIAL_TOKENS.len();
    if vocab_size < min {
        return Err(Error::invalid(format!(
            "a byte-level BPE needs a vocabulary of at least {min}, got {vocab_size}"
        )));
    }
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(vocab_size)
        .min_frequency(2)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(
            SPECIAL_TOKENS
                .iter()
                .map(|s| AddedToken::from(*s, true))
                .collect(),
        )
        .build();
    let mut tok: TokenizerImpl<BPE, NormalizerWrapper, ByteLevel, ByteLevel, ByteLevel> =
        TokenizerBuilder::new()
            .with_model(BPE::default())
            .with_normalizer(None)
            .with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)))
            .with_post_processor(Some(ByteLevel::default()))
            .with_decoder(Some(ByteLevel::default()))
            .build()
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
    tok.train(&mut trainer, texts.iter())
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    let tmp = out.with_extension(format!("tmp-{}", std::process::id()));
    tok.save(&tmp, false)
        .map_err(|e| Error::Tokenizer(format!("{}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    Tokenizer::from_file(out).map_err(|e| Error::Tokenizer(format!("{}: {e}", out.display())))
}
