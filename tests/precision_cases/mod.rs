//! The checks of `tests/precision.rs` and `tests/precision_portable.rs` (the same checks, on
//! the CPU's kernel path and on the forced portable path).
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use easynlp::model::bert::{ForwardCtx, Taps};
use easynlp::model::classifier::{init_head, Classifier};
use easynlp::model::config::BertConfig;
use easynlp::model::params::{read_weights, Params};
use easynlp::ops::bf16::{self, PackedA, PackedB, View};
use easynlp::ops::{int8, Precision};
use std::path::Path;

/// Unit roundoff of f32.
const U32: f64 = 1.0 / (1u64 << 24) as f64;
/// Relative error of rounding to bf16 (8 significant bits).
const UBF: f64 = 1.0 / 256.0;

/// Deterministic values in `[-1, 1)` with a spread of magnitudes (some 100x smaller).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let v = (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
            if i % 7 == 3 {
                v * 0.01
            } else {
                v
            }
        })
        .collect()
}

/// Element `(i, j)` of a strided view.
fn at(v: &View, i: usize, j: usize) -> f64 {
    v.data[i * v.strides.0 + j * v.strides.1] as f64
}

/// `sum_p a(i, p) b(p, j)` and `sum_p |a(i, p) b(p, j)|` in f64, `a` and `b` mapped by `f`.
fn dot(a: &View, b: &View, i: usize, j: usize, f: impl Fn(f64) -> f64) -> (f64, f64) {
    (0..a.dims.1).fold((0.0, 0.0), |(s, m), p| {
        let t = f(at(a, i, p)) * f(at(b, p, j));
        (s + t, m + t.abs())
    })
}

fn round_bf16(x: f64) -> f64 {
    bf16::round(x as f32) as f64
}

/// bf16 GEMM `C = beta C + alpha A B` for several shapes and layouts. Bounds, per element, with
/// `S = sum_p |a_ip b_pj|`: against the exact product of the bf16-rounded inputs
/// `|C - C_bf| <= (k + 2) u32 S_bf` (f32 accumulation only); against the exact product of the
/// f32 inputs `|C - C_f| <= (2 UBF + (k + 2) u32) S` (the two input roundings, then accumulation).
pub fn bf16_gemm_matches_f64() {
    let shapes = [(1, 1, 1), (5, 3, 17), (7, 64, 64), (13, 383, 130), (97, 130, 65), (200, 40, 8)];
    for (case, &(m, k, n)) in shapes.iter().enumerate() {
        let a_data = values(m * k, 1 + case as u64);
        let b_data = values(k * n, 101 + case as u64);
        for (a_t, b_t) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = if a_t { View::transposed(&a_data, k, m) } else { View::rows(&a_data, m, k) };
            let b = if b_t { View::transposed(&b_data, n, k) } else { View::rows(&b_data, k, n) };
            for (accumulate, alpha) in [(false, 1.0f32), (true, 0.5)] {
                let c0 = values(m * n, 7);
                let mut c = c0.clone();
                bf16::gemm(&PackedA::pack(a), &PackedB::pack(b), &mut c, n, accumulate, alpha);
                for i in 0..m {
                    for j in 0..n {
                        let base = if accumulate { c0[i * n + j] as f64 } else { 0.0 };
                        let got = c[i * n + j] as f64;
                        let (exact_bf, s_bf) = dot(&a, &b, i, j, round_bf16);
                        let (exact, s) = dot(&a, &b, i, j, |x| x);
                        let tol_bf = (k as f64 + 2.0) * U32 * (alpha as f64 * s_bf + base.abs()) + 1e-30;
                        let tol = (2.0 * UBF + (k as f64 + 2.0) * U32) * alpha as f64 * s + tol_bf;
                        let what = format!("{m}x{k}x{n} a_t={a_t} b_t={b_t} acc={accumulate} ({i},{j})");
                        let err_bf = (got - base - alpha as f64 * exact_bf).abs();
                        assert!(err_bf <= tol_bf, "{what}: {got} vs bf16-exact, error {err_bf:e} > {tol_bf:e}");
                        let err = (got - base - alpha as f64 * exact).abs();
                        assert!(err <= tol, "{what}: {got} vs f32-exact, error {err:e} > {tol:e}");
                    }
                }
            }
        }
    }
}

/// bf16 dense-layer backward against f64: `dx = dy W` (added to `dx`), `dW = dy^T x`,
/// `db = colsum(dy)`, each with the bound of [`bf16_gemm_matches_f64`] against the f32 inputs.
pub fn bf16_linear_backward_matches_f64() {
    let (rows, out, inp) = (37, 70, 45);
    let (x, w, dy) = (values(rows * inp, 1), values(out * inp, 2), values(rows * out, 3));
    let dx0 = values(rows * inp, 4);
    let (mut dx, mut dw, mut db) = (dx0.clone(), vec![0f32; out * inp], vec![0f32; out]);
    bf16::linear_backward(&x, &w, &dy, (out, inp), &mut dx, true, &mut dw, &mut db);
    let bound = |k: usize, s: f64, base: f64| (2.0 * UBF + (k as f64 + 3.0) * U32) * s + 4.0 * U32 * base.abs();
    for r in 0..rows {
        for c in 0..inp {
            let (e, s) = (0..out).fold((0.0, 0.0), |(e, s), j| {
                let t = dy[r * out + j] as f64 * w[j * inp + c] as f64;
                (e + t, s + t.abs())
            });
            let base = dx0[r * inp + c] as f64;
            let err = (dx[r * inp + c] as f64 - base - e).abs();
            assert!(err <= bound(out, s, base), "dx ({r},{c}): error {err:e}");
        }
    }
    for j in 0..out {
        for c in 0..inp {
            let (e, s) = (0..rows).fold((0.0, 0.0), |(e, s), r| {
                let t = dy[r * out + j] as f64 * x[r * inp + c] as f64;
                (e + t, s + t.abs())
            });
            let err = (dw[j * inp + c] as f64 - e).abs();
            assert!(err <= bound(rows, s, 0.0), "dW ({j},{c}): error {err:e}");
        }
        let (e, s) =
            (0..rows).fold((0.0, 0.0), |(e, s), r| (e + dy[r * out + j] as f64, s + (dy[r * out + j] as f64).abs()));
        assert!((db[j] as f64 - e).abs() <= rows as f64 * U32 * s, "db {j}");
    }
}

/// int8 dense layer `y = x W^T + b` against f64. With per-channel weight scale
/// `sw_j = max_k |W_jk| / 127` and per-row activation scale `sx_i = range_i / 255` (the range of
/// the row widened to contain 0), each product carries at most a rounding of half a step on either
/// side, so `|y - y_exact| <= sum_k (|x_ik| sw_j / 2 + |W_jk| sx_i / 2 + sx_i sw_j / 4)`, plus
/// f32 roundoff of the dequantization (`8 u32 (|y| + sum |x W|)`).
pub fn int8_linear_matches_f64() {
    for (case, &(rows, out, inp)) in
        [(1, 1, 1), (5, 17, 3), (13, 130, 383), (97, 64, 64), (8, 70, 1536)].iter().enumerate()
    {
        let x: Vec<f32> = values(rows * inp, 11 + case as u64).iter().map(|v| v * 3.0 + 0.5).collect();
        check_int8(&x, (rows, out, inp), case as u64, &[]);
    }
}

/// Columns of the activations holding a value of magnitude above `int8::OUTLIER` (4) are
/// multiplied in f32: the other values of their rows keep the quantization step of their own range,
/// so the bound of [`int8_linear_matches_f64`] holds with the outlier columns left out of the
/// ranges and of the quantization terms. (With them in, a value of 60 would widen the step
/// twenty-fold and the bound would fail.)
pub fn int8_outlier_columns_run_in_f32() {
    for (case, &(rows, out, inp)) in [(7, 40, 96), (50, 130, 1536)].iter().enumerate() {
        let mut x = values(rows * inp, 41 + case as u64);
        let outliers = [3, inp - 2];
        for (i, row) in x.chunks_mut(inp).enumerate() {
            row[3] = if i % 3 == 0 { 60.0 } else { 0.25 };
            row[inp - 2] = -8.5 * (i % 2) as f32;
        }
        const { assert!(int8::OUTLIER < 8.5) };
        check_int8(&x, (rows, out, inp), 7 + case as u64, &outliers);
    }
}

/// Checks `int8::linear_forward` of `x` with deterministic weights against f64, the columns in
/// `outliers` exact up to f32 roundoff.
fn check_int8(x: &[f32], (rows, out, inp): (usize, usize, usize), seed: u64, outliers: &[usize]) {
    let w = values(out * inp, 21 + seed);
    let b = values(out, 31);
    let y = int8::linear_forward(x, &int8::QuantW::new(&w, out, inp), &b);
    let quantized = |c: usize| !outliers.contains(&c);
    for i in 0..rows {
        let row = &x[i * inp..(i + 1) * inp];
        let (lo, hi) = row
            .iter()
            .enumerate()
            .filter(|&(c, _)| quantized(c))
            .fold((0f64, 0f64), |(l, h), (_, &v)| (l.min(v as f64), h.max(v as f64)));
        let sx = (hi - lo) / 255.0;
        for j in 0..out {
            let wr = &w[j * inp..(j + 1) * inp];
            let sw = wr.iter().fold(0f64, |m, &v| m.max((v as f64).abs())) / 127.0;
            let exact: f64 = b[j] as f64 + row.iter().zip(wr).map(|(&a, &c)| a as f64 * c as f64).sum::<f64>();
            let s: f64 = row.iter().zip(wr).map(|(&a, &c)| (a as f64 * c as f64).abs()).sum();
            let quant: f64 = (0..inp)
                .filter(|&c| quantized(c))
                .map(|c| (row[c] as f64).abs() * sw / 2.0 + (wr[c] as f64).abs() * sx / 2.0 + sx * sw / 4.0)
                .sum();
            let tol = quant + 8.0 * U32 * (exact.abs() + s) * 1.01 + 1e-6;
            let err = (y[i * out + j] as f64 - exact).abs();
            assert!(
                err <= tol,
                "{rows}x{inp} -> {out} ({i},{j}): {} vs {exact}, error {err:e} > {tol:e}",
                y[i * out + j]
            );
        }
    }
}

/// A shared model with a fresh 2-label head, its config and tokenizer folder.
fn load(shared: &Path, model: &str) -> (BertConfig, Params, std::path::PathBuf) {
    let dir = shared.join("models").join(model);
    let cfg = BertConfig::load(&dir).unwrap();
    let (weights, _) = read_weights(&dir, &Device::Cpu).unwrap();
    let mut params = Params::default();
    for (k, t) in &weights {
        params.insert(k, t).unwrap();
    }
    init_head(&mut params, &cfg, 2, &mut easynlp::rng::Rng::new(7), &Device::Cpu).unwrap();
    (cfg, params, dir)
}

/// The first `n` SST-2 dev sentences as `[n, L]` ids, segments and mask (padded to the longest).
fn sst2_batch(shared: &Path, dir: &Path, n: usize) -> (Tensor, Tensor, Tensor) {
    let tok = easynlp::data::tokenize::BertTokenizer::load(dir, 128, false).unwrap();
    let text = std::fs::read_to_string(shared.join("data/glue-sst2/dev.tsv")).unwrap();
    let rows: Vec<&str> = text.lines().skip(1).take(n).map(|l| l.split('\t').next().unwrap()).collect();
    let pairs: Vec<(&str, Option<&str>)> = rows.iter().map(|r| (*r, None)).collect();
    let enc = tok.encode_batch(&pairs).unwrap();
    let l = enc.iter().map(|e| e.ids.len()).max().unwrap();
    let (mut ids, mut mask) = (vec![0u32; n * l], vec![0f32; n * l]);
    for (r, e) in enc.iter().enumerate() {
        ids[r * l..r * l + e.ids.len()].copy_from_slice(&e.ids);
        mask[r * l..r * l + e.ids.len()].iter_mut().for_each(|m| *m = 1.0);
    }
    let dev = Device::Cpu;
    (
        Tensor::from_vec(ids, (n, l), &dev).unwrap(),
        Tensor::zeros((n, l), candle_core::DType::U32, &dev).unwrap(),
        Tensor::from_vec(mask, (n, l), &dev).unwrap(),
    )
}

/// `max |a - b| / max |b|` over real tokens (`mask` 1) of `[B, L, H]` tensors.
fn rel_err(a: &Tensor, b: &Tensor, mask: &Tensor) -> f64 {
    let m = mask.unsqueeze(2).unwrap();
    let a = a.broadcast_mul(&m).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.broadcast_mul(&m).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max);
    diff / b.iter().map(|y| y.abs() as f64).fold(1e-12, f64::max)
}

/// Bound on `max |h - h_f32| / max |h_f32|` of the last hidden states (and of the pooled
/// output): bf16 rounds every dense layer's inputs to 8 significant bits, int8 to 256 levels per
/// row / channel, and the layers compound it. Measured on this batch: bf16 0.002-0.003 (hidden)
/// and 0.005-0.006 (pooled; the attention operands in bf16 too), int8 0.01-0.03 and 0.02-0.055,
/// on both models.
const ENCODER_BOUND: [(Precision, f64); 2] = [(Precision::Bf16, 0.02), (Precision::Int8, 0.12)];

/// minilm-l6 and minilm-l3 on 16 SST-2 dev sentences: the encoder's last hidden states (every
/// position, with the fused layers) and the pooled output (the last layer computing [CLS]
/// alone) in bf16 and int8 against f32, within [`ENCODER_BOUND`].
pub fn encoder_matches_f32(test: &str) {
    let Some(shared) = crate::common::shared_dir(test) else { return };
    for model in ["minilm-l6", "minilm-l3"] {
        let (cfg, params, dir) = load(&shared, model);
        let (ids, types, mask) = sst2_batch(&shared, &dir, 16);
        let mut clf = Classifier::load(&cfg, &|n| params.frozen(n)).unwrap();
        let run = |clf: &Classifier, first_only: bool| {
            let taps = Taps { first_position_only: first_only, ..Taps::default() };
            let out = clf.bert.forward(&ids, &types, &mask, taps, &ForwardCtx::eval()).unwrap();
            if first_only {
                out.pooled.unwrap().unsqueeze(1).unwrap()
            } else {
                out.last_hidden
            }
        };
        let reference = [run(&clf, false), run(&clf, true)];
        for (precision, bound) in ENCODER_BOUND {
            clf.bert.set_precision(precision);
            for (first_only, want) in [false, true].into_iter().zip(&reference) {
                let m = if first_only { mask.narrow(1, 0, 1).unwrap() } else { mask.clone() };
                let err = rel_err(&run(&clf, first_only), want, &m);
                eprintln!("{model} {precision:?} first_only={first_only}: relative error {err:.4}");
                assert!(
                    err <= bound,
                    "{model} {precision:?} (first_only={first_only}): relative error {err} > {bound}"
                );
                assert!(err > 0.0, "{model} {precision:?}: bit-identical to f32, so the low precision did not run");
            }
        }
        clf.bert.set_precision(Precision::F32);
    }
}

/// One training step's gradients of minilm-l6 in bf16 against f32 on 8 SST-2 sentences: for
/// every weight, `|g - g_f32| <= 0.06 |g_f32|` (Euclidean norms; measured at most 0.02) and
/// their cosine >= 0.998.
pub fn bf16_gradients_match_f32(test: &str) {
    let Some(shared) = crate::common::shared_dir(test) else { return };
    let (cfg, params, dir) = load(&shared, "minilm-l6");
    let (ids, types, mask) = sst2_batch(&shared, &dir, 8);
    let labels = Tensor::from_vec(vec![0u32, 1, 1, 0, 1, 0, 0, 1], 8, &Device::Cpu).unwrap();
    let grads = |precision: Precision| {
        let mut clf = Classifier::load(&cfg, &|n| params.trainable(n)).unwrap();
        clf.bert.set_precision(precision);
        let taps = Taps { first_position_only: true, ..Taps::default() };
        let out = clf.bert.forward(&ids, &types, &mask, taps, &ForwardCtx::eval()).unwrap();
        let logits = out
            .pooled
            .unwrap()
            .sum_keepdim(1)
            .unwrap()
            .broadcast_mul(&Tensor::new(&[1f32, -1.0], &Device::Cpu).unwrap())
            .unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
        let g = loss.backward().unwrap();
        params
            .iter()
            .filter_map(|(name, var)| {
                g.get(var.as_tensor()).map(|t| (name.clone(), t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
            })
            .collect::<Vec<_>>()
    };
    let (f32_grads, bf16_grads) = (grads(Precision::F32), grads(Precision::Bf16));
    assert!(f32_grads.len() > 50, "{} gradients", f32_grads.len());
    let mut worst: f64 = 0.0;
    for ((name, a), (_, b)) in f32_grads.iter().zip(&bf16_grads) {
        // The key bias adds the same amount to every score of a query row, which the softmax
        // cancels: its exact gradient is 0 and both runs hold only rounding noise.
        if name.ends_with("attention.self.key.bias") {
            continue;
        }
        let norm = |v: &[f32]| v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
        let diff: Vec<f32> = a.iter().zip(b).map(|(x, y)| x - y).collect();
        let cos = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum::<f64>() / (norm(a) * norm(b)).max(1e-30);
        let rel = norm(&diff) / norm(a).max(1e-30);
        worst = worst.max(rel);
        assert!(rel <= 0.06 && cos >= 0.998, "{name}: relative gradient error {rel:.4}, cosine {cos:.5}");
    }
    eprintln!("bf16 gradients: worst relative error {worst:.4}");
    assert!(worst > 0.0, "bf16 gradients are identical to f32: the bf16 path did not run");
}

/// Trains a one-layer tiny BERT with `--use_amp` into `dir/ckpt`, asserting that it succeeds and
/// logs the kernel path of this CPU; returns the checkpoint folder and the log.
pub fn amp_training_logs_kernel_path(dir: &Path) -> (std::path::PathBuf, String) {
    let model = crate::common::tiny_bert(&dir.join("bert"), 1, true);
    let ckpt = dir.join("ckpt");
    let mut args = crate::common::sentiment_train_args(&model, &ckpt);
    args.push("--use_amp".into());
    let out = crate::common::easynlp_owned(&args);
    let err = crate::common::stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&format!("Precision bf16: kernel path {}", Precision::Bf16.kernel_path())), "{err}");
    (ckpt, err)
}
