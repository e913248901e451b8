//! `vpm soak`: crash trials in any number (start a writer, kill -9 it, recover, check).

use std::path::PathBuf;

use clap::ValueEnum;
use vpm_host::crashtest::{run_trial, TrialConfig, TrialKind};
use vpm_host::state_dir::StateDir;

use super::CliError;

/// `--kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    /// Full virtualization, point-in-time check.
    Full,
    /// Para-virtual, every acknowledged record survives.
    Pv,
    /// Para-virtual transient scratch reads as zeros after the crash.
    Transient,
}

impl From<KindArg> for TrialKind {
    fn from(k: KindArg) -> TrialKind {
        match k {
            KindArg::Full => TrialKind::FullPrefix,
            KindArg::Pv => TrialKind::PvPersisted,
            KindArg::Transient => TrialKind::PvTransient,
        }
    }
}

/// `vpm soak` options.
#[derive(clap::Args, Debug)]
pub struct SoakArgs {
    /// Trials of each kind.
    #[arg(long, value_name = "N", default_value_t = 1000, allow_hyphen_values = true,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub trials: u64,
    /// Only this kind of trial [default: all three].
    #[arg(long, value_enum, value_name = "full|pv|transient")]
    pub kind: Option<KindArg>,
    /// State directory for the trials (reset per trial, removed at the end).
    #[arg(long, value_name = "DIR", default_value = "/dev/shm/vpm-soak")]
    pub dir: PathBuf,
    /// The writers' ring poller window (`vpm guest --poll-us`; 0 = doorbell only).
    #[arg(long, value_name = "US", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub poll_us: u64,
    /// vCPUs of the writers and checkers (`vpm guest --vcpus`): one sequence log per vCPU.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=vpm_abi::harness::MAX_VCPUS as i64))]
    pub vcpus: u32,
}

/// Runs the soak; fails if any trial failed.
pub fn run(a: &SoakArgs) -> Result<(), CliError> {
    let kinds: Vec<TrialKind> = match a.kind {
        Some(k) => vec![k.into()],
        None => vec![
            TrialKind::FullPrefix,
            TrialKind::PvPersisted,
            TrialKind::PvTransient,
        ],
    };
    // Refuse a directory that is not VPM's before the first trial.
    drop(StateDir::open(&a.dir)?);
    let vpm = std::env::current_exe().map_err(CliError::Exe)?;
    let mut failures = 0;
    for kind in kinds {
        let (lo, hi) = if kind == TrialKind::PvTransient {
            (60, 300)
        } else {
            (10, 400)
        };
        let cfg = TrialConfig {
            vpm: vpm.clone(),
            dir: a.dir.clone(),
            kind,
            kill_after_ms: (lo, hi),
            vpm_mib: 8,
            poll_us: a.poll_us,
            vcpus: a.vcpus,
        };
        let mut worst_recover = 0;
        for i in 0..a.trials {
            match run_trial(&cfg, i * 7919 + 1) {
                Ok(r) if r.errors == 0 => worst_recover = worst_recover.max(r.recover_ms),
                Ok(r) => {
                    failures += 1;
                    eprintln!("{kind:?} trial {i}: {} errors: {}", r.errors, r.message);
                }
                Err(e) => {
                    failures += 1;
                    eprintln!("{kind:?} trial {i}: {}", super::error_chain(&e));
                }
            }
            if (i + 1) % 50 == 0 {
                println!(
                    "{kind:?}: {} trials, {failures} failed, slowest recovery+check {worst_recover} ms",
                    i + 1
                );
            }
        }
    }
    StateDir::open(&a.dir)?.remove()?;
    if failures > 0 {
        return Err(CliError::Trials(failures));
    }
    println!("soak passed");
    Ok(())
}
