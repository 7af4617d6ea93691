//! `config.json` of a Hugging Face BERT model.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::Path;

fn default_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_eps() -> f64 {
    1e-12
}
fn default_init() -> f64 {
    0.02
}
fn default_types() -> usize {
    2
}

/// The BERT hyper-parameters this program uses; the full JSON is kept for writing checkpoints.
#[derive(Clone, Debug, Deserialize)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size H.
    pub hidden_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// FFN inner size.
    pub intermediate_size: usize,
    /// Activation; only the erf GELU (`gelu`) is supported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Dropout on embeddings, attention output and FFN output.
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities.
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Longest supported sequence.
    pub max_position_embeddings: usize,
    /// Number of segment types.
    #[serde(default = "default_types")]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Standard deviation of newly initialised weights.
    #[serde(default = "default_init")]
    pub initializer_range: f64,
    /// The whole `config.json` as read.
    #[serde(skip)]
    pub raw: serde_json::Map<String, serde_json::Value>,
}

impl BertConfig {
    /// Reads and checks `<dir>/config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: cannot read the model config", path.display()))?;
        let raw: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&text).with_context(|| format!("{}: not a JSON object", path.display()))?;
        let mut cfg: BertConfig = serde_json::from_value(serde_json::Value::Object(raw.clone()))
            .with_context(|| format!("{}: not a BERT config", path.display()))?;
        cfg.raw = raw;
        if let Some(t) = cfg.raw.get("model_type").and_then(|v| v.as_str()) {
            if t != "bert" {
                bail!("{}: model_type `{t}` is not supported (only bert)", path.display());
            }
        }
        if cfg.hidden_act != "gelu" {
            bail!("{}: hidden_act `{}` is not supported (only gelu)", path.display(), cfg.hidden_act);
        }
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            bail!(
                "{}: hidden_size {} is not divisible by num_attention_heads {}",
                path.display(),
                cfg.hidden_size,
                cfg.num_attention_heads
            );
        }
        Ok(cfg)
    }

    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}
