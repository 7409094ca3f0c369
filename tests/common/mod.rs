//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// `<repo>/tests/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The artifact cache (`$DGPO_ARTIFACTS` or `<repo>/.cache/artifacts`).
pub fn artifacts() -> PathBuf {
    std::env::var_os("DGPO_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/artifacts"))
}

/// An artifact path, or `None` after printing why the calling test skips.
pub fn artifact(name: &str) -> Option<PathBuf> {
    let p = artifacts().join(name);
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "skipping: artifact {} is absent; run scripts/fetch-artifacts.sh to enable this test",
            p.display()
        );
        None
    }
}

/// Reference outputs written by scripts/fixtures/make_fixtures.py with HF transformers.
pub struct Reference {
    pub input_ids: Vec<u32>,
    pub logits: Vec<Vec<f32>>,
    pub greedy_32: Vec<u32>,
}

pub fn reference(model_dir: &Path) -> Reference {
    let text = std::fs::read_to_string(model_dir.join("reference.json")).expect("reference.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("valid reference.json");
    let ids = |k: &str| -> Vec<u32> {
        v[k].as_array()
            .expect(k)
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let logits = v["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    Reference {
        input_ids: ids("input_ids"),
        logits,
        greedy_32: ids("greedy_32"),
    }
}

/// Largest absolute difference between two logit matrices.
pub fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len(), "row count");
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len(), "row length");
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

/// Greedy continuation of `prompt` for `n` tokens, ignoring EOS (as the references do).
pub fn greedy(session: &mut dyn dgpo::model::Session, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut logits = session.feed(prompt).expect("prefill");
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = dgpo::sampling::argmax(&logits);
        out.push(t);
        logits = session.feed(&[t]).expect("decode");
    }
    out
}

/// Greedy continuation like [`greedy`], also returning each step's margin between the best and
/// the second-best logit (how close the step was to a tie).
pub fn greedy_with_margins(
    session: &mut dyn dgpo::model::Session,
    prompt: &[u32],
    n: usize,
) -> (Vec<u32>, Vec<f32>) {
    let mut logits = session.feed(prompt).expect("prefill");
    let mut out = Vec::with_capacity(n);
    let mut margins = Vec::with_capacity(n);
    for _ in 0..n {
        let t = dgpo::sampling::argmax(&logits);
        let best = logits[t as usize];
        let second = logits
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != t as usize)
            .map(|(_, &x)| x)
            .fold(f32::NEG_INFINITY, f32::max);
        out.push(t);
        margins.push(best - second);
        logits = session.feed(&[t]).expect("decode");
    }
    (out, margins)
}

/// Asserts that `got` follows the greedy path `want` (whose per-step top-1/top-2 margins are
/// `margins`) until the first step that was a near-tie (margin < `tie`), where two correct
/// implementations with different rounding may legitimately part ways. A divergence at a step
/// with a clear margin fails, and so does a divergence within the first `min_agree` steps.
pub fn assert_greedy_agrees(
    what: &str,
    want: &[u32],
    margins: &[f32],
    got: &[u32],
    tie: f32,
    min_agree: usize,
) {
    assert_eq!(want.len(), got.len(), "{what}: lengths");
    if let Some(i) = want.iter().zip(got).position(|(a, b)| a != b) {
        assert!(
            margins[i] < tie && i >= min_agree,
            "{what}: greedy tokens differ at step {i} where the reference margin was {} \
             (tie threshold {tie}, at least {min_agree} steps must agree)\n  want: {want:?}\n   got: {got:?}",
            margins[i]
        );
        eprintln!(
            "{what}: paths part at step {i} on a near-tie (margin {}), {i} steps agreed",
            margins[i]
        );
    }
}

/// An unstructured corpus for ANN reachability checks: `n` passages of 50 words drawn from a
/// vocabulary of 5,000 random lowercase words, then one real sentence on a topic nothing else
/// shares (the last passage); and 100 queries of six words of a random passage, then four words
/// of the sentence (the last query). Seeded: the same `seed` gives the same texts.
pub fn random_word_corpus(n: usize, seed: u64) -> (Vec<String>, Vec<String>) {
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};
    let mut rng = StdRng::seed_from_u64(seed);
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
    let mut queries: Vec<String> = (0..100)
        .map(|_| {
            let words: Vec<&str> = texts[rng.random_range(0..n)].split(' ').collect();
            (0..6)
                .map(|_| words[rng.random_range(0..words.len())])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    queries.push("Apple Inc. headquartered Cupertino".into());
    (texts, queries)
}
