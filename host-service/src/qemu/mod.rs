//! Serving a real Linux guest under QEMU: guest RAM is a shared file (memory-backend-file,
//! share=on) whose range `memmap=SIZE!OFFSET` is the guest's e820 PM region (vPM, the DRAM tier
//! here); the doorbell is QEMU's isa-debugcon on our port, carried over a Unix socket; the hint
//! ring lives in guest RAM, which this process maps. Persisted ranges go to the pool; before QEMU
//! starts, the vPM range of the RAM file is rebuilt from the pool (recovery after a crash).
//!
//! QEMU cannot hold the vCPU in the doorbell write, so the guest polls the ring's `consumed`
//! (no SYNC_DOORBELL feature). With [`QemuSpec::poll_us`] the doorbell thread is also the VM's
//! ring poller (polled rings, see [`doorbell`]). In PV mode epochs are taken on request only and commit every vPM
//! page (diffed against its home). In full mode ([`QemuSpec::epochs`]) periodic epochs
//! stop the guest over QMP (see [`epochs`]); the guest's own epoch requests are refused there,
//! since they would commit memory the epoch driver has not staged. One controller thread owns
//! the QMP session: epochs, and an operator's pause, resume and epoch requests (`vpm serve`).

mod controller;
mod doorbell;
mod epochs;
mod launch;
mod qmp;

pub use epochs::{EpochDriver, EpochError, EpochSpec, EpochSummary};
pub use qmp::{Qmp, QmpError};

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vpm_abi::{features, HintResult, SharedPage, PAGE_SIZE};

use crate::pool::{Pool, PoolError};

/// Why a QEMU guest could not be served.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// Setting up or serving the guest failed (RAM file, sockets, QEMU, the pool, hints).
    #[error(transparent)]
    Vmm(#[from] VmmError),
    /// A full-virt epoch failed (QMP, the commit, or the epoch witness).
    #[error("full-virt epoch: {0}")]
    Epoch(#[from] EpochError),
}

impl From<PoolError> for QemuError {
    fn from(e: PoolError) -> QemuError {
        QemuError::Vmm(e.into())
    }
}
use crate::vmm::hints::HintTarget;
use crate::vmm::mapping::FileMapping;
use crate::vmm::{Mode, VmControl, VmStats, VmmError, VpmRange};

/// Most vCPUs a Linux guest gets: the guest kernel is built with `NR_CPUS=8`
/// (guest-driver/kernel/config-fragment.sh).
pub const MAX_VCPUS: u32 = 8;

/// What to boot.
#[derive(Clone, Debug)]
pub struct QemuSpec {
    /// Directory for the RAM file, the socket and the console log.
    pub state: PathBuf,
    /// VM (tenant) name.
    pub name: String,
    /// Guest kernel (bzImage).
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: PathBuf,
    /// Extra kernel command line.
    pub append: String,
    /// Guest RAM in MiB.
    pub ram_mib: u64,
    /// vCPUs (QEMU `-smp`), 1 to [`MAX_VCPUS`].
    pub vcpus: u32,
    /// vPM offset in guest RAM, MiB (`memmap=SIZE!OFFSET`).
    pub vpm_offset_mib: u64,
    /// Give up after this long.
    pub timeout: Duration,
    /// Full virtualization: periodic epochs that stop the guest (None: PV, epochs on request).
    pub epochs: Option<EpochSpec>,
    /// Crash-test witness: each acknowledged persist range is appended as `OFFSET LEN` (vPM
    /// bytes) before its ring entry completes.
    pub persist_witness: Option<PathBuf>,
    /// Polled rings (ABI 1.1): microseconds the doorbell thread keeps polling the hint ring
    /// after the last hint before it blocks on the doorbell socket again; 0 = doorbell only
    /// (every batch rings). Under TCG a poller competes with QEMU's vCPU threads for the cores.
    pub poll_us: u64,
}

/// What happened.
#[derive(Clone, Debug)]
pub struct QemuOutcome {
    /// The guest's console output.
    pub console: String,
    /// Counters.
    pub stats: VmStats,
    /// Whether QEMU exited by itself (the guest powered off) before the timeout.
    pub exited: bool,
    /// Full-virt epochs and their costs (full mode only).
    pub epochs: Option<EpochSummary>,
}

/// The hint target of a QEMU guest.
struct QemuTarget {
    /// The guest RAM file, mapped.
    ram: FileMapping,
    vpm_off: u64,
    vpm_size: u64,
    pool: Arc<Mutex<Pool>>,
    tenant: u32,
    stats: Mutex<VmStats>,
    /// Full virtualization: the epoch driver owns epochs.
    full: bool,
    /// `QemuSpec::persist_witness`, open for appending.
    witness: Option<Mutex<std::fs::File>>,
    /// A ring poller runs: the guest is granted polled rings.
    polled: bool,
}

impl QemuTarget {
    fn vpm(&self) -> &[u8] {
        // SAFETY: [vpm_off, vpm_off + vpm_size) lies inside the RAM mapping (checked at setup).
        unsafe {
            std::slice::from_raw_parts(
                self.ram.as_ptr().add(self.vpm_off as usize),
                self.vpm_size as usize,
            )
        }
    }

    /// Commits every vPM page as the next epoch (PV: the guest's and the operator's epoch
    /// requests; the commit diffs each page against its home).
    fn commit_all(&self) -> Result<crate::pool::CommitStats, PoolError> {
        let pages: Vec<u64> = (0..self.vpm_size / PAGE_SIZE).collect();
        let r = self
            .pool
            .lock()
            .expect("pool")
            .commit_epoch(self.tenant, &pages, self.vpm());
        if let Ok(c) = &r {
            let mut s = self.stats.lock().expect("stats");
            s.epochs += 1;
            s.epoch = c.epoch;
        }
        r
    }

    fn pool_result(&self, r: Result<impl Sized, PoolError>) -> HintResult {
        match r {
            Ok(_) => HintResult::Ok,
            Err(e) => {
                tracing::error!(error = %e, "pool operation failed");
                e.hint_result()
            }
        }
    }
}

impl HintTarget for QemuTarget {
    fn mode(&self) -> Mode {
        if self.full {
            Mode::Full
        } else {
            Mode::Pv
        }
    }

    fn features(&self) -> u32 {
        let polled = if self.polled { features::POLLED } else { 0 };
        let epochs = if self.full { 0 } else { features::EPOCHS };
        // One ring per guest CPU over the one debugcon stream (doorbell.rs).
        features::PERSIST | features::TRANSIENT | features::RINGS | epochs | polled
    }

    fn stats(&self) -> &Mutex<VmStats> {
        &self.stats
    }

    fn shared_page(&self, gpa: u64) -> Option<&'static SharedPage> {
        let in_ram = gpa % PAGE_SIZE == 0
            && gpa
                .checked_add(PAGE_SIZE)
                .is_some_and(|e| e <= self.ram.len() as u64);
        let in_vpm = gpa >= self.vpm_off && gpa < self.vpm_off + self.vpm_size;
        if !in_ram || in_vpm {
            return None;
        }
        // SAFETY: page-aligned and inside the RAM mapping, which outlives the hint service; the
        // guest accesses it concurrently through atomics only (the ABI).
        Some(unsafe { SharedPage::from_ptr(self.ram.as_ptr().add(gpa as usize)) })
    }

    fn persist(&self, ranges: &[VpmRange]) -> Result<HintResult, VmmError> {
        let pairs: Vec<(u64, u64)> = ranges.iter().map(VpmRange::as_pair).collect();
        let t0 = Instant::now();
        let r = self
            .pool
            .lock()
            .expect("pool")
            .persist(self.tenant, &pairs, self.vpm());
        let took = t0.elapsed().as_micros() as u64;
        let mut s = self.stats.lock().expect("stats");
        s.persist_requested_bytes += ranges.iter().map(VpmRange::len).sum::<u64>();
        s.persist_us += took;
        s.persist_calls += 1;
        drop(s);
        if let (Ok(_), Some(w)) = (&r, &self.witness) {
            use std::io::Write;
            let lines: String = pairs.iter().map(|(o, l)| format!("{o} {l}\n")).collect();
            // A crash test's witness: a lost line only weakens the check, never fakes a pass.
            let _ = w.lock().expect("witness").write_all(lines.as_bytes());
        }
        Ok(self.pool_result(r))
    }

    fn msync_region(&self) -> Result<HintResult, VmmError> {
        Ok(HintResult::NotSupported)
    }

    fn set_transient(&self, range: VpmRange, on: bool) -> Result<HintResult, VmmError> {
        let (first, count) = (range.first_page(), range.page_count());
        let mut pool = self.pool.lock().expect("pool");
        let r = if on {
            pool.set_transient(self.tenant, first, count)
        } else {
            pool.set_persistent(self.tenant, first, count)
        };
        Ok(self.pool_result(r))
    }

    fn request_epoch(&self) -> Result<HintResult, VmmError> {
        if self.full {
            return Ok(HintResult::NotSupported);
        }
        let r = self.commit_all();
        Ok(self.pool_result(r))
    }

    fn witness_drain(&self) {}
}

/// Boots the guest under QEMU, serves its hints (and in full mode takes its epochs) until QEMU
/// exits or the timeout, and returns the console output.
pub fn run_qemu(
    spec: &QemuSpec,
    pool: Arc<Mutex<Pool>>,
    tenant: u32,
) -> Result<QemuOutcome, QemuError> {
    run_qemu_controlled(spec, pool, tenant, &Arc::new(VmControl::default()))
}

/// [`run_qemu`] under `control` (`vpm serve`): QEMU is killed when it asks for a stop, the guest
/// is stopped over QMP while it holds the vCPU, and its epoch requests are served (see
/// [`controller`]).
pub fn run_qemu_controlled(
    spec: &QemuSpec,
    pool: Arc<Mutex<Pool>>,
    tenant: u32,
    control: &Arc<VmControl>,
) -> Result<QemuOutcome, QemuError> {
    let (vpm_size, start_epoch) = {
        let p = pool.lock().expect("pool");
        let t = p.tenant(tenant)?;
        (t.pages() * PAGE_SIZE, t.epoch())
    };
    let vpm_off = spec.vpm_offset_mib << 20;
    let ram_len = spec.ram_mib << 20;
    if vpm_off + vpm_size > ram_len {
        return Err(VmmError::VpmOutsideGuestRam {
            vpm_end: vpm_off + vpm_size,
            ram: ram_len,
        }
        .into());
    }
    let file = |ext: &str| spec.state.join(format!("{}.{ext}", spec.name));
    let (ram_path, sock, console_path, qmp_path) =
        (file("ram"), file("sock"), file("console"), file("qmp"));
    let ram = launch::map_ram(&ram_path, ram_len)?;
    let witness = spec
        .persist_witness
        .as_ref()
        .map(|p| open_witness(p))
        .transpose()?;
    let target = Arc::new(QemuTarget {
        ram,
        vpm_off,
        vpm_size,
        pool: pool.clone(),
        tenant,
        stats: Mutex::new(VmStats::default()),
        full: spec.epochs.is_some(),
        witness,
        polled: spec.poll_us > 0,
    });
    rebuild_vpm(&target)?;
    let mut driver = spec
        .epochs
        .as_ref()
        .map(|e| EpochDriver::new(target.vpm(), start_epoch, e, &console_path))
        .transpose()?;
    let _ = std::fs::remove_file(&sock);
    let _ = std::fs::remove_file(&qmp_path);
    let listener =
        crate::private_file::bind_unix(&sock).map_err(|source| VmmError::DoorbellSocket {
            path: sock.clone(),
            source,
        })?;
    let paths = launch::Paths {
        ram: &ram_path,
        doorbell: &sock,
        console: &console_path,
        qmp: &qmp_path,
    };
    let mut child = launch::start_qemu(spec, &paths, vpm_size)?;
    let done = Arc::new(AtomicBool::new(false));
    let server = {
        let (target, sock, done) = (target.clone(), sock.clone(), done.clone());
        let poll = (spec.poll_us > 0).then(|| Duration::from_micros(spec.poll_us));
        std::thread::Builder::new()
            .name("vpm-doorbell".into())
            .spawn(move || doorbell::serve(listener, &sock, &target, poll, &done))
    };
    let server = match server {
        Ok(t) => t,
        Err(source) => {
            let _ = child.kill();
            let _ = child.wait();
            let thread = "doorbell";
            return Err(VmmError::SpawnThread { thread, source }.into());
        }
    };
    // The controller: periodic full-virt epochs, the operator's pause/resume and epoch requests.
    let controller = {
        let (target, done, qmp_path) = (target.clone(), done.clone(), qmp_path.clone());
        let control = control.clone();
        let every = spec
            .epochs
            .as_ref()
            .filter(|e| e.epoch_ms > 0)
            .map(|e| Duration::from_millis(e.epoch_ms));
        let d = driver.take();
        std::thread::spawn(move || {
            controller::Controller {
                target: &target,
                control: &control,
                qmp_path: &qmp_path,
                every,
                done: &done,
            }
            .run(d)
        })
    };
    let start = Instant::now();
    let mut epochs_stopped = false;
    let exited = loop {
        if let Ok(Some(_)) = child.try_wait() {
            break true;
        }
        // Epochs ended while QEMU runs (QMP, the commit or the witness failed): the guest must
        // not run on without them. (QEMU exiting breaks QMP first: give it a moment to go.)
        if controller.is_finished() {
            if wait_exit(&mut child, Duration::from_secs(2)) {
                break true;
            }
            epochs_stopped = true;
        }
        if epochs_stopped || start.elapsed() > spec.timeout || control.stop_requested() {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    done.store(true, Ordering::SeqCst);
    let _ = server.join();
    let (d, r) = controller.join().expect("controller thread");
    if let Err(e) = r {
        // QEMU going away mid-epoch breaks QMP; anything else is a failure.
        if epochs_stopped || !matches!(e, EpochError::Qmp(_)) {
            return Err(e.into());
        }
        tracing::debug!(error = %e, "QEMU controller stopped with QEMU");
    }
    driver = d;
    // QEMU is gone: the memory is final, and one last epoch commits it.
    if let Some(d) = driver.as_mut() {
        d.epoch(target.vpm(), None, &pool, tenant)?;
    }
    let console = std::fs::read_to_string(&console_path).unwrap_or_default();
    let stats = target.stats.lock().expect("stats").clone();
    Ok(QemuOutcome {
        console,
        stats,
        exited,
        epochs: driver.map(|d| d.summary()),
    })
}

/// Opens a persist witness for appending (0600).
fn open_witness(path: &std::path::Path) -> Result<Mutex<std::fs::File>, VmmError> {
    crate::private_file::options()
        .create(true)
        .append(true)
        .open(path)
        .map(Mutex::new)
        .map_err(|source| VmmError::Witness {
            path: path.to_path_buf(),
            source,
        })
}

/// Whether `child` exits within `limit`.
fn wait_exit(child: &mut std::process::Child, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Writes every page's durable content into the vPM range of the RAM file.
fn rebuild_vpm(t: &QemuTarget) -> Result<(), VmmError> {
    let pool = t.pool.lock().expect("pool");
    for vpn in 0..t.vpm_size / PAGE_SIZE {
        let off = (t.vpm_off + vpn * PAGE_SIZE) as usize;
        // SAFETY: the page lies inside the RAM mapping (vPM fits, checked by the caller); QEMU is
        // not running yet.
        let page =
            unsafe { std::slice::from_raw_parts_mut(t.ram.as_ptr().add(off), PAGE_SIZE as usize) };
        pool.read_home(t.tenant, vpn, page)?;
    }
    Ok(())
}
