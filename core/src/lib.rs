//! # dgpo-core
//!
//! The runtime of dgpo: compact language models as Search-R1 search agents.
//!
//! Data flows one way: a [`corpus`] is indexed for [`retrieve`]al, a [`model`] runs the
//! [`agent`] loop in the [`protocol`]'s tag format, and each run leaves a [`trace`] that
//! evaluation scores. Training (the `train` crate) builds on this crate, never the reverse.

#![warn(missing_docs)]

pub mod agent;
pub mod chat;
pub mod corpus;
pub mod data;
pub mod embed;
pub mod error;
pub mod eval;
pub mod generate;
pub mod index;
#[cfg(feature = "llama")]
pub mod llama;
pub mod model;
pub mod protocol;
pub mod retrieve;
pub mod sampling;
pub mod tokenizer;
pub mod trace;

pub use error::{Error, Result};

/// Re-exported so downstream crates and tests use the same candle version.
pub use candle_core;
/// Re-exported tokenizers crate.
pub use tokenizers;
