//! The service's VMs: each one a pool tenant with its configuration and, once booted, a thread
//! running it under a [`VmControl`]. States: created → running ⇄ paused → stopped (or failed);
//! a stopped VM may boot again (on its recovered vPM).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde::Serialize;

use super::config::{ConfigError, VmConfig};
use super::snapshot::SnapshotError;
use crate::pool::{Pool, PoolError};
use crate::qemu::{run_qemu_controlled, QemuOutcome};
use crate::vmm::{run_vm_controlled, GuestReportExt, VmControl, VmOutcome, VmStats, VmmError};

/// Errors of VM operations; each maps to an HTTP status (see `routes`).
#[derive(Debug, thiserror::Error)]
pub enum VmsError {
    /// The configuration was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No VM has this id.
    #[error("no VM {0:?}")]
    Unknown(String),
    /// A VM with this id exists.
    #[error("VM {0:?} exists")]
    Exists(String),
    /// The VM's state does not allow the operation.
    #[error("VM {id:?} is {state}: cannot {op} it")]
    WrongState {
        /// The VM.
        id: String,
        /// Its state.
        state: VmState,
        /// The operation.
        op: &'static str,
    },
    /// The pool has no room for the tenant (or refused it).
    #[error("add tenant {id:?} to the pool")]
    AddTenant {
        /// The tenant.
        id: String,
        /// Why.
        #[source]
        source: PoolError,
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
    /// An existing tenant of this name has another size.
    #[error("tenant {id:?} has {has} pages of vPM, the configuration asks for {want}")]
    TenantSize {
        /// The tenant.
        id: String,
        /// Its pages.
        has: u64,
        /// Pages asked for.
        want: u64,
    },
    /// A snapshot could not be taken or restored.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The VM thread could not be started.
    #[error("start the thread of VM {id:?}")]
    Spawn {
        /// The VM.
        id: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The VM's DRAM share does not fit in the service's DRAM budget.
    #[error(
        "dram_mib = {want_mib} does not fit: {left_mib} MiB of the service's DRAM budget are left"
    )]
    DramBudget {
        /// The share asked for.
        want_mib: u64,
        /// What is left.
        left_mib: u64,
    },
    /// The VMM failed to carry out a request.
    #[error("VM {id:?}")]
    Vmm {
        /// The VM.
        id: String,
        /// Why.
        #[source]
        source: VmmError,
    },
    /// The VM has no vPM device (it cannot boot, snapshot, or lose one).
    #[error("VM {0:?} has no vPM device (add one: PUT /api/v1/vms/{0}/pmem/DEV)")]
    NoPmem(String),
    /// The VM has no vPM device of this id.
    #[error("VM {id:?} has no vPM device {dev:?}")]
    UnknownPmem {
        /// The VM.
        id: String,
        /// The device asked for.
        dev: String,
    },
    /// The VM has a vPM device already (one per VM).
    #[error("VM {id:?} has a vPM device already ({dev:?}): one per VM; remove it first")]
    PmemExists {
        /// The VM.
        id: String,
        /// Its device.
        dev: String,
    },
    /// An operator's epoch request failed in the VMM (the QEMU front).
    #[error("VM {id:?}: epoch request failed: {message}")]
    EpochFailed {
        /// The VM.
        id: String,
        /// Why.
        message: String,
    },
    /// The VM ended before a request to it was served.
    #[error("VM {0:?} ended before the request was served")]
    Ended(String),
}

/// A VM's state as the API shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Configured, tenant made, never booted.
    Created,
    /// The guest runs.
    Running,
    /// The vCPU is held.
    Paused,
    /// A shutdown was asked for and the VM has not ended yet.
    ShuttingDown,
    /// The guest ended (finished its workload, or was shut down).
    Stopped,
    /// The guest or its VMM failed.
    Failed,
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self).expect("state");
        f.write_str(s.as_str().unwrap_or("?"))
    }
}

/// How a run ended.
#[derive(Debug)]
pub enum RunEnd {
    /// The VMM ran the guest to its end.
    Finished(Box<VmOutcome>),
    /// QEMU ran the Linux guest until it powered off (`exited`) or was stopped.
    Qemu(Box<QemuOutcome>),
    /// The VMM failed (the chain of its error).
    Failed(String),
}

/// One boot of a VM.
pub struct Run {
    /// Requests to the running VM.
    pub control: Arc<VmControl>,
    /// The VM thread (taken when joined).
    pub handle: Option<JoinHandle<()>>,
    /// How it ended, once it has.
    pub end: Arc<Mutex<Option<RunEnd>>>,
}

/// A VM's vPM device: its id (the API's `{dev}`) and the pool tenant holding its vPM (named
/// after the VM, so a recovered tenant is found again by the VM's id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pmem {
    /// The device id.
    pub id: String,
    /// Its tenant in the pool.
    pub tenant: u32,
}

/// The id of the vPM device a VM created with `vpm_mib` gets.
pub const DEFAULT_PMEM_ID: &str = "pmem0";

/// A VM of the service.
pub struct Vm {
    /// Its configuration (`vpm_mib` is its vPM device's size, 0 without one).
    pub config: VmConfig,
    /// Its vPM device (one at most), if it has one.
    pub pmem: Option<Pmem>,
    /// Boots so far.
    pub boots: u64,
    /// The current or last run.
    pub run: Option<Run>,
}

impl Vm {
    /// A VM with `config` and the device `pmem`, never booted.
    pub fn new(config: VmConfig, pmem: Option<Pmem>) -> Vm {
        Vm {
            config,
            pmem,
            boots: 0,
            run: None,
        }
    }

    /// The pool tenant of its vPM device, if it has one.
    pub fn tenant(&self) -> Option<u32> {
        self.pmem.as_ref().map(|p| p.tenant)
    }

    /// The JSON view of its vPM device (`None`: it has none).
    pub fn pmem_info(&self, pool: &Pool) -> Option<serde_json::Value> {
        let p = self.pmem.as_ref()?;
        let t = pool.tenant(p.tenant).ok();
        Some(serde_json::json!({
            "id": p.id,
            "size_mib": self.config.vpm_mib,
            "pm_quota_mib": self.config.tenant("x").pm_quota_bytes >> 20,
            "log_mib": self.config.tenant("x").log_bytes >> 20,
            "tenant": p.tenant,
            "epoch": t.map(|t| t.epoch()),
        }))
    }

    /// The VM's state.
    pub fn state(&self) -> VmState {
        let Some(run) = &self.run else {
            return VmState::Created;
        };
        match &*run.end.lock().expect("end") {
            Some(RunEnd::Finished(o)) if o.exit == crate::vmm::ExitKind::Failed => VmState::Failed,
            Some(RunEnd::Finished(o)) if o.report.errors > 0 => VmState::Failed,
            Some(RunEnd::Finished(_) | RunEnd::Qemu(_)) => VmState::Stopped,
            Some(RunEnd::Failed(_)) => VmState::Failed,
            None if run.control.stop_requested() => VmState::ShuttingDown,
            None if run.control.is_held() => VmState::Paused,
            None => VmState::Running,
        }
    }

    /// The control of the running VM, if it runs (or is paused).
    pub fn live_control(&self) -> Option<Arc<VmControl>> {
        let run = self.run.as_ref()?;
        let ended = run.end.lock().expect("end").is_some();
        (!ended).then(|| run.control.clone())
    }

    /// The running VM's DRAM demand ([`crate::tier::policy::dram_demand`]); `None` when it does
    /// not run.
    pub fn dram_demand(&self) -> Option<u64> {
        let vm = self.run.as_ref()?.control.running()?;
        let state = vm.state.lock().expect("state");
        Some(crate::tier::policy::dram_demand(&state.placements))
    }

    /// The VMM's counters: live while it runs, else those of the last run.
    pub fn stats(&self) -> Option<VmStats> {
        let run = self.run.as_ref()?;
        if let Some(vm) = run.control.running() {
            return Some(vm.stats.lock().expect("stats").clone());
        }
        match &*run.end.lock().expect("end") {
            Some(RunEnd::Finished(o)) => Some(o.stats.clone()),
            _ => None,
        }
    }

    /// The JSON view of the VM (its state, configuration, counters and last result).
    pub fn info(&self, id: &str, pool: &Pool) -> serde_json::Value {
        let tenant = self.tenant().and_then(|t| pool.tenant(t).ok());
        let end = self
            .run
            .as_ref()
            .and_then(|r| match &*r.end.lock().expect("end") {
                Some(RunEnd::Finished(o)) => Some(serde_json::json!({
                    "exit": o.exit,
                    "elapsed_ms": o.elapsed.as_secs_f64() * 1000.0,
                    "report": {
                        "state": o.report.state,
                        "errors": o.report.errors,
                        "ops": o.report.ops,
                        "values": o.report.values,
                        "message": o.report.message_text(),
                    },
                })),
                Some(RunEnd::Qemu(q)) => Some(serde_json::json!({
                    "exited": q.exited,
                    "stats": q.stats,
                    "console_tail": console_tail(&q.console),
                })),
                Some(RunEnd::Failed(e)) => Some(serde_json::json!({ "error": e })),
                None => None,
            });
        serde_json::json!({
            "id": id,
            "state": self.state(),
            "config": self.config,
            "boots": self.boots,
            "pmem": self.pmem_info(pool),
            "tenant": tenant.map(|t| serde_json::json!({
                "id": t.id(),
                "epoch": t.epoch(),
                "pages": t.pages(),
                "pm_homes": t.home_counts().0,
                "capacity_homes": t.home_counts().1,
                "pm_bytes_written": t.stats().pm_home_bytes + t.stats().log_bytes,
            })),
            "stats": self.stats(),
            "result": end,
        })
    }
}

/// The last lines of a console log (at most 4 KiB).
fn console_tail(console: &str) -> &str {
    let mut start = console.len().saturating_sub(4096);
    while !console.is_char_boundary(start) {
        start += 1;
    }
    &console[start..]
}

/// The VMs by id.
pub type VmTable = BTreeMap<String, Vm>;

/// Finds or makes the tenant of VM `id` in `pool` (an existing tenant of the same size is
/// taken as it is: its vPM was recovered when the pool opened).
pub fn tenant_for(pool: &mut Pool, id: &str, config: &VmConfig) -> Result<u32, VmsError> {
    if let Some(t) = pool.tenant_by_name(id) {
        let has = pool
            .tenant(t)
            .map_err(|source| VmsError::Pool {
                what: format!("read tenant {id}"),
                source,
            })?
            .pages();
        if has != config.pages() {
            return Err(VmsError::TenantSize {
                id: id.to_string(),
                has,
                want: config.pages(),
            });
        }
        return Ok(t);
    }
    pool.add_tenant(&config.tenant(id))
        .map_err(|source| VmsError::AddTenant {
            id: id.to_string(),
            source,
        })
}

/// How a run ended, logged: its outcome, or its error's chain.
fn run_end<E: std::error::Error>(name: &str, r: Result<RunEnd, E>) -> RunEnd {
    match r {
        Ok(o) => {
            tracing::info!(vm = %name, "VM ended");
            o
        }
        Err(err) => {
            let text = crate::error_chain(&err);
            tracing::error!(vm = %name, error = %text, "VM failed");
            RunEnd::Failed(text)
        }
    }
}

/// Boots VM `id`: a thread runs it on `pool` until it ends; its end is recorded in the run.
pub fn boot(
    id: &str,
    vm: &mut Vm,
    pool: &Arc<Mutex<Pool>>,
    work_dir: PathBuf,
) -> Result<(), VmsError> {
    let spec = vm.config.spec(id, work_dir.clone());
    let qemu = vm.config.qemu_spec(id, work_dir);
    let control = Arc::new(VmControl::default());
    let end = Arc::new(Mutex::new(None));
    let tenant = vm
        .tenant()
        .ok_or_else(|| VmsError::NoPmem(id.to_string()))?;
    let (c, e, p) = (control.clone(), end.clone(), pool.clone());
    let name = id.to_string();
    let handle = std::thread::Builder::new()
        .name(format!("vpm-vm-{id}"))
        .spawn(move || {
            let ended = match qemu {
                Some(q) => run_end(
                    &name,
                    run_qemu_controlled(&q, p, tenant, &c).map(|o| RunEnd::Qemu(Box::new(o))),
                ),
                None => run_end(
                    &name,
                    run_vm_controlled(&spec, p, tenant, &c).map(|o| RunEnd::Finished(Box::new(o))),
                ),
            };
            *e.lock().expect("end") = Some(ended);
        })
        .map_err(|source| VmsError::Spawn {
            id: id.to_string(),
            source,
        })?;
    vm.boots += 1;
    vm.run = Some(Run {
        control,
        handle: Some(handle),
        end,
    });
    Ok(())
}
