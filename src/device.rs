//! Choosing the compute device from `--worker_gpu` / `--worker_count`.

use anyhow::{bail, Result};
use candle_core::Device;

/// The device for `--worker_gpu=N --worker_count=M`: a CUDA GPU when this build has the `cuda`
/// feature and one is present, else the CPU (said once when GPUs were asked for).
pub fn select(worker_gpu: i64, worker_count: usize) -> Result<Device> {
    if worker_count != 1 {
        bail!("--worker_count={worker_count}: only one node is supported");
    }
    if worker_gpu == 0 || worker_gpu < -1 {
        bail!("--worker_gpu={worker_gpu}: use 1 (one worker) or -1 (whatever is there)");
    }
    let gpus = gpu_count();
    if worker_gpu > 1 && worker_gpu as usize > gpus.max(1) {
        bail!("--worker_gpu={worker_gpu}: this machine has {gpus} usable GPU(s); multi-GPU training is not supported, use 1");
    }
    if worker_gpu > 1 {
        bail!("--worker_gpu={worker_gpu}: multi-GPU data parallelism is not supported, use 1");
    }
    if gpus > 0 {
        let device = Device::new_cuda(0)?;
        crate::logging::info("running on CUDA GPU 0");
        return Ok(device);
    }
    if worker_gpu == 1 {
        crate::logging::info(if cfg!(feature = "cuda") {
            "--worker_gpu=1: no CUDA GPU found, running on the CPU"
        } else {
            "--worker_gpu=1: this build has no CUDA support, running on the CPU"
        });
    }
    Ok(Device::Cpu)
}

/// The CUDA GPUs the driver reports, asked once, without creating a context on any of them.
fn gpu_count() -> usize {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc::driver::CudaContext;
        static COUNT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        *COUNT.get_or_init(|| CudaContext::device_count().map_or(0, |n| n.max(0) as usize))
    }
    #[cfg(not(feature = "cuda"))]
    0
}
