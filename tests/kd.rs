//! Vanilla KD through the binary on a tiny random BERT: logits export with its sidecar, the
//! checked join, and the file route agreeing with the online-teacher route.

mod common;

use common::kd::Setup;
use common::{easynlp_owned, sample, sentiment_train_args, stderr};
use std::path::Path;

fn setup() -> Setup {
    common::kd::setup(2)
}

/// Student KD train args; `udp_tail` is appended to the user_defined_parameters.
fn kd_args(s: &Setup, ckpt: &Path, udp_tail: &str, with_logits_schema: bool) -> Vec<String> {
    let mut args = sentiment_train_args(&s.model, ckpt);
    if with_logits_schema {
        for a in args.iter_mut() {
            if a.starts_with("--input_schema=") {
                *a = "--input_schema=sent:str:1,label:str:1,logits:float:2".into();
            }
        }
    }
    let udp = args.pop().unwrap();
    args.push(format!("{udp} enable_distillation=True type=vanilla_kd temperature=2 alpha=0.5 {udp_tail}"));
    args.push("--epoch_num=2".into());
    args
}

fn file_route(s: &Setup, ckpt: &Path, logits: &Path) -> Vec<String> {
    kd_args(s, ckpt, &format!("logits_name=logits logits_saved_path={}", logits.display()), true)
}

fn expect_kd_error(args: &[String], needles: &[&str]) {
    common::assert_failed_with(&easynlp_owned(args), needles);
}

#[test]
fn export_writes_one_row_per_input_and_a_sidecar() {
    let s = setup();
    let text = std::fs::read_to_string(&s.logits).unwrap();
    let rows = std::fs::read_to_string(sample("sentiment-train.tsv")).unwrap().lines().count();
    assert_eq!(text.lines().count(), rows);
    assert!(text.lines().all(|l| l.split(',').count() == 2 && l.split(',').all(|v| v.parse::<f32>().is_ok())));
    let side: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.root.join("train.logits.tsv.meta.json")).unwrap()).unwrap();
    assert_eq!(side["table"]["rows"], rows);
    assert_eq!(side["labels"], serde_json::json!(["0", "1"]));
    assert_eq!(side["table"]["sha256"].as_str().unwrap().len(), 64);
}

#[test]
fn file_route_and_online_teacher_route_agree() {
    let s = setup();
    let a = s.root.join("student-file");
    let b = s.root.join("student-online");
    let out = easynlp_owned(&file_route(&s, &a, &s.logits));
    assert!(out.status.success(), "file route: {}", stderr(&out));
    let mut online = kd_args(&s, &b, &format!("teacher_model_path={}", s.teacher.display()), false);
    online.push("--micro_batch_size=16".into());
    let out = easynlp_owned(&online);
    assert!(out.status.success(), "online route: {}", stderr(&out));
    let state = |d: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("latest/trainer_state.json")).unwrap()).unwrap()
    };
    assert_eq!(state(&a)["best_accuracy"], state(&b)["best_accuracy"]);
    let wa = std::fs::read(a.join("model.safetensors")).unwrap();
    let wb = std::fs::read(b.join("model.safetensors")).unwrap();
    assert!(wa == wb, "the two routes trained different weights");
    // KD really changes training: a student without KD ends elsewhere.
    let c = s.root.join("student-plain");
    let mut plain = sentiment_train_args(&s.model, &c);
    plain.push("--epoch_num=2".into());
    assert!(easynlp_owned(&plain).status.success());
    assert!(std::fs::read(c.join("model.safetensors")).unwrap() != wa);
}

#[test]
fn logits_with_fewer_rows_than_the_table() {
    let s = setup();
    let bad = s.root.join("short.tsv");
    let text = std::fs::read_to_string(&s.logits).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&bad, lines[..lines.len() - 1].join("\n") + "\n").unwrap();
    expect_kd_error(&file_route(&s, &s.root.join("x"), &bad), &["short.tsv", "95 logits rows", "96 rows"]);
}

#[test]
fn logits_row_with_wrong_number_of_values() {
    let s = setup();
    let bad = s.root.join("wide.tsv");
    let text = std::fs::read_to_string(&s.logits).unwrap().replacen('\n', ",0.5\n", 3);
    let text = text.replacen(",0.5\n", "\n", 2);
    std::fs::write(&bad, text).unwrap();
    expect_kd_error(
        &file_route(&s, &s.root.join("x"), &bad),
        &["wide.tsv:3", "expected 2 comma-separated finite numbers"],
    );
}

#[test]
fn logits_with_a_non_finite_value() {
    let s = setup();
    let bad = s.root.join("nan.tsv");
    let mut lines: Vec<String> = std::fs::read_to_string(&s.logits).unwrap().lines().map(String::from).collect();
    lines[4] = "nan,0.1".into();
    std::fs::write(&bad, lines.join("\n") + "\n").unwrap();
    expect_kd_error(&file_route(&s, &s.root.join("x"), &bad), &["nan.tsv:5", "finite"]);
}

#[test]
fn sidecar_of_another_table() {
    let s = setup();
    let other = s.root.join("other-train.tsv");
    let text = std::fs::read_to_string(sample("sentiment-train.tsv")).unwrap().replacen("The", "A", 1);
    std::fs::write(&other, text).unwrap();
    let mut args = file_route(&s, &s.root.join("x"), &s.logits);
    for a in args.iter_mut() {
        if a.starts_with("--tables=") {
            *a = format!("--tables={},{}", other.display(), sample("sentiment-dev.tsv"));
        }
    }
    expect_kd_error(&args, &["train.logits.tsv.meta.json", "other-train.tsv", "differs"]);
}

#[test]
fn sidecar_with_another_label_order() {
    let s = setup();
    let mut args = file_route(&s, &s.root.join("x"), &s.logits);
    for a in args.iter_mut() {
        if a.starts_with("--label_enumerate_values=") {
            *a = "--label_enumerate_values=1,0".into();
        }
    }
    expect_kd_error(&args, &["meta.json", "label order (0,1)", "(1,0)"]);
}

/// Meta-KD tables (`guid text_a text_b label domain weight`) carry a header that EasyNLP's Meta-KD
/// readers skip: the logits export and the KD join must skip it too, or the counts disagree.
#[test]
fn export_and_kd_skip_the_header_of_metakd_tables() {
    let s = setup();
    let table = s.root.join("senti.tsv");
    let mut text = String::from("guid\ttext_a\ttext_b\tlabel\tdomain\tweight\n");
    let rows = std::fs::read_to_string(sample("sentiment-train.tsv")).unwrap();
    for (i, line) in rows.lines().enumerate() {
        let (sent, label) = line.split_once('\t').unwrap();
        text.push_str(&format!("train-{i}\t{sent}\t\t{label}\tbooks\t0.5\n"));
    }
    std::fs::write(&table, text).unwrap();
    let schema = "guid:str:1,text_a:str:1,text_b:str:1,label:str:1,domain:str:1,weight:str:1";
    let logits = s.root.join("senti.logits.tsv");
    let out = easynlp_owned(&[
        "--mode=predict".into(),
        format!("--tables={}", table.display()),
        format!("--input_schema={schema}"),
        "--first_sequence=text_a".into(),
        "--output_schema=logits".into(),
        format!("--outputs={}", logits.display()),
        format!("--checkpoint_dir={}", s.teacher.display()),
        "--sequence_length=32".into(),
    ]);
    assert!(out.status.success(), "export: {}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&logits).unwrap().lines().count(), rows.lines().count());
    let mut args = file_route(&s, &s.root.join("student-senti"), &logits);
    for a in args.iter_mut() {
        if a.starts_with("--input_schema=") {
            *a = format!("--input_schema={schema},logits:float:2");
        } else if a.starts_with("--first_sequence=") {
            *a = "--first_sequence=text_a".into();
        } else if a.starts_with("--tables=") {
            *a = format!("--tables={},{}", table.display(), table.display());
        }
    }
    let out = easynlp_owned(&args);
    assert!(out.status.success(), "KD on a Meta-KD table: {}", stderr(&out));
}
