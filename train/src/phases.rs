//! Phase 1 (cold-start KD) data: the teacher runs the agent loop on the training questions and
//! only its correct trajectories are kept (teacher-generated outputs, TGO).

use dgpo_core::agent::{Agent, AgentConfig, Rollout};
use dgpo_core::model::LanguageModel;
use dgpo_core::retrieve::Retriever;
use dgpo_core::{Error, Result};

use crate::data::QaRow;
use crate::trainer::Example;

/// Search-R1's answer normalisation (`qa_em.py`): lowercase, drop ASCII punctuation, drop the
/// articles a/an/the, collapse whitespace.
pub fn normalize_answer(s: &str) -> String {
    let lower: String = s
        .to_lowercase()
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    lower
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Exact match of `prediction` against any golden answer after normalisation.
pub fn exact_match(prediction: &str, golden: &[String]) -> bool {
    let p = normalize_answer(prediction);
    golden.iter().any(|g| normalize_answer(g) == p)
}

/// What the teacher's collection run produced.
#[derive(Debug, Clone)]
pub struct Collected {
    /// Correct trajectories, as training examples.
    pub examples: Vec<Example>,
    /// Their rollouts.
    pub rollouts: Vec<Rollout>,
    /// Questions tried.
    pub tried: usize,
}

/// Run `teacher` through the agent loop on `questions` and keep the trajectories whose final
/// answer exactly matches a golden answer. `student_vocab`, when given, is checked against the
/// teacher's vocabulary first, so a mismatch is refused before any generation.
pub fn collect_correct(
    teacher: &dyn LanguageModel,
    retriever: &dyn Retriever,
    questions: &[QaRow],
    cfg: &AgentConfig,
    student_vocab: Option<usize>,
) -> Result<Collected> {
    if let Some(v) = student_vocab
        && v != teacher.info().vocab_size
    {
        return Err(Error::invalid(format!(
            "teacher vocabulary size {} differs from the student's {v}: forward KL needs the same tokenizer",
            teacher.info().vocab_size
        )));
    }
    let agent = Agent::new(teacher, retriever, cfg.clone());
    let mut out = Collected {
        examples: Vec::new(),
        rollouts: Vec::new(),
        tried: 0,
    };
    for q in questions {
        out.tried += 1;
        let (trace, rollout) = agent.run_with(&q.question, &mut |_| {}, &|| false)?;
        if trace
            .answer
            .as_deref()
            .is_some_and(|a| exact_match(a, &q.golden_answers))
        {
            out.examples.push(Example::from_rollout(&rollout)?);
            out.rollouts.push(rollout);
        }
    }
    tracing::info!(
        kept = out.examples.len(),
        tried = out.tried,
        "teacher trajectories collected"
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_follows_search_r1() {
        assert_eq!(normalize_answer("  The  Eiffel-Tower! "), "eiffeltower");
        assert_eq!(normalize_answer("A cat, an owl"), "cat owl");
        assert!(exact_match("the Beatles", &["Beatles".into()]));
        assert!(!exact_match("Beatle", &["Beatles".into()]));
    }
}
