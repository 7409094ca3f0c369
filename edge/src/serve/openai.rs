//! OpenAI-compatible `POST /v1/chat/completions` (with `stream`) and `GET /v1/models`.
//!
//! Supported: `messages` (string content or text parts), `temperature`, `top_p`, `max_tokens`
//! / `max_completion_tokens` (capped by `--max-tokens` and the context), `stop` (a string or up
//! to 4), `seed`, `stream` (SSE `data:` chunks ending in `data: [DONE]`) with
//! `stream_options.include_usage`. Other fields are ignored, as OpenAI-compatible servers
//! commonly do; `n` other than 1 is refused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use dgpo_core::agent::encode_prompt;
use dgpo_core::chat::Message;
use dgpo_core::generate::{GenerateOptions, Generation, StopReason, generate};
use dgpo_core::model::{LanguageModel, Session};
use dgpo_core::sampling::{Sampler, SamplingParams};
use dgpo_core::{Error, Result};
use hyper::Request;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Value, json};

use super::app::{App, read_json, run_job};
use super::body::{ApiError, Resp, sse_stream};
use super::cancel::{Cancel, CancellableSession};
use super::metrics::Phase;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    messages: Vec<ChatMessage>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    max_completion_tokens: Option<usize>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    n: Option<usize>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `GET /v1/models`.
pub fn models(app: &App) -> Value {
    static STARTED: OnceLock<u64> = OnceLock::new();
    json!({"object": "list", "data": [{
        "id": app.cfg.model_name,
        "object": "model",
        "created": *STARTED.get_or_init(unix_now),
        "owned_by": "dgpo",
    }]})
}

fn completion_id() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "chatcmpl-{:x}{:08x}",
        N.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

fn messages(r: &ChatRequest) -> Result<Vec<Message>, ApiError> {
    if r.messages.is_empty() {
        return Err(ApiError::bad_request("\"messages\" is empty"));
    }
    let mut out = Vec::with_capacity(r.messages.len());
    for (i, m) in r.messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ApiError::bad_request(format!(
                    "messages[{i}].role {other:?} is not supported (system, developer, user, assistant)"
                )));
            }
        };
        let content = match &m.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => {
                let mut s = String::new();
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => s.push_str(t),
                        (kind, _) => {
                            return Err(ApiError::bad_request(format!(
                                "messages[{i}]: content part {kind:?} is not supported (text only)"
                            )));
                        }
                    }
                }
                s
            }
        };
        out.push(Message::new(role, content));
    }
    Ok(out)
}

/// The prompt: the model's chat template, or plain `role: content` lines without one.
fn render(model: &dyn LanguageModel, msgs: &[Message]) -> Result<String> {
    match model.chat_template() {
        Some(t) => t.render(msgs, true),
        None => {
            let mut s = String::new();
            for m in msgs {
                s.push_str(&format!("{}: {}\n", m.role, m.content));
            }
            s.push_str("assistant: ");
            Ok(s)
        }
    }
}

struct Job {
    msgs: Vec<Message>,
    sampling: SamplingParams,
    max_tokens: usize,
    stop: Vec<String>,
}

fn job(app: &App, r: &ChatRequest) -> Result<Job, ApiError> {
    let msgs = messages(r)?;
    if r.n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad_request("only \"n\": 1 is supported"));
    }
    let temperature = r.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad_request(
            "\"temperature\" must be between 0 and 2",
        ));
    }
    let top_p = r.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad_request("\"top_p\" must be in (0, 1]"));
    }
    let asked = r.max_completion_tokens.or(r.max_tokens);
    if asked == Some(0) {
        return Err(ApiError::bad_request("\"max_tokens\" must be at least 1"));
    }
    // Larger requests are capped, not refused: finish_reason "length" tells the client.
    let max_tokens = asked.unwrap_or(app.cfg.max_tokens).min(app.cfg.max_tokens);
    let stop = match &r.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    if stop.len() > 4 || stop.iter().any(|s| s.is_empty()) {
        return Err(ApiError::bad_request(
            "\"stop\" takes up to 4 non-empty strings",
        ));
    }
    let seed = r.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    Ok(Job {
        msgs,
        sampling: SamplingParams {
            temperature,
            top_p,
            seed,
        },
        max_tokens,
        stop,
    })
}

/// Prefill the prompt and generate on a cancellable session; returns the prompt length too.
fn run(
    model: &dyn LanguageModel,
    job: Job,
    cancel: &Arc<Cancel>,
    on_text: &mut dyn FnMut(&str),
) -> Result<(usize, Generation)> {
    let prompt = render(model, &job.msgs)?;
    let ids = encode_prompt(model, &prompt)?;
    let mut session = CancellableSession::new(model.new_session()?, cancel.clone());
    let cap = session.capacity();
    if ids.is_empty() || ids.len() >= cap {
        return Err(Error::invalid(format!(
            "the messages make a {}-token prompt; the model's context holds {cap}",
            ids.len()
        )));
    }
    let mut sampler = Sampler::new(job.sampling);
    let opts = GenerateOptions {
        max_new_tokens: job.max_tokens.min(cap - ids.len()),
        stop: job.stop,
    };
    let g = generate(
        &mut session,
        model.tokenizer(),
        &ids,
        &mut sampler,
        &opts,
        on_text,
    )?;
    Ok((ids.len(), g))
}

/// The completion text as OpenAI returns it (without the stop string) and the finish reason.
fn finish(g: &Generation) -> (&str, &'static str) {
    match &g.stop {
        StopReason::Stop(s) => (g.text.strip_suffix(s.as_str()).unwrap_or(&g.text), "stop"),
        StopReason::Eos => (&g.text, "stop"),
        StopReason::Length | StopReason::ContextFull => (&g.text, "length"),
    }
}

fn record(app: &App, prompt: usize, g: &Generation) {
    let m = &app.metrics;
    m.tokens(prompt, g.tokens.len());
    m.phase_ms(Phase::Prefill, g.prefill_ms);
    m.phase_ms(Phase::Decode, g.decode_ms);
    m.phase_ms(Phase::Other, g.other_ms);
}

/// Streamed text with stop strings held back: a piece is released only once no stop string
/// can start inside it, so a client never sees part of a stop string.
struct Holdback<'a> {
    text: String,
    emitted: usize,
    stops: &'a [String],
}

impl Holdback<'_> {
    fn push(&mut self, piece: &str) -> Option<String> {
        self.text.push_str(piece);
        let mut safe = self.text.len();
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.text.find(s.as_str()))
            .min()
        {
            safe = at;
        } else {
            for s in self.stops {
                for k in (1..s.len()).rev() {
                    if s.is_char_boundary(k) && self.text.ends_with(&s[..k]) {
                        safe = safe.min(self.text.len() - k);
                        break;
                    }
                }
            }
        }
        while !self.text.is_char_boundary(safe) {
            safe -= 1;
        }
        if safe > self.emitted {
            let out = self.text[self.emitted..safe].to_string();
            self.emitted = safe;
            Some(out)
        } else {
            None
        }
    }
}

/// Handle `POST /v1/chat/completions`.
pub async fn completions(app: &Arc<App>, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let start = Instant::now();
    let r: ChatRequest = read_json(app, req).await?;
    let job = job(app, &r)?;
    let cancel = app.cancel_token(start);
    let permit = app.admit(&cancel).await?;
    let model = app.loaded()?.model.clone();
    let id = completion_id();
    let created = unix_now();
    let name = app.cfg.model_name.clone();
    if !r.stream.unwrap_or(false) {
        let (app2, c2) = (app.clone(), cancel.clone());
        let (prompt_tokens, g) = run_job(&cancel, permit, move || {
            let out = run(model.as_ref(), job, &c2, &mut |_| {});
            app2.note_outcome(&out, &c2);
            let out = out?;
            record(&app2, out.0, &out.1);
            Ok::<_, Error>(out)
        })
        .await?
        .map_err(|e| app.job_error(e, &cancel))?;
        let (text, reason) = finish(&g);
        return Ok(super::body::json(&json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": name,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": reason,
            }],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": g.tokens.len(),
                "total_tokens": prompt_tokens + g.tokens.len(),
            },
        })));
    }
    let include_usage = r.stream_options.unwrap_or_default().include_usage;
    let (resp, sink) = sse_stream(cancel.clone());
    let app = app.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let chunk = |delta: Value, reason: Option<&str>| {
            json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": name,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": reason}],
            })
            .to_string()
        };
        sink.data(&chunk(json!({"role": "assistant", "content": ""}), None));
        let stops = job.stop.clone();
        let mut hold = Holdback {
            text: String::new(),
            emitted: 0,
            stops: &stops,
        };
        let result = run(model.as_ref(), job, &cancel, &mut |piece| {
            if let Some(t) = hold.push(piece) {
                sink.data(&chunk(json!({"content": t}), None));
            }
        });
        app.note_outcome(&result, &cancel);
        match result {
            Ok((prompt_tokens, g)) => {
                record(&app, prompt_tokens, &g);
                let (text, reason) = finish(&g);
                if let Some(rest) = text.get(hold.emitted..).filter(|r| !r.is_empty()) {
                    sink.data(&chunk(json!({"content": rest}), None));
                }
                sink.data(&chunk(json!({}), Some(reason)));
                if include_usage {
                    let usage = json!({
                        "id": id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": name,
                        "choices": [],
                        "usage": {
                            "prompt_tokens": prompt_tokens,
                            "completion_tokens": g.tokens.len(),
                            "total_tokens": prompt_tokens + g.tokens.len(),
                        },
                    });
                    sink.data(&usage.to_string());
                }
            }
            Err(e) => {
                let err = app.job_error(e, &cancel);
                if !sink.is_closed() {
                    sink.data(&err.to_json().to_string());
                }
            }
        }
        sink.data("[DONE]");
    });
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdback_never_releases_part_of_a_stop_string() {
        let stops = vec!["</s>".to_string(), "STOP".to_string()];
        let mut h = Holdback {
            text: String::new(),
            emitted: 0,
            stops: &stops,
        };
        assert_eq!(h.push("hello <").as_deref(), Some("hello "));
        assert_eq!(h.push("/").as_deref(), None);
        // Not a stop after all: released.
        assert_eq!(h.push("x> ST").as_deref(), Some("</x> "));
        assert_eq!(h.push("OP and more").as_deref(), None);
        assert_eq!(h.text[..h.emitted], *"hello </x> ");
        // No stops: everything flows.
        let none: Vec<String> = Vec::new();
        let mut h = Holdback {
            text: String::new(),
            emitted: 0,
            stops: &none,
        };
        assert_eq!(h.push("é").as_deref(), Some("é"));
    }
}
