pub use dgpo_core::*;
