//! A training run's checkpoint directory: the writer of its save points and the latest state read
//! back by `--resume_from_checkpoint`.
//!
//! `--checkpoint_dir` holds the best model as a Hugging Face directory (`config.json`,
//! `model.safetensors`, tokenizer files, `label_mapping.json`, `train_config.json`), the
//! `model_step_N.safetensors` copies of `--save_all_checkpoints`, the latest training state in
//! `latest/` (`model.safetensors`, `optimizer.safetensors`, `trainer_state.json`), the run's log
//! folder `log/` ([`crate::runlog`]) and, while a run trains into it, the lock file. Every save
//! point replaces the whole directory at once ([`crate::persist`]), so a kill at any instant
//! leaves one complete version; the log's files, appended between save points, are the same
//! files in every version (hard links).

use super::trainer::{Checkpoints, Snapshot, TrainState};
use crate::data::labels::LabelSet;
use crate::logging;
use crate::model::checkpoint::{classifier_config_json, save_metadata};
use crate::model::config::BertConfig;
use crate::persist::{DirLock, DirTxn};
use crate::runlog::{RunLog, LOG_DIR};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::path::{Path, PathBuf};

/// The folder of the latest training state inside a checkpoint directory.
pub const LATEST: &str = "latest";
/// The weights file of a checkpoint (best model, or latest state inside [`LATEST`]).
pub const WEIGHTS: &str = "model.safetensors";
/// The progress and fingerprint of the latest state.
const STATE: &str = "trainer_state.json";
/// The AdamW moments of the latest state.
const OPTIMIZER: &str = "optimizer.safetensors";

/// What `trainer_state.json` holds.
#[derive(Serialize, Deserialize)]
pub struct SavedState {
    /// Progress.
    #[serde(flatten)]
    pub progress: TrainState,
    /// Everything that shapes the run, in a fixed order: `[name, value]`.
    pub fingerprint: Vec<[String; 2]>,
}

/// Where and how a training run writes its save points.
pub struct CheckpointWriter<'a> {
    /// The held directory; None on the data-parallel ranks other than 0, which never write.
    lock: Option<DirLock>,
    dir: PathBuf,
    config: &'a BertConfig,
    labels: &'a LabelSet,
    model_dir: PathBuf,
    train_config: serde_json::Value,
    save_all: bool,
    fingerprint: Vec<[String; 2]>,
    /// Whether a save point of this process has written the metadata files yet.
    metadata_saved: Cell<bool>,
}

impl<'a> CheckpointWriter<'a> {
    /// A writer into the directory held by `lock`, for a model with `config` and `labels` whose
    /// tokenizer files come from `model_dir`; `train_config` becomes `train_config.json`,
    /// `fingerprint` is recorded in every saved state.
    pub fn new(
        lock: DirLock,
        (config, labels, model_dir): (&'a BertConfig, &'a LabelSet, &Path),
        train_config: serde_json::Value,
        save_all: bool,
        fingerprint: &[(String, String)],
    ) -> Self {
        CheckpointWriter {
            dir: lock.dir().to_path_buf(),
            // A run that fails before its first save leaves no directory, log or not.
            lock: Some(lock.disposable(LOG_DIR)),
            config,
            labels,
            model_dir: model_dir.to_path_buf(),
            train_config,
            save_all,
            fingerprint: fingerprint.iter().map(|(k, v)| [k.clone(), v.clone()]).collect(),
            metadata_saved: Cell::new(false),
        }
    }
}

impl<'a> CheckpointWriter<'a> {
    /// The writer of a data-parallel rank other than 0: it knows the directory (`dir`, held by
    /// rank 0) and the run, and refuses to write.
    pub fn follower(
        dir: &Path,
        (config, labels, model_dir): (&'a BertConfig, &'a LabelSet, &Path),
        save_all: bool,
        fingerprint: &[(String, String)],
    ) -> Self {
        CheckpointWriter {
            lock: None,
            dir: dir.to_path_buf(),
            config,
            labels,
            model_dir: model_dir.to_path_buf(),
            train_config: serde_json::Value::Null,
            save_all,
            fingerprint: fingerprint.iter().map(|(k, v)| [k.clone(), v.clone()]).collect(),
            metadata_saved: Cell::new(false),
        }
    }
}

impl CheckpointWriter<'_> {
    /// The checkpoint directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The held directory (rank 0's writer only).
    fn held(&self) -> Result<&DirLock> {
        self.lock.as_ref().context("only rank 0 of the data-parallel workers writes the checkpoint directory")
    }

    /// Logs the end of a run: the best validation accuracy, if any (`scope` names the rows it is
    /// over where that is not plain), and where `what` was saved.
    pub fn log_done(&self, state: &TrainState, what: &str, scope: Option<&str>) {
        let place = format!("{what} in {}", self.dir().display());
        match state.best_accuracy {
            Some(acc) => {
                let scope = scope.map(|s| format!(" ({s})")).unwrap_or_default();
                logging::info(format!("training done: best validation accuracy{scope} {acc:.4}, {place}"))
            }
            None => logging::info(format!("training done: {place}")),
        }
    }

    /// Starts a new version of the directory, with the metadata files on the first one.
    fn begin(&self) -> Result<DirTxn> {
        let txn = DirTxn::begin(self.held()?.real_dir())?;
        if !self.metadata_saved.get() {
            save_metadata(&txn, self.config, self.labels, &self.train_config, &self.model_dir)?;
        }
        Ok(txn)
    }

    /// Commits `txn`; the metadata is then on disk.
    fn commit(&self, txn: DirTxn) -> Result<()> {
        txn.commit()?;
        self.metadata_saved.set(true);
        Ok(())
    }

    /// Resuming from another directory: the best model so far comes along, so that this one
    /// holds a complete model even if the rest of the run never improves on it, and so does the
    /// log of the run so far (copied: this run appends to it).
    pub fn adopt_best_model(&self, from: &Path) -> Result<()> {
        if same_dir(from, self.dir()) {
            return Ok(());
        }
        let best = from.join(WEIGHTS);
        let log = from.join(LOG_DIR);
        let log_files: Vec<PathBuf> = match std::fs::read_dir(&log) {
            Ok(entries) => entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect(),
            Err(_) => Vec::new(),
        };
        if !best.is_file() && log_files.is_empty() {
            return Ok(());
        }
        let txn = self.begin()?;
        if best.is_file() {
            txn.link(WEIGHTS, &best)?;
        }
        for file in &log_files {
            let name = file.file_name().expect("a listed file").to_string_lossy();
            txn.write_with(&format!("{LOG_DIR}/{name}"), |p| {
                std::fs::copy(file, p).map(drop).with_context(|| format!("cannot copy {}", file.display()))
            })?;
        }
        self.commit(txn)?;
        if best.is_file() {
            logging::info(format!(
                "copied the best model so far from {} into {}",
                from.display(),
                self.dir().display()
            ));
        }
        Ok(())
    }
}

impl Checkpoints for CheckpointWriter<'_> {
    /// One new version of the directory: the latest state, and the model as the best (and a
    /// step copy) when asked; the best model is a link to the latest weights, not a second write.
    fn save(&self, snap: &Snapshot) -> Result<()> {
        let txn = self.begin()?;
        let latest = |name: &str| format!("{LATEST}/{name}");
        txn.write_with(&latest(WEIGHTS), |p| {
            candle_core::safetensors::save(&snap.params.tensors(), p)
                .with_context(|| format!("cannot write {}", p.display()))
        })?;
        txn.write_with(&latest(OPTIMIZER), |p| {
            candle_core::safetensors::save(&snap.optimizer.state_tensors()?, p)
                .with_context(|| format!("cannot write {}", p.display()))
        })?;
        let state = SavedState { progress: snap.state.clone(), fingerprint: self.fingerprint.clone() };
        txn.write(&latest(STATE), serde_json::to_string_pretty(&state)?.as_bytes())?;
        let weights = txn.path(&latest(WEIGHTS));
        if snap.new_best {
            txn.link(WEIGHTS, &weights)?;
        }
        if snap.step_copy {
            txn.link(&format!("model_step_{}.safetensors", snap.state.global_step), &weights)?;
        }
        self.commit(txn)
    }

    fn save_all(&self) -> bool {
        self.save_all
    }

    fn location(&self) -> &Path {
        self.dir()
    }

    /// `log/` in the checkpoint directory, with the run's flags (`train_config.json`) and the
    /// model's `config.json` as the texts `config/training` and `config/model_config`.
    fn run_log(&self, state: &TrainState, resumed: bool) -> Result<Option<RunLog>> {
        let texts = [
            ("config/training", serde_json::to_string_pretty(&self.train_config)?),
            ("config/model_config", serde_json::to_string_pretty(&classifier_config_json(self.config, self.labels))?),
        ];
        Ok(Some(RunLog::open(self.held()?.real_dir(), state.global_step, resumed, &texts)?))
    }
}

/// Reads the latest state saved in `dir` (a checkpoint directory, or its `latest/` folder):
/// progress and fingerprint, the optimizer moments, and the folder they were read from.
pub fn read_saved_state(
    dir: &Path,
    device: &Device,
) -> Result<(SavedState, std::collections::HashMap<String, candle_core::Tensor>, PathBuf)> {
    if !dir.is_dir() {
        bail!("--resume_from_checkpoint: {} is not a directory", dir.display());
    }
    let latest = if dir.join(STATE).is_file() { dir.to_path_buf() } else { dir.join(LATEST) };
    let state_path = latest.join(STATE);
    let text = std::fs::read_to_string(&state_path).map_err(|_| {
        anyhow::anyhow!(
            "--resume_from_checkpoint: {} holds no saved training state ({} is missing): it was not written by a \
             training run of this program, or that run stopped before its first save point; train without \
             --resume_from_checkpoint",
            dir.display(),
            state_path.display()
        )
    })?;
    let state: SavedState =
        serde_json::from_str(&text).with_context(|| format!("{}: not a training state", state_path.display()))?;
    let opt_path = latest.join(OPTIMIZER);
    let optimizer = candle_core::safetensors::load(&opt_path, device)
        .with_context(|| format!("cannot read {}", opt_path.display()))?;
    Ok((state, optimizer, latest))
}

/// Resuming a different run is an error naming the first difference.
pub fn check_same_run(saved: &[[String; 2]], now: &[(String, String)], dir: &Path) -> Result<()> {
    for (key, value) in now {
        match saved.iter().find(|[k, _]| k == key) {
            Some([_, v]) if v == value => {}
            Some([_, v]) => bail!(
                "--resume_from_checkpoint={}: this run differs from the saved one in {key}: saved `{v}`, now `{value}`",
                dir.display()
            ),
            None => bail!("--resume_from_checkpoint={}: the saved run has no {key} (`{value}` now)", dir.display()),
        }
    }
    if let Some([key, v]) = saved.iter().find(|[k, _]| !now.iter().any(|(n, _)| n == k)) {
        bail!("--resume_from_checkpoint={}: the saved run had {key} `{v}`, this one has none", dir.display());
    }
    Ok(())
}

/// Whether two paths name the same directory.
fn same_dir(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_different_run_is_named_by_its_first_difference() {
        let saved = vec![["a".to_string(), "1".to_string()], ["b".into(), "2".into()]];
        let now = |b: &str| vec![("a".to_string(), "1".to_string()), ("b".into(), b.to_string())];
        check_same_run(&saved, &now("2"), Path::new("d")).unwrap();
        let e = check_same_run(&saved, &now("3"), Path::new("d")).unwrap_err().to_string();
        assert!(e.contains("differs from the saved one in b: saved `2`, now `3`"), "{e}");
        let e = check_same_run(&saved, &now("2")[..1], Path::new("d")).unwrap_err().to_string();
        assert!(e.contains("had b `2`"), "{e}");
    }
}
