//! The `train` binary: SFT killed with SIGKILL mid-run and resumed ends with the same final
//! weights, byte for byte, as an uninterrupted run; export turns the result into GGUF.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use train::synth::WorldConfig;
use train::synth::prepare::{PrepareConfig, prepare};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

fn train_cmd(data: &Path, exp: &Path, resume: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_train"));
    c.arg(data)
        .arg(fixture("tiny-qwen2"))
        .arg("-")
        .arg(exp)
        .args([
            "--phase",
            "sft",
            "--steps",
            "12",
            "--save-every",
            "2",
            "--keep-last",
            "2",
        ])
        .args([
            "--micro-batch",
            "2",
            "--lr",
            "1e-3",
            "--warmup-ratio",
            "0.1",
            "--seed",
            "5",
        ])
        .env("RUST_LOG", "warn");
    if resume {
        c.arg("--resume");
    }
    c
}

#[test]
fn sigkill_then_resume_equals_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    // A small world whose tokenizer fits the fixture's 512-token vocabulary.
    let cfg = PrepareConfig {
        world: WorldConfig {
            people: 12,
            cities: 4,
            countries: 2,
            ..Default::default()
        },
        vocab_size: 512,
        // One passage per search keeps the trajectories (and the test) short.
        agent: dgpo_core::agent::AgentConfig {
            chat_template: false,
            topk: 1,
            ..Default::default()
        },
    };
    prepare(&data, &cfg).unwrap();

    let full = tmp.path().join("full");
    let st = train_cmd(&data, &full, false).status().unwrap();
    assert!(st.success());

    let part = tmp.path().join("part");
    let mut child = train_cmd(&data, &part, false).spawn().unwrap();
    let t0 = Instant::now();
    let ck = part.join("checkpoints/step-00000004");
    while !ck.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        if let Some(st) = child.try_wait().unwrap() {
            let ls: Vec<_> = std::fs::read_dir(part.join("checkpoints"))
                .map(|d| d.map(|e| e.unwrap().file_name()).collect())
                .unwrap_or_default();
            panic!(
                "run ended ({st}) before it could be killed, after {:?}; checkpoints {ls:?}",
                t0.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !part.join("final").exists(),
        "killed too late to test anything"
    );
    let st = train_cmd(&data, &part, true).status().unwrap();
    assert!(st.success());
    let a = std::fs::read(full.join("final/model.safetensors")).unwrap();
    let b = std::fs::read(part.join("final/model.safetensors")).unwrap();
    assert!(
        a == b,
        "resumed final weights differ from the uninterrupted run"
    );
    let steps = |p: &Path| {
        std::fs::read_to_string(p.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!((steps(&full), steps(&part)), (12, 12));

    let out = tmp.path().join("m.gguf");
    let st = Command::new(env!("CARGO_BIN_EXE_train"))
        .args(["export"])
        .arg(part.join("checkpoints/step-00000012"))
        .arg("--out")
        .arg(&out)
        .args(["--quant", "q8_0"])
        .env("RUST_LOG", "warn")
        .status()
        .unwrap();
    assert!(st.success() && out.exists());
}

#[test]
fn kd_with_mismatched_vocabularies_is_refused_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    std::fs::create_dir_all(&data).unwrap();
    // A real (random) teacher with a 256-token vocabulary.
    use train::model::{ModelOptions, TrainModel, config_json};
    let student = TrainModel::load(&fixture("tiny-qwen2"), &ModelOptions::default()).unwrap();
    let mut dc = student.config().clone();
    dc.vocab_size = 256;
    let teacher = tmp.path().join("teacher");
    let tok = std::fs::read(fixture("tiny-qwen2").join("tokenizer.json")).unwrap();
    TrainModel::new_random(
        dc.clone(),
        config_json(&dc, None, None),
        tok,
        &ModelOptions::default(),
    )
    .unwrap()
    .save(&teacher)
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_train"))
        .arg(&data)
        .arg(fixture("tiny-qwen2"))
        .arg(&teacher)
        .arg(tmp.path().join("exp"))
        .args(["--phase", "kd"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("vocabulary of 256") && err.contains("512"),
        "{err}"
    );
    assert!(!tmp.path().join("exp").exists());
}
