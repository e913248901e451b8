//! `vpm-bench`: benchmark commands (not tests). Each prints its figures and the floors they are
//! compared with, measured side by side in the same run, and writes JSON under `--out`.
//!
//! Usage: `vpm-bench suite|pm-core|libpmem|ext4 [--out DIR] [--quick]`

mod ext4cmp;
mod libpmem;
mod pm_core;
mod stats;
mod suite;

use std::path::PathBuf;
use vpm_host::error_chain;

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
    /// ext4 in a Linux guest (TCG): virtio-pmem against VPM full-virt and the VPM block device —
    /// host bytes made durable and host time per fsync, guest fsync latency.
    Ext4(ext4cmp::Ext4Args),
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

/// Why a benchmark failed: the error of the benchmark that ran.
#[derive(Debug, thiserror::Error)]
enum BenchError {
    /// `vpm-bench pm-core` failed.
    #[error(transparent)]
    PmCore(#[from] pm_core::PmCoreError),
    /// `vpm-bench libpmem` failed.
    #[error(transparent)]
    Libpmem(#[from] libpmem::LibpmemError),
    /// `vpm-bench suite` failed.
    #[error(transparent)]
    Suite(#[from] suite::SuiteError),
    /// `vpm-bench ext4` failed.
    #[error(transparent)]
    Ext4(#[from] ext4cmp::Ext4CmpError),
}

fn main() {
    // Bad options end here with clap's message and exit status 2.
    let cli = Cli::parse();
    let result: Result<(), BenchError> = match &cli.command {
        Bench::PmCore(c) => pm_core::run(&c.out, c.quick).map_err(Into::into),
        Bench::Libpmem(c) => libpmem::run(&c.out, c.quick).map_err(Into::into),
        Bench::Suite(c) => suite::run(&c.out, c.quick).map_err(Into::into),
        Bench::Ext4(a) => ext4cmp::run(a).map_err(Into::into),
    };
    if let Err(e) = result {
        eprintln!("vpm-bench: {}", error_chain(&e));
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
        assert!(p(&["ext4", "--ops", "50", "--epoch-ms", "100", "--out", "r"]).is_ok());
        assert!(p(&["ext4", "--ops", "many"]).is_err());
        assert!(p(&["suite", "--bogus"]).is_err());
        assert!(p(&["fast"]).is_err());
        assert!(p(&[]).is_err());
    }

    #[test]
    fn an_error_prints_with_its_sources_once_each() {
        let io = std::io::Error::other("disk on fire");
        let e = BenchError::from(suite::SuiteError::io("write", std::path::Path::new("r/x"))(
            io,
        ));
        assert_eq!(error_chain(&e), "write r/x: disk on fire");
        // A source whose text is already in the message is not repeated.
        let pm = vpm_host::pm::PmError::Io {
            what: "open",
            path: "p".into(),
            source: std::io::Error::other("gone"),
        };
        let e = BenchError::from(pm_core::PmCoreError::Floor(pm));
        assert_eq!(
            error_chain(&e),
            "measure the copy+flush floor: open p: gone"
        );
    }
}
