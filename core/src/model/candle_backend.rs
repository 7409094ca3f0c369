//! The candle backend: a [`Decoder`] plus tokenizer and chat template.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::decoder::{Decoder, KvCache, Ops};
use super::gguf::GgufFile;
use super::{LanguageModel, LoadOptions, ModelInfo, Session};
use crate::chat::{ChatTemplate, template_from_tokenizer_config};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// A model run by candle on the CPU.
pub struct CandleModel {
    decoder: Decoder,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    info: ModelInfo,
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::format(path, format!("not valid JSON: {e}")))
}

/// Collect end-of-generation ids from HF json configs (ints or lists of ints).
fn eos_ids_from(v: Option<&serde_json::Value>, out: &mut Vec<u32>) {
    match v {
        Some(serde_json::Value::Number(n)) => out.extend(n.as_u64().map(|x| x as u32)),
        Some(serde_json::Value::Array(a)) => {
            out.extend(a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32))
        }
        _ => {}
    }
}

impl CandleModel {
    /// Load an HF folder on `opts.placement` (the CPU in f32 by default).
    pub fn from_hf_folder(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let p = &opts.placement;
        let decoder = super::hf::load_decoder(dir, p.dtype, &p.device, Ops::Fused)?;
        Self::with_decoder(dir, decoder, opts)
    }

    /// The tokenizer, end-of-generation ids and chat template of the HF folder `dir` over an
    /// already built `decoder` (its weights are not read from `dir`). Training uses this to
    /// generate with the policy's current weights: a decoder over views of the trained
    /// tensors sees every optimiser update without a copy or a reload.
    pub fn with_decoder(dir: &Path, decoder: Decoder, opts: &LoadOptions) -> Result<Self> {
        let tok_path = opts
            .tokenizer
            .clone()
            .unwrap_or_else(|| dir.join("tokenizer.json"));
        if !tok_path.exists() {
            return Err(Error::format(dir, "no tokenizer.json (pass --tokenizer)"));
        }
        let inner = Tokenizer::from_file(&tok_path)?;
        let tok_cfg = read_json(&dir.join("tokenizer_config.json"))?;
        let gen_cfg = read_json(&dir.join("generation_config.json"))?;
        let model_cfg = read_json(&dir.join("config.json"))?;
        let mut eos = Vec::new();
        eos_ids_from(
            gen_cfg.as_ref().and_then(|g| g.get("eos_token_id")),
            &mut eos,
        );
        eos_ids_from(
            model_cfg.as_ref().and_then(|g| g.get("eos_token_id")),
            &mut eos,
        );
        let (template, bos_text, eos_text) =
            match tok_cfg.as_ref().and_then(template_from_tokenizer_config) {
                Some((src, bos, eos)) => (Some(ChatTemplate::new(&src, &bos, &eos)?), bos, eos),
                None => {
                    let token = |k: &str| {
                        tok_cfg
                            .as_ref()
                            .and_then(|c| c.get(k))
                            .and_then(|v| {
                                v.as_str().map(String::from).or_else(|| {
                                    v.get("content").and_then(|c| c.as_str()).map(String::from)
                                })
                            })
                            .unwrap_or_default()
                    };
                    (None, token("bos_token"), token("eos_token"))
                }
            };
        if let Some(id) = inner.token_to_id(&eos_text) {
            eos.push(id);
        }
        eos.sort_unstable();
        eos.dedup();
        let bos_id = if bos_text.is_empty() {
            None
        } else {
            inner.token_to_id(&bos_text)
        };
        let add_bos = tok_cfg
            .as_ref()
            .and_then(|c| c.get("add_bos_token"))
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let tokenizer = Tokenizer::new(inner, eos, bos_id, add_bos);
        Ok(CandleModel::new(decoder, tokenizer, template, dir))
    }

    /// Load a GGUF file; the tokenizer comes from `opts.tokenizer` or the GGUF metadata.
    pub fn from_gguf(path: &Path, opts: &LoadOptions) -> Result<Self> {
        let device = Device::Cpu;
        let mut file = GgufFile::open(path)?;
        let decoder = file.load_decoder(&device, opts.max_context)?;
        let (tokenizer, template) = file.chat_tokenizer(opts.tokenizer.as_deref())?;
        Ok(CandleModel::new(decoder, tokenizer, template, path))
    }

    /// A model of a loaded decoder; its info (context, vocabulary) comes from the decoder's
    /// config, whatever file it was read from.
    fn new(
        decoder: Decoder,
        tokenizer: Tokenizer,
        template: Option<ChatTemplate>,
        path: &Path,
    ) -> CandleModel {
        let cfg = decoder.config();
        let info = ModelInfo {
            arch: cfg.arch,
            backend: "candle".into(),
            path: path.to_path_buf(),
            context_length: cfg.max_position,
            vocab_size: cfg.vocab_size,
        };
        CandleModel {
            decoder,
            tokenizer,
            template,
            info,
        }
    }

    /// The decoder (for scoring and training code that needs tensors).
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }
}

impl LanguageModel for CandleModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }
    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    fn chat_template(&self) -> Option<&ChatTemplate> {
        self.template.as_ref()
    }
    fn new_session(&self) -> Result<Box<dyn Session + '_>> {
        Ok(Box::new(CandleSession {
            decoder: &self.decoder,
            cache: KvCache::new(),
        }))
    }
}

/// A candle sequence: the shared decoder and this sequence's KV cache.
pub struct CandleSession<'a> {
    decoder: &'a Decoder,
    cache: KvCache,
}

impl CandleSession<'_> {
    fn ids(&self, tokens: &[u32]) -> Result<Tensor> {
        if tokens.is_empty() {
            return Err(Error::invalid("feed needs at least one token"));
        }
        let vocab = self.decoder.config().vocab_size as u32;
        if let Some(bad) = tokens.iter().find(|&&t| t >= vocab) {
            return Err(Error::invalid(format!(
                "token id {bad} is outside the vocabulary ({vocab})"
            )));
        }
        Ok(Tensor::new(tokens, self.decoder.device())?.unsqueeze(0)?)
    }
}

impl Session for CandleSession<'_> {
    fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let ids = self.ids(tokens)?;
        let logits = self.decoder.forward_last(&ids, Some(&mut self.cache))?;
        Ok(logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()?)
    }

    fn feed_all(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        let ids = self.ids(tokens)?;
        let logits = self.decoder.forward_all(&ids, Some(&mut self.cache))?;
        Ok(logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec2()?)
    }

    fn len(&self) -> usize {
        self.cache.len()
    }

    fn truncate(&mut self, len: usize) -> Result<()> {
        self.cache.truncate(len);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.decoder.config().max_position
    }
}
