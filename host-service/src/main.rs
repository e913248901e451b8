//! `vpm`: the VPM host service command. `vpm run` is the main job; see `vpm help`.

mod cli;
mod mainjob;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("VPM_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = cli::main(&args) {
        eprintln!("vpm: {e}");
        std::process::exit(1);
    }
}
