//! Throughput benchmark: our training step and inference on the shared MiniLM models (batch 32,
//! sequence 128 and 64, every row full length, all threads), side by side with PyTorch +
//! transformers when `TORCH_PYTHON` names a Python with torch (see benches/README.md); plus the
//! machine's f32 matmul peak and each run's achieved GFLOP/s as a fraction of it.
//!
//! Run: `cargo bench --bench throughput`. Environment:
//! - `BENCH_STEPS` timed steps per case (default 3, after one warm-up step);
//! - `BENCH_REPEATS` runs of each side per case, alternating ours and PyTorch (default 3); the
//!   table shows each side's median run, so one slow spell of a shared machine does not decide
//!   a ratio;
//! - `BENCH_MODELS` / `BENCH_SEQS` restrict the cases (e.g. `minilm-l3`, `64`);
//! - `TORCH_PYTHON` runs benches/torch_reference.py for the same cases, alternating with ours;
//! - `BENCH_TABLES=1` also times predict over SST-2 and MRPC dev (seq 128) against PyTorch with
//!   dynamic padding and with padding to 128;
//! - `BENCH_EPOCH=1` also times one training epoch of minilm-l6 on the first 8,000 SST-2 rows;
//! - `BENCH_PRECISIONS` the precisions of the fixed-shape cases (default `f32`; e.g.
//!   `f32,bf16,int8`): bf16 against PyTorch under `torch.autocast('cpu', dtype=torch.bfloat16)`,
//!   int8 (inference) against ONNX Runtime's `quantize_dynamic` of the minilm-l3 encoder, whose f32
//!   ONNX file `ONNX_L3` names (see benches/README.md; minilm-l6 int8 runs ours only).
//!
//! Each case runs in a child process so that its peak memory (max RSS) is its own.

use candle_core::{Device, Tensor};
use easynlp::config::args::OptimizerKind;
use easynlp::data::batch::{Batch, Example};
use easynlp::data::tokenize::BertTokenizer;
use easynlp::model::bert::ForwardCtx;
use easynlp::model::classifier::{init_head, Classifier};
use easynlp::model::config::BertConfig;
use easynlp::model::infer::model_outputs;
use easynlp::model::params::{read_weights, Params};
use easynlp::rng::Rng;
use easynlp::train::optimizer::{Optimizer, StepParams};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 32;

fn shared() -> PathBuf {
    std::env::var_os("EASYNLP_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"))
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn threads() -> usize {
    env_usize("RAYON_NUM_THREADS", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// Peak resident memory of this process in MiB (Linux `VmHWM`).
fn max_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Loads a pretrained model with a fresh 2-label head.
fn load(model: &str) -> (BertConfig, Params, PathBuf) {
    let dir = shared().join("models").join(model);
    let device = Device::Cpu;
    let cfg = BertConfig::load(&dir).unwrap();
    let (weights, _) = read_weights(&dir, &device).unwrap();
    let mut params = Params::from_tensors(&weights).unwrap();
    init_head(&mut params, &cfg, 2, &mut Rng::new(7), &device).unwrap();
    (cfg, params, dir)
}

fn full_batch(seq: usize, vocab: usize) -> Batch {
    let device = Device::Cpu;
    let mut rng = Rng::new(11);
    let mut ids: Vec<u32> = (0..BATCH * seq).map(|_| 1000 + rng.below(vocab - 1000) as u32).collect();
    for r in 0..BATCH {
        ids[r * seq] = 101;
        ids[r * seq + seq - 1] = 102;
    }
    let labels: Vec<u32> = (0..BATCH).map(|_| rng.below(2) as u32).collect();
    Batch {
        input_ids: Tensor::from_vec(ids, (BATCH, seq), &device).unwrap(),
        token_type_ids: Tensor::zeros((BATCH, seq), candle_core::DType::U32, &device).unwrap(),
        attention_mask: Tensor::ones((BATCH, seq), candle_core::DType::F32, &device).unwrap(),
        labels: Some(Tensor::from_vec(labels, BATCH, &device).unwrap()),
        teacher_logits: None,
        domains: None,
        size: BATCH,
        tokens: BATCH * seq,
    }
}

/// Forward FLOPs of one row (matmuls only): per layer and token 8H^2 + 4HI + 4·seq·H.
fn forward_flops(cfg: &BertConfig, seq: usize) -> f64 {
    let (h, i) = (cfg.hidden_size as f64, cfg.intermediate_size as f64);
    cfg.num_hidden_layers as f64 * seq as f64 * (8.0 * h * h + 4.0 * h * i + 4.0 * seq as f64 * h)
}

/// Child: one fixed-shape case, `train` or `infer`, in `precision` (`f32`, `bf16`, `int8`).
fn step_case(model: &str, seq: usize, mode: &str, steps: usize, precision: &str) -> Value {
    let precision = easynlp::ops::Precision::parse(precision).expect("precision f32, bf16 or int8");
    easynlp::ops::precision::set_global(precision);
    let (cfg, params, _) = load(model);
    let b = full_batch(seq, cfg.vocab_size);
    let mut opt = Optimizer::new(&params, OptimizerKind::AdamW, 1e-4).unwrap();
    let mut seed = 0u64;
    // Inference loads the model once, as predict does; a training step rebuilds it from the
    // updated weights, as the trainer does.
    let frozen = Classifier::load(&cfg, &|n| params.frozen(n)).unwrap();
    let mut run = || {
        seed += 1;
        if mode == "train" {
            let m = Classifier::load(&cfg, &|n| params.trainable(n)).unwrap();
            let logits = m.forward(&b, &ForwardCtx::train(seed)).unwrap();
            let loss = candle_nn::loss::cross_entropy(&logits, b.labels.as_ref().unwrap()).unwrap();
            let grads = loss.backward().unwrap();
            opt.step(&grads, StepParams { lr: 1e-5, grad_scale: 1.0 }).unwrap();
        } else {
            frozen.forward(&b, &ForwardCtx::eval()).unwrap().to_vec2::<f32>().unwrap();
        }
    };
    run();
    let start = Instant::now();
    for _ in 0..steps {
        run();
    }
    let secs = start.elapsed().as_secs_f64() / steps as f64;
    let flops = forward_flops(&cfg, seq) * BATCH as f64 * if mode == "train" { 3.0 } else { 1.0 };
    json!({"examples_per_s": BATCH as f64 / secs, "seconds_per_step": secs, "gflops": flops / secs / 1e9,
           "max_rss_mb": max_rss_mb()})
}

/// Child: predict over a real table (tokenization included, loading not), seq 128.
fn table_case(model: &str, table: &Path, text_cols: &[usize]) -> Value {
    let (cfg, params, dir) = load(model);
    let m = Classifier::load(&cfg, &|n| params.frozen(n)).unwrap();
    // As the PyTorch side: model, tokenizer and table are loaded before the clock starts;
    // tokenization and inference are timed.
    let tok = BertTokenizer::load(&dir, 128, false).unwrap();
    let text = std::fs::read_to_string(table).unwrap();
    let rows: Vec<Vec<&str>> = text
        .trim_start_matches('\u{feff}')
        .lines()
        .skip(1)
        .map(|l| l.trim_end_matches('\r').split('\t').collect())
        .collect();
    let pairs: Vec<(&str, Option<&str>)> =
        rows.iter().map(|r| (r[text_cols[0]], text_cols.get(1).map(|&c| r[c]))).collect();
    let start = Instant::now();
    let examples: Vec<Example> = tok
        .encode_batch(&pairs)
        .unwrap()
        .into_iter()
        .map(|enc| Example { enc, label: None, teacher_logits: None, domain: None })
        .collect();
    let out = model_outputs(&m, &examples, BATCH, &Device::Cpu).unwrap();
    assert_eq!(out.logits.len(), rows.len());
    let secs = start.elapsed().as_secs_f64();
    json!({"rows": rows.len(), "seconds": secs, "examples_per_s": rows.len() as f64 / secs, "max_rss_mb": max_rss_mb()})
}

/// Child: one epoch of text_classify training through the CLI code path.
fn epoch_case(model: &str, train: &Path, dev: &Path, out: &Path) -> Value {
    let dir = shared().join("models").join(model);
    let args = <easynlp::config::args::Args as clap::Parser>::parse_from([
        "easynlp".to_string(),
        "--mode=train".into(),
        format!("--tables={},{}", train.display(), dev.display()),
        "--skip_first_line".into(),
        "--input_schema=sent:str:1,label:str:1".into(),
        "--first_sequence=sent".into(),
        "--label_name=label".into(),
        format!("--checkpoint_dir={}", out.display()),
        "--learning_rate=3e-5".into(),
        "--epoch_num=1".into(),
        "--random_seed=42".into(),
        "--micro_batch_size=32".into(),
        "--sequence_length=128".into(),
        "--logging_steps=50".into(),
        format!("--user_defined_parameters=pretrain_model_name_or_path={}", dir.display()),
    ]);
    let start = Instant::now();
    easynlp::run(args).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let state: Value = serde_json::from_str(&std::fs::read_to_string(out.join("trainer_state.json")).unwrap()).unwrap();
    json!({"seconds": secs, "dev_accuracy": state["best_accuracy"], "max_rss_mb": max_rss_mb()})
}

/// Runs every side once per round for `repeats` rounds (so they alternate) and returns each
/// side's median run by examples/s (Null for a side that never returned, e.g. PyTorch without
/// `TORCH_PYTHON`).
fn alternate(repeats: usize, sides: &[&dyn Fn() -> Option<Value>]) -> Vec<Value> {
    let mut runs = vec![Vec::new(); sides.len()];
    for _ in 0..repeats.max(1) {
        for (side, runs) in sides.iter().zip(&mut runs) {
            runs.extend(side());
        }
    }
    runs.into_iter()
        .map(|mut r| {
            r.sort_by(|a, b| f(a, "examples_per_s").total_cmp(&f(b, "examples_per_s")));
            r.get(r.len().saturating_sub(1) / 2).cloned().unwrap_or(Value::Null)
        })
        .collect()
}

/// Runs this benchmark binary as a child for one case and parses its JSON line.
fn ours(args: &[String]) -> Value {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe).arg("--case").args(args).output().unwrap();
    assert!(out.status.success(), "case {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    last_json(&out.stdout)
}

/// Runs benches/torch_reference.py with `args`, or None without `TORCH_PYTHON`.
fn torch(args: &[String]) -> Option<Value> {
    let python = std::env::var("TORCH_PYTHON").ok()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/torch_reference.py");
    let out = Command::new(python).arg(script).args(args).arg(format!("--threads={}", threads())).output().unwrap();
    if !out.status.success() {
        eprintln!("torch {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    Some(last_json(&out.stdout))
}

/// ONNX Runtime on a fixed batch of the int8 (`quantize_dynamic`) minilm-l3 encoder, from the
/// f32 ONNX file `ONNX_L3` (see benches/README.md); None without it, without `TORCH_PYTHON` or
/// for another model.
fn onnx_step(model: &str, seq: usize, steps: usize) -> Option<Value> {
    let (python, f32_onnx) = (std::env::var("TORCH_PYTHON").ok()?, std::env::var("ONNX_L3").ok()?);
    if model != "minilm-l3" {
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/onnx_reference.py");
    let int8 = std::env::temp_dir().join("easynlp-bench-minilm-l3-int8.onnx");
    if !int8.is_file() {
        let q = Command::new(&python)
            .arg(&script)
            .args(["quantize", "--onnx", &f32_onnx, "--out"])
            .arg(&int8)
            .output()
            .ok()?;
        if !q.status.success() {
            eprintln!("onnx quantize failed: {}", String::from_utf8_lossy(&q.stderr));
            return None;
        }
    }
    let out = Command::new(python)
        .arg(script)
        .args(["step", "--onnx"])
        .arg(&int8)
        .args([
            format!("--batch={BATCH}"),
            format!("--seq={seq}"),
            format!("--steps={steps}"),
            format!("--threads={}", threads()),
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("onnx step failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    Some(last_json(&out.stdout))
}

fn last_json(stdout: &[u8]) -> Value {
    let text = String::from_utf8_lossy(stdout);
    serde_json::from_str(text.lines().rev().find(|l| l.trim_start().starts_with('{')).unwrap_or("{}")).unwrap()
}

/// Best-of-3 GFLOP/s of a 2048^3 f32 matmul with candle on all threads.
fn matmul_peak() -> f64 {
    let n = 2048;
    let a = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu).unwrap();
    let b = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu).unwrap();
    a.matmul(&b).unwrap();
    (0..3)
        .map(|_| {
            let start = Instant::now();
            a.matmul(&b).unwrap();
            2.0 * (n as f64).powi(3) / start.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

fn f(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

fn main() {
    easynlp::alloc::keep_freed_memory();
    let argv: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if argv.first().map(String::as_str) == Some("--case") {
        let v = match argv[1].as_str() {
            "step" => step_case(
                &argv[2],
                argv[3].parse().unwrap(),
                &argv[4],
                argv[5].parse().unwrap(),
                argv.get(6).map_or("f32", String::as_str),
            ),
            "table" => {
                let cols: Vec<usize> = argv[4].split(',').map(|c| c.parse().unwrap()).collect();
                table_case(&argv[2], Path::new(&argv[3]), &cols)
            }
            "epoch" => epoch_case(&argv[2], Path::new(&argv[3]), Path::new(&argv[4]), Path::new(&argv[5])),
            other => panic!("unknown case {other}"),
        };
        println!("{v}");
        return;
    }
    let steps = env_usize("BENCH_STEPS", 3);
    let repeats = env_usize("BENCH_REPEATS", 3);
    let only = |var: &str, value: &str| std::env::var(var).map(|v| v.split(',').any(|x| x == value)).unwrap_or(true);
    let peak = matmul_peak();
    println!(
        "easynlp-rs vs PyTorch, batch {BATCH}, {} threads, {steps} timed steps per case, median of {repeats} alternating runs per side",
        threads()
    );
    println!("f32 matmul peak (candle, 2048^3): {peak:.1} GFLOP/s\n");
    println!("| model | seq | mode | ours ex/s | reference ex/s | ratio | ours GFLOP/s (% peak) | reference GFLOP/s (% peak) | ours / reference max RSS MiB |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for model in ["minilm-l6", "minilm-l3"] {
        if !only("BENCH_MODELS", model) {
            continue;
        }
        let probe = shared().join("models").join(model).join("config.json");
        if !probe.is_file() {
            // As the tests: EASYNLP_REQUIRE_SHARED=1 makes missing shared data a failure.
            if std::env::var_os("EASYNLP_REQUIRE_SHARED").is_some_and(|v| !v.is_empty() && v != "0") {
                panic!("shared model not found: {} is missing (EASYNLP_REQUIRE_SHARED is set)", probe.display());
            }
            eprintln!("!!! SKIPPED {model}: not found under {} (set EASYNLP_SHARED)", shared().display());
            continue;
        }
        let cfg = BertConfig::load(&shared().join("models").join(model)).unwrap();
        for seq in [128usize, 64] {
            if !only("BENCH_SEQS", &seq.to_string()) {
                continue;
            }
            for precision in ["f32", "bf16", "int8"] {
                if !std::env::var("BENCH_PRECISIONS").unwrap_or("f32".into()).split(',').any(|p| p == precision) {
                    continue;
                }
                for mode in ["train", "infer"] {
                    if precision == "int8" && mode == "train" {
                        continue;
                    }
                    let dir = shared().join("models").join(model).display().to_string();
                    let our_run = || {
                        Some(ours(&[
                            "step".into(),
                            model.into(),
                            seq.to_string(),
                            mode.into(),
                            steps.to_string(),
                            precision.into(),
                        ]))
                    };
                    // The reference: PyTorch in f32 or under bf16 autocast; for int8 ONNX Runtime's
                    // quantize_dynamic of the minilm-l3 encoder (ONNX_L3), the only ONNX file we have.
                    let reference_run = || match precision {
                        "int8" => onnx_step(model, seq, steps),
                        _ => torch(&[
                            "step".into(),
                            format!("--model={dir}"),
                            format!("--batch={BATCH}"),
                            format!("--seq={seq}"),
                            format!("--mode={mode}"),
                            format!("--steps={steps}"),
                            format!("--precision={precision}"),
                        ]),
                    };
                    let [our, tch]: [Value; 2] = alternate(repeats, &[&our_run, &reference_run]).try_into().unwrap();
                    let flops = forward_flops(&cfg, seq) * BATCH as f64 * if mode == "train" { 3.0 } else { 1.0 };
                    let tg = flops / f(&tch, "seconds_per_step") / 1e9;
                    println!(
                        "| {model} | {seq} | {mode} {precision} | {:.2} | {:.2} | {:.2}x | {:.1} ({:.0}%) | {tg:.1} ({:.0}%) | {:.0} / {:.0} |",
                        f(&our, "examples_per_s"),
                        f(&tch, "examples_per_s"),
                        f(&our, "examples_per_s") / f(&tch, "examples_per_s"),
                        f(&our, "gflops"),
                        100.0 * f(&our, "gflops") / peak,
                        100.0 * tg / peak,
                        f(&our, "max_rss_mb"),
                        f(&tch, "max_rss_mb"),
                    );
                }
            }
        }
    }
    println!(
        "\nGFLOP/s: the matmul FLOPs of the whole model's forward (x3 for a training step) per second. Our \
         last layer computes the [CLS] position alone, so our figures are effective rates, above the \
         work actually done."
    );
    if std::env::var("BENCH_TABLES").is_ok() {
        println!("\n| predict, minilm-l6, seq 128 | rows | ours ex/s | torch dynamic ex/s | ratio | torch pad-128 ex/s | ratio |");
        println!("|---|---|---|---|---|---|---|");
        for (name, table, cols) in [
            ("SST-2 dev", shared().join("data/glue-sst2/dev.tsv"), "0"),
            ("MRPC dev", shared().join("data/glue-mrpc/dev.tsv"), "3,4"),
        ] {
            let t = table.display().to_string();
            let dir = shared().join("models/minilm-l6").display().to_string();
            let run = |padding: &str| {
                torch(&[
                    "predict".into(),
                    format!("--model={dir}"),
                    format!("--table={t}"),
                    format!("--text-cols={cols}"),
                    "--skip-first-line".into(),
                    format!("--padding={padding}"),
                    "--seq=128".into(),
                    format!("--batch={BATCH}"),
                ])
            };
            let our_run = || Some(ours(&["table".into(), "minilm-l6".into(), t.clone(), cols.into()]));
            let [our, dynamic, max]: [Value; 3] =
                alternate(repeats, &[&our_run, &|| run("dynamic"), &|| run("max")]).try_into().unwrap();
            let o = f(&our, "examples_per_s");
            println!(
                "| {name} | {} | {o:.1} | {:.1} | {:.2}x | {:.1} | {:.2}x |",
                our["rows"],
                f(&dynamic, "examples_per_s"),
                o / f(&dynamic, "examples_per_s"),
                f(&max, "examples_per_s"),
                o / f(&max, "examples_per_s")
            );
        }
    }
    if std::env::var("BENCH_EPOCH").is_ok() {
        let tmp = std::env::temp_dir().join(format!("easynlp-bench-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let train = tmp.join("sst2-train8k.tsv");
        let text = std::fs::read_to_string(shared().join("data/glue-sst2/train.tsv")).unwrap();
        std::fs::write(&train, text.lines().take(8001).collect::<Vec<_>>().join("\n") + "\n").unwrap();
        let dev = shared().join("data/glue-sst2/dev.tsv");
        let our = ours(&[
            "epoch".into(),
            "minilm-l6".into(),
            train.display().to_string(),
            dev.display().to_string(),
            tmp.join("ckpt").display().to_string(),
        ]);
        let dir = shared().join("models/minilm-l6").display().to_string();
        let run = |padding: &str| {
            torch(&[
                "train-epoch".into(),
                format!("--model={dir}"),
                format!("--table={}", train.display()),
                format!("--dev={}", dev.display()),
                "--text-cols=0".into(),
                "--label-col=1".into(),
                "--skip-first-line".into(),
                "--rows=8000".into(),
                format!("--padding={padding}"),
                "--seq=128".into(),
                format!("--batch={BATCH}"),
                "--lr=3e-5".into(),
                "--seed=42".into(),
            ])
            .unwrap_or(Value::Null)
        };
        let (dynamic, max) = (run("dynamic"), run("max"));
        let total = |v: &Value| f(v, "seconds_train") + f(v, "seconds_eval");
        println!("\n| one epoch, minilm-l6, SST-2 8k rows, seq 128 | wall s | dev accuracy | our speed-up |");
        println!("|---|---|---|---|");
        println!(
            "| easynlp-rs (dynamic padding, length buckets) | {:.0} | {:.4} | |",
            f(&our, "seconds"),
            f(&our, "dev_accuracy")
        );
        for (name, v) in [("PyTorch, dynamic padding", &dynamic), ("PyTorch, padding to 128", &max)] {
            println!(
                "| {name} | {:.0} | {:.4} | {:.2}x |",
                total(v),
                f(v, "dev_accuracy"),
                total(v) / f(&our, "seconds")
            );
        }
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
