//! The Search-R1 agent loop.
//!
//! Per question: the chat-templated prompt is prefilled once; then up to `max_turns` turns of
//! "generate until `</search>` / `</answer>` / EOS / the token cap, act, append the observation",
//! and one final turn in which a search is no longer executed. The KV cache is kept across turns,
//! so each turn prefills only the tokens added since the last one (the Python reference re-encodes
//! the whole text every turn).
//!
//! Token ids are appended as they are generated or inserted, never recovered by decoding and
//! re-tokenising text, and every id is labelled as model-generated or observation in
//! [`Rollout::response_mask`]: the mask RL training needs.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::chat::Message;
use crate::generate::{GenerateOptions, StopReason, generate_cancellable};
use crate::model::{LanguageModel, Session};
use crate::protocol::{self, Action};
use crate::retrieve::Retriever;
use crate::sampling::{Sampler, SamplingParams};
use crate::trace::{Finish, Step, StepAction, Timings, Trace, TraceDoc};
use crate::{Error, Result};

/// Agent loop settings (defaults are Search-R1's).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentConfig {
    /// Turns in which a search is executed; one more, answer-only turn follows.
    pub max_turns: usize,
    /// Passages per search.
    pub topk: usize,
    /// New-token cap per turn.
    pub max_turn_tokens: usize,
    /// Observation tokens kept per `<information>` block (longer blocks are cut).
    pub max_obs_tokens: usize,
    /// Sampling (greedy by default, as in evaluation).
    pub sampling: SamplingParams,
    /// Wrap the prompt in the model's chat template when it has one.
    pub chat_template: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            max_turns: 4,
            topk: 3,
            max_turn_tokens: 500,
            max_obs_tokens: 500,
            sampling: SamplingParams::greedy(),
            chat_template: true,
        }
    }
}

/// Something that happened during a run, for streaming UIs.
#[derive(Debug)]
pub enum AgentEvent<'a> {
    /// Generated text, as it is produced.
    Text(&'a str),
    /// A turn is complete (with its action and observation).
    Step(&'a Step),
}

/// Token-level record of a run, for training.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Rollout {
    /// Prompt ids (chat template included).
    pub prompt_ids: Vec<u32>,
    /// Everything after the prompt, in context order.
    pub response_ids: Vec<u32>,
    /// 1 for tokens the model generated, 0 for observation tokens.
    pub response_mask: Vec<u8>,
    /// Sampling log-probabilities for generated tokens (NaN for observation tokens and for
    /// tokens re-encoded at a stop string).
    pub logprobs: Vec<f32>,
}

/// The prompt text for `question`: the Search-R1 instruction in the model's chat template.
pub fn build_prompt(
    model: &dyn LanguageModel,
    question: &str,
    use_template: bool,
) -> Result<String> {
    let user = protocol::user_prompt(question);
    match (use_template, model.chat_template()) {
        (true, Some(t)) => t.render(&[Message::new("user", user)], true),
        _ => Ok(user),
    }
}

/// Encode a prompt, prepending BOS when the model wants one and the template did not add it.
pub fn encode_prompt(model: &dyn LanguageModel, prompt: &str) -> Result<Vec<u32>> {
    let tok = model.tokenizer();
    let mut ids = tok.encode(prompt)?;
    if tok.add_bos()
        && let Some(b) = tok.bos_id()
        && ids.first() != Some(&b)
    {
        ids.insert(0, b);
    }
    Ok(ids)
}

/// A model and a retriever, ready to answer questions.
pub struct Agent<'a> {
    model: &'a dyn LanguageModel,
    retriever: &'a dyn Retriever,
    cfg: AgentConfig,
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn first_think(text: &str) -> Option<String> {
    let start = text.find("<think>")? + "<think>".len();
    let end = text[start..].find("</think>")? + start;
    Some(text[start..end].trim().to_string())
}

impl<'a> Agent<'a> {
    /// An agent over `model` and `retriever`.
    pub fn new(
        model: &'a dyn LanguageModel,
        retriever: &'a dyn Retriever,
        cfg: AgentConfig,
    ) -> Self {
        Agent {
            model,
            retriever,
            cfg,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AgentConfig {
        &self.cfg
    }

    /// Answer `question`.
    pub fn run(&self, question: &str) -> Result<Trace> {
        self.run_with(question, &mut |_| {}, &|| false)
            .map(|(t, _)| t)
    }

    /// Answer `question`, reporting events; `cancelled` is polled before every generated token
    /// and every turn, and ends the run with [`Error::Cancelled`].
    pub fn run_with(
        &self,
        question: &str,
        on_event: &mut dyn FnMut(AgentEvent<'_>),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<(Trace, Rollout)> {
        let mut session = self.model.new_session()?;
        let prompt = build_prompt(self.model, question, self.cfg.chat_template)?;
        let prompt_ids = encode_prompt(self.model, &prompt)?;
        self.run_session(question, session.as_mut(), prompt_ids, on_event, cancelled)
    }

    /// Run the loop on an existing session whose cache already holds a prefix of `prompt_ids`
    /// (prefix caching: the shared instruction can be prefilled once and reused).
    pub fn run_session(
        &self,
        question: &str,
        session: &mut dyn Session,
        prompt_ids: Vec<u32>,
        on_event: &mut dyn FnMut(AgentEvent<'_>),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<(Trace, Rollout)> {
        let run_start = Instant::now();
        let tok = self.model.tokenizer();
        let cached = session.len();
        if cached > prompt_ids.len() {
            return Err(Error::invalid("session holds more tokens than the prompt"));
        }
        let mut rollout = Rollout {
            prompt_ids: prompt_ids.clone(),
            ..Default::default()
        };
        let mut trace = Trace {
            question: question.to_string(),
            answer: None,
            finish: Finish::TurnLimit,
            steps: Vec::new(),
            response: String::new(),
            prompt_tokens: prompt_ids.len(),
            generated_tokens: 0,
            observation_tokens: 0,
            timings: Timings::default(),
        };
        let mut sampler = Sampler::new(self.cfg.sampling);
        let gen_opts = GenerateOptions {
            max_new_tokens: self.cfg.max_turn_tokens,
            stop: protocol::TURN_STOPS.iter().map(|s| s.to_string()).collect(),
        };
        // Tokens that are in the text but not yet in the KV cache.
        let mut pending: Vec<u32> = prompt_ids[cached..].to_vec();
        for turn in 0..=self.cfg.max_turns {
            if cancelled() {
                return Err(Error::Cancelled);
            }
            let search_enabled = turn < self.cfg.max_turns;
            let step_start = Instant::now();
            let prefill_tokens = pending.len();
            let g = generate_cancellable(
                session,
                tok,
                &pending,
                &mut sampler,
                &gen_opts,
                &mut |t| on_event(AgentEvent::Text(t)),
                cancelled,
            )?;
            if g.stop == StopReason::ContextFull && g.tokens.is_empty() {
                trace.finish = Finish::ContextFull;
                break;
            }
            pending = g.tokens[g.tokens.len() - g.unfed..].to_vec();
            rollout.response_ids.extend(&g.tokens);
            rollout
                .response_mask
                .extend(std::iter::repeat_n(1u8, g.tokens.len()));
            rollout.logprobs.extend(&g.logprobs);
            trace.generated_tokens += g.tokens.len();
            trace.response.push_str(&g.text);
            let mut timings = Timings {
                prefill_ms: g.prefill_ms,
                decode_ms: g.decode_ms,
                other_ms: g.other_ms,
                ..Default::default()
            };
            let action = protocol::parse_action(&g.text);
            let mut observation = None;
            let step_action = match action {
                Action::Answer(a) => {
                    trace.answer = Some(a.clone());
                    trace.finish = Finish::Answered;
                    StepAction::Answer { answer: a }
                }
                Action::Search(q) if search_enabled => {
                    let t = Instant::now();
                    let hits = self.retriever.search(&q, self.cfg.topk)?;
                    timings.retrieval_ms = ms(t);
                    let passages: Vec<_> = hits.iter().map(|h| h.passage.clone()).collect();
                    observation = Some(protocol::format_information(&passages));
                    let docs = hits.iter().map(TraceDoc::from).collect();
                    StepAction::Search {
                        query: q,
                        docs,
                        executed: true,
                    }
                }
                Action::Search(q) => StepAction::Search {
                    query: q,
                    docs: Vec::new(),
                    executed: false,
                },
                Action::Invalid => {
                    if search_enabled {
                        observation = Some(protocol::INVALID_ACTION.to_string());
                    }
                    StepAction::Invalid
                }
            };
            if let Some(obs) = &observation {
                let full = tok.encode(obs)?;
                let mut ids = full.clone();
                ids.truncate(self.cfg.max_obs_tokens);
                trace.observation_tokens += ids.len();
                rollout
                    .response_mask
                    .extend(std::iter::repeat_n(0u8, ids.len()));
                rollout
                    .logprobs
                    .extend(std::iter::repeat_n(f32::NAN, ids.len()));
                rollout.response_ids.extend(&ids);
                // The text the model sees is what these ids decode to (a cut block stays cut).
                let seen = if ids.len() == full.len() {
                    obs.clone()
                } else {
                    tok.decode(&ids)?
                };
                trace.response.push_str(&seen);
                pending.extend(ids);
            }
            timings.total_ms = ms(step_start);
            // Everything that is neither the model nor the retriever: the loop's own overhead.
            timings.other_ms =
                (timings.total_ms - timings.prefill_ms - timings.decode_ms - timings.retrieval_ms)
                    .max(0.0);
            let step = Step {
                turn,
                think: first_think(&g.text),
                generated: g.text,
                action: step_action,
                observation,
                prefill_tokens,
                generated_tokens: g.tokens.len(),
                timings,
            };
            trace.timings.add(&step.timings);
            on_event(AgentEvent::Step(&step));
            trace.steps.push(step);
            if trace.answer.is_some() {
                break;
            }
            if g.stop == StopReason::ContextFull {
                trace.finish = Finish::ContextFull;
                break;
            }
            if pending.is_empty() {
                // Nothing to feed (EOS on the final turn with nothing pending): done.
                break;
            }
        }
        trace.timings.total_ms = ms(run_start);
        Ok((trace, rollout))
    }
}
