//! Question sets in Search-R1's schema: rows `{id, question, golden_answers, data_source}`, from
//! JSONL or parquet (core's [`dgpo_core::data`] reads both).

use std::path::Path;

use dgpo_core::Result;
use serde::{Deserialize, Serialize};

/// One question row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QaRow {
    /// Row id.
    pub id: String,
    /// The question.
    pub question: String,
    /// Accepted answers (at least one).
    pub golden_answers: Vec<String>,
    /// Benchmark name (`nq`, `hotpotqa`, `synth-nq`, ...).
    pub data_source: String,
}

/// Read Search-R1 parquet or JSONL question rows through core's reader, the one every front
/// end uses (a row without golden answers is refused with its file and line; a numeric `id`
/// is read as its decimal string; a row without `data_source` is named after its file, as
/// FlashRAG lays them out: `nq/test.jsonl` is `nq`).
pub fn read_questions(path: &Path) -> Result<Vec<QaRow>> {
    Ok(dgpo_core::data::load(path)?
        .into_iter()
        .map(|q| QaRow {
            id: q.id,
            question: q.question,
            golden_answers: q.golden_answers,
            data_source: q.data_source,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_parse_and_bad_rows_name_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("train.jsonl");
        std::fs::write(
            &p,
            concat!(
                r#"{"id":"a","question":"Who?","golden_answers":["X","Y"],"data_source":"nq"}"#,
                "\n\n",
                r#"{"id":7,"question":"Where?","reward_model":{"ground_truth":{"target":["Z"]}}}"#,
                "\n"
            ),
        )
        .unwrap();
        let rows = read_questions(&p).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].golden_answers, vec!["X", "Y"]);
        assert_eq!(
            (rows[1].id.as_str(), rows[1].golden_answers[0].as_str()),
            ("7", "Z")
        );
        std::fs::write(
            &p,
            concat!(
                r#"{"id":"a","question":"Who?","golden_answers":["X"]}"#,
                "\n",
                r#"{"id":"b","question":"What?"}"#,
                "\n"
            ),
        )
        .unwrap();
        let e = read_questions(&p).unwrap_err().to_string();
        assert!(
            e.contains("train.jsonl:2") && e.contains("golden_answers"),
            "{e}"
        );
    }

    #[test]
    fn synthetic_splits_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let w = crate::synth::World::generate(&crate::synth::WorldConfig::default()).unwrap();
        w.write(dir.path()).unwrap();
        let rows = read_questions(&dir.path().join("test.jsonl")).unwrap();
        assert_eq!(rows.len(), w.test.len());
        assert_eq!(rows[0].question, w.test[0].question);
    }
}
