//! Reachability of the ANN backends on unstructured text, against an exact scan: N passages of
//! 50 random words plus one real sentence, `hash`-embedded (512-d, nearly orthogonal vectors,
//! the hard case for a graph index). Prints, per backend and search width, for how many of 100
//! own-word queries the top hit is the exact scan's, and whether the sentence is found for four
//! of its words. The data are those of `tests/index_store.rs`'s reachability test.
//!
//! `cargo run --release --example ann_reach -- [N]` (default 4000)

#[path = "../tests/common/mod.rs"]
mod common;

use dgpo::corpus::Passage;
use dgpo::embed::{DfCounter, Embedder, HashEmbedder, Role};
use dgpo::index::{Backend, Distance, Index, SearchParams, brute_force, write_vectors};

fn main() -> dgpo::Result<()> {
    let n: usize = match std::env::args().nth(1) {
        Some(a) => a
            .parse()
            .map_err(|_| dgpo::Error::invalid(format!("N must be a count, not {a:?}")))?,
        None => 4000,
    };
    let (texts, queries) = common::random_word_corpus(n, 7);
    let nq = queries.len() - 1;
    let mut df = DfCounter::default();
    for t in &texts {
        df.add(t);
    }
    let emb = HashEmbedder::new(512, Some(df.idf()))?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let vecs = emb.embed(&refs, Role::Passage)?;
    let qrefs: Vec<&str> = queries.iter().map(String::as_str).collect();
    let qv = emb.embed(&qrefs, Role::Query)?;
    let exact: Vec<u32> = qv.iter().map(|q| brute_force(&vecs, q, 1)[0].0).collect();
    let tmp = tempfile::tempdir().map_err(|e| dgpo::Error::invalid(e.to_string()))?;
    for backend in [Backend::Hannoy, Backend::Arroy] {
        let dir = tmp.path().join(format!("{backend:?}"));
        let rows = texts.iter().zip(&vecs).enumerate().map(|(i, (t, v))| {
            let p = Passage {
                id: i.to_string(),
                title: String::new(),
                text: t.clone(),
            };
            (p, v.clone())
        });
        let t0 = std::time::Instant::now();
        write_vectors(&dir, &emb, backend, Distance::Cosine, 42, rows)?;
        let build_s = t0.elapsed().as_secs_f64();
        let mut idx = Index::open(&dir)?;
        // arroy's effort is its own `search_k`; the width only matters to hannoy.
        let widths: &[usize] = match backend {
            Backend::Hannoy => &[200, n + 1, 4 * n],
            Backend::Arroy => &[200],
        };
        for &ef in widths {
            idx.set_params(SearchParams {
                ef_search: ef,
                ..SearchParams::default()
            });
            let mut hits = Vec::with_capacity(qv.len());
            for q in &qv {
                hits.push(idx.search_items(q, 1)?.first().map_or(u32::MAX, |h| h.0));
            }
            let agree = hits[..nq]
                .iter()
                .zip(&exact)
                .filter(|(a, b)| a == b)
                .count();
            println!(
                "{backend:?} n={n} build {build_s:.1} s, width {ef}: top-1 = exact for {agree}/{nq}; sentence found: {} (exact scan: {})",
                hits[nq] == n as u32,
                exact[nq] == n as u32
            );
        }
    }
    Ok(())
}
