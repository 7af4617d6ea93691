//! Command-line surface: flags, `user_defined_parameters`, validation and dispatch.

pub mod args;
pub mod config;
pub mod udp;

use anyhow::Result;

/// Runs one `easynlp` invocation.
pub fn run(args: args::Args) -> Result<()> {
    if let Some(threads) = args.data_threads.or(args.predict_thread_num) {
        if threads > 0 {
            // Read by rayon and by candle's matmul when they first start their thread pools.
            std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
        }
    }
    crate::apps::dispatch(&config::Invocation::from_args(args)?)
}
