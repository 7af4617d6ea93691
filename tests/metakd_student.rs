//! Meta-KD student distillation (`distill_stage=first|second`): the stage-1 loss and its gradients
//! on a hand-made batch, then EasyNLP's tutorial commands through the binary on tiny random BERTs
//! (2-layer meta-teacher, 1-layer student), genre filtering, evaluation with genre, and the
//! layer-map error.

mod common;

use candle_core::Device;
use common::metakd::{self, eval_args, read_json, scalar, train_args, Tables, DOMAINS};
use common::signals::{run_and_signal, SIGINT};
use common::{easynlp_owned, stderr, tiny_bert};
use easynlp::data::batch::{make_batch, DomainTag, Example};
use easynlp::data::tokenize::Encoded;
use easynlp::metakd::student::{add_fit_dense, stage1_loss};
use easynlp::metakd::student_loss::layer_map;
use easynlp::metakd::teacher::{add_meta_params, meta_config};
use easynlp::model::bert::ForwardCtx;
use easynlp::model::classifier::init_head;
use easynlp::model::config::BertConfig;
use easynlp::model::params::{read_weights, Params};
use easynlp::rng::Rng;
use std::path::{Path, PathBuf};

/// Uneven domains: per 8 rows 3 books, 2 dvd, 2 electronics, 1 kitchen.
const PATTERN: [usize; 8] = [0, 0, 1, 2, 3, 0, 1, 2];

/// A tiny BERT of `layers` layers with a head and a domain branch (plus fit_dense for a student).
fn tiny_params(dir: &Path, layers: usize, student: bool) -> (BertConfig, Params) {
    let model = tiny_bert(dir, layers, true);
    let domains: Vec<String> = DOMAINS.iter().map(|s| s.to_string()).collect();
    let cfg = meta_config(&BertConfig::load(&model).unwrap(), &domains);
    let (weights, _) = read_weights(&model, &Device::Cpu).unwrap();
    let mut params = Params::from_tensors(&weights).unwrap();
    let mut rng = Rng::new(layers as u64);
    init_head(&mut params, &cfg, 2, &mut rng, &Device::Cpu).unwrap();
    add_meta_params(&mut params, &model, &cfg, 4, &mut rng, &Device::Cpu).unwrap();
    if student {
        let created = add_fit_dense(&mut params, &model, &cfg, 32, &mut rng, &Device::Cpu).unwrap();
        assert_eq!(created, ["meta.fit_dense.weight", "meta.fit_dense.bias"]);
    }
    (cfg, params)
}

fn example(ids: Vec<u32>, label: u32, domain: f32, weight: f32) -> Example {
    let n = ids.len();
    Example {
        enc: Encoded { ids, type_ids: vec![0; n] },
        label: Some(label),
        teacher_logits: None,
        domain: Some(DomainTag { domain: domain as u32, weight }),
    }
}

#[test]
fn stage1_every_student_weight_gets_a_gradient_and_the_loss_falls() {
    let tmp = tempfile::tempdir().unwrap();
    let (tcfg, teacher) = tiny_params(&tmp.path().join("teacher"), 2, false);
    let (scfg, student) = tiny_params(&tmp.path().join("student"), 1, true);
    let map = layer_map(2, 1, 4, 4).unwrap();
    let rows = [
        example(vec![2, 20, 21, 22, 3], 0, 0.0, 0.5),
        example(vec![2, 30, 3], 1, 2.0, 1.0),
        example(vec![2, 40, 41, 3], 1, 3.0, 0.0),
    ];
    let refs: Vec<&Example> = rows.iter().collect();
    let batch = make_batch(&refs, &Device::Cpu).unwrap();
    let loss = stage1_loss(&tcfg, &teacher, &scfg, &student, &map, &batch, 0.5, &ForwardCtx::train(3)).unwrap();
    let grads = loss.backward().unwrap();
    let mut checked = 0;
    for (name, var) in student.iter() {
        // The head and the domain classifier are not part of the stage-1 losses.
        if name.starts_with("classifier.") || name.starts_with("bert.pooler") || name.contains("domain_classifier") {
            continue;
        }
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        let norm = scalar(&g.sqr().unwrap().sum_all().unwrap());
        assert!(norm > 0.0 && norm.is_finite(), "{name}: gradient norm {norm}");
        checked += 1;
    }
    assert!(checked > 15, "{checked}");
    // No gradient reaches the teacher.
    for (name, var) in teacher.iter() {
        assert!(grads.get(var.as_tensor()).is_none(), "teacher weight {name} got a gradient");
    }
    // Plain gradient descent on the student lowers the loss.
    let eval = ForwardCtx::eval();
    let first = scalar(&stage1_loss(&tcfg, &teacher, &scfg, &student, &map, &batch, 0.5, &eval).unwrap());
    for _ in 0..30 {
        let loss = stage1_loss(&tcfg, &teacher, &scfg, &student, &map, &batch, 0.5, &eval).unwrap();
        let grads = loss.backward().unwrap();
        for (_, var) in student.iter() {
            if let Some(g) = grads.get(var.as_tensor()) {
                var.set(&(var.as_tensor() - g.affine(0.05, 0.0).unwrap()).unwrap()).unwrap();
            }
        }
    }
    let last = scalar(&stage1_loss(&tcfg, &teacher, &scfg, &student, &map, &batch, 0.5, &eval).unwrap());
    assert!(last < first * 0.8, "stage-1 loss {first} -> {last}");
}

/// Meta-KD tables with uneven domains ([`PATTERN`]).
fn tables() -> Tables {
    metakd::tables(|i| PATTERN[i % 8])
}

fn rows_of(path: &Path, domain: &str) -> usize {
    std::fs::read_to_string(path).unwrap().lines().skip(1).filter(|l| l.split('\t').nth(4) == Some(domain)).count()
}

/// Trains a meta-teacher of `layers` layers through the binary.
fn teacher(t: &Tables, layers: usize) -> PathBuf {
    let model = tiny_bert(&t.root.join(format!("bert{layers}")), layers, true);
    let ckpt = t.root.join(format!("teacher{layers}"));
    let udp = format!(
        "pretrain_model_name_or_path={} use_sample_weights=True use_domain_loss=True domain_loss_weight=0.5",
        model.display()
    );
    let out = easynlp_owned(&train_args(t, &ckpt, &["--epoch_num=0.5", "--micro_batch_size=16"], &udp));
    assert!(out.status.success(), "{}", stderr(&out));
    ckpt
}

fn student_udp(model: &Path, teacher: &Path, stage: &str, genre: &str) -> String {
    format!(
        "pretrain_model_name_or_path={} teacher_model_path={} domain_loss_weight=0.5 distill_stage={stage} genre={genre} T=2",
        model.display(),
        teacher.display()
    )
}

#[test]
fn tutorial_stages_first_and_second_then_evaluate_with_genre() {
    let t = tables();
    let teacher = teacher(&t, 2);
    let student = tiny_bert(&t.root.join("bert1"), 1, true);

    // Stage first: only the kitchen rows, saved once at the end (save_checkpoint_steps ignored).
    let s1 = t.root.join("student1");
    let udp = student_udp(&student, &teacher, "first", "kitchen");
    let out = easynlp_owned(&train_args(&t, &s1, &["--epoch_num=2", "--save_checkpoint_steps=1"], &udp));
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    let kitchen = rows_of(&t.train, "kitchen");
    assert_eq!(kitchen, 12);
    assert!(log.contains(&format!("stage first: genre kitchen ({kitchen} training rows)")), "{log}");
    assert!(log.contains(&format!("training on {kitchen} rows")), "{log}");
    assert!(log.contains("newly initialised") && log.contains("meta.fit_dense.weight"), "{log}");
    assert!(!log.contains("Evaluation at global step"), "no evaluator in stage first:\n{log}");
    let w = candle_core::safetensors::load(s1.join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(w["meta.fit_dense.weight"].dims(), &[32, 32]);
    assert_eq!(w["meta.domain_embedding.weight"].dims(), &[4, 32]);
    assert!(w.contains_key("classifier.weight") && w.contains_key("bert.encoder.layer.0.attention.self.query.weight"));
    assert!(!w.contains_key("bert.encoder.layer.1.attention.self.query.weight"));
    assert_eq!(read_json(&s1.join("config.json"))["classifier_activation"], "relu");
    // The logged loss falls over the run.
    let losses: Vec<f64> = log
        .lines()
        .filter(|l| l.contains("step [") && l.contains(" loss "))
        .map(|l| l.split(" loss ").nth(1).unwrap().split(',').next().unwrap().parse().unwrap())
        .collect();
    assert!(losses.len() >= 2 && losses.last().unwrap() < losses.first().unwrap(), "{losses:?}\n{log}");

    assert!(log.contains("--save_checkpoint_steps is ignored"), "{log}");
    // Stage second: from the stage-1 checkpoint, best by the kitchen dev accuracy.
    let s2 = t.root.join("student2");
    let udp = student_udp(&s1, &teacher, "second", "kitchen");
    let out = easynlp_owned(&train_args(&t, &s2, &["--epoch_num=2", "--save_checkpoint_steps=1"], &udp));
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("stage second: genre kitchen") && log.contains("T=2"), "{log}");
    assert!(log.contains("best validation accuracy (kitchen)"), "{log}");
    assert!(log.contains("computing teacher logits"), "{log}");
    assert_eq!(read_json(&s2.join("config.json"))["classifier_activation"], "relu");

    // Evaluate the student on the kitchen rows of the dev table.
    let m = t.root.join("kitchen.json");
    let out = easynlp_owned(&eval_args(&t, &s2, &m, Some("genre=kitchen")));
    assert!(out.status.success(), "{}", stderr(&out));
    let j = read_json(&m);
    assert_eq!(j["genre"], "kitchen");
    assert_eq!(j["rows"].as_u64().unwrap() as usize, rows_of(&t.dev, "kitchen"));
    // The best validation accuracy of stage second is the reloaded model's accuracy.
    let best = log.lines().filter_map(|l| l.split("new best accuracy ").nth(1)).next_back().unwrap();
    assert_eq!(format!("{:.4}", j["accuracy"].as_f64().unwrap()), best.split(':').next().unwrap(), "{log}");

    // Another genre trains on its own rows.
    let out = easynlp_owned(&train_args(
        &t,
        &t.root.join("books1"),
        &["--epoch_num=0.5"],
        &student_udp(&student, &teacher, "first", "books"),
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("genre books ({} training rows)", rows_of(&t.train, "books"))));
}

#[test]
fn unmappable_layers_fail_before_training_and_bad_keys_are_refused() {
    let t = tables();
    let teacher = teacher(&t, 3);
    let student = tiny_bert(&t.root.join("bert2"), 2, true);
    let ckpt = t.root.join("student");
    let out =
        easynlp_owned(&train_args(&t, &ckpt, &["--epoch_num=1"], &student_udp(&student, &teacher, "first", "dvd")));
    let log = stderr(&out);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("cannot map a 3-layer teacher onto a 2-layer student") && log.contains("whole multiple"),
        "{log}"
    );
    assert!(!log.contains("training on") && !ckpt.exists(), "{log}");

    let refused = |udp: String, want: &str| {
        let out = easynlp_owned(&train_args(&t, &ckpt, &["--epoch_num=1"], &udp));
        assert!(!out.status.success() && stderr(&out).contains(want), "{udp}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    };
    refused(student_udp(&student, &teacher, "first", "all"), "genre=all is not one of the domains");
    refused(student_udp(&student, &teacher, "third", "dvd"), "first or second");
    refused(student_udp(&student, &teacher, "second", "dvd").replace("T=2", "T=0"), "T=0");
    refused(
        format!("pretrain_model_name_or_path={} distill_stage=first genre=dvd", student.display()),
        "teacher_model_path",
    );
    // A teacher that is not a meta-teacher.
    refused(student_udp(&student, &student, "first", "dvd"), "teacher_model_path");
}

#[test]
fn example_script_runs_both_stages_and_evaluates_the_genre() {
    let t = tables();
    let teacher = teacher(&t, 2);
    let student = tiny_bert(&t.root.join("bert1"), 1, true);
    std::fs::copy(&t.dev, t.root.join("test_standard.tsv")).unwrap();
    let work = t.root.join("work");
    let out = std::process::Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/metakd_students.sh"))
        .env("EASYNLP", env!("CARGO_BIN_EXE_easynlp"))
        .env("SENTI", &t.root)
        .env("TEACHER", &teacher)
        .env("STUDENT_MODEL", &student)
        .env("SEQ_LEN", "32")
        .env("EPOCHS2", "2")
        .env("LR", "1e-3")
        .env("GENRE", "dvd")
        .env("WORK", &work)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let j = read_json(&work.join("student.test.dvd.json"));
    assert_eq!(j["genre"], "dvd");
    assert_eq!(j["rows"].as_u64().unwrap() as usize, rows_of(&t.dev, "dvd"));
    assert!(work.join("tmp/dvd/meta_student_pretrain/model.safetensors").is_file());
}

#[test]
fn both_stages_resume_bit_identically() {
    let t = tables();
    let teacher = teacher(&t, 2);
    let student = tiny_bert(&t.root.join("bert1"), 1, true);
    // Stage first has no evaluator: the latest state is saved at epoch ends and on the signal.
    let first = student_udp(&student, &teacher, "first", "kitchen");
    let s1 = resume_matches_uninterrupted(&t, "first", &["--epoch_num=8"], &first, "step [2/");
    // Stage second, from the stage-1 student, evaluated at every step.
    let second = student_udp(&s1, &teacher, "second", "kitchen");
    resume_matches_uninterrupted(
        &t,
        "second",
        &["--epoch_num=6", "--save_checkpoint_steps=1"],
        &second,
        "Evaluation at global step 2",
    );
}

/// Trains once uninterrupted and once stopped by SIGINT when a log line contains `needle`, then
/// resumed (which restores the domain branch and fit_dense, creating nothing); the models are the
/// same bytes. Returns the uninterrupted checkpoint.
fn resume_matches_uninterrupted(t: &Tables, name: &str, extra: &[&str], udp: &str, needle: &str) -> std::path::PathBuf {
    let whole = t.root.join(format!("{name}-whole"));
    let out = easynlp_owned(&train_args(t, &whole, extra, udp));
    assert!(out.status.success(), "{}", stderr(&out));
    let stopped = t.root.join(format!("{name}-stopped"));
    let args = train_args(t, &stopped, extra, udp);
    let (status, log) = run_and_signal(&args, needle, SIGINT);
    assert_eq!(status.code(), Some(130), "{log}");
    let mut resumed = args.clone();
    resumed.push(format!("--resume_from_checkpoint={}", stopped.display()));
    let out = easynlp_owned(&resumed);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("resumed at optimizer step") && !log.contains("newly initialised"), "{log}");
    let bytes = |d: &std::path::Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert!(bytes(&whole) == bytes(&stopped), "stage {name}: interrupted + resumed differs from uninterrupted");
    whole
}
