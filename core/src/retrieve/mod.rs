//! Retrieval: the [`Retriever`] trait the agent loop searches through, and the small exact
//! in-memory retriever used when no disk index is given.

mod memory;
mod remote;

pub use memory::MemoryRetriever;
pub use remote::RemoteRetriever;

use serde::{Deserialize, Serialize};

use crate::Result;
use crate::corpus::Passage;

/// One search result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    /// The retrieved passage.
    pub passage: Passage,
    /// Similarity score (higher is better; the scale depends on the retriever).
    pub score: f32,
}

/// Anything that can answer a search query with the top-k passages.
///
/// Implementations must be shareable between threads: the server and the FFI run several
/// agents over one index.
pub trait Retriever: Send + Sync {
    /// The top `k` passages for `query`, best first.
    fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>>;

    /// Several queries at once. Backends that embed queries override this to batch the encoder.
    fn search_batch(&self, queries: &[&str], k: usize) -> Result<Vec<Vec<Hit>>> {
        queries.iter().map(|q| self.search(q, k)).collect()
    }

    /// A short description for logs and traces (e.g. `bm25(40 passages)`).
    fn describe(&self) -> String;
}

impl<R: Retriever + ?Sized> Retriever for std::sync::Arc<R> {
    fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>> {
        (**self).search(query, k)
    }
    fn search_batch(&self, queries: &[&str], k: usize) -> Result<Vec<Vec<Hit>>> {
        (**self).search_batch(queries, k)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

impl<R: Retriever + ?Sized> Retriever for Box<R> {
    fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>> {
        (**self).search(query, k)
    }
    fn search_batch(&self, queries: &[&str], k: usize) -> Result<Vec<Vec<Hit>>> {
        (**self).search_batch(queries, k)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// Where the agent's passages come from: the one switch every front end (CLI, server, FFI)
/// passes to [`open`], so that adding a retriever kind touches one place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetrieverSpec {
    /// A JSONL corpus searched exactly in memory (BM25): small corpora, tests and demos.
    Corpus(std::path::PathBuf),
    /// A disk index directory built by `edge index build`; `embedder` overrides the query
    /// embedder recorded in the index (it must produce the same vectors).
    Index {
        /// The index directory.
        dir: std::path::PathBuf,
        /// Query embedder folder (or `hash`); `None` uses the one the index records.
        embedder: Option<String>,
    },
    /// A server speaking Search-R1's `POST /retrieve` JSON API.
    Remote(String),
}

/// Open the retriever `spec` names.
pub fn open(spec: &RetrieverSpec) -> Result<std::sync::Arc<dyn Retriever>> {
    match spec {
        RetrieverSpec::Corpus(path) => Ok(std::sync::Arc::new(MemoryRetriever::from_jsonl(path)?)),
        RetrieverSpec::Index { dir, embedder } => {
            let embedder = match embedder {
                Some(e) => Some(crate::embed::open(&crate::embed::parse_spec(e)?, None)?),
                None => None,
            };
            Ok(std::sync::Arc::new(crate::index::Index::open_with(
                dir, embedder,
            )?))
        }
        RetrieverSpec::Remote(url) => Ok(std::sync::Arc::new(RemoteRetriever::new(url)?)),
    }
}
