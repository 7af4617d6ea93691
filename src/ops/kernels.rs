//! Which kernels run: our fused CPU kernels (the default on the CPU), or the device-generic
//! path a GPU runs (`EASYNLP_KERNELS=portable`: candle's ops plus the custom ops that have a
//! CUDA implementation), forced on the CPU so that the graph a GPU will run is tested here.
//!
//! Host <-> device traffic of the training step goes through two counted functions: [`upload`]
//! (a tensor made from host data: a batch's inputs) and [`read_back`] (a tensor's values copied
//! to the host: the losses of a log line). [`transfers`] reads the process-wide counters, so a
//! test can check that a step uploads only its batch and reads nothing back between log lines
//! (`tests/portable.rs`). Candle's own transfers (inside its ops) are not counted; the training
//! step must not call `Tensor::new` / `from_vec` / `to_vec*` / `to_scalar` directly.

use candle_core::{Device, Shape, Tensor, WithDType};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

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

static UPLOADS: AtomicU64 = AtomicU64::new(0);
static READ_BACKS: AtomicU64 = AtomicU64::new(0);

/// Host <-> device transfers counted so far in this process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfers {
    /// Tensors made from host data ([`upload`]).
    pub uploads: u64,
    /// Tensors copied to the host ([`read_back`]).
    pub read_backs: u64,
}

/// The transfers counted so far.
pub fn transfers() -> Transfers {
    Transfers { uploads: UPLOADS.load(Ordering::Relaxed), read_backs: READ_BACKS.load(Ordering::Relaxed) }
}

/// A tensor of `shape` on `device` from host `data` (counted).
pub fn upload<T: WithDType, S: Into<Shape>>(data: Vec<T>, shape: S, device: &Device) -> candle_core::Result<Tensor> {
    UPLOADS.fetch_add(1, Ordering::Relaxed);
    Tensor::from_vec(data, shape, device)
}

/// The values of `t`, flattened, in host memory as `T` (counted).
pub fn read_back<T: WithDType>(t: &Tensor) -> candle_core::Result<Vec<T>> {
    READ_BACKS.fetch_add(1, Ordering::Relaxed);
    t.flatten_all()?.to_dtype(T::DTYPE)?.to_vec1::<T>()
}
