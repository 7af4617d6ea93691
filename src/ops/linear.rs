//! Fused dense layer `y = x W^T + b` over the last dimension, as one autograd node: the forward
//! is one multi-threaded GEMM into a buffer pre-filled with the bias; the backward computes
//! `dx = dy W`, `dW = dy^T x` and `db = colsum(dy)` in one op. Compared with candle's
//! reshape + matmul + transpose + broadcast-add chain this saves several full-size gradient
//! buffers per layer (each candle node zero-fills and adds into a fresh gradient).

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::util;

/// `x W^T + b` for `x` `[..., in]`, `w` `[out, in]`, `b` `[out]`. f32 CPU tensors use the fused
/// op; others use candle's matmul.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    if x.dim(candle_core::D::Minus1)? != inp || b.dims() != [out] {
        bail!("linear: x {:?}, w {:?}, b {:?} do not fit", x.dims(), w.dims(), b.dims());
    }
    if !util::use_fused(&[x, w, b]) {
        return reference(x, w, b);
    }
    x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, Linear)
}

/// Whether the products of `tensors` in `precision` run as bf16 autocast: bf16 off the fused
/// CPU path (on a GPU, or with `EASYNLP_KERNELS=portable`); the fused path has its own bf16
/// kernels (`super::bf16`, through the layer op).
pub fn autocast(precision: super::Precision, tensors: &[&Tensor]) -> bool {
    precision == super::Precision::Bf16 && !util::use_fused(tensors)
}

/// [`linear`] in `precision`: under bf16 [`autocast`], `x` and `W` rounded to bf16 (nearest
/// even), candle's bf16 matmul (cuBLAS bf16 GEMM on a GPU, f32 accumulation), the product back
/// in f32 plus the f32 bias; the weights stay f32 (the master copy) and so do their gradients.
pub fn linear_in(x: &Tensor, w: &Tensor, b: &Tensor, precision: super::Precision) -> Result<Tensor> {
    if !autocast(precision, &[x, w, b]) {
        return linear(x, w, b);
    }
    let (out, inp) = w.dims2()?;
    if x.dim(candle_core::D::Minus1)? != inp || b.dims() != [out] {
        bail!("linear: x {:?}, w {:?}, b {:?} do not fit", x.dims(), w.dims(), b.dims());
    }
    let dims = x.dims().to_vec();
    let rows = x.elem_count() / inp;
    let bf = candle_core::DType::BF16;
    let y = x.reshape((rows, inp))?.to_dtype(bf)?.matmul(&w.to_dtype(bf)?.t()?)?;
    let y = y.to_dtype(x.dtype())?.broadcast_add(b)?;
    let mut out_dims = dims;
    *out_dims.last_mut().expect("rank >= 1") = out;
    y.reshape(out_dims)
}

/// `a.matmul(b)` in `precision`: under bf16 [`autocast`] with bf16 inputs and the product back in
/// `a`'s dtype.
pub fn matmul_in(a: &Tensor, b: &Tensor, precision: super::Precision) -> Result<Tensor> {
    if !autocast(precision, &[a, b]) {
        return a.matmul(b);
    }
    let bf = candle_core::DType::BF16;
    a.to_dtype(bf)?.matmul(&b.to_dtype(bf)?)?.to_dtype(a.dtype())
}

/// The unfused version built from candle ops.
pub fn reference(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let inp = dims[dims.len() - 1];
    let rows = x.elem_count() / inp;
    let y = x.reshape((rows, inp))?.matmul(&w.t()?)?.broadcast_add(b)?;
    let mut out_dims = dims;
    *out_dims.last_mut().expect("rank >= 1") = w.dim(0)?;
    y.reshape(out_dims)
}

fn threads() -> Parallelism {
    Parallelism::Rayon(rayon::current_num_threads())
}

struct Linear;

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "fused-linear"
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
        let [x, w, b] = util::f32_inputs(self.name(), [(s1, l1), (s2, l2), (s3, l3)])?;
        let (out, inp) = l2.shape().dims2()?;
        let y = forward(x, w, b, out, inp);
        let mut dims = l1.shape().dims().to_vec();
        *dims.last_mut().expect("rank >= 1") = out;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &LinearGrad)?;
        let grads = util::split_packed(&packed, &[x.shape(), w.shape(), b.shape()])?;
        let [dx, dw, db] = <[Tensor; 3]>::try_from(grads).expect("three gradients");
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// Backward: inputs x, W, dy; output `[dx, dW, db]` packed in one flat buffer.
struct LinearGrad;

impl CustomOp3 for LinearGrad {
    fn name(&self) -> &'static str {
        "fused-linear-grad"
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
        let [x, w, dy] = util::f32_inputs(self.name(), [(s1, l1), (s2, l2), (s3, l3)])?;
        let (out, inp) = l2.shape().dims2()?;
        let rows = x.len() / inp;
        let mut packed = vec![0f32; rows * inp + out * inp + out];
        let (dx, rest) = packed.split_at_mut(rows * inp);
        let (dw, db) = rest.split_at_mut(out * inp);
        backward(x, w, dy, (out, inp), dx, false, dw, db);
        let n = packed.len();
        Ok((CpuStorage::F32(packed), Shape::from(n)))
    }
}

/// `y = x W^T + b` for `x` (`rows x inp`), `w` (`out x inp`), `b` (`out`); multi-threaded GEMM into
/// a buffer pre-filled with the bias. Panics unless the slices have those sizes.
pub(crate) fn forward(x: &[f32], w: &[f32], b: &[f32], out: usize, inp: usize) -> Vec<f32> {
    let rows = x.len() / inp;
    assert!(
        x.len() == rows * inp && w.len() == out * inp && b.len() == out,
        "linear::forward: x ({} values), w ({}) and b ({}) do not fit [rows, {inp}] x [{out}, {inp}]^T + [{out}]",
        x.len(),
        w.len(),
        b.len()
    );
    let mut y = Vec::with_capacity(rows * out);
    // The bias in every row, written in parallel straight into the new buffer.
    y.spare_capacity_mut()[..rows * out].par_chunks_mut(out * 64).for_each(|block| {
        for row in block.chunks_mut(out) {
            for (d, &s) in row.iter_mut().zip(b) {
                d.write(s);
            }
        }
    });
    // SAFETY: the capacity is `rows * out` and the loop above initialised all of those
    // elements: blocks of whole rows of `out`, each zipped with `b`, which has `out` values.
    unsafe { y.set_len(rows * out) };
    // y += x W^T: W^T element (k, j) is W[j, k].
    // SAFETY: y is `rows x out` (row stride `out`), x `rows x inp` (strides `(inp, 1)`) and W
    // `out x inp` read as W^T (strides `(1, inp)`), all sizes asserted above; y is a new buffer,
    // so it overlaps neither input.
    unsafe {
        util::matmul(
            rows,
            out,
            inp,
            y.as_mut_ptr(),
            out,
            true,
            x.as_ptr(),
            (inp, 1),
            w.as_ptr(),
            (1, inp),
            1.0,
            threads(),
        )
    };
    y
}

/// Gradients of `y = x W^T + b` from `dy`: `dx (+)= dy W` (added to `dx` when `accumulate_dx`),
/// `dW = dy^T x`, `db = colsum(dy)`; `(out, inp)` is the shape of `w`. Panics unless `x` and `dx`
/// are `rows x inp`, `dy` `rows x out`, `w` and `dw` `out x inp` and `db` has `out` values.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    (out, inp): (usize, usize),
    dx: &mut [f32],
    accumulate_dx: bool,
    dw: &mut [f32],
    db: &mut [f32],
) {
    let rows = x.len() / inp;
    assert!(
        x.len() == rows * inp
            && dx.len() == rows * inp
            && dy.len() == rows * out
            && w.len() == out * inp
            && dw.len() == out * inp
            && db.len() == out,
        "linear::backward: sizes do not fit {rows} rows of [{out}, {inp}] (x {}, dx {}, dy {}, w {}, dw {}, db {})",
        x.len(),
        dx.len(),
        dy.len(),
        w.len(),
        dw.len(),
        db.len()
    );
    // SAFETY: every matrix has the size asserted above: dx and x are `rows x inp` (row stride
    // `inp`), dy `rows x out` (read as is, strides `(out, 1)`, or as dy^T, `(1, out)`), w and dw
    // `out x inp`. dx and dw are written through `&mut` slices, so they overlap nothing read.
    unsafe {
        // dx = dy W.
        util::matmul(
            rows,
            inp,
            out,
            dx.as_mut_ptr(),
            inp,
            accumulate_dx,
            dy.as_ptr(),
            (out, 1),
            w.as_ptr(),
            (inp, 1),
            1.0,
            threads(),
        );
        // dW = dy^T x: dy^T element (j, n) is dy[n, j].
        util::matmul(
            out,
            inp,
            rows,
            dw.as_mut_ptr(),
            inp,
            false,
            dy.as_ptr(),
            (1, out),
            x.as_ptr(),
            (inp, 1),
            1.0,
            threads(),
        );
    }
    db.copy_from_slice(&util::column_sums(dy, out));
}

#[cfg(test)]
mod tests {
    /// A bias shorter than `out` would leave part of the output uninitialised: it is refused.
    #[test]
    #[should_panic(expected = "do not fit")]
    fn forward_checks_sizes() {
        super::forward(&[1.0; 6], &[1.0; 6], &[0.0; 1], 2, 3);
    }

    #[test]
    #[should_panic(expected = "sizes do not fit")]
    fn backward_checks_sizes() {
        let (mut dx, mut dw, mut db) = (vec![0.0; 6], vec![0.0; 6], vec![0.0; 2]);
        // dy should hold 2 rows x 2 outputs.
        super::backward(&[1.0; 6], &[1.0; 6], &[1.0; 3], (2, 3), &mut dx, false, &mut dw, &mut db);
    }

    #[test]
    fn forward_adds_the_bias() {
        // x [2, 3] times W^T ([2, 3]) plus b.
        let y = super::forward(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[1.0, 0.0, 0.0, 0.0, 0.0, 1.0], &[0.5, -0.5], 2, 3);
        assert_eq!(y, [1.5, 2.5, 4.5, 5.5]);
    }
}
