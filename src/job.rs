//! The set-up of a training run from its [`RunConfig`]: the checkpoint directory (locked, with the
//! fingerprint of everything that shapes the run and the state to resume from), the starting
//! weights and the loop's settings. Shared by the text apps and the Meta-KD trainings.

use crate::config::run::RunConfig;
use crate::data::batch::Example;
use crate::data::labels::LabelSet;
use crate::data::table::TableFingerprint;
use crate::digest::sha256_file;
use crate::logging;
use crate::model::checkpoint::weights_file;
use crate::model::classifier::init_head;
use crate::model::config::BertConfig;
use crate::model::infer::check_sequence_length;
use crate::model::params::{read_weights, Params};
use crate::model::zoo::resolve_model;
use crate::persist::DirLock;
use crate::rng::Rng;
use crate::train::checkpoints::{check_same_run, read_saved_state, CheckpointWriter};
use crate::train::trainer::{check_world_size, train, Resume, TrainSettings, TrainTask};
use anyhow::Result;
use candle_core::Device;
use std::path::{Path, PathBuf};

/// A training run, ready to start or continue: the locked checkpoint writer, the state to resume
/// from, the seed and where the starting weights come from.
pub struct RunStart<'a> {
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
        // Data parallel: rank 0 holds the directory (and settles any interrupted save in it)
        // before the other ranks read the state to resume from.
        let world = crate::dist::world();
        let lock = if world.is_root() { Some(DirLock::acquire(&dir)?) } else { None };
        let start = Self::begin_locked(cfg, (config, labels, model_dir), lock, &dir, device);
        if world.is_root() {
            // An error on rank 0 ends the job (see `dist::World::abort_on_error`) instead.
            world.barrier();
        }
        start
    }

    /// [`Self::begin`] once rank 0 holds the directory (`lock`, None on the other ranks).
    fn begin_locked(
        cfg: &RunConfig,
        (config, labels, model_dir): (&'a BertConfig, &'a LabelSet, &Path),
        lock: Option<DirLock>,
        dir: &Path,
        device: &Device,
    ) -> Result<Self> {
        if lock.is_none() {
            crate::dist::world().barrier();
        }
        // The directory resumed from, with its saved state, optimizer moments and latest folder.
        let saved = match cfg.args.resume_from_checkpoint.as_deref().map(Path::new) {
            Some(from) => Some((from, read_saved_state(from, device)?)),
            None => None,
        };
        let seed = match &saved {
            Some((_, (state, _, _))) if cfg.args.random_seed <= 0 => state.progress.seed,
            _ => cfg.seed,
        };
        // A drawn seed is rank 0's on every rank.
        let seed = broadcast_seed(seed);
        if cfg.args.random_seed <= 0 {
            let origin = if saved.is_some() { "the resumed run's seed" } else { "drew a seed" };
            logging::info(format!(
                "--random_seed={}: {origin}, {seed} (--random_seed={seed} repeats it)",
                cfg.args.random_seed
            ));
        }
        // The seed is part of the fingerprint, so a resume with another seed is refused here too.
        let fingerprint = run_fingerprint(cfg, labels, model_dir, seed)?;
        if let Some((from, (state, _, _))) = &saved {
            check_same_run(&state.fingerprint, &fingerprint, from)?;
            check_world_size(state.progress.world_size, crate::dist::world().size())?;
        }
        let writer = match lock {
            Some(lock) => CheckpointWriter::new(
                lock,
                (config, labels, model_dir),
                train_config_json(cfg, model_dir, seed),
                cfg.args.save_all_checkpoints,
                &fingerprint,
            ),
            None => CheckpointWriter::follower(
                dir,
                (config, labels, model_dir),
                cfg.args.save_all_checkpoints,
                &fingerprint,
            ),
        };
        let (resume, weights_source) = match saved {
            Some((from, (state, optimizer, latest))) => {
                if crate::dist::world().is_root() {
                    writer.adopt_best_model(from)?;
                }
                (Some(Resume { state: state.progress, optimizer }), latest)
            }
            None => (None, model_dir.to_path_buf()),
        };
        Ok(RunStart { writer, resume, seed, weights_source })
    }
}

/// Rank 0's seed on every rank.
fn broadcast_seed(seed: u64) -> u64 {
    let bytes = crate::dist::world().broadcast_bytes(seed.to_le_bytes().to_vec());
    bytes.try_into().map_or(seed, u64::from_le_bytes)
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

/// The training-loop settings of a run, from its flags and the seed it uses.
pub fn train_settings(cfg: &RunConfig, seed: u64) -> TrainSettings {
    TrainSettings {
        epochs: cfg.args.epoch_num,
        batch_size: cfg.args.micro_batch_size,
        grad_accum: cfg.args.gradient_accumulation_steps,
        learning_rate: cfg.args.learning_rate,
        warmup_proportion: cfg.args.warmup_proportion,
        max_grad_norm: cfg.args.max_grad_norm,
        weight_decay: cfg.args.weight_decay,
        optimizer: cfg.args.optimizer_type,
        logging_steps: cfg.args.logging_steps,
        save_checkpoint_steps: cfg.args.save_checkpoint_steps,
        seed,
    }
}

/// Loads the starting weights from `source` (the pretrained model, or the latest state of a
/// resumed run) and creates a missing head.
pub fn initial_params(
    cfg: &RunConfig,
    source: &Path,
    config: &BertConfig,
    labels: &LabelSet,
    device: &Device,
) -> Result<Params> {
    let (mut weights, mut unexpected) = read_weights(source, device)?;
    if cfg.meta_teacher.is_some() || cfg.meta_student.is_some() {
        // The Meta-KD domain branch (and a student's fit_dense), read by the Meta-KD trainings.
        unexpected.retain(|n| !n.starts_with("meta."));
    }
    if !unexpected.is_empty() {
        logging::info(format!(
            "ignoring {} weights that are not part of the classifier: {}",
            unexpected.len(),
            unexpected.join(", ")
        ));
    }
    if let Some(w) = weights.get("classifier.weight") {
        if w.dim(0)? != labels.len() {
            logging::info(format!(
                "dropping the pretrained classifier ({} labels, this task has {})",
                w.dim(0)?,
                labels.len()
            ));
            weights.remove("classifier.weight");
            weights.remove("classifier.bias");
        }
    }
    let mut params = Params::default();
    for (name, t) in &weights {
        if name.starts_with("bert.") || name.starts_with("classifier.") {
            params.insert(name, t)?;
        }
    }
    let mut rng = Rng::new(cfg.seed);
    let created = init_head(&mut params, config, labels.len(), &mut rng, device)?;
    if !created.is_empty() {
        logging::info(format!("newly initialised: {}", created.join(", ")));
    }
    Ok(params)
}

/// Every flag of the run plus the resolved model and the seed used, saved as `train_config.json`.
fn train_config_json(cfg: &RunConfig, model_dir: &Path, seed: u64) -> serde_json::Value {
    let mut v = serde_json::to_value(&cfg.args).unwrap_or_default();
    v["pretrained_model_dir"] = serde_json::json!(model_dir.display().to_string());
    v["seed_used"] = serde_json::json!(seed);
    v["easynlp_rs_version"] = serde_json::json!(env!("CARGO_PKG_VERSION"));
    v
}

/// The pretrained model of a run (`pretrain_model_name_or_path`): its directory and config,
/// checked against `--sequence_length`.
pub fn pretrained_model(cfg: &RunConfig) -> Result<(PathBuf, BertConfig)> {
    let name = cfg.udp.require("pretrain_model_name_or_path")?;
    let model_dir = resolve_model(name, &cfg.args.modelzoo_base_dir)?;
    let config = BertConfig::load(&model_dir)?;
    check_sequence_length(cfg.args.sequence_length, config.max_position_embeddings)?;
    Ok((model_dir, config))
}

impl RunStart<'_> {
    /// Runs the training loop on `rows` with `task` (the loop settings from the flags, adjusted by
    /// `adjust`), saving into the checkpoint directory, and logs where `what` went (`scope`: the
    /// rows the validation accuracy is over, where that is not plain).
    pub fn train(
        self,
        cfg: &RunConfig,
        (params, rows, task): (&Params, &[Example], &dyn TrainTask),
        adjust: impl FnOnce(&mut TrainSettings),
        (what, scope): (&str, Option<&str>),
        device: &Device,
    ) -> Result<()> {
        let mut settings = train_settings(cfg, self.seed);
        adjust(&mut settings);
        let state = train(&settings, params, rows, task, &self.writer, self.resume, device)?;
        self.writer.log_done(&state, what, scope);
        Ok(())
    }
}
