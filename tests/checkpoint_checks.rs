//! A checkpoint whose label count disagrees between label_mapping.json, config.json and the
//! classifier weights (or whose weights disagree with hidden_size) is refused at load by predict and
//! evaluate alike, with a message naming the files and both numbers, never a panic.

mod common;

use candle_core::{Device, Tensor};
use common::{easynlp_owned, sample, stderr, tiny_checkpoint};
use std::path::Path;

/// Runs predict and evaluate on `ckpt`; both must fail with every needle in stderr and no panic.
fn expect_refused(ckpt: &Path, needles: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let common = |mode: &str, out: &str| -> Vec<String> {
        vec![
            format!("--mode={mode}"),
            format!("--tables={}", sample("sentiment-dev.tsv")),
            "--input_schema=sent:str:1,label:str:1".into(),
            "--first_sequence=sent".into(),
            "--sequence_length=32".into(),
            format!("--outputs={}", tmp.path().join(out).display()),
            format!("--checkpoint_dir={}", ckpt.display()),
        ]
    };
    let mut predict = common("predict", "pred.tsv");
    predict.push("--output_schema=predictions,probabilities".into());
    let mut evaluate = common("evaluate", "metrics.json");
    evaluate.push("--label_name=label".into());
    for args in [predict, evaluate] {
        let out = easynlp_owned(&args);
        let err = stderr(&out);
        assert!(!out.status.success(), "{} succeeded on a bad checkpoint:\n{err}", args[0]);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        for n in needles {
            assert!(err.contains(n), "{}: stderr lacks `{n}`:\n{err}", args[0]);
        }
    }
    assert!(!tmp.path().join("pred.tsv").exists() && !tmp.path().join("metrics.json").exists());
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// Replaces `name` in the checkpoint's weights by a tensor of `shape`.
fn set_weight(ckpt: &Path, name: &str, shape: &[usize]) {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|i| (i % 13) as f32 * 0.1 - 0.6).collect();
    set_tensor(ckpt, name, Tensor::from_vec(values, shape, &Device::Cpu).unwrap());
}

/// Replaces `name` in the checkpoint's weights by `tensor`.
fn set_tensor(ckpt: &Path, name: &str, tensor: Tensor) {
    let path = ckpt.join("model.safetensors");
    let mut w = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    w.insert(name.into(), tensor);
    candle_core::safetensors::save(&w, &path).unwrap();
}

#[test]
fn a_sound_checkpoint_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tiny_checkpoint(&tmp.path().join("ckpt"), &["0", "1"]);
    let out = easynlp_owned(&[
        "--mode=evaluate".into(),
        format!("--tables={}", sample("sentiment-dev.tsv")),
        "--input_schema=sent:str:1,label:str:1".into(),
        "--first_sequence=sent".into(),
        "--label_name=label".into(),
        "--sequence_length=32".into(),
        format!("--checkpoint_dir={}", ckpt.display()),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn classifier_with_more_rows_than_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tiny_checkpoint(&tmp.path().join("ckpt"), &["0", "1"]);
    set_weight(&ckpt, "classifier.weight", &[3, 32]);
    // The third class wins every row: its index has no label name.
    set_tensor(&ckpt, "classifier.bias", Tensor::new(&[0f32, 0.0, 50.0], &Device::Cpu).unwrap());
    expect_refused(&ckpt, &["model.safetensors", "classifier.weight", "[3, 32]", "label_mapping.json", "2 labels"]);
}

#[test]
fn classifier_bias_disagrees_with_its_weight() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tiny_checkpoint(&tmp.path().join("ckpt"), &["0", "1"]);
    set_weight(&ckpt, "classifier.bias", &[3]);
    expect_refused(&ckpt, &["model.safetensors", "classifier.bias", "[3]", "2 labels"]);
}

#[test]
fn classifier_width_differs_from_hidden_size() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tiny_checkpoint(&tmp.path().join("ckpt"), &["0", "1"]);
    set_weight(&ckpt, "classifier.weight", &[2, 16]);
    expect_refused(&ckpt, &["model.safetensors", "classifier.weight", "[2, 16]", "hidden_size 32"]);
}

#[test]
fn config_num_labels_disagrees_with_label_mapping() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tiny_checkpoint(&tmp.path().join("ckpt"), &["0", "1"]);
    edit_json(&ckpt.join("config.json"), |c| {
        c["num_labels"] = serde_json::json!(3);
        c["id2label"] = serde_json::json!({"0": "0", "1": "1", "2": "2"});
    });
    expect_refused(&ckpt, &["config.json", "label_mapping.json", "3", "2"]);
    // num_labels alone.
    edit_json(&ckpt.join("config.json"), |c| {
        c["id2label"] = serde_json::json!({"0": "0", "1": "1"});
    });
    expect_refused(&ckpt, &["config.json", "num_labels 3", "label_mapping.json", "2 labels"]);
}

#[test]
fn config_id2label_disagrees_with_the_classifier_without_label_mapping() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tiny_checkpoint(&tmp.path().join("ckpt"), &["a", "b", "c"]);
    std::fs::remove_file(ckpt.join("label_mapping.json")).unwrap();
    set_weight(&ckpt, "classifier.weight", &[2, 32]);
    set_weight(&ckpt, "classifier.bias", &[2]);
    expect_refused(&ckpt, &["model.safetensors", "classifier.weight", "[2, 32]", "config.json", "3 labels"]);
}

#[test]
fn label_mapping_with_a_duplicate_index_or_a_gap() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tiny_checkpoint(&tmp.path().join("ckpt"), &["0", "1"]);
    std::fs::write(ckpt.join("label_mapping.json"), r#"{"0": 0, "1": 0}"#).unwrap();
    expect_refused(&ckpt, &["label_mapping.json", "index 0", "`0`", "`1`"]);
    std::fs::write(ckpt.join("label_mapping.json"), r#"{"0": 0, "1": 2}"#).unwrap();
    expect_refused(&ckpt, &["label_mapping.json", "index 1", "missing"]);
}

#[test]
fn backbone_weight_disagrees_with_config() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tiny_checkpoint(&tmp.path().join("ckpt"), &["0", "1"]);
    set_weight(&ckpt, "encoder.layer.0.intermediate.dense.weight", &[48, 32]);
    expect_refused(&ckpt, &["model.safetensors", "intermediate.dense.weight", "[48, 32]", "[64, 32]", "config.json"]);
}
