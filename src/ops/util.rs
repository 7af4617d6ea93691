//! Helpers shared by the fused CPU kernels: dispatch checks, slice access, vectorisable
//! reductions, row-parallel loops with column accumulators and packed-gradient splitting.

use candle_core::{bail, CpuStorage, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Rows per work item in kernels that also reduce over rows. It is fixed (not derived from the
/// thread count) so that column sums are bit-for-bit reproducible on any machine.
const ROW_BLOCK: usize = 32;

/// Defines a kernel function compiled three times: for AVX-512, for AVX2 + FMA and for the x86-64
/// baseline (SSE2 only), and picks the widest the CPU has at run time. The fused kernels are plain
/// loops that the compiler vectorises; this gives them wide registers without making the binary
/// require them. (A closure passed to a `#[target_feature]` function is not reliably inlined, so
/// the body is pasted into each variant.) The body sees a constant `FMA`, true in the variants
/// compiled with fused multiply-add, for [`super::math::madd`]. The body is safe code; the only
/// `unsafe` is the call of a `#[target_feature]` variant, made after the features are detected.
macro_rules! simd_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    #[allow(dead_code)]
                    const FMA: bool = true;
                    $body
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    #[allow(dead_code)]
                    const FMA: bool = true;
                    $body
                }
                if $crate::ops::util::has_avx512() {
                    // SAFETY: calling a `#[target_feature]` function is sound when the CPU has
                    // its features; `has_avx512` detected every feature `avx512` is compiled
                    // for (avx512f/bw/dq/vl, AVX2 and FMA) at run time.
                    return unsafe { avx512($($arg),*) };
                }
                if $crate::ops::util::has_avx2() {
                    // SAFETY: `has_avx2` detected AVX2 and FMA at run time, the features `avx2`
                    // is compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            #[allow(dead_code)]
            const FMA: bool = false;
            $body
        }
    };
}
pub(crate) use simd_fn;

/// Whether the CPU has the AVX-512 subsets the `simd_fn!` kernels are compiled for, and the AVX2
/// and FMA that they are compiled with too (every AVX-512 CPU has them; checked to be exact).
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx512() -> bool {
    has_avx2()
        && std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512dq")
        && std::is_x86_feature_detected!("avx512vl")
}

/// Whether the CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

simd_fn! {
    /// `acc += row`, elementwise.
    pub(crate) fn add_into(acc: &mut [f32], row: &[f32]) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += v;
        }
    }
}

simd_fn! {
    /// `sum_i a[i]^2` in f64.
    pub(crate) fn sum_squares(a: &[f32]) -> f64 {
        sum_f64(a, |x| (x as f64) * (x as f64))
    }
}

/// Elements per work item in purely elementwise kernels.
pub(crate) const ELEM_BLOCK: usize = 4096;

/// True when all tensors are f32 and on the CPU, the first one is non-empty and the fused
/// kernels are chosen ([`super::kernels()`]); otherwise callers fall back to the `reference`
/// implementation.
pub(crate) fn use_fused(tensors: &[&Tensor]) -> bool {
    super::kernels() == super::Kernels::Fused
        && tensors.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
        && tensors.first().is_some_and(|t| t.elem_count() > 0)
}

/// The f32 data of a custom op's CPU inputs, given as `(storage, layout)` pairs in argument
/// order: the common prologue of the fused ops' `cpu_fwd`. Errors, naming the op `op` and the
/// input, on any dtype other than f32 or on a strided layout (the public wrappers call
/// `.contiguous()` before applying an op).
pub(crate) fn f32_inputs<'a, const N: usize>(
    op: &str,
    inputs: [(&'a CpuStorage, &Layout); N],
) -> Result<[&'a [f32]; N]> {
    let mut slices: [&[f32]; N] = [&[]; N];
    for (i, (slice, (storage, layout))) in slices.iter_mut().zip(inputs).enumerate() {
        let CpuStorage::F32(data) = storage else { bail!("{op}: expected an f32 tensor (input {i})") };
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("{op}: expected a contiguous tensor (input {i})")
        };
        *slice = &data[start..end];
    }
    Ok(slices)
}

/// `sum_i f(a[i])` accumulated in f64 over 8 independent lanes, so that the loop vectorises.
#[inline(always)]
pub(crate) fn sum_f64(a: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut lanes = [0f64; 8];
    let chunks = a.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v);
        }
    }
    lanes.iter().sum::<f64>() + tail
}

/// Maximum of `a` (`-inf` if empty) over 8 independent lanes, so that the loop vectorises.
#[inline(always)]
pub(crate) fn max_f32(a: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = a.chunks_exact(8);
    let tail = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(v);
        }
    }
    lanes.iter().fold(tail, |m, &v| m.max(v))
}

/// Dot product `sum_i a[i] * b[i]` accumulated in f64 over 8 independent lanes.
#[inline(always)]
pub(crate) fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    let mut lanes = [0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = (ca.remainder().iter().zip(cb.remainder())).map(|(&x, &y)| x as f64 * y as f64).sum();
    for (xa, xb) in ca.zip(cb) {
        for ((lane, &x), &y) in lanes.iter_mut().zip(xa).zip(xb) {
            *lane += x as f64 * y as f64;
        }
    }
    lanes.iter().sum::<f64>() + tail
}

/// Calls `row_fn(row_index, out_row, acc)` for every row (of length `h`) of `out`, in parallel
/// over fixed blocks of rows. Each block owns a zeroed accumulator of `acc_len` values that
/// `row_fn` adds into (e.g. parameter gradients); the block accumulators are summed in block
/// order and returned, so the result does not depend on the number of threads.
pub(crate) fn par_rows_with_acc<F>(out: &mut [f32], h: usize, acc_len: usize, row_fn: F) -> Vec<f32>
where
    F: Fn(usize, &mut [f32], &mut [f32]) + Sync,
{
    let partials: Vec<Vec<f32>> = out
        .par_chunks_mut(ROW_BLOCK * h)
        .enumerate()
        .map(|(block, rows)| {
            let mut acc = vec![0f32; acc_len];
            for (i, row) in rows.chunks_mut(h).enumerate() {
                row_fn(block * ROW_BLOCK + i, row, &mut acc);
            }
            acc
        })
        .collect();
    sum_in_order(&partials, acc_len)
}

/// Column sums of the rows (of length `h`) of `a`, in fixed row blocks so that the result does
/// not depend on the number of threads.
pub(crate) fn column_sums(a: &[f32], h: usize) -> Vec<f32> {
    let partials: Vec<Vec<f32>> = a
        .par_chunks(ROW_BLOCK * h)
        .map(|rows| {
            let mut acc = vec![0f32; h];
            for row in rows.chunks(h) {
                add_into(&mut acc, row);
            }
            acc
        })
        .collect();
    sum_in_order(&partials, h)
}

/// The elementwise sum of per-block partial results (each of `len` values), added in block order.
fn sum_in_order(partials: &[Vec<f32>], len: usize) -> Vec<f32> {
    let mut total = vec![0f32; len];
    for partial in partials {
        add_into(&mut total, partial);
    }
    total
}

/// Splits a flat buffer holding several gradients back to back into views of the given shapes
/// (no copies: the views share the buffer's storage).
pub(crate) fn split_packed(packed: &Tensor, shapes: &[&Shape]) -> Result<Vec<Tensor>> {
    let mut offset = 0;
    let mut parts = Vec::with_capacity(shapes.len());
    for &shape in shapes {
        let n = shape.elem_count();
        parts.push(packed.narrow(0, offset, n)?.reshape(shape)?);
        offset += n;
    }
    Ok(parts)
}

/// `dst (m x n) = (accumulate ? dst : 0) + scale * lhs (m x k) * rhs (k x n)` with the gemm crate;
/// strides are given as (row, column) in elements.
///
/// # Safety
/// - `dst` must be valid for reads and writes of the `m x n` elements `dst[i * dst_rs + j]`
///   (`i < m`, `j < n`); with `accumulate` false they are only written.
/// - `lhs` must be valid for reads of `lhs[i * lhs_s.0 + p * lhs_s.1]` (`i < m`, `p < k`) and
///   `rhs` of `rhs[p * rhs_s.0 + j * rhs_s.1]` (`p < k`, `j < n`).
/// - The elements written through `dst` must not overlap those read through `lhs` and `rhs`,
///   and no other thread may access them during the call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const f32,
    lhs_s: (usize, usize),
    rhs: *const f32,
    rhs_s: (usize, usize),
    scale: f32,
    parallelism: gemm::Parallelism,
) {
    // SAFETY: `gemm::gemm` (dst := alpha dst + beta lhs rhs, dst read only when `read_dst`) reads
    // and writes exactly the elements this function's contract makes the caller vouch for.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_s.1 as isize,
            lhs_s.0 as isize,
            rhs,
            rhs_s.1 as isize,
            rhs_s.0 as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        )
    }
}
