//! The QEMU front's doorbell: QEMU's isa-debugcon writes the guest's doorbell bytes to a Unix
//! socket. Without polling one thread reads the socket and serves each command as it comes;
//! with polling (`QemuSpec::poll_us` > 0) the same thread is the VM's ring poller
//! ([`crate::vmm::poller`]): it wakes on the socket, serves, polls the ring until it is idle for
//! the window, re-checks and blocks on the socket again. QEMU cannot hold the vCPU in the
//! doorbell write, so in both cases the guest waits by polling the ring's `consumed`.

use std::io::Read;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::QemuTarget;
use crate::vmm::hints::{HintService, HintTarget};
use crate::vmm::poller::{self, RingSource};
use crate::vmm::VmmError;

/// The socket and the hint service of one QEMU guest.
struct QemuRing<'a> {
    stream: UnixStream,
    hints: Mutex<HintService>,
    target: &'a QemuTarget,
    /// Set when QEMU is gone.
    done: &'a AtomicBool,
    buf: [u8; 256],
}

impl RingSource for QemuRing<'_> {
    fn wait(&mut self, bytes: &mut Vec<u8>) -> bool {
        match self.stream.read(&mut self.buf) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                bytes.extend_from_slice(&self.buf[..n]);
                true
            }
        }
    }

    fn stopped(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    fn hints(&self) -> MutexGuard<'_, HintService> {
        self.hints.lock().expect("hints")
    }

    fn target(&self) -> &dyn HintTarget {
        self.target
    }
}

/// Accepts QEMU's debugcon connection on `listener` and serves the doorbell until QEMU
/// disconnects (or `done` is set while polling): one command at a time without a poll window,
/// as the ring poller with one.
pub(super) fn serve(
    listener: UnixListener,
    sock: &Path,
    target: &QemuTarget,
    poll: Option<Duration>,
    done: &AtomicBool,
) -> Result<(), VmmError> {
    let (stream, _) = listener
        .accept()
        .map_err(|source| VmmError::DoorbellSocket {
            path: sock.to_path_buf(),
            source,
        })?;
    let mut ring = QemuRing {
        stream,
        hints: Mutex::new(HintService::new(target.vpm_off, target.vpm_size)),
        target,
        done,
        buf: [0; 256],
    };
    if let Some(window) = poll {
        return poller::run_source(&mut ring, window);
    }
    let mut bytes = Vec::new();
    loop {
        bytes.clear();
        if !ring.wait(&mut bytes) {
            return Ok(());
        }
        let mut hints = ring.hints();
        for &b in &bytes {
            hints.on_byte(b, target)?;
        }
    }
}
