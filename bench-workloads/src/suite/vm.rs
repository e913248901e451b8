//! Running test-guest VMs in this process for the suite.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vpm_abi::harness::{
    BootParams, Workload, BOOT_MAGIC, FLAG_COUNT_STORES, FLAG_PV, FLAG_TRANSIENT_HINTS,
};
use vpm_host::pm::file::FileDevice;
use vpm_host::pm::mapped::{FlushPolicy, MapOptions, MappedFile};
use vpm_host::pool::{Pool, PoolConfig, TenantConfig};
use vpm_host::vmm::{
    run_vm_controlled, DoorbellKind, ExitKind, GuestReportExt, Mode, VmControl, VmOutcome, VmSpec,
};

use super::SuiteError;

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A fresh directory under `parent`.
    pub fn new(parent: &str, name: &str) -> Result<Scratch, SuiteError> {
        let d = PathBuf::from(parent).join(format!("vpm-suite-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        vpm_host::private_file::create_dir_all(&d)
            .map_err(SuiteError::io("create the scratch directory", &d))?;
        Ok(Scratch(d))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A new pool in `dir` with `data_mib` MiB of PM homes and `meta_mib` MiB of metadata.
pub fn pool(dir: &Path, data_mib: u64, meta_mib: u64) -> Result<Arc<Mutex<Pool>>, SuiteError> {
    let mib = data_mib + meta_mib + 1;
    // CPU cache flushes (clwb), as on real PM and as the copy+flush floors are measured: msync of
    // a tmpfs file is a syscall that writes nothing back, a cost no PM device has.
    let opts = MapOptions {
        size: mib << 20,
        policy: FlushPolicy::CpuFlush,
        exclusive: true,
        populate: true,
    };
    let (pm_path, cap_path) = (dir.join("pool"), dir.join("pool.cap"));
    let pm = Arc::new(MappedFile::open_with(&pm_path, opts).map_err(SuiteError::open(&pm_path))?);
    let cap = Arc::new(FileDevice::open(&cap_path).map_err(SuiteError::open(&cap_path))?);
    let cfg = PoolConfig {
        size: mib << 20,
        max_tenants: 8,
        meta_bytes: meta_mib << 20,
        pool_id: 7,
    };
    Pool::create(pm, cap, &cfg)
        .map(|p| Arc::new(Mutex::new(p)))
        .map_err(SuiteError::pool("create the pool"))
}

/// One VM to run.
#[derive(Clone, Debug)]
pub struct Job {
    /// Tenant name.
    pub name: String,
    /// Mode.
    pub mode: Mode,
    /// Workload.
    pub workload: Workload,
    /// Arguments.
    pub args: Vec<u64>,
    /// vPM MiB.
    pub vpm_mib: u64,
    /// DRAM budget MiB.
    pub dram_mib: u64,
    /// PM quota MiB (None: the vPM size).
    pub pm_quota_mib: Option<u64>,
    /// Epoch interval (tiered modes).
    pub epoch_ms: u64,
    /// Send hints.
    pub hints: bool,
    /// Transient hints.
    pub transient: bool,
    /// Ring poller window in µs (0: doorbell only).
    pub poll_us: u64,
    /// vCPUs (one writer and one hint ring each in the workloads that split).
    pub vcpus: u32,
    /// The guest counts its stores per page (`FLAG_COUNT_STORES`), so the VMM can charge those
    /// into PM-tier pages to PM (`VmStats::pm_tier_store_bytes`).
    pub count_stores: bool,
    /// Full mode: commit each epoch inside the pause (the design before staged commits),
    /// instead of staging the dirty pages and committing after the vCPU resumed.
    pub stop_and_commit: bool,
}

impl Job {
    /// A job with the suite's defaults.
    pub fn new(name: &str, mode: Mode, workload: Workload, args: &[u64]) -> Job {
        Job {
            name: name.into(),
            mode,
            workload,
            args: args.to_vec(),
            vpm_mib: 32,
            dram_mib: 8,
            pm_quota_mib: None,
            epoch_ms: 100,
            // Hints only where the guest is para-virtual or the baseline needs them (virtio-pmem's
            // flush); `direct` and `full` run the unmodified guest.
            hints: matches!(mode, Mode::Pv | Mode::Msync),
            transient: false,
            poll_us: 0,
            vcpus: 1,
            stop_and_commit: false,
            count_stores: false,
        }
    }
}

/// Adds the job's tenant to `pool` and runs it.
pub fn run(job: &Job, pool: &Arc<Mutex<Pool>>, dir: &Path) -> Result<VmOutcome, SuiteError> {
    run_controlled(job, pool, dir, &VmControl::default())
}

/// [`run`], with the VM's controller serving `control` (parked jobs such as DRAM share changes,
/// a stop).
pub fn run_controlled(
    job: &Job,
    pool: &Arc<Mutex<Pool>>,
    dir: &Path,
    control: &VmControl,
) -> Result<VmOutcome, SuiteError> {
    let vpm = job.vpm_mib << 20;
    let tenant = pool
        .lock()
        .expect("pool")
        .add_tenant(&TenantConfig {
            name: job.name.clone(),
            vpm_bytes: vpm,
            pm_quota_bytes: job.pm_quota_mib.map_or(vpm, |m| m << 20),
            dram_budget_bytes: job.dram_mib << 20,
            log_bytes: (vpm / 8).max(2 << 20),
        })
        .map_err(|source| SuiteError::AddTenant {
            name: job.name.clone(),
            source,
        })?;
    let mut arg = [0u64; 6];
    for (i, v) in job.args.iter().take(6).enumerate() {
        arg[i] = *v;
    }
    let flags = if job.hints { FLAG_PV } else { 0 }
        | if job.transient {
            FLAG_TRANSIENT_HINTS
        } else {
            0
        }
        | if job.count_stores {
            FLAG_COUNT_STORES
        } else {
            0
        };
    let spec = VmSpec {
        name: job.name.clone(),
        mode: job.mode,
        dram_budget_bytes: job.dram_mib << 20,
        epoch_interval: (job.epoch_ms > 0).then(|| Duration::from_millis(job.epoch_ms)),
        migrate_interval: None,
        migrate_pages: 0,
        params: BootParams {
            magic: BOOT_MAGIC,
            workload: job.workload as u32,
            flags,
            seed: 42,
            arg,
            ..BootParams::default()
        },
        witness: None,
        epoch_witness: None,
        work_dir: dir.to_path_buf(),
        time_limit: Some(Duration::from_secs(600)),
        doorbell: DoorbellKind::Exit,
        poll_us: job.poll_us,
        // Full mode's default staged commit, unless the job asks for stop-and-commit.
        precopy_rounds: (!job.stop_and_commit).then_some(VmSpec::DEFAULT_PRECOPY_ROUNDS),
        vcpus: job.vcpus,
    };
    let out = run_vm_controlled(&spec, pool.clone(), tenant, control).map_err(|source| {
        SuiteError::Vm {
            name: job.name.clone(),
            source,
        }
    })?;
    if out.exit == ExitKind::Failed {
        return Err(SuiteError::GuestFailed {
            name: job.name.clone(),
            message: out.report.message_text(),
        });
    }
    if out.report.errors != 0 {
        return Err(SuiteError::GuestErrors {
            name: job.name.clone(),
            errors: out.report.errors,
        });
    }
    Ok(out)
}

/// Runs `job` alone on a fresh pool with `pool_mib` MiB of homes in a scratch directory under
/// `parent`.
pub fn run_alone(job: &Job, parent: &str, pool_mib: u64) -> Result<VmOutcome, SuiteError> {
    let s = Scratch::new(parent, &job.name)?;
    // Metadata: the tenant's page map and redo log grow with its vPM.
    let p = pool(&s.0, pool_mib, (job.vpm_mib / 2 + 8).max(16))?;
    run(job, &p, &s.0)
}

/// A run's throughput: over the guest's timed window (steady state) when it marked one, else
/// over the whole run.
pub fn ops_per_s(o: &VmOutcome) -> f64 {
    if o.stats.window_ops > 0 && o.stats.window_us > 0 {
        o.stats.window_ops_per_s
    } else {
        o.report.ops as f64 / o.elapsed.as_secs_f64()
    }
}

/// The epoch figures of a full-virtualization run, for the suite's JSON rows: pause percentiles,
/// where the pause went, pre-copy work, and PM bytes per changed byte.
/// A row carries them as `"epoch": vm::epoch_fields(&o)` (suite/mod.rs).
pub fn epoch_fields(o: &VmOutcome) -> serde_json::Value {
    let s = &o.stats;
    let per_changed = if s.changed_bytes > 0 {
        s.epoch_pm_bytes as f64 / s.changed_bytes as f64
    } else {
        0.0
    };
    serde_json::json!({
        "pause_us_p50": s.pause_us_p50, "pause_us_p99": s.pause_us_p99,
        "window_pause_us_p50": s.window_pause_us_p50, "window_pause_us_p99": s.window_pause_us_p99,
        "window_epoch_pm_bytes": s.window_epoch_pm_bytes, "window_changed_bytes": s.window_changed_bytes,
        "pause_collect_us": s.pause_collect_us, "pause_copy_us": s.pause_copy_us,
        "pause_commit_us": s.pause_commit_us, "pause_protect_us": s.pause_protect_us,
        "pause_rebalance_us": s.pause_rebalance_us, "commit_running_us": s.commit_running_us,
        "precopy_rounds": s.precopy_rounds, "precopy_pages": s.precopy_pages,
        "stop_copy_pages": s.stop_copy_pages, "stop_streamed_pages": s.stop_streamed_pages, "changed_bytes": s.changed_bytes,
        "epoch_pm_bytes": s.epoch_pm_bytes, "pm_bytes_per_changed_byte": per_changed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vpm_host::vmm::VmStats;

    #[test]
    fn epoch_fields_carry_the_pause_percentiles_and_pm_bytes_per_changed_byte() {
        // SAFETY: all-zero bytes are a valid GuestReport (integers and a byte array).
        let report = unsafe { std::mem::zeroed() };
        let o = VmOutcome {
            exit: ExitKind::Done,
            report,
            stats: VmStats {
                pause_us_p99: 900,
                changed_bytes: 1000,
                epoch_pm_bytes: 1500,
                ..VmStats::default()
            },
            elapsed: Duration::from_secs(1),
        };
        let row = epoch_fields(&o);
        assert_eq!(row["pause_us_p99"], 900);
        assert_eq!(row["pm_bytes_per_changed_byte"], 1.5);
    }
}
