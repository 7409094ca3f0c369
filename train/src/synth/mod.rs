//! The synthetic world for training tests and small experiments: a seeded encyclopedia written
//! as a wiki-18 corpus, single-hop and two-hop question sets in Search-R1's schema, and a
//! byte-level BPE tokenizer trained on the corpus.

pub mod fresh;
pub mod name_swap;
pub mod oracle;
pub mod prepare;
pub mod tokenizer;
pub mod world;

pub use tokenizer::{SPECIAL_TOKENS, train_bpe};
pub use world::{FreshPeople, World, WorldConfig};
