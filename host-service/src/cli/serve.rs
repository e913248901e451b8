//! `vpm serve`: the long-running host service on one pool (see `vpm_host::serve`).

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, ValueEnum};
use vpm_host::serve::{self, DramPolicy, ServeOptions};
use vpm_host::state_dir::StateDir;

use super::values::MAX_MIB;
use super::{open_pool, CliError};

/// `vpm serve` options.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The Unix socket to listen on (made mode 0600; a stale socket file is replaced).
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// Pool directory (a VPM state directory, locked while the service runs; created if
    /// missing).
    #[arg(long, value_name = "DIR")]
    pub pool: PathBuf,
    /// One DRAM budget for all VMs, MiB: divided among the running tiered VMs by heat (each
    /// keeps its dram_min_mib); a VM whose starting share does not fit is refused [default: each
    /// VM keeps its own dram_mib].
    #[arg(long, value_name = "N", allow_hyphen_values = true,
          value_parser = clap::value_parser!(u64).range(0..=MAX_MIB))]
    pub dram_mib: Option<u64>,
    /// How the --dram-mib budget is divided: `shared` by heat every 250 ms, or `static` (every
    /// VM keeps the dram_mib it was created with; the budget only refuses VMs that do not fit).
    #[arg(long, value_enum, value_name = "POLICY", default_value_t = DramPolicyArg::Shared)]
    pub dram_policy: DramPolicyArg,
    /// Pool size in MiB when it is created.
    #[arg(long, value_name = "N", allow_hyphen_values = true, default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=MAX_MIB))]
    pub pm_mib: u64,
    /// Append one NDJSON line of metrics to FILE every --metrics-interval-ms.
    #[arg(long, value_name = "FILE")]
    pub metrics_ndjson: Option<PathBuf>,
    /// Interval of the NDJSON metrics lines, ms.
    #[arg(long, value_name = "N", allow_hyphen_values = true, default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=86_400_000))]
    pub metrics_interval_ms: u64,
}

/// `--dram-policy` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DramPolicyArg {
    /// One budget divided among the running tiered VMs by heat.
    Shared,
    /// Every VM keeps the share it was created with.
    Static,
}

impl From<DramPolicyArg> for DramPolicy {
    fn from(a: DramPolicyArg) -> DramPolicy {
        match a {
            DramPolicyArg::Shared => DramPolicy::Shared,
            DramPolicyArg::Static => DramPolicy::Static,
        }
    }
}

/// Runs the service until SIGTERM or SIGINT.
pub fn run(a: &ServeArgs) -> Result<(), CliError> {
    let state = StateDir::open(&a.pool)?;
    let t0 = Instant::now();
    let pool = open_pool(&state, a.pm_mib)?;
    let opts = ServeOptions {
        socket: a.socket.clone(),
        work_dir: a.pool.clone(),
        dram_budget_bytes: a.dram_mib.map(|m| m << 20),
        dram_policy: a.dram_policy.into(),
        metrics_ndjson: a.metrics_ndjson.clone(),
        metrics_interval: std::time::Duration::from_millis(a.metrics_interval_ms),
    };
    serve::run(pool, t0.elapsed(), &opts).map_err(CliError::Serve)?;
    drop(state);
    Ok(())
}
