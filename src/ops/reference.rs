//! Unfused reference implementations built from plain candle primitives. They are
//! differentiable through candle's autograd, serve as the ground truth in the parity tests and
//! are what the fused entry points fall back to on non-CPU devices or non-f32 dtypes.

use candle_core::{Result, Tensor, D};

/// Softmax of `scores * scale + mask_bias` over the last dim; `scores` is
/// `[batch, heads, q_len, k_len]`, `mask_bias` is `[batch, k_len]` (additive, no gradient).
pub fn attention_softmax(scores: &Tensor, mask_bias: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, _, _, k) = scores.dims4()?;
    let mask = mask_bias.detach().to_dtype(scores.dtype())?.reshape((b, 1, 1, k))?;
    let z = (scores * scale)?.broadcast_add(&mask)?;
    // The max shift only stabilises the exponentials; it carries no gradient.
    let max = z.max_keepdim(D::Minus1)?.detach();
    let e = z.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Layer normalisation over the last dim (biased variance), then `* gamma + beta`.
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let x_hat = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    x_hat.broadcast_mul(gamma)?.broadcast_add(beta)
}

/// Exact GELU via candle's `Tensor::gelu_erf`.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    x.gelu_erf()
}
