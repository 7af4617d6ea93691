//! The last encoder layer when only its first (`[CLS]`) position is read, as the classifier's
//! pooler does: keys and values come from every position, but the query, the attention output
//! dense, the feed-forward block and the LayerNorms run for the first position alone, which saves
//! about five sixths of the layer. The backward is written out by hand like the whole layer's
//! (see [`super::encoder_layer()`]); dropout draws the masks the whole layer draws for those rows,
//! so the result equals `encoder_layer(..).narrow(1, 0, 1)` in value and gradient.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use std::sync::Mutex;

use super::attention::Geometry;
use super::encoder_layer::{EncoderLayer, LayerDropout, LayerPrecision, Post};
use super::util;

/// [`super::encoder_layer()`] for the first position of the output only: `[B, 1, H]`.
#[allow(clippy::too_many_arguments)]
pub fn encoder_layer_first_position(
    x: &Tensor,
    mask_bias: &Tensor,
    flat_params: &Tensor,
    heads: usize,
    intermediate: usize,
    eps: f64,
    dropout: LayerDropout,
    precision: &LayerPrecision,
) -> Result<Tensor> {
    let layer = EncoderLayer::for_inputs(
        "encoder_layer_first_position",
        x,
        mask_bias,
        flat_params,
        (heads, intermediate, eps),
        dropout,
        precision,
    )?;
    let op = FirstPosition { layer, saved: Mutex::new(None) };
    x.contiguous()?.apply_op3(&mask_bias.detach().contiguous()?, &flat_params.contiguous()?, op)
}

/// The first row of each `[L, H]` block of `x`: `[B, H]`.
fn first_rows(x: &[f32], l: usize, h: usize) -> Vec<f32> {
    x.chunks_exact(l * h).flat_map(|row| &row[..h]).copied().collect()
}

/// The activations the backward pass reads.
struct Saved {
    q: Vec<f32>,
    kv: Vec<f32>,
    probs: Vec<f32>,
    post: Post,
}

struct FirstPosition {
    layer: EncoderLayer,
    saved: Mutex<Option<Saved>>,
}

impl CustomOp3 for FirstPosition {
    fn name(&self) -> &'static str {
        "fused-encoder-layer-first-position"
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
        let [x, mask, params] = util::f32_inputs(self.name(), [(s1, l1), (s2, l2), (s3, l3)])?;
        let p = self.layer.params(params);
        let (b, l, h) = l1.shape().dims3()?;
        let first = first_rows(x, l, h);
        let low = self.layer.low_weights(&p);
        let (q_w, kv_w) = p.qkv_w.split_at(h * h);
        let (q_b, kv_b) = p.qkv_b.split_at(h);
        let q = EncoderLayer::dense(&first, (q_w, q_b), (h, h), low.as_ref().map(|l| l.q()));
        let kv = EncoderLayer::dense(x, (kv_w, kv_b), (2 * h, h), low.as_ref().map(|l| l.kv()));
        let g = Geometry::new(b, l, h, self.layer.heads);
        let (context, probs) = self.layer.attention().first_query_context(&q, &kv, mask, &g);
        // Row r here is row r * l of the whole layer.
        let (out, post) = self.layer.post_attention(&first, context, &p, 1, low.as_deref());
        if let Some(post) = post {
            *self.saved.lock().expect("not poisoned") = Some(Saved { q, kv, probs, post });
        }
        Ok((CpuStorage::F32(out), Shape::from((b, 1, h))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        mask: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let layer = &self.layer;
        layer.backward(self.name(), &self.saved, [x, mask, params, grad], |saved: Saved, i, p, d| {
            let (b, l, h) = i.dims;
            let (dcontext, dfirst_residual) = layer.post_attention_backward(saved.post, p, i.dout, d, 1);
            let [d_qkv_w, d_qkv_b, ..] = d;
            let g = Geometry::new(b, l, h, layer.heads);
            let (dq, dkv) = layer.attention().first_query_grad(&saved.q, &saved.kv, &saved.probs, &dcontext, &g);
            drop((dcontext, saved.probs, saved.kv, saved.q));
            // kv = x W_kv^T + b_kv over every position; q = first W_q^T + b_q.
            let (dw_q, dw_kv) = d_qkv_w.split_at_mut(h * h);
            let (db_q, db_kv) = d_qkv_b.split_at_mut(h);
            let mut dx = vec![0f32; i.x.len()];
            layer.dense_backward(i.x, &p.qkv_w[h * h..], &dkv, (2 * h, h), &mut dx, false, dw_kv, db_kv);
            let mut dfirst = dfirst_residual;
            layer.dense_backward(&first_rows(i.x, l, h), &p.qkv_w[..h * h], &dq, (h, h), &mut dfirst, true, dw_q, db_q);
            for (row, df) in dx.chunks_exact_mut(l * h).zip(dfirst.chunks_exact(h)) {
                util::add_into(&mut row[..h], df);
            }
            dx
        })
    }
}
