//! The settings of `--mode=report`: which checkpoint directories, and where the report goes.

use super::args::Args;
use anyhow::{bail, Result};
use std::path::PathBuf;

/// A validated `--mode=report`.
#[derive(Clone, Debug)]
pub struct ReportConfig {
    /// The checkpoint directories of the runs, in the order given.
    pub runs: Vec<PathBuf>,
    /// The folder that gets report.svg, report.png and report.md.
    pub outputs: PathBuf,
}

impl ReportConfig {
    /// Reads `--checkpoint_dir` (comma-separated) and `--outputs`.
    pub fn from_args(args: &Args) -> Result<Self> {
        let Some(dirs) = args.checkpoint_dir.as_deref().filter(|d| !d.trim().is_empty()) else {
            bail!("--mode=report needs --checkpoint_dir: the checkpoint directories of one or more training runs, comma-separated");
        };
        let runs: Vec<PathBuf> = dirs.split(',').map(str::trim).filter(|d| !d.is_empty()).map(PathBuf::from).collect();
        let Some(outputs) = args.outputs.as_deref().filter(|o| !o.trim().is_empty()) else {
            bail!("--mode=report needs --outputs: the folder for report.svg, report.png and report.md");
        };
        let outputs = PathBuf::from(outputs);
        if outputs.exists() && !outputs.is_dir() {
            bail!("--outputs={}: --mode=report writes a folder, and this is a file", outputs.display());
        }
        Ok(ReportConfig { runs, outputs })
    }
}
