//! `--mode=train`: fine-tune a BERT classifier and keep the best checkpoint.

use super::run_state::RunStart;
use super::text::encode_rows;
use crate::cli::config::RunConfig;
use crate::data::batch::{Batch, Example};
use crate::data::labels::LabelSet;
use crate::data::table::read_table;
use crate::data::tokenize::BertTokenizer;
use crate::distill::kd::{vanilla_kd_loss, KdSettings, TeacherSource};
use crate::distill::logits::read_teacher_logits;
use crate::logging;
use crate::metrics::EvalReport;
use crate::model::bert::ForwardCtx;
use crate::model::checkpoint::load_checkpoint;
use crate::model::classifier::{init_head, Classifier};
use crate::model::config::BertConfig;
use crate::model::infer::{check_sequence_length, evaluate_examples, model_outputs};
use crate::model::params::{read_weights, Params};
use crate::model::zoo::resolve_model;
use crate::rng::Rng;
use crate::train::trainer::{train, TrainSettings, TrainTask};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use std::path::Path;

/// Fine-tuning with cross-entropy, evaluated on the validation table.
struct ClassifyTask<'a> {
    config: &'a BertConfig,
    labels: &'a LabelSet,
    dev: Option<Vec<Example>>,
    batch_size: usize,
    device: Device,
    /// Vanilla KD `(temperature, alpha)`; the batches then carry teacher logits.
    kd: Option<(f64, f64)>,
}

impl TrainTask for ClassifyTask<'_> {
    fn loss(&self, params: &Params, batch: &Batch, ctx: &ForwardCtx) -> Result<Tensor> {
        let model = Classifier::load(self.config, &|n| params.trainable(n))?;
        let logits = model.forward(batch, ctx)?;
        let labels = batch.labels.as_ref().context("training rows need labels")?;
        match (self.kd, &batch.teacher_logits) {
            (Some((t, alpha)), Some(teacher)) => Ok(vanilla_kd_loss(&logits, teacher, labels, t, alpha)?),
            (Some(_), None) => bail!("KD batch without teacher logits"),
            (None, _) => Ok(candle_nn::loss::cross_entropy(&logits, labels)?),
        }
    }

    fn evaluate(&self, params: &Params) -> Result<Option<EvalReport>> {
        let Some(dev) = &self.dev else {
            return Ok(None);
        };
        let model = Classifier::load(self.config, &|n| params.frozen(n))?;
        Ok(Some(evaluate_examples(&model, dev, self.batch_size, self.labels.len(), &self.device)?))
    }
}

/// The training-loop settings of a run, from its flags and the seed it uses.
pub(crate) fn train_settings(cfg: &RunConfig, seed: u64) -> TrainSettings {
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

/// Reads a table and tokenizes it with labels.
fn load_examples(cfg: &RunConfig, path: &Path, tokenizer: &BertTokenizer, labels: &LabelSet) -> Result<Vec<Example>> {
    let rows = read_table(path, &cfg.schema, cfg.skip_header(path)?)?;
    encode_rows(&rows, path, &cfg.columns, &cfg.schema.names(), tokenizer, Some(labels))
}

/// Loads the starting weights from `source` (the pretrained model, or the latest state of a
/// resumed run) and creates a missing head.
pub(crate) fn initial_params(
    cfg: &RunConfig,
    source: &Path,
    config: &BertConfig,
    labels: &LabelSet,
    device: &Device,
) -> Result<Params> {
    let (mut weights, mut unexpected) = read_weights(source, device)?;
    if cfg.meta_teacher.is_some() || cfg.meta_student.is_some() {
        // The Meta-KD domain branch (and a student's fit_dense), read by crate::metakd.
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

/// `--mode=train`.
pub fn run(cfg: &RunConfig, device: &Device) -> Result<()> {
    if let Some(meta) = &cfg.meta_teacher {
        return crate::metakd::teacher::run_train(cfg, meta, device);
    }
    if let Some(meta) = &cfg.meta_student {
        return crate::metakd::student_train::run_train(cfg, meta, device);
    }
    let name = cfg.udp.require("pretrain_model_name_or_path")?;
    let model_dir = resolve_model(name, &cfg.args.modelzoo_base_dir)?;
    let config = BertConfig::load(&model_dir)?;
    check_sequence_length(cfg.args.sequence_length, config.max_position_embeddings)?;
    let labels = LabelSet::parse(cfg.args.label_enumerate_values.as_deref())?;
    let start = RunStart::begin(cfg, &config, &labels, &model_dir, device)?;
    let tokenizer = BertTokenizer::load(&model_dir, cfg.args.sequence_length, cfg.args.do_lower_case)?;
    let mut train_rows = load_examples(cfg, &cfg.tables[0], &tokenizer, &labels)?;
    if let Some(kd) = &cfg.kd {
        attach_teacher_logits(cfg, kd, &labels, &mut train_rows, device)?;
    }
    let do_eval = cfg.udp.bool("do_eval", true)?;
    let dev = if do_eval { Some(load_examples(cfg, cfg.last_table(), &tokenizer, &labels)?) } else { None };
    let params = initial_params(cfg, &start.weights_source, &config, &labels, device)?;
    Classifier::load(&config, &|n| params.frozen(n))
        .with_context(|| format!("{}: incomplete BERT weights", model_dir.display()))?;
    let task = ClassifyTask {
        config: &config,
        labels: &labels,
        dev,
        batch_size: cfg.args.micro_batch_size,
        device: device.clone(),
        kd: cfg.kd.as_ref().map(|k| (k.temperature, k.alpha)),
    };
    let settings = train_settings(cfg, start.seed);
    let state = train(&settings, &params, &train_rows, &task, &start.writer, start.resume, device)?;
    start.writer.log_done(&state, "model", None);
    Ok(())
}

/// Joins teacher logits to the training rows: from the logits file (checked line by line) or by
/// running the teacher checkpoint once over the training table.
fn attach_teacher_logits(
    cfg: &RunConfig,
    kd: &KdSettings,
    labels: &LabelSet,
    rows: &mut [Example],
    device: &Device,
) -> Result<()> {
    if let Some(col) = &cfg.logits_column {
        if col.len != labels.len() {
            bail!(
                "--input_schema: the logits column `{}` is float:{}, but there are {} labels",
                col.name,
                col.len,
                labels.len()
            );
        }
    }
    let logits = match &kd.source {
        TeacherSource::File { path } => {
            read_teacher_logits(path, &cfg.tables[0], cfg.skip_header(&cfg.tables[0])?, rows.len(), labels)?
        }
        TeacherSource::Online { dir } => {
            let teacher = load_checkpoint(dir, device).context("teacher_model_path")?;
            if &teacher.labels != labels {
                bail!(
                    "teacher_model_path {}: the teacher's labels ({}) differ from --label_enumerate_values ({})",
                    dir.display(),
                    teacher.labels.names.join(","),
                    labels.names.join(",")
                );
            }
            let tokenizer = BertTokenizer::load(&teacher.dir, cfg.args.sequence_length, cfg.args.do_lower_case)?;
            let table = &cfg.tables[0];
            let data = read_table(table, &cfg.schema, cfg.skip_header(table)?)?;
            let model = Classifier::load(&teacher.config, &|n| teacher.params.frozen(n))?;
            logging::info(format!("computing teacher logits with {} on {} rows", dir.display(), data.len()));
            let mut logits = Vec::with_capacity(data.len());
            // The same slices and batches as a logits export, so both routes see the same numbers.
            for chunk in data.chunks(cfg.args.predict_slice_size.max(1)) {
                let examples = encode_rows(chunk, table, &cfg.columns, &cfg.schema.names(), &tokenizer, None)?;
                logits.extend(model_outputs(&model, &examples, cfg.args.micro_batch_size, device)?.logits);
            }
            logits
        }
    };
    for (row, l) in rows.iter_mut().zip(logits) {
        row.teacher_logits = Some(l);
    }
    Ok(())
}

/// Every flag of the run plus the resolved model, saved as `train_config.json`.
pub(crate) fn train_config_json(cfg: &RunConfig, model_dir: &Path) -> serde_json::Value {
    let mut v = serde_json::to_value(&cfg.args).unwrap_or_default();
    v["pretrained_model_dir"] = serde_json::json!(model_dir.display().to_string());
    v["seed_used"] = serde_json::json!(cfg.seed);
    v["easynlp_rs_version"] = serde_json::json!(env!("CARGO_PKG_VERSION"));
    v
}
