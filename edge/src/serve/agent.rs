//! `POST /v1/agent`: one question through the Search-R1 agent loop.
//!
//! Request `{"question", "max_turns"?, "topk"?, "max_turn_tokens"?, "temperature"?, "top_p"?,
//! "seed"?, "stream"?}`. Without `stream` the answer is `{"answer", "finish", "model", "trace",
//! "timings"}`. With `"stream": true` it is Server-Sent Events: `text` (generated text as it is
//! produced), then per finished turn `think`, `search`, `information` (the retrieved documents),
//! `answer` or `invalid`, and last `done` (answer, finish, the whole trace, timings) or `error`.

use std::sync::Arc;
use std::time::Instant;

use dgpo_core::agent::{Agent, AgentConfig, AgentEvent, build_prompt, encode_prompt};
use dgpo_core::model::{LanguageModel, Session};
use dgpo_core::retrieve::Retriever;
use dgpo_core::sampling::SamplingParams;
use dgpo_core::trace::{Step, StepAction, Trace};
use dgpo_core::{Error, Result};
use hyper::Request;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use super::app::{App, read_json, run_job};
use super::body::{ApiError, EventSink, Resp, sse_stream};
use super::cancel::{Cancel, CancellableSession};
use super::metrics::Phase;

/// Longest question accepted, in bytes (the prompt must also fit the model's context).
const MAX_QUESTION_BYTES: usize = 16 * 1024;

#[derive(Debug, Deserialize)]
struct AgentRequest {
    question: String,
    #[serde(default)]
    max_turns: Option<usize>,
    #[serde(default)]
    topk: Option<usize>,
    #[serde(default)]
    max_turn_tokens: Option<usize>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stream: bool,
}

fn config(app: &App, r: &AgentRequest) -> Result<AgentConfig, ApiError> {
    let d = AgentConfig::default();
    let c = &app.cfg;
    if r.question.trim().is_empty() {
        return Err(ApiError::bad_request("\"question\" is empty"));
    }
    if r.question.len() > MAX_QUESTION_BYTES {
        return Err(ApiError::bad_request(format!(
            "\"question\" is longer than {MAX_QUESTION_BYTES} bytes"
        )));
    }
    let max_turns = r.max_turns.unwrap_or(d.max_turns.min(c.max_turns));
    if max_turns > c.max_turns {
        return Err(ApiError::bad_request(format!(
            "\"max_turns\" {max_turns} is above this server's limit of {}",
            c.max_turns
        )));
    }
    let topk = r.topk.unwrap_or(c.topk);
    if topk == 0 || topk > c.max_topk {
        return Err(ApiError::bad_request(format!(
            "\"topk\" must be between 1 and {}",
            c.max_topk
        )));
    }
    let max_turn_tokens = r
        .max_turn_tokens
        .unwrap_or(d.max_turn_tokens.min(c.max_tokens));
    if max_turn_tokens == 0 || max_turn_tokens > c.max_tokens {
        return Err(ApiError::bad_request(format!(
            "\"max_turn_tokens\" must be between 1 and {}",
            c.max_tokens
        )));
    }
    let temperature = r.temperature.unwrap_or(0.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad_request(
            "\"temperature\" must be between 0 and 2",
        ));
    }
    let top_p = r.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad_request("\"top_p\" must be in (0, 1]"));
    }
    Ok(AgentConfig {
        max_turns,
        topk,
        max_turn_tokens,
        sampling: SamplingParams {
            temperature,
            top_p,
            seed: r.seed.unwrap_or(0),
        },
        ..d
    })
}

/// Run the agent on a cancellable session.
fn run_agent(
    model: &dyn LanguageModel,
    retriever: &dyn Retriever,
    cfg: AgentConfig,
    question: &str,
    cancel: &Arc<Cancel>,
    on_event: &mut dyn FnMut(AgentEvent<'_>),
) -> Result<Trace> {
    let prompt = build_prompt(model, question, cfg.chat_template)?;
    let ids = encode_prompt(model, &prompt)?;
    let mut session = CancellableSession::new(model.new_session()?, cancel.clone());
    if ids.len() >= session.capacity() {
        return Err(Error::invalid(format!(
            "the question makes a {}-token prompt; the model's context holds {}",
            ids.len(),
            session.capacity()
        )));
    }
    let agent = Agent::new(model, retriever, cfg);
    let (trace, _) = agent.run_session(question, &mut session, ids, on_event, &|| {
        cancel.is_cancelled()
    })?;
    Ok(trace)
}

fn record(app: &App, t: &Trace) {
    let m = &app.metrics;
    m.tokens(t.prompt_tokens, t.generated_tokens);
    m.phase_ms(Phase::Prefill, t.timings.prefill_ms);
    m.phase_ms(Phase::Decode, t.timings.decode_ms);
    m.phase_ms(Phase::Retrieval, t.timings.retrieval_ms);
    m.phase_ms(Phase::Other, t.timings.other_ms);
}

fn done_json(app: &App, t: &Trace) -> serde_json::Value {
    json!({
        "answer": t.answer,
        "finish": t.finish,
        "model": app.cfg.model_name,
        "trace": t,
        "timings": t.timings,
    })
}

/// The SSE events of one finished turn.
fn step_events(sink: &EventSink, s: &Step) {
    let turn = s.turn;
    if let Some(th) = &s.think {
        sink.event("think", &json!({"turn": turn, "think": th}));
    }
    match &s.action {
        StepAction::Search {
            query,
            docs,
            executed,
        } => {
            sink.event(
                "search",
                &json!({"turn": turn, "query": query, "executed": executed}),
            );
            if *executed {
                sink.event(
                    "information",
                    &json!({"turn": turn, "docs": docs, "observation": s.observation}),
                );
            }
        }
        StepAction::Answer { answer } => {
            sink.event("answer", &json!({"turn": turn, "answer": answer}));
        }
        StepAction::Invalid => {
            sink.event(
                "invalid",
                &json!({"turn": turn, "generated": s.generated, "observation": s.observation}),
            );
        }
    }
}

/// Handle `POST /v1/agent`.
pub async fn handle(app: &Arc<App>, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let start = Instant::now();
    let r: AgentRequest = read_json(app, req).await?;
    let cfg = config(app, &r)?;
    let cancel = app.cancel_token(start);
    let permit = app.admit(&cancel).await?;
    let loaded = app.loaded()?;
    let (model, retriever) = (loaded.model.clone(), loaded.retriever.clone());
    let question = r.question;
    if !r.stream {
        let (app2, c2) = (app.clone(), cancel.clone());
        let trace = run_job(&cancel, permit, move || {
            let t = run_agent(
                model.as_ref(),
                retriever.as_ref(),
                cfg,
                &question,
                &c2,
                &mut |_| {},
            );
            app2.note_outcome(&t, &c2);
            let t = t?;
            record(&app2, &t);
            Ok::<_, Error>(t)
        })
        .await?
        .map_err(|e| app.job_error(e, &cancel))?;
        return Ok(super::body::json(&done_json(app, &trace)));
    }
    let (resp, sink) = sse_stream(cancel.clone());
    let app = app.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut turn = 0usize;
        let result = run_agent(
            model.as_ref(),
            retriever.as_ref(),
            cfg,
            &question,
            &cancel,
            &mut |ev| match ev {
                AgentEvent::Text(t) => {
                    if !t.is_empty() {
                        sink.event("text", &json!({"turn": turn, "text": t}));
                    }
                }
                AgentEvent::Step(s) => {
                    step_events(&sink, s);
                    turn = s.turn + 1;
                }
            },
        );
        app.note_outcome(&result, &cancel);
        match result {
            Ok(t) => {
                record(&app, &t);
                sink.event("done", &done_json(&app, &t));
            }
            Err(e) => {
                let err = app.job_error(e, &cancel);
                if !sink.is_closed() {
                    sink.event("error", &err.to_json());
                }
            }
        }
    });
    Ok(resp)
}
