//! Training: optimizer, learning-rate schedule, metrics and the training loop.

pub mod checkpoints;
pub mod optimizer;
pub mod schedule;
pub mod trainer;
