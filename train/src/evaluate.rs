//! Evaluation of trained models on a dataset's test split through core's evaluation
//! ([`dgpo_core::eval::evaluate`], the code behind `edge eval`): EM / cover-EM / F1 and the
//! ARCap sub-scores, overall and per `data_source` (`synth-nq`, `synth-hotpot`, ...).

use std::path::{Path, PathBuf};

use dgpo_core::agent::AgentConfig;
use dgpo_core::corpus::Passage;
use dgpo_core::eval::{EvalConfig, EvalReport, ModelReport, NamedModel, evaluate, markdown_table};
use dgpo_core::model::{LanguageModel, LoadOptions, Placement};
use dgpo_core::retrieve::{MemoryRetriever, Retriever};
use dgpo_core::{Error, Result};

use crate::phases::split_file;

/// Evaluation settings.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Evaluate only the first N questions of the split.
    pub limit: Option<usize>,
    /// Run the evidence-given generations (ARCap Source Referencing / Thinking).
    pub evidence: bool,
    /// Questions evaluated in parallel.
    pub concurrency: usize,
    /// The agent loop (Search-R1 defaults, greedy; a model's chat template is used when it has
    /// one).
    pub agent: AgentConfig,
    /// Device and float type of HF-folder models (GGUF files run on the CPU).
    pub placement: Placement,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            limit: None,
            evidence: true,
            concurrency: crate::phases::default_concurrency(),
            agent: AgentConfig::default(),
            placement: Placement::default(),
        }
    }
}

/// Evaluate the model at `model` (HF folder or GGUF file) on `<data_dir>/<split>.{parquet,jsonl}`
/// with BM25 over `<data_dir>/corpus.jsonl`, with default options.
pub fn evaluate_synth(model: &Path, data_dir: &Path, split: &str) -> Result<ModelReport> {
    let name = model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let mut r = evaluate_models(
        &[(name, model.to_path_buf())],
        data_dir,
        split,
        &EvalOptions::default(),
    )?;
    Ok(r.models.remove(0))
}

/// Evaluate several models, each under its report name, on `split` of the data folder (BM25
/// over its `corpus.jsonl`).
pub fn evaluate_models(
    models: &[(String, PathBuf)],
    data_dir: &Path,
    split: &str,
    opts: &EvalOptions,
) -> Result<EvalReport> {
    let qpath = split_file(data_dir, split).ok_or_else(|| {
        Error::format(
            data_dir,
            format!("no {split}.parquet or {split}.jsonl in the dataset folder"),
        )
    })?;
    let corpus = data_dir.join("corpus.jsonl");
    if !corpus.is_file() {
        return Err(Error::format(
            data_dir,
            "no corpus.jsonl in the dataset folder (needed for retrieval)",
        ));
    }
    let retriever = MemoryRetriever::from_jsonl(&corpus)?;
    let questions = dgpo_core::data::load(&qpath)?;
    evaluate_with(
        models,
        &questions,
        &retriever,
        Some(retriever.passages()),
        opts,
    )
}

/// Evaluate several models on `questions` with any retriever (`corpus`, when loaded, serves
/// the evidence lookup).
pub fn evaluate_with(
    models: &[(String, PathBuf)],
    questions: &[dgpo_core::data::Question],
    retriever: &dyn Retriever,
    corpus: Option<&[Passage]>,
    opts: &EvalOptions,
) -> Result<EvalReport> {
    let mut questions = questions.to_vec();
    if let Some(n) = opts.limit {
        questions.truncate(n);
    }
    let loaded: Vec<std::sync::Arc<dyn LanguageModel>> = models
        .iter()
        .map(|(_, p)| dgpo_core::model::load(p, &LoadOptions::on(&opts.placement)))
        .collect::<Result<_>>()?;
    let named: Vec<NamedModel<'_>> = models
        .iter()
        .zip(&loaded)
        .map(|((name, _), m)| NamedModel {
            name,
            model: m.as_ref(),
        })
        .collect();
    let cfg = EvalConfig {
        agent: opts.agent.clone(),
        concurrency: opts.concurrency.max(1),
        evidence: opts.evidence,
        keep_traces: true,
        progress: true,
        ..Default::default()
    };
    evaluate(&named, retriever, corpus, &questions, &cfg)
}

/// Write `results.json` (everything, traces included) and `summary.md` (core's table) into
/// `out`, each through a temporary file and a rename. Returns the table.
pub fn write_report(report: &EvalReport, out: &Path) -> Result<String> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let table = markdown_table(report);
    let json = serde_json::to_string_pretty(report).expect("reports serialise");
    for (name, body) in [
        ("results.json", json.as_str()),
        ("summary.md", table.as_str()),
    ] {
        let p = out.join(name);
        let tmp = out.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, body).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &p).map_err(|e| Error::io(&p, e))?;
    }
    Ok(table)
}

/// A short EM table: one row per model, columns overall and per data source.
pub fn em_table(report: &EvalReport) -> String {
    let sources = report.sources();
    let mut s = String::from("| model | n | EM |");
    for src in &sources {
        s.push_str(&format!(" EM {src} |"));
    }
    s.push_str(" hit ratio | search steps |\n|---|---:|---:|");
    s.push_str(&"---:|".repeat(sources.len() + 2));
    s.push('\n');
    for m in &report.models {
        s.push_str(&format!(
            "| {} | {} | {:.3} |",
            m.name, m.overall.n, m.overall.em
        ));
        for src in &sources {
            match m.by_source.get(*src) {
                Some(x) => s.push_str(&format!(" {:.3} |", x.em)),
                None => s.push_str(" – |"),
            }
        }
        s.push_str(&format!(
            " {:.3} | {:.2} |\n",
            m.overall.hit_ratio, m.overall.search_steps
        ));
    }
    s
}
