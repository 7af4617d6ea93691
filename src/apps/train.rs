//! `--mode=train`: fine-tune a BERT classifier and keep the best checkpoint.

use crate::config::kd::{KdSettings, TeacherSource};
use crate::config::run::RunConfig;
use crate::data::batch::{Batch, Example};
use crate::data::encode::encode_rows;
use crate::data::labels::LabelSet;
use crate::data::table::read_table;
use crate::data::tokenize::BertTokenizer;
use crate::distill::kd::vanilla_kd_terms;
use crate::distill::logits::read_teacher_logits;
use crate::job::{initial_params, pretrained_model, RunStart};
use crate::logging;
use crate::metrics::EvalReport;
use crate::model::bert::ForwardCtx;
use crate::model::checkpoint::load_checkpoint;
use crate::model::classifier::Classifier;
use crate::model::config::BertConfig;
use crate::model::infer::{evaluate_examples, model_outputs};
use crate::model::params::Params;
use crate::train::trainer::{Loss, TrainTask};
use anyhow::{bail, Context, Result};
use candle_core::Device;
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
    fn loss(&self, params: &Params, batch: &Batch, ctx: &ForwardCtx) -> Result<Loss> {
        let model = Classifier::load(self.config, &|n| params.trainable(n))?;
        let logits = model.forward(batch, ctx)?;
        let labels = batch.labels.as_ref().context("training rows need labels")?;
        match (self.kd, &batch.teacher_logits) {
            (Some((t, alpha)), Some(teacher)) => {
                let (kd, ce) = vanilla_kd_terms(&logits, teacher, labels, t, alpha)?;
                let total = (&kd + &ce)?;
                Ok(Loss { total, parts: vec![("kd_loss", kd.detach()), ("ce_loss", ce.detach())] })
            }
            (Some(_), None) => bail!("KD batch without teacher logits"),
            (None, _) => Ok(candle_nn::loss::cross_entropy(&logits, labels)?.into()),
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

/// Reads a table and tokenizes it with labels.
fn load_examples(cfg: &RunConfig, path: &Path, tokenizer: &BertTokenizer, labels: &LabelSet) -> Result<Vec<Example>> {
    let rows = read_table(path, &cfg.schema, cfg.skip_header(path)?)?;
    encode_rows(&rows, path, &cfg.columns, &cfg.schema.names(), tokenizer, Some(labels))
}

/// `--mode=train`.
pub fn run(cfg: &RunConfig, device: &Device) -> Result<()> {
    let (model_dir, config) = pretrained_model(cfg)?;
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
    start.train(cfg, (&params, &train_rows, &task), |_| {}, ("model", None), device)
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
