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
