//! `libdgpo`: the C ABI of the dgpo agent runtime (see `include/dgpo.h`, generated from this
//! file by cbindgen; `include/dgpo.hpp` is a small C++17 wrapper over it).
//!
//! Conventions every entry point follows, so that no Rust failure ever reaches the C caller as
//! an abort:
//! - it returns a [`DgpoStatus`]; on failure it also stores a message (in `*out_error` when the
//!   caller passes that pointer, and always in a per-thread "last error", see
//!   [`dgpo_last_error`]);
//! - panics are caught at the boundary and reported as [`DgpoStatus::Panic`];
//! - NULL pointers and invalid UTF-8 are reported as errors, never dereferenced or trusted;
//! - every string the library hands out is allocated by the library and freed with
//!   [`dgpo_string_free`], except the static strings of [`dgpo_version`] and
//!   [`dgpo_status_name`].

#![deny(unsafe_op_in_unsafe_fn)]

use std::cell::{Cell, RefCell};
use std::ffi::{CStr, CString, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use dgpo_core::Error;
use dgpo_core::agent::{Agent, AgentConfig, AgentEvent};
use dgpo_core::model::{BackendKind, LanguageModel, LoadOptions};
use dgpo_core::retrieve::{self, Retriever, RetrieverSpec};
use serde::Deserialize;

/// What a call returned. Every value but `DGPO_STATUS_OK` comes with a message.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DgpoStatus {
    /// Success.
    Ok = 0,
    /// A pointer argument that must not be NULL was NULL.
    NullArgument = 1,
    /// A string argument was not valid UTF-8.
    InvalidUtf8 = 2,
    /// The configuration JSON is malformed, has an unknown key, or misses a required one.
    InvalidConfig = 3,
    /// A file could not be read (the message names it): e.g. a config naming a missing model.
    Io = 4,
    /// A file exists but its content is wrong (bad model, corpus line, tokenizer).
    Format = 5,
    /// The model failed while running (tensor, tokenizer, template or backend error).
    Model = 6,
    /// The retriever (index, corpus search, remote server) failed.
    Retrieval = 7,
    /// The run was cancelled through the cancel flag or the step callback.
    Cancelled = 8,
    /// A bug inside the library was caught at the boundary (the message says where).
    Panic = 9,
    /// Any other invalid argument (the message says which).
    InvalidArgument = 10,
}

/// An agent: a loaded model and a retriever with their settings. Opaque to C.
///
/// It holds only shared, immutable state (each question gets its own KV cache), which is why one
/// handle may be used from several threads at once.
pub struct DgpoAgent {
    model: Arc<dyn LanguageModel>,
    retriever: Arc<dyn Retriever>,
    cfg: AgentConfig,
}

/// Called once per completed agent step with the step as JSON (borrowed: valid only during the
/// call; copy it to keep it) and the caller's `user_data`. Return 0 to go on, anything else to
/// cancel the run (the ask then returns `DGPO_STATUS_CANCELLED`). It runs on the thread that
/// called `dgpo_ask`, before `dgpo_ask` returns.
pub type DgpoStepCallback =
    Option<unsafe extern "C" fn(step_json: *const c_char, user_data: *mut c_void) -> i32>;

/// The JSON configuration of [`dgpo_open`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    model: PathBuf,
    tokenizer: Option<PathBuf>,
    index: Option<PathBuf>,
    embedder: Option<String>,
    corpus: Option<PathBuf>,
    backend: Option<String>,
    max_turns: Option<usize>,
    topk: Option<usize>,
    threads: Option<usize>,
    max_context: Option<usize>,
    max_turn_tokens: Option<usize>,
    max_obs_tokens: Option<usize>,
    chat_template: Option<bool>,
}

/// An error on its way to the caller.
struct Failure {
    status: DgpoStatus,
    msg: String,
}

impl Failure {
    fn new(status: DgpoStatus, msg: impl Into<String>) -> Self {
        Failure {
            status,
            msg: msg.into(),
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::Io { .. } => DgpoStatus::Io,
            Error::Format { .. } | Error::Line { .. } => DgpoStatus::Format,
            Error::Invalid(_) => DgpoStatus::InvalidArgument,
            Error::Candle(_) | Error::Tokenizer(_) | Error::Template(_) | Error::Backend { .. } => {
                DgpoStatus::Model
            }
            Error::Index { .. } | Error::Remote { .. } => DgpoStatus::Retrieval,
            Error::Cancelled => DgpoStatus::Cancelled,
        };
        Failure::new(status, e.to_string())
    }
}

thread_local! {
    /// The message of the last failed call on this thread (`None` after a success).
    static LAST_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// A C string the caller owns (freed with [`dgpo_string_free`]). Interior NULs cannot occur in
/// JSON or in our messages, but are replaced rather than trusted.
fn to_c(s: String) -> *mut c_char {
    let s = CString::new(s).unwrap_or_else(|e| {
        let mut v = e.into_vec();
        v.retain(|&b| b != 0);
        CString::new(v).unwrap_or_default()
    });
    s.into_raw()
}

/// Run `f` at the boundary: catch panics, record the error, fill `out_error`.
///
/// # Safety
/// `out_error` is NULL or valid for one pointer write.
unsafe fn boundary(
    out_error: *mut *mut c_char,
    f: impl FnOnce() -> Result<(), Failure>,
) -> DgpoStatus {
    if !out_error.is_null() {
        // SAFETY: the caller promises out_error is writable when non-null.
        unsafe { *out_error = ptr::null_mut() };
    }
    let result = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(Failure::new(
                DgpoStatus::Panic,
                format!("internal error (panic): {what}"),
            ))
        }
    };
    match result {
        Ok(()) => {
            LAST_ERROR.with(|l| *l.borrow_mut() = None);
            DgpoStatus::Ok
        }
        Err(fail) => {
            if !out_error.is_null() {
                // SAFETY: as above.
                unsafe { *out_error = to_c(fail.msg.clone()) };
            }
            LAST_ERROR.with(|l| *l.borrow_mut() = Some(fail.msg));
            fail.status
        }
    }
}

/// Borrow a NUL-terminated UTF-8 argument named `what`.
///
/// # Safety
/// `p` is NULL or a valid NUL-terminated string that outlives the call.
unsafe fn arg_str<'a>(p: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if p.is_null() {
        return Err(Failure::new(
            DgpoStatus::NullArgument,
            format!("{what} is NULL"),
        ));
    }
    // SAFETY: non-null and NUL-terminated by the caller's contract.
    let bytes = unsafe { CStr::from_ptr(p) };
    bytes.to_str().map_err(|e| {
        Failure::new(
            DgpoStatus::InvalidUtf8,
            format!("{what} is not valid UTF-8 (byte {})", e.valid_up_to()),
        )
    })
}

/// Check an output pointer named `what`.
fn out_ptr<T>(p: *mut T, what: &str) -> Result<(), Failure> {
    if p.is_null() {
        Err(Failure::new(
            DgpoStatus::NullArgument,
            format!("{what} is NULL"),
        ))
    } else {
        Ok(())
    }
}

fn open_agent(json: &str) -> Result<DgpoAgent, Failure> {
    let cfg: Config = serde_json::from_str(json).map_err(|e| {
        Failure::new(
            DgpoStatus::InvalidConfig,
            format!("config JSON, line {} column {}: {e}", e.line(), e.column()),
        )
    })?;
    let spec = match (&cfg.index, &cfg.corpus) {
        (Some(dir), None) => RetrieverSpec::Index {
            dir: dir.clone(),
            embedder: cfg.embedder.clone(),
        },
        (None, Some(path)) => {
            if cfg.embedder.is_some() {
                return Err(Failure::new(
                    DgpoStatus::InvalidConfig,
                    "config key \"embedder\" applies to \"index\", not to \"corpus\"",
                ));
            }
            RetrieverSpec::Corpus(path.clone())
        }
        _ => {
            return Err(Failure::new(
                DgpoStatus::InvalidConfig,
                "config needs exactly one of \"index\" (a disk index directory) and \"corpus\" (a JSONL file)",
            ));
        }
    };
    let backend = match &cfg.backend {
        None => BackendKind::Auto,
        Some(b) => b.parse::<BackendKind>().map_err(|e| {
            Failure::new(
                DgpoStatus::InvalidConfig,
                format!("config key \"backend\": {e}"),
            )
        })?,
    };
    if cfg.threads == Some(0) {
        return Err(Failure::new(
            DgpoStatus::InvalidConfig,
            "config key \"threads\" must be at least 1",
        ));
    }
    let mut agent_cfg = AgentConfig::default();
    if let Some(v) = cfg.max_turns {
        agent_cfg.max_turns = v;
    }
    if let Some(v) = cfg.topk {
        agent_cfg.topk = v;
    }
    if let Some(v) = cfg.max_turn_tokens {
        agent_cfg.max_turn_tokens = v;
    }
    if let Some(v) = cfg.max_obs_tokens {
        agent_cfg.max_obs_tokens = v;
    }
    if let Some(v) = cfg.chat_template {
        agent_cfg.chat_template = v;
    }
    let opts = LoadOptions {
        tokenizer: cfg.tokenizer.clone(),
        backend,
        threads: cfg.threads,
        max_context: cfg.max_context,
        ..Default::default()
    };
    let model = dgpo_core::model::load(&cfg.model, &opts)?;
    let retriever = retrieve::open(&spec)?;
    Ok(DgpoAgent {
        model,
        retriever,
        cfg: agent_cfg,
    })
}

/// The library version (e.g. `"0.1.0"`) as a static NUL-terminated string.
///
/// Ownership: static; never free it. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn dgpo_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The name of a status (e.g. `"cancelled"`) as a static NUL-terminated string.
///
/// Ownership: static; never free it. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn dgpo_status_name(status: DgpoStatus) -> *const c_char {
    let s: &'static str = match status {
        DgpoStatus::Ok => "ok\0",
        DgpoStatus::NullArgument => "null argument\0",
        DgpoStatus::InvalidUtf8 => "invalid utf-8\0",
        DgpoStatus::InvalidConfig => "invalid config\0",
        DgpoStatus::Io => "i/o error\0",
        DgpoStatus::Format => "bad file format\0",
        DgpoStatus::Model => "model error\0",
        DgpoStatus::Retrieval => "retrieval error\0",
        DgpoStatus::Cancelled => "cancelled\0",
        DgpoStatus::Panic => "internal error\0",
        DgpoStatus::InvalidArgument => "invalid argument\0",
    };
    s.as_ptr().cast()
}

/// Open an agent from a JSON configuration object:
///
/// ```json
/// {"model": "model.gguf or HF folder", "corpus": "passages.jsonl"}
/// ```
///
/// Keys: `model` (required: a GGUF file or a Hugging Face folder); exactly one of `index` (a
/// disk index directory built by `edge index build`) and `corpus` (a JSONL corpus searched
/// exactly in memory with BM25); optional `embedder` (query embedder overriding the index's),
/// `tokenizer` (a tokenizer.json overriding the model's), `backend` (`"auto"`, `"candle"`,
/// `"llama"`), `max_turns` (default 4), `topk` (passages per search, default 3), `threads`
/// (llama.cpp CPU threads; candle uses its rayon pool, sized by `RAYON_NUM_THREADS`),
/// `max_context` (context cap in tokens), `max_turn_tokens` (default 500), `max_obs_tokens`
/// (default 500), `chat_template` (default true). Unknown keys are errors.
///
/// On success stores a new handle in `*out_agent` and returns `DGPO_STATUS_OK`; on failure
/// stores NULL there, returns the status and, when `out_error` is not NULL, stores a message in
/// `*out_error`.
///
/// Ownership: `config_json` is borrowed. The caller owns the handle (release it with
/// `dgpo_close`) and the message (release it with `dgpo_string_free`).
/// Thread-safe: any number of agents may be opened concurrently.
///
/// # Safety
/// `config_json` is NULL or a NUL-terminated string; `out_agent` is NULL or writable;
/// `out_error` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dgpo_open(
    config_json: *const c_char,
    out_agent: *mut *mut DgpoAgent,
    out_error: *mut *mut c_char,
) -> DgpoStatus {
    // SAFETY: the pointer contracts are the caller's, as documented.
    unsafe {
        boundary(out_error, || {
            out_ptr(out_agent, "out_agent")?;
            *out_agent = ptr::null_mut();
            let json = arg_str(config_json, "config_json")?;
            let agent = open_agent(json)?;
            *out_agent = Box::into_raw(Box::new(agent));
            Ok(())
        })
    }
}

/// Answer `question` with the agent loop (Search-R1 protocol) and store the trace as a JSON
/// object in `*out_json`: `question`, `answer` (null when the model gave none), `finish`
/// (`"answered"`, `"turn_limit"`, `"context_full"`), `steps` (one object per turn: `turn`,
/// `generated`, `action` with `kind` = `"search"` / `"answer"` / `"invalid"`, `observation`,
/// token counts and `timings`), `response`, token counts and `timings`.
///
/// `on_step` (may be NULL) is called once per completed step with that step's JSON, on the
/// calling thread; returning non-zero cancels. `cancel` (may be NULL) points to a flag read
/// atomically before every generated token: set it to non-zero from any thread (C11
/// `atomic_store`, `__atomic_store_n`, or a `std::atomic<int32_t>` in C++) to stop the run
/// within one token. A cancelled run returns `DGPO_STATUS_CANCELLED` and no trace.
///
/// Ownership: `question`, `user_data` and `cancel` are borrowed for the call. The caller owns
/// `*out_json` and `*out_error` (release each with `dgpo_string_free`); on failure `*out_json`
/// is NULL.
/// Thread-safe: several threads may ask on the same handle (or on different handles) at once;
/// each question has its own KV cache. Only `dgpo_close` must not overlap with it.
///
/// # Safety
/// `agent` is NULL or a live handle from `dgpo_open`; `question` is NULL or NUL-terminated;
/// `cancel` is NULL or a 4-byte-aligned flag that stays valid during the call; `out_json` and
/// `out_error` are NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dgpo_ask(
    agent: *const DgpoAgent,
    question: *const c_char,
    on_step: DgpoStepCallback,
    user_data: *mut c_void,
    cancel: *const i32,
    out_json: *mut *mut c_char,
    out_error: *mut *mut c_char,
) -> DgpoStatus {
    // SAFETY: the pointer contracts are the caller's, as documented.
    unsafe {
        boundary(out_error, || {
            out_ptr(out_json, "out_json")?;
            *out_json = ptr::null_mut();
            let agent = agent
                .as_ref()
                .ok_or_else(|| Failure::new(DgpoStatus::NullArgument, "agent is NULL"))?;
            let question = arg_str(question, "question")?;
            // AtomicI32 has the layout of i32; the flag is only loaded.
            let flag = (!cancel.is_null()).then(|| AtomicI32::from_ptr(cancel.cast_mut()));
            let stop_from_callback = Cell::new(false);
            let step_json_error: Cell<Option<String>> = Cell::new(None);
            let mut on_event = |ev: AgentEvent<'_>| {
                let (AgentEvent::Step(step), Some(cb)) = (ev, on_step) else {
                    return;
                };
                match serde_json::to_string(step) {
                    Ok(json) => {
                        let json = CString::new(json).unwrap_or_default();
                        if cb(json.as_ptr(), user_data) != 0 {
                            stop_from_callback.set(true);
                        }
                    }
                    Err(e) => {
                        step_json_error.set(Some(e.to_string()));
                        stop_from_callback.set(true);
                    }
                }
            };
            let cancelled =
                || stop_from_callback.get() || flag.is_some_and(|f| f.load(Ordering::Relaxed) != 0);
            let runner = Agent::new(
                agent.model.as_ref(),
                agent.retriever.as_ref(),
                agent.cfg.clone(),
            );
            let result = runner.run_with(question, &mut on_event, &cancelled);
            if let Some(e) = step_json_error.take() {
                return Err(Failure::new(
                    DgpoStatus::Panic,
                    format!("internal error: step JSON: {e}"),
                ));
            }
            let (trace, _) = result?;
            let json = serde_json::to_string(&trace).map_err(|e| {
                Failure::new(
                    DgpoStatus::Panic,
                    format!("internal error: trace JSON: {e}"),
                )
            })?;
            *out_json = to_c(json);
            Ok(())
        })
    }
}

/// Search the agent's retriever directly and store the top `k` passages as a JSON array in
/// `*out_json`: `[{"id", "title", "text", "score"}, ...]`, best first.
///
/// Ownership: `query` is borrowed; the caller owns `*out_json` and `*out_error` (release each
/// with `dgpo_string_free`). Thread-safe, like `dgpo_ask`.
///
/// # Safety
/// `agent` is NULL or a live handle; `query` is NULL or NUL-terminated; `out_json` and
/// `out_error` are NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dgpo_search(
    agent: *const DgpoAgent,
    query: *const c_char,
    k: usize,
    out_json: *mut *mut c_char,
    out_error: *mut *mut c_char,
) -> DgpoStatus {
    // SAFETY: the pointer contracts are the caller's, as documented.
    unsafe {
        boundary(out_error, || {
            out_ptr(out_json, "out_json")?;
            *out_json = ptr::null_mut();
            let agent = agent
                .as_ref()
                .ok_or_else(|| Failure::new(DgpoStatus::NullArgument, "agent is NULL"))?;
            let query = arg_str(query, "query")?;
            let hits = agent.retriever.search(query, k)?;
            let docs: Vec<_> = hits.iter().map(dgpo_core::trace::TraceDoc::from).collect();
            let json = serde_json::to_string(&docs).map_err(|e| {
                Failure::new(DgpoStatus::Panic, format!("internal error: hits JSON: {e}"))
            })?;
            *out_json = to_c(json);
            Ok(())
        })
    }
}

/// A copy of the message of the last failed call made on this thread, or NULL when the last
/// call succeeded (or none failed yet). Useful when `out_error` was passed as NULL.
///
/// Ownership: the caller owns the copy (release it with `dgpo_string_free`). Thread-safe: each
/// thread sees its own last error.
#[unsafe(no_mangle)]
pub extern "C" fn dgpo_last_error() -> *mut c_char {
    catch_unwind(|| LAST_ERROR.with(|l| l.borrow().clone()))
        .ok()
        .flatten()
        .map_or(ptr::null_mut(), to_c)
}

/// Release a string this library returned (`*out_json`, `*out_error`, `dgpo_last_error`).
/// NULL is ignored.
///
/// Ownership: takes the string back; using it afterwards, freeing it twice, or passing a string
/// that did not come from this library (or the static ones of `dgpo_version` /
/// `dgpo_status_name`) is undefined behaviour. Thread-safe for distinct strings.
///
/// # Safety
/// `s` is NULL or a string from this library not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dgpo_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: it came from CString::into_raw in this library (caller's contract).
        drop(unsafe { CString::from_raw(s) });
    }
}

/// Close an agent and release its model and retriever. NULL is ignored.
///
/// Ownership: takes the handle back. Not thread-safe with respect to the handle: no other call
/// may be running on it, and it must not be used afterwards. Closing the same handle twice is
/// undefined behaviour (the library cannot detect it: the handle is freed memory by then), so
/// set your pointer to NULL after closing (the C++ wrapper does this for you).
///
/// # Safety
/// `agent` is NULL or a live handle from `dgpo_open` that no other thread is using.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dgpo_close(agent: *mut DgpoAgent) {
    if !agent.is_null() {
        // A panic in a destructor must not unwind into C either.
        // SAFETY: the handle came from Box::into_raw in dgpo_open (caller's contract).
        let b = unsafe { Box::from_raw(agent) };
        let _ = catch_unwind(AssertUnwindSafe(move || drop(b)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(p: *mut c_char) -> String {
        assert!(!p.is_null());
        // SAFETY: a string from this library.
        let s = unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string();
        unsafe { dgpo_string_free(p) };
        s
    }

    #[test]
    fn panics_become_status_and_message() {
        let mut err = ptr::null_mut();
        let st = unsafe { boundary(&mut err, || panic!("boom {}", 42)) };
        assert_eq!(st, DgpoStatus::Panic);
        assert_eq!(take(err), "internal error (panic): boom 42");
        assert_eq!(take(dgpo_last_error()), "internal error (panic): boom 42");
        // A success clears the thread's last error.
        let st = unsafe { boundary(ptr::null_mut(), || Ok(())) };
        assert_eq!(st, DgpoStatus::Ok);
        assert!(dgpo_last_error().is_null());
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = open_agent(r#"{"model": "m", "corpus": "c", "topk": 3, "tpok": 1}"#)
            .err()
            .unwrap();
        assert_eq!(e.status, DgpoStatus::InvalidConfig);
        assert!(e.msg.contains("unknown field `tpok`"), "{}", e.msg);
        let e = open_agent(r#"{"model": "m"}"#).err().unwrap();
        assert_eq!(e.status, DgpoStatus::InvalidConfig);
        assert!(e.msg.contains("exactly one of"), "{}", e.msg);
        let e = open_agent(r#"{"model": "m", "corpus": "c", "backend": "gpu"}"#)
            .err()
            .unwrap();
        assert_eq!(e.status, DgpoStatus::InvalidConfig);
        assert!(e.msg.contains("backend"), "{}", e.msg);
        let e = open_agent("{\"model\": ").err().unwrap();
        assert_eq!(e.status, DgpoStatus::InvalidConfig);
        assert!(e.msg.contains("line 1"), "{}", e.msg);
    }

    #[test]
    fn version_matches_the_crate() {
        let v = unsafe { CStr::from_ptr(dgpo_version()) };
        assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }
}
