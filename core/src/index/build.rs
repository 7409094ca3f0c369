//! Ingest: stream a JSONL corpus, embed in batches, write in committed chunks, resume after an
//! interruption, then build the ANN structure.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::ann::{self, Backend, Distance};
use super::{BuildState, FORMAT_VERSION, IndexMeta, Store};
use crate::corpus::Passage;
use crate::embed::{self, Embedder, EmbedderSpec, Fnv64, Role};
use crate::{Error, Result};

/// Options of [`build`].
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The JSONL corpus.
    pub corpus: PathBuf,
    /// The index directory (created; resumed if it holds an interrupted build).
    pub out: PathBuf,
    /// The passage embedder.
    pub embedder: EmbedderSpec,
    /// ANN library.
    pub backend: Backend,
    /// Vector distance.
    pub distance: Distance,
    /// Texts per embedder call.
    pub batch_size: usize,
    /// Passages per LMDB commit: the most work an interruption can lose.
    pub chunk_size: usize,
    /// Skip (and count) malformed lines instead of refusing the corpus.
    pub skip_bad: bool,
    /// Seed of the ANN build.
    pub seed: u64,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Pause after each committed chunk (tests use it to interrupt a build mid-way).
    pub chunk_delay: Duration,
}

impl BuildOptions {
    /// Defaults for `corpus` → `out` with `embedder`.
    pub fn new(
        corpus: impl Into<PathBuf>,
        out: impl Into<PathBuf>,
        embedder: EmbedderSpec,
    ) -> Self {
        BuildOptions {
            corpus: corpus.into(),
            out: out.into(),
            embedder,
            backend: Backend::DEFAULT,
            distance: Distance::Cosine,
            batch_size: 64,
            chunk_size: 4096,
            skip_bad: false,
            seed: 42,
            progress: false,
            chunk_delay: Duration::ZERO,
        }
    }
}

/// What a build did.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildReport {
    /// Passages in the index.
    pub documents: u64,
    /// Malformed lines skipped.
    pub skipped: u64,
    /// Passages already committed by an earlier, interrupted run.
    pub resumed_from: u64,
    /// Whether the index was already complete (nothing done).
    pub already_complete: bool,
    /// Seconds spent embedding and writing.
    pub ingest_secs: f64,
    /// Seconds spent building the ANN structure.
    pub ann_build_secs: f64,
}

/// The first pass over the corpus: validates every line before anything is written, counts
/// passages (for the ETA), checksums the bytes, and gathers document frequencies for the hash
/// embedder.
pub(crate) struct Scan {
    pub documents: u64,
    pub checksum: String,
    pub idf: Option<Vec<f32>>,
}

/// One corpus line: 1-based number and the parsed row (or why it is malformed).
type Row = (u64, std::result::Result<Passage, String>);

/// Iterate over non-blank lines, feeding every byte to `hash` when given.
fn lines(
    path: &Path,
    mut hash: Option<&mut Fnv64>,
    mut f: impl FnMut(Row) -> Result<bool>,
) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut r = std::io::BufReader::with_capacity(1 << 20, file);
    let mut buf = Vec::new();
    let mut n = 0u64;
    loop {
        buf.clear();
        let got = r
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::io(path, e))?;
        if got == 0 {
            return Ok(());
        }
        n += 1;
        if let Some(h) = hash.as_deref_mut() {
            h.update(&buf);
        }
        let line = match std::str::from_utf8(&buf) {
            Ok(s) => s.trim_end_matches(['\n', '\r']),
            Err(_) => {
                if !f((n, Err("line is not valid UTF-8".into())))? {
                    return Ok(());
                }
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        if !f((n, Passage::from_json_line(line)))? {
            return Ok(());
        }
    }
}

pub(crate) fn scan(path: &Path, skip_bad: bool, want_df: bool, progress: bool) -> Result<Scan> {
    let bytes = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    let pb = bar(
        progress,
        bytes,
        "checking corpus",
        "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, ETA {eta})",
    );
    let mut h = Fnv64::default();
    let mut df = want_df.then(embed::DfCounter::default);
    let (mut docs, mut bad, mut pos) = (0u64, 0u64, 0u64);
    lines(path, Some(&mut h), |(n, row)| {
        match row {
            Ok(p) => {
                docs += 1;
                pos += (p.title.len() + p.text.len() + p.id.len() + 24) as u64;
                if let Some(df) = df.as_mut() {
                    df.add(&p.contents());
                }
            }
            Err(msg) if skip_bad => {
                bad += 1;
                if bad <= 10 {
                    tracing::warn!("{}:{n}: skipping malformed line: {msg}", path.display());
                }
            }
            Err(msg) => {
                return Err(Error::line(
                    path,
                    n as usize,
                    format!("{msg} (pass --skip-bad to skip malformed lines)"),
                ));
            }
        }
        if n % 4096 == 0 {
            pb.set_position(pos.min(bytes));
        }
        Ok(true)
    })?;
    pb.finish_and_clear();
    if bad > 0 {
        tracing::warn!("{}: {bad} malformed lines will be skipped", path.display());
    }
    Ok(Scan {
        documents: docs,
        checksum: format!("fnv1a64:{:016x}", h.0),
        idf: df.map(|d| d.idf()),
    })
}

fn bar(show: bool, len: u64, msg: &'static str, template: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(
        Some(len),
        if show {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    pb.set_style(
        ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(msg);
    pb
}

/// Where a build's vectors come from.
pub(crate) trait VectorSource {
    /// Vectors for `passages`, which are items `first..first + passages.len()`.
    fn vectors(&mut self, first: u64, passages: &[Passage]) -> Result<Vec<Vec<f32>>>;
}

struct Embedding<'a> {
    embedder: &'a dyn Embedder,
    batch: usize,
}

impl VectorSource for Embedding<'_> {
    fn vectors(&mut self, _first: u64, passages: &[Passage]) -> Result<Vec<Vec<f32>>> {
        let texts: Vec<String> = passages.iter().map(Passage::contents).collect();
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(self.batch.max(1)) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            out.extend(self.embedder.embed(&refs, Role::Passage)?);
        }
        Ok(out)
    }
}

/// Build (or resume building) an index: see [`BuildOptions`].
pub fn build(opts: &BuildOptions) -> Result<BuildReport> {
    let want_df = matches!(opts.embedder, EmbedderSpec::Hash { .. });
    let scan = scan(&opts.corpus, opts.skip_bad, want_df, opts.progress)?;
    let embedder = embed::open(&opts.embedder, scan.idf.clone())?;
    let mut source = Embedding {
        embedder: embedder.as_ref(),
        batch: opts.batch_size,
    };
    let meta = IndexMeta {
        format: FORMAT_VERSION,
        embedder_id: embedder.id(),
        embedder: embedder.spec(),
        dim: embedder.dim(),
        backend: opts.backend,
        distance: opts.distance,
        documents: 0,
        expected_documents: scan.documents,
        corpus_checksum: scan.checksum.clone(),
        corpus: absolute(&opts.corpus),
        source: "embedded".into(),
        seed: opts.seed,
        build: BuildState::Ingesting {
            next_line: 1,
            skipped: 0,
        },
    };
    ingest(opts, meta, scan.idf.as_deref(), &mut source)
}

pub(crate) fn absolute(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
}

/// The fields that must agree for a resume to continue the same build.
fn same_build(old: &IndexMeta, new: &IndexMeta) -> std::result::Result<(), String> {
    let pairs = [
        ("embedder", old.embedder_id.clone(), new.embedder_id.clone()),
        ("dimension", old.dim.to_string(), new.dim.to_string()),
        (
            "backend",
            format!("{:?}", old.backend),
            format!("{:?}", new.backend),
        ),
        (
            "distance",
            format!("{:?}", old.distance),
            format!("{:?}", new.distance),
        ),
        (
            "corpus checksum",
            old.corpus_checksum.clone(),
            new.corpus_checksum.clone(),
        ),
        ("source", old.source.clone(), new.source.clone()),
        ("seed", old.seed.to_string(), new.seed.to_string()),
    ];
    for (what, a, b) in pairs {
        if a != b {
            return Err(format!("{what} differs: the index has {a}, this run {b}"));
        }
    }
    Ok(())
}

/// The shared ingest loop of `build` and `import-faiss`.
pub(crate) fn ingest(
    opts: &BuildOptions,
    fresh: IndexMeta,
    idf: Option<&[f32]>,
    source: &mut dyn VectorSource,
) -> Result<BuildReport> {
    let store = Store::open(&opts.out, true)?;
    let e = store.err();
    let ann = ann::open_db(&store.env, opts.backend, opts.distance, fresh.dim, true)?;
    let existing = {
        let rtxn = store.env.read_txn().map_err(&e)?;
        store.read_meta(&rtxn)?
    };
    let mut meta = match existing {
        Some(old) => {
            same_build(&old, &fresh).map_err(|m| Error::Index {
                path: opts.out.clone(),
                msg: format!(
                    "it holds a different build ({m}); remove the directory or choose another \
                     --out"
                ),
            })?;
            old
        }
        None => {
            // Metadata and idf are committed together: a later run either sees both or neither.
            let mut wtxn = store.env.write_txn().map_err(&e)?;
            store.write_meta(&mut wtxn, &fresh)?;
            if let Some(idf) = idf {
                store.write_idf(&mut wtxn, idf)?;
            }
            wtxn.commit().map_err(&e)?;
            fresh
        }
    };
    let resumed_from = meta.documents;
    if let BuildState::Complete { skipped } = meta.build {
        return Ok(BuildReport {
            documents: meta.documents,
            skipped,
            resumed_from,
            already_complete: true,
            ingest_secs: 0.0,
            ann_build_secs: 0.0,
        });
    }
    if resumed_from > 0 {
        tracing::info!(
            "resuming {}: {} of {} passages already committed",
            opts.out.display(),
            resumed_from,
            meta.expected_documents
        );
    }
    let pb = bar(
        opts.progress,
        meta.expected_documents,
        "indexing",
        "{msg} [{bar:30}] {pos}/{len} passages ({per_sec}, ETA {eta})",
    );
    pb.set_position(resumed_from);
    pb.reset_eta();
    let t0 = Instant::now();
    let BuildState::Ingesting {
        next_line,
        mut skipped,
    } = meta.build
    else {
        unreachable!("complete builds returned above")
    };
    let mut chunk: Vec<Passage> = Vec::with_capacity(opts.chunk_size);
    let mut chunk_skipped = 0u64;
    let mut last_line = next_line.saturating_sub(1);
    let mut flush = |chunk: &mut Vec<Passage>,
                     chunk_skipped: &mut u64,
                     last_line: u64,
                     meta: &mut IndexMeta|
     -> Result<()> {
        let first = meta.documents;
        let vectors = if chunk.is_empty() {
            Vec::new()
        } else {
            source.vectors(first, chunk)?
        };
        if vectors.len() != chunk.len() {
            return Err(Error::invalid(format!(
                "vector source gave {} vectors for {} passages",
                vectors.len(),
                chunk.len()
            )));
        }
        let mut wtxn = store.env.write_txn().map_err(&e)?;
        for (i, (p, v)) in chunk.iter().zip(&vectors).enumerate() {
            let item = u32::try_from(first + i as u64)
                .map_err(|_| Error::invalid("more than 2^32 passages"))?;
            store.put_passage(&mut wtxn, item, p)?;
            ann.add(&mut wtxn, item, v)
                .map_err(|err| super::in_dir(err, &opts.out))?;
        }
        meta.documents += chunk.len() as u64;
        skipped += *chunk_skipped;
        meta.build = BuildState::Ingesting {
            next_line: last_line + 1,
            skipped,
        };
        store.write_meta(&mut wtxn, meta)?;
        wtxn.commit().map_err(&e)?;
        pb.set_position(meta.documents);
        chunk.clear();
        *chunk_skipped = 0;
        if !opts.chunk_delay.is_zero() {
            std::thread::sleep(opts.chunk_delay);
        }
        Ok(())
    };
    lines(&opts.corpus, None, |(n, row)| {
        if n < next_line {
            return Ok(true);
        }
        match row {
            Ok(p) => chunk.push(p),
            Err(msg) if opts.skip_bad => {
                chunk_skipped += 1;
                tracing::debug!("{}:{n}: skipped: {msg}", opts.corpus.display());
            }
            // The scan validated every line; a failure here means the file changed under us.
            Err(msg) => return Err(Error::line(&opts.corpus, n as usize, msg)),
        }
        last_line = n;
        if chunk.len() >= opts.chunk_size {
            flush(&mut chunk, &mut chunk_skipped, last_line, &mut meta)?;
        }
        Ok(true)
    })?;
    if !chunk.is_empty() || chunk_skipped > 0 {
        flush(&mut chunk, &mut chunk_skipped, last_line, &mut meta)?;
    }
    pb.finish_and_clear();
    let ingest_secs = t0.elapsed().as_secs_f64();
    if meta.documents != meta.expected_documents {
        return Err(Error::Index {
            path: opts.out.clone(),
            msg: format!(
                "the corpus changed during the build: {} passages written, {} expected",
                meta.documents, meta.expected_documents
            ),
        });
    }
    // The ANN build and the `complete` mark commit together: an interrupted build is redone.
    let t1 = Instant::now();
    let spin = bar(
        opts.progress,
        1,
        "building ANN",
        "{spinner} {msg} ({elapsed})",
    );
    spin.enable_steady_tick(Duration::from_millis(200));
    let mut wtxn = store.env.write_txn().map_err(&e)?;
    ann.build(&mut wtxn, meta.seed)
        .map_err(|err| super::in_dir(err, &opts.out))?;
    let BuildState::Ingesting { skipped, .. } = meta.build else {
        unreachable!()
    };
    meta.build = BuildState::Complete { skipped };
    store.write_meta(&mut wtxn, &meta)?;
    wtxn.commit().map_err(&e)?;
    spin.finish_and_clear();
    Ok(BuildReport {
        documents: meta.documents,
        skipped,
        resumed_from,
        already_complete: false,
        ingest_secs,
        ann_build_secs: t1.elapsed().as_secs_f64(),
    })
}
