//! A trainable BERT encoder (Hugging Face weight names) with real dropout, per-layer taps and pooler.

use super::config::BertConfig;
use crate::ops;
use crate::ops::dropout::DropoutSite;
use crate::ops::encoder_layer::{LayerDropout, LayerParams, LayerPrecision, LayerWeights};
use crate::ops::Precision;
use crate::rng::Rng;
use candle_core::{DType, Result, Tensor, D};
use std::cell::RefCell;
use std::sync::{Arc, Mutex, OnceLock};

/// Gets a weight tensor by its full name (`bert.encoder.layer.0...`).
pub type WeightFn<'a> = dyn Fn(&str) -> anyhow::Result<Tensor> + 'a;

/// Training state threaded through a forward pass: dropout on/off, its random source (one seed
/// per dropout site, drawn in order) and the global ids of the batch's rows, which key the masks
/// (see [`ops::dropout`]).
pub struct ForwardCtx {
    /// Whether dropout is active.
    pub train: bool,
    rng: RefCell<Rng>,
    rows: Option<Arc<[u64]>>,
}

impl ForwardCtx {
    /// Inference: no dropout.
    pub fn eval() -> Self {
        ForwardCtx { train: false, rng: RefCell::new(Rng::new(0)), rows: None }
    }

    /// Training: dropout sites seeded from `seed`, each row's masks keyed by its position in
    /// the batch.
    pub fn train(seed: u64) -> Self {
        ForwardCtx { train: true, rng: RefCell::new(Rng::new(seed)), rows: None }
    }

    /// Training on a batch whose rows have the global ids `rows` (their indices in the training
    /// set): a row draws the same masks in whatever batch, and on whatever worker, it is.
    pub fn train_rows(seed: u64, rows: Arc<[u64]>) -> Self {
        ForwardCtx { train: true, rng: RefCell::new(Rng::new(seed)), rows: Some(rows) }
    }

    /// Inverted dropout with probability `p`; identity outside training.
    pub fn dropout(&self, x: &Tensor, p: f64) -> Result<Tensor> {
        match self.dropout_site(p) {
            Some(site) => ops::dropout(x, &site),
            None => Ok(x.clone()),
        }
    }

    /// The next dropout site with probability `p`, when dropout is active.
    pub fn dropout_site(&self, p: f64) -> Option<DropoutSite> {
        let seed = self.dropout_seed(p)?;
        Some(match &self.rows {
            Some(rows) => DropoutSite::with_rows(p as f32, seed, rows.clone()),
            None => DropoutSite::new(p as f32, seed),
        })
    }

    /// A fresh mask seed when dropout with probability `p` is active.
    pub fn dropout_seed(&self, p: f64) -> Option<u64> {
        (self.train && p > 0.0).then(|| self.rng.borrow_mut().next_u64())
    }
}

/// Which intermediate outputs a forward pass keeps.
#[derive(Copy, Clone, Debug, Default)]
pub struct Taps {
    /// Keep the embedding output and every layer's output.
    pub hidden_states: bool,
    /// Keep every layer's attention probabilities.
    pub attentions: bool,
    /// The caller reads only the first (`[CLS]`) position of the last layer, as the pooler
    /// does: without other taps the last layer then computes that position alone (forward and
    /// backward) and `last_hidden` is `[B, 1, H]`.
    pub first_position_only: bool,
}

/// Outputs of the encoder.
pub struct EncoderOutput {
    /// `[B, L, H]` output of the last layer (`[B, 1, H]` under `Taps::first_position_only`).
    pub last_hidden: Tensor,
    /// With `Taps::hidden_states`: embeddings output then each layer's output (L+1 tensors).
    pub hidden_states: Vec<Tensor>,
    /// With `Taps::attentions`: `[B, heads, L, L]` probabilities per layer (before dropout).
    pub attentions: Vec<Tensor>,
    /// `[B, H]` tanh pooler output, when the model has a pooler.
    pub pooled: Option<Tensor>,
}

/// A dense layer `y = x W^T + b` over the last dimension.
#[derive(Clone)]
pub struct Linear {
    w: Tensor,
    b: Tensor,
}

impl Linear {
    /// Loads `<prefix>.weight` (`[out, in]`) and `<prefix>.bias`.
    pub fn load(get: &WeightFn, prefix: &str) -> anyhow::Result<Self> {
        Ok(Linear { w: get(&format!("{prefix}.weight"))?, b: get(&format!("{prefix}.bias"))? })
    }

    /// Applies the layer to `[..., in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::linear(x, &self.w, &self.b)
    }

    /// [`Linear::forward`] with its product in `precision` ([`ops::linear_in`]).
    pub fn forward_in(&self, x: &Tensor, precision: Precision) -> Result<Tensor> {
        ops::linear_in(x, &self.w, &self.b, precision)
    }
}

struct LayerNorm {
    gamma: Tensor,
    beta: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn load(get: &WeightFn, prefix: &str, eps: f64) -> anyhow::Result<Self> {
        Ok(LayerNorm { gamma: get(&format!("{prefix}.weight"))?, beta: get(&format!("{prefix}.bias"))?, eps })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::layer_norm(x, &self.gamma, &self.beta, self.eps)
    }
}

struct Layer {
    qkv_w: Tensor,
    qkv_b: Tensor,
    attn_out: Linear,
    attn_norm: LayerNorm,
    inter: Linear,
    out: Linear,
    out_norm: LayerNorm,
    /// The flat parameters of the fused layer op, kept after their first use when no weight
    /// tracks gradients.
    frozen_flat: OnceLock<Tensor>,
    /// Frozen weights prepared for bf16 / int8 products, built at their first use in that
    /// precision.
    frozen_low: Mutex<Option<(Precision, Arc<LayerWeights>)>>,
}

impl Layer {
    /// The parameters in the layout of the fused layer op.
    fn params(&self) -> LayerParams<'_> {
        LayerParams {
            qkv: (&self.qkv_w, &self.qkv_b),
            attn_out: (&self.attn_out.w, &self.attn_out.b),
            attn_norm: (&self.attn_norm.gamma, &self.attn_norm.beta),
            inter: (&self.inter.w, &self.inter.b),
            out: (&self.out.w, &self.out.b),
            out_norm: (&self.out_norm.gamma, &self.out_norm.beta),
        }
    }

    /// The flat parameters of the fused layer op (built once for frozen weights).
    fn flat_params(&self) -> Result<Tensor> {
        if let Some(flat) = self.frozen_flat.get() {
            return Ok(flat.clone());
        }
        let flat = self.params().flatten()?;
        if !flat.track_op() {
            // Another thread may have set it meanwhile: the same values.
            let _ = self.frozen_flat.set(flat.clone());
        }
        Ok(flat)
    }

    /// The precision of the fused op for `flat` (from [`Self::flat_params`]): frozen weights are
    /// prepared for a low precision once and reused; trainable ones in each forward pass.
    fn precision(&self, precision: Precision, flat: &Tensor, cfg: &BertConfig) -> Result<LayerPrecision> {
        if precision == Precision::F32 || flat.track_op() {
            return Ok(LayerPrecision { precision, weights: None });
        }
        let mut cache = self.frozen_low.lock().expect("not poisoned");
        if let Some((p, w)) = cache.as_ref().filter(|(p, _)| *p == precision) {
            return Ok(LayerPrecision { precision: *p, weights: Some(w.clone()) });
        }
        let weights = LayerWeights::new(precision, flat, cfg.hidden_size, cfg.intermediate_size)?.map(Arc::new);
        *cache = weights.clone().map(|w| (precision, w));
        Ok(LayerPrecision { precision, weights })
    }
}

/// The BERT encoder: embeddings, transformer layers and optional pooler.
pub struct Bert {
    cfg: BertConfig,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    pooler: Option<Linear>,
    /// The precision of the encoder layers' matrix products.
    precision: Precision,
}

impl Bert {
    /// Builds the encoder from weights named `bert.*`; `with_pooler` loads `bert.pooler.dense`.
    pub fn load(cfg: &BertConfig, get: &WeightFn, with_pooler: bool) -> anyhow::Result<Self> {
        let eps = cfg.layer_norm_eps;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("bert.encoder.layer.{i}");
            let part = |n: &str, t: &str| get(&format!("{p}.attention.self.{n}.{t}"));
            let qkv_w = Tensor::cat(&[part("query", "weight")?, part("key", "weight")?, part("value", "weight")?], 0)?;
            let qkv_b = Tensor::cat(&[part("query", "bias")?, part("key", "bias")?, part("value", "bias")?], 0)?;
            layers.push(Layer {
                qkv_w,
                qkv_b,
                attn_out: Linear::load(get, &format!("{p}.attention.output.dense"))?,
                attn_norm: LayerNorm::load(get, &format!("{p}.attention.output.LayerNorm"), eps)?,
                inter: Linear::load(get, &format!("{p}.intermediate.dense"))?,
                out: Linear::load(get, &format!("{p}.output.dense"))?,
                out_norm: LayerNorm::load(get, &format!("{p}.output.LayerNorm"), eps)?,
                frozen_flat: OnceLock::new(),
                frozen_low: Mutex::new(None),
            });
        }
        Ok(Bert {
            cfg: cfg.clone(),
            word: get("bert.embeddings.word_embeddings.weight")?,
            position: get("bert.embeddings.position_embeddings.weight")?,
            token_type: get("bert.embeddings.token_type_embeddings.weight")?,
            emb_norm: LayerNorm::load(get, "bert.embeddings.LayerNorm", eps)?,
            layers,
            pooler: if with_pooler { Some(Linear::load(get, "bert.pooler.dense")?) } else { None },
            precision: ops::precision::global(),
        })
    }

    /// The precision of the encoder layers' matrix products: at load, the process-wide one
    /// ([`ops::precision::set_global`]).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Sets the precision of the encoder layers' matrix products (bf16 applies to the fused CPU
    /// layers; int8 to inference only: a forward pass that tracks gradients fails).
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    /// The model configuration.
    pub fn config(&self) -> &BertConfig {
        &self.cfg
    }

    /// Runs the encoder on `[B, L]` ids / segment ids and a `[B, L]` f32 attention mask.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        taps: Taps,
        ctx: &ForwardCtx,
    ) -> Result<EncoderOutput> {
        let (b, l) = input_ids.dims2()?;
        let h = self.cfg.hidden_size;
        let words = self.word.index_select(&input_ids.flatten_all()?, 0)?.reshape((b, l, h))?;
        let types = self.token_type.index_select(&token_type_ids.flatten_all()?, 0)?.reshape((b, l, h))?;
        let positions = self.position.narrow(0, 0, l)?;
        let emb = words.add(&types)?.broadcast_add(&positions)?;
        let mut x = ctx.dropout(&self.emb_norm.forward(&emb)?, self.cfg.hidden_dropout_prob)?;
        // 0 for real tokens, -10000 for padding: added to the attention scores.
        let mask_bias = ((attention_mask.to_dtype(DType::F32)? - 1.0)? * 10000.0)?;
        let mut hidden_states = Vec::new();
        let mut attentions = Vec::new();
        if taps.hidden_states {
            hidden_states.push(x.clone());
        }
        // Only the pooler reads the last layer: it computes the first position alone.
        let first_position_last = taps.first_position_only && !taps.hidden_states && !taps.attentions;
        for (i, layer) in self.layers.iter().enumerate() {
            if first_position_last && i + 1 == self.layers.len() && ops::attention::supported(&x) {
                let (heads, inter, eps) =
                    (self.cfg.num_attention_heads, self.cfg.intermediate_size, layer.attn_norm.eps);
                let flat = layer.flat_params()?;
                let prec = layer.precision(self.precision, &flat, &self.cfg)?;
                x = ops::encoder_layer_first_position(
                    &x,
                    &mask_bias,
                    &flat,
                    heads,
                    inter,
                    eps,
                    self.dropout(ctx),
                    &prec,
                )?;
                continue;
            }
            let (out, probs) = self.layer_forward(layer, &x, &mask_bias, taps.attentions, ctx)?;
            x = out;
            if taps.hidden_states {
                hidden_states.push(x.clone());
            }
            attentions.extend(probs);
        }
        let pooled = match &self.pooler {
            Some(p) => Some(p.forward(&x.narrow(1, 0, 1)?.squeeze(1)?)?.tanh()?),
            None => None,
        };
        Ok(EncoderOutput { last_hidden: x, hidden_states, attentions, pooled })
    }

    /// The dropout of one fused layer: the same seeds, drawn in the same order, as the op-by-op
    /// path of [`Self::layer_forward`].
    fn dropout(&self, ctx: &ForwardCtx) -> LayerDropout {
        let (p_attn, p_hidden) = (self.cfg.attention_probs_dropout_prob, self.cfg.hidden_dropout_prob);
        let site = |p: f64| ctx.dropout_site(p);
        LayerDropout { attn_probs: site(p_attn), attn_out: site(p_hidden), ffn_out: site(p_hidden) }
    }

    /// One transformer layer; returns its output and, when `keep_probs`, the attention
    /// probabilities. Without taps on the CPU the attention core is one fused kernel.
    fn layer_forward(
        &self,
        layer: &Layer,
        x: &Tensor,
        mask_bias: &Tensor,
        keep_probs: bool,
        ctx: &ForwardCtx,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (b, l, h) = x.dims3()?;
        let heads = self.cfg.num_attention_heads;
        let p_attn = self.cfg.attention_probs_dropout_prob;
        if !keep_probs && ops::attention::supported(x) {
            let dropout = self.dropout(ctx);
            let eps = layer.attn_norm.eps;
            let flat = layer.flat_params()?;
            let prec = layer.precision(self.precision, &flat, &self.cfg)?;
            let out = ops::encoder_layer(x, mask_bias, &flat, heads, self.cfg.intermediate_size, eps, dropout, &prec)?;
            return Ok((out, None));
        }
        // Off the fused CPU path, `--precision=bf16` is autocast: the products in bf16.
        let prec = self.precision;
        let qkv = ops::linear_in(x, &layer.qkv_w, &layer.qkv_b, prec)?;
        let (context, probs) = if !keep_probs && ops::attention::supported(&qkv) {
            let dropout = ctx.dropout_site(p_attn);
            (ops::fused_attention(&qkv, mask_bias, heads, dropout)?, None)
        } else {
            let dh = self.cfg.head_dim();
            let qkv = qkv.reshape((b, l, 3, heads, dh))?;
            let split = |i: usize| -> Result<Tensor> { qkv.narrow(2, i, 1)?.squeeze(2)?.transpose(1, 2)?.contiguous() };
            let (q, k, v) = (split(0)?, split(1)?, split(2)?);
            let scores = ops::matmul_in(&q, &k.t()?, prec)?;
            let probs = ops::attention_softmax(&scores, mask_bias, 1.0 / (dh as f64).sqrt())?;
            let dropped = ctx.dropout(&probs, p_attn)?;
            (ops::matmul_in(&dropped, &v, prec)?.transpose(1, 2)?.reshape((b, l, h))?, Some(probs))
        };
        let attn = ctx.dropout(&layer.attn_out.forward_in(&context, prec)?, self.cfg.hidden_dropout_prob)?;
        let attn = layer.attn_norm.forward(&attn.add(x)?)?;
        let inter = ops::gelu_erf(&layer.inter.forward_in(&attn, prec)?)?;
        let out = ctx.dropout(&layer.out.forward_in(&inter, prec)?, self.cfg.hidden_dropout_prob)?;
        let out = layer.out_norm.forward(&out.add(&attn)?)?;
        Ok((out, probs))
    }
}

/// Mean of `hidden` `[B, L, H]` over the real tokens of `attention_mask` `[B, L]`.
pub fn masked_mean(hidden: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
    let mask = attention_mask.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
    let sum = hidden.broadcast_mul(&mask)?.sum(1)?;
    sum.broadcast_div(&mask.sum(1)?.clamp(1.0, f64::MAX)?)
}
