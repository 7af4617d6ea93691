//! The command line: turns the parsed flags into a validated invocation and dispatches it. The
//! only place that starts work from flags.

use crate::config::args::{Args, Mode};
use crate::config::report::ReportConfig;
use crate::config::run::{PrepConfig, RunConfig};
use crate::config::workers::{self, Workers};
use crate::dist;
use crate::{apps, metakd, report};
use anyhow::{bail, Context, Result};
use candle_core::Device;

/// A validated invocation: a text-app run, or a Meta-KD data-preparation step.
#[derive(Clone, Debug)]
pub enum Invocation {
    /// train, evaluate or predict.
    Text(Box<RunConfig>),
    /// metakd_split, metakd_embeddings, metakd_weights or metakd_dev.
    MetakdPrep(Box<PrepConfig>),
    /// report.
    Report(ReportConfig),
}

impl Invocation {
    /// Validates the flags for the chosen mode.
    pub fn from_args(args: Args) -> Result<Self> {
        if args.mode == Mode::Report {
            Ok(Invocation::Report(ReportConfig::from_args(&args)?))
        } else if args.mode.is_metakd_prep() {
            Ok(Invocation::MetakdPrep(Box::new(PrepConfig::from_args(args)?)))
        } else {
            Ok(Invocation::Text(Box::new(RunConfig::from_args(args)?)))
        }
    }
}

/// Runs one `easynlp` invocation: in this process, as one rank of an MPI world, or by starting
/// `--worker_gpu` workers through `mpirun`.
pub fn run(args: Args) -> Result<()> {
    let world = match workers::plan(&args, dist::launcher_size(), dist::MPI_BUILD)? {
        Workers::Launch { np } => return launch(np),
        Workers::Join => dist::init()?,
        Workers::Single => dist::world(),
    };
    workers::check_world(&args, world)?;
    // Rank 0 speaks for the job.
    crate::logging::set_quiet(!world.is_root());
    let threads = match args.data_threads.or(args.predict_thread_num) {
        Some(threads) if threads > 0 => Some(threads),
        _ if world.local_size() > 1 => {
            let available = std::thread::available_parallelism().map_or(1, |n| n.get());
            Some(workers::threads_per_rank(available, world.local_size()))
        }
        _ => None,
    };
    if let Some(threads) = threads {
        // Read by rayon and by candle's matmul when they first start their thread pools.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    if world.is_distributed() && world.is_root() {
        crate::logging::info(format!(
            "data parallel: {} workers ({} on this machine, {} compute threads each)",
            world.size(),
            world.local_size(),
            threads.map_or_else(|| "all".to_string(), |t| t.to_string())
        ));
    }
    let kernels = crate::ops::Kernels::from_env().map_err(anyhow::Error::msg)?;
    crate::ops::set_kernels(kernels);
    if kernels == crate::ops::Kernels::Portable {
        crate::logging::info("EASYNLP_KERNELS=portable: the device-generic path a GPU runs, not the fused CPU kernels");
    }
    match Invocation::from_args(args)? {
        Invocation::Text(cfg) => run_text(&cfg),
        // Data preparation and reports write files from one process: rank 0's.
        Invocation::MetakdPrep(prep) => on_root(world, || run_prep(&prep)),
        Invocation::Report(cfg) => on_root(world, || report::run(&cfg.runs, &cfg.outputs)),
    }
}

/// Runs `f` on rank 0 only; the other ranks wait for it.
fn on_root(world: &dist::World, f: impl FnOnce() -> Result<()>) -> Result<()> {
    let result = if world.is_root() { f() } else { Ok(()) };
    if result.is_ok() {
        world.barrier();
    }
    result
}

/// `easynlp --worker_gpu=N` outside an MPI world: starts N workers of this same command line
/// through `mpirun` on this machine and waits for them.
fn launch(np: usize) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find this program's path to start its workers")?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let mut cmd = workers::mpirun_command(np, &exe, &args);
    crate::logging::info(format!("--worker_gpu={np}: starting {np} workers through mpirun"));
    let status = cmd.status().with_context(|| {
        format!("cannot start mpirun for --worker_gpu={np} (is Open MPI installed? bash scripts/install_mpi.sh)")
    })?;
    if status.success() {
        return Ok(());
    }
    Err(dist::JobFailed { np, code: status.code().unwrap_or(1) }.into())
}

/// `--distributed_backend` on the device of this rank: ranks on CUDA GPUs of an `nccl` build sum
/// their gradients with NCCL unless `mpi` is asked for; `nccl` needs GPUs.
fn gpu_collectives(backend: Option<&str>, device: &Device) -> Result<()> {
    if backend == Some("nccl") && !device.is_cuda() {
        bail!(
            "--distributed_backend=nccl: this run is on the CPU, and NCCL sums the gradients of ranks on CUDA GPUs \
             (leave the flag out: CPU ranks use MPI)"
        );
    }
    #[cfg(feature = "nccl")]
    if let Device::Cuda(gpu) = device {
        let world = dist::world();
        if world.is_distributed() && backend != Some("mpi") {
            dist::nccl::init(world, gpu)?;
            crate::logging::info(format!("the {} ranks sum their gradients with NCCL on the GPUs", world.size()));
        }
    }
    Ok(())
}

/// A text-app run, by `--mode` and, in train, by the kind of training the settings select.
fn run_text(cfg: &RunConfig) -> Result<()> {
    let device = crate::device::select(cfg.args.worker_gpu, dist::world().local_rank())?;
    gpu_collectives(cfg.args.distributed_backend.as_deref(), &device)?;
    crate::ops::precision::set_global(cfg.precision);
    if cfg.precision != crate::ops::Precision::F32 {
        // Off the fused CPU kernels (a GPU, or EASYNLP_KERNELS=portable) bf16 is autocast.
        let off_fused = !device.is_cpu() || crate::ops::kernels() == crate::ops::Kernels::Portable;
        let path = match cfg.precision {
            crate::ops::Precision::Bf16 if off_fused => crate::ops::precision::AUTOCAST_PATH,
            _ if !device.is_cpu() => {
                bail!("--precision={}: int8 runs on the CPU only (drop --worker_gpu)", cfg.precision.name())
            }
            p => p.kernel_path(),
        };
        crate::logging::info(format!("Precision {}: kernel path {path}", cfg.precision.name()));
    }
    match (cfg.args.mode, &cfg.meta_teacher, &cfg.meta_student) {
        (Mode::Train, Some(meta), _) => metakd::teacher::run_train(cfg, meta, &device),
        (Mode::Train, None, Some(meta)) => metakd::student::run_train(cfg, meta, &device),
        (Mode::Train, None, None) => apps::train::run(cfg, &device),
        (Mode::Evaluate, ..) => apps::evaluate::run(cfg, &device),
        (Mode::Predict, ..) => apps::predict::run(cfg, &device),
        (other, ..) => bail!("--mode={} is not a text-app mode", other.name()),
    }
}

/// A Meta-KD data-preparation step.
fn run_prep(prep: &PrepConfig) -> Result<()> {
    match prep.args.mode {
        Mode::MetakdSplit => metakd::prep::split::run(prep),
        Mode::MetakdEmbeddings => metakd::prep::embeddings::run(prep),
        Mode::MetakdWeights => metakd::prep::weights::run(prep),
        Mode::MetakdDev => metakd::prep::dev::run(prep),
        other => bail!("--mode={} is not a Meta-KD preparation step", other.name()),
    }
}
