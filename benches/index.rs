//! Disk-index bench: arroy vs hannoy vs exact search, with faiss-cpu's Flat index as the peer.
//!
//! For each vector set it reports build time, index size on disk, p50/p99 query latency (one
//! query at a time, one thread), recall@3/@10 against brute force, the resident memory the
//! opened index adds while querying (LMDB pages mapped in: `RssFile`, plus heap: `RssAnon`),
//! and the latency ratio to faiss `IndexFlatIP` measured in the same run
//! (`scripts/bench/faiss_flat.py`, skipped with a note when faiss is not installed).
//!
//! Vector sets:
//! - clustered random unit vectors (200 centres, like sentence embeddings): `DGPO_BENCH_N`
//!   vectors (default 20000), `DGPO_BENCH_QUERIES` queries (default 200), dimensions
//!   `DGPO_BENCH_DIMS` (default `384,768`);
//! - real embeddings: `DGPO_BENCH_INDEX=<dir>` reads every vector of an index built by
//!   `edge index build` (e.g. MiniLM over the Wikipedia summaries) and holds out
//!   `DGPO_BENCH_QUERIES` of them as queries.
//!
//! `DGPO_BENCH_BACKENDS` picks methods (default `arroy,hannoy,hannoy+bq`); `DGPO_BENCH_FAISS=0`
//! skips the peer; `DGPO_BENCH_MD=<file>` also writes the table as markdown.
//! `DGPO_BENCH_EF=200,800,3200` (hannoy's `ef_search`) and `DGPO_BENCH_ARROY_OVERSAMPLING=15,60`
//! (arroy's `search_k` per `k × trees`) sweep the search effort over one build: a row each.
//!
//! Run: `cargo bench --bench index`, e.g. `DGPO_BENCH_N=100000 cargo bench --bench index`.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use dgpo::corpus::Passage;
use dgpo::embed::{HashEmbedder, l2_normalize};
use dgpo::index::{self, Backend, Distance, Index, brute_force};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A comma-separated list of numbers from the environment, or `[default]`.
fn env_list(name: &str, default: usize) -> Vec<usize> {
    let list: Vec<usize> = std::env::var(name)
        .unwrap_or_default()
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    if list.is_empty() { vec![default] } else { list }
}

fn unit(rng: &mut StdRng, dim: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dim).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    l2_normalize(&mut v);
    v
}

fn clustered(rng: &mut StdRng, centres: &[Vec<f32>], n: usize) -> Vec<Vec<f32>> {
    (0..n)
        .map(|_| {
            let c = &centres[rng.random_range(0..centres.len())];
            let noise = unit(rng, c.len());
            let mut v: Vec<f32> = c.iter().zip(&noise).map(|(a, b)| a + 0.8 * b).collect();
            l2_normalize(&mut v);
            v
        })
        .collect()
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// `RssFile` and `RssAnon` of this process, in MiB (Linux; NaN elsewhere).
fn rss() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("RssFile:"), field("RssAnon:"))
}

/// Bytes allocated on disk under `dir` (LMDB files may be sparse, so blocks, not lengths).
fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

fn write_f32(path: &Path, rows: &[Vec<f32>]) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for r in rows {
        for x in r {
            f.write_all(&x.to_le_bytes()).unwrap();
        }
    }
    f.flush().unwrap();
}

/// One table row.
struct Row {
    set: String,
    method: String,
    build_s: Option<f64>,
    disk_mib: Option<f64>,
    p50: f64,
    p99: f64,
    r3: f64,
    r10: f64,
    rss: String,
    ratio: Option<f64>,
}

fn recall(got: &[u32], exact: &[u32], k: usize) -> usize {
    got.iter()
        .take(k)
        .filter(|i| exact[..k.min(exact.len())].contains(i))
        .count()
}

/// Run faiss `IndexFlatIP` on the same vectors; `None` (with a note) when it cannot run.
fn faiss_peer(
    vectors: &[Vec<f32>],
    queries: &[Vec<f32>],
    exact: &[Vec<u32>],
    set: &str,
) -> Option<Row> {
    if std::env::var("DGPO_BENCH_FAISS").is_ok_and(|v| v == "0") {
        return None;
    }
    let dim = vectors[0].len();
    let tmp = tempfile::tempdir().unwrap();
    let (vp, qp) = (tmp.path().join("v.f32"), tmp.path().join("q.f32"));
    write_f32(&vp, vectors);
    write_f32(&qp, queries);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench/faiss_flat.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&vp)
        .arg(&qp)
        .args([dim.to_string(), "10".into(), "1".into()])
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            println!(
                "  (faiss peer failed: {})",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return None;
        }
        Err(e) => {
            println!("  (faiss peer not run: python3: {e})");
            return None;
        }
    };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    if let Some(e) = v.get("error") {
        println!("  (faiss peer skipped: {e})");
        return None;
    }
    let ids: Vec<Vec<u32>> = serde_json::from_value(v["ids"].clone()).ok()?;
    let (mut r3, mut r10) = (0, 0);
    for (g, e) in ids.iter().zip(exact) {
        r3 += recall(g, e, 3);
        r10 += recall(g, e, 10);
    }
    let nq = queries.len();
    Some(Row {
        set: set.into(),
        method: format!("faiss Flat {}", v["faiss"].as_str().unwrap_or("")),
        build_s: v["build_s"].as_f64(),
        disk_mib: None,
        p50: v["p50_ms"].as_f64()?,
        p99: v["p99_ms"].as_f64()?,
        r3: r3 as f64 / (3 * nq) as f64,
        r10: r10 as f64 / (10 * nq) as f64,
        rss: format!("{:.0} (process)", v["rss_mb"].as_f64().unwrap_or(f64::NAN)),
        ratio: Some(1.0),
    })
}

fn bench_set(
    set: &str,
    vectors: &[Vec<f32>],
    queries: &[Vec<f32>],
    methods: &[String],
) -> Vec<Row> {
    let dim = vectors[0].len();
    let nq = queries.len();
    println!("{set}: {} vectors, {nq} queries, {dim}-d", vectors.len());
    let mut rows = Vec::new();
    let mut exact_ms = Vec::with_capacity(nq);
    let mut exact: Vec<Vec<u32>> = Vec::with_capacity(nq);
    for q in queries {
        let t = Instant::now();
        exact.push(brute_force(vectors, q, 10).iter().map(|h| h.0).collect());
        exact_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    exact_ms.sort_by(f64::total_cmp);
    let faiss = faiss_peer(vectors, queries, &exact, set);
    let peer50 = faiss.as_ref().map(|r| r.p50);
    rows.push(Row {
        set: set.into(),
        method: "brute force (ours)".into(),
        build_s: None,
        disk_mib: None,
        p50: pct(&exact_ms, 0.5),
        p99: pct(&exact_ms, 0.99),
        r3: 1.0,
        r10: 1.0,
        rss: "-".into(),
        ratio: peer50.map(|p| pct(&exact_ms, 0.5) / p),
    });
    rows.extend(faiss);
    for m in methods {
        let (backend, distance) = match m.as_str() {
            "arroy" => (Backend::Arroy, Distance::Cosine),
            "hannoy" => (Backend::Hannoy, Distance::Cosine),
            "hannoy+bq" => (Backend::Hannoy, Distance::BinaryCosine),
            "arroy+bq" => (Backend::Arroy, Distance::BinaryCosine),
            other => panic!("unknown method {other:?} in DGPO_BENCH_BACKENDS"),
        };
        let tmp = tempfile::tempdir().unwrap();
        let e = HashEmbedder::new(dim, None).unwrap();
        let rows_in = vectors.iter().enumerate().map(|(i, v)| {
            (
                Passage {
                    id: i.to_string(),
                    title: String::new(),
                    text: String::new(),
                },
                v.clone(),
            )
        });
        let t = Instant::now();
        index::write_vectors(tmp.path(), &e, backend, distance, 42, rows_in).unwrap();
        let build_s = t.elapsed().as_secs_f64();
        let disk = disk_bytes(tmp.path()) as f64 / (1 << 20) as f64;
        let (file0, anon0) = rss();
        let mut idx = Index::open(tmp.path()).unwrap();
        // One row per search effort: the build is the expensive part, so a sweep of the
        // search width reuses it. RSS is measured from the open, so later rows include the
        // pages earlier ones mapped in.
        let efforts = match backend {
            Backend::Hannoy => env_list("DGPO_BENCH_EF", idx.params().ef_search),
            Backend::Arroy => env_list(
                "DGPO_BENCH_ARROY_OVERSAMPLING",
                idx.params().arroy_oversampling,
            ),
        };
        let sweep = efforts.len() > 1;
        for (e_i, &effort) in efforts.iter().enumerate() {
            let mut params = idx.params();
            match backend {
                Backend::Hannoy => params.ef_search = effort,
                Backend::Arroy => params.arroy_oversampling = effort,
            }
            idx.set_params(params);
            let (mut ms, mut r3, mut r10) = (Vec::with_capacity(nq), 0usize, 0usize);
            for (q, ex) in queries.iter().zip(&exact) {
                let t = Instant::now();
                let got = idx.search_items(q, 10).unwrap();
                ms.push(t.elapsed().as_secs_f64() * 1e3);
                let ids: Vec<u32> = got.iter().map(|h| h.0).collect();
                r3 += recall(&ids, ex, 3);
                r10 += recall(&ids, ex, 10);
            }
            let (file1, anon1) = rss();
            ms.sort_by(f64::total_cmp);
            let method = match (sweep, backend) {
                (false, _) => m.clone(),
                (true, Backend::Hannoy) => format!("{m} (ef_search {effort})"),
                (true, Backend::Arroy) => format!("{m} (oversampling {effort})"),
            };
            let row = Row {
                set: set.into(),
                method,
                // Build time and size belong to the index, shown once per build.
                build_s: (e_i == 0).then_some(build_s),
                disk_mib: (e_i == 0).then_some(disk),
                p50: pct(&ms, 0.5),
                p99: pct(&ms, 0.99),
                r3: r3 as f64 / (3 * nq) as f64,
                r10: r10 as f64 / (10 * nq) as f64,
                rss: format!(
                    "+{:.0} file, +{:.0} heap",
                    (file1 - file0).max(0.0),
                    (anon1 - anon0).max(0.0)
                ),
                ratio: peer50.map(|p| pct(&ms, 0.5) / p),
            };
            print_row(&row);
            rows.push(row);
        }
        drop(idx);
    }
    rows
}

fn opt(x: Option<f64>, prec: usize) -> String {
    x.map_or("-".into(), |v| format!("{v:.prec$}"))
}

fn print_row(r: &Row) {
    println!(
        "  {:<22} build {:>8} s  disk {:>8} MiB  p50 {:>8.3} ms  p99 {:>8.3} ms  rec@3 {:.3}  rec@10 {:.3}  rss {}  p50/faiss {}",
        r.method,
        opt(r.build_s, 1),
        opt(r.disk_mib, 1),
        r.p50,
        r.p99,
        r.r3,
        r.r10,
        r.rss,
        opt(r.ratio, 2)
    );
}

fn main() {
    let nq = env("DGPO_BENCH_QUERIES", 200);
    let methods: Vec<String> = std::env::var("DGPO_BENCH_BACKENDS")
        .unwrap_or_else(|_| "arroy,hannoy,hannoy+bq".into())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let mut rows = Vec::new();
    if let Ok(dir) = std::env::var("DGPO_BENCH_INDEX") {
        let idx = Index::open(Path::new(&dir)).unwrap();
        let mut all: Vec<Vec<f32>> = (0..idx.len() as u32)
            .filter_map(|i| idx.vector(i).unwrap())
            .collect();
        let label = format!("{} real vectors ({})", idx.len(), idx.embedder().id());
        drop(idx);
        all.shuffle(&mut StdRng::seed_from_u64(7));
        let queries = all.split_off(all.len() - nq.min(all.len() / 2));
        rows.extend(bench_set(&label, &all, &queries, &methods));
    } else {
        let n = env("DGPO_BENCH_N", 20_000);
        let dims: Vec<usize> = std::env::var("DGPO_BENCH_DIMS")
            .unwrap_or_else(|_| "384,768".into())
            .split(',')
            .filter_map(|d| d.trim().parse().ok())
            .collect();
        for &dim in &dims {
            let mut rng = StdRng::seed_from_u64(dim as u64);
            let centres: Vec<Vec<f32>> = (0..200).map(|_| unit(&mut rng, dim)).collect();
            let vectors = clustered(&mut rng, &centres, n);
            let queries = clustered(&mut rng, &centres, nq);
            rows.extend(bench_set(
                &format!("{n} clustered {dim}-d"),
                &vectors,
                &queries,
                &methods,
            ));
        }
    }
    let mut md = String::from(
        "| vectors | method | build s | disk MiB | p50 ms | p99 ms | recall@3 | recall@10 | RSS while querying (MiB) | p50 / faiss Flat |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        md += &format!(
            "| {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} |\n",
            r.set,
            r.method,
            opt(r.build_s, 1),
            opt(r.disk_mib, 1),
            r.p50,
            r.p99,
            r.r3,
            r.r10,
            r.rss,
            opt(r.ratio, 2)
        );
    }
    println!("\n{md}");
    if let Ok(p) = std::env::var("DGPO_BENCH_MD") {
        std::fs::write(&p, &md).unwrap();
    }
}
