//! Checkpoint directories: Hugging Face compatible files written atomically, and their loading.

use super::config::BertConfig;
use super::params::{read_weights, Params};
use crate::data::labels::LabelSet;
use crate::persist::DirTxn;
use anyhow::{bail, Context, Result};
use candle_core::Device;
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

/// Writes `bytes` to `path` through a temporary file, fsynced, and a rename, so readers never
/// see half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let written = (|| -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut file, bytes)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", tmp.display()));
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot move {} into place", path.display()))
}

/// A sibling temporary path for atomic writes.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp{}", std::process::id()))
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

/// Loads a fine-tuned classifier checkpoint written by this program (or any HF
/// `BertForSequenceClassification` directory with labels).
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
    let labels = read_labels(dir, &config)?;
    let mut params = Params::default();
    for (name, t) in &weights {
        params.insert(name, t)?;
    }
    Ok(Checkpoint { config, params, labels, dir: dir.to_path_buf() })
}

/// Labels from `label_mapping.json`, else from `config.json`'s `id2label`.
fn read_labels(dir: &Path, cfg: &BertConfig) -> Result<LabelSet> {
    let mapping = dir.join("label_mapping.json");
    let pairs: Vec<(String, usize)> = if mapping.is_file() {
        let text = std::fs::read_to_string(&mapping)?;
        let map: HashMap<String, usize> = serde_json::from_str(&text)
            .with_context(|| format!("{}: expected {{\"label\": index, ...}}", mapping.display()))?;
        map.into_iter().collect()
    } else if let Some(Value::Object(id2label)) = cfg.raw.get("id2label") {
        id2label
            .iter()
            .map(|(i, n)| Ok((n.as_str().unwrap_or_default().to_string(), i.parse::<usize>()?)))
            .collect::<Result<_>>()
            .with_context(|| format!("{}/config.json: bad id2label", dir.display()))?
    } else {
        bail!("{}: no label_mapping.json and no id2label in config.json", dir.display());
    };
    let mut names = vec![String::new(); pairs.len()];
    for (name, idx) in pairs {
        if idx >= names.len() {
            bail!("{}: label index {idx} out of range", dir.display());
        }
        names[idx] = name;
    }
    LabelSet::from_names(names).with_context(|| format!("{}: bad label mapping", dir.display()))
}
