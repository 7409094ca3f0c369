//! Import of faiss `IndexFlatIP` / `IndexFlatL2` files (Search-R1's `e5_Flat.index`): the
//! vectors are raw float32 rows in corpus order, so they are copied, not re-embedded.
//!
//! File layout (faiss `write_index`, little-endian): fourcc `IxFI` (inner product) or `IxF2`
//! (L2); `d: i32`, `ntotal: i64`, two `i64` placeholders, `is_trained: u8`, `metric_type: i32`,
//! `metric_arg: f32` only when `metric_type > 1`; then the codes vector: `u64` length followed
//! by `ntotal · d` float32 values (the length counts bytes in current faiss; some older files
//! count floats, which the reader accepts too).

use std::path::{Path, PathBuf};

use super::build::{BuildOptions, BuildReport, VectorSource, absolute, ingest, scan};
use super::{BuildState, FORMAT_VERSION, IndexMeta};
use crate::corpus::Passage;
use crate::embed::{self, EmbedderSpec};
use crate::{Error, Result};

/// A memory-mapped flat faiss index.
pub struct FaissFlat {
    path: PathBuf,
    map: memmap2::Mmap,
    /// Dimension.
    pub dim: usize,
    /// Number of vectors.
    pub ntotal: u64,
    /// `true` for `IndexFlatIP`, `false` for `IndexFlatL2`.
    pub inner_product: bool,
    offset: usize,
}

impl FaissFlat {
    /// Open and validate `path`.
    pub fn open(path: &Path) -> Result<FaissFlat> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: read-only map; the file must not be truncated while the import runs.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let bad = |m: String| Error::format(path, m);
        let mut pos = 0usize;
        let mut take = |n: usize| -> Result<&[u8]> {
            let s = map
                .get(pos..pos + n)
                .ok_or_else(|| bad(format!("truncated faiss header at byte {pos}")))?;
            pos += n;
            Ok(s)
        };
        let fourcc = take(4)?.to_vec();
        let inner_product = match &fourcc[..] {
            b"IxFI" => true,
            b"IxF2" => false,
            other => {
                return Err(bad(format!(
                    "not a flat faiss index: fourcc {:?} (only IndexFlatIP `IxFI` and \
                     IndexFlatL2 `IxF2` can be imported)",
                    String::from_utf8_lossy(other)
                )));
            }
        };
        let d = i32::from_le_bytes(take(4)?.try_into().expect("4"));
        let ntotal = i64::from_le_bytes(take(8)?.try_into().expect("8"));
        take(16)?; // two placeholders faiss writes for compatibility
        take(1)?; // is_trained
        let metric = i32::from_le_bytes(take(4)?.try_into().expect("4"));
        if metric > 1 {
            take(4)?;
        }
        let len = u64::from_le_bytes(take(8)?.try_into().expect("8"));
        if d <= 0 || ntotal < 0 {
            return Err(bad(format!("bad header: d = {d}, ntotal = {ntotal}")));
        }
        let floats = ntotal as u64 * d as u64;
        if len != floats * 4 && len != floats {
            return Err(bad(format!(
                "codes length {len} does not match ntotal {ntotal} × d {d}"
            )));
        }
        let need = pos as u64 + floats * 4;
        if (map.len() as u64) < need {
            return Err(bad(format!(
                "file is truncated: {} bytes, {need} needed for {ntotal} vectors of {d}",
                map.len()
            )));
        }
        Ok(FaissFlat {
            path: path.to_path_buf(),
            dim: d as usize,
            ntotal: ntotal as u64,
            inner_product,
            offset: pos,
            map,
        })
    }

    /// Vector `i`.
    pub fn row(&self, i: u64) -> Option<Vec<f32>> {
        if i >= self.ntotal {
            return None;
        }
        let start = self.offset + (i as usize) * self.dim * 4;
        let bytes = &self.map[start..start + self.dim * 4];
        Some(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
                .collect(),
        )
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

struct Rows<'a>(&'a FaissFlat);

impl VectorSource for Rows<'_> {
    fn vectors(&mut self, first: u64, passages: &[Passage]) -> Result<Vec<Vec<f32>>> {
        (first..first + passages.len() as u64)
            .map(|i| {
                self.0.row(i).ok_or_else(|| {
                    Error::format(
                        &self.0.path,
                        format!("no vector {i} (ntotal {})", self.0.ntotal),
                    )
                })
            })
            .collect()
    }
}

/// Options of [`import_faiss`].
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The faiss file.
    pub faiss: PathBuf,
    /// Build options (corpus, out, the query embedder the vectors came from, backend, ...).
    pub build: BuildOptions,
}

/// Import a flat faiss index whose rows are the corpus passages in order.
///
/// The vectors are stored under cosine distance: for Search-R1's e5 index (normalised vectors,
/// inner product) that is the same ranking. An L2 index ranks like cosine only when its
/// vectors are unit length; the import warns when they are not.
pub fn import_faiss(opts: &ImportOptions) -> Result<BuildReport> {
    let flat = FaissFlat::open(&opts.faiss)?;
    let b = &opts.build;
    if b.skip_bad {
        return Err(Error::invalid(
            "--skip-bad cannot be used with a faiss import: the vectors are matched to corpus \
             rows by position",
        ));
    }
    let scan = scan(&b.corpus, false, false, b.progress)?;
    if scan.documents != flat.ntotal {
        return Err(Error::format(
            &opts.faiss,
            format!(
                "holds {} vectors but the corpus {} has {} passages",
                flat.ntotal,
                b.corpus.display(),
                scan.documents
            ),
        ));
    }
    let embedder = embed::open(&b.embedder, None)?;
    if embedder.dim() != flat.dim {
        return Err(Error::format(
            &opts.faiss,
            format!(
                "vectors have {} dimensions but the embedder {} gives {}",
                flat.dim,
                embedder.id(),
                embedder.dim()
            ),
        ));
    }
    if matches!(b.embedder, EmbedderSpec::Hash { .. }) {
        return Err(Error::invalid(
            "a faiss import needs the model folder that produced its vectors, not `hash`",
        ));
    }
    if !flat.inner_product {
        let sample = (0..flat.ntotal.min(100)).filter_map(|i| flat.row(i));
        if sample
            .map(|v| v.iter().map(|x| x * x).sum::<f32>().sqrt())
            .any(|n| (n - 1.0).abs() > 1e-3)
        {
            tracing::warn!(
                "{}: IndexFlatL2 with vectors that are not unit length: cosine ranking will \
                 differ from faiss' L2 ranking",
                opts.faiss.display()
            );
        }
    }
    let meta = IndexMeta {
        format: FORMAT_VERSION,
        embedder_id: embedder.id(),
        embedder: embedder.spec(),
        dim: flat.dim,
        backend: b.backend,
        distance: b.distance,
        documents: 0,
        expected_documents: scan.documents,
        corpus_checksum: scan.checksum,
        corpus: absolute(&b.corpus),
        source: format!(
            "faiss:{}",
            opts.faiss.file_name().unwrap_or_default().to_string_lossy()
        ),
        seed: b.seed,
        build: BuildState::Ingesting {
            next_line: 1,
            skipped: 0,
        },
    };
    ingest(b, meta, None, &mut Rows(&flat))
}
