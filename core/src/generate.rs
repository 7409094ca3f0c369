//! Text generation on a [`Session`]: prefill, sample, stop on EOS, stop strings or a token cap.
//!
//! The sampled token that ends a turn is *not* fed to the model here: the caller decides what
//! comes next (an observation after `</search>`, nothing after EOS), and feeds it with the next
//! prefill. Stop strings are matched on text; when one ends inside a token, that token is
//! replaced by the tokens of exactly the text up to the stop string, so the context the model
//! sees equals the text the protocol records (no decode/re-encode of the whole sequence).

use std::time::Instant;

use crate::model::Session;
use crate::sampling::Sampler;
use crate::tokenizer::{TokenStream, Tokenizer};
use crate::{Error, Result};

/// Why generation stopped.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// An end-of-generation token was sampled.
    Eos,
    /// A stop string appeared (the string).
    Stop(String),
    /// The token cap was reached.
    Length,
    /// The session's context is full.
    ContextFull,
}

/// The result of one [`generate`] call.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated tokens that make up `text`, in order. All but `unfed` are in the KV cache.
    pub tokens: Vec<u32>,
    /// Log-probabilities (temperature 1) of each token in `tokens` as sampled; tokens that
    /// replaced a stop-straddling token get `f32::NAN`.
    pub logprobs: Vec<f32>,
    /// How many trailing tokens of `tokens` are not yet in the KV cache.
    pub unfed: usize,
    /// The generated text (cut right after a stop string; EOS not included).
    pub text: String,
    /// Why it stopped.
    pub stop: StopReason,
    /// Prefill time (ms).
    pub prefill_ms: f64,
    /// Decode time: model forward + sampling (ms).
    pub decode_ms: f64,
    /// Detokenisation and stop matching (ms).
    pub other_ms: f64,
}

/// Generation limits.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Maximum new tokens.
    pub max_new_tokens: usize,
    /// Stop strings (matched on decoded text).
    pub stop: Vec<String>,
}

/// Prefill `prefill` (must be non-empty) then sample up to `opts.max_new_tokens` tokens.
/// `on_text` receives text increments as they are produced (streaming).
pub fn generate(
    session: &mut dyn Session,
    tok: &Tokenizer,
    prefill: &[u32],
    sampler: &mut Sampler,
    opts: &GenerateOptions,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation> {
    generate_cancellable(session, tok, prefill, sampler, opts, on_text, &|| false)
}

/// [`generate`], polling `cancelled` before each token so that a caller (a UI, a C client) can
/// stop a long turn within one token; a cancelled run ends with [`Error::Cancelled`].
pub fn generate_cancellable(
    session: &mut dyn Session,
    tok: &Tokenizer,
    prefill: &[u32],
    sampler: &mut Sampler,
    opts: &GenerateOptions,
    on_text: &mut dyn FnMut(&str),
    cancelled: &dyn Fn() -> bool,
) -> Result<Generation> {
    if prefill.is_empty() {
        return Err(Error::invalid(
            "generate needs at least one token to prefill",
        ));
    }
    let cap = session.capacity();
    let mut g = Generation {
        tokens: Vec::new(),
        logprobs: Vec::new(),
        unfed: 0,
        text: String::new(),
        stop: StopReason::Length,
        prefill_ms: 0.0,
        decode_ms: 0.0,
        other_ms: 0.0,
    };
    if session.len() + prefill.len() > cap {
        g.stop = StopReason::ContextFull;
        return Ok(g);
    }
    let t0 = Instant::now();
    let mut logits = session.feed(prefill)?;
    g.prefill_ms = t0.elapsed().as_secs_f64() * 1e3;
    let max_stop = opts.stop.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut stream = TokenStream::new();
    for i in 0..opts.max_new_tokens {
        if cancelled() {
            return Err(Error::Cancelled);
        }
        let t = Instant::now();
        let s = sampler.sample(&logits);
        g.decode_ms += t.elapsed().as_secs_f64() * 1e3;
        if tok.eos_ids().contains(&s.token) {
            g.stop = StopReason::Eos;
            break;
        }
        let t = Instant::now();
        let before = g.text.len();
        let piece = stream.push(tok, s.token)?;
        g.text.push_str(&piece);
        g.tokens.push(s.token);
        g.logprobs.push(s.logprob);
        // Only the tail can contain a new match.
        let from = before.saturating_sub(max_stop);
        let from = (0..=from)
            .rev()
            .find(|&i| g.text.is_char_boundary(i))
            .unwrap_or(0);
        let hit = opts
            .stop
            .iter()
            .filter_map(|st| {
                g.text[from..]
                    .find(st.as_str())
                    .map(|p| (from + p + st.len(), st))
            })
            .min_by_key(|(end, _)| *end);
        if let Some((end, st)) = hit {
            g.stop = StopReason::Stop(st.clone());
            if end < g.text.len() {
                // The stop string ends inside the last token: swap that token for the tokens of
                // the text up to the stop string's end.
                let last_start = before;
                let keep = g.text[last_start..end].to_string();
                g.tokens.pop();
                g.logprobs.pop();
                let repl = tok.encode(&keep)?;
                g.logprobs.extend(std::iter::repeat_n(f32::NAN, repl.len()));
                g.unfed = repl.len();
                g.tokens.extend(repl);
                g.text.truncate(end);
                // The cut-off remainder must not reach the stream consumer.
                let emitted_end = end.max(before);
                on_text(&g.text[before..emitted_end]);
            } else {
                g.unfed = 1;
                on_text(&piece);
            }
            g.other_ms += t.elapsed().as_secs_f64() * 1e3;
            break;
        }
        on_text(&piece);
        g.other_ms += t.elapsed().as_secs_f64() * 1e3;
        if i + 1 == opts.max_new_tokens {
            g.unfed = 1;
            break;
        }
        if session.len() + 1 > cap {
            g.unfed = 1;
            g.stop = StopReason::ContextFull;
            break;
        }
        let t = Instant::now();
        logits = session.feed(&[s.token])?;
        g.decode_ms += t.elapsed().as_secs_f64() * 1e3;
    }
    if g.stop == StopReason::Length
        || g.stop == StopReason::ContextFull
        || g.stop == StopReason::Eos
    {
        let tail = stream.flush(tok)?;
        if !tail.is_empty() {
            on_text(&tail);
            g.text.push_str(&tail);
        }
    }
    Ok(g)
}
