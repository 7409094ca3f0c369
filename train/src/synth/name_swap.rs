//! Name swapping: copies of the oracle trajectories in which the training people's names are
//! permuted, so that a model fine-tuned on them must read the retrieved passages.
//!
//! Why: the teacher preset is fine-tuned on the oracle's trajectories of the training questions,
//! 800 trajectories about 160 people, for 20 epochs. It can lower its loss by memorising each
//! person's facts as well as by reading them out of the `<information>` block, and it does:
//! the teacher built on 2026-12-02 answered 743 of the 800 training questions and 0.100 of the
//! test questions (people it never saw asked about). In a swapped copy every occurrence of a
//! training person's name (in the question, the agent's turns and the retrieved passages) is
//! replaced by another training person's name, one random permutation per copy, so the facts
//! attached to a name change from copy to copy and only the passage in the context tells them.
//! This is entity-swap augmentation, as used against answer memorisation in reading
//! comprehension.
//!
//! The swap works on token ids, never on decoded text: the trajectory's mask (observation
//! tokens are not learnt) is carried over token by token, and the synthetic tokenizer writes a
//! name as the same ids wherever it stands (byte-level pre-tokenisation splits at spaces and
//! punctuation), in two forms: after a space (`ĠVenhu ĠSelpeldun`, in text) and at the start of
//! a word (`Venhu ĠSelpeldun`, in a passage title after its quote). Test people's names are
//! left alone: they neither replace nor are replaced, so the fine-tuning never puts them in a
//! question.

use std::collections::HashMap;
use std::path::Path;

use dgpo_core::agent::Rollout;
use dgpo_core::tokenizer::Tokenizer;
use dgpo_core::{Error, Result};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::world::World;
use crate::trainer::Example;

/// The token forms of a set of names, and a matcher that finds them in a token sequence.
#[derive(Debug, Clone)]
pub struct NameSwap {
    /// `forms[p][f]`: the ids of name `p` in form `f` (0: after a space, 1: word start).
    forms: Vec<[Vec<u32>; 2]>,
    /// First id of a form -> the (name, form) pairs starting with it.
    by_first: HashMap<u32, Vec<(usize, usize)>>,
}

impl NameSwap {
    /// The forms of `names` under `tok`. Names must be distinct and non-empty, and no name may
    /// share a form with another (the swap would then be ambiguous).
    pub fn new(tok: &Tokenizer, names: &[String]) -> Result<NameSwap> {
        let mut forms = Vec::with_capacity(names.len());
        let mut by_first: HashMap<u32, Vec<(usize, usize)>> = HashMap::new();
        let mut seen: HashMap<Vec<u32>, usize> = HashMap::new();
        for (p, name) in names.iter().enumerate() {
            let f = [tok.encode(&format!(" {name}"))?, tok.encode(name)?];
            for (k, ids) in f.iter().enumerate() {
                let Some(&first) = ids.first() else {
                    return Err(Error::invalid(format!(
                        "name {name:?} encodes to no tokens"
                    )));
                };
                if let Some(q) = seen.insert(ids.clone(), p) {
                    return Err(Error::invalid(format!(
                        "names {:?} and {name:?} share the token form {ids:?}",
                        names[q]
                    )));
                }
                by_first.entry(first).or_default().push((p, k));
            }
            forms.push(f);
        }
        Ok(NameSwap { forms, by_first })
    }

    /// The swap of the training people of the synthetic world that `data_dir` was prepared
    /// from (its `world.json`), under `tok`. Refuses a folder without a world.
    pub fn for_data_folder(data_dir: &Path, tok: &Tokenizer) -> Result<NameSwap> {
        let wp = data_dir.join(super::prepare::WORLD_FILE);
        if !wp.exists() {
            return Err(Error::format(
                &wp,
                "name swapping needs the synthetic world this folder was prepared from (world.json is missing; turn name swaps off for other data)",
            ));
        }
        let cfg = super::prepare::PrepareConfig::for_folder(data_dir)?;
        let world = World::generate(&cfg.world)?;
        NameSwap::new(tok, &world.training_people())
    }

    /// Refuse `rollouts` (read from `file`) whose first questions name none of the swapped
    /// people: a world that does not match the data would make the swap a silent no-op.
    pub fn check_names_in(&self, rollouts: &[Rollout], file: &Path) -> Result<()> {
        if !rollouts.is_empty()
            && rollouts
                .iter()
                .take(16)
                .all(|r| self.count(&r.prompt_ids) == 0)
        {
            return Err(Error::format(
                file,
                "name swaps asked for, but no swappable name in the trajectories' questions: the world the swap was made from does not match these data",
            ));
        }
        Ok(())
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        self.forms.len()
    }

    /// Whether there are no names.
    pub fn is_empty(&self) -> bool {
        self.forms.is_empty()
    }

    /// Occurrences of the names in `ids`.
    pub fn count(&self, ids: &[u32]) -> usize {
        let (mut n, mut i) = (0, 0);
        while i < ids.len() {
            match self.match_at(ids, i) {
                Some((_, _, len)) => {
                    n += 1;
                    i += len;
                }
                None => i += 1,
            }
        }
        n
    }

    /// The longest name form starting at `ids[i]`: (name, form, length).
    fn match_at(&self, ids: &[u32], i: usize) -> Option<(usize, usize, usize)> {
        self.by_first
            .get(&ids[i])?
            .iter()
            .filter(|&&(p, k)| ids[i..].starts_with(&self.forms[p][k]))
            .map(|&(p, k)| (p, k, self.forms[p][k].len()))
            .max_by_key(|&(_, _, n)| n)
    }

    /// `ids` (with its per-token `mask`) with every name `p` replaced by name `perm[p]` in the
    /// same form. A replacement takes the mask value of the name it replaces; a name whose
    /// tokens are not all under one mask value (it would straddle an observation boundary) is
    /// left as it is.
    pub fn apply(&self, ids: &[u32], mask: &[u8], perm: &[usize]) -> Result<(Vec<u32>, Vec<u8>)> {
        if ids.len() != mask.len() {
            return Err(Error::invalid(format!(
                "{} ids but {} mask entries",
                ids.len(),
                mask.len()
            )));
        }
        if perm.len() != self.len() {
            return Err(Error::invalid(format!(
                "a permutation of {} names for a swap of {}",
                perm.len(),
                self.len()
            )));
        }
        let (mut out, mut out_mask) =
            (Vec::with_capacity(ids.len()), Vec::with_capacity(ids.len()));
        let mut i = 0;
        while i < ids.len() {
            if let Some((p, k, n)) = self.match_at(ids, i)
                && mask[i..i + n].iter().all(|&m| m == mask[i])
            {
                let new = &self.forms[perm[p]][k];
                out.extend_from_slice(new);
                out_mask.extend(std::iter::repeat_n(mask[i], new.len()));
                i += n;
            } else {
                out.push(ids[i]);
                out_mask.push(mask[i]);
                i += 1;
            }
        }
        Ok((out, out_mask))
    }

    /// `rollout` with its names permuted by `perm` (sampling log-probs become NaN: the swapped
    /// tokens were never sampled).
    pub fn apply_rollout(&self, r: &Rollout, perm: &[usize]) -> Result<Rollout> {
        let (prompt_ids, _) = self.apply(&r.prompt_ids, &vec![0; r.prompt_ids.len()], perm)?;
        let (response_ids, response_mask) = self.apply(&r.response_ids, &r.response_mask, perm)?;
        Ok(Rollout {
            logprobs: vec![f32::NAN; response_ids.len()],
            prompt_ids,
            response_ids,
            response_mask,
        })
    }

    /// `copies` swapped copies of `rollouts`, copy by copy; each rollout of each copy gets its
    /// own random permutation (seeded by `seed`, the copy and the rollout's position), so the
    /// result does not depend on thread counts or on how many copies are asked for.
    pub fn copies(&self, rollouts: &[Rollout], copies: usize, seed: u64) -> Result<Vec<Rollout>> {
        let mut out = Vec::with_capacity(rollouts.len() * copies);
        for c in 0..copies {
            for (i, r) in rollouts.iter().enumerate() {
                let mut rng = StdRng::seed_from_u64(
                    seed ^ (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                        ^ (i as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F),
                );
                let mut perm: Vec<usize> = (0..self.len()).collect();
                perm.shuffle(&mut rng);
                out.push(self.apply_rollout(r, &perm)?);
            }
        }
        Ok(out)
    }
}

/// Name-swapped copies to train on instead of the trajectories themselves.
#[derive(Debug, Clone)]
pub struct SwapCopies {
    /// The names swapped.
    pub swap: NameSwap,
    /// Copies of every trajectory (each with its own permutations).
    pub copies: usize,
}

impl SwapCopies {
    /// The training examples of the swapped copies of `rollouts` (see [`NameSwap::copies`]).
    pub fn examples(&self, rollouts: &[Rollout], seed: u64) -> Result<Vec<Example>> {
        self.swap
            .copies(rollouts, self.copies, seed)?
            .iter()
            .map(Example::from_rollout)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::WorldConfig;
    use crate::synth::prepare::{PrepareConfig, load_tokenizer, prepare, read_rollouts};

    /// A prepared small world: its training people's names, the tokenizer and the oracle
    /// trajectories.
    fn prepared(dir: &std::path::Path, vocab_size: usize) -> (World, Tokenizer, Vec<Rollout>) {
        let cfg = PrepareConfig {
            world: WorldConfig {
                people: 40,
                ..Default::default()
            },
            vocab_size,
            ..Default::default()
        };
        let p = prepare(dir, &cfg).unwrap();
        let world = World::generate(&cfg.world).unwrap();
        let tok = load_tokenizer(&p.tokenizer()).unwrap();
        let rs = read_rollouts(&p.trajectories()).unwrap();
        (world, tok, rs)
    }

    /// The reference: the same permutation applied to the decoded text (through placeholders,
    /// so that a name written in place of another is not replaced again).
    fn swap_text(text: &str, names: &[String], perm: &[usize]) -> String {
        let mut t = text.to_string();
        for (p, name) in names.iter().enumerate() {
            t = t.replace(name.as_str(), &format!("\u{E000}{p}\u{E001}"));
        }
        for p in 0..names.len() {
            t = t.replace(&format!("\u{E000}{p}\u{E001}"), &names[perm[p]]);
        }
        t
    }

    /// A response as its runs of equal mask value, each decoded.
    fn runs(tok: &Tokenizer, ids: &[u32], mask: &[u8]) -> Vec<(u8, String)> {
        let mut out = Vec::new();
        let mut start = 0;
        for i in 1..=ids.len() {
            if i == ids.len() || mask[i] != mask[start] {
                out.push((mask[start], tok.decode(&ids[start..i]).unwrap()));
                start = i;
            }
        }
        out
    }

    /// With names of one token (vocabulary 4096, the demo's) and of several (400), swapping ids
    /// gives what swapping the decoded text gives, observation runs stay observation runs, and
    /// test people's names are not touched.
    #[test]
    fn swapping_ids_matches_swapping_text_and_keeps_the_masks() {
        for vocab in [400, 4096] {
            let tmp = tempfile::tempdir().unwrap();
            let (world, tok, rs) = prepared(tmp.path(), vocab);
            let names = world.training_people();
            let swap = NameSwap::new(&tok, &names).unwrap();
            assert_eq!(swap.len(), world.people.len() - world.test.len() / 5);
            let test_names: Vec<&String> = world
                .people
                .iter()
                .map(|p| &p.name)
                .filter(|n| !names.contains(n))
                .collect();
            assert!(!test_names.is_empty());
            let mut rng = StdRng::seed_from_u64(7);
            let (mut found, mut test_seen) = (0, 0);
            for r in &rs {
                let mut perm: Vec<usize> = (0..swap.len()).collect();
                perm.shuffle(&mut rng);
                let s = swap.apply_rollout(r, &perm).unwrap();
                let before = tok.decode(&r.prompt_ids).unwrap();
                assert_eq!(
                    tok.decode(&s.prompt_ids).unwrap(),
                    swap_text(&before, &names, &perm),
                    "vocab {vocab}"
                );
                let want: Vec<(u8, String)> = runs(&tok, &r.response_ids, &r.response_mask)
                    .into_iter()
                    .map(|(m, t)| (m, swap_text(&t, &names, &perm)))
                    .collect();
                assert_eq!(
                    runs(&tok, &s.response_ids, &s.response_mask),
                    want,
                    "vocab {vocab}"
                );
                assert_eq!(s.logprobs.len(), s.response_ids.len());
                found += swap.count(&r.prompt_ids) + swap.count(&r.response_ids);
                let text = tok.decode(&s.response_ids).unwrap();
                let orig = tok.decode(&r.response_ids).unwrap();
                for n in &test_names {
                    assert_eq!(
                        text.matches(n.as_str()).count(),
                        orig.matches(n.as_str()).count()
                    );
                    test_seen += orig.matches(n.as_str()).count();
                }
            }
            // Every trajectory names its person in the question, the think turn, the search
            // and the passage; test people appear as mentors and retrieved neighbours.
            assert!(
                found >= 4 * rs.len(),
                "{found} names in {} trajectories",
                rs.len()
            );
            assert!(test_seen > 0);
        }
    }

    /// The inverse permutation restores a trajectory; copies are seeded per copy and
    /// trajectory, so asking for more copies keeps the first ones; a wrong permutation or mask
    /// length is refused.
    #[test]
    fn copies_are_deterministic_and_invertible() {
        let tmp = tempfile::tempdir().unwrap();
        let (world, tok, rs) = prepared(tmp.path(), 4096);
        let swap = NameSwap::new(&tok, &world.training_people()).unwrap();
        let rs = &rs[..20];
        let one = swap.copies(rs, 1, 3).unwrap();
        let two = swap.copies(rs, 2, 3).unwrap();
        assert_eq!(two.len(), 40);
        for (a, b) in one.iter().zip(&two) {
            assert_eq!(
                (&a.prompt_ids, &a.response_ids),
                (&b.prompt_ids, &b.response_ids)
            );
        }
        // Copies differ from each other and from the originals (a question keeps its person
        // with probability 1/32 under a random permutation of 32 people).
        let differ = |f: &dyn Fn(usize) -> bool| (0..20).filter(|&i| f(i)).count();
        assert!(differ(&|i| two[i].prompt_ids != two[20 + i].prompt_ids) >= 15);
        assert!(differ(&|i| two[i].prompt_ids != rs[i].prompt_ids) >= 15);

        let mut perm: Vec<usize> = (0..swap.len()).collect();
        perm.shuffle(&mut StdRng::seed_from_u64(1));
        let mut inverse = vec![0; perm.len()];
        for (p, &q) in perm.iter().enumerate() {
            inverse[q] = p;
        }
        for r in rs {
            let back = swap
                .apply_rollout(&swap.apply_rollout(r, &perm).unwrap(), &inverse)
                .unwrap();
            assert_eq!(back.prompt_ids, r.prompt_ids);
            assert_eq!(back.response_ids, r.response_ids);
            assert_eq!(back.response_mask, r.response_mask);
        }
        let e = swap.apply(&[1, 2], &[1], &perm).unwrap_err().to_string();
        assert!(e.contains("2 ids but 1 mask entries"), "{e}");
        let e = swap.apply(&[1], &[1], &perm[1..]).unwrap_err().to_string();
        assert!(e.contains("permutation"), "{e}");
    }
}
