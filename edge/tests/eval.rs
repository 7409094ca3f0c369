//! `edge eval` end to end: the real binary, a tiny real model (random weights), the committed
//! Search-R1 dataset fixtures and a corpus written here.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn corpus(dir: &Path) -> PathBuf {
    let p = dir.join("corpus.jsonl");
    std::fs::write(
        &p,
        "{\"id\": \"0\", \"contents\": \"\\\"Paris\\\"\\nParis is the capital of France.\"}\n\
         {\"id\": \"1\", \"contents\": \"\\\"Mercury\\\"\\nMercury is the planet closest to the Sun.\"}\n\
         {\"id\": \"2\", \"title\": \"Einstein\", \"text\": \"Albert Einstein developed the theory of relativity.\"}\n\
         {\"id\": \"3\", \"title\": \"Nile\", \"text\": \"The Nile flows through Cairo, the capital of Egypt.\"}\n",
    )
    .unwrap();
    p
}

fn edge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edge"))
}

/// Width and height from a PNG's signature and IHDR chunk.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(bytes.len() > 33, "too short for a PNG");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR", "first chunk is IHDR");
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    (w, h)
}

#[test]
fn eval_writes_json_table_and_chart_for_two_models() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    let model = repo().join("tests/fixtures/tiny-qwen2");
    let out = edge()
        .arg("eval")
        .arg(repo().join("tests/fixtures/data/searchr1_test.parquet"))
        .arg("--model")
        .arg(&model)
        .arg("--model")
        .arg(&model)
        .arg("--corpus")
        .arg(corpus(tmp.path()))
        .args([
            "--limit",
            "4",
            "--concurrency",
            "2",
            "--max-turns",
            "1",
            "--max-turn-tokens",
            "6",
            "--out",
        ])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("results.json")).unwrap()).unwrap();
    let models = v["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(models[0]["name"], "tiny-qwen2");
    assert_eq!(models[1]["name"], "tiny-qwen2-2");
    let qs = models[0]["questions"].as_array().unwrap();
    assert_eq!(qs.len(), 4, "--limit 4");
    assert_eq!(qs[0]["id"], "test_0");
    assert_eq!(qs[3]["data_source"], "hotpotqa");
    for q in qs {
        assert!(
            q["trace"]["steps"]
                .as_array()
                .is_some_and(|s| !s.is_empty())
        );
        for k in ["em", "cover_em", "f1"] {
            let x = q["scores"][k].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&x));
        }
        assert!(q["metrics"]["wall_ms"].as_f64().unwrap() > 0.0);
    }
    // Questions 0-2 have a passage with their answer in the corpus; question 3 (English
    // Channel) does not.
    let ev: Vec<bool> = qs.iter().map(|q| !q["evidence"].is_null()).collect();
    assert_eq!(ev, vec![true, true, true, false]);
    assert_eq!(qs[0]["evidence"]["evidence"]["passage"]["id"], "0");
    assert!(
        qs[0]["evidence"]["with_think"]["text"]
            .as_str()
            .unwrap()
            .starts_with("<think>")
    );
    assert_eq!(models[0]["by_source"]["nq"]["n"], 3);
    assert_eq!(models[0]["by_source"]["hotpotqa"]["n"], 1);
    assert!(
        v["evidence_protocol"]
            .as_str()
            .unwrap()
            .contains("our definition")
    );

    let md = std::fs::read_to_string(out_dir.join("summary.md")).unwrap();
    assert!(md.contains("| nq | tiny-qwen2 | 3 |"), "{md}");
    assert!(md.contains("| hotpotqa | tiny-qwen2-2 | 1 |"), "{md}");
    assert!(md.contains("our definition"));

    let png = std::fs::read(out_dir.join("chart.png")).unwrap();
    let (w, h) = png_size(&png);
    assert!(w >= 800 && h >= 600, "{w}x{h}");
    assert!(
        png.len() > 10_000,
        "a chart with bars and text, not a blank image"
    );
    // No temporary files left behind.
    let names: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

#[test]
fn eval_errors_name_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"id\": \"a\", \"question\": \"q\", \"golden_answers\": [\"x\"]}\n{\"id\": \"b\", \"question\": \"q2\"}\n",
    )
    .unwrap();
    let out = edge()
        .arg("eval")
        .arg(&bad)
        .arg("--model")
        .arg(repo().join("tests/fixtures/tiny-qwen2"))
        .arg("--corpus")
        .arg(corpus(tmp.path()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.jsonl:2") && err.contains("golden_answers"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // No retriever at all.
    let out = edge()
        .arg("eval")
        .arg(repo().join("tests/fixtures/data/flashrag_test.jsonl"))
        .arg("--model")
        .arg(repo().join("tests/fixtures/tiny-qwen2"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--index"));
}
