//! Fused multi-head self-attention core: from the packed `[B, L, 3H]` query/key/value
//! projections to the `[B, L, H]` context, `softmax(Q K^T * scale + mask) (dropout) V`, one
//! (batch, head) pair per task. Each pair runs its small matrix products single-threaded, so the
//! 2 x B x heads products of a layer spread over the cores instead of synchronising threads
//! inside every tiny product; no `[B, heads, L, L]` tensor, transposed copy or dropout mask is
//! stored. The backward pass recomputes the probabilities (and regenerates the dropout mask from
//! its seed) and writes the gradients of Q, K and V straight into a `[B, L, 3H]` tensor.
//! Where the CPU has AVX-512 the scores, the context and the softmax run in the kernels of
//! `ops::head_matmul`. The first-query variants serve [`super::first_position`].

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::dropout::{coord, mask_in_place, mask_into, mask_probs_in_place, mask_probs_into, DropoutSite};
use super::{bf16, head_matmul, math, util};

/// Attention context `[B, L, H]` from packed projections `qkv` `[B, L, 3H]` (query, key, value
/// blocks of H columns, each split into `heads` heads) and an additive `mask_bias` `[B, L]`
/// (0 for real tokens, a large negative value for padding; no gradient). With `dropout` the
/// attention probabilities are dropped at that site (probability `p`, masks keyed by row). CPU f32 only:
/// callers use the unfused path elsewhere (see [`supported`]).
pub fn fused_attention(qkv: &Tensor, mask_bias: &Tensor, heads: usize, dropout: Option<DropoutSite>) -> Result<Tensor> {
    let (b, l, h3) = qkv.dims3()?;
    if h3 % (3 * heads) != 0 {
        bail!("fused_attention: {h3} columns do not split into 3 x {heads} heads");
    }
    if mask_bias.dims() != [b, l] {
        bail!("fused_attention: mask_bias must be [{b}, {l}], got {:?}", mask_bias.dims());
    }
    let op = Attention { heads, dropout: dropout.filter(|d| d.p > 0.0), bf16: false };
    qkv.contiguous()?.apply_op2(&mask_bias.detach().contiguous()?, op)
}

/// Whether [`fused_attention`] can run on these tensors (f32 on the CPU).
pub fn supported(qkv: &Tensor) -> bool {
    util::use_fused(&[qkv])
}

/// The attention core of `heads` heads, with `dropout` of the probabilities.
#[derive(Clone)]
pub(crate) struct Attention {
    pub(crate) heads: usize,
    pub(crate) dropout: Option<DropoutSite>,
    /// `--precision=bf16`: the operands of the four products (Q, K, V, the probabilities after
    /// dropout, and in the backward the context gradient and the score gradient) are rounded to
    /// bf16 first; the products of bf16 values are exact in f32 and accumulate in f32, as on a
    /// bf16 dot-product instruction. The softmax and its gradient stay f32.
    pub(crate) bf16: bool,
}

/// A raw pointer to an output buffer of `len` elements that the rayon tasks of one parallel loop
/// share: each task writes the columns of its own (batch, head) pair, a set of elements disjoint
/// from every other task's, while the loop holds the buffer's only (mutable) borrow.
#[derive(Clone, Copy)]
struct SharedPtr {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: the pointer is used only inside the parallel loop that owns the buffer's mutable
// borrow, and the tasks write pairwise disjoint elements through it, so moving or sharing it
// between threads creates no data race (the pointee, f32, is itself Send + Sync).
unsafe impl Send for SharedPtr {}
// SAFETY: see `Send`; a shared `SharedPtr` only hands out copies of the pointer.
unsafe impl Sync for SharedPtr {}

impl SharedPtr {
    /// Shares the buffer `buf` (which must outlive every use of the pointer).
    fn new(buf: &mut [f32]) -> Self {
        SharedPtr { ptr: buf.as_mut_ptr(), len: buf.len() }
    }

    /// The pointer advanced by `offset` elements (at most the buffer's length).
    fn at(self, offset: usize) -> *mut f32 {
        assert!(offset <= self.len, "SharedPtr: offset {offset} past the buffer's {} elements", self.len);
        // SAFETY: `offset <= len`, so the result stays inside (or one past the end of) the
        // buffer `ptr` was taken from.
        unsafe { self.ptr.add(offset) }
    }
}

/// Shapes and the per-pair geometry shared by forward and backward.
pub(crate) struct Geometry {
    b: usize,
    l: usize,
    h: usize,
    dh: usize,
    scale: f32,
}

impl Geometry {
    /// Batch `b`, length `l`, hidden size `h` split into `heads` heads.
    pub(crate) fn new(b: usize, l: usize, h: usize, heads: usize) -> Self {
        let dh = h / heads;
        Geometry { b, l, h, dh, scale: 1.0 / (dh as f32).sqrt() }
    }
}

impl Attention {
    /// `x` as an operand of the products: rounded to bf16 values when [`Self::bf16`].
    fn operand<'a>(&self, x: &'a [f32]) -> std::borrow::Cow<'a, [f32]> {
        if self.bf16 {
            std::borrow::Cow::Owned(bf16::rounded(x))
        } else {
            std::borrow::Cow::Borrowed(x)
        }
    }

    /// Rounds `x` to bf16 values in place when [`Self::bf16`].
    fn round_operand(&self, x: &mut [f32]) {
        if self.bf16 {
            bf16::round_in_place(x);
        }
    }

    fn geometry(&self, layout: &Layout) -> Result<Geometry> {
        let (b, l, h3) = layout.shape().dims3()?;
        Ok(Geometry::new(b, l, h3 / 3, self.heads))
    }

    /// Panics unless `qkv` holds `[B, L, 3H]` values, `mask` `[B, L]` and `self.heads` heads of
    /// `dh` columns fit in `H`: the bounds that the raw-pointer products of every (batch, head)
    /// pair rely on (see [`Self::probs`]). Checked once per call of a public kernel.
    fn check_sizes(&self, g: &Geometry, qkv: &[f32], mask: &[f32]) {
        assert!(
            self.heads * g.dh <= g.h && qkv.len() == g.b * g.l * 3 * g.h && mask.len() == g.b * g.l,
            "attention: qkv of {} values, mask of {} and {} heads of {} do not fit [{}, {}, 3 x {}]",
            qkv.len(),
            mask.len(),
            self.heads,
            g.dh,
            g.b,
            g.l,
            g.h
        );
    }

    /// The gradient of `qkv` from the context gradient `dctx` (probabilities recomputed).
    pub(crate) fn grad(&self, qkv: &[f32], mask: &[f32], dctx: &[f32], g: &Geometry) -> Vec<f32> {
        self.check_sizes(g, qkv, mask);
        assert_eq!(dctx.len(), g.b * g.l * g.h, "attention grad: the context gradient must be [B, L, H]");
        let (qkv, dctx) = (self.operand(qkv), self.operand(dctx));
        let (qkv, dctx) = (&qkv[..], &dctx[..]);
        let (l, h3, dh) = (g.l, 3 * g.h, g.dh);
        let mut dqkv = vec![0f32; qkv.len()];
        let d_ptr = SharedPtr::new(&mut dqkv);
        // With dropout, or in bf16 without it, the probabilities the products read are a copy.
        let copy = self.dropout.is_some() || self.bf16;
        (0..g.b * self.heads).into_par_iter().for_each_init(
            || {
                let pd = vec![0f32; if copy { l * l } else { 0 }];
                (vec![0f32; l * l], pd, vec![0f32; l * l], Vec::new())
            },
            |(p, pd, dp, kt), pair| {
                let (bi, hi) = (pair / self.heads, pair % self.heads);
                // SAFETY: `check_sizes` passed, `bi < B` and `hi < heads` (pair < B * heads), and
                // `p` (and `pd` with dropout) hold `L x L` values.
                unsafe { self.probs(g, qkv, mask, (bi, hi), p, pd, kt) };
                let base = bi * l * h3;
                let q = qkv[base + hi * dh..].as_ptr();
                let k = qkv[base + g.h + hi * dh..].as_ptr();
                let v = qkv[base + 2 * g.h + hi * dh..].as_ptr();
                let dc = dctx[bi * l * g.h + hi * dh..].as_ptr();
                let dq = d_ptr.at(base + hi * dh);
                let dk = d_ptr.at(base + g.h + hi * dh);
                let dv = d_ptr.at(base + 2 * g.h + hi * dh);
                if self.dropout.is_none() && self.bf16 {
                    pd.copy_from_slice(p);
                }
                self.round_operand(pd);
                let probs = if copy { &pd[..] } else { &p[..] };
                // SAFETY: (all four products) Q, K, V and dQ, dK, dV are the `L` rows of `dh`
                // columns `hi * dh..(hi + 1) * dh` of block 0, 1, 2 of batch `bi` in qkv / dqkv
                // (`3H` apart, in bounds as `check_sizes` passed: `(hi + 1) * dh <= H` and qkv,
                // dqkv hold `B x L x 3H`), dC the same columns of dctx (`H` apart, `B x L x H`
                // asserted); P, P_d, dP are this task's own `L x L` buffers. This task alone
                // writes these dQ, dK, dV elements (its pair's columns), nothing reads them
                // during the loop, and the matrices written never overlap the ones read.
                unsafe {
                    // dV = P_d^T dC: P_d^T element (j, i) is P_d[i, j].
                    util::matmul(l, dh, l, dv, h3, false, probs.as_ptr(), (1, l), dc, (g.h, 1), 1.0, Parallelism::None);
                    // dP_d = dC V^T.
                    util::matmul(l, l, dh, dp.as_mut_ptr(), l, false, dc, (g.h, 1), v, (1, h3), 1.0, Parallelism::None);
                }
                if let Some(site) = &self.dropout {
                    mask_probs_in_place(dp, site.row_seed(bi), hi, l, site.keep());
                }
                softmax_grad_rows(dp, p, l);
                self.round_operand(dp);
                // SAFETY: as above (dS is `dp`, this task's `L x L` buffer).
                unsafe {
                    // dQ = dS K * scale; dK = dS^T Q * scale.
                    util::matmul(l, dh, l, dq, h3, false, dp.as_ptr(), (l, 1), k, (h3, 1), g.scale, Parallelism::None);
                    util::matmul(l, dh, l, dk, h3, false, dp.as_ptr(), (1, l), q, (h3, 1), g.scale, Parallelism::None);
                }
            },
        );
        dqkv
    }

    /// The context `[B, L, H]` of packed projections `qkv` `[B, L, 3H]` under `mask` `[B, L]`.
    pub(crate) fn context(&self, qkv: &[f32], mask: &[f32], g: &Geometry) -> Vec<f32> {
        self.check_sizes(g, qkv, mask);
        let qkv = self.operand(qkv);
        let qkv = &qkv[..];
        let (l, h3) = (g.l, 3 * g.h);
        let mut out = vec![0f32; g.b * l * g.h];
        let out_ptr = SharedPtr::new(&mut out);
        (0..g.b * self.heads).into_par_iter().for_each_init(
            || (vec![0f32; l * l], vec![0f32; if self.dropout.is_some() { l * l } else { 0 }], Vec::new()),
            |(p, pd, kt), pair| {
                let (bi, hi) = (pair / self.heads, pair % self.heads);
                // SAFETY: `check_sizes` passed, `bi < B` and `hi < heads` (pair < B * heads), and
                // `p` (and `pd` with dropout) hold `L x L` values.
                unsafe { self.probs(g, qkv, mask, (bi, hi), p, pd, kt) };
                let probs = if self.dropout.is_some() { &mut pd[..] } else { &mut p[..] };
                self.round_operand(probs);
                let v = qkv[bi * l * h3 + 2 * g.h + hi * g.dh..].as_ptr();
                let dst = out_ptr.at(bi * l * g.h + hi * g.dh);
                // C = P V, written into columns [hi*dh, (hi+1)*dh) of the context rows.
                // V is the `L` rows of `dh` columns `hi * dh..` of the value block of batch `bi`
                // (`3H` apart) and C the same columns of the batch's context rows (`H` apart):
                // in bounds as `check_sizes` passed (`(hi + 1) * dh <= H`, qkv `B x L x 3H`, out
                // `B x L x H`); `probs` holds `L x L`. Only this task writes those C elements.
                if head_matmul::supported(g.dh) {
                    // SAFETY: `supported(dh)` holds; V and C as above.
                    unsafe { head_matmul::context(probs, v, h3, (l, g.dh), dst, g.h) };
                    return;
                }
                // SAFETY: V, C and `probs` as above; C does not overlap them (another buffer).
                unsafe {
                    util::matmul(
                        l,
                        g.dh,
                        l,
                        dst,
                        g.h,
                        false,
                        probs.as_ptr(),
                        (l, 1),
                        v,
                        (h3, 1),
                        1.0,
                        Parallelism::None,
                    )
                };
            },
        );
        out
    }

    /// The context `[B, H]` of the first (`[CLS]`) query of each row only, and its attention
    /// probabilities `[B, heads, L]` (before dropout): `q` `[B, H]` holds those queries, `kv`
    /// `[B, L, 2H]` the keys and values of every position. Dropout draws the masks of the first
    /// query row of [`Self::context`].
    pub(crate) fn first_query_context(
        &self,
        q: &[f32],
        kv: &[f32],
        mask: &[f32],
        g: &Geometry,
    ) -> (Vec<f32>, Vec<f32>) {
        let (l, h, dh, heads) = (g.l, g.h, g.dh, self.heads);
        let (q, kv) = (self.operand(q), self.operand(kv));
        let (q, kv) = (&q[..], &kv[..]);
        let mut out = vec![0f32; g.b * h];
        let mut probs = vec![0f32; g.b * heads * l];
        out.par_chunks_mut(h).zip(probs.par_chunks_mut(heads * l)).enumerate().for_each_init(
            || vec![0f32; l],
            |dropped, (bi, (ctx, probs))| {
                let kv = &kv[bi * l * 2 * h..(bi + 1) * l * 2 * h];
                for (hi, p) in probs.chunks_exact_mut(l).enumerate() {
                    let q = &q[bi * h + hi * dh..bi * h + (hi + 1) * dh];
                    for (s, key) in p.iter_mut().zip(kv.chunks_exact(2 * h)) {
                        *s = g.scale * util::dot_f64(q, &key[hi * dh..(hi + 1) * dh]) as f32;
                    }
                    masked_softmax(p, &mask[bi * l..(bi + 1) * l]);
                    let p = match &self.dropout {
                        Some(site) => {
                            mask_into(dropped, p, site.row_seed(bi), coord(&[hi, 0, 0]), site.keep());
                            self.round_operand(dropped);
                            &dropped[..]
                        }
                        None if self.bf16 => {
                            bf16::round_into(dropped, p);
                            &dropped[..]
                        }
                        None => &p[..],
                    };
                    let ctx = &mut ctx[hi * dh..(hi + 1) * dh];
                    for (&p, value) in p.iter().zip(kv.chunks_exact(2 * h)) {
                        for (c, &v) in ctx.iter_mut().zip(&value[h + hi * dh..h + (hi + 1) * dh]) {
                            *c += p * v;
                        }
                    }
                }
            },
        );
        (out, probs)
    }

    /// Gradients of the queries `[B, H]` and of the keys and values `[B, L, 2H]` of
    /// [`Self::first_query_context`] from the context gradient `dctx` `[B, H]` and its `probs`.
    pub(crate) fn first_query_grad(
        &self,
        q: &[f32],
        kv: &[f32],
        probs: &[f32],
        dctx: &[f32],
        g: &Geometry,
    ) -> (Vec<f32>, Vec<f32>) {
        let (l, h, dh, heads) = (g.l, g.h, g.dh, self.heads);
        let (q, kv, dctx) = (self.operand(q), self.operand(kv), self.operand(dctx));
        let (q, kv, dctx) = (&q[..], &kv[..], &dctx[..]);
        let mut dq = vec![0f32; g.b * h];
        let mut dkv = vec![0f32; kv.len()];
        dq.par_chunks_mut(h).zip(dkv.par_chunks_mut(l * 2 * h)).enumerate().for_each_init(
            || (vec![0f32; l], vec![0f32; l]),
            |(dropped, ds), (bi, (dq, dkv))| {
                let kv = &kv[bi * l * 2 * h..(bi + 1) * l * 2 * h];
                for (hi, p) in probs[bi * heads * l..(bi + 1) * heads * l].chunks_exact(l).enumerate() {
                    let cols = hi * dh..(hi + 1) * dh;
                    let (q, dc) = (&q[bi * h..][cols.clone()], &dctx[bi * h..][cols.clone()]);
                    let base = coord(&[hi, 0, 0]);
                    let pd = match &self.dropout {
                        Some(site) => {
                            mask_into(dropped, p, site.row_seed(bi), base, site.keep());
                            self.round_operand(dropped);
                            &dropped[..]
                        }
                        None if self.bf16 => {
                            bf16::round_into(dropped, p);
                            &dropped[..]
                        }
                        None => p,
                    };
                    // dV_j = pd_j dC; dP_d_j = dC . V_j, then through the dropout mask.
                    for (j, (dkv, value)) in dkv.chunks_exact_mut(2 * h).zip(kv.chunks_exact(2 * h)).enumerate() {
                        for (dv, &c) in dkv[h..][cols.clone()].iter_mut().zip(dc) {
                            *dv = pd[j] * c;
                        }
                        ds[j] = util::dot_f64(dc, &value[h..][cols.clone()]) as f32;
                    }
                    if let Some(site) = &self.dropout {
                        mask_in_place(ds, site.row_seed(bi), base, site.keep());
                    }
                    softmax_grad_rows(ds, p, l);
                    self.round_operand(ds);
                    // dQ = scale sum_j dS_j K_j; dK_j = scale dS_j Q.
                    let dq = &mut dq[cols.clone()];
                    for (j, (dkv, key)) in dkv.chunks_exact_mut(2 * h).zip(kv.chunks_exact(2 * h)).enumerate() {
                        let w = g.scale * ds[j];
                        for ((dq, dk), (&k, &qv)) in
                            dq.iter_mut().zip(&mut dkv[cols.clone()]).zip(key[cols.clone()].iter().zip(q))
                        {
                            *dq += w * k;
                            *dk = w * qv;
                        }
                    }
                }
            },
        );
        (dq, dkv)
    }

    /// Probabilities `p` (`L x L`, row-major) of pair (batch `bi`, head `hi`); returns them
    /// after dropout in `pd` when dropout is on; `kt` is scratch space.
    ///
    /// # Safety
    /// [`Self::check_sizes`]`(g, qkv, mask)` must hold (it is checked once per call of
    /// [`Self::context`] / [`Self::grad`] rather than once per pair), `bi < B`, `hi < heads`, and
    /// `p` must hold `L x L` values.
    #[allow(clippy::too_many_arguments)]
    unsafe fn probs(
        &self,
        g: &Geometry,
        qkv: &[f32],
        mask: &[f32],
        (bi, hi): (usize, usize),
        p: &mut [f32],
        pd: &mut [f32],
        kt: &mut Vec<f32>,
    ) {
        let (l, h3) = (g.l, 3 * g.h);
        let base = bi * l * h3;
        let q = qkv[base + hi * g.dh..].as_ptr();
        let k = qkv[base + g.h + hi * g.dh..].as_ptr();
        // Q and K are the `L` rows of `dh` columns `hi * dh..(hi + 1) * dh` of the query and key
        // blocks of batch `bi`, `3H` apart: inside qkv by the caller's contract (`bi < B`,
        // `(hi + 1) * dh <= H`, qkv `B x L x 3H`).
        // S = Q K^T * scale: K^T element (kk, j) is K[j, kk].
        if head_matmul::supported(g.dh) {
            // SAFETY: `supported(dh)` holds; Q and K as above; `p` holds `L x L` (contract).
            unsafe { head_matmul::scores(q, h3, k, h3, (l, g.dh), g.scale, kt, p) };
        } else {
            // SAFETY: Q and K as above; S is `p`, `L x L` (contract), a separate buffer.
            unsafe {
                util::matmul(l, l, g.dh, p.as_mut_ptr(), l, false, q, (h3, 1), k, (1, h3), g.scale, Parallelism::None)
            };
        }
        masked_softmax(p, &mask[bi * l..(bi + 1) * l]);
        if let Some(site) = &self.dropout {
            mask_probs_into(pd, p, site.row_seed(bi), hi, l, site.keep());
        }
    }
}

impl CustomOp2 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let [qkv, mask] = util::f32_inputs(self.name(), [(s1, l1), (s2, l2)])?;
        let g = self.geometry(l1)?;
        let out = self.context(qkv, mask, &g);
        Ok((CpuStorage::F32(out), Shape::from((g.b, g.l, g.h))))
    }

    fn bwd(
        &self,
        qkv: &Tensor,
        mask: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dqkv = qkv.apply_op3_no_bwd(mask, &grad.contiguous()?, &AttentionGrad(self.clone()))?;
        Ok((Some(dqkv), None))
    }
}

/// The backward pass: inputs qkv, mask, d(context); output d(qkv).
struct AttentionGrad(Attention);

impl candle_core::CustomOp3 for AttentionGrad {
    fn name(&self) -> &'static str {
        "fused-attention-grad"
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
        let op = &self.0;
        let [qkv, mask, dctx] = util::f32_inputs(self.name(), [(s1, l1), (s2, l2), (s3, l3)])?;
        let g = op.geometry(l1)?;
        Ok((CpuStorage::F32(op.grad(qkv, mask, dctx, &g)), l1.shape().clone()))
    }
}

/// Row-wise `softmax(s + mask)` of the scores `p` (rows of `mask.len()`), in place: the AVX-512
/// kernel where the CPU has it, else the portable one.
fn masked_softmax(p: &mut [f32], mask: &[f32]) {
    if head_matmul::softmax_supported() {
        // SAFETY: `softmax_supported` detected AVX-512F at run time, the feature the kernel is
        // compiled for; it accesses only `p` and `mask` through their slices' bounds.
        unsafe { head_matmul::masked_softmax_rows(p, mask) }
    } else {
        masked_softmax_rows(p, mask)
    }
}

util::simd_fn! {
    /// Row-wise `softmax(s + mask)` of the `L x L` scores `p`, in place (`mask` has `L` entries).
    fn masked_softmax_rows(p: &mut [f32], mask: &[f32]) {
        for row in p.chunks_exact_mut(mask.len()) {
            for (s, m) in row.iter_mut().zip(mask) {
                *s += m;
            }
            let max = util::max_f32(row);
            row.iter_mut().for_each(|s| *s = math::exp::<FMA>(*s - max));
            let inv = (1.0 / util::sum_f64(row, |x| x as f64)) as f32;
            row.iter_mut().for_each(|s| *s *= inv);
        }
    }
}

util::simd_fn! {
    /// Softmax backward over rows of `l`: `dS = P * (dP - rowsum(dP * P))`, in place in `dp`.
    fn softmax_grad_rows(dp: &mut [f32], p: &[f32], l: usize) {
        for (drow, prow) in dp.chunks_exact_mut(l).zip(p.chunks_exact(l)) {
            let dot = util::dot_f64(drow, prow) as f32;
            for (d, &pv) in drow.iter_mut().zip(prow) {
                *d = pv * (*d - dot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    /// Heads of zero columns (`[B, L, 0]`) take the GEMM path, not the AVX-512 kernels (which
    /// would write whole vectors into the empty output).
    #[test]
    fn empty_heads_stay_in_bounds() {
        let qkv = Tensor::zeros((2, 4, 0), candle_core::DType::F32, &Device::Cpu).unwrap();
        let mask = Tensor::zeros((2, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let ctx = super::fused_attention(&qkv, &mask, 2, None).unwrap();
        assert_eq!(ctx.dims(), [2, 4, 0]);
    }

    /// bf16 attention: the context stays within a bf16 bound of the exact (f64, unrounded)
    /// attention, and differs from the f32 kernels' context (the operands were rounded); its
    /// query gradient likewise against the f32 gradient.
    #[test]
    fn bf16_attention_rounds_its_operands_within_a_bf16_bound() {
        let (b, l, h, heads) = (2, 7, 64, 2);
        let g = super::Geometry::new(b, l, h, heads);
        let dh = h / heads;
        let mut state = 0x9e37_79b9_u64;
        let mut value = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        };
        let qkv: Vec<f32> = (0..b * l * 3 * h).map(|_| value()).collect();
        let dctx: Vec<f32> = (0..b * l * h).map(|_| value()).collect();
        let mut mask = vec![0f32; b * l];
        mask[l - 1] = -10000.0;
        let f32_op = super::Attention { heads, dropout: None, bf16: false };
        let bf16_op = super::Attention { bf16: true, ..f32_op.clone() };
        let (ctx32, ctx16) = (f32_op.context(&qkv, &mask, &g), bf16_op.context(&qkv, &mask, &g));
        let u = 2f64.powi(-8);
        let mut differs = 0;
        for bi in 0..b {
            for hi in 0..heads {
                let at = |i: usize, part: usize, d: usize| qkv[(bi * l + i) * 3 * h + part * h + hi * dh + d] as f64;
                for i in 0..l {
                    let s: Vec<f64> = (0..l)
                        .map(|j| {
                            (0..dh).map(|d| at(i, 0, d) * at(j, 1, d)).sum::<f64>() * g.scale as f64
                                + mask[bi * l + j] as f64
                        })
                        .collect();
                    let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                    let p: Vec<f64> = e.iter().map(|x| x / e.iter().sum::<f64>()).collect();
                    let qk: f64 = (0..dh).map(|d| at(i, 0, d).abs()).sum::<f64>() * 2.0 * g.scale as f64;
                    for d in 0..dh {
                        let exact: f64 = (0..l).map(|j| p[j] * at(j, 2, d)).sum();
                        let pv: f64 = (0..l).map(|j| p[j] * at(j, 2, d).abs()).sum();
                        // Rounding V and P (u each), and Q, K moving each score by u |q| |k|
                        // (then through the softmax, at most twice that relative).
                        let bound = pv * (2.0 * u + 2.0 * u * qk) * 1.5 + 1e-6;
                        let o = (bi * l + i) * h + hi * dh + d;
                        let err = (ctx16[o] as f64 - exact).abs();
                        assert!(
                            err <= bound,
                            "({bi},{hi},{i},{d}): {} vs {exact}, error {err:e} > {bound:e}",
                            ctx16[o]
                        );
                        differs += usize::from((ctx16[o] - ctx32[o]).abs() > 1e-6 * (1.0 + pv as f32));
                    }
                }
            }
        }
        assert!(differs > b * l * h / 2, "only {differs} of {} values differ from f32", b * l * h);
        let (g32, g16) = (f32_op.grad(&qkv, &mask, &dctx, &g), bf16_op.grad(&qkv, &mask, &dctx, &g));
        let scale = g32.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = g32.iter().zip(&g16).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst > 0.0 && worst < 0.05 * scale, "bf16 gradient off by {worst} (largest {scale})");
    }

    #[test]
    #[should_panic(expected = "do not fit")]
    fn context_checks_sizes() {
        let attention = super::Attention { heads: 2, dropout: None, bf16: false };
        let g = super::Geometry::new(1, 4, 8, 2);
        // One row short of [1, 4, 24].
        attention.context(&[0.0; 3 * 24], &[0.0; 4], &g);
    }
}
