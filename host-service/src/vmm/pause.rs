//! Pausing the vCPUs for a consistent snapshot: the controller raises a flag and kicks every vCPU
//! thread with a signal (KVM_RUN returns EINTR); each vCPU parks until resumed, and the pause
//! holds only once every vCPU thread is parked (or has finished), so no vCPU writes guest memory
//! while the dirty log is collected.
//!
//! The stop's copy is memory-bound, and the paused vCPU's core would sit idle through it. So the
//! first vCPU threads (as many as the host has cores besides the controller's) do not sleep when
//! they park: they spin until the controller offers [`PauseWork`], help with it, and then sleep
//! like the others. A thread started for the copy instead waited ~1 ms for its core to wake on
//! this PVM host (the idle vCPU of the nested VM is descheduled), which was as long as the copy.
//! A spinner that gets no work within [`PARK_SPIN`] sleeps too (stop-and-commit epochs, an
//! operator's hold); spinning longer, through the rest of the pause, took cores from the other
//! VMs of a consolidated host (docs/costs.md §10).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

struct GateState {
    requested: bool,
    /// vCPU threads parked.
    parked: u32,
    /// vCPU threads that have stopped for good.
    exited: u32,
    /// vCPU threads.
    threads: u32,
    /// A vCPU thread ended the VM (the bootstrap vCPU stopped, a guest failure, an error).
    over: bool,
}

/// Longest a parked vCPU thread spins waiting for work before it sleeps (the stop offers its
/// copy ~0.05–0.15 ms into the pause, once it has the dirty log).
pub const PARK_SPIN: Duration = Duration::from_millis(2);

/// Work the controller shares with the spinning parked vCPU threads during a pause.
pub trait PauseWork: Send + Sync {
    /// Does parts of the work until none is left to claim.
    fn help(&self);
}

/// The pause handshake between the controller and the vCPU threads.
pub struct PauseGate {
    state: Mutex<GateState>,
    cv: Condvar,
    /// `state.requested`, readable without the lock (for spinning vCPU threads).
    requested_now: AtomicBool,
    /// vCPU threads (by index) that spin when parked, and for how long at most.
    spinners: u32,
    spin_limit: Duration,
    /// Work on offer, and a count of offers (a spinning thread helps each offer once).
    work: Mutex<Option<Arc<dyn PauseWork>>>,
    work_offers: AtomicU64,
    /// Spinners sleep for the rest of this pause (see [`PauseGate::stop_spinning`]).
    spin_off: AtomicBool,
}

impl Default for PauseGate {
    fn default() -> PauseGate {
        PauseGate::new(1)
    }
}

/// The signal used to kick the vCPU out of KVM_RUN.
pub fn kick_signal() -> i32 {
    SIGRTMIN() + 2
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) handler of the kick signal; call once per process.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    register_signal_handler(kick_signal(), on_kick)
}

impl PauseGate {
    /// A gate for `threads` vCPU threads, of which none spins when parked.
    pub fn new(threads: u32) -> PauseGate {
        PauseGate::with_spinners(threads, 0)
    }

    /// A gate for `threads` vCPU threads, of which the first `spinners` spin and help when parked
    /// (give them cores the controller does not need).
    pub fn with_spinners(threads: u32, spinners: u32) -> PauseGate {
        PauseGate {
            requested_now: AtomicBool::new(false),
            spinners,
            spin_limit: PARK_SPIN,
            work: Mutex::new(None),
            work_offers: AtomicU64::new(0),
            spin_off: AtomicBool::new(false),
            state: Mutex::new(GateState {
                requested: false,
                parked: 0,
                exited: 0,
                threads: threads.max(1),
                over: false,
            }),
            cv: Condvar::new(),
        }
    }

    /// Whether the controller wants the vCPUs parked.
    pub fn requested(&self) -> bool {
        self.state.lock().expect("gate").requested
    }

    /// The gate with spinners waiting up to `limit` for work (tests: a descheduled controller).
    pub fn with_spin_limit(mut self, limit: Duration) -> PauseGate {
        self.spin_limit = limit;
        self
    }

    /// vCPU side: vCPU `index` parks until resumed (call when `requested`).
    pub fn park(&self, index: usize) {
        {
            let mut s = self.state.lock().expect("gate");
            s.parked += 1;
            self.cv.notify_all();
        }
        if index < self.spinners as usize {
            self.spin_and_help();
        }
        let mut s = self.state.lock().expect("gate");
        while s.requested {
            s = self.cv.wait(s).expect("gate");
        }
        s.parked -= 1;
    }

    /// Spins until the controller offers work (at most the spin limit, [`PARK_SPIN`] unless
    /// [`PauseGate::with_spin_limit`] set another, while the pause lasts),
    /// helps with it, and returns (the caller then sleeps until the pause ends).
    fn spin_and_help(&self) {
        let start = Instant::now();
        let mut helped = 0;
        while self.requested_now.load(Ordering::Acquire)
            && !self.spin_off.load(Ordering::Acquire)
            && start.elapsed() < self.spin_limit
        {
            let offers = self.work_offers.load(Ordering::Acquire);
            if offers != helped {
                helped = offers;
                let work = self.work.lock().expect("gate work").clone();
                if let Some(work) = work {
                    work.help();
                    return;
                }
            }
            std::hint::spin_loop();
        }
    }

    /// Controller side, during a pause: offers `work` to the spinning vCPU threads. The caller
    /// helps too and waits for the work to end; then it calls [`PauseGate::withdraw`].
    pub fn offer(&self, work: Arc<dyn PauseWork>) {
        *self.work.lock().expect("gate work") = Some(work);
        self.work_offers.fetch_add(1, Ordering::Release);
    }

    /// Controller side: takes back the work on offer (a thread that took it before finds nothing
    /// left to claim).
    pub fn withdraw(&self) {
        *self.work.lock().expect("gate work") = None;
    }

    /// Controller side: the spinning vCPU threads sleep for the rest of this pause. Call before
    /// remapping guest memory: a remap shoots down the TLB of every core that runs one of this
    /// process's threads, and on PVM such a flush on a spinning thread's core is far dearer
    /// than on an idle one.
    pub fn stop_spinning(&self) {
        self.spin_off.store(true, Ordering::Release);
    }

    /// vCPU side: this vCPU thread has stopped for good; `ends_vm` when its stop ends the VM
    /// (otherwise the others run on, and pauses no longer wait for it).
    pub fn exited(&self, ends_vm: bool) {
        let mut s = self.state.lock().expect("gate");
        s.exited += 1;
        s.over |= ends_vm || s.exited == s.threads;
        self.cv.notify_all();
    }

    /// Controller side: asks for a pause and kicks until every vCPU thread is parked (or has
    /// finished). Returns false if the VM ended instead.
    pub fn pause(&self, kick: impl Fn()) -> bool {
        let mut s = self.state.lock().expect("gate");
        s.requested = true;
        self.spin_off.store(false, Ordering::Release);
        self.requested_now.store(true, Ordering::Release);
        loop {
            if s.over {
                s.requested = false;
                self.requested_now.store(false, Ordering::Release);
                self.cv.notify_all();
                return false;
            }
            if s.parked + s.exited == s.threads {
                return true;
            }
            drop(s);
            kick();
            s = self.state.lock().expect("gate");
            let (g, _) = self
                .cv
                .wait_timeout(s, Duration::from_micros(500))
                .expect("gate");
            s = g;
        }
    }

    /// Controller side: whether the VM has ended (see [`PauseGate::exited`]).
    pub fn has_exited(&self) -> bool {
        self.state.lock().expect("gate").over
    }

    /// Controller side: how many vCPU threads have stopped for good.
    pub fn exited_count(&self) -> u32 {
        self.state.lock().expect("gate").exited
    }

    /// Controller side: lets the vCPUs run again.
    pub fn resume(&self) {
        let mut s = self.state.lock().expect("gate");
        s.requested = false;
        self.requested_now.store(false, Ordering::Release);
        self.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::thread::ThreadId;

    /// Work of `items` slow items; records which thread did each.
    struct Items {
        next: AtomicUsize,
        items: usize,
        done_by: Mutex<Vec<ThreadId>>,
    }

    impl PauseWork for Items {
        fn help(&self) {
            while self.next.fetch_add(1, Ordering::AcqRel) < self.items {
                std::thread::sleep(Duration::from_millis(1));
                self.done_by
                    .lock()
                    .unwrap()
                    .push(std::thread::current().id());
            }
        }
    }

    /// A vCPU thread parked as a spinner takes part in work the controller offers during the
    /// pause, and resumes when the pause ends.
    #[test]
    fn a_spinning_parked_vcpu_helps_with_offered_work() {
        let gate =
            Arc::new(PauseGate::with_spinners(1, 1).with_spin_limit(Duration::from_secs(30)));
        let vcpu = {
            let g = gate.clone();
            std::thread::spawn(move || {
                while !g.requested() {
                    std::thread::yield_now();
                }
                g.park(0);
                std::thread::current().id()
            })
        };
        assert!(gate.pause(|| {}));
        let work = Arc::new(Items {
            next: AtomicUsize::new(0),
            items: 40,
            done_by: Mutex::new(Vec::new()),
        });
        gate.offer(work.clone());
        work.help();
        while work.done_by.lock().unwrap().len() < work.items {
            std::thread::yield_now();
        }
        gate.withdraw();
        gate.resume();
        let vcpu_id = vcpu.join().unwrap();
        let done_by = work.done_by.lock().unwrap();
        let by_vcpu = done_by.iter().filter(|&&id| id == vcpu_id).count();
        assert!(
            by_vcpu > 0 && by_vcpu < work.items,
            "the parked vCPU did {by_vcpu} of {} items, the controller the rest",
            work.items
        );
    }

    /// Two vCPU threads: a pause holds only once both are parked, never with one of them
    /// still running.
    #[test]
    fn a_pause_waits_for_every_vcpu() {
        let gate = Arc::new(PauseGate::new(2));
        let first = {
            let g = gate.clone();
            std::thread::spawn(move || {
                while !g.requested() {
                    std::thread::yield_now();
                }
                g.park(0);
            })
        };
        let late = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let second = {
            let (g, late) = (gate.clone(), late.clone());
            std::thread::spawn(move || {
                while !g.requested() {
                    std::thread::yield_now();
                }
                std::thread::sleep(Duration::from_millis(50));
                late.store(true, std::sync::atomic::Ordering::SeqCst);
                g.park(0);
            })
        };
        assert!(gate.pause(|| {}));
        assert!(late.load(std::sync::atomic::Ordering::SeqCst));
        gate.resume();
        first.join().unwrap();
        second.join().unwrap();
    }

    /// A vCPU that finished does not hold pauses up; the VM ends when one ends it.
    #[test]
    fn finished_vcpus_do_not_block_a_pause_and_the_vm_ends_when_told() {
        let gate = PauseGate::new(2);
        gate.exited(false);
        assert!(!gate.has_exited());
        let g = &gate;
        std::thread::scope(|s| {
            s.spawn(|| {
                while !g.requested() {
                    std::thread::yield_now();
                }
                g.park(0);
            });
            assert!(g.pause(|| {}));
            g.resume();
        });
        gate.exited(true);
        assert!(gate.has_exited());
        assert_eq!(gate.exited_count(), 2);
        assert!(!gate.pause(|| {}));
    }
}
