//! Dropout with a counter-based random mask: element `i` is kept when `hash(seed, i)` falls
//! below the keep probability, so the mask needs no storage, is generated in parallel, does not
//! depend on the thread count, and the backward pass regenerates it from the seed. The op runs on
//! the CPU and (with the `cuda` feature) on CUDA GPUs with the same hash, so a GPU draws the same
//! masks as the CPU and never builds one on the host.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::util;

/// A uniform float in `[0, 1)` for element `index` of the mask drawn with `seed` (SplitMix64).
#[inline(always)]
pub fn mask_uniform(seed: u64, index: u64) -> f32 {
    let mut z = seed.wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
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

/// Inverted dropout of `x` with drop probability `p` and mask seed `seed`.
pub fn dropout(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let keep = 1.0 - p;
    if x.dtype() != candle_core::DType::F32 || !(x.device().is_cpu() || x.device().is_cuda()) {
        // Same mask, materialised on the host, for what the op does not cover (other dtypes and
        // devices).
        let n = x.elem_count() as u64;
        let mask: Vec<f32> = (0..n).map(|i| mask_factor(seed, i, keep)).collect();
        return x.mul(&Tensor::from_vec(mask, x.shape(), &candle_core::Device::Cpu)?.to_device(x.device())?);
    }
    x.contiguous()?.apply_op1(Dropout { keep, seed })
}

struct Dropout {
    keep: f32,
    seed: u64,
}

/// `src` times the dropout mask of `seed` (element index = position in `src`), in parallel.
pub(crate) fn apply_mask(src: &[f32], keep: f32, seed: u64) -> Vec<f32> {
    // Blocks of ELEM_BLOCK elements, each standing for itself.
    apply_mask_rows(src, keep, seed, util::ELEM_BLOCK, 1)
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "fused-dropout"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let [x] = util::f32_inputs(self.name(), [(storage, layout)])?;
        Ok((CpuStorage::F32(apply_mask(x, self.keep, self.seed)), layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::apply_mask(storage, layout, self.keep, self.seed)
    }

    /// The backward pass: the incoming gradient times the same mask, i.e. this op again.
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(self)?))
    }
}

/// The mask on a CUDA GPU: one thread per element, the same hash as [`mask_uniform`].
#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::cudarc::nvrtc::compile_ptx;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaStorage, Layout, Result, Shape};
    use std::sync::OnceLock;

    const KERNEL: &str = r#"
extern "C" __global__ void easynlp_dropout(const float* src, float* dst, unsigned long long seed, float keep,
                                           unsigned long long n) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    unsigned long long z = seed + i * 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    float u = (float)(z >> 40) * (1.0f / 16777216.0f);
    dst[i] = u < keep ? src[i] * (1.0f / keep) : 0.0f;
}
"#;

    /// The kernel's PTX, compiled by NVRTC once per process.
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();

    /// `src` times the dropout mask of `seed` (element index = position in `src`).
    pub(super) fn apply_mask(
        storage: &CudaStorage,
        layout: &Layout,
        keep: f32,
        seed: u64,
    ) -> Result<(CudaStorage, Shape)> {
        let Some((a, b)) = layout.contiguous_offsets() else { candle_core::bail!("dropout needs a contiguous tensor") };
        let n = b - a;
        if n > u32::MAX as usize {
            candle_core::bail!("dropout of {n} elements: more than one launch holds");
        }
        let dev = &storage.device;
        let src = storage.as_cuda_slice::<f32>()?.slice(a..b);
        let ptx = PTX.get_or_init(|| compile_ptx(KERNEL).map(|p| p.to_src()).map_err(|e| e.to_string()));
        let ptx = ptx.as_ref().map_err(|e| candle_core::Error::Msg(format!("compiling the dropout kernel: {e}")))?;
        let func = dev.get_or_load_custom_func("easynlp_dropout", "easynlp_dropout", ptx)?;
        // SAFETY: the kernel below writes every one of the `n` elements before anything reads them.
        let dst = unsafe { dev.alloc::<f32>(n)? };
        let n64 = n as u64;
        let mut launch = func.builder();
        launch.arg(&src);
        launch.arg(&dst);
        launch.arg(&seed);
        launch.arg(&keep);
        launch.arg(&n64);
        // SAFETY: the arguments match the kernel's parameters in order and type, and `src` and
        // `dst` hold the `n` elements the launch covers.
        unsafe { launch.launch(LaunchConfig::for_num_elems(n as u32)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(dst, dev.clone()), layout.shape().clone()))
    }
}

/// `o = s * mask`, the mask of elements `base..base + s.len()`.
pub(crate) fn mask_into(o: &mut [f32], s: &[f32], seed: u64, base: u64, keep: f32) {
    o.copy_from_slice(s);
    mask_in_place(o, seed, base, keep);
}

util::simd_fn! {
    /// `a = a * mask + residual` for the mask of elements `base..base + a.len()`.
    fn mask_add_in_place(a: &mut [f32], residual: &[f32], seed: u64, base: u64, keep: f32) {
        for (k, (a, &r)) in a.iter_mut().zip(residual).enumerate() {
            *a = *a * mask_factor(seed, base + k as u64, keep) + r;
        }
    }
}

/// `a = a * mask + residual` (just `a += residual` without dropout, `(keep, seed)`) on rows of
/// `h` elements that stand for every `row_step`-th row of a larger tensor: row `r` draws the mask
/// of row `r * row_step` there (`row_step` 1: the tensor itself, the masks of [`dropout`]).
pub(crate) fn dropout_add_rows_in_place(
    a: &mut [f32],
    residual: &[f32],
    dropout: Option<(f32, u64)>,
    h: usize,
    row_step: usize,
) {
    a.par_chunks_mut(h).zip(residual.par_chunks(h)).enumerate().for_each(|(r, (a, res))| match dropout {
        Some((keep, seed)) => mask_add_in_place(a, res, seed, (r * row_step * h) as u64, keep),
        None => util::add_into(a, res),
    });
}

/// [`apply_mask`] on rows of `h` elements that stand for every `row_step`-th row of a larger
/// tensor (see [`dropout_add_rows_in_place`]).
pub(crate) fn apply_mask_rows(src: &[f32], keep: f32, seed: u64, h: usize, row_step: usize) -> Vec<f32> {
    let mut out = vec![0f32; src.len()];
    out.par_chunks_mut(h)
        .zip(src.par_chunks(h))
        .enumerate()
        .for_each(|(r, (o, s))| mask_into(o, s, seed, (r * row_step * h) as u64, keep));
    out
}

util::simd_fn! {
    /// `d *= mask` for the dropout mask of elements `offset..offset + d.len()`.
    pub(crate) fn mask_in_place(d: &mut [f32], seed: u64, offset: u64, keep: f32) {
        for (i, d) in d.iter_mut().enumerate() {
            *d *= mask_factor(seed, offset + i as u64, keep);
        }
    }
}
