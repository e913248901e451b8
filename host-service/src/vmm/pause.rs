//! Pausing the vCPU for a consistent snapshot: the controller raises a flag and kicks the vCPU
//! thread with a signal (KVM_RUN returns EINTR); the vCPU parks until resumed.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

#[derive(Default)]
struct GateState {
    requested: bool,
    parked: bool,
    exited: bool,
}

/// The pause handshake between the controller and the vCPU thread.
#[derive(Default)]
pub struct PauseGate {
    state: Mutex<GateState>,
    cv: Condvar,
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
    /// Whether the controller wants the vCPU parked.
    pub fn requested(&self) -> bool {
        self.state.lock().expect("gate").requested
    }

    /// vCPU side: parks until resumed (call when `requested`).
    pub fn park(&self) {
        let mut s = self.state.lock().expect("gate");
        s.parked = true;
        self.cv.notify_all();
        while s.requested {
            s = self.cv.wait(s).expect("gate");
        }
        s.parked = false;
    }

    /// vCPU side: the vCPU thread has stopped for good.
    pub fn exited(&self) {
        let mut s = self.state.lock().expect("gate");
        s.exited = true;
        self.cv.notify_all();
    }

    /// Controller side: asks for a pause and kicks until the vCPU is parked. Returns false if the
    /// vCPU thread has exited instead.
    pub fn pause(&self, kick: impl Fn()) -> bool {
        let mut s = self.state.lock().expect("gate");
        s.requested = true;
        loop {
            if s.parked {
                return true;
            }
            if s.exited {
                s.requested = false;
                return false;
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

    /// Controller side: whether the vCPU thread has exited.
    pub fn has_exited(&self) -> bool {
        self.state.lock().expect("gate").exited
    }

    /// Controller side: lets the vCPU run again.
    pub fn resume(&self) {
        let mut s = self.state.lock().expect("gate");
        s.requested = false;
        self.cv.notify_all();
    }
}
