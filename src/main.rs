//! The `easynlp` command: parses flags and runs the library; errors exit with status 1.

use clap::Parser;

fn main() {
    let args = easynlp::cli::args::Args::parse();
    if let Err(err) = easynlp::run(args) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
