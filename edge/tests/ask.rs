//! `edge ask` end to end: the real binary, a tiny real model and a corpus written here.

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
         {\"id\": \"1\", \"title\": \"Berlin\", \"text\": \"Berlin is the capital of Germany.\"}\n",
    )
    .unwrap();
    p
}

fn edge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edge"))
}

#[test]
fn ask_json_prints_the_trace() {
    let tmp = tempfile::tempdir().unwrap();
    let out = edge()
        .args([
            "ask",
            "--json",
            "--max-turns",
            "1",
            "--max-turn-tokens",
            "8",
            "--model",
        ])
        .arg(repo().join("tests/fixtures/tiny-qwen2"))
        .arg("--corpus")
        .arg(corpus(tmp.path()))
        .arg("what is the capital of france")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["question"], "what is the capital of france");
    assert!(v.get("answer").is_some());
    let steps = v["steps"].as_array().unwrap();
    assert!(!steps.is_empty() && steps.len() <= 2);
    assert!(v["timings"]["total_ms"].as_f64().unwrap() > 0.0);
    assert!(v["prompt_tokens"].as_u64().unwrap() > 100);
    assert!(steps[0]["generated_tokens"].as_u64().unwrap() <= 8);
}

#[test]
fn ask_live_view_prints_the_answer_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = edge()
        .args([
            "ask",
            "--max-turns",
            "0",
            "--max-turn-tokens",
            "4",
            "--model",
        ])
        .arg(repo().join("tests/fixtures/tiny-llama"))
        .arg("--corpus")
        .arg(corpus(tmp.path()))
        .arg("q")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\nanswer: "), "{text}");
}

#[test]
fn bad_inputs_fail_with_a_message_naming_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let c = corpus(tmp.path());
    let missing = tmp.path().join("nope.gguf");
    let out = edge()
        .args(["ask", "--model"])
        .arg(&missing)
        .arg("--corpus")
        .arg(&c)
        .arg("q")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope.gguf"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"id\": \"0\", \"contents\": \"ok\"}\n{oops\n").unwrap();
    let out = edge()
        .args(["ask", "--model"])
        .arg(repo().join("tests/fixtures/tiny-qwen2"))
        .arg("--corpus")
        .arg(&bad)
        .arg("q")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.jsonl:2"), "{err}");

    let out = edge()
        .args(["ask", "--model"])
        .arg(repo().join("tests/fixtures/tiny-qwen2"))
        .arg("--corpus")
        .arg(&c)
        .arg("   ")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty"));

    // Counts of 0 are refused by flag name before the model is loaded.
    for flag in ["--topk", "--max-turn-tokens"] {
        let out = edge()
            .args(["ask", "--model"])
            .arg(&missing)
            .arg("--corpus")
            .arg(&c)
            .args([flag, "0", "q"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(flag) && err.contains("must be 1 or more") && !err.contains("nope.gguf"),
            "{err}"
        );
    }
}
