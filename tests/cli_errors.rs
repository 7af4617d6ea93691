//! Bad input: each case exits non-zero with a message that names the place, never panics, and
//! leaves no partial output.

mod common;

use common::{easynlp_owned, sample, sentiment_train_args, stderr, tiny_bert};
use std::path::Path;

/// Runs a train command with `edit` applied to the default args, expects failure containing `needles`.
fn expect_train_error(edit: impl Fn(&mut Vec<String>, &Path), needles: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_bert(&tmp.path().join("model"), 1, true);
    let ckpt = tmp.path().join("ckpt");
    let mut args = sentiment_train_args(&model, &ckpt);
    edit(&mut args, tmp.path());
    common::assert_failed_with(&easynlp_owned(&args), needles);
    assert!(!ckpt.join("model.safetensors").exists(), "no model is written on bad input");
}

fn set(args: &mut [String], flag: &str, value: String) {
    let prefix = format!("--{flag}=");
    let slot = args.iter_mut().find(|a| a.starts_with(&prefix)).expect("flag present");
    *slot = format!("{prefix}{value}");
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn missing_table_file() {
    expect_train_error(
        |a, d| set(a, "tables", d.join("nope.tsv").display().to_string()),
        &["nope.tsv", "does not exist"],
    );
}

#[test]
fn row_with_too_few_columns() {
    expect_train_error(
        |a, d| set(a, "tables", write(d, "few.tsv", "good movie\t1\nbad movie\n")),
        &["few.tsv:2", "expected 2", "found 1"],
    );
}

#[test]
fn row_with_too_many_columns() {
    expect_train_error(
        |a, d| set(a, "tables", write(d, "many.tsv", "good movie\t1\nbad\tmovie\t0\n")),
        &["many.tsv:2", "expected 2", "found 3"],
    );
}

#[test]
fn label_not_enumerated() {
    expect_train_error(
        |a, d| set(a, "tables", write(d, "lab.tsv", "good movie\t1\nbad movie\tneg\n")),
        &["lab.tsv:2", "`label`", "`neg`", "--label_enumerate_values"],
    );
}

#[test]
fn unknown_user_defined_parameter_suggests_closest() {
    expect_train_error(
        |a, _| {
            let last = a.last_mut().unwrap();
            last.push_str(" learning_rat=3");
        },
        &["unknown key `learning_rat`"],
    );
    expect_train_error(
        |a, _| {
            let last = a.last_mut().unwrap();
            *last = last.replace("pretrain_model_name_or_path", "pretrain_model_name_or_pth");
        },
        &["did you mean `pretrain_model_name_or_path`"],
    );
}

#[test]
fn schema_type_not_supported() {
    expect_train_error(
        |a, _| set(a, "input_schema", "sent:str:1,label:bool:1".into()),
        &["label", "bool", "str, int or float"],
    );
}

#[test]
fn first_sequence_not_in_schema() {
    expect_train_error(|a, _| set(a, "first_sequence", "text".into()), &["--first_sequence", "`text`", "sent, label"]);
}

#[test]
fn sequence_length_above_model_limit() {
    expect_train_error(
        |a, _| set(a, "sequence_length", "100".into()),
        &["--sequence_length=100", "max_position_embeddings (64)"],
    );
}

#[test]
fn sequence_length_too_short_for_pairs() {
    expect_train_error(
        |a, _| {
            set(a, "sequence_length", "2".into());
            a.push("--second_sequence=sent".into());
        },
        &["--sequence_length=2 is too short for sentence pairs"],
    );
}

#[test]
fn zero_batch_size() {
    expect_train_error(|a, _| set(a, "micro_batch_size", "0".into()), &["--micro_batch_size"]);
}

#[test]
fn empty_table() {
    expect_train_error(|a, d| set(a, "tables", write(d, "empty.tsv", "")), &["empty.tsv", "no rows"]);
}

#[test]
fn unknown_model_name() {
    expect_train_error(
        |a, d| {
            let last = a.last_mut().unwrap();
            *last = "--user_defined_parameters=pretrain_model_name_or_path=bert-nonexistent".into();
            a.push(format!("--modelzoo_base_dir={}", d.join("zoo").display()));
        },
        &["unknown model `bert-nonexistent`", "zoo", "fetch_models.sh"],
    );
}

#[test]
fn predict_without_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let out_file = tmp.path().join("pred.tsv");
    let out = easynlp_owned(&[
        "--mode=predict".into(),
        format!("--tables={}", sample("sentiment-dev.tsv")),
        "--input_schema=sent:str:1,label:str:1".into(),
        "--first_sequence=sent".into(),
        "--output_schema=predictions".into(),
        format!("--outputs={}", out_file.display()),
        format!("--checkpoint_dir={}", tmp.path().join("no-ckpt").display()),
    ]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("no-ckpt") && err.contains("does not exist"), "{err}");
    assert!(!out_file.exists(), "no partial output");
    // A pretrained model directory is not a fine-tuned checkpoint either.
    let model = tiny_bert(&tmp.path().join("model"), 1, true);
    let out = easynlp_owned(&[
        "--mode=predict".into(),
        format!("--tables={}", sample("sentiment-dev.tsv")),
        "--input_schema=sent:str:1,label:str:1".into(),
        "--first_sequence=sent".into(),
        "--output_schema=predictions".into(),
        format!("--outputs={}", out_file.display()),
        format!("--checkpoint_dir={}", model.display()),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no classifier weights"), "{}", stderr(&out));
    assert!(!out_file.exists());
}
