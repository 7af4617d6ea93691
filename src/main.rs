//! The `easynlp` command: parses flags and runs the library; errors exit with status 1, a run
//! stopped by SIGINT/SIGTERM with 130/143.

use clap::Parser;

/// mimalloc keeps freed tensor buffers for reuse instead of returning them to the OS after every op.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    easynlp::alloc::keep_freed_memory();
    let args = easynlp::config::args::Args::parse();
    if let Err(err) = easynlp::interrupt::install() {
        eprintln!("error: cannot install the SIGINT/SIGTERM handlers: {err}");
        std::process::exit(1);
    }
    if let Err(err) = easynlp::run(args) {
        eprintln!("error: {err:#}");
        let code = err.downcast_ref::<easynlp::interrupt::Interrupted>().map_or(1, |i| i.exit_code());
        std::process::exit(code);
    }
}
