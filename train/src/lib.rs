//! The dgpo training engine: trainable Qwen2/Llama models over core's differentiable decoder,
//! losses (cross-entropy, full-vocabulary forward KL), AdamW with warmup and decay, and atomic,
//! resumable checkpoints.
//!
//! The `train` binary is a thin command-line layer over this library.

#![warn(missing_docs)]
pub mod checkpoint;
pub mod data;
pub mod demo;
pub mod evaluate;
pub mod loss;
pub mod model;
pub mod optim;
pub mod phases;
pub mod plot;
pub mod presets;
pub mod rl;
pub mod synth;
pub mod trainer;

pub use model::{Batch, ModelOptions, TrainModel};
