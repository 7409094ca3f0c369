//! Offline QA evaluation: EM / cover-EM / F1 and ARCap, per data source and overall.
//!
//! [`evaluate`] runs each model's agent loop (greedy by default) on every question, scores the
//! final answer ([`score`]), measures the trace ([`arcap`]) and, unless disabled, runs the two
//! evidence-given generations of Source Referencing and Thinking ([`evidence`], whose module docs
//! give *our* definition of that protocol: the paper's text for it is not public). The CLI
//! (`edge eval`) and the trainer's validation both call it.
//!
//! ARCap sub-scores, as reported in [`Summary`]:
//! - Query Rewriting: `hit_ratio` (verbatim, the authors' test), `hit_ratio_normalized`,
//!   `search_steps` (mean executed searches per question);
//! - Source Referencing: `em_without_think` (answer forced right after the evidence);
//! - Thinking: `em_with_think` and `thinking_gain` = with − without.

pub mod arcap;
pub mod evidence;
pub mod score;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::agent::{Agent, AgentConfig};
use crate::corpus::Passage;
use crate::data::Question;
use crate::model::LanguageModel;
use crate::retrieve::Retriever;
use crate::trace::Trace;
use crate::{Error, Result};
use arcap::TraceMetrics;
use evidence::{EvidenceResult, Forced};

/// Evaluation settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EvalConfig {
    /// The agent loop (Search-R1 defaults, greedy decoding).
    pub agent: AgentConfig,
    /// Questions evaluated in parallel (each has its own session).
    pub concurrency: usize,
    /// Run the evidence-given generations (Source Referencing / Thinking); two extra
    /// generations per question.
    pub evidence: bool,
    /// Retriever results scanned for an evidence passage.
    pub evidence_depth: usize,
    /// Keep each question's full trace in the report.
    pub keep_traces: bool,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            agent: AgentConfig::default(),
            concurrency: 1,
            evidence: true,
            evidence_depth: 20,
            keep_traces: true,
            progress: false,
        }
    }
}

/// A model to evaluate, with the name it is reported under.
#[derive(Clone, Copy)]
pub struct NamedModel<'a> {
    /// Report name (e.g. the file name).
    pub name: &'a str,
    /// The model.
    pub model: &'a dyn LanguageModel,
}

/// Answer scores of one question.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Exact match.
    pub em: f64,
    /// Cover exact match.
    pub cover_em: f64,
    /// Token F1.
    pub f1: f64,
}

impl Scores {
    /// Score `answer` (no answer scores 0 everywhere).
    pub fn of(answer: Option<&str>, golden: &[String]) -> Scores {
        match answer {
            Some(a) => Scores {
                em: score::exact_match(a, golden),
                cover_em: score::cover_exact_match(a, golden),
                f1: score::f1(a, golden),
            },
            None => Scores::default(),
        }
    }
}

/// Everything measured for one question and one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuestionResult {
    /// Dataset id.
    pub id: String,
    /// The question.
    pub question: String,
    /// Benchmark name.
    pub data_source: String,
    /// Accepted answers.
    pub golden_answers: Vec<String>,
    /// The model's final answer.
    pub answer: Option<String>,
    /// Answer scores.
    pub scores: Scores,
    /// Trace measures (ARCap Query Rewriting and diagnostics).
    pub metrics: TraceMetrics,
    /// Evidence-given runs (`None` when disabled or no evidence passage was found).
    pub evidence: Option<EvidenceResult>,
    /// The agent run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<Trace>,
    /// The error that stopped this question, if any (it then scores 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Aggregates over a set of questions (means unless said otherwise).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Questions.
    pub n: usize,
    /// Questions that failed with an error (scored 0).
    pub errors: usize,
    /// Exact match.
    pub em: f64,
    /// Cover exact match.
    pub cover_em: f64,
    /// Token F1.
    pub f1: f64,
    /// Share of questions answered at all.
    pub answered_rate: f64,
    /// Query Rewriting: share of questions with a golden answer verbatim in a retrieved block.
    pub hit_ratio: f64,
    /// The same with normalised matching.
    pub hit_ratio_normalized: f64,
    /// Query Rewriting: executed searches per question.
    pub search_steps: f64,
    /// Invalid turns over all turns.
    pub invalid_rate: f64,
    /// Answers found verbatim in a retrieved passage, over answered questions.
    pub copied_answer_rate: f64,
    /// Queries that repeat the question, over executed queries.
    pub repeated_query_rate: f64,
    /// Mean rewrite distance over executed queries.
    pub rewrite_distance: f64,
    /// Questions with an evidence passage (the denominator of the next three).
    pub evidence_n: usize,
    /// Source Referencing: EM with the evidence given, answer forced.
    pub em_without_think: Option<f64>,
    /// Thinking: EM with the evidence given, `<think>` forced.
    pub em_with_think: Option<f64>,
    /// `em_with_think − em_without_think`.
    pub thinking_gain: Option<f64>,
    /// Prompt tokens per question.
    pub prompt_tokens: f64,
    /// Generated tokens per question (agent run).
    pub generated_tokens: f64,
    /// Observation tokens per question.
    pub observation_tokens: f64,
    /// Agent-run wall time per question (ms).
    pub wall_ms: f64,
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 { 0.0 } else { s / n as f64 }
}

fn ratio(num: usize, den: usize) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

impl Summary {
    /// Aggregate `results`.
    pub fn of<'a>(results: impl IntoIterator<Item = &'a QuestionResult>) -> Summary {
        let rs: Vec<&QuestionResult> = results.into_iter().collect();
        let m = |f: &dyn Fn(&QuestionResult) -> f64| mean(rs.iter().map(|r| f(r)));
        let steps: usize = rs.iter().map(|r| r.metrics.steps).sum();
        let invalid: usize = rs.iter().map(|r| r.metrics.invalid_steps).sum();
        let answered = rs.iter().filter(|r| r.metrics.answered).count();
        let copied = rs.iter().filter(|r| r.metrics.copied_answer).count();
        let distances: Vec<f64> = rs
            .iter()
            .flat_map(|r| r.metrics.rewrite_distances.iter().copied())
            .collect();
        let repeated: usize = rs.iter().map(|r| r.metrics.repeated_queries).sum();
        let ev: Vec<&EvidenceResult> = rs.iter().filter_map(|r| r.evidence.as_ref()).collect();
        let (without, with) = if ev.is_empty() {
            (None, None)
        } else {
            (
                Some(mean(ev.iter().map(|e| e.without_think.em))),
                Some(mean(ev.iter().map(|e| e.with_think.em))),
            )
        };
        Summary {
            n: rs.len(),
            errors: rs.iter().filter(|r| r.error.is_some()).count(),
            em: m(&|r| r.scores.em),
            cover_em: m(&|r| r.scores.cover_em),
            f1: m(&|r| r.scores.f1),
            answered_rate: ratio(answered, rs.len()),
            hit_ratio: m(&|r| f64::from(u8::from(r.metrics.hit))),
            hit_ratio_normalized: m(&|r| f64::from(u8::from(r.metrics.hit_normalized))),
            search_steps: m(&|r| r.metrics.searches as f64),
            invalid_rate: ratio(invalid, steps),
            copied_answer_rate: ratio(copied, answered),
            repeated_query_rate: ratio(repeated, distances.len()),
            rewrite_distance: mean(distances.iter().copied()),
            evidence_n: ev.len(),
            em_without_think: without,
            em_with_think: with,
            thinking_gain: with.zip(without).map(|(w, wo)| w - wo),
            prompt_tokens: m(&|r| r.metrics.prompt_tokens as f64),
            generated_tokens: m(&|r| r.metrics.generated_tokens as f64),
            observation_tokens: m(&|r| r.metrics.observation_tokens as f64),
            wall_ms: m(&|r| r.metrics.wall_ms),
        }
    }
}

/// The evaluation of one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelReport {
    /// Report name.
    pub name: String,
    /// Over all questions.
    pub overall: Summary,
    /// Per data source (sorted by name).
    pub by_source: BTreeMap<String, Summary>,
    /// Per question, in dataset order.
    pub questions: Vec<QuestionResult>,
    /// Wall time of the whole evaluation of this model (s).
    pub wall_s: f64,
}

/// The evaluation of every model on one question set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    /// Settings used.
    pub config: EvalConfig,
    /// The retriever (its description).
    pub retriever: String,
    /// The evidence-given protocol, in words (it is our definition, not the paper's).
    pub evidence_protocol: String,
    /// One report per model, in the order given.
    pub models: Vec<ModelReport>,
}

impl EvalReport {
    /// The data sources any model was scored on, sorted and without repeats: the columns of
    /// the tables and the groups of the chart.
    pub fn sources(&self) -> Vec<&String> {
        let mut sources: Vec<&String> = self
            .models
            .iter()
            .flat_map(|m| m.by_source.keys())
            .collect();
        sources.sort();
        sources.dedup();
        sources
    }
}

/// One sentence describing the evidence-given protocol, stored with every report.
pub const EVIDENCE_PROTOCOL: &str = "Source Referencing / Thinking (our definition; the paper's protocol text is not public): \
the assistant turn starts with <information>Doc 1(Title: ...) ...</information> holding the first passage that contains a golden answer \
(retriever top-k for the question by rank, else a dataset-named passage, else the first in the corpus), then is forced to begin with \
<answer> (w/o think) or <think> (w/ think); one greedy generation, no retrieval; EM of its first <answer>.";

/// Evaluate one question with one model.
pub fn evaluate_question(
    model: &dyn LanguageModel,
    retriever: &dyn Retriever,
    corpus: Option<&[Passage]>,
    q: &Question,
    cfg: &EvalConfig,
) -> QuestionResult {
    let mut r = QuestionResult {
        id: q.id.clone(),
        question: q.question.clone(),
        data_source: q.data_source.clone(),
        golden_answers: q.golden_answers.clone(),
        answer: None,
        scores: Scores::default(),
        metrics: TraceMetrics::default(),
        evidence: None,
        trace: None,
        error: None,
    };
    let agent = Agent::new(model, retriever, cfg.agent.clone());
    match agent.run(&q.question) {
        Ok(trace) => {
            r.answer = trace.answer.clone();
            r.scores = Scores::of(trace.answer.as_deref(), &q.golden_answers);
            r.metrics = arcap::trace_metrics(&trace, &q.golden_answers);
            if cfg.keep_traces {
                r.trace = Some(trace);
            }
        }
        Err(e) => {
            r.error = Some(e.to_string());
            return r;
        }
    }
    if cfg.evidence {
        match run_evidence(model, retriever, corpus, q, cfg) {
            Ok(ev) => r.evidence = ev,
            Err(e) => r.error = Some(format!("evidence-given run: {e}")),
        }
    }
    r
}

fn run_evidence(
    model: &dyn LanguageModel,
    retriever: &dyn Retriever,
    corpus: Option<&[Passage]>,
    q: &Question,
    cfg: &EvalConfig,
) -> Result<Option<EvidenceResult>> {
    let Some(ev) = evidence::find_evidence(q, retriever, corpus, cfg.evidence_depth)? else {
        return Ok(None);
    };
    let run = |forced| {
        evidence::run_forced(
            model,
            q,
            &ev.passage,
            forced,
            cfg.agent.sampling,
            cfg.agent.max_turn_tokens,
            cfg.agent.chat_template,
        )
    };
    let without_think = run(Forced::Answer)?;
    let with_think = run(Forced::Think)?;
    Ok(Some(EvidenceResult {
        evidence: ev,
        without_think,
        with_think,
    }))
}

/// Evaluate every model on `questions` with `retriever` (and `corpus`, when loaded, for the
/// evidence lookup). Errors of single questions are recorded in their results; only invalid
/// settings fail the whole call.
pub fn evaluate(
    models: &[NamedModel<'_>],
    retriever: &dyn Retriever,
    corpus: Option<&[Passage]>,
    questions: &[Question],
    cfg: &EvalConfig,
) -> Result<EvalReport> {
    if models.is_empty() {
        return Err(Error::invalid("no model to evaluate"));
    }
    if questions.is_empty() {
        return Err(Error::invalid("no question to evaluate"));
    }
    let total = (models.len() * questions.len()) as u64;
    let bar = if cfg.progress {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} questions, {elapsed} elapsed, eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut reports = Vec::with_capacity(models.len());
    for m in models {
        bar.set_message(m.name.to_string());
        let start = Instant::now();
        let next = AtomicUsize::new(0);
        let slots: Mutex<Vec<Option<QuestionResult>>> = Mutex::new(vec![None; questions.len()]);
        let workers = cfg.concurrency.clamp(1, questions.len());
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= questions.len() {
                            break;
                        }
                        let r = evaluate_question(m.model, retriever, corpus, &questions[i], cfg);
                        if let Some(e) = &r.error {
                            tracing::warn!(model = m.name, id = %r.id, "question failed: {e}");
                        }
                        slots.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
                        bar.inc(1);
                    }
                });
            }
        });
        let questions_out: Vec<QuestionResult> = slots
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .into_iter()
            .map(|r| r.expect("every question slot is filled by a worker"))
            .collect();
        let mut groups: BTreeMap<String, Vec<&QuestionResult>> = BTreeMap::new();
        for r in &questions_out {
            groups.entry(r.data_source.clone()).or_default().push(r);
        }
        let by_source = groups
            .into_iter()
            .map(|(k, v)| (k, Summary::of(v.iter().copied())))
            .collect();
        let overall = Summary::of(questions_out.iter());
        tracing::info!(
            model = m.name,
            em = overall.em,
            hit_ratio = overall.hit_ratio,
            "evaluated {} questions",
            overall.n
        );
        reports.push(ModelReport {
            name: m.name.to_string(),
            overall,
            by_source,
            questions: questions_out,
            wall_s: start.elapsed().as_secs_f64(),
        });
    }
    bar.finish_and_clear();
    Ok(EvalReport {
        config: cfg.clone(),
        retriever: retriever.describe(),
        evidence_protocol: EVIDENCE_PROTOCOL.to_string(),
        models: reports,
    })
}

fn opt3(x: Option<f64>) -> String {
    x.map_or("–".to_string(), |v| format!("{v:.3}"))
}

/// The summary as a markdown table: one row per (data source, model), then the overall rows.
pub fn markdown_table(report: &EvalReport) -> String {
    let mut s = String::new();
    s.push_str("| dataset | model | n | EM | cover-EM | F1 | Hit ratio | Hit (norm.) | Search steps | EM w/o think | EM w/ think | Δ think | evidence n | invalid rate | copied answers | repeated queries | tokens/q | s/q |\n");
    s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let sources = report.sources();
    let row = |s: &mut String, dataset: &str, model: &str, x: &Summary| {
        s.push_str(&format!(
            "| {dataset} | {model} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} | {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.0} | {:.2} |\n",
            x.n,
            x.em,
            x.cover_em,
            x.f1,
            x.hit_ratio,
            x.hit_ratio_normalized,
            x.search_steps,
            opt3(x.em_without_think),
            opt3(x.em_with_think),
            x.thinking_gain
                .map_or("–".to_string(), |v| format!("{v:+.3}")),
            x.evidence_n,
            x.invalid_rate,
            x.copied_answer_rate,
            x.repeated_query_rate,
            x.prompt_tokens + x.generated_tokens + x.observation_tokens,
            x.wall_ms / 1e3,
        ));
    };
    for src in &sources {
        for m in &report.models {
            if let Some(x) = m.by_source.get(*src) {
                row(&mut s, src, &m.name, x);
            }
        }
    }
    if sources.len() > 1 {
        for m in &report.models {
            row(&mut s, "**all**", &m.name, &m.overall);
        }
    }
    s
}
