//! Criterion micro-benchmarks of the agent loop's own work: what a question costs besides the
//! model and the index. Per generated token the loop samples from a 151,936-wide logit vector
//! (Qwen's vocabulary); per turn it looks for a finished action, parses it, formats the
//! retrieved passages as an `<information>` block and, at the end, scores the answer.
//!
//! `cargo bench --bench micro`. Against the speed harness (`benches/speed.rs`: ~18 ms per
//! decoded token on llama.cpp, ~8 s per 3-search question) these show the loop's share: e.g.
//! 150 samples + 4 turns of parsing and formatting is the overhead of one question.

use criterion::{Criterion, criterion_group, criterion_main};
use dgpo::corpus::Passage;
use dgpo::embed::{Embedder, HashEmbedder, Role};
use dgpo::protocol::{cut_after_action, format_information, parse_action};
use dgpo::retrieve::{MemoryRetriever, Retriever};
use dgpo::sampling::{Sampler, SamplingParams, argmax};
use std::hint::black_box;

const VOCAB: usize = 151_936;

fn logits() -> Vec<f32> {
    // A fixed pseudo-random vector, peaked like a trained model's (a few large logits).
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..VOCAB)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = (x >> 11) as f32 / (1u64 << 53) as f32;
            if i % 9973 == 0 {
                12.0 + u
            } else {
                4.0 * u - 2.0
            }
        })
        .collect()
}

fn passages(n: usize) -> Vec<Passage> {
    (0..n)
        .map(|i| Passage {
            id: i.to_string(),
            title: format!("\"Entity {i}\""),
            text: format!(
                "Entity {i} is a city in the province of Region {}. It lies on the river {} and \
                 was founded in {} by settlers from the coast.",
                i % 37,
                i % 101,
                1200 + i % 700
            ),
        })
        .collect()
}

fn sampling(c: &mut Criterion) {
    let l = logits();
    c.bench_function("argmax over 151,936 logits", |b| {
        b.iter(|| argmax(black_box(&l)))
    });
    let mut s = Sampler::new(SamplingParams {
        temperature: 1.0,
        top_p: 1.0,
        seed: 0,
    });
    c.bench_function("sample t=1 over 151,936 logits", |b| {
        b.iter(|| s.sample(black_box(&l)))
    });
    let mut s = Sampler::new(SamplingParams {
        temperature: 0.7,
        top_p: 0.9,
        seed: 0,
    });
    c.bench_function("sample t=0.7 top-p 0.9 over 151,936 logits", |b| {
        b.iter(|| s.sample(black_box(&l)))
    });
}

fn protocol(c: &mut Criterion) {
    let turn = "<think> The question asks where the headquarters of the company is; I should \
                look it up. </think>\n<search> Apple Inc. headquarters location </search>";
    c.bench_function("find and parse one action", |b| {
        b.iter(|| {
            let end = cut_after_action(black_box(turn)).unwrap_or(turn.len());
            parse_action(&turn[..end])
        })
    });
    let docs = passages(3);
    c.bench_function("format a 3-passage information block", |b| {
        b.iter(|| format_information(black_box(&docs)))
    });
    let golden = vec!["Cupertino, California".to_string(), "Cupertino".to_string()];
    c.bench_function("score EM and F1 of an answer", |b| {
        b.iter(|| {
            (
                dgpo::eval::score::exact_match(black_box("cupertino"), &golden),
                dgpo::eval::score::f1(black_box("in Cupertino, CA"), &golden),
            )
        })
    });
}

fn retrieval(c: &mut Criterion) {
    let e = HashEmbedder::new(512, None).unwrap();
    c.bench_function("hash-embed one query (512-d)", |b| {
        b.iter(|| {
            e.embed(
                &[black_box("where was the river city founded")],
                Role::Query,
            )
        })
    });
    let bm25 = MemoryRetriever::new(passages(10_000));
    c.bench_function("BM25 top-3 over 10,000 passages", |b| {
        b.iter(|| bm25.search(black_box("city on the river 42 founded by settlers"), 3))
    });
}

criterion_group!(benches, sampling, protocol, retrieval);
criterion_main!(benches);
