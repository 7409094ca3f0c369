//! Decode and prefill speed of the model backends on a Qwen2.5-0.5B-shaped GGUF.
//!
//! Uses the real Qwen2.5 Q4_K_M file when `scripts/fetch-artifacts.sh` has fetched it (or the
//! file named by `DGPO_BENCH_MODEL`), otherwise writes a random-weight file of the exact shape
//! (speed does not depend on weight values). `DGPO_BENCH_QUICK=1` runs a few tokens only (CI).
//! Prints a markdown table and writes `target/bench/speed.json`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use dgpo::candle_core::quantized::gguf_file::{self, Value};
use dgpo::candle_core::quantized::{GgmlDType, QTensor};
use dgpo::candle_core::{Device, Tensor};
use dgpo::model::gguf::GgufFile;
use dgpo::model::{Decoder, KvCache};

struct Row {
    backend: &'static str,
    prefill_tok_s: f64,
    decode_tok_s: f64,
}

fn model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("DGPO_BENCH_MODEL") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let art = std::env::var_os("DGPO_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".cache/artifacts"));
    let real = art.join("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    if real.exists() {
        return real;
    }
    let synth = root.join("target/bench/random-qwen2.5-0.5b-q4_k.gguf");
    if !synth.exists() {
        eprintln!(
            "writing a random-weight Qwen2.5-0.5B-shaped GGUF to {}",
            synth.display()
        );
        write_random_qwen(&synth, 24).expect("write synthetic model");
    }
    synth
}

/// A Qwen2.5-0.5B-shaped file with random Q4_K weights (no tokenizer: candle only).
fn write_random_qwen(path: &Path, layers: usize) -> dgpo::Result<()> {
    let dev = Device::Cpu;
    let (v, h, f, nh, nkv) = (151_936usize, 896usize, 4864usize, 14usize, 2usize);
    let hd = h / nh;
    let q = |shape: (usize, usize), dt: GgmlDType| -> dgpo::Result<QTensor> {
        let t = Tensor::randn(0f32, 0.02, shape, &dev)?;
        // Rows of 896 are not a multiple of the 256-wide k-quant blocks: llama.cpp's Q4_K_M
        // falls back to Q5_0 / Q8_0 for those tensors, as the real file does.
        let dt = match dt {
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
    let md: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("qwen2".into())),
        ("qwen2.block_count", Value::U32(layers as u32)),
        ("qwen2.context_length", Value::U32(32768)),
        ("qwen2.embedding_length", Value::U32(h as u32)),
        ("qwen2.feed_forward_length", Value::U32(f as u32)),
        ("qwen2.attention.head_count", Value::U32(nh as u32)),
        ("qwen2.attention.head_count_kv", Value::U32(nkv as u32)),
        ("qwen2.rope.freq_base", Value::F32(1e6)),
        ("qwen2.attention.layer_norm_rms_epsilon", Value::F32(1e-6)),
    ];
    std::fs::create_dir_all(path.parent().unwrap()).map_err(|e| dgpo::Error::io(path, e))?;
    let tmp = path.with_extension("tmp");
    let mut w =
        std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| dgpo::Error::io(&tmp, e))?);
    gguf_file::write(
        &mut w,
        &md.iter().map(|(k, v)| (*k, v)).collect::<Vec<_>>(),
        &ts.iter().map(|(k, v)| (k.as_str(), v)).collect::<Vec<_>>(),
    )?;
    drop(w);
    std::fs::rename(&tmp, path).map_err(|e| dgpo::Error::io(path, e))
}

fn bench_candle(path: &Path, prompt: &[u32], decode: usize) -> Row {
    let dev = Device::Cpu;
    let dec: Decoder = GgufFile::open(path)
        .unwrap()
        .load_decoder(&dev, Some(4096))
        .unwrap();
    let ids = |t: &[u32]| Tensor::new(t, &dev).unwrap().unsqueeze(0).unwrap();
    // Warm-up (allocations, thread pool).
    let mut c = KvCache::new();
    dec.forward_last(&ids(&prompt[..8]), Some(&mut c)).unwrap();
    let mut cache = KvCache::new();
    let t = Instant::now();
    let logits = dec.forward_last(&ids(prompt), Some(&mut cache)).unwrap();
    let prefill = prompt.len() as f64 / t.elapsed().as_secs_f64();
    let mut next = dgpo::sampling::argmax(&logits.squeeze(0).unwrap().to_vec1::<f32>().unwrap());
    let t = Instant::now();
    for _ in 0..decode {
        let l = dec.forward_last(&ids(&[next]), Some(&mut cache)).unwrap();
        next = dgpo::sampling::argmax(&l.squeeze(0).unwrap().to_vec1::<f32>().unwrap());
    }
    let dec_s = decode as f64 / t.elapsed().as_secs_f64();
    Row {
        backend: "candle",
        prefill_tok_s: prefill,
        decode_tok_s: dec_s,
    }
}

#[cfg(feature = "llama")]
fn bench_llama(path: &Path, prompt: &[u32], decode: usize) -> Option<Row> {
    use dgpo::model::{LanguageModel, LoadOptions};
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let m = match dgpo::llama::LlamaModel::load(
        path,
        &LoadOptions {
            threads: Some(threads),
            max_context: Some(4096),
            ..Default::default()
        },
    ) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("llama.cpp skipped: {e}");
            return None;
        }
    };
    let mut w = m.new_session().unwrap();
    w.feed(&prompt[..8]).unwrap();
    let mut s = m.new_session().unwrap();
    let t = Instant::now();
    let logits = s.feed(prompt).unwrap();
    let prefill = prompt.len() as f64 / t.elapsed().as_secs_f64();
    let mut next = dgpo::sampling::argmax(&logits);
    let t = Instant::now();
    for _ in 0..decode {
        next = dgpo::sampling::argmax(&s.feed(&[next]).unwrap());
    }
    Some(Row {
        backend: "llama.cpp",
        prefill_tok_s: prefill,
        decode_tok_s: decode as f64 / t.elapsed().as_secs_f64(),
    })
}

/// Streaming-read bandwidth of this machine (GB/s) over a buffer far larger than the caches,
/// with one reader per core: the ceiling for decode, which reads every weight once per token.
fn memory_bandwidth_gbs() -> f64 {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
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

/// One agent question with 3 searches, replayed on the model: prompt, then 3 x (generated
/// turn + information block), then the answer. With KV reuse only new tokens are prefilled; the
/// Python reference re-encodes the whole text every turn. Returns (reuse_s, reencode_s).
fn agent_question(
    dec: &Decoder,
    prompt: usize,
    generated: usize,
    obs: usize,
    answer: usize,
) -> (f64, f64) {
    let dev = Device::Cpu;
    let ids = |n: usize, salt: u32| -> Tensor {
        let v: Vec<u32> = (0..n as u32)
            .map(|i| 1000 + (i * 7919 + salt * 104_729) % 100_000)
            .collect();
        Tensor::new(v.as_slice(), &dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap()
    };
    let decode = |cache: &mut KvCache, n: usize| {
        for i in 0..n {
            dec.forward_last(&ids(1, i as u32), Some(cache)).unwrap();
        }
    };
    let segments: Vec<(usize, usize)> = vec![
        (prompt, generated),
        (obs, generated),
        (obs, generated),
        (obs, answer),
    ];
    // KV reuse.
    let t = Instant::now();
    let mut cache = KvCache::new();
    for (k, &(pre, g)) in segments.iter().enumerate() {
        dec.forward_last(&ids(pre, k as u32), Some(&mut cache))
            .unwrap();
        decode(&mut cache, g);
    }
    let reuse = t.elapsed().as_secs_f64();
    // Re-encode the whole context every turn.
    let t = Instant::now();
    let mut context = 0;
    for (k, &(pre, g)) in segments.iter().enumerate() {
        context += pre;
        let mut cache = KvCache::new();
        dec.forward_last(&ids(context, k as u32), Some(&mut cache))
            .unwrap();
        decode(&mut cache, g);
        context += g;
    }
    (reuse, t.elapsed().as_secs_f64())
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let quick = std::env::var_os("DGPO_BENCH_QUICK").is_some();
    let (n_prompt, n_decode) = if quick { (16, 4) } else { (512, 64) };
    let path = model_path();
    // Ids spread over the ordinary-token range (no special tokens).
    let prompt: Vec<u32> = (0..n_prompt as u32)
        .map(|i| 1000 + (i * 7919) % 100_000)
        .collect();
    #[allow(unused_mut)]
    let mut rows = vec![bench_candle(&path, &prompt, n_decode)];
    #[cfg(feature = "llama")]
    rows.extend(bench_llama(&path, &prompt, n_decode));
    let bw = memory_bandwidth_gbs();
    let model_gb = std::fs::metadata(&path)
        .map(|m| m.len() as f64 / 1e9)
        .unwrap_or(0.0);
    let limit = bw / model_gb;
    let dec: Decoder = GgufFile::open(&path)
        .unwrap()
        .load_decoder(&Device::Cpu, Some(4096))
        .unwrap();
    let (p, g, o, a) = if quick {
        (24, 2, 16, 2)
    } else {
        (300, 40, 250, 30)
    };
    let (reuse, reencode) = agent_question(&dec, p, g, o, a);
    println!(
        "\nmodel: {}  prompt {} tokens, decode {} tokens, threads {}",
        path.display(),
        n_prompt,
        n_decode,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!("| backend | prefill tok/s | decode tok/s |\n| --- | ---: | ---: |");
    for r in &rows {
        println!(
            "| {} | {:.1} | {:.1} ({:.0}% of the bandwidth limit) |",
            r.backend,
            r.prefill_tok_s,
            r.decode_tok_s,
            100.0 * r.decode_tok_s / limit
        );
    }
    println!(
        "\nmemory bandwidth {bw:.1} GB/s, weights {model_gb:.3} GB -> decode limit {limit:.1} tok/s"
    );
    println!(
        "agent question (prompt {p}, 3 x ({g} generated + {o} observation), answer {a}) on candle: KV reuse {reuse:.2} s, re-encoding every turn {reencode:.2} s ({:.2}x)",
        reencode / reuse
    );
    let mut json: Vec<_> = rows
        .iter()
        .map(|r| serde_json::json!({"backend": r.backend, "prefill_tok_s": r.prefill_tok_s, "decode_tok_s": r.decode_tok_s, "prompt_tokens": n_prompt, "decode_tokens": n_decode, "model": path.display().to_string()}))
        .collect();
    json.push(serde_json::json!({"memory_bandwidth_gbs": bw, "model_gb": model_gb, "decode_limit_tok_s": limit, "agent_kv_reuse_s": reuse, "agent_reencode_s": reencode}));
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(
        out.join("speed.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    );
}
