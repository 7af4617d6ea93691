//! easynlp-rs: Alibaba EasyNLP's text-classification and knowledge-distillation workflow in Rust
//! (vanilla KD in [`distill`], Meta-KD in [`metakd`]). ARCHITECTURE.md draws the layers.
//!
//! The binary `easynlp` is a thin wrapper over [`run`]; every concept lives in its own module.

pub mod alloc;
pub mod apps;
pub mod cli;
pub mod config;
pub mod data;
pub mod device;
pub mod digest;
pub mod dist;
pub mod distill;
pub mod format;
pub mod interrupt;
pub mod job;
pub mod logging;
pub mod metakd;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod output;
pub mod persist;
pub mod report;
pub mod rng;
pub mod runlog;
pub mod tensorboard;
pub mod train;

pub use cli::run;
