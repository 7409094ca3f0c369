//! `edge index`: build, import, inspect and search disk indexes.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use dgpo_core::embed;
use dgpo_core::index::{
    Backend, BuildOptions, BuildReport, Distance, ImportOptions, Index, SearchParams, build,
    import_faiss, inspect,
};
use dgpo_core::retrieve::Retriever;

/// Arguments of `edge index`.
#[derive(Args, Debug)]
pub struct IndexArgs {
    #[command(subcommand)]
    command: IndexCommand,
}

#[derive(Subcommand, Debug)]
enum IndexCommand {
    /// Embed a JSONL corpus into a new index (resumes an interrupted build in the same --out).
    Build(BuildArgs),
    /// Make an index from a faiss IndexFlatIP/IndexFlatL2 file without re-embedding.
    ImportFaiss(ImportArgs),
    /// Search an index.
    Search(SearchArgs),
    /// Print an index's metadata (works on interrupted builds too).
    Info {
        /// The index directory.
        dir: PathBuf,
    },
}

#[derive(Args, Debug)]
struct StoreArgs {
    /// ANN backend: hannoy (HNSW) or arroy (random-projection trees).
    #[arg(long, default_value = "hannoy")]
    backend: String,
    /// Distance: cosine, or binary-cosine (1 bit per dimension).
    #[arg(long, default_value = "cosine")]
    distance: String,
    /// Passages per committed chunk (the most an interruption can lose).
    #[arg(long, default_value_t = 4096)]
    chunk_size: usize,
    /// Seed of the ANN build (arroy builds are reproducible with it; hannoy inserts in parallel
    /// and two builds of one corpus differ).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Pause after each chunk (for interruption tests).
    #[arg(long, default_value_t = 0, hide = true)]
    chunk_delay_ms: u64,
}

#[derive(Args, Debug)]
struct BuildArgs {
    /// JSONL corpus: wiki-18 {"id","contents"} or {"id","title","text"} rows.
    #[arg(long)]
    corpus: PathBuf,
    /// Embedder: a BERT-family HF folder (MiniLM, e5, bge), `hash` or `hash:<dim>`.
    #[arg(long, default_value = "hash")]
    embedder: String,
    /// Index directory.
    #[arg(long)]
    out: PathBuf,
    /// Texts per embedder batch.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Skip malformed lines (they are counted and the first ones logged).
    #[arg(long)]
    skip_bad: bool,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args, Debug)]
struct ImportArgs {
    /// The faiss file (IndexFlatIP or IndexFlatL2), rows in corpus order.
    #[arg(long)]
    faiss: PathBuf,
    /// The corpus the rows belong to.
    #[arg(long)]
    corpus: PathBuf,
    /// The model folder that produced the vectors (used for queries).
    #[arg(long)]
    embedder: String,
    /// Index directory.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args, Debug)]
struct SearchArgs {
    /// The index directory.
    dir: PathBuf,
    /// Queries (several are embedded as one batch).
    queries: Vec<String>,
    /// Read more queries from a file, one per line.
    #[arg(long)]
    queries_file: Option<PathBuf>,
    /// Passages per query.
    #[arg(short = 'k', long = "topk", default_value_t = 3)]
    k: usize,
    /// Query embedder, instead of the one the index records (must be the same model).
    #[arg(long)]
    embedder: Option<String>,
    /// Print JSON lines ({"query", "hits": [{"id","title","text","score"}]}).
    #[arg(long)]
    json: bool,
    /// hannoy: candidates kept while walking the graph (raised to 10·k). More is slower and
    /// finds more of the true neighbours [default: max(200, passages / 300), README "Index"].
    #[arg(long)]
    ef_search: Option<usize>,
    /// arroy: nodes visited, as a multiple of k × trees [default: 15].
    #[arg(long)]
    arroy_oversampling: Option<usize>,
}

/// Run `edge index`.
pub fn run(args: IndexArgs) -> Result<()> {
    match args.command {
        IndexCommand::Build(a) => {
            let mut o = build_options(a.corpus, a.out, &a.embedder, &a.store)?;
            o.batch_size = a.batch_size.max(1);
            o.skip_bad = a.skip_bad;
            let report = build(&o)?;
            print_report(&o, &report);
            Ok(())
        }
        IndexCommand::ImportFaiss(a) => {
            let o = build_options(a.corpus, a.out, &a.embedder, &a.store)?;
            let report = import_faiss(&ImportOptions {
                faiss: a.faiss,
                build: o.clone(),
            })?;
            print_report(&o, &report);
            Ok(())
        }
        IndexCommand::Search(a) => search(a),
        IndexCommand::Info { dir } => {
            let meta = inspect(&dir)?;
            println!("{}", serde_json::to_string_pretty(&meta)?);
            Ok(())
        }
    }
}

fn build_options(
    corpus: PathBuf,
    out: PathBuf,
    embedder: &str,
    s: &StoreArgs,
) -> Result<BuildOptions> {
    let spec = embed::parse_spec(embedder)?;
    let mut o = BuildOptions::new(corpus, out, spec);
    o.backend = s.backend.parse::<Backend>()?;
    o.distance = s.distance.parse::<Distance>()?;
    o.chunk_size = s.chunk_size.max(1);
    o.seed = s.seed;
    o.progress = !s.no_progress;
    o.chunk_delay = Duration::from_millis(s.chunk_delay_ms);
    Ok(o)
}

fn print_report(o: &BuildOptions, r: &BuildReport) {
    if r.already_complete {
        println!(
            "{} is already complete: {} passages",
            o.out.display(),
            r.documents
        );
        return;
    }
    let rate = (r.documents - r.resumed_from) as f64 / r.ingest_secs.max(1e-9);
    println!(
        "indexed {} passages into {} ({} resumed, {} malformed lines skipped); ingest {:.1} s \
         ({:.0} passages/s), ANN build {:.1} s",
        r.documents,
        o.out.display(),
        r.resumed_from,
        r.skipped,
        r.ingest_secs,
        rate,
        r.ann_build_secs
    );
}

fn search(a: SearchArgs) -> Result<()> {
    let mut queries = a.queries.clone();
    if let Some(f) = &a.queries_file {
        let file = std::fs::File::open(f).with_context(|| format!("opening {}", f.display()))?;
        for line in std::io::BufReader::new(file).lines() {
            let line = line.with_context(|| format!("reading {}", f.display()))?;
            if !line.trim().is_empty() {
                queries.push(line);
            }
        }
    }
    if queries.is_empty() {
        bail!("no query given");
    }
    let embedder = match &a.embedder {
        Some(e) => Some(embed::open(&embed::parse_spec(e)?, None)?),
        None => None,
    };
    if a.ef_search == Some(0) || a.arroy_oversampling == Some(0) {
        bail!("--ef-search and --arroy-oversampling must be at least 1");
    }
    let mut index = Index::open_with(&a.dir, embedder)?;
    let own = index.params();
    index.set_params(SearchParams {
        ef_search: a.ef_search.unwrap_or(own.ef_search),
        arroy_oversampling: a.arroy_oversampling.unwrap_or(own.arroy_oversampling),
    });
    let refs: Vec<&str> = queries.iter().map(String::as_str).collect();
    let t = Instant::now();
    let results = index.search_batch(&refs, a.k)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let mut out = std::io::stdout().lock();
    for (q, hits) in queries.iter().zip(&results) {
        if a.json {
            let hits: Vec<_> = hits
                .iter()
                .map(|h| {
                    serde_json::json!({"id": h.passage.id, "title": h.passage.title,
                        "text": h.passage.text, "score": h.score})
                })
                .collect();
            writeln!(out, "{}", serde_json::json!({"query": q, "hits": hits}))?;
        } else {
            writeln!(out, "query: {q}")?;
            for (i, h) in hits.iter().enumerate() {
                let text: String = h.passage.text.chars().take(160).collect();
                writeln!(
                    out,
                    "  {}. [{:.4}] {} (id {}) {}",
                    i + 1,
                    h.score,
                    h.passage.title,
                    h.passage.id,
                    text.replace('\n', " ")
                )?;
            }
        }
    }
    if !a.json {
        writeln!(
            out,
            "({} queries in {:.1} ms, {})",
            queries.len(),
            ms,
            index.describe()
        )?;
    }
    Ok(())
}
