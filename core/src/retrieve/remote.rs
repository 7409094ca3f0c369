//! A retriever that calls any server speaking Search-R1's `POST /retrieve` JSON API:
//! `{"queries": [...], "topk": k, "return_scores": true}` →
//! `{"result": [[{"document": {"id", "contents"}, "score"}, ...], ...]}`.

use std::time::Duration;

use serde::Deserialize;

use super::{Hit, Retriever};
use crate::corpus::Passage;
use crate::{Error, Result};

/// A remote `/retrieve` endpoint.
pub struct RemoteRetriever {
    url: String,
    agent: ureq::Agent,
}

#[derive(Deserialize)]
struct Response {
    result: Vec<Vec<Item>>,
}

/// One result: `{"document": {...}, "score": s}` with scores, or the document itself without.
#[derive(Deserialize)]
#[serde(untagged)]
enum Item {
    Scored { document: Doc, score: f32 },
    Bare(Doc),
}

#[derive(Deserialize)]
struct Doc {
    #[serde(default)]
    id: serde_json::Value,
    #[serde(default)]
    contents: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    text: Option<String>,
}

impl Doc {
    fn passage(self) -> Passage {
        let id = match self.id {
            serde_json::Value::String(s) => s,
            serde_json::Value::Null => String::new(),
            v => v.to_string(),
        };
        match (self.contents, self.title, self.text) {
            (Some(c), _, _) => Passage::from_contents(id, &c),
            (None, title, text) => Passage {
                id,
                title: title.unwrap_or_default(),
                text: text.unwrap_or_default(),
            },
        }
    }
}

impl RemoteRetriever {
    /// A retriever for `url`: the full endpoint (`http://host:8000/retrieve`), or a base URL to
    /// which `/retrieve` is appended.
    pub fn new(url: &str) -> Result<Self> {
        let url = url.trim_end_matches('/');
        if !url.starts_with("http://") && !url.starts_with("https://") {
            return Err(Error::Remote {
                url: url.to_string(),
                msg: "the URL must start with http:// or https://".into(),
            });
        }
        let url = if url.ends_with("/retrieve") {
            url.to_string()
        } else {
            format!("{url}/retrieve")
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(RemoteRetriever { url, agent })
    }

    fn err(&self, msg: impl Into<String>) -> Error {
        Error::Remote {
            url: self.url.clone(),
            msg: msg.into(),
        }
    }
}

impl Retriever for RemoteRetriever {
    fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>> {
        Ok(self.search_batch(&[query], k)?.pop().unwrap_or_default())
    }

    fn search_batch(&self, queries: &[&str], k: usize) -> Result<Vec<Vec<Hit>>> {
        let body = serde_json::json!({"queries": queries, "topk": k, "return_scores": true});
        let body = serde_json::to_vec(&body).expect("JSON request");
        let mut resp = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json")
            .send(&body[..])
            .map_err(|e| self.err(e.to_string()))?;
        let status = resp.status();
        let text = resp
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_string()
            .map_err(|e| self.err(format!("reading the response: {e}")))?;
        if !status.is_success() {
            let snippet: String = text.chars().take(200).collect();
            return Err(self.err(format!("HTTP {status}: {snippet}")));
        }
        let parsed: Response = serde_json::from_str(&text)
            .map_err(|e| self.err(format!("not a /retrieve response: {e}")))?;
        if parsed.result.len() != queries.len() {
            return Err(self.err(format!(
                "{} result lists for {} queries",
                parsed.result.len(),
                queries.len()
            )));
        }
        Ok(parsed
            .result
            .into_iter()
            .map(|items| {
                let n = items.len();
                items
                    .into_iter()
                    .take(k)
                    .enumerate()
                    .map(|(rank, it)| match it {
                        Item::Scored { document, score } => Hit {
                            passage: document.passage(),
                            score,
                        },
                        // Without scores, keep the server's order visible: 1, 1 - 1/n, ...
                        Item::Bare(d) => Hit {
                            passage: d.passage(),
                            score: 1.0 - rank as f32 / n as f32,
                        },
                    })
                    .collect()
            })
            .collect())
    }

    fn describe(&self) -> String {
        format!("remote({})", self.url)
    }
}
