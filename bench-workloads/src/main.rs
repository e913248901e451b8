//! `vpm-bench`: benchmark commands (not tests). Each prints its figures and the floors they are
//! compared with, measured side by side in the same run, and writes JSON under `--out`.
//!
//! Usage: `vpm-bench suite|pm-core|libpmem [--out DIR] [--quick]`

mod libpmem;
mod pm_core;
mod stats;
mod suite;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// vpm-bench — VPM benchmarks: ratios measured side by side in one run, JSON results.
#[derive(Parser, Debug)]
#[command(name = "vpm-bench", version)]
struct Cli {
    /// Which benchmark.
    #[command(subcommand)]
    command: Bench,
}

/// The benchmarks.
#[derive(Subcommand, Debug)]
enum Bench {
    /// PV against full virtualization against today's baselines, consolidation and endurance
    /// (results.json, CSV tables, SVG plots and report.md).
    Suite(Common),
    /// The PM core: commit throughput against the raw copy+flush floor, persist latency,
    /// recovery time.
    PmCore(Common),
    /// pv-libpmem's pmem_memcpy_persist against Debian's libpmem, native mode.
    Libpmem(Common),
}

/// Options every benchmark takes.
#[derive(clap::Args, Debug)]
struct Common {
    /// Directory for the results.
    #[arg(long, value_name = "DIR", default_value = "results")]
    out: PathBuf,
    /// A shorter run (fewer operations and sizes).
    #[arg(long)]
    quick: bool,
}

fn main() {
    // Bad options end here with clap's message and exit status 2.
    let cli = Cli::parse();
    let result = match &cli.command {
        Bench::PmCore(c) => pm_core::run(&c.out, c.quick),
        Bench::Libpmem(c) => libpmem::run(&c.out, c.quick),
        Bench::Suite(c) => suite::run(&c.out, c.quick),
    };
    if let Err(e) = result {
        eprintln!("vpm-bench: {e}");
        std::process::exit(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_parses_and_refuses() {
        Cli::command().debug_assert();
        let p =
            |a: &[&str]| Cli::try_parse_from(std::iter::once("vpm-bench").chain(a.iter().copied()));
        assert!(p(&["suite", "--quick", "--out", "r"]).is_ok());
        assert!(p(&["pm-core"]).is_ok());
        assert!(p(&["libpmem", "--quick"]).is_ok());
        assert!(p(&["suite", "--bogus"]).is_err());
        assert!(p(&["fast"]).is_err());
        assert!(p(&[]).is_err());
    }
}
