//! `config.json` of a Hugging Face BERT model, as the Hub holds them: with or without
//! `model_type`, `layer_norm_eps` and the other keys that older files leave out.

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use std::path::Path;

/// The keys a BERT `config.json` must give: they fix the shape of the weights (transformers would
/// fill in `bert-base`'s values, which for any other model gives the wrong shapes).
pub const REQUIRED_KEYS: &[&str] = &[
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
];

/// Keys of other architectures' configs that tell what a config without BERT's keys is.
const FOREIGN_KEYS: &[(&str, &str)] = &[
    ("n_embd", "GPT-2"),
    ("n_layer", "GPT-2"),
    ("dim", "DistilBERT"),
    ("n_layers", "DistilBERT"),
    ("d_model", "T5/BART"),
];

/// The BERT hyper-parameters this program uses; the full JSON is kept for writing checkpoints.
#[derive(Clone, Debug)]
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
    pub hidden_act: String,
    /// Dropout on embeddings, attention output and FFN output (default 0.1).
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities (default 0.1).
    pub attention_probs_dropout_prob: f64,
    /// Longest supported sequence.
    pub max_position_embeddings: usize,
    /// Number of segment types (default 2).
    pub type_vocab_size: usize,
    /// LayerNorm epsilon (default 1e-12).
    pub layer_norm_eps: f64,
    /// Standard deviation of newly initialised weights (default 0.02).
    pub initializer_range: f64,
    /// The whole `config.json` as read.
    pub raw: Map<String, Value>,
}

impl BertConfig {
    /// Reads and checks `<dir>/config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: cannot read the model config", path.display()))?;
        let raw: Map<String, Value> =
            serde_json::from_str(&text).with_context(|| format!("{}: not a JSON object", path.display()))?;
        Self::from_json(raw, &path)
    }

    /// Checks a parsed `config.json` (`path` names it in messages). Keys that transformers'
    /// `BertConfig` defaults are optional here with the same defaults, except [`REQUIRED_KEYS`].
    pub fn from_json(raw: Map<String, Value>, path: &Path) -> Result<Self> {
        let file = path.display();
        match raw.get("model_type") {
            None | Some(Value::Null) => {}
            Some(Value::String(t)) if t == "bert" => {}
            Some(Value::String(t)) => {
                bail!("{file}: model_type `{t}` is not supported: only BERT models (model_type `bert`) are")
            }
            Some(v) => bail!("{file}: model_type {v} is not a model type name"),
        }
        let missing: Vec<&str> = REQUIRED_KEYS.iter().copied().filter(|k| !raw.contains_key(*k)).collect();
        if !missing.is_empty() {
            let foreign: Vec<String> = FOREIGN_KEYS
                .iter()
                .filter(|(k, _)| raw.contains_key(*k))
                .map(|(k, arch)| format!("`{k}` ({arch})"))
                .collect();
            let hint = if foreign.is_empty() {
                String::new()
            } else {
                format!("; it has another architecture's keys: {}", foreign.join(", "))
            };
            bail!(
                "{file}: not a BERT config: no `{}` (a BERT config.json gives {}){hint}",
                missing.join("`, `"),
                REQUIRED_KEYS.join(", ")
            );
        }
        let count = |key: &str, default: usize| -> Result<usize> {
            match raw.get(key) {
                None | Some(Value::Null) if !REQUIRED_KEYS.contains(&key) => Ok(default),
                Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64().unwrap_or_default() as usize),
                v => bail!("{file}: `{key}` is {}; expected a whole number", shown(v)),
            }
        };
        let real = |key: &str, default: f64| -> Result<f64> {
            match raw.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Number(n)) => Ok(n.as_f64().unwrap_or(default)),
                v => bail!("{file}: `{key}` is {}; expected a number", shown(v)),
            }
        };
        let text = |key: &str, default: &str| -> Result<String> {
            match raw.get(key) {
                None | Some(Value::Null) => Ok(default.to_string()),
                Some(Value::String(s)) => Ok(s.clone()),
                v => bail!("{file}: `{key}` is {}; expected a string", shown(v)),
            }
        };
        let cfg = BertConfig {
            vocab_size: count("vocab_size", 0)?,
            hidden_size: count("hidden_size", 0)?,
            num_hidden_layers: count("num_hidden_layers", 0)?,
            num_attention_heads: count("num_attention_heads", 0)?,
            intermediate_size: count("intermediate_size", 0)?,
            hidden_act: text("hidden_act", "gelu")?,
            hidden_dropout_prob: real("hidden_dropout_prob", 0.1)?,
            attention_probs_dropout_prob: real("attention_probs_dropout_prob", 0.1)?,
            max_position_embeddings: count("max_position_embeddings", 0)?,
            type_vocab_size: count("type_vocab_size", 2)?,
            layer_norm_eps: real("layer_norm_eps", 1e-12)?,
            initializer_range: real("initializer_range", 0.02)?,
            raw: Map::new(),
        };
        if cfg.hidden_act != "gelu" {
            bail!("{file}: hidden_act `{}` is not supported (only gelu)", cfg.hidden_act);
        }
        let position = text("position_embedding_type", "absolute")?;
        if position != "absolute" {
            bail!("{file}: position_embedding_type `{position}` is not supported (only absolute)");
        }
        if raw.get("is_decoder") == Some(&Value::Bool(true)) {
            bail!("{file}: is_decoder true is not supported (a BERT encoder only)");
        }
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            bail!(
                "{file}: hidden_size {} is not divisible by num_attention_heads {}",
                cfg.hidden_size,
                cfg.num_attention_heads
            );
        }
        Ok(BertConfig { raw, ..cfg })
    }

    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// A JSON value for a message (`absent` when there is none).
fn shown(v: Option<&Value>) -> String {
    v.map_or_else(|| "absent".to_string(), Value::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<BertConfig> {
        let Value::Object(map) = v else { panic!("not an object") };
        BertConfig::from_json(map, Path::new("/m/config.json"))
    }

    fn err(v: Value) -> String {
        format!("{:#}", parse(v).expect_err("accepted"))
    }

    /// google/bert_uncased_L-2_H-128_A-2's config.json: no model_type, no layer_norm_eps.
    fn bert_tiny() -> Value {
        json!({
            "hidden_size": 128, "hidden_act": "gelu", "initializer_range": 0.02, "vocab_size": 30522,
            "hidden_dropout_prob": 0.1, "num_attention_heads": 2, "type_vocab_size": 2,
            "max_position_embeddings": 512, "num_hidden_layers": 2, "intermediate_size": 512,
            "attention_probs_dropout_prob": 0.1
        })
    }

    #[test]
    fn a_config_without_model_type_loads_with_defaults() {
        let cfg = parse(bert_tiny()).unwrap();
        assert_eq!((cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads), (128, 2, 2));
        assert_eq!((cfg.intermediate_size, cfg.vocab_size, cfg.max_position_embeddings), (512, 30522, 512));
        assert_eq!(cfg.layer_norm_eps, 1e-12);
        assert_eq!(cfg.head_dim(), 64);
        assert!(!cfg.raw.contains_key("model_type"));
    }

    /// Google's original bert_config.json has only the required keys and those above; the
    /// optional ones default as transformers' BertConfig does, null included.
    #[test]
    fn optional_keys_default_as_transformers() {
        let mut v = bert_tiny();
        for k in [
            "hidden_act",
            "initializer_range",
            "hidden_dropout_prob",
            "type_vocab_size",
            "attention_probs_dropout_prob",
        ] {
            v.as_object_mut().unwrap().remove(k);
        }
        v["layer_norm_eps"] = Value::Null;
        v["model_type"] = json!("bert");
        let cfg = parse(v).unwrap();
        assert_eq!(cfg.hidden_act, "gelu");
        assert_eq!((cfg.hidden_dropout_prob, cfg.attention_probs_dropout_prob), (0.1, 0.1));
        assert_eq!((cfg.type_vocab_size, cfg.initializer_range, cfg.layer_norm_eps), (2, 0.02, 1e-12));
    }

    #[test]
    fn other_model_types_are_named() {
        for t in ["gpt2", "roberta", "distilbert", "electra"] {
            let mut v = bert_tiny();
            v["model_type"] = json!(t);
            let e = err(v);
            assert!(e.contains("/m/config.json") && e.contains(&format!("model_type `{t}`")), "{e}");
        }
    }

    #[test]
    fn a_missing_required_key_is_named() {
        for key in REQUIRED_KEYS {
            let mut v = bert_tiny();
            v.as_object_mut().unwrap().remove(*key);
            let e = err(v);
            assert!(e.contains("/m/config.json") && e.contains(&format!("no `{key}`")), "{e}");
        }
        // A GPT-2 config without model_type: its own keys are named.
        let e = err(json!({"n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257, "n_positions": 1024}));
        assert!(e.contains("no `hidden_size`") && e.contains("`n_embd` (GPT-2)"), "{e}");
    }

    #[test]
    fn a_key_of_the_wrong_type_is_named() {
        for (key, value) in [
            ("hidden_size", json!("128")),
            ("num_hidden_layers", json!(2.5)),
            ("vocab_size", Value::Null),
            ("type_vocab_size", json!(-1)),
            ("layer_norm_eps", json!("1e-12")),
            ("hidden_act", json!(1)),
            ("model_type", json!(["bert"])),
        ] {
            let mut v = bert_tiny();
            v[key] = value.clone();
            let e = err(v);
            assert!(e.contains("/m/config.json") && e.contains(key), "{key}={value}: {e}");
        }
    }

    #[test]
    fn unsupported_settings_are_named() {
        for (key, value, needle) in [
            ("hidden_act", json!("relu"), "hidden_act `relu`"),
            ("position_embedding_type", json!("relative_key"), "position_embedding_type `relative_key`"),
            ("is_decoder", json!(true), "is_decoder"),
            ("num_attention_heads", json!(3), "not divisible"),
        ] {
            let mut v = bert_tiny();
            v[key] = value;
            let e = err(v);
            assert!(e.contains(needle), "{e}");
        }
        let mut v = bert_tiny();
        v["position_embedding_type"] = json!("absolute");
        v["is_decoder"] = json!(false);
        parse(v).unwrap();
    }
}
