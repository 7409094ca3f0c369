//! `edge serve`: the agent, the retriever and a chat model behind one small HTTP server.
//!
//! hyper 1.x on tokio. The network side is async; all model and retriever work is CPU-bound
//! and runs on tokio's blocking pool, admitted by a [`limits::Limiter`] (at most
//! `--max-concurrency` jobs at once, at most `--queue` waiting; beyond that a 503 with
//! `Retry-After`). Every job carries a [`cancel::Cancel`] that is checked before each model
//! forward pass, so a client that goes away, a per-request deadline or a shutdown deadline stops
//! generation within one token.
//!
//! Routes: `POST /retrieve` (Search-R1's retriever API), `POST /v1/agent`,
//! `POST /v1/chat/completions` and `GET /v1/models` (OpenAI-compatible), `GET /health`,
//! `GET /metrics` (Prometheus text).

mod agent;
mod app;
mod body;
mod cancel;
mod limits;
mod metrics;
mod openai;
mod retrieve;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use dgpo_core::model::{BackendKind, LoadOptions};
use dgpo_core::retrieve::RetrieverSpec;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use app::{App, Config, Loaded};

/// Environment variable read for the API key when `--api-key` is not given.
pub const API_KEY_ENV: &str = "DGPO_API_KEY";

/// Arguments of `edge serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Model: a GGUF file or an HF folder (config.json + safetensors + tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// tokenizer.json to use instead of the model's own.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Disk index directory built by `edge index build`.
    #[arg(long, conflicts_with = "corpus")]
    pub index: Option<PathBuf>,
    /// Query embedder for --index (folder, or `hash`); default: the one the index records.
    #[arg(long, requires = "index")]
    pub embedder: Option<String>,
    /// JSONL corpus searched exactly in memory with BM25 (small corpora, tests, demos).
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Backend: auto, candle or llama.
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// CPU threads (llama.cpp backend).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Cap on the model's context length.
    #[arg(long)]
    pub max_context: Option<usize>,
    /// Model name reported by /v1/models and in completions (default: the model file's name).
    #[arg(long)]
    pub model_name: Option<String>,
    /// Address to listen on (port 0 picks a free port). Binding anything but loopback needs an
    /// API key.
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub bind: String,
    /// API key clients must send as `Authorization: Bearer KEY` (default: $DGPO_API_KEY).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Model/retriever jobs run at once (default: CPU cores, at most 4).
    #[arg(long)]
    pub max_concurrency: Option<usize>,
    /// Jobs that may wait for a free slot; beyond that requests get 503 + Retry-After.
    #[arg(long, default_value_t = 32)]
    pub queue: usize,
    /// Largest request body in bytes (larger ones get 413).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Per-request deadline in seconds, queueing included (generation is cancelled after it).
    #[arg(long, default_value_t = 120.0)]
    pub request_timeout: f64,
    /// Cap on new tokens per completion and per agent turn.
    #[arg(long, default_value_t = 1024)]
    pub max_tokens: usize,
    /// Cap on the agent's search turns per request.
    #[arg(long, default_value_t = 8)]
    pub max_turns: usize,
    /// Passages per search when the request does not say.
    #[arg(long, default_value_t = 3)]
    pub topk: usize,
    /// Cap on passages per search.
    #[arg(long, default_value_t = 100)]
    pub max_topk: usize,
    /// Cap on queries per /retrieve request.
    #[arg(long, default_value_t = 512)]
    pub max_batch: usize,
    /// Open connections served at once (more wait in the kernel's accept queue).
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Seconds in-flight requests get to finish after SIGTERM/ctrl-c before they are cancelled.
    #[arg(long, default_value_t = 30.0)]
    pub shutdown_timeout: f64,
    /// Write the bound address (`IP:PORT`) to this file once listening (for scripts and tests).
    #[arg(long)]
    pub port_file: Option<PathBuf>,
}

fn is_loopback_bind(bind: &str) -> Result<(SocketAddr, bool)> {
    let addrs: Vec<SocketAddr> = bind
        .to_socket_addrs()
        .with_context(|| format!("--bind {bind:?}: not an address (e.g. 127.0.0.1:8000)"))?
        .collect();
    let Some(first) = addrs.first().copied() else {
        bail!("--bind {bind:?} resolves to no address");
    };
    Ok((first, addrs.iter().all(|a| a.ip().is_loopback())))
}

fn positive_secs(name: &str, v: f64) -> Result<Duration> {
    if !(v.is_finite() && v > 0.0) {
        bail!("{name} must be a positive number of seconds, got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

/// Run `edge serve` until SIGTERM or ctrl-c.
pub fn run(args: ServeArgs) -> Result<()> {
    if args.api_key.as_deref() == Some("") {
        bail!("--api-key is empty");
    }
    // An empty variable counts as unset (`DGPO_API_KEY= edge serve` is a common way to unset).
    let api_key = args
        .api_key
        .clone()
        .or_else(|| std::env::var(API_KEY_ENV).ok().filter(|k| !k.is_empty()));
    if let Some(k) = &api_key
        && (k.len() < 8 || k.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        bail!("the API key must be at least 8 characters without spaces or control characters");
    }
    let (addr, loopback) = is_loopback_bind(&args.bind)?;
    if !loopback && api_key.is_none() {
        bail!(
            "refusing to listen on {addr} (not loopback) without an API key: pass --api-key or set {API_KEY_ENV}"
        );
    }
    let spec = match (&args.corpus, &args.index) {
        (Some(c), None) => RetrieverSpec::Corpus(c.clone()),
        (None, Some(dir)) => RetrieverSpec::Index {
            dir: dir.clone(),
            embedder: args.embedder.clone(),
        },
        _ => bail!("pass exactly one of --corpus corpus.jsonl or --index DIR"),
    };
    let backend: BackendKind = args.backend.parse()?;
    let max_concurrency = args
        .max_concurrency
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(4)
        })
        .max(1);
    if args.max_tokens == 0 || args.max_topk == 0 || args.topk == 0 || args.topk > args.max_topk {
        bail!("--max-tokens, --topk and --max-topk must be positive, and --topk <= --max-topk");
    }
    let model_name = args.model_name.clone().unwrap_or_else(|| {
        args.model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    });
    let cfg = Config {
        api_key,
        model_name,
        max_body_bytes: args.max_body_bytes,
        request_timeout: positive_secs("--request-timeout", args.request_timeout)?,
        max_tokens: args.max_tokens,
        max_turns: args.max_turns,
        topk: args.topk,
        max_topk: args.max_topk,
        max_batch: args.max_batch,
    };
    let shutdown_timeout = positive_secs("--shutdown-timeout", args.shutdown_timeout)?;
    let load_opts = LoadOptions {
        tokenizer: args.tokenizer.clone(),
        backend,
        threads: args.threads,
        max_context: args.max_context,
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Model jobs only start with a limiter permit; the rest is headroom for loading.
        .max_blocking_threads(max_concurrency + 4)
        .thread_name("edge-serve")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let app = Arc::new(App::new(cfg, max_concurrency, args.queue));
    rt.block_on(serve(
        app,
        addr,
        args.model.clone(),
        load_opts,
        spec,
        args.max_connections.max(1),
        shutdown_timeout,
        args.port_file.clone(),
    ))
}

/// Resolves on SIGTERM or ctrl-c.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    app: Arc<App>,
    addr: SocketAddr,
    model_path: PathBuf,
    load_opts: LoadOptions,
    spec: RetrieverSpec,
    max_connections: usize,
    shutdown_timeout: Duration,
    port_file: Option<PathBuf>,
) -> Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    // Tests and scripts read this line (or --port-file) to learn the port chosen for :0.
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {local}")?;
        out.flush()?;
    }
    if let Some(p) = &port_file {
        // Written whole then renamed, so a reader never sees a half-written address.
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, local.to_string())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, p).with_context(|| format!("writing {}", p.display()))?;
    }
    tracing::info!(%local, "listening; loading the model and the retriever");

    // Load in the background: /health answers 503 until both are ready.
    let (load_err_tx, mut load_err_rx) = tokio::sync::oneshot::channel::<anyhow::Error>();
    {
        let app = app.clone();
        tokio::task::spawn_blocking(move || {
            let t = std::time::Instant::now();
            let loaded = (|| -> Result<Loaded> {
                let model = dgpo_core::model::load(&model_path, &load_opts)
                    .with_context(|| format!("loading model {}", model_path.display()))?;
                let retriever =
                    dgpo_core::retrieve::open(&spec).context("opening the retriever")?;
                Ok(Loaded { model, retriever })
            })();
            match loaded {
                Ok(l) => {
                    tracing::info!(
                        retriever = %l.retriever.describe(),
                        secs = t.elapsed().as_secs_f64(),
                        "ready"
                    );
                    let _ = app.loaded.set(l);
                }
                Err(e) => {
                    let _ = load_err_tx.send(e);
                }
            }
        });
    }

    let conn_limit = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Every connection task holds a clone; recv() returns None once all have finished.
    let (alive_tx, mut alive_rx) = tokio::sync::mpsc::channel::<()>(1);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut load_failed = None;
    // The oneshot resolves once: with an error, or closed when loading succeeded.
    let mut load_pending = true;
    loop {
        let permit = tokio::select! {
            p = conn_limit.clone().acquire_owned() => p.expect("never closed"),
            _ = &mut shutdown => break,
            e = &mut load_err_rx, if load_pending => {
                load_pending = false;
                if let Ok(e) = e { load_failed = Some(e); break; }
                continue;
            }
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
            e = &mut load_err_rx, if load_pending => {
                load_pending = false;
                if let Ok(e) = e { load_failed = Some(e); break; }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let mut stop_rx = stop_rx.clone();
        let alive = alive_tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _alive = alive;
            let svc = service_fn(move |req| app::handle(app.clone(), req));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let res = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop_rx.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.as_mut().await
                }
            };
            if let Err(e) = res {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    drop(alive_tx);
    if let Some(e) = load_failed {
        return Err(e);
    }
    tracing::info!("shutting down: finishing in-flight requests");
    app.draining.store(true, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    if tokio::time::timeout(shutdown_timeout, alive_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!(
            "in-flight requests did not finish within {:?}; cancelling them",
            shutdown_timeout
        );
        app.kill.store(true, Ordering::SeqCst);
        // Cancelled generation stops within one token; give the connections a moment to close.
        let _ = tokio::time::timeout(Duration::from_secs(2), alive_rx.recv()).await;
    }
    tracing::info!("stopped");
    Ok(())
}
