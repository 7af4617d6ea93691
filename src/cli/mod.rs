//! The command line: turns the parsed flags into a validated invocation and dispatches it. The
//! only place that starts work from flags.

use crate::config::args::Args;
use crate::config::run::{PrepConfig, RunConfig};
use anyhow::Result;

/// A validated invocation: a text-app run, or a Meta-KD data-preparation step.
#[derive(Clone, Debug)]
pub enum Invocation {
    /// train, evaluate or predict.
    Text(Box<RunConfig>),
    /// metakd_split, metakd_embeddings, metakd_weights or metakd_dev.
    MetakdPrep(Box<PrepConfig>),
}

impl Invocation {
    /// Validates the flags for the chosen mode.
    pub fn from_args(args: Args) -> Result<Self> {
        if args.mode.is_metakd_prep() {
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
    match Invocation::from_args(args)? {
        Invocation::Text(cfg) => crate::apps::run(&cfg),
        Invocation::MetakdPrep(prep) => crate::metakd::run(&prep),
    }
}
