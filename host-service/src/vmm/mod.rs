//! The KVM VMM that serves vPM to the VPM test guest.
//!
//! Data path: guest store → [`memory`] (the vPM mapping, DRAM or PM backing per page) → KVM's
//! dirty log ([`kvm`]) → [`epoch`] (commit to the pool, placement moves) → `crate::pool` (PM).
//! Para-virtual hints arrive through the doorbell port and [`hints`].

pub mod epoch;
pub mod hints;
pub mod hot;
pub mod kvm;
pub mod layout;
pub mod memory;
pub mod mode;
pub mod pause;
pub mod poller;
pub mod stats;
pub mod vcpu;

use std::io::{Cursor, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuExit, VmFd};
use linux_loader::loader::{elf::Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vpm_abi::harness::{BootParams, GuestExit, GuestReport, CONTROL_PORT, PROGRESS_PORT};
use vpm_abi::{HintResult, DOORBELL_PORT, PROBE_REPLY};

use crate::pool::layout::Home;
use crate::pool::{Pool, PoolError};
use crate::tier::{Move, Placement, TierTable};
use hints::HintService;
use hot::HotPages;
use kvm::DirtyLog;
use layout::{BOOT_PARAMS_GPA, GUEST_RAM_SIZE, REPORT_GPA, VPM_BASE_GPA, VPM_MAX_SIZE};
use memory::{MemoryError, VpmMemory};
pub use mode::Mode;
use pause::PauseGate;
pub use stats::VmStats;

/// `BootParams` as guest-memory bytes.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct BootParamsBytes(BootParams);
// SAFETY: BootParams is repr(C) plain data of u64/u32 fields without padding holes that matter
// (any byte pattern is a valid value).
unsafe impl vm_memory::ByteValued for BootParamsBytes {}

/// `GuestReport` as guest-memory bytes.
#[derive(Clone, Copy)]
#[repr(transparent)]
struct ReportBytes(GuestReport);
// SAFETY: GuestReport is repr(C) plain data (integers and a byte array); any bytes are valid.
unsafe impl vm_memory::ByteValued for ReportBytes {}
impl Default for ReportBytes {
    fn default() -> Self {
        // SAFETY: all-zero bytes are a valid GuestReport (see above).
        ReportBytes(unsafe { std::mem::zeroed() })
    }
}

/// The test guest, built by `build.rs` from `tests/guest`.
pub static TEST_GUEST_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vpm-test-guest"));

/// Errors of the VMM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// KVM refused something.
    #[error("KVM: {0}")]
    Kvm(String),
    /// The vPM mapping failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The pool failed.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// Guest memory setup failed.
    #[error("guest memory: {0}")]
    GuestMemory(String),
    /// Bad VM parameters.
    #[error("invalid VM configuration: {0}")]
    Config(String),
    /// The guest stopped in a way the VMM cannot serve.
    #[error("guest: {0}")]
    Guest(String),
}

/// What to run.
#[derive(Clone, Debug)]
pub struct VmSpec {
    /// Tenant name in the pool.
    pub name: String,
    /// Persistence mode.
    pub mode: Mode,
    /// DRAM budget for the tiered modes, bytes.
    pub dram_budget_bytes: u64,
    /// Periodic epochs (tiered modes); `None` = only at the end and on request.
    pub epoch_interval: Option<Duration>,
    /// Forced random migrations at this interval (transparency stress), tiered modes.
    pub migrate_interval: Option<Duration>,
    /// Pages moved each way per forced migration.
    pub migrate_pages: u64,
    /// The guest's boot parameters (vPM base and size are filled in).
    pub params: BootParams,
    /// File to which acknowledged drains are appended (crash tests' witness).
    pub witness: Option<PathBuf>,
    /// File to which each committed epoch appends `epoch record`, the guest's newest complete
    /// record (report value 2) at the pause that epoch committed (crash tests' F1 witness).
    pub epoch_witness: Option<PathBuf>,
    /// Directory of the PM working-copy file.
    pub work_dir: PathBuf,
    /// Stop the guest after this long.
    pub time_limit: Option<Duration>,
    /// How RING doorbells reach the host.
    pub doorbell: DoorbellKind,
}

/// How the guest's RING doorbell reaches the hint service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DoorbellKind {
    /// A userspace I/O exit: the vCPU waits in the exit until the ring is served
    /// (feature SYNC_DOORBELL).
    Exit,
    /// An ioeventfd matching the RING byte: no userspace exit; a host thread serves the ring and
    /// the guest polls `consumed`. Other doorbell bytes (registration) still exit.
    IoEventFd,
}

/// How the guest stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExitKind {
    /// The workload finished.
    Done,
    /// The guest reported a failure.
    Failed,
    /// The VMM stopped it (time limit).
    Stopped,
}

/// The result of a run.
#[derive(Clone, Debug)]
pub struct VmOutcome {
    /// How the guest stopped.
    pub exit: ExitKind,
    /// The guest's report.
    pub report: GuestReport,
    /// Counters.
    pub stats: VmStats,
    /// Wall time of the guest run.
    pub elapsed: Duration,
}

/// Mutable vPM state: the mapping and the tier table.
pub struct Core {
    /// The mapping.
    pub memory: VpmMemory,
    /// Placement and heat of every page (tiered modes).
    pub tiers: TierTable,
    /// Pages left writable across epochs (tiered modes).
    pub hot: HotPages,
}

/// State shared by the vCPU thread and the controller.
pub struct Shared {
    /// Mode.
    pub mode: Mode,
    /// Tenant id in the pool.
    pub tenant: u32,
    /// The pool (shared with other VMs of this process).
    pub pool: Arc<Mutex<Pool>>,
    /// vPM mapping and tiers. Lock order: core, then pool, then stats.
    pub core: Mutex<Core>,
    /// Counters.
    pub stats: Mutex<VmStats>,
    /// Guest RAM.
    pub ram: GuestMemoryMmap,
    /// The VM.
    pub vm: VmFd,
    dirty: Option<DirtyLog>,
    /// The hint service (vCPU thread for exits, hint thread for ioeventfd rings).
    hints: Mutex<HintService>,
    /// Feature bits granted to the guest.
    pub features: u32,
    pause: PauseGate,
    stop: AtomicBool,
    witness: Mutex<Option<std::fs::File>>,
    epoch_witness: Mutex<Option<std::fs::File>>,
}

impl hints::HintTarget for Shared {
    fn mode(&self) -> Mode {
        self.mode
    }

    fn features(&self) -> u32 {
        self.features
    }

    fn stats(&self) -> &Mutex<VmStats> {
        &self.stats
    }

    fn shared_page(&self, gpa: u64) -> Option<&'static vpm_abi::SharedPage> {
        if !layout::valid_shared_page(gpa) {
            return None;
        }
        let host = self.ram.get_host_address(GuestAddress(gpa)).ok()?;
        // SAFETY: the page lies inside guest RAM (checked above), which stays mapped for the VM's
        // lifetime; it is 4096-aligned (gpa and the RAM mapping are page-aligned); the guest
        // accesses it concurrently, which the atomic fields make sound.
        Some(unsafe { vpm_abi::SharedPage::from_ptr(host) })
    }

    fn persist(&self, ranges: &[(u64, u64)]) -> Result<HintResult, VmmError> {
        Shared::persist(self, ranges)
    }

    fn msync_region(&self) -> Result<HintResult, VmmError> {
        Shared::msync_region(self)
    }

    fn set_transient(&self, range: (u64, u64), on: bool) -> Result<HintResult, VmmError> {
        Shared::set_transient(self, range, on)
    }

    /// The only vCPU waits in the exit, so nothing runs meanwhile.
    fn request_epoch(&self) -> Result<HintResult, VmmError> {
        self.take_epoch()?;
        Ok(HintResult::Ok)
    }

    fn witness_drain(&self) {
        Shared::witness_drain(self)
    }
}

impl Shared {
    /// Persists vPM byte ranges (PV): one pool batch, one drain.
    pub fn persist(&self, ranges: &[(u64, u64)]) -> Result<HintResult, VmmError> {
        let mut core = self.core.lock().expect("core");
        let mut pool = self.pool.lock().expect("pool");
        let result = match pool.persist(self.tenant, ranges, core.memory.bytes()) {
            Ok(_) => {
                // Written this epoch, though the epoch will find the homes up to date.
                for &(off, len) in ranges.iter().filter(|r| r.1 > 0) {
                    for vpn in off / 4096..=(off + len - 1) / 4096 {
                        core.hot.note_persisted(vpn);
                        core.tiers.note_write(vpn);
                    }
                }
                HintResult::Ok
            }
            Err(PoolError::LogFull { .. }) => HintResult::NoSpace,
            Err(e) => {
                tracing::error!(error = %e, "persist failed");
                HintResult::Io
            }
        };
        let requested: u64 = ranges.iter().map(|r| r.1).sum();
        self.stats.lock().expect("stats").persist_requested_bytes += requested;
        Ok(result)
    }

    /// Appends the guest's "acknowledged sequence" (report value 1) to the witness file.
    pub fn witness_drain(&self) {
        let mut w = self.witness.lock().expect("witness");
        if let Some(f) = w.as_mut() {
            let off = std::mem::offset_of!(GuestReport, values) as u64 + 8;
            if let Ok(seq) = self.ram.read_obj::<u64>(GuestAddress(REPORT_GPA + off)) {
                let _ = writeln!(f, "{seq}");
            }
        }
    }

    /// Appends `epoch record` to the epoch witness: the guest's newest complete record (report
    /// value 2), read while the vCPU is paused, is in the image epoch `epoch` committed.
    pub fn witness_epoch(&self, epoch: u64) {
        let mut w = self.epoch_witness.lock().expect("epoch witness");
        if let Some(f) = w.as_mut() {
            let off = std::mem::offset_of!(GuestReport, values) as u64 + 16;
            if let Ok(record) = self.ram.read_obj::<u64>(GuestAddress(REPORT_GPA + off)) {
                // A crash test's witness: a lost line only weakens the check, never fakes a pass.
                let _ = writeln!(f, "{epoch} {record}");
            }
        }
    }

    /// msyncs the whole vPM (msync mode).
    pub fn msync_region(&self) -> Result<HintResult, VmmError> {
        let core = self.core.lock().expect("core");
        core.memory.msync_all()?;
        self.stats.lock().expect("stats").region_msyncs += 1;
        Ok(HintResult::Ok)
    }

    /// Marks whole pages transient (moving them to DRAM first, within the budget) or
    /// persistent again.
    pub fn set_transient(&self, (off, len): (u64, u64), on: bool) -> Result<HintResult, VmmError> {
        let (first, count) = (off / 4096, len / 4096);
        let mut core = self.core.lock().expect("core");
        if on {
            let to_dram: Vec<u64> = (first..first + count)
                .filter(|&v| core.tiers.page(v).placement == Placement::Pm)
                .collect();
            if !self.make_dram_room(&mut core, to_dram.len() as u64, first..first + count)? {
                return Ok(HintResult::NoSpace);
            }
            let moves = to_dram
                .iter()
                .map(|&vpn| Move {
                    vpn,
                    to: Placement::Dram,
                })
                .collect();
            self.apply_moves(&mut core, moves)?;
        }
        let mut pool = self.pool.lock().expect("pool");
        let r = if on {
            pool.set_transient(self.tenant, first, count)
        } else {
            pool.set_persistent(self.tenant, first, count)
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "transient mark failed");
            return Ok(HintResult::Io);
        }
        for vpn in first..first + count {
            core.tiers.set_transient(vpn, on);
            if !on {
                // Committed by the next epoch (its content was never durable).
                core.tiers.note_write(vpn);
            }
        }
        Ok(HintResult::Ok)
    }

    /// Demotes DRAM pages outside `keep` until `need` more pages fit the budget.
    fn make_dram_room(
        &self,
        core: &mut Core,
        need: u64,
        keep: std::ops::Range<u64>,
    ) -> Result<bool, VmmError> {
        let budget = core.tiers.budget();
        let have = core.tiers.dram_pages();
        if have + need <= budget {
            return Ok(true);
        }
        let excess = have + need - budget;
        let victims: Vec<Move> = (0..core.memory.size() as u64 / 4096)
            .filter(|v| !keep.contains(v))
            .filter(|&v| {
                let p = core.tiers.page(v);
                p.placement == Placement::Dram && !p.transient
            })
            .take(excess as usize)
            .map(|vpn| Move {
                vpn,
                to: Placement::Pm,
            })
            .collect();
        if (victims.len() as u64) < excess {
            return Ok(false);
        }
        self.apply_moves(core, victims)?;
        Ok(true)
    }

    /// Carries out moves: demotions first (they free DRAM), then promotions, in runs.
    pub fn apply_moves(&self, core: &mut Core, moves: Vec<Move>) -> Result<(), VmmError> {
        let (down, up): (Vec<Move>, Vec<Move>) =
            moves.into_iter().partition(|m| m.to == Placement::Pm);
        for batch in [down, up] {
            let pairs = batch.iter().map(|m| (m.vpn, m.to)).collect();
            for (first, n, to) in memory::runs(pairs) {
                core.memory.move_run(first, n, to)?;
                for vpn in first..first + n {
                    core.tiers.moved(Move {
                        vpn: vpn as u64,
                        to,
                    });
                }
                let mut s = self.stats.lock().expect("stats");
                s.remaps += 1;
                match to {
                    Placement::Dram => s.moved_to_dram += n as u64,
                    Placement::Pm => s.moved_to_pm += n as u64,
                }
            }
        }
        let mut s = self.stats.lock().expect("stats");
        s.dram_pages = core.tiers.dram_pages();
        s.dram_pages_max = s.dram_pages_max.max(s.dram_pages);
        s.pm_pages = core.memory.size() as u64 / 4096 - s.dram_pages;
        Ok(())
    }

    fn kick(&self, thread: libc::pthread_t) {
        // SAFETY: pthread_kill on the vCPU thread, which is alive while the controller runs
        // (the controller joins it only after it exits); the signal's handler does nothing.
        unsafe { libc::pthread_kill(thread, pause::kick_signal()) };
    }
}

/// Builds and runs one VM to completion (or the time limit) on `pool`'s tenant `tenant`.
pub fn run_vm(spec: &VmSpec, pool: Arc<Mutex<Pool>>, tenant: u32) -> Result<VmOutcome, VmmError> {
    pause::install_kick_handler().map_err(VmmError::Kvm)?;
    let kvm = kvm::open_kvm()?;
    let vm = kvm
        .create_vm()
        .map_err(|e| VmmError::Kvm(format!("KVM_CREATE_VM: {e}")))?;
    let (pages, budget) = {
        let p = pool.lock().expect("pool");
        let t = p.tenant(tenant)?;
        (t.pages(), spec.dram_budget_bytes / 4096)
    };
    let vpm_size = pages * 4096;
    if vpm_size > VPM_MAX_SIZE {
        return Err(VmmError::Config(format!(
            "vPM of {vpm_size} bytes exceeds {VPM_MAX_SIZE}"
        )));
    }
    let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), GUEST_RAM_SIZE as usize)])
        .map_err(|e| VmmError::GuestMemory(e.to_string()))?;
    let entry = load_guest(&ram)?;
    layout::write_page_tables(&ram).map_err(|e| VmmError::GuestMemory(e.to_string()))?;
    let mut params = spec.params;
    params.vpm_base = VPM_BASE_GPA;
    params.vpm_size = vpm_size;
    ram.write_obj(BootParamsBytes(params), GuestAddress(BOOT_PARAMS_GPA))
        .map_err(|e| VmmError::GuestMemory(e.to_string()))?;

    let memory = build_vpm(spec, &pool, tenant, vpm_size)?;
    let ram_host = ram
        .get_host_address(GuestAddress(0))
        .map_err(|e| VmmError::GuestMemory(e.to_string()))?;
    kvm::add_slot(&vm, 0, 0, GUEST_RAM_SIZE, ram_host, false)?;
    let dirty = if spec.mode.tiered() {
        Some(DirtyLog::enable(&vm, 1, vpm_size)?)
    } else {
        None
    };
    kvm::add_slot(
        &vm,
        1,
        VPM_BASE_GPA,
        vpm_size,
        memory.host_base(),
        dirty.is_some(),
    )?;
    let cpuid = kvm::supported_cpuid(&kvm)?;
    let vcpu = vcpu::create(&vm, &cpuid, entry)?;

    let witness = open_witness(spec.witness.as_deref())?;
    let epoch_witness = open_witness(spec.epoch_witness.as_deref())?;
    // Direct modes map every page to its home: "PM" throughout, no DRAM.
    let tiers = TierTable::new(pages, if spec.mode.tiered() { budget } else { 0 });
    // Polled rings need the ioeventfd ring thread. TODO(integrator): `spec.poll_us` (CLI
    // `--poll-us N`) instead of the environment.
    let poll = poller::poll_window_from_env().filter(|_| spec.doorbell == DoorbellKind::IoEventFd);
    let shared = Arc::new(Shared {
        mode: spec.mode,
        tenant,
        pool,
        core: Mutex::new(Core {
            memory,
            tiers,
            hot: HotPages::new(vpm_size / 4096, kvm::protection_fault_us()),
        }),
        stats: Mutex::new(VmStats {
            dram_budget_pages: budget,
            pm_pages: pages,
            ..VmStats::default()
        }),
        ram,
        vm,
        dirty,
        hints: Mutex::new(HintService::new(VPM_BASE_GPA, vpm_size)),
        features: match spec.doorbell {
            DoorbellKind::Exit => spec.mode.features(),
            DoorbellKind::IoEventFd => {
                let polled = poll.map_or(0, |_| vpm_abi::features::POLLED);
                spec.mode.features() & !vpm_abi::features::SYNC_DOORBELL | polled
            }
        },
        pause: PauseGate::default(),
        stop: AtomicBool::new(false),
        witness: Mutex::new(witness),
        epoch_witness: Mutex::new(epoch_witness),
    });
    let start = Instant::now();
    let ring_thread = match spec.doorbell {
        DoorbellKind::Exit => None,
        DoorbellKind::IoEventFd => Some(spawn_ring_thread(&shared, poll)?),
    };
    let vcpu_shared = shared.clone();
    let handle = std::thread::Builder::new()
        .name("vpm-vcpu0".into())
        .spawn(move || vcpu_loop(vcpu, &vcpu_shared))
        .map_err(|e| VmmError::Kvm(format!("spawn vCPU thread: {e}")))?;
    let thread = std::os::unix::thread::JoinHandleExt::as_pthread_t(&handle);
    let controlled = control_loop(spec, &shared, thread, start);
    // Whatever the controller ended with, the vCPU thread must stop before it can be joined.
    shared.stop.store(true, Ordering::Release);
    while !shared.pause.has_exited() {
        shared.pause.resume();
        shared.kick(thread);
        std::thread::sleep(Duration::from_micros(200));
    }
    let exit = handle
        .join()
        .map_err(|_| VmmError::Guest("vCPU thread panicked".into()))??;
    if let Some((evt, t)) = ring_thread {
        let _ = evt.write(1);
        t.join()
            .map_err(|_| VmmError::Guest("hint thread panicked".into()))??;
    }
    controlled?;
    if shared.mode.tiered() {
        shared.take_epoch()?;
    }
    let elapsed = start.elapsed();
    finish(&shared, exit, elapsed)
}

fn load_guest(ram: &GuestMemoryMmap) -> Result<u64, VmmError> {
    let mut image = Cursor::new(TEST_GUEST_ELF);
    let loaded = Elf::load(ram, None, &mut image, None)
        .map_err(|e| VmmError::GuestMemory(format!("load the test guest: {e}")))?;
    Ok(loaded.kernel_load.0)
}

fn build_vpm(
    spec: &VmSpec,
    pool: &Arc<Mutex<Pool>>,
    tenant: u32,
    size: u64,
) -> Result<VpmMemory, VmmError> {
    let mut p = pool.lock().expect("pool");
    if spec.mode.tiered() {
        let work = spec.work_dir.join(format!("{}.work", spec.name));
        let mut err = None;
        let mem = VpmMemory::tiered(&spec.name, size as usize, &work, |vpn, page| {
            if let Err(e) = p.read_home(tenant, vpn, page) {
                err.get_or_insert(e);
            }
        })?;
        if let Some(e) = err {
            return Err(e.into());
        }
        Ok(mem)
    } else {
        let homes = p.ensure_homes(tenant)?;
        let mapped: Vec<(i32, u64)> = homes
            .iter()
            .map(|&h| match h {
                Home::Pm(_) | Home::Capacity(_) => p.home_fd_offset(h).expect("home with a file"),
                _ => unreachable!("ensure_homes gives every page a home"),
            })
            .collect();
        Ok(VpmMemory::direct(&mapped)?)
    }
}

type RingThread = (
    Arc<vmm_sys_util::eventfd::EventFd>,
    std::thread::JoinHandle<Result<(), VmmError>>,
);

/// Registers an ioeventfd for the RING byte and starts the thread that serves it: the ring
/// poller when `poll` is set (idle window before it sleeps), else one ring pass per doorbell.
fn spawn_ring_thread(shared: &Arc<Shared>, poll: Option<Duration>) -> Result<RingThread, VmmError> {
    use kvm_ioctls::IoEventAddress;
    use vmm_sys_util::eventfd::EventFd;
    use vpm_abi::proto::doorbell::CMD_RING;
    let evt = Arc::new(EventFd::new(0).map_err(|e| VmmError::Kvm(format!("eventfd: {e}")))?);
    let port = IoEventAddress::Pio(DOORBELL_PORT as u64);
    shared
        .vm
        .register_ioevent(&evt, &port, CMD_RING)
        .map_err(|e| VmmError::Kvm(format!("KVM_IOEVENTFD: {e}")))?;
    let (vm, e) = (shared.clone(), evt.clone());
    let t = std::thread::Builder::new()
        .name("vpm-hints".into())
        .spawn(move || -> Result<(), VmmError> {
            if let Some(window) = poll {
                return poller::run(&vm, &e, window);
            }
            loop {
                let _ = e.read();
                if vm.stop.load(Ordering::Acquire) {
                    return Ok(());
                }
                vm.hints.lock().expect("hints").on_byte(CMD_RING, &*vm)?;
            }
        })
        .map_err(|e| VmmError::Kvm(format!("spawn hint thread: {e}")))?;
    Ok((evt, t))
}

/// The vCPU thread: runs the guest and serves its exits.
fn vcpu_loop(mut vcpu: kvm_ioctls::VcpuFd, vm: &Shared) -> Result<ExitKind, VmmError> {
    let result = loop {
        if vm.pause.requested() {
            vm.pause.park();
        }
        if vm.stop.load(Ordering::Acquire) {
            break Ok(ExitKind::Stopped);
        }
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                vm.stats.lock().expect("stats").io_exits += 1;
                match port {
                    DOORBELL_PORT => {
                        let mut hints = vm.hints.lock().expect("hints");
                        for &b in data {
                            hints.on_byte(b, vm)?;
                        }
                    }
                    CONTROL_PORT => {
                        break Ok(if data.first() == Some(&(GuestExit::Done as u8)) {
                            ExitKind::Done
                        } else {
                            ExitKind::Failed
                        });
                    }
                    PROGRESS_PORT => vm.stats.lock().expect("stats").progress_exits += 1,
                    _ => {}
                }
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                data.fill(if port == DOORBELL_PORT {
                    PROBE_REPLY
                } else {
                    0xff
                });
            }
            Ok(VcpuExit::Intr) => {}
            Ok(other) => break Err(VmmError::Guest(format!("unexpected exit {other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => break Err(VmmError::Kvm(format!("KVM_RUN: {e}"))),
        }
    };
    vm.pause.exited();
    result
}

/// The controller: periodic epochs, forced migrations, the time limit.
fn control_loop(
    spec: &VmSpec,
    vm: &Shared,
    thread: libc::pthread_t,
    start: Instant,
) -> Result<(), VmmError> {
    let tick = Duration::from_millis(1);
    let mut next_epoch = spec.epoch_interval.map(|d| start + d);
    let mut next_migrate = spec.migrate_interval.map(|d| start + d);
    let mut rng = epoch::Rng::new(spec.params.seed ^ 0x5eed);
    loop {
        std::thread::sleep(tick);
        let now = Instant::now();
        if spec.time_limit.is_some_and(|l| now - start >= l) {
            return Ok(());
        }
        let epoch_due = vm.mode.tiered() && next_epoch.is_some_and(|t| now >= t);
        let migrate_due = vm.mode.tiered() && next_migrate.is_some_and(|t| now >= t);
        if !epoch_due && !migrate_due {
            if vm.pause.has_exited() {
                return Ok(());
            }
            continue;
        }
        if !vm.pause.pause(|| vm.kick(thread)) {
            return Ok(());
        }
        let r = (|| -> Result<(), VmmError> {
            if migrate_due {
                vm.shuffle_placement(&mut rng, spec.migrate_pages)?;
                next_migrate = spec.migrate_interval.map(|d| now + d);
            }
            if epoch_due {
                vm.take_epoch()?;
                // The interval runs from the end of the pause: the guest always gets it.
                next_epoch = spec.epoch_interval.map(|d| Instant::now() + d);
            }
            Ok(())
        })();
        vm.pause.resume();
        r?;
    }
}

fn finish(vm: &Shared, exit: ExitKind, elapsed: Duration) -> Result<VmOutcome, VmmError> {
    let ReportBytes(report) = vm
        .ram
        .read_obj(GuestAddress(REPORT_GPA))
        .map_err(|e| VmmError::GuestMemory(e.to_string()))?;
    let mut stats = vm.stats.lock().expect("stats").clone();
    let pool = vm.pool.lock().expect("pool");
    let t = pool.tenant(vm.tenant)?;
    stats.pm_bytes_written = t.stats().pm_home_bytes + t.stats().log_bytes;
    stats.capacity_bytes_written = t.stats().capacity_home_bytes;
    Ok(VmOutcome {
        exit,
        report,
        stats,
        elapsed,
    })
}

impl GuestReportExt for GuestReport {
    fn message_text(&self) -> String {
        let n = (self.message_len as usize).min(self.message.len());
        String::from_utf8_lossy(&self.message[..n]).into_owned()
    }
}

/// Text helpers for the guest report.
pub trait GuestReportExt {
    /// The report's message as text.
    fn message_text(&self) -> String;
}

/// Opens a crash-test witness file for appending.
fn open_witness(path: Option<&std::path::Path>) -> Result<Option<std::fs::File>, VmmError> {
    path.map(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| VmmError::Config(format!("witness {}: {e}", p.display())))
    })
    .transpose()
}
