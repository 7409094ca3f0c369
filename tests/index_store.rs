//! Disk index: embedders against transformers, ANN recall against brute force, metadata
//! checks, faiss import. Real LMDB, real arroy/hannoy, real candle.

mod common;

use std::sync::Arc;

use dgpo::corpus::Passage;
use dgpo::embed::{self, BertEmbedder, BertOptions, Embedder, HashEmbedder, Pooling, Role};
use dgpo::index::{
    self, Backend, BuildOptions, Distance, FaissFlat, ImportOptions, Index, brute_force,
};
use dgpo::retrieve::Retriever;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn tiny_bert_matches_transformers_mean_and_cls() {
    let dir = common::fixture("tiny-bert");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let sents = r["sentences"].as_array().unwrap();
    let texts: Vec<&str> = sents.iter().map(|s| s["text"].as_str().unwrap()).collect();
    for pooling in [Pooling::Mean, Pooling::Cls] {
        let e = BertEmbedder::load(
            &dir,
            BertOptions {
                pooling,
                ..BertOptions::default()
            },
        )
        .unwrap();
        assert_eq!(e.dim(), 64);
        let key = match pooling {
            Pooling::Mean => "mean_normalized",
            Pooling::Cls => "cls_normalized",
        };
        // One batch (padded like the reference run) and one text at a time (no padding).
        let batch = e.embed(&texts, Role::Passage).unwrap();
        for (i, s) in sents.iter().enumerate() {
            let want = floats(&s[key]);
            let d = max_abs_diff(&batch[i], &want);
            assert!(d < 1e-4, "{key} sentence {i} (batched): max diff {d}");
            let one = e.embed(&[texts[i]], Role::Query).unwrap();
            let d = max_abs_diff(&one[0], &want);
            assert!(d < 1e-4, "{key} sentence {i} (alone): max diff {d}");
        }
    }
}

#[test]
fn e5_prefixes_are_applied() {
    // A copy of tiny-bert named like e5 gets `query: ` / `passage: ` prepended.
    let tmp = tempfile::tempdir().unwrap();
    let e5 = tmp.path().join("e5-tiny");
    std::fs::create_dir(&e5).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(common::fixture("tiny-bert").join(f), e5.join(f)).unwrap();
    }
    let opts = BertOptions::detect(&e5);
    assert_eq!(opts.query_prefix, "query: ");
    assert_eq!(opts.passage_prefix, "passage: ");
    let e5e = BertEmbedder::load(&e5, opts).unwrap();
    let plain = BertEmbedder::load(&common::fixture("tiny-bert"), BertOptions::default()).unwrap();
    let q = e5e
        .embed(&["what is the capital of france?"], Role::Query)
        .unwrap();
    let want = plain
        .embed(&["query: what is the capital of france?"], Role::Query)
        .unwrap();
    assert!(max_abs_diff(&q[0], &want[0]) < 1e-6);
    assert_ne!(e5e.id(), plain.id());
}

#[test]
fn minilm_similarity_matches_sentence_transformers() {
    let Some(dir) = common::artifact("all-minilm-l6-v2/model.safetensors") else {
        return;
    };
    let dir = dir.parent().unwrap();
    let e = BertEmbedder::load(dir, BertOptions::detect(dir)).unwrap();
    let v = e
        .embed(
            &["A man is eating food.", "A man is eating a piece of bread."],
            Role::Query,
        )
        .unwrap();
    let cos: f32 = v[0].iter().zip(&v[1]).map(|(a, b)| a * b).sum();
    assert!((cos - 0.755).abs() <= 0.002, "cos = {cos}");
}

/// `n` unit vectors around 100 random centres (noise of the same norm as the centres):
/// sentence embeddings are clustered like this, with a far lower intrinsic dimension than
/// uniform noise, on which every graph index degrades (see the README's Index section).
fn clustered(rng: &mut StdRng, centres: &[Vec<f32>], n: usize) -> Vec<Vec<f32>> {
    let dim = centres[0].len();
    (0..n)
        .map(|_| {
            let c = &centres[rng.random_range(0..centres.len())];
            let mut noise: Vec<f32> = (0..dim).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
            embed::l2_normalize(&mut noise);
            let mut v: Vec<f32> = c.iter().zip(&noise).map(|(a, b)| a + 0.8 * b).collect();
            embed::l2_normalize(&mut v);
            v
        })
        .collect()
}

fn random_unit(rng: &mut StdRng, n: usize, dim: usize) -> Vec<Vec<f32>> {
    (0..n)
        .map(|_| {
            let mut v: Vec<f32> = (0..dim).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
            embed::l2_normalize(&mut v);
            v
        })
        .collect()
}

fn recall_for(backend: Backend) {
    let (n, dim, nq, k) = (10_000, 384, 50, 10);
    let mut rng = StdRng::seed_from_u64(7);
    let centres = random_unit(&mut rng, 100, dim);
    let vectors = clustered(&mut rng, &centres, n);
    let queries = clustered(&mut rng, &centres, nq);
    let tmp = tempfile::tempdir().unwrap();
    let e = HashEmbedder::new(dim, None).unwrap();
    let rows = vectors.iter().enumerate().map(|(i, v)| {
        (
            Passage {
                id: i.to_string(),
                title: format!("t{i}"),
                text: String::new(),
            },
            v.clone(),
        )
    });
    index::write_vectors(tmp.path(), &e, backend, Distance::Cosine, 42, rows).unwrap();
    let idx = Index::open(tmp.path()).unwrap();
    let mut found = 0;
    for q in &queries {
        let exact: Vec<u32> = brute_force(&vectors, q, k).iter().map(|h| h.0).collect();
        let got = idx.search_items(q, k).unwrap();
        assert_eq!(got.len(), k);
        // Scores are cosines: check them against the exact values.
        for (item, s) in &got {
            let c: f32 = vectors[*item as usize]
                .iter()
                .zip(q)
                .map(|(a, b)| a * b)
                .sum();
            assert!((c - s).abs() < 1e-4, "score {s} vs cosine {c}");
        }
        found += got.iter().filter(|h| exact.contains(&h.0)).count();
    }
    let recall = found as f64 / (nq * k) as f64;
    eprintln!("{backend:?}: recall@10 = {recall:.3}");
    assert!(recall >= 0.9, "{backend:?}: recall@10 = {recall}");
}

#[test]
fn recall_at_10_hannoy() {
    recall_for(Backend::Hannoy);
}

#[test]
fn recall_at_10_arroy() {
    recall_for(Backend::Arroy);
}

/// hannoy on unstructured data: 4,000 passages of 50 random words, hash-embedded (nearly
/// orthogonal vectors, the hard case for a graph index), plus one passage on a topic nothing
/// else shares. At the default search width the top hit of a query made of six of a passage's
/// own words must be the exact scan's, and the lone passage must be found for its own words.
/// With 16 links per node (32 on layer 0) most such passages were unreachable from
/// the graph's entry point at any search width (26/100 top-1 at 20k passages, the lone passage
/// never found; README "Index").
#[test]
fn hannoy_reaches_passages_of_unstructured_text() {
    let n = 4000;
    let (texts, queries) = common::random_word_corpus(n, 7);
    let mut df = embed::DfCounter::default();
    for t in &texts {
        df.add(t);
    }
    let e = HashEmbedder::new(512, Some(df.idf())).unwrap();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let vectors = e.embed(&refs, Role::Passage).unwrap();
    let qrefs: Vec<&str> = queries.iter().map(String::as_str).collect();
    let qv = e.embed(&qrefs, Role::Query).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let rows = texts.iter().zip(&vectors).enumerate().map(|(i, (t, v))| {
        (
            Passage {
                id: i.to_string(),
                title: String::new(),
                text: t.clone(),
            },
            v.clone(),
        )
    });
    index::write_vectors(tmp.path(), &e, Backend::Hannoy, Distance::Cosine, 42, rows).unwrap();
    let idx = Index::open(tmp.path()).unwrap();
    let top = |q: &[f32]| idx.search_items(q, 1).unwrap().first().map(|h| h.0);
    let agree = qv[..100]
        .iter()
        .filter(|q| top(q) == Some(brute_force(&vectors, q, 1)[0].0))
        .count();
    assert_eq!(brute_force(&vectors, &qv[100], 1)[0].0, n as u32);
    assert_eq!(
        top(&qv[100]),
        Some(n as u32),
        "the lone passage is unreachable"
    );
    assert!(
        agree >= 95,
        "top-1 equals the exact scan's for {agree}/100 queries"
    );
}

fn write_corpus(dir: &std::path::Path, rows: &[(&str, &str, &str)]) -> std::path::PathBuf {
    let p = dir.join("corpus.jsonl");
    let text: String = rows
        .iter()
        .map(|(id, title, text)| {
            serde_json::json!({"id": id, "contents": format!("{title}\n{text}")}).to_string() + "\n"
        })
        .collect();
    std::fs::write(&p, text).unwrap();
    p
}

const ROWS: &[(&str, &str, &str)] = &[
    (
        "0",
        "\"Paris\"",
        "Paris is the capital and largest city of France.",
    ),
    (
        "1",
        "\"Seine\"",
        "The Seine is a river that flows through Paris.",
    ),
    (
        "2",
        "\"Apple Inc.\"",
        "Apple Inc. is headquartered in Cupertino, California.",
    ),
    (
        "3",
        "\"Photosynthesis\"",
        "Plants turn light into chemical energy.",
    ),
];

#[test]
fn hash_index_search_and_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = write_corpus(tmp.path(), ROWS);
    let out = tmp.path().join("idx");
    for backend in [Backend::Hannoy, Backend::Arroy] {
        let _ = std::fs::remove_dir_all(&out);
        let mut o = BuildOptions::new(&corpus, &out, embed::parse_spec("hash:128").unwrap());
        o.backend = backend;
        let r = index::build(&o).unwrap();
        assert_eq!((r.documents, r.skipped, r.resumed_from), (4, 0, 0));
        let idx = Index::open(&out).unwrap();
        let m = idx.meta();
        assert_eq!((m.dim, m.documents, m.backend), (128, 4, backend));
        assert_eq!(m.embedder_id, "hash-v1:128");
        assert!(m.corpus_checksum.starts_with("fnv1a64:"));
        let hits = idx.search("where is apple headquartered", 3).unwrap();
        assert_eq!(hits.len(), 3);
        assert_eq!(hits[0].passage.title, "\"Apple Inc.\"");
        assert_eq!(hits[0].passage.id, "2");
        assert!(hits[0].score > hits[1].score);
        let batch = idx
            .search_batch(&["river through paris", "light into chemical energy"], 1)
            .unwrap();
        assert_eq!(batch[0][0].passage.id, "1");
        assert_eq!(batch[1][0].passage.id, "3");
        // A second build into the same directory does nothing.
        drop(idx);
        assert!(index::build(&o).unwrap().already_complete);
    }
}

#[test]
fn mismatching_embedder_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = write_corpus(tmp.path(), ROWS);
    let out = tmp.path().join("idx");
    index::build(&BuildOptions::new(
        &corpus,
        &out,
        embed::parse_spec("hash:128").unwrap(),
    ))
    .unwrap();
    let other: Arc<dyn Embedder> = Arc::new(HashEmbedder::new(64, None).unwrap());
    let err = Index::open_with(&out, Some(other))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("embedder mismatch"), "{err}");
    assert!(
        err.contains("hash-v1:128") && err.contains("hash-v1:64"),
        "{err}"
    );
    let bert: Arc<dyn Embedder> = Arc::new(
        BertEmbedder::load(&common::fixture("tiny-bert"), BertOptions::default()).unwrap(),
    );
    let err = Index::open_with(&out, Some(bert))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("embedder mismatch"), "{err}");
    // The same embedder given explicitly is accepted.
    let same: Arc<dyn Embedder> = Arc::new(HashEmbedder::new(128, None).unwrap());
    assert!(Index::open_with(&out, Some(same)).is_ok());
}

#[test]
fn malformed_lines_stop_the_build_before_writing_or_are_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("bad.jsonl");
    std::fs::write(
        &corpus,
        "{\"id\":\"0\",\"contents\":\"A\\nfirst\"}\n{\"id\":\"1\",\"contents\":\"B\\nsecond\"}\n\
         {\"id\": 2, \"contents\"\n{\"id\":\"3\",\"title\":\"C\",\"text\":\"third\"}\n",
    )
    .unwrap();
    let out = tmp.path().join("idx");
    let mut o = BuildOptions::new(&corpus, &out, embed::parse_spec("hash:64").unwrap());
    let err = index::build(&o).unwrap_err().to_string();
    assert!(err.contains("bad.jsonl:3:"), "{err}");
    assert!(err.contains("--skip-bad"), "{err}");
    assert!(
        !out.exists(),
        "nothing may be written for a rejected corpus"
    );
    o.skip_bad = true;
    let r = index::build(&o).unwrap();
    assert_eq!((r.documents, r.skipped), (3, 1));
    let idx = Index::open(&out).unwrap();
    assert_eq!(idx.passage(2).unwrap().unwrap().title, "C");
}

#[test]
fn faiss_flat_files_are_read_exactly() {
    let dir = common::fixture("faiss");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let vectors: Vec<Vec<f32>> = r["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(floats)
        .collect();
    for (file, ip) in [("flat_ip.index", true), ("flat_l2.index", false)] {
        let f = FaissFlat::open(&dir.join(file)).unwrap();
        assert_eq!((f.dim, f.ntotal, f.inner_product), (16, 40, ip));
        for (i, v) in vectors.iter().enumerate() {
            assert_eq!(
                &f.row(i as u64).unwrap(),
                v,
                "{file} row {i} must be bit-exact"
            );
        }
        assert!(f.row(40).is_none());
    }
    // A truncated copy is refused with the reason.
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(dir.join("flat_ip.index")).unwrap();
    std::fs::write(tmp.path().join("t.index"), &bytes[..bytes.len() - 10]).unwrap();
    let err = FaissFlat::open(&tmp.path().join("t.index"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("truncated"), "{err}");
    std::fs::write(
        tmp.path().join("x.index"),
        b"IxHNxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    )
    .unwrap();
    let err = FaissFlat::open(&tmp.path().join("x.index"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("IxHN"), "{err}");
}

#[test]
fn faiss_import_searches_like_faiss() {
    let dir = common::fixture("faiss");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let queries: Vec<Vec<f32>> = r["queries"]
        .as_array()
        .unwrap()
        .iter()
        .map(floats)
        .collect();
    let k = r["k"].as_u64().unwrap() as usize;
    // The vectors are 16-d: a random 16-d BERT folder stands in for "the model that made
    // them" (the import records it for queries and never runs it over the corpus).
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("bert16");
    std::fs::create_dir(&model).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture("tiny-bert").join("config.json")).unwrap(),
    )
    .unwrap();
    cfg["hidden_size"] = 16.into();
    cfg["intermediate_size"] = 32.into();
    cfg["num_attention_heads"] = 2.into();
    std::fs::write(model.join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(
        common::fixture("tiny-bert").join("tokenizer.json"),
        model.join("tokenizer.json"),
    )
    .unwrap();
    let spec = || embed::parse_spec(model.to_str().unwrap()).unwrap();
    // No weights yet: a clear message naming the missing file.
    let err = index::import_faiss(&ImportOptions {
        faiss: dir.join("flat_ip.index"),
        build: BuildOptions::new(dir.join("corpus.jsonl"), tmp.path().join("x"), spec()),
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    {
        use dgpo::candle_core::{DType, Device};
        let vm = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let c: candle_transformers::models::bert::Config =
            serde_json::from_value(cfg.clone()).unwrap();
        candle_transformers::models::bert::BertModel::load(vb, &c).unwrap();
        vm.save(model.join("model.safetensors")).unwrap();
    }

    // The 64-d tiny-bert does not fit 16-d vectors.
    let err = index::import_faiss(&ImportOptions {
        faiss: dir.join("flat_ip.index"),
        build: BuildOptions::new(
            dir.join("corpus.jsonl"),
            tmp.path().join("y"),
            embed::parse_spec(common::fixture("tiny-bert").to_str().unwrap()).unwrap(),
        ),
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("16 dimensions") && err.contains("64"), "{err}");

    // Search the imported vectors directly against faiss' own results.
    for (file, key) in [("flat_ip.index", "flat_ip"), ("flat_l2.index", "flat_l2")] {
        let out = tmp.path().join(key);
        let r2 = index::import_faiss(&ImportOptions {
            faiss: dir.join(file),
            build: BuildOptions::new(dir.join("corpus.jsonl"), &out, spec()),
        })
        .unwrap();
        assert_eq!(r2.documents, 40);
        let idx = Index::open(&out).unwrap();
        assert!(idx.meta().source.starts_with("faiss:"));
        assert_eq!(idx.passage(0).unwrap().unwrap().title, "\"Paris\"");
        for (qi, q) in queries.iter().enumerate() {
            let got: Vec<i64> = idx
                .search_items(q, k)
                .unwrap()
                .iter()
                .map(|h| h.0 as i64)
                .collect();
            let want: Vec<i64> = r[key]["ids"][qi]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect();
            assert_eq!(got, want, "{key} query {qi}");
        }
    }
}
