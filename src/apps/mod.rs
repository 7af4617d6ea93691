//! The applications: text_classify and single-tower text_match share one implementation of
//! train, evaluate and predict.

pub mod evaluate;
pub mod format;
pub mod predict;
pub mod text;
pub mod train;

use crate::cli::args::Mode;
use crate::cli::config::RunConfig;
use anyhow::Result;

/// Dispatches on `--mode`.
pub fn run(cfg: &RunConfig) -> Result<()> {
    let device = crate::device::select(cfg.args.worker_gpu, cfg.args.worker_count)?;
    match cfg.args.mode {
        Mode::Train => train::run(cfg, &device),
        Mode::Evaluate => evaluate::run(cfg, &device),
        Mode::Predict => predict::run(cfg, &device),
    }
}
