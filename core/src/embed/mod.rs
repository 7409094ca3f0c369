//! Sentence embedders: text in, L2-normalised vectors out, behind one batched trait.
//!
//! Two kinds:
//! - [`BertEmbedder`]: BERT-family sentence encoders (MiniLM, e5, bge) run with candle from a
//!   local Hugging Face folder (config.json, tokenizer.json, model.safetensors);
//! - [`HashEmbedder`]: a weightless default (hashed word and word-bigram features, idf-weighted
//!   when the corpus supplies document frequencies) so that everything runs with no download.
//!
//! An embedder has an [`Embedder::id`] that changes whenever its vectors would change (weights,
//! pooling, prefixes, dimension); the disk index records it and refuses queries embedded by a
//! different one.

mod bert;
mod hash;

pub use bert::{BertEmbedder, BertOptions, Pooling};
pub use hash::{DfCounter, HashEmbedder, IDF_BUCKETS};

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::Result;

/// What a text is, for embedders that treat queries and passages differently (e5's
/// `query: ` / `passage: ` prefixes, bge's query instruction, different length caps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A search query.
    Query,
    /// A corpus passage (its wiki-18 `contents`: title line, newline, text).
    Passage,
}

/// A batched sentence encoder producing L2-normalised vectors.
pub trait Embedder: Send + Sync {
    /// Identity of the vectors this embedder produces: two embedders with the same id give the
    /// same vectors for the same text.
    fn id(&self) -> String;
    /// Output dimension.
    fn dim(&self) -> usize;
    /// Embed `texts`, one vector of [`Embedder::dim`] floats (unit length, or zero for a text
    /// with no features) per text, in order.
    fn embed(&self, texts: &[&str], role: Role) -> Result<Vec<Vec<f32>>>;
    /// How to re-create this embedder later (recorded in the index metadata).
    fn spec(&self) -> EmbedderSpec;
}

/// A serialisable recipe for an embedder: what the index records so that `edge index search`
/// can embed queries without being told the embedder again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EmbedderSpec {
    /// The weightless hashed-features embedder.
    Hash {
        /// Output dimension.
        dim: usize,
    },
    /// A BERT-family encoder in a local HF folder.
    Bert {
        /// The model folder (absolute when recorded by a build).
        dir: std::path::PathBuf,
        /// Pooling and prefixes.
        options: BertOptions,
    },
}

/// Parse a command-line embedder argument: `hash`, `hash:<dim>`, or a model folder.
pub fn parse_spec(arg: &str) -> Result<EmbedderSpec> {
    if arg == "hash" {
        return Ok(EmbedderSpec::Hash {
            dim: hash::DEFAULT_DIM,
        });
    }
    if let Some(d) = arg.strip_prefix("hash:") {
        let dim: usize = d
            .parse()
            .map_err(|_| crate::Error::invalid(format!("embedder {arg:?}: bad dimension {d:?}")))?;
        if dim == 0 {
            return Err(crate::Error::invalid("hash embedder dimension must be > 0"));
        }
        return Ok(EmbedderSpec::Hash { dim });
    }
    let dir = Path::new(arg);
    if !dir.is_dir() {
        return Err(crate::Error::invalid(format!(
            "embedder {arg:?} is neither `hash`, `hash:<dim>` nor a model folder"
        )));
    }
    let dir = dir.canonicalize().map_err(|e| crate::Error::io(dir, e))?;
    let options = BertOptions::detect(&dir);
    Ok(EmbedderSpec::Bert { dir, options })
}

/// Build the embedder a spec describes. `idf` gives the hash embedder its corpus weights
/// (ignored by BERT).
pub fn open(spec: &EmbedderSpec, idf: Option<Vec<f32>>) -> Result<Arc<dyn Embedder>> {
    Ok(match spec {
        EmbedderSpec::Hash { dim } => Arc::new(HashEmbedder::new(*dim, idf)?),
        EmbedderSpec::Bert { dir, options } => Arc::new(BertEmbedder::load(dir, options.clone())?),
    })
}

/// Scale `v` to unit length (left as is when it is all zeros).
pub fn l2_normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// FNV-1a, 64-bit: a small, stable, resumable checksum (its whole state is one `u64`) used for
/// corpus checksums and weight fingerprints. Not cryptographic: it detects accidents, not
/// adversaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fnv64(pub u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    /// Feed bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }

    /// Hash of `bytes` from the initial state.
    pub fn hash(bytes: &[u8]) -> u64 {
        let mut h = Fnv64::default();
        h.update(bytes);
        h.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_published_vectors() {
        // Reference values of FNV-1a 64 from the algorithm's authors' test suite.
        assert_eq!(Fnv64::hash(b""), 0xcbf29ce484222325);
        assert_eq!(Fnv64::hash(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(Fnv64::hash(b"foobar"), 0x85944171f73967e8);
        let mut h = Fnv64::default();
        h.update(b"foo");
        h.update(b"bar");
        assert_eq!(h.0, 0x85944171f73967e8);
    }

    #[test]
    fn spec_parsing() {
        assert_eq!(
            parse_spec("hash").unwrap(),
            EmbedderSpec::Hash {
                dim: hash::DEFAULT_DIM
            }
        );
        assert_eq!(
            parse_spec("hash:64").unwrap(),
            EmbedderSpec::Hash { dim: 64 }
        );
        assert!(parse_spec("hash:x").is_err());
        assert!(parse_spec("/no/such/folder").is_err());
    }
}
