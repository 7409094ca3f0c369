//! Decode and prefill speed of the model backends on Qwen2.5-0.5B-shaped GGUFs, and the whole
//! time budget of an agent question.
//!
//! Models, in Q4_K_M and Q8_0: the real Qwen2.5 Q4_K_M file when `scripts/fetch-artifacts.sh`
//! has fetched it (and a Q8_0 file requantised from it: same weights, other kernels), otherwise
//! random-weight files of the exact shape (speed does not depend on weight values; llama.cpp
//! needs the tokenizer only the real file carries, so random files run on candle alone).
//! `DGPO_BENCH_MODEL=file.gguf` benchmarks one given file instead.
//!
//! Measured in one run, so machine noise hits every row alike: prefill (512-token prompt) and
//! decode tokens/s per backend, the streaming-read memory bandwidth and each backend's share of
//! the decode limit it implies, an agent question with 3 searches with KV reuse versus
//! re-encoding every turn, the instruction prefix cache (the fixed instruction prefilled once,
//! each question continuing from its KV state), and retrieval latency (query embedding plus ANN
//! search and passage fetch) on an index: `DGPO_BENCH_INDEX=DIR` (e.g. the MiniLM index of the
//! Wikipedia summaries), else a hash-embedder hannoy index of synthetic passages built once
//! under `target/bench/`.
//!
//! `DGPO_BENCH_QUICK=1` runs a few tokens only (CI: the harness cannot rot). Prints a markdown
//! table and writes `target/bench/speed.json` and `target/bench/speed.md`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use dgpo::candle_core::quantized::gguf_file::{self, Value};
use dgpo::candle_core::quantized::{GgmlDType, QTensor};
use dgpo::candle_core::{Device, Tensor};
use dgpo::model::gguf::GgufFile;
use dgpo::model::{Decoder, KvCache};
use dgpo::retrieve::Retriever;

/// One benchmarked file.
struct Model {
    /// `Q4_K_M` or `Q8_0`.
    quant: &'static str,
    path: PathBuf,
}

/// Prefill and decode speed of one backend on one file.
struct Row {
    quant: &'static str,
    backend: &'static str,
    prefill_tok_s: f64,
    decode_tok_s: f64,
    model_gb: f64,
}

fn artifacts() -> PathBuf {
    std::env::var_os("DGPO_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/artifacts"))
}

fn bench_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench")
}

/// The files to benchmark, Q4_K_M first.
fn models() -> Vec<Model> {
    if let Some(p) = std::env::var_os("DGPO_BENCH_MODEL") {
        return vec![Model {
            quant: "given",
            path: PathBuf::from(p),
        }];
    }
    let real = artifacts().join("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    if real.exists() {
        let q8 = bench_dir().join("qwen2.5-coder-0.5b-instruct-q8_0-requantized.gguf");
        if !q8.exists() {
            eprintln!(
                "requantising {} to Q8_0 at {}",
                real.display(),
                q8.display()
            );
            requantize_q8_0(&real, &q8).expect("requantise the real model");
        }
        return vec![
            Model {
                quant: "Q4_K_M",
                path: real,
            },
            Model {
                quant: "Q8_0",
                path: q8,
            },
        ];
    }
    [("Q4_K_M", false), ("Q8_0", true)]
        .into_iter()
        .map(|(quant, q8)| {
            let path =
                bench_dir().join(format!("random-qwen2.5-0.5b-{}.gguf", quant.to_lowercase()));
            if !path.exists() {
                eprintln!(
                    "writing a random-weight Qwen2.5-0.5B-shaped {quant} GGUF to {}",
                    path.display()
                );
                write_random_qwen(&path, 24, q8).expect("write synthetic model");
            }
            Model { quant, path }
        })
        .collect()
}

/// Write `dst`: `src` with every quantised tensor requantised to Q8_0 (metadata, tokenizer and
/// F32 tensors kept), atomically.
fn requantize_q8_0(src: &Path, dst: &Path) -> dgpo::Result<()> {
    let dev = Device::Cpu;
    let mut f = std::fs::File::open(src).map_err(|e| dgpo::Error::io(src, e))?;
    let content = gguf_file::Content::read(&mut f)?;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let t = content.tensor(&mut f, name, &dev)?;
        let t = if t.dtype() == GgmlDType::F32 {
            t
        } else {
            QTensor::quantize(&t.dequantize(&dev)?, GgmlDType::Q8_0)?
        };
        tensors.push((name.clone(), t));
    }
    let mut md: Vec<(String, Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // llama.cpp's LLAMA_FTYPE_MOSTLY_Q8_0 (informational: loaders read each tensor's type).
    for (k, v) in &mut md {
        if k == "general.file_type" {
            *v = Value::U32(7);
        }
    }
    dgpo::model::export::write_gguf_atomic(dst, &md, &tensors)
}

/// A Qwen2.5-0.5B-shaped file with random weights (no tokenizer: candle only), in the tensor
/// types of llama.cpp's Q4_K_M recipe, or all Q8_0 when `q8` is set.
fn write_random_qwen(path: &Path, layers: usize, q8: bool) -> dgpo::Result<()> {
    let dev = Device::Cpu;
    let (v, h, f, nh, nkv) = (151_936usize, 896usize, 4864usize, 14usize, 2usize);
    let hd = h / nh;
    let q = |shape: (usize, usize), dt: GgmlDType| -> dgpo::Result<QTensor> {
        let t = Tensor::randn(0f32, 0.02, shape, &dev)?;
        // Rows of 896 are not a multiple of the 256-wide k-quant blocks: llama.cpp's Q4_K_M
        // falls back to Q5_0 / Q8_0 for those tensors, as the real file does.
        let dt = match dt {
            _ if q8 => GgmlDType::Q8_0,
            GgmlDType::Q4K if !shape.1.is_multiple_of(256) => GgmlDType::Q5_0,
            GgmlDType::Q6K if !shape.1.is_multiple_of(256) => GgmlDType::Q8_0,
            d => d,
        };
        Ok(QTensor::quantize(&t, dt)?)
    };
    let ones = |n: usize| -> dgpo::Result<QTensor> {
        Ok(QTensor::quantize(
            &Tensor::ones(n, dgpo::candle_core::DType::F32, &dev)?,
            GgmlDType::F32,
        )?)
    };
    let mut ts: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), q((v, h), GgmlDType::Q4K)?),
        ("output.weight".into(), q((v, h), GgmlDType::Q6K)?),
        ("output_norm.weight".into(), ones(h)?),
    ];
    for l in 0..layers {
        let p = |n: &str| format!("blk.{l}.{n}");
        ts.push((p("attn_norm.weight"), ones(h)?));
        ts.push((p("ffn_norm.weight"), ones(h)?));
        ts.push((p("attn_q.weight"), q((nh * hd, h), GgmlDType::Q4K)?));
        ts.push((p("attn_k.weight"), q((nkv * hd, h), GgmlDType::Q4K)?));
        ts.push((p("attn_v.weight"), q((nkv * hd, h), GgmlDType::Q6K)?));
        ts.push((p("attn_q.bias"), ones(nh * hd)?));
        ts.push((p("attn_k.bias"), ones(nkv * hd)?));
        ts.push((p("attn_v.bias"), ones(nkv * hd)?));
        ts.push((p("attn_output.weight"), q((h, nh * hd), GgmlDType::Q4K)?));
        ts.push((p("ffn_gate.weight"), q((f, h), GgmlDType::Q4K)?));
        ts.push((p("ffn_up.weight"), q((f, h), GgmlDType::Q4K)?));
        ts.push((p("ffn_down.weight"), q((h, f), GgmlDType::Q6K)?));
    }
    let md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("qwen2".into())),
        ("qwen2.block_count".into(), Value::U32(layers as u32)),
        ("qwen2.context_length".into(), Value::U32(32768)),
        ("qwen2.embedding_length".into(), Value::U32(h as u32)),
        ("qwen2.feed_forward_length".into(), Value::U32(f as u32)),
        ("qwen2.attention.head_count".into(), Value::U32(nh as u32)),
        (
            "qwen2.attention.head_count_kv".into(),
            Value::U32(nkv as u32),
        ),
        ("qwen2.rope.freq_base".into(), Value::F32(1e6)),
        (
            "qwen2.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1e-6),
        ),
    ];
    dgpo::model::export::write_gguf_atomic(path, &md, &ts)
}

fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

/// Token ids spread over Qwen's ordinary-token range (no special tokens), distinct per `salt`.
fn ids(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| 1000 + (i * 7919 + salt * 104_729) % 100_000)
        .collect()
}

/// The operations the timings need, on either backend.
trait Bench {
    /// A sequence's KV state.
    type State<'a>
    where
        Self: 'a;
    fn fresh(&self) -> Self::State<'_>;
    /// Append `tokens`; return the greedy next token.
    fn feed(&self, s: &mut Self::State<'_>, tokens: &[u32]) -> u32;
    /// Keep the first `len` tokens.
    fn truncate(&self, s: &mut Self::State<'_>, len: usize);
}

struct CandleBench(Decoder);

impl Bench for CandleBench {
    type State<'a> = KvCache;
    fn fresh(&self) -> KvCache {
        KvCache::new()
    }
    fn feed(&self, s: &mut KvCache, tokens: &[u32]) -> u32 {
        let t = Tensor::new(tokens, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let l = self.0.forward_last(&t, Some(s)).unwrap();
        dgpo::sampling::argmax(&l.squeeze(0).unwrap().to_vec1::<f32>().unwrap())
    }
    fn truncate(&self, s: &mut KvCache, len: usize) {
        s.truncate(len)
    }
}

#[cfg(feature = "llama")]
struct LlamaBench(dgpo::llama::LlamaModel);

#[cfg(feature = "llama")]
impl Bench for LlamaBench {
    type State<'a> = Box<dyn dgpo::model::Session + 'a>;
    fn fresh(&self) -> Self::State<'_> {
        use dgpo::model::LanguageModel;
        self.0.new_session().unwrap()
    }
    fn feed(&self, s: &mut Self::State<'_>, tokens: &[u32]) -> u32 {
        dgpo::sampling::argmax(&s.feed(tokens).unwrap())
    }
    fn truncate(&self, s: &mut Self::State<'_>, len: usize) {
        s.truncate(len).unwrap()
    }
}

#[cfg(feature = "llama")]
fn load_llama(path: &Path) -> Option<LlamaBench> {
    use dgpo::model::LoadOptions;
    match dgpo::llama::LlamaModel::load(
        path,
        &LoadOptions {
            threads: Some(threads()),
            max_context: Some(4096),
            ..Default::default()
        },
    ) {
        Ok(m) => Some(LlamaBench(m)),
        Err(e) => {
            eprintln!("llama.cpp skipped for {}: {e}", path.display());
            None
        }
    }
}

/// Prefill tokens/s of `prompt` and greedy decode tokens/s over `decode` tokens.
fn speed<B: Bench>(b: &B, prompt: &[u32], decode: usize) -> (f64, f64) {
    // Warm-up: allocations, thread pool.
    let mut w = b.fresh();
    b.feed(&mut w, &prompt[..prompt.len().min(8)]);
    drop(w);
    let mut s = b.fresh();
    let t = Instant::now();
    let mut next = b.feed(&mut s, prompt);
    let prefill = prompt.len() as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..decode {
        next = b.feed(&mut s, &[next]);
    }
    (prefill, decode as f64 / t.elapsed().as_secs_f64())
}

/// Token counts of the replayed agent question.
#[derive(Clone, Copy)]
struct Shape {
    prompt: usize,
    generated: usize,
    observation: usize,
    answer: usize,
}

/// One agent question with 3 searches, replayed on the model: prompt, then 3 x (generated
/// turn + information block), then the answer. With KV reuse only new tokens are prefilled; the
/// Python reference re-encodes the whole text every turn. Returns (reuse_s, reencode_s).
fn agent_question<B: Bench>(b: &B, q: Shape) -> (f64, f64) {
    let segments = [
        (q.prompt, q.generated),
        (q.observation, q.generated),
        (q.observation, q.generated),
        (q.observation, q.answer),
    ];
    // KV reuse: one state for the whole question.
    let t = Instant::now();
    let mut s = b.fresh();
    for (k, &(pre, g)) in segments.iter().enumerate() {
        let mut next = b.feed(&mut s, &ids(pre, k as u32));
        for _ in 0..g {
            next = b.feed(&mut s, &[next]);
        }
    }
    let reuse = t.elapsed().as_secs_f64();
    drop(s);
    // Re-encode the whole text every turn.
    let t = Instant::now();
    let mut text: Vec<u32> = Vec::new();
    for (k, &(pre, g)) in segments.iter().enumerate() {
        text.extend(ids(pre, k as u32));
        let mut s = b.fresh();
        let mut next = b.feed(&mut s, &text);
        for _ in 0..g {
            text.push(next);
            next = b.feed(&mut s, &[next]);
        }
    }
    (reuse, t.elapsed().as_secs_f64())
}

/// The prefix cache: `questions` prompts that share a `prefix`-token instruction, each either
/// prefilled whole (cold) or continued from the instruction's KV state, prefilled once and
/// rewound to after every question (warm). Returns (cold_s, warm_s, prefix_s) per question.
fn prefix_cache<B: Bench>(
    b: &B,
    prefix: usize,
    question: usize,
    questions: usize,
) -> (f64, f64, f64) {
    let pre = ids(prefix, 7);
    let qs: Vec<Vec<u32>> = (0..questions)
        .map(|k| ids(question, 100 + k as u32))
        .collect();
    let t = Instant::now();
    for q in &qs {
        let mut s = b.fresh();
        let mut all = pre.clone();
        all.extend(q);
        b.feed(&mut s, &all);
    }
    let cold = t.elapsed().as_secs_f64() / questions as f64;
    let mut s = b.fresh();
    let t = Instant::now();
    b.feed(&mut s, &pre);
    let once = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for q in &qs {
        b.truncate(&mut s, prefix);
        b.feed(&mut s, q);
    }
    (cold, t.elapsed().as_secs_f64() / questions as f64, once)
}

/// Retrieval latency of one search (top 3).
struct Retrieval {
    index: String,
    passages: u64,
    embed_ms: f64,
    search_ms: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A hash-embedder index of `n` synthetic passages, built once under `target/bench/`.
fn synthetic_index(n: usize) -> dgpo::Result<PathBuf> {
    let dir = bench_dir().join(format!("speed-index-{n}"));
    if dir.exists() && dgpo::index::inspect(&dir).is_ok_and(|m| m.is_complete()) {
        return Ok(dir);
    }
    const WORDS: &[&str] = &[
        "river", "city", "king", "war", "music", "film", "river", "church", "company", "born",
        "league", "album", "island", "county", "station", "school", "party", "species", "team",
        "novel", "bridge", "empire", "festival", "museum", "railway", "temple", "mountain",
        "village", "season", "award", "province", "language",
    ];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let corpus = bench_dir().join(format!("speed-corpus-{n}.jsonl"));
    let mut lines = String::new();
    for i in 0..n {
        let text: Vec<&str> = (0..40)
            .map(|_| WORDS[(next() % WORDS.len() as u64) as usize])
            .collect();
        lines.push_str(
            &serde_json::json!({"id": i.to_string(), "title": format!("Passage {i}"), "text": text.join(" ")})
                .to_string(),
        );
        lines.push('\n');
    }
    std::fs::create_dir_all(bench_dir()).map_err(|e| dgpo::Error::io(bench_dir(), e))?;
    std::fs::write(&corpus, lines).map_err(|e| dgpo::Error::io(&corpus, e))?;
    eprintln!(
        "building a hash-embedder index of {n} synthetic passages at {}",
        dir.display()
    );
    dgpo::index::build(&dgpo::index::BuildOptions::new(
        &corpus,
        &dir,
        dgpo::embed::parse_spec("hash")?,
    ))?;
    Ok(dir)
}

fn retrieval(quick: bool) -> Option<Retrieval> {
    let dir = match std::env::var_os("DGPO_BENCH_INDEX") {
        Some(d) => PathBuf::from(d),
        None => match synthetic_index(if quick { 300 } else { 10_000 }) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("retrieval skipped: {e}");
                return None;
            }
        },
    };
    let idx = match dgpo::index::Index::open(&dir) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("retrieval skipped: {e}");
            return None;
        }
    };
    let queries = [
        "Where is the headquarters of Apple?",
        "who wrote the novel about the island festival",
        "capital city of the northern province",
        "which team won the league season award",
        "river bridge railway station village",
        "When was the museum in the mountain temple built?",
        "language spoken in the empire",
        "film album music company",
    ];
    // Warm-up (pages of the index, embedder buffers).
    for q in &queries {
        idx.search(q, 3).ok()?;
    }
    let mut embed = Vec::new();
    let mut search = Vec::new();
    for _ in 0..if quick { 1 } else { 5 } {
        for q in &queries {
            let t = Instant::now();
            idx.embedder().embed(&[q], dgpo::embed::Role::Query).ok()?;
            embed.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            idx.search(q, 3).ok()?;
            search.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    Some(Retrieval {
        index: format!(
            "{} ({:?}, embedder {})",
            dir.display(),
            idx.meta().backend,
            idx.meta().embedder_id
        ),
        passages: idx.len(),
        embed_ms: median(embed),
        search_ms: median(search),
    })
}

/// Streaming-read bandwidth of this machine (GB/s) over a buffer far larger than the caches,
/// with one reader per core: the ceiling for decode, which reads every weight once per token.
fn memory_bandwidth_gbs() -> f64 {
    let threads = threads();
    let words = (1usize << 30) / 8; // 1 GiB
    let buf: Vec<u64> = (0..words as u64).collect();
    let chunk = words / threads;
    let mut best = 0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let sum: u64 = std::thread::scope(|s| {
            let hs: Vec<_> = buf
                .chunks(chunk)
                .map(|c| s.spawn(move || c.iter().fold(0u64, |a, &x| a.wrapping_add(x))))
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap())
                .fold(0u64, |a, x| a.wrapping_add(x))
        });
        std::hint::black_box(sum);
        best = best.max((words * 8) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// Everything measured on one backend of the first (Q4_K_M) file.
struct Agent {
    backend: &'static str,
    reuse_s: f64,
    reencode_s: f64,
    prefix_cold_s: f64,
    prefix_warm_s: f64,
    prefix_once_s: f64,
}

fn run_backend<B: Bench>(
    b: &B,
    backend: &'static str,
    m: &Model,
    first: bool,
    quick: bool,
    rows: &mut Vec<Row>,
    agents: &mut Vec<Agent>,
) {
    let (n_prompt, n_decode) = if quick { (16, 4) } else { (512, 64) };
    let (prefill, decode) = speed(b, &ids(n_prompt, 0), n_decode);
    rows.push(Row {
        quant: m.quant,
        backend,
        prefill_tok_s: prefill,
        decode_tok_s: decode,
        model_gb: std::fs::metadata(&m.path)
            .map(|x| x.len() as f64 / 1e9)
            .unwrap_or(0.0),
    });
    if first {
        let (reuse_s, reencode_s) = agent_question(b, agent_shape(quick));
        let (p, q, n) = prefix_shape(quick);
        let (prefix_cold_s, prefix_warm_s, prefix_once_s) = prefix_cache(b, p, q, n);
        agents.push(Agent {
            backend,
            reuse_s,
            reencode_s,
            prefix_cold_s,
            prefix_warm_s,
            prefix_once_s,
        });
    }
}

/// A question with 3 searches as the real Qwen tokenizer counts it: ~300 prompt tokens (chat
/// template, instruction, question), 3 information blocks of 3 passages (~250 tokens each),
/// ~40 generated tokens per turn and a short answer: ~1,150 prefilled, ~150 decoded.
fn agent_shape(quick: bool) -> Shape {
    if quick {
        Shape {
            prompt: 24,
            generated: 2,
            observation: 16,
            answer: 2,
        }
    } else {
        Shape {
            prompt: 300,
            generated: 40,
            observation: 250,
            answer: 30,
        }
    }
}

/// (instruction prefix, question, questions): the Search-R1 instruction in Qwen's chat
/// template is ~190 tokens, a question ~20.
fn prefix_shape(quick: bool) -> (usize, usize, usize) {
    if quick { (24, 4, 2) } else { (190, 20, 8) }
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let quick = std::env::var_os("DGPO_BENCH_QUICK").is_some();
    let models = models();
    let mut rows = Vec::new();
    let mut agents = Vec::new();
    for (i, m) in models.iter().enumerate() {
        {
            let dec: Decoder = GgufFile::open(&m.path)
                .unwrap()
                .load_decoder(&Device::Cpu, Some(4096))
                .unwrap();
            run_backend(
                &CandleBench(dec),
                "candle",
                m,
                i == 0,
                quick,
                &mut rows,
                &mut agents,
            );
        }
        #[cfg(feature = "llama")]
        if let Some(b) = load_llama(&m.path) {
            run_backend(&b, "llama.cpp", m, i == 0, quick, &mut rows, &mut agents);
        }
    }
    let bw = memory_bandwidth_gbs();
    let ret = retrieval(quick);
    let md = report(&models, &rows, &agents, bw, ret.as_ref(), quick);
    println!("\n{md}");

    let mut json = serde_json::json!({
        "cpu": cpu_name(),
        "threads": threads(),
        "quick": quick,
        "memory_bandwidth_gbs": bw,
        "models": models.iter().map(|m| serde_json::json!({"quant": m.quant, "path": m.path.display().to_string()})).collect::<Vec<_>>(),
        "rows": rows.iter().map(|r| serde_json::json!({
            "quant": r.quant, "backend": r.backend, "prefill_tok_s": r.prefill_tok_s,
            "decode_tok_s": r.decode_tok_s, "model_gb": r.model_gb,
            "decode_limit_tok_s": bw / r.model_gb,
        })).collect::<Vec<_>>(),
        "agent": agents.iter().map(|a| serde_json::json!({
            "backend": a.backend, "kv_reuse_s": a.reuse_s, "reencode_s": a.reencode_s,
            "prefix_cold_s": a.prefix_cold_s, "prefix_warm_s": a.prefix_warm_s,
            "prefix_once_s": a.prefix_once_s,
        })).collect::<Vec<_>>(),
    });
    if let Some(r) = &ret {
        json["retrieval"] = serde_json::json!({"index": r.index, "passages": r.passages, "embed_ms_p50": r.embed_ms, "search_ms_p50": r.search_ms});
    }
    let out = bench_dir();
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(
        out.join("speed.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    );
    let _ = std::fs::write(out.join("speed.md"), md);
}

/// The markdown report.
fn report(
    models: &[Model],
    rows: &[Row],
    agents: &[Agent],
    bw: f64,
    ret: Option<&Retrieval>,
    quick: bool,
) -> String {
    use std::fmt::Write;
    let (n_prompt, n_decode) = if quick { (16, 4) } else { (512, 64) };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Machine: {}, {} threads for both backends; memory bandwidth {bw:.1} GB/s (streaming read, same run).{}",
        cpu_name(),
        threads(),
        if quick {
            " QUICK MODE: a few tokens only, not a measurement."
        } else {
            ""
        }
    );
    for m in models {
        let _ = writeln!(s, "- {}: `{}`", m.quant, m.path.display());
    }
    let _ = writeln!(
        s,
        "\n| quant | backend | prefill tok/s ({n_prompt}-token prompt) | decode tok/s ({n_decode} tokens) | decode / bandwidth limit | vs llama.cpp (prefill, decode) |\n|---|---|---:|---:|---:|---:|"
    );
    for r in rows {
        let limit = bw / r.model_gb;
        let peer = rows
            .iter()
            .find(|p| p.quant == r.quant && p.backend == "llama.cpp");
        let vs = match peer {
            Some(p) if r.backend != "llama.cpp" => format!(
                "{:.2}x, {:.2}x",
                r.prefill_tok_s / p.prefill_tok_s,
                r.decode_tok_s / p.decode_tok_s
            ),
            _ => "-".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.1} | {:.0}% of {:.0} tok/s ({:.3} GB) | {vs} |",
            r.quant,
            r.backend,
            r.prefill_tok_s,
            r.decode_tok_s,
            100.0 * r.decode_tok_s / limit,
            limit,
            r.model_gb
        );
    }
    let q = agent_shape(quick);
    let (p, qn, n) = prefix_shape(quick);
    let _ = writeln!(
        s,
        "\nAgent question on {} (prompt {}, 3 x ({} generated + {}-token information block), answer {}; greedy):\n\n| backend | KV reuse (s) | re-encoding every turn (s) | speedup | prefix cache: cold prompt (ms) | warm prompt (ms) | saving per question |\n|---|---:|---:|---:|---:|---:|---:|",
        models.first().map(|m| m.quant).unwrap_or("-"),
        q.prompt,
        q.generated,
        q.observation,
        q.answer
    );
    for a in agents {
        let _ = writeln!(
            s,
            "| {} | {:.2} | {:.2} | {:.2}x | {:.0} | {:.0} | {:.0} ms ({:.0}%) |",
            a.backend,
            a.reuse_s,
            a.reencode_s,
            a.reencode_s / a.reuse_s,
            a.prefix_cold_s * 1e3,
            a.prefix_warm_s * 1e3,
            (a.prefix_cold_s - a.prefix_warm_s) * 1e3,
            100.0 * (a.prefix_cold_s - a.prefix_warm_s) / a.prefix_cold_s
        );
    }
    let _ = writeln!(
        s,
        "\nPrefix cache: a {p}-token instruction prefilled once ({}), then each of {n} {qn}-token questions continues from its KV state (rewound after every question) instead of prefilling instruction + question.",
        agents
            .iter()
            .map(|a| format!("{} {:.0} ms", a.backend, a.prefix_once_s * 1e3))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(r) = ret {
        let _ = writeln!(
            s,
            "\nRetrieval (top 3, median of {} searches): {:.2} ms per search, of which query embedding {:.2} ms; index {} with {} passages.",
            if quick { 8 } else { 40 },
            r.search_ms,
            r.embed_ms,
            r.index,
            r.passages
        );
        if let Some(best) = agents.iter().min_by(|a, b| a.reuse_s.total_cmp(&b.reuse_s)) {
            let total = best.reuse_s + 3.0 * r.search_ms / 1e3;
            let _ = writeln!(
                s,
                "\nBudget of one 3-search question ({}): model {:.2} s + 3 searches {:.1} ms = {:.2} s; retrieval is {:.2}% of it.",
                best.backend,
                best.reuse_s,
                3.0 * r.search_ms,
                total,
                100.0 * 3.0 * r.search_ms / 1e3 / total
            );
        }
    }
    s
}
