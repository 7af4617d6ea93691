//! Choosing the compute device from `--worker_gpu` and the worker's local rank (the worker
//! flags themselves are checked in `config::workers`).

use anyhow::{bail, Result};
use candle_core::Device;

/// The device of the worker with local rank `local_rank` under `--worker_gpu=N`: CUDA GPU
/// `local_rank` (modulo the GPUs there are) when this build has the `cuda` feature and a GPU is
/// present, else the CPU (said once when GPUs were asked for).
pub fn select(worker_gpu: i64, local_rank: usize) -> Result<Device> {
    if worker_gpu == 0 || worker_gpu < -1 {
        bail!("--worker_gpu={worker_gpu}: use N >= 1 workers per machine, or -1");
    }
    let gpus = gpu_count();
    if gpus > 0 {
        let gpu = local_rank % gpus;
        let device = Device::new_cuda(gpu)?;
        if worker_gpu > gpus as i64 {
            crate::logging::info(format!("--worker_gpu={worker_gpu} on {gpus} GPU(s): workers share GPUs"));
        }
        crate::logging::info(format!("running on CUDA GPU {gpu}"));
        return Ok(device);
    }
    if worker_gpu >= 1 && local_rank == 0 {
        crate::logging::info(if cfg!(feature = "cuda") {
            format!("--worker_gpu={worker_gpu}: no CUDA GPU found, running on the CPU")
        } else {
            format!("--worker_gpu={worker_gpu}: this build has no CUDA support, running on the CPU")
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
