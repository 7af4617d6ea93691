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
        let code = match (
            err.downcast_ref::<easynlp::interrupt::Interrupted>(),
            err.downcast_ref::<easynlp::dist::JobFailed>(),
        ) {
            (Some(i), _) => i.exit_code(),
            (None, Some(failed)) => failed.code,
            (None, None) => 1,
        };
        // One rank of several: its error (with its rank) ends the whole job at once.
        easynlp::dist::world().abort_on_error(&format!("{err:#}"), code);
        eprintln!("error: {err:#}");
        std::process::exit(code);
    }
    easynlp::dist::finalize();
}
