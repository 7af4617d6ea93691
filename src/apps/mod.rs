//! The applications: text_classify and single-tower text_match share one implementation of
//! train, evaluate and predict.

pub mod evaluate;
pub mod predict;
pub mod train;

use crate::config::run::RunConfig;
use crate::model::checkpoint::CHECKPOINT_FILES;
use crate::output::{check_not_input, Destination, Input};
use anyhow::Result;
use std::path::Path;

/// The files an evaluate or predict run reads: every table of `--tables`, the checkpoint's files
/// and a `--label_enumerate_values` file.
fn read_files(cfg: &RunConfig) -> Vec<Input> {
    let mut files: Vec<Input> = cfg.tables.iter().map(|t| Input::new(t, "the input table")).collect();
    let dir = cfg.checkpoint_dir();
    files.extend(CHECKPOINT_FILES.iter().map(|f| Input::new(dir.join(f), "the checkpoint file")));
    if let Some(labels) = cfg.args.label_enumerate_values.as_deref().filter(|v| Path::new(v).is_file()) {
        files.push(Input::new(labels, "the label file"));
    }
    files
}

/// How an output file of evaluate/predict (`what`, e.g. `--outputs`) is written; refuses a
/// directory and any file the run reads, before any work.
fn output_destination(cfg: &RunConfig, path: &Path, what: &str) -> Result<Destination> {
    let dest = Destination::resolve(path, what)?;
    check_not_input(path, what, &dest, &read_files(cfg))?;
    Ok(dest)
}
