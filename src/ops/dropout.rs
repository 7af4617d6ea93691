//! Dropout with a counter-based random mask keyed by the batch row's global id: element
//! `(c0, c1, c2)` of row `r` (the coordinates inside the row, packed [`COORD_BITS`] bits each) is
//! kept when `hash(row_seed(seed, id(r)), packed)` falls below the keep probability. The mask
//! needs no storage, is generated in parallel, does not depend on the thread count, on the other
//! rows of the batch or on how far the batch is padded, and the backward pass regenerates it from
//! the seed; keyed by the global row id (the row's index in the training set), N data-parallel
//! workers draw for each row the mask one worker draws for it. The op runs on the CPU and (with
//! the `cuda` feature) on CUDA GPUs with the same hash, so a GPU draws the same masks as the CPU
//! and never builds one on the host.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

use super::util;

/// Bits of each coordinate inside a row in an element's packed key (three coordinates fit).
pub const COORD_BITS: u32 = 20;

/// The SplitMix64 finaliser.
#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The mask seed of the row with global id `row_id` at the dropout site seeded `seed`.
#[inline(always)]
pub fn row_seed(seed: u64, row_id: u64) -> u64 {
    mix(seed ^ mix(row_id.wrapping_add(0x632B_E59B_D9B4_E019)))
}

/// The packed key of the coordinates `c` (at most three, each below `2^COORD_BITS`) inside a row.
#[inline(always)]
pub fn coord(c: &[usize]) -> u64 {
    c.iter().fold(0u64, |acc, &x| (acc << COORD_BITS) | x as u64)
}

/// A uniform float in `[0, 1)` for the element of packed key `index` of the row seeded `seed`
/// (SplitMix64).
#[inline(always)]
pub fn mask_uniform(seed: u64, index: u64) -> f32 {
    let z = mix(seed.wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    (z >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
}

/// The dropout factor of element `index`: `1 / keep` when kept, 0 when dropped.
#[inline(always)]
pub fn mask_factor(seed: u64, index: u64, keep: f32) -> f32 {
    if mask_uniform(seed, index) < keep {
        1.0 / keep
    } else {
        0.0
    }
}

/// One dropout site of a forward pass: the drop probability, the site's seed and the global ids
/// of the batch's rows (None: a row's id is its position in the batch).
#[derive(Clone, Debug)]
pub struct DropoutSite {
    /// Drop probability.
    pub p: f32,
    /// The site's seed.
    pub seed: u64,
    /// Global ids of the batch rows.
    pub rows: Option<Arc<[u64]>>,
}

impl DropoutSite {
    /// A site whose rows are keyed by their position in the batch.
    pub fn new(p: f32, seed: u64) -> Self {
        DropoutSite { p, seed, rows: None }
    }

    /// A site whose batch rows have the global ids `rows`.
    pub fn with_rows(p: f32, seed: u64, rows: Arc<[u64]>) -> Self {
        DropoutSite { p, seed, rows: Some(rows) }
    }

    /// Keep probability.
    pub fn keep(&self) -> f32 {
        1.0 - self.p
    }

    /// The mask seed of batch row `b`.
    #[inline]
    pub fn row_seed(&self, b: usize) -> u64 {
        let id = match &self.rows {
            Some(rows) => rows[b],
            None => b as u64,
        };
        row_seed(self.seed, id)
    }

    /// The mask seeds of the first `b` batch rows.
    pub fn row_seeds(&self, b: usize) -> Vec<u64> {
        (0..b).map(|r| self.row_seed(r)).collect()
    }

    /// Checks that the site knows the ids of `b` rows.
    fn check_rows(&self, b: usize) -> Result<()> {
        match &self.rows {
            Some(rows) if rows.len() != b => {
                candle_core::bail!("dropout: {b} batch rows but {} row ids", rows.len())
            }
            _ => Ok(()),
        }
    }
}

/// A tensor of `dims` seen as batch rows of `[d0, d1, d2]` coordinates (leading ones padded):
/// `(rows, [d0, d1, d2])`. At most three dimensions after the batch, each below `2^COORD_BITS`.
pub fn row_geometry(dims: &[usize]) -> Result<(usize, [usize; 3])> {
    let (b, inner) = match dims.split_first() {
        Some((b, inner)) => (*b, inner),
        None => (1, &[][..]),
    };
    if inner.len() > 3 || inner.iter().any(|&d| d >= 1 << COORD_BITS) {
        candle_core::bail!("dropout: a tensor of shape {dims:?} has more than 3 dimensions of at most 2^20 per row");
    }
    let mut g = [1usize; 3];
    g[3 - inner.len()..].copy_from_slice(inner);
    Ok((b, g))
}

/// The dropout factors of a tensor of `dims` at `site`, materialised on the host.
pub fn mask_factors(dims: &[usize], site: &DropoutSite) -> Result<Vec<f32>> {
    let (b, [d0, d1, d2]) = row_geometry(dims)?;
    site.check_rows(b)?;
    let keep = site.keep();
    let mut out = Vec::with_capacity(b * d0 * d1 * d2);
    for r in 0..b {
        let seed = site.row_seed(r);
        for c0 in 0..d0 {
            for c1 in 0..d1 {
                out.extend((0..d2).map(|c2| mask_factor(seed, coord(&[c0, c1, c2]), keep)));
            }
        }
    }
    Ok(out)
}

/// Inverted dropout of `x` (`[B, ...]`, batch rows first) at `site`.
pub fn dropout(x: &Tensor, site: &DropoutSite) -> Result<Tensor> {
    if site.p <= 0.0 {
        return Ok(x.clone());
    }
    let (b, geometry) = row_geometry(x.dims())?;
    site.check_rows(b)?;
    if x.dtype() != candle_core::DType::F32 || !(x.device().is_cpu() || x.device().is_cuda()) {
        // Same mask, materialised on the host, for what the op does not cover (other dtypes and
        // devices).
        let mask = mask_factors(x.dims(), site)?;
        let mask = Tensor::from_vec(mask, x.shape(), &candle_core::Device::Cpu)?.to_device(x.device())?;
        return x.mul(&mask.to_dtype(x.dtype())?);
    }
    x.contiguous()?.apply_op1(Dropout { site: site.clone(), geometry })
}

struct Dropout {
    site: DropoutSite,
    /// `[d0, d1, d2]` of a row (see [`row_geometry`]).
    geometry: [usize; 3],
}

/// `src` (rows of `[d0, d1, d2]`) times the dropout mask of `site`, in parallel.
pub(crate) fn apply_mask(src: &[f32], site: &DropoutSite, [d0, d1, d2]: [usize; 3]) -> Vec<f32> {
    let keep = site.keep();
    let mut out = vec![0f32; src.len()];
    out.par_chunks_mut(d2.max(1)).zip(src.par_chunks(d2.max(1))).enumerate().for_each(|(q, (o, s))| {
        let (r, rest) = (q / (d0 * d1), q % (d0 * d1));
        mask_into(o, s, site.row_seed(r), coord(&[rest / d1, rest % d1, 0]), keep);
    });
    out
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "fused-dropout"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let [x] = util::f32_inputs(self.name(), [(storage, layout)])?;
        Ok((CpuStorage::F32(apply_mask(x, &self.site, self.geometry)), layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::apply_mask(storage, layout, &self.site, self.geometry)
    }

    /// The backward pass: the incoming gradient times the same mask, i.e. this op again.
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(self)?))
    }
}

/// The mask on a CUDA GPU: one thread per element, the same keys and hash as [`mask_factors`];
/// the rows' mask seeds travel in a small device buffer.
#[cfg(feature = "cuda")]
mod cuda {
    use super::DropoutSite;
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::cudarc::nvrtc::compile_ptx;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaStorage, Layout, Result, Shape};
    use std::sync::OnceLock;

    const KERNEL: &str = r#"
extern "C" __global__ void easynlp_dropout(const float* src, float* dst, const unsigned long long* row_seeds,
                                           float keep, unsigned long long n, unsigned long long d0,
                                           unsigned long long d1, unsigned long long d2) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    unsigned long long per_row = d0 * d1 * d2;
    unsigned long long r = i / per_row, rest = i % per_row;
    unsigned long long c2 = rest % d2, c1 = (rest / d2) % d1, c0 = rest / (d1 * d2);
    unsigned long long key = (c0 << 40) | (c1 << 20) | c2;
    unsigned long long z = row_seeds[r] + key * 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    float u = (float)(z >> 40) * (1.0f / 16777216.0f);
    dst[i] = u < keep ? src[i] * (1.0f / keep) : 0.0f;
}
"#;

    /// The kernel's PTX, compiled by NVRTC once per process.
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();

    /// `src` (rows of `[d0, d1, d2]`) times the dropout mask of `site`.
    pub(super) fn apply_mask(
        storage: &CudaStorage,
        layout: &Layout,
        site: &DropoutSite,
        [d0, d1, d2]: [usize; 3],
    ) -> Result<(CudaStorage, Shape)> {
        let Some((a, b)) = layout.contiguous_offsets() else { candle_core::bail!("dropout needs a contiguous tensor") };
        let n = b - a;
        if n > u32::MAX as usize {
            candle_core::bail!("dropout of {n} elements: more than one launch holds");
        }
        let per_row = (d0 * d1 * d2).max(1);
        let dev = &storage.device;
        let src = storage.as_cuda_slice::<f32>()?.slice(a..b);
        let seeds = dev.clone_htod(&site.row_seeds(n.div_ceil(per_row).max(1)))?;
        let ptx = PTX.get_or_init(|| compile_ptx(KERNEL).map(|p| p.to_src()).map_err(|e| e.to_string()));
        let ptx = ptx.as_ref().map_err(|e| candle_core::Error::Msg(format!("compiling the dropout kernel: {e}")))?;
        let func = dev.get_or_load_custom_func("easynlp_dropout", "easynlp_dropout", ptx)?;
        // SAFETY: the kernel below writes every one of the `n` elements before anything reads them.
        let dst = unsafe { dev.alloc::<f32>(n)? };
        let keep = site.keep();
        let (n64, d0, d1, d2) = (n as u64, d0 as u64, d1 as u64, d2 as u64);
        let mut launch = func.builder();
        launch.arg(&src);
        launch.arg(&dst);
        launch.arg(&seeds);
        launch.arg(&keep);
        launch.arg(&n64);
        launch.arg(&d0);
        launch.arg(&d1);
        launch.arg(&d2);
        // SAFETY: the arguments match the kernel's parameters in order and type, `src` and `dst`
        // hold the `n` elements the launch covers and `seeds` one seed per row of them.
        unsafe { launch.launch(LaunchConfig::for_num_elems(n as u32)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(dst, dev.clone()), layout.shape().clone()))
    }
}

/// `o = s * mask`, the mask of keys `base..base + s.len()` of the row seeded `seed`.
pub(crate) fn mask_into(o: &mut [f32], s: &[f32], seed: u64, base: u64, keep: f32) {
    o.copy_from_slice(s);
    mask_in_place(o, seed, base, keep);
}

util::simd_fn! {
    /// `a = a * mask + residual` for the mask of keys `base..base + a.len()`.
    fn mask_add_in_place(a: &mut [f32], residual: &[f32], seed: u64, base: u64, keep: f32) {
        for (k, (a, &r)) in a.iter_mut().zip(residual).enumerate() {
            *a = *a * mask_factor(seed, base + k as u64, keep) + r;
        }
    }
}

/// `a = a * mask + residual` (just `a += residual` without dropout) on rows of `h` elements:
/// `positions` consecutive rows per batch row, each the hidden vector of one position (the
/// `[B, L, H]` layout with `positions` = L; 1 for the first positions alone, `[B, H]`).
pub(crate) fn dropout_add_rows_in_place(
    a: &mut [f32],
    residual: &[f32],
    dropout: Option<&DropoutSite>,
    h: usize,
    positions: usize,
) {
    a.par_chunks_mut(h).zip(residual.par_chunks(h)).enumerate().for_each(|(r, (a, res))| match dropout {
        Some(site) => {
            let (b, pos) = (r / positions, r % positions);
            mask_add_in_place(a, res, site.row_seed(b), coord(&[pos, 0]), site.keep())
        }
        None => util::add_into(a, res),
    });
}

/// Rows of `h` elements (`positions` per batch row, see [`dropout_add_rows_in_place`]) times
/// the dropout mask of `site`.
pub(crate) fn apply_mask_rows(src: &[f32], site: &DropoutSite, h: usize, positions: usize) -> Vec<f32> {
    let mut out = vec![0f32; src.len()];
    out.par_chunks_mut(h).zip(src.par_chunks(h)).enumerate().for_each(|(r, (o, s))| {
        let (b, pos) = (r / positions, r % positions);
        mask_into(o, s, site.row_seed(b), coord(&[pos, 0]), site.keep())
    });
    out
}

/// `dst = src * mask` for the `rows x l` attention probabilities of head `head` of the batch row
/// seeded `seed` (query `i`, key `j` at key `coord(&[head, i, j])`).
pub(crate) fn mask_probs_into(dst: &mut [f32], src: &[f32], seed: u64, head: usize, l: usize, keep: f32) {
    for (i, (d, s)) in dst.chunks_exact_mut(l).zip(src.chunks_exact(l)).enumerate() {
        mask_into(d, s, seed, coord(&[head, i, 0]), keep);
    }
}

/// `d *= mask` for attention probabilities, as [`mask_probs_into`].
pub(crate) fn mask_probs_in_place(d: &mut [f32], seed: u64, head: usize, l: usize, keep: f32) {
    for (i, d) in d.chunks_exact_mut(l).enumerate() {
        mask_in_place(d, seed, coord(&[head, i, 0]), keep);
    }
}

util::simd_fn! {
    /// `d *= mask` for the dropout mask of keys `offset..offset + d.len()`.
    pub(crate) fn mask_in_place(d: &mut [f32], seed: u64, offset: u64, keep: f32) {
        for (i, d) in d.iter_mut().enumerate() {
            *d *= mask_factor(seed, offset + i as u64, keep);
        }
    }
}
