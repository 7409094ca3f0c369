//! ARCap measures read off one [`Trace`] (Query Rewriting and the trace diagnostics).
//!
//! - **Hit** (Query Rewriting): some executed search's `<information>` block contains a golden
//!   answer. The authors' code (`info_contains_answer_ratio`) tests a verbatim, case-sensitive
//!   substring of the raw answer in the block text; we report that and a normalised variant
//!   (whole normalised words, see [`contains_normalized`], tested on each passage's title and
//!   text). The verbatim test reads the observation as formatted for the model
//!   (`Doc i(Title: …) …`), before the observation token cap.
//! - **Search steps**: executed `<search>` calls (the final, search-disabled turn's call is not
//!   executed and not counted).
//! - **Invalid steps**: turns with neither a complete search nor an answer.
//! - **Copied answer**: the (trimmed, non-empty) answer occurs verbatim in a retrieved passage.
//! - **Rewrite distance**: per executed query, the word-level edit distance between the
//!   normalised query and the normalised question, divided by the longer length (0 = the
//!   question repeated, 1 = nothing in common in place). A query with distance at most
//!   [`REPEAT_DISTANCE`] "merely repeats the question".

use serde::{Deserialize, Serialize};

use super::score::{contains_normalized, contains_verbatim, normalize};
use crate::trace::{StepAction, Trace};

/// Rewrite distance at or below which a query counts as repeating the question (one word
/// changed in a five-word question).
pub const REPEAT_DISTANCE: f64 = 0.2;

/// Per-question measures taken from a trace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TraceMetrics {
    /// Executed searches.
    pub searches: usize,
    /// A retrieved block contains a golden answer verbatim.
    pub hit: bool,
    /// A retrieved block contains a golden answer after normalisation.
    pub hit_normalized: bool,
    /// Model turns.
    pub steps: usize,
    /// Turns with an invalid action.
    pub invalid_steps: usize,
    /// The run ended with an answer.
    pub answered: bool,
    /// The answer occurs verbatim in a retrieved passage (false when there is no answer).
    pub copied_answer: bool,
    /// Rewrite distance of each executed query, in order.
    pub rewrite_distances: Vec<f64>,
    /// Executed queries whose rewrite distance is at most [`REPEAT_DISTANCE`].
    pub repeated_queries: usize,
    /// Prompt tokens (chat template included).
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub generated_tokens: usize,
    /// Observation tokens.
    pub observation_tokens: usize,
    /// Wall time of the run (ms).
    pub wall_ms: f64,
}

/// Word-level Levenshtein distance.
fn word_edit_distance(a: &[&str], b: &[&str]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, x) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, y) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(x != y);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Rewrite distance between a query and the question (see the module docs).
pub fn rewrite_distance(query: &str, question: &str) -> f64 {
    let q = normalize(query);
    let s = normalize(question);
    let qa: Vec<&str> = q.split_whitespace().collect();
    let sa: Vec<&str> = s.split_whitespace().collect();
    let longest = qa.len().max(sa.len());
    if longest == 0 {
        return 0.0;
    }
    word_edit_distance(&qa, &sa) as f64 / longest as f64
}

/// Measure `trace` against the golden answers.
pub fn trace_metrics(trace: &Trace, golden: &[String]) -> TraceMetrics {
    let mut m = TraceMetrics {
        steps: trace.steps.len(),
        invalid_steps: trace.invalid_count(),
        answered: trace.answer.is_some(),
        prompt_tokens: trace.prompt_tokens,
        generated_tokens: trace.generated_tokens,
        observation_tokens: trace.observation_tokens,
        wall_ms: trace.timings.total_ms,
        ..Default::default()
    };
    let answer = trace
        .answer
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty());
    for step in &trace.steps {
        let StepAction::Search {
            query,
            docs,
            executed: true,
        } = &step.action
        else {
            continue;
        };
        m.searches += 1;
        let d = rewrite_distance(query, &trace.question);
        if d <= REPEAT_DISTANCE {
            m.repeated_queries += 1;
        }
        m.rewrite_distances.push(d);
        if let Some(block) = &step.observation {
            m.hit |= contains_verbatim(block, golden);
        }
        // Normalised matching runs per passage: on the block text, punctuation deletion would
        // glue the last word to the closing tag ("Paris.</information>" -> "parisinformation").
        m.hit_normalized |= docs.iter().any(|d| {
            let text = format!("{} {}", d.title, d.text);
            golden.iter().any(|g| contains_normalized(&text, g))
        });
        if let Some(a) = answer {
            m.copied_answer |= docs
                .iter()
                .any(|d| d.text.contains(a) || d.title.contains(a));
        }
    }
    m
}
