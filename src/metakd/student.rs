//! Meta-KD student distillation as `--mode=train` (EasyNLP's `meta_student_distill.py`,
//! spec §5.7 and §5.8), selected by `distill_stage=first|second` with `teacher_model_path=<a
//! meta-teacher checkpoint>` and `genre=<domain>`.
//!
//! * Stage `first`: the student (a fresh model from `pretrain_model_name_or_path`, with a relu head,
//!   its own domain branch and `meta.fit_dense: H_s -> H_t`) learns the teacher's attention maps and
//!   hidden states over the [`layer_map`] and its domain content; per instance
//!   `l_i = att_i + rep_i + domain_loss_weight * dom_i`, loss `mean_i(f_i * l_i)` with
//!   `f_i = (1 + w_i) * g_i` ([`instance_weights_on_device`]). Training rows are the `genre` rows of the first
//!   table; there is no evaluation, the model is saved at the end.
//! * Stage `second`: the stage-1 student learns the teacher's logits with the soft cross-entropy
//!   `mean_i sum_c -softmax(t_i/T)_c log_softmax(s_i/T)_c`; the best model is chosen by accuracy on the
//!   `genre` rows of the last table.
//!
//! The teacher runs without dropout and without gradients. Teacher and student read the same
//! token ids (their vocabularies must be identical).

use super::student_loss::{
    instance_weights_on_device, layer_map, masked_instance_mse, per_instance_mse, weighted_mean, LayerMap,
};
use super::tables::{row_domains, row_weight};
use super::teacher::{add_meta_params, content_mean, meta_config, CORRUPT_DENSE, DOMAIN_EMBEDDING};
use crate::config::metakd::{MetaStudentSettings, Stage};
use crate::config::run::RunConfig;
use crate::data::batch::{Batch, DomainTag, Example};
use crate::data::encode::encode_rows;
use crate::data::labels::LabelSet;
use crate::data::table::read_table;
use crate::data::tokenize::BertTokenizer;
use crate::job::{initial_params, pretrained_model, RunStart};
use crate::logging;
use crate::metrics::EvalReport;
use crate::model::bert::{EncoderOutput, ForwardCtx, Linear, Taps, WeightFn};
use crate::model::checkpoint::{load_checkpoint, Checkpoint};
use crate::model::classifier::Classifier;
use crate::model::config::BertConfig;
use crate::model::infer::model_outputs;
use crate::model::infer::{check_sequence_length, evaluate_examples};
use crate::model::params::Params;
use crate::ops::upload;
use crate::rng::Rng;
use crate::train::trainer::{Loss, TrainTask};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, D};
use std::path::Path;

/// The student's projection `H_s -> H_t` onto the teacher's hidden size (`.weight`, `.bias`).
pub const FIT_DENSE: &str = "meta.fit_dense";

/// A classifier with the Meta-KD domain branch `corrupt_dense(domain_embedding[d] + content)`
/// (teacher and student alike; the student adds `fit_dense` on top).
struct DomainModel {
    classifier: Classifier,
    domain_embedding: Tensor,
    corrupt_dense: Linear,
}

impl DomainModel {
    fn load(cfg: &BertConfig, get: &WeightFn) -> Result<Self> {
        Ok(DomainModel {
            classifier: Classifier::load(cfg, get)?,
            domain_embedding: get(DOMAIN_EMBEDDING)?,
            corrupt_dense: Linear::load(get, CORRUPT_DENSE)?,
        })
    }

    /// Logits, encoder outputs (hidden states and attentions) and the domain content `[B, H]`.
    fn forward(
        &self,
        batch: &Batch,
        domain_ids: &Tensor,
        ctx: &ForwardCtx,
    ) -> candle_core::Result<(Tensor, EncoderOutput, Tensor)> {
        let taps = Taps { hidden_states: true, attentions: true, first_position_only: false };
        let (logits, out) = self.classifier.forward_with(batch, taps, ctx)?;
        let content = content_mean(&out.last_hidden, &batch.attention_mask)?;
        let emb = self.domain_embedding.index_select(domain_ids, 0)?;
        let dom = self.corrupt_dense.forward(&(emb + content)?)?;
        Ok((logits, out, dom))
    }
}

/// The per-instance stage-1 loss `att_i + rep_i + dlw * dom_i` `[B]` from the student's and the
/// teacher's outputs, with its terms `[B]` (no gradient): `att_loss`, `rep_loss` and `domain_loss`
/// (`dlw * dom_i`). `fit` projects student hidden vectors onto the teacher's size; the attention
/// and hidden-state MSEs are over each row's real tokens (`mask` `[B, L]`).
pub fn stage1_instance_terms(
    map: &LayerMap,
    student: (&EncoderOutput, &Tensor),
    teacher: (&EncoderOutput, &Tensor),
    mask: &Tensor,
    fit: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
    domain_loss_weight: f64,
) -> candle_core::Result<(Tensor, Vec<(&'static str, Tensor)>)> {
    let (s_out, s_dom) = student;
    let (t_out, t_dom) = teacher;
    let dom = per_instance_mse(&fit(s_dom)?, t_dom)?.affine(domain_loss_weight, 0.0)?;
    let mut l = dom.clone();
    let (mut att, mut rep) = (dom.zeros_like()?, dom.zeros_like()?);
    for &(s, t) in &map.attention {
        let term = masked_instance_mse(&s_out.attentions[s], &t_out.attentions[t], mask)?;
        att = (att + term.detach())?;
        l = (l + term)?;
    }
    for &(s, t) in &map.hidden {
        let term = masked_instance_mse(&fit(&s_out.hidden_states[s])?, &t_out.hidden_states[t], mask)?;
        rep = (rep + term.detach())?;
        l = (l + term)?;
    }
    Ok((l, vec![("att_loss", att), ("rep_loss", rep), ("domain_loss", dom.detach())]))
}

/// The stage-2 loss `mean_i sum_c -softmax(t_i/T)_c * log_softmax(s_i/T)_c` (no `T^2` factor).
pub fn soft_cross_entropy(student: &Tensor, teacher: &Tensor, temperature: f64) -> candle_core::Result<Tensor> {
    let inv = 1.0 / temperature;
    let p = candle_nn::ops::softmax(&teacher.affine(inv, 0.0)?, D::Minus1)?.detach();
    let log_q = candle_nn::ops::log_softmax(&student.affine(inv, 0.0)?, D::Minus1)?;
    (p * log_q)?.sum(D::Minus1)?.neg()?.mean(0)
}

/// Loads the meta-teacher and checks it against the run.
fn load_teacher(meta: &MetaStudentSettings, labels: &LabelSet, device: &Device) -> Result<Checkpoint> {
    let mut teacher = load_checkpoint(&meta.teacher, device).context("teacher_model_path")?;
    // The domain branch (`meta.*`) is not a classifier weight: read it from the weight file itself.
    let file = teacher.dir.join("model.safetensors");
    if file.is_file() {
        let saved =
            candle_core::safetensors::load(&file, device).with_context(|| format!("cannot read {}", file.display()))?;
        for (name, t) in saved.iter().filter(|(n, _)| n.starts_with("meta.")) {
            teacher.params.insert(name, t)?;
        }
    }
    if &teacher.labels != labels {
        bail!(
            "teacher_model_path {}: the teacher's labels ({}) differ from --label_enumerate_values ({})",
            meta.teacher.display(),
            teacher.labels.names.join(","),
            labels.names.join(",")
        );
    }
    if !teacher.params.contains(DOMAIN_EMBEDDING) {
        bail!(
            "teacher_model_path {}: not a Meta-KD meta-teacher (no {DOMAIN_EMBEDDING}); train one with \
             use_sample_weights=True use_domain_loss=True",
            meta.teacher.display()
        );
    }
    let n = teacher.params.frozen(DOMAIN_EMBEDDING)?.dim(0)?;
    if n != meta.domains.len() {
        bail!(
            "teacher_model_path {}: the teacher knows {n} domains, this run {} ({})",
            meta.teacher.display(),
            meta.domains.len(),
            meta.domains.join(",")
        );
    }
    Ok(teacher)
}

/// Teacher and student must tokenize alike: their `vocab.txt` must be identical.
fn check_same_vocab(teacher: &Path, student: &Path) -> Result<()> {
    let read = |d: &Path| std::fs::read(d.join("vocab.txt")).with_context(|| format!("{}: no vocab.txt", d.display()));
    if read(teacher)? != read(student)? {
        bail!(
            "the teacher ({}) and the student ({}) have different vocabularies; Meta-KD distillation needs the same tokenizer",
            teacher.display(),
            student.display()
        );
    }
    Ok(())
}

/// The rows of `path` whose domain is `genre`, tokenized with labels; each example carries its
/// domain tag (stage first) when `tagged` is set.
fn load_genre_rows(
    cfg: &RunConfig,
    meta: &MetaStudentSettings,
    path: &Path,
    tokenizer: &BertTokenizer,
    labels: &LabelSet,
    tagged: bool,
) -> Result<Vec<Example>> {
    let rows = read_table(path, &cfg.schema, cfg.skip_header(path)?)?;
    let domains = row_domains(&rows, path, meta.domain_column, &meta.domains)?;
    let g = meta.genre_id();
    let rows: Vec<_> = rows.into_iter().zip(&domains).filter(|(_, &d)| d == g).map(|(r, _)| r).collect();
    if rows.is_empty() {
        bail!("{}: no rows of domain `{}` (genre)", path.display(), meta.genre);
    }
    let mut examples = encode_rows(&rows, path, &cfg.columns, &cfg.schema.names(), tokenizer, Some(labels))?;
    if tagged {
        for (ex, row) in examples.iter_mut().zip(&rows) {
            ex.domain = Some(DomainTag { domain: g as u32, weight: row_weight(row, meta.weight_column, path)? });
        }
    }
    Ok(examples)
}

/// Training of a Meta-KD student.
struct StudentTask<'a> {
    config: &'a BertConfig,
    labels: &'a LabelSet,
    meta: &'a MetaStudentSettings,
    teacher: &'a Checkpoint,
    map: Option<LayerMap>,
    dev: Option<Vec<Example>>,
    batch_size: usize,
    device: Device,
}

/// The stage-1 loss of one batch: the teacher (`teacher_cfg`, `teacher`: a meta-teacher's weights)
/// runs without dropout or gradients, the student (`cfg`, `params`, with `meta.*` and
/// `meta.fit_dense`) under `ctx`; the batch carries each row's domain and prototype weight in
/// `domains`. Returns `mean_i(f_i * (att_i + rep_i + dlw * dom_i))`.
#[allow(clippy::too_many_arguments)]
pub fn stage1_loss(
    teacher_cfg: &BertConfig,
    teacher: &Params,
    cfg: &BertConfig,
    params: &Params,
    map: &LayerMap,
    batch: &Batch,
    domain_loss_weight: f64,
    ctx: &ForwardCtx,
) -> Result<Tensor> {
    Ok(stage1_terms(teacher_cfg, teacher, cfg, params, map, batch, domain_loss_weight, ctx)?.total)
}

/// [`stage1_loss`] with its terms (`att_loss`, `rep_loss`, `domain_loss`), weighted like it.
#[allow(clippy::too_many_arguments)]
fn stage1_terms(
    teacher_cfg: &BertConfig,
    teacher: &Params,
    cfg: &BertConfig,
    params: &Params,
    map: &LayerMap,
    batch: &Batch,
    domain_loss_weight: f64,
    ctx: &ForwardCtx,
) -> Result<Loss> {
    let device = batch.input_ids.device();
    let labels = batch.labels.as_ref().context("training rows need labels")?;
    let tags = batch.domains.as_ref().context("student batch without domains")?;
    // The rows' domains and prototype weights are batch inputs; the rest stays on the device.
    let ids = upload(tags.iter().map(|t| t.domain).collect(), tags.len(), device)?;
    let prototype = upload(tags.iter().map(|t| t.weight).collect(), tags.len(), device)?;
    let teacher = DomainModel::load(teacher_cfg, &|n| teacher.frozen(n))?;
    let (t_logits, t_out, t_dom) = teacher.forward(batch, &ids, &ForwardCtx::eval())?;
    let p_true = candle_nn::ops::softmax(&t_logits, D::Minus1)?.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?;
    let f = instance_weights_on_device(&prototype, &p_true.to_dtype(candle_core::DType::F32)?)?;
    let student = DomainModel::load(cfg, &|n| params.trainable(n))?;
    let fit = Linear::load(&|n| params.trainable(n), FIT_DENSE)?;
    let (_, s_out, s_dom) = student.forward(batch, &ids, ctx)?;
    let (l, parts) = stage1_instance_terms(
        map,
        (&s_out, &s_dom),
        (&t_out, &t_dom),
        &batch.attention_mask,
        &|x| fit.forward(x),
        domain_loss_weight,
    )?;
    let parts = parts.into_iter().map(|(n, p)| Ok((n, weighted_mean(&p, &f)?))).collect::<Result<_>>()?;
    Ok(Loss { total: weighted_mean(&l, &f)?, parts })
}

impl TrainTask for StudentTask<'_> {
    fn loss(&self, params: &Params, batch: &Batch, ctx: &ForwardCtx) -> Result<Loss> {
        match self.meta.stage {
            Stage::First => stage1_terms(
                &self.teacher.config,
                &self.teacher.params,
                self.config,
                params,
                self.map.as_ref().expect("stage first has a layer map"),
                batch,
                self.meta.domain_loss_weight,
                ctx,
            ),
            Stage::Second => {
                let teacher = batch.teacher_logits.as_ref().context("student batch without teacher logits")?;
                let model = Classifier::load(self.config, &|n| params.trainable(n))?;
                let logits = model.forward(batch, ctx)?;
                Ok(soft_cross_entropy(&logits, teacher, self.meta.temperature)?.into())
            }
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

/// Adds `meta.fit_dense` (`H_s -> H_t`): from `source` when saved there with the right shape (a
/// resumed run), else N(0, initializer_range) with a zero bias. Returns the names it created.
pub fn add_fit_dense(
    params: &mut Params,
    source: &Path,
    student: &BertConfig,
    teacher_hidden: usize,
    rng: &mut Rng,
    device: &Device,
) -> Result<Vec<String>> {
    let wanted = [
        (format!("{FIT_DENSE}.weight"), vec![teacher_hidden, student.hidden_size], student.initializer_range),
        (format!("{FIT_DENSE}.bias"), vec![teacher_hidden], 0.0),
    ];
    params.adopt_or_init(source, &wanted, rng, device)
}

/// `--mode=train` of a Meta-KD student (`distill_stage=first|second`).
pub fn run_train(cfg: &RunConfig, meta: &MetaStudentSettings, device: &Device) -> Result<()> {
    let (model_dir, base) = pretrained_model(cfg)?;
    let labels = LabelSet::parse(cfg.args.label_enumerate_values.as_deref())?;
    let teacher = load_teacher(meta, &labels, device)?;
    check_sequence_length(cfg.args.sequence_length, teacher.config.max_position_embeddings)?;
    check_same_vocab(&teacher.dir, &model_dir)?;
    let config = meta_config(&base, &meta.domains);
    let map = match meta.stage {
        Stage::First => Some(
            layer_map(
                teacher.config.num_hidden_layers,
                config.num_hidden_layers,
                teacher.config.num_attention_heads,
                config.num_attention_heads,
            )
            .context("Meta-KD stage first")?,
        ),
        Stage::Second => None,
    };
    let start = RunStart::begin(cfg, &config, &labels, &model_dir, device)?;
    let tokenizer = BertTokenizer::load(&model_dir, cfg.args.sequence_length, cfg.args.do_lower_case)?;
    let stage1 = meta.stage == Stage::First;
    let mut train_rows = load_genre_rows(cfg, meta, &cfg.tables[0], &tokenizer, &labels, stage1)?;
    let dev = if !stage1 && cfg.udp.bool("do_eval", true)? {
        Some(load_genre_rows(cfg, meta, cfg.last_table(), &tokenizer, &labels, false)?)
    } else {
        None
    };
    let mut params = initial_params(cfg, &start.weights_source, &config, &labels, device)?;
    if stage1 {
        let source = &start.weights_source;
        let mut rng = Rng::new(cfg.seed ^ 0x6D65_7461_2D73_7464);
        let mut created = add_meta_params(&mut params, source, &config, meta.domains.len(), &mut rng, device)?;
        created.extend(add_fit_dense(&mut params, source, &config, teacher.config.hidden_size, &mut rng, device)?);
        if !created.is_empty() {
            logging::info(format!("newly initialised: {}", created.join(", ")));
        }
        DomainModel::load(&config, &|n| params.frozen(n))
            .with_context(|| format!("{}: incomplete BERT weights", model_dir.display()))?;
    } else {
        Classifier::load(&config, &|n| params.frozen(n))
            .with_context(|| format!("{}: incomplete BERT weights", model_dir.display()))?;
        let model = Classifier::load(&teacher.config, &|n| teacher.params.frozen(n))?;
        logging::info(format!("computing teacher logits with {} on {} rows", teacher.dir.display(), train_rows.len()));
        let logits = model_outputs(&model, &train_rows, cfg.args.micro_batch_size, device)?.logits;
        for (row, l) in train_rows.iter_mut().zip(logits) {
            row.teacher_logits = Some(l);
        }
    }
    logging::info(format!(
        "Meta-KD student, stage {}: genre {} ({} training rows), teacher {} ({} layers), student {} layers, {}",
        if stage1 { "first" } else { "second" },
        meta.genre,
        train_rows.len(),
        teacher.dir.display(),
        teacher.config.num_hidden_layers,
        config.num_hidden_layers,
        if stage1 {
            format!("domain_loss_weight={}", meta.domain_loss_weight)
        } else {
            format!("T={}", meta.temperature)
        }
    ));
    let task = StudentTask {
        config: &config,
        labels: &labels,
        meta,
        teacher: &teacher,
        map,
        dev,
        batch_size: cfg.args.micro_batch_size,
        device: device.clone(),
    };
    // Stage first has no evaluator: one save at the end (EasyNLP saves nothing when
    // save_checkpoint_steps is given).
    let no_periodic_saves = |settings: &mut crate::train::trainer::TrainSettings| {
        if stage1 && settings.save_checkpoint_steps.take().is_some() {
            logging::info(
                "stage first has no evaluation: --save_checkpoint_steps is ignored, the student is saved at the end",
            );
        }
    };
    start.train(cfg, (&params, &train_rows, &task), no_periodic_saves, ("student", Some(&meta.genre)), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_cross_entropy_matches_the_formula() {
        let d = Device::Cpu;
        let s = Tensor::new(&[[1f32, -1.0], [0.5, 0.0]], &d).unwrap();
        let t = Tensor::new(&[[2f32, 0.0], [0.0, 1.0]], &d).unwrap();
        let got = soft_cross_entropy(&s, &t, 2.5).unwrap().to_scalar::<f32>().unwrap() as f64;
        let sm = |v: [f64; 2]| {
            let m = (v[0].exp() + v[1].exp()).ln();
            [v[0] - m, v[1] - m]
        };
        let mut want = 0.0;
        for (sv, tv) in [([1.0, -1.0], [2.0, 0.0]), ([0.5, 0.0], [0.0, 1.0])] {
            let ls = sm([sv[0] / 2.5, sv[1] / 2.5]);
            let lt = sm([tv[0] / 2.5, tv[1] / 2.5]);
            want += -(lt[0].exp() * ls[0] + lt[1].exp() * ls[1]);
        }
        assert!((got - want / 2.0).abs() < 1e-5, "{got} vs {}", want / 2.0);
    }
}
