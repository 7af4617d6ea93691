//! EasyNLP's sequence classifier: BERT -> pooler -> dropout -> linear (`BertForSequenceClassification`).
//! With `"classifier_activation": "relu"` in config.json (a Meta-KD meta-teacher): BERT -> pooler ->
//! relu -> linear, without dropout, as EasyNLP's `MetaTeacherForSequenceClassification`.

use super::bert::{Bert, EncoderOutput, ForwardCtx, Linear, Taps, WeightFn};
use super::config::BertConfig;
use super::params::Params;
use crate::data::batch::Batch;
use crate::rng::Rng;
use candle_core::{Device, Result, Tensor};

/// The config.json key that selects the meta-teacher head (`"relu"`); absent means the plain head.
pub const ACTIVATION_KEY: &str = "classifier_activation";

/// A BERT sequence classifier (also used for single-tower text matching).
pub struct Classifier {
    /// The encoder, with pooler.
    pub bert: Bert,
    head: Linear,
    dropout: f64,
    relu: bool,
}

impl Classifier {
    /// Builds the classifier from `bert.*` and `classifier.*` weights.
    pub fn load(cfg: &BertConfig, get: &WeightFn) -> anyhow::Result<Self> {
        let relu = match cfg.raw.get(ACTIVATION_KEY) {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::String(s)) if s == "relu" => true,
            Some(serde_json::Value::String(s)) if s == "none" || s == "linear" => false,
            Some(other) => anyhow::bail!("config.json: {ACTIVATION_KEY} {other} is not supported (relu or none)"),
        };
        Ok(Classifier {
            bert: Bert::load(cfg, get, true)?,
            head: Linear::load(get, "classifier")?,
            dropout: if relu { 0.0 } else { cfg.hidden_dropout_prob },
            relu,
        })
    }

    /// Logits `[B, num_labels]` for a batch.
    pub fn forward(&self, batch: &Batch, ctx: &ForwardCtx) -> Result<Tensor> {
        Ok(self.forward_with(batch, Taps { first_position_only: true, ..Taps::default() }, ctx)?.0)
    }

    /// Logits plus the encoder outputs kept by `taps`.
    pub fn forward_with(&self, batch: &Batch, taps: Taps, ctx: &ForwardCtx) -> Result<(Tensor, EncoderOutput)> {
        let out = self.bert.forward(&batch.input_ids, &batch.token_type_ids, &batch.attention_mask, taps, ctx)?;
        let pooled = out.pooled.as_ref().expect("classifier always loads a pooler");
        let logits = if self.relu {
            self.head.forward(&pooled.relu()?)?
        } else {
            self.head.forward(&ctx.dropout(pooled, self.dropout)?)?
        };
        Ok((logits, out))
    }
}

/// Initialises the pooler and classifier weights that `params` lacks (N(0, initializer_range), zero
/// bias) and returns the names it created.
pub fn init_head(
    params: &mut Params,
    cfg: &BertConfig,
    num_labels: usize,
    rng: &mut Rng,
    device: &Device,
) -> anyhow::Result<Vec<String>> {
    let h = cfg.hidden_size;
    let std = cfg.initializer_range;
    let mut created = Vec::new();
    let wanted: [(&str, Vec<usize>, f64); 4] = [
        ("bert.pooler.dense.weight", vec![h, h], std),
        ("bert.pooler.dense.bias", vec![h], 0.0),
        ("classifier.weight", vec![num_labels, h], std),
        ("classifier.bias", vec![num_labels], 0.0),
    ];
    for (name, shape, s) in wanted {
        if params.init_missing(name, &shape, s, rng, device)? {
            created.push(name.to_string());
        }
    }
    Ok(created)
}
