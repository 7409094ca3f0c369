//! The synthetic world: determinism, consistency of answers with the corpus, distractors,
//! retrievability with the real BM25 retriever, split hygiene, and the trained tokenizer.

use std::collections::HashSet;

use dgpo_core::corpus::load_jsonl;
use dgpo_core::protocol::user_prompt;
use dgpo_core::retrieve::{MemoryRetriever, Retriever};
use train::synth::{SPECIAL_TOKENS, World, WorldConfig, train_bpe};

fn world() -> World {
    World::generate(&WorldConfig {
        seed: 3,
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn world_is_deterministic_and_consistent() {
    let w = world();
    assert_eq!(w, world(), "same seed, same world");
    let other = World::generate(&WorldConfig {
        seed: 4,
        ..Default::default()
    })
    .unwrap();
    assert_ne!(w.people, other.people);
    assert_eq!(w.people.len(), 200);
    let tmp = tempfile::tempdir().unwrap();
    w.write(tmp.path()).unwrap();
    let corpus = load_jsonl(&tmp.path().join("corpus.jsonl")).unwrap();
    assert_eq!(corpus.len(), 200 + 24 + 6);
    assert!(
        corpus
            .iter()
            .all(|p| p.title.starts_with('"') && p.title.ends_with('"'))
    );
    // Every answer is stated in the passage the oracle's last hop must find.
    for q in w.train.iter().chain(&w.test) {
        let last = q.oracle.last().unwrap();
        let p = corpus
            .iter()
            .find(|p| p.title == format!("\"{}\"", last.title))
            .unwrap_or_else(|| panic!("{}: no passage titled {}", q.id, last.title));
        assert!(
            p.text.contains(&q.golden_answers[0]),
            "{}: {:?} not in {:?}",
            q.id,
            q.golden_answers,
            p.text
        );
    }
    // Rows follow Search-R1's schema.
    let line = std::fs::read_to_string(tmp.path().join("test.jsonl")).unwrap();
    let row: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    let mut keys: Vec<&str> = row
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(keys, ["data_source", "golden_answers", "id", "question"]);
    let sources: HashSet<&str> = w.test.iter().map(|q| q.data_source.as_str()).collect();
    assert_eq!(sources, HashSet::from(["synth-nq", "synth-hotpot"]));
}

#[test]
fn distractors_share_family_names_and_splits_are_disjoint() {
    let w = world();
    let distractors: Vec<_> = w.people.iter().filter(|p| p.distractor).collect();
    assert!(distractors.len() >= 40, "{} distractors", distractors.len());
    for d in &distractors {
        let fam = d.name.split(' ').nth(1).unwrap();
        let twins = w
            .people
            .iter()
            .filter(|p| p.name != d.name && p.name.ends_with(&format!(" {fam}")))
            .count();
        assert!(twins >= 1, "{} has no namesake", d.name);
    }
    let about = |qs: &[train::synth::world::Question]| -> HashSet<String> {
        qs.iter()
            .filter_map(|q| {
                q.question
                    .strip_prefix("Where was ")
                    .and_then(|s| s.strip_suffix(" born?"))
            })
            .filter(|s| !s.starts_with("the mentor of"))
            .map(String::from)
            .collect()
    };
    let (tr, te) = (about(&w.train), about(&w.test));
    assert_eq!(te.len(), 40);
    assert!(
        tr.is_disjoint(&te),
        "a person is asked about in both splits"
    );
}

#[test]
fn oracle_queries_find_their_passages_with_bm25() {
    let w = world();
    let r = MemoryRetriever::new(w.passages());
    let (mut found, mut total) = (0, 0);
    for q in &w.test {
        for hop in &q.oracle {
            let hits = r.search(&hop.query, 3).unwrap();
            total += 1;
            if hits
                .iter()
                .any(|h| h.passage.title == format!("\"{}\"", hop.title))
            {
                found += 1;
            }
        }
    }
    let rate = found as f64 / total as f64;
    eprintln!("oracle hops retrieved in top-3 by BM25: {found}/{total} = {rate:.3}");
    assert!(rate > 0.95, "{rate}");
}

#[test]
fn bpe_tokenizer_trains_on_the_corpus() {
    let w = world();
    let tmp = tempfile::tempdir().unwrap();
    let texts: Vec<String> = w
        .passages()
        .iter()
        .map(|p| p.contents())
        .chain(w.train.iter().map(|q| user_prompt(&q.question)))
        .collect();
    let out = tmp.path().join("tokenizer.json");
    let tok = train_bpe(&texts, 1024, &out).unwrap();
    assert!(tok.get_vocab_size(true) <= 1024 && tok.get_vocab_size(true) > 600);
    for (i, s) in SPECIAL_TOKENS.iter().enumerate() {
        assert_eq!(tok.token_to_id(s), Some(i as u32), "{s}");
    }
    // The file loads in core, and text (prompt, tags, UTF-8) round-trips exactly.
    let core = dgpo_core::tokenizer::Tokenizer::from_file(&out).unwrap();
    let text = format!(
        "{}<|im_end|> <search> Kalo Renta </search> héllo",
        user_prompt(&w.test[0].question)
    );
    let enc = core.encode(text.as_str(), false).unwrap();
    assert_eq!(core.decode(enc.get_ids(), false).unwrap(), text);
    assert!(
        enc.get_ids().contains(&2),
        "<|im_end|> is one special token"
    );
    // A corpus-trained BPE compresses its own corpus well below a byte per token.
    let p = &texts[0];
    let n = tok.encode(p.as_str(), false).unwrap().get_ids().len();
    assert!(n * 3 < p.len(), "{n} tokens for {} bytes", p.len());
    assert!(train_bpe(&texts, 100, &out).is_err());
}

/// Oracle trajectories come out of core's real agent loop over the real BM25 index: the right
/// answer, one executed search per oracle hop, `<information>` blocks masked out of the
/// learnt tokens, and token ids that become training examples without re-tokenising.
#[test]
fn oracle_plays_the_real_agent_loop() {
    use dgpo_core::agent::{Agent, AgentConfig};
    use dgpo_core::trace::StepAction;
    use train::synth::oracle::OracleModel;
    use train::trainer::Example;

    let w = world();
    let tmp = tempfile::tempdir().unwrap();
    let texts: Vec<String> = w
        .passages()
        .iter()
        .map(|p| p.contents())
        .chain(w.train.iter().map(|q| user_prompt(&q.question)))
        .collect();
    let inner = train_bpe(&texts, 1024, &tmp.path().join("tokenizer.json")).unwrap();
    let tok = dgpo_core::tokenizer::Tokenizer::new(inner, vec![2], None, false);
    let r = MemoryRetriever::new(w.passages());
    let cfg = AgentConfig {
        chat_template: false,
        ..Default::default()
    };
    let mut correct = 0;
    let qs: Vec<_> = w.test.iter().take(30).collect();
    for q in &qs {
        let m = OracleModel::new(tok.clone(), q).unwrap();
        let agent = Agent::new(&m, &r, cfg.clone());
        let (trace, rollout) = agent.run_with(&q.question, &mut |_| {}, &|| false).unwrap();
        let searches = trace
            .steps
            .iter()
            .filter(|s| matches!(&s.action, StepAction::Search { executed: true, .. }))
            .count();
        assert_eq!(searches, q.oracle.len(), "{}: {:?}", q.id, trace.steps);
        if trace.answer.as_deref() == Some(q.golden_answers[0].as_str()) {
            correct += 1;
        }
        let response = tok.decode(&rollout.response_ids).unwrap();
        assert!(
            response.contains("<information>Doc 1(Title: \""),
            "{response}"
        );
        let learnt: Vec<u32> = rollout
            .response_ids
            .iter()
            .zip(&rollout.response_mask)
            .filter(|(_, m)| **m == 1)
            .map(|(t, _)| *t)
            .collect();
        let learnt = tok.decode(&learnt).unwrap();
        assert!(
            !learnt.contains("Doc 1"),
            "observation tokens leaked into the learnt mask"
        );
        assert!(learnt.contains(&format!("<answer> {} </answer>", q.golden_answers[0])));
        let e = Example::from_rollout(&rollout).unwrap();
        assert_eq!(
            e.ids.len(),
            rollout.prompt_ids.len() + rollout.response_ids.len()
        );
    }
    assert_eq!(correct, qs.len());
}

/// SFT of a freshly initialised tiny Qwen2 on 64 oracle trajectories: the masked cross-entropy
/// of the learnt (think/search/answer) tokens falls from ln(1024) ≈ 6.9 below a stated bound.
#[test]
fn sft_on_64_oracle_trajectories_reaches_bound() {
    use dgpo_core::agent::AgentConfig;
    use dgpo_core::model::decoder::{Arch, DecoderConfig, RopeStyle};
    use train::model::{ModelOptions, TrainModel, config_json};
    use train::optim::{AdamWConfig, Decay, Schedule};
    use train::synth::oracle::oracle_rollouts;
    use train::trainer::{Example, TrainConfig, Trainer};

    let w = world();
    let tmp = tempfile::tempdir().unwrap();
    let texts: Vec<String> = w
        .passages()
        .iter()
        .map(|p| p.contents())
        .chain(w.train.iter().map(|q| user_prompt(&q.question)))
        .collect();
    let tp = tmp.path().join("tokenizer.json");
    let inner = train_bpe(&texts, 1024, &tp).unwrap();
    let vocab = inner.get_vocab_size(true);
    let tok = dgpo_core::tokenizer::Tokenizer::new(inner, vec![2], None, false);
    let r = MemoryRetriever::new(w.passages());
    let cfg = AgentConfig {
        chat_template: false,
        ..Default::default()
    };
    let rollouts = oracle_rollouts(&tok, &r, &w.train[..70], &cfg).unwrap();
    let data: Vec<Example> = rollouts
        .iter()
        .take(64)
        .map(|r| Example::from_rollout(r).unwrap())
        .collect();
    assert_eq!(data.len(), 64);
    let dc = DecoderConfig {
        arch: Arch::Qwen2,
        vocab_size: vocab,
        hidden_size: 64,
        intermediate_size: 128,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 16,
        max_position: 1024,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-6,
        tie_embeddings: true,
        attention_bias: true,
        rope_style: RopeStyle::Half,
        rope_scaling: None,
    };
    let m = TrainModel::new_random(
        dc.clone(),
        config_json(&dc, None, Some(2)),
        std::fs::read(&tp).unwrap(),
        &ModelOptions::default(),
    )
    .unwrap();
    let steps = 40;
    let tc = TrainConfig {
        schedule: Schedule::with_ratio(1e-2, 0.1, steps, Decay::Cosine { min_ratio: 0.1 }),
        adamw: AdamWConfig::default(),
        micro_batch: 2,
        grad_accum: 1,
        max_grad_norm: 1.0,
        seed: 1,
        alpha: 1.0,
        save_every: 0,
        keep_last: 1,
        threads: 1,
        gradient_checkpointing: false,
    };
    let t0 = std::time::Instant::now();
    let mut t = Trainer::new(&m, None, &data, tc, &tmp.path().join("exp"), 0).unwrap();
    let ms = t.run(steps).unwrap();
    let first = ms[0].loss;
    let last = ms[steps - 5..].iter().map(|m| m.loss).sum::<f64>() / 5.0;
    eprintln!(
        "SFT on 64 oracle trajectories: loss {first:.3} -> {last:.3} in {steps} steps ({:.1} s)",
        t0.elapsed().as_secs_f64()
    );
    assert!(first > 6.0, "{first}");
    assert!(last < 2.0, "{last}");
}

/// The dataset folder is built once, step by step, and reused; a deleted step is rebuilt alone
/// and identically.
#[test]
fn prepare_builds_once_and_caches_each_step() {
    use train::synth::WorldConfig;
    use train::synth::prepare::{PrepareConfig, prepare, read_rollouts};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("synth");
    let cfg = PrepareConfig {
        world: WorldConfig {
            people: 24,
            cities: 6,
            countries: 2,
            ..Default::default()
        },
        vocab_size: 600,
        ..Default::default()
    };
    let p = prepare(&dir, &cfg).unwrap();
    assert_eq!(
        p.built,
        [
            "corpus.jsonl",
            "train.jsonl",
            "test.jsonl",
            "tokenizer.json",
            "trajectories.jsonl"
        ]
    );
    let traj = std::fs::read(p.trajectories()).unwrap();
    let rs = read_rollouts(&p.trajectories()).unwrap();
    // 24 people × 5 questions, 80 % in train; the oracle misses only on retrieval failures.
    assert!(
        rs.len() >= 90 && rs.len() <= 95,
        "{} trajectories",
        rs.len()
    );
    assert!(
        rs.iter()
            .all(|r| r.response_mask.contains(&0) && r.response_mask.contains(&1))
    );
    assert!(
        prepare(&dir, &cfg).unwrap().built.is_empty(),
        "second call must reuse everything"
    );
    std::fs::remove_file(p.trajectories()).unwrap();
    assert_eq!(prepare(&dir, &cfg).unwrap().built, ["trajectories.jsonl"]);
    assert_eq!(
        std::fs::read(p.trajectories()).unwrap(),
        traj,
        "rebuilt step differs"
    );
    // A corrupt line is reported with its number.
    std::fs::write(p.trajectories(), "{\"prompt_ids\":[1]}\n").unwrap();
    let e = read_rollouts(&p.trajectories()).unwrap_err().to_string();
    assert!(e.contains("trajectories.jsonl:1"), "{e}");
}

/// Cold-start data: the teacher plays the real agent loop and only exactly-correct
/// trajectories are kept; a student with another vocabulary is refused before generation.
#[test]
fn teacher_trajectories_keep_only_correct_answers() {
    use dgpo_core::agent::AgentConfig;
    use train::data::QaRow;
    use train::phases::collect_correct;
    use train::synth::oracle::OracleModel;
    let w = world();
    let tmp = tempfile::tempdir().unwrap();
    let texts: Vec<String> = w.passages().iter().map(|p| p.contents()).collect();
    let inner = train_bpe(&texts, 800, &tmp.path().join("t.json")).unwrap();
    let tok = dgpo_core::tokenizer::Tokenizer::new(inner, vec![2], None, false);
    let r = MemoryRetriever::new(w.passages());
    let cfg = AgentConfig {
        chat_template: false,
        ..Default::default()
    };
    // The oracle of one question plays the "teacher"; asked its own question it is right, and
    // with the golden answer changed it is wrong and must be dropped.
    let q = &w.test[0];
    let teacher = OracleModel::new(tok.clone(), q).unwrap();
    let row = |answers: Vec<String>| QaRow {
        id: q.id.clone(),
        question: q.question.clone(),
        golden_answers: answers,
        data_source: q.data_source.clone(),
    };
    let rows = vec![
        row(q.golden_answers.clone()),
        row(vec!["somewhere else".into()]),
        row(vec![format!("The {}!", q.golden_answers[0].to_lowercase())]),
    ];
    let c = collect_correct(&teacher, &r, &rows, &cfg, Some(tok.vocab_size())).unwrap();
    assert_eq!((c.tried, c.examples.len()), (3, 2));
    let e = collect_correct(&teacher, &r, &rows, &cfg, Some(tok.vocab_size() + 1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("vocabulary"), "{e}");
}

/// A tiny world folder (4 people) with top-1 retrieval, for the pipeline tests below.
fn tiny_prepared(dir: &std::path::Path) -> train::synth::prepare::Prepared {
    use train::synth::prepare::{PrepareConfig, prepare};
    prepare(
        dir,
        &PrepareConfig {
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
        },
    )
    .unwrap()
}

fn tiny_model(
    tok_path: &std::path::Path,
    hidden: usize,
    layers: usize,
    seed: u64,
) -> train::TrainModel {
    use train::model::{ModelOptions, TrainModel, config_json};
    use train::presets::Shape;
    let tok = train::synth::prepare::load_tokenizer(tok_path).unwrap();
    let dc = Shape {
        hidden,
        intermediate: 2 * hidden,
        layers,
        heads: 2,
        kv_heads: 1,
    }
    .decoder(tok.vocab_size());
    TrainModel::new_random(
        dc.clone(),
        config_json(&dc, None, Some(2)),
        std::fs::read(tok_path).unwrap(),
        &ModelOptions {
            seed,
            ..Default::default()
        },
    )
    .unwrap()
}

/// TGO cold-start KD through the library with the oracle as the generating teacher: the
/// trajectories kept are exactly the correct ones (a question whose golden answer was changed
/// is dropped), they are cached for `resume`, and the student's forward KL to the teacher's
/// distributions falls.
#[test]
fn kd_tgo_keeps_correct_teacher_trajectories_and_lowers_kl() {
    use train::data::QaRow;
    use train::optim::{AdamWConfig, Decay, Schedule};
    use train::phases::{KdConfig, KdSource, TGO_FILE, run_kd_models};
    use train::synth::oracle::OracleModel;
    use train::synth::prepare::read_rollouts;
    use train::trainer::TrainConfig;

    let tmp = tempfile::tempdir().unwrap();
    let p = tiny_prepared(&tmp.path().join("synth"));
    let w = World::generate(&WorldConfig {
        people: 4,
        cities: 2,
        countries: 1,
        test_fraction: 0.25,
        ..Default::default()
    })
    .unwrap();
    let tok = train::synth::prepare::load_tokenizer(&p.tokenizer()).unwrap();
    let oracle = OracleModel::for_questions(tok.clone(), &w.train).unwrap();
    let retriever = MemoryRetriever::from_jsonl(&p.corpus()).unwrap();
    let mut qs: Vec<QaRow> = w
        .train
        .iter()
        .take(6)
        .map(|q| QaRow {
            id: q.id.clone(),
            question: q.question.clone(),
            golden_answers: q.golden_answers.clone(),
            data_source: q.data_source.clone(),
        })
        .collect();
    qs[1].golden_answers = vec!["nobody knows".into()];
    let student = tiny_model(&p.tokenizer(), 32, 1, 1);
    let teacher = tiny_model(&p.tokenizer(), 48, 2, 2);
    let steps = 12;
    let cfg = KdConfig {
        train: TrainConfig {
            schedule: Schedule::with_ratio(1e-2, 0.0, steps, Decay::Constant),
            adamw: AdamWConfig::default(),
            micro_batch: 2,
            grad_accum: 1,
            max_grad_norm: 1.0,
            seed: 0,
            alpha: 1.0,
            save_every: 0,
            keep_last: 1,
            threads: 1,
            gradient_checkpointing: false,
        },
        source: KdSource::Tgo,
        agent: dgpo_core::agent::AgentConfig {
            chat_template: false,
            topk: 1,
            ..Default::default()
        },
        sgo_rounds: 1,
        concurrency: 2,
        resume: false,
        name_swaps: None,
        placement: Default::default(),
    };
    let exp = tmp.path().join("exp");
    let out = run_kd_models(
        &student,
        Some(&oracle),
        Some(&teacher),
        &qs,
        &retriever,
        &exp,
        &cfg,
    )
    .unwrap();
    assert_eq!((out.tried, out.kept), (6, 5), "question 1 must be dropped");
    let kept = read_rollouts(&exp.join(TGO_FILE)).unwrap();
    assert_eq!(kept.len(), 5);
    let first = out.metrics[0].kl.unwrap();
    let last = out.metrics.last().unwrap().kl.unwrap();
    assert!(last < first * 0.9, "forward KL {first} -> {last}");
    assert!(out.final_dir.join("model.safetensors").exists());
    // Resuming a finished run reuses the cached trajectories without any teacher policy.
    let again = run_kd_models(
        &student,
        None,
        Some(&teacher),
        &qs,
        &retriever,
        &exp,
        &KdConfig {
            resume: true,
            ..cfg.clone()
        },
    )
    .unwrap();
    assert_eq!((again.tried, again.kept, again.metrics.len()), (0, 5, 0));

    // Name-swapped KD: the same 5 trajectories, 2 swapped copies each, the teacher scored on
    // the swapped text; the forward KL still falls.
    use train::phases::kd_examples;
    use train::synth::name_swap::{NameSwap, SwapCopies};
    let swap = NameSwap::for_data_folder(&p.dir, &tok).unwrap();
    let sw = SwapCopies { swap, copies: 2 };
    let plain = kd_examples(&kept, None, 0).unwrap();
    let swapped = kd_examples(&kept, Some(&sw), 0).unwrap();
    assert_eq!(swapped.len(), 10);
    assert_ne!(&swapped[..5], &plain[..], "the first copy must swap names");
    for (x, r) in swapped.iter().zip(kept.iter().cycle()) {
        let n = |ids: &[u32]| sw.swap.count(ids);
        assert_eq!(n(&x.ids), n(&r.prompt_ids) + n(&r.response_ids));
    }
    let exp2 = tmp.path().join("exp-swap");
    std::fs::create_dir_all(&exp2).unwrap();
    std::fs::copy(exp.join(TGO_FILE), exp2.join(TGO_FILE)).unwrap();
    let swapped_cfg = KdConfig {
        resume: true,
        name_swaps: Some(sw.clone()),
        ..cfg.clone()
    };
    let student2 = tiny_model(&p.tokenizer(), 32, 1, 1);
    // The swapped runs reuse cached trajectories: no teacher policy.
    let kd = |exp: &std::path::Path, cfg: &KdConfig| {
        run_kd_models(&student2, None, Some(&teacher), &qs, &retriever, exp, cfg)
    };
    let out = kd(&exp2, &swapped_cfg).unwrap();
    assert_eq!((out.kept, out.metrics.len()), (5, steps));
    let first = out.metrics[0].kl.unwrap();
    let last = out.metrics.last().unwrap().kl.unwrap();
    assert!(
        last < first * 0.9,
        "forward KL on swapped copies {first} -> {last}"
    );
    // Names from another world would swap nothing: refused, naming the trajectories.
    let alien = NameSwap::new(&tok, &["Qqq Zzz".to_string()]).unwrap();
    let e = kd(
        &exp2,
        &KdConfig {
            name_swaps: Some(SwapCopies {
                swap: alien,
                copies: 2,
            }),
            ..swapped_cfg.clone()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(TGO_FILE) && e.contains("no swappable name"),
        "{e}"
    );
    // SGO distils the student's own samples: swaps are refused before anything is touched.
    let ckpts = exp.join("checkpoints");
    let had = ckpts.exists();
    let e = kd(
        &exp,
        &KdConfig {
            source: KdSource::Sgo,
            resume: false,
            ..swapped_cfg
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("name swaps apply to the teacher's trajectories"),
        "{e}"
    );
    assert_eq!(ckpts.exists(), had);
}

/// Presets: built once from a prepared folder (pretraining lowers the loss; the teacher also
/// fine-tunes on the oracle trajectories), reused as they are, rebuilt when their settings
/// change; names resolve, unknown ones are refused with what was tried.
#[test]
fn presets_build_once_and_resolve() {
    use train::presets::{
        PresetConfig, PresetSpec, Shape, Stage, build_preset, resolve_model_with,
    };
    let tmp = tempfile::tempdir().unwrap();
    let p = tiny_prepared(&tmp.path().join("synth"));
    let stage = |steps| Stage {
        steps,
        lr: 1e-2,
        micro_batch: 4,
        save_every: 3,
    };
    let spec = |hidden, sft: Option<Stage>, sft_name_swaps| PresetSpec {
        shape: Shape {
            hidden,
            intermediate: 2 * hidden,
            layers: 1,
            heads: 2,
            kv_heads: 1,
        },
        pretrain: stage(8),
        pretrain_seq_len: 64,
        sft,
        sft_name_swaps,
        sft_average: 0,
        seed: 1,
    };
    let mut cfg = PresetConfig {
        tiny: spec(32, None, 0),
        // The teacher fine-tunes on name-swapped copies (the demo's setting).
        teacher: spec(48, Some(stage(3)), 2),
    };
    let roots = tmp.path().join("exp");
    let dir = build_preset("tiny", &p.dir, &roots, &cfg).unwrap();
    assert_eq!(dir, roots.join("presets/synth/tiny"));
    let log = roots.join("presets/synth/.work/tiny/pretrain/metrics.jsonl");
    let ms = train::checkpoint::MetricsLog::read(&log).unwrap();
    assert_eq!(ms.len(), 8);
    assert!(
        ms[7].loss < ms[0].loss - 0.3,
        "{} -> {}",
        ms[0].loss,
        ms[7].loss
    );
    // The preset loads in core as an inference model with the synth tokenizer's vocabulary.
    let m = dgpo_core::model::load(&dir, &Default::default()).unwrap();
    assert_eq!(m.info().vocab_size, 400.min(m.tokenizer().vocab_size()));
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    // Reused: same folder, same bytes, no new training steps.
    let again = resolve_model_with("tiny", &p.dir, &roots, &cfg).unwrap();
    assert_eq!(again, dir);
    assert_eq!(std::fs::read(dir.join("model.safetensors")).unwrap(), bytes);
    assert_eq!(train::checkpoint::MetricsLog::read(&log).unwrap().len(), 8);
    // The teacher: pretraining then SFT.
    let t = build_preset("tiny-teacher", &p.dir, &roots, &cfg).unwrap();
    let sft = roots.join("presets/synth/.work/tiny-teacher/sft/metrics.jsonl");
    assert_eq!(train::checkpoint::MetricsLog::read(&sft).unwrap().len(), 3);
    assert!(t.join("preset.json").exists());
    // Averaged: the preset is the mean of the weights after updates 2 and 4.
    cfg.teacher.sft = Some(Stage {
        save_every: 2,
        ..stage(4)
    });
    cfg.teacher.sft_average = 2;
    let t = build_preset("tiny-teacher", &p.dir, &roots, &cfg).unwrap();
    let work = roots.join("presets/synth/.work/tiny-teacher/sft");
    let weights = |d: &std::path::Path| {
        let m = train::model::TrainModel::load(d, &Default::default()).unwrap();
        m.named_vars()
            .into_iter()
            .map(|(n, v)| {
                let w = v
                    .as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                (n, w)
            })
            .collect::<Vec<_>>()
    };
    let (kept, w2, w4) = (
        weights(&t),
        weights(&work.join("snapshots/step-00000002")),
        weights(&work.join("snapshots/step-00000004")),
    );
    assert_ne!(w2, w4);
    for ((name, k), ((_, a), (_, b))) in kept.iter().zip(w2.iter().zip(&w4)) {
        for ((k, a), b) in k.iter().zip(a).zip(b) {
            let mean = (*a as f64 + *b as f64) / 2.0;
            assert!(
                (*k as f64 - mean).abs() < 1e-6,
                "{name}: {k} is not the mean of {a} and {b}"
            );
        }
    }
    // An average the stage cannot give is refused by name.
    cfg.teacher.sft_average = 3;
    let e = build_preset("tiny-teacher", &p.dir, &roots, &cfg)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("last 3 checkpoints of 4 updates saved every 2"),
        "{e}"
    );
    // Other settings: rebuilt.
    cfg.tiny.pretrain.steps = 4;
    build_preset("tiny", &p.dir, &roots, &cfg).unwrap();
    assert_eq!(train::checkpoint::MetricsLog::read(&log).unwrap().len(), 4);
    assert_ne!(std::fs::read(dir.join("model.safetensors")).unwrap(), bytes);
    // Paths resolve as themselves; unknown names are refused.
    assert_eq!(
        resolve_model_with(dir.to_str().unwrap(), &p.dir, &roots, &cfg).unwrap(),
        dir
    );
    let e = resolve_model_with("no-such/model-here", &p.dir, &roots, &cfg)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tiny-teacher") && e.contains("Hugging Face"),
        "{e}"
    );
}

/// The teacher's fine-tuning data with name swaps: `swaps` copies of the trajectories, each
/// with the same mask layout as its original and the asked person renamed in most; without the
/// world they were prepared from the swap is refused by name rather than silently skipped.
#[test]
fn name_swapped_sft_examples_need_their_world() {
    use train::presets::{sft_examples, trajectory_examples};
    let tmp = tempfile::tempdir().unwrap();
    let p = tiny_prepared(&tmp.path().join("synth"));
    let tok = train::synth::prepare::load_tokenizer(&p.tokenizer()).unwrap();
    let plain = trajectory_examples(&p.dir).unwrap();
    assert_eq!(sft_examples(&p.dir, &tok, 0, 1).unwrap(), plain);
    let swapped = sft_examples(&p.dir, &tok, 3, 1).unwrap();
    assert_eq!(swapped.len(), 3 * plain.len());
    let renamed = swapped
        .iter()
        .zip(plain.iter().cycle())
        .filter(|(s, o)| s.ids != o.ids)
        .count();
    // 3 training people: a question keeps its person with probability 1/3.
    assert!(
        renamed >= swapped.len() / 3,
        "{renamed} of {}",
        swapped.len()
    );
    for (s, o) in swapped.iter().zip(plain.iter().cycle()) {
        // The swap never moves a boundary between learnt and observation tokens.
        let runs = |l: &[bool]| l.windows(2).filter(|w| w[0] != w[1]).count();
        assert_eq!(runs(&s.learn), runs(&o.learn));
    }
    std::fs::remove_file(p.dir.join("world.json")).unwrap();
    let e = sft_examples(&p.dir, &tok, 3, 1).unwrap_err().to_string();
    assert!(e.contains("world.json"), "{e}");
}
