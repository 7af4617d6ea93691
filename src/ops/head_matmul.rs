//! The two small matrix products of one attention head, written for AVX-512: the scores
//! `S = Q K^T * scale` (`L x L`) and the context `C = P V` (`L x dh`). At BERT's sizes (`dh` 32
//! or 64, `L` up to a few hundred) a general GEMM spends much of its time packing and dispatching;
//! these kernels keep a block of rows' accumulators in registers and read `Q`, `V` and `P` in
//! place (only `K` is transposed, into a small buffer). Callers fall back to the GEMM when
//! [`supported`] says no. The masked softmax of the scores is here too ([`softmax_supported`]).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Whether the kernels run on this CPU for head size `dh` (AVX-512, and `dh` 16, 32, 48 or 64).
pub(crate) fn supported(dh: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        dh.is_multiple_of(16) && (16..=64).contains(&dh) && super::util::has_avx512()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = dh;
        false
    }
}

/// Whether [`masked_softmax_rows`] runs on this CPU (AVX-512).
pub(crate) fn softmax_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::util::has_avx512()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `s[i * l + j] = scale * sum_d q[i * q_stride + d] * k[j * k_stride + d]` for `i, j < l`.
/// `kt` is scratch space, resized as needed. Panics when `s` holds fewer than `l * l` values or
/// when `15 * k_stride` does not fit in an `i32` (the keys are gathered with 32-bit offsets).
///
/// # Safety
/// [`supported`]`(dh)` must hold (the CPU has AVX-512F); `q` and `k` must be valid for reads of
/// `l` rows of `dh` floats `q_stride` / `k_stride` apart (`q[i * q_stride + d]`, `i < l`,
/// `d < dh`), not written by another thread during the call.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn scores(
    q: *const f32,
    q_stride: usize,
    k: *const f32,
    k_stride: usize,
    (l, dh): (usize, usize),
    scale: f32,
    kt: &mut Vec<f32>,
    s: &mut [f32],
) {
    assert!(s.len() >= l * l, "head_matmul::scores: {} values for {l} x {l} scores", s.len());
    assert!(k_stride <= i32::MAX as usize / 16, "head_matmul::scores: key stride {k_stride} too large");
    // K^T with each row padded to whole vectors: kt[d * l16 + j] = k[j][d], zero past l.
    let l16 = l.next_multiple_of(16);
    kt.clear();
    kt.resize(dh * l16, 0.0);
    // SAFETY: AVX-512F and the reads of `k` as in this function's contract; `kt` holds
    // `dh * l16` values; `16 * k_stride` fits in an i32 (asserted).
    unsafe { transpose_keys(k, k_stride, (l, l16, dh), kt) };
    // SAFETY: AVX-512F and the reads of `q` as in this function's contract; `kt` holds the
    // `dh x l16` transposed keys; `s` holds `l * l` values (asserted).
    unsafe { scores_avx512(q, q_stride, kt, (l, l16, dh), scale, s) };
}

/// `kt[d * l16 + j] = k[j * ks + d]` for `j < l`, 16 keys per gather.
///
/// # Safety
/// The CPU must have AVX-512F; `k` must be valid for reads of `k[j * ks + d]` (`j < l`,
/// `d < dh`); `15 * ks` must fit in an `i32`; `kt` must hold `dh * l16` values with `l16` `l`
/// rounded up to a multiple of 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_keys(k: *const f32, ks: usize, (l, l16, dh): (usize, usize, usize), kt: &mut [f32]) {
    let stride = ks as i32;
    let index = _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
        _mm512_set1_epi32(stride),
    );
    let kt = kt.as_mut_ptr();
    for j0 in (0..l).step_by(16) {
        let m = lanes(l - j0);
        // SAFETY: the gather reads `k[(j0 + lane) * ks + d]` only for the lanes in `m`, i.e.
        // `j0 + lane < l`, with `d < dh` (offsets `lane * ks` fit in i32 by the contract); the
        // store writes `kt[d * l16 + j0..][..16]`, inside `kt` as `j0 + 16 <= l16`.
        unsafe {
            let rows = k.add(j0 * ks);
            for d in 0..dh {
                let v = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), m, index, rows.add(d));
                _mm512_storeu_ps(kt.add(d * l16 + j0), v);
            }
        }
    }
}

/// Row-wise `softmax(s + mask)` of the `l x l` scores `s`, in place (`mask` has `l` entries):
/// the same steps as the portable kernel, with an f32 sum over 16 lanes.
///
/// A safe `#[target_feature]` function: its one requirement, the CPU feature, makes callers
/// outside AVX-512F code use `unsafe` and check [`softmax_supported`] first. Every access stays
/// inside `s` and `mask`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) fn masked_softmax_rows(s: &mut [f32], mask: &[f32]) {
    let l = mask.len();
    let mp = mask.as_ptr();
    for row in s.chunks_exact_mut(l) {
        let r = row.as_mut_ptr();
        // SAFETY: `row` and `mask` hold `l` values each; every load and store below is at
        // offset `j < l` and masked to the `min(l - j, 16)` lanes that stay below `l` (masked-off
        // lanes are not accessed).
        unsafe {
            let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
            for j in (0..l).step_by(16) {
                let m = lanes(l - j);
                let v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, r.add(j)), _mm512_maskz_loadu_ps(m, mp.add(j)));
                _mm512_mask_storeu_ps(r.add(j), m, v);
                max = _mm512_mask_max_ps(max, m, max, v);
            }
            let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
            let mut sum = _mm512_setzero_ps();
            for j in (0..l).step_by(16) {
                let m = lanes(l - j);
                let e = exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, r.add(j)), max));
                _mm512_mask_storeu_ps(r.add(j), m, e);
                sum = _mm512_mask_add_ps(sum, m, sum, e);
            }
            let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
            for j in (0..l).step_by(16) {
                let m = lanes(l - j);
                _mm512_mask_storeu_ps(r.add(j), m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, r.add(j)), inv));
            }
        }
    }
}

/// The first `min(n, 16)` lanes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn lanes(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as u16
    }
}

/// [`super::math::exp`] on 16 lanes, step for step (same constants and rounding).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn exp(x: __m512) -> __m512 {
    use super::math::{EXP_MAX, EXP_MIN, EXP_POLY, NEG_LN2_HI, NEG_LN2_LO, ROUND_MAGIC};
    // max/min return their second operand when either is NaN: NaN propagates, as in the scalar.
    let xc = _mm512_min_ps(_mm512_set1_ps(EXP_MAX), _mm512_max_ps(_mm512_set1_ps(EXP_MIN), x));
    let big = _mm512_set1_ps(ROUND_MAGIC);
    let k = _mm512_fmadd_ps(xc, _mm512_set1_ps(std::f32::consts::LOG2_E), big);
    let n = _mm512_sub_ps(k, big);
    let r = _mm512_fmadd_ps(n, _mm512_set1_ps(NEG_LN2_LO), _mm512_fmadd_ps(n, _mm512_set1_ps(NEG_LN2_HI), xc));
    let mut p = _mm512_set1_ps(EXP_POLY[0]);
    for &c in &EXP_POLY[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let exp_r = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0));
    let two_n = _mm512_castsi512_ps(_mm512_add_epi32(
        _mm512_slli_epi32::<23>(_mm512_castps_si512(k)),
        _mm512_set1_epi32(127 << 23),
    ));
    let underflow = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(EXP_MIN));
    _mm512_maskz_mul_ps(!underflow, exp_r, two_n)
}

/// The scores of every query row against the transposed keys `kt`, written into `s`.
///
/// # Safety
/// The CPU must have AVX-512F; `q` must be valid for reads of `q[i * qs + d]` (`i < l`,
/// `d < dh`); `kt` must hold `dh * l16` values (`l16` a multiple of 16, at least `l`); `s` must
/// hold `l * l` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn scores_avx512(
    q: *const f32,
    qs: usize,
    kt: &[f32],
    (l, l16, dh): (usize, usize, usize),
    scale: f32,
    s: &mut [f32],
) {
    let s = s.as_mut_ptr();
    let kt = kt.as_ptr();
    let mut i = 0;
    // SAFETY: each call covers rows `i..i + R` with `i + R <= l`: query rows inside `q` and
    // score rows `s[i * l..(i + R) * l]` inside `s`; `kt` is passed on whole.
    unsafe {
        while i + 4 <= l {
            score_rows::<4>(q.add(i * qs), qs, kt, (l, l16, dh), scale, s.add(i * l));
            i += 4;
        }
        while i < l {
            score_rows::<1>(q.add(i * qs), qs, kt, (l, l16, dh), scale, s.add(i * l));
            i += 1;
        }
    }
}

/// Scores of `R` query rows against every key, 64 keys (4 vectors) at a time.
///
/// # Safety
/// The CPU must have AVX-512F; `q` must be valid for reads of `q[r * qs + d]` (`r < R`,
/// `d < dh`), `kt` of `dh * l16` values (`l16` a multiple of 16, at least `l`) and `s` for
/// writes of `R * l` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn score_rows<const R: usize>(
    q: *const f32,
    qs: usize,
    kt: *const f32,
    (l, l16, dh): (usize, usize, usize),
    scale: f32,
    s: *mut f32,
) {
    let mut j = 0;
    // SAFETY: each block covers key columns `j..j + 16 * C` with `j + 16 * C <= l16` (both loops
    // step by the block's width and `l16` is a multiple of 16), so `kt.add(j)` and the block's
    // reads stay inside `kt`; `q` and `s` are passed on as given.
    unsafe {
        while j + 64 <= l16 {
            score_block::<R, 4>(q, qs, kt.add(j), (l, l16, dh), j, scale, s);
            j += 64;
        }
        while j < l16 {
            score_block::<R, 1>(q, qs, kt.add(j), (l, l16, dh), j, scale, s);
            j += 16;
        }
    }
}

/// Scores of `R` query rows against the `16 * C` keys from `j0`; columns past `l` are not stored.
///
/// # Safety
/// The CPU must have AVX-512F; `q` must be valid for reads of `q[r * qs + d]` (`r < R`,
/// `d < dh`), `kt` for reads of `kt[d * l16 + c]` (`d < dh`, `c < 16 * C`) and `s` for writes
/// of `s[r * l + j]` (`r < R`, `j < l`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn score_block<const R: usize, const C: usize>(
    q: *const f32,
    qs: usize,
    kt: *const f32,
    (l, l16, dh): (usize, usize, usize),
    j0: usize,
    scale: f32,
    s: *mut f32,
) {
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    for d in 0..dh {
        let mut kv = [_mm512_setzero_ps(); C];
        for (c, kv) in kv.iter_mut().enumerate() {
            // SAFETY: reads `kt[d * l16 + c * 16..][..16]`, `d < dh` and `c * 16 + 16 <= 16 * C`.
            *kv = unsafe { _mm512_loadu_ps(kt.add(d * l16 + c * 16)) };
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: reads `q[r * qs + d]`, `r < R` and `d < dh`.
            let qv = _mm512_set1_ps(unsafe { *q.add(r * qs + d) });
            for (a, &kv) in acc.iter_mut().zip(&kv) {
                *a = _mm512_fmadd_ps(qv, kv, *a);
            }
        }
    }
    let scale = _mm512_set1_ps(scale);
    for (r, acc) in acc.iter().enumerate() {
        for (c, &a) in acc.iter().enumerate() {
            let j = j0 + c * 16;
            // SAFETY: writes `s[r * l + j..]` only in the lanes below `l - j` (none when `j >= l`),
            // i.e. columns `< l` of row `r < R`.
            unsafe { _mm512_mask_storeu_ps(s.add(r * l + j), lanes(l.saturating_sub(j)), _mm512_mul_ps(a, scale)) };
        }
    }
}

/// `c[i * c_stride + d] = sum_j p[i * l + j] * v[j * v_stride + d]` for `i, j < l`, `d < dh`.
///
/// Panics when `p` holds fewer than `l * l` values or `dh` is not 16, 32, 48 or 64.
///
/// # Safety
/// [`supported`]`(dh)` must hold (the CPU has AVX-512F); `v` must be valid for reads of `l` rows
/// of `dh` floats `v_stride` apart (`v[j * v_stride + d]`, `j < l`, `d < dh`) and `c` for writes
/// of `l` rows of `dh` floats `c_stride` apart, not overlapping `v` or `p` and not accessed by
/// another thread during the call.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn context(
    p: &[f32],
    v: *const f32,
    v_stride: usize,
    (l, dh): (usize, usize),
    c: *mut f32,
    c_stride: usize,
) {
    assert!(p.len() >= l * l, "head_matmul::context: {} values for {l} x {l} probabilities", p.len());
    let p = p.as_ptr();
    // Blocks of rows whose accumulators (rows x dh / 16 vectors) fit in the 32 registers.
    // SAFETY: AVX-512F and the `v`, `c` accesses as in this function's contract, with `D * 16`
    // equal to `dh`; `p` holds `l * l` values (asserted).
    unsafe {
        match dh {
            16 => context_avx512::<8, 1>(p, v, v_stride, l, c, c_stride),
            32 => context_avx512::<8, 2>(p, v, v_stride, l, c, c_stride),
            48 => context_avx512::<6, 3>(p, v, v_stride, l, c, c_stride),
            64 => context_avx512::<4, 4>(p, v, v_stride, l, c, c_stride),
            _ => panic!("head_matmul::context: unsupported head size {dh}"),
        }
    }
}

/// The context `c = p v` of all `l` rows, `R` rows at a time.
///
/// # Safety
/// The CPU must have AVX-512F; `p` must be valid for reads of `l * l` values, `v` of
/// `v[j * vs + d]` and `c` for writes of `c[i * cs + d]` (`i, j < l`, `d < 16 * D`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn context_avx512<const R: usize, const D: usize>(
    p: *const f32,
    v: *const f32,
    vs: usize,
    l: usize,
    c: *mut f32,
    cs: usize,
) {
    let mut i = 0;
    // SAFETY: each call covers rows `i..i + R'` with `i + R' <= l`: probability rows
    // `p[i * l..(i + R') * l]` and context rows `c[i * cs..]` inside the ranges of the contract.
    unsafe {
        while i + R <= l {
            context_rows::<R, D>(p.add(i * l), v, vs, l, c.add(i * cs), cs);
            i += R;
        }
        while i < l {
            context_rows::<1, D>(p.add(i * l), v, vs, l, c.add(i * cs), cs);
            i += 1;
        }
    }
}

/// Context of `R` rows: `D` vectors of `dh` per row, accumulated over every key.
///
/// # Safety
/// The CPU must have AVX-512F; `p` must be valid for reads of `p[r * l + j]`, `v` of
/// `v[j * vs + d]` and `c` for writes of `c[r * cs + d]` (`r < R`, `j < l`, `d < 16 * D`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn context_rows<const R: usize, const D: usize>(
    p: *const f32,
    v: *const f32,
    vs: usize,
    l: usize,
    c: *mut f32,
    cs: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); D]; R];
    for j in 0..l {
        let mut vv = [_mm512_setzero_ps(); D];
        for (d, vv) in vv.iter_mut().enumerate() {
            // SAFETY: reads `v[j * vs + d * 16..][..16]`, `j < l` and `d * 16 + 16 <= 16 * D`.
            *vv = unsafe { _mm512_loadu_ps(v.add(j * vs + d * 16)) };
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: reads `p[r * l + j]`, `r < R` and `j < l`.
            let pv = _mm512_set1_ps(unsafe { *p.add(r * l + j) });
            for (a, &vv) in acc.iter_mut().zip(&vv) {
                *a = _mm512_fmadd_ps(pv, vv, *a);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (d, &a) in acc.iter().enumerate() {
            // SAFETY: writes `c[r * cs + d * 16..][..16]`, `r < R` and `d * 16 + 16 <= 16 * D`.
            unsafe { _mm512_storeu_ps(c.add(r * cs + d * 16), a) };
        }
    }
}

/// Off x86-64 [`supported`] and [`softmax_supported`] are false, so nothing calls the kernels;
/// these stand-ins let callers compile without target checks of their own.
#[cfg(not(target_arch = "x86_64"))]
mod unsupported {
    const NEVER: &str = "head_matmul kernels run only where supported() holds";

    /// Never called (see the module).
    ///
    /// # Safety
    /// As the x86-64 version's; this one only panics.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn scores(
        _: *const f32,
        _: usize,
        _: *const f32,
        _: usize,
        _: (usize, usize),
        _: f32,
        _: &mut Vec<f32>,
        _: &mut [f32],
    ) {
        unreachable!("{NEVER}")
    }

    /// Never called (see the module).
    ///
    /// # Safety
    /// As the x86-64 version's; this one only panics.
    pub(crate) unsafe fn context(_: &[f32], _: *const f32, _: usize, _: (usize, usize), _: *mut f32, _: usize) {
        unreachable!("{NEVER}")
    }

    /// Never called (see the module); `unsafe` like a call of the x86-64 `#[target_feature]`
    /// version from ordinary code.
    ///
    /// # Safety
    /// As the x86-64 version's; this one only panics.
    pub(crate) unsafe fn masked_softmax_rows(_: &mut [f32], _: &[f32]) {
        unreachable!("{NEVER}")
    }
}
#[cfg(not(target_arch = "x86_64"))]
pub(crate) use unsupported::{context, masked_softmax_rows, scores};
