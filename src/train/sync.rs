//! Data-parallel training over a [`World`]: which rows of a global batch are this worker's (the
//! strided slice torch's `DistributedSampler` takes), the initial weights sent from rank 0, and
//! the gradient all-reduce in buckets over the flat gradients, parameter by parameter in name
//! order (the same on every rank).

use crate::dist::World;
use crate::model::params::Params;
use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

/// Gradient elements per all-reduce call (4 Mi f32 = 16 MiB): big enough that the latency of a
/// call is small against its transfer, small enough to bound the extra host memory.
pub const BUCKET_ELEMS: usize = 1 << 22;

/// This rank's rows of a global batch: positions `rank`, `rank + size`, ... (rank 0 always has
/// one when the batch is not empty; a rank past the batch's end gets none).
pub fn shard<T: Copy>(global: &[T], rank: usize, size: usize) -> Vec<T> {
    global.iter().skip(rank).step_by(size.max(1)).copied().collect()
}

/// How many rows of a global batch of `n` rows rank `rank` of `size` gets.
pub fn shard_len(n: usize, rank: usize, size: usize) -> usize {
    n.saturating_sub(rank).div_ceil(size.max(1))
}

/// Every rank takes rank 0's weights (they start equal anyway; this makes sure).
pub fn broadcast_params(params: &Params, world: &World) -> Result<()> {
    if !world.is_distributed() {
        return Ok(());
    }
    for (_, var) in params.iter() {
        let t = var.as_tensor();
        let mut v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        world.broadcast_f32(&mut v);
        var.set(&Tensor::from_vec(v, t.shape(), t.device())?.to_dtype(t.dtype())?)?;
    }
    Ok(())
}

/// Sums the gradients of `params` in `grads` over the ranks, in buckets of up to
/// [`BUCKET_ELEMS`] elements. A parameter without a gradient on a rank counts as zero there; it
/// has one afterwards when any rank had one.
pub fn all_reduce_grads(grads: &mut GradStore, params: &Params, world: &World) -> Result<()> {
    if !world.is_distributed() {
        return Ok(());
    }
    let vars: Vec<&Var> = params.iter().map(|(_, v)| v).collect();
    let mut present: Vec<f32> = vars.iter().map(|v| grads.get(v.as_tensor()).map_or(0.0, |_| 1.0)).collect();
    world.all_reduce_sum_f32(&mut present);
    let mut start = 0;
    while start < vars.len() {
        let mut end = start;
        let mut n = 0;
        while end < vars.len() && (end == start || n + vars[end].elem_count() <= BUCKET_ELEMS) {
            n += vars[end].elem_count();
            end += 1;
        }
        let (bucket, had) = (&vars[start..end], &present[start..end]);
        #[cfg(feature = "nccl")]
        if crate::dist::nccl::active() {
            reduce_bucket_on_gpus(bucket, had, grads)?;
            start = end;
            continue;
        }
        reduce_bucket_on_host(bucket, had, n, grads, world)?;
        start = end;
    }
    Ok(())
}

/// Sums one bucket of gradients over MPI through host memory (`n` elements in all).
fn reduce_bucket_on_host(vars: &[&Var], present: &[f32], n: usize, grads: &mut GradStore, world: &World) -> Result<()> {
    let mut bucket = Vec::with_capacity(n);
    for v in vars {
        match grads.get(v.as_tensor()) {
            // Over MPI on the host: counted transfers.
            Some(g) => bucket.extend(crate::ops::read_back::<f32>(g)?),
            None => bucket.resize(bucket.len() + v.elem_count(), 0.0),
        }
    }
    world.all_reduce_sum_f32(&mut bucket);
    split_back(vars, present, grads, |t, offset, count| {
        crate::ops::upload(bucket[offset..offset + count].to_vec(), t.shape(), t.device())
    })
}

/// Puts the summed bucket back as the gradients of `vars` (those any rank had): `part(t, offset,
/// count)` is the bucket's `count` elements from `offset` in `t`'s shape; converted to `t`'s dtype.
fn split_back(
    vars: &[&Var],
    present: &[f32],
    grads: &mut GradStore,
    part: impl Fn(&Tensor, usize, usize) -> candle_core::Result<Tensor>,
) -> Result<()> {
    let mut offset = 0;
    for (v, &had) in vars.iter().zip(present) {
        let count = v.elem_count();
        if had > 0.0 {
            let t = v.as_tensor();
            grads.insert(t, part(t, offset, count)?.to_dtype(t.dtype())?);
        }
        offset += count;
    }
    Ok(())
}

/// Sums one bucket of gradients with NCCL on the GPUs: flattened and joined on the device, summed,
/// split back; nothing crosses to the host.
#[cfg(feature = "nccl")]
fn reduce_bucket_on_gpus(vars: &[&Var], present: &[f32], grads: &mut GradStore) -> Result<()> {
    let parts = vars
        .iter()
        .map(|v| match grads.get(v.as_tensor()) {
            Some(g) => Ok(g.flatten_all()?.to_dtype(DType::F32)?),
            None => Ok(Tensor::zeros(v.elem_count(), DType::F32, v.device())?),
        })
        .collect::<Result<Vec<_>>>()?;
    let summed = crate::dist::nccl::all_reduce_sum(&Tensor::cat(&parts, 0)?)?;
    split_back(vars, present, grads, |t, offset, count| summed.narrow(0, offset, count)?.reshape(t.shape()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_strided_and_cover_the_batch_once() {
        let batch: Vec<usize> = (10..23).collect();
        let shards: Vec<Vec<usize>> = (0..4).map(|r| shard(&batch, r, 4)).collect();
        assert_eq!(shards[0], vec![10, 14, 18, 22]);
        assert_eq!(shards[3], vec![13, 17, 21]);
        let mut all: Vec<usize> = shards.concat();
        all.sort();
        assert_eq!(all, batch);
        for (r, s) in shards.iter().enumerate() {
            assert_eq!(s.len(), shard_len(batch.len(), r, 4));
        }
        assert_eq!(shard(&[7usize], 1, 2), Vec::<usize>::new());
        assert_eq!(shard_len(1, 1, 2), 0);
    }
}
