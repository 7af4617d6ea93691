//! Teacher logits files through the binary: trailing blank lines, and the sidecar's hash of the
//! logits file it describes.

mod common;

use common::kd::{export, Setup};
use common::{easynlp_owned, sample, sentiment_train_args, stderr};
use std::path::Path;

fn setup() -> Setup {
    common::kd::setup(1)
}

/// Student KD train args reading the teacher logits from `logits`.
fn kd_args(s: &Setup, logits: &Path) -> Vec<String> {
    let mut args = sentiment_train_args(&s.model, &s.root.join("student"));
    for a in args.iter_mut() {
        if a.starts_with("--input_schema=") {
            *a = "--input_schema=sent:str:1,label:str:1,logits:float:2".into();
        }
    }
    let udp = args.pop().unwrap();
    args.push(format!(
        "{udp} enable_distillation=True type=vanilla_kd temperature=2 alpha=0.5 logits_name=logits logits_saved_path={}",
        logits.display()
    ));
    args
}

fn expect_kd_error(args: &[String], needles: &[&str]) {
    common::assert_failed_with(&easynlp_owned(args), needles);
}

fn rows() -> usize {
    std::fs::read_to_string(sample("sentiment-train.tsv")).unwrap().lines().count()
}

/// Blank lines at the end of a logits file are not rows; one in the middle is an error at its line.
#[test]
fn trailing_blank_lines_of_a_logits_file_are_ignored() {
    let s = setup();
    let text = std::fs::read_to_string(&s.logits).unwrap();
    let padded = s.root.join("padded.tsv");
    std::fs::write(&padded, format!("{text}\n")).unwrap();
    let out = easynlp_owned(&kd_args(&s, &padded));
    assert!(out.status.success(), "one trailing blank line: {}", stderr(&out));
    std::fs::write(&padded, format!("{text}\r\n \n\n")).unwrap();
    let out = easynlp_owned(&kd_args(&s, &padded));
    assert!(out.status.success(), "three trailing blank lines: {}", stderr(&out));
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(4, "");
    let blank = s.root.join("blank.tsv");
    std::fs::write(&blank, lines.join("\n") + "\n").unwrap();
    expect_kd_error(&kd_args(&s, &blank), &["blank.tsv:5", "blank"]);
}

/// The sidecar records the logits file's SHA-256.
#[test]
fn sidecar_records_the_logits_hash() {
    let s = setup();
    let side: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.root.join("train.logits.tsv.meta.json")).unwrap()).unwrap();
    let hash = side["logits_sha256"].as_str().expect("logits_sha256 in the sidecar");
    assert_eq!(hash, easynlp::digest::sha256_file(&s.logits).unwrap());
    assert_eq!(side["table"]["rows"], rows());
}

/// Logits edited (or re-exported) after their sidecar was written no longer match it: an error
/// naming both files that asks to export again.
#[test]
fn logits_that_do_not_match_their_sidecar() {
    let s = setup();
    let mut lines: Vec<String> = std::fs::read_to_string(&s.logits).unwrap().lines().map(String::from).collect();
    lines[2] = "0.25,-0.25".into();
    std::fs::write(&s.logits, lines.join("\n") + "\n").unwrap();
    expect_kd_error(&kd_args(&s, &s.logits), &["train.logits.tsv", "train.logits.tsv.meta.json", "export"]);
}

/// An export interrupted after the new logits were moved into place but before the new sidecar
/// was: the old sidecar describes other logits.
#[test]
fn logits_newer_than_their_sidecar() {
    let s = setup();
    let side = s.root.join("train.logits.tsv.meta.json");
    let old = std::fs::read(&side).unwrap();
    // Another teacher, trained longer, exported over the same path; then the old sidecar back.
    let other = s.root.join("teacher2");
    let mut args = sentiment_train_args(&s.model, &other);
    args.push("--epoch_num=3".into());
    assert!(easynlp_owned(&args).status.success());
    assert!(export(&other, &s.logits).status.success());
    std::fs::write(&side, old).unwrap();
    expect_kd_error(&kd_args(&s, &s.logits), &["train.logits.tsv", "meta.json", "export"]);
}

/// A sidecar written before the hash was recorded is still accepted, with a warning.
#[test]
fn sidecar_without_the_logits_hash_is_accepted_with_a_warning() {
    let s = setup();
    let side = s.root.join("train.logits.tsv.meta.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&side).unwrap()).unwrap();
    json.as_object_mut().unwrap().remove("logits_sha256");
    std::fs::write(&side, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    let out = easynlp_owned(&kd_args(&s, &s.logits));
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("meta.json") && err.contains("no logits_sha256"), "no warning:\n{err}");
    let _ = &s.teacher;
}
