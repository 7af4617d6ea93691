//! The device-generic path (`EASYNLP_KERNELS=portable`: what a GPU runs) forced on the CPU
//! against the fused CPU kernels: the same gradients on a real model, the same trained model.
//! (The kernel choice and the transfer counters are process-wide: the in-process tests take
//! [`SERIAL`].)

mod common;
mod precision_cases;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};
use common::{sentiment_train_args, stderr};
use easynlp::data::batch::{make_batch, Batch, Example};
use easynlp::data::tokenize::BertTokenizer;
use easynlp::distill::kd::vanilla_kd_terms;
use easynlp::metrics::EvalReport;
use easynlp::model::bert::ForwardCtx;
use easynlp::model::classifier::{init_head, Classifier};
use easynlp::model::config::BertConfig;
use easynlp::model::params::{read_weights, Params};
use easynlp::ops::{set_kernels, Kernels};
use easynlp::rng::Rng;
use easynlp::train::optimizer::{Optimizer, OptimizerKind, StepParams};
use easynlp::train::trainer::{train, Checkpoints, Loss, Snapshot, TrainSettings, TrainTask};
use std::path::Path;
use std::sync::Mutex;

/// Held by the tests that set the kernels or count transfers in this process.
static SERIAL: Mutex<()> = Mutex::new(());

/// Largest difference allowed between the two paths' gradients, relative to the largest
/// gradient of the tensor (measured on minilm-l3: 5.8e-6 for the gradients, 6.9e-6 for the
/// weights after three AdamW steps).
const GRAD_TOL: f64 = 1e-5;

/// Largest dev-accuracy difference between `--use_amp` (bf16 autocast) and f32 on the portable
/// path after the same short training run.
const AMP_ACCURACY_TOL: f64 = 0.05;

/// Gradients of `sum(logits * r)` through the training forward (dropout on) of minilm-l3 with
/// a fresh head; with the parameters and the gradient store, for the optimizer check.
fn gradients(model: &Path, kernels: Kernels) -> (Vec<(String, Vec<f32>)>, Params, GradStore) {
    set_kernels(kernels);
    let dev = Device::Cpu;
    let cfg = BertConfig::load(model).unwrap();
    let (weights, _) = read_weights(model, &dev).unwrap();
    let mut params = Params::from_tensors(&weights).unwrap();
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
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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
    // `--use_amp` on the portable path: bf16 autocast, a model about as good.
    let ckpt = work.path().join("amp");
    let mut args = sentiment_train_args(&model, &ckpt);
    args.extend(["--learning_rate=5e-5".to_string(), "--use_amp".to_string()]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_easynlp"))
        .args(&args)
        .env("EASYNLP_KERNELS", "portable")
        .output()
        .unwrap();
    let amp_log = stderr(&out);
    assert!(out.status.success(), "{amp_log}");
    assert!(amp_log.contains("Precision bf16: kernel path bf16 autocast"), "{amp_log}");
    let acc_amp = amp_log.lines().rfind(|l| l.contains("Evaluation at global step")).unwrap().to_string();
    let (a32, a16): (f64, f64) = (metric(&acc_portable).parse().unwrap(), metric(&acc_amp).parse().unwrap());
    eprintln!("dev accuracy: f32 portable {a32}, bf16 autocast portable {a16}");
    assert!((a32 - a16).abs() <= AMP_ACCURACY_TOL, "bf16 autocast dev accuracy {a16} vs f32 {a32}");
    let amp = candle_core::safetensors::load(ckpt.join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(amp.values().all(|t| t.dtype() == candle_core::DType::F32), "f32 master weights");
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

/// A KD training task on minilm-l3 that notes the transfer counters each time a micro-batch's
/// loss is asked for (its batch is uploaded by then).
struct CountingTask {
    cfg: BertConfig,
    seen: std::cell::RefCell<Vec<easynlp::ops::Transfers>>,
}

impl TrainTask for CountingTask {
    fn loss(&self, params: &Params, batch: &Batch, ctx: &ForwardCtx) -> anyhow::Result<Loss> {
        self.seen.borrow_mut().push(easynlp::ops::transfers());
        let logits = Classifier::load(&self.cfg, &|n| params.trainable(n))?.forward(batch, ctx)?;
        let teacher = batch.teacher_logits.as_ref().expect("KD rows");
        let (kd, ce) = vanilla_kd_terms(&logits, teacher, batch.labels.as_ref().expect("labels"), 2.0, 0.5)?;
        Ok(Loss { total: (&kd + &ce)?, parts: vec![("kd_loss", kd.detach()), ("ce_loss", ce.detach())] })
    }

    fn evaluate(&self, _params: &Params) -> anyhow::Result<Option<EvalReport>> {
        Ok(None)
    }
}

/// Saves nothing.
struct NoCheckpoints(std::path::PathBuf);

impl Checkpoints for NoCheckpoints {
    fn save(&self, _snapshot: &Snapshot) -> anyhow::Result<()> {
        Ok(())
    }
    fn save_all(&self) -> bool {
        false
    }
    fn location(&self) -> &Path {
        &self.0
    }
}

/// Tensors `make_batch` uploads for a KD batch: ids, segment ids, mask, labels, teacher logits.
const BATCH_UPLOADS: u64 = 5;

#[test]
fn a_portable_training_step_uploads_its_batch_only_and_reads_back_only_to_log() {
    let Some(shared) = common::shared_dir("portable transfers") else { return };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    set_kernels(Kernels::Portable);
    let model = shared.join("models/minilm-l3");
    let dev = Device::Cpu;
    let cfg = BertConfig::load(&model).unwrap();
    let (weights, _) = read_weights(&model, &dev).unwrap();
    let mut params = Params::from_tensors(&weights).unwrap();
    init_head(&mut params, &cfg, 2, &mut Rng::new(5), &dev).unwrap();
    let tokenizer = BertTokenizer::load(&model, 24, false).unwrap();
    let texts = ["a gripping film", "terrible", "one of the best performances of the year", "i walked out"];
    let rows: Vec<(&str, Option<&str>)> = texts.iter().map(|t| (*t, None)).collect();
    let mut rng = Rng::new(9);
    let examples: Vec<Example> = (0..40)
        .map(|i| Example {
            enc: tokenizer.encode_batch(&rows[i % 4..i % 4 + 1]).unwrap().remove(0),
            label: Some((i % 2) as u32),
            teacher_logits: Some(vec![rng.uniform() * 4.0 - 2.0, rng.uniform() * 4.0 - 2.0]),
            domain: None,
        })
        .collect();
    // 40 rows in micro-batches of 4, two per step: 5 steps, a log line at step 3, the epoch
    // end at step 5; clipping on (its factor stays on the device).
    let settings = TrainSettings {
        epochs: 1.0,
        batch_size: 4,
        grad_accum: 2,
        learning_rate: 1e-4,
        warmup_proportion: 0.1,
        max_grad_norm: 0.5,
        weight_decay: 0.01,
        optimizer: OptimizerKind::AdamW,
        logging_steps: 3,
        save_checkpoint_steps: None,
        seed: 3,
    };
    let task = CountingTask { cfg, seen: Default::default() };
    let work = tempfile::tempdir().unwrap();
    let before = easynlp::ops::transfers();
    train(&settings, &params, &examples, &task, &NoCheckpoints(work.path().into()), None, &dev).unwrap();
    let after = easynlp::ops::transfers();
    set_kernels(Kernels::Fused);
    let seen = task.seen.into_inner();
    assert_eq!(seen.len(), 10, "ten micro-batches");
    assert_eq!(seen[0].uploads - before.uploads, BATCH_UPLOADS);
    assert_eq!(seen[0].read_backs, before.read_backs);
    // Between the losses of micro-batches m and m + 1: the rest of m's step and m + 1's batch.
    for (m, pair) in seen.windows(2).enumerate() {
        let uploads = pair[1].uploads - pair[0].uploads;
        let read_backs = pair[1].read_backs - pair[0].read_backs;
        assert_eq!(uploads, BATCH_UPLOADS, "micro-batch {m}: {uploads} uploads, the batch has {BATCH_UPLOADS}");
        // Step 3 (micro-batches 4 and 5) is the only logging step that ends in between.
        let expected = u64::from(m == 5);
        assert_eq!(read_backs, expected, "micro-batch {m} (step {}): {read_backs} read-backs", m / 2 + 1);
    }
    // After the last loss: the last step's update and the epoch-end read-back.
    assert_eq!(after.uploads, seen[9].uploads);
    assert_eq!(after.read_backs - seen[9].read_backs, 1);
}

/// The training-step sources call no uncounted transfer: every host tensor and read-back there
/// goes through `easynlp::ops::{upload, read_back}` (test code after `#[cfg(test)]` excepted).
#[test]
fn training_step_sources_transfer_only_through_the_counted_functions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let pattern = uncounted_transfer;
    for file in [
        "src/train/trainer.rs",
        "src/metakd/student.rs",
        "src/metakd/teacher.rs",
        "src/metakd/student_loss.rs",
        "src/distill/kd.rs",
        "src/apps/train.rs",
        "src/model/classifier.rs",
        "src/model/bert.rs",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        for (i, line) in code.lines().enumerate() {
            let line = line.split("//").next().unwrap();
            if let Some(hit) = pattern(line) {
                panic!("{file}:{}: `{hit}` transfers outside easynlp::ops::{{upload, read_back}}", i + 1);
            }
        }
    }
}

/// The first uncounted transfer call in `line`, if any.
fn uncounted_transfer(line: &str) -> Option<&'static str> {
    const CALLS: [&str; 10] = [
        ".to_vec0",
        ".to_vec1",
        ".to_vec2",
        ".to_vec3",
        ".to_scalar",
        "Tensor::new(",
        "Tensor::from_vec(",
        "Tensor::from_slice(",
        ".to_device(",
        "clone_htod",
    ];
    CALLS.into_iter().find(|c| line.contains(c))
}

/// bf16 autocast on the portable path (what `--use_amp` runs on a GPU): minilm-l6's gradients
/// within the bounds of the CPU's bf16 kernels (`tests/precision.rs`: relative error <= 0.06,
/// cosine >= 0.998 per tensor), and not equal to f32's (the bf16 products ran).
#[test]
fn portable_bf16_autocast_gradients_match_f32() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    set_kernels(Kernels::Portable);
    let outcome = std::panic::catch_unwind(|| {
        precision_cases::bf16_gradients_match_f32("portable_bf16_autocast_gradients_match_f32")
    });
    set_kernels(Kernels::Fused);
    if let Err(e) = outcome {
        std::panic::resume_unwind(e);
    }
}
