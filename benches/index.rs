//! Disk-index bench: arroy vs hannoy vs exact brute force at 384-d and 768-d.
//!
//! Reports build time, p50/p99 query latency, recall@3/@10 against brute force, and the
//! latency ratio to brute force measured in the same run. Sizes: `DGPO_BENCH_N` vectors
//! (default 20000), `DGPO_BENCH_QUERIES` queries (default 200), `DGPO_BENCH_DIMS`
//! (default `384,768`). Data: unit vectors around 200 random centres (clustered like
//! sentence embeddings).
//!
//! Run: `cargo bench --bench index`.

use std::time::Instant;

use dgpo::corpus::Passage;
use dgpo::embed::{HashEmbedder, l2_normalize};
use dgpo::index::{self, Backend, Distance, Index, brute_force};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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

fn main() {
    let n = env("DGPO_BENCH_N", 20_000);
    let nq = env("DGPO_BENCH_QUERIES", 200);
    let dims: Vec<usize> = std::env::var("DGPO_BENCH_DIMS")
        .unwrap_or_else(|_| "384,768".into())
        .split(',')
        .filter_map(|d| d.trim().parse().ok())
        .collect();
    println!("disk index bench: {n} vectors, {nq} queries (clustered unit vectors)");
    println!(
        "{:>4} {:>14} {:>9} {:>9} {:>9} {:>8} {:>8} {:>10}",
        "dim", "method", "build s", "p50 ms", "p99 ms", "rec@3", "rec@10", "p50 ratio"
    );
    for &dim in &dims {
        let mut rng = StdRng::seed_from_u64(dim as u64);
        let centres: Vec<Vec<f32>> = (0..200).map(|_| unit(&mut rng, dim)).collect();
        let vectors = clustered(&mut rng, &centres, n);
        let queries = clustered(&mut rng, &centres, nq);
        let mut exact_ms = Vec::with_capacity(nq);
        let mut exact = Vec::with_capacity(nq);
        for q in &queries {
            let t = Instant::now();
            exact.push(brute_force(&vectors, q, 10));
            exact_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        exact_ms.sort_by(f64::total_cmp);
        let bf50 = pct(&exact_ms, 0.5);
        println!(
            "{dim:>4} {:>14} {:>9} {:>9.3} {:>9.3} {:>8.3} {:>8.3} {:>10.2}",
            "brute force",
            "-",
            bf50,
            pct(&exact_ms, 0.99),
            1.0,
            1.0,
            1.0
        );
        for (backend, distance) in [
            (Backend::Arroy, Distance::Cosine),
            (Backend::Hannoy, Distance::Cosine),
            (Backend::Hannoy, Distance::BinaryCosine),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let e = HashEmbedder::new(dim, None).unwrap();
            let rows = vectors.iter().enumerate().map(|(i, v)| {
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
            index::write_vectors(tmp.path(), &e, backend, distance, 42, rows).unwrap();
            let build_s = t.elapsed().as_secs_f64();
            let idx = Index::open(tmp.path()).unwrap();
            let (mut ms, mut r3, mut r10) = (Vec::with_capacity(nq), 0usize, 0usize);
            for (q, ex) in queries.iter().zip(&exact) {
                let t = Instant::now();
                let got = idx.search_items(q, 10).unwrap();
                ms.push(t.elapsed().as_secs_f64() * 1e3);
                let ex10: Vec<u32> = ex.iter().map(|h| h.0).collect();
                r10 += got.iter().filter(|h| ex10.contains(&h.0)).count();
                r3 += got
                    .iter()
                    .take(3)
                    .filter(|h| ex10[..3].contains(&h.0))
                    .count();
            }
            ms.sort_by(f64::total_cmp);
            let name = format!(
                "{}{}",
                format!("{backend:?}").to_lowercase(),
                if distance == Distance::BinaryCosine {
                    "+bq"
                } else {
                    ""
                }
            );
            println!(
                "{dim:>4} {name:>14} {build_s:>9.2} {:>9.3} {:>9.3} {:>8.3} {:>8.3} {:>10.2}",
                pct(&ms, 0.5),
                pct(&ms, 0.99),
                r3 as f64 / (3 * nq) as f64,
                r10 as f64 / (10 * nq) as f64,
                pct(&ms, 0.5) / bf50
            );
        }
    }
}
