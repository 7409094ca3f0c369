//! An RL environment of fresh people: the world's corpus plus passages about people nobody
//! was asked about, and questions about those people only.
//!
//! Why: the training questions ask about 160 people whose facts a student memorises during
//! KD, so an exact-match reward on them pays for recall; the test asks about people never
//! asked about, which only reading answers. RL on fresh people (see [`World::fresh_people`])
//! pays for reading, never repeats a question in a tiny run, and leaves the test split and
//! its corpus untouched: the fresh passages exist only in the RL runs' retriever.

use std::path::Path;

use dgpo_core::corpus::{Passage, load_jsonl};
use dgpo_core::{Error, Result};

use super::World;
use super::prepare::{PrepareConfig, WORLD_FILE};
use crate::data::QaRow;

/// What RL on fresh people searches and answers.
#[derive(Debug, Clone)]
pub struct FreshEnvironment {
    /// The data folder's corpus followed by the fresh people's passages.
    pub corpus: Vec<Passage>,
    /// Questions about the fresh people only.
    pub questions: Vec<QaRow>,
}

/// Refuse a hold-out and fresh people together: both choose RL's questions.
pub fn one_question_source(rl_holdout: f64, rl_fresh_people: usize) -> Result<()> {
    if rl_fresh_people > 0 && rl_holdout > 0.0 {
        return Err(Error::invalid(
            "--rl-fresh-people and --rl-holdout both choose RL's questions: give one",
        ));
    }
    Ok(())
}

/// `n` fresh people (drawn with `seed`) for the synthetic data folder `data_dir`, which must
/// have been prepared from a world (`world.json`) and hold that world's `corpus.jsonl`.
pub fn fresh_environment(data_dir: &Path, n: usize, seed: u64) -> Result<FreshEnvironment> {
    let wp = data_dir.join(WORLD_FILE);
    if !wp.exists() {
        return Err(Error::format(
            &wp,
            "RL on fresh people needs the synthetic world this folder was prepared from (world.json is missing; use --rl-fresh-people 0 for other data)",
        ));
    }
    let world = World::generate(&PrepareConfig::for_folder(data_dir)?.world)?;
    let cp = data_dir.join("corpus.jsonl");
    let mut corpus = load_jsonl(&cp)?;
    // The fresh passages' ids and the mentors' passages assume the corpus is this world's.
    let expected = world.passages();
    if corpus.len() != expected.len()
        || corpus
            .iter()
            .zip(&expected)
            .any(|(a, b)| a.title != b.title || a.text != b.text)
    {
        return Err(Error::format(
            &cp,
            format!(
                "not the corpus of the world in {} ({} passages, the world has {}): fresh people would cite passages that are not there",
                wp.display(),
                corpus.len(),
                expected.len()
            ),
        ));
    }
    let fresh = world.fresh_people(n, seed)?;
    corpus.extend(fresh.passages);
    let questions = fresh
        .questions
        .into_iter()
        .map(|q| QaRow {
            id: q.id,
            question: q.question,
            golden_answers: q.golden_answers,
            data_source: q.data_source,
        })
        .collect();
    Ok(FreshEnvironment { corpus, questions })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::WorldConfig;
    use std::collections::HashSet;

    fn small() -> World {
        World::generate(&WorldConfig {
            people: 40,
            seed: 3,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn fresh_people_are_new_names_of_training_parts_with_answerable_questions() {
        let w = small();
        let f = w.fresh_people(30, 7).unwrap();
        assert_eq!(f.passages.len(), 30);
        assert_eq!(f.questions.len(), 150);
        let old: HashSet<&str> = w.people.iter().map(|p| p.name.as_str()).collect();
        let train_names: HashSet<String> =
            w.train.iter().map(|q| q.oracle[0].title.clone()).collect();
        let test_names: HashSet<String> =
            w.test.iter().map(|q| q.oracle[0].title.clone()).collect();
        let parts = |k: usize, set: &HashSet<String>| -> HashSet<String> {
            set.iter()
                .map(|n| n.split(' ').nth(k).unwrap().to_string())
                .collect()
        };
        let (given, family) = (parts(0, &train_names), parts(1, &train_names));
        let corpus: Vec<Passage> = w.passages().into_iter().chain(f.passages.clone()).collect();
        let mut seen = HashSet::new();
        for (k, p) in f.passages.iter().enumerate() {
            assert_eq!(p.id, (w.passages().len() + k).to_string());
            let name = p.title.trim_matches('"');
            assert!(!old.contains(name), "{name} already exists");
            assert!(seen.insert(name.to_string()), "{name} twice");
            let (g, fam) = name.split_once(' ').unwrap();
            assert!(given.contains(g) && family.contains(fam), "{name}");
        }
        for (k, q) in f.questions.iter().enumerate() {
            assert_eq!(q.id, format!("fresh_{k}"));
            // Every hop's passage is in the combined corpus, and the last one holds the answer.
            for h in &q.oracle {
                assert!(
                    corpus.iter().any(|p| p.title == format!("\"{}\"", h.title)),
                    "{}: no passage {}",
                    q.question,
                    h.title
                );
            }
            let last = &q.oracle.last().unwrap().title;
            let p = corpus
                .iter()
                .find(|p| p.title == format!("\"{last}\""))
                .unwrap();
            assert!(
                p.text.contains(&q.golden_answers[0]),
                "{}: {} not in {:?}",
                q.question,
                q.golden_answers[0],
                p.text
            );
            // The second hop of a mentor question reads a training person, never a test one.
            if q.question.starts_with("Where was the mentor") {
                assert!(train_names.contains(&q.oracle[1].title));
                assert!(!test_names.contains(&q.oracle[1].title));
            }
        }
        assert_eq!(
            w.fresh_people(30, 7).unwrap(),
            f,
            "deterministic in the seed"
        );
        assert_ne!(
            w.fresh_people(30, 8).unwrap(),
            f,
            "another seed, other people"
        );
    }

    #[test]
    fn every_new_name_can_be_made_and_one_more_is_an_error_not_a_hang() {
        let w = small();
        let train = w.training_people();
        let part = |k: usize| -> HashSet<&str> {
            train.iter().map(|n| n.split(' ').nth(k).unwrap()).collect()
        };
        let (given, family) = (part(0), part(1));
        let existing = w
            .people
            .iter()
            .filter(|p| {
                let (g, f) = p.name.split_once(' ').unwrap();
                given.contains(g) && family.contains(f)
            })
            .count();
        let possible = given.len() * family.len() - existing;
        let all = w.fresh_people(possible, 1).unwrap();
        let names: HashSet<&str> = all.passages.iter().map(|p| p.title.as_str()).collect();
        assert_eq!(names.len(), possible);
        let e = w.fresh_people(possible + 1, 1).unwrap_err().to_string();
        assert!(
            e.contains(&format!("make only {possible} new names")),
            "{e}"
        );
    }

    #[test]
    fn the_environment_extends_the_folders_corpus_and_refuses_another() {
        let dir = tempfile::tempdir().unwrap();
        let e = fresh_environment(dir.path(), 5, 0).unwrap_err().to_string();
        assert!(e.contains("world.json"), "{e}");
        let cfg = WorldConfig {
            people: 40,
            seed: 3,
            ..Default::default()
        };
        let w = World::generate(&cfg).unwrap();
        w.write(dir.path()).unwrap();
        std::fs::write(
            dir.path().join(WORLD_FILE),
            serde_json::to_string_pretty(&cfg).unwrap(),
        )
        .unwrap();
        let env = fresh_environment(dir.path(), 5, 0).unwrap();
        assert_eq!(env.corpus.len(), w.passages().len() + 5);
        assert_eq!(env.corpus[..w.passages().len()], w.passages()[..]);
        assert_eq!(env.questions.len(), 25);
        let f = w.fresh_people(5, 0).unwrap();
        assert_eq!(env.questions[3].question, f.questions[3].question);
        assert_eq!(
            env.questions[3].golden_answers,
            f.questions[3].golden_answers
        );
        // A corpus of another world is refused, naming the file.
        let other = World::generate(&WorldConfig { seed: 4, ..cfg }).unwrap();
        other.write(dir.path()).unwrap();
        let e = fresh_environment(dir.path(), 5, 0).unwrap_err().to_string();
        assert!(
            e.contains("corpus.jsonl") && e.contains("not the corpus"),
            "{e}"
        );
    }
}
