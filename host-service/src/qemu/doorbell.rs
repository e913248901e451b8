//! The QEMU front's doorbell: QEMU's isa-debugcon writes the guest's doorbell bytes to a Unix
//! socket. Without polling one thread reads the socket and serves each command as it comes;
//! with polling (`QemuSpec::poll_us` > 0) the same thread is the VM's ring poller
//! ([`crate::vmm::poller`]): it wakes on the socket, serves, polls the ring until it is idle for
//! the window, re-checks and blocks on the socket again. QEMU cannot hold the vCPU in the
//! doorbell write, so in both cases the guest waits by polling the ring's `consumed`.
//!
//! The byte stream is one for all vCPUs: the host cannot tell which CPU rang. A guest granted
//! feature `RINGS` registers one ring per CPU with REGISTER_RING (ring 0 with REGISTER) and a
//! RING byte serves every registered ring ([`HintService::on_stream_byte`]).

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

    /// One stream for every vCPU: ring-indexed registrations, and a RING serves every ring.
    fn serve_doorbell(&self, hints: &mut HintService, bytes: &[u8]) -> Result<(), VmmError> {
        for &b in bytes {
            hints.on_stream_byte(b, self.target)?;
        }
        Ok(())
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
        // One ring per guest CPU (feature RINGS): the guest registers at most MAX_RINGS.
        hints: Mutex::new(HintService::with_rings(
            target.vpm_off,
            target.vpm_size,
            vpm_abi::MAX_RINGS.min(super::MAX_VCPUS as usize),
        )),
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
        ring.serve_doorbell(&mut hints, &bytes)?;
    }
}
