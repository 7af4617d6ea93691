//! A tiny teacher with its logits exported on the sample training table, for the KD tests.

use super::{easynlp_owned, sample, sentiment_train_args, stderr, tiny_bert};
use std::path::{Path, PathBuf};

/// A temporary folder with a tiny pretrained model, a teacher fine-tuned from it and the
/// teacher's logits on the sample training table.
pub struct Setup {
    pub _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub model: PathBuf,
    pub teacher: PathBuf,
    pub logits: PathBuf,
}

/// Trains a tiny teacher (`layers` layers) and exports its logits on the sample training table.
pub fn setup(layers: usize) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let model = tiny_bert(&root.join("model"), layers, true);
    let teacher = root.join("teacher");
    let out = easynlp_owned(&sentiment_train_args(&model, &teacher));
    assert!(out.status.success(), "teacher: {}", stderr(&out));
    let logits = root.join("train.logits.tsv");
    let out = export(&teacher, &logits);
    assert!(out.status.success(), "export: {}", stderr(&out));
    Setup { _tmp: tmp, root, model, teacher, logits }
}

/// Exports `teacher`'s logits on the sample training table to `logits`.
pub fn export(teacher: &Path, logits: &Path) -> std::process::Output {
    easynlp_owned(&[
        "--mode=predict".into(),
        format!("--tables={}", sample("sentiment-train.tsv")),
        "--input_schema=sent:str:1,label:str:1".into(),
        "--first_sequence=sent".into(),
        "--output_schema=logits".into(),
        format!("--outputs={}", logits.display()),
        format!("--checkpoint_dir={}", teacher.display()),
        "--micro_batch_size=16".into(),
        "--sequence_length=32".into(),
    ])
}
