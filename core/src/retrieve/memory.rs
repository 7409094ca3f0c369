//! An exact in-memory BM25 retriever over a small corpus.
//!
//! It scores every passage for every query (no approximation), which is the right tool for
//! tests, demos and corpora of a few thousand passages; the disk index takes over beyond that.

use std::collections::HashMap;
use std::path::Path;

use super::{Hit, Retriever};
use crate::Result;
use crate::corpus::{Passage, load_jsonl};

/// BM25 parameters (the usual Lucene/Pyserini defaults).
const K1: f32 = 0.9;
const B: f32 = 0.4;

/// Exact BM25 over passages held in memory (title and text are both indexed).
pub struct MemoryRetriever {
    passages: Vec<Passage>,
    /// term -> (passage index, term frequency)
    postings: HashMap<String, Vec<(u32, u32)>>,
    doc_len: Vec<u32>,
    avg_len: f32,
}

/// Lowercased alphanumeric words: the analyzer for both passages and queries.
pub(crate) fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
}

impl MemoryRetriever {
    /// Index `passages`.
    pub fn new(passages: Vec<Passage>) -> Self {
        let mut postings: HashMap<String, Vec<(u32, u32)>> = HashMap::new();
        let mut doc_len = Vec::with_capacity(passages.len());
        for (i, p) in passages.iter().enumerate() {
            let mut tf: HashMap<String, u32> = HashMap::new();
            let mut n = 0;
            for w in words(&p.title).chain(words(&p.text)) {
                *tf.entry(w).or_default() += 1;
                n += 1;
            }
            doc_len.push(n);
            for (w, c) in tf {
                postings.entry(w).or_default().push((i as u32, c));
            }
        }
        let avg_len = if doc_len.is_empty() {
            1.0
        } else {
            doc_len.iter().map(|&n| n as f32).sum::<f32>() / doc_len.len() as f32
        };
        MemoryRetriever {
            passages,
            postings,
            doc_len,
            avg_len: avg_len.max(1.0),
        }
    }

    /// Load and index a JSONL corpus (see [`crate::corpus`]).
    pub fn from_jsonl(path: &Path) -> Result<Self> {
        Ok(Self::new(load_jsonl(path)?))
    }

    /// The indexed passages, in corpus order.
    pub fn passages(&self) -> &[Passage] {
        &self.passages
    }
}

impl Retriever for MemoryRetriever {
    fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>> {
        let n = self.passages.len() as f32;
        let mut scores = vec![0f32; self.passages.len()];
        let mut terms: Vec<String> = words(query).collect();
        terms.sort();
        terms.dedup();
        for t in &terms {
            let Some(list) = self.postings.get(t) else {
                continue;
            };
            let df = list.len() as f32;
            let idf = ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
            for &(doc, tf) in list {
                let tf = tf as f32;
                let norm = K1 * (1.0 - B + B * self.doc_len[doc as usize] as f32 / self.avg_len);
                scores[doc as usize] += idf * tf * (K1 + 1.0) / (tf + norm);
            }
        }
        let mut order: Vec<usize> = (0..scores.len()).filter(|&i| scores[i] > 0.0).collect();
        // Ties broken by corpus order, so results are deterministic.
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        order.truncate(k);
        Ok(order
            .into_iter()
            .map(|i| Hit {
                passage: self.passages[i].clone(),
                score: scores[i],
            })
            .collect())
    }

    fn describe(&self) -> String {
        format!("bm25({} passages)", self.passages.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Vec<Passage> {
        vec![
            Passage::from_contents(
                "0",
                "\"Paris\"\nParis is the capital and largest city of France.",
            ),
            Passage::from_contents("1", "\"Berlin\"\nBerlin is the capital of Germany."),
            Passage::from_contents("2", "\"Lyon\"\nLyon is a city in France, known for food."),
        ]
    }

    #[test]
    fn ranks_by_bm25_against_brute_force_formula() {
        let r = MemoryRetriever::new(corpus());
        let hits = r.search("capital of France", 3).unwrap();
        assert_eq!(hits[0].passage.id, "0");
        // Hand-check the top score: terms capital(df 2), of(df 2), france(df 2), N = 3.
        let idf = ((3.0f32 - 2.0 + 0.5) / (2.0 + 0.5) + 1.0).ln();
        let lens = [10f32, 7.0, 10.0];
        let avg = lens.iter().sum::<f32>() / 3.0;
        let norm = K1 * (1.0 - B + B * lens[0] / avg);
        let expect = 3.0 * idf * (K1 + 1.0) / (1.0 + norm);
        assert!(
            (hits[0].score - expect).abs() < 1e-5,
            "{} vs {expect}",
            hits[0].score
        );
        assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    }

    #[test]
    fn no_match_gives_no_hits_and_k_is_respected() {
        let r = MemoryRetriever::new(corpus());
        assert!(r.search("zzz qqq", 3).unwrap().is_empty());
        assert_eq!(r.search("city", 1).unwrap().len(), 1);
        assert!(r.search("", 3).unwrap().is_empty());
    }
}
