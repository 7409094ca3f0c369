//! `POST /retrieve`: Search-R1's retriever server API, byte-compatible with its client
//! (`search_r1/search/retrieval_server.py`).
//!
//! Request `{"queries": [...], "topk": 3, "return_scores": true}`; answer `{"result": [...]}`
//! with one list per query, of `{"document": {"id", "contents"}, "score"}` with scores or of
//! bare `{"id", "contents"}` documents without. `contents` is the wiki-18 field: the title line,
//! a newline, the text.

use std::sync::Arc;
use std::time::Instant;

use hyper::Request;
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use super::app::{App, read_json, run_job};
use super::body::{ApiError, Resp, json, ms_since};
use super::metrics::Phase;
use dgpo_core::retrieve::Hit;

#[derive(Debug, Deserialize)]
struct RetrieveRequest {
    queries: Vec<String>,
    /// Search-R1 treats a missing, null or 0 `topk` as "the server's default".
    #[serde(default)]
    topk: Option<usize>,
    #[serde(default)]
    return_scores: bool,
}

#[derive(Debug, Serialize)]
struct Document {
    id: String,
    contents: String,
}

#[derive(Debug, Serialize)]
struct Scored {
    document: Document,
    score: f32,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Results {
    Scored(Vec<Vec<Scored>>),
    Plain(Vec<Vec<Document>>),
}

#[derive(Debug, Serialize)]
struct RetrieveResponse {
    result: Results,
}

fn document(h: Hit) -> (Document, f32) {
    let contents = h.passage.contents();
    (
        Document {
            id: h.passage.id,
            contents,
        },
        h.score,
    )
}

/// Handle `POST /retrieve`.
pub async fn handle(app: &Arc<App>, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let start = Instant::now();
    let r: RetrieveRequest = read_json(app, req).await?;
    let topk = match r.topk {
        None | Some(0) => app.cfg.topk,
        Some(k) if k > app.cfg.max_topk => {
            return Err(ApiError::bad_request(format!(
                "topk {k} is above this server's limit of {}",
                app.cfg.max_topk
            )));
        }
        Some(k) => k,
    };
    if r.queries.len() > app.cfg.max_batch {
        return Err(ApiError::bad_request(format!(
            "{} queries in one request; this server takes at most {}",
            r.queries.len(),
            app.cfg.max_batch
        )));
    }
    let cancel = app.cancel_token(start);
    let permit = app.admit(&cancel).await?;
    let retriever = app.loaded()?.retriever.clone();
    let queries = r.queries;
    let t = Instant::now();
    let hits = run_job(&cancel, permit, move || {
        let qs: Vec<&str> = queries.iter().map(String::as_str).collect();
        retriever.search_batch(&qs, topk)
    })
    .await?
    .map_err(|e| app.job_error(e, &cancel))?;
    app.metrics.phase_ms(Phase::Retrieval, ms_since(t));
    let result = if r.return_scores {
        Results::Scored(
            hits.into_iter()
                .map(|hs| {
                    hs.into_iter()
                        .map(|h| {
                            let (document, score) = document(h);
                            Scored { document, score }
                        })
                        .collect()
                })
                .collect(),
        )
    } else {
        Results::Plain(
            hits.into_iter()
                .map(|hs| hs.into_iter().map(|h| document(h).0).collect())
                .collect(),
        )
    };
    Ok(json(&RetrieveResponse { result }))
}
