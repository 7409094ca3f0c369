//! QA datasets: Search-R1 parquet / JSONL and FlashRAG JSONL.
//!
//! Accepted rows (one JSON object per JSONL line, one record per parquet row):
//! - Search-R1: `id`, `question`, `golden_answers`, `data_source`, and
//!   `reward_model.ground_truth.target` (the list the reward actually compares against);
//! - FlashRAG: `{"id", "question", "golden_answers"}` (the data source is then taken from the
//!   file's folder, FlashRAG's `nq/test.jsonl` layout, or its stem).
//!
//! Golden answers come from `golden_answers` (a list or a single string), else from
//! `reward_model.ground_truth.target`. A row with neither is an error naming the file and the
//! 1-based line (JSONL) or row (parquet): evaluating without references would silently score 0.
//!
//! An optional `evidence_ids` list names corpus passages that support the answer; the
//! evidence-given ARCap runs fall back to them when retrieval finds no passage with an answer.
//!
//! Parquet is read through the `parquet` crate's record API: every row is turned into the same
//! JSON value a JSONL line parses to, so both formats share one row parser.

use std::io::BufRead;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Error, Result};

/// One evaluation question.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Question {
    /// Dataset id (the row index when the file has none).
    pub id: String,
    /// The question text as in the dataset.
    pub question: String,
    /// Accepted answers (at least one).
    pub golden_answers: Vec<String>,
    /// Benchmark name (`nq`, `hotpotqa`, ...): scores are reported per data source.
    pub data_source: String,
    /// Corpus ids of passages the dataset names as evidence (often empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evidence_ids: Vec<String>,
}

fn string_list(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(a) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect(),
        // Some exports store numbers as answers ("how many ...").
        Value::Number(n) => Some(vec![n.to_string()]),
        _ => None,
    }
}

/// Parse one row (a JSON object). `index` is the 0-based row number, used as the id when the
/// row has none; `default_source` is used when it has no `data_source`. The error says what
/// is missing or malformed.
pub fn parse_row(v: &Value, index: usize, default_source: &str) -> Result<Question, String> {
    let obj = v.as_object().ok_or("expected a JSON object")?;
    let id = match obj.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        None | Some(Value::Null) => index.to_string(),
        Some(_) => return Err("field \"id\" must be a string or a number".into()),
    };
    let question = match obj.get("question") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::String(_)) => return Err("field \"question\" is empty".into()),
        Some(_) => return Err("field \"question\" must be a string".into()),
        None => return Err("missing field \"question\"".into()),
    };
    let golden = match obj.get("golden_answers") {
        Some(Value::Null) | None => None,
        Some(g) => {
            Some(string_list(g).ok_or("field \"golden_answers\" must be a list of strings")?)
        }
    };
    let golden =
        match golden {
            Some(g) => Some(g),
            None => match v.pointer("/reward_model/ground_truth/target") {
                Some(Value::Null) | None => None,
                Some(t) => Some(string_list(t).ok_or(
                    "field \"reward_model.ground_truth.target\" must be a list of strings",
                )?),
            },
        };
    let golden_answers = match golden {
        Some(g) if g.iter().any(|a| !a.trim().is_empty()) => g,
        Some(_) => return Err(format!("question {id:?} has an empty golden_answers list")),
        None => {
            return Err(format!(
                "question {id:?} has no golden_answers (nor reward_model.ground_truth.target)"
            ));
        }
    };
    let data_source = match obj.get("data_source") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => default_source.to_string(),
    };
    let evidence_ids = match obj.get("evidence_ids") {
        None | Some(Value::Null) => Vec::new(),
        Some(e) => string_list(e).ok_or("field \"evidence_ids\" must be a list of ids")?,
    };
    Ok(Question {
        id,
        question,
        golden_answers,
        data_source,
        evidence_ids,
    })
}

/// The data source assumed for rows without one: the folder name for FlashRAG's
/// `<dataset>/<split>.jsonl` layout, else the file stem.
pub fn default_source(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let split = matches!(
        stem.as_str(),
        "train" | "test" | "dev" | "val" | "valid" | "validation"
    );
    if split
        && let Some(dir) = path
            .parent()
            .and_then(|p| p.file_name())
            .map(|s| s.to_string_lossy().into_owned())
    {
        return dir;
    }
    stem
}

/// Read a JSONL dataset; errors carry the file and the 1-based line.
pub fn load_jsonl(path: &Path) -> Result<Vec<Question>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = std::io::BufReader::new(file);
    let source = default_source(path);
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| Error::line(path, i + 1, e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line)
            .map_err(|e| Error::line(path, i + 1, format!("not valid JSON: {e}")))?;
        out.push(parse_row(&v, out.len(), &source).map_err(|m| Error::line(path, i + 1, m))?);
    }
    Ok(out)
}

/// A parquet field as JSON (only what QA rows contain needs to be faithful).
fn field_to_json(f: &parquet::record::Field) -> Value {
    use parquet::record::Field as F;
    match f {
        F::Null => Value::Null,
        F::Bool(b) => Value::Bool(*b),
        F::Byte(x) => (*x).into(),
        F::Short(x) => (*x).into(),
        F::Int(x) => (*x).into(),
        F::Long(x) => (*x).into(),
        F::UByte(x) => (*x).into(),
        F::UShort(x) => (*x).into(),
        F::UInt(x) => (*x).into(),
        F::ULong(x) => (*x).into(),
        F::Float(x) => serde_json::Number::from_f64(*x as f64).map_or(Value::Null, Value::Number),
        F::Double(x) => serde_json::Number::from_f64(*x).map_or(Value::Null, Value::Number),
        F::Str(s) => Value::String(s.clone()),
        F::Group(row) => row_to_json(row),
        F::ListInternal(list) => Value::Array(list.elements().iter().map(field_to_json).collect()),
        F::MapInternal(map) => Value::Object(
            map.entries()
                .iter()
                .map(|(k, v)| {
                    let key = match field_to_json(k) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, field_to_json(v))
                })
                .collect(),
        ),
        // Dates, decimals, binary: not part of QA rows; keep their display form.
        other => Value::String(other.to_string()),
    }
}

fn row_to_json(row: &parquet::record::Row) -> Value {
    Value::Object(
        row.get_column_iter()
            .map(|(k, v)| (k.clone(), field_to_json(v)))
            .collect(),
    )
}

/// Read a parquet dataset (Search-R1's `test.parquet`); errors carry the file and the 1-based
/// row.
pub fn load_parquet(path: &Path) -> Result<Vec<Question>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| Error::format(path, format!("not a readable parquet file: {e}")))?;
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| Error::format(path, e.to_string()))?;
    let source = default_source(path);
    let mut out = Vec::new();
    for (i, row) in rows.enumerate() {
        let row = row.map_err(|e| Error::line(path, i + 1, format!("row {}: {e}", i + 1)))?;
        let q = parse_row(&row_to_json(&row), i, &source)
            .map_err(|m| Error::line(path, i + 1, format!("row {}: {m}", i + 1)))?;
        out.push(q);
    }
    Ok(out)
}

/// Load a dataset by extension: `.parquet`, or `.jsonl` / `.json` (one object per line).
pub fn load(path: &Path) -> Result<Vec<Question>> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let qs = match ext.as_str() {
        "parquet" => load_parquet(path)?,
        "jsonl" | "json" => load_jsonl(path)?,
        _ => {
            return Err(Error::format(
                path,
                "unknown dataset format (expected .parquet or .jsonl)",
            ));
        }
    };
    if qs.is_empty() {
        return Err(Error::format(path, "the dataset has no rows"));
    }
    Ok(qs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn golden_answers_fall_back_to_the_reward_target() {
        let q = parse_row(
            &json!({"id": 5, "question": "q?", "data_source": "nq",
                    "reward_model": {"ground_truth": {"target": ["A", "B"]}}}),
            0,
            "x",
        )
        .unwrap();
        assert_eq!(q.id, "5");
        assert_eq!(q.golden_answers, vec!["A", "B"]);
        assert_eq!(q.data_source, "nq");
        let q = parse_row(
            &json!({"question": "q", "golden_answers": "single"}),
            7,
            "src",
        )
        .unwrap();
        assert_eq!((q.id.as_str(), q.data_source.as_str()), ("7", "src"));
        assert_eq!(q.golden_answers, vec!["single"]);
    }

    #[test]
    fn rows_without_answers_or_question_are_refused() {
        let e = parse_row(&json!({"id": "a", "question": "q"}), 0, "x").unwrap_err();
        assert!(
            e.contains("no golden_answers") && e.contains("\"a\""),
            "{e}"
        );
        let e = parse_row(
            &json!({"id": "a", "question": "q", "golden_answers": []}),
            0,
            "x",
        )
        .unwrap_err();
        assert!(e.contains("empty golden_answers"), "{e}");
        let e = parse_row(&json!({"id": "a", "golden_answers": ["x"]}), 0, "x").unwrap_err();
        assert!(e.contains("\"question\""), "{e}");
        let e = parse_row(&json!({"question": "q", "golden_answers": [{}]}), 0, "x").unwrap_err();
        assert!(e.contains("list of strings"), "{e}");
    }

    #[test]
    fn default_source_follows_the_flashrag_layout() {
        assert_eq!(default_source(Path::new("/d/nq/test.jsonl")), "nq");
        assert_eq!(default_source(Path::new("/d/bamboogle.jsonl")), "bamboogle");
    }
}
