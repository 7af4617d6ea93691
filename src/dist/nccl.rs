//! NCCL collectives for ranks on CUDA GPUs (`--features nccl`): one communicator per process,
//! bootstrapped by broadcasting NCCL's unique id from rank 0 over MPI (the pattern of Horovod and
//! most HPC codes), and the sum all-reduce of a gradient bucket on the GPU, with no host copy.
//! Like every collective here it is called from the main thread only, in the same order on every
//! rank; the communicator lives in that thread.

use super::World;
use anyhow::{anyhow, bail, Context, Result};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::{CpuStorage, CudaDevice, CudaStorage, CustomOp1, Layout, Shape, Tensor};
use std::cell::RefCell;
use std::ffi::c_char;
use std::rc::Rc;

thread_local! {
    /// This process's communicator, once [`init`] made it (only the main thread calls collectives).
    static COMM: RefCell<Option<Rc<Comm>>> = const { RefCell::new(None) };
}

/// Joins this rank's GPU `device` into one NCCL communicator with every rank's: rank 0 makes the
/// unique id, MPI carries it to the others. Collective: every rank calls it once, after MPI started.
pub fn init(world: &World, device: &CudaDevice) -> Result<()> {
    let id = if world.is_root() {
        let id = Id::new().map_err(|e| anyhow!("NCCL: cannot create the communicator's id: {e:?}"))?;
        id.internal().iter().map(|&c| c as u8).collect()
    } else {
        Vec::new()
    };
    let bytes = world.broadcast_bytes(id);
    let Ok(bytes) = <[u8; 128]>::try_from(bytes.as_slice()) else {
        bail!("NCCL: rank 0 sent an id of {} bytes, not 128", bytes.len());
    };
    let id = Id::uninit(bytes.map(|b| b as c_char));
    let comm = Comm::from_rank(device.cuda_stream(), world.rank(), world.size(), id).map_err(|e| {
        anyhow!("NCCL: rank {} cannot join the communicator of {} ranks: {e:?}", world.rank(), world.size())
    })?;
    COMM.with(|c| *c.borrow_mut() = Some(Rc::new(comm)));
    Ok(())
}

/// Whether [`init`] made a communicator: gradients are then summed on the GPUs.
pub fn active() -> bool {
    COMM.with(|c| c.borrow().is_some())
}

/// `t` (f32, on this rank's GPU) summed over the ranks, on the GPU.
pub fn all_reduce_sum(t: &Tensor) -> Result<Tensor> {
    let comm = COMM.with(|c| c.borrow().clone()).context("NCCL is not initialised")?;
    Ok(t.contiguous()?.apply_op1_no_bwd(&AllReduceSum { comm })?)
}

/// The NCCL sum all-reduce as a candle op (a new buffer; the input stays as it was).
struct AllReduceSum {
    comm: Rc<Comm>,
}

impl CustomOp1 for AllReduceSum {
    fn name(&self) -> &'static str {
        "nccl-all-reduce-sum"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("the NCCL all-reduce runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle_core::bail!("the NCCL all-reduce needs a contiguous tensor")
        };
        let dev = storage.device().clone();
        let src = storage.as_cuda_slice::<f32>()?.slice(a..b);
        let mut dst = dev.alloc_zeros::<f32>(b - a)?;
        self.comm
            .all_reduce(&src, &mut dst, &ReduceOp::Sum)
            .map_err(|e| candle_core::Error::Msg(format!("NCCL all-reduce: {e:?}")))?;
        Ok((CudaStorage::wrap_cuda_slice(dst, dev), layout.shape().clone()))
    }
}
