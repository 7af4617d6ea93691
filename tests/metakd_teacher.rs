//! The Meta-KD meta-teacher: its loss on hand-made batches, gradients of the domain branch, and
//! EasyNLP's tutorial command through the binary on a tiny random BERT, then per-domain evaluation
//! and a reload that reproduces the logits.

mod common;

use candle_core::{Device, Tensor};
use common::metakd::{self, eval_args, read_json, scalar, train_args, Tables, DOMAINS, SCHEMA};
use common::signals::{run_and_signal, SIGINT};
use common::{easynlp_owned, stderr, tiny_bert};
use easynlp::data::batch::{make_batch, Example};
use easynlp::data::tokenize::Encoded;
use easynlp::metakd::teacher::{
    add_meta_params, content_mean, corrupt_domains, meta_config, meta_teacher_loss, MetaTeacher,
};
use easynlp::model::bert::ForwardCtx;
use easynlp::model::classifier::init_head;
use easynlp::model::config::BertConfig;
use easynlp::model::params::{read_weights, Params};
use easynlp::rng::Rng;
use std::path::Path;

fn ln_softmax(v: &[f64]) -> Vec<f64> {
    let m = v.iter().cloned().fold(f64::MIN, f64::max);
    let z = v.iter().map(|x| (x - m).exp()).sum::<f64>().ln() + m;
    v.iter().map(|x| x - z).collect()
}

fn t2(rows: &[Vec<f32>]) -> Tensor {
    Tensor::new(rows.to_vec(), &Device::Cpu).unwrap()
}

#[test]
fn loss_weights_each_instance_and_uses_the_corrupted_domains() {
    let logits = vec![vec![1.0f32, -0.5], vec![0.2, 0.3], vec![-1.5, 2.0], vec![0.7, 0.1]];
    let dlogits = vec![
        vec![0.1f32, 0.2, -0.3, 0.4],
        vec![1.0, 0.0, 0.5, -1.0],
        vec![-0.2, 0.3, 0.0, 0.9],
        vec![0.4, -0.4, 0.8, 0.0],
    ];
    let labels = [0u32, 1, 0, 1];
    let domains = [0u32, 1, 2, 3];
    let corrupted = [2u32, 0, 3, 1]; // a fixed permutation of the batch's domains
    let w = [0.9f32, 0.5, 1.2, 0.7];
    let dlw = 0.5;
    let ce = |row: &[f32], y: u32| -> f64 {
        let v: Vec<f64> = row.iter().map(|&x| x as f64).collect();
        -ln_softmax(&v)[y as usize]
    };
    let l: Vec<f64> = (0..4).map(|i| ce(&logits[i], labels[i]) + dlw * ce(&dlogits[i], corrupted[i])).collect();
    let dev = Device::Cpu;
    let (lt, dt) = (t2(&logits), t2(&dlogits));
    let yt = Tensor::new(&labels, &dev).unwrap();
    let ct = Tensor::new(&corrupted, &dev).unwrap();
    let loss = |w: &[f32]| {
        let wt = Tensor::new(w, &dev).unwrap();
        scalar(&meta_teacher_loss(&lt, &yt, Some((&dt, &ct)), dlw, Some(&wt)).unwrap())
    };
    let want: f64 = l.iter().zip(&w).map(|(l, w)| l * *w as f64).sum::<f64>() / 4.0;
    assert!((loss(&w) - want).abs() < 1e-5, "{} vs {want}", loss(&w));
    // Doubling instance 2's weight adds exactly its own term / batch size.
    let mut w2 = w;
    w2[2] *= 2.0;
    let delta = loss(&w2) - loss(&w);
    assert!((delta - l[2] * w[2] as f64 / 4.0).abs() < 1e-5, "delta {delta} vs {}", l[2] * w[2] as f64 / 4.0);
    // Without weights: the plain mean; without the domain term: classification CE only.
    let plain = scalar(&meta_teacher_loss(&lt, &yt, Some((&dt, &ct)), dlw, None).unwrap());
    assert!((plain - l.iter().sum::<f64>() / 4.0).abs() < 1e-5);
    let cls = scalar(&meta_teacher_loss(&lt, &yt, None, dlw, None).unwrap());
    let want_cls = (0..4).map(|i| ce(&logits[i], labels[i])).sum::<f64>() / 4.0;
    assert!((cls - want_cls).abs() < 1e-5);
    // The domain target is the corrupted id, not the row's own domain.
    let own = Tensor::new(&domains, &dev).unwrap();
    let with_own = scalar(&meta_teacher_loss(&lt, &yt, Some((&dt, &own)), dlw, None).unwrap());
    assert!((with_own - plain).abs() > 1e-3);
    // Corruption permutes the batch's domains, reproducibly from the seed.
    let c = corrupt_domains(&domains, 11);
    assert_eq!(c, corrupt_domains(&domains, 11));
    let mut sorted = c.clone();
    sorted.sort();
    assert_eq!(sorted, domains);
}

/// Params of a tiny BERT with a classifier head and a freshly initialised domain branch.
fn tiny_meta(dir: &Path) -> (BertConfig, Params) {
    let model = tiny_bert(dir, 2, true);
    let domains: Vec<String> = DOMAINS.iter().map(|s| s.to_string()).collect();
    let cfg = meta_config(&BertConfig::load(&model).unwrap(), &domains);
    let (weights, _) = read_weights(&model, &Device::Cpu).unwrap();
    let mut params = Params::from_tensors(&weights).unwrap();
    let mut rng = Rng::new(3);
    init_head(&mut params, &cfg, 2, &mut rng, &Device::Cpu).unwrap();
    let created = add_meta_params(&mut params, &model, &cfg, 4, &mut rng, &Device::Cpu).unwrap();
    assert_eq!(created.len(), 5, "{created:?}");
    (cfg, params)
}

fn example(ids: Vec<u32>, label: u32) -> Example {
    let n = ids.len();
    Example { enc: Encoded { ids, type_ids: vec![0; n] }, label: Some(label), teacher_logits: None, domain: None }
}

#[test]
fn every_meta_weight_gets_a_gradient_and_padding_is_not_averaged() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, params) = tiny_meta(&tmp.path().join("model"));
    let rows = [example(vec![2, 20, 21, 22, 3], 0), example(vec![2, 30, 3], 1), example(vec![2, 40, 41, 3], 1)];
    let refs: Vec<&Example> = rows.iter().collect();
    let batch = make_batch(&refs, &Device::Cpu).unwrap();
    let model = MetaTeacher::load(&cfg, &|n| params.trainable(n)).unwrap();
    let ids = Tensor::new(&[0u32, 2, 3], &Device::Cpu).unwrap();
    let ctx = ForwardCtx::train(5);
    let (logits, domain_logits) = model.forward(&batch, &ids, &ctx).unwrap();
    assert_eq!(domain_logits.dims(), &[3, 4]);
    let corrupted = Tensor::new(corrupt_domains(&[0, 2, 3], 9).as_slice(), &Device::Cpu).unwrap();
    let w = Tensor::new(&[0.9f32, 1.1, 0.4], &Device::Cpu).unwrap();
    let labels = batch.labels.as_ref().unwrap();
    let loss = meta_teacher_loss(&logits, labels, Some((&domain_logits, &corrupted)), 0.5, Some(&w)).unwrap();
    let grads = loss.backward().unwrap();
    for (name, var) in params.iter() {
        if name.starts_with("meta.") || name.starts_with("classifier.") || name.starts_with("bert.pooler") {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
            let norm = scalar(&g.sqr().unwrap().sum_all().unwrap());
            assert!(norm > 0.0 && norm.is_finite(), "{name}: gradient norm {norm}");
        }
    }
    // content: mean over the real tokens after [CLS] only.
    let h = Tensor::arange(0f32, 3.0 * 5.0 * 2.0, &Device::Cpu).unwrap().reshape((3, 5, 2)).unwrap();
    let mean: Vec<Vec<f32>> = content_mean(&h, &batch.attention_mask).unwrap().to_vec2().unwrap();
    // Row 1 has 3 real tokens: positions 1..3 -> only position 1 and 2 ([SEP]) count.
    let hv: Vec<Vec<Vec<f32>>> = h.to_vec3().unwrap();
    assert_eq!(mean[1], vec![(hv[1][1][0] + hv[1][2][0]) / 2.0, (hv[1][1][1] + hv[1][2][1]) / 2.0]);
    assert_eq!(mean[0][0], (1..5).map(|t| hv[0][t][0]).sum::<f32>() / 4.0);
}

/// The Meta-KD tables with domains round-robin, and a tiny BERT in `<root>/model`.
fn tables() -> Tables {
    let t = metakd::tables(|i| i % 4);
    tiny_bert(&t.root.join("model"), 2, true);
    t
}

/// The tutorial's meta-teacher flags on the tables, with `udp` after the model.
fn teacher_args(t: &Tables, ckpt: &Path, udp: &str) -> Vec<String> {
    let extra = ["--epoch_num=1", "--logging_steps=2", "--save_checkpoint_steps=3", "--micro_batch_size=16"];
    train_args(t, ckpt, &extra, &format!("pretrain_model_name_or_path={} {udp}", t.root.join("model").display()))
}

#[test]
fn tutorial_teacher_trains_then_evaluates_per_domain_and_reloads() {
    let t = tables();
    let ckpt = t.root.join("meta_teacher");
    let udp = "use_sample_weights=True use_domain_loss=True domain_loss_weight=0.5";
    let out = easynlp_owned(&teacher_args(&t, &ckpt, udp));
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("Meta-KD meta-teacher") && log.contains("per-domain validation accuracy: books"), "{log}");

    // Checkpoint: HF names plus the domain branch, and the meta keys in config.json.
    let w = candle_core::safetensors::load(ckpt.join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(w["meta.domain_embedding.weight"].dims(), &[4, 32]);
    assert_eq!(w["meta.corrupt_dense.weight"].dims(), &[32, 32]);
    assert_eq!(w["meta.domain_classifier.weight"].dims(), &[4, 32]);
    assert!(w.contains_key("classifier.weight") && w.contains_key("bert.pooler.dense.weight"));
    let config = read_json(&ckpt.join("config.json"));
    assert_eq!(config["classifier_activation"], "relu");
    assert_eq!(config["num_domains"], 4);
    assert_eq!(config["domains"], serde_json::json!(DOMAINS));
    assert_eq!(config["id2label"]["0"], "positive");

    // Every domain, the average and all rows.
    let m = t.root.join("metrics.json");
    let out = easynlp_owned(&eval_args(&t, &ckpt, &m, None));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("average"), "{}", stderr(&out));
    let j = read_json(&m);
    let dev_rows = std::fs::read_to_string(&t.dev).unwrap().lines().count() - 1;
    let mut total = 0;
    let mut acc_sum = 0.0;
    for d in DOMAINS {
        let r = &j["domains"][d];
        assert!(r["accuracy"].is_number() && r["f1"].is_number(), "{j}");
        total += r["rows"].as_u64().unwrap();
        acc_sum += r["accuracy"].as_f64().unwrap();
    }
    assert_eq!(total as usize, dev_rows);
    assert!((j["average"]["accuracy"].as_f64().unwrap() - acc_sum / 4.0).abs() < 1e-12);
    assert_eq!(j["all"]["rows"].as_u64().unwrap() as usize, dev_rows);
    // The best checkpoint's all-domain eval loss from training equals that of the reloaded model.
    let (mut last_eval, mut best) = (None, None);
    for line in log.lines() {
        if line.contains("Evaluation at global step") {
            last_eval = line.split("eval loss ").nth(1).map(|r| r.split(' ').next().unwrap().to_string());
        } else if line.contains("new best accuracy") {
            best = last_eval.clone();
        }
    }
    let best = best.expect("a best evaluation in the log");
    assert_eq!(format!("{:.4}", j["all"]["eval_loss"].as_f64().unwrap()), best, "{log}");

    // genre: that domain only.
    let g = t.root.join("dvd.json");
    let out = easynlp_owned(&eval_args(&t, &ckpt, &g, Some("genre=dvd")));
    assert!(out.status.success(), "{}", stderr(&out));
    let gj = read_json(&g);
    assert_eq!(gj["genre"], "dvd");
    assert_eq!(gj["rows"], j["domains"]["dvd"]["rows"]);
    assert!((gj["accuracy"].as_f64().unwrap() - j["domains"]["dvd"]["accuracy"].as_f64().unwrap()).abs() < 1e-12);
    let out = easynlp_owned(&eval_args(&t, &ckpt, &g, Some("genre=music")));
    assert!(!out.status.success() && stderr(&out).contains("genre=music"), "{}", stderr(&out));

    // Predict on the checkpoint: classifier(relu(pooled)), as in training.
    let p = t.root.join("dev.logits.tsv");
    let out = easynlp_owned(&[
        "--mode=predict".into(),
        format!("--tables={}", t.dev.display()),
        format!("--input_schema={SCHEMA}"),
        "--first_sequence=text_a".into(),
        "--second_sequence=text_b".into(),
        "--skip_first_line".into(),
        "--output_schema=logits".into(),
        format!("--outputs={}", p.display()),
        format!("--checkpoint_dir={}", ckpt.display()),
        "--sequence_length=32".into(),
        "--micro_batch_size=16".into(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let predicted: Vec<Vec<f32>> = std::fs::read_to_string(&p)
        .unwrap()
        .lines()
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(predicted.len(), dev_rows);
    // Recompute the first dev row by hand from the saved weights: [CLS] text [SEP] (empty text_b).
    let cfg = BertConfig::load(&ckpt).unwrap();
    let tok = easynlp::data::tokenize::BertTokenizer::load(&ckpt, 32, true).unwrap();
    let first_text =
        std::fs::read_to_string(&t.dev).unwrap().lines().nth(1).unwrap().split('\t').nth(1).unwrap().to_string();
    let enc = tok.encode_batch(&[(first_text.as_str(), None)]).unwrap().remove(0);
    let ex = Example { enc, label: None, teacher_logits: None, domain: None };
    let batch = make_batch(&[&ex], &Device::Cpu).unwrap();
    let get = |n: &str| -> anyhow::Result<Tensor> { Ok(w[n].clone()) };
    let bert = easynlp::model::bert::Bert::load(&cfg, &get, true).unwrap();
    let enc_out = bert
        .forward(
            &batch.input_ids,
            &batch.token_type_ids,
            &batch.attention_mask,
            Default::default(),
            &ForwardCtx::eval(),
        )
        .unwrap();
    let pooled = enc_out.pooled.unwrap();
    let head = |x: &Tensor| -> Vec<f32> {
        x.matmul(&w["classifier.weight"].t().unwrap())
            .unwrap()
            .broadcast_add(&w["classifier.bias"])
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
            .remove(0)
    };
    let with_relu = head(&pooled.relu().unwrap());
    let without = head(&pooled);
    for (a, b) in predicted[0].iter().zip(&with_relu) {
        assert!((a - b).abs() < 1e-4, "{:?} vs {with_relu:?}", predicted[0]);
    }
    assert!(with_relu.iter().zip(&without).any(|(a, b)| (a - b).abs() > 1e-6), "relu must matter here");
}

#[test]
fn teacher_needs_the_domain_and_weight_columns_and_finite_weights() {
    let t = tables();
    let ckpt = t.root.join("bad");
    let mut args = teacher_args(&t, &ckpt, "use_sample_weights=True");
    for a in args.iter_mut() {
        if a.starts_with("--input_schema=") {
            *a = "--input_schema=guid:str:1,text_a:str:1,text_b:str:1,label:str:1,genre:str:1,weight:str:1".into();
        }
    }
    let out = easynlp_owned(&args);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("`domain`") && !stderr(&out).contains("panicked"), "{}", stderr(&out));
    // A bad weight is an error with file and line.
    let text = std::fs::read_to_string(&t.train).unwrap().replacen("\t0.5\n", "\tabc\n", 1);
    std::fs::write(&t.train, text).unwrap();
    let out = easynlp_owned(&teacher_args(&t, &ckpt, "use_sample_weights=True"));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("train_with_weights.tsv:2: column `weight`"), "{}", stderr(&out));
}

#[test]
fn interrupted_and_resumed_equals_uninterrupted() {
    let t = tables();
    let udp = "use_sample_weights=True use_domain_loss=True domain_loss_weight=0.5";
    // Three epochs, so that the signal lands well before the end however late it arrives.
    let args = |ckpt: &Path| [teacher_args(&t, ckpt, udp), vec!["--epoch_num=3".to_string()]].concat();
    let whole = t.root.join("whole");
    let out = easynlp_owned(&args(&whole));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("newly initialised: meta.domain_embedding.weight"), "{}", stderr(&out));
    let stopped = t.root.join("stopped");
    let (status, log) = run_and_signal(&args(&stopped), "Evaluation at global step 3", SIGINT);
    assert_eq!(status.code(), Some(130), "{log}");
    let mut resumed = args(&stopped);
    resumed.push(format!("--resume_from_checkpoint={}", stopped.display()));
    let out = easynlp_owned(&resumed);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("resumed at optimizer step"), "{log}");
    assert!(!log.contains("meta.") && !log.contains("ignoring"), "the meta weights come from the checkpoint:\n{log}");
    let bytes = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert!(bytes(&whole) == bytes(&stopped), "interrupted + resumed differs from uninterrupted");
}

#[test]
fn example_script_runs_the_tutorial_teacher_and_evaluates_per_domain() {
    let t = tables();
    std::fs::copy(&t.dev, t.root.join("test_standard.tsv")).unwrap();
    let work = t.root.join("work");
    let out = std::process::Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/metakd_teacher.sh"))
        .env("EASYNLP", env!("CARGO_BIN_EXE_easynlp"))
        .env("SENTI", &t.root)
        .env("TEACHER_MODEL", t.root.join("model"))
        .env("SEQ_LEN", "32")
        .env("LR", "1e-3")
        .env("GENRE", "kitchen")
        .env("WORK", &work)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let j = read_json(&work.join("teacher.test.json"));
    assert_eq!(j["domains"].as_object().unwrap().len(), 4, "{j}");
    assert!(j["average"]["accuracy"].is_number());
    assert_eq!(read_json(&work.join("teacher.test.kitchen.json"))["genre"], "kitchen");
}
