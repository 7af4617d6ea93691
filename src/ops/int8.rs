//! int8 dense layers for inference: `y = x W^T + b` with `W` quantized per output channel
//! (symmetric s8, once, when the model is loaded) and `x` per row (asymmetric u8 with a zero
//! point, at every call), products accumulated exactly in s32, dequantization and bias fused in
//! the store:
//! `y[i, j] = b[j] + sx[i] * sw[j] * (sum_k qx[i, k] * qw[j, k] - zx[i] * sum_k qw[j, k])`.
//!
//! With AVX512-VNNI ([`super::precision::has_vnni`]) the products run on `vpdpbusd` (u8 x s8,
//! four per 32-bit lane) in a 6 x 64 register tile; otherwise the same integer sums run in
//! portable code, so both paths give the same values up to the f32 rounding of the dequantization.

use rayon::prelude::*;

use super::util;

/// Rows of the register tile.
const MR: usize = 6;
/// Columns of the register tile and of a packed weight panel.
const NR: usize = 64;
/// Rows of `y` per parallel task.
const MB: usize = 16 * MR;

/// Weights `W` (`n x k`) quantized per row (output channel) to s8.
pub struct QuantW {
    n: usize,
    k: usize,
    /// Per-channel scales: `W[j, :] ~ scale[j] * qw[j, :]`.
    scale: Vec<f32>,
    /// `sum_k qw[j, k]`, for the activations' zero point.
    colsum: Vec<i32>,
    repr: WRepr,
}

enum WRepr {
    /// Panels of [`NR`] channels: the four s8 of `qw[q * NR + j, 4p..4p + 4]` in word
    /// `(q * kq + p) * NR + j`, zero past `n` and `k`.
    Panels(Vec<u32>),
    /// Row-major `n x 4 kq` s8 values, zero past `k` (the portable path).
    Rows(Vec<i8>),
}

impl QuantW {
    /// Quantizes the row-major `w` (`n x k`). Panics unless `w` holds `n * k` values.
    pub fn new(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "int8::QuantW: {} values for {n} x {k}", w.len());
        let kq = k.div_ceil(4);
        let mut rows = vec![0i8; n * kq * 4];
        let mut scale = vec![0f32; n];
        let mut colsum = vec![0i32; n];
        rows.par_chunks_mut((kq * 4).max(1)).zip(scale.par_iter_mut().zip(colsum.par_iter_mut())).enumerate().for_each(
            |(j, (q, (s, sum)))| {
                let row = &w[j * k..(j + 1) * k];
                let amax = row.iter().fold(0f32, |m, &v| m.max(v.abs()));
                *s = if amax > 0.0 && amax.is_finite() { amax / 127.0 } else { 1.0 };
                let inv = 1.0 / *s;
                for (q, &v) in q.iter_mut().zip(row) {
                    *q = (v * inv).round().clamp(-127.0, 127.0) as i8;
                }
                *sum = q.iter().map(|&v| v as i32).sum();
            },
        );
        let repr = if super::precision::has_vnni() {
            let panels = n.div_ceil(NR);
            let mut data = vec![0u32; panels * kq * NR];
            data.par_chunks_mut((kq * NR).max(1)).enumerate().for_each(|(q, panel)| {
                for j in 0..NR.min(n - q * NR) {
                    let row = &rows[(q * NR + j) * kq * 4..][..kq * 4];
                    for (p, b) in row.chunks_exact(4).enumerate() {
                        panel[p * NR + j] = u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8]);
                    }
                }
            });
            WRepr::Panels(data)
        } else {
            WRepr::Rows(rows)
        };
        QuantW { n, k, scale, colsum, repr }
    }

    /// `(n, k)`: output channels and inputs.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }
}

/// Activations `x` (`m x k`) quantized per row to u8 with a zero point.
struct QuantX {
    /// Rows rounded up to [`MR`], each `4 kq` bytes, zero past `k` (and in the padding rows).
    data: Vec<u8>,
    scale: Vec<f32>,
    zero: Vec<i32>,
}

impl QuantX {
    fn new(x: &[f32], m: usize, k: usize) -> Self {
        let kq = k.div_ceil(4);
        let mut data = vec![0u8; m.next_multiple_of(MR) * kq * 4];
        let mut scale = vec![0f32; m];
        let mut zero = vec![0i32; m];
        data.par_chunks_mut((kq * 4).max(1))
            .zip(scale.par_iter_mut().zip(zero.par_iter_mut()))
            .with_min_len(16)
            .enumerate()
            .for_each(|(i, (q, (s, z)))| {
                let (sc, zp) = quantize_row(&x[i * k..(i + 1) * k], q);
                (*s, *z) = (sc, zp);
            });
        QuantX { data, scale, zero }
    }
}

util::simd_fn! {
    /// Quantizes `row` into `q` (u8 with a zero point, the range widened to contain 0); returns
    /// the scale and zero point.
    fn quantize_row(row: &[f32], q: &mut [u8]) -> (f32, i32) {
        let (lo, hi) = row.iter().fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let range = hi - lo;
        let scale = if range > 0.0 && range.is_finite() { range / 255.0 } else { 1.0 };
        let zero = (-lo / scale).round().clamp(0.0, 255.0);
        let inv = 1.0 / scale;
        for (q, &v) in q.iter_mut().zip(row) {
            *q = (v * inv + zero).round().clamp(0.0, 255.0) as u8;
        }
        (scale, zero as i32)
    }
}

util::simd_fn! {
    /// `sum_k a[k] * b[k]` of u8 and s8 values, in i32.
    fn dot_u8_i8(a: &[u8], b: &[i8]) -> i32 {
        let mut lanes = [0i32; 16];
        let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
        let tail: i32 = ca.remainder().iter().zip(cb.remainder()).map(|(&x, &y)| x as i32 * y as i32).sum();
        for (xa, xb) in ca.zip(cb) {
            for ((lane, &x), &y) in lanes.iter_mut().zip(xa).zip(xb) {
                *lane += x as i32 * y as i32;
            }
        }
        lanes.iter().sum::<i32>() + tail
    }
}

/// `y[i, j] += x[i, :] . W[j, :]` (quantized) for row-major `x` (`m x k`) and `y` rows of `n`
/// values `ldc` apart: `y` must already hold the bias. Panics when the sizes do not fit.
pub fn matmul_add(x: &[f32], w: &QuantW, y: &mut [f32], ldc: usize) {
    let (n, k) = (w.n, w.k);
    let m = x.len() / k.max(1);
    assert!(
        x.len() == m * k && n <= ldc && (m == 0 || y.len() >= (m - 1) * ldc + n),
        "int8::matmul_add: x of {} values, W {n} x {k}, y of {} values with row stride {ldc}",
        x.len(),
        y.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    let qx = QuantX::new(x, m, k);
    let kq = k.div_ceil(4);
    y.par_chunks_mut(MB * ldc).enumerate().for_each(|(blk, y_rows)| {
        let i0 = blk * MB;
        let rows = MB.min(m - i0);
        match &w.repr {
            WRepr::Rows(qw) => {
                for r in 0..rows {
                    let i = i0 + r;
                    let a = &qx.data[i * kq * 4..][..kq * 4];
                    let (sx, zx) = (qx.scale[i], qx.zero[i]);
                    for (j, y) in y_rows[r * ldc..r * ldc + n].iter_mut().enumerate() {
                        let acc = dot_u8_i8(a, &qw[j * kq * 4..][..kq * 4]) - zx * w.colsum[j];
                        *y += sx * w.scale[j] * acc as f32;
                    }
                }
            }
            #[cfg(target_arch = "x86_64")]
            WRepr::Panels(panels) => {
                for q in 0..n.div_ceil(NR) {
                    let cols = NR.min(n - q * NR);
                    for g in (0..rows).step_by(MR) {
                        let i = i0 + g;
                        let rows_here = MR.min(rows - g);
                        // SAFETY: `has_vnni` held when `w` was packed (only then is it
                        // `Panels`). `qx.data` holds `mp x 4 kq` bytes with `mp` the rows rounded
                        // up to MR, so rows `i..i + MR` are inside; the panel holds `kq x NR`
                        // words from `q * kq * NR`; the per-row and per-channel vectors are read
                        // for rows `< rows_here` and channels `< cols` only. The tile writes rows
                        // `g..g + rows_here`, columns `q * NR..+cols` of this task's rows of `y`.
                        unsafe {
                            tile(
                                kq,
                                qx.data.as_ptr().add(i * kq * 4).cast(),
                                panels.as_ptr().add(q * kq * NR),
                                y_rows.as_mut_ptr().add(g * ldc + q * NR),
                                ldc,
                                (rows_here, cols),
                                (&qx.scale[i..i + rows_here], &qx.zero[i..i + rows_here]),
                                (&w.scale[q * NR..q * NR + cols], &w.colsum[q * NR..q * NR + cols]),
                            )
                        };
                    }
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            WRepr::Panels(_) => unreachable!("int8: VNNI panels on a CPU without x86-64"),
        }
    });
}

/// `x W^T + b` with the quantized `W` (`out x inp`).
pub fn linear_forward(x: &[f32], w: &QuantW, b: &[f32]) -> Vec<f32> {
    let out = w.n;
    assert_eq!(b.len(), out, "int8::linear_forward: bias of {} values for {out} channels", b.len());
    let rows = x.len() / w.k.max(1);
    let mut y = vec![0f32; rows * out];
    for row in y.chunks_mut(out) {
        row.copy_from_slice(b);
    }
    matmul_add(x, w, &mut y, out);
    y
}

/// One `MR x NR` tile of [`matmul_add`] on `vpdpbusd`: s32 sums over `kq` words of four u8
/// (`a`, row `r` at `a[r * kq..]`) and four s8 (`b`, word `p * NR + j`), then
/// `c[r, j] += sx[r] * sw[j] * (acc - zx[r] * colsum[j])` for `r < rows`, `j < cols`.
///
/// # Safety
/// The CPU must have AVX-512F and AVX512-VNNI; `a` must be valid for reads of `MR * kq` words,
/// `b` of `kq * NR` words and `c` for reads and writes of `c[r * ldc + j]` (`r < rows <= MR`,
/// `j < cols <= NR`), not accessed by another thread during the call; `sx`, `zx` must hold `rows`
/// values and `sw`, `colsum` `cols`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    kq: usize,
    a: *const u32,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    (rows, cols): (usize, usize),
    (sx, zx): (&[f32], &[i32]),
    (sw, colsum): (&[f32], &[i32]),
) {
    use std::arch::x86_64::*;
    const NV: usize = NR / 16;
    let mut acc = [[_mm512_setzero_si512(); NV]; MR];
    for p in 0..kq {
        let mut bv = [_mm512_setzero_si512(); NV];
        for (v, bv) in bv.iter_mut().enumerate() {
            // SAFETY: reads `b[p * NR + v * 16..][..16]`, inside the `kq * NR` words.
            *bv = unsafe { _mm512_loadu_si512(b.add(p * NR + v * 16).cast()) };
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: reads `a[r * kq + p]`, `r < MR` and `p < kq`.
            let av = _mm512_set1_epi32(unsafe { *a.add(r * kq + p) } as i32);
            for (acc, &bv) in acc.iter_mut().zip(&bv) {
                *acc = _mm512_dpbusd_epi32(*acc, av, bv);
            }
        }
    }
    let mut sw_v = [_mm512_setzero_ps(); NV];
    let mut cs_v = [_mm512_setzero_si512(); NV];
    for v in 0..NV {
        let left = cols.saturating_sub(v * 16);
        let m: __mmask16 = if left >= 16 { 0xffff } else { ((1u32 << left) - 1) as u16 };
        // SAFETY: masked loads of `sw[v * 16 + lane]`, `colsum[..]` for lanes below `cols`.
        unsafe {
            sw_v[v] = _mm512_maskz_loadu_ps(m, sw.as_ptr().wrapping_add(v * 16));
            cs_v[v] = _mm512_maskz_loadu_epi32(m, colsum.as_ptr().wrapping_add(v * 16));
        }
    }
    for (r, acc) in acc.iter().enumerate().take(rows) {
        let (s, z) = (_mm512_set1_ps(sx[r]), _mm512_set1_epi32(zx[r]));
        for (v, &acc) in acc.iter().enumerate() {
            let left = cols.saturating_sub(v * 16);
            if left == 0 {
                break;
            }
            let m: __mmask16 = if left >= 16 { 0xffff } else { ((1u32 << left) - 1) as u16 };
            let sums = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, _mm512_mullo_epi32(z, cs_v[v])));
            // SAFETY: reads and writes `c[r * ldc + v * 16 + lane]` only for the lanes in `m`,
            // i.e. columns `< cols`, with `r < rows`.
            unsafe {
                let dst = c.add(r * ldc + v * 16);
                let val = _mm512_fmadd_ps(_mm512_mul_ps(sums, s), sw_v[v], _mm512_maskz_loadu_ps(m, dst));
                _mm512_mask_storeu_ps(dst, m, val);
            }
        }
    }
}
