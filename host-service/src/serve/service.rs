//! The service's operations on its VMs and pool, independent of HTTP: create, boot, pause,
//! resume, shutdown, delete, epoch requests, snapshot and restore. Lock order: the VM table, then
//! the pool (VM threads take only the pool).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::config::{check_id, Front, PmemConfig, VmConfig};
use super::snapshot::Image;
use super::vms::{self, Pmem, RunEnd, Vm, VmState, VmTable, VmsError};
use crate::pool::Pool;
use crate::vmm::VmControl;

/// How long a request to a running VM (epoch, snapshot) may wait for its controller.
const PARKED_TIMEOUT: Duration = Duration::from_secs(30);

/// One `vpm serve` process: its pool, its VMs, where their files go.
pub struct Service {
    /// The pool, shared with the VM threads.
    pub pool: Arc<Mutex<Pool>>,
    /// The VMs by id.
    pub vms: Mutex<VmTable>,
    /// The state directory (VMs' working files).
    pub work_dir: PathBuf,
    /// When the service started.
    pub started: std::time::SystemTime,
    /// How long opening (and recovering) the pool took.
    pub recovery: Duration,
    /// DRAM budget of all VMs together, bytes (`None`: no limit).
    pub dram_budget_bytes: Option<u64>,
}

/// What a snapshot wrote.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SnapshotInfo {
    /// The image file.
    pub path: PathBuf,
    /// The committed epoch it shows.
    pub epoch: u64,
    /// vPM bytes in it.
    pub bytes: u64,
    /// CRC-32 of the vPM bytes.
    pub crc32: u32,
    /// How long the VM was parked for it (0 when it was not running), µs.
    pub parked_us: u64,
}

impl Service {
    /// A service over `pool` with no VMs.
    pub fn new(
        pool: Pool,
        work_dir: PathBuf,
        recovery: Duration,
        dram_budget_bytes: Option<u64>,
    ) -> Service {
        Service {
            pool: Arc::new(Mutex::new(pool)),
            vms: Mutex::new(VmTable::new()),
            work_dir,
            started: std::time::SystemTime::now(),
            recovery,
            dram_budget_bytes,
        }
    }

    /// Refuses `config` if its DRAM share does not fit in what the other VMs leave of the
    /// service's budget.
    fn check_dram(&self, t: &VmTable, config: &VmConfig) -> Result<(), VmsError> {
        let Some(budget) = self.dram_budget_bytes else {
            return Ok(());
        };
        let used: u64 = t.values().map(|vm| vm.config.dram_mib << 20).sum();
        let want = config.dram_mib << 20;
        if used + want > budget {
            return Err(VmsError::DramBudget {
                want_mib: config.dram_mib,
                left_mib: budget.saturating_sub(used) >> 20,
            });
        }
        Ok(())
    }

    /// The VM table, locked.
    pub fn table(&self) -> MutexGuard<'_, VmTable> {
        self.vms.lock().expect("vms")
    }

    fn with_vm<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Vm) -> Result<T, VmsError>,
    ) -> Result<T, VmsError> {
        let mut t = self.table();
        let vm = t
            .get_mut(id)
            .ok_or_else(|| VmsError::Unknown(id.to_string()))?;
        f(vm)
    }

    /// Creates VM `id` (its tenant found or made; nothing runs yet).
    pub fn create(&self, id: &str, config: VmConfig) -> Result<(), VmsError> {
        check_id(id)?;
        config.validate()?;
        let mut t = self.table();
        if t.contains_key(id) {
            return Err(VmsError::Exists(id.to_string()));
        }
        self.check_dram(&t, &config)?;
        let pmem = if config.vpm_mib > 0 {
            let tenant = vms::tenant_for(&mut self.pool.lock().expect("pool"), id, &config)?;
            Some(Pmem {
                id: vms::DEFAULT_PMEM_ID.to_string(),
                tenant,
            })
        } else {
            None
        };
        t.insert(id.to_string(), Vm::new(config, pmem));
        Ok(())
    }

    /// Boots VM `id` (created, stopped or failed).
    pub fn boot(&self, id: &str) -> Result<(), VmsError> {
        self.with_vm(id, |vm| match vm.state() {
            VmState::Created | VmState::Stopped | VmState::Failed => {
                // A finished run's thread has ended: join it before the next.
                if let Some(h) = vm.run.as_mut().and_then(|r| r.handle.take()) {
                    let _ = h.join();
                }
                vms::boot(id, vm, &self.pool, self.work_dir.clone())
            }
            state => Err(VmsError::WrongState {
                id: id.to_string(),
                state,
                op: "boot",
            }),
        })
    }

    /// The control of VM `id` if it is in state `want`, and its end (set once it has ended).
    #[allow(clippy::type_complexity)]
    fn live(
        &self,
        id: &str,
        op: &'static str,
        want: VmState,
    ) -> Result<(Arc<VmControl>, Arc<Mutex<Option<RunEnd>>>), VmsError> {
        self.with_vm(id, |vm| {
            let state = vm.state();
            match (vm.live_control(), vm.run.as_ref()) {
                (Some(c), Some(run)) if state == want => Ok((c, run.end.clone())),
                _ => Err(VmsError::WrongState {
                    id: id.to_string(),
                    state,
                    op,
                }),
            }
        })
    }

    /// Holds VM `id`'s vCPU (running → paused) and waits until it is parked (the KVM front's
    /// controller parks it; the QEMU front's stops the guest over QMP).
    pub async fn pause(&self, id: &str) -> Result<(), VmsError> {
        let (control, end) = self.live(id, "pause", VmState::Running)?;
        control.hold();
        let deadline = Instant::now() + PARKED_TIMEOUT;
        while !control.is_parked() {
            if end.lock().expect("end").is_some() || Instant::now() > deadline {
                return Err(VmsError::Ended(id.to_string()));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    /// Lets VM `id`'s vCPU run again (paused → running).
    pub fn resume(&self, id: &str) -> Result<(), VmsError> {
        self.live(id, "resume", VmState::Paused)?.0.release();
        Ok(())
    }

    /// Stops VM `id` and waits for its end (a final epoch commits in the tiered modes).
    pub async fn shutdown(&self, id: &str) -> Result<(), VmsError> {
        let handle = self.with_vm(id, |vm| {
            let state = vm.state();
            match vm.live_control() {
                Some(c) if matches!(state, VmState::Running | VmState::Paused) => {
                    c.stop();
                    Ok(vm.run.as_mut().and_then(|r| r.handle.take()))
                }
                _ => Err(VmsError::WrongState {
                    id: id.to_string(),
                    state,
                    op: "shut down",
                }),
            }
        })?;
        join(handle).await;
        Ok(())
    }

    /// Deletes VM `id`: stops it if it runs, then removes it and its tenant (its vPM is gone).
    pub async fn delete(&self, id: &str) -> Result<(), VmsError> {
        let handle = self.with_vm(id, |vm| {
            if let Some(c) = vm.live_control() {
                c.stop();
            }
            Ok(vm.run.as_mut().and_then(|r| r.handle.take()))
        })?;
        join(handle).await;
        let mut t = self.table();
        let vm = t
            .remove(id)
            .ok_or_else(|| VmsError::Unknown(id.to_string()))?;
        // The VM's own files (working copy, QEMU RAM, socket, console) go with it.
        for suffix in ["work", "ram", "sock", "qmp", "console"] {
            let _ = std::fs::remove_file(self.work_dir.join(format!("{id}.{suffix}")));
        }
        match vm.tenant() {
            Some(tenant) => self.remove_tenant(id, tenant),
            None => Ok(()),
        }
    }

    fn remove_tenant(&self, id: &str, tenant: u32) -> Result<(), VmsError> {
        self.pool
            .lock()
            .expect("pool")
            .remove_tenant(tenant)
            .map_err(|source| VmsError::Pool {
                what: format!("remove tenant {id}"),
                source,
            })
    }

    /// Adds vPM device `dev` to VM `id` (one per VM): `pmem` sizes it; its tenant is made, or
    /// found if one of the VM's name and that size exists (a recovered vPM).
    pub fn add_pmem(&self, id: &str, dev: &str, pmem: PmemConfig) -> Result<(), VmsError> {
        check_id(dev)?;
        let mut t = self.table();
        let vm = t
            .get_mut(id)
            .ok_or_else(|| VmsError::Unknown(id.to_string()))?;
        if let Some(p) = &vm.pmem {
            return Err(VmsError::PmemExists {
                id: id.to_string(),
                dev: p.id.clone(),
            });
        }
        let mut config = vm.config.clone();
        config.vpm_mib = pmem.size_mib;
        config.pm_quota_mib = pmem.pm_quota_mib;
        config.log_mib = pmem.log_mib;
        config.validate_pmem()?;
        let tenant = vms::tenant_for(&mut self.pool.lock().expect("pool"), id, &config)?;
        vm.config = config;
        vm.pmem = Some(Pmem {
            id: dev.to_string(),
            tenant,
        });
        Ok(())
    }

    /// Removes vPM device `dev` of VM `id` (not while it runs): its tenant leaves the pool (its
    /// vPM is gone) and the VM's working copy with it.
    pub fn remove_pmem(&self, id: &str, dev: &str) -> Result<(), VmsError> {
        let mut t = self.table();
        let vm = t
            .get_mut(id)
            .ok_or_else(|| VmsError::Unknown(id.to_string()))?;
        let tenant = match &vm.pmem {
            Some(p) if p.id == dev => p.tenant,
            _ => {
                return Err(VmsError::UnknownPmem {
                    id: id.to_string(),
                    dev: dev.to_string(),
                })
            }
        };
        let state = vm.state();
        if !matches!(state, VmState::Created | VmState::Stopped | VmState::Failed) {
            return Err(VmsError::WrongState {
                id: id.to_string(),
                state,
                op: "remove a vPM device of",
            });
        }
        self.remove_tenant(id, tenant)?;
        vm.pmem = None;
        vm.config.vpm_mib = 0;
        vm.config.pm_quota_mib = None;
        vm.config.log_mib = None;
        let _ = std::fs::remove_file(self.work_dir.join(format!("{id}.work")));
        Ok(())
    }

    /// The JSON view of vPM device `dev` of VM `id`.
    pub fn pmem_info(&self, id: &str, dev: &str) -> Result<serde_json::Value, VmsError> {
        let t = self.table();
        let vm = t.get(id).ok_or_else(|| VmsError::Unknown(id.to_string()))?;
        let pool = self.pool.lock().expect("pool");
        match vm.pmem_info(&pool) {
            Some(v) if vm.pmem.as_ref().is_some_and(|p| p.id == dev) => Ok(v),
            _ => Err(VmsError::UnknownPmem {
                id: id.to_string(),
                dev: dev.to_string(),
            }),
        }
    }

    /// Runs `job` with VM `id`'s vCPU parked after an epoch, if the VM runs; `None` if it does
    /// not (then the pool holds its committed vPM and nothing changes it).
    async fn parked<T: Send + 'static>(
        &self,
        id: &str,
        job: impl FnOnce(&crate::vmm::VmContext) -> T + Send + 'static,
    ) -> Result<Option<T>, VmsError> {
        // QEMU guests have no parked jobs: their committed vPM is what the pool holds.
        let control = self.with_vm(id, |vm| {
            Ok(vm.live_control().filter(|_| vm.config.front == Front::Kvm))
        })?;
        let Some(control) = control else {
            return Ok(None);
        };
        let (tx, rx) = oneshot::channel();
        control.run_parked(Box::new(move |vm| {
            let _ = tx.send(job(vm));
        }));
        match tokio::time::timeout(PARKED_TIMEOUT, rx).await {
            Ok(Ok(v)) => Ok(Some(v)),
            _ => Err(VmsError::Ended(id.to_string())),
        }
    }

    /// Commits an epoch of VM `id` now (tiered modes, VM running or paused); returns the
    /// tenant's committed epoch. On the QEMU front the VM's controller takes it (full mode: an
    /// epoch of its epoch driver; PV: the guest stopped and every vPM page committed).
    pub async fn epoch(&self, id: &str) -> Result<u64, VmsError> {
        let (state, tiered, front) = self.with_vm(id, |vm| {
            Ok((
                vm.state(),
                crate::vmm::Mode::from(vm.config.mode).tiered(),
                vm.config.front,
            ))
        })?;
        if !tiered || !matches!(state, VmState::Running | VmState::Paused) {
            return Err(VmsError::WrongState {
                id: id.to_string(),
                state,
                op: if tiered {
                    "take an epoch of"
                } else {
                    "take an epoch (direct modes have none) of"
                },
            });
        }
        if front == Front::Qemu {
            return self.qemu_epoch(id).await;
        }
        let epoch = self
            .parked(id, |vm| {
                let p = vm.pool.lock().expect("pool");
                p.tenant(vm.tenant).map(|t| t.epoch()).unwrap_or(0)
            })
            .await?;
        epoch.ok_or_else(|| VmsError::Ended(id.to_string()))
    }

    /// An epoch of QEMU VM `id`, through its controller.
    async fn qemu_epoch(&self, id: &str) -> Result<u64, VmsError> {
        let control = self
            .with_vm(id, |vm| Ok(vm.live_control()))?
            .ok_or_else(|| VmsError::Ended(id.to_string()))?;
        let (tx, rx) = oneshot::channel();
        control.request_epoch(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        match tokio::time::timeout(PARKED_TIMEOUT, rx).await {
            Ok(Ok(Ok(epoch))) => Ok(epoch),
            Ok(Ok(Err(message))) => Err(VmsError::EpochFailed {
                id: id.to_string(),
                message,
            }),
            _ => Err(VmsError::Ended(id.to_string())),
        }
    }

    /// Gives running VM `id` a DRAM share of `pages` (its coldest pages leave DRAM if it
    /// shrinks); returns the pages demoted.
    pub async fn set_dram_budget(&self, id: &str, pages: u64) -> Result<u64, VmsError> {
        let r = self.parked(id, move |vm| vm.set_dram_budget(pages)).await?;
        match r {
            Some(Ok(demoted)) => Ok(demoted),
            Some(Err(source)) => Err(VmsError::Vmm {
                id: id.to_string(),
                source,
            }),
            None => Err(VmsError::Ended(id.to_string())),
        }
    }

    /// Writes VM `id`'s committed vPM (after a fresh epoch if it runs) to `path`.
    pub async fn snapshot(&self, id: &str, path: &Path) -> Result<SnapshotInfo, VmsError> {
        let (tenant, qemu_live) = self.with_vm(id, |vm| {
            let tenant = vm
                .tenant()
                .ok_or_else(|| VmsError::NoPmem(id.to_string()))?;
            let live = vm.config.front == Front::Qemu
                && matches!(vm.state(), VmState::Running | VmState::Paused);
            Ok((tenant, live))
        })?;
        if qemu_live {
            // The QEMU front's controller commits an epoch first: the image is that instant.
            self.qemu_epoch(id).await?;
        }
        let parked = self
            .parked(id, |vm| {
                let t0 = Instant::now();
                let img = Image::of_tenant(&vm.pool.lock().expect("pool"), vm.tenant);
                (img, t0.elapsed())
            })
            .await?;
        let (image, parked_for) = match parked {
            Some((img, d)) => (img?, d),
            None => (
                Image::of_tenant(&self.pool.lock().expect("pool"), tenant)?,
                Duration::ZERO,
            ),
        };
        let p = path.to_path_buf();
        let img = image.clone();
        tokio::task::spawn_blocking(move || img.write(&p))
            .await
            .map_err(|_| VmsError::Ended(id.to_string()))??;
        Ok(SnapshotInfo {
            path: path.to_path_buf(),
            epoch: image.epoch,
            bytes: image.data.len() as u64,
            crc32: image.data_crc(),
            parked_us: parked_for.as_micros() as u64,
        })
    }

    /// Creates VM `id` from the snapshot at `path`: a new tenant whose committed vPM is the
    /// image (the configuration's vPM size must be the image's).
    pub fn restore(&self, id: &str, path: &Path, config: VmConfig) -> Result<(), VmsError> {
        check_id(id)?;
        config.validate()?;
        let image = Image::read(path)?;
        if image.pages() != config.pages() {
            return Err(VmsError::TenantSize {
                id: id.to_string(),
                has: image.pages(),
                want: config.pages(),
            });
        }
        let mut t = self.table();
        let mut pool = self.pool.lock().expect("pool");
        if t.contains_key(id) || pool.tenant_by_name(id).is_some() {
            return Err(VmsError::Exists(id.to_string()));
        }
        self.check_dram(&t, &config)?;
        let tenant = vms::tenant_for(&mut pool, id, &config)?;
        if let Err(e) = image.restore_into(&mut pool, tenant) {
            let _ = pool.remove_tenant(tenant);
            return Err(e.into());
        }
        let pmem = Pmem {
            id: vms::DEFAULT_PMEM_ID.to_string(),
            tenant,
        };
        t.insert(id.to_string(), Vm::new(config, Some(pmem)));
        Ok(())
    }

    /// The pool's geometry, free space and tenants.
    pub fn pool_info(&self) -> serde_json::Value {
        let t = self.table();
        let pool = self.pool.lock().expect("pool");
        let h = pool.header();
        let tenants: Vec<serde_json::Value> = pool
            .tenant_ids()
            .into_iter()
            .filter_map(|id| pool.tenant(id).ok())
            .map(|tn| {
                let name = tn.desc().name_str();
                serde_json::json!({
                    "id": tn.id(),
                    "name": name,
                    "vm": t.contains_key(&name),
                    "epoch": tn.epoch(),
                    "pages": tn.pages(),
                    "pm_homes": tn.home_counts().0,
                    "capacity_homes": tn.home_counts().1,
                })
            })
            .collect();
        serde_json::json!({
            "size_bytes": h.total_bytes,
            "data_pages": h.data_pages,
            "free_pm_pages": pool.free_pm_pages(),
            "max_tenants": h.max_tenants,
            "recovery_ms": self.recovery.as_secs_f64() * 1000.0,
            "tenants": tenants,
        })
    }

    /// Stops every VM and waits for them (service shutdown: final epochs commit).
    pub async fn stop_all(&self) {
        let handles: Vec<_> = self
            .table()
            .values_mut()
            .filter_map(|vm| {
                if let Some(c) = vm.live_control() {
                    c.stop();
                }
                vm.run.as_mut().and_then(|r| r.handle.take())
            })
            .collect();
        for h in handles {
            join(Some(h)).await;
        }
    }
}

/// Waits for a VM thread off the async runtime.
async fn join(handle: Option<std::thread::JoinHandle<()>>) {
    if let Some(h) = handle {
        let _ = tokio::task::spawn_blocking(move || h.join()).await;
    }
}
