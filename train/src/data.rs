//! Question sets in Search-R1's schema: JSONL rows `{id, question, golden_answers, data_source}`.
//!
//! Parquet files (Search-R1's own format) are not read yet; convert them to JSONL first.

use std::path::Path;

use dgpo_core::{Error, Result};
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

/// Read a JSONL question file. A malformed row (not JSON, no `question`, no or empty
/// `golden_answers`) is an error naming the file and its 1-based line; blank lines are skipped.
/// Search-R1 rows keep `golden_answers` at the top level or under `reward_model.ground_truth.target`;
/// both are accepted, and a numeric `id` is read as its decimal string.
pub fn read_questions(path: &Path) -> Result<Vec<QaRow>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |msg: String| Error::line(path, i + 1, msg);
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| err(format!("not valid JSON: {e}")))?;
        let question = v
            .get("question")
            .and_then(|q| q.as_str())
            .ok_or_else(|| err("missing string field \"question\"".into()))?
            .to_string();
        let answers = v
            .get("golden_answers")
            .or_else(|| v.pointer("/reward_model/ground_truth/target"))
            .ok_or_else(|| err("missing field \"golden_answers\"".into()))?;
        let golden_answers: Vec<String> = match answers {
            serde_json::Value::String(s) => vec![s.clone()],
            serde_json::Value::Array(a) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(String::from)
                        .ok_or_else(|| err("\"golden_answers\" must hold strings".into()))
                })
                .collect::<Result<_>>()?,
            _ => return Err(err("\"golden_answers\" must be a list of strings".into())),
        };
        if golden_answers.is_empty() {
            return Err(err("\"golden_answers\" is empty".into()));
        }
        let id = match v.get("id") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => format!("line{}", i + 1),
        };
        let data_source = v
            .get("data_source")
            .and_then(|d| d.as_str())
            .unwrap_or("unknown")
            .to_string();
        out.push(QaRow {
            id,
            question,
            golden_answers,
            data_source,
        });
    }
    Ok(out)
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
