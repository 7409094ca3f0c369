//! The weightless embedder: signed feature hashing of words and word bigrams.
//!
//! Each lowercased alphanumeric word and each pair of adjacent words is hashed (FNV-1a) to a
//! feature id in a space of [`IDF_BUCKETS`]; the feature adds `±(1 + ln tf) · idf` to output
//! coordinate `id mod dim` (the sign comes from another hash bit, so that collisions cancel in
//! expectation instead of piling up). The idf table, when the corpus gives one, is computed
//! over the large feature space rather than the small output space: folded buckets would be
//! present in nearly every passage and carry no weight.

use super::{EmbedderSpec, Fnv64, Role, l2_normalize};
use crate::{Error, Result};

/// Default output dimension of `hash`.
pub const DEFAULT_DIM: usize = 512;
/// Size of the hashed feature space the idf table is indexed by.
pub const IDF_BUCKETS: usize = 1 << 20;

/// Hashed word + bigram features, optionally idf-weighted.
pub struct HashEmbedder {
    dim: usize,
    idf: Option<Vec<f32>>,
}

/// Lowercased alphanumeric words.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect()
}

/// Feature hashes of a text: every word, and every adjacent word pair (with a separator byte
/// no word can contain, so `"ab c"` and `"a bc"` differ).
pub(crate) fn features(text: &str) -> Vec<u64> {
    let w = words(text);
    let mut out = Vec::with_capacity(w.len() * 2);
    for (i, word) in w.iter().enumerate() {
        out.push(Fnv64::hash(word.as_bytes()));
        if i + 1 < w.len() {
            let mut h = Fnv64::default();
            h.update(word.as_bytes());
            h.update(&[0xff]);
            h.update(w[i + 1].as_bytes());
            out.push(h.0);
        }
    }
    out
}

/// Mix the bits of a hash so that bucket, sign and idf slot are independent.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The idf slot of a feature hash.
pub(crate) fn idf_slot(f: u64) -> usize {
    (mix(f) as usize) % IDF_BUCKETS
}

/// Document-frequency counter for the idf table (one pass over the corpus).
#[derive(Debug, Clone)]
pub struct DfCounter {
    df: Vec<u32>,
    docs: u64,
    seen: Vec<usize>,
}

impl Default for DfCounter {
    fn default() -> Self {
        DfCounter {
            df: vec![0; IDF_BUCKETS],
            docs: 0,
            seen: Vec::new(),
        }
    }
}

impl DfCounter {
    /// Count one document.
    pub fn add(&mut self, text: &str) {
        self.docs += 1;
        self.seen.clear();
        self.seen.extend(features(text).into_iter().map(idf_slot));
        self.seen.sort_unstable();
        self.seen.dedup();
        for &s in &self.seen {
            self.df[s] = self.df[s].saturating_add(1);
        }
    }

    /// The smoothed idf table `ln((N + 1) / (df + 1)) + 1`.
    pub fn idf(&self) -> Vec<f32> {
        let n = self.docs as f64;
        self.df
            .iter()
            .map(|&d| (((n + 1.0) / (d as f64 + 1.0)).ln() + 1.0) as f32)
            .collect()
    }
}

impl HashEmbedder {
    /// An embedder of dimension `dim`, with an idf table of [`IDF_BUCKETS`] weights or none.
    pub fn new(dim: usize, idf: Option<Vec<f32>>) -> Result<Self> {
        if dim == 0 {
            return Err(Error::invalid("hash embedder dimension must be > 0"));
        }
        if let Some(t) = &idf
            && t.len() != IDF_BUCKETS
        {
            return Err(Error::invalid(format!(
                "hash embedder idf table has {} entries, expected {IDF_BUCKETS}",
                t.len()
            )));
        }
        Ok(HashEmbedder { dim, idf })
    }

    /// Embed one text.
    pub fn embed_one(&self, text: &str) -> Vec<f32> {
        let mut feats = features(text);
        feats.sort_unstable();
        let mut v = vec![0f32; self.dim];
        let mut i = 0;
        while i < feats.len() {
            let f = feats[i];
            let mut tf = 0;
            while i < feats.len() && feats[i] == f {
                tf += 1;
                i += 1;
            }
            let m = mix(f);
            let bucket = ((m >> 1) % self.dim as u64) as usize;
            let sign = if m & 1 == 0 { 1.0 } else { -1.0 };
            let idf = self.idf.as_ref().map_or(1.0, |t| t[idf_slot(f)]);
            v[bucket] += sign * (1.0 + (tf as f32).ln()) * idf;
        }
        l2_normalize(&mut v);
        v
    }
}

impl super::Embedder for HashEmbedder {
    fn id(&self) -> String {
        // The idf table lives in the index itself, so it is not part of the identity.
        format!("hash-v1:{}", self.dim)
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn embed(&self, texts: &[&str], _role: Role) -> Result<Vec<Vec<f32>>> {
        Ok(texts.iter().map(|t| self.embed_one(t)).collect())
    }
    fn spec(&self) -> EmbedderSpec {
        EmbedderSpec::Hash { dim: self.dim }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cos(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn features_are_words_and_bigrams() {
        let f = features("The cat, the CAT");
        // 4 words + 3 bigrams; "the"/"THE" and "cat"/"CAT" collapse after lowercasing.
        assert_eq!(f.len(), 7);
        assert_eq!(f[0], f[4]);
        assert_eq!(f[2], f[6]);
        assert_eq!(f[1], f[5]); // "the cat" twice
    }

    #[test]
    fn unit_length_and_similarity_follows_overlap() {
        let e = HashEmbedder::new(256, None).unwrap();
        let a = e.embed_one("the capital of france is paris");
        let b = e.embed_one("paris is the capital of france");
        let c = e.embed_one("photosynthesis converts light into chemical energy");
        assert!((cos(&a, &a) - 1.0).abs() < 1e-5);
        assert!(cos(&a, &b) > 0.5, "{}", cos(&a, &b));
        assert!(cos(&a, &c).abs() < 0.3, "{}", cos(&a, &c));
        assert!(e.embed_one("  ,;  ").iter().all(|&x| x == 0.0));
    }

    #[test]
    fn idf_downweights_common_words() {
        let mut df = DfCounter::default();
        for t in [
            "the river",
            "the city",
            "the mountain",
            "the lake",
            "the seine flows",
        ] {
            df.add(t);
        }
        let idf = df.idf();
        let common = idf[idf_slot(Fnv64::hash(b"the"))];
        let rare = idf[idf_slot(Fnv64::hash(b"seine"))];
        // ln(6/6)+1 = 1 and ln(6/2)+1 by hand.
        assert!((common - 1.0).abs() < 1e-6);
        assert!((rare - (3f32.ln() + 1.0)).abs() < 1e-6);
        let e = HashEmbedder::new(256, Some(idf)).unwrap();
        let q = e.embed_one("the seine");
        let d1 = e.embed_one("the seine flows");
        let d2 = e.embed_one("the city");
        assert!(cos(&q, &d1) > cos(&q, &d2));
    }
}
