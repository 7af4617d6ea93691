//! The `easynlp` command: parses flags and runs the library; errors exit with status 1.

use clap::Parser;

/// mimalloc keeps freed tensor buffers for reuse instead of returning them to the OS after every op.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    easynlp::alloc::keep_freed_memory();
    let args = easynlp::cli::args::Args::parse();
    if let Err(err) = easynlp::run(args) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
