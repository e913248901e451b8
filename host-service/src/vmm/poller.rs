//! The ring poller (polled rings, ABI 1.1 feature `POLLED`): a host thread per VM that keeps
//! polling the hint rings (one per vCPU) while hints arrive, so the guest publishes without a doorbell exit.
//!
//! Cycle: block on the doorbell → announce POLLING, serve what the doorbell brought → poll
//! `produced`, serving every batch, until nothing arrived for `poll` → announce SLEEPING and
//! re-check (`vpm_abi::proto::poll`) → block again. With the handshake a guest rings only while
//! the poller sleeps, and the re-check makes sure no entry is left behind when it goes to sleep.
//!
//! The loop is written once over a [`RingSource`], the front's doorbell: the RING ioeventfd on
//! the KVM front ([`run`]), QEMU's debugcon socket on the QEMU front (`crate::qemu`). Hints are
//! served under the same `hints` lock the front's doorbell path takes, so epochs and hints stay
//! serialized as without polling. The thread's CPU time and counts go to [`super::VmStats`].

use std::sync::atomic::Ordering;
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;
use vpm_abi::SleepCheck;

use super::hints::{HintService, HintTarget};
use super::{VmContext, VmmError};

/// `vpm guest --poll-us` by default on the KVM front. The poller spins only while hints arrive
/// and for this long after the last one, then sleeps on the doorbell, so an idle guest costs the
/// host at most one window of CPU per quiet period (the suite's idle job measures it). The window
/// is a few PVM exit round trips (38–54 µs p50 here, docs/costs.md): shorter, a guest whose vCPU
/// thread was descheduled once or that just came back from a doorbell exit finds the poller
/// asleep, rings again, and a busy ring can stay in doorbell-per-entry mode (measured with 50 µs
/// on this shared 2-core host: 994 of 1000 NOP entries woke the poller). 0 turns the poller off.
pub const DEFAULT_POLL_US: u64 = 200;

/// A front's doorbell and hint service, as the poller sees them.
pub trait RingSource {
    /// Blocks until the guest rings and appends the doorbell bytes that arrived to `bytes`;
    /// `false` when the VM stops (or its doorbell went away).
    fn wait(&mut self, bytes: &mut Vec<u8>) -> bool;
    /// Whether the VM is stopping (checked while polling).
    fn stopped(&self) -> bool;
    /// The VM's hint service, locked (the lock its doorbell path takes).
    fn hints(&self) -> MutexGuard<'_, HintService>;
    /// What the hints act on.
    fn target(&self) -> &dyn HintTarget;
    /// Serves the doorbell bytes [`RingSource::wait`] brought, with the hints lock held (the
    /// KVM front's ioeventfd serves every vCPU's ring; the QEMU front decodes its one stream).
    fn serve_doorbell(&self, hints: &mut HintService, bytes: &[u8]) -> Result<(), VmmError>;
}

/// The KVM front: the RING ioeventfd; the VMM writes it to stop the poller.
struct KvmRing<'a> {
    vm: &'a VmContext,
    evt: &'a EventFd,
}

impl RingSource for KvmRing<'_> {
    fn wait(&mut self, _bytes: &mut Vec<u8>) -> bool {
        let _ = self.evt.read();
        !self.stopped()
    }

    fn stopped(&self) -> bool {
        self.vm.stop.load(Ordering::Acquire)
    }

    fn hints(&self) -> MutexGuard<'_, HintService> {
        self.vm.hints.lock().expect("hints")
    }

    fn target(&self) -> &dyn HintTarget {
        self.vm
    }

    /// The ioeventfd does not say which vCPU rang: serve every vCPU's ring.
    fn serve_doorbell(&self, hints: &mut HintService, _bytes: &[u8]) -> Result<(), VmmError> {
        hints.on_ring_doorbell(self.vm)
    }
}

/// What one poller run counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    /// Doorbell wake-ups.
    wakeups: u64,
    /// Batches found by polling (doorbells the guest did not ring).
    polled_batches: u64,
    /// Entries completed from those batches.
    polled_hints: u64,
}

/// Runs the KVM front's poller until the VM stops; `evt` is the RING ioeventfd, `poll` the idle
/// time after which the poller sleeps.
pub fn run(vm: &VmContext, evt: &EventFd, poll: Duration) -> Result<(), VmmError> {
    run_source(&mut KvmRing { vm, evt }, poll)
}

/// Runs the poller over `src` until the VM stops or its doorbell goes away; `poll` is the idle
/// time after which the poller sleeps. Adds its CPU time and counts to the VM's stats when it
/// returns.
pub fn run_source<S: RingSource>(src: &mut S, poll: Duration) -> Result<(), VmmError> {
    let cpu_start = thread_cpu_time();
    src.target().stats().lock().expect("stats").poller_clock = own_cpu_clock();
    let mut counts = Counts::default();
    let result = poll_loop(src, poll, &mut counts);
    let cpu = thread_cpu_time().saturating_sub(cpu_start);
    let mut s = src.target().stats().lock().expect("stats");
    // Under the stats lock: a reader of the clock ([`cpu_time`]) holds it, so it never reads
    // the clock of a thread that has ended.
    s.poller_clock = None;
    s.poller_cpu_us += cpu.as_micros() as u64;
    s.poller_wakeups += counts.wakeups;
    s.doorbells_suppressed += counts.polled_batches;
    s.poller_hints += counts.polled_hints;
    result
}

fn poll_loop<S: RingSource>(
    src: &mut S,
    poll: Duration,
    counts: &mut Counts,
) -> Result<(), VmmError> {
    let mut bytes = Vec::new();
    loop {
        bytes.clear();
        // Blocks until the guest rings (or the VM stops).
        if !src.wait(&mut bytes) {
            return Ok(());
        }
        counts.wakeups += 1;
        {
            let mut hints = src.hints();
            hints.wake();
            src.serve_doorbell(&mut hints, &bytes)?;
        }
        let mut idle_since = Instant::now();
        loop {
            if src.stopped() {
                return Ok(());
            }
            let mut hints = src.hints();
            if hints.has_published() {
                let served = hints.serve_polled(src.target())?;
                drop(hints);
                counts.polled_batches += 1;
                counts.polled_hints += served;
                idle_since = Instant::now();
                continue;
            }
            if idle_since.elapsed() >= poll {
                match hints.prepare_sleep() {
                    SleepCheck::Sleep => break,
                    // Entries arrived before SLEEPING was visible: serve them on the next turn.
                    SleepCheck::Pending => continue,
                }
            }
            drop(hints);
            std::hint::spin_loop();
        }
    }
}

/// CPU time the VM's ring poller thread has used so far, read from its CPU-time clock while
/// it runs (`None` without a running poller). Lets a caller measure the poller's CPU over a
/// window of its choice, e.g. while the guest sends no hints.
pub fn cpu_time(vm: &VmContext) -> Option<Duration> {
    let s = vm.stats.lock().expect("stats");
    // The stats lock is held while the clock is read: the poller clears it under this lock
    // before its thread ends (see [`run`]).
    s.poller_clock.and_then(clock_time)
}

/// CPU time the calling thread has used.
fn thread_cpu_time() -> Duration {
    clock_time(libc::CLOCK_THREAD_CPUTIME_ID).unwrap_or(Duration::ZERO)
}

/// The calling thread's CPU-time clock, readable from other threads.
fn own_cpu_clock() -> Option<libc::clockid_t> {
    let mut id: libc::clockid_t = 0;
    // SAFETY: pthread_self() is the live calling thread; pthread_getcpuclockid writes one
    // clockid_t to the valid, exclusively borrowed `id`.
    let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut id) };
    (rc == 0).then_some(id)
}

/// The time of `clock` (`None` if it cannot be read).
fn clock_time(clock: libc::clockid_t) -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the valid, exclusively borrowed `ts`; an
    // invalid clock id is an error return, not undefined behaviour.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_cpu_time_grows_with_work() {
        let before = thread_cpu_time();
        let mut x = 0u64;
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(20) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            std::hint::black_box(x);
        }
        assert!(thread_cpu_time() > before);
    }

    #[test]
    fn another_thread_reads_the_cpu_clock_of_a_busy_thread() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            tx.send(own_cpu_clock()).unwrap();
            let mut x = 0u64;
            while stop_rx.try_recv().is_err() {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                std::hint::black_box(x);
            }
        });
        let clock = rx.recv().unwrap().expect("a thread CPU clock");
        let first = clock_time(clock).expect("readable while the thread runs");
        std::thread::sleep(Duration::from_millis(50));
        let second = clock_time(clock).expect("readable while the thread runs");
        stop_tx.send(()).unwrap();
        t.join().unwrap();
        assert!(second > first, "{first:?} then {second:?}");
    }
}
