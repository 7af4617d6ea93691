//! The numeric precision of the matrix products (`--precision`, `--use_amp`) and the kernel path
//! picked for it on this CPU at run time.
//!
//! - `f32`: every product in f32 (the `gemm` crate and the AVX-512 kernels of `head_matmul`).
//! - `bf16`: the encoder's products (forward and backward) take bf16 inputs, rounded to nearest
//!   even, and accumulate in f32; everything else stays f32. The dense layers run on AMX tiles or
//!   AVX512-BF16 `vdpbf16ps` ([`super::bf16`]); otherwise the same rounding is applied and the
//!   products run in f32 (emulated: the same numbers, no speed-up). The attention products round
//!   their operands and multiply in the f32 per-head kernels (exact products of bf16 values).
//! - `int8` (inference only): dense layers with per-output-channel symmetric s8 weights and
//!   per-row u8 activations, s32 accumulation ([`super::int8`]); `vpdpbusd` with AVX512-VNNI,
//!   else `vpmaddwd` with AVX2, else the same integer arithmetic in portable code.
//!
//! Where the CPU has AMX ([`super::amx`]), both run on its tiles (`tdpbf16ps`, `tdpbusd`).
//!
//! `EASYNLP_CPU_FEATURES=portable` forces the portable paths (for tests, or to compare);
//! `EASYNLP_CPU_FEATURES=no-amx` keeps the AVX-512 kernels on an AMX CPU.
//!
//! Off the fused CPU kernels (on a GPU, or with `EASYNLP_KERNELS=portable`) `bf16` is autocast
//! ([`AUTOCAST_PATH`], `super::linear::linear_in`): the encoder's dense-layer and attention
//! products take bf16 inputs through candle's bf16 matmul (cuBLAS bf16 GEMMs on a GPU); the
//! master weights, LayerNorm, softmax and the losses stay f32.

use std::sync::atomic::{AtomicU8, Ordering};

/// The precision of the matrix products.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// bf16 inputs, f32 accumulation, f32 master weights.
    Bf16,
    /// int8 weights and activations, s32 accumulation (inference only).
    Int8,
}

impl Precision {
    /// The flag value: `f32`, `bf16` or `int8`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        }
    }

    /// Parses a flag value (`f32`, `bf16`, `int8`; `fp32` and `float32` are accepted for f32).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "f32" | "fp32" | "float32" => Some(Precision::F32),
            "bf16" | "bfloat16" => Some(Precision::Bf16),
            "int8" => Some(Precision::Int8),
            _ => None,
        }
    }

    /// The kernel path the products of this precision take on this CPU, for the log.
    pub fn kernel_path(self) -> &'static str {
        match self {
            Precision::F32 if cfg!(target_arch = "x86_64") && has_avx512() => "f32 AVX-512",
            Precision::F32 => "f32",
            Precision::Bf16 if has_bf16() && super::amx::available() => "bf16 AMX (tdpbf16ps)",
            Precision::Bf16 if has_bf16() => "bf16 AVX512-BF16 (vdpbf16ps)",
            Precision::Bf16 if forced_portable() => {
                "bf16 emulated (bf16 rounding, f32 products: EASYNLP_CPU_FEATURES=portable)"
            }
            Precision::Bf16 => "bf16 emulated (bf16 rounding, f32 products: this CPU lacks AVX512-BF16)",
            Precision::Int8 if has_vnni() && super::amx::available() => "int8 AMX (tdpbusd)",
            Precision::Int8 if has_vnni() => "int8 AVX512-VNNI (vpdpbusd)",
            Precision::Int8 if has_avx2_int() => "int8 AVX2 (vpmaddwd; this CPU lacks AVX512-VNNI)",
            Precision::Int8 if forced_portable() => {
                "int8 emulated (portable integer code: EASYNLP_CPU_FEATURES=portable)"
            }
            Precision::Int8 => "int8 emulated (portable integer code: this CPU lacks AVX512-VNNI and AVX2)",
        }
    }
}

/// The kernel path of bf16 off the fused CPU kernels, for the log.
pub const AUTOCAST_PATH: &str =
    "bf16 autocast (candle bf16 matmuls, cuBLAS on a GPU; f32 master weights, LayerNorm, softmax and losses)";

/// The process-wide precision that models pick up when they are loaded (set once by the CLI).
static GLOBAL: AtomicU8 = AtomicU8::new(0);

/// Sets the precision that models loaded from now on use.
pub fn set_global(p: Precision) {
    GLOBAL.store(p as u8, Ordering::Relaxed);
}

/// The precision set by [`set_global`] (f32 unless set).
pub fn global() -> Precision {
    match GLOBAL.load(Ordering::Relaxed) {
        1 => Precision::Bf16,
        2 => Precision::Int8,
        _ => Precision::F32,
    }
}

/// True when `EASYNLP_CPU_FEATURES=portable` asks for the portable kernels.
pub fn forced_portable() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var("EASYNLP_CPU_FEATURES").is_ok_and(|v| v.trim() == "portable"))
}

#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    super::util::has_avx512()
}

#[cfg(not(target_arch = "x86_64"))]
fn has_avx512() -> bool {
    false
}

/// Whether the bf16 kernels run on `vdpbf16ps` (AVX-512 with AVX512-BF16, not forced portable).
pub(crate) fn has_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        !forced_portable() && has_avx512() && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the int8 kernels run on `vpdpbusd` (AVX-512 with AVX512-VNNI, not forced portable).
pub(crate) fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        !forced_portable() && has_avx512() && std::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the int8 kernels run on AVX2 `vpmaddwd` (AVX2 without AVX512-VNNI, not forced
/// portable).
pub(crate) fn has_avx2_int() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        !forced_portable() && !has_vnni() && super::util::has_avx2()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::Precision;

    #[test]
    fn names_round_trip() {
        for p in [Precision::F32, Precision::Bf16, Precision::Int8] {
            assert_eq!(Precision::parse(p.name()), Some(p));
        }
        assert_eq!(Precision::parse("fp16"), None);
    }
}
