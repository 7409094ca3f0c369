//! Oracle trajectories: core's real agent loop driven by a policy that knows the world.
//!
//! [`OracleModel`] is a [`LanguageModel`] whose next-token distribution puts all its mass on the
//! next token of a scripted turn (think, then search the oracle's query; after the last hop,
//! think, then answer). Everything else (prompt, stop strings, retrieval against the real
//! index, `<information>` formatting, observation truncation, the token-level response mask)
//! is the agent loop's own, so the trajectories are in exactly the format a trained model sees.
//!
//! Turn detection: the loop feeds a generated token back alone, and feeds a prompt or an
//! observation (with the previous turn's unfed tail) as one multi-token prefill; each
//! multi-token feed after the first starts the next scripted turn.

use std::path::PathBuf;

use dgpo_core::chat::ChatTemplate;
use dgpo_core::model::decoder::Arch;
use dgpo_core::model::{LanguageModel, ModelInfo, Session};
use dgpo_core::tokenizer::Tokenizer;
use dgpo_core::{Error, Result};

use super::world::Question;

/// The scripted turns for a question (Search-R1 tags, one action per turn).
pub fn oracle_turns(q: &Question) -> Vec<String> {
    let mut turns: Vec<String> = q
        .oracle
        .iter()
        .map(|h| {
            format!(
                "<think> I need to search for {}. </think>\n<search> {} </search>",
                h.title, h.query
            )
        })
        .collect();
    let a = &q.golden_answers[0];
    turns.push(format!(
        "<think> The documents say the answer is {a}. </think>\n<answer> {a} </answer>"
    ));
    turns
}

/// A policy that plays the oracle script of one question, or of whichever of several
/// questions its prompt asks (a perfect "teacher" for tests of the distillation pipeline).
pub struct OracleModel {
    tok: Tokenizer,
    info: ModelInfo,
    /// (question text, scripted turns as token ids).
    scripts: Vec<(String, Vec<Vec<u32>>)>,
    end: u32,
}

impl OracleModel {
    /// The oracle for `q`, speaking through `tok` (whose first end-of-generation id ends a
    /// finished script).
    pub fn new(tok: Tokenizer, q: &Question) -> Result<OracleModel> {
        Self::for_questions(tok, std::slice::from_ref(q))
    }

    /// An oracle for every question in `qs`: each session plays the script of the question
    /// found in its prompt (the first feed), and fails when the prompt asks none of them.
    pub fn for_questions(tok: Tokenizer, qs: &[Question]) -> Result<OracleModel> {
        let end = *tok.eos_ids().first().ok_or_else(|| {
            Error::invalid("the oracle's tokenizer needs an end-of-generation id")
        })?;
        let scripts = qs
            .iter()
            .map(|q| {
                let turns = oracle_turns(q)
                    .iter()
                    .map(|t| tok.encode(t))
                    .collect::<Result<Vec<_>>>()?;
                Ok((q.question.clone(), turns))
            })
            .collect::<Result<Vec<_>>>()?;
        let info = ModelInfo {
            arch: Arch::Qwen2,
            backend: "oracle".into(),
            path: PathBuf::from("oracle"),
            context_length: 1 << 20,
            vocab_size: tok.vocab_size(),
        };
        Ok(OracleModel {
            tok,
            info,
            scripts,
            end,
        })
    }
}

impl LanguageModel for OracleModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }
    fn tokenizer(&self) -> &Tokenizer {
        &self.tok
    }
    fn chat_template(&self) -> Option<&ChatTemplate> {
        None
    }
    fn new_session(&self) -> Result<Box<dyn Session + '_>> {
        Ok(Box::new(OracleSession {
            m: self,
            script: 0,
            started: false,
            turn: 0,
            pos: 0,
            len: 0,
        }))
    }
}

struct OracleSession<'a> {
    m: &'a OracleModel,
    script: usize,
    started: bool,
    turn: usize,
    pos: usize,
    len: usize,
}

impl OracleSession<'_> {
    fn logits(&self) -> Vec<f32> {
        let next = self.m.scripts[self.script]
            .1
            .get(self.turn)
            .and_then(|t| t.get(self.pos))
            .copied()
            .unwrap_or(self.m.end);
        let mut l = vec![0f32; self.m.info.vocab_size];
        l[next as usize] = 50.0;
        l
    }
}

impl Session for OracleSession<'_> {
    fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(Error::invalid("feed needs at least one token"));
        }
        if !self.started && self.m.scripts.len() > 1 {
            let prompt = self.m.tok.decode(tokens)?;
            self.script = self
                .m
                .scripts
                .iter()
                .position(|(q, _)| prompt.contains(q.as_str()))
                .ok_or_else(|| {
                    Error::invalid("the oracle knows none of the questions in this prompt")
                })?;
        }
        if tokens.len() > 1 || !self.started {
            if self.started {
                self.turn += 1;
            }
            self.started = true;
            self.pos = 0;
        } else {
            self.pos += 1;
        }
        self.len += tokens.len();
        Ok(self.logits())
    }
    fn feed_all(&mut self, _tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        Err(Error::invalid(
            "the oracle policy only plays the agent loop (feed), it does not score sequences",
        ))
    }
    fn len(&self) -> usize {
        self.len
    }
    fn truncate(&mut self, len: usize) -> Result<()> {
        self.len = self.len.min(len);
        Ok(())
    }
    fn capacity(&self) -> usize {
        self.m.info.context_length
    }
}

/// Run the oracle on each question through core's agent loop and keep the token-level
/// rollouts whose final answer is a golden answer (the rare misses are retrieval failures).
pub fn oracle_rollouts(
    tok: &Tokenizer,
    retriever: &dyn dgpo_core::retrieve::Retriever,
    questions: &[Question],
    cfg: &dgpo_core::agent::AgentConfig,
) -> Result<Vec<dgpo_core::agent::Rollout>> {
    let mut out = Vec::with_capacity(questions.len());
    for q in questions {
        let m = OracleModel::new(tok.clone(), q)?;
        let agent = dgpo_core::agent::Agent::new(&m, retriever, cfg.clone());
        let (trace, rollout) = agent.run_with(&q.question, &mut |_| {}, &|| false)?;
        if trace
            .answer
            .as_deref()
            .is_some_and(|a| q.golden_answers.iter().any(|g| g == a))
        {
            out.push(rollout);
        }
    }
    Ok(out)
}
