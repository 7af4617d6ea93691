//! `--worker_gpu`, `--worker_count`, `--local_rank` and `--distributed_backend`: how many
//! data-parallel workers a run has and how they start. One worker runs in this process;
//! `--worker_gpu=N` (N > 1) on one machine starts N workers through `mpirun` (a build with the
//! `mpi` feature); under `mpirun` (or another MPI launcher) the flags are checked against the MPI
//! world. A flag that cannot take effect is refused, never ignored.

use super::args::Args;
use crate::dist::World;
use anyhow::{bail, Result};
use std::ffi::OsString;
use std::process::Command;

/// How this process takes part in the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workers {
    /// One worker, this process.
    Single,
    /// Start `np` workers on this machine through `mpirun`, and wait for them.
    Launch {
        /// Workers to start.
        np: usize,
    },
    /// This process is one rank of an MPI world (started by `mpirun`): join it.
    Join,
}

/// The command that builds easynlp with MPI.
pub const BUILD_HINT: &str =
    "build easynlp with MPI: `bash scripts/install_mpi.sh && cargo build --release --features mpi`";

/// Set in the workers `easynlp --worker_gpu=N` starts, so that one that does not see its MPI world
/// fails instead of starting workers again.
pub const LAUNCHED_ENV: &str = "EASYNLP_MPI_LAUNCHED";

/// Decides from the flags, the world size an MPI launcher announced (`launcher_size`, see
/// [`crate::dist::launcher_size`]) and whether this build has MPI how this process takes part.
pub fn plan(args: &Args, launcher_size: Option<usize>, mpi_build: bool) -> Result<Workers> {
    let g = args.worker_gpu;
    if g == 0 || g < -1 {
        bail!("--worker_gpu={g}: use N >= 1 workers per machine, or -1 (one worker per machine unless an MPI launcher started more)");
    }
    if args.worker_count == 0 {
        bail!("--worker_count=0: use the number of machines (1 or more)");
    }
    check_backend(args.distributed_backend.as_deref(), mpi_build)?;
    match launcher_size {
        Some(n) if mpi_build => {
            let _ = n;
            return Ok(Workers::Join);
        }
        Some(n) if n > 1 => bail!(
            "this process is one of {n} started by an MPI launcher, but this build has no MPI: each would train \
             alone and all would race on one checkpoint directory; {BUILD_HINT}"
        ),
        _ => {}
    }
    if std::env::var_os(LAUNCHED_ENV).is_some() {
        bail!("started by `easynlp --worker_gpu` through mpirun, but no MPI world is visible (is `mpirun` Open MPI?)");
    }
    if args.worker_count > 1 {
        if mpi_build {
            bail!(
                "--worker_count={}: workers on several machines are started by MPI: `mpirun -H host1,host2 -npernode N \
                 easynlp --worker_gpu=N --worker_count={} ...` (see README, Several workers)",
                args.worker_count,
                args.worker_count
            );
        }
        bail!("--worker_count={}: workers on several machines need MPI; {BUILD_HINT}", args.worker_count);
    }
    if let Some(lr) = args.local_rank.filter(|&lr| lr > 0) {
        bail!("--local_rank={lr}: this process is the only worker (no MPI world), so its local rank is 0");
    }
    if g > 1 {
        if !mpi_build {
            bail!("--worker_gpu={g}: several workers need a build with MPI; {BUILD_HINT}");
        }
        return Ok(Workers::Launch { np: g as usize });
    }
    Ok(Workers::Single)
}

/// `--distributed_backend`: `mpi` (the collectives of this build) is accepted where MPI is built
/// in, `nccl` where NCCL is (GPU ranks use it by default there); anything else is refused with what
/// to use instead.
fn check_backend(backend: Option<&str>, mpi_build: bool) -> Result<()> {
    match backend {
        None => Ok(()),
        Some("mpi") if mpi_build => Ok(()),
        Some("mpi") => bail!("--distributed_backend=mpi: this build has no MPI; {BUILD_HINT}"),
        Some("nccl") if crate::dist::NCCL_BUILD => Ok(()),
        Some("nccl") => bail!(
            "--distributed_backend=nccl: this build has no NCCL collectives; the gradients are all-reduced over MPI \
             (use --distributed_backend=mpi or leave the flag out), or build with NCCL: `cargo build --release \
             --features nccl` (see README, CUDA)"
        ),
        Some("gloo") => bail!(
            "--distributed_backend=gloo is PyTorch's CPU backend; easynlp's collectives run on MPI (use \
             --distributed_backend=mpi or leave the flag out)"
        ),
        Some(other) => bail!(
            "--distributed_backend={other}: unknown backend (this build knows: mpi{})",
            if crate::dist::NCCL_BUILD { ", nccl" } else { "" }
        ),
    }
}

/// Checks the flags of a rank that joined an MPI world against it: `--worker_gpu` x
/// `--worker_count` workers (when `--worker_gpu` is positive), and `--local_rank` (when given)
/// equal to MPI's local rank.
pub fn check_world(args: &Args, world: &World) -> Result<()> {
    let size = world.size();
    if args.worker_gpu > 0 {
        let want = args.worker_gpu as usize * args.worker_count;
        if want != size {
            bail!(
                "--worker_gpu={} x --worker_count={} = {want} workers, but MPI started {size} processes",
                args.worker_gpu,
                args.worker_count
            );
        }
    } else if !size.is_multiple_of(args.worker_count) {
        bail!("--worker_count={}: MPI started {size} processes, not a multiple of it", args.worker_count);
    }
    if let Some(lr) = args.local_rank.filter(|&lr| lr >= 0) {
        if lr as usize != world.local_rank() {
            bail!(
                "--local_rank={lr}: MPI made this process local rank {} (rank {} of {size}); leave --local_rank out, \
                 MPI assigns it",
                world.local_rank(),
                world.rank()
            );
        }
    }
    Ok(())
}

/// Compute threads of each rank when `--data_threads` does not say: the machine's threads shared
/// by the ranks on it.
pub fn threads_per_rank(available: usize, local_ranks: usize) -> usize {
    (available / local_ranks.max(1)).max(1)
}

/// The `mpirun` that starts `np` workers of this program with the arguments `args` (the same
/// command line): `$EASYNLP_MPIRUN` or `mpirun`, unbound (the ranks share the cores by their
/// thread counts), oversubscription allowed, allowed as root.
pub fn mpirun_command(np: usize, exe: &std::path::Path, args: &[OsString]) -> Command {
    let mpirun = std::env::var_os("EASYNLP_MPIRUN").unwrap_or_else(|| "mpirun".into());
    let mut cmd = Command::new(mpirun);
    cmd.arg("-np").arg(np.to_string()).args(["--bind-to", "none", "--oversubscribe"]);
    cmd.arg(exe).args(args);
    // Open MPI refuses root unless told; containers often run as root.
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    cmd.env(LAUNCHED_ENV, "1");
    cmd
}
