//! The device-generic path (`EASYNLP_KERNELS=portable`: what a GPU runs) forced on the CPU
//! against the fused CPU kernels: the same gradients on a real model, the same trained model.
//! (One test per process state: the kernel choice is process-wide.)

mod common;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};
use common::{sentiment_train_args, stderr};
use easynlp::data::batch::{make_batch, Example};
use easynlp::data::tokenize::BertTokenizer;
use easynlp::model::bert::ForwardCtx;
use easynlp::model::classifier::{init_head, Classifier};
use easynlp::model::config::BertConfig;
use easynlp::model::params::{read_weights, Params};
use easynlp::ops::{set_kernels, Kernels};
use easynlp::rng::Rng;
use easynlp::train::optimizer::{Optimizer, OptimizerKind, StepParams};
use std::path::Path;

/// Largest difference allowed between the two paths' gradients, relative to the largest
/// gradient of the tensor (measured on minilm-l3: 5.8e-6 for the gradients, 6.9e-6 for the
/// weights after three AdamW steps).
const GRAD_TOL: f64 = 1e-5;

/// Gradients of `sum(logits * r)` through the training forward (dropout on) of minilm-l3 with
/// a fresh head; with the parameters and the gradient store, for the optimizer check.
fn gradients(model: &Path, kernels: Kernels) -> (Vec<(String, Vec<f32>)>, Params, GradStore) {
    set_kernels(kernels);
    let dev = Device::Cpu;
    let cfg = BertConfig::load(model).unwrap();
    let (weights, _) = read_weights(model, &dev).unwrap();
    let mut params = Params::default();
    for (k, t) in &weights {
        params.insert(k, t).unwrap();
    }
    init_head(&mut params, &cfg, 3, &mut Rng::new(5), &dev).unwrap();
    let tokenizer = BertTokenizer::load(model, 48, false).unwrap();
    let rows = [
        ("a gripping, beautifully shot film", Some("the plot drags in the middle")),
        ("terrible", None),
        ("one of the best performances of the year, and a score to match", None),
        ("i walked out", Some("so did everyone else")),
    ];
    let enc = tokenizer.encode_batch(&rows).unwrap();
    let examples: Vec<Example> =
        enc.into_iter().map(|enc| Example { enc, label: Some(0), teacher_logits: None, domain: None }).collect();
    let batch = make_batch(&examples.iter().collect::<Vec<_>>(), &dev).unwrap();
    let model_fwd = Classifier::load(&cfg, &|n| params.trainable(n)).unwrap();
    let logits = model_fwd.forward(&batch, &ForwardCtx::train(17)).unwrap();
    let mut rng = Rng::new(3);
    let r: Vec<f32> = (0..logits.elem_count()).map(|_| rng.uniform() * 2.0 - 1.0).collect();
    let r = Tensor::from_vec(r, logits.shape(), &dev).unwrap();
    let grads = (logits * r).unwrap().sum_all().unwrap().backward().unwrap();
    let g = params.iter().map(|(n, v)| (n.clone(), flat(grads.get(v.as_tensor()).unwrap()))).collect();
    (g, params, grads)
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// The weights after three AdamW steps on `grads` from the weights `start`, by the optimizer
/// that `kernels` selects (host moments or moments as tensors).
fn three_steps(
    params: &Params,
    grads: &GradStore,
    start: &[(String, Tensor)],
    kernels: Kernels,
) -> Vec<(String, Vec<f32>)> {
    set_kernels(kernels);
    for ((_, var), (_, w)) in params.iter().zip(start) {
        var.set(w).unwrap();
    }
    let mut opt = Optimizer::new(params, OptimizerKind::AdamW, 0.01).unwrap();
    for lr in [1e-3, 5e-4, 2e-4] {
        opt.step(grads, StepParams { lr, grad_scale: 0.5 }).unwrap();
    }
    params.iter().map(|(n, v)| (n.clone(), flat(v.as_tensor()))).collect()
}

/// The largest difference between two lists of tensors, relative to each tensor's largest value
/// (at least `floor` times the largest value of all: the key biases' gradients are zero but for
/// rounding, softmax being blind to them).
fn worst(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)], floor: f32) -> (f64, String) {
    let largest = |x: &[f32]| x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let overall = a.iter().map(|(_, x)| largest(x)).fold(0f32, f32::max);
    let mut worst = (0f64, String::new());
    for ((name, x), (name_b, y)) in a.iter().zip(b) {
        assert_eq!(name, name_b);
        let scale = largest(x).max(floor * overall).max(1e-30) as f64;
        let diff = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs())) as f64 / scale;
        if diff > worst.0 {
            worst = (diff, name.clone());
        }
    }
    worst
}

#[test]
fn the_portable_path_computes_the_fused_paths_gradients_and_update() {
    let Some(shared) = common::shared_dir("portable gradients") else { return };
    let model = shared.join("models/minilm-l3");
    let (g_fused, params, grads) = gradients(&model, Kernels::Fused);
    let (g_port, _, _) = gradients(&model, Kernels::Portable);
    assert_eq!(g_fused.len(), 57, "every parameter (3 layers x 16, embeddings, pooler, head) has a gradient");
    let (diff, name) = worst(&g_fused, &g_port, 1e-3);
    eprintln!("largest relative gradient difference: {diff:.2e} ({name})");
    assert!(diff <= GRAD_TOL, "{name}: gradients differ by {diff:e} of their largest value");
    // AdamW with moments in host memory (fused pass) and as tensors (tensor ops), on the same
    // gradients from the same weights, lands on the same weights.
    let start: Vec<(String, Tensor)> = params.iter().map(|(n, v)| (n.clone(), v.as_tensor().copy().unwrap())).collect();
    let w_fused = three_steps(&params, &grads, &start, Kernels::Fused);
    let w_port = three_steps(&params, &grads, &start, Kernels::Portable);
    set_kernels(Kernels::Fused);
    let (diff, name) = worst(&w_fused, &w_port, 0.0);
    eprintln!("largest relative weight difference after three AdamW steps: {diff:.2e} ({name})");
    assert!(diff <= GRAD_TOL, "{name}: weights after three steps differ by {diff:e}");
}

#[test]
fn portable_training_reaches_the_fused_runs_model_and_accuracy() {
    let Some(shared) = common::shared_dir("portable training") else { return };
    let model = shared.join("models/minilm-l3");
    let work = tempfile::tempdir().unwrap();
    let run = |name: &str, kernels: &str| {
        let ckpt = work.path().join(name);
        let mut args = sentiment_train_args(&model, &ckpt);
        args.push("--learning_rate=5e-5".into());
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_easynlp"))
            .args(&args)
            .env("EASYNLP_KERNELS", kernels)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let err = stderr(&out);
        let acc = err.lines().rfind(|l| l.contains("Evaluation at global step")).unwrap().to_string();
        (ckpt, acc, err)
    };
    let (fused, acc_fused, _) = run("fused", "fused");
    let (portable, acc_portable, log) = run("portable", "portable");
    assert!(log.contains("EASYNLP_KERNELS=portable"), "{log}");
    let metric = |l: &str| l.split("accuracy ").nth(1).unwrap().split(',').next().unwrap().to_string();
    assert_eq!(metric(&acc_fused), metric(&acc_portable));
    let load = |d: &Path| candle_core::safetensors::load(d.join("model.safetensors"), &Device::Cpu).unwrap();
    let (a, b) = (load(&fused), load(&portable));
    for (name, t) in &a {
        let d = (t - &b[name]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-3, "{name} differs by {d} after training");
    }
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_easynlp"))
        .args(sentiment_train_args(&model, &work.path().join("bad")))
        .env("EASYNLP_KERNELS", "gpu")
        .output()
        .unwrap();
    common::assert_failed_with(&bad, &["EASYNLP_KERNELS=gpu", "portable"]);
}
