//! A seeded synthetic encyclopedia and its question sets.
//!
//! People (with an occupation, birth year, birth city and a mentor), cities (in a country) and
//! countries, each described by one wiki-18 passage. Names are built from a small syllable set
//! and every few people get a *distractor*: another person with the same family name and a
//! given name one syllable away, with different facts, so a retriever (and a model) must read
//! the name exactly.
//!
//! Questions: single-hop (`synth-nq`: birth city, birth year, occupation of a person, answered
//! by the person's passage) and two-hop (`synth-hotpot`: the country of a person's birth city,
//! the birth city of a person's mentor, answered by two passages). Train and test split by
//! person, so test questions are about people never asked about in training.

use std::path::Path;

use dgpo_core::corpus::Passage;
use dgpo_core::{Error, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ren", "ta", "vor", "el", "sa", "dun", "ri", "an", "bel", "cor", "da", "fen",
    "gal", "hu", "ist", "jo", "ky", "lum", "mar", "nes", "or", "pel", "qua", "ros", "sel", "tor",
    "ul", "ven", "wy",
];
const OCCUPATIONS: &[&str] = &[
    "painter",
    "chemist",
    "sailor",
    "poet",
    "architect",
    "botanist",
    "violinist",
    "astronomer",
    "cartographer",
    "weaver",
    "surgeon",
    "mathematician",
];

/// Size and seed of a world.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WorldConfig {
    /// Number of people (distractors included).
    pub people: usize,
    /// Number of cities.
    pub cities: usize,
    /// Number of countries.
    pub countries: usize,
    /// One person in `distractor_every` gets a near-namesake.
    pub distractor_every: usize,
    /// Fraction of people whose questions go to the test split.
    pub test_fraction: f64,
    /// Seed.
    pub seed: u64,
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig {
            people: 200,
            cities: 24,
            countries: 6,
            distractor_every: 4,
            test_fraction: 0.2,
            seed: 0,
        }
    }
}

/// A person of the world.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Person {
    /// Full name.
    pub name: String,
    /// Occupation.
    pub occupation: String,
    /// Birth year.
    pub year: u32,
    /// Index into [`World::cities`].
    pub city: usize,
    /// Index into [`World::people`] of the mentor.
    pub mentor: usize,
    /// Whether this person was created as another's near-namesake.
    pub distractor: bool,
}

/// A city of the world.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct City {
    /// Name.
    pub name: String,
    /// Index into [`World::countries`].
    pub country: usize,
}

/// One search an oracle makes, and the passage title it must find.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OracleHop {
    /// The query.
    pub query: String,
    /// Title (without quotes) of the passage holding the needed fact.
    pub title: String,
}

/// A question row in Search-R1's schema, plus the oracle's plan (kept out of the JSONL rows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Question {
    /// Row id.
    pub id: String,
    /// The question.
    pub question: String,
    /// Accepted answers.
    pub golden_answers: Vec<String>,
    /// `synth-nq` (single-hop) or `synth-hotpot` (two-hop).
    pub data_source: String,
    /// The searches that answer it, in order.
    #[serde(skip)]
    pub oracle: Vec<OracleHop>,
}

/// The generated world.
#[derive(Debug, Clone, PartialEq)]
pub struct World {
    /// People.
    pub people: Vec<Person>,
    /// Cities.
    pub cities: Vec<City>,
    /// Countries.
    pub countries: Vec<String>,
    /// Training questions.
    pub train: Vec<Question>,
    /// Test questions.
    pub test: Vec<Question>,
}

/// People made by [`World::fresh_people`]: their passages and their questions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FreshPeople {
    /// One passage per fresh person, ids following the world's corpus.
    pub passages: Vec<Passage>,
    /// Five questions per fresh person (single-hop and two-hop, as the world's).
    pub questions: Vec<Question>,
}

fn cap(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn word(rng: &mut StdRng, syl: usize) -> Vec<usize> {
    (0..syl)
        .map(|_| rng.random_range(0..SYLLABLES.len()))
        .collect()
}

fn spell(w: &[usize]) -> String {
    cap(&w.iter().map(|&i| SYLLABLES[i]).collect::<String>())
}

impl World {
    /// Generate a world (deterministic in `cfg`).
    pub fn generate(cfg: &WorldConfig) -> Result<World> {
        if cfg.people < 4 || cfg.cities < 2 || cfg.countries < 1 || cfg.cities < cfg.countries {
            return Err(Error::invalid(
                "a world needs at least 4 people, 2 cities and 1 country (and no more countries than cities)",
            ));
        }
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let mut used = std::collections::HashSet::new();
        let mut unique = |rng: &mut StdRng, syl: usize| -> Vec<usize> {
            loop {
                let w = word(rng, syl);
                if used.insert(spell(&w)) {
                    return w;
                }
            }
        };
        let countries: Vec<String> = (0..cfg.countries)
            .map(|_| spell(&unique(&mut rng, 3)))
            .collect();
        let cities: Vec<City> = (0..cfg.cities)
            .map(|i| City {
                name: spell(&unique(&mut rng, 2)) + "ia",
                // Every country gets a city before any gets two.
                country: if i < cfg.countries {
                    i
                } else {
                    rng.random_range(0..cfg.countries)
                },
            })
            .collect();
        let mut names = std::collections::HashSet::new();
        let mut people: Vec<Person> = Vec::with_capacity(cfg.people);
        let new_person = |rng: &mut StdRng, name: String, distractor: bool| Person {
            name,
            occupation: OCCUPATIONS[rng.random_range(0..OCCUPATIONS.len())].to_string(),
            year: rng.random_range(1700..2000),
            city: rng.random_range(0..cfg.cities),
            mentor: 0,
            distractor,
        };
        while people.len() < cfg.people {
            let (given, family) = (word(&mut rng, 2), word(&mut rng, 3));
            let name = format!("{} {}", spell(&given), spell(&family));
            if !names.insert(name.clone()) {
                continue;
            }
            people.push(new_person(&mut rng, name, false));
            if people.len() < cfg.people && people.len().is_multiple_of(cfg.distractor_every.max(1))
            {
                // Same family name, given name with one syllable changed.
                let mut g = given.clone();
                let k = rng.random_range(0..g.len());
                g[k] = (g[k] + 1 + rng.random_range(0..SYLLABLES.len() - 1)) % SYLLABLES.len();
                let twin = format!("{} {}", spell(&g), spell(&family));
                if names.insert(twin.clone()) {
                    people.push(new_person(&mut rng, twin, true));
                }
            }
        }
        let n = people.len();
        for (i, p) in people.iter_mut().enumerate() {
            // Anyone but oneself.
            let mut m = rng.random_range(0..n - 1);
            if m >= i {
                m += 1;
            }
            p.mentor = m;
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        let n_test = ((n as f64) * cfg.test_fraction).round() as usize;
        let mut world = World {
            people,
            cities,
            countries,
            train: Vec::new(),
            test: Vec::new(),
        };
        for (rank, &p) in order.iter().enumerate() {
            let qs = world.questions_about(p);
            if rank < n_test {
                world.test.extend(qs);
            } else {
                world.train.extend(qs);
            }
        }
        for (split, qs) in [("train", &mut world.train), ("test", &mut world.test)] {
            qs.sort_by(|a, b| a.id.cmp(&b.id));
            for (i, q) in qs.iter_mut().enumerate() {
                q.id = format!("{split}_{i}");
            }
        }
        Ok(world)
    }

    fn questions_about(&self, i: usize) -> Vec<Question> {
        let p = &self.people[i];
        let city = &self.cities[p.city];
        let mentor = &self.people[p.mentor];
        let mcity = &self.cities[mentor.city];
        let hop = |query: String, title: &str| OracleHop {
            query,
            title: title.to_string(),
        };
        let q =
            |k: &str, question: String, answer: &str, src: &str, oracle: Vec<OracleHop>| Question {
                // Provisional id (person index + kind), renumbered per split after sorting.
                id: format!("{i:06}_{k}"),
                question,
                golden_answers: vec![answer.to_string()],
                data_source: src.to_string(),
                oracle,
            };
        vec![
            q(
                "city",
                format!("Where was {} born?", p.name),
                &city.name,
                "synth-nq",
                vec![hop(format!("{} birthplace", p.name), &p.name)],
            ),
            q(
                "year",
                format!("In what year was {} born?", p.name),
                &p.year.to_string(),
                "synth-nq",
                vec![hop(format!("{} born", p.name), &p.name)],
            ),
            q(
                "job",
                format!("What was the occupation of {}?", p.name),
                &p.occupation,
                "synth-nq",
                vec![hop(format!("{} occupation", p.name), &p.name)],
            ),
            q(
                "country",
                format!("In which country was {} born?", p.name),
                &self.countries[city.country],
                "synth-hotpot",
                vec![
                    hop(format!("{} birthplace", p.name), &p.name),
                    hop(format!("{} country", city.name), &city.name),
                ],
            ),
            q(
                "mentor_city",
                format!("Where was the mentor of {} born?", p.name),
                &mcity.name,
                "synth-hotpot",
                vec![
                    hop(format!("{} mentor", p.name), &p.name),
                    hop(format!("{} birthplace", mentor.name), &mentor.name),
                ],
            ),
        ]
    }

    /// Names of the people the training questions ask about, sorted (the first search of every
    /// question is for its person's passage). These are the names KD's name swaps permute and
    /// fresh people's names are built from.
    pub fn training_people(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .train
            .iter()
            .filter_map(|q| q.oracle.first().map(|h| h.title.clone()))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The text of a person's passage.
    fn person_text(&self, p: &Person) -> String {
        let mentor = &self.people[p.mentor];
        format!(
            "{} was a {} born in {} in the city of {}. {} studied under the {} {}.",
            p.name,
            p.occupation,
            p.year,
            self.cities[p.city].name,
            p.name,
            mentor.occupation,
            mentor.name
        )
    }

    /// `n` people who are not in the world, for RL on questions that only reading answers.
    ///
    /// Each name joins the given name of one training person to the family name of another
    /// (never an existing name), so it is made of tokens the student has seen in questions, as
    /// a test person's name is made of tokens it has seen in passages; occupation, year and
    /// city are drawn afresh and the mentor is a training person. Nothing about a fresh person
    /// can be recalled from the world, and no test person's name or fact is used. Passage ids
    /// continue after [`World::passages`]; question ids are `fresh_<k>`, five per person
    /// (those of [`World::generate`]'s questions), in person order. Deterministic in `seed`.
    pub fn fresh_people(&self, n: usize, seed: u64) -> Result<FreshPeople> {
        let training: Vec<usize> = {
            let names = self.training_people();
            self.people
                .iter()
                .enumerate()
                .filter(|(_, p)| names.binary_search(&p.name).is_ok())
                .map(|(i, _)| i)
                .collect()
        };
        let part = |i: usize, k: usize| self.people[i].name.split(' ').nth(k).map(str::to_owned);
        let mut given: Vec<String> = training.iter().filter_map(|&i| part(i, 0)).collect();
        let mut family: Vec<String> = training.iter().filter_map(|&i| part(i, 1)).collect();
        for v in [&mut given, &mut family] {
            v.sort_unstable();
            v.dedup();
        }
        let taken: std::collections::HashSet<&str> =
            self.people.iter().map(|p| p.name.as_str()).collect();
        // The names that exist to be made; asking for more would never finish.
        let known = |v: &[String], x: &str| v.binary_search_by(|y| y.as_str().cmp(x)).is_ok();
        let made_already = taken
            .iter()
            .filter(|n| {
                n.split_once(' ')
                    .is_some_and(|(g, f)| known(&given, g) && known(&family, f))
            })
            .count();
        let possible = given.len() * family.len() - made_already;
        if training.is_empty() || n > possible {
            return Err(Error::invalid(format!(
                "{n} fresh people asked for, but this world's {} training people's given and family names make only {possible} new names",
                training.len()
            )));
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let mut ext = self.clone();
        let first = ext.people.len();
        let mut names = std::collections::HashSet::new();
        while ext.people.len() < first + n {
            let name = format!(
                "{} {}",
                given[rng.random_range(0..given.len())],
                family[rng.random_range(0..family.len())]
            );
            if taken.contains(name.as_str()) || !names.insert(name.clone()) {
                continue;
            }
            ext.people.push(Person {
                name,
                occupation: OCCUPATIONS[rng.random_range(0..OCCUPATIONS.len())].to_string(),
                year: rng.random_range(1700..2000),
                city: rng.random_range(0..ext.cities.len()),
                mentor: training[rng.random_range(0..training.len())],
                distractor: false,
            });
        }
        let base = self.passages().len();
        let mut out = FreshPeople::default();
        for i in first..ext.people.len() {
            let p = &ext.people[i];
            out.passages.push(Passage {
                id: (base + out.passages.len()).to_string(),
                title: format!("\"{}\"", p.name),
                text: ext.person_text(p),
            });
            out.questions.extend(ext.questions_about(i));
        }
        for (k, q) in out.questions.iter_mut().enumerate() {
            q.id = format!("fresh_{k}");
        }
        Ok(out)
    }

    /// One wiki-18 passage per person, city and country (titles in quotes, as wiki-18 has them).
    pub fn passages(&self) -> Vec<Passage> {
        let mut out = Vec::new();
        let mut push = |title: &str, text: String| {
            out.push(Passage {
                id: out.len().to_string(),
                title: format!("\"{title}\""),
                text,
            })
        };
        for p in &self.people {
            push(&p.name, self.person_text(p));
        }
        for c in &self.cities {
            push(
                &c.name,
                format!("{} is a city in {}.", c.name, self.countries[c.country]),
            );
        }
        for (k, name) in self.countries.iter().enumerate() {
            let cities: Vec<&str> = self
                .cities
                .iter()
                .filter(|c| c.country == k)
                .map(|c| c.name.as_str())
                .collect();
            push(
                name,
                format!(
                    "{} is a country. Its cities include {}.",
                    name,
                    cities.join(", ")
                ),
            );
        }
        out
    }

    /// Write `corpus.jsonl` (wiki-18 rows) and `train.jsonl` / `test.jsonl` (Search-R1 rows)
    /// into `dir`, each through a temporary file and a rename.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let corpus: Vec<String> = self
            .passages()
            .iter()
            .map(|p| serde_json::json!({"id": p.id, "contents": p.contents()}).to_string())
            .collect();
        write_lines(&dir.join("corpus.jsonl"), &corpus)?;
        for (name, qs) in [("train.jsonl", &self.train), ("test.jsonl", &self.test)] {
            let rows: Vec<String> = qs
                .iter()
                .map(|q| serde_json::to_string(q).expect("rows serialise"))
                .collect();
            write_lines(&dir.join(name), &rows)?;
        }
        Ok(())
    }
}

/// Write lines to `path` atomically (temporary file in the same folder, then rename).
pub fn write_lines(path: &Path, lines: &[String]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut body = lines.join("\n");
    body.push('\n');
    std::fs::write(&tmp, body).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
