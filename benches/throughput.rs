//! Throughput benchmark: training-step and inference examples/s for the shared MiniLM models at
//! batch 32 and sequence lengths 128 and 64 (every row full length), with all threads.
//!
//! Run: `cargo bench --bench throughput` (models from `$EASYNLP_SHARED/models` or `../shared/models`;
//! `BENCH_STEPS` timed steps per case, default 3, after one warm-up step; `BENCH_MODELS` and
//! `BENCH_SEQS` restrict the cases, e.g. `BENCH_MODELS=minilm-l3 BENCH_SEQS=64`).

use candle_core::{Device, Tensor};
use easynlp::cli::args::OptimizerKind;
use easynlp::data::batch::Batch;
use easynlp::model::bert::ForwardCtx;
use easynlp::model::classifier::{init_head, Classifier};
use easynlp::model::config::BertConfig;
use easynlp::model::params::{read_weights, Params};
use easynlp::rng::Rng;
use easynlp::train::optimizer::{Optimizer, StepParams};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 32;

fn shared_models() -> PathBuf {
    std::env::var_os("EASYNLP_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"))
        .join("models")
}

fn batch(seq: usize, vocab: usize, rng: &mut Rng, device: &Device) -> Batch {
    let mut ids: Vec<u32> = (0..BATCH * seq).map(|_| 1000 + rng.below(vocab - 1000) as u32).collect();
    for r in 0..BATCH {
        ids[r * seq] = 101;
        ids[r * seq + seq - 1] = 102;
    }
    let labels: Vec<u32> = (0..BATCH).map(|_| rng.below(2) as u32).collect();
    Batch {
        input_ids: Tensor::from_vec(ids, (BATCH, seq), device).unwrap(),
        token_type_ids: Tensor::zeros((BATCH, seq), candle_core::DType::U32, device).unwrap(),
        attention_mask: Tensor::ones((BATCH, seq), candle_core::DType::F32, device).unwrap(),
        labels: Some(Tensor::from_vec(labels, BATCH, device).unwrap()),
        teacher_logits: None,
        size: BATCH,
        tokens: BATCH * seq,
    }
}

/// Seconds per call of `f`, the mean over `steps` calls after one warm-up call.
fn time(steps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    for _ in 0..steps {
        f();
    }
    start.elapsed().as_secs_f64() / steps as f64
}

fn main() {
    easynlp::alloc::keep_freed_memory();
    let steps: usize = std::env::var("BENCH_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let device = Device::Cpu;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("easynlp-rs throughput, batch {BATCH}, {threads} threads, {steps} timed steps per case");
    println!("| model | seq | train ex/s | train s/step | infer ex/s | infer s/batch |");
    println!("|---|---|---|---|---|---|");
    let only = |var: &str, value: &str| std::env::var(var).map(|v| v.split(',').any(|x| x == value)).unwrap_or(true);
    for name in ["minilm-l6", "minilm-l3"] {
        if !only("BENCH_MODELS", name) {
            continue;
        }
        let dir = shared_models().join(name);
        if !dir.join("config.json").is_file() {
            eprintln!("!!! SKIPPED {name}: {} not found (set EASYNLP_SHARED)", dir.display());
            continue;
        }
        let cfg = BertConfig::load(&dir).unwrap();
        let (weights, _) = read_weights(&dir, &device).unwrap();
        let mut params = Params::default();
        for (k, t) in &weights {
            params.insert(k, t).unwrap();
        }
        let mut rng = Rng::new(7);
        init_head(&mut params, &cfg, 2, &mut rng, &device).unwrap();
        let mut opt = Optimizer::new(&params, OptimizerKind::AdamW, 1e-4);
        for seq in [128usize, 64] {
            if !only("BENCH_SEQS", &seq.to_string()) {
                continue;
            }
            let b = batch(seq, cfg.vocab_size, &mut rng, &device);
            let mut seed = 0u64;
            let train = time(steps, || {
                seed += 1;
                let model = Classifier::load(&cfg, &|n| params.trainable(n)).unwrap();
                let logits = model.forward(&b, &ForwardCtx::train(seed)).unwrap();
                let loss = candle_nn::loss::cross_entropy(&logits, b.labels.as_ref().unwrap()).unwrap();
                let grads = loss.backward().unwrap();
                opt.step(&grads, StepParams { lr: 1e-5, grad_scale: 1.0 }).unwrap();
            });
            let infer = time(steps, || {
                let model = Classifier::load(&cfg, &|n| params.frozen(n)).unwrap();
                let logits = model.forward(&b, &ForwardCtx::eval()).unwrap();
                logits.to_vec2::<f32>().unwrap();
            });
            println!(
                "| {name} | {seq} | {:.2} | {train:.2} | {:.2} | {infer:.3} |",
                BATCH as f64 / train,
                BATCH as f64 / infer
            );
        }
    }
}
