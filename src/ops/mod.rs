//! TEMPORARY: primitive implementations until the fused kernels land.

use candle_core::{Result, Tensor, D};

/// softmax(scores*scale + mask_bias) over the last dim; mask_bias is [B, Lk].
pub fn attention_softmax(scores: &Tensor, mask_bias: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, _, _, lk) = scores.dims4()?;
    let bias = mask_bias.reshape((b, 1, 1, lk))?;
    let x = (scores * scale)?.broadcast_add(&bias)?;
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// LayerNorm over the last dim.
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    xn.broadcast_mul(gamma)?.broadcast_add(beta)
}

/// gelu_erf(x + bias).
pub fn bias_gelu_erf(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.broadcast_add(bias)?.gelu_erf()
}
