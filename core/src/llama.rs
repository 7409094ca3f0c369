//! The llama.cpp backend (feature `llama`), through `llama-cpp-2`.
//!
//! Tokenisation stays ours (the same [`Tokenizer`] as the candle backend, rebuilt from the GGUF
//! metadata), so both backends see the same prompt ids and differ only in the forward pass.
//! Each [`Session`] owns a llama.cpp context (its KV cache); rewinding removes cache cells.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;

use crate::chat::ChatTemplate;
use crate::model::gguf::GgufFile;
use crate::model::{LanguageModel, LoadOptions, ModelInfo, Session};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

const BACKEND: &str = "llama.cpp";
/// Tokens per llama.cpp decode call (its default logical batch).
const N_BATCH: usize = 512;

fn backend() -> Result<&'static LlamaBackend> {
    static B: OnceLock<std::result::Result<LlamaBackend, String>> = OnceLock::new();
    B.get_or_init(|| {
        // llama.cpp logs to stderr by default; route it to `tracing` (off unless asked).
        llama_cpp_2::send_logs_to_tracing(
            llama_cpp_2::LogOptions::default().with_logs_enabled(false),
        );
        LlamaBackend::init().map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| Error::Backend {
        backend: BACKEND,
        msg: e.clone(),
    })
}

fn err(e: impl std::fmt::Display) -> Error {
    Error::Backend {
        backend: BACKEND,
        msg: e.to_string(),
    }
}

/// A GGUF model run by llama.cpp.
pub struct LlamaModel {
    model: llama_cpp_2::model::LlamaModel,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    info: ModelInfo,
    threads: i32,
    n_ctx: u32,
    /// llama.cpp mutates the model while creating a context, so contexts are created one at a time.
    create_lock: Mutex<()>,
}

impl LlamaModel {
    /// Load `path`; the tokenizer comes from `opts.tokenizer` or the GGUF metadata.
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Self> {
        // Parse the header ourselves first: it validates the file (truncation, shapes) with
        // clear errors before llama.cpp sees it, and gives us the tokenizer metadata.
        let file = GgufFile::open(path)?;
        let cfg = file.decoder_config()?;
        let (tokenizer, template) = file.chat_tokenizer(opts.tokenizer.as_deref())?;
        drop(file);
        let b = backend()?;
        let model =
            llama_cpp_2::model::LlamaModel::load_from_file(b, path, &LlamaModelParams::default())
                .map_err(|e| Error::format(path, format!("llama.cpp cannot load the model: {e}")))?;
        let n_ctx = opts
            .max_context
            .unwrap_or(cfg.max_position)
            .min(cfg.max_position)
            .min(32_768) as u32;
        let threads = opts.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(4)
        }) as i32;
        let info = ModelInfo {
            arch: cfg.arch,
            backend: BACKEND.into(),
            path: path.to_path_buf(),
            context_length: n_ctx as usize,
            vocab_size: cfg.vocab_size,
        };
        Ok(LlamaModel {
            model,
            tokenizer,
            template,
            info,
            threads,
            n_ctx,
            create_lock: Mutex::new(()),
        })
    }
}

impl LanguageModel for LlamaModel {
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
        let _guard = self.create_lock.lock().unwrap_or_else(|p| p.into_inner());
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(self.n_ctx))
            .with_n_batch(N_BATCH as u32)
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads);
        let ctx = self.model.new_context(backend()?, params).map_err(err)?;
        Ok(Box::new(LlamaSession {
            ctx: SendContext(ctx),
            batch: LlamaBatch::new(N_BATCH, 1),
            len: 0,
            n_ctx: self.n_ctx as usize,
            vocab: self.info.vocab_size,
        }))
    }
}

/// A llama.cpp context is a plain heap object with no thread affinity; it is only unsafe to use
/// from two threads *at once*, which `&mut self` on every [`Session`] method rules out.
struct SendContext<'a>(LlamaContext<'a>);
// SAFETY: see above; the context is only ever accessed through `&mut LlamaSession`.
unsafe impl Send for SendContext<'_> {}

/// One llama.cpp sequence.
pub struct LlamaSession<'a> {
    ctx: SendContext<'a>,
    batch: LlamaBatch<'static>,
    len: usize,
    n_ctx: usize,
    vocab: usize,
}

impl LlamaSession<'_> {
    /// Decode `tokens` in chunks; collect logits of the last token, or of all of them.
    fn run(&mut self, tokens: &[u32], all: bool) -> Result<Vec<Vec<f32>>> {
        if tokens.is_empty() {
            return Err(Error::invalid("feed needs at least one token"));
        }
        if self.len + tokens.len() > self.n_ctx {
            return Err(Error::invalid(format!(
                "context of {} tokens exceeds the session's {}",
                self.len + tokens.len(),
                self.n_ctx
            )));
        }
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(Error::invalid(format!(
                "token id {bad} is outside the vocabulary ({})",
                self.vocab
            )));
        }
        let mut out = Vec::new();
        for (ci, chunk) in tokens.chunks(N_BATCH).enumerate() {
            let last_chunk = (ci + 1) * N_BATCH >= tokens.len();
            self.batch.clear();
            for (i, &t) in chunk.iter().enumerate() {
                let want = all || (last_chunk && i + 1 == chunk.len());
                self.batch
                    .add(LlamaToken(t as i32), (self.len + i) as i32, &[0], want)
                    .map_err(err)?;
            }
            self.ctx.0.decode(&mut self.batch).map_err(err)?;
            for i in 0..chunk.len() {
                if all || (last_chunk && i + 1 == chunk.len()) {
                    out.push(self.ctx.0.get_logits_ith(i as i32).to_vec());
                }
            }
            self.len += chunk.len();
        }
        Ok(out)
    }
}

impl Session for LlamaSession<'_> {
    fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        Ok(self.run(tokens, false)?.pop().expect("one row of logits"))
    }

    fn feed_all(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        self.run(tokens, true)
    }

    fn len(&self) -> usize {
        self.len
    }

    fn truncate(&mut self, len: usize) -> Result<()> {
        if len < self.len {
            let ok = self
                .ctx
                .0
                .clear_kv_cache_seq(Some(0), Some(len as u32), None)
                .map_err(err)?;
            if !ok {
                return Err(err("llama.cpp refused to remove KV cells"));
            }
            self.len = len;
        }
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.n_ctx
    }
}
