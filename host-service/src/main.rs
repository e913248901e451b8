//! `vpm`: the VPM host service command. `vpm run` is the main job; see `vpm help`.

mod cli;

use clap::Parser;

fn main() {
    // Whatever the caller's umask, everything this process (and its children) creates is private.
    vpm_host::private_file::restrict_umask();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("VPM_LOG"))
        .with_writer(std::io::stderr)
        .init();
    // Bad options end here with clap's message and exit status 2.
    let args = cli::Cli::parse();
    if let Err(e) = cli::main(args) {
        eprintln!("vpm: {}", cli::error_chain(&e));
        std::process::exit(1);
    }
}
