//! Pausing the vCPUs for a consistent snapshot: the controller raises a flag and kicks every vCPU
//! thread with a signal (KVM_RUN returns EINTR); each vCPU parks until resumed, and the pause
//! holds only once every vCPU thread is parked (or has finished), so no vCPU writes guest memory
//! while the dirty log is collected.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

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

/// The pause handshake between the controller and the vCPU threads.
pub struct PauseGate {
    state: Mutex<GateState>,
    cv: Condvar,
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
    /// A gate for `threads` vCPU threads.
    pub fn new(threads: u32) -> PauseGate {
        PauseGate {
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

    /// vCPU side: parks until resumed (call when `requested`).
    pub fn park(&self) {
        let mut s = self.state.lock().expect("gate");
        s.parked += 1;
        self.cv.notify_all();
        while s.requested {
            s = self.cv.wait(s).expect("gate");
        }
        s.parked -= 1;
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
        loop {
            if s.over {
                s.requested = false;
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
        self.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

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
                g.park();
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
                g.park();
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
                g.park();
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
