//! The Meta-KD meta-teacher (EasyNLP's `meta_teacher_train.py`,
//! `MetaTeacherForSequenceClassification`): a BERT classifier trained on every domain with a
//! domain-corruption objective and per-instance prototype weights.
//!
//! Model: `logits = classifier(relu(pooler_output))` (no dropout before the classifier), and a
//! domain branch `domain_logits = domain_classifier(dropout(tanh(corrupt_dense(e_d + content))))`
//! (`e_d` the domain's embedding) where `content` is the mean of the last hidden states over the
//! real tokens after `[CLS]` (EasyNLP also averages the padding). Loss per instance:
//! `l_i = CE(logits_i, y_i) + domain_loss_weight * CE(domain_logits_i, pi(d)_i)` with `pi` a seeded
//! random permutation of the batch's domain ids, then `mean_i(w_i * l_i)` with
//! `use_sample_weights=True` (`w_i` = the `weight` column) else `mean_i(l_i)`.
//!
//! The checkpoint is an ordinary classifier checkpoint (`bert.*`, `classifier.*`) plus the `meta.*`
//! weights of the domain branch; its `config.json` records `classifier_activation: "relu"`,
//! `num_domains` and `domains`, so plain evaluate/predict give the logits the teacher trained with.

use super::domain_eval::{score_rows, DomainReport};
use super::tables::{row_domains, row_weight};
use crate::config::metakd::MetaTeacherSettings;
use crate::config::run::RunConfig;
use crate::data::batch::{Batch, DomainTag, Example};
use crate::data::encode::encode_rows;
use crate::data::labels::LabelSet;
use crate::data::table::read_table;
use crate::data::tokenize::BertTokenizer;
use crate::job::{initial_params, pretrained_model, RunStart};
use crate::logging;
use crate::metrics::EvalReport;
use crate::model::bert::{masked_mean, ForwardCtx, Linear, Taps, WeightFn};
use crate::model::classifier::{Classifier, ACTIVATION_KEY};
use crate::model::config::BertConfig;
use crate::model::params::Params;
use crate::rng::Rng;
use crate::train::trainer::{Loss, TrainTask};
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use std::path::Path;

/// `[num_domains, H]` domain embedding.
pub const DOMAIN_EMBEDDING: &str = "meta.domain_embedding.weight";
/// `H -> H` dense layer of the domain branch (`.weight`, `.bias`).
pub const CORRUPT_DENSE: &str = "meta.corrupt_dense";
/// `H -> num_domains` domain classifier (`.weight`, `.bias`).
pub const DOMAIN_CLASSIFIER: &str = "meta.domain_classifier";

/// The meta-teacher: the relu-head classifier plus the domain branch.
pub struct MetaTeacher {
    /// BERT, pooler and `classifier(relu(pooled))`.
    pub classifier: Classifier,
    domain_embedding: Tensor,
    corrupt_dense: Linear,
    domain_classifier: Linear,
    dropout: f64,
}

impl MetaTeacher {
    /// Builds the model from `bert.*`, `classifier.*` and `meta.*` weights; `cfg` must carry
    /// `classifier_activation: "relu"` (see [`meta_config`]).
    pub fn load(cfg: &BertConfig, get: &WeightFn) -> anyhow::Result<Self> {
        Ok(MetaTeacher {
            classifier: Classifier::load(cfg, get)?,
            domain_embedding: get(DOMAIN_EMBEDDING)?,
            corrupt_dense: Linear::load(get, CORRUPT_DENSE)?,
            domain_classifier: Linear::load(get, DOMAIN_CLASSIFIER)?,
            dropout: cfg.hidden_dropout_prob,
        })
    }

    /// `(logits [B, labels], domain_logits [B, domains])` for a batch and its `[B]` u32 domain ids.
    pub fn forward(
        &self,
        batch: &Batch,
        domain_ids: &Tensor,
        ctx: &ForwardCtx,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let (logits, out) = self.classifier.forward_with(batch, Taps::default(), ctx)?;
        let content = content_mean(&out.last_hidden, &batch.attention_mask)?;
        let emb = self.domain_embedding.index_select(domain_ids, 0)?;
        let h = self.corrupt_dense.forward(&(emb + content)?)?.tanh()?;
        let h = ctx.dropout(&h, self.dropout)?;
        Ok((logits, self.domain_classifier.forward(&h)?))
    }
}

/// Mean of `hidden` `[B, L, H]` over the real tokens after `[CLS]` (padding excluded).
pub fn content_mean(hidden: &Tensor, attention_mask: &Tensor) -> candle_core::Result<Tensor> {
    let l = hidden.dim(1)?;
    if l < 2 {
        return masked_mean(hidden, attention_mask);
    }
    masked_mean(&hidden.narrow(1, 1, l - 1)?, &attention_mask.narrow(1, 1, l - 1)?)
}

/// Per-instance cross-entropy `[B]` of `logits` `[B, C]` against u32 `targets` `[B]`.
pub fn per_instance_ce(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    candle_nn::ops::log_softmax(logits, 1)?.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()
}

/// The meta-teacher loss: `l_i = CE(logits_i, y_i) [+ dlw * CE(domain_logits_i, corrupted_i)]`,
/// then `mean_i(l_i * w_i)` with `weights`, else `mean_i(l_i)`. `domain` is
/// `(domain_logits, corrupted domain ids)`.
pub fn meta_teacher_loss(
    logits: &Tensor,
    labels: &Tensor,
    domain: Option<(&Tensor, &Tensor)>,
    domain_loss_weight: f64,
    weights: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    Ok(meta_teacher_terms(logits, labels, domain, domain_loss_weight, weights)?.total)
}

/// [`meta_teacher_loss`] with its terms, weighted like it (they sum to it): `ce_loss` and
/// `domain_loss` (`dlw * CE(domain)`), when there is a domain loss.
pub fn meta_teacher_terms(
    logits: &Tensor,
    labels: &Tensor,
    domain: Option<(&Tensor, &Tensor)>,
    domain_loss_weight: f64,
    weights: Option<&Tensor>,
) -> candle_core::Result<Loss> {
    let mean = |l: &Tensor| match weights {
        Some(w) => (l * w)?.mean(0),
        None => l.mean(0),
    };
    let ce = per_instance_ce(logits, labels)?;
    let Some((domain_logits, corrupted)) = domain else {
        return Ok(mean(&ce)?.into());
    };
    let dom = per_instance_ce(domain_logits, corrupted)?.affine(domain_loss_weight, 0.0)?;
    let total = mean(&(&ce + &dom)?)?;
    Ok(Loss { total, parts: vec![("ce_loss", mean(&ce.detach())?), ("domain_loss", mean(&dom.detach())?)] })
}

/// Domain corruption: the batch's domain ids under a random permutation drawn from `seed`
/// (EasyNLP: `domain_ids[torch.randperm(B)]`).
pub fn corrupt_domains(domain_ids: &[u32], seed: u64) -> Vec<u32> {
    let mut perm: Vec<usize> = (0..domain_ids.len()).collect();
    Rng::new(seed).shuffle(&mut perm);
    perm.into_iter().map(|j| domain_ids[j]).collect()
}

/// The model config with the meta-teacher keys: relu head, `num_domains`, `domains`.
pub fn meta_config(base: &BertConfig, domains: &[String]) -> BertConfig {
    let mut cfg = base.clone();
    cfg.raw.insert(ACTIVATION_KEY.into(), serde_json::json!("relu"));
    cfg.raw.insert("num_domains".into(), serde_json::json!(domains.len()));
    cfg.raw.insert("domains".into(), serde_json::json!(domains));
    cfg
}

/// Adds the `meta.*` weights: taken from `source/model.safetensors` when there with the right
/// shapes (a resumed or earlier meta-teacher), else initialised N(0, initializer_range) with zero
/// biases. Returns the names it initialised.
pub fn add_meta_params(
    params: &mut Params,
    source: &Path,
    cfg: &BertConfig,
    num_domains: usize,
    rng: &mut Rng,
    device: &Device,
) -> Result<Vec<String>> {
    let h = cfg.hidden_size;
    let std = cfg.initializer_range;
    let wanted: [(String, Vec<usize>, f64); 5] = [
        (DOMAIN_EMBEDDING.into(), vec![num_domains, h], std),
        (format!("{CORRUPT_DENSE}.weight"), vec![h, h], std),
        (format!("{CORRUPT_DENSE}.bias"), vec![h], 0.0),
        (format!("{DOMAIN_CLASSIFIER}.weight"), vec![num_domains, h], std),
        (format!("{DOMAIN_CLASSIFIER}.bias"), vec![num_domains], 0.0),
    ];
    params.adopt_or_init(source, &wanted, rng, device)
}

/// Rows of a Meta-KD table tokenized with labels, plus each row's domain id.
pub struct DomainExamples {
    /// Model inputs (with their domain tags when weights were read).
    pub examples: Vec<Example>,
    /// Domain id of each row (index into the domain list).
    pub domains: Vec<usize>,
}

/// Reads and tokenizes a Meta-KD table; with `weights`, also reads the `weight` column.
fn load_meta_table(
    cfg: &RunConfig,
    meta: &MetaTeacherSettings,
    path: &Path,
    tokenizer: &BertTokenizer,
    labels: &LabelSet,
    weights: bool,
) -> Result<DomainExamples> {
    let rows = read_table(path, &cfg.schema, cfg.skip_header(path)?)?;
    let mut examples = encode_rows(&rows, path, &cfg.columns, &cfg.schema.names(), tokenizer, Some(labels))?;
    let domains = row_domains(&rows, path, meta.domain_column, &meta.domains)?;
    if weights {
        for ((ex, row), &d) in examples.iter_mut().zip(&rows).zip(&domains) {
            ex.domain = Some(DomainTag { domain: d as u32, weight: row_weight(row, meta.weight_column, path)? });
        }
    }
    Ok(DomainExamples { examples, domains })
}

/// Training of the meta-teacher.
struct MetaTeacherTask<'a> {
    config: &'a BertConfig,
    labels: &'a LabelSet,
    meta: &'a MetaTeacherSettings,
    dev: Option<DomainExamples>,
    batch_size: usize,
    device: Device,
    seed: u64,
}

impl TrainTask for MetaTeacherTask<'_> {
    fn loss(&self, params: &Params, batch: &Batch, ctx: &ForwardCtx) -> Result<Loss> {
        let labels = batch.labels.as_ref().context("training rows need labels")?;
        let tags = batch.domains.as_ref().context("meta-teacher batch without domains")?;
        // The rows' domains, weights and corrupted domains are batch inputs (counted uploads).
        let domain_ids: Vec<u32> = tags.iter().map(|t| t.domain).collect();
        let weights = if self.meta.use_sample_weights {
            let w: Vec<f32> = tags.iter().map(|t| t.weight).collect();
            Some(crate::ops::upload(w, batch.size, &self.device)?)
        } else {
            None
        };
        let dlw = self.meta.domain_loss_weight;
        if self.meta.use_domain_loss {
            let model = MetaTeacher::load(self.config, &|n| params.trainable(n))?;
            let ids = crate::ops::upload(domain_ids.clone(), domain_ids.len(), &self.device)?;
            // A fresh draw from the forward context (seeded per micro-batch, reproducible on resume).
            let seed = ctx.dropout_seed(1.0).unwrap_or(self.seed);
            let corrupted = crate::ops::upload(corrupt_domains(&domain_ids, seed), domain_ids.len(), &self.device)?;
            let (logits, domain_logits) = model.forward(batch, &ids, ctx)?;
            Ok(meta_teacher_terms(&logits, labels, Some((&domain_logits, &corrupted)), dlw, weights.as_ref())?)
        } else {
            let model = Classifier::load(self.config, &|n| params.trainable(n))?;
            let logits = model.forward(batch, ctx)?;
            Ok(meta_teacher_terms(&logits, labels, None, dlw, weights.as_ref())?)
        }
    }

    fn evaluate(&self, params: &Params) -> Result<Option<EvalReport>> {
        let Some(dev) = &self.dev else {
            return Ok(None);
        };
        let model = Classifier::load(self.config, &|n| params.frozen(n))?;
        let scores = score_rows(&model, &dev.examples, self.batch_size, &self.device)?;
        let report = DomainReport::new(&scores, &dev.domains, &self.meta.domains, self.labels.len());
        logging::info(format!("per-domain validation accuracy: {}", report.accuracy_line()));
        Ok(Some(report.all))
    }
}

/// `--mode=train` of the meta-teacher.
pub fn run_train(cfg: &RunConfig, meta: &MetaTeacherSettings, device: &Device) -> Result<()> {
    let (model_dir, base) = pretrained_model(cfg)?;
    let config = meta_config(&base, &meta.domains);
    let labels = LabelSet::parse(cfg.args.label_enumerate_values.as_deref())?;
    let start = RunStart::begin(cfg, &config, &labels, &model_dir, device)?;
    let tokenizer = BertTokenizer::load(&model_dir, cfg.args.sequence_length, cfg.args.do_lower_case)?;
    let train_rows = load_meta_table(cfg, meta, &cfg.tables[0], &tokenizer, &labels, true)?;
    let do_eval = cfg.udp.bool("do_eval", true)?;
    let dev =
        if do_eval { Some(load_meta_table(cfg, meta, cfg.last_table(), &tokenizer, &labels, false)?) } else { None };
    let mut params = initial_params(cfg, &start.weights_source, &config, &labels, device)?;
    let source = &start.weights_source;
    let mut rng = Rng::new(cfg.seed ^ 0x6D65_7461_2D6B_6400);
    let created = add_meta_params(&mut params, source, &config, meta.domains.len(), &mut rng, device)?;
    if !created.is_empty() {
        logging::info(format!("newly initialised: {}", created.join(", ")));
    }
    MetaTeacher::load(&config, &|n| params.frozen(n))
        .with_context(|| format!("{}: incomplete BERT weights", model_dir.display()))?;
    logging::info(format!(
        "Meta-KD meta-teacher: {} domains ({}), use_sample_weights={}, use_domain_loss={}, domain_loss_weight={}",
        meta.domains.len(),
        meta.domains.join(","),
        meta.use_sample_weights,
        meta.use_domain_loss,
        meta.domain_loss_weight
    ));
    let task = MetaTeacherTask {
        config: &config,
        labels: &labels,
        meta,
        dev,
        batch_size: cfg.args.micro_batch_size,
        device: device.clone(),
        seed: start.seed,
    };
    start.train(cfg, (&params, &train_rows.examples, &task), |_| {}, ("meta-teacher", Some("all domains")), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_corruption_is_a_seeded_permutation() {
        let ids: Vec<u32> = (0..32).map(|i| i % 4).collect();
        let a = corrupt_domains(&ids, 7);
        assert_eq!(a, corrupt_domains(&ids, 7), "same seed, same permutation");
        assert_ne!(a, corrupt_domains(&ids, 8), "another seed, another permutation");
        assert_ne!(a, ids);
        let (mut sa, mut si) = (a.clone(), ids.clone());
        sa.sort();
        si.sort();
        assert_eq!(sa, si, "a permutation keeps the multiset of domains");
        let distinct: Vec<u32> = (0..16).collect();
        let mut p = corrupt_domains(&distinct, 3);
        p.sort();
        assert_eq!(p, distinct);
        assert!(corrupt_domains(&[], 1).is_empty());
    }
}
