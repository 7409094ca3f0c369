//! Corpus passages and the JSONL corpus reader.
//!
//! Two row shapes are accepted, one JSON object per line:
//! - Search-R1 / wiki-18: `{"id": "...", "contents": "\"Title\"\ntext"}`: the title is the first
//!   line of `contents`, kept byte-exact (wiki-18 titles carry their quotes), the text the rest;
//! - `{"id": "...", "title": "...", "text": "..."}`.

use std::io::BufRead;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One retrievable passage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Passage {
    /// Corpus id (wiki-18 ids are decimal strings).
    pub id: String,
    /// Title line, exactly as in the corpus (wiki-18 keeps quotes: `"Paris"`).
    pub title: String,
    /// Passage text.
    pub text: String,
}

impl Passage {
    /// Split a wiki-18 `contents` field into title (first line) and text (the rest).
    pub fn from_contents(id: impl Into<String>, contents: &str) -> Passage {
        let (title, text) = contents.split_once('\n').unwrap_or((contents, ""));
        Passage {
            id: id.into(),
            title: title.to_string(),
            text: text.to_string(),
        }
    }

    /// The wiki-18 `contents` field: title, newline, text. Inverse of [`Passage::from_contents`].
    pub fn contents(&self) -> String {
        format!("{}\n{}", self.title, self.text)
    }

    /// Parse one JSONL row; the error message says what is missing.
    pub fn from_json_line(line: &str) -> Result<Passage, String> {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
        let obj = v.as_object().ok_or("expected a JSON object")?;
        let id = match obj.get("id") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(_) => return Err("field \"id\" must be a string or a number".into()),
            None => return Err("missing field \"id\"".into()),
        };
        if let Some(c) = obj.get("contents") {
            let c = c.as_str().ok_or("field \"contents\" must be a string")?;
            return Ok(Passage::from_contents(id, c));
        }
        match (obj.get("title"), obj.get("text")) {
            (Some(t), Some(x)) => Ok(Passage {
                id,
                title: t
                    .as_str()
                    .ok_or("field \"title\" must be a string")?
                    .to_string(),
                text: x
                    .as_str()
                    .ok_or("field \"text\" must be a string")?
                    .to_string(),
            }),
            _ => Err("expected \"contents\" or both \"title\" and \"text\"".into()),
        }
    }
}

/// Iterate over the rows of a JSONL corpus, yielding `(line_number, Result<Passage>)`.
/// Blank lines are skipped. Errors carry the file and the 1-based line number.
pub fn read_jsonl(path: &Path) -> Result<impl Iterator<Item = Result<Passage>>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = std::io::BufReader::with_capacity(1 << 20, file);
    let path = path.to_path_buf();
    Ok(reader.lines().enumerate().filter_map(move |(i, line)| {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                let msg = if e.kind() == std::io::ErrorKind::InvalidData {
                    "line is not valid UTF-8".to_string()
                } else {
                    e.to_string()
                };
                return Some(Err(Error::line(&path, i + 1, msg)));
            }
        };
        if line.trim().is_empty() {
            return None;
        }
        Some(Passage::from_json_line(&line).map_err(|m| Error::line(&path, i + 1, m)))
    }))
}

/// Read a whole JSONL corpus into memory, stopping at the first malformed line.
pub fn load_jsonl(path: &Path) -> Result<Vec<Passage>> {
    read_jsonl(path)?.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wiki18_contents_split_keeps_quotes() {
        let p = Passage::from_json_line(
            r#"{"id": "7", "contents": "\"Paris\"\nParis is the capital.\nSecond line."}"#,
        )
        .unwrap();
        assert_eq!(p.id, "7");
        assert_eq!(p.title, "\"Paris\"");
        assert_eq!(p.text, "Paris is the capital.\nSecond line.");
        assert_eq!(
            p.contents(),
            "\"Paris\"\nParis is the capital.\nSecond line."
        );
    }

    #[test]
    fn title_text_rows_and_numeric_ids() {
        let p =
            Passage::from_json_line(r#"{"id": 3, "title": "Rome", "text": "Capital of Italy."}"#)
                .unwrap();
        assert_eq!(
            (p.id.as_str(), p.title.as_str(), p.text.as_str()),
            ("3", "Rome", "Capital of Italy.")
        );
    }

    #[test]
    fn malformed_rows_name_the_problem() {
        assert!(
            Passage::from_json_line("{")
                .unwrap_err()
                .contains("not valid JSON")
        );
        assert!(
            Passage::from_json_line(r#"{"contents": "x"}"#)
                .unwrap_err()
                .contains("\"id\"")
        );
        assert!(
            Passage::from_json_line(r#"{"id": "1"}"#)
                .unwrap_err()
                .contains("contents")
        );
        assert!(
            Passage::from_json_line("[1]")
                .unwrap_err()
                .contains("object")
        );
    }

    #[test]
    fn jsonl_errors_carry_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        std::fs::write(&path, "{\"id\":\"1\",\"contents\":\"A\\nb\"}\n\nnot json\n").unwrap();
        let rows: Vec<_> = read_jsonl(&path).unwrap().collect();
        assert_eq!(rows.len(), 2);
        assert!(rows[0].is_ok());
        let err = rows[1].as_ref().unwrap_err().to_string();
        assert!(err.contains("c.jsonl:3:"), "{err}");
    }
}
