//! Parity tests for the fused CPU kernels in `easynlp::ops` against the unfused candle
//! `reference` versions: forward values and the gradients of `sum(output * w)` (for a fixed
//! random `w`) with respect to every differentiable input.
//!
//! Error metric, per tensor: `max|fused - ref| / max(1e-6, max|ref|)`, which must be <= 1e-5;
//! any NaN or infinity in either tensor counts as a failure.

use candle_core::{DType, Device, Result, Tensor, Var};
use easynlp::ops::dropout::DropoutSite;
use easynlp::ops::{self, reference};

const TOL: f32 = 1e-5;

/// Small deterministic xorshift64* generator, so failures are reproducible.
struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
        bits as f32 / (1u64 << 24) as f32
    }

    /// Tensor of uniform values in `[lo, hi)`.
    fn tensor(&mut self, dims: &[usize], lo: f32, hi: f32) -> Tensor {
        let n = dims.iter().product();
        let data: Vec<f32> = (0..n).map(|_| lo + (hi - lo) * self.next_f32()).collect();
        Tensor::from_vec(data, dims, &Device::Cpu).unwrap()
    }
}

/// `max|a - b| / max(1e-6, max|b|)`; infinite if shapes differ or a value is not finite.
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    if a.dims() != b.dims() {
        return f32::INFINITY;
    }
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    if a.iter().chain(&b).any(|v| !v.is_finite()) {
        return f32::INFINITY;
    }
    let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let scale = b.iter().map(|y| y.abs()).fold(0f32, f32::max);
    diff / scale.max(1e-6)
}

fn assert_close(what: &str, fused: &Tensor, reference: &Tensor) {
    let err = rel_err(fused, reference);
    assert!(err <= TOL, "{what}: relative error {err:e} > {TOL:e}");
}

/// Output of `f(inputs)` and the gradients of `sum(output * w)` w.r.t. every input.
fn forward_backward(f: &dyn Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Tensor], w: &Tensor) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let xs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&xs).unwrap();
    let grads = (&out * w).unwrap().sum_all().unwrap().backward().unwrap();
    let grads = xs.iter().map(|x| grads.get(x).expect("missing gradient").clone()).collect();
    (out, grads)
}

/// Checks fused vs reference outputs and gradients; `w` is drawn to match the output shape.
fn check_parity(
    name: &str,
    fused: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    unfused: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    rng: &mut Rng,
) {
    let out_dims = unfused(inputs).unwrap().dims().to_vec();
    let w = rng.tensor(&out_dims, -1.0, 1.0);
    let (out_f, grads_f) = forward_backward(fused, inputs, &w);
    let (out_r, grads_r) = forward_backward(unfused, inputs, &w);
    assert_close(&format!("{name} forward"), &out_f, &out_r);
    for (i, (gf, gr)) in grads_f.iter().zip(&grads_r).enumerate() {
        assert_close(&format!("{name} grad of input {i}"), gf, gr);
    }
}

/// `[2, 7]` mask bias: batch 0 pads keys 5 and 6 with -10000, batch 1 pads key 6 with f32::MIN.
fn padding_mask() -> Tensor {
    let mut m = vec![0f32; 14];
    m[5] = -10000.0;
    m[6] = -10000.0;
    m[13] = f32::MIN;
    Tensor::from_vec(m, (2, 7), &Device::Cpu).unwrap()
}

#[test]
fn rel_err_detects_small_differences() {
    let mut rng = Rng(7);
    let b = rng.tensor(&[4, 9], -1.0, 1.0);
    let a = (&b + 1e-4).unwrap();
    assert!(rel_err(&a, &b) > TOL);
    assert!(rel_err(&b, &b) == 0.0);
    let nan = (&b * f64::NAN).unwrap();
    assert!(rel_err(&nan, &b).is_infinite());
}

#[test]
fn attention_softmax_parity() {
    let mut rng = Rng(1);
    let mask = padding_mask();
    let scale = 1.0 / 8.0;
    let scores = rng.tensor(&[2, 12, 7, 7], -10.0, 10.0);
    check_parity(
        "attention_softmax",
        &|t| ops::attention_softmax(&t[0], &mask, scale),
        &|t| reference::attention_softmax(&t[0], &mask, scale),
        &[scores],
        &mut rng,
    );
}

#[test]
fn attention_softmax_masked_rows() {
    let mut rng = Rng(2);
    // Batch 0: only key 2 is real; batch 1: every key is padded with f32::MIN.
    let mut m = vec![-10000f32; 7];
    m[2] = 0.0;
    m.extend([f32::MIN; 7]);
    let mask = Tensor::from_vec(m, (2, 7), &Device::Cpu).unwrap();
    let scores = rng.tensor(&[2, 3, 4, 7], -10.0, 10.0);
    let y: Vec<f32> = ops::attention_softmax(&scores, &mask, 0.125).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let (rows, k) = (2 * 3 * 4, 7);
    for row in 0..rows {
        for key in 0..k {
            let v = y[row * k + key];
            let want = match (row < rows / 2, key == 2) {
                (true, true) => 1.0,
                (true, false) => 0.0,
                (false, _) => 1.0 / 7.0,
            };
            assert!((v - want).abs() < 1e-6, "row {row} key {key}: {v} vs {want}");
        }
    }
    check_parity(
        "attention_softmax (masked rows)",
        &|t| ops::attention_softmax(&t[0], &mask, 0.125),
        &|t| reference::attention_softmax(&t[0], &mask, 0.125),
        &[scores],
        &mut rng,
    );
}

#[test]
fn attention_softmax_takes_fused_path_on_cpu() {
    // With -inf padding on every key the reference yields NaN while the fused kernel returns
    // zeros: this proves the CPU/f32 dispatch really runs the fused op.
    let mask = Tensor::full(f32::NEG_INFINITY, (1, 5), &Device::Cpu).unwrap();
    let scores = Rng(3).tensor(&[1, 2, 3, 5], -1.0, 1.0);
    let fused = ops::attention_softmax(&scores, &mask, 1.0).unwrap();
    let unfused = reference::attention_softmax(&scores, &mask, 1.0).unwrap();
    let fused: Vec<f32> = fused.flatten_all().unwrap().to_vec1().unwrap();
    let unfused: Vec<f32> = unfused.flatten_all().unwrap().to_vec1().unwrap();
    assert!(fused.iter().all(|&v| v == 0.0));
    assert!(unfused.iter().all(|v| v.is_nan()));
}

#[test]
fn layer_norm_parity() {
    let mut rng = Rng(4);
    // A row offset keeps the mean away from zero, as in real hidden states.
    let x = rng.tensor(&[2, 5, 384], -2.0, 3.0);
    let gamma = rng.tensor(&[384], 0.5, 1.5);
    let beta = rng.tensor(&[384], -0.5, 0.5);
    check_parity(
        "layer_norm",
        &|t| ops::layer_norm(&t[0], &t[1], &t[2], 1e-12),
        &|t| reference::layer_norm(&t[0], &t[1], &t[2], 1e-12),
        &[x, gamma, beta],
        &mut rng,
    );
    // Odd hidden size (exercises the non-multiple-of-8 tails) and a 2-D input.
    let x = rng.tensor(&[9, 37], -1.0, 1.0);
    let gamma = rng.tensor(&[37], 0.5, 1.5);
    let beta = rng.tensor(&[37], -0.5, 0.5);
    check_parity(
        "layer_norm (odd H)",
        &|t| ops::layer_norm(&t[0], &t[1], &t[2], 1e-5),
        &|t| reference::layer_norm(&t[0], &t[1], &t[2], 1e-5),
        &[x, gamma, beta],
        &mut rng,
    );
}

#[test]
fn gelu_erf_parity() {
    let mut rng = Rng(5);
    let x = rng.tensor(&[2, 5, 1536], -6.0, 6.0);
    check_parity("gelu_erf", &|t| ops::gelu_erf(&t[0]), &|t| reference::gelu_erf(&t[0]), &[x], &mut rng);
}

#[test]
fn non_contiguous_inputs() {
    let mut rng = Rng(8);
    // The inputs are transposed views and the outputs are transposed back, so both the forward
    // input and the incoming gradient of the fused ops are strided.
    let mask = padding_mask();
    let scores_t = rng.tensor(&[2, 12, 7, 5], -10.0, 10.0);
    let view = scores_t.transpose(2, 3).unwrap();
    assert!(!view.is_contiguous());
    let fused = ops::attention_softmax(&view, &mask, 0.125).unwrap();
    let copied = ops::attention_softmax(&view.contiguous().unwrap(), &mask, 0.125).unwrap();
    assert_eq!(rel_err(&fused, &copied), 0.0);
    check_parity(
        "attention_softmax (transposed)",
        &|t| ops::attention_softmax(&t[0].transpose(2, 3)?, &mask, 0.125)?.transpose(2, 3),
        &|t| reference::attention_softmax(&t[0].transpose(2, 3)?, &mask, 0.125)?.transpose(2, 3),
        &[scores_t],
        &mut rng,
    );

    let x_t = rng.tensor(&[2, 384, 5], -2.0, 3.0);
    let gamma = rng.tensor(&[384], 0.5, 1.5);
    let beta = rng.tensor(&[384], -0.5, 0.5);
    check_parity(
        "layer_norm (transposed)",
        &|t| ops::layer_norm(&t[0].transpose(1, 2)?, &t[1], &t[2], 1e-12)?.transpose(1, 2),
        &|t| reference::layer_norm(&t[0].transpose(1, 2)?, &t[1], &t[2], 1e-12)?.transpose(1, 2),
        &[x_t, gamma, beta],
        &mut rng,
    );

    let x_t = rng.tensor(&[2, 64, 5], -5.0, 5.0);
    check_parity(
        "gelu_erf (transposed)",
        &|t| ops::gelu_erf(&t[0].transpose(1, 2)?)?.transpose(1, 2),
        &|t| reference::gelu_erf(&t[0].transpose(1, 2)?)?.transpose(1, 2),
        &[x_t],
        &mut rng,
    );
}

#[test]
fn non_f32_inputs_fall_back_to_reference() {
    let mut rng = Rng(9);
    let x = rng.tensor(&[3, 16], -2.0, 2.0).to_dtype(DType::F64).unwrap();
    let gamma = Tensor::ones(16, DType::F64, &Device::Cpu).unwrap();
    let beta = Tensor::zeros(16, DType::F64, &Device::Cpu).unwrap();
    let y = ops::layer_norm(&x, &gamma, &beta, 1e-12).unwrap();
    assert_eq!(y.dtype(), DType::F64);
    let y = ops::gelu_erf(&x).unwrap();
    assert_eq!(y.dtype(), DType::F64);
}

/// Unfused attention from packed `[B, L, 3H]` projections, with the dropout mask materialised
/// from the same counter-based generator as the fused kernel.
fn reference_attention(qkv: &Tensor, mask: &Tensor, heads: usize, dropout: Option<DropoutSite>) -> Result<Tensor> {
    let (b, l, h3) = qkv.dims3()?;
    let (h, dh) = (h3 / 3, h3 / 3 / heads);
    let split = |i: usize| qkv.narrow(2, i * h, h)?.reshape((b, l, heads, dh))?.transpose(1, 2)?.contiguous();
    let (q, k, v) = (split(0)?, split(1)?, split(2)?);
    let scores = q.matmul(&k.t()?)?;
    let mut probs = reference::attention_softmax(&scores, mask, 1.0 / (dh as f64).sqrt())?;
    if let Some(site) = dropout {
        // Element (row, head, query, key) keyed by the row's seed and its packed coordinates.
        let mut factors = Vec::with_capacity(b * heads * l * l);
        for bi in 0..b {
            let seed = ops::dropout::row_seed(site.seed, bi as u64);
            for hi in 0..heads {
                for i in 0..l {
                    for j in 0..l {
                        let key = ((hi as u64) << 40) | ((i as u64) << 20) | j as u64;
                        factors.push(ops::dropout::mask_factor(seed, key, site.keep()));
                    }
                }
            }
        }
        probs = probs.mul(&Tensor::from_vec(factors, (b, heads, l, l), &Device::Cpu)?)?;
    }
    probs.matmul(&v)?.transpose(1, 2)?.reshape((b, l, h))
}

/// A `[2, l]` mask whose second row ends in `pad` padding positions, one at `f32::MIN`.
fn padding_mask_of(l: usize, pad: usize) -> Tensor {
    let mut m = vec![0f32; 2 * l];
    m[2 * l - pad..].fill(-10000.0);
    m[2 * l - 1] = f32::MIN;
    Tensor::from_vec(m, (2, l), &Device::Cpu).unwrap()
}

/// Head sizes 12 (the general GEMM path), 32 and 64 (the AVX-512 head kernels, where the CPU has
/// them), at lengths that leave partial row blocks and partial 16-key vectors.
#[test]
fn fused_attention_parity() {
    let mut rng = Rng(21);
    for (l, h, heads) in [(7, 48, 4), (37, 64, 2), (70, 128, 2)] {
        let mask = if l == 7 { padding_mask() } else { padding_mask_of(l, l / 3) };
        for dropout in [None, Some(DropoutSite::new(0.1, 77))] {
            let qkv = rng.tensor(&[2, l, 3 * h], -1.5, 1.5);
            check_parity(
                &format!("fused_attention l={l} dh={} dropout={dropout:?}", h / heads),
                &|t| ops::fused_attention(&t[0], &mask, heads, dropout.clone()),
                &|t| reference_attention(&t[0], &mask, heads, dropout.clone()),
                &[qkv],
                &mut rng,
            );
        }
    }
}

#[test]
fn dropout_parity_and_rate() {
    let mut rng = Rng(5);
    let x = rng.tensor(&[3, 50, 40], -1.0, 1.0);
    let (p, seed) = (0.25f32, 1234u64);
    // Row r, position pos, column c: the row's seed and the key pos << 20 | c.
    let mut factors = Vec::new();
    for r in 0..3u64 {
        let row = ops::dropout::row_seed(seed, r);
        for pos in 0..50u64 {
            factors.extend((0..40u64).map(|c| ops::dropout::mask_factor(row, (pos << 20) | c, 1.0 - p)));
        }
    }
    let kept = factors.iter().filter(|f| **f > 0.0).count() as f32 / 6000.0;
    assert!((kept - 0.75).abs() < 0.03, "keep rate {kept}");
    let mask = Tensor::from_vec(factors, (3, 50, 40), &Device::Cpu).unwrap();
    let site = DropoutSite::new(p, seed);
    check_parity("dropout", &|t| ops::dropout(&t[0], &site), &|t| t[0].mul(&mask), &[x], &mut rng);
}

/// A row's mask depends on its global id, not on its place in the batch, the other rows or the
/// padding: the masks data-parallel workers draw for their shares of a batch are the masks one
/// worker draws for the whole batch.
#[test]
fn dropout_masks_are_keyed_by_global_row() {
    let mut rng = Rng(9);
    let x = rng.tensor(&[4, 6, 8], -1.0, 1.0);
    let site = |rows: &[u64]| DropoutSite::with_rows(0.3, 42, rows.into());
    let whole = ops::dropout(&x, &site(&[10, 11, 12, 13])).unwrap();
    // Rows 1 and 3 alone (a worker's share), and padded to 9 positions.
    let share = x.index_select(&Tensor::new(&[1u32, 3], &Device::Cpu).unwrap(), 0).unwrap();
    let padded = Tensor::cat(&[&share, &Tensor::zeros((2, 3, 8), DType::F32, &Device::Cpu).unwrap()], 1).unwrap();
    let alone = ops::dropout(&padded, &site(&[11, 13])).unwrap().narrow(1, 0, 6).unwrap();
    let expect = whole.index_select(&Tensor::new(&[1u32, 3], &Device::Cpu).unwrap(), 0).unwrap();
    let diff = (alone - expect).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(diff, 0.0);
    // Another id, another mask.
    let other = ops::dropout(&x, &site(&[10, 11, 12, 14])).unwrap();
    let d = (other - &whole).unwrap().narrow(0, 3, 1).unwrap().abs().unwrap().sum_all().unwrap();
    assert!(d.to_scalar::<f32>().unwrap() > 0.0);
    // Ids must fit the batch.
    assert!(ops::dropout(&x, &site(&[1, 2])).is_err());
}

#[test]
fn fused_linear_parity() {
    let mut rng = Rng(33);
    let x = rng.tensor(&[3, 37, 48], -1.0, 1.0);
    let w = rng.tensor(&[40, 48], -0.3, 0.3);
    let b = rng.tensor(&[40], -0.5, 0.5);
    check_parity(
        "linear",
        &|t| ops::linear(&t[0], &t[1], &t[2]),
        &|t| ops::linear::reference(&t[0], &t[1], &t[2]),
        &[x, w, b],
        &mut rng,
    );
}
