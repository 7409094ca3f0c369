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

/// The command succeeded; else its stderr is the failure message.
fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A small prepared world (12 people) whose tokenizer fits the fixture's 512-token vocabulary.
fn sft_data(root: &Path) -> PathBuf {
    let data = root.join("d");
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
    data
}

#[test]
fn sigkill_then_resume_equals_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = sft_data(tmp.path());

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

/// `--dtype bf16`: the same SFT run in bf16 follows the f32 run's losses up to bf16 rounding
/// (not exactly: it did run in bf16; measured 0.25% at most over the 12 updates), checkpoints bf16 weights that export reads, and a device
/// or float type this build cannot give is refused before anything is written.
#[test]
fn sft_in_bf16_follows_f32_and_saves_bf16_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let data = sft_data(tmp.path());
    let (f32_exp, bf16_exp) = (tmp.path().join("f32"), tmp.path().join("bf16"));
    assert!(
        train_cmd(&data, &f32_exp, false)
            .status()
            .unwrap()
            .success()
    );
    let out = train_cmd(&data, &bf16_exp, false)
        .args(["--dtype", "bf16"])
        .output()
        .unwrap();
    assert_success(&out);
    let losses = |p: &Path| -> Vec<f64> {
        std::fs::read_to_string(p.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                    .as_f64()
                    .unwrap()
            })
            .collect()
    };
    let (a, b) = (losses(&f32_exp), losses(&bf16_exp));
    assert_eq!((a.len(), b.len()), (12, 12));
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| ((x - y) / x).abs())
        .fold(0.0, f64::max);
    assert!(
        worst > 1e-5 && worst < 0.01,
        "largest relative loss difference bf16 vs f32 {worst}: f32 {a:?}, bf16 {b:?}"
    );

    let fin = bf16_exp.join("final");
    let bytes = std::fs::read(fin.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(
        st.tensors()
            .iter()
            .all(|(_, t)| t.dtype() == safetensors::Dtype::BF16),
        "the bf16 run saved other weights"
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fin.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["torch_dtype"], "bfloat16");
    let gguf = tmp.path().join("bf16.gguf");
    let st = Command::new(env!("CARGO_BIN_EXE_train"))
        .arg("export")
        .arg(&fin)
        .arg("--out")
        .arg(&gguf)
        .env("RUST_LOG", "warn")
        .status()
        .unwrap();
    assert!(st.success() && gguf.exists());

    let mut refused = vec![(vec!["--dtype", "fp8"], "\"fp8\"")];
    if !cfg!(feature = "cuda") {
        refused.push((vec!["--device", "cuda"], "no CUDA support"));
    }
    for (args, why) in refused {
        let exp = tmp.path().join("refused");
        let out = train_cmd(&data, &exp, false).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(why),
            "{args:?}: {err}"
        );
        assert!(!exp.exists(), "{args:?} wrote {}", exp.display());
    }
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

/// Small preset settings for tests: a 2-layer teacher that memorises the few training
/// trajectories of a tiny world, and a 1-layer student barely pretrained.
fn small_presets(teacher_sft_steps: usize) -> train::presets::PresetConfig {
    use train::presets::{PresetConfig, PresetSpec, Shape, Stage};
    let stage = |steps, lr, micro_batch| Stage {
        steps,
        lr,
        micro_batch,
        save_every: 0,
    };
    PresetConfig {
        tiny: PresetSpec {
            shape: Shape {
                hidden: 32,
                intermediate: 64,
                layers: 1,
                heads: 2,
                kv_heads: 1,
            },
            pretrain: stage(4, 3e-3, 4),
            pretrain_seq_len: 64,
            sft: None,
            sft_name_swaps: 0,
            sft_average: 0,
            seed: 1,
        },
        teacher: PresetSpec {
            shape: Shape {
                hidden: 64,
                intermediate: 128,
                layers: 2,
                heads: 4,
                kv_heads: 2,
            },
            pretrain: stage(2, 3e-3, 4),
            pretrain_seq_len: 64,
            sft: Some(stage(teacher_sft_steps, 1e-2, 4)),
            // The test's teacher must memorise its few trajectories.
            sft_name_swaps: 0,
            sft_average: 0,
            seed: 2,
        },
    }
}

/// A prepared synthetic folder named `synth` with a tiny world (3 people: 12 training
/// questions) and top-1 retrieval, so trajectories are short.
fn tiny_synth(root: &Path) -> PathBuf {
    let data = root.join("synth");
    let cfg = PrepareConfig {
        world: WorldConfig {
            people: 4,
            cities: 2,
            countries: 1,
            test_fraction: 0.25,
            ..Default::default()
        },
        vocab_size: 400,
        agent: dgpo_core::agent::AgentConfig {
            chat_template: false,
            topk: 1,
            ..Default::default()
        },
    };
    prepare(&data, &cfg).unwrap();
    data
}

fn kd_cmd(root: &Path, data: &Path, exp: &str, presets: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_train"));
    c.arg(data)
        .args(["tiny", "tiny-teacher", exp])
        .args(["--phase", "kd", "--steps", "4", "--micro-batch", "2"])
        .args([
            "--lr",
            "1e-3",
            "--save-every",
            "2",
            "--max-turn-tokens",
            "48",
        ])
        .args(["--concurrency", "2"])
        .env("EXP_ROOT", root.join("exp"))
        .env("TRAIN_PRESETS", presets)
        .env("RUST_LOG", "warn");
    c
}

/// `train synth tiny tiny-teacher <exp> --phase kd --kd-source sgo`, end to end: the presets
/// are built on first use (and reused by a second run), the student samples its own
/// trajectories (all kept, refreshed each round) and learns the teacher's distributions on
/// them, then student before/after and teacher are evaluated on the test split.
#[test]
fn kd_sgo_end_to_end_builds_presets_and_evaluates() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_synth(tmp.path());
    let presets = tmp.path().join("presets.json");
    std::fs::write(&presets, serde_json::to_string(&small_presets(2)).unwrap()).unwrap();
    let out = kd_cmd(tmp.path(), &data, "sgo", &presets)
        .args([
            "--kd-source",
            "sgo",
            "--sgo-rounds",
            "2",
            "--max-questions",
            "5",
        ])
        .args(["--eval-limit", "2"])
        .output()
        .unwrap();
    assert_success(&out);
    let root = tmp.path().join("exp");
    for p in ["tiny", "tiny-teacher"] {
        let d = root.join("presets/synth").join(p);
        assert!(
            d.join("config.json").exists() && d.join("preset.json").exists(),
            "{p}"
        );
    }
    let exp = root.join("sgo");
    for r in 0..2 {
        let rs = train::synth::prepare::read_rollouts(&exp.join(format!("sgo/round-{r}.jsonl")))
            .unwrap();
        // One trajectory per question, correct or not, each with generated tokens.
        assert_eq!(rs.len(), 5, "round {r}");
        assert!(rs.iter().all(|r| r.response_mask.contains(&1)));
    }
    let m = std::fs::read_to_string(exp.join("metrics.jsonl")).unwrap();
    let ms: Vec<serde_json::Value> = m
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ms.len(), 4);
    assert!(
        ms.iter()
            .all(|m| m["kl"].as_f64().is_some_and(|k| k >= 0.0))
    );
    assert!(exp.join("final/config.json").exists());
    // Rounds differ: the student's weights and the sampling seed change between them.
    assert_ne!(
        std::fs::read(exp.join("sgo/round-0.jsonl")).unwrap(),
        std::fs::read(exp.join("sgo/round-1.jsonl")).unwrap()
    );
    // The evaluation table names the three models.
    let stdout = String::from_utf8_lossy(&out.stdout);
    for s in ["(before KD)", "after KD (sgo)", "(teacher)"] {
        assert!(stdout.contains(s), "{s} missing from\n{stdout}");
    }
    assert!(exp.join("eval/results.json").exists());
    // A second run reuses the presets as they are.
    let w = std::fs::read(root.join("presets/synth/tiny-teacher/model.safetensors")).unwrap();
    let out = kd_cmd(tmp.path(), &data, "sgo2", &presets)
        .args(["--kd-source", "sgo", "--max-questions", "2"])
        .arg("--no-eval")
        .output()
        .unwrap();
    assert_success(&out);
    let again = std::fs::read(root.join("presets/synth/tiny-teacher/model.safetensors")).unwrap();
    assert!(again == w, "the cached teacher preset was rebuilt");

    // `train eval` hands its agent flags to the loop: with no search turn nothing is searched,
    // and the report records the settings used.
    let ev = tmp.path().join("eval-no-search");
    let out = Command::new(env!("CARGO_BIN_EXE_train"))
        .arg("eval")
        .arg(&data)
        .arg(exp.join("final"))
        .args(["--limit", "2", "--no-evidence", "--max-turns", "0"])
        .args(["--topk", "2", "--max-turn-tokens", "16", "--out"])
        .arg(&ev)
        .env("EXP_ROOT", &root)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert_success(&out);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ev.join("results.json")).unwrap()).unwrap();
    let agent = &report["config"]["agent"];
    assert_eq!(
        (
            &agent["max_turns"],
            &agent["topk"],
            &agent["max_turn_tokens"]
        ),
        (&0.into(), &2.into(), &16.into())
    );
    let overall = &report["models"][0]["overall"];
    assert_eq!(overall["n"], 2);
    assert_eq!(overall["search_steps"], 0.0);
    // A count of 0 is refused by name before anything runs.
    let out = Command::new(env!("CARGO_BIN_EXE_train"))
        .args(["eval", "synth", "tiny", "--topk", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--topk") && err.contains("must be 1 or more"),
        "{err}"
    );
}

/// TGO through the CLI with a teacher that never answers correctly: nothing to distil, said
/// plainly, and no model written. (TGO training itself is tested in tests/synth.rs with the
/// oracle as teacher: a competent teacher takes minutes to train.)
#[test]
fn kd_tgo_with_a_teacher_never_right_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_synth(tmp.path());
    let presets = tmp.path().join("presets.json");
    std::fs::write(&presets, serde_json::to_string(&small_presets(0)).unwrap()).unwrap();
    let out = kd_cmd(tmp.path(), &data, "tgo", &presets)
        .args(["--max-questions", "3"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("answered none of the 3 questions correctly"),
        "{err}"
    );
    assert!(!tmp.path().join("exp/tgo/final").exists());
}

/// A dataset row without golden answers is refused with its file and line, before training.
#[test]
fn dataset_row_without_answers_names_its_line() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("qa");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("train.jsonl"),
        concat!(
            r#"{"id":"a","question":"Who?","golden_answers":["X"],"data_source":"nq"}"#,
            "\n",
            r#"{"id":"b","question":"What?","data_source":"nq"}"#,
            "\n"
        ),
    )
    .unwrap();
    std::fs::write(
        data.join("corpus.jsonl"),
        r#"{"id":"0","contents":"\"X\"\nX is a thing."}"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_train"))
        .arg(&data)
        .arg(fixture("tiny-qwen2"))
        .arg(fixture("tiny-qwen2"))
        .arg(tmp.path().join("exp"))
        .args(["--phase", "kd"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("train.jsonl:2") && err.contains("golden_answers"),
        "{err}"
    );
    assert!(!tmp.path().join("exp").exists());
    // The same through the train file given directly.
    let out = Command::new(env!("CARGO_BIN_EXE_train"))
        .arg(data.join("train.jsonl"))
        .arg(fixture("tiny-qwen2"))
        .arg(fixture("tiny-qwen2"))
        .arg(tmp.path().join("exp"))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("train.jsonl:2"),
        "{err}"
    );
}

/// The one command (`--phase all`, the default) end to end on a tiny world with tiny presets:
/// KD (SGO, so an untrained teacher still gives data), then PPO, GRPO and DGPO with their
/// checkpoints and metrics, then every model evaluated; the report files exist and name every
/// model. A second run finds every stage done and only evaluates again.
#[test]
fn demo_runs_kd_rl_and_evaluation_then_reuses_its_stages() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_synth(tmp.path());
    let presets = tmp.path().join("presets.json");
    std::fs::write(&presets, serde_json::to_string(&small_presets(0)).unwrap()).unwrap();
    let demo_with = |exp: &str, extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_train"));
        c.arg(&data)
            .args(["tiny", "tiny-teacher", exp])
            .args(extra)
            .args(["--kd-source", "sgo", "--sgo-rounds", "1", "--steps", "2"])
            .args(["--max-questions", "3", "--micro-batch", "2"])
            .args(["--rl-steps", "2", "--questions-per-step", "2"])
            .args(["--rl-mini-batch", "2", "--group-size", "2"])
            .args(["--eval-limit", "2", "--concurrency", "2"])
            .env("EXP_ROOT", tmp.path().join("exp"))
            .env("TRAIN_PRESETS", &presets)
            .env("RUST_LOG", "warn");
        c.output().unwrap()
    };
    let demo = |exp: &str| demo_with(exp, &[]);
    let out = demo("demo");
    assert_success(&out);
    let exp = tmp.path().join("exp/demo");
    for algo in ["ppo", "grpo", "dgpo"] {
        let d = exp.join("seed-0").join(algo);
        assert!(
            d.join("final/config.json").exists(),
            "{algo}: no final model"
        );
        let lines = std::fs::read_to_string(d.join("rl_metrics.jsonl")).unwrap();
        assert_eq!(
            lines.lines().count(),
            2,
            "{algo}: one metrics line per RL step"
        );
        assert!(d.join("checkpoints").is_dir(), "{algo}: no checkpoints");
    }
    assert!(exp.join("seed-0/kd/final/config.json").exists());
    let md = std::fs::read_to_string(exp.join("demo.md")).unwrap();
    for row in [
        "student (base)",
        "student + KD",
        "student + PPO",
        "student + GRPO",
        "student + KD + DGPO",
        "teacher",
    ] {
        assert!(md.contains(row), "{row} missing from demo.md:\n{md}");
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(exp.join("demo.json")).unwrap()).unwrap();
    assert_eq!(json["models"].as_array().unwrap().len(), 6);
    let png = std::fs::read(exp.join("curves.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // The second run trains nothing: only the evaluation's stage time is recorded.
    let out = demo("demo");
    assert_success(&out);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(exp.join("demo.json")).unwrap()).unwrap();
    let stages: Vec<&String> = json["stage_secs"].as_object().unwrap().keys().collect();
    assert_eq!(stages, ["seed-0/eval"], "stages rerun: {stages:?}");
    // Its stages were trained with KD and RL on the same questions: asking for an RL hold-out
    // in the same folder is refused before anything runs, rather than mixing two experiments.
    let before = std::fs::read(exp.join("demo.json")).unwrap();
    let rerun = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_train"));
        c.arg(&data)
            .args(["tiny", "tiny-teacher", "demo", "--max-questions", "3"])
            .args(args)
            .env("EXP_ROOT", tmp.path().join("exp"))
            .env("TRAIN_PRESETS", &presets)
            .env("RUST_LOG", "warn");
        c.output().unwrap()
    };
    let out = rerun(&["--kd-source", "sgo", "--rl-holdout", "0.34"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--rl-holdout 0 (3 KD / 3 RL questions), not 0.34 (2 / 1)"),
        "{err}"
    );
    // Likewise KD on name-swapped copies: the KD students here distilled on unswapped data.
    let out = rerun(&["--kd-name-swaps", "15"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--kd-name-swaps 0, not 15"), "{err}");
    // Likewise RL on fresh people: the RL runs here trained on the training questions.
    let out = rerun(&["--kd-source", "sgo", "--rl-fresh-people", "2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--rl-fresh-people 0, not 2"), "{err}");
    let out = rerun(&["--rl-holdout", "0.34", "--rl-fresh-people", "2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("both choose RL's questions"), "{err}");
    // Same split, another β: the finished DGPO stage records its own and is not reused.
    let out = demo_with("demo", &["--teacher-kl-coef", "0.5"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("dgpo finished under other RL settings: teacher_kl_coef 1.0 (asked: 0.5)"),
        "{err}"
    );
    assert_eq!(std::fs::read(exp.join("demo.json")).unwrap(), before);

    // RL on fresh people: DGPO trains on questions about people who are not in the world
    // (two people, ten questions), and the folder records it.
    let out = demo_with("demo-fresh", &["--algos", "dgpo", "--rl-fresh-people", "2"]);
    assert_success(&out);
    let fresh = tmp.path().join("exp/demo-fresh");
    let split: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fresh.join("split.json")).unwrap()).unwrap();
    assert_eq!(split["rl_fresh_people"], 2);
    assert_eq!(split["rl_questions"], 10);
    let lines = std::fs::read_to_string(fresh.join("seed-0/dgpo/rl_metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 2);
    let st = fresh.join("seed-0/dgpo/checkpoints/step-00000002/state.json");
    let st: serde_json::Value = serde_json::from_slice(&std::fs::read(&st).unwrap()).unwrap();
    assert_eq!(st["data_len"], 10, "RL ran on the fresh questions");
}

/// Flags that cannot run are refused before the synthetic world, a preset or a model is built:
/// nothing is written under the data or experiment roots.
#[test]
fn bad_phase_and_algorithm_flags_are_refused_before_anything_is_built() {
    let tmp = tempfile::tempdir().unwrap();
    for (args, says) in [
        (
            &["--phase", "rl", "--algos", "ppo,dgpo"][..],
            "one algorithm",
        ),
        (&["--algos", "a2c"][..], "unknown RL algorithm"),
        (&["--phase", "distil"][..], "unknown --phase"),
        (&["--kd-source", "self"][..], "self"),
        (&["--phase", "rl", "--rl-mini-batch", "0"][..], "mini"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_train"))
            .args(["synth", "tiny", "tiny-teacher", "x"])
            .args(args)
            .env("DATA_ROOT", tmp.path().join("data"))
            .env("EXP_ROOT", tmp.path().join("exp"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(
            std::fs::read_dir(tmp.path()).unwrap().count(),
            0,
            "{args:?} wrote something"
        );
    }
}
