//! A whole BERT encoder layer as one autograd node: self-attention, output dense, dropout,
//! residual and LayerNorm, then the GELU feed-forward block with its own dropout, residual and
//! LayerNorm. The forward keeps the activations the backward needs; the backward is written out by
//! hand from the fused kernels. Compared with one candle node per operation this saves the
//! zero-filled gradient buffer and the extra addition candle makes for every node, the residual
//! additions as separate passes and the gradient buffers of the intermediate tensors.
//!
//! The layer's parameters travel as one flat tensor (see [`LayerParams::flatten`]) so that the op
//! has three inputs: hidden states, attention mask and parameters.

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use std::sync::{Arc, Mutex};

use super::attention::{Attention, Geometry};
use super::dropout::DropoutSite;
use super::precision::Precision;
use super::{bf16, dropout, gelu, int8, layer_norm, linear, util};

/// The parameter tensors of one layer, in the order of the flat buffer.
pub struct LayerParams<'a> {
    /// Query, key and value weights stacked (`[3H, H]`) and their biases (`[3H]`).
    pub qkv: (&'a Tensor, &'a Tensor),
    /// Attention output dense weight `[H, H]` and bias.
    pub attn_out: (&'a Tensor, &'a Tensor),
    /// LayerNorm after attention: gamma, beta.
    pub attn_norm: (&'a Tensor, &'a Tensor),
    /// Intermediate dense weight `[I, H]` and bias.
    pub inter: (&'a Tensor, &'a Tensor),
    /// Output dense weight `[H, I]` and bias.
    pub out: (&'a Tensor, &'a Tensor),
    /// LayerNorm after the feed-forward block: gamma, beta.
    pub out_norm: (&'a Tensor, &'a Tensor),
}

impl LayerParams<'_> {
    /// All parameters flattened and concatenated (gradients flow back to each of them).
    pub fn flatten(&self) -> Result<Tensor> {
        let pairs = [self.qkv, self.attn_out, self.attn_norm, self.inter, self.out, self.out_norm];
        let parts: Vec<Tensor> =
            pairs.iter().flat_map(|(w, b)| [w.flatten_all(), b.flatten_all()]).collect::<Result<_>>()?;
        Tensor::cat(&parts, 0)
    }
}

/// One dense weight prepared for a low precision: `W^T` packed as bf16 pairs, or `W`
/// quantized to s8 per output channel.
pub(super) enum Dense {
    Bf16(bf16::PackedB),
    Int8(int8::QuantW),
}

impl Dense {
    fn new(precision: Precision, w: &[f32], out: usize, inp: usize) -> Option<Self> {
        match precision {
            Precision::F32 => None,
            Precision::Bf16 => Some(Dense::Bf16(bf16::PackedB::weight_t(w, out, inp))),
            Precision::Int8 => Some(Dense::Int8(int8::QuantW::new(w, out, inp))),
        }
    }

    /// `y += x W^T` for `y` rows of `ldc` values (already holding the bias).
    fn add_into(&self, x: &[f32], y: &mut [f32], ldc: usize) {
        match self {
            Dense::Bf16(w_t) => {
                let (inp, _) = w_t.dims();
                let a = bf16::PackedA::pack(bf16::View::rows(x, x.len() / inp.max(1), inp));
                bf16::gemm(&a, w_t, y, ldc, true, 1.0);
            }
            Dense::Int8(w) => int8::matmul_add(x, w, y, ldc),
        }
    }
}

/// The dense weights of one layer prepared once for bf16 or int8 (the query and the key/value
/// parts of the stacked projection apart, as [`super::first_position`] uses them apart). A
/// training step builds them in its forward pass; frozen weights keep them for every call.
pub struct LayerWeights {
    q: Dense,
    kv: Dense,
    ao: Dense,
    inter: Dense,
    out: Dense,
}

impl LayerWeights {
    /// Prepares the weights of the flat parameter buffer of [`LayerParams::flatten`] for
    /// `precision` (None for f32), for hidden size `h` and feed-forward size `intermediate`.
    pub fn new(precision: Precision, flat_params: &Tensor, h: usize, intermediate: usize) -> Result<Option<Self>> {
        if precision == Precision::F32 {
            return Ok(None);
        }
        let layer = EncoderLayer::sized(h, intermediate);
        let flat = flat_params.flatten_all()?.to_vec1::<f32>()?;
        if flat.len() != layer.param_count() {
            bail!("LayerWeights: {} parameters, expected {}", flat.len(), layer.param_count());
        }
        Ok(Some(Self::of(precision, &layer.params(&flat), h, intermediate)))
    }

    /// The query projection.
    pub(super) fn q(&self) -> &Dense {
        &self.q
    }

    /// The key and value projections.
    pub(super) fn kv(&self) -> &Dense {
        &self.kv
    }

    fn of(precision: Precision, p: &Params, h: usize, i: usize) -> Self {
        let d = |w: &[f32], out, inp| Dense::new(precision, w, out, inp).expect("not f32");
        LayerWeights {
            q: d(&p.qkv_w[..h * h], h, h),
            kv: d(&p.qkv_w[h * h..], 2 * h, h),
            ao: d(p.ao_w, h, h),
            inter: d(p.in_w, i, h),
            out: d(p.out_w, h, i),
        }
    }
}

/// The precision of a layer op's matrix products and, for frozen weights, the weights prepared
/// for it once (see [`LayerWeights`]); the default is f32.
#[derive(Clone, Default)]
pub struct LayerPrecision {
    /// The precision.
    pub precision: Precision,
    /// Weights prepared for it, reused by every call; None: prepared in each forward pass.
    pub weights: Option<Arc<LayerWeights>>,
}

/// Dropout of one layer: the sites of the attention probabilities, of the attention output and
/// of the feed-forward output (`None` = no dropout there).
#[derive(Clone, Default)]
pub struct LayerDropout {
    /// Attention probabilities.
    pub attn_probs: Option<DropoutSite>,
    /// Attention output dense, before the residual.
    pub attn_out: Option<DropoutSite>,
    /// Feed-forward output dense, before the residual.
    pub ffn_out: Option<DropoutSite>,
}

/// Runs one encoder layer on `x` `[B, L, H]` with the additive `mask_bias` `[B, L]` and the flat
/// parameters of [`LayerParams::flatten`]; `intermediate` is the feed-forward size. f32 CPU only
/// (see [`super::attention::supported`]).
#[allow(clippy::too_many_arguments)]
pub fn encoder_layer(
    x: &Tensor,
    mask_bias: &Tensor,
    flat_params: &Tensor,
    heads: usize,
    intermediate: usize,
    eps: f64,
    dropout: LayerDropout,
    precision: &LayerPrecision,
) -> Result<Tensor> {
    let op = EncoderLayer::for_inputs(
        "encoder_layer",
        x,
        mask_bias,
        flat_params,
        (heads, intermediate, eps),
        dropout,
        precision,
    )?;
    x.contiguous()?.apply_op3(&mask_bias.detach().contiguous()?, &flat_params.contiguous()?, op)
}

/// The activations the backward pass reads.
struct Saved {
    qkv: Vec<f32>,
    post: Post,
}

/// The activations of the part after the attention core (see [`EncoderLayer::post_attention`]).
pub(super) struct Post {
    context: Vec<f32>,
    s1: Vec<f32>,
    h1: Vec<f32>,
    pre_gelu: Vec<f32>,
    post_gelu: Vec<f32>,
    s2: Vec<f32>,
}

/// One encoder layer's sizes, dropout and whether to keep activations; the op of
/// [`encoder_layer`] and the shared part of [`super::first_position`].
pub(super) struct EncoderLayer {
    pub(super) heads: usize,
    h: usize,
    i: usize,
    eps: f64,
    dropout: LayerDropout,
    /// Whether to keep the activations (when a gradient may be asked for).
    keep: bool,
    saved: Mutex<Option<Saved>>,
    precision: LayerPrecision,
}

/// Views of the flat parameter buffer.
pub(super) struct Params<'a> {
    pub(super) qkv_w: &'a [f32],
    pub(super) qkv_b: &'a [f32],
    ao_w: &'a [f32],
    ao_b: &'a [f32],
    ln1_g: &'a [f32],
    ln1_b: &'a [f32],
    in_w: &'a [f32],
    in_b: &'a [f32],
    out_w: &'a [f32],
    out_b: &'a [f32],
    ln2_g: &'a [f32],
    ln2_b: &'a [f32],
}

/// The CPU storage of a tensor's storage.
fn as_cpu(s: &candle_core::Storage) -> Result<&CpuStorage> {
    match s {
        candle_core::Storage::Cpu(c) => Ok(c),
        _ => bail!("fused-encoder-layer: expected CPU tensors"),
    }
}

/// The CPU data a layer op's backward pass reads.
pub(super) struct BackwardInputs<'a> {
    /// The layer input `[B, L, H]`.
    pub(super) x: &'a [f32],
    /// The additive attention mask `[B, L]`.
    pub(super) mask: &'a [f32],
    /// The gradient of the op's output.
    pub(super) dout: &'a [f32],
    /// `(B, L, H)`.
    pub(super) dims: (usize, usize, usize),
}

/// `g` (rows of `h`, `positions` per batch row, see [`dropout::dropout_add_rows_in_place`])
/// times the dropout mask of site `d`; `g` itself without dropout; `buf` holds the product.
fn masked<'a>(
    g: &'a [f32],
    d: Option<&DropoutSite>,
    (h, positions): (usize, usize),
    buf: &'a mut Vec<f32>,
) -> &'a [f32] {
    match d.filter(|d| d.p > 0.0) {
        Some(site) => {
            *buf = dropout::apply_mask_rows(g, site, h, positions);
            buf
        }
        None => g,
    }
}

impl EncoderLayer {
    /// The layer of `heads` heads and feed-forward size `intermediate` for the input `x`
    /// `[B, L, H]`, `mask_bias` `[B, L]` and `flat_params`, once they are checked to fit (`op`
    /// names the caller in errors); it keeps activations when `x` or the parameters track
    /// gradients.
    pub(super) fn for_inputs(
        op: &str,
        x: &Tensor,
        mask_bias: &Tensor,
        flat_params: &Tensor,
        (heads, intermediate, eps): (usize, usize, f64),
        dropout: LayerDropout,
        precision: &LayerPrecision,
    ) -> Result<Self> {
        let (b, l, h) = x.dims3()?;
        if !h.is_multiple_of(heads) || mask_bias.dims() != [b, l] {
            bail!("{op}: x {:?}, mask {:?} and {heads} heads do not fit", x.dims(), mask_bias.dims());
        }
        let keep = x.track_op() || flat_params.track_op();
        if keep && precision.precision == Precision::Int8 {
            bail!("{op}: int8 is for inference only (no gradients)");
        }
        let layer =
            EncoderLayer { heads, keep, dropout, eps, precision: precision.clone(), ..Self::sized(h, intermediate) };
        if flat_params.elem_count() != layer.param_count() {
            bail!("{op}: {} parameters, expected {}", flat_params.elem_count(), layer.param_count());
        }
        Ok(layer)
    }

    /// The backward pass of a layer op (`op` names it in errors) whose forward kept its
    /// activations in `saved`: `body` gets them, the CPU data of the inputs `[x, mask, params]`
    /// and output gradient, the parameter views and the twelve parameter gradients to fill
    /// (zeroed), and returns the gradient of `x`. The gradients come back as tensors of their
    /// inputs' shapes (the mask gets none).
    pub(super) fn backward<T>(
        &self,
        op: &str,
        saved: &Mutex<Option<T>>,
        [x, mask, params, grad]: [&Tensor; 4],
        body: impl FnOnce(T, BackwardInputs, &Params, &mut [&mut [f32]; 12]) -> Vec<f32>,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(saved) = saved.lock().expect("not poisoned").take() else {
            bail!("{op}: no activations kept (backward ran twice, or on an untracked forward)")
        };
        let grad = grad.contiguous()?;
        let (x_s, x_l) = x.storage_and_layout();
        let (m_s, m_l) = mask.storage_and_layout();
        let (p_s, p_l) = params.storage_and_layout();
        let (g_s, g_l) = grad.storage_and_layout();
        let storages = [(as_cpu(&x_s)?, x_l), (as_cpu(&m_s)?, m_l), (as_cpu(&p_s)?, p_l), (as_cpu(&g_s)?, g_l)];
        let [x, mask, params, dout] = util::f32_inputs(op, storages)?;
        let inputs = BackwardInputs { x, mask, dout, dims: x_l.shape().dims3()? };
        let p = self.params(params);
        let mut dparams = vec![0f32; self.param_count()];
        let dx = body(saved, inputs, &p, &mut self.split_mut(&mut dparams));
        let dx = Tensor::from_vec(dx, x_l.shape(), &candle_core::Device::Cpu)?;
        let dparams = Tensor::from_vec(dparams, p_l.shape(), &candle_core::Device::Cpu)?;
        Ok((Some(dx), None, Some(dparams)))
    }

    /// A layer of hidden size `h` and feed-forward size `i` (other settings at their defaults:
    /// one head, no dropout, f32), for its parameter layout.
    fn sized(h: usize, i: usize) -> Self {
        EncoderLayer {
            heads: 1,
            h,
            i,
            eps: 0.0,
            dropout: LayerDropout::default(),
            keep: false,
            saved: Mutex::new(None),
            precision: LayerPrecision::default(),
        }
    }

    /// The low-precision weights for this call: the prepared ones, else built from `p` (None in f32).
    pub(super) fn low_weights(&self, p: &Params) -> Option<Arc<LayerWeights>> {
        match (&self.precision.weights, self.precision.precision) {
            (_, Precision::F32) => None,
            (Some(w), _) => Some(w.clone()),
            (None, prec) => Some(Arc::new(LayerWeights::of(prec, p, self.h, self.i))),
        }
    }

    /// `x W^T + b` for the dense weight `w` (`out x inp`), through `low` when given.
    pub(super) fn dense(
        x: &[f32],
        (w, b): (&[f32], &[f32]),
        (out, inp): (usize, usize),
        low: Option<&Dense>,
    ) -> Vec<f32> {
        match low {
            None => linear::forward(x, w, b, out, inp),
            Some(Dense::Bf16(w_t)) => bf16::linear_forward(x, w_t, b),
            Some(Dense::Int8(qw)) => int8::linear_forward(x, qw, b),
        }
    }

    /// The stacked projections `[q | k | v]` of `x` (rows of `h`).
    fn qkv(&self, x: &[f32], p: &Params, low: Option<&LayerWeights>) -> Vec<f32> {
        let h = self.h;
        let Some(low) = low else { return linear::forward(x, p.qkv_w, p.qkv_b, 3 * h, h) };
        let rows = x.len() / h;
        let mut y = p.qkv_b.repeat(rows);
        low.q.add_into(x, &mut y, 3 * h);
        low.kv.add_into(x, &mut y[h..], 3 * h);
        y
    }

    /// The gradients of a dense layer (see [`linear::backward`]) in this layer's precision.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn dense_backward(
        &self,
        x: &[f32],
        w: &[f32],
        dy: &[f32],
        dims: (usize, usize),
        dx: &mut [f32],
        accumulate_dx: bool,
        dw: &mut [f32],
        db: &mut [f32],
    ) {
        match self.precision.precision {
            Precision::Bf16 => bf16::linear_backward(x, w, dy, dims, dx, accumulate_dx, dw, db),
            _ => linear::backward(x, w, dy, dims, dx, accumulate_dx, dw, db),
        }
    }

    /// Sizes of the parameters in flat order.
    fn sizes(&self) -> [usize; 12] {
        let (h, i) = (self.h, self.i);
        [3 * h * h, 3 * h, h * h, h, h, h, i * h, i, h * i, h, h, h]
    }

    fn param_count(&self) -> usize {
        self.sizes().iter().sum()
    }

    /// Splits a flat gradient buffer into the twelve parameters' gradients.
    fn split_mut<'a>(&self, mut flat: &'a mut [f32]) -> [&'a mut [f32]; 12] {
        self.sizes().map(|n| {
            let (head, rest) = std::mem::take(&mut flat).split_at_mut(n);
            flat = rest;
            head
        })
    }

    /// Views of the flat parameter buffer.
    pub(super) fn params<'a>(&self, mut flat: &'a [f32]) -> Params<'a> {
        let [qkv_w, qkv_b, ao_w, ao_b, ln1_g, ln1_b, in_w, in_b, out_w, out_b, ln2_g, ln2_b] = self.sizes().map(|n| {
            let (head, rest) = flat.split_at(n);
            flat = rest;
            head
        });
        Params { qkv_w, qkv_b, ao_w, ao_b, ln1_g, ln1_b, in_w, in_b, out_w, out_b, ln2_g, ln2_b }
    }

    /// The rest of the layer after the attention core, on rows of `x` (the residual) and their
    /// attention `context`, `positions` rows per batch row (all L positions, or 1 for the first
    /// positions alone; for the dropout masks, see [`dropout::dropout_add_rows_in_place`]). Keeps the activations when
    /// `keep`; otherwise every step overwrites its input buffer instead of allocating a new one.
    pub(super) fn post_attention(
        &self,
        x: &[f32],
        context: Vec<f32>,
        p: &Params,
        positions: usize,
        low: Option<&LayerWeights>,
    ) -> (Vec<f32>, Option<Post>) {
        let (h, eps) = (self.h, self.eps);
        let dense = |x: &[f32], wb, dims, d: fn(&LayerWeights) -> &Dense| Self::dense(x, wb, dims, low.map(d));
        let dropout_add = |a: &mut [f32], residual: &[f32], site: &Option<DropoutSite>| {
            let site = site.as_ref().filter(|d| d.p > 0.0);
            dropout::dropout_add_rows_in_place(a, residual, site, h, positions)
        };
        let mut s1 = dense(&context, (p.ao_w, p.ao_b), (h, h), |l| &l.ao);
        dropout_add(&mut s1, x, &self.dropout.attn_out);
        if !self.keep {
            drop(context);
            let mut h1 = s1;
            layer_norm::forward_in_place(&mut h1, p.ln1_g, p.ln1_b, eps);
            let mut inter = dense(&h1, (p.in_w, p.in_b), (self.i, h), |l| &l.inter);
            gelu::forward_in_place(&mut inter);
            let mut out = dense(&inter, (p.out_w, p.out_b), (h, self.i), |l| &l.out);
            drop(inter);
            dropout_add(&mut out, &h1, &self.dropout.ffn_out);
            layer_norm::forward_in_place(&mut out, p.ln2_g, p.ln2_b, eps);
            return (out, None);
        }
        let h1 = layer_norm::forward(&s1, p.ln1_g, p.ln1_b, eps);
        let pre_gelu = dense(&h1, (p.in_w, p.in_b), (self.i, h), |l| &l.inter);
        let post_gelu = gelu::forward(&pre_gelu);
        let mut s2 = dense(&post_gelu, (p.out_w, p.out_b), (h, self.i), |l| &l.out);
        dropout_add(&mut s2, &h1, &self.dropout.ffn_out);
        let out = layer_norm::forward(&s2, p.ln2_g, p.ln2_b, eps);
        (out, Some(Post { context, s1, h1, pre_gelu, post_gelu, s2 }))
    }

    /// Backward of [`Self::post_attention`] from the output gradient `dout`: writes the
    /// gradients of the attention-output, LayerNorm and feed-forward parameters into `d` (the
    /// twelve of [`Self::split_mut`]) and returns the gradients of the context and of the
    /// residual input `x`.
    pub(super) fn post_attention_backward(
        &self,
        post: Post,
        p: &Params,
        dout: &[f32],
        d: &mut [&mut [f32]; 12],
        positions: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        let [_, _, d_ao_w, d_ao_b, d_ln1_g, d_ln1_b, d_in_w, d_in_b, d_out_w, d_out_b, d_ln2_g, d_ln2_b] = d;
        let (h, rows) = (self.h, dout.len() / self.h);
        // out = LN2(s2), s2 = dropout(ffn) + h1.
        let mut ds2 = vec![0f32; rows * h];
        let sums = layer_norm::backward(&post.s2, p.ln2_g, dout, self.eps, &mut ds2);
        d_ln2_g.copy_from_slice(&sums[..h]);
        d_ln2_b.copy_from_slice(&sums[h..]);
        drop(post.s2);
        let mut buf = Vec::new();
        let dffn = masked(&ds2, self.dropout.ffn_out.as_ref(), (h, positions), &mut buf);
        // ffn = post_gelu W_out^T + b_out; the residual gradient ds2 flows into h1.
        let mut dpost = vec![0f32; rows * self.i];
        self.dense_backward(&post.post_gelu, p.out_w, dffn, (h, self.i), &mut dpost, false, d_out_w, d_out_b);
        drop(post.post_gelu);
        gelu::backward_in_place(&post.pre_gelu, &mut dpost);
        drop(post.pre_gelu);
        let mut dh1 = ds2;
        self.dense_backward(&post.h1, p.in_w, &dpost, (self.i, h), &mut dh1, true, d_in_w, d_in_b);
        drop((dpost, post.h1));
        // h1 = LN1(s1), s1 = dropout(attn) + x.
        let mut ds1 = vec![0f32; rows * h];
        let sums = layer_norm::backward(&post.s1, p.ln1_g, &dh1, self.eps, &mut ds1);
        d_ln1_g.copy_from_slice(&sums[..h]);
        d_ln1_b.copy_from_slice(&sums[h..]);
        drop((dh1, post.s1));
        let mut buf = Vec::new();
        let dattn = masked(&ds1, self.dropout.attn_out.as_ref(), (h, positions), &mut buf);
        let mut dcontext = vec![0f32; rows * h];
        self.dense_backward(&post.context, p.ao_w, dattn, (h, h), &mut dcontext, false, d_ao_w, d_ao_b);
        (dcontext, ds1)
    }

    pub(super) fn attention(&self) -> Attention {
        Attention {
            heads: self.heads,
            dropout: self.dropout.attn_probs.clone().filter(|d| d.p > 0.0),
            bf16: self.precision.precision == Precision::Bf16,
        }
    }
}

impl CustomOp3 for EncoderLayer {
    fn name(&self) -> &'static str {
        "fused-encoder-layer"
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
        let p = self.params(params);
        let (b, l, h) = l1.shape().dims3()?;
        let low = self.low_weights(&p);
        let qkv = self.qkv(x, &p, low.as_deref());
        let context = self.attention().context(&qkv, mask, &Geometry::new(b, l, h, self.heads));
        let (out, post) = self.post_attention(x, context, &p, l, low.as_deref());
        if let Some(post) = post {
            *self.saved.lock().expect("not poisoned") = Some(Saved { qkv, post });
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        mask: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        self.backward(self.name(), &self.saved, [x, mask, params, grad], |saved: Saved, i, p, d| {
            let (b, l, h) = i.dims;
            let (dcontext, ds1) = self.post_attention_backward(saved.post, p, i.dout, d, l);
            let [d_qkv_w, d_qkv_b, ..] = d;
            let dqkv = self.attention().grad(&saved.qkv, i.mask, &dcontext, &Geometry::new(b, l, h, self.heads));
            drop(dcontext);
            let mut dx = ds1;
            self.dense_backward(i.x, p.qkv_w, &dqkv, (3 * h, h), &mut dx, true, d_qkv_w, d_qkv_b);
            dx
        })
    }
}
