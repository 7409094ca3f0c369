//! Opt-in: the 10,033 Wikipedia summaries indexed with MiniLM (artifacts from
//! scripts/fetch-artifacts.sh; skipped with a message when absent).

mod common;

use dgpo::embed;
use dgpo::index::{self, BuildOptions, Index};
use dgpo::retrieve::Retriever;

#[test]
fn wiki_summaries_with_minilm_find_apple() {
    let (Some(corpus), Some(model)) = (
        common::artifact("wiki-summaries/corpus.jsonl"),
        common::artifact("all-minilm-l6-v2/model.safetensors"),
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("wiki");
    let spec = embed::parse_spec(model.parent().unwrap().to_str().unwrap()).unwrap();
    let r = index::build(&BuildOptions::new(&corpus, &out, spec)).unwrap();
    assert_eq!(r.documents, 10_033);
    eprintln!(
        "indexed 10,033 passages: {:.0} passages/s, ANN build {:.1} s",
        r.documents as f64 / r.ingest_secs,
        r.ann_build_secs
    );
    let idx = Index::open(&out).unwrap();
    let hits = idx
        .search("Where is the headquarters of Apple?", 3)
        .unwrap();
    let titles: Vec<&str> = hits.iter().map(|h| h.passage.title.as_str()).collect();
    assert!(titles.contains(&"\"Apple Inc.\""), "{titles:?}");
}
