//! `vpm-bench`: benchmark commands (not tests). Each prints its figures and the floors they are
//! compared with, measured side by side in the same run, and writes JSON under `--out`.
//!
//! Usage: `vpm-bench suite|pm-core|libpmem|ext4|heat|smp [--out DIR] [--quick]`; `suite` also takes `--check`
//! (exit 1 when a target is missed) and `--vmx-exit-us US` (the VMX projection's exit cost).

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
    Suite(SuiteArgs),
    /// The PM core: commit throughput against the raw copy+flush floor, persist latency,
    /// recovery time.
    PmCore(Common),
    /// pv-libpmem's pmem_memcpy_persist against Debian's libpmem, native mode.
    Libpmem(Common),
    /// ext4 in a Linux guest (TCG): virtio-pmem against VPM full-virt and the VPM block device —
    /// host bytes made durable and host time per fsync, guest fsync latency.
    Ext4(ext4cmp::Ext4Args),
    /// PV KV puts and log appends at 1, 2 and 4 vCPUs (one ring per vCPU), polled and with
    /// doorbells: smp.json.
    Smp(Common),
    /// Only the suite's heat benchmarks (full-virt consolidation, DRAM absorption, write
    /// amplification, shared DRAM budget against static shares): heat.json.
    Heat(Common),
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

/// `vpm-bench suite` options.
#[derive(clap::Args, Debug)]
struct SuiteArgs {
    /// Output directory and run length.
    #[command(flatten)]
    common: Common,
    /// Exit with status 1, naming each, when any target in the report is missed.
    #[arg(long)]
    check: bool,
    /// VM exit round trip assumed on VMX hardware for the projection, in µs (0 < US ≤ 1000).
    #[arg(long, value_name = "US", default_value_t = 3.0, value_parser = exit_us)]
    vmx_exit_us: f64,
}

/// A `--vmx-exit-us` value that is not a number of µs in (0, 1000].
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a number of µs in (0, 1000]")]
struct ExitUsError(String);

/// A VMX exit cost: finite, positive, at most a millisecond.
fn exit_us(s: &str) -> Result<f64, ExitUsError> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 1000.0 => Ok(v),
        _ => Err(ExitUsError(s.into())),
    }
}

/// What `--check` makes of a run's targets: the lines to print and the exit status.
fn check_outcome(targets: &[suite::Target]) -> (Vec<String>, i32) {
    let missed = suite::missed(targets);
    let code = i32::from(!missed.is_empty());
    let mut lines: Vec<String> = missed.iter().map(|m| format!("missed: {m}")).collect();
    lines.push(format!(
        "vpm-bench suite --check: {} of {} targets met",
        targets.len() - missed.len(),
        targets.len()
    ));
    (lines, code)
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
    // Whatever the caller's umask, everything this process (and its children) creates is private.
    vpm_host::private_file::restrict_umask();
    // Bad options end here with clap's message and exit status 2.
    let cli = Cli::parse();
    let result: Result<i32, BenchError> = match &cli.command {
        Bench::PmCore(c) => pm_core::run(&c.out, c.quick)
            .map(|()| 0)
            .map_err(Into::into),
        Bench::Libpmem(c) => libpmem::run(&c.out, c.quick)
            .map(|()| 0)
            .map_err(Into::into),
        Bench::Smp(a) => suite::run_smp(&a.out, a.quick)
            .map(|_| 0)
            .map_err(BenchError::from),
        Bench::Heat(a) => suite::run_heat(&a.out, a.quick)
            .map(|()| 0)
            .map_err(BenchError::from),
        Bench::Suite(a) => suite::run(&a.common.out, a.common.quick, a.vmx_exit_us)
            .map(|targets| {
                let (lines, code) = check_outcome(&targets);
                for l in lines {
                    println!("{l}");
                }
                if a.check {
                    code
                } else {
                    0
                }
            })
            .map_err(Into::into),
        Bench::Ext4(a) => ext4cmp::run(a).map(|()| 0).map_err(Into::into),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("vpm-bench: {}", error_chain(&e));
            std::process::exit(2)
        }
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
        assert!(p(&["suite", "--check", "--vmx-exit-us", "1.5"]).is_ok());
        for bad in ["0", "-1", "nan", "inf", "1001", "x"] {
            assert!(p(&["suite", "--vmx-exit-us", bad]).is_err(), "{bad}");
        }
        assert!(p(&["pm-core"]).is_ok());
        assert!(p(&["libpmem", "--quick"]).is_ok());
        assert!(p(&["ext4", "--ops", "50", "--epoch-ms", "100", "--out", "r"]).is_ok());
        assert!(p(&["ext4", "--ops", "many"]).is_err());
        assert!(p(&["suite", "--bogus"]).is_err());
        assert!(p(&["fast"]).is_err());
        assert!(p(&[]).is_err());
    }

    #[test]
    fn check_exits_non_zero_and_names_each_missed_target() {
        let t = |name: &str, met: bool| suite::Target {
            name: name.into(),
            measured: "x".into(),
            met,
        };
        let (lines, code) = check_outcome(&[t("a", true), t("b", true)]);
        assert_eq!(code, 0);
        assert_eq!(lines, ["vpm-bench suite --check: 2 of 2 targets met"]);
        let (lines, code) = check_outcome(&[t("a", true), t("b", false), t("c", false)]);
        assert_eq!(code, 1);
        assert_eq!(lines[..2], ["missed: b: x", "missed: c: x"]);
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
