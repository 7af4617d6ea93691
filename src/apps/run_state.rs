//! A training run's checkpoint directory: its lock, the fingerprint of everything that shapes the
//! run, the latest state read back by `--resume_from_checkpoint`, and the writer of save points.
//!
//! `--checkpoint_dir` holds the best model as a Hugging Face directory (`config.json`,
//! `model.safetensors`, tokenizer files, `label_mapping.json`, `train_config.json`), the
//! `model_step_N.safetensors` copies of `--save_all_checkpoints`, the latest training state in
//! `latest/` (`model.safetensors`, `optimizer.safetensors`, `trainer_state.json`) and, while a run
//! trains into it, the lock file. Every save point replaces the whole directory at once
//! ([`crate::persist`]), so a kill at any instant leaves one complete version.

use crate::cli::config::RunConfig;
use crate::data::labels::LabelSet;
use crate::distill::logits::{sha256_file, TableFingerprint};
use crate::logging;
use crate::model::checkpoint::{save_metadata, weights_file};
use crate::model::config::BertConfig;
use crate::persist::{DirLock, DirTxn};
use crate::train::trainer::{Checkpoints, Resume, Snapshot, TrainState};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::path::{Path, PathBuf};

/// The folder of the latest training state inside a checkpoint directory.
pub const LATEST: &str = "latest";
/// The weights file of a checkpoint (best model, or latest state inside [`LATEST`]).
const WEIGHTS: &str = "model.safetensors";
/// The progress and fingerprint of the latest state.
const STATE: &str = "trainer_state.json";
/// The AdamW moments of the latest state.
const OPTIMIZER: &str = "optimizer.safetensors";

/// What `trainer_state.json` holds.
#[derive(Serialize, Deserialize)]
struct SavedState {
    #[serde(flatten)]
    progress: TrainState,
    /// Everything that shapes the run, in a fixed order: `[name, value]`.
    fingerprint: Vec<[String; 2]>,
}

/// A training run, ready to start or continue: the locked checkpoint writer, the state to resume
/// from, the seed and where the starting weights come from.
pub(crate) struct RunStart<'a> {
    /// Saves into `--checkpoint_dir`, which it holds locked.
    pub writer: CheckpointWriter<'a>,
    /// The latest state of `--resume_from_checkpoint`.
    pub resume: Option<Resume>,
    /// The seed: `--random_seed` when positive, else the resumed run's, else a drawn one.
    pub seed: u64,
    /// The folder whose `model.safetensors` the weights start from.
    pub weights_source: PathBuf,
}

impl<'a> RunStart<'a> {
    /// Locks the checkpoint directory, reads and checks the state to resume from, and (when
    /// resuming into another directory) brings the best model so far along.
    pub fn begin(
        cfg: &RunConfig,
        config: &'a BertConfig,
        labels: &'a LabelSet,
        model_dir: &Path,
        device: &Device,
    ) -> Result<Self> {
        let dir = cfg.checkpoint_dir();
        let lock = DirLock::acquire(&dir)?;
        let resume_dir = cfg.args.resume_from_checkpoint.as_deref().map(Path::new);
        let saved = resume_dir.map(|d| read_saved_state(d, device)).transpose()?;
        let seed = match &saved {
            Some((state, _, _)) if cfg.args.random_seed <= 0 => state.progress.seed,
            _ => cfg.seed,
        };
        if cfg.args.random_seed <= 0 {
            let origin = if saved.is_some() { "the resumed run's seed" } else { "drew a seed" };
            logging::info(format!(
                "--random_seed={}: {origin}, {seed} (--random_seed={seed} repeats it)",
                cfg.args.random_seed
            ));
        }
        let fingerprint = run_fingerprint(cfg, labels, model_dir, seed)?;
        if let (Some((state, _, latest)), Some(from)) = (&saved, resume_dir) {
            check_same_run(&state.fingerprint, &fingerprint, from)?;
            if state.progress.seed != seed {
                bail!(
                    "{}: the saved state was trained with seed {}, not {seed}",
                    latest.display(),
                    state.progress.seed
                );
            }
        }
        let mut train_config = crate::apps::train::train_config_json(cfg, model_dir);
        train_config["seed_used"] = serde_json::json!(seed);
        let writer = CheckpointWriter {
            lock,
            config,
            labels,
            model_dir: model_dir.to_path_buf(),
            train_config,
            save_all: cfg.args.save_all_checkpoints,
            fingerprint: fingerprint.into_iter().map(|(k, v)| [k, v]).collect(),
            metadata_saved: Cell::new(false),
        };
        let (resume, weights_source) = match (saved, resume_dir) {
            (Some((state, optimizer, latest)), Some(from)) => {
                writer.adopt_best_model(from)?;
                (Some(Resume { state: state.progress, optimizer }), latest)
            }
            _ => (None, model_dir.to_path_buf()),
        };
        Ok(RunStart { writer, resume, seed, weights_source })
    }
}

/// Where and how a training run writes its save points.
pub(crate) struct CheckpointWriter<'a> {
    lock: DirLock,
    config: &'a BertConfig,
    labels: &'a LabelSet,
    model_dir: PathBuf,
    train_config: serde_json::Value,
    save_all: bool,
    fingerprint: Vec<[String; 2]>,
    /// Whether a save point of this process has written the metadata files yet.
    metadata_saved: Cell<bool>,
}

impl CheckpointWriter<'_> {
    /// The checkpoint directory.
    pub fn dir(&self) -> &Path {
        self.lock.dir()
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
        let txn = DirTxn::begin(self.dir())?;
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
    /// holds a complete model even if the rest of the run never improves on it.
    fn adopt_best_model(&self, from: &Path) -> Result<()> {
        let best = from.join(WEIGHTS);
        if !best.is_file() || same_dir(from, self.dir()) {
            return Ok(());
        }
        let txn = self.begin()?;
        txn.link(WEIGHTS, &best)?;
        self.commit(txn)?;
        logging::info(format!("copied the best model so far from {} into {}", from.display(), self.dir().display()));
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
}

/// Reads the latest state saved in `dir` (a checkpoint directory, or its `latest/` folder):
/// progress and fingerprint, the optimizer moments, and the folder they were read from.
fn read_saved_state(
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

/// Everything that shapes a run, in a fixed order, as `(name, value)`; file contents by SHA-256.
fn run_fingerprint(cfg: &RunConfig, labels: &LabelSet, model_dir: &Path, seed: u64) -> Result<Vec<(String, String)>> {
    let a = &cfg.args;
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let mut f: Vec<(String, String)> = vec![("app_name".into(), a.app_name.clone())];
    let train = &cfg.tables[0];
    f.push(("training table (SHA-256)".into(), TableFingerprint::of(train, cfg.skip_header(train)?)?.sha256));
    if cfg.udp.bool("do_eval", true)? {
        let dev = cfg.last_table();
        f.push(("validation table (SHA-256)".into(), TableFingerprint::of(dev, cfg.skip_header(dev)?)?.sha256));
    }
    f.extend([
        ("input_schema".into(), opt(&a.input_schema)),
        ("first_sequence".into(), opt(&a.first_sequence)),
        ("second_sequence".into(), opt(&a.second_sequence)),
        ("label_name".into(), opt(&a.label_name)),
        ("skip_first_line".into(), a.skip_first_line.to_string()),
        ("labels (in order)".into(), labels.names.join(",")),
        ("model (SHA-256 of its weights)".into(), weights_sha256(model_dir)?),
        ("sequence_length".into(), a.sequence_length.to_string()),
        ("do_lower_case".into(), a.do_lower_case.to_string()),
        ("micro_batch_size".into(), a.micro_batch_size.to_string()),
        ("gradient_accumulation_steps".into(), a.gradient_accumulation_steps.to_string()),
        ("learning_rate".into(), a.learning_rate.to_string()),
        ("warmup_proportion".into(), a.warmup_proportion.to_string()),
        ("epoch_num".into(), a.epoch_num.to_string()),
        ("max_grad_norm".into(), a.max_grad_norm.to_string()),
        ("weight_decay".into(), a.weight_decay.to_string()),
        ("optimizer_type".into(), format!("{:?}", a.optimizer_type)),
        ("save_checkpoint_steps".into(), a.save_checkpoint_steps.map(|n| n.to_string()).unwrap_or_default()),
        ("random_seed".into(), seed.to_string()),
    ]);
    for (key, value) in cfg.udp.entries() {
        if key == "pretrain_model_name_or_path" {
            continue; // the model is fingerprinted by its weights, however it is named
        }
        f.push((format!("user_defined_parameters {key}"), value.to_string()));
        let path = Path::new(value);
        if path.is_file() {
            f.push((format!("user_defined_parameters {key} (SHA-256)"), sha256_file(path)?));
        } else if path.is_dir() {
            f.push((format!("user_defined_parameters {key} (SHA-256 of its weights)"), weights_sha256(path)?));
        }
    }
    Ok(f)
}

/// SHA-256 of a model directory's weights file (`model.safetensors`, else `pytorch_model.bin`;
/// empty when it has neither).
fn weights_sha256(dir: &Path) -> Result<String> {
    let file = weights_file(dir);
    if file.is_file() {
        sha256_file(&file)
    } else {
        Ok(String::new())
    }
}

/// Resuming a different run is an error naming the first difference.
fn check_same_run(saved: &[[String; 2]], now: &[(String, String)], dir: &Path) -> Result<()> {
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
