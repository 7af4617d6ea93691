//! Training: optimizer, learning-rate schedule, metrics and the training loop.

pub mod metrics;
pub mod optimizer;
pub mod schedule;
pub mod trainer;
