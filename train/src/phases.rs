//! The supervised phases as library calls (the `train` binary and the demo are thin layers):
//! datasets ([`DataSet`]), SFT ([`run_sft`]) and phase 1, cold-start KD ([`run_kd`]).
//!
//! KD data comes from one of two sources ([`KdSource`]):
//! - **TGO** (teacher-generated outputs, the paper's cold start): the teacher runs the agent loop
//!   greedily on the training questions and only its exactly-correct trajectories are kept
//!   ([`collect_correct`]). With [`KdConfig::name_swaps`] the student distils on name-swapped
//!   copies of them instead ([`kd_examples`]), so it cannot memorise the training people.
//! - **SGO** (student-generated outputs, the on-policy comparison): the *student* samples
//!   trajectories (temperature 1) on the training questions, all of them kept, and the same loss
//!   is applied on them with the teacher's distributions. Generation is refreshed in rounds: the
//!   run is split into `sgo_rounds` equal parts and, before each, the current student samples
//!   new trajectories (seed `seed + round`), so the data follows the student as it learns.
//!
//! In both, the student minimises `(1 − α)·CE + α·FKL` on the learnt tokens (observation tokens
//! masked), through the shared [`Trainer`] (checkpoints, `resume`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use dgpo_core::agent::{Agent, AgentConfig, Rollout};
use dgpo_core::model::{LanguageModel, LoadOptions, Placement};
use dgpo_core::retrieve::Retriever;
use dgpo_core::sampling::SamplingParams;
use dgpo_core::{Error, Result};

use crate::checkpoint::{StepMetrics, list_checkpoints};
use crate::data::{QaRow, read_questions};
use crate::model::{ModelOptions, TrainModel};
use crate::synth::name_swap::SwapCopies;
use crate::synth::prepare::{read_rollouts, write_rollouts};
use crate::trainer::{Example, TrainConfig, Trainer};

/// Search-R1's answer normalisation (`qa_em.py`): lowercase, drop ASCII punctuation, drop the
/// articles a/an/the, collapse whitespace.
pub fn normalize_answer(s: &str) -> String {
    let lower: String = s
        .to_lowercase()
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    lower
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Exact match of `prediction` against any golden answer after normalisation.
pub fn exact_match(prediction: &str, golden: &[String]) -> bool {
    let p = normalize_answer(prediction);
    golden.iter().any(|g| normalize_answer(g) == p)
}

/// What the teacher's collection run produced.
#[derive(Debug, Clone)]
pub struct Collected {
    /// Correct trajectories, as training examples.
    pub examples: Vec<Example>,
    /// Their rollouts.
    pub rollouts: Vec<Rollout>,
    /// Questions tried.
    pub tried: usize,
}

/// Run `teacher` through the agent loop on `questions` and keep the trajectories whose final
/// answer exactly matches a golden answer. `student_vocab`, when given, is checked against the
/// teacher's vocabulary first, so a mismatch is refused before any generation.
pub fn collect_correct(
    teacher: &dyn LanguageModel,
    retriever: &dyn Retriever,
    questions: &[QaRow],
    cfg: &AgentConfig,
    student_vocab: Option<usize>,
) -> Result<Collected> {
    if let Some(v) = student_vocab
        && v != teacher.info().vocab_size
    {
        return Err(Error::invalid(format!(
            "teacher vocabulary size {} differs from the student's {v}: forward KL needs the same tokenizer",
            teacher.info().vocab_size
        )));
    }
    let out = generate(
        teacher,
        retriever,
        questions,
        cfg,
        true,
        default_concurrency(),
    )?;
    tracing::info!(
        kept = out.examples.len(),
        tried = out.tried,
        "teacher trajectories collected"
    );
    Ok(out)
}

/// Questions run in parallel by default: one per core (each has its own session; a tiny
/// model's per-token work is too small for candle's own threads to fill the cores).
pub fn default_concurrency() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Split the training questions into the part the cold start (KD) distils on and the part kept
/// for RL alone: the last `rl_holdout` fraction (rounded to whole questions) is held out.
/// `rl_holdout = 0` gives the paper's setting, both phases on every question.
///
/// Why: a compact student distilled for many epochs on a small question set memorises the
/// answers, so RL's exact-match reward on those same questions rewards recall, not reading
/// (docs/demo/history.md). On held-out questions a rollout succeeds only by searching and
/// reading. The split is by position: the synthetic world lists each person's questions
/// together, in random person order, so a tail holds out whole people; Search-R1's train files
/// are ordered by data source, so shuffle such a file first.
pub fn split_rl_holdout(questions: &[QaRow], rl_holdout: f64) -> Result<(&[QaRow], &[QaRow])> {
    if !(0.0..1.0).contains(&rl_holdout) {
        return Err(Error::invalid(format!(
            "the RL hold-out is a fraction in [0, 1), not {rl_holdout}"
        )));
    }
    if rl_holdout == 0.0 {
        return Ok((questions, questions));
    }
    let held = (questions.len() as f64 * rl_holdout).round() as usize;
    if held == 0 || held == questions.len() {
        return Err(Error::invalid(format!(
            "an RL hold-out of {rl_holdout} of {} training questions leaves one phase without questions",
            questions.len()
        )));
    }
    Ok(questions.split_at(questions.len() - held))
}
/// Run `model` through the agent loop on every question with `concurrency` workers, keeping
/// the trajectories in question order (only the exactly-correct ones when `correct_only`).
pub fn generate(
    model: &dyn LanguageModel,
    retriever: &dyn Retriever,
    questions: &[QaRow],
    cfg: &AgentConfig,
    correct_only: bool,
    concurrency: usize,
) -> Result<Collected> {
    let agent = Agent::new(model, retriever, cfg.clone());
    let next = AtomicUsize::new(0);
    // Per question: (answered correctly, rollout), filled by whichever worker ran it.
    type Slot = Option<Result<(bool, Rollout)>>;
    let slots: Mutex<Vec<Slot>> = Mutex::new((0..questions.len()).map(|_| None).collect());
    let bar = indicatif::ProgressBar::new(questions.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} agent runs {pos}/{len} [{bar:30}] elapsed {elapsed} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    std::thread::scope(|s| {
        for _ in 0..concurrency.clamp(1, questions.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(q) = questions.get(i) else { break };
                    // A per-question seed: sampled runs do not depend on which worker ran them.
                    let mut c = agent.config().clone();
                    c.sampling.seed = c.sampling.seed.wrapping_add(i as u64);
                    let a = Agent::new(model, retriever, c);
                    let r = a
                        .run_with(&q.question, &mut |_| {}, &|| false)
                        .map(|(t, r)| {
                            let ok = t
                                .answer
                                .as_deref()
                                .is_some_and(|a| exact_match(a, &q.golden_answers));
                            (ok, r)
                        });
                    slots.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
                    bar.inc(1);
                }
            });
        }
    });
    bar.finish_and_clear();
    let mut out = Collected {
        examples: Vec::new(),
        rollouts: Vec::new(),
        tried: questions.len(),
    };
    for (slot, q) in slots
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .zip(questions)
    {
        let (ok, rollout) = slot
            .expect("every slot is filled")
            .map_err(|e| Error::invalid(format!("question {}: {e}", q.id)))?;
        if ok || !correct_only {
            out.examples.push(Example::from_rollout(&rollout)?);
            out.rollouts.push(rollout);
        }
    }
    Ok(out)
}

/// A dataset: a folder (or file) of Search-R1 rows, and what sits next to them.
#[derive(Debug, Clone)]
pub struct DataSet {
    /// The folder (the presets and the corpus are looked up here).
    pub dir: PathBuf,
    /// Training questions (`train.parquet` / `train.jsonl`, or the file given).
    pub train: Option<PathBuf>,
    /// Test questions (`test.parquet` / `test.jsonl`).
    pub test: Option<PathBuf>,
    /// `corpus.jsonl`, when the folder has one (searched in memory with BM25).
    pub corpus: Option<PathBuf>,
}

/// The file of `split` in `dir`: `<split>.parquet`, else `<split>.jsonl`.
pub fn split_file(dir: &Path, split: &str) -> Option<PathBuf> {
    ["parquet", "jsonl"]
        .iter()
        .map(|e| dir.join(format!("{split}.{e}")))
        .find(|p| p.is_file())
}

impl DataSet {
    /// Resolve `<data>`: an existing folder or file, else `<data_root>/<data>`. A folder named
    /// `synth` is built on first use ([`crate::synth::prepare::prepare`], each step cached).
    pub fn resolve(data: &str, data_root: &Path) -> Result<DataSet> {
        let p = Path::new(data);
        let (dir, file) = if p.is_file() {
            let dir = p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf();
            (dir, Some(p.to_path_buf()))
        } else if p.is_dir() {
            (p.to_path_buf(), None)
        } else {
            (data_root.join(data), None)
        };
        if file.is_none() && dir.file_name().is_some_and(|n| n == "synth") {
            crate::synth::prepare::prepare(
                &dir,
                &crate::synth::prepare::PrepareConfig::for_folder(&dir)?,
            )?;
        }
        if !dir.is_dir() {
            return Err(Error::io(
                &dir,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such dataset folder (give a folder or file, or a name under $DATA_ROOT; `synth` is built on first use)",
                ),
            ));
        }
        let corpus = Some(dir.join("corpus.jsonl")).filter(|c| c.is_file());
        Ok(DataSet {
            train: file.or_else(|| split_file(&dir, "train")),
            test: split_file(&dir, "test"),
            corpus,
            dir,
        })
    }

    /// Questions of the training split (rows without golden answers are refused with their line).
    pub fn train_questions(&self) -> Result<Vec<QaRow>> {
        let p = self.train.as_ref().ok_or_else(|| {
            Error::format(
                &self.dir,
                "no train.parquet or train.jsonl in the dataset folder",
            )
        })?;
        read_questions(p)
    }
}

/// Where cold-start KD takes its trajectories from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KdSource {
    /// Teacher-generated outputs, correct ones only (the paper's cold start).
    Tgo,
    /// Student-generated outputs (sampled, refreshed in rounds), all kept.
    Sgo,
}

impl std::str::FromStr for KdSource {
    type Err = Error;
    fn from_str(s: &str) -> Result<KdSource> {
        match s.to_ascii_lowercase().as_str() {
            "tgo" => Ok(KdSource::Tgo),
            "sgo" => Ok(KdSource::Sgo),
            o => Err(Error::invalid(format!(
                "unknown KD source {o:?} (tgo, sgo)"
            ))),
        }
    }
}

/// Settings of a KD run.
#[derive(Debug, Clone)]
pub struct KdConfig {
    /// Optimisation (its schedule's `total_steps` is the run length; `alpha` mixes CE and FKL).
    pub train: TrainConfig,
    /// TGO or SGO.
    pub source: KdSource,
    /// Agent loop of the generations (TGO decodes with its sampling, greedy by default; SGO
    /// always samples at temperature 1, top-p 1).
    pub agent: AgentConfig,
    /// SGO: generation rounds (the steps are split evenly between them).
    pub sgo_rounds: usize,
    /// Questions run in parallel during generation.
    pub concurrency: usize,
    /// Continue from the newest checkpoint (and cached trajectories) of the experiment.
    pub resume: bool,
    /// TGO: distil on name-swapped copies of the teacher's trajectories instead of the
    /// trajectories themselves (see [`crate::synth::name_swap`]). The teacher is scored online
    /// on every batch, so its distributions are those of the swapped text. Why: the teacher's
    /// trajectories are of the training questions, and a student distilled on them as they are
    /// memorises the training people's facts instead of reading them from the retrieved
    /// passages. `None`: the trajectories as generated.
    pub name_swaps: Option<SwapCopies>,
    /// Device and float type of the student, the teacher and the teacher's generations (the
    /// CPU in f32 by default; a GPU in bf16 for real models).
    pub placement: Placement,
}

/// The examples a TGO run distils on: the teacher's kept `rollouts`, or `swaps.copies`
/// name-swapped copies of them (permutations seeded by `seed`).
pub fn kd_examples(
    rollouts: &[Rollout],
    swaps: Option<&SwapCopies>,
    seed: u64,
) -> Result<Vec<Example>> {
    match swaps {
        None => rollouts.iter().map(Example::from_rollout).collect(),
        Some(s) => s.examples(rollouts, seed),
    }
}

/// What a KD run did.
#[derive(Debug, Clone)]
pub struct KdOutcome {
    /// The distilled student (HF folder `<exp>/final`).
    pub final_dir: PathBuf,
    /// Questions run through the agent loop (all rounds).
    pub tried: usize,
    /// Trajectories trained on (all rounds).
    pub kept: usize,
    /// Metrics of the updates made by this call.
    pub metrics: Vec<StepMetrics>,
}

fn clear_checkpoints(exp: &Path) -> Result<()> {
    let c = exp.join("checkpoints");
    if c.exists() {
        tracing::info!(dir = %c.display(), "fresh run: removing old checkpoints");
        std::fs::remove_dir_all(&c).map_err(|e| Error::io(&c, e))?;
    }
    Ok(())
}

/// Train on `examples` until `until` updates, resuming from the experiment's newest checkpoint
/// when `resume`.
fn train_until(
    student: &TrainModel,
    teacher: Option<&TrainModel>,
    examples: &[Example],
    cfg: &TrainConfig,
    exp: &Path,
    resume: bool,
    until: usize,
) -> Result<Vec<StepMetrics>> {
    let mut tr = Trainer::new(student, teacher, examples, cfg.clone(), exp, 0)?;
    if resume && let Some(step) = tr.resume()? {
        tracing::info!(step, "resumed");
    }
    tr.run(until)
}

/// Supervised fine-tuning (cross-entropy) of `student` on `examples`, on `placement`, saved to
/// `<exp>/final`.
pub fn run_sft(
    student: &Path,
    examples: &[Example],
    exp: &Path,
    cfg: &TrainConfig,
    resume: bool,
    placement: &Placement,
) -> Result<(PathBuf, Vec<StepMetrics>)> {
    if !resume {
        clear_checkpoints(exp)?;
    }
    let s = TrainModel::load(student, &ModelOptions::on(placement))?;
    let ms = train_until(
        &s,
        None,
        examples,
        cfg,
        exp,
        resume,
        cfg.schedule.total_steps,
    )?;
    let fin = exp.join("final");
    s.save(&fin)?;
    Ok((fin, ms))
}

fn vocab_mismatch(teacher: &Path, tv: usize, student: &Path, sv: usize) -> Error {
    Error::invalid(format!(
        "teacher {} has a vocabulary of {tv}, student {} of {sv}: forward KL needs the same tokenizer",
        teacher.display(),
        student.display()
    ))
}

/// Cold-start KD of the HF folder `student` from `teacher` (an HF folder; a GGUF file only with
/// `alpha = 0` and TGO, since it gives no training-time distributions) on `questions`, with
/// `retriever` behind the agent loop. Writes checkpoints, `metrics.jsonl`, the trajectories
/// (`kd-trajectories.jsonl`, or `sgo/round-N.jsonl`) and `<exp>/final`.
pub fn run_kd(
    student: &Path,
    teacher: &Path,
    questions: &[QaRow],
    retriever: &dyn Retriever,
    exp: &Path,
    cfg: &KdConfig,
) -> Result<KdOutcome> {
    let on = ModelOptions::on(&cfg.placement);
    let s = TrainModel::load(student, &on)?;
    let gguf_teacher = !teacher.is_dir();
    let t_train = if gguf_teacher {
        None
    } else {
        let t = TrainModel::load(teacher, &on)?;
        if t.vocab_size() != s.vocab_size() {
            return Err(vocab_mismatch(
                teacher,
                t.vocab_size(),
                student,
                s.vocab_size(),
            ));
        }
        Some(t)
    };
    if gguf_teacher && (cfg.train.alpha > 0.0 || cfg.source == KdSource::Sgo) {
        return Err(Error::invalid(format!(
            "teacher {} is a GGUF file: it can generate TGO trajectories but gives no training-time distributions; \
             use an HF folder, or TGO with --alpha 0 (cross-entropy on its correct trajectories)",
            teacher.display()
        )));
    }
    // The generating teacher is only loaded when trajectories must be generated.
    let cached = cfg.resume && exp.join(TGO_FILE).exists();
    let policy = if cfg.source == KdSource::Tgo && !cached {
        let p = dgpo_core::model::load(teacher, &LoadOptions::on(&cfg.placement))?;
        if p.info().vocab_size != s.vocab_size() {
            return Err(vocab_mismatch(
                teacher,
                p.info().vocab_size,
                student,
                s.vocab_size(),
            ));
        }
        Some(p)
    } else {
        None
    };
    run_kd_models(
        &s,
        policy.as_deref(),
        t_train.as_ref(),
        questions,
        retriever,
        exp,
        cfg,
    )
}

/// The teacher's kept trajectories of a TGO run, under the experiment folder.
pub const TGO_FILE: &str = "kd-trajectories.jsonl";

/// [`run_kd`] on loaded models: `teacher_policy` generates the TGO trajectories (unused for
/// SGO, and when `resume` finds them cached), `teacher` gives the distributions of the forward
/// KL (`None`: plain cross-entropy, which `alpha = 0` means anyway).
pub fn run_kd_models(
    s: &TrainModel,
    teacher_policy: Option<&dyn LanguageModel>,
    teacher: Option<&TrainModel>,
    questions: &[QaRow],
    retriever: &dyn Retriever,
    exp: &Path,
    cfg: &KdConfig,
) -> Result<KdOutcome> {
    let steps = cfg.train.schedule.total_steps;
    if questions.is_empty() {
        return Err(Error::invalid("no training questions"));
    }
    if cfg.train.alpha > 0.0 && teacher.is_none() {
        return Err(Error::invalid(
            "forward KL (alpha > 0) needs the teacher's distributions: give a trainable teacher",
        ));
    }
    if let Some(t) = teacher
        && t.vocab_size() != s.vocab_size()
    {
        return Err(Error::invalid(format!(
            "teacher vocabulary size {} differs from the student's {}: forward KL needs the same tokenizer",
            t.vocab_size(),
            s.vocab_size()
        )));
    }
    if cfg.source == KdSource::Sgo && cfg.name_swaps.is_some() {
        return Err(Error::invalid(
            "name swaps apply to the teacher's trajectories (TGO); SGO distils on the student's own samples as they are",
        ));
    }
    if !cfg.resume {
        clear_checkpoints(exp)?;
    }
    std::fs::create_dir_all(exp).map_err(|e| Error::io(exp, e))?;
    let t_ref = teacher.filter(|_| cfg.train.alpha > 0.0);
    match cfg.source {
        KdSource::Tgo => {
            let cache = exp.join(TGO_FILE);
            let (rollouts, tried) = if cfg.resume && cache.exists() {
                tracing::info!(path = %cache.display(), "reusing the teacher's trajectories");
                (read_rollouts(&cache)?, 0)
            } else {
                let policy = teacher_policy.ok_or_else(|| {
                    Error::invalid("TGO needs a teacher model to generate trajectories")
                })?;
                if policy.info().vocab_size != s.vocab_size() {
                    return Err(Error::invalid(format!(
                        "teacher vocabulary size {} differs from the student's {}: forward KL needs the same tokenizer",
                        policy.info().vocab_size,
                        s.vocab_size()
                    )));
                }
                let agent = AgentConfig {
                    chat_template: cfg.agent.chat_template && policy.chat_template().is_some(),
                    ..cfg.agent.clone()
                };
                let c = generate(policy, retriever, questions, &agent, true, cfg.concurrency)?;
                tracing::info!(
                    kept = c.examples.len(),
                    tried = c.tried,
                    "teacher trajectories collected"
                );
                write_rollouts(&cache, &c.rollouts)?;
                (c.rollouts, c.tried)
            };
            if rollouts.is_empty() {
                return Err(Error::invalid(format!(
                    "the teacher answered none of the {} questions correctly: nothing to distil",
                    questions.len()
                )));
            }
            if let Some(sw) = &cfg.name_swaps {
                sw.swap.check_names_in(&rollouts, &cache)?;
            }
            let examples = kd_examples(&rollouts, cfg.name_swaps.as_ref(), cfg.train.seed)?;
            if let Some(sw) = &cfg.name_swaps {
                tracing::info!(
                    trajectories = rollouts.len(),
                    copies = sw.copies,
                    names = sw.swap.len(),
                    "distilling on name-swapped copies"
                );
            }
            let ms = train_until(s, t_ref, &examples, &cfg.train, exp, cfg.resume, steps)?;
            let fin = exp.join("final");
            s.save(&fin)?;
            Ok(KdOutcome {
                final_dir: fin,
                tried,
                kept: rollouts.len(),
                metrics: ms,
            })
        }
        KdSource::Sgo => {
            let rounds = cfg.sgo_rounds.clamp(1, steps.max(1));
            let per = steps.div_ceil(rounds).max(1);
            let mut tc = cfg.train.clone();
            // A checkpoint at every round boundary: a resumed run regenerates (or reuses) the
            // round's data from exactly the weights that generated it.
            tc.save_every = per;
            let mut done = 0;
            if cfg.resume
                && let Some((step, dir)) = list_checkpoints(exp)?.pop()
            {
                let w = TrainModel::load(&dir.join("model"), &ModelOptions::on(&cfg.placement))?;
                s.set_weights(
                    &w.named_vars()
                        .into_iter()
                        .map(|(n, v)| (n, v.as_tensor().clone()))
                        .collect(),
                )?;
                done = step;
            }
            let sgo = exp.join("sgo");
            std::fs::create_dir_all(&sgo).map_err(|e| Error::io(&sgo, e))?;
            let mut out = KdOutcome {
                final_dir: exp.join("final"),
                tried: 0,
                kept: 0,
                metrics: Vec::new(),
            };
            while done < steps {
                let round = done / per;
                let until = ((round + 1) * per).min(steps);
                let cache = sgo.join(format!("round-{round}.jsonl"));
                let rollouts = if cfg.resume && cache.exists() {
                    read_rollouts(&cache)?
                } else {
                    // The current student, as an inference model.
                    let snap = sgo.join("student");
                    s.save(&snap)?;
                    let policy = dgpo_core::model::load(&snap, &LoadOptions::on(&cfg.placement))?;
                    let agent = AgentConfig {
                        sampling: SamplingParams {
                            temperature: 1.0,
                            top_p: 1.0,
                            seed: tc.seed.wrapping_add(round as u64).wrapping_mul(1_000_003),
                        },
                        chat_template: cfg.agent.chat_template && policy.chat_template().is_some(),
                        ..cfg.agent.clone()
                    };
                    let c = generate(
                        policy.as_ref(),
                        retriever,
                        questions,
                        &agent,
                        false,
                        cfg.concurrency,
                    )?;
                    let correct = c.rollouts.len(); // all kept
                    tracing::info!(round, rollouts = correct, "student trajectories sampled");
                    write_rollouts(&cache, &c.rollouts)?;
                    out.tried += c.tried;
                    c.rollouts
                };
                let examples: Vec<Example> = rollouts
                    .iter()
                    .map(Example::from_rollout)
                    .collect::<Result<_>>()?;
                out.kept += examples.len();
                // Round > 0 continues the optimiser state of the previous round's checkpoint.
                let resume = done > 0;
                let ms = train_until(s, t_ref, &examples, &tc, exp, resume, until)?;
                out.metrics.extend(ms);
                done = until;
            }
            s.save(&out.final_dir)?;
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_follows_search_r1() {
        assert_eq!(normalize_answer("  The  Eiffel-Tower! "), "eiffeltower");
        assert_eq!(normalize_answer("A cat, an owl"), "cat owl");
        assert!(exact_match("the Beatles", &["Beatles".into()]));
        assert!(!exact_match("Beatle", &["Beatles".into()]));
    }

    #[test]
    fn rl_holdout_keeps_the_tail_for_rl_alone() {
        let qs: Vec<QaRow> = (0..10)
            .map(|i| QaRow {
                id: format!("q{i}"),
                question: format!("question {i}?"),
                golden_answers: vec![i.to_string()],
                data_source: "synth-nq".into(),
            })
            .collect();
        let ids = |part: &[QaRow]| part.iter().map(|q| q.id.clone()).collect::<Vec<_>>();
        // 0: the paper's setting, both phases see every question.
        let (kd, rl) = split_rl_holdout(&qs, 0.0).unwrap();
        assert_eq!((kd.len(), rl.len()), (10, 10));
        // 0.2 of 10: the last two, disjoint from KD's eight.
        let (kd, rl) = split_rl_holdout(&qs, 0.2).unwrap();
        assert_eq!(ids(rl), ["q8", "q9"]);
        assert_eq!(ids(kd).len(), 8);
        assert!(ids(kd).iter().all(|k| !ids(rl).contains(k)));
        // Rounded to whole questions: 0.25 of 10 is 3 (2.5 rounds away from zero).
        assert_eq!(split_rl_holdout(&qs, 0.25).unwrap().1.len(), 3);
        // A phase left empty, or no fraction at all, is refused with the numbers.
        let e = split_rl_holdout(&qs, 0.01).unwrap_err().to_string();
        assert!(e.contains("0.01 of 10"), "{e}");
        assert!(split_rl_holdout(&qs[..1], 0.9).is_err());
        for bad in [1.0, -0.1, f64::NAN] {
            let e = split_rl_holdout(&qs, bad).unwrap_err().to_string();
            assert!(e.contains("fraction"), "{e}");
        }
    }
}
