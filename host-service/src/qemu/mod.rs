//! Serving a real Linux guest under QEMU: guest RAM is a shared file (memory-backend-file,
//! share=on) whose range `memmap=SIZE!OFFSET` is the guest's e820 PM region (vPM, the DRAM tier
//! here); the doorbell is QEMU's isa-debugcon on our port, carried over a Unix socket; the hint
//! ring lives in guest RAM, which this process maps. Persisted ranges go to the pool; before QEMU
//! starts, the vPM range of the RAM file is rebuilt from the pool (recovery after a crash).
//!
//! QEMU cannot hold the vCPU in the doorbell write, so the guest polls the ring's `consumed`
//! (no SYNC_DOORBELL feature). There is no dirty log here: epochs are taken on request only and
//! commit every vPM page (diffed against its home).

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vpm_abi::{features, HintResult, SharedPage, DOORBELL_PORT, PAGE_SIZE, PROBE_REPLY};

use crate::pool::{Pool, PoolError};
use crate::vmm::hints::{HintService, HintTarget};
use crate::vmm::mapping::FileMapping;
use crate::vmm::{Mode, VmControl, VmStats, VmmError, VpmRange};

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
    /// vPM offset in guest RAM, MiB (`memmap=SIZE!OFFSET`).
    pub vpm_offset_mib: u64,
    /// Give up after this long.
    pub timeout: Duration,
    /// Crash-test witness: each acknowledged persist range is appended as `OFFSET LEN` (vPM
    /// bytes) before its ring entry completes.
    pub persist_witness: Option<PathBuf>,
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
    /// `QemuSpec::persist_witness`, open for appending.
    witness: Option<Mutex<std::fs::File>>,
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
        Mode::Pv
    }

    fn features(&self) -> u32 {
        features::PERSIST | features::TRANSIENT | features::EPOCHS
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
        let r = self
            .pool
            .lock()
            .expect("pool")
            .persist(self.tenant, &pairs, self.vpm());
        self.stats.lock().expect("stats").persist_requested_bytes +=
            ranges.iter().map(VpmRange::len).sum::<u64>();
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
        Ok(self.pool_result(r))
    }

    fn witness_drain(&self) {}
}

/// Creates (0600, truncated) the guest RAM file of `len` bytes and maps it.
fn map_ram(path: &std::path::Path, len: u64) -> Result<FileMapping, VmmError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file_error = |source| VmmError::QemuRamFile {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(file_error)?;
    f.set_len(len).map_err(file_error)?;
    FileMapping::shared(&f, len as usize, false).map_err(|e| match e {
        crate::vmm::mapping::MappingError::Mmap { source, .. } => file_error(source),
    })
}

/// Boots the guest under QEMU, serves its hints until QEMU exits or the timeout, and returns
/// the console output.
pub fn run_qemu(
    spec: &QemuSpec,
    pool: Arc<Mutex<Pool>>,
    tenant: u32,
) -> Result<QemuOutcome, VmmError> {
    run_qemu_controlled(spec, pool, tenant, &VmControl::default())
}

/// [`run_qemu`], and QEMU is killed when `control` asks for a stop (`vpm serve`'s shutdown).
pub fn run_qemu_controlled(
    spec: &QemuSpec,
    pool: Arc<Mutex<Pool>>,
    tenant: u32,
    control: &VmControl,
) -> Result<QemuOutcome, VmmError> {
    let vpm_size = pool.lock().expect("pool").tenant(tenant)?.pages() * PAGE_SIZE;
    let vpm_off = spec.vpm_offset_mib << 20;
    let ram_len = spec.ram_mib << 20;
    if vpm_off + vpm_size > ram_len {
        return Err(VmmError::VpmOutsideGuestRam {
            vpm_end: vpm_off + vpm_size,
            ram: ram_len,
        });
    }
    let ram_path = spec.state.join(format!("{}.ram", spec.name));
    let ram = map_ram(&ram_path, ram_len)?;
    let witness = spec
        .persist_witness
        .as_ref()
        .map(|p| {
            use std::os::unix::fs::OpenOptionsExt;
            let open = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(p);
            open.map(Mutex::new).map_err(|source| VmmError::Witness {
                path: p.clone(),
                source,
            })
        })
        .transpose()?;
    let target = Arc::new(QemuTarget {
        ram,
        vpm_off,
        vpm_size,
        pool: pool.clone(),
        tenant,
        stats: Mutex::new(VmStats::default()),
        witness,
    });
    rebuild_vpm(&target)?;
    let sock = spec.state.join(format!("{}.sock", spec.name));
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).map_err(|source| VmmError::DoorbellSocket {
        path: sock.clone(),
        source,
    })?;
    let console_path = spec.state.join(format!("{}.console", spec.name));
    let mut child = start_qemu(spec, &ram_path, &sock, &console_path, vpm_size)?;
    let server = {
        let (target, sock) = (target.clone(), sock.clone());
        std::thread::spawn(move || serve_doorbell(listener, &sock, &target))
    };
    let start = Instant::now();
    let exited = loop {
        if let Ok(Some(_)) = child.try_wait() {
            break true;
        }
        if start.elapsed() > spec.timeout || control.stop_requested() {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = server.join();
    let console = std::fs::read_to_string(&console_path).unwrap_or_default();
    let stats = target.stats.lock().expect("stats").clone();
    Ok(QemuOutcome {
        console,
        stats,
        exited,
    })
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

fn start_qemu(
    spec: &QemuSpec,
    ram: &std::path::Path,
    sock: &std::path::Path,
    console: &std::path::Path,
    vpm_size: u64,
) -> Result<Child, VmmError> {
    let append = format!(
        "console=ttyS0 panic=-1 memmap={}M!{}M {}",
        vpm_size >> 20,
        spec.vpm_offset_mib,
        spec.append
    );
    let ram_obj = format!(
        "memory-backend-file,id=ram0,size={}M,mem-path={},share=on",
        spec.ram_mib,
        ram.display()
    );
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel",
        "tcg",
        "-smp",
        "1",
        "-m",
        &format!("{}M", spec.ram_mib),
        "-nographic",
        "-no-reboot",
    ])
    .args(["-machine", "memory-backend=ram0", "-object", &ram_obj])
    .arg("-kernel")
    .arg(&spec.kernel)
    .arg("-initrd")
    .arg(&spec.initrd)
    .args(["-append", &append])
    .args([
        "-chardev",
        &format!("socket,id=vpmdb,path={}", sock.display()),
    ])
    .args([
        "-device",
        &format!("isa-debugcon,iobase={DOORBELL_PORT:#x},chardev=vpmdb,readback={PROBE_REPLY:#x}"),
    ])
    .args([
        "-serial",
        &format!("file:{}", console.display()),
        "-monitor",
        "none",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::inherit());
    // QEMU dies with the thread that started it (this one waits for it): a host service killed
    // with SIGKILL leaves no guest running on behind it.
    // SAFETY: the closure runs in the child between fork and exec and calls only prctl, which is
    // async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(VmmError::StartQemu)
}

/// Reads doorbell bytes from QEMU's debugcon socket and serves them until QEMU disconnects.
fn serve_doorbell(
    listener: UnixListener,
    sock: &std::path::Path,
    target: &QemuTarget,
) -> Result<(), VmmError> {
    let (mut stream, _) = listener
        .accept()
        .map_err(|source| VmmError::DoorbellSocket {
            path: sock.to_path_buf(),
            source,
        })?;
    let mut hints = HintService::new(target.vpm_off, target.vpm_size);
    let mut buf = [0u8; 256];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            hints.on_byte(b, target)?;
        }
    }
}
