//! The one-command replication: cold-start KD, then PPO, GRPO and DGPO on the same code, then
//! the evaluation of every model on the test split, over one or more seeds.
//!
//! Which model starts where follows the paper's Table 1: PPO and GRPO are Search-R1's recipes
//! run directly on the base student; DGPO starts from the KD student (its cold start) and uses
//! the teacher as the reference of its selective KL penalty. Every stage is cached in the
//! experiment folder (`seed-<s>/kd/final`, `seed-<s>/<algo>/final`), so a rerun only does what
//! is missing. With [`DemoConfig::rl_holdout`] > 0 the KD stage distils on the first training
//! questions and every RL run trains on the held-out rest; with a positive
//! [`DemoConfig::rl_fresh_people`] every RL run trains on fresh people instead (see
//! [`crate::synth::fresh`]). `split.json` records the split, and a folder made with another
//! split is refused rather than reused; a finished RL stage is reused only if its newest
//! checkpoint records the settings asked for.
//!
//! Output in the experiment folder: `demo.md` (EM per model and data source, mean ± half-range
//! over seeds, with the ARCap columns of the first seed), `demo.json` (everything),
//! `curves.png` (reward and KL per algorithm, first seed) and each stage's own metrics.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use dgpo_core::eval::EvalReport;
use dgpo_core::retrieve::{MemoryRetriever, Retriever};
use dgpo_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{TrainState, list_checkpoints};
use crate::data::QaRow;
use crate::evaluate::{EvalOptions, evaluate_models, write_report};
use crate::model::{ModelOptions, TrainModel};
use crate::phases::{KdConfig, KdSource, TGO_FILE, run_kd, split_rl_holdout};
use crate::rl::{Algo, RlConfig, RlMetrics, read_metrics, train_rl};
use crate::synth::fresh::fresh_environment;

/// Settings of the whole run.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Dataset folder (`train`/`test` questions and `corpus.jsonl`).
    pub data_dir: PathBuf,
    /// The base student (HF folder).
    pub student: PathBuf,
    /// The teacher (HF folder).
    pub teacher: PathBuf,
    /// Experiment folder.
    pub exp_dir: PathBuf,
    /// Seeds: the KD and RL stages run once per seed.
    pub seeds: Vec<u64>,
    /// The KD stage (its `train.seed` is replaced by each seed). The RL stages train where KD
    /// did, on `kd.placement`.
    pub kd: KdConfig,
    /// The RL stages (`algo` and `seed` are set per run).
    pub rl: RlConfig,
    /// Algorithms to run.
    pub algos: Vec<Algo>,
    /// Evaluation of every model.
    pub eval: EvalOptions,
    /// Fraction of the training questions (the last ones) kept for RL alone: KD never sees
    /// them (see [`split_rl_holdout`]). 0: both phases on every question, as in the paper.
    pub rl_holdout: f64,
    /// RL on this many fresh people instead of the training questions (a synthetic folder's
    /// world only; see [`crate::synth::fresh`]): each seed draws its own, shared by that seed's
    /// algorithms. 0: RL on the training questions, as in the paper.
    pub rl_fresh_people: usize,
}

/// One model's EM on one data source, over seeds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cell {
    /// EM per seed (one value for seed-independent models: base and teacher).
    pub per_seed: Vec<f64>,
    /// Mean.
    pub mean: f64,
    /// Half the range (max − min) / 2.
    pub spread: f64,
}

impl Cell {
    fn of(per_seed: Vec<f64>) -> Cell {
        let n = per_seed.len().max(1) as f64;
        let mean = per_seed.iter().sum::<f64>() / n;
        let (lo, hi) = per_seed
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &x| {
                (l.min(x), h.max(x))
            });
        let spread = if per_seed.is_empty() {
            0.0
        } else {
            (hi - lo) / 2.0
        };
        Cell {
            per_seed,
            mean,
            spread,
        }
    }
}

/// What the run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoReport {
    /// Model rows in table order: base, KD, PPO, GRPO, DGPO, teacher (those that ran).
    pub models: Vec<String>,
    /// Data sources (columns), then `all`.
    pub sources: Vec<String>,
    /// EM by model, then by source.
    pub em: BTreeMap<String, BTreeMap<String, Cell>>,
    /// Wall time of each stage, seconds, by `seed-<s>/<stage>`.
    pub stage_secs: BTreeMap<String, f64>,
    /// Wall time of the whole call.
    pub total_secs: f64,
    /// The first seed's full evaluation (ARCap included).
    pub first_eval: EvalReport,
}

fn algo_name(a: Algo) -> &'static str {
    match a {
        Algo::Dgpo => "dgpo",
        Algo::Ppo => "ppo",
        Algo::Grpo => "grpo",
    }
}

/// The display name of each row.
fn row_name(stage: &str) -> String {
    match stage {
        "base" => "student (base)".into(),
        "kd" => "student + KD".into(),
        "ppo" => "student + PPO".into(),
        "grpo" => "student + GRPO".into(),
        "dgpo" => "student + KD + DGPO".into(),
        "teacher" => "teacher".into(),
        o => o.into(),
    }
}

/// Greedy TGO generation is the same for every seed (same teacher, questions and retriever):
/// seeds after the first reuse the first seed's teacher trajectories instead of generating them
/// again (with 4,000 training questions that generation is ~7 min on two cores). The copy goes
/// through a temporary file, so an interrupted copy is never mistaken for a finished cache.
fn share_teacher_trajectories(cfg: &DemoConfig, kd_dir: &Path) -> Result<()> {
    let greedy = cfg.kd.agent.sampling.temperature <= 0.0;
    if cfg.kd.source != KdSource::Tgo || !greedy || !cfg.kd.resume {
        return Ok(());
    }
    let first = cfg
        .exp_dir
        .join(format!("seed-{}", cfg.seeds[0]))
        .join("kd")
        .join(TGO_FILE);
    let dst = kd_dir.join(TGO_FILE);
    if dst.exists() || !first.exists() || first == dst {
        return Ok(());
    }
    std::fs::create_dir_all(kd_dir).map_err(|e| Error::io(kd_dir, e))?;
    let tmp = dst.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::copy(&first, &tmp).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))?;
    tracing::info!(from = %first.display(), "reusing the first seed's teacher trajectories");
    Ok(())
}

/// The question split an experiment folder was made with, as `split.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Split {
    rl_holdout: f64,
    kd_questions: usize,
    rl_questions: usize,
    /// Name-swapped copies the KD stage distils on (0: none; absent in folders made before
    /// KD swapped names, which distilled on the trajectories as they are).
    #[serde(default)]
    kd_name_swaps: usize,
    /// Fresh people RL trains on (0: the training questions; absent in folders made before
    /// the option, which trained RL on the training questions).
    #[serde(default)]
    rl_fresh_people: usize,
}

const SPLIT_FILE: &str = "split.json";

/// Record the question split in `exp_dir`, or refuse one that differs from the recorded one:
/// the cached stages (KD students, RL runs) were trained on the recorded split, and reusing them
/// under another would silently mix two experiments.
fn check_split(exp_dir: &Path, want: &Split) -> Result<()> {
    let path = exp_dir.join(SPLIT_FILE);
    if path.exists() {
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let had: Split = serde_json::from_str(&text)
            .map_err(|e| Error::format(&path, format!("not a question split: {e}")))?;
        if had.kd_name_swaps != want.kd_name_swaps {
            return Err(Error::invalid(format!(
                "{} was made with --kd-name-swaps {}, not {}: its cached KD students \
                 distilled on other data; use another experiment name",
                exp_dir.display(),
                had.kd_name_swaps,
                want.kd_name_swaps
            )));
        }
        if had.rl_fresh_people != want.rl_fresh_people {
            return Err(Error::invalid(format!(
                "{} was made with --rl-fresh-people {}, not {}: its cached RL runs trained on \
                 other questions; use another experiment name",
                exp_dir.display(),
                had.rl_fresh_people,
                want.rl_fresh_people
            )));
        }
        if had != *want {
            return Err(Error::invalid(format!(
                "{} was made with --rl-holdout {} ({} KD / {} RL questions), not {} ({} / {}): \
                 its cached stages belong to that split; use another experiment name",
                exp_dir.display(),
                had.rl_holdout,
                had.kd_questions,
                had.rl_questions,
                want.rl_holdout,
                want.kd_questions,
                want.rl_questions
            )));
        }
        return Ok(());
    }
    let json = serde_json::to_vec_pretty(want).map_err(|e| Error::invalid(e.to_string()))?;
    write_atomic(&path, &json)
}

/// RL settings that do not change what a run learns: checkpoint bookkeeping and thread counts.
const RL_BOOKKEEPING: &[&str] = &[
    "keep_last",
    "save_every",
    "stop_after",
    "rollout_threads",
    "update_threads",
    // Memory against compute: the same gradients.
    "gradient_checkpointing",
];

/// Refuse to reuse the finished RL stage in `dir` when its newest checkpoint records other
/// settings than `want` (a stage from before a default changed would otherwise stand in the
/// table under the new default). Settings the recorded run lacks (added since) and settings the
/// algorithm does not read (β outside DGPO, the initial-student KL weight in DGPO) are not
/// compared; a stage without checkpoints cannot be checked and is reused with a warning.
fn check_finished_stage(dir: &Path, want: &RlConfig) -> Result<()> {
    let Some((_, newest)) = list_checkpoints(dir)?.pop() else {
        tracing::warn!(dir = %dir.display(), "finished RL stage without checkpoints: its settings are not checked");
        return Ok(());
    };
    let sp = newest.join("state.json");
    let text = std::fs::read_to_string(&sp).map_err(|e| Error::io(&sp, e))?;
    let st: TrainState = serde_json::from_str(&text)
        .map_err(|e| Error::format(&sp, format!("not a checkpoint state: {e}")))?;
    let had = st
        .config
        .get("rl")
        .and_then(|v| v.as_object())
        .ok_or_else(|| Error::format(&sp, "state.json records no RL settings (config.rl)"))?;
    let want_v = serde_json::to_value(want).map_err(|e| Error::invalid(e.to_string()))?;
    let unread = if want.algo == Algo::Dgpo {
        "kl_coef"
    } else {
        "teacher_kl_coef"
    };
    let mut diffs = Vec::new();
    for (k, v) in want_v.as_object().into_iter().flatten() {
        if RL_BOOKKEEPING.contains(&k.as_str()) || k == unread {
            continue;
        }
        if let Some(h) = had.get(k)
            && h != v
        {
            diffs.push(format!("{k} {h} (asked: {v})"));
        }
    }
    if diffs.is_empty() {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "{} finished under other RL settings: {}; use another experiment name (or remove the stage to run it again)",
        dir.display(),
        diffs.join(", ")
    )))
}

/// Run everything that is missing, evaluate, and write the report files.
pub fn run_demo(
    cfg: &DemoConfig,
    train_qs: &[QaRow],
    retriever: &dyn Retriever,
) -> Result<DemoReport> {
    let t0 = Instant::now();
    if cfg.seeds.is_empty() {
        return Err(Error::invalid("the demo needs at least one seed"));
    }
    let (kd_qs, rl_qs) = split_rl_holdout(train_qs, cfg.rl_holdout)?;
    crate::synth::fresh::one_question_source(cfg.rl_holdout, cfg.rl_fresh_people)?;
    if cfg.rl_holdout > 0.0 {
        tracing::info!(
            kd = kd_qs.len(),
            rl = rl_qs.len(),
            "KD distils on the first training questions, RL runs on the held-out rest"
        );
    }
    std::fs::create_dir_all(&cfg.exp_dir).map_err(|e| Error::io(&cfg.exp_dir, e))?;
    let swaps = cfg.kd.name_swaps.as_ref().map_or(0, |s| s.copies);
    check_split(
        &cfg.exp_dir,
        &Split {
            rl_holdout: cfg.rl_holdout,
            kd_questions: kd_qs.len(),
            // Five questions per fresh person (`World::fresh_people`).
            rl_questions: if cfg.rl_fresh_people > 0 {
                cfg.rl_fresh_people * 5
            } else {
                rl_qs.len()
            },
            kd_name_swaps: swaps,
            rl_fresh_people: cfg.rl_fresh_people,
        },
    )?;
    let mut stage_secs = BTreeMap::new();
    let mut per_seed_models: Vec<Vec<(String, PathBuf)>> = Vec::new();
    for &seed in &cfg.seeds {
        let sdir = cfg.exp_dir.join(format!("seed-{seed}"));
        let mut models = Vec::new();
        // Cold start.
        let kd_dir = sdir.join("kd");
        let kd_final = kd_dir.join("final");
        if !kd_final.join("config.json").exists() {
            let t = Instant::now();
            let mut kd = cfg.kd.clone();
            kd.train.seed = seed;
            share_teacher_trajectories(cfg, &kd_dir)?;
            // run_kd reuses stored TGO trajectories when resuming (see `share_teacher_trajectories`).
            match kd.source {
                KdSource::Tgo if kd.resume && kd_dir.join(TGO_FILE).exists() => {
                    tracing::info!(seed, "KD: distilling on the stored teacher trajectories")
                }
                KdSource::Tgo => {
                    tracing::info!(seed, "KD: the teacher answers the training questions")
                }
                KdSource::Sgo => tracing::info!(
                    seed,
                    "KD: the student answers the training questions (SGO), the teacher scores them"
                ),
            }
            run_kd(&cfg.student, &cfg.teacher, kd_qs, retriever, &kd_dir, &kd)?;
            stage_secs.insert(format!("seed-{seed}/kd"), t.elapsed().as_secs_f64());
        }
        models.push(("kd".to_string(), kd_final.clone()));
        // Built only when a stage needs it (a finished seed reads nothing).
        let mut fresh: Option<(MemoryRetriever, Vec<QaRow>)> = None;
        for &algo in &cfg.algos {
            let name = algo_name(algo);
            let dir = sdir.join(name);
            let fin = dir.join("final");
            // Every algorithm samples the same number of rollouts per step (GRPO: fewer
            // questions, `group_size` samples each), so the comparison is at equal
            // generation cost, which dominates a CPU step.
            let group = if algo == Algo::Grpo {
                cfg.rl.group_size.max(2)
            } else {
                1
            };
            let rl = RlConfig {
                algo,
                seed,
                group_size: group,
                questions_per_step: (cfg.rl.questions_per_step / group).max(1),
                ..cfg.rl.clone()
            };
            if fin.join("config.json").exists() {
                check_finished_stage(&dir, &rl)?;
            } else {
                let t = Instant::now();
                let init = if algo == Algo::Dgpo {
                    &kd_final
                } else {
                    &cfg.student
                };
                let on = ModelOptions::on(&cfg.kd.placement);
                let student = TrainModel::load(init, &on)?;
                let teacher = if algo == Algo::Dgpo {
                    Some(TrainModel::load(&cfg.teacher, &on)?)
                } else {
                    None
                };
                // A run killed mid-way resumes from its newest checkpoint.
                let resume = dir.join("checkpoints").is_dir();
                tracing::info!(seed, algo = name, "RL");
                if cfg.rl_fresh_people > 0 && fresh.is_none() {
                    let env = fresh_environment(&cfg.data_dir, cfg.rl_fresh_people, seed)?;
                    tracing::info!(
                        seed,
                        people = cfg.rl_fresh_people,
                        questions = env.questions.len(),
                        "RL on fresh people"
                    );
                    fresh = Some((MemoryRetriever::new(env.corpus), env.questions));
                }
                let (qs, r): (&[QaRow], &dyn Retriever) = match &fresh {
                    Some((r, qs)) => (qs, r),
                    None => (rl_qs, retriever),
                };
                train_rl(&student, teacher.as_ref(), qs, r, &rl, &dir, resume)?;
                student.save(&fin)?;
                stage_secs.insert(format!("seed-{seed}/{name}"), t.elapsed().as_secs_f64());
            }
            models.push((name.to_string(), fin));
        }
        per_seed_models.push(models);
    }

    // Evaluation: base and teacher once (greedy decoding does not depend on the seed), the
    // trained models once per seed.
    let order: Vec<String> = std::iter::once("base".to_string())
        .chain(std::iter::once("kd".to_string()))
        .chain(
            ["ppo", "grpo", "dgpo"]
                .into_iter()
                .filter(|n| cfg.algos.iter().any(|&a| algo_name(a) == *n))
                .map(String::from),
        )
        .chain(std::iter::once("teacher".to_string()))
        .collect();
    let mut em: BTreeMap<String, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    let mut sources: Vec<String> = Vec::new();
    let mut first_eval = None;
    for (i, models) in per_seed_models.iter().enumerate() {
        let seed = cfg.seeds[i];
        let mut list: Vec<(String, PathBuf)> = Vec::new();
        if i == 0 {
            list.push((row_name("base"), cfg.student.clone()));
        }
        for (n, p) in models {
            list.push((row_name(n), p.clone()));
        }
        if i == 0 {
            list.push((row_name("teacher"), cfg.teacher.clone()));
        }
        let t = Instant::now();
        let report = evaluate_models(&list, &cfg.data_dir, "test", &cfg.eval)?;
        stage_secs.insert(format!("seed-{seed}/eval"), t.elapsed().as_secs_f64());
        write_report(
            &report,
            &cfg.exp_dir.join(format!("seed-{seed}")).join("eval"),
        )?;
        for m in &report.models {
            let row = em.entry(m.name.clone()).or_default();
            for (src, s) in &m.by_source {
                if !sources.contains(src) {
                    sources.push(src.clone());
                }
                row.entry(src.clone()).or_default().push(s.em);
            }
            row.entry("all".into()).or_default().push(m.overall.em);
        }
        if first_eval.is_none() {
            first_eval = Some(report);
        }
    }
    sources.sort();
    sources.push("all".into());
    let em: BTreeMap<String, BTreeMap<String, Cell>> = em
        .into_iter()
        .map(|(m, row)| (m, row.into_iter().map(|(s, v)| (s, Cell::of(v))).collect()))
        .collect();
    let report = DemoReport {
        models: order.iter().map(|s| row_name(s)).collect(),
        sources,
        em,
        stage_secs,
        total_secs: t0.elapsed().as_secs_f64(),
        first_eval: first_eval.expect("at least one seed"),
    };
    write_outputs(cfg, &report)?;
    Ok(report)
}

/// The EM table, mean ± half-range over seeds.
pub fn em_markdown(r: &DemoReport, seeds: usize) -> String {
    let mut s = format!(
        "EM on the test split ({seeds} seed{}; mean ± half-range; base and teacher are seed-independent)\n\n| model |",
        if seeds == 1 { "" } else { "s" }
    );
    for src in &r.sources {
        s += &format!(" {src} |");
    }
    s += "\n|---|";
    for _ in &r.sources {
        s += "---:|";
    }
    s += "\n";
    for m in &r.models {
        let Some(row) = r.em.get(m) else { continue };
        s += &format!("| {m} |");
        for src in &r.sources {
            match row.get(src) {
                Some(c) if c.per_seed.len() > 1 => {
                    s += &format!(" {:.3} ± {:.3} |", c.mean, c.spread)
                }
                Some(c) => s += &format!(" {:.3} |", c.mean),
                None => s += " - |",
            }
        }
        s += "\n";
    }
    s
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

fn write_outputs(cfg: &DemoConfig, r: &DemoReport) -> Result<()> {
    let mut md = em_markdown(r, cfg.seeds.len());
    md += "\nARCap and cost, first seed:\n\n";
    md += &dgpo_core::eval::markdown_table(&r.first_eval);
    md += "\nStage wall times (s):\n\n";
    for (k, v) in &r.stage_secs {
        md += &format!("- {k}: {v:.0}\n");
    }
    md += &format!("- total: {:.0}\n", r.total_secs);
    write_atomic(&cfg.exp_dir.join("demo.md"), md.as_bytes())?;
    let json = serde_json::to_vec_pretty(r).expect("reports serialise");
    write_atomic(&cfg.exp_dir.join("demo.json"), &json)?;
    // Curves of the first seed: reward and KL per algorithm.
    let sdir = cfg.exp_dir.join(format!("seed-{}", cfg.seeds[0]));
    let mut curves: Vec<(String, Vec<RlMetrics>)> = Vec::new();
    for &a in &cfg.algos {
        let p = sdir.join(algo_name(a)).join("rl_metrics.jsonl");
        if p.exists() {
            curves.push((algo_name(a).to_string(), read_metrics(&p)?));
        }
    }
    crate::plot::plot_curves(&curves, &cfg.exp_dir.join("curves.png"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{AdamWConfig, Decay, Schedule};
    use crate::trainer::TrainConfig;

    fn config(exp: &Path, source: KdSource, temperature: f64) -> DemoConfig {
        let mut agent = dgpo_core::agent::AgentConfig::default();
        agent.sampling.temperature = temperature;
        DemoConfig {
            data_dir: exp.join("data"),
            student: exp.join("student"),
            teacher: exp.join("teacher"),
            exp_dir: exp.to_path_buf(),
            seeds: vec![3, 4],
            kd: KdConfig {
                train: TrainConfig {
                    schedule: Schedule::with_ratio(1e-3, 0.0, 10, Decay::Constant),
                    adamw: AdamWConfig::default(),
                    micro_batch: 1,
                    grad_accum: 1,
                    max_grad_norm: 1.0,
                    seed: 0,
                    alpha: 1.0,
                    save_every: 0,
                    keep_last: 0,
                    threads: 1,
                    gradient_checkpointing: false,
                },
                source,
                agent,
                sgo_rounds: 1,
                concurrency: 1,
                resume: true,
                name_swaps: None,
                placement: Default::default(),
            },
            rl: RlConfig::default(),
            algos: vec![Algo::Dgpo],
            eval: EvalOptions::default(),
            rl_holdout: 0.0,
            rl_fresh_people: 0,
        }
    }

    #[test]
    fn later_seeds_reuse_the_first_seeds_greedy_teacher_trajectories_only() {
        let tmp = tempfile::tempdir().unwrap();
        let first = tmp.path().join("seed-3/kd");
        std::fs::create_dir_all(&first).unwrap();
        std::fs::write(first.join(TGO_FILE), "{\"rows\": 1}\n").unwrap();
        let later = tmp.path().join("seed-4/kd");

        // Sampled TGO and SGO depend on the seed: nothing is shared.
        for cfg in [
            config(tmp.path(), KdSource::Tgo, 1.0),
            config(tmp.path(), KdSource::Sgo, 0.0),
        ] {
            share_teacher_trajectories(&cfg, &later).unwrap();
            assert!(!later.join(TGO_FILE).exists());
        }
        // Greedy TGO: the same file, and an existing cache is never overwritten.
        let cfg = config(tmp.path(), KdSource::Tgo, 0.0);
        share_teacher_trajectories(&cfg, &later).unwrap();
        assert_eq!(
            std::fs::read(later.join(TGO_FILE)).unwrap(),
            b"{\"rows\": 1}\n"
        );
        std::fs::write(later.join(TGO_FILE), "mine\n").unwrap();
        share_teacher_trajectories(&cfg, &later).unwrap();
        assert_eq!(std::fs::read(later.join(TGO_FILE)).unwrap(), b"mine\n");
        // The first seed itself has nothing to copy from.
        share_teacher_trajectories(&cfg, &first).unwrap();
        assert!(std::fs::read_dir(&first).unwrap().count() == 1);
    }

    #[test]
    fn a_finished_rl_stage_is_reused_only_under_its_own_settings() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("dgpo");
        // No checkpoints: nothing to check against.
        let want = RlConfig {
            algo: Algo::Dgpo,
            ..RlConfig::default()
        };
        check_finished_stage(&dir, &want).unwrap();
        let write = |step: usize, rl: serde_json::Value| {
            let d = crate::checkpoint::checkpoint_dir(&dir, step);
            std::fs::create_dir_all(&d).unwrap();
            let st = serde_json::json!({
                "step": step, "seed": 0, "data_len": 800, "config": {"rl": rl}
            });
            std::fs::write(d.join("state.json"), st.to_string()).unwrap();
        };
        let mut rl = serde_json::to_value(&want).unwrap();
        write(10, rl.clone());
        check_finished_stage(&dir, &want).unwrap();
        // Bookkeeping, settings DGPO does not read, and settings the record predates pass.
        rl["keep_last"] = 7.into();
        rl["update_threads"] = 9.into();
        rl["kl_coef"] = 0.5.into();
        rl.as_object_mut().unwrap().remove("full_kl");
        write(20, rl.clone());
        check_finished_stage(&dir, &want).unwrap();
        // Another β in the newest checkpoint is refused, naming both values.
        rl["teacher_kl_coef"] = 0.01.into();
        write(30, rl.clone());
        let e = check_finished_stage(&dir, &want).unwrap_err().to_string();
        assert!(e.contains("teacher_kl_coef 0.01 (asked: 0.001)"), "{e}");
        // PPO does not read β, but does read the initial-student KL weight.
        let ppo = RlConfig {
            algo: Algo::Ppo,
            ..RlConfig::default()
        };
        rl["algo"] = "ppo".into();
        rl["kl_coef"] = ppo.kl_coef.into();
        write(40, rl.clone());
        check_finished_stage(&dir, &ppo).unwrap();
        rl["kl_coef"] = 0.5.into();
        write(50, rl);
        let e = check_finished_stage(&dir, &ppo).unwrap_err().to_string();
        assert!(e.contains("kl_coef 0.5"), "{e}");
        // A damaged record is an error naming the file.
        let d = crate::checkpoint::checkpoint_dir(&dir, 60);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("state.json"), "{").unwrap();
        let e = check_finished_stage(&dir, &ppo).unwrap_err().to_string();
        assert!(e.contains("state.json"), "{e}");
    }

    #[test]
    fn an_experiment_keeps_the_question_split_it_was_made_with() {
        let tmp = tempfile::tempdir().unwrap();
        // First use records the split; the same split again is accepted.
        let split =
            |rl_holdout, kd_questions, rl_questions, kd_name_swaps, rl_fresh_people| Split {
                rl_holdout,
                kd_questions,
                rl_questions,
                kd_name_swaps,
                rl_fresh_people,
            };
        check_split(tmp.path(), &split(0.2, 640, 160, 0, 0)).unwrap();
        check_split(tmp.path(), &split(0.2, 640, 160, 0, 0)).unwrap();
        let text = std::fs::read_to_string(tmp.path().join(SPLIT_FILE)).unwrap();
        assert!(text.contains("\"rl_questions\": 160"), "{text}");
        // Another split would reuse stages trained on this one: refused, naming both.
        let e = check_split(tmp.path(), &split(0.0, 800, 800, 0, 0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--rl-holdout 0.2 (640 KD / 160 RL"), "{e}");
        assert!(e.contains("not 0 (800 / 800)"), "{e}");
        // KD students distilled on name-swapped copies are not those of plain trajectories.
        let e = check_split(tmp.path(), &split(0.2, 640, 160, 15, 0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--kd-name-swaps 0, not 15"), "{e}");
        // RL runs on fresh people are not those on the training questions.
        let e = check_split(tmp.path(), &split(0.2, 640, 2000, 0, 400))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--rl-fresh-people 0, not 400"), "{e}");
        // A record written before KD swapped names means no swaps.
        let old = tmp.path().join("old");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(
            old.join(SPLIT_FILE),
            r#"{"rl_holdout": 0.0, "kd_questions": 800, "rl_questions": 800}"#,
        )
        .unwrap();
        check_split(&old, &split(0.0, 800, 800, 0, 0)).unwrap();
        assert!(check_split(&old, &split(0.0, 800, 800, 15, 0)).is_err());
        assert!(check_split(&old, &split(0.0, 800, 2000, 0, 400)).is_err());
        // A damaged record is an error naming the file, not a silent overwrite.
        std::fs::write(tmp.path().join(SPLIT_FILE), "{").unwrap();
        let e = check_split(tmp.path(), &split(0.2, 640, 160, 0, 0))
            .unwrap_err()
            .to_string();
        assert!(e.contains(SPLIT_FILE), "{e}");
    }
}
