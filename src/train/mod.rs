//! Training: optimizer, learning-rate schedule, metrics and the training loop.

pub mod optimizer;
pub mod schedule;
pub mod trainer;
