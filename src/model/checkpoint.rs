//! Checkpoint directories: Hugging Face compatible files written atomically, and their loading.

use super::config::BertConfig;
use super::params::{read_weights, Params};
use crate::data::labels::LabelSet;
use crate::persist::DirTxn;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A loaded fine-tuned model: its config, weights, labels and directory.
pub struct Checkpoint {
    /// Model configuration.
    pub config: BertConfig,
    /// Weights, including `classifier.*`.
    pub params: Params,
    /// Class names in class-index order.
    pub labels: LabelSet,
    /// Where it was loaded from (tokenizer files live here too).
    pub dir: PathBuf,
}

/// The `config.json` of a fine-tuned classifier: the backbone config plus labels and architecture.
pub fn classifier_config_json(cfg: &BertConfig, labels: &LabelSet) -> Value {
    let mut raw = cfg.raw.clone();
    raw.insert("architectures".into(), json!(["BertForSequenceClassification"]));
    raw.insert("model_type".into(), json!("bert"));
    raw.insert("num_labels".into(), json!(labels.len()));
    let id2label: serde_json::Map<String, Value> =
        labels.names.iter().enumerate().map(|(i, n)| (i.to_string(), json!(n))).collect();
    let label2id: serde_json::Map<String, Value> =
        labels.names.iter().enumerate().map(|(i, n)| (n.clone(), json!(i))).collect();
    raw.insert("id2label".into(), Value::Object(id2label));
    raw.insert("label2id".into(), Value::Object(label2id));
    Value::Object(raw)
}

/// Writes everything except the weights into a new version of a checkpoint directory: config,
/// label mapping, train config and the tokenizer files copied from `tokenizer_src`.
pub fn save_metadata(
    txn: &DirTxn,
    cfg: &BertConfig,
    labels: &LabelSet,
    train_config: &Value,
    tokenizer_src: &Path,
) -> Result<()> {
    let config = serde_json::to_string_pretty(&classifier_config_json(cfg, labels))?;
    txn.write("config.json", format!("{config}\n").as_bytes())?;
    let mapping: serde_json::Map<String, Value> =
        labels.names.iter().enumerate().map(|(i, n)| (n.clone(), json!(i))).collect();
    txn.write("label_mapping.json", serde_json::to_string(&mapping)?.as_bytes())?;
    txn.write("train_config.json", serde_json::to_string_pretty(train_config)?.as_bytes())?;
    for file in ["vocab.txt", "tokenizer.json", "special_tokens_map.json", "tokenizer_config.json"] {
        let src = tokenizer_src.join(file);
        if src.is_file() {
            let bytes = std::fs::read(&src).with_context(|| format!("cannot read {}", src.display()))?;
            txn.write(file, &bytes)?;
        }
    }
    Ok(())
}

/// The files of a checkpoint directory that loading it (config, weights, labels, tokenizer) may read.
pub const CHECKPOINT_FILES: &[&str] = &[
    "config.json",
    "model.safetensors",
    "pytorch_model.bin",
    "label_mapping.json",
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// The weights file of a model directory: `model.safetensors`, else `pytorch_model.bin`.
pub fn weights_file(dir: &Path) -> PathBuf {
    let st = dir.join("model.safetensors");
    if st.is_file() {
        st
    } else {
        dir.join("pytorch_model.bin")
    }
}

/// Loads a fine-tuned classifier checkpoint written by this program (or any HF
/// `BertForSequenceClassification` directory with labels). The label count of
/// `label_mapping.json`, `config.json` and the classifier weights, and every weight's shape against
/// `config.json`, are checked.
pub fn load_checkpoint(dir: &Path, device: &Device) -> Result<Checkpoint> {
    if !dir.is_dir() {
        bail!("checkpoint `{}` does not exist (train one with --mode=train --checkpoint_dir=...)", dir.display());
    }
    let config = BertConfig::load(dir)?;
    let (weights, _) = read_weights(dir, device)?;
    if !weights.contains_key("classifier.weight") {
        bail!(
            "{}: no classifier weights; this is a pretrained model, not a fine-tuned checkpoint \
             (train one with --mode=train first)",
            dir.display()
        );
    }
    let (labels, source) = read_labels(dir, &config)?;
    check_shapes(dir, &config, &weights, labels.len(), &source)?;
    let params = Params::from_tensors(&weights)?;
    Ok(Checkpoint { config, params, labels, dir: dir.to_path_buf() })
}

/// Labels from `label_mapping.json`, else from `config.json`'s `id2label`; the two, and
/// `num_labels`, must agree on the count when present. Returns the labels and where they came from
/// (for messages).
fn read_labels(dir: &Path, cfg: &BertConfig) -> Result<(LabelSet, String)> {
    let mapping_path = dir.join("label_mapping.json");
    let config_path = dir.join("config.json");
    let mapping = if mapping_path.is_file() {
        let source = mapping_path.display().to_string();
        let text = std::fs::read_to_string(&mapping_path).with_context(|| format!("cannot read {source}"))?;
        let map: serde_json::Map<String, Value> =
            serde_json::from_str(&text).with_context(|| format!("{source}: expected {{\"label\": index, ...}}"))?;
        let pairs = map
            .into_iter()
            .map(|(name, v)| match v.as_u64() {
                Some(i) => Ok((name, i as usize)),
                None => bail!("{source}: label `{name}` has index {v}; expected a class index 0, 1, ..."),
            })
            .collect::<Result<Vec<_>>>()?;
        Some((names_by_index(pairs, &source)?, source))
    } else {
        None
    };
    let config = match cfg.raw.get("id2label") {
        None | Some(Value::Null) => None,
        Some(Value::Object(id2label)) => {
            let source = format!("{} id2label", config_path.display());
            let pairs = id2label
                .iter()
                .map(|(i, n)| match (i.parse::<usize>(), n.as_str()) {
                    (Ok(i), Some(n)) => Ok((n.to_string(), i)),
                    _ => bail!("{source}: `\"{i}\": {n}` is not `\"class index\": \"label\"`"),
                })
                .collect::<Result<Vec<_>>>()?;
            Some((names_by_index(pairs, &source)?, source))
        }
        Some(other) => bail!("{}: id2label {other} is not an object {{\"0\": \"label\", ...}}", config_path.display()),
    };
    if let (Some((m, m_source)), Some((c, c_source))) = (&mapping, &config) {
        if m.len() != c.len() {
            bail!("{m_source} has {} labels, but {c_source} has {} labels", m.len(), c.len());
        }
    }
    let Some((names, source)) = mapping.or(config) else {
        bail!("{}: no label_mapping.json and no id2label in config.json", dir.display());
    };
    match cfg.raw.get("num_labels") {
        None | Some(Value::Null) => {}
        Some(v) => match v.as_u64() {
            Some(n) if n as usize == names.len() => {}
            Some(n) => bail!("{}: num_labels {n}, but {source} has {} labels", config_path.display(), names.len()),
            None => bail!("{}: num_labels {v} is not a count", config_path.display()),
        },
    }
    let labels = LabelSet::from_names(names).with_context(|| format!("{source}: bad labels"))?;
    Ok((labels, source))
}

/// Class names ordered by their index; the indices must be 0..N-1, each once.
fn names_by_index(mut pairs: Vec<(String, usize)>, source: &str) -> Result<Vec<String>> {
    pairs.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    for w in pairs.windows(2) {
        if w[0].1 == w[1].1 {
            bail!("{source}: index {} is given to both `{}` and `{}`", w[0].1, w[0].0, w[1].0);
        }
    }
    if let Some(missing) = pairs.iter().enumerate().find(|(i, p)| p.1 != *i).map(|(i, _)| i) {
        bail!(
            "{source}: label indices must be 0..{} without gaps, but index {missing} is missing",
            pairs.len().saturating_sub(1)
        );
    }
    Ok(pairs.into_iter().map(|(name, _)| name).collect())
}

/// Every weight's shape against `config.json`, and the classifier's against the `num_labels` labels
/// of `labels_source`.
fn check_shapes(
    dir: &Path,
    cfg: &BertConfig,
    weights: &HashMap<String, Tensor>,
    num_labels: usize,
    labels_source: &str,
) -> Result<()> {
    let file = weights_file(dir).display().to_string();
    let config = dir.join("config.json").display().to_string();
    let (n, h) = (num_labels, cfg.hidden_size);
    let shape = |name: &str| weights.get(name).map(|t| t.dims().to_vec());
    if let Some(w) = shape("classifier.weight") {
        if w.len() != 2 || w[1] != h {
            bail!("{file}: classifier.weight has shape {w:?}, but {config} has hidden_size {h} (expected [{n}, {h}])");
        }
        if w[0] != n {
            bail!(
                "{file}: classifier.weight has shape {w:?}, but {labels_source} has {n} labels (expected [{n}, {h}])"
            );
        }
    }
    if let Some(b) = shape("classifier.bias") {
        if b != [n] {
            bail!("{file}: classifier.bias has shape {b:?}, but {labels_source} has {n} labels (expected [{n}])");
        }
    }
    for (name, want) in backbone_shapes(cfg) {
        if let Some(got) = shape(&name) {
            if got != want {
                bail!(
                    "{file}: `{name}` has shape {got:?}, but {config} (vocab_size {}, hidden_size {h}, \
                     intermediate_size {}, max_position_embeddings {}, type_vocab_size {}) implies {want:?}",
                    cfg.vocab_size,
                    cfg.intermediate_size,
                    cfg.max_position_embeddings,
                    cfg.type_vocab_size
                );
            }
        }
    }
    Ok(())
}

/// The shape of every `bert.*` weight that `cfg` implies.
fn backbone_shapes(cfg: &BertConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let mut shapes = vec![
        ("bert.embeddings.word_embeddings.weight".to_string(), vec![cfg.vocab_size, h]),
        ("bert.embeddings.position_embeddings.weight".into(), vec![cfg.max_position_embeddings, h]),
        ("bert.embeddings.token_type_embeddings.weight".into(), vec![cfg.type_vocab_size, h]),
        ("bert.embeddings.LayerNorm.weight".into(), vec![h]),
        ("bert.embeddings.LayerNorm.bias".into(), vec![h]),
        ("bert.pooler.dense.weight".into(), vec![h, h]),
        ("bert.pooler.dense.bias".into(), vec![h]),
    ];
    for l in 0..cfg.num_hidden_layers {
        let p = format!("bert.encoder.layer.{l}");
        for (name, out, inp) in [
            ("attention.self.query", h, h),
            ("attention.self.key", h, h),
            ("attention.self.value", h, h),
            ("attention.output.dense", h, h),
            ("intermediate.dense", i, h),
            ("output.dense", h, i),
        ] {
            shapes.push((format!("{p}.{name}.weight"), vec![out, inp]));
            shapes.push((format!("{p}.{name}.bias"), vec![out]));
        }
        for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
            shapes.push((format!("{p}.{norm}.weight"), vec![h]));
            shapes.push((format!("{p}.{norm}.bias"), vec![h]));
        }
    }
    shapes
}
