//! The processes of a data-parallel run and their collectives: rank, size and local rank, sum
//! all-reduce, broadcast from rank 0, barrier and all-gather. One process is always available;
//! with the `mpi` feature and under `mpirun` (or another MPI launcher) the world is MPI's
//! `MPI_COMM_WORLD` (Open MPI through rsmpi). MPI is initialised once per process by [`init`];
//! every collective is called from the main thread only, in the same order on every rank. With
//! `--features nccl`, ranks on CUDA GPUs sum their gradients with NCCL ([`nccl`]).

use std::sync::OnceLock;

#[cfg(feature = "nccl")]
pub mod nccl;

/// The world of this process: which rank it is among how many.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct World {
    rank: usize,
    size: usize,
    local_rank: usize,
    local_size: usize,
    mpi: bool,
}

static WORLD: OnceLock<World> = OnceLock::new();

/// The world of this process: MPI's once [`init`] started it, else one process.
pub fn world() -> &'static World {
    WORLD.get_or_init(World::single)
}

/// Environment variables that MPI launchers set in the processes they start (Open MPI, PMI-1/2
/// launchers such as MPICH's Hydra and Slurm, PMIx).
const LAUNCHER_SIZE_VARS: [&str; 3] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"];

/// The world size an MPI launcher announced to this process, when one started it.
pub fn launcher_size() -> Option<usize> {
    LAUNCHER_SIZE_VARS.iter().find_map(|v| std::env::var(v).ok()?.trim().parse().ok())
}

/// Whether this build can join an MPI world (the `mpi` feature).
pub const MPI_BUILD: bool = cfg!(feature = "mpi");

/// Whether this build has NCCL collectives for ranks on CUDA GPUs (the `nccl` feature).
pub const NCCL_BUILD: bool = cfg!(feature = "nccl");

/// The workers that `easynlp --worker_gpu=N` started through `mpirun` failed: the exit status
/// of the job (their own errors are above).
#[derive(Debug)]
pub struct JobFailed {
    /// Workers started.
    pub np: usize,
    /// `mpirun`'s exit status (1 when a signal ended it).
    pub code: i32,
}

impl std::fmt::Display for JobFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the {} workers started through mpirun failed (exit status {})", self.np, self.code)
    }
}

impl std::error::Error for JobFailed {}

/// Starts MPI (once; later calls return the same world). Without the `mpi` feature: one process.
pub fn init() -> anyhow::Result<&'static World> {
    #[cfg(feature = "mpi")]
    {
        if WORLD.get().is_none() {
            let world = mpi_impl::init()?;
            let _ = WORLD.set(world);
        }
    }
    Ok(world())
}

/// Ends MPI cleanly at the end of a successful run (nothing without MPI).
pub fn finalize() {
    #[cfg(feature = "mpi")]
    mpi_impl::finalize();
}

impl World {
    /// One process: rank 0 of 1.
    pub fn single() -> World {
        World { rank: 0, size: 1, local_rank: 0, local_size: 1, mpi: false }
    }

    /// This process's rank, `0..size`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of processes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// This process's rank among the processes of its machine.
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// The number of processes on this machine.
    pub fn local_size(&self) -> usize {
        self.local_size
    }

    /// Rank 0, the one that writes checkpoints, logs and outputs.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// More than one process.
    pub fn is_distributed(&self) -> bool {
        self.size > 1
    }

    /// `buf` becomes the element-wise sum of every rank's `buf`.
    pub fn all_reduce_sum_f32(&self, buf: &mut [f32]) {
        if self.size > 1 {
            #[cfg(feature = "mpi")]
            mpi_impl::all_reduce_sum(buf);
        }
        let _ = buf;
    }

    /// `buf` becomes the element-wise sum of every rank's `buf`.
    pub fn all_reduce_sum_f64(&self, buf: &mut [f64]) {
        if self.size > 1 {
            #[cfg(feature = "mpi")]
            mpi_impl::all_reduce_sum(buf);
        }
        let _ = buf;
    }

    /// `buf` becomes rank 0's `buf` on every rank (same length everywhere).
    pub fn broadcast_f32(&self, buf: &mut [f32]) {
        if self.size > 1 {
            #[cfg(feature = "mpi")]
            mpi_impl::broadcast(buf);
        }
        let _ = buf;
    }

    /// Rank 0's bytes on every rank (the length travels first).
    pub fn broadcast_bytes(&self, bytes: Vec<u8>) -> Vec<u8> {
        if self.size == 1 {
            return bytes;
        }
        #[cfg(feature = "mpi")]
        {
            let mut len = [bytes.len() as u64];
            mpi_impl::broadcast(&mut len);
            let mut buf = if self.is_root() { bytes } else { vec![0u8; len[0] as usize] };
            mpi_impl::broadcast(&mut buf[..]);
            buf
        }
        #[cfg(not(feature = "mpi"))]
        bytes
    }

    /// Rank 0's flag on every rank.
    pub fn broadcast_bool(&self, flag: bool) -> bool {
        self.broadcast_bytes(vec![flag as u8]).first().is_some_and(|&b| b != 0)
    }

    /// Whether any rank's `flag` is set.
    pub fn any(&self, flag: bool) -> bool {
        let mut v = [flag as u8 as f64];
        self.all_reduce_sum_f64(&mut v);
        v[0] > 0.0
    }

    /// Waits until every rank got here.
    pub fn barrier(&self) {
        if self.size > 1 {
            #[cfg(feature = "mpi")]
            mpi_impl::barrier();
        }
    }

    /// Every rank's bytes (of any length), indexed by rank, on every rank.
    pub fn all_gather_bytes(&self, mine: &[u8]) -> Vec<Vec<u8>> {
        if self.size == 1 {
            return vec![mine.to_vec()];
        }
        #[cfg(feature = "mpi")]
        {
            mpi_impl::all_gather_varcount(mine, self.size)
        }
        #[cfg(not(feature = "mpi"))]
        vec![mine.to_vec()]
    }

    /// Ends the whole job after an error on this rank: prints it with the rank and aborts every
    /// process (`MPI_Abort`), so the job ends within seconds with a non-zero status. One process:
    /// returns, the caller exits as usual.
    pub fn abort_on_error(&self, message: &str, code: i32) {
        if !self.mpi || self.size == 1 {
            return;
        }
        eprintln!("error: rank {} of {}: {message}", self.rank, self.size);
        #[cfg(feature = "mpi")]
        mpi_impl::abort(code);
        #[cfg(not(feature = "mpi"))]
        let _ = code;
    }
}

#[cfg(feature = "mpi")]
mod mpi_impl {
    use super::World;
    use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
    use mpi::datatype::{Equivalence, PartitionMut};
    use mpi::environment::Universe;
    use mpi::topology::{Communicator, SimpleCommunicator};
    use mpi::Threading;
    use std::sync::Mutex;

    /// The MPI environment, dropped (`MPI_Finalize`) by [`finalize`].
    static UNIVERSE: Mutex<Option<Universe>> = Mutex::new(None);

    fn comm() -> SimpleCommunicator {
        SimpleCommunicator::world()
    }

    /// `MPI_Init_thread` (funneled: only the main thread calls MPI) and the world's geometry.
    pub(super) fn init() -> anyhow::Result<World> {
        let Some((universe, provided)) = mpi::initialize_with_threading(Threading::Funneled) else {
            anyhow::bail!("MPI was initialised twice");
        };
        if provided == Threading::Single {
            anyhow::bail!("the MPI library provides thread level {provided:?}; easynlp needs Funneled");
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        let local = world.split_shared(world.rank());
        let (local_rank, local_size) = (local.rank() as usize, local.size() as usize);
        *UNIVERSE.lock().expect("not poisoned") = Some(universe);
        Ok(World { rank, size, local_rank, local_size, mpi: true })
    }

    pub(super) fn finalize() {
        if let Ok(mut u) = UNIVERSE.lock() {
            drop(u.take());
        }
    }

    pub(super) fn all_reduce_sum<T: Equivalence + Copy>(buf: &mut [T]) {
        // Large buffers go in pieces of at most 2^28 elements (MPI counts are C ints).
        for chunk in buf.chunks_mut(1 << 28) {
            let send = chunk.to_vec();
            comm().all_reduce_into(&send[..], chunk, SystemOperation::sum());
        }
    }

    pub(super) fn broadcast<T: Equivalence>(buf: &mut [T]) {
        comm().process_at_rank(0).broadcast_into(buf);
    }

    pub(super) fn barrier() {
        comm().barrier();
    }

    pub(super) fn all_gather_varcount(mine: &[u8], size: usize) -> Vec<Vec<u8>> {
        let c = comm();
        let mut counts = vec![0i32; size];
        c.all_gather_into(&(mine.len() as i32), &mut counts[..]);
        let displs: Vec<i32> = counts.iter().scan(0i32, |acc, &n| Some(std::mem::replace(acc, *acc + n))).collect();
        let total: usize = counts.iter().map(|&n| n as usize).sum();
        let mut all = vec![0u8; total];
        {
            let mut part = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
            c.all_gather_varcount_into(mine, &mut part);
        }
        counts.iter().zip(&displs).map(|(&n, &d)| all[d as usize..(d + n) as usize].to_vec()).collect()
    }

    pub(super) fn abort(code: i32) {
        comm().abort(code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_is_rank_zero_of_one_and_its_collectives_are_identities() {
        let w = World::single();
        assert_eq!((w.rank(), w.size(), w.local_rank(), w.local_size()), (0, 1, 0, 1));
        assert!(w.is_root() && !w.is_distributed());
        let mut v = [1.5f32, -2.0];
        w.all_reduce_sum_f32(&mut v);
        assert_eq!(v, [1.5, -2.0]);
        assert_eq!(w.broadcast_bytes(b"abc".to_vec()), b"abc");
        assert_eq!(w.all_gather_bytes(b"xy"), vec![b"xy".to_vec()]);
        assert!(w.any(true) && !w.any(false));
        assert!(w.broadcast_bool(true));
    }
}
