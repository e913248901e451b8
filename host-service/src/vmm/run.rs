//! Running a built VM: one thread per vCPU, the ring thread of ioeventfd doorbells, the
//! controller (periodic epochs, forced migrations, the time limit; every pause stops all vCPUs),
//! and collecting the outcome.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_ioctls::{IoEventAddress, VcpuExit, VcpuFd};
use vmm_sys_util::eventfd::EventFd;
use vpm_abi::harness::{GuestExit, CONTROL_PORT, PROGRESS_PORT, WINDOW_END, WINDOW_START};
use vpm_abi::proto::doorbell::CMD_RING;
use vpm_abi::{DOORBELL_PORT, PROBE_REPLY};

use super::context::VmContext;
use super::control::VmControl;
use super::epoch_driver::StoppedEpoch;
use super::guest_map;
use super::setup::build_vm;
use super::spec::{ExitKind, VmOutcome, VmSpec};
use super::VmmError;
use crate::pool::Pool;
use crate::tier::Rng;

/// Builds and runs one VM to completion (or the time limit) on `pool`'s tenant `tenant`.
pub fn run_vm(spec: &VmSpec, pool: Arc<Mutex<Pool>>, tenant: u32) -> Result<VmOutcome, VmmError> {
    run_vm_controlled(spec, pool, tenant, &VmControl::default())
}

/// [`run_vm`], with an operator's requests (hold, stop, parked jobs) served through `control`.
pub fn run_vm_controlled(
    spec: &VmSpec,
    pool: Arc<Mutex<Pool>>,
    tenant: u32,
    control: &VmControl,
) -> Result<VmOutcome, VmmError> {
    let (vm, vcpus) = build_vm(spec, pool, tenant)?;
    if vm.mode.tiered() {
        // Epochs free large buffers (the redo log, the diff's masks): returned to the kernel,
        // the unmapping flushes the TLBs and the PVM guest refaults its working set.
        super::precopy::keep_freed_memory();
    }
    control.set_running(Some(vm.clone()));
    let r = run_built(spec, vm, vcpus, control);
    control.set_running(None);
    control.set_parked(false);
    r
}

fn run_built(
    spec: &VmSpec,
    vm: Arc<VmContext>,
    vcpus: Vec<VcpuFd>,
    control: &VmControl,
) -> Result<VmOutcome, VmmError> {
    let start = Instant::now();
    let ring_thread = if spec.ring_thread() {
        Some(spawn_ring_thread(&vm, spec.poll_window())?)
    } else {
        None
    };
    let mut handles = Vec::with_capacity(vcpus.len());
    for (index, vcpu) in vcpus.into_iter().enumerate() {
        let vcpu_vm = vm.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("vpm-vcpu{index}"))
            .spawn(move || vcpu_loop(vcpu, &vcpu_vm, index))
            .map_err(|source| VmmError::SpawnThread {
                thread: "vCPU",
                source,
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                // The vCPUs already running must stop before the error returns.
                let threads = pthreads(&handles);
                stop_vcpus(&vm, &threads);
                for h in handles {
                    let _ = h.join();
                }
                return Err(e);
            }
        }
    }
    let threads = pthreads(&handles);
    let controlled = control_loop(spec, &vm, &threads, start, control);
    // Whatever the controller ended with, the vCPU threads must stop before they can be joined.
    stop_vcpus(&vm, &threads);
    // The VM's exit: the first error, else a failure on any vCPU, else vCPU 0's.
    let mut exit = None;
    let mut error = None;
    for (index, h) in handles.into_iter().enumerate() {
        match h.join().map_err(|_| VmmError::ThreadPanicked("vCPU"))? {
            Ok(k) if index == 0 => exit = exit.or(Some(k)),
            Ok(ExitKind::Failed) => exit = Some(ExitKind::Failed),
            Ok(_) => {}
            Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = error {
        return Err(e);
    }
    let exit = exit.unwrap_or(ExitKind::Stopped);
    if let Some((evt, t)) = ring_thread {
        let _ = evt.write(1);
        t.join().map_err(|_| VmmError::ThreadPanicked("hint"))??;
    }
    controlled?;
    if vm.mode.tiered() {
        vm.take_epoch()?;
    }
    let elapsed = start.elapsed();
    finish(&vm, exit, elapsed)
}

/// The pthread ids of the vCPU threads (valid until they are joined).
fn pthreads<T>(handles: &[std::thread::JoinHandle<T>]) -> Vec<libc::pthread_t> {
    handles
        .iter()
        .map(std::os::unix::thread::JoinHandleExt::as_pthread_t)
        .collect()
}

/// Stops the vCPU threads `threads` (all that were started) for good: raises `stop`, lifts any
/// pause and kicks until they have exited.
fn stop_vcpus(vm: &VmContext, threads: &[libc::pthread_t]) {
    vm.stop.store(true, Ordering::Release);
    while (vm.pause.exited_count() as usize) < threads.len() {
        vm.pause.resume();
        vm.kick(threads);
        std::thread::sleep(Duration::from_micros(200));
    }
}

type RingThread = (Arc<EventFd>, std::thread::JoinHandle<Result<(), VmmError>>);

/// Registers an ioeventfd for the RING byte and starts the thread that serves it: the poller
/// when `poll` is set (its idle window), else one ring pass per doorbell.
fn spawn_ring_thread(vm: &Arc<VmContext>, poll: Option<Duration>) -> Result<RingThread, VmmError> {
    let evt = Arc::new(EventFd::new(0).map_err(VmmError::EventFd)?);
    let port = IoEventAddress::Pio(DOORBELL_PORT as u64);
    vm.vm
        .register_ioevent(&evt, &port, CMD_RING)
        .map_err(VmmError::RegisterIoEvent)?;
    let (vm, e) = (vm.clone(), evt.clone());
    let t = std::thread::Builder::new()
        .name("vpm-hints".into())
        .spawn(move || -> Result<(), VmmError> {
            if let Some(window) = poll {
                return super::poller::run(&vm, &e, window);
            }
            loop {
                let _ = e.read();
                if vm.stop.load(Ordering::Acquire) {
                    return Ok(());
                }
                vm.hints.lock().expect("hints").on_ring_doorbell(&*vm)?;
            }
        })
        .map_err(|source| VmmError::SpawnThread {
            thread: "hint",
            source,
        })?;
    Ok((evt, t))
}

/// The kind of a vCPU exit the VMM does not serve, and the address it concerned (0 if none).
fn unexpected(exit: &VcpuExit) -> VmmError {
    let (exit, addr) = match exit {
        VcpuExit::MmioRead(addr, _) => ("MMIO read", *addr),
        VcpuExit::MmioWrite(addr, _) => ("MMIO write", *addr),
        VcpuExit::Hlt => ("HLT", 0),
        VcpuExit::Shutdown => ("shutdown (triple fault)", 0),
        VcpuExit::FailEntry(reason, _) => ("failed entry", *reason),
        VcpuExit::InternalError => ("KVM internal error", 0),
        VcpuExit::Exception => ("exception", 0),
        VcpuExit::Debug(_) => ("debug", 0),
        VcpuExit::SystemEvent(kind, _) => ("system event", *kind as u64),
        _ => ("other", 0),
    };
    VmmError::UnexpectedExit { exit, addr }
}

/// vCPU `index`'s thread: runs the guest and serves its exits. vCPU 0's stop ends the VM; another
/// vCPU's `Done` ends only its own thread (it finished its share), a failure or error ends the VM.
fn vcpu_loop(vcpu: VcpuFd, vm: &VmContext, index: usize) -> Result<ExitKind, VmmError> {
    let result = run_vcpu(vcpu, vm, index);
    let ends_vm = index == 0 || !matches!(result, Ok(ExitKind::Done));
    vm.pause.exited(ends_vm);
    result
}

fn run_vcpu(mut vcpu: VcpuFd, vm: &VmContext, index: usize) -> Result<ExitKind, VmmError> {
    loop {
        if vm.pause.requested() {
            vm.pause.park(index);
        }
        if vm.stop.load(Ordering::Acquire) {
            return Ok(ExitKind::Stopped);
        }
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                vm.stats.lock().expect("stats").io_exits += 1;
                match port {
                    DOORBELL_PORT => {
                        let mut hints = vm.hints.lock().expect("hints");
                        for &b in data {
                            hints.on_vcpu_byte(index, b, vm)?;
                        }
                    }
                    CONTROL_PORT => {
                        return Ok(if data.first() == Some(&(GuestExit::Done as u8)) {
                            ExitKind::Done
                        } else {
                            ExitKind::Failed
                        });
                    }
                    PROGRESS_PORT => {
                        let mark = data.first().copied();
                        if mark == Some(WINDOW_START) || mark == Some(WINDOW_END) {
                            let ops = guest_map::read_report(&vm.ram)
                                .map_err(|source| VmmError::GuestMemory {
                                    what: "read the guest's report",
                                    source,
                                })?
                                .ops;
                            vm.stats.lock().expect("stats").window_mark(
                                mark == Some(WINDOW_START),
                                ops,
                                Instant::now(),
                            );
                        }
                        vm.stats.lock().expect("stats").progress_exits += 1;
                    }
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
            Ok(other) => return Err(unexpected(&other)),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => return Err(VmmError::Run(e)),
        }
    }
}

/// When the pre-copy rounds of an epoch run: evenly spread over the last quarter of the
/// interval before the stop, and no more once a round diverges.
struct RoundClock {
    rounds: u32,
    done: u32,
    diverged: bool,
}

impl RoundClock {
    /// Whether a round is due at `now`, for an epoch due at `due` after an `interval`.
    fn due(&self, now: Instant, due: Instant, interval: Duration) -> bool {
        if self.done >= self.rounds || self.diverged {
            return false;
        }
        let lead = interval / 4 * (self.rounds - self.done) / self.rounds;
        now + lead >= due
    }

    fn restart(&mut self) {
        self.done = 0;
        self.diverged = false;
    }
}

/// The controller: periodic epochs (with their pre-copy rounds), forced migrations, the time
/// limit.
fn control_loop(
    spec: &VmSpec,
    vm: &VmContext,
    threads: &[libc::pthread_t],
    start: Instant,
    control: &VmControl,
) -> Result<(), VmmError> {
    let tick = Duration::from_millis(1);
    // Whether the operator's hold has the vCPUs parked.
    let mut holding = false;
    let mut next_epoch = spec.epoch_interval.map(|d| start + d);
    let mut next_migrate = spec.migrate_interval.map(|d| start + d);
    let mut rng = Rng::new(spec.params.seed ^ 0x5eed);
    let precopy = vm.precopy.is_some();
    let mut rounds = RoundClock {
        rounds: if precopy {
            spec.precopy_rounds.unwrap_or(0)
        } else {
            0
        },
        done: 0,
        diverged: false,
    };
    loop {
        std::thread::sleep(tick);
        let now = Instant::now();
        if spec.time_limit.is_some_and(|l| now - start >= l) || control.stop_requested() {
            return Ok(());
        }
        if control.is_held() != holding {
            if holding {
                control.set_parked(false);
                vm.pause.resume();
                holding = false;
            } else if vm.pause.pause(|| vm.kick(threads)) {
                holding = true;
                control.set_parked(true);
            } else {
                return Ok(());
            }
        }
        let jobs_due = control.has_jobs();
        let epoch_due = vm.mode.tiered() && (jobs_due || next_epoch.is_some_and(|t| now >= t));
        if let (Some(due), Some(interval), false) = (next_epoch, spec.epoch_interval, holding) {
            if vm.mode.tiered() && rounds.due(now, due, interval) {
                let r = vm.precopy_round()?;
                rounds.done += 1;
                rounds.diverged = r.diverging();
            }
        }
        let migrate_due = vm.mode.tiered() && next_migrate.is_some_and(|t| now >= t);
        if !epoch_due && !migrate_due && !jobs_due {
            if vm.pause.has_exited() {
                return Ok(());
            }
            continue;
        }
        if !vm.pause.pause(|| vm.kick(threads)) {
            return Ok(());
        }
        let r = (|| -> Result<Option<StoppedEpoch>, VmmError> {
            if migrate_due {
                vm.shuffle_placement(&mut rng, spec.migrate_pages)?;
                next_migrate = spec.migrate_interval.map(|d| now + d);
            }
            let mut stopped = None;
            if epoch_due {
                // A job (a snapshot) must see this epoch committed: no staged commit then.
                if precopy && !jobs_due {
                    stopped = Some(vm.stop_epoch()?);
                } else {
                    vm.take_epoch()?;
                }
                // The interval runs from the end of the pause: the guest always gets it.
                next_epoch = spec.epoch_interval.map(|d| Instant::now() + d);
                rounds.restart();
            }
            for job in control.take_jobs() {
                job(vm);
            }
            Ok(stopped)
        })();
        if !holding {
            vm.pause.resume();
        }
        // A pre-copy epoch commits its staged image while the vCPU runs.
        if let Some(stopped) = r? {
            vm.commit_staged(stopped)?;
        }
    }
}

/// The outcome: the guest's report, the counters and the pool's write totals.
fn finish(vm: &VmContext, exit: ExitKind, elapsed: Duration) -> Result<VmOutcome, VmmError> {
    let report = guest_map::read_report(&vm.ram).map_err(|source| VmmError::GuestMemory {
        what: "read the guest's report",
        source,
    })?;
    let mut stats = vm.stats.lock().expect("stats").clone();
    stats.finish_percentiles();
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
