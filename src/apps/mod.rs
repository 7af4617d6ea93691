//! The applications: text_classify and single-tower text_match share one implementation of
//! train, evaluate and predict.

pub mod evaluate;
pub mod format;
pub mod predict;
pub mod run_state;
pub mod text;
pub mod train;

use crate::cli::args::Mode;
use crate::cli::config::{Invocation, RunConfig};
use anyhow::Result;

/// Runs a validated invocation: a text-app mode or a Meta-KD preparation step.
pub fn dispatch(invocation: &Invocation) -> Result<()> {
    match invocation {
        Invocation::Text(cfg) => run(cfg),
        Invocation::MetakdPrep(prep) => crate::metakd::run(prep),
    }
}

/// Dispatches the text-app modes on `--mode`.
pub fn run(cfg: &RunConfig) -> Result<()> {
    let device = crate::device::select(cfg.args.worker_gpu, cfg.args.worker_count)?;
    match cfg.args.mode {
        Mode::Train => train::run(cfg, &device),
        Mode::Evaluate => evaluate::run(cfg, &device),
        Mode::Predict => predict::run(cfg, &device),
        other => anyhow::bail!("--mode={} is not a text-app mode", other.name()),
    }
}
