//! Retrieval: the [`Retriever`] trait the agent loop searches through, and the small exact
//! in-memory retriever used when no disk index is given.

mod memory;

pub use memory::MemoryRetriever;

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
