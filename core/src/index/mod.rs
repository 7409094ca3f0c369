//! The disk index: one LMDB environment (heed) holding the passages, the ANN vectors (arroy or
//! hannoy) and the metadata that ties them to an embedder and a corpus.
//!
//! Layout of the environment (`DIR/data.mdb`):
//! - `meta`: `"meta"` → [`IndexMeta`] as JSON; `"idf"` → the hash embedder's idf table (f32 LE);
//! - `passages`: item id (u32, big-endian: corpus order) → id, title, text;
//! - `vectors`: the ANN library's own database (index 0).
//!
//! Every write happens in LMDB transactions, so a crash or `kill -9` leaves the last committed
//! state: the build records how far it got in the same transaction as the passages and vectors
//! it added, and [`build`] resumes from there.

mod ann;
mod build;
mod faiss;

pub use ann::{Backend, Distance, SearchParams, brute_force};
pub use build::{BuildOptions, BuildReport, build};
pub use faiss::{FaissFlat, ImportOptions, import_faiss};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use heed::types::{Bytes, Str};
use heed::{Database, Env, EnvOpenOptions, RoTxn, RwTxn};
use serde::{Deserialize, Serialize};

use crate::corpus::Passage;
use crate::embed::{Embedder, EmbedderSpec, Role};
use crate::retrieve::{Hit, Retriever};
use crate::{Error, Result};

/// Version of the on-disk layout; bumped on incompatible changes.
pub const FORMAT_VERSION: u32 = 1;

/// LMDB address space reserved for an index. LMDB files only grow as data is written, so a
/// large map costs nothing until used; 1 TiB fits the 21M-passage wiki-18 with e5 vectors.
const MAP_SIZE: usize = 1 << 40;

/// How far a build got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BuildState {
    /// Passages and vectors are being added; `next_line` is the first corpus line (1-based)
    /// not yet committed.
    Ingesting {
        /// First uncommitted corpus line (1-based).
        next_line: u64,
        /// Malformed lines skipped so far (`--skip-bad`).
        skipped: u64,
    },
    /// Everything is added and the ANN structure is built: the index is searchable.
    Complete {
        /// Malformed lines skipped.
        skipped: u64,
    },
}

/// The metadata of an index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexMeta {
    /// On-disk layout version ([`FORMAT_VERSION`]).
    pub format: u32,
    /// [`Embedder::id`] of the embedder that produced the vectors.
    pub embedder_id: String,
    /// How to re-create that embedder for queries.
    pub embedder: EmbedderSpec,
    /// Vector dimension.
    pub dim: usize,
    /// ANN library.
    pub backend: Backend,
    /// Vector distance.
    pub distance: Distance,
    /// Passages committed so far (all of them once complete).
    pub documents: u64,
    /// Passages the corpus holds (valid rows).
    pub expected_documents: u64,
    /// `fnv1a64:<hex>` of the corpus file's bytes.
    pub corpus_checksum: String,
    /// The corpus file the index was built from.
    pub corpus: PathBuf,
    /// Where the vectors came from: `embedded`, or `faiss:<file>` for an import.
    pub source: String,
    /// Seed of the ANN build.
    pub seed: u64,
    /// Build progress.
    pub build: BuildState,
}

impl IndexMeta {
    /// Whether the index is complete (searchable).
    pub fn is_complete(&self) -> bool {
        matches!(self.build, BuildState::Complete { .. })
    }
}

/// An open LMDB environment with the index's databases.
pub(crate) struct Store {
    pub dir: PathBuf,
    pub env: Env,
    pub meta_db: Database<'static, Str, Bytes>,
    pub passages: Database<'static, heed::types::U32<heed::byteorder::BE>, Bytes>,
}

fn lmdb_err(dir: &Path) -> impl Fn(heed::Error) -> Error + '_ {
    move |e| {
        let msg = match e {
            heed::Error::EnvAlreadyOpened => {
                "the index is already open in this process; share the open handle".to_string()
            }
            e => e.to_string(),
        };
        Error::Index {
            path: dir.to_path_buf(),
            msg,
        }
    }
}

impl Store {
    /// Open the environment in `dir`; with `create`, make the directory and databases.
    pub fn open(dir: &Path, create: bool) -> Result<Store> {
        let e = lmdb_err(dir);
        if create {
            std::fs::create_dir_all(dir).map_err(|err| Error::io(dir, err))?;
        } else if !dir.join("data.mdb").exists() {
            return Err(Error::Index {
                path: dir.to_path_buf(),
                msg: "no index here (data.mdb is missing); build one with `edge index build`"
                    .into(),
            });
        }
        // SAFETY: heed's contract: the environment files must not be modified by other means
        // while open; we only ever touch them through LMDB.
        let env = unsafe {
            EnvOpenOptions::new()
                .map_size(MAP_SIZE)
                .max_dbs(8)
                .open(dir)
        }
        .map_err(&e)?;
        let (meta_db, passages) = if create {
            let wtxn = env.write_txn().map_err(&e)?;
            env.create_databases_and_commit(wtxn, |dbo, wtxn| -> heed::Result<_> {
                let m = dbo.create_database(wtxn, Some("meta"))?;
                let p = dbo.create_database(wtxn, Some("passages"))?;
                Ok(heed::CommitOrAbort::<_, ()>::Commit((Some(m), Some(p))))
            })
            .map_err(&e)?
            .unwrap_commit()
        } else {
            let rtxn = env.read_txn().map_err(&e)?;
            env.open_databases_and_commit(rtxn, |dbo, rtxn| -> heed::Result<_> {
                let m = dbo.open_database(rtxn, Some("meta"))?;
                let p = dbo.open_database(rtxn, Some("passages"))?;
                Ok(heed::CommitOrAbort::<_, ()>::Commit((m, p)))
            })
            .map_err(&e)?
            .unwrap_commit()
        };
        let (Some(meta_db), Some(passages)) = (meta_db, passages) else {
            return Err(Error::Index {
                path: dir.to_path_buf(),
                msg: "not a dgpo index (no meta/passages databases)".into(),
            });
        };
        Ok(Store {
            dir: dir.to_path_buf(),
            env,
            meta_db,
            passages,
        })
    }

    pub fn err(&self) -> impl Fn(heed::Error) -> Error + '_ {
        lmdb_err(&self.dir)
    }

    pub fn read_meta(&self, rtxn: &RoTxn) -> Result<Option<IndexMeta>> {
        let Some(bytes) = self.meta_db.get(rtxn, "meta").map_err(self.err())? else {
            return Ok(None);
        };
        serde_json::from_slice(bytes)
            .map(Some)
            .map_err(|e| Error::Index {
                path: self.dir.clone(),
                msg: format!("unreadable metadata: {e}"),
            })
    }

    pub fn write_meta(&self, wtxn: &mut RwTxn, meta: &IndexMeta) -> Result<()> {
        let bytes = serde_json::to_vec(meta).expect("metadata serialises");
        self.meta_db.put(wtxn, "meta", &bytes).map_err(self.err())
    }

    pub fn read_idf(&self, rtxn: &RoTxn) -> Result<Option<Vec<f32>>> {
        Ok(self.meta_db.get(rtxn, "idf").map_err(self.err())?.map(|b| {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect()
        }))
    }

    pub fn write_idf(&self, wtxn: &mut RwTxn, idf: &[f32]) -> Result<()> {
        let bytes: Vec<u8> = idf.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.meta_db.put(wtxn, "idf", &bytes).map_err(self.err())
    }

    pub fn put_passage(&self, wtxn: &mut RwTxn, item: u32, p: &Passage) -> Result<()> {
        self.passages
            .put(wtxn, &item, &encode_passage(p))
            .map_err(self.err())
    }

    pub fn get_passage(&self, rtxn: &RoTxn, item: u32) -> Result<Option<Passage>> {
        match self.passages.get(rtxn, &item).map_err(self.err())? {
            None => Ok(None),
            Some(b) => decode_passage(b).map(Some).ok_or_else(|| Error::Index {
                path: self.dir.clone(),
                msg: format!("passage {item} is corrupt"),
            }),
        }
    }
}

/// `[u32 len][id][u32 len][title][text]`, lengths little-endian: compact, and no JSON escaping
/// cost for 21M passages.
fn encode_passage(p: &Passage) -> Vec<u8> {
    let mut b = Vec::with_capacity(8 + p.id.len() + p.title.len() + p.text.len());
    for s in [&p.id, &p.title] {
        b.extend_from_slice(&(s.len() as u32).to_le_bytes());
        b.extend_from_slice(s.as_bytes());
    }
    b.extend_from_slice(p.text.as_bytes());
    b
}

fn decode_passage(b: &[u8]) -> Option<Passage> {
    let mut rest = b;
    let mut field = || -> Option<String> {
        let n = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let s = std::str::from_utf8(rest.get(4..4 + n)?).ok()?.to_string();
        rest = &rest[4 + n..];
        Some(s)
    };
    let id = field()?;
    let title = field()?;
    let text = std::str::from_utf8(rest).ok()?.to_string();
    Some(Passage { id, title, text })
}

/// Read an index's metadata without opening it for search: works on an interrupted build too.
pub fn inspect(dir: &Path) -> Result<IndexMeta> {
    let store = Store::open(dir, false)?;
    let rtxn = store.env.read_txn().map_err(store.err())?;
    store.read_meta(&rtxn)?.ok_or_else(|| Error::Index {
        path: dir.to_path_buf(),
        msg: "no metadata: the build was interrupted before its first commit; run it again".into(),
    })
}

/// Write a complete index from passages and their vectors in one transaction, for programs
/// that embed on their own (and for tests and benches that need exact control of the
/// vectors). `embedder` is recorded as the query embedder; every vector must have its
/// dimension.
pub fn write_vectors(
    dir: &Path,
    embedder: &dyn Embedder,
    backend: Backend,
    distance: Distance,
    seed: u64,
    rows: impl IntoIterator<Item = (Passage, Vec<f32>)>,
) -> Result<IndexMeta> {
    let store = Store::open(dir, true)?;
    let e = store.err();
    {
        let rtxn = store.env.read_txn().map_err(&e)?;
        if store.read_meta(&rtxn)?.is_some() {
            return Err(Error::Index {
                path: dir.to_path_buf(),
                msg: "an index already exists here".into(),
            });
        }
    }
    let dim = embedder.dim();
    let ann = ann::open_db(&store.env, backend, distance, dim, true).map_err(|x| in_dir(x, dir))?;
    let mut wtxn = store.env.write_txn().map_err(&e)?;
    let mut n = 0u64;
    for (i, (p, v)) in rows.into_iter().enumerate() {
        if v.len() != dim {
            return Err(Error::invalid(format!(
                "vector {i} has {} dimensions, expected {dim}",
                v.len()
            )));
        }
        let item = u32::try_from(i).map_err(|_| Error::invalid("more than 2^32 passages"))?;
        store.put_passage(&mut wtxn, item, &p)?;
        ann.add(&mut wtxn, item, &v).map_err(|x| in_dir(x, dir))?;
        n += 1;
    }
    ann.build(&mut wtxn, seed).map_err(|x| in_dir(x, dir))?;
    let meta = IndexMeta {
        format: FORMAT_VERSION,
        embedder_id: embedder.id(),
        embedder: embedder.spec(),
        dim,
        backend,
        distance,
        documents: n,
        expected_documents: n,
        corpus_checksum: String::new(),
        corpus: PathBuf::new(),
        source: "vectors".into(),
        seed,
        build: BuildState::Complete { skipped: 0 },
    };
    store.write_meta(&mut wtxn, &meta)?;
    wtxn.commit().map_err(&e)?;
    Ok(meta)
}

/// A complete, searchable index with its query embedder.
pub struct Index {
    store: Store,
    meta: IndexMeta,
    ann: Box<dyn ann::Ann>,
    embedder: Arc<dyn Embedder>,
    params: SearchParams,
}

impl Index {
    /// Open `dir` with the embedder its metadata records.
    pub fn open(dir: &Path) -> Result<Index> {
        Self::open_with(dir, None)
    }

    /// Open `dir`; `embedder` replaces the recorded query embedder and must have the same
    /// [`Embedder::id`] (otherwise queries would land in an unrelated vector space).
    pub fn open_with(dir: &Path, embedder: Option<Arc<dyn Embedder>>) -> Result<Index> {
        let store = Store::open(dir, false)?;
        let (meta, idf) = {
            let rtxn = store.env.read_txn().map_err(store.err())?;
            let meta = store.read_meta(&rtxn)?.ok_or_else(|| Error::Index {
                path: dir.to_path_buf(),
                msg: "no metadata: the build was interrupted before its first commit".into(),
            })?;
            (meta, store.read_idf(&rtxn)?)
        };
        if meta.format != FORMAT_VERSION {
            return Err(Error::Index {
                path: dir.to_path_buf(),
                msg: format!(
                    "index format {} is not supported (this build reads {FORMAT_VERSION})",
                    meta.format
                ),
            });
        }
        if let BuildState::Ingesting { next_line, .. } = meta.build {
            return Err(Error::Index {
                path: dir.to_path_buf(),
                msg: format!(
                    "the build is incomplete ({} of {} passages committed, up to line {}); run \
                     the same `edge index build` again to resume it",
                    meta.documents,
                    meta.expected_documents,
                    next_line.saturating_sub(1)
                ),
            });
        }
        let embedder = match embedder {
            Some(e) => e,
            None => crate::embed::open(&meta.embedder, idf.clone()).map_err(|e| Error::Index {
                path: dir.to_path_buf(),
                msg: format!(
                    "cannot load the recorded query embedder ({e}); pass the embedder explicitly"
                ),
            })?,
        };
        check_embedder(dir, &meta, embedder.as_ref())?;
        let embedder = match (&meta.embedder, idf) {
            // A user-given `hash` embedder gets the index's corpus idf, like the recorded one.
            (EmbedderSpec::Hash { dim }, Some(idf)) => {
                Arc::new(crate::embed::HashEmbedder::new(*dim, Some(idf))?) as Arc<dyn Embedder>
            }
            _ => embedder,
        };
        let ann = ann::open_db(&store.env, meta.backend, meta.distance, meta.dim, false)
            .map_err(|e| in_dir(e, dir))?;
        let params = SearchParams::for_documents(meta.documents);
        Ok(Index {
            store,
            meta,
            ann,
            embedder,
            params,
        })
    }

    /// The metadata.
    pub fn meta(&self) -> &IndexMeta {
        &self.meta
    }

    /// The query embedder.
    pub fn embedder(&self) -> &Arc<dyn Embedder> {
        &self.embedder
    }

    /// The search effort in use ([`SearchParams::for_documents`] until changed).
    pub fn params(&self) -> SearchParams {
        self.params
    }

    /// Change the search effort.
    pub fn set_params(&mut self, params: SearchParams) {
        self.params = params;
    }

    /// Number of passages.
    pub fn len(&self) -> u64 {
        self.meta.documents
    }

    /// Whether the index holds no passage.
    pub fn is_empty(&self) -> bool {
        self.meta.documents == 0
    }

    /// Passage `item` (corpus order, from 0).
    pub fn passage(&self, item: u32) -> Result<Option<Passage>> {
        let rtxn = self.store.env.read_txn().map_err(self.store.err())?;
        self.store.get_passage(&rtxn, item)
    }

    /// The stored vector of passage `item`.
    pub fn vector(&self, item: u32) -> Result<Option<Vec<f32>>> {
        let rtxn = self.store.env.read_txn().map_err(self.store.err())?;
        self.ann
            .vector(&rtxn, item)
            .map_err(|e| in_dir(e, &self.store.dir))
    }

    /// Raw ANN search: `(item, cosine)` pairs, best first.
    pub fn search_items(&self, q: &[f32], k: usize) -> Result<Vec<(u32, f32)>> {
        if q.len() != self.meta.dim {
            return Err(Error::invalid(format!(
                "query vector has {} dimensions, the index {}",
                q.len(),
                self.meta.dim
            )));
        }
        let rtxn = self.store.env.read_txn().map_err(self.store.err())?;
        self.ann
            .search(&rtxn, q, k, &self.params)
            .map_err(|e| in_dir(e, &self.store.dir))
    }

    /// Search with already-embedded query vectors.
    pub fn search_vectors(&self, qs: &[Vec<f32>], k: usize) -> Result<Vec<Vec<Hit>>> {
        let rtxn = self.store.env.read_txn().map_err(self.store.err())?;
        qs.iter()
            .map(|q| {
                let items = self
                    .ann
                    .search(&rtxn, q, k, &self.params)
                    .map_err(|e| in_dir(e, &self.store.dir))?;
                items
                    .into_iter()
                    .map(|(item, score)| {
                        let passage =
                            self.store
                                .get_passage(&rtxn, item)?
                                .ok_or_else(|| Error::Index {
                                    path: self.store.dir.clone(),
                                    msg: format!("vector {item} has no passage"),
                                })?;
                        Ok(Hit { passage, score })
                    })
                    .collect()
            })
            .collect()
    }
}

fn in_dir(e: Error, dir: &Path) -> Error {
    match e {
        Error::Index { path, msg } if path.as_os_str().is_empty() => Error::Index {
            path: dir.to_path_buf(),
            msg,
        },
        e => e,
    }
}

fn check_embedder(dir: &Path, meta: &IndexMeta, e: &dyn Embedder) -> Result<()> {
    if e.id() != meta.embedder_id || e.dim() != meta.dim {
        return Err(Error::Index {
            path: dir.to_path_buf(),
            msg: format!(
                "embedder mismatch: the index was built with `{}` ({} dimensions) but the query \
                 embedder is `{}` ({} dimensions); their vectors are not comparable",
                meta.embedder_id,
                meta.dim,
                e.id(),
                e.dim()
            ),
        });
    }
    Ok(())
}

impl Retriever for Index {
    fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>> {
        Ok(self.search_batch(&[query], k)?.pop().unwrap_or_default())
    }

    fn search_batch(&self, queries: &[&str], k: usize) -> Result<Vec<Vec<Hit>>> {
        let qs = self.embedder.embed(queries, Role::Query)?;
        self.search_vectors(&qs, k)
    }

    fn describe(&self) -> String {
        format!(
            "index({} passages, {:?}/{:?}, {})",
            self.meta.documents, self.meta.backend, self.meta.distance, self.meta.embedder_id
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passage_codec_roundtrip() {
        let p = Passage {
            id: "42".into(),
            title: "\"Ünïcode\"".into(),
            text: "line one\nline two".into(),
        };
        assert_eq!(decode_passage(&encode_passage(&p)), Some(p));
        assert_eq!(decode_passage(&[1, 0, 0]), None);
    }
}
