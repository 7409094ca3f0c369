//! The ANN vector database behind one trait: arroy (random-projection trees) or hannoy (HNSW),
//! each with cosine or binary-quantised cosine, all inside the index's LMDB environment.

use heed::{Env, RoTxn, RwTxn};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

/// Which ANN library stores the vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// arroy: Annoy-style random-projection forest.
    Arroy,
    /// hannoy: HNSW graph, arroy's successor in Meilisearch.
    Hannoy,
}

impl Backend {
    /// The default backend (chosen by `benches/index.rs`; see the README's Index section).
    pub const DEFAULT: Backend = Backend::Hannoy;
}

impl std::str::FromStr for Backend {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "arroy" => Ok(Backend::Arroy),
            "hannoy" => Ok(Backend::Hannoy),
            _ => Err(crate::Error::invalid(format!(
                "unknown ANN backend {s:?} (expected arroy or hannoy)"
            ))),
        }
    }
}

/// The vector distance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Distance {
    /// Cosine similarity on float32 vectors.
    Cosine,
    /// Cosine between sign-quantised vectors (1 bit per dimension: 32x smaller, lower recall).
    BinaryCosine,
}

impl std::str::FromStr for Distance {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "cosine" => Ok(Distance::Cosine),
            "binary-cosine" | "binary_cosine" | "bq-cosine" => Ok(Distance::BinaryCosine),
            _ => Err(crate::Error::invalid(format!(
                "unknown distance {s:?} (expected cosine or binary-cosine)"
            ))),
        }
    }
}

/// Search effort knobs (defaults tuned for recall@10 ≥ 0.95 on random data; see README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchParams {
    /// hannoy's `ef_search` floor (used as `max(ef, 10·k)`).
    pub ef_search: usize,
    /// arroy's `search_k` as a multiple of `k × n_trees`.
    pub arroy_oversampling: usize,
}

impl Default for SearchParams {
    fn default() -> Self {
        SearchParams {
            ef_search: 200,
            arroy_oversampling: 15,
        }
    }
}

impl SearchParams {
    /// The defaults for an index of `documents` vectors: hannoy's search width grows with the
    /// index (`max(200, documents / 300)`). Measured on clustered vectors (README "Index"):
    /// `ef_search` 200 gives recall@10 1.000 at 100k but 0.71-0.77 at 1M, where 800 gives 0.94
    /// and 3,200 0.98 (17 ms, still 0.15× faiss Flat's exact scan).
    pub fn for_documents(documents: u64) -> SearchParams {
        let d = SearchParams::default();
        SearchParams {
            ef_search: d.ef_search.max((documents / 300) as usize),
            ..d
        }
    }
}

/// The ANN database of one index. Scores are cosine similarities (`1 − 2·distance`: both
/// libraries report `(1 − cos) / 2`).
pub(crate) trait Ann: Send + Sync {
    /// Add (or replace) vector `item`.
    fn add(&self, wtxn: &mut RwTxn, item: u32, v: &[f32]) -> crate::Result<()>;
    /// Build the search structure over every added vector (deterministic given `seed`).
    fn build(&self, wtxn: &mut RwTxn, seed: u64) -> crate::Result<()>;
    /// The `k` nearest items with their cosine scores, best first.
    fn search(
        &self,
        rtxn: &RoTxn,
        q: &[f32],
        k: usize,
        p: &SearchParams,
    ) -> crate::Result<Vec<(u32, f32)>>;
    /// The stored vector of `item` (quantised if the distance is).
    fn vector(&self, rtxn: &RoTxn, item: u32) -> crate::Result<Option<Vec<f32>>>;
}

fn err(e: impl std::fmt::Display) -> crate::Error {
    crate::Error::Index {
        path: Default::default(),
        msg: e.to_string(),
    }
}

/// HNSW links per node (layer > 0, layer 0). 16 (32), hannoy's usual choice, left most nodes
/// unreachable on unstructured vectors (hash-embedded random-word text: 26/100 own-word queries
/// found at 20,000 passages with a search that may visit every node); 32 (64) reaches them all
/// for 1.6× the build time (README "Index", `examples/ann_reach.rs`).
const M: usize = 32;
const M0: usize = 64;

macro_rules! arroy_ann {
    ($name:ident, $dist:ty) => {
        struct $name {
            db: arroy::Database<'static, $dist>,
            dim: usize,
        }
        impl Ann for $name {
            fn add(&self, wtxn: &mut RwTxn, item: u32, v: &[f32]) -> crate::Result<()> {
                arroy::Writer::new(self.db, 0, self.dim)
                    .add_item(wtxn, item, v)
                    .map_err(err)
            }
            fn build(&self, wtxn: &mut RwTxn, seed: u64) -> crate::Result<()> {
                let mut rng = StdRng::seed_from_u64(seed);
                arroy::Writer::new(self.db, 0, self.dim)
                    .builder(&mut rng)
                    .build(wtxn)
                    .map_err(err)
            }
            fn search(
                &self,
                rtxn: &RoTxn,
                q: &[f32],
                k: usize,
                p: &SearchParams,
            ) -> crate::Result<Vec<(u32, f32)>> {
                let reader = match arroy::Reader::open(rtxn, 0, self.db) {
                    Ok(r) => r,
                    Err(arroy::Error::MissingMetadata(_)) => return Ok(Vec::new()),
                    Err(e) => return Err(err(e)),
                };
                let mut qb = reader.nns(k);
                let sk = k.max(1) * reader.n_trees().max(1) * p.arroy_oversampling.max(1);
                qb.search_k(std::num::NonZeroUsize::new(sk).expect("non-zero"));
                let hits = qb.by_vector(rtxn, q).map_err(err)?;
                Ok(hits.into_iter().map(|(i, d)| (i, 1.0 - 2.0 * d)).collect())
            }
            fn vector(&self, rtxn: &RoTxn, item: u32) -> crate::Result<Option<Vec<f32>>> {
                let reader = arroy::Reader::open(rtxn, 0, self.db).map_err(err)?;
                reader.item_vector(rtxn, item).map_err(err)
            }
        }
    };
}

macro_rules! hannoy_ann {
    ($name:ident, $dist:ty) => {
        struct $name {
            db: hannoy::Database<'static, $dist>,
            dim: usize,
        }
        impl Ann for $name {
            fn add(&self, wtxn: &mut RwTxn, item: u32, v: &[f32]) -> crate::Result<()> {
                hannoy::Writer::new(self.db, 0, self.dim)
                    .add_item(wtxn, item, v)
                    .map_err(err)
            }
            fn build(&self, wtxn: &mut RwTxn, seed: u64) -> crate::Result<()> {
                let mut rng = StdRng::seed_from_u64(seed);
                hannoy::Writer::new(self.db, 0, self.dim)
                    .builder(&mut rng)
                    .ef_construction(100)
                    .build::<M, M0>(wtxn)
                    .map_err(err)
            }
            fn search(
                &self,
                rtxn: &RoTxn,
                q: &[f32],
                k: usize,
                p: &SearchParams,
            ) -> crate::Result<Vec<(u32, f32)>> {
                let reader = match hannoy::Reader::open(rtxn, 0, self.db) {
                    Ok(r) => r,
                    Err(hannoy::Error::MissingMetadata(_)) => return Ok(Vec::new()),
                    Err(e) => return Err(err(e)),
                };
                let mut qb = reader.nns(k);
                qb.ef_search(p.ef_search.max(10 * k));
                let hits = qb.by_vector(rtxn, q).map_err(err)?.into_nns();
                Ok(hits.into_iter().map(|(i, d)| (i, 1.0 - 2.0 * d)).collect())
            }
            fn vector(&self, rtxn: &RoTxn, item: u32) -> crate::Result<Option<Vec<f32>>> {
                let reader = hannoy::Reader::open(rtxn, 0, self.db).map_err(err)?;
                reader.item_vector(rtxn, item).map_err(err)
            }
        }
    };
}

arroy_ann!(ArroyCos, arroy::distances::Cosine);
arroy_ann!(ArroyBq, arroy::distances::BinaryQuantizedCosine);
hannoy_ann!(HannoyCos, hannoy::distances::Cosine);
hannoy_ann!(HannoyBq, hannoy::distances::BinaryQuantizedCosine);

/// The LMDB database name of the vectors.
const VECTORS: &str = "vectors";

/// Create (`create = true`, in a write transaction) or open (in a read transaction, so that a
/// reader never waits for a running build's write lock) the vector database.
pub(crate) fn open_db(
    env: &Env,
    backend: Backend,
    distance: Distance,
    dim: usize,
    create: bool,
) -> crate::Result<Box<dyn Ann>> {
    macro_rules! mk {
        ($ty:ident, $db:ty) => {{
            let db: Option<$db> = if create {
                let wtxn = env.write_txn().map_err(err)?;
                env.create_databases_and_commit(wtxn, |dbo, wtxn| -> heed::Result<_> {
                    dbo.create_database(wtxn, Some(VECTORS))
                        .map(|d| heed::CommitOrAbort::<_, ()>::Commit(Some(d)))
                })
                .map_err(err)?
                .unwrap_commit()
            } else {
                let rtxn = env.read_txn().map_err(err)?;
                env.open_databases_and_commit(rtxn, |dbo, rtxn| -> heed::Result<_> {
                    dbo.open_database(rtxn, Some(VECTORS))
                        .map(heed::CommitOrAbort::<_, ()>::Commit)
                })
                .map_err(err)?
                .unwrap_commit()
            };
            match db {
                Some(db) => Box::new($ty { db, dim }) as Box<dyn Ann>,
                None => return Err(err("the index has no vector database")),
            }
        }};
    }
    use arroy::distances as ad;
    use hannoy::distances as hd;
    Ok(match (backend, distance) {
        (Backend::Arroy, Distance::Cosine) => mk!(ArroyCos, arroy::Database<'_, ad::Cosine>),
        (Backend::Arroy, Distance::BinaryCosine) => {
            mk!(ArroyBq, arroy::Database<'_, ad::BinaryQuantizedCosine>)
        }
        (Backend::Hannoy, Distance::Cosine) => mk!(HannoyCos, hannoy::Database<'_, hd::Cosine>),
        (Backend::Hannoy, Distance::BinaryCosine) => {
            mk!(HannoyBq, hannoy::Database<'_, hd::BinaryQuantizedCosine>)
        }
    })
}

/// Exact top-`k` by cosine over `vectors` (rows need not be normalised): the reference the
/// recall tests and benches compare the ANN against.
pub fn brute_force(vectors: &[Vec<f32>], q: &[f32], k: usize) -> Vec<(u32, f32)> {
    let qn = q
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    let mut s: Vec<(u32, f32)> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let dot: f32 = v.iter().zip(q).map(|(a, b)| a * b).sum();
            let n = v
                .iter()
                .map(|x| x * x)
                .sum::<f32>()
                .sqrt()
                .max(f32::MIN_POSITIVE);
            (i as u32, dot / (n * qn))
        })
        .collect();
    let k = k.min(s.len());
    if k == 0 {
        return Vec::new();
    }
    s.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
    s.truncate(k);
    s.sort_by(|a, b| b.1.total_cmp(&a.1));
    s
}

#[cfg(test)]
mod tests {
    use super::SearchParams;

    #[test]
    fn search_width_grows_with_the_index() {
        let d = SearchParams::default();
        assert_eq!(SearchParams::for_documents(0), d);
        assert_eq!(SearchParams::for_documents(60_000), d);
        assert_eq!(SearchParams::for_documents(100_000).ef_search, 333);
        let big = SearchParams::for_documents(1_000_000);
        assert_eq!((big.ef_search, big.arroy_oversampling), (3_333, 15));
    }
}
