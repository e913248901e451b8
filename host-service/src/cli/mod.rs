//! Command line of `vpm` (clap): the subcommands, their typed options, and the command errors.

mod ctl;
mod guest;
mod main_job;
mod pool_info;
mod qemu;
mod serve;
mod soak;
pub(crate) mod values;

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};
use vpm_host::pm::PmError;
use vpm_host::pool::PoolError;
use vpm_host::state_dir::StateDirError;
use vpm_host::vmm::VmmError;

pub(crate) use guest::{open_pool, run_on, verdict, GuestArgs, WorkloadArgs};

/// vpm — virtualized persistent memory for KVM guests.
#[derive(Parser, Debug)]
#[command(name = "vpm", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// The main job: boots the VPM test guest with vPM in each mode (direct, msync, full, pv),
    /// runs a key-value workload, and shows what happened; fails if any guest reports data
    /// errors. The state directory is reset first (only VPM's own files; a directory that is
    /// not a VPM state directory is refused).
    Run(RunArgs),
    /// Runs one VM on a pool (created if missing) and prints a JSON result line; a tenant that
    /// exists is recovered first. Fails if the guest fails or reports data errors.
    Guest(GuestArgs),
    /// Verifies an existing pool (recovering it) and prints its tenants; creates nothing.
    PoolInfo(pool_info::PoolInfoArgs),
    /// Boots a Linux guest under QEMU (TCG) with the vPM region as e820 PM and serves vpm.ko's
    /// hints over isa-debugcon (guest-driver/build-guest.sh builds the kernel module, test
    /// program and initramfs).
    Qemu(qemu::QemuArgs),
    /// Crash soak: N times start a writer, kill -9 it at a random moment, recover and check.
    Soak(soak::SoakArgs),
    /// The host service: owns one pool and runs many VMs on it, controlled over HTTP/1.1 + JSON
    /// on a Unix socket (docs/serve.md, docs/api/openapi.json); metrics at /metrics.
    Serve(serve::ServeArgs),
    /// Sends one request to `vpm serve` and prints the response (fails on a non-2xx status).
    Ctl(ctl::CtlArgs),
}

/// `vpm run` options.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// State directory for the pool.
    #[arg(
        long,
        value_name = "DIR",
        env = "VPM_STATE",
        default_value = "/dev/shm/vpm-main"
    )]
    pub state: PathBuf,
    /// vCPUs of every VM (`vpm guest --vcpus`).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=vpm_abi::harness::MAX_VCPUS as i64))]
    pub vcpus: u32,
}

/// Errors of `vpm` commands.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The state directory could not be used.
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    /// A pool or capacity file could not be opened.
    #[error("{what}")]
    Pm {
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: PmError,
    },
    /// A pool operation failed.
    #[error("{what}")]
    Pool {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: PoolError,
    },
    /// A new pool could not be renamed into place.
    #[error("rename the new pool into place")]
    RenamePool {
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `pool-info` on a directory without a pool.
    #[error("no pool at {path}")]
    NoPool {
        /// The pool file looked for.
        path: String,
    },
    /// An existing tenant has another vPM size.
    #[error("tenant {vm} has {has_mib} MiB of vPM, not {want_mib}")]
    TenantSize {
        /// Tenant name.
        vm: String,
        /// Its size.
        has_mib: u64,
        /// The size asked for.
        want_mib: u64,
    },
    /// The VMM could not run a VM.
    #[error("run VM {vm}")]
    Vmm {
        /// VM name.
        vm: String,
        /// Why.
        #[source]
        source: VmmError,
    },
    /// A QEMU guest could not be served.
    #[error("run QEMU guest {vm}")]
    Qemu {
        /// VM name.
        vm: String,
        /// Why.
        #[source]
        source: vpm_host::qemu::QemuError,
    },
    /// The guest failed.
    #[error("the guest of VM {vm} failed: {message}")]
    GuestFailed {
        /// VM name.
        vm: String,
        /// The guest's message.
        message: String,
    },
    /// The guest found data errors.
    #[error("VM {vm}: the guest reported {errors} data errors: {message}")]
    DataErrors {
        /// VM name.
        vm: String,
        /// Error count.
        errors: u64,
        /// The guest's first error message.
        message: String,
    },
    /// Several VMs of the main job found data errors (each was printed).
    #[error("data errors in VMs {vms}")]
    MainJobErrors {
        /// The VMs, comma-separated.
        vms: String,
    },
    /// A results file could not be written.
    #[error("write {path}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The path of this executable is unknown (soak runs it).
    #[error("find the vpm executable")]
    Exe(#[source] std::io::Error),
    /// Crash trials failed (each was printed).
    #[error("{0} crash trials failed")]
    Trials(u64),
    /// `vpm serve` failed.
    #[error("vpm serve")]
    Serve(#[source] vpm_host::serve::ServeError),
    /// `vpm ctl` could not talk to the service.
    #[error("vpm ctl")]
    Client(#[source] vpm_host::serve::client::ClientError),
    /// The service answered with an error status (its body was printed).
    #[error("the service answered HTTP {0}")]
    HttpStatus(u16),
    /// `vpm qemu` serves para-virtual guests and full virtualization (epochs) only.
    #[error("vpm qemu serves --mode pv (hints) or --mode full (periodic epochs) only")]
    QemuMode,
}

pub use vpm_host::error_chain;

/// Runs the command line `cli` describes.
pub fn main(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Some(Command::Run(a)) => main_job::run(&a.state, a.vcpus),
        Some(Command::Guest(a)) => guest::run(&a),
        Some(Command::PoolInfo(a)) => pool_info::run(&a),
        Some(Command::Qemu(a)) => qemu::run(&a),
        Some(Command::Soak(a)) => soak::run(&a),
        Some(Command::Serve(a)) => serve::run(&a),
        Some(Command::Ctl(a)) => ctl::run(&a),
        None => {
            // `vpm` alone prints the help, as `vpm help` does.
            let _ = Cli::command().print_help();
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("vpm").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            &["guest", "--seconds", "-1"][..],
            &["guest", "--seconds", "nan"],
            &["guest", "--seconds", "inf"],
            &["guest", "--vpm-mib", "0"],
            &["guest", "--vpm-mib", "18446744073709551615"],
            &["guest", "--pool-mib", "2000000"],
            &["guest", "--hints", "X"],
            &["guest", "--mode", "fast"],
            &["guest", "--workload", "nope"],
            &["guest", "--doorbell", "bell"],
            &["guest", "--args", "1,2,3,4,5,6,7"],
            &["guest", "--bogus"],
            &["qemu", "--kernel", "k", "--initrd", "i", "--timeout", "-5"],
            &["qemu", "--initrd", "i"],
            &["soak", "--kind", "all"],
            &["soak", "--trials", "-1"],
            &["pool-info", "--mode", "pv"],
            &["serve", "--pool", "/tmp/p"],
            &["serve", "--socket", "/tmp/s"],
            &["serve", "--socket", "s", "--pool", "p", "--pm-mib", "0"],
            &[
                "serve",
                "--socket",
                "s",
                "--pool",
                "p",
                "--metrics-interval-ms",
                "1",
            ],
            &["ctl", "--socket", "s", "post", "/api/v1/vms"],
            &["ctl", "get", "/api/v1/vms"],
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn every_documented_option_parses() {
        let ok = parse(&[
            "guest",
            "--state",
            "/tmp/x",
            "--pool-mib",
            "96",
            "--vm",
            "a",
            "--fresh",
            "--mode",
            "pv",
            "--workload",
            "seq-writer",
            "--args",
            "0,8",
            "--seed",
            "3",
            "--vpm-mib",
            "16",
            "--dram-mib",
            "4",
            "--pm-quota-mib",
            "8",
            "--epoch-ms",
            "0",
            "--migrate-ms",
            "10",
            "--migrate-pages",
            "128",
            "--seconds",
            "1.5",
            "--hints",
            "off",
            "--transient-hints",
            "--witness",
            "w",
            "--epoch-witness",
            "e",
            "--doorbell",
            "ioeventfd",
        ]);
        let Ok(Cli {
            command: Some(Command::Guest(g)),
        }) = ok
        else {
            panic!("{ok:?}")
        };
        assert_eq!(g.seconds, Some(1.5));
        assert_eq!(g.args.unwrap().0, [0, 8]);
        assert!(parse(&["run", "--state", "/tmp/y"]).is_ok());
        assert!(parse(&[
            "serve",
            "--socket",
            "/tmp/s",
            "--pool",
            "/tmp/p",
            "--pm-mib",
            "64",
            "--dram-mib",
            "16",
            "--dram-policy",
            "static",
            "--metrics-ndjson",
            "/tmp/m",
            "--metrics-interval-ms",
            "500"
        ])
        .is_ok());
        let serve = |policy: &str| {
            parse(&[
                "serve",
                "--socket",
                "/tmp/s",
                "--pool",
                "/tmp/p",
                "--dram-policy",
                policy,
            ])
        };
        assert!(serve("shared").is_ok());
        assert!(serve("heat").is_err());
        assert!(parse(&[
            "ctl",
            "--socket",
            "/tmp/s",
            "put",
            "/api/v1/vms/a/boot",
            "{}"
        ])
        .is_ok());
        assert!(parse(&["pool-info", "--state", "/tmp/y"]).is_ok());
        assert!(parse(&["soak", "--trials", "3", "--kind", "pv", "--dir", "/tmp/z"]).is_ok());
        assert!(parse(&[
            "qemu",
            "--kernel",
            "k",
            "--initrd",
            "i",
            "--vpmtest",
            "basic",
            "--timeout",
            "90",
            "--append",
            "quiet",
            "--state",
            "/tmp/q",
            "--pool-mib",
            "128",
            "--vm",
            "linux"
        ])
        .is_ok());
    }
}
