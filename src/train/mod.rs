//! Training: optimizer, learning-rate schedule, the training loop, and the checkpoint directory
//! it saves to and resumes from.

pub mod checkpoints;
pub mod optimizer;
pub mod schedule;
pub mod sync;
pub mod trainer;
