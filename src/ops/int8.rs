//! int8 dense layers for inference: `y = x W^T + b` with `W` quantized per output channel
//! (symmetric s8, once, when the model is loaded) and `x` per row (asymmetric u8 with a zero
//! point, at every call), products accumulated exactly in s32, dequantization and bias fused in
//! the store:
//! `y[i, j] = b[j] + sx[i] * sw[j] * (sum_k qx[i, k] * qw[j, k] - zx[i] * sum_k qw[j, k])`.
//!
//! Activation columns holding a value above [`OUTLIER`] in magnitude are left out of the
//! quantization and multiplied in f32 (the mixed decomposition of LLM.int8()), so that BERT's few
//! outlier features do not widen the step of every row.
//!
//! With AVX512-VNNI ([`super::precision::has_vnni`]) the products run on `vpdpbusd` (u8 x s8,
//! four per 32-bit lane) in a 6 x 64 register tile; with AVX2 alone
//! ([`super::precision::has_avx2_int`]) on `vpmaddwd` (both widened to s16, two per 32-bit lane,
//! no saturation possible) in a 6 x 16 tile; otherwise in portable code. The sums are exact
//! integers on every path, so all give the same values up to the f32 rounding of the
//! dequantization. With AMX ([`super::amx`]) the VNNI packing, padded to whole tiles (rows to
//! 32, `k` to 64 values), feeds `tdpbusd` in blocks of 32 x 32.

use rayon::prelude::*;

use super::amx::{self, Product, BLOCK, STEP};
use super::util;

/// Rows of the register tile.
const MR: usize = 6;
/// Columns of the register tile and of a packed weight panel.
const NR: usize = 64;
/// Columns of the AVX2 register tile and of its packed weight panel.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const NR2: usize = 16;
/// Rows of `y` per parallel task.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const MB: usize = 16 * MR;

/// Weights `W` (`n x k`) quantized per row (output channel) to s8.
pub struct QuantW {
    n: usize,
    k: usize,
    /// Per-channel scales: `W[j, :] ~ scale[j] * qw[j, :]`.
    scale: Vec<f32>,
    /// `sum_k qw[j, k]`, for the activations' zero point.
    colsum: Vec<i32>,
    /// `W^T` (`k x n`) in f32, for the outlier columns of the activations.
    wt: Vec<f32>,
    repr: WRepr,
}

enum WRepr {
    /// Panels of [`NR`] channels: the four s8 of `qw[q * NR + j, 4p..4p + 4]` in word
    /// `(q * kq + p) * NR + j`, zero past `n` and `k`.
    Panels(Vec<u32>),
    /// For AMX: panels of [`NR`] channels as in `Panels`, `kw` words high (`kq` rounded up to
    /// [`STEP`]).
    Tiles { data: Vec<u32>, kw: usize },
    /// Panels of [`NR2`] channels for `vpmaddwd`: `qw[q * NR2 + j, 2p..2p + 2]` as two s16 in
    /// word `(q * kp + p) * NR2 + j` (`kp = 2 kq`), zero past `n` and `k`.
    Pairs(Vec<u32>),
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
            let kw = if amx::available() { kq.next_multiple_of(STEP) } else { kq };
            let panels = n.div_ceil(NR);
            let mut data = vec![0u32; panels * kw * NR];
            data.par_chunks_mut((kw * NR).max(1)).enumerate().for_each(|(q, panel)| {
                for j in 0..NR.min(n - q * NR) {
                    let row = &rows[(q * NR + j) * kq * 4..][..kq * 4];
                    for (p, b) in row.chunks_exact(4).enumerate() {
                        panel[p * NR + j] = u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8]);
                    }
                }
            });
            if amx::available() {
                WRepr::Tiles { data, kw }
            } else {
                WRepr::Panels(data)
            }
        } else if super::precision::has_avx2_int() {
            let kp = 2 * kq;
            let mut data = vec![0u32; n.div_ceil(NR2) * kp * NR2];
            data.par_chunks_mut((kp * NR2).max(1)).enumerate().for_each(|(q, panel)| {
                for j in 0..NR2.min(n - q * NR2) {
                    let row = &rows[(q * NR2 + j) * kp * 2..][..kp * 2];
                    for (p, b) in row.chunks_exact(2).enumerate() {
                        panel[p * NR2 + j] = (b[0] as i16 as u16 as u32) | ((b[1] as i16 as u16 as u32) << 16);
                    }
                }
            });
            WRepr::Pairs(data)
        } else {
            WRepr::Rows(rows)
        };
        let mut wt = vec![0f32; k * n];
        wt.par_chunks_mut(n.max(1)).enumerate().for_each(|(c, col)| {
            for (j, v) in col.iter_mut().enumerate() {
                *v = w[j * k + c];
            }
        });
        QuantW { n, k, scale, colsum, wt, repr }
    }

    /// `(n, k)`: output channels and inputs.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }
}

/// Activations `x` (`m x k`) quantized per row to u8 with a zero point, stored as the kernel of
/// the weights reads them: rows rounded up to a multiple (of [`MR`], or [`BLOCK`] for AMX), each
/// `4 kw` values (`kw >= k / 4`), zero past `k` (and in the padding rows); bytes, or u16 for the
/// `vpmaddwd` kernel.
struct QuantX<T: Quantum> {
    data: Vec<T>,
    scale: Vec<f32>,
    zero: Vec<i32>,
}

impl<T: Quantum> QuantX<T> {
    /// Quantizes `x`; where `keep` is given, the columns whose `keep` is 0 are quantized as 0
    /// and left out of the rows' ranges.
    fn new(x: &[f32], m: usize, k: usize, keep: Option<&[f32]>) -> Self {
        Self::padded(x, m, k, keep, (MR, k.div_ceil(4)))
    }

    /// [`QuantX::new`] with the rows rounded up to a multiple of `mult`, `kq` words each.
    fn padded(x: &[f32], m: usize, k: usize, keep: Option<&[f32]>, (mult, kq): (usize, usize)) -> Self {
        // The buffer of the previous call on this thread: a fresh allocation of this size would
        // cost page faults on every call. Every value is written below (padding as zeros).
        let mut data = T::scratch().with_borrow_mut(std::mem::take);
        data.resize(m.next_multiple_of(mult) * kq * 4, T::default());
        data[m * kq * 4..].fill(T::default());
        let mut scale = vec![0f32; m];
        let mut zero = vec![0i32; m];
        data.par_chunks_mut((kq * 4).max(1))
            .zip(scale.par_iter_mut().zip(zero.par_iter_mut()))
            .with_min_len(16)
            .enumerate()
            .for_each(|(i, (q, (s, z)))| {
                let (sc, zp) = T::quantize_row(&x[i * k..(i + 1) * k], keep, q);
                q[k..].fill(T::default());
                (*s, *z) = (sc, zp);
            });
        QuantX { data, scale, zero }
    }
}

impl<T: Quantum> Drop for QuantX<T> {
    fn drop(&mut self) {
        T::scratch().set(std::mem::take(&mut self.data));
    }
}

/// An element type of quantized activations (u8 values, held as `u8` or `u16`).
trait Quantum: Copy + Default + Send + Sync + 'static {
    /// Quantizes `row` into `q`; returns the scale and zero point.
    fn quantize_row(row: &[f32], keep: Option<&[f32]>, q: &mut [Self]) -> (f32, i32);
    /// This thread's spare activation buffer.
    fn scratch() -> &'static std::thread::LocalKey<std::cell::RefCell<Vec<Self>>>;
}

thread_local! {
    static SCRATCH_U8: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    static SCRATCH_U16: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Quantum for u8 {
    fn quantize_row(row: &[f32], keep: Option<&[f32]>, q: &mut [u8]) -> (f32, i32) {
        quantize_row_u8(row, keep, q)
    }
    fn scratch() -> &'static std::thread::LocalKey<std::cell::RefCell<Vec<u8>>> {
        &SCRATCH_U8
    }
}

impl Quantum for u16 {
    fn quantize_row(row: &[f32], keep: Option<&[f32]>, q: &mut [u16]) -> (f32, i32) {
        quantize_row_u16(row, keep, q)
    }
    fn scratch() -> &'static std::thread::LocalKey<std::cell::RefCell<Vec<u16>>> {
        &SCRATCH_U16
    }
}

/// The scale and zero point of `row` (its range widened to contain 0, over 255 steps).
#[inline(always)]
fn row_scale(row: impl Iterator<Item = f32>) -> (f32, f32) {
    let (lo, hi) = row.fold((0f32, 0f32), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let range = hi - lo;
    let scale = if range > 0.0 && range.is_finite() { range / 255.0 } else { 1.0 };
    (scale, (-lo / scale).round().clamp(0.0, 255.0))
}

/// Adding this to a value in `0..=255` rounds it to an integer (ties to even) held in the low bits
/// of the sum's mantissa: a conversion without the float-to-int instructions, which the compiler
/// leaves unvectorized because of Rust's saturating `as` semantics.
const ROUND: f32 = 12_582_912.0;

/// Quantizes `row` (times `keep`, where given) into `q`: `round(v / scale) + zero`, clamped to
/// `0..=255` (NaN to 0); returns the scale and zero point.
#[inline(always)]
#[allow(clippy::manual_clamp)] // `max` then `min` send NaN to 0, where `clamp` would keep it
fn quantize_into<T>(row: &[f32], keep: Option<&[f32]>, q: &mut [T], to: impl Fn(u8) -> T) -> (f32, i32) {
    let quantize = |v: f32, inv: f32, zero: f32| to(((v * inv + zero).max(0.0).min(255.0) + ROUND).to_bits() as u8);
    match keep {
        None => {
            let (scale, zero) = row_scale(row.iter().copied());
            let inv = 1.0 / scale;
            for (q, &v) in q.iter_mut().zip(row) {
                *q = quantize(v, inv, zero);
            }
            (scale, zero as i32)
        }
        Some(keep) => {
            let (scale, zero) = row_scale(row.iter().zip(keep).map(|(&v, &m)| v * m));
            let inv = 1.0 / scale;
            for ((q, &v), &m) in q.iter_mut().zip(row).zip(keep) {
                *q = quantize(v * m, inv, zero);
            }
            (scale, zero as i32)
        }
    }
}

util::simd_fn! {
    /// Quantizes `row` into `q` (u8 with a zero point); returns the scale and zero point.
    fn quantize_row_u8(row: &[f32], keep: Option<&[f32]>, q: &mut [u8]) -> (f32, i32) {
        quantize_into(row, keep, q, |v| v)
    }
}

util::simd_fn! {
    /// [`quantize_row_u8`] with the values widened to u16.
    fn quantize_row_u16(row: &[f32], keep: Option<&[f32]>, q: &mut [u16]) -> (f32, i32) {
        quantize_into(row, keep, q, u16::from)
    }
}

util::simd_fn! {
    /// `amax[c] = max(amax[c], max_i |x[i, c]|)` over the rows of `x` (`amax.len()` columns).
    fn column_absmax(x: &[f32], amax: &mut [f32]) {
        for row in x.chunks_exact(amax.len()) {
            for (a, &v) in amax.iter_mut().zip(row) {
                *a = a.max(v.abs());
            }
        }
    }
}

util::simd_fn! {
    /// `y += a * w`, elementwise.
    fn axpy(a: f32, w: &[f32], y: &mut [f32]) {
        for (y, &w) in y.iter_mut().zip(w) {
            *y += a * w;
        }
    }
}

/// Activations of magnitude above this are outliers: their columns are multiplied in f32 (as in
/// LLM.int8()), so that they do not widen the quantization step of the other values of their rows.
/// LLM.int8() uses 6; 4 brings the int8 logits 11-15% closer to f32 on fine-tuned minilm-l6
/// classifiers (measured on SST-2 and MRPC training rows) for about 2% more time; 3 and lower cost
/// 10% to 2x (README, "Precision").
pub const OUTLIER: f32 = 4.0;

/// The columns of `x` (`m x k`) holding a value of magnitude above [`OUTLIER`].
fn outlier_columns(x: &[f32], k: usize) -> Vec<usize> {
    let amax = x
        .par_chunks(k * 64)
        .fold(
            || vec![0f32; k],
            |mut amax, rows| {
                column_absmax(rows, &mut amax);
                amax
            },
        )
        .reduce(|| vec![0f32; k], |a, b| a.iter().zip(&b).map(|(x, y)| x.max(*y)).collect());
    amax.iter().enumerate().filter(|(_, &a)| a > OUTLIER || !a.is_finite()).map(|(c, _)| c).collect()
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
    let outliers = outlier_columns(x, k);
    let keep: Option<Vec<f32>> = (!outliers.is_empty()).then(|| {
        let mut keep = vec![1f32; k];
        outliers.iter().for_each(|&c| keep[c] = 0.0);
        keep
    });
    let keep = keep.as_deref();
    let kq = k.div_ceil(4);
    match &w.repr {
        WRepr::Rows(qw) => {
            let qx = QuantX::<u8>::new(x, m, k, keep);
            y.par_chunks_mut(ldc).take(m).enumerate().with_min_len(MR).for_each(|(i, y)| {
                let a = &qx.data[i * kq * 4..][..kq * 4];
                let (sx, zx) = (qx.scale[i], qx.zero[i]);
                for (j, y) in y[..n].iter_mut().enumerate() {
                    let acc = dot_u8_i8(a, &qw[j * kq * 4..][..kq * 4]) - zx * w.colsum[j];
                    *y += sx * w.scale[j] * acc as f32;
                }
            });
        }
        #[cfg(target_arch = "x86_64")]
        WRepr::Panels(panels) => {
            // SAFETY: `has_vnni` held when `w` was packed (only then is it `Panels`).
            unsafe { panel_matmul(&QuantX::<u8>::new(x, m, k, keep), w, panels, NR, tile, y, ldc) }
        }
        #[cfg(target_arch = "x86_64")]
        WRepr::Pairs(panels) => {
            // SAFETY: `has_avx2_int` held when `w` was packed (only then is it `Pairs`).
            unsafe { panel_matmul(&QuantX::<u16>::new(x, m, k, keep), w, panels, NR2, tile_avx2, y, ldc) }
        }
        #[cfg(target_arch = "x86_64")]
        WRepr::Tiles { data, kw } => {
            let qx = QuantX::<u8>::padded(x, m, k, keep, (BLOCK, *kw));
            // SAFETY: `amx::available` held when `w` was packed (only then is it `Tiles`); `qx`
            // is padded to whole blocks of `kw` words, as the panels.
            unsafe { tile_matmul(&qx, w, data, *kw, y, ldc) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        WRepr::Panels(_) | WRepr::Pairs(_) | WRepr::Tiles { .. } => {
            unreachable!("int8: x86-64 panels on another CPU")
        }
    }
    if !outliers.is_empty() {
        y.par_chunks_mut(ldc).take(m).enumerate().with_min_len(MR).for_each(|(i, y)| {
            for &c in &outliers {
                axpy(x[i * k + c], &w.wt[c * n..(c + 1) * n], &mut y[..n]);
            }
        });
    }
}

/// A register-tile kernel: [`tile`] (VNNI) or [`tile_avx2`], with the contract they state.
#[cfg(target_arch = "x86_64")]
type TileKernel =
    unsafe fn(usize, *const u32, *const u32, *mut f32, usize, (usize, usize), (&[f32], &[i32]), (&[f32], &[i32]));

/// `y += x W^T` for the quantized `qx` (`m` rows) and `W`'s `panels` of `nr` channels, by
/// `kernel` on every tile of at most [`MR`] rows and `nr` columns, in parallel blocks of [`MB`]
/// rows. A row of `qx` and a panel row are `words = 4 kq * size_of::<T>() / 4` 32-bit words.
///
/// # Safety
/// The CPU must have the features of `kernel`, and `panels` must be `W` packed for it: `nr`
/// channels per panel, `words` words per panel row.
#[cfg(target_arch = "x86_64")]
unsafe fn panel_matmul<T: Quantum>(
    qx: &QuantX<T>,
    w: &QuantW,
    panels: &[u32],
    nr: usize,
    kernel: TileKernel,
    y: &mut [f32],
    ldc: usize,
) {
    let (m, n) = (qx.scale.len(), w.n);
    let row = w.k.div_ceil(4) * 4;
    let words = row * std::mem::size_of::<T>() / 4;
    y.par_chunks_mut(MB * ldc).enumerate().for_each(|(blk, y_rows)| {
        let i0 = blk * MB;
        let rows = MB.min(m - i0);
        for q in 0..n.div_ceil(nr) {
            let cols = nr.min(n - q * nr);
            for g in (0..rows).step_by(MR) {
                let (i, rows) = (i0 + g, MR.min(rows - g));
                // SAFETY: the caller vouches for the CPU and the packing. `qx.data` holds the
                // rows rounded up to MR, `row` values each, so rows `i..i + MR` are inside; the
                // panel holds `words x nr` words from `q * words * nr`; the per-row and
                // per-channel vectors are read for rows `< rows` and channels `< cols` only; the
                // tile writes rows `g..g + rows`, columns `q * nr..+cols` of this task's rows.
                unsafe {
                    kernel(
                        words,
                        qx.data.as_ptr().add(i * row).cast(),
                        panels.as_ptr().add(q * words * nr),
                        y_rows[g * ldc + q * nr..].as_mut_ptr(),
                        ldc,
                        (rows, cols),
                        (&qx.scale[i..i + rows], &qx.zero[i..i + rows]),
                        (&w.scale[q * nr..q * nr + cols], &w.colsum[q * nr..q * nr + cols]),
                    )
                };
            }
        }
    });
}

/// [`panel_matmul`] on AMX: `y += x W^T` by [`BLOCK`] x [`BLOCK`] blocks of `tdpbusd`.
///
/// # Safety
/// [`amx::available`] must hold; `qx` must hold its rows rounded up to [`BLOCK`], `4 kw` bytes
/// each, and `panels` be `W` in panels of [`NR`] channels, `kw` words high.
#[cfg(target_arch = "x86_64")]
unsafe fn tile_matmul(qx: &QuantX<u8>, w: &QuantW, panels: &[u32], kw: usize, y: &mut [f32], ldc: usize) {
    let (m, n) = (qx.scale.len(), w.n);
    // SAFETY: the caller vouches for AMX and the padding; tile loads need no alignment, so the
    // bytes of a row are read as words of four u8. The store writes the `rows x cols` block it
    // is given and reads the per-row and per-channel vectors for those rows and channels.
    unsafe {
        amx::gemm_blocks(
            Product::U8S8,
            kw,
            |i| qx.data[4 * i * kw..].as_ptr().cast(),
            (panels, NR),
            (y, ldc),
            (m, n),
            |sums, dst, (i, j0), (rows, cols)| {
                store_block(
                    sums,
                    dst,
                    ldc,
                    (rows, cols),
                    (&qx.scale[i..i + rows], &qx.zero[i..i + rows]),
                    (&w.scale[j0..j0 + cols], &w.colsum[j0..j0 + cols]),
                )
            },
        )
    }
}

/// `c[r, j] += sx[r] * sw[j] * (sums[r * BLOCK + j] - zx[r] * colsum[j])` for `r < rows`,
/// `j < cols` (`sums` holds i32 bits).
///
/// # Safety
/// The CPU must have AVX-512F; `c` must be valid for reads and writes of `c[r * ldc + j]`
/// (`r < rows <= BLOCK`, `j < cols <= BLOCK`), not accessed by another thread during the call;
/// `sx`, `zx` must hold `rows` values and `sw`, `colsum` `cols`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn store_block(
    sums: &[u32; BLOCK * BLOCK],
    c: *mut f32,
    ldc: usize,
    (rows, cols): (usize, usize),
    (sx, zx): (&[f32], &[i32]),
    (sw, colsum): (&[f32], &[i32]),
) {
    use std::arch::x86_64::*;
    for r in 0..rows {
        let (s, z) = (_mm512_set1_ps(sx[r]), _mm512_set1_epi32(zx[r]));
        for v in 0..BLOCK / 16 {
            let left = cols.saturating_sub(v * 16);
            if left == 0 {
                break;
            }
            let m: __mmask16 = if left >= 16 { 0xffff } else { ((1u32 << left) - 1) as u16 };
            // SAFETY: `sums` holds BLOCK x BLOCK words, read at row `r` columns `v * 16..+16`;
            // `sw`, `colsum` and `c[r * ldc + v * 16 + lane]` are touched only for the lanes in
            // `m`, i.e. columns `< cols`, with `r < rows`.
            unsafe {
                let acc = _mm512_loadu_si512(sums.as_ptr().add(r * BLOCK + v * 16).cast());
                let sw = _mm512_maskz_loadu_ps(m, sw.as_ptr().wrapping_add(v * 16));
                let cs = _mm512_maskz_loadu_epi32(m, colsum.as_ptr().wrapping_add(v * 16));
                let exact = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, _mm512_mullo_epi32(z, cs)));
                let dst = c.add(r * ldc + v * 16);
                let val = _mm512_fmadd_ps(_mm512_mul_ps(exact, s), sw, _mm512_maskz_loadu_ps(m, dst));
                _mm512_mask_storeu_ps(dst, m, val);
            }
        }
    }
}

/// `x W^T + b` with the quantized `W` (`out x inp`).
pub fn linear_forward(x: &[f32], w: &QuantW, b: &[f32]) -> Vec<f32> {
    let out = w.n;
    assert_eq!(b.len(), out, "int8::linear_forward: bias of {} values for {out} channels", b.len());
    let rows = x.len() / w.k.max(1);
    let mut y = b.repeat(rows);
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

/// One `MR x NR2` tile of [`matmul_add`] on AVX2 `vpmaddwd`: s32 sums over `kp` words of two
/// u16 (`a`, row `r` at `a[r * kp..]`) and two s16 (`b`, word `p * NR2 + j`), then
/// `c[r, j] += sx[r] * sw[j] * (acc - zx[r] * colsum[j])` for `r < rows`, `j < cols`.
/// Every pair sum is at most `2 * 255 * 127` in magnitude, so no lane saturates.
///
/// # Safety
/// The CPU must have AVX2; `a` must be valid for reads of `MR * kp` words, `b` of `kp * NR2`
/// words and `c` for reads and writes of `c[r * ldc + j]` (`r < rows <= MR`, `j < cols <= NR2`),
/// not accessed by another thread during the call; `sx`, `zx` must hold `rows` values and `sw`,
/// `colsum` `cols`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx2(
    kp: usize,
    a: *const u32,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    (rows, cols): (usize, usize),
    (sx, zx): (&[f32], &[i32]),
    (sw, colsum): (&[f32], &[i32]),
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_si256(); 2]; MR];
    for p in 0..kp {
        // SAFETY: reads `b[p * NR2..][..16]`, inside the `kp * NR2` words.
        let (b0, b1) =
            unsafe { (_mm256_loadu_si256(b.add(p * NR2).cast()), _mm256_loadu_si256(b.add(p * NR2 + 8).cast())) };
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: reads `a[r * kp + p]`, `r < MR` and `p < kp`.
            let av = _mm256_set1_epi32(unsafe { *a.add(r * kp + p) } as i32);
            acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(av, b0));
            acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(av, b1));
        }
    }
    let (mut sw_l, mut cs_l) = ([0f32; NR2], [0i32; NR2]);
    sw_l[..cols].copy_from_slice(sw);
    cs_l[..cols].copy_from_slice(colsum);
    for (r, acc) in acc.iter().enumerate().take(rows) {
        let mut out = [0f32; NR2];
        for (v, &acc) in acc.iter().enumerate() {
            // SAFETY: `out`, `sw_l` and `cs_l` hold NR2 = 16 values, read and written at `v * 8..+8`.
            unsafe {
                let cs = _mm256_loadu_si256(cs_l.as_ptr().add(v * 8).cast());
                let sums = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc, _mm256_mullo_epi32(_mm256_set1_epi32(zx[r]), cs)));
                let scaled = _mm256_mul_ps(
                    _mm256_mul_ps(sums, _mm256_set1_ps(sx[r])),
                    _mm256_loadu_ps(sw_l.as_ptr().add(v * 8)),
                );
                _mm256_storeu_ps(out.as_mut_ptr().add(v * 8), scaled);
            }
        }
        for (j, &o) in out.iter().enumerate().take(cols) {
            // SAFETY: `r < rows` and `j < cols`: inside the tile the caller lent.
            unsafe { *c.add(r * ldc + j) += o };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row spanning 0..=255 has scale 1 and zero point 0: its values quantize to themselves
    /// rounded half to even, NaN to 0, the same as u8 and as u16.
    #[test]
    fn activations_round_half_to_even() {
        let row = [0.0, 255.0, 0.5, 1.5, 2.5, 254.5, f32::NAN, 127.49, 127.51, 3.0];
        let want = [0u8, 255, 0, 2, 2, 254, 0, 127, 128, 3];
        let mut q = [9u8; 10];
        assert_eq!(quantize_row_u8(&row, None, &mut q), (1.0, 0));
        assert_eq!(q, want);
        let mut q16 = [9u16; 10];
        let keep = [1f32; 10];
        assert_eq!(quantize_row_u16(&row, Some(&keep), &mut q16), (1.0, 0));
        assert_eq!(q16, want.map(u16::from));
    }
}
