//! Evidence-given runs: ARCap's Source Referencing and Thinking.
//!
//! The paper measures "information extraction when the correct evidence is directly available",
//! with and without thinking (Table 2), but its protocol text is not public. **This is our
//! definition** (documented here and in every report):
//!
//! 1. The evidence passage is the first passage containing a golden answer (normalised,
//!    whole-word match over title and text) among: the retriever's top
//!    [`super::EvalConfig::evidence_depth`] results for the question, by rank; else a passage the
//!    dataset names (`evidence_ids`, looked up in the corpus); else the first such passage in
//!    corpus order (when a corpus is loaded). Questions with no such passage are left out of
//!    these scores (their count is reported).
//! 2. The context is the usual Search-R1 prompt (chat template included), then an assistant
//!    turn that starts with the evidence as an observation block,
//!    `<information>Doc 1(Title: …) …</information>\n\n` (the training observation format
//!    without its leading blank line), then a forced prefix:
//!    - "w/o think": `<answer>`; generation stops at `</answer>`;
//!    - "w/ think": `<think>`; generation stops at `</answer>` or `</search>`.
//! 3. One generation (greedy, the per-turn token cap), no retrieval. The answer is the first
//!    `<answer>…</answer>` of prefix + generated text; a run that searches or never closes an
//!    answer has no answer and scores 0. EM as everywhere else.
//!
//! The Thinking effect is EM(w/ think) − EM(w/o think).

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::score::{contains_normalized, exact_match};
use crate::Result;
use crate::agent::{build_prompt, encode_prompt};
use crate::corpus::Passage;
use crate::data::Question;
use crate::generate::{GenerateOptions, generate};
use crate::model::LanguageModel;
use crate::protocol::{self, Action};
use crate::retrieve::Retriever;
use crate::sampling::{Sampler, SamplingParams};

/// Where the evidence passage was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvidenceSource {
    /// In the retriever's results for the question.
    Retrieval,
    /// Named by the dataset (`evidence_ids`).
    Dataset,
    /// Found by scanning the corpus.
    Corpus,
}

/// The passage given as evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// The passage.
    pub passage: Passage,
    /// How it was found.
    pub source: EvidenceSource,
    /// 1-based retrieval rank (for [`EvidenceSource::Retrieval`]).
    pub rank: Option<usize>,
}

fn has_answer(p: &Passage, golden: &[String]) -> bool {
    let text = format!("{} {}", p.title, p.text);
    golden.iter().any(|g| contains_normalized(&text, g))
}

/// Find the evidence passage for `q` (see the module docs for the order).
pub fn find_evidence(
    q: &Question,
    retriever: &dyn Retriever,
    corpus: Option<&[Passage]>,
    depth: usize,
) -> Result<Option<Evidence>> {
    if depth > 0 {
        for (i, hit) in retriever
            .search(&q.question, depth)?
            .into_iter()
            .enumerate()
        {
            if has_answer(&hit.passage, &q.golden_answers) {
                return Ok(Some(Evidence {
                    passage: hit.passage,
                    source: EvidenceSource::Retrieval,
                    rank: Some(i + 1),
                }));
            }
        }
    }
    let Some(corpus) = corpus else {
        return Ok(None);
    };
    for id in &q.evidence_ids {
        if let Some(p) = corpus.iter().find(|p| &p.id == id) {
            return Ok(Some(Evidence {
                passage: p.clone(),
                source: EvidenceSource::Dataset,
                rank: None,
            }));
        }
    }
    Ok(corpus
        .iter()
        .find(|p| has_answer(p, &q.golden_answers))
        .map(|p| Evidence {
            passage: p.clone(),
            source: EvidenceSource::Corpus,
            rank: None,
        }))
}

/// What the assistant turn is forced to begin with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Forced {
    /// `<answer>`: answer directly ("w/o think").
    Answer,
    /// `<think>`: reason first ("w/ think").
    Think,
}

impl Forced {
    /// The forced prefix.
    pub fn prefix(self) -> &'static str {
        match self {
            Forced::Answer => "<answer>",
            Forced::Think => "<think>",
        }
    }
}

/// The prompt text of an evidence-given run: Search-R1 prompt, the evidence block at the start
/// of the assistant turn, and the forced prefix.
pub fn evidence_prompt(
    model: &dyn LanguageModel,
    question: &str,
    passage: &Passage,
    forced: Forced,
    chat_template: bool,
) -> Result<String> {
    let mut text = build_prompt(model, question, chat_template)?;
    text.push_str(protocol::format_information(std::slice::from_ref(passage)).trim_start());
    text.push_str(forced.prefix());
    Ok(text)
}

/// One evidence-given generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForcedRun {
    /// The assistant text after the evidence block: the forced prefix and what was generated.
    pub text: String,
    /// The extracted answer (`None`: no complete answer, e.g. the model searched).
    pub answer: Option<String>,
    /// Exact match of the answer (0 without one).
    pub em: f64,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// Wall time (ms).
    pub wall_ms: f64,
}

/// Run `model` once on `question` with `passage` given and the turn forced to begin with
/// `forced`.
pub fn run_forced(
    model: &dyn LanguageModel,
    q: &Question,
    passage: &Passage,
    forced: Forced,
    sampling: SamplingParams,
    max_new_tokens: usize,
    chat_template: bool,
) -> Result<ForcedRun> {
    let t = Instant::now();
    let prompt = evidence_prompt(model, &q.question, passage, forced, chat_template)?;
    let ids = encode_prompt(model, &prompt)?;
    let mut session = model.new_session()?;
    let mut sampler = Sampler::new(sampling);
    let stop = match forced {
        Forced::Answer => vec!["</answer>".to_string()],
        Forced::Think => protocol::TURN_STOPS.iter().map(|s| s.to_string()).collect(),
    };
    let opts = GenerateOptions {
        max_new_tokens,
        stop,
    };
    let g = generate(
        session.as_mut(),
        model.tokenizer(),
        &ids,
        &mut sampler,
        &opts,
        &mut |_| {},
    )?;
    let text = format!("{}{}", forced.prefix(), g.text);
    let answer = match protocol::parse_action(&text) {
        Action::Answer(a) => Some(a),
        _ => None,
    };
    let em = answer
        .as_deref()
        .map_or(0.0, |a| exact_match(a, &q.golden_answers));
    Ok(ForcedRun {
        text,
        answer,
        em,
        generated_tokens: g.tokens.len(),
        wall_ms: t.elapsed().as_secs_f64() * 1e3,
    })
}

/// Both evidence-given runs for one question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvidenceResult {
    /// The passage given.
    pub evidence: Evidence,
    /// Forced `<answer>`.
    pub without_think: ForcedRun,
    /// Forced `<think>`.
    pub with_think: ForcedRun,
}
