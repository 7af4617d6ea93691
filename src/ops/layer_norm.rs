//! Fused layer normalisation over the last dimension, with a fused backward pass that produces
//! the input, gamma and beta gradients in one sweep.

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::{reference, util};

/// `(x - mean) / sqrt(var + eps) * gamma + beta` over the last dimension of `x` (any rank), with
/// the biased variance as in PyTorch/BERT. `gamma` and `beta` hold `H = x.dim(-1)` elements.
/// Row statistics are accumulated in f64. f32 CPU tensors use the fused kernel, anything else
/// falls back to [`reference::layer_norm`].
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    if !util::use_fused(&[x, gamma, beta]) {
        return reference::layer_norm(x, gamma, beta, eps);
    }
    let h = x.dim(D::Minus1)?;
    if gamma.elem_count() != h || beta.elem_count() != h {
        bail!("layer_norm: gamma {:?} and beta {:?} must have {h} elements", gamma.dims(), beta.dims());
    }
    x.contiguous()?.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, LayerNorm { eps })
}

/// Mean and reciprocal standard deviation `1 / sqrt(var + eps)` of one row (two-pass, f64).
#[inline(always)]
fn row_stats(x: &[f32], eps: f64) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = util::sum_f64(x, |v| v as f64) / n;
    let var = util::sum_f64(x, |v| (v as f64 - mean).powi(2)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// Forward op: inputs `x`, `gamma`, `beta`; output has the shape of `x`.
struct LayerNorm {
    eps: f64,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let [x, gamma, beta] = util::f32_inputs(self.name(), [(s1, l1), (s2, l2), (s3, l3)])?;
        Ok((CpuStorage::F32(forward(x, gamma, beta, self.eps)), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = LayerNormBwd { eps: self.eps };
        let packed = x.apply_op3_no_bwd(gamma, &grad_res.contiguous()?, &op)?;
        let grads = util::split_packed(&packed, &[x.shape(), gamma.shape(), beta.shape()])?;
        let [dx, dgamma, dbeta] = <[Tensor; 3]>::try_from(grads).expect("three gradients");
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// Backward op: inputs `x`, `gamma` and the output gradient `g`. The result is one flat buffer
/// `[dx (x.elem_count()), dgamma (H), dbeta (H)]`, split into views by the caller. With
/// `xhat = (x - mean) * rstd` and `gy = g * gamma`, per row:
/// `dx = rstd * (gy - mean(gy) - xhat * mean(gy * xhat))`, `dgamma += g * xhat`, `dbeta += g`.
struct LayerNormBwd {
    eps: f64,
}

impl CustomOp3 for LayerNormBwd {
    fn name(&self) -> &'static str {
        "fused-layer-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let [x, gamma, grad] = util::f32_inputs(self.name(), [(s1, l1), (s2, l2), (s3, l3)])?;
        if grad.len() != x.len() {
            bail!("{}: input and gradient sizes differ", self.name());
        }
        let (n, h) = (x.len(), gamma.len());
        let mut packed = vec![0f32; n + 2 * h];
        let (dx, param_grads) = packed.split_at_mut(n);
        param_grads.copy_from_slice(&backward(x, gamma, grad, self.eps, dx));
        Ok((CpuStorage::F32(packed), Shape::from(n + 2 * h)))
    }
}

util::simd_fn! {
    /// One row of the backward pass: `dx` from the output gradient `g`; `acc` (`[dgamma, dbeta]`)
    /// accumulates the parameter gradients.
    fn normalize_row_grad(dx: &mut [f32], x: &[f32], g: &[f32], gamma: &[f32], acc: &mut [f32], eps: f64) {
        let h = x.len();
        let (mean, rstd) = row_stats(x, eps);
        // gy goes into dx first; then sum(gy * xhat) = rstd * (sum(gy * x) - mean * sum(gy)),
        // which is exact enough in f64 (f32 products are exact there).
        for ((dx, &g), &w) in dx.iter_mut().zip(g).zip(gamma) {
            *dx = g * w;
        }
        let sum_gy = util::sum_f64(dx, |v| v as f64);
        let sum_gy_x = util::dot_f64(dx, x);
        let mean_gy = (sum_gy / h as f64) as f32;
        let mean_gy_xhat = (rstd * (sum_gy_x - mean * sum_gy) / h as f64) as f32;
        let (mean, rstd) = (mean as f32, rstd as f32);
        let (dgamma, dbeta) = acc.split_at_mut(h);
        let params = dgamma.iter_mut().zip(dbeta.iter_mut());
        for ((dx, (&x, &g)), (dgamma, dbeta)) in dx.iter_mut().zip(x.iter().zip(g)).zip(params) {
            let xhat = (x - mean) * rstd;
            *dx = rstd * (*dx - mean_gy - xhat * mean_gy_xhat);
            *dgamma += g * xhat;
            *dbeta += g;
        }
    }
}

/// Layer norm of the rows of `x` (of length `gamma.len()`).
pub(crate) fn forward(x: &[f32], gamma: &[f32], beta: &[f32], eps: f64) -> Vec<f32> {
    let h = gamma.len();
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(h).zip(x.par_chunks(h)).for_each(|(y, x)| {
        y.copy_from_slice(x);
        normalize_row_in_place(y, gamma, beta, eps);
    });
    out
}

/// Writes the input gradient into `dx` from the output gradient `grad`; returns `[dgamma, dbeta]`.
pub(crate) fn backward(x: &[f32], gamma: &[f32], grad: &[f32], eps: f64, dx: &mut [f32]) -> Vec<f32> {
    let h = gamma.len();
    util::par_rows_with_acc(dx, h, 2 * h, |row, dx, acc| {
        let rows = row * h..(row + 1) * h;
        normalize_row_grad(dx, &x[rows.clone()], &grad[rows], gamma, acc, eps)
    })
}

util::simd_fn! {
    /// One row of the forward pass, in place: `x = (x - mean) * rstd * gamma + beta`.
    fn normalize_row_in_place(x: &mut [f32], gamma: &[f32], beta: &[f32], eps: f64) {
        let (mean, rstd) = row_stats(x, eps);
        let (mean, rstd) = (mean as f32, rstd as f32);
        for ((x, &g), &b) in x.iter_mut().zip(gamma).zip(beta) {
            *x = (*x - mean) * rstd * g + b;
        }
    }
}

/// Layer norm of the rows of `x`, in place (when the input is not needed afterwards).
pub(crate) fn forward_in_place(x: &mut [f32], gamma: &[f32], beta: &[f32], eps: f64) {
    x.par_chunks_mut(gamma.len()).for_each(|x| normalize_row_in_place(x, gamma, beta, eps));
}
