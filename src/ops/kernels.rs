//! Which kernels run: our fused CPU kernels (the default on the CPU), or the device-generic
//! path a GPU runs (`EASYNLP_KERNELS=portable`: candle's ops plus the custom ops that have a
//! CUDA implementation), forced on the CPU so that the graph a GPU will run is tested here.

use std::sync::atomic::{AtomicU8, Ordering};

/// The kernel families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    /// Fused CPU kernels for f32 CPU tensors, the device-generic path elsewhere.
    Fused,
    /// The device-generic path everywhere.
    Portable,
}

/// The environment variable that chooses the kernels: `fused` (default) or `portable`.
pub const KERNELS_VAR: &str = "EASYNLP_KERNELS";

const UNSET: u8 = 0;
static CHOICE: AtomicU8 = AtomicU8::new(UNSET);

impl Kernels {
    fn code(self) -> u8 {
        match self {
            Kernels::Fused => 1,
            Kernels::Portable => 2,
        }
    }

    /// The choice of [`KERNELS_VAR`], or an error naming a value it does not know.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var(KERNELS_VAR).ok().as_deref().map(str::trim) {
            None | Some("") | Some("fused") => Ok(Kernels::Fused),
            Some("portable") => Ok(Kernels::Portable),
            Some(other) => Err(format!("{KERNELS_VAR}={other}: expected `fused` or `portable`")),
        }
    }
}

/// The kernels in use: set by [`set_kernels`], else read once from the environment (an unknown
/// value counts as the default here; the CLI refuses it before any work).
pub fn kernels() -> Kernels {
    match CHOICE.load(Ordering::Relaxed) {
        1 => Kernels::Fused,
        2 => Kernels::Portable,
        _ => {
            let k = Kernels::from_env().unwrap_or(Kernels::Fused);
            CHOICE.store(k.code(), Ordering::Relaxed);
            k
        }
    }
}

/// Chooses the kernels for the rest of the process.
pub fn set_kernels(k: Kernels) {
    CHOICE.store(k.code(), Ordering::Relaxed);
}
