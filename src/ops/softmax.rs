//! Fused attention softmax: `softmax(scores * scale + mask_bias)` over the key dimension, with a
//! fused backward pass.

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{math, reference, util};

/// Softmax of `scores * scale + mask_bias` along the last (key) dimension.
///
/// `scores` is f32 `[batch, heads, q_len, k_len]`; `mask_bias` is `[batch, k_len]` holding `0.0`
/// for real tokens and a large negative bias (e.g. `-10000.0` or `f32::MIN`) for padding. The
/// mask is broadcast over heads and queries and is treated as a constant (no gradient). A row
/// whose keys are all masked with `-inf` yields zeros here (the reference gives NaN); with a
/// finite bias such a row is uniform, as in the reference. f32 CPU tensors use the fused
/// kernel, anything else falls back to [`reference::attention_softmax`].
pub fn attention_softmax(scores: &Tensor, mask_bias: &Tensor, scale: f64) -> Result<Tensor> {
    if !util::use_fused(&[scores, mask_bias]) {
        return reference::attention_softmax(scores, mask_bias, scale);
    }
    let (b, _, _, k) = scores.dims4()?;
    if mask_bias.dims() != [b, k] {
        bail!("attention_softmax: mask_bias must be [{b}, {k}], got {:?}", mask_bias.dims());
    }
    let mask = mask_bias.detach().contiguous()?;
    let scale = scale as f32;
    scores.contiguous()?.apply_op2(&mask, AttentionSoftmax { scale })
}

/// Forward op: inputs are the scores and the mask bias; the output has the scores' shape.
struct AttentionSoftmax {
    scale: f32,
}

impl CustomOp2 for AttentionSoftmax {
    fn name(&self) -> &'static str {
        "fused-attention-softmax"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let [scores, mask] = util::f32_inputs(self.name(), [(s1, l1), (s2, l2)])?;
        let (_, heads, q_len, k) = l1.shape().dims4()?;
        let rows_per_batch = heads * q_len;
        let mut out = vec![0f32; scores.len()];
        out.par_chunks_mut(k).zip(scores.par_chunks(k)).enumerate().for_each(|(row, (y, s))| {
            let batch = row / rows_per_batch;
            softmax_row(s, &mask[batch * k..(batch + 1) * k], self.scale, y);
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _scores: &Tensor,
        _mask: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let op = AttentionSoftmaxBwd { scale: self.scale };
        let grad = res.contiguous()?.apply_op2_no_bwd(&grad_res.contiguous()?, &op)?;
        Ok((Some(grad), None))
    }
}

util::simd_fn! {
    /// Writes `softmax(s * scale + mask)` into `y`.
    fn softmax_row(s: &[f32], mask: &[f32], scale: f32, y: &mut [f32]) {
        for ((y, &s), &m) in y.iter_mut().zip(s).zip(mask) {
            *y = s * scale + m;
        }
        let max = util::max_f32(y);
        if max == f32::NEG_INFINITY {
            // Every key is masked with -inf: there is no distribution to take, return zeros.
            y.fill(0.0);
            return;
        }
        for y in y.iter_mut() {
            *y = math::exp::<FMA>(*y - max);
        }
        let sum = util::sum_f64(y, |v| v as f64) as f32;
        for y in y.iter_mut() {
            *y /= sum;
        }
    }
}

/// Backward op: inputs are the forward output `y` and the output gradient `g`; the result is
/// the scores gradient `scale * y * (g - sum(g * y))` (row-wise sum).
struct AttentionSoftmaxBwd {
    scale: f32,
}

impl CustomOp2 for AttentionSoftmaxBwd {
    fn name(&self) -> &'static str {
        "fused-attention-softmax-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let [y, g] = util::f32_inputs(self.name(), [(s1, l1), (s2, l2)])?;
        if l1.shape() != l2.shape() {
            bail!("{}: output and gradient shapes differ", self.name());
        }
        let k = l1.dims()[l1.dims().len() - 1];
        let mut dx = vec![0f32; y.len()];
        dx.par_chunks_mut(k)
            .zip(y.par_chunks(k).zip(g.par_chunks(k)))
            .for_each(|(dx, (y, g))| softmax_row_grad(dx, y, g, self.scale));
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

util::simd_fn! {
    /// `dx = scale * y * (g - sum(g * y))` for one row.
    fn softmax_row_grad(dx: &mut [f32], y: &[f32], g: &[f32], scale: f32) {
        let dot = util::dot_f64(y, g) as f32;
        for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(g) {
            *dx = scale * y * (g - dot);
        }
    }
}
