//! bf16 matrix products with f32 accumulation: `C (+)= alpha * A B` where `A` and `B` are f32
//! matrices rounded to bf16 (nearest even) when they are packed.
//!
//! With AVX512-BF16 ([`super::precision::has_bf16`]) the operands are packed as pairs of bf16 in
//! one 32-bit word (`A` row by row, `B` in panels of [`NR`] columns) and a 6 x 64 register tile
//! accumulates `vdpbf16ps` products; rows are split over the rayon threads. Otherwise (or with
//! `EASYNLP_CPU_FEATURES=portable`) the operands are rounded to bf16 values kept as f32 and the
//! product runs in f32 (the `gemm` crate): every product of two bf16 values is exact in f32, so
//! the two paths differ only in the order of the f32 additions.

use gemm::Parallelism;
use rayon::prelude::*;

use super::amx::{self, Product, BLOCK, STEP};
use super::util;

/// Rows of the register tile.
const MR: usize = 6;
/// Columns of the register tile and of a packed `B` panel (4 vectors of 16).
pub(crate) const NR: usize = 64;
/// k pairs per cache block.
const KCP: usize = 128;
/// Rows of `C` per parallel task.
const MB: usize = 16 * MR;

/// f32 to bf16 bits, rounded to nearest even; NaN stays a (quiet) NaN.
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    (if x.is_nan() { (b >> 16) | 0x40 } else { rounded }) as u16
}

/// bf16 bits to f32 (exact).
#[inline(always)]
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// `x` rounded to the nearest bf16 value (ties to even), as f32.
#[inline(always)]
pub fn round(x: f32) -> f32 {
    from_bf16(to_bf16(x))
}

/// Two values as bf16 in one word, `lo` in the low half (the operand order of `vdpbf16ps`).
#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    to_bf16(lo) as u32 | (to_bf16(hi) as u32) << 16
}

/// A strided f32 matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    /// The values.
    pub data: &'a [f32],
    /// Rows and columns.
    pub dims: (usize, usize),
    /// Row and column strides, in elements.
    pub strides: (usize, usize),
}

impl<'a> View<'a> {
    /// A row-major `rows x cols` matrix.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        View { data, dims: (rows, cols), strides: (cols, 1) }
    }

    /// The transpose of a row-major `rows x cols` matrix (a `cols x rows` view).
    pub fn transposed(data: &'a [f32], rows: usize, cols: usize) -> Self {
        View { data, dims: (cols, rows), strides: (1, cols) }
    }

    /// Panics unless every element lies inside `data`.
    fn check(&self, what: &str) {
        let (r, c) = self.dims;
        let last = if r == 0 || c == 0 { 0 } else { (r - 1) * self.strides.0 + (c - 1) * self.strides.1 + 1 };
        assert!(
            last <= self.data.len(),
            "bf16 {what}: a {r} x {c} view with strides {:?} needs {last} values, has {}",
            self.strides,
            self.data.len()
        );
    }

    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.strides.0 + j * self.strides.1]
    }

    /// Row-major copy rounded to bf16 values.
    fn rounded(&self) -> Vec<f32> {
        let (r, c) = self.dims;
        let mut out = vec![0f32; r * c];
        out.par_chunks_mut(c.max(1)).with_min_len(16).enumerate().for_each(|(i, row)| {
            if self.strides.1 == 1 {
                round_into(row, &self.data[i * self.strides.0..][..c]);
            } else {
                for (j, o) in row.iter_mut().enumerate() {
                    *o = round(self.at(i, j));
                }
            }
        });
        out
    }
}

util::simd_fn! {
    /// `dst[i] = round(src[i])`.
    pub(crate) fn round_into(dst: &mut [f32], src: &[f32]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = round(s);
        }
    }
}

util::simd_fn! {
    /// `x[i] = round(x[i])`.
    pub(crate) fn round_in_place(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = round(*v);
        }
    }
}

/// `x` rounded to bf16 values (as f32), in parallel.
pub(crate) fn rounded(x: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(1 << 14).zip(x.par_chunks(1 << 14)).for_each(|(o, x)| round_into(o, x));
    out
}

util::simd_fn! {
    /// `dst[p] = pair(src[2p], src[2p + 1])` (0 past the end of an odd-length `src`).
    fn pairs_of_row(dst: &mut [u32], src: &[f32]) {
        let full = src.len() / 2;
        for (d, s) in dst[..full].iter_mut().zip(src.chunks_exact(2)) {
            *d = pair(s[0], s[1]);
        }
        if src.len() % 2 == 1 {
            dst[full] = pair(src[src.len() - 1], 0.0);
        }
    }
}

util::simd_fn! {
    /// `dst[j] = pair(lo[j], hi[j])`.
    fn pairs_of_two_rows(dst: &mut [u32], lo: &[f32], hi: &[f32]) {
        for ((d, &l), &h) in dst.iter_mut().zip(lo).zip(hi) {
            *d = pair(l, h);
        }
    }
}

/// The left operand, packed for [`gemm`].
pub struct PackedA {
    m: usize,
    k: usize,
    repr: ARepr,
}

enum ARepr {
    /// `m` rounded up to [`MR`] rows of `k / 2` (rounded up) bf16 pairs: pair `(i, p)` at
    /// `data[i * rs + p * cs]`, zero past `m` and `k`.
    Pairs { data: Vec<u32>, rs: usize, cs: usize },
    /// For AMX: `m` rounded up to [`BLOCK`] rows of `kw` pairs (`k / 2` rounded up to [`STEP`]),
    /// pair `(i, p)` at `data[i * kw + p]`, zero past `m` and `k`.
    Tiles { data: Vec<u32>, kw: usize },
    /// Row-major `m x k` values rounded to bf16 (the portable path).
    Rounded(Vec<f32>),
}

impl PackedA {
    /// Packs (rounds) `a` (`m x k`).
    pub fn pack(a: View) -> Self {
        a.check("A");
        let (m, k) = a.dims;
        if !super::precision::has_bf16() {
            return PackedA { m, k, repr: ARepr::Rounded(a.rounded()) };
        }
        if amx::available() {
            return PackedA { m, k, repr: Self::tiles(a) };
        }
        let (kp, mp) = (k.div_ceil(2), m.next_multiple_of(MR));
        let mut data = vec![0u32; mp * kp];
        if a.strides.0 == 1 && a.strides.1 != 1 {
            // Columns contiguous (a transposed row-major matrix): pairs of two source rows.
            let cs = a.strides.1;
            data.par_chunks_mut(mp).with_min_len(8).enumerate().for_each(|(p, out)| {
                let lo = &a.data[2 * p * cs..][..m];
                if 2 * p + 1 < k {
                    pairs_of_two_rows(&mut out[..m], lo, &a.data[(2 * p + 1) * cs..][..m]);
                } else {
                    pairs_of_two_rows(&mut out[..m], lo, &vec![0.0; m]);
                }
            });
            return PackedA { m, k, repr: ARepr::Pairs { data, rs: 1, cs: mp } };
        }
        data.par_chunks_mut(kp.max(1)).take(m).with_min_len(16).enumerate().for_each(|(i, out)| {
            if a.strides.1 == 1 {
                pairs_of_row(out, &a.data[i * a.strides.0..][..k]);
            } else {
                for (p, o) in out.iter_mut().enumerate() {
                    let hi = if 2 * p + 1 < k { a.at(i, 2 * p + 1) } else { 0.0 };
                    *o = pair(a.at(i, 2 * p), hi);
                }
            }
        });
        PackedA { m, k, repr: ARepr::Pairs { data, rs: kp, cs: 1 } }
    }

    /// The AMX packing of `a`: whole tiles of row-major pairs.
    fn tiles(a: View) -> ARepr {
        let (m, k) = a.dims;
        let kp = k.div_ceil(2);
        let kw = kp.next_multiple_of(STEP);
        let mut data = vec![0u32; m.next_multiple_of(BLOCK) * kw];
        if a.strides.0 == 1 && a.strides.1 != 1 {
            // Columns contiguous (a transposed row-major matrix): 16 rows at a time, each pair
            // column from two source rows.
            let cs = a.strides.1;
            let zeros = [0f32; 16];
            data.par_chunks_mut(16 * kw).take(m.div_ceil(16)).enumerate().for_each(|(blk, out)| {
                let (i0, rows) = (16 * blk, 16.min(m - 16 * blk));
                let mut pairs = [0u32; 16];
                for p in 0..kp {
                    let lo = &a.data[2 * p * cs + i0..][..rows];
                    let hi = if 2 * p + 1 < k { &a.data[(2 * p + 1) * cs + i0..][..rows] } else { &zeros[..rows] };
                    pairs_of_two_rows(&mut pairs[..rows], lo, hi);
                    for (r, &w) in pairs[..rows].iter().enumerate() {
                        out[r * kw + p] = w;
                    }
                }
            });
        } else {
            data.par_chunks_mut(kw).take(m).with_min_len(16).enumerate().for_each(|(i, out)| {
                if a.strides.1 == 1 {
                    pairs_of_row(&mut out[..kp], &a.data[i * a.strides.0..][..k]);
                } else {
                    for (p, o) in out[..kp].iter_mut().enumerate() {
                        let hi = if 2 * p + 1 < k { a.at(i, 2 * p + 1) } else { 0.0 };
                        *o = pair(a.at(i, 2 * p), hi);
                    }
                }
            });
        }
        ARepr::Tiles { data, kw }
    }
}

/// The right operand, packed for [`gemm`].
pub struct PackedB {
    k: usize,
    n: usize,
    repr: BRepr,
}

enum BRepr {
    /// Panels of [`NR`] columns, `kw` pair rows each: pair `p` of column `q * NR + j` at
    /// `data[(q * kw + p) * NR + j]`, zero past `n` and `k`; `kw` is `k / 2` rounded up, and for
    /// AMX further up to [`STEP`].
    Panels { data: Vec<u32>, kw: usize },
    /// Row-major `k x n` values rounded to bf16 (the portable path).
    Rounded(Vec<f32>),
}

impl PackedB {
    /// Packs (rounds) `b` (`k x n`).
    pub fn pack(b: View) -> Self {
        b.check("B");
        let (k, n) = b.dims;
        if !super::precision::has_bf16() {
            return PackedB { k, n, repr: BRepr::Rounded(b.rounded()) };
        }
        let kp = k.div_ceil(2);
        let kw = if amx::available() { kp.next_multiple_of(STEP) } else { kp };
        let panels = n.div_ceil(NR);
        let mut data = vec![0u32; panels * kw * NR];
        data.par_chunks_mut((kw * NR).max(1)).enumerate().for_each(|(q, panel)| {
            let (j0, width) = (q * NR, NR.min(n - q * NR));
            if b.strides.1 == 1 {
                // Rows contiguous: each pair row from two source rows.
                let zeros = vec![0f32; width];
                for (p, out) in panel.chunks_exact_mut(NR).enumerate().take(kp) {
                    let lo = &b.data[2 * p * b.strides.0 + j0..][..width];
                    let hi =
                        if 2 * p + 1 < k { &b.data[(2 * p + 1) * b.strides.0 + j0..][..width] } else { &zeros[..] };
                    pairs_of_two_rows(&mut out[..width], lo, hi);
                }
            } else {
                // Columns (e.g. W^T of a row-major W): each column's pairs in turn.
                let mut col = vec![0u32; kp];
                for j in 0..width {
                    if b.strides.0 == 1 {
                        pairs_of_row(&mut col, &b.data[(j0 + j) * b.strides.1..][..k]);
                    } else {
                        for (p, c) in col.iter_mut().enumerate() {
                            let hi = if 2 * p + 1 < k { b.at(2 * p + 1, j0 + j) } else { 0.0 };
                            *c = pair(b.at(2 * p, j0 + j), hi);
                        }
                    }
                    for (p, &c) in col.iter().enumerate() {
                        panel[p * NR + j] = c;
                    }
                }
            }
        });
        PackedB { k, n, repr: BRepr::Panels { data, kw } }
    }

    /// Packs `W^T` for a row-major `W` (`out x inp`): the weight operand of `x W^T`.
    pub fn weight_t(w: &[f32], out: usize, inp: usize) -> Self {
        Self::pack(View::transposed(w, out, inp))
    }

    /// `k x n`.
    pub fn dims(&self) -> (usize, usize) {
        (self.k, self.n)
    }
}

/// `c = (accumulate ? c : 0) + alpha * A B` for `c` of `m` rows of `n` values `ldc` apart (`A`
/// is `m x k`, `B` `k x n`). Panics when the sizes do not fit.
pub fn gemm(a: &PackedA, b: &PackedB, c: &mut [f32], ldc: usize, accumulate: bool, alpha: f32) {
    let (m, n, k) = (a.m, b.n, a.k);
    assert!(
        a.k == b.k && n <= ldc && (m == 0 || c.len() >= (m - 1) * ldc + n),
        "bf16::gemm: A {m} x {}, B {} x {n} and C of {} values with row stride {ldc} do not fit",
        a.k,
        b.k,
        c.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    match (&a.repr, &b.repr) {
        (ARepr::Rounded(av), BRepr::Rounded(bv)) => {
            if k == 0 {
                if !accumulate {
                    c.chunks_mut(ldc).for_each(|row| row[..n].fill(0.0));
                }
                return;
            }
            // SAFETY: `c` holds `m` rows of `n` values `ldc` apart (asserted), `av` is `m x k`
            // and `bv` `k x n` row-major (built so by `rounded`); `c` is a unique borrow, so it
            // overlaps neither.
            unsafe {
                util::matmul(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    ldc,
                    accumulate,
                    av.as_ptr(),
                    (k, 1),
                    bv.as_ptr(),
                    (n, 1),
                    alpha,
                    Parallelism::Rayon(rayon::current_num_threads()),
                )
            };
        }
        #[cfg(target_arch = "x86_64")]
        (ARepr::Pairs { data, rs, cs }, BRepr::Panels { data: panels, kw }) => {
            let kp = *kw;
            c.par_chunks_mut(MB * ldc).enumerate().for_each(|(blk, c_rows)| {
                let i0 = blk * MB;
                let rows = MB.min(m - i0);
                for kc in (0..kp.max(1)).step_by(KCP) {
                    let klen = KCP.min(kp - kc.min(kp));
                    let load_c = accumulate || kc > 0;
                    for q in 0..n.div_ceil(NR) {
                        let cols = NR.min(n - q * NR);
                        for g in (0..rows).step_by(MR) {
                            let a_off = (i0 + g) * rs + kc * cs;
                            let b_off = (q * kp + kc) * NR;
                            // SAFETY: `has_bf16` held when the operands were packed (only then
                            // are they `Pairs` / `Panels`). A holds `mp x kp` pairs (`mp` the
                            // rows rounded up to MR) at strides (rs, cs): rows `i0 + g..+MR`
                            // (< mp) and pairs `kc..kc + klen` (<= kp) are inside; the panel
                            // holds `kp x NR` words from `q * kp * NR`. The tile writes rows
                            // `g..g + min(MR, rows - g)` and columns `q * NR..+cols` of this
                            // task's own rows of `c` (row stride ldc; the chunk holds them as
                            // `c` holds `(m - 1) * ldc + n` values).
                            unsafe {
                                tile(
                                    klen,
                                    data.as_ptr().add(a_off),
                                    (*rs, *cs),
                                    panels.as_ptr().add(b_off),
                                    c_rows.as_mut_ptr().add(g * ldc + q * NR),
                                    ldc,
                                    (MR.min(rows - g), cols),
                                    alpha,
                                    load_c,
                                )
                            };
                        }
                    }
                }
            });
        }
        #[cfg(target_arch = "x86_64")]
        (ARepr::Tiles { data, kw }, BRepr::Panels { data: panels, kw: kwb }) => {
            assert_eq!(kw, kwb, "bf16::gemm: A and B padded differently");
            // SAFETY: `amx::available` held when the operands were packed (only then are they
            // `Tiles`); A holds its rows rounded up to BLOCK, `kw` words each; the panels are
            // NR (a multiple of BLOCK) wide and `kw` high; `c` holds `m` rows `ldc` apart
            // (asserted). The store writes the `rows x cols` block it is given.
            unsafe {
                amx::gemm_blocks(
                    Product::Bf16,
                    *kw,
                    |i| data[i * kw..].as_ptr(),
                    (panels, NR),
                    (c, ldc),
                    (m, n),
                    |sums, dst, _, dims| store_block(sums, dst, ldc, dims, alpha, accumulate),
                )
            };
        }
        _ => unreachable!("bf16::gemm: operands packed for different kernel paths"),
    }
}

/// `x W^T + b` for row-major `x` (`rows x inp`) with the packed weight `W^T`, bias `b` (`out`).
pub fn linear_forward(x: &[f32], w_t: &PackedB, b: &[f32]) -> Vec<f32> {
    let (inp, out) = w_t.dims();
    let rows = x.len() / inp.max(1);
    assert!(
        x.len() == rows * inp && b.len() == out,
        "bf16::linear_forward: x {} values, b {}, W^T {inp} x {out}",
        x.len(),
        b.len()
    );
    let a = PackedA::pack(View::rows(x, rows, inp));
    let mut y = b.repeat(rows);
    gemm(&a, w_t, &mut y, out, true, 1.0);
    y
}

/// Gradients of `y = x W^T + b` with bf16 products: `dx (+)= dy W` (added to `dx` when
/// `accumulate_dx`), `dW = dy^T x`, `db = colsum(dy)` in f32; `(out, inp)` is the shape of `w`.
/// Panics unless `x` and `dx` are `rows x inp`, `dy` `rows x out`, `w` and `dw` `out x inp` and
/// `db` has `out` values.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    (out, inp): (usize, usize),
    dx: &mut [f32],
    accumulate_dx: bool,
    dw: &mut [f32],
    db: &mut [f32],
) {
    let rows = x.len() / inp.max(1);
    assert!(
        x.len() == rows * inp
            && dx.len() == rows * inp
            && dy.len() == rows * out
            && w.len() == out * inp
            && dw.len() == out * inp
            && db.len() == out,
        "bf16::linear_backward: sizes do not fit {rows} rows of [{out}, {inp}]"
    );
    let dy_rows = PackedA::pack(View::rows(dy, rows, out));
    gemm(&dy_rows, &PackedB::pack(View::rows(w, out, inp)), dx, inp, accumulate_dx, 1.0);
    drop(dy_rows);
    let dy_t = PackedA::pack(View::transposed(dy, rows, out));
    gemm(&dy_t, &PackedB::pack(View::rows(x, rows, inp)), dw, inp, false, 1.0);
    db.copy_from_slice(&util::column_sums(dy, out));
}

/// One `MR x NR` tile: `c[r, j] = (load_c ? c[r, j] : 0) + alpha * sum_p A(r, p) . B(p, j)` for
/// `r < rows`, `j < cols`, over `kp` pairs, where `A(r, p)` is the pair at `a[r * rs + p * cs]`
/// and `B(p, j)` the pair at `b[p * NR + j]`.
///
/// # Safety
/// The CPU must have AVX-512F and AVX512-BF16; `a` must be valid for reads of `a[r * rs + p * cs]`
/// (`r < MR`, `p < kp`), `b` of `kp * NR` words and `c` for reads and writes of `c[r * ldc + j]`
/// (`r < rows <= MR`, `j < cols <= NR`), not accessed by another thread during the call.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    kp: usize,
    a: *const u32,
    (rs, cs): (usize, usize),
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    (rows, cols): (usize, usize),
    alpha: f32,
    load_c: bool,
) {
    use std::arch::x86_64::*;
    const NV: usize = NR / 16;
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    for p in 0..kp {
        let mut bv = [_mm512_setzero_si512(); NV];
        for (v, bv) in bv.iter_mut().enumerate() {
            // SAFETY: reads `b[p * NR + v * 16..][..16]`, inside the `kp * NR` words.
            *bv = unsafe { _mm512_loadu_si512(b.add(p * NR + v * 16).cast()) };
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: reads `a[r * rs + p * cs]`, `r < MR` and `p < kp`.
            let av = _mm512_set1_epi32(unsafe { *a.add(r * rs + p * cs) } as i32);
            for (acc, &bv) in acc.iter_mut().zip(&bv) {
                // SAFETY: `__m512i` and `__m512bh` are both 64-byte vectors; every bit pattern
                // is a valid value of either.
                let (av, bv) = unsafe {
                    (std::mem::transmute::<__m512i, __m512bh>(av), std::mem::transmute::<__m512i, __m512bh>(bv))
                };
                *acc = _mm512_dpbf16_ps(*acc, av, bv);
            }
        }
    }
    let alpha = _mm512_set1_ps(alpha);
    for (r, acc) in acc.iter().enumerate().take(rows) {
        for (v, &acc) in acc.iter().enumerate() {
            let left = cols.saturating_sub(v * 16);
            if left == 0 {
                break;
            }
            let m: __mmask16 = if left >= 16 { 0xffff } else { ((1u32 << left) - 1) as u16 };
            // SAFETY: reads and writes `c[r * ldc + v * 16 + lane]` only for the lanes in `m`,
            // i.e. columns `< cols`, with `r < rows`.
            unsafe {
                let dst = c.add(r * ldc + v * 16);
                let val = _mm512_mul_ps(acc, alpha);
                let val = if load_c { _mm512_add_ps(val, _mm512_maskz_loadu_ps(m, dst)) } else { val };
                _mm512_mask_storeu_ps(dst, m, val);
            }
        }
    }
}

/// `c[r, j] = (load_c ? c[r, j] : 0) + alpha * sums[r * BLOCK + j]` for `r < rows`, `j < cols`
/// (`sums` holds f32 bits).
///
/// # Safety
/// The CPU must have AVX-512F; `c` must be valid for reads and writes of `c[r * ldc + j]`
/// (`r < rows <= BLOCK`, `j < cols <= BLOCK`), not accessed by another thread during the call.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn store_block(
    sums: &[u32; BLOCK * BLOCK],
    c: *mut f32,
    ldc: usize,
    (rows, cols): (usize, usize),
    alpha: f32,
    load_c: bool,
) {
    use std::arch::x86_64::*;
    let alpha = _mm512_set1_ps(alpha);
    for r in 0..rows {
        for v in 0..BLOCK / 16 {
            let left = cols.saturating_sub(v * 16);
            if left == 0 {
                break;
            }
            let m: __mmask16 = if left >= 16 { 0xffff } else { ((1u32 << left) - 1) as u16 };
            // SAFETY: `sums` holds BLOCK x BLOCK words, read at row `r` columns `v * 16..+16`;
            // `c[r * ldc + v * 16 + lane]` is read and written only for the lanes in `m`, i.e.
            // columns `< cols`, with `r < rows`.
            unsafe {
                let val = _mm512_mul_ps(_mm512_loadu_ps(sums.as_ptr().add(r * BLOCK + v * 16).cast()), alpha);
                let dst = c.add(r * ldc + v * 16);
                let val = if load_c { _mm512_add_ps(val, _mm512_maskz_loadu_ps(m, dst)) } else { val };
                _mm512_mask_storeu_ps(dst, m, val);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_nearest_even() {
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties to the even mantissa (1).
        assert_eq!(round(1.0 + 1.0 / 256.0), 1.0);
        // 1 + 3 * 2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: ties to 1 + 2^-6 (even).
        assert_eq!(round(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
        assert_eq!(round(1.0 + 1.5 / 256.0), 1.0 + 1.0 / 128.0);
        assert!(round(f32::NAN).is_nan());
        assert_eq!(round(f32::INFINITY), f32::INFINITY);
        assert_eq!(round(-2.5), -2.5);
    }
}
