//! `vpm guest`: one VM on a pool, and the pieces the other commands share (opening a pool in a
//! state directory, finding or making the tenant, the VM spec, the JSON result line).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, Parser};
use serde_json::json;
use vpm_abi::harness::{BootParams, BOOT_MAGIC, FLAG_COUNT_STORES, FLAG_PV, FLAG_TRANSIENT_HINTS};
use vpm_abi::PAGE_SIZE;
use vpm_host::pm::file::FileDevice;
use vpm_host::pm::mapped::{FlushPolicy, MapOptions, MappedFile};
use vpm_host::pool::{Pool, PoolConfig, TenantConfig};
use vpm_host::state_dir::StateDir;
use vpm_host::vmm::{run_vm, ExitKind, GuestReportExt, Mode, VmOutcome, VmSpec};

use super::values::{
    seconds, vm_name, DoorbellArg, ModeArg, OnOff, WorkloadArg, MAX_ARGS, MAX_MIB, MAX_MS,
};
use super::CliError;

/// Pages in a MiB.
pub(super) const PAGES_PER_MIB: u64 = (1 << 20) / PAGE_SIZE;

/// Workload arguments: up to [`MAX_ARGS`] numbers separated by commas.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadArgs(pub Vec<u64>);

/// Why `--args` was refused.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadArgsError {
    /// One item is not an unsigned number.
    #[error("{item:?} is not an unsigned number")]
    NotANumber {
        /// The item.
        item: String,
        /// The parse error.
        #[source]
        source: std::num::ParseIntError,
    },
    /// More numbers than the boot parameters carry.
    #[error("at most {MAX_ARGS} numbers, not {0}")]
    TooMany(usize),
}

fn workload_args(s: &str) -> Result<WorkloadArgs, WorkloadArgsError> {
    let v = s
        .split(',')
        .map(|item| {
            item.trim()
                .parse::<u64>()
                .map_err(|source| WorkloadArgsError::NotANumber {
                    item: item.to_string(),
                    source,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if v.len() > MAX_ARGS {
        return Err(WorkloadArgsError::TooMany(v.len()));
    }
    Ok(WorkloadArgs(v))
}

/// Options of one VM (`vpm guest`, and the guest part of `vpm qemu`).
#[derive(Args, Clone, Debug)]
pub struct GuestArgs {
    /// Pool directory (a VPM state directory; created if missing).
    #[arg(long, value_name = "DIR", default_value = "/dev/shm/vpm")]
    pub state: PathBuf,
    /// Pool size in MiB when it is created.
    #[arg(long, value_name = "N", allow_hyphen_values = true, default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=MAX_MIB))]
    pub pool_mib: u64,
    /// Tenant name (letters, digits, '.', '_', '-'; it also names the VM's files).
    #[arg(long, value_name = "NAME", default_value = "vm0", value_parser = vm_name)]
    pub vm: String,
    /// Remove the tenant first (start from an empty vPM).
    #[arg(long)]
    pub fresh: bool,
    /// How vPM is served [default: full; `vpm qemu`: pv, the only mode it serves].
    #[arg(long, value_enum, value_name = "M")]
    pub mode: Option<ModeArg>,
    /// The guest's workload.
    #[arg(long, value_enum, value_name = "W", default_value_t = WorkloadArg::Kv)]
    pub workload: WorkloadArg,
    /// Workload arguments, comma-separated (see vpm_abi::harness::Workload).
    #[arg(long, value_name = "A,B,C", value_parser = workload_args)]
    pub args: Option<WorkloadArgs>,
    /// Seed.
    #[arg(long, value_name = "S", default_value_t = 1)]
    pub seed: u64,
    /// vPM size in MiB [default: 32; 64 under `vpm qemu`].
    #[arg(long, value_name = "N", allow_hyphen_values = true,
          value_parser = clap::value_parser!(u64).range(1..=MAX_MIB))]
    pub vpm_mib: Option<u64>,
    /// DRAM budget of the tiered modes in MiB.
    #[arg(long, value_name = "N", allow_hyphen_values = true, default_value_t = 8,
          value_parser = clap::value_parser!(u64).range(0..=MAX_MIB))]
    pub dram_mib: u64,
    /// PM homes quota in MiB [default: the vPM size].
    #[arg(long, value_name = "N", allow_hyphen_values = true,
          value_parser = clap::value_parser!(u64).range(0..=MAX_MIB))]
    pub pm_quota_mib: Option<u64>,
    /// Epoch interval in ms, 0 = only at the end.
    #[arg(long, value_name = "N", allow_hyphen_values = true, default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(0..=MAX_MS))]
    pub epoch_ms: u64,
    /// Force random DRAM<->PM moves at this interval in ms (0 = off).
    #[arg(long, value_name = "N", allow_hyphen_values = true, default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=MAX_MS))]
    pub migrate_ms: u64,
    /// Pages moved each way per forced move.
    #[arg(long, value_name = "N", allow_hyphen_values = true, default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(0..=MAX_MIB * PAGES_PER_MIB))]
    pub migrate_pages: u64,
    /// Stop the guest after S seconds (finite, not negative).
    #[arg(long, value_name = "S", value_parser = seconds, allow_hyphen_values = true)]
    pub seconds: Option<f64>,
    /// Persistence hints [default: on except in full mode].
    #[arg(long, value_enum, value_name = "on|off")]
    pub hints: Option<OnOff>,
    /// Mark transient scratch with hints.
    #[arg(long)]
    pub transient_hints: bool,
    /// The random and skewed write workloads count their stores per page, and the VMM charges
    /// those into PM-tier pages to PM (`pm_tier_store_bytes`).
    #[arg(long)]
    pub count_stores: bool,
    /// Append acknowledged drain sequences to FILE (`vpm qemu`: each acknowledged persist range,
    /// `OFFSET LEN` in vPM bytes).
    #[arg(long, value_name = "FILE")]
    pub witness: Option<PathBuf>,
    /// Append `epoch record` to FILE after each committed epoch (seq-writer).
    #[arg(long, value_name = "FILE")]
    pub epoch_witness: Option<PathBuf>,
    /// How the guest's ring doorbell reaches the host.
    #[arg(long, value_enum, value_name = "K", default_value_t = DoorbellArg::Exit)]
    pub doorbell: DoorbellArg,
    /// Polled rings: a host thread keeps polling the hint ring for US microseconds after the
    /// last hint before it sleeps on the doorbell, so a PV guest persists without a VM exit.
    /// 0 = no poller, a doorbell per batch (as ABI 1.0 guests always ring).
    /// `vpm guest`/`run`: 200 by default, a few VM exits on this PVM host: the poller spins only
    /// while hints arrive and for the window after the last one, then sleeps, so an idle guest
    /// costs almost no host CPU (docs/costs.md; `vpm-bench suite` measures it); it implies the
    /// ioeventfd doorbell and wants a spare host core while hints arrive.
    /// `vpm qemu`: 0 by default; with US > 0 the doorbell-socket thread polls (vpm.ko then rings
    /// only while it sleeps), but under TCG it competes with QEMU's vCPU threads for the host's
    /// cores (2 on the test machine, docs/costs.md).
    #[arg(long, value_name = "US",
          value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub poll_us: Option<u64>,
    /// Staged epochs (full mode): the pause copies the dirty pages into staging and the commit
    /// runs from it after the guest resumed (with `--precopy-rounds N`, N rounds also copy
    /// dirty pages before the stop); off = stop-and-commit, the whole commit in the pause. On
    /// by default: side by side on this PVM host the staged commit keeps 93–99 % of direct at
    /// 32 MiB and 81 % at 512 MiB where stop-and-commit keeps 85–99 % and 37 % (docs/costs.md §9).
    #[arg(long, value_enum, value_name = "ON|OFF", default_value_t = OnOff::On,
          env = "VPM_PRECOPY")]
    pub precopy: OnOff,
    /// Pre-copy rounds per epoch before the stop (0 = copy everything at the stop, commit
    /// after the guest resumed; each round re-arms tracking, a fault per page it copied).
    #[arg(long, value_name = "N", default_value_t = VmSpec::DEFAULT_PRECOPY_ROUNDS,
          env = "VPM_PRECOPY_ROUNDS",
          value_parser = clap::value_parser!(u32).range(0..=16))]
    pub precopy_rounds: u32,
    /// vCPUs (KVM front), one host thread and one hint ring each. The KV and log workloads
    /// split vPM and their operations between the vCPUs, the sequence writer and checker run one
    /// log per vCPU slice; the other workloads run on vCPU 0 alone.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=vpm_abi::harness::MAX_VCPUS as i64))]
    pub vcpus: u32,
}

/// Parses guest options alone (for [`GuestArgs::defaults`]).
#[derive(Parser)]
struct GuestOnly {
    #[command(flatten)]
    guest: GuestArgs,
}

impl GuestArgs {
    /// Every option at its default.
    pub fn defaults() -> GuestArgs {
        GuestOnly::parse_from(["vpm-guest"]).guest
    }

    /// The mode (full when not given).
    pub fn mode(&self) -> Mode {
        self.mode.unwrap_or(ModeArg::Full).into()
    }

    /// The vPM size in MiB (`default` when not given).
    pub fn vpm_mib_or(&self, default: u64) -> u64 {
        self.vpm_mib.unwrap_or(default)
    }
}

/// Opens the pool in `state` (a locked state directory), creating it if there is none.
pub fn open_pool(state: &StateDir, pool_mib: u64) -> Result<Pool, CliError> {
    let dir = state.path();
    let path = dir.join("pool");
    // Any pool file counts, an empty one too: it is refused when opened (never taken for a
    // missing pool, which would delete the capacity file beside it).
    let exists = std::fs::symlink_metadata(&path).is_ok();
    // A new pool is formatted under another name and renamed into place once its header is
    // durable, so a crash during creation never leaves a half-made pool behind.
    let fresh = dir.join("pool.new");
    let pool_bytes = pool_mib << 20;
    let (open_path, size) = if exists {
        (&path, 0)
    } else {
        let _ = std::fs::remove_file(&fresh);
        let _ = std::fs::remove_file(dir.join("pool.cap"));
        (&fresh, pool_bytes)
    };
    open_pool_files(dir, open_path, size, exists, pool_bytes)
}

/// Opens an existing pool in `state` (recovering it); a missing pool is an error and nothing
/// is created.
pub fn open_existing_pool(state: &StateDir) -> Result<Pool, CliError> {
    let path = state.path().join("pool");
    let cap = state.path().join("pool.cap");
    let present = |p: &Path| std::fs::metadata(p).map(|m| m.is_file()).unwrap_or(false);
    if !present(&path) || !present(&cap) {
        return Err(CliError::NoPool {
            path: path.display().to_string(),
        });
    }
    open_pool_files(state.path(), &path, 0, true, 0)
}

fn open_pool_files(
    dir: &Path,
    open_path: &Path,
    size: u64,
    exists: bool,
    pool_bytes: u64,
) -> Result<Pool, CliError> {
    let opts = MapOptions {
        size,
        policy: FlushPolicy::Auto,
        exclusive: true,
        populate: true,
    };
    let pm = Arc::new(
        MappedFile::open_with(open_path, opts).map_err(|source| CliError::Pm {
            what: "open the pool file",
            source,
        })?,
    );
    let cap = Arc::new(
        FileDevice::open(&dir.join("pool.cap")).map_err(|source| CliError::Pm {
            what: "open the capacity file",
            source,
        })?,
    );
    if exists {
        let (pool, report) = Pool::open(pm, cap).map_err(|source| CliError::Pool {
            what: "open and recover the pool".into(),
            source,
        })?;
        for t in &report.tenants {
            if t.replayed_records > 0 || !t.notes.is_empty() {
                eprintln!(
                    "vpm: recovered tenant {} at epoch {} ({} redo records replayed) {}",
                    t.name,
                    t.epoch,
                    t.replayed_records,
                    t.notes.join("; ")
                );
            }
        }
        Ok(pool)
    } else {
        let cfg = PoolConfig {
            size: pool_bytes,
            max_tenants: 16,
            meta_bytes: pool_bytes / 8,
            pool_id: std::process::id() as u64,
        };
        let pool = Pool::create(pm, cap, &cfg).map_err(|source| CliError::Pool {
            what: "create the pool".into(),
            source,
        })?;
        std::fs::rename(open_path, dir.join("pool"))
            .map_err(|source| CliError::RenamePool { source })?;
        Ok(pool)
    }
}

/// The tenant of `o.vm` in `pool` (removed first with `--fresh`), made if missing.
pub fn tenant_for(pool: &mut Pool, o: &GuestArgs, vpm_mib: u64) -> Result<u32, CliError> {
    let pool_err = |what: String| move |source| CliError::Pool { what, source };
    if o.fresh {
        if let Some(id) = pool.tenant_by_name(&o.vm) {
            pool.remove_tenant(id)
                .map_err(pool_err(format!("remove tenant {}", o.vm)))?;
        }
    }
    if let Some(id) = pool.tenant_by_name(&o.vm) {
        let pages = pool
            .tenant(id)
            .map_err(pool_err(format!("read tenant {}", o.vm)))?
            .pages();
        if pages != vpm_mib * PAGES_PER_MIB {
            return Err(CliError::TenantSize {
                vm: o.vm.clone(),
                has_mib: pages / PAGES_PER_MIB,
                want_mib: vpm_mib,
            });
        }
        return Ok(id);
    }
    let vpm = vpm_mib << 20;
    pool.add_tenant(&TenantConfig {
        name: o.vm.clone(),
        vpm_bytes: vpm,
        pm_quota_bytes: o.pm_quota_mib.map_or(vpm, |m| m << 20),
        dram_budget_bytes: o.dram_mib << 20,
        log_bytes: (vpm / 8).max(2 << 20),
    })
    .map_err(pool_err(format!("add tenant {}", o.vm)))
}

/// The VM these options describe.
pub fn spec_for(o: &GuestArgs) -> VmSpec {
    let mode = o.mode();
    let hints = o.hints.map_or(mode != Mode::Full, bool::from);
    let mut arg = [0u64; MAX_ARGS];
    if let Some(a) = &o.args {
        for (slot, v) in arg.iter_mut().zip(&a.0) {
            *slot = *v;
        }
    }
    let flags = if hints { FLAG_PV } else { 0 }
        | if o.transient_hints {
            FLAG_TRANSIENT_HINTS
        } else {
            0
        }
        | if o.count_stores { FLAG_COUNT_STORES } else { 0 };
    let ms = |v: u64| (v > 0).then(|| Duration::from_millis(v));
    VmSpec {
        name: o.vm.clone(),
        mode,
        dram_budget_bytes: o.dram_mib << 20,
        epoch_interval: ms(o.epoch_ms),
        migrate_interval: ms(o.migrate_ms),
        migrate_pages: o.migrate_pages,
        params: BootParams {
            magic: BOOT_MAGIC,
            workload: vpm_abi::harness::Workload::from(o.workload) as u32,
            flags,
            seed: o.seed,
            arg,
            ..BootParams::default()
        },
        witness: o.witness.clone(),
        epoch_witness: o.epoch_witness.clone(),
        work_dir: o.state.clone(),
        time_limit: o.seconds.map(Duration::from_secs_f64),
        doorbell: o.doorbell.into(),
        poll_us: o.poll_us.unwrap_or(vpm_host::vmm::poller::DEFAULT_POLL_US),
        precopy_rounds: bool::from(o.precopy).then_some(o.precopy_rounds),
        vcpus: o.vcpus,
    }
}

/// The JSON result line of one VM.
pub fn outcome_json(o: &GuestArgs, out: &VmOutcome) -> serde_json::Value {
    json!({
        "vm": o.vm,
        "mode": o.mode(),
        "exit": out.exit,
        "elapsed_ms": out.elapsed.as_secs_f64() * 1000.0,
        "report": {
            "state": out.report.state,
            "errors": out.report.errors,
            "ops": out.report.ops,
            "values": out.report.values,
            "message": out.report.message_text(),
        },
        "stats": out.stats,
    })
}

/// Runs the VM `o` describes on `pool` (its tenant found or made) and returns its outcome and
/// JSON result line.
pub fn run_on(
    o: &GuestArgs,
    pool: &Arc<Mutex<Pool>>,
) -> Result<(VmOutcome, serde_json::Value), CliError> {
    let tenant = tenant_for(&mut pool.lock().expect("pool"), o, o.vpm_mib_or(32))?;
    let out = run_vm(&spec_for(o), pool.clone(), tenant).map_err(|source| CliError::Vmm {
        vm: o.vm.clone(),
        source,
    })?;
    let js = outcome_json(o, &out);
    Ok((out, js))
}

/// The error for a VM that failed or whose guest reported data errors, if any.
pub fn verdict(vm: &str, out: &VmOutcome) -> Result<(), CliError> {
    if out.exit == ExitKind::Failed {
        return Err(CliError::GuestFailed {
            vm: vm.to_string(),
            message: out.report.message_text(),
        });
    }
    if out.report.errors > 0 {
        return Err(CliError::DataErrors {
            vm: vm.to_string(),
            errors: out.report.errors,
            message: out.report.message_text(),
        });
    }
    Ok(())
}

/// `vpm guest`: prints the JSON result line; fails if the guest failed or reported errors.
pub fn run(o: &GuestArgs) -> Result<(), CliError> {
    let state = StateDir::open(&o.state)?;
    let pool = Arc::new(Mutex::new(open_pool(&state, o.pool_mib)?));
    let (out, js) = run_on(o, &pool)?;
    println!("{js}");
    verdict(&o.vm, &out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_args_are_bounded_numbers() {
        assert_eq!(workload_args("1, 2,3").unwrap().0, [1, 2, 3]);
        assert!(matches!(
            workload_args("1,x"),
            Err(WorkloadArgsError::NotANumber { .. })
        ));
        assert!(matches!(
            workload_args("1,2,3,4,5,6,7"),
            Err(WorkloadArgsError::TooMany(7))
        ));
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let g = GuestArgs::defaults();
        assert_eq!(g.state, PathBuf::from("/dev/shm/vpm"));
        assert_eq!((g.pool_mib, g.dram_mib, g.epoch_ms), (256, 8, 100));
        assert_eq!(g.vpm_mib_or(32), 32);
        assert_eq!(g.mode(), Mode::Full);
        assert_eq!(g.workload, WorkloadArg::Kv);
        assert_eq!(
            spec_for(&g).poll_us,
            200,
            "the ring poller is on by default"
        );
        assert_eq!(
            spec_for(&g).params.flags & FLAG_PV,
            0,
            "no hints in full mode"
        );
        let pv = GuestArgs {
            mode: Some(ModeArg::Pv),
            ..g
        };
        assert_eq!(spec_for(&pv).params.flags & FLAG_PV, FLAG_PV);
    }
}
