//! Rebuild a HF [`tokenizers::Tokenizer`] from the `tokenizer.ggml.*` metadata of a GGUF file,
//! and the inverse (a `tokenizer.json` to GGUF metadata entries) for writing GGUF files.
//!
//! Only byte-level BPE vocabularies (`tokenizer.ggml.model = "gpt2"`) are supported: the
//! tokenizer of GPT-2, Llama 3, Qwen2/2.5, SmolLM and most recent small models.
//!
//! The rebuilt tokenizer is what the model's own `tokenizer.json` describes (the pipeline is
//! deserialised from `tokenizer.json` form by the `tokenizers` crate; only the BPE model is
//! built directly, as deserialisation would, to skip a JSON detour for 150k tokens):
//!
//! * `model`: BPE with the GGUF vocabulary (every token at its GGUF id, control, user-defined
//!   and unused/padding tokens included) and merges, `byte_fallback: false`, `ignore_merges`
//!   where llama.cpp sets it (the Llama 3 family);
//! * `pre_tokenizer`: the split regex that `tokenizer.ggml.pre` names (the regexes llama.cpp
//!   uses in `llama-vocab.cpp`, in the form the models' `tokenizer.json` files have them),
//!   then `ByteLevel` without its own regex; SmolLM: `Digits` (individual) then `ByteLevel`
//!   with the GPT-2 regex, as in SmolLM2's `tokenizer.json`;
//! * `normalizer`: NFC for Qwen2 (as in Qwen2's `tokenizer.json`), none otherwise;
//! * `decoder`: `ByteLevel`;
//! * added tokens: control tokens (type 3) as special, user-defined ones (type 4) as
//!   non-special, all matched on the raw text.
//!
//! No BOS is added by the tokenizer itself: [`GgufTokenizer::add_bos`] tells the caller to do it.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use serde_json::json;

use crate::{Error, Result};

const KEY_MODEL: &str = "tokenizer.ggml.model";
const KEY_PRE: &str = "tokenizer.ggml.pre";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const KEY_MERGES: &str = "tokenizer.ggml.merges";
const KEY_BOS: &str = "tokenizer.ggml.bos_token_id";
const KEY_EOS: &str = "tokenizer.ggml.eos_token_id";
const KEY_EOT: &str = "tokenizer.ggml.eot_token_id";
const KEY_EOM: &str = "tokenizer.ggml.eom_token_id";
const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const KEY_CHAT_TEMPLATE: &str = "tokenizer.chat_template";

/// GGUF token types (llama.cpp's `llama_token_type`).
const TYPE_NORMAL: i32 = 1;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;
const TYPE_UNUSED: i32 = 5;

/// Control tokens that end a turn or a document even when the GGUF names no `eot_token_id`.
const EOT_TOKEN_NAMES: [&str; 4] = [
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end_of_text|>",
];

/// GPT-2's split regex (also `ByteLevel`'s built-in one). llama.cpp: `LLAMA_VOCAB_PRE_TYPE_GPT2`.
pub const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Qwen2's split regex, as in Qwen2/2.5's `tokenizer.json`. llama.cpp:
/// `LLAMA_VOCAB_PRE_TYPE_QWEN2` (which spells the case-insensitive group out by hand).
pub const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's split regex, as in Llama 3's `tokenizer.json` (Qwen2's with digits in groups of
/// up to three). llama.cpp: `LLAMA_VOCAB_PRE_TYPE_LLAMA3`.
pub const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// What a GGUF file says about its tokenizer.
pub struct GgufTokenizer {
    /// The rebuilt tokenizer (adds no BOS/EOS by itself).
    pub tokenizer: tokenizers::Tokenizer,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`; when absent, llama.cpp's default for the pre-tokenizer
    /// (true for the Llama 3 family, false otherwise).
    pub add_bos: bool,
    /// Other end-of-generation ids: `tokenizer.ggml.eot_token_id`, `tokenizer.ggml.eom_token_id`,
    /// and the control tokens `<|im_end|>`, `<|endoftext|>`, `<|eot_id|>`, `<|end_of_text|>`
    /// when present; sorted, without duplicates and without `eos_id`.
    pub eot_ids: Vec<u32>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

impl std::fmt::Debug for GgufTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufTokenizer")
            .field("vocab", &self.tokenizer.get_vocab_size(true))
            .field("eos_id", &self.eos_id)
            .field("bos_id", &self.bos_id)
            .field("add_bos", &self.add_bos)
            .field("eot_ids", &self.eot_ids)
            .field(
                "chat_template",
                &self.chat_template.as_ref().map(|t| t.len()),
            )
            .finish()
    }
}

/// The pre-tokenizer families this module can rebuild.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PreKind {
    /// GPT-2 regex (`gpt-2`, `default`, missing, ...).
    Gpt2,
    /// Qwen2 regex plus NFC (`qwen2`, `deepseek-r1-qwen`).
    Qwen2,
    /// Llama 3 regex (`llama-bpe`, `llama3`, ...).
    Llama3,
    /// Individual digits, then the GPT-2 regex (`smollm`, `starcoder`, ...).
    SmolLm,
}

/// How a `tokenizer.ggml.pre` value is rebuilt.
#[derive(Clone, Copy, Debug)]
struct PreSpec {
    kind: PreKind,
    /// llama.cpp sets `ignore_merges` (a word that is a whole vocab entry is not merged).
    ignore_merges: bool,
    /// llama.cpp's `add_bos` default when `tokenizer.ggml.add_bos_token` is absent.
    add_bos_default: bool,
}

/// The pre-tokenizer names accepted, for error messages.
const KNOWN_PRES: &str = "qwen2, deepseek-r1-qwen, llama-bpe, llama3, llama-v3, \
     falcon3, dbrx, smaug-bpe, smollm, starcoder, refact, codeshell, gpt2, gpt-2, phi-2, mpt, olmo, \
     jais, default";

fn pre_spec(pre: &str) -> Option<PreSpec> {
    let spec = |kind, ignore_merges, add_bos_default| PreSpec {
        kind,
        ignore_merges,
        add_bos_default,
    };
    Some(match pre {
        "qwen2" | "deepseek-r1-qwen" => spec(PreKind::Qwen2, false, false),
        "llama-bpe" | "llama3" | "llama-v3" | "falcon3" => spec(PreKind::Llama3, true, true),
        "dbrx" | "smaug-bpe" => spec(PreKind::Llama3, false, false),
        "smollm" | "starcoder" | "refact" | "codeshell" => spec(PreKind::SmolLm, false, false),
        // llama.cpp's own "default" uses a different (lossy) set of regexes; a GGUF written
        // without a pre-tokenizer is almost always a GPT-2-style vocabulary, so use GPT-2's.
        "gpt2" | "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" | "default" | "" => {
            spec(PreKind::Gpt2, false, false)
        }
        _ => return None,
    })
}

/// The name llama.cpp knows a pre-tokenizer by (it rejects "gpt2", which it calls "gpt-2").
fn llama_cpp_pre_name(pre: &str) -> &str {
    match pre {
        "gpt2" => "gpt-2",
        other => other,
    }
}

fn byte_level(use_regex: bool) -> serde_json::Value {
    json!({ "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": use_regex })
}

fn split(regex: &str) -> serde_json::Value {
    json!({ "type": "Split", "pattern": { "Regex": regex }, "behavior": "Isolated", "invert": false })
}

/// `(normalizer, pre_tokenizer)` of the `tokenizer.json` for a pre-tokenizer family.
fn pre_json(kind: PreKind) -> (serde_json::Value, serde_json::Value) {
    let seq = |items: Vec<serde_json::Value>| json!({ "type": "Sequence", "pretokenizers": items });
    match kind {
        PreKind::Gpt2 => (
            serde_json::Value::Null,
            seq(vec![split(GPT2_REGEX), byte_level(false)]),
        ),
        PreKind::Qwen2 => (
            json!({ "type": "NFC" }),
            seq(vec![split(QWEN2_REGEX), byte_level(false)]),
        ),
        PreKind::Llama3 => (
            serde_json::Value::Null,
            seq(vec![split(LLAMA3_REGEX), byte_level(false)]),
        ),
        // SmolLM/StarCoder's tokenizer.json: Digits(individual) then ByteLevel with the GPT-2
        // regex; llama.cpp's equivalent is the regex list ["\p{N}", <gpt2>].
        PreKind::SmolLm => (
            serde_json::Value::Null,
            seq(vec![
                json!({ "type": "Digits", "individual_digits": true }),
                byte_level(true),
            ]),
        ),
    }
}

fn value_kind(v: &Value) -> &'static str {
    match v {
        Value::U8(_) => "u8",
        Value::I8(_) => "i8",
        Value::U16(_) => "u16",
        Value::I16(_) => "i16",
        Value::U32(_) => "u32",
        Value::I32(_) => "i32",
        Value::U64(_) => "u64",
        Value::I64(_) => "i64",
        Value::F32(_) => "f32",
        Value::F64(_) => "f64",
        Value::Bool(_) => "bool",
        Value::String(_) => "string",
        Value::Array(_) => "array",
    }
}

fn wrong_type(key: &str, want: &str, got: &Value) -> Error {
    Error::Tokenizer(format!(
        "GGUF metadata {key}: expected {want}, found {}",
        value_kind(got)
    ))
}

fn as_i64(v: &Value) -> Option<i64> {
    Some(match *v {
        Value::U8(x) => x.into(),
        Value::I8(x) => x.into(),
        Value::U16(x) => x.into(),
        Value::I16(x) => x.into(),
        Value::U32(x) => x.into(),
        Value::I32(x) => x.into(),
        Value::U64(x) => i64::try_from(x).ok()?,
        Value::I64(x) => x,
        _ => return None,
    })
}

fn get_str<'a>(md: &'a HashMap<String, Value>, key: &str) -> Result<Option<&'a str>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(wrong_type(key, "a string", v)),
    }
}

fn get_bool(md: &HashMap<String, Value>, key: &str) -> Result<Option<bool>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => match as_i64(v) {
            Some(0) => Ok(Some(false)),
            Some(1) => Ok(Some(true)),
            _ => Err(wrong_type(key, "a bool", v)),
        },
    }
}

/// An optional token id that must index the vocabulary (`n_tokens` entries).
fn get_id(md: &HashMap<String, Value>, key: &str, n_tokens: usize) -> Result<Option<u32>> {
    let Some(v) = md.get(key) else {
        return Ok(None);
    };
    let id = as_i64(v).ok_or_else(|| wrong_type(key, "an integer token id", v))?;
    // llama.cpp writes -1 (as an unsigned or signed integer) for "no such token" in places.
    if id == -1 || id == u32::MAX as i64 {
        return Ok(None);
    }
    match u32::try_from(id) {
        Ok(id) if (id as usize) < n_tokens => Ok(Some(id)),
        _ => Err(Error::Tokenizer(format!(
            "GGUF metadata {key}: token id {id} is outside the vocabulary ({n_tokens} tokens)"
        ))),
    }
}

fn get_array<'a>(md: &'a HashMap<String, Value>, key: &str) -> Result<Option<&'a [Value]>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::Array(a)) => Ok(Some(a)),
        Some(v) => Err(wrong_type(key, "an array", v)),
    }
}

fn require_array<'a>(md: &'a HashMap<String, Value>, key: &str) -> Result<&'a [Value]> {
    get_array(md, key)?.ok_or_else(|| Error::Tokenizer(format!("GGUF metadata has no {key}")))
}

fn string_items<'a>(key: &str, items: &'a [Value]) -> Result<Vec<&'a str>> {
    items
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => Ok(s.as_str()),
            v => Err(Error::Tokenizer(format!(
                "GGUF metadata {key}[{i}]: expected a string, found {}",
                value_kind(v)
            ))),
        })
        .collect()
}

/// Build from `tokenizer.ggml.*` metadata.
///
/// `tokenizer.ggml.model` must be `"gpt2"` (byte-level BPE); `tokenizer.ggml.pre` selects the
/// split regex (see the module docs); an unknown pre-tokenizer is an error naming it.
pub fn tokenizer_from_gguf(md: &HashMap<String, Value>) -> Result<GgufTokenizer> {
    match get_str(md, KEY_MODEL)? {
        Some("gpt2") => {}
        Some(other) => {
            return Err(Error::Tokenizer(format!(
                "GGUF metadata {KEY_MODEL} is {other:?}: only \"gpt2\" (byte-level BPE) tokenizers \
                 can be rebuilt; pass a tokenizer.json instead"
            )));
        }
        None => {
            return Err(Error::Tokenizer(format!(
                "GGUF metadata has no {KEY_MODEL}"
            )));
        }
    }
    let pre = get_str(md, KEY_PRE)?.unwrap_or("");
    let spec = pre_spec(pre).ok_or_else(|| {
        Error::Tokenizer(format!(
            "GGUF metadata {KEY_PRE}: unknown pre-tokenizer {pre:?} (supported: {KNOWN_PRES})"
        ))
    })?;

    let tokens = string_items(KEY_TOKENS, require_array(md, KEY_TOKENS)?)?;
    let n = tokens.len();
    if n == 0 {
        return Err(Error::Tokenizer(format!(
            "GGUF metadata {KEY_TOKENS} is empty"
        )));
    }
    if n > u32::MAX as usize {
        return Err(Error::Tokenizer(format!(
            "GGUF metadata {KEY_TOKENS} has too many tokens ({n})"
        )));
    }
    let types: Option<Vec<i64>> = match get_array(md, KEY_TOKEN_TYPE)? {
        None => None,
        Some(a) => {
            if a.len() != n {
                return Err(Error::Tokenizer(format!(
                    "GGUF metadata {KEY_TOKEN_TYPE} has {} entries but {KEY_TOKENS} has {n}",
                    a.len()
                )));
            }
            let t = a
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    as_i64(v).ok_or_else(|| {
                        Error::Tokenizer(format!(
                            "GGUF metadata {KEY_TOKEN_TYPE}[{i}]: expected an integer, found {}",
                            value_kind(v)
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Some(t)
        }
    };
    let merges = string_items(KEY_MERGES, require_array(md, KEY_MERGES)?)?;

    // Vocabulary: every token at its GGUF id. Added tokens must be in the model vocab too:
    // `tokenizers` gives an added token the model's id for its content, and otherwise numbers
    // it after the model vocab, which would shift ids. A duplicate string keeps its first id.
    let mut vocab = tokenizers::models::bpe::Vocab::with_capacity(n);
    for (id, tok) in tokens.iter().enumerate() {
        vocab.entry((*tok).to_string()).or_insert(id as u32);
    }
    let mut merge_pairs: tokenizers::models::bpe::Merges = Vec::with_capacity(merges.len());
    let mut joined = String::new();
    for (i, m) in merges.iter().enumerate() {
        // llama.cpp splits at the first space after the first character.
        let pos = m
            .char_indices()
            .skip(1)
            .find(|&(_, c)| c == ' ')
            .map(|(p, _)| p);
        let Some(pos) = pos else {
            return Err(Error::Tokenizer(format!(
                "GGUF metadata {KEY_MERGES}[{i}]: {m:?} is not two tokens separated by a space"
            )));
        };
        let (a, b) = (&m[..pos], &m[pos + 1..]);
        for part in [a, b] {
            if !vocab.contains_key(part) {
                return Err(Error::Tokenizer(format!(
                    "GGUF metadata {KEY_MERGES}[{i}]: {part:?} (of {m:?}) is not in {KEY_TOKENS}"
                )));
            }
        }
        joined.clear();
        joined.push_str(a);
        joined.push_str(b);
        if !vocab.contains_key(&joined) {
            return Err(Error::Tokenizer(format!(
                "GGUF metadata {KEY_MERGES}[{i}]: the merge of {m:?} is not in {KEY_TOKENS}"
            )));
        }
        merge_pairs.push((a.to_string(), b.to_string()));
    }

    // Control (special) and user-defined (not special) tokens, matched on the raw text.
    let mut added = Vec::new();
    if let Some(types) = &types {
        for (id, (&t, tok)) in types.iter().zip(&tokens).enumerate() {
            let special = match t {
                t if t == TYPE_CONTROL as i64 => true,
                t if t == TYPE_USER_DEFINED as i64 => false,
                _ => continue,
            };
            if tok.is_empty() || vocab.get(*tok) != Some(&(id as u32)) {
                continue; // a duplicate of an earlier token: unreachable by text anyway
            }
            added.push(tokenizers::AddedToken::from(*tok, special).normalized(false));
        }
    }

    // The model is built directly (what deserialising a tokenizer.json does, without a JSON
    // detour for 150k tokens); the rest of the pipeline comes from tokenizer.json form, and the
    // added tokens are added last, as deserialisation does.
    let bpe = tokenizers::models::bpe::BPE::builder()
        .vocab_and_merges(vocab, merge_pairs)
        .byte_fallback(false)
        .ignore_merges(spec.ignore_merges)
        .build()
        .map_err(|e| {
            Error::Tokenizer(format!(
                "cannot build a BPE model from GGUF metadata {KEY_TOKENS}/{KEY_MERGES}: {e}"
            ))
        })?;
    let (normalizer, pre_tokenizer) = pre_json(spec.kind);
    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": byte_level(false),
        "model": { "type": "BPE", "vocab": {}, "merges": [] },
    });
    let mut tokenizer: tokenizers::Tokenizer = serde_json::from_value(doc)
        .map_err(|e| Error::Tokenizer(format!("cannot build the {pre:?} pre-tokenizer: {e}")))?;
    tokenizer.with_model(bpe);
    tokenizer.add_tokens(added).map_err(|e| {
        Error::Tokenizer(format!(
            "cannot add the control/user-defined tokens of GGUF metadata {KEY_TOKEN_TYPE}: {e}"
        ))
    })?;

    let eos_id = get_id(md, KEY_EOS, n)?;
    let bos_id = get_id(md, KEY_BOS, n)?;
    let add_bos = get_bool(md, KEY_ADD_BOS)?.unwrap_or(spec.add_bos_default);
    let mut eot_ids: Vec<u32> = Vec::new();
    eot_ids.extend(get_id(md, KEY_EOT, n)?);
    eot_ids.extend(get_id(md, KEY_EOM, n)?);
    for name in EOT_TOKEN_NAMES {
        if let Some(id) = tokens.iter().position(|t| *t == name) {
            let control = types.as_ref().is_none_or(|t| t[id] == TYPE_CONTROL as i64);
            if control {
                eot_ids.push(id as u32);
            }
        }
    }
    eot_ids.sort_unstable();
    eot_ids.dedup();
    eot_ids.retain(|&id| Some(id) != eos_id);
    let chat_template = get_str(md, KEY_CHAT_TEMPLATE)?.map(str::to_string);

    Ok(GgufTokenizer {
        tokenizer,
        eos_id,
        bos_id,
        add_bos,
        eot_ids,
        chat_template,
    })
}

fn json_err(msg: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("tokenizer.json: {msg}"))
}

/// The inverse of [`tokenizer_from_gguf`], for writing GGUF files: the `tokenizer.ggml.*`
/// entries for a byte-level BPE `tokenizer.json`.
///
/// * `tokenizer.ggml.model` = `"gpt2"`, `tokenizer.ggml.pre` = `pre` (`"gpt2"` is written as
///   llama.cpp's `"gpt-2"`); `pre` must be one [`tokenizer_from_gguf`] knows;
/// * `tokenizer.ggml.tokens`: exactly `vocab_size` entries (the model's embedding rows); ids no
///   token has are padded as `[PAD{id}]` with type 5 (unused);
/// * `tokenizer.ggml.token_type`: 1 normal, 3 control (special added tokens), 4 user-defined
///   (non-special added tokens), 5 unused;
/// * `tokenizer.ggml.merges`: `"a b"` strings (from either merge form of `tokenizer.json`);
/// * `tokenizer.ggml.bos_token_id` / `eos_token_id` when given, `tokenizer.ggml.add_bos_token`.
pub fn gguf_tokenizer_metadata(
    tokenizer_json: &serde_json::Value,
    pre: &str,
    vocab_size: usize,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    add_bos: bool,
) -> Result<Vec<(String, Value)>> {
    if pre_spec(pre).is_none() || pre.is_empty() {
        return Err(Error::Invalid(format!(
            "unknown GGUF pre-tokenizer {pre:?} (supported: {KNOWN_PRES})"
        )));
    }
    if vocab_size == 0 || vocab_size > u32::MAX as usize {
        return Err(Error::Invalid(format!(
            "vocab_size {vocab_size} is not a valid vocabulary size"
        )));
    }
    let model = tokenizer_json
        .get("model")
        .ok_or_else(|| json_err("no \"model\""))?;
    match model.get("type").and_then(|t| t.as_str()) {
        Some("BPE") => {}
        None if model.get("merges").is_some() => {}
        other => {
            return Err(json_err(format!(
                "model type is {}: only BPE tokenizers can be written to GGUF",
                other.map_or("missing".to_string(), |t| format!("{t:?}"))
            )));
        }
    }
    let vocab = model
        .get("vocab")
        .and_then(|v| v.as_object())
        .ok_or_else(|| json_err("model.vocab is missing or not an object"))?;

    let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
    let mut types: Vec<i32> = vec![TYPE_UNUSED; vocab_size];
    let mut place = |id: u64, tok: &str, ty: i32, what: &str| -> Result<()> {
        let slot = usize::try_from(id)
            .ok()
            .filter(|&i| i < vocab_size)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "tokenizer.json {what} {tok:?} has id {id}, outside vocab_size {vocab_size}"
                ))
            })?;
        match &tokens[slot] {
            Some(prev) if prev != tok => {
                return Err(json_err(format!("id {id} is both {prev:?} and {tok:?}")));
            }
            _ => {}
        }
        tokens[slot] = Some(tok.to_string());
        types[slot] = ty;
        Ok(())
    };
    for (tok, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| json_err(format!("model.vocab[{tok:?}] is not an id")))?;
        place(id, tok, TYPE_NORMAL, "token")?;
    }
    if let Some(added) = tokenizer_json.get("added_tokens") {
        let added = added
            .as_array()
            .ok_or_else(|| json_err("added_tokens is not an array"))?;
        for (i, t) in added.iter().enumerate() {
            let id = t
                .get("id")
                .and_then(|v| v.as_u64())
                .ok_or_else(|| json_err(format!("added_tokens[{i}] has no id")))?;
            let content = t
                .get("content")
                .and_then(|v| v.as_str())
                .ok_or_else(|| json_err(format!("added_tokens[{i}] has no content")))?;
            let special = t.get("special").and_then(|v| v.as_bool()).unwrap_or(false);
            let ty = if special {
                TYPE_CONTROL
            } else {
                TYPE_USER_DEFINED
            };
            place(id, content, ty, "added token")?;
        }
    }
    let tokens: Vec<Value> = tokens
        .into_iter()
        .enumerate()
        .map(|(id, t)| Value::String(t.unwrap_or_else(|| format!("[PAD{id}]"))))
        .collect();

    let merges_json = model
        .get("merges")
        .and_then(|m| m.as_array())
        .ok_or_else(|| json_err("model.merges is missing or not an array"))?;
    let mut merges = Vec::with_capacity(merges_json.len());
    for (i, m) in merges_json.iter().enumerate() {
        let merge = match m {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(pair) => match pair.as_slice() {
                [serde_json::Value::String(a), serde_json::Value::String(b)] => {
                    if a.is_empty() || a.contains(' ') || b.contains(' ') {
                        return Err(json_err(format!(
                            "model.merges[{i}] ({a:?}, {b:?}) cannot be written as \"a b\""
                        )));
                    }
                    format!("{a} {b}")
                }
                _ => {
                    return Err(json_err(format!(
                        "model.merges[{i}] is not a pair of strings"
                    )));
                }
            },
            _ => {
                return Err(json_err(format!(
                    "model.merges[{i}] is neither \"a b\" nor [a, b]"
                )));
            }
        };
        merges.push(Value::String(merge));
    }

    for (name, id) in [("bos_id", bos_id), ("eos_id", eos_id)] {
        if let Some(id) = id
            && id as usize >= vocab_size
        {
            return Err(Error::Invalid(format!(
                "{name} {id} is outside vocab_size {vocab_size}"
            )));
        }
    }

    let mut md: Vec<(String, Value)> = vec![
        (KEY_MODEL.into(), Value::String("gpt2".into())),
        (
            KEY_PRE.into(),
            Value::String(llama_cpp_pre_name(pre).into()),
        ),
        (KEY_TOKENS.into(), Value::Array(tokens)),
        (
            KEY_TOKEN_TYPE.into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        (KEY_MERGES.into(), Value::Array(merges)),
    ];
    if let Some(id) = bos_id {
        md.push((KEY_BOS.into(), Value::U32(id)));
    }
    if let Some(id) = eos_id {
        md.push((KEY_EOS.into(), Value::U32(id)));
    }
    md.push((KEY_ADD_BOS.into(), Value::Bool(add_bos)));
    Ok(md)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use serde_json::json;
    use tokenizers::models::TrainerWrapper;
    use tokenizers::models::bpe::BpeTrainer;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::{AddedToken, Tokenizer};

    use super::*;

    const SAMPLE: &str = "Hello, world! Ünïcödé 日本語のテキスト 🙂👍🏽 fn main() { println!(\"{}\", 42); }\n\t  indented\r\n<|im_start|>user\nhi<|im_end|>";

    /// More text to compare on: contractions, digit runs, whitespace runs, a decomposed
    /// accent (NFC), special tokens glued to text, an unknown-looking special string.
    const MORE: [&str; 9] = [
        "",
        "I'm sure you'LL see THEY'RE right, isn't it? 1234567 + 89 = 1234656",
        "   leading spaces\n\n\n  trailing   \t\n",
        "cafe\u{301} vs caf\u{e9}; ﬁ ligature; Ⅻ roman; ½ half; ٣ arabic-indic",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n<think>ok</think>",
        "<|endoftext|><|endoftext|>x<|im_end|>",
        "<tool_call>{\"name\": \"search\"}</tool_call> <|not_special|> zq",
        "zq",
        "    def f(x):\r\n        return x**2  # square\n",
    ];

    const CORPUS: &str = "The quick brown fox jumps over the lazy dog. Hello, world! Hello again, world.\n\
        fn main() { println!(\"{}\", 42); let x = vec![1, 2, 3]; for i in 0..10 { x.push(i); } }\n\
        def search(query):\n    return [doc for doc in corpus if query in doc]\n\
        <|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nParis.<|im_end|>\n\
        I'm sure they're right: you'll see it's what we've said, isn't it? 2024-05-01 12:30.\n\
        Indented code\n\t  indented lines\r\n  with spaces and tabs.\n";

    /// The `(normalizer, pre_tokenizer, ignore_merges)` of the real tokenizer.json files of
    /// each family, written out literally (independent of the module's own constants).
    fn hf_parts(pre: &str) -> (serde_json::Value, serde_json::Value, bool) {
        let bl = |trim: bool, regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": trim, "use_regex": regex});
        match pre {
            // Qwen2/2.5 tokenizer.json
            "qwen2" => (
                json!({"type": "NFC"}),
                json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
                     "behavior": "Isolated", "invert": false},
                    bl(false, false)]}),
                false,
            ),
            // Llama 3 tokenizer.json
            "llama-bpe" => (
                serde_json::Value::Null,
                json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
                     "behavior": "Isolated", "invert": false},
                    bl(true, false)]}),
                true,
            ),
            // SmolLM/SmolLM2 (StarCoder-style) tokenizer.json
            "smollm" => (
                serde_json::Value::Null,
                json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Digits", "individual_digits": true}, bl(true, true)]}),
                false,
            ),
            // GPT-2 tokenizer.json
            "gpt2" => (serde_json::Value::Null, bl(true, true), false),
            _ => unreachable!(),
        }
    }

    /// A small byte-level BPE tokenizer with the normalizer and pre-tokenizer of `pre`, as
    /// tokenizer.json. The vocabulary is trained without any split regex (whole lines are
    /// words), so its merges cross word, digit and whitespace boundaries and every difference in
    /// pre-tokenization shows up in the ids. It has the specials `<|endoftext|>` (0),
    /// `<|im_start|>` (1), `<|im_end|>` (2), a vocab entry `zq` that no merge builds (only
    /// `ignore_merges` finds it) and a non-special added token `<tool_call>`.
    fn trained(pre: &str) -> serde_json::Value {
        let doc = json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "vocab": {}, "merges": []},
        });
        let mut tok = Tokenizer::from_str(&doc.to_string()).unwrap();
        let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
            .map(|s| AddedToken::from(s, true))
            .to_vec();
        let trainer = BpeTrainer::builder()
            .vocab_size(400)
            .min_frequency(1)
            .show_progress(false)
            .special_tokens(specials)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let corpus: Vec<&str> = (0..3).flat_map(|_| CORPUS.split_inclusive('\n')).collect();
        tok.train(&mut TrainerWrapper::BpeTrainer(trainer), corpus.into_iter())
            .unwrap();
        let mut json: serde_json::Value =
            serde_json::from_str(&tok.to_string(false).unwrap()).unwrap();
        let (normalizer, pre_tokenizer, ignore_merges) = hf_parts(pre);
        json["normalizer"] = normalizer;
        json["pre_tokenizer"] = pre_tokenizer;
        json["model"]["ignore_merges"] = json!(ignore_merges);
        let vocab = json["model"]["vocab"].as_object_mut().unwrap();
        let next = vocab.len();
        vocab.insert("zq".into(), json!(next));
        let mut tok = Tokenizer::from_str(&json.to_string()).unwrap();
        // A non-special added token (GGUF type 4, user-defined).
        tok.add_tokens([AddedToken::from("<tool_call>", false)])
            .unwrap();
        serde_json::from_str(&tok.to_string(false).unwrap()).unwrap()
    }

    fn ids(tok: &Tokenizer, text: &str) -> Vec<u32> {
        tok.encode(text, false).unwrap().get_ids().to_vec()
    }

    fn md_of(entries: Vec<(String, Value)>) -> HashMap<String, Value> {
        entries.into_iter().collect()
    }

    fn assert_same(reference: &Tokenizer, rebuilt: &Tokenizer, what: &str) {
        for text in std::iter::once(SAMPLE).chain(MORE) {
            let want = ids(reference, text);
            let got = ids(rebuilt, text);
            assert_eq!(got, want, "{what}: ids differ on {text:?}");
            assert_eq!(
                rebuilt.decode(&got, false).unwrap(),
                reference.decode(&want, false).unwrap(),
                "{what}: decode differs on {text:?}"
            );
            assert_eq!(
                rebuilt.decode(&got, true).unwrap(),
                reference.decode(&want, true).unwrap(),
                "{what}: decode (skipping special tokens) differs on {text:?}"
            );
        }
    }

    #[test]
    fn round_trip_matches_trained_tokenizer_for_every_pre() {
        for pre in ["qwen2", "llama-bpe", "smollm", "gpt2"] {
            let json = trained(pre);
            let reference = Tokenizer::from_str(&json.to_string()).unwrap();
            let n = reference.get_vocab_size(true);
            assert!(n > 350, "{pre}: trained only {n} tokens");
            let vocab_size = n + 5; // embedding rows past the tokenizer: padded
            let md = gguf_tokenizer_metadata(&json, pre, vocab_size, None, Some(2), false).unwrap();
            let md = md_of(md);
            let rebuilt = tokenizer_from_gguf(&md).unwrap();
            assert_same(&reference, &rebuilt.tokenizer, pre);
            // The specials really are single tokens.
            let t = &rebuilt.tokenizer;
            let im_start = t.token_to_id("<|im_start|>").unwrap();
            let im_end = t.token_to_id("<|im_end|>").unwrap();
            assert_eq!(ids(t, "<|im_start|><|im_end|>"), vec![im_start, im_end]);
            assert_eq!(rebuilt.eos_id, Some(2));
            assert_eq!(rebuilt.bos_id, None);
            assert!(!rebuilt.add_bos, "{pre}: add_bos_token=false was written");
            let eot = t.token_to_id("<|endoftext|>").unwrap();
            assert_eq!(im_end, 2);
            assert_eq!(rebuilt.eot_ids, vec![eot], "{pre}: eot ids");
            assert!(rebuilt.chat_template.is_none());
            // Padding ids decode to their placeholder and exist in the vocabulary.
            assert_eq!(
                t.id_to_token(vocab_size as u32 - 1),
                Some(format!("[PAD{}]", vocab_size - 1))
            );
        }
    }

    #[test]
    fn metadata_layout() {
        let json = trained("qwen2");
        let n = json["model"]["vocab"].as_object().unwrap().len() + 1; // + <tool_call>
        let md =
            md_of(gguf_tokenizer_metadata(&json, "gpt2", n + 3, Some(1), Some(2), true).unwrap());
        assert!(matches!(&md[KEY_MODEL], Value::String(s) if s == "gpt2"));
        assert!(
            matches!(&md[KEY_PRE], Value::String(s) if s == "gpt-2"),
            "llama.cpp's name for gpt2"
        );
        let Value::Array(tokens) = &md[KEY_TOKENS] else {
            panic!()
        };
        let Value::Array(types) = &md[KEY_TOKEN_TYPE] else {
            panic!()
        };
        assert_eq!(tokens.len(), n + 3);
        assert_eq!(types.len(), n + 3);
        let tok = |i: usize| match &tokens[i] {
            Value::String(s) => s.clone(),
            _ => panic!(),
        };
        let ty = |i: usize| match types[i] {
            Value::I32(t) => t,
            _ => panic!(),
        };
        let find = |s: &str| (0..tokens.len()).find(|&i| tok(i) == s).unwrap();
        assert_eq!(ty(find("<|im_end|>")), TYPE_CONTROL);
        assert_eq!(ty(find("<|endoftext|>")), TYPE_CONTROL);
        assert_eq!(ty(find("<tool_call>")), TYPE_USER_DEFINED);
        assert_eq!(ty(find("Ġ")), TYPE_NORMAL);
        assert_eq!(tok(n + 2), format!("[PAD{}]", n + 2));
        assert_eq!(ty(n + 2), TYPE_UNUSED);
        assert!(matches!(md[KEY_BOS], Value::U32(1)));
        assert!(matches!(md[KEY_EOS], Value::U32(2)));
        assert!(matches!(md[KEY_ADD_BOS], Value::Bool(true)));
        let Value::Array(merges) = &md[KEY_MERGES] else {
            panic!()
        };
        assert_eq!(
            merges.len(),
            json["model"]["merges"].as_array().unwrap().len()
        );
        let first = &json["model"]["merges"][0];
        let want = format!(
            "{} {}",
            first[0].as_str().unwrap(),
            first[1].as_str().unwrap()
        );
        assert!(matches!(&merges[0], Value::String(s) if *s == want));

        // The old "a b" merge form gives the same metadata.
        let mut old = json.clone();
        let strings: Vec<serde_json::Value> = json["model"]["merges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                json!(format!(
                    "{} {}",
                    m[0].as_str().unwrap(),
                    m[1].as_str().unwrap()
                ))
            })
            .collect();
        old["model"]["merges"] = json!(strings);
        let md_old =
            md_of(gguf_tokenizer_metadata(&old, "gpt2", n + 3, Some(1), Some(2), true).unwrap());
        let Value::Array(merges_old) = &md_old[KEY_MERGES] else {
            panic!()
        };
        assert_eq!(format!("{merges_old:?}"), format!("{merges:?}"));

        // Missing add_bos_token: llama.cpp's default (true only for the Llama 3 family).
        let mut md2 = md.clone();
        md2.remove(KEY_ADD_BOS);
        md2.insert(KEY_PRE.into(), Value::String("llama-bpe".into()));
        assert!(tokenizer_from_gguf(&md2).unwrap().add_bos);
        md2.insert(KEY_PRE.into(), Value::String("qwen2".into()));
        assert!(!tokenizer_from_gguf(&md2).unwrap().add_bos);
        // Missing pre: GPT-2 regex, no error.
        md2.remove(KEY_PRE);
        assert!(tokenizer_from_gguf(&md2).is_ok());
        // eot/eom ids and the chat template are passed through.
        md2.insert(KEY_EOT.into(), Value::U32(5));
        md2.insert(KEY_EOM.into(), Value::I32(6));
        md2.insert(KEY_CHAT_TEMPLATE.into(), Value::String("{{ x }}".into()));
        let t = tokenizer_from_gguf(&md2).unwrap();
        assert_eq!(t.eot_ids, vec![0, 5, 6]); // <|endoftext|> is id 0
        assert_eq!(t.chat_template.as_deref(), Some("{{ x }}"));
    }

    #[test]
    fn every_listed_pre_is_accepted() {
        for name in KNOWN_PRES.split(", ") {
            assert!(pre_spec(name.trim()).is_some(), "{name}");
        }
        assert!(pre_spec("klingon").is_none());
    }

    fn err_of(md: &HashMap<String, Value>) -> String {
        match tokenizer_from_gguf(md) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn errors_name_the_metadata_key() {
        let json = trained("qwen2");
        let n = json["model"]["vocab"].as_object().unwrap().len() + 1;
        let md = md_of(gguf_tokenizer_metadata(&json, "qwen2", n, None, Some(2), false).unwrap());

        let mut m = md.clone();
        m.remove(KEY_TOKENS);
        let e = err_of(&m);
        assert!(e.contains(KEY_TOKENS), "{e}");

        let mut m = md.clone();
        m.remove(KEY_MERGES);
        let e = err_of(&m);
        assert!(e.contains(KEY_MERGES), "{e}");

        let mut m = md.clone();
        m.insert(KEY_PRE.into(), Value::String("klingon".into()));
        let e = err_of(&m);
        assert!(e.contains(KEY_PRE) && e.contains("klingon"), "{e}");

        let mut m = md.clone();
        m.insert(KEY_MODEL.into(), Value::String("llama".into()));
        let e = err_of(&m);
        assert!(e.contains(KEY_MODEL) && e.contains("llama"), "{e}");

        let mut m = md.clone();
        m.remove(KEY_MODEL);
        let e = err_of(&m);
        assert!(e.contains(KEY_MODEL), "{e}");

        let mut m = md.clone();
        m.insert(KEY_TOKENS.into(), Value::String("nope".into()));
        let e = err_of(&m);
        assert!(e.contains(KEY_TOKENS) && e.contains("array"), "{e}");

        let mut m = md.clone();
        m.insert(KEY_TOKENS.into(), Value::Array(vec![Value::U32(1)]));
        let e = err_of(&m);
        assert!(e.contains(KEY_TOKENS), "{e}");

        let mut m = md.clone();
        m.insert(KEY_TOKEN_TYPE.into(), Value::Array(vec![Value::I32(1)]));
        let e = err_of(&m);
        assert!(e.contains(KEY_TOKEN_TYPE), "{e}");

        let mut m = md.clone();
        m.insert(
            KEY_MERGES.into(),
            Value::Array(vec![Value::String("nospace".into())]),
        );
        let e = err_of(&m);
        assert!(e.contains(KEY_MERGES), "{e}");

        let mut m = md.clone();
        m.insert(
            KEY_MERGES.into(),
            Value::Array(vec![Value::String("zz qq".into())]),
        );
        let e = err_of(&m);
        assert!(e.contains(KEY_MERGES) && e.contains("zz"), "{e}");

        let mut m = md.clone();
        m.insert(KEY_EOS.into(), Value::U32(1_000_000));
        let e = err_of(&m);
        assert!(e.contains(KEY_EOS), "{e}");

        let mut m = md.clone();
        m.insert(KEY_EOS.into(), Value::String("2".into()));
        let e = err_of(&m);
        assert!(e.contains(KEY_EOS), "{e}");

        let mut m = md.clone();
        m.insert(KEY_ADD_BOS.into(), Value::String("yes".into()));
        let e = err_of(&m);
        assert!(e.contains(KEY_ADD_BOS), "{e}");

        // The inverse rejects what it cannot write.
        let e = gguf_tokenizer_metadata(&json, "klingon", n, None, None, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("klingon"), "{e}");
        let e = gguf_tokenizer_metadata(&json, "qwen2", n - 1, None, None, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("vocab_size"), "{e}");
        let e = gguf_tokenizer_metadata(&json, "qwen2", n, None, Some(n as u32), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("eos_id"), "{e}");
        let mut wp = json.clone();
        wp["model"]["type"] = json!("WordPiece");
        let e = gguf_tokenizer_metadata(&wp, "qwen2", n, None, None, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("WordPiece"), "{e}");
    }
}
