//! Recall of the ANN backends against an exact scan on hash-embedded random-word passages, the
//! unstructured case (nearly orthogonal vectors), with one isolated passage that a query
//! matches exactly. Prints top-1 agreement with brute force per backend and search width.
//!
//! `cargo run --release -p dgpo-core --example ann_reach -- [N] [QUERIES]`

use dgpo_core::corpus::Passage;
use dgpo_core::embed::{DfCounter, HashEmbedder};
use dgpo_core::embed::{Embedder, Role};
use dgpo_core::index::{Backend, Distance, Index, SearchParams, brute_force, write_vectors};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

fn main() -> dgpo_core::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let n = args.first().copied().unwrap_or(4000);
    let nq = args.get(1).copied().unwrap_or(100);
    let mut rng = StdRng::seed_from_u64(7);
    let vocab: Vec<String> = (0..5000)
        .map(|_| {
            let len = rng.random_range(3..9);
            (0..len)
                .map(|_| rng.random_range(b'a'..=b'z') as char)
                .collect()
        })
        .collect();
    let mut texts: Vec<String> = (0..n)
        .map(|_| {
            (0..50)
                .map(|_| vocab[rng.random_range(0..vocab.len())].as_str())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    texts.push("\"Apple Inc.\"\nApple Inc. is headquartered in Cupertino, California.".into());
    let mut df = DfCounter::default();
    for t in &texts {
        df.add(t);
    }
    let emb = HashEmbedder::new(512, Some(df.idf()))?;
    let vecs: Vec<Vec<f32>> = texts
        .iter()
        .map(|t| emb.embed(&[t.as_str()], Role::Passage).unwrap().remove(0))
        .collect();
    let mut queries: Vec<String> = (0..nq)
        .map(|_| {
            let words: Vec<&str> = texts[rng.random_range(0..n)].split(' ').collect();
            (0..6)
                .map(|_| words[rng.random_range(0..words.len())])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    queries.push("Apple Inc. headquartered Cupertino".into());
    let qv: Vec<Vec<f32>> = queries
        .iter()
        .map(|q| emb.embed(&[q.as_str()], Role::Query).unwrap().remove(0))
        .collect();
    let exact: Vec<u32> = qv.iter().map(|q| brute_force(&vecs, q, 1)[0].0).collect();
    let tmp = tempfile::tempdir().unwrap();
    for backend in [Backend::Hannoy, Backend::Arroy] {
        let dir = tmp.path().join(format!("{backend:?}"));
        let rows = texts.iter().zip(&vecs).enumerate().map(|(i, (t, v))| {
            (
                Passage {
                    id: i.to_string(),
                    title: String::new(),
                    text: t.clone(),
                },
                v.clone(),
            )
        });
        let t0 = std::time::Instant::now();
        write_vectors(&dir, &emb, backend, Distance::Cosine, 42, rows)?;
        let build_s = t0.elapsed().as_secs_f64();
        let mut idx = Index::open(&dir)?;
        for ef in [200, n + 1, 4 * n] {
            idx.set_params(SearchParams {
                ef_search: ef,
                ..SearchParams::default()
            });
            let hits: Vec<u32> = qv
                .iter()
                .map(|q| {
                    idx.search_items(q, 1)
                        .map(|h| h.first().map_or(u32::MAX, |x| x.0))
                })
                .collect::<dgpo_core::Result<_>>()?;
            let agree = hits[..nq]
                .iter()
                .zip(&exact)
                .filter(|(a, b)| a == b)
                .count();
            println!(
                "{backend:?} n={n} build {build_s:.1}s ef={ef}: top-1 = exact {agree}/{nq}; apple found: {} (exact: {})",
                hits[nq] == n as u32,
                exact[nq] == n as u32
            );
            if backend == Backend::Arroy {
                break;
            }
        }
    }
    Ok(())
}
