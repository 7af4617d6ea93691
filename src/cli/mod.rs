//! The command line: turns the parsed flags into a validated invocation and dispatches it. The
//! only place that starts work from flags.

use crate::config::args::{Args, Mode};
use crate::config::report::ReportConfig;
use crate::config::run::{PrepConfig, RunConfig};
use crate::{apps, metakd, report};
use anyhow::{bail, Result};

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

/// Runs one `easynlp` invocation.
pub fn run(args: Args) -> Result<()> {
    if let Some(threads) = args.data_threads.or(args.predict_thread_num) {
        if threads > 0 {
            // Read by rayon and by candle's matmul when they first start their thread pools.
            std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
        }
    }
    let kernels = crate::ops::Kernels::from_env().map_err(anyhow::Error::msg)?;
    crate::ops::set_kernels(kernels);
    if kernels == crate::ops::Kernels::Portable {
        crate::logging::info("EASYNLP_KERNELS=portable: the device-generic path a GPU runs, not the fused CPU kernels");
    }
    match Invocation::from_args(args)? {
        Invocation::Text(cfg) => run_text(&cfg),
        Invocation::MetakdPrep(prep) => run_prep(&prep),
        Invocation::Report(cfg) => report::run(&cfg.runs, &cfg.outputs),
    }
}

/// A text-app run, by `--mode` and, in train, by the kind of training the settings select.
fn run_text(cfg: &RunConfig) -> Result<()> {
    let device = crate::device::select(cfg.args.worker_gpu, cfg.args.worker_count)?;
    crate::ops::precision::set_global(cfg.precision);
    if cfg.precision != crate::ops::Precision::F32 {
        if !device.is_cpu() {
            bail!("--precision={}: lower precisions run on the CPU only (drop --worker_gpu)", cfg.precision.name());
        }
        crate::logging::info(format!(
            "Precision {}: kernel path {}",
            cfg.precision.name(),
            cfg.precision.kernel_path()
        ));
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
