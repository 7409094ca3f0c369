//! `edge index` end to end with the real binary: build, search, kill -9 mid-build and resume.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dgpo_core::index::{self, BuildState, Index};
use dgpo_core::retrieve::Retriever;

fn edge() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_edge"));
    c.stdin(Stdio::null());
    c
}

/// A corpus of `n` distinct passages about numbered towns.
fn corpus(dir: &Path, n: usize) -> PathBuf {
    let words = [
        "river", "castle", "market", "bridge", "harbour", "mill", "abbey", "forest", "valley",
        "mine", "tower", "square",
    ];
    let mut s = String::new();
    for i in 0..n {
        let a = words[i % words.len()];
        let b = words[(i / words.len()) % words.len()];
        let text = format!("Town {i} is known for its {a} and its old {b}. Founded in year {i}.");
        s += &serde_json::json!({"id": i.to_string(), "contents": format!("\"Town {i}\"\n{text}")})
            .to_string();
        s.push('\n');
    }
    let p = dir.join("corpus.jsonl");
    std::fs::write(&p, s).unwrap();
    p
}

fn build_args(corpus: &Path, out: &Path) -> Vec<String> {
    [
        "index",
        "build",
        "--corpus",
        corpus.to_str().unwrap(),
        "--embedder",
        "hash:64",
        "--out",
        out.to_str().unwrap(),
        "--chunk-size",
        "100",
        "--no-progress",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn committed(out: &Path) -> u64 {
    index::inspect(out).map(|m| m.documents).unwrap_or(0)
}

#[test]
fn kill_mid_build_then_resume_equals_uninterrupted_build() {
    let tmp = tempfile::tempdir().unwrap();
    let n = 3000;
    let corpus = corpus(tmp.path(), n);
    let resumed = tmp.path().join("resumed");
    // Two interruptions at different points, each followed by a check that the index
    // reopens (metadata readable, search refused with a clear message).
    for threshold in [300u64, 1500] {
        let mut child = edge()
            .args(build_args(&corpus, &resumed))
            .args(["--chunk-delay-ms", "20"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while committed(&resumed) < threshold {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "build made no progress"
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "build ended before the kill"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let meta = index::inspect(&resumed).expect("an interrupted index must reopen");
        assert!(meta.documents >= threshold && meta.documents < n as u64);
        assert!(matches!(meta.build, BuildState::Ingesting { .. }));
        let err = Index::open(&resumed).err().unwrap().to_string();
        assert!(
            err.contains("incomplete") && err.contains("resume"),
            "{err}"
        );
    }
    let before = committed(&resumed);
    let out = edge().args(build_args(&corpus, &resumed)).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("{before} resumed")), "{stdout}");

    let straight = tmp.path().join("straight");
    let out = edge()
        .args(build_args(&corpus, &straight))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let a = Index::open(&resumed).unwrap();
    let b = Index::open(&straight).unwrap();
    let (mut ma, mut mb) = (a.meta().clone(), b.meta().clone());
    assert_eq!(ma.documents, n as u64);
    ma.corpus = PathBuf::new();
    mb.corpus = PathBuf::new();
    assert_eq!(ma, mb);
    for i in 0..n as u32 {
        assert_eq!(a.passage(i).unwrap(), b.passage(i).unwrap(), "passage {i}");
        assert_eq!(a.vector(i).unwrap(), b.vector(i).unwrap(), "vector {i}");
    }
    assert!(a.passage(n as u32).unwrap().is_none());
    for q in [
        "castle and market",
        "town 17",
        "old abbey near the river",
        "year 2999",
    ] {
        assert_eq!(a.search(q, 5).unwrap(), b.search(q, 5).unwrap(), "{q}");
    }
}

#[test]
fn cli_build_search_and_bad_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = corpus(tmp.path(), 50);
    let dir = tmp.path().join("idx");
    let out = edge().args(build_args(&corpus, &dir)).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = edge()
        .args([
            "index",
            "search",
            dir.to_str().unwrap(),
            "Town 7 castle",
            "year 42",
            "-k",
            "3",
        ])
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["hits"].as_array().unwrap().len(), 3);
    assert_eq!(lines[0]["hits"][0]["title"], "\"Town 7\"");
    assert_eq!(lines[1]["hits"][0]["id"], "42");
    assert!(lines[1]["hits"][0]["score"].as_f64().unwrap() > 0.0);

    // The search effort flags reach the index: more effort finds the same exact hits on 50
    // passages, and zero effort is refused by name.
    let effort = |extra: &[&str]| {
        edge()
            .args([
                "index",
                "search",
                dir.to_str().unwrap(),
                "year 42",
                "--json",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = effort(&["--ef-search", "1000", "--arroy-oversampling", "40"]);
    assert!(out.status.success());
    let hit: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(hit["hits"][0]["id"], "42");
    let out = effort(&["--ef-search", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ef-search"));

    // info works and shows the metadata.
    let out = edge()
        .args(["index", "info", dir.to_str().unwrap()])
        .output()
        .unwrap();
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(meta["documents"], 50);
    assert_eq!(meta["embedder_id"], "hash-v1:64");

    // A malformed line: the error names file and line, and nothing is created.
    let bad = tmp.path().join("bad.jsonl");
    let mut text = std::fs::read_to_string(&corpus).unwrap();
    text.insert_str(0, "{\"id\": \"x\"}\n");
    std::fs::write(&bad, text).unwrap();
    let bad_out = tmp.path().join("bad_idx");
    let out = edge().args(build_args(&bad, &bad_out)).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.jsonl:1:"), "{err}");
    assert!(!bad_out.exists());
    let out = edge()
        .args(build_args(&bad, &bad_out))
        .arg("--skip-bad")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 malformed lines skipped"));
}

#[test]
fn ask_uses_the_disk_index() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = corpus(tmp.path(), 20);
    let dir = tmp.path().join("idx");
    let out = edge().args(build_args(&corpus, &dir)).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-qwen2");
    let ask = |index: &Path| {
        edge()
            .args([
                "ask",
                "--json",
                "--max-turns",
                "1",
                "--max-turn-tokens",
                "8",
                "--model",
            ])
            .arg(&model)
            .arg("--index")
            .arg(index)
            .arg("which town has a castle")
            .output()
            .unwrap()
    };
    let out = ask(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["question"], "which town has a castle");
    let out = ask(&tmp.path().join("missing"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no index here"));
}
